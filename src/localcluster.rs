//! Throw-away PostgreSQL and nats-server instances, run as child processes.
//!
//! The integration tests and `united-hub load --cluster N` use these to stand
//! up a local cluster without touching any system service: each instance gets
//! its own temporary directory and a free port on 127.0.0.1, and is stopped
//! when its handle is dropped (also on panic).
//!
//! PostgreSQL refuses to run as root; when this process is root, every
//! PostgreSQL binary runs as the `postgres` user (or `nobody` if there is no
//! such user), and the temporary directory is handed over to that user.
//!
//! Why it is this long: two child-process harnesses (PostgreSQL and nats-
//! server), each with logins and TLS, and their tests.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;

const PG_NOT_FOUND: &str = "PostgreSQL server binaries (initdb, pg_ctl) not found: install them \
     with 'apt-get install postgresql' (Debian) or your platform's postgresql server package";
const NATS_NOT_FOUND: &str = "nats-server not found: install it with 'apt-get install \
     nats-server' (Debian) or from your platform's packages";

/// The database [`LocalPostgres`] creates and [`LocalPostgres::url`] names.
pub const DATABASE: &str = "united";
/// Extra settings for the PostgreSQL this module starts, as `pg_ctl -o`
/// takes them (`-c shared_buffers=1GB -c ...`): for measuring how the
/// server's settings move the cluster's figures (BENCHMARKS.md, "Commands").
pub const PG_OPTIONS_VAR: &str = "UNITED_LOCAL_PG_OPTIONS";

/// How long to wait for a nats-server to accept connections.
const NATS_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many fresh ports a first start tries when its port was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, read, released).
///
/// # Panics
/// If no socket can be bound on 127.0.0.1 at all.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("cannot bind a socket on 127.0.0.1: {e}"))
}

fn try_free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot bind a socket on 127.0.0.1 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A PostgreSQL server in a temporary directory, with a database `united`.
///
/// Stopped with `pg_ctl stop -m immediate` on drop.
#[derive(Debug)]
pub struct LocalPostgres {
    bin: PathBuf,
    dir: TempDir,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// uid and gid the PostgreSQL binaries run as, when this process is root.
    run_as: Option<(u32, u32)>,
    running: bool,
    /// Serves TLS (`ssl=on`) with `server.crt` and `server.key` in the data
    /// directory.
    tls: bool,
}

