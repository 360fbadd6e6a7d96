//! The HTTP server on `metrics.listen`: `/metrics`, `/healthz` (liveness: 503 when wedged),
//! `/readyz` (503 until Postgres and the broker are connected, and while either is down), and
//! the status page `/` with its document `/status.json` (404 with `metrics.status_page =
//! "off"`), both from the snapshot. Every route is read-only (GET only).

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio_util::sync::CancellationToken;

use super::{health::Health, metrics::Metrics, page, snapshot::Snapshot};
use crate::config::StatusPage;

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    snapshot: Arc<Snapshot>,
}

/// Binds `addr` and serves until `shutdown`; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    snapshot: Arc<Snapshot>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .with_state(AppState {
            health,
            metrics,
            snapshot,
        });
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "metrics server failed");
        }
    });
    Ok((local, handle))
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.wedged() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "wedged: eligible events and no progress\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// The document, or the response that explains why there is none.
fn document(
    state: &AppState,
) -> Result<Arc<super::snapshot::StatusDocument>, (StatusCode, &'static str)> {
    if state.snapshot.page == StatusPage::Off {
        return Err((
            StatusCode::NOT_FOUND,
            "the status page is off (metrics.status_page)\n",
        ));
    }
    state.snapshot.get().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "no status yet: the first refresh has not succeeded\n",
    ))
}

async fn status_page(State(state): State<AppState>) -> axum::response::Response {
    match document(&state) {
        Ok(doc) => {
            let refresh = state.snapshot.refresh.as_secs().max(1);
            axum::response::Html(page::render(&doc, refresh)).into_response()
        }
        Err(answer) => answer.into_response(),
    }
}

async fn status_json(State(state): State<AppState>) -> axum::response::Response {
    match document(&state) {
        Ok(doc) => axum::Json(doc.as_ref().clone()).into_response(),
        Err(answer) => answer.into_response(),
    }
}
