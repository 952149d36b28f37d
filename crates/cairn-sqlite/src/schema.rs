//! Opening a file safely: recognising a cairn database, refusing anything else
//! untouched, configuring durability and running versioned migrations.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{CairnError, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

/// `PRAGMA application_id` of every cairn database ("cair" in ASCII). It lets
/// `file(1)` and cairn itself tell a cairn database from any other SQLite file.
pub const APPLICATION_ID: i32 = 0x6361_6972;

/// The schema version this build writes and the newest it can open.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The value of the `application` row of `cairn_meta`.
const APPLICATION_NAME: &str = "cairn";

/// Migration `i` takes a database from version `i` to `i + 1`. Never edit a
/// released entry: append a new one.
///
/// Hand-written rather than `rusqlite_migration`: that crate keys the version
/// on `PRAGMA user_version`, which any SQLite application may set, so it cannot
/// tell another application's database from an empty one; cairn must refuse a
/// foreign, corrupt or newer file before writing anything (`application_id` and
/// `cairn_meta`), and runs the steps in the same immediate transaction as that check.
const MIGRATIONS: &[&str] = &[
    V1,
    V2,
    V3,
    V_SWEEP,
    V_MODULES,
    V_TYPE_LISTS,
    V_LOG_KEYS,
    V_PARTIAL_LISTING_INDEXES,
    V_SCHEDULE_REFUSALS,
    V_ABANDON_INDEX,
    V_UNACKED_WAKES,
    V_WORKLIST_BY_TIME,
    V_FRAME_WAKES,
    V_TOMBSTONE_GRANTS,
    V_ENV_TOUCHES,
    V_LIST_TOUCHES,
    V_LISTING_WINDOWS,
];

const V1: &str = r#"
CREATE TABLE cairn_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Global monotonic counters: the change-feed cursor and the wake insertion order.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('change_cursor', 0), ('wake_order', 0);

-- One row per process. `record` is the ProcessRecord as JSON without its lease;
-- the lease lives in the lease_* columns (it changes without an event). The other
-- columns are derived from the record on every write and exist to be indexed.
CREATE TABLE processes (
    id                  TEXT PRIMARY KEY NOT NULL,
    record              TEXT NOT NULL,
    status              TEXT NOT NULL,
    disposition         TEXT NOT NULL,
    definition          TEXT NOT NULL,
    originator          TEXT NOT NULL,
    originator_scope    TEXT,
    waiting             INTEGER NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    terminal_at_ms      INTEGER,
    last_sequence       INTEGER NOT NULL,
    change_cursor       INTEGER NOT NULL,
    run_candidate       INTEGER NOT NULL,
    abandon_candidate   INTEGER NOT NULL,
    fencing_counter     INTEGER NOT NULL,
    lease_owner         TEXT,
    lease_token         TEXT,
    lease_fencing       INTEGER,
    lease_claimed_at_ms INTEGER,
    lease_expires_at_ms INTEGER,
    -- When the row becomes claimable: 0 with no lease, else the lease expiry.
    claimable_at_ms     INTEGER GENERATED ALWAYS AS (COALESCE(lease_expires_at_ms, 0)) VIRTUAL
);
-- Listing by status in id order; live rows stay cheap however many terminal rows pile up
-- (V_PARTIAL_LISTING_INDEXES makes it and the next one partial).
CREATE INDEX processes_status_id ON processes (status, id);
CREATE INDEX processes_originator_id ON processes (originator, id);
CREATE UNIQUE INDEX processes_change_cursor ON processes (change_cursor);
CREATE INDEX processes_terminal_at ON processes (terminal_at_ms) WHERE terminal_at_ms IS NOT NULL;
-- The worklist: only candidate rows, ordered by when they become claimable, so a
-- drive reads claimable rows first and never walks every running row.
CREATE INDEX processes_worklist ON processes (claimable_at_ms, id)
    WHERE run_candidate = 1 OR abandon_candidate = 1;

