//! The hub under load: a child process of this binary on a temporary data
//! directory (the default), or one already running (`--url`). Either way the
//! generator can read the hub's resident memory from `/proc`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

pub struct TargetHub {
    pub url: String,
    /// The hub's process, when it runs on this machine and could be found.
    pub pid: Option<u32>,
    child: Option<Child>,
    _data_dir: Option<tempfile::TempDir>,
}

impl TargetHub {
    /// Starts `united-hub serve` as a child on a free port and a temporary
    /// data directory, and waits until it answers `/healthz`.
    pub async fn spawn() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let exe = std::env::current_exe().context("locating this binary")?;
        let child = Command::new(exe)
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path())
            // The run measures the hub's capacity, not its abuse limits.
            .args(["--auth-rate", "0", "--send-rate", "0"])
            .env(
                "RUST_LOG",
                std::env::var("UNITED_LOAD_HUB_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the hub")?;
        let hub = TargetHub {
            url: format!("http://127.0.0.1:{port}"),
            pid: Some(child.id()),
            child: Some(child),
            _data_dir: Some(dir),
        };
        hub.wait_healthy().await?;
        Ok(hub)
    }

    /// A hub that is already running. Its pid is `pid`, or found from the
    /// listening port when the hub is on this machine.
    pub async fn attach(url: &str, pid: Option<u32>) -> anyhow::Result<Self> {
        let url = url.trim_end_matches('/').to_owned();
        let pid = pid.or_else(|| local_port(&url).and_then(pid_listening_on));
        let hub = TargetHub {
            url,
            pid,
            child: None,
            _data_dir: None,
        };
        hub.wait_healthy().await?;
        Ok(hub)
    }

    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(2))
            .finish();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(res) = client.get(format!("{}/healthz", self.url)).send().await {
                if res.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the hub at {} did not become healthy within 30 s", self.url);
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The hub's resident set size in KiB, if it can be read.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for TargetHub {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
