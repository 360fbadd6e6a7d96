//! SQS test helpers against the emulator (moto) at `OUTBOX_TEST_SQS`
//! (default `http://127.0.0.1:4566`): a client with dummy credentials, per-test queues,
//! receive-everything, and a relay configuration for `broker.kind = "sqs"`.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use aws_sdk_sqs::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    types::{Message, MessageSystemAttributeName, QueueAttributeName},
};
use outbox_relay::{
    broker::sqs::SqsPublisher,
    config::{BrokerKind, Config},
};
use uuid::Uuid;

use super::{PATIENCE, TestDb};

pub fn endpoint() -> String {
    std::env::var("OUTBOX_TEST_SQS").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// A client for the emulator (or any endpoint) with static dummy credentials.
pub fn client_for(endpoint: &str) -> Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .build();
    Client::from_conf(config)
}

pub fn client() -> Client {
    client_for(&endpoint())
}

/// Creates a uniquely named queue; FIFO queues get the `.fifo` suffix.
pub async fn create_queue(client: &Client, fifo: bool) -> String {
    let mut name = format!("outbox-test-{}", Uuid::new_v4().simple());
    let mut req = client.create_queue();
    if fifo {
        name.push_str(".fifo");
        req = req.attributes(QueueAttributeName::FifoQueue, "true");
    }
    req.queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

/// Creates a uniquely named standard queue whose `MaximumMessageSize` is `max_bytes`.
pub async fn create_limited_queue(client: &Client, max_bytes: usize) -> String {
    client
        .create_queue()
        .queue_name(format!("outbox-test-{}", Uuid::new_v4().simple()))
        .attributes(
            QueueAttributeName::MaximumMessageSize,
            max_bytes.to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

/// Changes a queue's `MaximumMessageSize` (as an operator might while the relay runs).
pub async fn set_max_message_size(client: &Client, queue: &str, max_bytes: usize) {
    client
        .set_queue_attributes()
        .queue_url(queue)
        .attributes(
            QueueAttributeName::MaximumMessageSize,
            max_bytes.to_string(),
        )
        .send()
        .await
        .unwrap();
}

/// Receives (and deletes) exactly `n` messages.
pub async fn receive_n(client: &Client, queue: &str, n: usize) -> Vec<Message> {
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "timed out after {} of {n} messages",
            out.len()
        );
        let got = client
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            client
                .delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
            out.push(m.clone());
        }
    }
    out
}

/// A String message attribute.
pub fn attr(message: &Message, name: &str) -> Option<String> {
    message
        .message_attributes()?
        .get(name)?
        .string_value()
        .map(str::to_owned)
}

/// A system attribute (MessageGroupId, MessageDeduplicationId, ...).
pub fn system_attr(message: &Message, name: MessageSystemAttributeName) -> Option<String> {
    message.attributes()?.get(&name).cloned()
}

/// A relay configuration publishing to `queue_url` through the emulator.
pub fn sqs_config(db: &TestDb, queue_url: &str) -> Config {
    let mut config = super::relay::base_config(db);
    config.relay.publish_timeout = Duration::from_secs(10);
    config.broker.kind = BrokerKind::Sqs;
    config.broker.sqs.queue_url = queue_url.to_owned();
    config.broker.sqs.region = Some("us-east-1".into());
    config.broker.sqs.endpoint_url = Some(endpoint());
    config
}

/// The real SQS publisher with test credentials.
pub fn publisher(config: &Config) -> SqsPublisher {
    publisher_at(config, &endpoint())
}

/// The real SQS publisher talking to `endpoint` (e.g. a proxy in front of the emulator).
pub fn publisher_at(config: &Config, endpoint: &str) -> SqsPublisher {
    SqsPublisher::with_client(
        client_for(endpoint),
        &config.broker.sqs,
        config.relay.publish_timeout,
    )
}

