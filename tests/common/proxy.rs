//! A TCP proxy that can cut, refuse, stall and freeze connections: a broker or database
//! "outage" for one test only, without touching the shared servers; and proxies in front of
//! the tests' RabbitMQ and Postgres.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{amqp_url, pg_server};

/// A TCP proxy on 127.0.0.1:<random> forwarding to `target`. It can cut every connection
/// and refuse new ones (a server that is down), or stall: keep connections open but forward
/// nothing, also on new connections (a server or network that stops answering).
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<Mutex<CancellationToken>>,
    /// `true` while bytes flow.
    flow: tokio::sync::watch::Sender<bool>,
    /// Cancelled by [`Proxy::freeze`]: the connections accepted before stop forwarding for good.
    frozen: Arc<Mutex<CancellationToken>>,
    pub accepted: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
    /// Local ports of the proxy's connections to `target` (how the server sees the client).
    upstream: Arc<Mutex<Vec<u16>>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let flow = tokio::sync::watch::Sender::new(true);
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let upstream = Arc::new(Mutex::new(Vec::new()));
        let frozen = Arc::new(Mutex::new(CancellationToken::new()));
        let (up2, gen2, acc2, ref2, flow2, upstream2, frozen2) = (
            up.clone(),
            generation.clone(),
            accepted.clone(),
            refused.clone(),
            flow.clone(),
            upstream.clone(),
            frozen.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound); // refused: closed at once
                    ref2.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                acc2.fetch_add(1, Ordering::SeqCst);
                let cut = gen2.lock().unwrap().clone();
                let freeze = frozen2.lock().unwrap().clone();
                let (up_flow, down_flow) = (flow2.subscribe(), flow2.subscribe());
                let upstream = upstream2.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    if let Ok(local) = outbound.local_addr() {
                        upstream.lock().unwrap().push(local.port());
                    }
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = pump(in_read, out_write, up_flow, freeze.clone()) => {}
                        _ = pump(out_read, in_write, down_flow, freeze) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            generation,
            flow,
            frozen,
            accepted,
            refused,
            upstream,
        }
    }

    /// The local ports of every connection the proxy opened to its target so far.
    pub fn upstream_ports(&self) -> Vec<u16> {
        self.upstream.lock().unwrap().clone()
    }

    /// Closes every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut generation = self.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Keeps connections open (and accepts new ones) but forwards nothing until
    /// [`Proxy::restore`] or [`Proxy::cut`].
    pub fn stall(&self) {
        self.flow.send_replace(false);
    }

    /// Every connection open now stops forwarding for good, in both directions, and stays
    /// open (a network path or a middlebox that stopped answering; neither end notices);
    /// connections accepted afterwards work.
    pub fn freeze(&self) {
        let mut frozen = self.frozen.lock().unwrap();
        frozen.cancel();
        *frozen = CancellationToken::new();
    }

    /// Accepts connections and forwards bytes again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        self.flow.send_replace(true);
    }
}

/// A [`Proxy`] in front of the tests' RabbitMQ (`OUTBOX_TEST_AMQP`), and the AMQP URL that
/// reaches it through the proxy.
pub async fn rabbitmq_proxy() -> (Proxy, String) {
    let (proxy, url) = proxy_to(&amqp_url(), 5672).await;
    (proxy, url.to_string())
}

/// A [`Proxy`] in front of the tests' Postgres (`OUTBOX_TEST_PG`), and the URL of `database`
/// through the proxy.
pub async fn postgres_proxy(database: &str) -> (Proxy, String) {
    let (proxy, mut url) = proxy_to(&pg_server(), 5432).await;
    url.set_path(database);
    (proxy, url.to_string())
}

/// A [`Proxy`] in front of the server of `server_url`, and that URL pointed at the proxy.
async fn proxy_to(server_url: &str, default_port: u16) -> (Proxy, url::Url) {
    let mut url = url::Url::parse(server_url).unwrap();
    let server = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(default_port)
    );
    let target = tokio::net::lookup_host(server)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    (proxy, url)
}

/// Copies `from` to `to`, holding the bytes back while `flow` is `false`, and for good once
/// `frozen` is cancelled (the sockets stay open).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flow: tokio::sync::watch::Receiver<bool>,
    frozen: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = frozen.cancelled() => std::future::pending().await,
        };
        if frozen.is_cancelled() {
            std::future::pending::<()>().await;
        }
        if flow.wait_for(|flowing| *flowing).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
