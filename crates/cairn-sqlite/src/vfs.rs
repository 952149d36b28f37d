//! The write connection's VFS: the platform's default one, except that the
//! WAL appends of a transaction are gathered and written with one call when
//! SQLite syncs, reads or resizes the WAL (ADR 0023).
//!
//! SQLite writes each WAL frame with two calls (a 24-byte header, then the
//! page), so a commit of a hundred pages was two hundred `pwrite`s, each
//! paying the system call, the file's lock and change notice, and two page
//! cache folios for a page that straddles them: a fifth of the busy writer's
//! time. Gathered, a commit is one `pwrite` of contiguous bytes.
//!
//! Why this is safe: the writer runs with `synchronous=FULL`, so every commit
//! ends with `xSync` on the WAL, which writes what was gathered first; SQLite
//! publishes the commit to readers (the wal-index header) only after that
//! sync. Every other call that looks at the file (read, size, truncate,
//! file control, close) writes what was gathered first too, so this handle
//! and every other one see exactly the bytes SQLite wrote, in its order. A
//! failed write is reported by the call that wrote it (a sync), which SQLite
//! treats as the commit failing. Only the writer connection uses this VFS.
//!
//! Hand-written because no maintained crate wraps the default VFS: the VFS
//! crates implement a whole file system of their own.

use std::ffi::{c_int, c_void, CStr};
use std::mem::size_of;
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the writer connection opens its file with.
pub(crate) const NAME: &CStr = c"cairn-gather";

/// At most this many bytes are gathered; a transaction larger than this
/// (a migration, a big prune) is written in pieces of this size.
const GATHER_MAX: usize = 8 << 20;
/// The most the default VFS writes with one call: the unix VFS keeps only the
/// low 17 bits of a write's length (its own writes are pages of at most
/// 64 KiB), so gathered bytes go to it in whole pages below 128 KiB.
const WRITE_MAX: usize = 31 * 4096;
/// After a large transaction the gather buffer gives back memory beyond this.
const GATHER_KEEP: usize = 1 << 20;

/// Register the VFS (once per process). Errors name the SQLite result code.
pub(crate) fn register() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    // SAFETY: runs once; `register_once` only reads the default VFS and hands
    // SQLite a leaked, never-freed copy of it.
    REGISTERED.get_or_init(|| unsafe { register_once() }).clone()
}

unsafe fn register_once() -> Result<(), String> {
    let rc = ffi::sqlite3_initialize();
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_initialize failed ({rc})"));
    }
    let base = ffi::sqlite3_vfs_find(ptr::null());
    if base.is_null() {
        return Err("sqlite has no default VFS".into());
    }
    // A copy of the default VFS: its other methods (path names, access,
    // time, randomness, ...) ignore the VFS pointer they are given, and every
    // file that is not a WAL is opened by the default VFS as it is.
    let mut vfs = *base;
    vfs.pNext = ptr::null_mut();
    vfs.zName = NAME.as_ptr();
    vfs.pAppData = base.cast();
    vfs.szOsFile = c_int::try_from(size_of::<GatherFile>() + (*base).szOsFile as usize)
        .map_err(|_| "the default VFS's file size is out of range".to_string())?;
    vfs.xOpen = Some(x_open);
    let vfs: &'static mut ffi::sqlite3_vfs = Box::leak(Box::new(vfs));
    let rc = ffi::sqlite3_vfs_register(vfs, 0);
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed ({rc})"));
    }
    Ok(())
}

/// A WAL file opened through this VFS: the default VFS's file follows it in
/// the same allocation (`szOsFile` counts both).
#[repr(C)]
struct GatherFile {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    gather: *mut Gather,
}

/// Bytes written at `start..start + bytes.len()` that are not in the file yet.
struct Gather {
    start: i64,
    bytes: Vec<u8>,
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: a WAL file is never memory-mapped and has no shared memory
    // of its own (the wal-index belongs to the database file).
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let base = (*vfs).pAppData.cast::<ffi::sqlite3_vfs>();
    let Some(open) = (*base).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Not a WAL: the default VFS's file, in place (the allocation is larger than it needs).
        return open(base, name, file, flags, out_flags);
    }
    let f = file.cast::<GatherFile>();
    let inner = file
        .cast::<u8>()
        .add(size_of::<GatherFile>())
        .cast::<ffi::sqlite3_file>();
    (*f).base.pMethods = ptr::null();
    (*f).inner = inner;
    (*f).gather = ptr::null_mut();
    (*inner).pMethods = ptr::null();
    let rc = open(base, name, inner, flags, out_flags);
    // SQLite closes a file whose methods are set even when its open failed.
    if !(*inner).pMethods.is_null() {
        (*f).gather = Box::into_raw(Box::new(Gather {
            start: 0,
            bytes: Vec::new(),
        }));
        (*f).base.pMethods = &METHODS;
    }
    rc
}

