//! The hubs under load, in one of three modes:
//!
//! - **embedded** (the default): one `united-hub serve` child process of this
//!   binary on a temporary data directory (SQLite);
//! - **urls** (`--url`, once or more): hubs that are already running;
//! - **cluster** (`--cluster N`): a throw-away PostgreSQL and nats-server and
//!   N child nodes sharing them.
//!
//! The generator reads each hub's resident memory and CPU time from `/proc`
//! when it knows its process; with several nodes the figure is their sum.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::future::try_join_all;

use crate::localcluster::{free_port, LocalNats, LocalPostgres};

/// How the generator got its hubs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Embedded,
    Urls,
    Cluster,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Urls => "urls",
            Mode::Cluster => "cluster",
        }
    }
}

/// How long a hub may take to answer `/healthz` with 200.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
/// Fresh ports a node start tries when its child exits at once (port taken).
const PORT_ATTEMPTS: usize = 3;

/// One hub node.
pub struct Node {
    pub url: String,
    /// The node's process, when it runs on this machine and could be found.
    pub pid: Option<u32>,
    child: Option<Child>,
    _data_dir: Option<tempfile::TempDir>,
    /// The flags it was started with, to start it again (`restart`).
    extra: Vec<String>,
}

impl Node {
    /// Starts `united-hub serve` as a child on a free port and a temporary
    /// data directory, rate limits off, with `extra` flags, and waits until
    /// it answers `/healthz`. A child that exits at once (its port was taken
    /// meanwhile) is started again on another port.
    async fn start(extra: &[String]) -> anyhow::Result<Node> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut node = Node::spawn(extra)?;
            match node.wait_healthy().await {
                Ok(()) => return Ok(node),
                Err(e) if attempt < PORT_ATTEMPTS && e.root_cause().is::<Exited>() => {
                    tracing::debug!(error = %e, "hub node exited at start, trying another port");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(extra: &[String]) -> anyhow::Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("united-load-")
            .tempdir()
            .context("creating a data directory for the hub")?;
        let child = Self::child(free_port(), dir.path(), extra)?;
        Ok(Node {
            url: child.0,
            pid: Some(child.1.id()),
            child: Some(child.1),
            _data_dir: Some(dir),
            extra: extra.to_vec(),
        })
    }

    /// Stops the node as an operator does (SIGTERM: it closes its sessions
    /// and exits once what it accepted is answered), then starts it again
    /// on the same port and data directory and waits until it is healthy.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("only a node this run started can be restarted");
        };
        // SAFETY: kill(2) with a pid and a signal number reads nothing else.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().context("waiting for the hub")?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the node at {} did not stop within 20 s of SIGTERM",
                    self.url
                );
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        let port = local_port(&self.url).context("the node's port")?;
        let dir = self
            ._data_dir
            .as_ref()
            .context("the node's data directory")?;
        let (_, child) = Self::child(port, dir.path(), &self.extra)?;
        self.pid = Some(child.id());
        self.child = Some(child);
        self.wait_healthy().await
    }

    /// Runs `united-hub serve` on `port` and `dir`: its URL and process.
    fn child(
        port: u16,
        dir: &std::path::Path,
        extra: &[String],
    ) -> anyhow::Result<(String, Child)> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let child = Command::new(exe)
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir)
            // The run measures the hub's capacity, not its abuse limits
            // (thousands of sessions come from this one address).
            .args([
                "--auth-rate",
                "0",
                "--send-rate",
                "0",
                "--read-rate",
                "0",
                "--max-sessions-per-user",
                "0",
                "--max-connections-per-ip",
                "0",
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("UNITED_LOAD_HUB_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the hub")?;
        Ok((format!("http://127.0.0.1:{port}"), child))
    }

    /// A hub that is already running. Its pid is `pid`, or found from the
    /// listening port when the hub is on this machine.
    async fn attach(url: &str, pid: Option<u32>) -> anyhow::Result<Node> {
        let url = url.trim_end_matches('/').to_owned();
        let pid = pid.or_else(|| local_port(&url).and_then(pid_listening_on));
        let mut node = Node {
            url,
            pid,
            child: None,
            _data_dir: None,
            extra: Vec::new(),
        };
        node.wait_healthy().await?;
        Ok(node)
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(2))
            .finish();
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait().context("waiting for the hub")? {
                    self.child = None;
                    return Err(anyhow::Error::new(Exited)
                        .context(format!("the hub for {} exited ({status})", self.url)));
                }
            }
            if let Ok(res) = client.get(format!("{}/healthz", self.url)).send().await {
                if res.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the hub at {} did not become healthy within {} s",
                    self.url,
                    HEALTHY_WITHIN.as_secs()
                );
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node's resident set size in KiB, if it can be read.
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

/// The CPU time (user + system, all threads) this process has used, in
/// seconds. Linux only (`/proc`).
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds("/proc/self/stat")
}

/// The CPU time of the process whose `/proc/PID/stat` is `path`.
fn cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // After the command name (which may hold spaces): state is field 3,
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Clock ticks of USER_HZ, which is 100 on Linux (`getconf CLK_TCK`).
    Some(ticks as f64 / 100.0)
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the hub process exited")]
struct Exited;

/// Every hub of a run, and what it started for them.
pub struct Target {
    pub mode: Mode,
    /// Declared first: nodes stop before the database and the bus they use.
    pub nodes: Vec<Node>,
    _nats: Option<LocalNats>,
    _pg: Option<LocalPostgres>,
}