impl LocalPostgres {
    /// Runs `initdb` in a new temporary directory, starts the server on a
    /// free port and creates the database `united`.
    pub fn start() -> anyhow::Result<LocalPostgres> {
        let bin = find_pg_bin().ok_or_else(|| anyhow!(PG_NOT_FOUND))?;
        let run_as = if is_root()? {
            Some(unprivileged_user()?)
        } else {
            None
        };
        let dir = pg_tempdir(run_as)?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("cannot chown {} to {uid}:{gid}", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let mut pg = LocalPostgres {
            bin,
            dir,
            data,
            log,
            port: 0,
            run_as,
            running: false,
            tls: false,
        };

        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync");
        pg.run(initdb, "initdb")?;

        // The port was free when picked; another process may take it before
        // the server binds it, so a first start tries a few.
        let mut attempt = 0;
        loop {
            attempt += 1;
            pg.port = try_free_port()?;
            let log_len = fs::metadata(&pg.log).map(|m| m.len()).unwrap_or(0);
            match pg.pg_ctl_start() {
                Ok(()) => break,
                Err(e)
                    if attempt < PORT_ATTEMPTS
                        && pg.log_since(log_len).contains("could not bind") =>
                {
                    tracing::debug!(port = pg.port, error = %e, "postgres port taken, trying another");
                }
                Err(e) => return Err(e),
            }
        }

        let createdb = pg.bin.join("createdb");
        let createdb = if is_executable(&createdb) {
            createdb
        } else {
            find_in_path("createdb").context("createdb not found next to pg_ctl nor in PATH")?
        };
        let mut cmd = pg.command(createdb);
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(pg.port.to_string())
            .args(["-U", "postgres", DATABASE]);
        pg.run(cmd, "createdb")?;
        Ok(pg)
    }

    /// The same, serving TLS with `cert_pem` and `key_pem` (`ssl=on`; clients
    /// choose with `sslmode`).
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> anyhow::Result<LocalPostgres> {
        let mut pg = LocalPostgres::start()?;
        pg.pg_ctl_stop("fast")?;
        for (name, pem, mode) in [
            ("server.crt", cert_pem, 0o644),
            ("server.key", key_pem, 0o600),
        ] {
            let path = pg.data.join(name);
            fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            if let Some((uid, gid)) = pg.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        pg.tls = true;
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    /// A secret file for the hub nodes that share this database: cluster
    /// mode needs every node to be given the same `--jwt-secret-file`.
    /// Made on first use (64 random hex characters, mode 0600).
    pub fn secret_file(&self) -> PathBuf {
        let path = self.dir.path().join("cluster_secret");
        if !path.exists() {
            crate::auth::load_or_create_secret(&path)
                .expect("a secret file in the server's directory");
        }
        path
    }

    /// `postgres://postgres@127.0.0.1:<port>/united`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Shuts the server down cleanly (`pg_ctl stop -m fast -w`).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Starts the server again on the same port and data directory.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.running {
            return Ok(());
        }
        self.pg_ctl_start()
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`), as a crash
    /// would; the next start runs crash recovery. Errors are ignored.
    pub fn kill(&mut self) {
        if let Err(e) = self.pg_ctl_stop("immediate") {
            tracing::warn!(error = %e, "pg_ctl stop -m immediate failed");
        }
    }

    fn pg_ctl_start(&mut self) -> anyhow::Result<()> {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
             -c max_connections=200 -c shared_buffers=128MB",
            self.port,
            shell_quote(&self.dir.path().to_string_lossy()),
        );
        if self.tls {
            opts.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        // More server settings, for measuring (`-c name=value ...`).
        if let Ok(extra) = std::env::var(PG_OPTIONS_VAR) {
            opts.push(' ');
            opts.push_str(&extra);
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "30", "-o", &opts, "start"]);
        let log_len = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        match self.run(cmd, "pg_ctl start") {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(e) => {
                // pg_ctl may give up while the postmaster lives on: stop it.
                let _ = self.pg_ctl_stop_quiet("immediate");
                Err(e.context(format!(
                    "postgres on port {} did not start; its log:\n{}",
                    self.port,
                    self.log_since(log_len)
                )))
            }
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.pg_ctl_stop_quiet(mode)?;
        self.running = false;
        Ok(())
    }

    fn pg_ctl_stop_quiet(&self, mode: &str) -> anyhow::Result<Output> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "30", "stop"]);
        self.run(cmd, "pg_ctl stop")
    }

    /// `pg_ctl status` output (used by the tests).
    #[cfg(test)]
    fn status(&self) -> String {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.data).arg("status");
        match cmd.output() {
            Ok(out) => output_text(&out),
            Err(e) => format!("cannot run pg_ctl status: {e}"),
        }
    }

    /// A command for a PostgreSQL binary: runs in the temporary directory,
    /// with a clean `PG*` environment, as the unprivileged user if root.
    fn command(&self, program: impl AsRef<Path>) -> Command {
        let program = program.as_ref();
        let program = if program.is_absolute() {
            program.to_path_buf()
        } else {
            self.bin.join(program)
        };
        let mut cmd = Command::new(program);
        cmd.current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Runs `cmd` to completion, its output captured; a failure carries it.
    fn run(&self, mut cmd: Command, what: &str) -> anyhow::Result<Output> {
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {what} ({:?})", cmd.get_program()))?;
        if !out.status.success() {
            bail!("{what} failed ({}):\n{}", out.status, output_text(&out));
        }
        Ok(out)
    }

    /// What the server logged after byte `from` of its log.
    fn log_since(&self, from: u64) -> String {
        read_from(&self.log, from)
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl_stop_quiet("immediate");
        }
    }
}

/// A nats-server in a temporary directory (which holds its log).
///
/// Killed on drop.
#[derive(Debug)]
pub struct LocalNats {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    options: NatsOptions,
}

/// How a [`LocalNats`] is run: with a user and password, and with TLS.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// Clients must log in as this user with this password.
    pub user: Option<(String, String)>,
    /// PEM files of the server's certificate and key: clients must use TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl LocalNats {
    /// Starts `nats-server -a 127.0.0.1 -p <free port>` and waits until it
    /// greets a TCP client with `INFO`.
    pub fn start() -> anyhow::Result<LocalNats> {
        Self::start_with(NatsOptions::default())
    }

    /// The same, with a user and password and/or TLS.
    pub fn start_with(options: NatsOptions) -> anyhow::Result<LocalNats> {
        let bin = find_nats().ok_or_else(|| anyhow!(NATS_NOT_FOUND))?;
        let dir = tempfile::Builder::new()
            .prefix("united-nats-")
            .tempdir()
            .context("cannot create a temporary directory for nats-server")?;
        let mut nats = LocalNats {
            bin,
            dir,
            port: 0,
            child: None,
            options,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            nats.port = try_free_port()?;
            match nats.spawn_and_wait(Instant::now() + NATS_READY_TIMEOUT, false) {
                Ok(()) => return Ok(nats),
                Err(e) if attempt < PORT_ATTEMPTS && e.root_cause().is::<NatsExited>() => {
                    tracing::debug!(port = nats.port, error = %e, "nats port taken, trying another");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `nats://127.0.0.1:<port>` (`tls://` with TLS), with the user and
    /// password when the server asks for them.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "tls"
        } else {
            "nats"
        };
        let user = match &self.options.user {
            Some((user, password)) => format!("{user}:{password}@"),
            None => String::new(),
        };
        format!("{scheme}://{user}127.0.0.1:{}", self.port)
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, retrying for up to 10 s
    /// while the port is still held.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
            self.child = None;
        }
        self.spawn_and_wait(Instant::now() + NATS_READY_TIMEOUT, true)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// Spawns the server and waits for its `INFO` greeting until `deadline`.
    /// With `respawn`, a server that exits (port still held) is started again
    /// until the deadline.
    fn spawn_and_wait(&mut self, deadline: Instant, respawn: bool) -> anyhow::Result<()> {
        let log_path = self.log_path();
        let log_start = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut child = self.spawn(&log_path)?;
        loop {
            if let Some(status) = child.try_wait().context("cannot wait for nats-server")? {
                if respawn && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(200));
                    child = self.spawn(&log_path)?;
                    continue;
                }
                return Err(anyhow!(NatsExited)).with_context(|| {
                    format!(
                        "nats-server on port {} exited ({status}); its log:\n{}",
                        self.port,
                        read_from(&log_path, log_start)
                    )
                });
            }
            if read_info(addr).is_ok() && matches!(child.try_wait(), Ok(None)) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "nats-server on port {} did not greet within {:?}; its log:\n{}",
                    self.port,
                    NATS_READY_TIMEOUT,
                    read_from(&log_path, log_start)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(&self, log_path: &Path) -> anyhow::Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string());
        if let Some((user, password)) = &self.options.user {
            cmd.args(["--user", user, "--pass", password]);
        }
        if let Some((cert, key)) = &self.options.tls {
            cmd.arg("--tls")
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
        }
        // One Go scheduler thread: this server carries a few hundred
        // messages a second (one per group commit) beside the nodes and
        // PostgreSQL on the same cores, and with more its idle threads spin
        // (futex, nanosleep, sched_yield): 2.7 against 1.5 µs of its CPU per
        // hub message on 2 cores (BENCHMARKS.md). `GOMAXPROCS` in the
        // environment wins.
        if std::env::var_os("GOMAXPROCS").is_none() {
            cmd.env("GOMAXPROCS", "1");
        }
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("nats-server exited")]
struct NatsExited;

