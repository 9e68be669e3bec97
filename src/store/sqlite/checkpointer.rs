//! The WAL checkpointer: moves committed pages from the WAL into the database
//! file on its own thread and connection, so that the writer never does it
//! and never waits for a large flush of the database file.
//!
//! Three things make a checkpoint stall group commits, and each is handled
//! here (docs/benchmarks-history.md, "The latency tail at 5,000 msg/s", has the figures):
//!
//! - **A checkpoint inside `COMMIT`.** SQLite's automatic checkpoint runs in
//!   the writer's `COMMIT`. The writer's connection runs with
//!   `wal_autocheckpoint=0`; this thread checkpoints in `PASSIVE` mode, which
//!   never blocks the writer or readers.
//! - **One large flush of the database file.** A `PASSIVE` checkpoint that
//!   cannot catch up with a busy writer copies pages into the database file
//!   but never fsyncs it, so unsynced pages pile up until the checkpoint that
//!   resets the WAL flushes them all at once (25-45 ms here) while holding the
//!   write lock. The writer's WAL fsync also waits for whatever the disk is
//!   flushing. So after every pass, every [`CHECKPOINT_INTERVAL`] (5 ms)
//!   while the WAL grows, this thread writes the pages it copied to the
//!   disk itself, on its own descriptor and in ranges ([`flush`]): many
//!   small flushes instead of one large one, so that a WAL fsync never
//!   waits behind much.
//! - **The reset.** The WAL must be reset now and then or it grows without
//!   end; a `RESTART` checkpoint does it, holding new commits while it runs.
//!   It runs right after a pass and its flush, when there is almost nothing
//!   left to copy or write, so it holds them for a few milliseconds.
//!
//! The extra flushes change nothing about durability: SQLite's own order of
//! writes and fsyncs is unchanged.
//!
//! While `united-hub backup` reads the database in its own process (its
//! marker file, [`db::backup_marker`], names a live process: no hub ran
//! when it started, and this one started meanwhile), resets wait: a
//! `RESTART` would wait for the backup's old snapshot, holding every commit
//! for up to the busy timeout. The WAL grows for as long as that backup
//! runs. A backup asked of a running hub holds no snapshot and changes
//! nothing here (`backup.rs`).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::db::{self, DbError};
use crate::metrics::Metrics;
use crate::runtime::StoppableThread;

/// How often the checkpointer copies new WAL frames and flushes them while
/// the WAL grows. The smaller each flush, the shorter the WAL fsyncs that
/// wait behind it: at 5,000 messages/s over 60 s, p99 send → push was 17-20
/// ms with a pass every 50 ms, 14 ms every 20 ms, 9.5-11 ms every 10 ms and
/// 5.8-7.1 ms every 5 ms (2 ms gave no more). Throughput at `--window 8` did
/// not move measurably (docs/benchmarks-history.md).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(5);
/// The longest wait between passes: after each pass that found nothing to
/// copy the wait doubles up to this, so an idle hub wakes 20 times a second,
/// not 200; the first pass that copies something brings it back down.
pub const IDLE_INTERVAL: Duration = Duration::from_millis(50);
/// WAL frames (pages) above which the WAL is reset with a `RESTART`
/// checkpoint: 64 MiB of 4 KiB pages.
pub const RESTART_FRAMES: i64 = 16_384;

/// Owns the checkpoint thread; dropping it stops the thread.
pub struct Checkpointer {
    _thread: StoppableThread,
}

/// What one `PRAGMA wal_checkpoint` reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    /// Frames in the WAL.
    frames: i64,
    /// Frames copied into the database file.
    copied: i64,
}

/// How much of the database file one flush call covers (Linux).
const FLUSH_RANGE: i64 = 4 << 20;

/// Writes the database file's dirty pages to the disk, one [`FLUSH_RANGE`]
/// at a time, each waited for before the next starts. A single `fdatasync`
/// would queue them all at once, and the writer's next WAL fsync would wait
/// behind the whole queue; in ranges, it waits for one range at most (in
/// 60 s runs at 5,000 msg/s, commits over 5 ms fell from 2.1% to 0.6%).
///
/// Durability does not rest on this: SQLite fsyncs the database file itself
/// before any checkpoint lets the WAL be reset. This only moves the writing
/// out of that fsync, which runs while commits wait.
#[cfg(target_os = "linux")]
fn flush(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = i64::try_from(file.metadata()?.len()).unwrap_or(i64::MAX);
    let mut offset = 0;
    while offset < len {
        // SAFETY: sync_file_range only reads its integer arguments, and the
        // descriptor stays open for the call (`file` is borrowed).
        let rc = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset,
                FLUSH_RANGE,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        offset += FLUSH_RANGE;
    }
    Ok(())
}