/// What [`SqsProxy`] does to SendMessageBatch calls; every other call passes through.
#[derive(Debug, Clone)]
pub enum SqsFault {
    /// Pass through.
    None,
    /// Answer with an error as SQS's JSON protocol does: HTTP `status`, `code` in both the
    /// body's `__type` and the query-compatible `x-amzn-query-error` header.
    Fail { status: u16, code: &'static str },
}

/// An HTTP proxy in front of the emulator that answers SendMessageBatch with injected errors,
/// so the real SDK parses and retries real error responses (throttling, 5xx, access denied)
/// that the emulator cannot produce on demand.
pub struct SqsProxy {
    /// `http://127.0.0.1:<port>`: the endpoint to give the publisher.
    pub endpoint: String,
    pub fault: std::sync::Arc<std::sync::Mutex<SqsFault>>,
    /// SendMessageBatch calls answered with an injected error.
    pub injected: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SqsProxy {
    pub async fn start() -> Self {
        use axum::{
            body::{Body, to_bytes},
            extract::{Request, State},
            http::{HeaderName, HeaderValue, Response, StatusCode},
        };
        use std::sync::{Arc, Mutex, atomic::AtomicUsize, atomic::Ordering};

        type Shared = (Arc<Mutex<SqsFault>>, Arc<AtomicUsize>, String);

        async fn handle(
            State((fault, injected, target)): State<Shared>,
            req: Request,
        ) -> Response<Body> {
            let (parts, body) = req.into_parts();
            let body = to_bytes(body, usize::MAX).await.unwrap();
            let batch = parts
                .headers
                .get("x-amz-target")
                .is_some_and(|t| t.as_bytes().ends_with(b".SendMessageBatch"));
            let fault = fault.lock().unwrap().clone();
            let error = match fault {
                SqsFault::Fail { status, code } if batch => Some((status, code)),
                _ => None,
            };
            if let Some((status, code)) = error {
                injected.fetch_add(1, Ordering::SeqCst);
                let side = if status >= 500 { "Receiver" } else { "Sender" };
                return Response::builder()
                    .status(status)
                    .header("content-type", "application/x-amz-json-1.0")
                    .header("x-amzn-query-error", format!("{code};{side}"))
                    .body(Body::from(
                        serde_json::json!({
                            "__type": format!("com.amazonaws.sqs#{code}"),
                            "message": format!("injected {code}"),
                        })
                        .to_string(),
                    ))
                    .unwrap();
            }
            // Forward as one HTTP/1.1 request on a fresh connection; moto closes it after
            // answering, so the response is everything up to EOF.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut raw = format!("{} {} HTTP/1.1\r\n", parts.method, parts.uri).into_bytes();
            for (name, value) in &parts.headers {
                if name != "connection" {
                    raw.extend_from_slice(name.as_str().as_bytes());
                    raw.extend_from_slice(b": ");
                    raw.extend_from_slice(value.as_bytes());
                    raw.extend_from_slice(b"\r\n");
                }
            }
            raw.extend_from_slice(b"connection: close\r\n\r\n");
            raw.extend_from_slice(&body);
            let mut upstream = tokio::net::TcpStream::connect(&target).await.unwrap();
            upstream.write_all(&raw).await.unwrap();
            let mut answer = Vec::new();
            upstream.read_to_end(&mut answer).await.unwrap();
            let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8_lossy(&answer[..split]).into_owned();
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
            for line in lines {
                let (name, value) = line.split_once(':').unwrap();
                let name = name.trim().to_ascii_lowercase();
                if !matches!(
                    name.as_str(),
                    "connection" | "content-length" | "transfer-encoding"
                ) {
                    response = response.header(
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        HeaderValue::from_str(value.trim()).unwrap(),
                    );
                }
            }
            response
                .body(Body::from(answer[split + 4..].to_vec()))
                .unwrap()
        }

        let target = endpoint()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let fault = Arc::new(Mutex::new(SqsFault::None));
        let injected = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().fallback(handle).with_state((
            fault.clone(),
            injected.clone(),
            target,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            endpoint: format!("http://{addr}"),
            fault,
            injected,
        }
    }

    pub fn set(&self, fault: SqsFault) {
        *self.fault.lock().unwrap() = fault;
    }
}