/// Connects to `addr` and reads the first line, which must start with `INFO`.
fn read_info(addr: SocketAddr) -> anyhow::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if !line.starts_with("INFO") {
        bail!("{addr} greeted with {line:?}, not INFO");
    }
    Ok(line)
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: the one of the
/// first `initdb` in `$PATH` (symlinks resolved), else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_pg_bin() -> Option<PathBuf> {
    let complete =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"));
    if let Some(initdb) = find_in_path("initdb") {
        if let Some(dir) = fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            if complete(&dir) {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

fn find_nats() -> Option<PathBuf> {
    find_in_path("nats-server").or_else(|| {
        ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| is_executable(p))
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether the effective uid is 0, from the `Uid:` line of
/// `/proc/self/status` (real, effective, saved, fs). Without `/proc` (not
/// Linux), the binaries simply run as this process.
fn is_root() -> anyhow::Result<bool> {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return Ok(false);
    };
    let euid: u32 = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .context("no effective uid in /proc/self/status")?;
    Ok(euid == 0)
}

/// uid and gid of `postgres`, else `nobody`, from `/etc/passwd`.
fn unprivileged_user() -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    let lookup = |user: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0] != user {
                return None;
            }
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        })
    };
    lookup("postgres").or_else(|| lookup("nobody")).context(
        "running as root, and neither a 'postgres' nor a 'nobody' user exists in /etc/passwd \
         to run PostgreSQL as (it refuses to run as root)",
    )
}