CREATE TABLE events (
    process_id     TEXT NOT NULL,
    sequence       INTEGER NOT NULL,
    event_type     TEXT NOT NULL,
    replay_key     TEXT,
    occurred_at_ms INTEGER NOT NULL,
    event          TEXT NOT NULL,
    PRIMARY KEY (process_id, sequence)
);
CREATE UNIQUE INDEX events_replay_key ON events (process_id, replay_key) WHERE replay_key IS NOT NULL;

CREATE TABLE grants (
    scope_id   TEXT NOT NULL,
    session_id TEXT NOT NULL,
    process_id TEXT NOT NULL,
    grant_json TEXT NOT NULL,
    PRIMARY KEY (scope_id, process_id)
);
CREATE INDEX grants_session ON grants (session_id);
CREATE INDEX grants_process ON grants (process_id);

CREATE TABLE wakes (
    wake_id           TEXT PRIMARY KEY NOT NULL,
    target_session_id TEXT NOT NULL,
    process_id        TEXT NOT NULL,
    acked             INTEGER NOT NULL DEFAULT 0,
    wake_order        INTEGER NOT NULL,
    delivery          TEXT NOT NULL
);
CREATE INDEX wakes_pending ON wakes (target_session_id, acked, wake_order);
CREATE INDEX wakes_process ON wakes (process_id);

CREATE TABLE tombstones (
    id             TEXT PRIMARY KEY NOT NULL,
    status         TEXT NOT NULL,
    terminal_at_ms INTEGER NOT NULL,
    pruned_at_ms   INTEGER NOT NULL
);

CREATE TABLE envs (
    env_ref TEXT PRIMARY KEY NOT NULL,
    bytes   BLOB NOT NULL
);
"#;

/// Suspension and children (SPEC §13): a suspended row is claimable at its deadline
/// (`wake_at_ms`) or not at all until a write wakes it; waits recorded before
/// this version by rerunnable runs become suspensions a signal wakes.
const V2: &str = r#"
DROP INDEX processes_worklist;
ALTER TABLE processes DROP COLUMN claimable_at_ms;
ALTER TABLE processes ADD COLUMN wake_at_ms INTEGER;
-- When the row becomes claimable: its lease expiry, else its suspension's
-- deadline, else 0.
ALTER TABLE processes ADD COLUMN claimable_at_ms INTEGER
    GENERATED ALWAYS AS (COALESCE(lease_expires_at_ms, wake_at_ms, 0)) VIRTUAL;
CREATE INDEX processes_worklist ON processes (claimable_at_ms, id)
    WHERE run_candidate = 1 OR abandon_candidate = 1;
UPDATE processes SET run_candidate = 0
    WHERE run_candidate = 1 AND disposition = 'rerunnable' AND waiting = 1
      AND json_extract(record, '$.cancel_request') IS NULL;
-- A child's parent (SPEC §13), for the `caused_by` filter.
ALTER TABLE processes ADD COLUMN caused_by TEXT;
UPDATE processes SET caused_by = COALESCE(
    json_extract(record, '$.provenance.caused_by.process_id'),
    CASE WHEN json_extract(record, '$.provenance.caused_by.kind') = 'process'
         THEN json_extract(record, '$.provenance.caused_by.id') END);
CREATE INDEX processes_caused_by ON processes (caused_by, id) WHERE caused_by IS NOT NULL;
"#;

/// Schedules (SPEC §18): the schedule document, its state in columns, and
/// the due index the work driver's `next_due` and `due_schedules` read.
const V3: &str = r#"
CREATE TABLE schedules (
    id              TEXT PRIMARY KEY NOT NULL,
    schedule        TEXT NOT NULL,
    paused          INTEGER NOT NULL,
    next_fire_ms    INTEGER NOT NULL,
    last_fire_ms    INTEGER,
    last_process_id TEXT
);
CREATE INDEX schedules_due ON schedules (next_fire_ms, id) WHERE paused = 0;
"#;

