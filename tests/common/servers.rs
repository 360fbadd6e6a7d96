//! Servers a test owns, so it may break, restart or reconfigure them without disturbing the
//! shared ones: a PostgreSQL cluster of its own (`initdb` into a temporary directory, its own
//! port, optionally TLS), a RabbitMQ node of its own (own node name and ports), certificates
//! made with the `openssl` command, and a TLS terminator in front of the shared RabbitMQ (an
//! `amqps://` endpoint).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate it signed for `localhost` only (so connecting to
/// `127.0.0.1` with host name verification fails), plus an unrelated CA.
pub struct Certs {
    pub dir: Scratch,
}

impl Certs {
    pub fn generate() -> Self {
        let dir = Scratch::new("outbox-certs");
        let d = &dir.0;
        let openssl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(d));
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, crt, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN={ca}"),
            );
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subj];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &crt]);
            openssl(&args);
        }
        let mut args = vec!["req", "-subj", "/CN=localhost"];
        args.extend(ec);
        args.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(&args);
        std::fs::write(d.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }
}

/// A PostgreSQL cluster of the test's own, trust authentication, stopped and removed on drop.
pub struct Cluster {
    pub port: u16,
    data: PathBuf,
    _dir: Scratch,
}

fn is_root() -> bool {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        == "0"
}

/// Runs `program` as `user` when we are root (the servers refuse root, or their files
/// belong to that user), else as ourselves.
fn as_user(user: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", user, "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A RabbitMQ node of the test's own on free ports (the shared node's installation, its own
/// node name, data and configuration), so a test may stop and start it. Halted on drop.
pub struct RabbitNode {
    pub port: u16,
    node: String,
    _dir: Scratch,
}

impl RabbitNode {
    pub fn start() -> Self {
        let dir = Scratch::new("outbox-rabbit");
        let d = &dir.0;
        let port = free_port();
        let node = format!(
            "outbox{}@localhost",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
        run(Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(d));
        run(as_user("rabbitmq", "env")
            .arg("HOME=/var/lib/rabbitmq")
            .arg("RABBITMQ_CONF_ENV_FILE=/dev/null")
            .arg(format!("RABBITMQ_NODENAME={node}"))
            .arg(format!("RABBITMQ_DIST_PORT={}", free_port()))
            .arg(format!(
                "RABBITMQ_MNESIA_BASE={}",
                d.join("mnesia").display()
            ))
            .arg(format!("RABBITMQ_LOG_BASE={}", d.join("log").display()))
            .arg(format!(
                "RABBITMQ_CONFIG_FILE={}",
                d.join("rabbitmq").display()
            ))
            .arg(format!(
                "RABBITMQ_ENABLED_PLUGINS_FILE={}",
                d.join("enabled_plugins").display()
            ))
            .arg(format!("RABBITMQ_PID_FILE={}", d.join("pid").display()))
            .args(["/usr/lib/rabbitmq/bin/rabbitmq-server", "-detached"]));
        let pid_file = d.join("pid").display().to_string();
        let rabbit = Self {
            port,
            node,
            _dir: dir,
        };
        // `wait` follows the pid file until the node has booted (await_startup needs a node
        // that is already reachable).
        rabbit.ctl(&["wait", &pid_file, "--timeout", "120"]);
        rabbit
    }

    fn ctl(&self, args: &[&str]) {
        run(as_user("rabbitmq", "env")
            .args(["HOME=/var/lib/rabbitmq", "RABBITMQ_CONF_ENV_FILE=/dev/null"])
            .args(["rabbitmqctl", "-n", &self.node])
            .args(args));
    }

    /// Stops the RabbitMQ application (what an upgrade or a restart does to clients: every
    /// connection closed, the port closed); the node and its durable queues stay.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    /// Starts the application again and waits until it serves.
    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.ctl(&["await_startup", "--timeout", "120"]);
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = as_user("rabbitmq", "env")
            .args(["HOME=/var/lib/rabbitmq", "RABBITMQ_CONF_ENV_FILE=/dev/null"])
            .args(["rabbitmqctl", "-n", &self.node, "stop"])
            .output();
    }
}

/// Runs a PostgreSQL server binary as the `postgres` user when we are root (they refuse to
/// run as root), else as ourselves.
fn pg_command(binary: &str) -> Command {
    let bindir = String::from_utf8(
        Command::new("pg_config")
            .arg("--bindir")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    as_user("postgres", Path::new(bindir.trim()).join(binary))
}

impl Cluster {
    /// Initializes and starts a cluster on a free port. With `certs`, TLS is on and required
    /// for TCP connections (`hostssl` only); without, TLS is off.
    pub fn start(certs: Option<&Certs>) -> Self {
        let dir = Scratch::new("outbox-pg");
        let data = dir.0.join("data");
        run(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir.0));
        run(pg_command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data));
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\n",
            dir.0.display()
        );
        let hba = if let Some(certs) = certs {
            for name in ["server.crt", "server.key"] {
                std::fs::copy(certs.path(name), data.join(name)).unwrap();
            }
            run(Command::new("chown")
                .args(["postgres:postgres"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key")));
            run(Command::new("chmod")
                .arg("600")
                .arg(data.join("server.key")));
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n"
        } else {
            conf.push_str("ssl = off\n");
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        };
        let append = |file: &str, text: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join(file))
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        append("postgresql.conf", &conf);
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let cluster = Self {
            port,
            data,
            _dir: dir,
        };
        cluster.resume();
        cluster
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn resume(&self) {
        run(pg_command("pg_ctl")
            .args(["-w", "-t", "60", "-l"])
            .arg(self.data.join("server.log"))
            .arg("-D")
            .arg(&self.data)
            .arg("start"));
    }

    /// Stops the server the way a crash or a failover does (`-m immediate`).
    pub fn stop_immediately(&self) {
        run(pg_command("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop"));
    }

    /// A URL to database `db` on this cluster via `host`, with extra query parameters.
    pub fn url(&self, host: &str, db: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/{db}?{params}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS terminator: accepts TLS on a local port with the server certificate of `certs` and
/// forwards the plain bytes to `upstream` (e.g. the shared RabbitMQ), for `amqps://` tests.
pub async fn tls_terminator(certs: &Certs, upstream: SocketAddr) -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let chain = CertificateDer::pem_file_iter(certs.path("server.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}