/// The gather file behind `file` and the default VFS's methods for its inner file.
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (&'a mut Gather, *mut ffi::sqlite3_file, &'a ffi::sqlite3_io_methods) {
    let f = file.cast::<GatherFile>();
    let inner = (*f).inner;
    (&mut *(*f).gather, inner, &*(*inner).pMethods)
}

/// Write what was gathered; forgets it whether or not the write succeeded
/// (a failed write fails the transaction, which SQLite then rolls back).
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    let (gather, inner, methods) = parts(file);
    write_gathered(gather, inner, methods)
}

unsafe fn write_gathered(
    gather: &mut Gather,
    inner: *mut ffi::sqlite3_file,
    methods: &ffi::sqlite3_io_methods,
) -> c_int {
    if gather.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    let Some(write) = methods.xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let mut rc = ffi::SQLITE_OK;
    let mut offset = gather.start;
    for piece in gather.bytes.chunks(WRITE_MAX) {
        // At most WRITE_MAX bytes, so the length fits a c_int.
        #[cfg(test)]
        tests::WAL_WRITES.with(|n| n.set(n.get() + 1));
        rc = write(inner, piece.as_ptr().cast::<c_void>(), piece.len() as c_int, offset);
        if rc != ffi::SQLITE_OK {
            break;
        }
        offset += piece.len() as i64;
    }
    gather.bytes.clear();
    if gather.bytes.capacity() > GATHER_KEEP {
        gather.bytes.shrink_to(GATHER_KEEP);
    }
    rc
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let rc = flush(file);
    let f = file.cast::<GatherFile>();
    let inner = (*f).inner;
    let closed = match (*(*inner).pMethods).xClose {
        Some(close) => close(inner),
        None => ffi::SQLITE_OK,
    };
    drop(Box::from_raw((*f).gather));
    (*f).gather = ptr::null_mut();
    (*f).base.pMethods = ptr::null();
    if rc != ffi::SQLITE_OK {
        rc
    } else {
        closed
    }
}

unsafe extern "C" fn x_write(file: *mut ffi::sqlite3_file, buf: *const c_void, amt: c_int, offset: i64) -> c_int {
    let len = usize::try_from(amt).unwrap_or(0);
    let (gather, inner, methods) = parts(file);
    let follows = !gather.bytes.is_empty() && offset == gather.start + gather.bytes.len() as i64;
    if !follows || gather.bytes.len() + len > GATHER_MAX {
        let rc = write_gathered(gather, inner, methods);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        if len > WRITE_MAX {
            #[cfg(test)]
            tests::WAL_WRITES.with(|n| n.set(n.get() + 1));
            return match methods.xWrite {
                Some(write) => write(inner, buf, amt, offset),
                None => ffi::SQLITE_IOERR_WRITE,
            };
        }
        gather.start = offset;
    }
    gather
        .bytes
        .extend_from_slice(std::slice::from_raw_parts(buf.cast::<u8>(), len));
    ffi::SQLITE_OK
}

/// Write what was gathered, then pass the call on to the default VFS's file.
unsafe fn flushed(
    file: *mut ffi::sqlite3_file,
    call: impl FnOnce(*mut ffi::sqlite3_file, &ffi::sqlite3_io_methods) -> c_int,
) -> c_int {
    let rc = flush(file);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let (_, inner, methods) = parts(file);
    call(inner, methods)
}

unsafe extern "C" fn x_read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amt: c_int, offset: i64) -> c_int {
    flushed(file, |inner, m| {
        m.xRead
            .map_or(ffi::SQLITE_IOERR_READ, |read| read(inner, buf, amt, offset))
    })
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    flushed(file, |inner, m| {
        m.xTruncate
            .map_or(ffi::SQLITE_IOERR_TRUNCATE, |truncate| truncate(inner, size))
    })
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flushed(file, |inner, m| {
        m.xSync.map_or(ffi::SQLITE_IOERR_FSYNC, |sync| sync(inner, flags))
    })
}

unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    flushed(file, |inner, m| {
        m.xFileSize
            .map_or(ffi::SQLITE_IOERR_FSTAT, |file_size| file_size(inner, size))
    })
}

