//! Stand-ins for a server that is broken at the TCP level: a listener that accepts and closes
//! at once, one that accepts and never answers, and a port where nothing listens.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// A TCP listener on 127.0.0.1 that accepts every connection and closes it at once (a server
/// going down, a proxy without a backend), keeping the moment of each accept.
pub struct AcceptAndClose {
    pub port: u16,
    accepts: Arc<Mutex<Vec<Instant>>>,
    task: JoinHandle<()>,
}

impl AcceptAndClose {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepts = Arc::new(Mutex::new(Vec::new()));
        let log = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                log.lock().unwrap().push(Instant::now());
                drop(stream);
            }
        });
        Self {
            port,
            accepts,
            task,
        }
    }

    pub fn total(&self) -> usize {
        self.accepts.lock().unwrap().len()
    }

    /// Accepts between `from` and `to` after `start`.
    pub fn between(&self, start: Instant, from: Duration, to: Duration) -> usize {
        self.accepts
            .lock()
            .unwrap()
            .iter()
            .filter(|at| {
                let after = at.saturating_duration_since(start);
                after >= from && after <= to
            })
            .count()
    }
}

impl Drop for AcceptAndClose {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP listener that accepts connections, keeps them open and never answers (a server or
/// network that stopped responding); counts accepts.
pub struct Silent {
    pub port: u16,
    accepts: Arc<Mutex<Vec<TcpStream>>>,
    task: JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepts = Arc::new(Mutex::new(Vec::new()));
        let held = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                held.lock().unwrap().push(stream);
            }
        });
        Self {
            port,
            accepts,
            task,
        }
    }

    pub fn total(&self) -> usize {
        self.accepts.lock().unwrap().len()
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