/// A temporary directory for PostgreSQL. When it runs as another user, that
/// user must be able to reach the directory: if `$TMPDIR` is not reachable,
/// `/tmp` is used instead.
fn pg_tempdir(run_as: Option<(u32, u32)>) -> anyhow::Result<TempDir> {
    let base = std::env::temp_dir();
    let base = match run_as {
        Some((uid, gid)) if !traversable(&base, uid, gid) => PathBuf::from("/tmp"),
        _ => base,
    };
    tempfile::Builder::new()
        .prefix("united-pg-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a temporary directory in {}", base.display()))
}

/// Whether `uid`/`gid` may search every directory from `/` down to `dir`.
fn traversable(dir: &Path, uid: u32, gid: u32) -> bool {
    dir.ancestors().all(|d| match fs::metadata(d) {
        Ok(m) => {
            let mode = m.mode();
            mode & 0o001 != 0
                || (m.uid() == uid && mode & 0o100 != 0)
                || (m.gid() == gid && mode & 0o010 != 0)
        }
        Err(_) => false,
    })
}

/// `s` quoted for `/bin/sh` (pg_ctl hands `-o` to a shell).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// The text of `path` from byte `from` on (at most its last 8 KiB); empty
/// when it cannot be read.
fn read_from(path: &Path, from: u64) -> String {
    const MAX: u64 = 8 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(MAX));
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(port: u16) -> bool {
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(2),
        )
        .is_ok()
    }

    #[test]
    fn postgres_starts_stops_and_starts_again() {
        let mut pg = LocalPostgres::start().expect("LocalPostgres::start");
        let port = pg.port();
        assert_eq!(
            pg.url(),
            format!("postgres://postgres@127.0.0.1:{port}/united")
        );
        assert!(
            accepts(port),
            "postgres does not accept connections on {port}"
        );
        let status = pg.status();
        assert!(
            status.contains("server is running"),
            "pg_ctl status: {status}"
        );

        pg.stop().expect("stop");
        assert!(
            !accepts(port),
            "postgres still accepts connections after stop"
        );
        let status = pg.status();
        assert!(
            status.contains("no server running"),
            "pg_ctl status: {status}"
        );

        pg.start_again().expect("start_again");
        assert_eq!(pg.port(), port);
        assert!(
            accepts(port),
            "postgres does not accept connections after start_again"
        );
        let status = pg.status();
        assert!(
            status.contains("server is running"),
            "pg_ctl status: {status}"
        );

        pg.kill();
        pg.start_again().expect("start_again after kill");
        assert!(
            accepts(port),
            "postgres does not accept connections after crash recovery"
        );
    }

    #[test]
    fn nats_starts_stops_and_starts_again() {
        let mut nats = LocalNats::start().expect("LocalNats::start");
        let port = nats.port();
        assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let info = read_info(addr).expect("INFO greeting");
        assert!(info.starts_with("INFO {"), "greeting: {info:?}");

        nats.stop();
        assert!(
            !accepts(port),
            "nats-server still accepts connections after stop"
        );

        nats.start_again().expect("start_again");
        assert_eq!(nats.port(), port);
        read_info(addr).expect("INFO greeting after start_again");
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind the free port");
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