unsafe extern "C" fn x_file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    flushed(file, |inner, m| {
        m.xFileControl
            .map_or(ffi::SQLITE_NOTFOUND, |control| control(inner, op, arg))
    })
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let (_, inner, methods) = parts(file);
    methods.xLock.map_or(ffi::SQLITE_OK, |lock| lock(inner, level))
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let (_, inner, methods) = parts(file);
    methods.xUnlock.map_or(ffi::SQLITE_OK, |unlock| unlock(inner, level))
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let (_, inner, methods) = parts(file);
    match methods.xCheckReservedLock {
        Some(check) => check(inner, out),
        None => {
            *out = 0;
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, inner, methods) = parts(file);
    methods.xSectorSize.map_or(4096, |size| size(inner))
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, inner, methods) = parts(file);
    methods.xDeviceCharacteristics.map_or(0, |chars| chars(inner))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::Path;
    use std::time::Duration;

    use rusqlite::{params, Connection, OpenFlags};

    thread_local! {
        /// Writes this thread's gather files made to the default VFS.
        pub(super) static WAL_WRITES: Cell<u64> = const { Cell::new(0) };
    }

    const ROW_BYTES: usize = 3_000;

    fn writer(path: &Path) -> Connection {
        let conn = crate::schema::open_writer(path, Duration::from_secs(1)).expect("open writer");
        conn.execute_batch("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            .expect("table");
        conn
    }

    /// A connection through the default VFS, as readers and other processes open the file.
    fn plain(path: &Path) -> Connection {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open plain")
    }

    fn insert(conn: &Connection, ids: std::ops::Range<i64>, fill: u8) {
        let mut stmt = conn
            .prepare_cached("INSERT OR REPLACE INTO blobs (id, body) VALUES (?1, ?2)")
            .expect("prepare");
        for id in ids {
            stmt.execute(params![id, vec![fill; ROW_BYTES]]).expect("insert");
        }
    }

    fn rows(conn: &Connection) -> (i64, i64) {
        conn.query_row("SELECT count(*), coalesce(sum(length(body)), 0) FROM blobs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("count")
    }

    /// How many rows' bodies are `fill` throughout.
    fn filled_with(conn: &Connection, fill: u8) -> i64 {
        conn.query_row(
            "SELECT count(*) FROM blobs WHERE body = ?1",
            [vec![fill; ROW_BYTES]],
            |r| r.get(0),
        )
        .expect("count")
    }

    fn integrity(conn: &Connection) {
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity");
        assert_eq!(ok, "ok");
    }

    #[test]
    fn a_commit_reaches_the_wal_in_a_few_writes_and_other_connections_read_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gather.db");
        let conn = writer(&path);
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).expect("sync");
        assert_eq!(
            sync, 2,
            "gathering relies on synchronous=FULL (every commit syncs the WAL)"
        );
        let reader = plain(&path);
        assert_eq!(rows(&reader), (0, 0));

        let before = WAL_WRITES.with(Cell::get);
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        insert(&conn, 0..200, 1);
        conn.execute_batch("COMMIT").expect("commit");
        let writes = WAL_WRITES.with(Cell::get) - before;
        let frames: i64 = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .expect("frames");
        // Ungathered, SQLite writes each frame with two calls.
        assert!(frames >= 200, "the commit wrote {frames} frames");
        assert!(
            writes > 0 && writes * 20 < frames as u64,
            "{frames} frames were written with {writes} writes"
        );
        // Visible to a connection of the default VFS as soon as the commit returned.
        assert_eq!(rows(&reader), (200, 200 * ROW_BYTES as i64));
        integrity(&reader);
    }

    #[test]
    fn transactions_larger_than_the_cache_and_the_gather_buffer_commit_and_roll_back_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gather.db");
        let conn = writer(&path);
        // A small cache makes SQLite spill uncommitted pages to the WAL
        // mid-transaction, read them back, and rewrite frames in place.
        conn.pragma_update(None, "cache_size", 50).expect("cache");
        let reader = plain(&path);

        // ~14 MiB: past GATHER_MAX, so it is written in pieces.
        let n = (14 << 20) / ROW_BYTES as i64;
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        insert(&conn, 0..n, 1);
        insert(&conn, 0..n / 2, 2); // pages already spilled, changed again
        assert_eq!(filled_with(&conn, 2), n / 2, "read back mid-transaction");
        conn.execute_batch("COMMIT").expect("commit");
        assert_eq!(rows(&reader), (n, n * ROW_BYTES as i64));
        assert_eq!(filled_with(&reader, 2), n / 2);
        integrity(&reader);

        // A spilled transaction rolled back leaves nothing behind.
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        insert(&conn, n..2 * n, 3);
        conn.execute_batch("ROLLBACK").expect("rollback");
        assert_eq!(rows(&reader), (n, n * ROW_BYTES as i64));
        assert_eq!(rows(&conn), (n, n * ROW_BYTES as i64));

        // Checkpointed, closed and opened again, the file holds the same rows.
        drop(reader);
        drop(conn);
        let again = plain(&path);
        assert_eq!(rows(&again), (n, n * ROW_BYTES as i64));
        integrity(&again);
    }
}
