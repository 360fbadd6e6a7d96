//! TLS against real servers: a PostgreSQL cluster of the test's own with TLS required, one
//! without TLS, and an `amqps://` endpoint in front of RabbitMQ. Verified connections work;
//! each failure names its cause (unknown issuer, host name mismatch, a server without TLS),
//! for Postgres as for RabbitMQ, is logged once, and keeps `/readyz` at 503.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::{
    http::http_get,
    metrics::gauge,
    process::{RelayProcess, cli},
    servers::{Certs, Cluster, tls_terminator},
    *,
};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn postgres_verify_full_works_and_each_failure_names_its_cause() {
    // GIVEN a cluster requiring TLS with a certificate for `localhost`, and one without TLS
    let certs = Certs::generate();
    let tls = Cluster::start(Some(&certs));
    let plain = Cluster::start(None);
    let ca = certs.path("ca.crt").display().to_string();
    let other_ca = certs.path("other-ca.crt").display().to_string();
    let verify_with = |host: &str, root: &str| {
        tls.url(
            host,
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={root}"),
        )
    };

    // WHEN the relay connects with verify-full, the right CA and the certificate's name
    let out = cli(&verify_with("localhost", &ca), &["migrate"]);
    // THEN it works
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&verify_with("localhost", &ca), &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // AND each misconfiguration exits 1 naming its cause
    for (url, cause) in [
        (verify_with("localhost", &other_ca), "unknown issuer"),
        (verify_with("127.0.0.1", &ca), "host name mismatch"),
        (
            plain.url("127.0.0.1", "postgres", "sslmode=require"),
            "does not support TLS",
        ),
    ] {
        let out = cli(&url, &["status"]);
        assert_eq!(out.status.code(), Some(1), "{url}: {}", stderr(&out));
        assert!(stderr(&out).contains(cause), "{url}: {}", stderr(&out));
    }
}

#[tokio::test]
async fn a_running_relay_with_an_untrusted_database_certificate_says_why_once_and_is_not_ready() {
    // GIVEN a relay whose database certificate is signed by a CA it does not trust
    let certs = Certs::generate();
    let tls = Cluster::start(Some(&certs));
    let url = tls.url(
        "localhost",
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            certs.path("other-ca.crt").display()
        ),
    );
    let broker = TestBroker::bound().await;
    let relay = RelayProcess::spawn(&[
        ("OUTBOX_RELAY_DATABASE__URL", url),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqp_url()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
    ]);
    let addr = relay.http_addr().await;

    // WHEN it has tried several times
    eventually("three failed database attempts", || async {
        let (_, metrics) = http_get(addr, "/metrics").await;
        gauge(
            &metrics,
            "outbox_connection_attempts_total{target=\"database\",outcome=\"error\"}",
        ) >= 3
    })
    .await;

    // THEN it is not ready, says why, and logged the cause once
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("unknown issuer"), "{body}");
    assert_eq!(relay.logged_containing("unknown issuer"), 1);
    broker.cleanup().await;
}

#[tokio::test]
async fn amqps_publishes_with_the_ca_and_names_an_untrusted_certificate() {
    // GIVEN an amqps:// endpoint (TLS terminator in front of RabbitMQ) with a certificate for
    // `localhost`
    let certs = Certs::generate();
    let upstream = amqp_url()
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let endpoint = tls_terminator(&certs, upstream).await;
    let amqps = format!("amqps://guest:guest@localhost:{}/%2f", endpoint.port());
    let db = TestDb::migrated().await;
    let broker = TestBroker::bound().await;
    let mut rx = broker.consume().await;
    let client = db.client().await;
    let id = db.insert(&client, "tls-1", "order.created").await;

    // WHEN a relay trusts the CA: the event is published over TLS
    let trusting = RelayProcess::spawn(&[
        ("OUTBOX_RELAY_DATABASE__URL", db.url.clone()),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqps.clone()),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__CA_FILE",
            certs.path("ca.crt").display().to_string(),
        ),
    ]);
    let got = receive_n(&mut rx, 1).await;
    assert_eq!(got[0].message_id, id.to_string());
    drop(trusting);

    // AND a relay that does not trust it is not ready and names the cause, once
    let untrusting = RelayProcess::spawn(&[
        ("OUTBOX_RELAY_DATABASE__URL", db.url.clone()),
        ("OUTBOX_RELAY_BROKER__RABBITMQ__URL", amqps),
        (
            "OUTBOX_RELAY_BROKER__RABBITMQ__EXCHANGE",
            broker.exchange.clone(),
        ),
    ]);
    let addr = untrusting.http_addr().await;
    eventually("three failed broker attempts", || async {
        let (_, metrics) = http_get(addr, "/metrics").await;
        gauge(
            &metrics,
            "outbox_connection_attempts_total{target=\"broker\",outcome=\"error\"}",
        ) >= 3
    })
    .await;
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("unknown issuer"), "{body}");
    assert_eq!(untrusting.logged_containing("unknown issuer"), 1);
    broker.cleanup().await;
}
