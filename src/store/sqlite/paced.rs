//! A VFS for the checkpointer's connection that writes the database file
//! to the disk as it goes: after every [`PACE_BYTES`] a checkpoint copies
//! into the file, the copy waits until those bytes are on the disk.
//!
//! Why: a checkpoint copies WAL frames into the database file through the
//! page cache, and SQLite syncs the file once, at the end. After a backup
//! (whose snapshot holds the WAL for its whole copy) one `PASSIVE` pass
//! copied 100-200 MB that way, and the one `fdatasync` that followed held
//! the writer's WAL fsync behind it: pushes stalled 134 and 208 ms at the
//! backup's end (BENCHMARKS.md, "A backup while the hub takes 5,000
//! msg/s"). Paced, the file never holds more than about [`PACE_BYTES`]
//! not yet written, whatever one pass copies, so a WAL fsync waits for one
//! such range at most: the rule the checkpointer's own flush follows between
//! passes, applied inside a pass.
//!
//! The VFS is SQLite's default one with `xOpen` wrapped: every file is the
//! default VFS's file, and only a main database file's `xWrite` and
//! `xClose` are wrapped. Each such file carries, after the default VFS's
//! own state, a descriptor of its own for `sync_file_range` and the count of
//! bytes written since the last range. Linux only (`sync_file_range`);
//! elsewhere the checkpointer opens its connection as any other.
//!
//! Durability is unchanged: SQLite's writes and syncs happen as before, in
//! the same order. This only starts the writing earlier and waits for it.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::Path;
use std::sync::OnceLock;

use rusqlite::{ffi, Connection, OpenFlags};

use crate::db::DbError;

/// The name the VFS is registered under.
const NAME: &CStr = c"united-paced";

/// Bytes a checkpoint may write into the database file before it waits for
/// them to reach the disk: the checkpointer's flush range.
pub const PACE_BYTES: u64 = 4 << 20;

thread_local! {
    /// Times a paced write on this thread waited for its range.
    static WAITS: Cell<u64> = const { Cell::new(0) };
}

/// Times a paced write on the calling thread waited for its range: the
/// checkpointer's thread reads its own.
pub fn waits_on_this_thread() -> u64 {
    WAITS.with(Cell::get)
}

/// The state a paced file carries after the default VFS's own.
#[repr(C)]
struct Pace {
    /// A read-only descriptor of the file, for `sync_file_range`; -1 if it
    /// could not be opened (the file is then written as SQLite alone would).
    fd: c_int,
    /// Bytes written since the last wait.
    unwritten: u64,
}

/// The default VFS and where a file's [`Pace`] starts in our file struct.
struct Shim {
    real: *mut ffi::sqlite3_vfs,
    pace_at: usize,
}

// SAFETY: `real` points at SQLite's default VFS, which lives for the whole
// process and is only read; SQLite calls a VFS from any thread.
unsafe impl Send for Shim {}
unsafe impl Sync for Shim {}

/// A main database file's methods: the default VFS's, with `xWrite` and
/// `xClose` wrapped.
struct Methods {
    real: *const ffi::sqlite3_io_methods,
    ours: ffi::sqlite3_io_methods,
}

// SAFETY: both are tables of function pointers that are never written after
// they are made.
unsafe impl Send for Methods {}
unsafe impl Sync for Methods {}

static SHIM: OnceLock<Result<Shim, String>> = OnceLock::new();
static METHODS: OnceLock<Methods> = OnceLock::new();

/// Registers the VFS (once per process).
fn register() -> Result<&'static Shim, String> {
    SHIM.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS, which
        // lives as long as the process. The copy we register is leaked, so
        // it does too, as `sqlite3_vfs_register` requires.
        unsafe {
            let real = ffi::sqlite3_vfs_find(std::ptr::null());
            if real.is_null() {
                return Err("SQLite has no default VFS".to_owned());
            }
            let pace_at = ((*real).szOsFile as usize).next_multiple_of(8);
            let mut vfs = *real;
            vfs.zName = NAME.as_ptr();
            vfs.pNext = std::ptr::null_mut();
            vfs.szOsFile = (pace_at + std::mem::size_of::<Pace>()) as c_int;
            vfs.xOpen = Some(x_open);
            let vfs: &'static mut ffi::sqlite3_vfs = Box::leak(Box::new(vfs));
            let rc = ffi::sqlite3_vfs_register(vfs, 0);
            if rc != ffi::SQLITE_OK {
                return Err(format!("registering SQLite's paced VFS failed ({rc})"));
            }
            Ok(Shim { real, pace_at })
        }
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Opens `path` read-write through the paced VFS.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    register().map_err(DbError::Other)?;
    Ok(Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        NAME,
    )?)
}