impl Target {
    /// One hub, a child of this binary, on SQLite.
    pub async fn embedded() -> anyhow::Result<Target> {
        Ok(Target {
            mode: Mode::Embedded,
            nodes: vec![Node::start(&[]).await?],
            _nats: None,
            _pg: None,
        })
    }

    /// Hubs that are already running; `pids` is empty or one per URL.
    pub async fn attach(urls: &[String], pids: &[u32]) -> anyhow::Result<Target> {
        anyhow::ensure!(
            pids.is_empty() || pids.len() == urls.len(),
            "--hub-pid: give one per --url ({} URLs, {} pids)",
            urls.len(),
            pids.len()
        );
        let nodes = try_join_all(
            urls.iter()
                .enumerate()
                .map(|(i, url)| Node::attach(url, pids.get(i).copied())),
        )
        .await?;
        Ok(Target {
            mode: Mode::Urls,
            nodes,
            _nats: None,
            _pg: None,
        })
    }

    /// A local cluster: PostgreSQL, nats-server and `n` nodes, all children
    /// of this process, stopped when the target is dropped.
    pub async fn cluster(n: usize) -> anyhow::Result<Target> {
        anyhow::ensure!(n > 0, "--cluster needs at least one node");
        let started = Instant::now();
        eprintln!("load: starting PostgreSQL");
        let pg = blocking(LocalPostgres::start)
            .await
            .context("starting PostgreSQL for --cluster")?;
        eprintln!(
            "load: PostgreSQL at {} ({:.1} s)",
            pg.url(),
            started.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        eprintln!("load: starting nats-server");
        let nats = blocking(LocalNats::start)
            .await
            .context("starting nats-server for --cluster")?;
        eprintln!(
            "load: nats-server at {} ({:.1} s)",
            nats.url(),
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        eprintln!("load: starting {n} hub nodes");
        let extra = [
            "--database-url".to_owned(),
            pg.url(),
            "--nats-url".to_owned(),
            nats.url(),
            "--jwt-secret-file".to_owned(),
            pg.secret_file().display().to_string(),
        ];
        // Dropping the half-started target on error stops what did start.
        let mut target = Target {
            mode: Mode::Cluster,
            nodes: Vec::new(),
            _nats: Some(nats),
            _pg: Some(pg),
        };
        target.nodes = try_join_all((0..n).map(|_| Node::start(&extra)))
            .await
            .context("starting the hub nodes")?;
        eprintln!(
            "load: {n} nodes healthy ({:.1} s; {:.1} s in all)",
            t.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        Ok(target)
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// The summed RSS of every node in KiB; `None` unless all can be read.
    pub fn rss_kib(&self) -> Option<u64> {
        self.nodes.iter().map(Node::rss_kib).sum()
    }

    /// The summed CPU seconds of every node; `None` unless all can be read.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.nodes
            .iter()
            .map(|n| cpu_seconds(&format!("/proc/{}/stat", n.pid?)))
            .sum()
    }

    /// Whether every node's process is known (memory figures are possible).
    pub fn knows_every_pid(&self) -> bool {
        self.nodes.iter().all(|n| n.pid.is_some())
    }

    /// The cluster counters of every node's `/metrics`, summed; `None` if a
    /// node's metrics cannot be read.
    pub async fn bus_counters(&self) -> Option<BTreeMap<String, u64>> {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(5))
            .finish();
        let mut sum = BTreeMap::new();
        for node in &self.nodes {
            let mut res = client
                .get(format!("{}/metrics", node.url))
                .send()
                .await
                .ok()?;
            let body = res.body().limit(8 << 20).await.ok()?;
            for line in String::from_utf8_lossy(&body).lines() {
                let Some((name, value)) = line.split_once(' ') else {
                    continue;
                };
                let Some(name) = name.strip_prefix("united_") else {
                    continue;
                };
                if BUS_COUNTERS.contains(&name) {
                    *sum.entry(name.to_owned()).or_insert(0) +=
                        value.trim().parse::<f64>().unwrap_or(0.0) as u64;
                }
            }
        }
        Some(sum)
    }
}

/// The counters of `/metrics` that tell how the bus between nodes fared.
pub const BUS_COUNTERS: [&str; 6] = [
    "cluster_events_published_total",
    "cluster_events_received_total",
    "cluster_events_repaired_total",
    "cluster_publish_dropped_total",
    "cluster_slow_consumer_total",
    "sequence_retries_total",
];

/// Runs blocking start-up work (initdb, waiting for a port) off the
/// generator's one thread, so ctrl-c is still heard meanwhile.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    actix_web::rt::task::spawn_blocking(f)
        .await
        .context("a start-up task panicked")?
}

/// The port of an `http://127.0.0.1:PORT` or `http://localhost:PORT` URL.
fn local_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (host, port) = rest.split('/').next()?.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
        .then(|| port.parse().ok())
        .flatten()
}

/// Finds the process listening on a TCP port through `/proc`.
fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is "HEXIP:HEXPORT"; state 0A is LISTEN.
            let Some((_, hex_port)) = cols.get(1).and_then(|a| a.rsplit_once(':')) else {
                continue;
            };
            if u16::from_str_radix(hex_port, 16).ok() == Some(port) && cols.get(3) == Some(&"0A") {
                if let Some(inode) = cols.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| Path::new(i) == target) {
                    return Some(pid);
                }
            }
        }
    }
    None
}
