//! A real etcd for tests: [`EtcdServer::start`] runs `etcd` on free
//! loopback ports with a temporary data directory, waits until it is
//! healthy, and kills it when dropped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use psflow_coordinator::membership::testing::EtcdServer;
//! let etcd = EtcdServer::start()?;          // fails, never skips, without etcd
//! let store = etcd.connect("test-cluster").await?;
//! // … or give `etcd.endpoint()` to a `psflow coordinator --etcd …` process.
//! # Ok(()) }
//! ```
//!
//! The binary is `$PSFLOW_ETCD` if set, else `/usr/bin/etcd`, else `etcd` on
//! `PATH`; Debian's `etcd-server` package provides it (`scripts/test`
//! installs it). A missing binary is an error saying so: tests that need
//! etcd fail rather than pass silently without it.
//!
//! Each server costs about half a second to start; it runs with a short raft
//! heartbeat so that leases of one second are honoured (etcd's minimum lease
//! is 1.5 election timeouts).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{EtcdMembership, MembershipError};

/// How long a fresh etcd may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a test etcd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    #[error(
        "etcd not found (looked at {looked}); install it with `apt-get install etcd-server` \
         (scripts/test does this) or point $PSFLOW_ETCD at an etcd binary"
    )]
    NotFound { looked: String },
    #[error("could not start etcd ({binary}): {reason}\n--- etcd log ({log}) ---\n{tail}")]
    Failed {
        binary: String,
        reason: String,
        log: String,
        tail: String,
    },
    #[error("test etcd: {0}")]
    Io(#[from] std::io::Error),
}

/// A running etcd, killed on drop.
pub struct EtcdServer {
    binary: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it is healthy.
    pub fn start() -> Result<EtcdServer, EtcdServerError> {
        let binary = find_etcd()?;
        let mut last = None;
        // Ports are picked free but may be taken before etcd binds them;
        // another pair (and a fresh data directory) usually works.
        for _ in 0..3 {
            let mut server = EtcdServer {
                binary: binary.clone(),
                child: None,
                client_port: free_port()?,
                peer_port: free_port()?,
                dir: tempfile::Builder::new().prefix("psflow-etcd-").tempdir()?,
            };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let port_taken = matches!(&e, EtcdServerError::Failed { tail, .. }
                        if tail.contains("address already in use"));
                    if !port_taken {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("three attempts were made"))
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// [`endpoint`](Self::endpoint) as the list [`EtcdMembership::connect`] takes.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// Where etcd keeps its data (and `etcd.log`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client for cluster `cluster` on this server.
    pub async fn connect(&self, cluster: &str) -> Result<EtcdMembership, MembershipError> {
        EtcdMembership::connect(&self.endpoints(), cluster, Duration::from_secs(5)).await
    }

    /// Kills etcd (as `kill -9` would) and starts it again on the same
    /// ports and data: what survives is what etcd persisted.
    pub fn restart(&mut self) -> Result<(), EtcdServerError> {
        self.kill();
        self.launch()
    }

    /// Kills etcd (as `kill -9` would) and leaves it down: clients then
    /// see connection errors and their leases cannot be kept alive.
    pub fn stop(&mut self) {
        self.kill();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn launch(&mut self) -> Result<(), EtcdServerError> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.binary)
            .arg("--name=psflow-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=psflow-test={peer}"))
            .arg("--heartbeat-interval=20")
            .arg("--election-timeout=200")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| self.failed(format!("spawning it: {e}")))?;
        self.child = Some(child);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<(), EtcdServerError> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(self.failed(format!("it exited with {status}")));
                }
            }
            if health(self.client_port) {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                self.kill();
                return Err(self.failed(format!("not healthy after {START_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn failed(&self, reason: String) -> EtcdServerError {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        EtcdServerError::Failed {
            binary: self.binary.display().to_string(),
            reason,
            log: self.log_path().display().to_string(),
            tail: lines[lines.len().saturating_sub(20)..].join("\n"),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `$PSFLOW_ETCD`, `/usr/bin/etcd`, or `etcd` on `PATH`.
fn find_etcd() -> Result<PathBuf, EtcdServerError> {
    if let Some(p) = std::env::var_os("PSFLOW_ETCD") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(EtcdServerError::NotFound {
                looked: format!("$PSFLOW_ETCD={}", p.display()),
            })
        };
    }
    let default = PathBuf::from("/usr/bin/etcd");
    if default.is_file() {
        return Ok(default);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file());
    on_path.ok_or_else(|| EtcdServerError::NotFound {
        looked: "$PSFLOW_ETCD (unset), /usr/bin/etcd, PATH".into(),
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether etcd's `/health` says so.
fn health(port: u16) -> bool {
    let probe = || -> std::io::Result<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    probe().is_ok_and(|b| b.contains("\"health\":\"true\""))
}