/// The [`Pace`] of a file opened through [`x_open`].
///
/// # Safety
/// `file` must be a file of this VFS, so that it is `szOsFile` bytes long.
unsafe fn pace_of(file: *mut ffi::sqlite3_file) -> *mut Pace {
    let shim = SHIM
        .get()
        .and_then(|s| s.as_ref().ok())
        .expect("registered");
    file.cast::<u8>().add(shim.pace_at).cast()
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(Ok(shim)) = SHIM.get() else {
        return ffi::SQLITE_ERROR;
    };
    let Some(real_open) = (*shim.real).xOpen else {
        return ffi::SQLITE_ERROR;
    };
    // The default VFS fills the first `szOsFile` bytes of `file`, as if it
    // had been opened through it.
    let rc = real_open(shim.real, name, file, flags, out_flags);
    if rc != ffi::SQLITE_OK
        || flags & ffi::SQLITE_OPEN_MAIN_DB == 0
        || name.is_null()
        || (*file).pMethods.is_null()
    {
        return rc;
    }
    let methods = METHODS.get_or_init(|| {
        let real = (*file).pMethods;
        let mut ours = *real;
        ours.xWrite = Some(x_write);
        ours.xClose = Some(x_close);
        Methods { real, ours }
    });
    if (*file).pMethods != methods.real {
        return rc; // another kind of file than the first: left unpaced
    }
    let fd = libc::open(name, libc::O_RDONLY | libc::O_CLOEXEC);
    pace_of(file).write(Pace { fd, unwritten: 0 });
    (*file).pMethods = &methods.ours;
    rc
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let Some(write) = METHODS.get().and_then(|m| (*m.real).xWrite) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let rc = write(file, data, amount, offset);
    let pace = pace_of(file);
    if rc == ffi::SQLITE_OK && (*pace).fd >= 0 {
        (*pace).unwritten += amount.max(0) as u64;
        if (*pace).unwritten >= PACE_BYTES {
            (*pace).unwritten = 0;
            // The whole file, but only its dirty pages go out: the ones this
            // connection wrote since the last wait. A failure here changes
            // nothing SQLite relies on; its own sync still follows.
            libc::sync_file_range(
                (*pace).fd,
                0,
                0,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
            WAITS.with(|w| w.set(w.get() + 1));
        }
    }
    rc
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let pace = pace_of(file);
    if (*pace).fd >= 0 {
        libc::close((*pace).fd);
        (*pace).fd = -1;
    }
    match METHODS.get().and_then(|m| (*m.real).xClose) {
        Some(close) => close(file),
        None => ffi::SQLITE_IOERR_CLOSE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint that copies far more than [`PACE_BYTES`] waits for its
    /// ranges as it goes, and what it copied reads back whole through an
    /// ordinary connection.
    #[test]
    fn a_large_checkpoint_is_written_in_ranges_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
            )
            .unwrap();
        let body = vec![7u8; 64 << 10];
        let rows = 400; // 25 MiB: six ranges and more
        let tx = writer.unchecked_transaction().unwrap();
        for i in 0..rows {
            tx.execute("INSERT INTO t VALUES (?1, ?2)", (i, &body))
                .unwrap();
        }
        tx.commit().unwrap();

        let before = waits_on_this_thread();
        let paced = open(&path).unwrap();
        let (busy, frames, copied): (i64, i64, i64) = paced
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, frames, copied), (0, 0, 0), "the WAL was reset");
        let waits = waits_on_this_thread() - before;
        assert!(waits >= 6, "25 MiB copied with only {waits} waits");
        drop(paced);

        let (n, total): (i64, i64) = writer
            .query_row("SELECT count(*), sum(length(body)) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, total), (rows, rows * (64 << 10)));
        let verdict: String = writer
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(verdict, "ok");
    }
}
