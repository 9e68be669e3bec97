//! A consistent copy of the SQLite database, and its way back
//! (`united-hub backup` and `restore`).
//!
//! Beside a running hub (its marker, [`db::hub_marker`], names a live
//! process) the hub makes the copy itself, on request ([`BackupService`]):
//! `united-hub backup` leaves a request file beside the database, and the
//! hub's writer copies the database into `<target>.partial` with SQLite's
//! online backup API, a few pages at a time between its other jobs
//! ([`HotBackup`](super::writer::HotBackup)). No snapshot is held for the
//! length of the copy, so the WAL does not grow behind it and nothing is
//! left for the checkpointer to catch up with at its end; a commit waits
//! for one step at most. The hub reports progress in a status file, which
//! the command shows, and hands the whole copy over to the command, which
//! checks it in its own process.
//!
//! Without a running hub, the command copies the database itself with
//! `VACUUM INTO`: one read transaction, the database as of one moment,
//! compacted. Its marker ([`db::backup_marker`]) makes a hub that starts
//! meanwhile defer its WAL resets, which would otherwise wait for the
//! copy's snapshot while holding every commit.
//!
//! Either way the copy is flushed as it grows, checked (`PRAGMA
//! quick_check`), synced, and only then renamed into place. A backup
//! never overwrites a file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};

use super::writer::{BackupStep, DbExecutor, Lane, Writer};
use crate::db::{self, DbError};
use crate::runtime::StoppableThread;

/// What a backup or restore wrote.
#[derive(Debug)]
pub struct Summary {
    pub bytes: u64,
    pub users: u64,
    pub messages: u64,
    pub took: Duration,
    /// The hub (its process id) that made the copy, if one ran on the
    /// database.
    pub made_by_hub: Option<u32>,
}

/// How often the copy's new bytes are written to the disk while it grows.
const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// How much of the copy one flush call covers.
const FLUSH_RANGE: u64 = 1 << 20;

/// Writes the copy to the disk as it grows, a range at a time, each waited
/// for before the next. Left to the kernel, hundreds of MiB of the copy sit
/// dirty in the page cache and then go out at once, and every WAL fsync of
/// the running hub waits behind them: a 740 MiB backup held pushes up to
/// 450 ms (BENCHMARKS.md). In ranges a fsync waits for one at most.
#[derive(Default)]
struct Flusher {
    file: Option<File>,
    flushed: u64,
}

