//! A consistent copy of the SQLite database while the hub runs, and its
//! way back (`united-hub backup` and `restore`).
//!
//! The copy is `VACUUM INTO` on a connection of its own: one read
//! transaction, so it is the database as of one moment, compacted. The hub
//! goes on writing meanwhile. Its checkpointer sees the backup's marker
//! ([`db::backup_marker`]) and defers WAL resets, which would otherwise
//! wait for the backup's snapshot and hold every commit while waiting. The
//! copy is written beside the target as `<target>.partial`, synced, checked
//! (`PRAGMA quick_check`), and only then renamed into place.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};

use crate::db;

/// What a backup or restore wrote.
#[derive(Debug)]
pub struct Summary {
    pub bytes: u64,
    pub users: u64,
    pub messages: u64,
    pub took: Duration,
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

/// Copies the database of `data_dir` to the new file `to`. `progress` hears
/// the bytes written so far and about how many there will be, about once a
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
        !db::backup_running(&source),
        "another backup of {} is running",
        source.display()
    );
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