/// Elsewhere: one `fdatasync`.
#[cfg(not(target_os = "linux"))]
fn flush(file: &File) -> std::io::Result<()> {
    file.sync_data()
}

/// The checkpoint thread's connection and the database file it flushes.
struct Worker {
    conn: Connection,
    file: File,
    metrics: Arc<Metrics>,
    last: Progress,
    /// [`RESTART_FRAMES`], or less in tests.
    restart_frames: i64,
    /// The database file, whose backup marker defers resets.
    path: PathBuf,
    /// A backup was seen running at the last reset that was due.
    deferred: bool,
}

impl Worker {
    /// Runs one checkpoint in `mode` and times it.
    fn checkpoint(&self, mode: &'static str) -> Result<Progress, DbError> {
        let started = Instant::now();
        let (frames, copied) =
            self.conn
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                    Ok((r.get(1)?, r.get(2)?))
                })?;
        (self.metrics.checkpoint_seconds)
            .with_label_values(&[&mode.to_ascii_lowercase()])
            .observe(started.elapsed().as_secs_f64());
        self.metrics.wal_frames.set(frames);
        Ok(Progress { frames, copied })
    }

    /// One pass: copy what is new, then [`flush`] the database file if the
    /// pass wrote to it. Returns the WAL's size.
    fn pass(&mut self) -> Result<Progress, DbError> {
        let progress = self.checkpoint("PASSIVE")?;
        if progress != self.last && progress.copied > 0 {
            let started = Instant::now();
            flush(&self.file)
                .map_err(|e| DbError::Other(format!("flushing the database file: {e}")))?;
            (self.metrics.checkpoint_seconds)
                .with_label_values(&["sync"])
                .observe(started.elapsed().as_secs_f64());
        }
        self.last = progress;
        Ok(progress)
    }

    /// Whether a backup reads the database now; logs when that changes.
    fn backup_running(&mut self) -> bool {
        let running = db::backup_running(&self.path);
        if running != self.deferred {
            self.deferred = running;
            tracing::info!(
                wal_frames = self.last.frames,
                "{}",
                if running {
                    "a backup is reading the database: WAL resets wait for it"
                } else {
                    "the backup ended: WAL resets resume"
                }
            );
        }
        running
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut interval = CHECKPOINT_INTERVAL;
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(interval);
            let before = self.last;
            match self.pass() {
                Ok(progress) => {
                    interval = if progress != before {
                        CHECKPOINT_INTERVAL
                    } else {
                        (interval * 2).min(IDLE_INTERVAL)
                    };
                    if progress.frames > self.restart_frames && !self.backup_running() {
                        match self.checkpoint("RESTART") {
                            Ok(progress) => self.last = progress,
                            Err(e) => tracing::warn!(error = %e, "restart checkpoint failed"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
            }
        }
    }
}

impl Checkpointer {
    pub fn start(path: PathBuf, metrics: Arc<Metrics>) -> Result<Self, DbError> {
        let worker = Worker {
            conn: db::open_writer(&path)?,
            file: File::open(&path)
                .map_err(|e| DbError::Other(format!("opening {}: {e}", path.display())))?,
            metrics,
            last: Progress::default(),
            restart_frames: RESTART_FRAMES,
            path,
            deferred: false,
        };
        let thread = StoppableThread::spawn("united-checkpoint", move |stop| worker.run(stop))
            .map_err(|e| DbError::Other(format!("starting the checkpointer: {e}")))?;
        Ok(Checkpointer { _thread: thread })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::JoinHandle;

    /// A database at `dir` with table `t`, its writer, and a running worker
    /// that resets the WAL past `restart_frames`; stop it with the flag.
    fn start_worker(
        dir: &std::path::Path,
        restart_frames: i64,
    ) -> (Connection, Arc<Metrics>, Arc<AtomicBool>, JoinHandle<()>) {
        let path = dir.join("t.db");
        let writer = db::open_writer(&path).unwrap();
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let worker = Worker {
            conn: db::open_writer(&path).unwrap(),
            file: File::open(&path).unwrap(),
            metrics: metrics.clone(),
            last: Progress::default(),
            restart_frames,
            path: path.clone(),
            deferred: false,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || worker.run(&flag));
        (writer, metrics, stop, thread)
    }

    /// Whether `done` comes true within 5 s (polled every 10 ms).
    fn within_5s(done: impl Fn() -> bool) -> bool {
        let started = Instant::now();
        while !done() {
            if started.elapsed() > Duration::from_secs(5) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn count(metrics: &Metrics, mode: &str) -> u64 {
        (metrics.checkpoint_seconds)
            .with_label_values(&[mode])
            .get_sample_count()
    }

    /// Passes come every 5 ms only while the WAL grows: idle, the wait
    /// doubles to 50 ms; a write brings the passes, and a flush, back.
    #[test]
    fn an_idle_database_is_checked_rarely_and_a_write_wakes_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, metrics, stop, thread) = start_worker(dir.path(), RESTART_FRAMES);
        writer
            .execute("INSERT INTO t (body) VALUES (?1)", [&[1u8; 100][..]])
            .unwrap();
        assert!(
            within_5s(|| count(&metrics, "sync") >= 1),
            "the first write was never flushed"
        );
        let flushed = count(&metrics, "sync");

        // 600 ms idle: at one pass per 5 ms that would be over 100 passes;
        // backing off to 50 ms it is about 15.
        let before = count(&metrics, "passive");
        std::thread::sleep(Duration::from_millis(600));
        let idle_passes = count(&metrics, "passive") - before;
        assert!(idle_passes < 40, "{idle_passes} passes in 600 ms idle");

        writer
            .execute("INSERT INTO t (body) VALUES (?1)", [&[2u8; 100][..]])
            .unwrap();
        assert!(
            within_5s(|| count(&metrics, "sync") > flushed),
            "a write after the idle spell was never flushed"
        );
        stop.store(true, Ordering::Release);
        thread.join().unwrap();
    }

    /// Under a writer that never pauses, the WAL is still reset: its file
    /// stays near the bound, the database file is flushed by this thread,
    /// and every write succeeds (the writer waits out each `RESTART`).
    #[test]
    fn the_wal_stays_bounded_under_a_writer_that_never_pauses() {
        let dir = tempfile::tempdir().unwrap();
        let restart_frames = 200;
        let (writer, metrics, stop, thread) = start_worker(dir.path(), restart_frames);

        // Two pages a commit, for at least two seconds and until the WAL
        // has been reset five times (or 30 s have passed): thousands of
        // frames.
        let body = vec![7u8; 6000];
        let started = Instant::now();
        let mut rows = 0;
        while started.elapsed() < Duration::from_secs(2)
            || (count(&metrics, "restart") < 5 && started.elapsed() < Duration::from_secs(30))
        {
            writer
                .execute("INSERT INTO t (body) VALUES (?1)", [&body])
                .unwrap();
            rows += 1;
        }
        stop.store(true, Ordering::Release);
        thread.join().unwrap();

        let written = rows * 2;
        let restarts = count(&metrics, "restart");
        let syncs = count(&metrics, "sync");
        let wal = std::fs::metadata(dir.path().join("t.db-wal"))
            .unwrap()
            .len();
        // Without the reset the WAL file would hold every frame written.
        // With it, the file is as long as the longest stretch between two
        // resets, and how long that is depends on how much CPU the
        // checkpointer gets beside the writer: 10 bounds when alone, a
        // quarter of everything written in a CI run beside the other unit
        // tests on 2 cores. Over five resets, half of what was written
        // still tells a reset WAL from one never reset, without timing.
        let frame = 4096 + 24;
        let bound = (written as u64 * frame / 2).max(10 * restart_frames as u64 * frame);
        assert!(written > 4 * restart_frames, "only {rows} rows written");
        assert!(restarts >= 5, "{restarts} restarts for {rows} rows");
        assert!(syncs >= 1, "the database file was never flushed");
        assert!(
            wal < bound,
            "WAL of {wal} bytes after {rows} rows and {restarts} restarts (bound {bound})"
        );
        let stored: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, rows);
    }

    /// While a live process holds the backup marker, the WAL is not reset;
    /// a marker that names a dead process, or none, lets resets run.
    #[test]
    fn a_running_backup_defers_wal_resets() {
        let dir = tempfile::tempdir().unwrap();
        let marker = db::backup_marker(&dir.path().join("t.db"));
        std::fs::write(&marker, std::process::id().to_string()).unwrap();
        let (writer, metrics, stop, thread) = start_worker(dir.path(), 50);
        let body = vec![7u8; 6000];
        for _ in 0..400 {
            writer
                .execute("INSERT INTO t (body) VALUES (?1)", [&body])
                .unwrap();
        }
        // Passes go on (they never block a writer); resets do not.
        assert!(within_5s(|| count(&metrics, "passive") >= 5));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(count(&metrics, "restart"), 0, "a reset ran during a backup");

        // A marker whose process is gone (pid 0 is never a process) is
        // stale: the reset that waited runs. (No write here: a write into a
        // WAL the checkpointer has caught up with resets it by itself.)
        std::fs::write(&marker, "0").unwrap();
        assert!(
            within_5s(|| count(&metrics, "restart") >= 1),
            "resets never resumed"
        );
        stop.store(true, Ordering::Release);
        thread.join().unwrap();
    }
}