/// Node identities and the sweep (SPEC §2, ADR 0017): one liveness row per
/// node id, and the node incarnation that started each running owner-bound
/// row (derived by `fold::sweep_owner`), indexed for the sweep worklist. Rows
/// written before this version name no node incarnation, so none is derived.
const V_SWEEP: &str = r#"
CREATE TABLE nodes (
    node_id         TEXT PRIMARY KEY NOT NULL,
    incarnation     INTEGER NOT NULL,
    started_at_ms   INTEGER NOT NULL,
    heartbeat_at_ms INTEGER NOT NULL
);
ALTER TABLE processes ADD COLUMN sweep_node TEXT;
ALTER TABLE processes ADD COLUMN sweep_incarnation INTEGER;
CREATE INDEX processes_sweep ON processes (sweep_node, sweep_incarnation) WHERE sweep_node IS NOT NULL;
"#;

/// Script modules (SPEC §14): content-addressed and immutable; `exports` is a
/// JSON array of names.
const V_MODULES: &str = r#"
CREATE TABLE modules (
    module_ref    TEXT PRIMARY KEY NOT NULL,
    name          TEXT,
    exports       TEXT NOT NULL,
    source        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Type lists stored once (ADR 0008): a row's `record` holds
/// `"event_types": []` and its `types_key` names the list in `type_lists`.
/// Rows written before this version keep their list inline (`types_key` NULL)
/// until their next write moves it out.
const V_TYPE_LISTS: &str = r#"
CREATE TABLE type_lists (
    key   TEXT PRIMARY KEY NOT NULL,
    types TEXT NOT NULL
) WITHOUT ROWID;
ALTER TABLE processes ADD COLUMN types_key TEXT;
"#;

/// Event logs keyed by when their process was registered (ADR 0021): each
/// process gets a `log_key`, the change cursor its registration was stored
/// under (unique, and larger than any key before it), and its events are
/// indexed by `(log_key, sequence)` instead of `(process_id, sequence)`. Ids
/// are chosen by hosts and land anywhere in an id-keyed index, so each event
/// dirtied a page of its own; the events of processes in flight now share the
/// index's newest pages. Rows written before this version take their current
/// change cursor as their key: unique too, and below every later one.
const V_LOG_KEYS: &str = r#"
ALTER TABLE processes ADD COLUMN log_key INTEGER;
UPDATE processes SET log_key = change_cursor;
CREATE TABLE events_by_log_key (
    log_key        INTEGER NOT NULL,
    sequence       INTEGER NOT NULL,
    event_type     TEXT NOT NULL,
    replay_key     TEXT,
    occurred_at_ms INTEGER NOT NULL,
    event          TEXT NOT NULL
);
INSERT INTO events_by_log_key (log_key, sequence, event_type, replay_key, occurred_at_ms, event)
    SELECT p.log_key, e.sequence, e.event_type, e.replay_key, e.occurred_at_ms, e.event
    FROM events e JOIN processes p ON p.id = e.process_id
    ORDER BY p.log_key, e.sequence;
DROP TABLE events;
ALTER TABLE events_by_log_key RENAME TO events;
CREATE UNIQUE INDEX events_log ON events (log_key, sequence);
CREATE UNIQUE INDEX events_replay_key ON events (log_key, replay_key) WHERE replay_key IS NOT NULL;
"#;

/// Two id-ordered indexes made partial (ADR 0026). Ids land anywhere in an
/// id-keyed index, so each process dirtied a leaf page of its own in both, at
/// its registration and again when it ended: together half of a busy commit's
/// bytes. The status index now leaves out `completed` rows, so it holds the
/// live ones (which share a few pages) and the rarer failed, cancelled and
/// abandoned ones; the originator index holds the processes sessions started,
/// which a session lists as its own. A listing of completed processes, or of
/// the host's, walks another index and skips what does not match, as a
/// listing by definition or creation time always has.
/// A schedule's last refused fire (a `FireRefusal` as JSON), until a later
/// fire starts a process.
const V_SCHEDULE_REFUSALS: &str = r#"
ALTER TABLE schedules ADD COLUMN last_refusal TEXT;
"#;

/// Abandon requests waiting for their lease to lapse, by when it does: the
/// driver's `abandon_worklist` reads them on every drive, and through the
/// worklist index it would walk past every claimable run candidate first
/// (a backlog of queued work hid them). Tiny: a row is in it only while an
/// abandon request is pending.
const V_ABANDON_INDEX: &str = r#"
CREATE INDEX processes_abandon ON processes (claimable_at_ms, id) WHERE abandon_candidate = 1;
"#;

/// The wakes not yet acknowledged, the `cairn_wakes_pending` gauge's count:
/// through `wakes_pending` (session first) it walked every wake ever stored.
/// Tiny: a row is in it only until its session acknowledges it.
const V_UNACKED_WAKES: &str = r#"
CREATE INDEX wakes_unacked ON wakes (wake_order) WHERE acked = 0;
"#;

/// The worklist served in the order work became claimable (ADR 0030). Its
/// one index was keyed `(claimable_at_ms, id)`, where a row claimable at once
/// (no lease, no deadline) has 0: every fresh start came before a due timer
/// or a lapsed lease, and fresh starts among themselves came in id order, so
/// under a backlog a due timer waited for the whole backlog (and an id that
/// sorts late waited for every later start). Rows claimable at once now have
/// their own index, by registration time; rows claimable at a time keep
/// theirs; a read merges the two by that time.
const V_WORKLIST_BY_TIME: &str = r#"
DROP INDEX processes_worklist;
CREATE INDEX processes_ready ON processes (created_at_ms, id)
    WHERE (run_candidate = 1 OR abandon_candidate = 1) AND claimable_at_ms = 0;
CREATE INDEX processes_worklist ON processes (claimable_at_ms, id)
    WHERE (run_candidate = 1 OR abandon_candidate = 1) AND claimable_at_ms > 0;
"#;

/// A frame's pending wakes (`pending_frame_wakes`, read by every
/// `session_snapshot`): through `wakes_pending` the read parsed every pending
/// wake of the session as JSON to find the frame's, so thousands of large
/// wakes aimed at a busy sibling frame were read to answer a quiet one. The
/// index holds the frame as the read compares it, so the read walks only the
/// frame's wakes, in order. Only pending wakes are in it.
const V_FRAME_WAKES: &str = r#"
CREATE INDEX wakes_frame_pending ON wakes
    (target_session_id, json_extract(delivery, '$.target_scope.agent_frame_id'), wake_order) WHERE acked = 0;
"#;

/// The scopes that held a grant on a process as it was pruned, kept beside
/// its tombstone: the session that owned the work is answered how it ended
/// (`no_longer_retained` with the tombstone), as the host is, where a session
/// that never held it is answered as for an unknown id. A session's deletion
/// removes its rows, as it removes its grants.
const V_TOMBSTONE_GRANTS: &str = r#"
CREATE TABLE tombstone_grants (
    process_id TEXT NOT NULL,
    scope_id   TEXT NOT NULL,
    session_id TEXT NOT NULL,
    PRIMARY KEY (scope_id, process_id)
);
CREATE INDEX tombstone_grants_session ON tombstone_grants (session_id);
"#;

/// When each env spec was last put (ADR 0034): a prune collects the specs
/// no process names, but only those nobody put in the last hour, so a put and
/// the registration naming it are never split. The specs stored before are
/// put as of this migration: a writer still running the older build may be
/// about to name one it put a moment ago.
const V_ENV_TOUCHES: &str = r#"
ALTER TABLE envs ADD COLUMN touched_at_ms INTEGER NOT NULL DEFAULT 0;
UPDATE envs SET touched_at_ms = CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER);
"#;

