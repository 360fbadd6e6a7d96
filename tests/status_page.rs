//! The status page on the ops port, in a real browser: Debian's headless `chromium`
//! (installed by `scripts/services.sh`) renders `GET /` of a relay with a backlog and a dead
//! event; the test reads the figures from the rendered DOM and saves a screenshot. Also:
//! `/status.json` is the document `status --json` prints, `"summary"` hides dead events,
//! `"off"` serves nothing, and nothing on the port accepts a write.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    http::{http_get, request},
    process::cli,
    *,
};
use outbox_relay::config::StatusPage;
use tokio_util::sync::CancellationToken;

/// A dead event whose type and error carry markup: the page must show it as text.
const EVIL_TYPE: &str = "<script>alert(1)</script>";

/// Seeds three invoices nobody routes (they fail once and wait out a one-hour backoff), one
/// dead event written by SQL, and returns the dead event's id.
async fn seed(db: &TestDb) -> String {
    let client = db.client().await;
    for i in 0..3 {
        insert_event(
            &client,
            "invoice",
            &format!("i-{i}"),
            "issued",
            serde_json::json!({}),
        )
        .await;
    }
    client
        .query_one(
            "INSERT INTO outbox_events \
                 (aggregate_type, aggregate_id, event_type, payload, status, attempts, last_error) \
             VALUES ($1, 'x-1', 'created', '{\"secret\": \"payload\"}', 'dead', 3, \
                     'rejected: <b>bold</b> & \"quoted\"') RETURNING id::text",
            &[&EVIL_TYPE],
        )
        .await
        .unwrap()
        .get(0)
}

/// An exchange that routes orders only: invoices are unroutable.
async fn orders_only() -> TestBroker {
    let broker = TestBroker::new().await;
    broker.bind("order.*").await;
    broker
}

/// A relay with the given page setting, fast refreshes, and a one-hour retry backoff.
async fn relay_with_page(
    db: &TestDb,
    broker: &TestBroker,
    page: StatusPage,
) -> (RunningRelay, CancellationToken, SocketAddr) {
    let mut config = relay_config(db, broker);
    config.metrics.status_page = page;
    config.metrics.refresh_interval = Duration::from_millis(100);
    config.retry.initial_backoff = Duration::from_secs(3600);
    config.retry.max_backoff = Duration::from_secs(3600);
    let relay = start_relay(&config);
    let stop = CancellationToken::new();
    let addr = serve_ready(&relay, &stop).await;
    (relay, stop, addr)
}

/// `/status.json` once the snapshot shows three pending and one dead event.
async fn settled_document(addr: SocketAddr) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (code, body) = http_get(addr, "/status.json").await;
        if code == 200 {
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
            if doc["pending"] == 3 && doc["dead"] == 1 && doc["retrying"] == 3 {
                return doc;
            }
        }
        assert!(
            Instant::now() < deadline,
            "snapshot never settled: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Headless Chromium with its own profile; returns stdout.
fn chromium(args: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!("outbox-chromium-{}", uuid::Uuid::new_v4()));
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium not found: run scripts/services.sh (Debian package chromium)");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in a serialized DOM (first `>` after the id to `</`).
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find("</").unwrap();
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_the_backlog_the_dead_event_and_the_relay_state() {
    // GIVEN a relay with the detailed page, three retrying invoices and a dead event whose
    // type and error contain markup
    let db = TestDb::migrated().await;
    let broker = orders_only().await;
    let dead_id = seed(&db).await;
    let (relay, stop, addr) = relay_with_page(&db, &broker, StatusPage::Details).await;
    let doc = settled_document(addr).await;

    // WHEN headless Chromium loads the page
    let url = format!("http://{addr}/");
    let dom = chromium(&["--dump-dom", &url]);

    // THEN the rendered DOM shows the figures
    assert_eq!(element_text(&dom, "pending"), "3");
    assert_eq!(element_text(&dom, "retrying"), "3");
    assert_eq!(element_text(&dom, "dead"), "1");
    assert_ne!(element_text(&dom, "oldest-pending"), "-");
    assert_eq!(element_text(&dom, "oldest-eligible"), "-");
    assert!(
        element_text(&dom, "buckets").starts_with("64 of 64"),
        "{dom}"
    );
    assert!(dom.contains("id=\"database\" class=\"n\"><span class=\"up\">up</span>"));
    assert!(dom.contains("id=\"broker\" class=\"n\"><span class=\"up\">up</span>"));
    assert_eq!(element_text(&dom, "version"), env!("CARGO_PKG_VERSION"));
    assert!(
        element_text(&dom, "time-to-drain").starts_with("never"),
        "{dom}"
    );
    // AND markup from the table is text, not elements; the payload never shows
    assert!(!dom.contains("<script"), "{dom}");
    assert!(!dom.contains("<b>"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{dom}"
    );
    assert!(
        dom.contains("rejected: &lt;b&gt;bold&lt;/b&gt; &amp; \"quoted\""),
        "{dom}"
    );
    assert!(!dom.contains("secret"), "{dom}");
    // AND the latest dead events list the dead one, by id
    assert!(element_text(&dom, "latest-dead").contains("id"), "{dom}");
    assert!(dom.contains(&dead_id), "{dom}");
    assert_eq!(doc["latest_dead"][0]["id"], dead_id.as_str());
    assert!(doc["latest_dead"][0].get("payload").is_none());

    // AND a screenshot is saved (for the README: docs/status-page.png)
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        "--hide-scrollbars",
        "--window-size=1000,900",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());

    stop.cancel();
    relay.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_is_the_status_commands_document_and_the_page_can_be_off() {
    // GIVEN a relay with the default page (summary), a backlog and a dead event
    let db = TestDb::migrated().await;
    let broker = orders_only().await;
    seed(&db).await;
    let (relay, stop, addr) = relay_with_page(&db, &broker, StatusPage::Summary).await;
    let served = settled_document(addr).await;

    // WHEN `outbox-relay status --json` runs on the same table
    let out = cli(&db.url, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // THEN both have the same fields; only the relay's own view is null from the CLI, and
    // the summary page lists no dead events
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&served), keys(&printed));
    assert_eq!(
        (printed["pending"].as_i64(), printed["dead"].as_i64()),
        (Some(3), Some(1))
    );
    assert!(printed["relay"].is_null());
    assert!(served["relay"]["broker_up"].as_bool().unwrap());
    assert!(served["latest_dead"].is_null());
    let (code, page) = http_get(addr, "/").await;
    assert_eq!(code, 200);
    assert!(!page.contains("Latest dead events"), "{page}");
    // AND nothing on the ops port takes a write
    for path in ["/", "/status.json", "/metrics", "/healthz", "/readyz"] {
        assert_eq!(request(addr, "POST", path).await.0, 405, "POST {path}");
    }
    stop.cancel();
    relay.stop().await;

    // WHEN the page is off
    let (relay, stop, addr) = relay_with_page(&db, &broker, StatusPage::Off).await;

    // THEN neither the page nor the document is served
    assert_eq!(http_get(addr, "/").await.0, 404);
    assert_eq!(http_get(addr, "/status.json").await.0, 404);
    stop.cancel();
    relay.stop().await;
    broker.cleanup().await;
}