impl Flusher {
    /// Flushes what was written since the last call; returns the copy's size.
    fn flush(&mut self, path: &Path) -> u64 {
        if self.file.is_none() {
            self.file = std::fs::OpenOptions::new().write(true).open(path).ok();
        }
        let Some(file) = &self.file else {
            return 0;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        while self.flushed + FLUSH_RANGE <= len {
            if flush_range(file, self.flushed, FLUSH_RANGE).is_err() {
                break;
            }
            self.flushed += FLUSH_RANGE;
        }
        len
    }
}

#[cfg(target_os = "linux")]
fn flush_range(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments, and the
    // descriptor stays open for the call (`file` is borrowed).
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Elsewhere the kernel writes the copy when it likes.
#[cfg(not(target_os = "linux"))]
fn flush_range(_: &File, _: u64, _: u64) -> std::io::Result<()> {
    Ok(())
}

/// Removes the backup marker when the backup ends, however it ends.
struct Marker(PathBuf);

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Copies the database of `data_dir` to the new file `to`: through the hub
/// that runs on it, if one does, else directly. `progress` hears the bytes
/// written so far and about how many there will be, several times a
/// second.
pub fn backup(
    data_dir: &Path,
    to: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let source = db::db_path(data_dir);
    anyhow::ensure!(
        source.exists(),
        "there is no hub database at {}",
        source.display()
    );
    anyhow::ensure!(
        !to.exists(),
        "{} exists; a backup never overwrites a file",
        to.display()
    );
    anyhow::ensure!(
        !db::backup_running(&source) && running_request(&source).is_none(),
        "another backup of {} is running",
        source.display()
    );
    if let Some(hub) = db::other_hub(&source) {
        return backup_through_hub(&source, to, hub, started, progress);
    }
    // Only once no other backup runs: a partial file may be its copy.
    let partial = partial_of(to);
    let _ = std::fs::remove_file(&partial);
    let marker = Marker(db::backup_marker(&source));
    std::fs::write(&marker.0, db::marker_text())
        .with_context(|| format!("writing {}", marker.0.display()))?;

    let conn = Connection::open_with_flags(&source, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .with_context(|| format!("opening {}", source.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let total: i64 = conn.query_row(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        [],
        |r| r.get(0),
    )?;
    let target = partial
        .to_str()
        .context("the target's path is not UTF-8")?
        .to_owned();
    let copy = std::thread::spawn(move || conn.execute("VACUUM INTO ?1", [target]));
    let mut flusher = Flusher::default();
    let mut shown = Instant::now();
    while !copy.is_finished() {
        std::thread::sleep(FLUSH_EVERY);
        let written = flusher.flush(&partial);
        if shown.elapsed() >= Duration::from_millis(200) {
            shown = Instant::now();
            progress(written, total as u64);
        }
    }
    let copied = copy
        .join()
        .map_err(|_| anyhow::anyhow!("the copy panicked"));
    if let Err(e) = copied.and_then(|r| r.context("VACUUM INTO")) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    drop(marker);
    let summary = check(&partial, started).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    settle(&partial, to)?;
    progress(summary.bytes, summary.bytes);
    Ok(summary)
}

/// Puts the backup `from` in place as the database of `data_dir`, which
/// must not have one. The hub must not run on `data_dir`.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let target = db::db_path(data_dir);
    anyhow::ensure!(
        !target.exists(),
        "{} exists; restore into a data directory without a database (move the old one away first)",
        target.display()
    );
    check(from, started).with_context(|| format!("{} is not a usable backup", from.display()))?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let partial = partial_of(&target);
    std::fs::copy(from, &partial).with_context(|| format!("copying {}", from.display()))?;
    settle(&partial, &target)?;
    check(&target, started)
}

fn partial_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Checks a database file and counts what it holds.
fn check(path: &Path, started: Instant) -> anyhow::Result<Summary> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    // Pages read from a mapping, not one `pread` each: the check of a copy
    // made beside a running hub is its last and largest cost to the sends.
    conn.query_row("PRAGMA mmap_size = 1099511627776", [], |_| Ok(()))?;
    let verdict: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    anyhow::ensure!(verdict == "ok", "the integrity check says: {verdict}");
    let count = |table: &str| -> anyhow::Result<u64> {
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        Ok(n as u64)
    };
    Ok(Summary {
        bytes: std::fs::metadata(path)?.len(),
        users: count("users")?,
        messages: count("dm_messages")?,
        took: started.elapsed(),
        made_by_hub: None,
    })
}

/// Syncs `partial`, renames it to `to` and syncs the directory, so that the
/// file is whole at its name or not there.
fn settle(partial: &Path, to: &Path) -> anyhow::Result<()> {
    File::open(partial)?.sync_all()?;
    std::fs::rename(partial, to).with_context(|| format!("renaming to {}", to.display()))?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

// The hub's side: backups on request, made by the writer.

/// The file `united-hub backup` writes beside a running hub's database to
/// ask for a backup: the asking process's [`db::marker_text`] on the first
/// line, the target's absolute path on the second.
fn request_file(db: &Path) -> PathBuf {
    suffixed(db, "-backup-request")
}

/// The file the hub writes while it makes a requested backup: the asking
/// process's marker text, then a [`Status`] line.
fn status_file(db: &Path) -> PathBuf {
    suffixed(db, "-backup-status")
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes `text` to `path` whole or not at all (a temporary file renamed).
fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = suffixed(path, ".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Where a requested backup stands, as the status file says it.
#[derive(Debug, PartialEq)]
enum Status {
    Copying {
        copied: u64,
        total: u64,
    },
    /// The copy is whole in the partial file, for the asker to check and
    /// put in place.
    Copied {
        bytes: u64,
    },
    Failed(String),
}

impl Status {
    fn line(&self) -> String {
        match self {
            Status::Copying { copied, total } => format!("copying {copied} {total}"),
            Status::Copied { bytes } => format!("copied {bytes}"),
            Status::Failed(why) => format!("failed {}", why.replace('\n', " ")),
        }
    }

    fn parse(line: &str) -> Option<Status> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let numbers: Vec<u64> = rest
            .split_whitespace()
            .map_while(|n| n.parse().ok())
            .collect();
        match (word, numbers.as_slice()) {
            ("copying", [copied, total]) => Some(Status::Copying {
                copied: *copied,
                total: *total,
            }),
            ("copied", [bytes]) => Some(Status::Copied { bytes: *bytes }),
            ("failed", _) => Some(Status::Failed(rest.to_owned())),
            _ => None,
        }
    }
}

/// The asker's marker text and the status, if a status file is there.
fn read_status(db: &Path) -> Option<(String, Status)> {
    let text = std::fs::read_to_string(status_file(db)).ok()?;
    let (asker, status) = text.split_once('\n')?;
    Some((asker.to_owned(), Status::parse(status.trim_end())?))
}

/// A backup the hub is making, or has been asked for, whose asker lives.
fn running_request(db: &Path) -> Option<u32> {
    if let Ok(text) = std::fs::read_to_string(request_file(db)) {
        if let Some(pid) = text.lines().next().and_then(db::live_process) {
            return Some(pid);
        }
    }
    match read_status(db)? {
        (asker, Status::Copying { .. }) => db::live_process(&asker),
        _ => None,
    }
}

/// How long the command waits for a hub to take its request: it looks for
/// requests every [`REQUEST_POLL`].
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const REQUEST_POLL: Duration = Duration::from_millis(100);

/// Asks the hub (process `hub`) that runs on `source` for a backup to `to`
/// and shows its progress until it is done.
fn backup_through_hub(
    source: &Path,
    to: &Path,
    hub: u32,
    started: Instant,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Summary> {
    let to = std::path::absolute(to).context("resolving the target's path")?;
    let dir = to.parent().context("the target has no directory")?;
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let target = to.to_str().context("the target's path is not UTF-8")?;
    let me = db::marker_text();
    let request = request_file(source);
    write_whole(&request, &format!("{me}\n{target}\n"))
        .with_context(|| format!("writing {}", request.display()))?;
    // The request and the status are this command's to remove, however it
    // ends; the hub drops a backup whose asker has gone.
    struct Cleanup(PathBuf, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::remove_file(&self.1);
        }
    }
    let _cleanup = Cleanup(request.clone(), status_file(source));
    let asked = Instant::now();
    loop {
        std::thread::sleep(REQUEST_POLL);
        let status = read_status(source)
            .filter(|(asker, _)| *asker == me)
            .map(|(_, status)| status);
        match status {
            Some(Status::Copying { copied, total }) => progress(copied, total),
            Some(Status::Copied { bytes }) => {
                progress(bytes, bytes);
                // Checked here, in this process at the lowest priority, not
                // in the hub's: reading the whole copy there stalled its
                // sends (history, "A backup made by the hub's writer").
                lower_priority();
                let partial = partial_of(&to);
                let summary = check(&partial, started).inspect_err(|_| {
                    let _ = std::fs::remove_file(&partial);
                })?;
                settle(&partial, &to)?;
                return Ok(Summary {
                    made_by_hub: Some(hub),
                    ..summary
                });
            }
            Some(Status::Failed(why)) => {
                anyhow::bail!("the hub (pid {hub}) could not back up: {why}")
            }
            None => anyhow::ensure!(
                !request.exists() || asked.elapsed() < ANSWER_WITHIN,
                "the hub (pid {hub}) on {} did not take the backup request within {} s; \
                 a hub older than this united-hub does not take requests: back up with its own \
                 binary, or stop it and run this again",
                source.display(),
                ANSWER_WITHIN.as_secs()
            ),
        }
        if db::other_hub(source) != Some(hub) {
            // A hub that died mid-copy left its partial file behind.
            let _ = std::fs::remove_file(partial_of(&to));
            anyhow::bail!(
                "the hub (pid {hub}) stopped before the backup was done; nothing was written to {}",
                to.display()
            );
        }
    }
}

/// Pages the writer copies in one step: 256 KiB of 4 KiB pages, about a
/// millisecond of its time (steps of 1 MiB took 3–6 ms under 5,000 msg/s,
/// and a commit that came meanwhile waited that long).
const PAGES_PER_STEP: i32 = 64;
/// The pause between two steps, in which commits and other writes run: at
/// least this, and at least [`PAUSE_PER_STEP_TIME`] times as long as the
/// step took, so that the copy takes at most a quarter of the writer's
/// time and of a core (with a fixed 1 ms pause, `top` showed the hub at
/// a whole core during a backup at 5,000 msg/s on 2 cores).
const STEP_PAUSE: Duration = Duration::from_millis(1);
const PAUSE_PER_STEP_TIME: u32 = 3;
/// How often the status file is rewritten while the copy grows.
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// Takes backup requests for the hub that runs on a database and makes
/// them through its writer, on a thread of its own; dropping it stops the
/// thread (and a backup in progress, whose partial file is removed).
pub struct BackupService {
    _thread: StoppableThread,
}

impl BackupService {
    pub fn start(db: PathBuf, writer: Writer) -> std::io::Result<Self> {
        let thread = StoppableThread::spawn("united-backup", move |stop| {
            lower_priority();
            while !stop.load(Ordering::Acquire) {
                // Woken at once when the hub stops (the drop unparks it).
                std::thread::park_timeout(REQUEST_POLL);
                if let Some((asker, to)) = take_request(&db) {
                    let job = Job {
                        db: &db,
                        writer: &writer,
                        asker: &asker,
                        stop,
                    };
                    job.run(&to);
                }
            }
        })?;
        Ok(BackupService { _thread: thread })
    }
}

/// The thread that flushes and checks the copy runs at the lowest CPU
/// priority (nice 19): on a busy machine, sends come first. (Its check,
/// `quick_check`, is one step of SQLite's VM and cannot be paced.)
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid and setpriority only read their integer arguments;
    // on Linux a thread id names the thread for PRIO_PROCESS.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// A request, taken (its file removed): the asker and the target.
fn take_request(db: &Path) -> Option<(String, PathBuf)> {
    let path = request_file(db);
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    let mut lines = text.lines();
    let asker = lines.next()?.to_owned();
    let to = PathBuf::from(lines.next()?);
    db::live_process(&asker)?;
    Some((asker, to))
}

/// One requested backup.
struct Job<'a> {
    db: &'a Path,
    writer: &'a Writer,
    asker: &'a str,
    stop: &'a AtomicBool,
}

impl Job<'_> {
    fn run(&self, to: &Path) {
        self.report(&Status::Copying {
            copied: 0,
            total: 0,
        });
        let partial = partial_of(to);
        let outcome = self.copy(to, &partial).and_then(|()| {
            Ok(std::fs::metadata(&partial)
                .with_context(|| format!("reading {}", partial.display()))?
                .len())
        });
        match outcome {
            Ok(bytes) => {
                tracing::info!(bytes, "backup copied; the command that asked checks it");
                self.report(&Status::Copied { bytes });
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                tracing::warn!(error = %format!("{e:#}"), "backup failed");
                self.report(&Status::Failed(format!("{e:#}")));
            }
        }
    }

    fn report(&self, status: &Status) {
        let _ = write_whole(
            &status_file(self.db),
            &format!("{}\n{}\n", self.asker, status.line()),
        );
    }

    /// Runs `job` on the writer and waits for its answer.
    fn on_writer<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut DbExecutor) -> Result<T, DbError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.writer.run(Lane::Housekeeping, move |executor| {
            let _ = answer.send(job(executor));
        });
        let answer = answered
            .recv()
            .map_err(|_| anyhow::anyhow!("the hub's writer stopped"))?;
        Ok(answer?)
    }

    /// Copies the database into `partial` step by step.
    fn copy(&self, to: &Path, partial: &Path) -> anyhow::Result<()> {
        anyhow::ensure!(
            !to.exists(),
            "{} exists; a backup never overwrites a file",
            to.display()
        );
        let _ = std::fs::remove_file(partial);
        let dest =
            Connection::open(partial).with_context(|| format!("creating {}", partial.display()))?;
        // The copy is renamed into place only once whole, checked and
        // synced: it needs no journal, and no sync of its own.
        dest.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")?;
        self.on_writer(move |executor| executor.backup_begin(dest))?;
        let copied = self.steps(partial);
        let dest = self.on_writer(|executor| Ok(executor.backup_end()));
        copied?;
        drop(dest?.context("the copy's connection was lost")?);
        // The copy's header says WAL, like the database's; a backup is one
        // plain file, so its journal goes back to a rollback journal.
        let dest = Connection::open(partial)?;
        dest.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
        Ok(())
    }

    fn steps(&self, partial: &Path) -> anyhow::Result<()> {
        let mut flusher = Flusher::default();
        let mut checked = Instant::now();
        let mut reported = Instant::now();
        loop {
            let (step, took): (BackupStep, Duration) = self.on_writer(|executor| {
                let started = Instant::now();
                let step = executor.backup_step(PAGES_PER_STEP)?;
                Ok((step, started.elapsed()))
            })?;
            flusher.flush(partial);
            if step.done || reported.elapsed() >= REPORT_EVERY {
                reported = Instant::now();
                self.report(&Status::Copying {
                    copied: step.copied,
                    total: step.total,
                });
            }
            if step.done {
                return Ok(());
            }
            anyhow::ensure!(!self.stop.load(Ordering::Acquire), "the hub is stopping");
            if checked.elapsed() > Duration::from_secs(1) {
                checked = Instant::now();
                anyhow::ensure!(
                    db::live_process(self.asker).is_some(),
                    "the process that asked for the backup is gone"
                );
            }
            std::thread::sleep(STEP_PAUSE.max(took * PAUSE_PER_STEP_TIME));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_back_as_written() {
        for status in [
            Status::Copying {
                copied: 4096,
                total: 1 << 30,
            },
            Status::Copied { bytes: 7 },
            Status::Failed("disk full\nand more".into()),
        ] {
            let read = Status::parse(&status.line()).unwrap();
            match (&status, &read) {
                (Status::Failed(_), Status::Failed(why)) => assert_eq!(why, "disk full and more"),
                _ => assert_eq!(read, status),
            }
        }
        assert_eq!(Status::parse("copying 1"), None);
        assert_eq!(Status::parse("what 1 2"), None);
    }
}