/// When each type list was stored, and the touches of rows an older build
/// inserts (ADR 0034). A prune's collection takes only the lists nobody
/// stored within its grace, as it does envs: a writer of the older build
/// that is still running keeps the lists it knows are stored in a cache it
/// never empties, so a list it cached before this migration, or stores
/// after it, must outlive the collection for the grace. The lists stored
/// before are stored as of this migration. An older writer inserts envs and
/// lists naming no time (the column's default, 0); the triggers touch such a
/// row as it is inserted, by SQLite's clock (the wall clock, in
/// milliseconds), as `V_ENV_TOUCHES` touched the rows it found. A writer of
/// this build names its own time, never 0, so they leave its rows alone.
const V_LIST_TOUCHES: &str = r#"
ALTER TABLE type_lists ADD COLUMN touched_at_ms INTEGER NOT NULL DEFAULT 0;
UPDATE type_lists SET touched_at_ms = CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER);
CREATE TRIGGER envs_touched_on_insert AFTER INSERT ON envs WHEN NEW.touched_at_ms = 0
BEGIN
    UPDATE envs SET touched_at_ms = CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)
        WHERE env_ref = NEW.env_ref;
END;
CREATE TRIGGER type_lists_touched_on_insert AFTER INSERT ON type_lists WHEN NEW.touched_at_ms = 0
BEGIN
    UPDATE type_lists SET touched_at_ms = CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)
        WHERE key = NEW.key;
END;
"#;

/// Listings by creation time and of waiting processes (ADR 0037). A
/// listing bounded by `created_from_ms`/`created_before_ms` (the windows the
/// dashboard's list and `cairn ls` find their newest rows by) or filtered on
/// `waiting` had no index but the id order, and read every row to find few.
/// `processes_created` is written once, as a row is registered (nothing
/// updates `created_at_ms`), at the index's newest pages, as registration
/// times only grow. `processes_waiting` holds only the rows waiting now; a
/// listing states its term (`waiting = 1`), as SQLite uses a partial index
/// only for a query that does. `definition` stays unindexed: every start
/// would pay an id-scattered entry for a filter few listings use.
const V_LISTING_WINDOWS: &str = r#"
CREATE INDEX processes_created ON processes (created_at_ms, id);
CREATE INDEX processes_waiting ON processes (id) WHERE waiting = 1;
"#;

const V_PARTIAL_LISTING_INDEXES: &str = r#"
DROP INDEX processes_status_id;
CREATE INDEX processes_status_id ON processes (status, id) WHERE status <> 'completed';
DROP INDEX processes_originator_id;
CREATE INDEX processes_originator_id ON processes (originator, id) WHERE originator_scope IS NOT NULL;
"#;

/// What a file holds before cairn touches it.
enum Found {
    /// A new or empty database: cairn may create its schema.
    Empty,
    /// A cairn database at this schema version.
    Cairn(u32),
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Turn an error met while inspecting or opening a file into a clear message.
fn open_error(path: &Path, e: rusqlite::Error) -> CairnError {
    let what = match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => "is not a cairn database (not an SQLite database at all)".to_string(),
        Some(ErrorCode::DatabaseCorrupt) => format!("is a corrupt database ({e})"),
        // Say what is wrong with the place, where it can be told.
        Some(ErrorCode::CannotOpen) => match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => format!("cannot be opened: its directory `{}` does not exist", dir.display()),
            _ => format!("cannot be opened ({e})"),
        },
        Some(ErrorCode::ReadOnly) | Some(ErrorCode::PermissionDenied) => format!("is not writable ({e})"),
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            format!("is locked by another process: another cairn may be migrating or writing the file ({e})")
        }
        _ => format!("cannot be used ({e})"),
    };
    CairnError::storage_caused_by(format!("sqlite database `{}` {what}", shown(path)), e)
}

fn refuse(path: &Path, why: impl std::fmt::Display) -> CairnError {
    CairnError::storage(format!(
        "sqlite database `{}` {why}; it was left untouched",
        shown(path)
    ))
}

/// Look at a file without writing to it.
fn inspect(conn: &Connection, path: &Path) -> Result<Found> {
    let err = |e| open_error(path, e);
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(err)?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(err)?;
    if app_id == 0 && objects == 0 {
        return Ok(Found::Empty);
    }
    if app_id != APPLICATION_ID {
        return Err(refuse(
            path,
            format_args!("is not a cairn database (application_id {app_id:#x}, {objects} schema objects)"),
        ));
    }
    let has_meta: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'cairn_meta'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(err)?
        > 0;
    if !has_meta {
        return Err(refuse(
            path,
            "carries cairn's application id but has no cairn_meta table",
        ));
    }
    let meta = |key: &str| -> Result<Option<String>> {
        conn.query_row("SELECT value FROM cairn_meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(err)
    };
    if meta("application")?.as_deref() != Some(APPLICATION_NAME) {
        return Err(refuse(path, "has a cairn_meta table that does not name cairn"));
    }
    let version = meta("schema_version")?
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| refuse(path, "has no readable schema version in cairn_meta"))?;
    if version > SCHEMA_VERSION {
        return Err(refuse(
            path,
            format_args!(
                "was written by a newer cairn (schema version {version}; this build supports up to {SCHEMA_VERSION})"
            ),
        ));
    }
    Ok(Found::Cairn(version))
}

/// WAL pages (4 KiB each) past which a commit checkpoints (about 40 MiB).
pub(crate) const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;
/// The write connection's page cache, in KiB (SQLite's default is 2,000):
/// grown only as pages are read, so a quiet database never fills it.
pub(crate) const WRITER_CACHE_KIB: i64 = 16 << 10;
/// The size a restarted WAL file is cut back to.
pub(crate) const WAL_SIZE_LIMIT_BYTES: i64 = 64 << 20;

/// SQLite opens a file it may not write read-only, without an error, and a
/// current schema needs no write to open: without this a server on it would
/// look healthy and fail every write.
fn check_writable(conn: &Connection, path: &Path) -> Result<()> {
    if conn.is_readonly(rusqlite::MAIN_DB).map_err(|e| open_error(path, e))? {
        return Err(CairnError::storage(format!(
            "sqlite database `{}` is not writable (it opened read-only: check the file's owner and permissions)",
            shown(path)
        )));
    }
    Ok(())
}

/// How long opening a file waits, by default, for locks another process
/// holds on it (see [`crate::SqliteOptions::open_lock_wait`]).
pub(crate) const OPEN_LOCK_WAIT: Duration = Duration::from_secs(300);

/// How long a lock held elsewhere is waited for before the log says so:
/// far longer than another server's ordinary commit takes.
const LOCK_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// The write connection, waiting the default time for other processes' locks.
#[cfg(test)]
pub(crate) fn open_writer(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    open_writer_waiting(path, busy_timeout, OPEN_LOCK_WAIT)
}

/// Open (creating if absent) the write connection: refuse foreign, corrupt or
/// newer files before writing a byte, then configure durability and migrate.
/// Until it is open it waits up to `lock_wait` for locks another process
/// holds on the file (another cairn migrating it holds the write lock until
/// its migration commits); after that a write waits up to `busy_timeout`.
pub(crate) fn open_writer_waiting(path: &Path, busy_timeout: Duration, lock_wait: Duration) -> Result<Connection> {
    // No SQLITE_OPEN_URI: a path is a path, even one that starts with `file:`.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // The write connection gathers each transaction's WAL appends into one
    // write (ADR 0023); it relies on synchronous=FULL, set below.
    crate::vfs::register().map_err(|e| CairnError::storage(format!("sqlite database `{}`: {e}", shown(path))))?;
    check_regular(path)?;
    create_private(path);
    let mut conn =
        Connection::open_with_flags_and_vfs(path, flags, crate::vfs::NAME).map_err(|e| open_error(path, e))?;
    let ran_out = wait_for_locks(&mut conn, path, lock_wait).map_err(|e| open_error(path, e))?;
    match prepare_writer(&mut conn, path) {
        Ok(()) => {}
        Err(e) if ran_out.load(Ordering::Relaxed) => {
            return Err(CairnError::storage(format!(
                "sqlite database `{}` stayed locked by another process for {} s: another cairn may be migrating or \
                 writing the file; start this one once that is done ({e})",
                shown(path),
                lock_wait.as_secs_f64()
            )))
        }
        Err(e) => return Err(e),
    }
    // From now on a write waits the busy timeout, as on every other connection.
    conn.busy_timeout(busy_timeout).map_err(|e| open_error(path, e))?;
    Ok(conn)
}

/// Create the database file, when there is none, readable and writable by
/// this user alone: it holds every record (forwarded env values, signal
/// payloads, turn conversations), and SQLite gives its `-wal` and `-shm`
/// files the database file's mode. An empty file is an empty database. A
/// file that is there (another process may have made it first) keeps its
/// mode (the mode applies only to a file this makes), a symlink is followed
/// as SQLite follows it, `:memory:` (which SQLite takes for no file) is left
/// alone, and a failure is left to the open that follows, which says why.
/// Refuse a path that names something other than a regular file (a FIFO,
/// which opening would wait on for a writer for ever; a device; a
/// directory) before anything opens it or writes beside it.
fn check_regular(path: &Path) -> Result<()> {
    if !names_a_file(path) {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(path) else {
        // Absent (it is created), or unreadable: opening says why.
        return Ok(());
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(());
    }
    use std::os::unix::fs::FileTypeExt;
    let what = if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(CairnError::storage(format!(
        "sqlite database `{}` is {what}: name a file (one that is not there is created)",
        shown(path)
    )))
}

fn create_private(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    if !names_a_file(path) {
        return;
    }
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path);
}

/// Whether SQLite takes `path` for a file (`:memory:` and the empty path it
/// does not).
fn names_a_file(path: &Path) -> bool {
    !(path.as_os_str() == ":memory:" || path.as_os_str().is_empty())
}

/// While a file is opened: wait for locks another process holds, up to
/// `wait` in all, and say once in the log that it waits; the answer tells
/// whether the wait ran out. SQLite's own busy timeout cannot say that it
/// waits, and the one writes use (seconds) is too short for another cairn's
/// migration, which holds the write lock for tens of seconds on a file of
/// millions of processes.
fn wait_for_locks(conn: &mut Connection, path: &Path, wait: Duration) -> rusqlite::Result<Arc<AtomicBool>> {
    let started = Instant::now();
    let ran_out = Arc::new(AtomicBool::new(false));
    let tell = ran_out.clone();
    let shown = shown(path);
    let mut busy_since = started;
    let mut told = false;
    conn.busy_handler(Some(move |count: i32| {
        let now = Instant::now();
        if count == 0 {
            busy_since = now;
        }
        let waited = now.duration_since(started);
        if waited >= wait {
            tell.store(true, Ordering::Relaxed);
            return false;
        }
        if !told && now.duration_since(busy_since) >= LOCK_NOTICE_AFTER {
            told = true;
            tracing::warn!(
                path = %shown,
                wait_s = wait.as_secs_f64(),
                "another process holds a lock on the sqlite database (another cairn may be migrating it); \
                 waiting for it before opening"
            );
        }
        // As SQLite's own busy handler: short pauses first, then 100 ms.
        let pause = Duration::from_millis(match count {
            0 => 1,
            1 => 2,
            2 => 5,
            3 => 10,
            4 => 25,
            5 => 50,
            _ => 100,
        });
        std::thread::sleep(pause.min(wait - waited));
        true
    }))?;
    Ok(ran_out)
}

/// Check, configure and migrate a write connection just opened.
fn prepare_writer(conn: &mut Connection, path: &Path) -> Result<()> {
    check_writable(conn, path)?;
    stable_plans(conn).map_err(|e| open_error(path, e))?;
    inspect(conn, path)?;
    // WAL: readers never block the writer and a commit is one append + fsync.
    // Only now, once the file is known to be ours (or empty), may it change.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(CairnError::storage(format!(
            "sqlite database `{}` cannot use WAL journaling (journal_mode is `{mode}`)",
            shown(path)
        )));
    }
    // FULL syncs the WAL on every commit: an acknowledged write survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| open_error(path, e))?;
    // The writer checkpoints inside the commit that takes the WAL past this
    // many pages. SQLite's default (1,000 pages, 4 MiB) had it checkpoint
    // every ~30 ms under load, an eighth of its time: a checkpoint copies each
    // changed page once however many commits rewrote it, so a larger WAL
    // copies far fewer pages per commit. A WAL that grew past the size limit
    // (readers holding old frames) is cut back when it restarts.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(|e| open_error(path, e))?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)
        .map_err(|e| open_error(path, e))?;
    // The writer walks the same few B-tree paths (the newest rows and index
    // entries) job after job; SQLite's default 2 MiB cache let them fall out
    // and read them again from the file (a tenth of the writer's time).
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
        .map_err(|e| open_error(path, e))?;
    // Integrity between tables is kept by the single writer, and prune deletes
    // children explicitly so it can count them.
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(|e| open_error(path, e))?;
    migrate(conn, path)
}

/// Bring the schema to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let err = |e| open_error(path, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    // Look again under the write lock: another process may have initialised or
    // upgraded the file since the first look.
    let from = match inspect(&tx, path)? {
        Found::Empty => 0,
        Found::Cairn(v) => v,
    };
    if from == SCHEMA_VERSION {
        return Ok(());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.execute_batch(sql).map_err(err)?;
        let version = i as u32 + 1;
        tx.execute(
            "INSERT INTO cairn_meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [version.to_string()],
        )
        .map_err(err)?;
    }
    tx.execute(
        "INSERT INTO cairn_meta (key, value) VALUES ('application', ?1), ('application_id', ?2)
         ON CONFLICT (key) DO NOTHING",
        [APPLICATION_NAME.to_string(), APPLICATION_ID.to_string()],
    )
    .map_err(err)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(())
}

/// Open a read connection. Read-only at the SQLite level, so a bug in a read
/// path cannot write.
pub(crate) fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(busy_timeout).map_err(|e| open_error(path, e))?;
    stable_plans(&conn).map_err(|e| open_error(path, e))?;
    Ok(conn)
}

/// Turn on SQLite's query planner stability guarantee: a statement's plan
/// never depends on the values bound to it. Without it, a statement with a
/// bound `LIMIT ?` (every page read, the worklist) is marked to be prepared
/// again each time that parameter is bound, so a cached statement was parsed
/// and planned afresh on every use: a sixth of a busy server's read time.
pub(crate) fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database file opened here is readable by its user alone, with its
    /// WAL and shared-memory files, whatever the umask; a file that was
    /// there keeps its mode.
    #[test]
    fn a_new_database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        let path = dir.path().join("c.db");
        let conn = open_writer(&path, Duration::from_secs(5)).expect("open");
        conn.execute_batch("INSERT INTO cairn_meta (key, value) VALUES ('probe', '1')")
            .expect("write");
        for file in ["c.db", "c.db-wal", "c.db-shm"] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        let shared = dir.path().join("shared.db");
        std::fs::write(&shared, b"").expect("create");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        open_writer(&shared, Duration::from_secs(5)).expect("open");
        assert_eq!(mode(&shared), 0o640);
        // A symlink to no file yet: the file it names is made private.
        let target = dir.path().join("target.db");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        open_writer(&link, Duration::from_secs(5)).expect("open");
        assert_eq!(mode(&target), 0o600);
        // `:memory:` is no file: nothing is made for it.
        assert!(!names_a_file(Path::new(":memory:")) && !names_a_file(Path::new("")));
        assert!(names_a_file(&link) && names_a_file(Path::new("cairn.db")));
    }

    /// A file SQLite could open only read-only (its mode, for any user but
    /// root; here opened so) is refused as not writable, with the path.
    #[test]
    fn a_file_opened_read_only_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        Connection::open(&path)
            .and_then(|c| c.execute_batch("CREATE TABLE t (x)"))
            .expect("create");
        let writable = Connection::open(&path).expect("open");
        assert!(check_writable(&writable, &path).is_ok());
        let read_only = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open read-only");
        let e = check_writable(&read_only, &path).expect_err("read-only");
        assert!(e.to_string().contains("c.db` is not writable"), "{e}");
    }
}
