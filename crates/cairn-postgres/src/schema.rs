//! cairn's own schema: recognising it, refusing anything else untouched, and
//! running versioned migrations under an advisory lock so any number of nodes
//! may start at once.

use cairn_core::{CairnError, Result};
use tokio_postgres::Client;

/// The schema version this build writes and the newest it can open.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The value of the `application` row of `cairn_meta`.
const APPLICATION_NAME: &str = "cairn";

/// Migration `i` takes a schema from version `i` to `i + 1`. Never edit a
/// released entry: append a new one. Each runs inside the migrating transaction
/// with `search_path` set to cairn's schema.
const MIGRATIONS: &[&str] = &[
    V1,
    V2,
    V3,
    V4,
    V5,
    V_SWEEP,
    V_MODULES,
    V_PARTIAL_LISTING_INDEXES,
    V_SCHEDULE_REFUSALS,
    V_WORKLIST_BY_TIME,
    V_FRAME_WAKES,
    V_TOMBSTONE_GRANTS,
    V_TOUCHES,
    V_LISTING_WINDOWS,
];

/// Listings by creation time and of waiting processes (ADR 0037). A
/// listing bounded by `created_from_ms`/`created_before_ms` (the windows the
/// dashboard's list and `cairn ls` find their newest rows by) or filtered on
/// `waiting` had no index but the id order, and read every row to find few.
/// `processes_created` takes an entry as a row is registered, at its newest
/// pages (registration times only grow), and on an update that is not HOT
/// (one that changes an indexed column, as an ending does). It is keyed
/// newest first: a window reads a range either way and sorts it by id, but
/// walked backwards it gives the creation order without the id order, so the
/// claims and the worklist, which read the queued rows in `(created_at_ms,
/// id)` order, keep `processes_ready` (ordered as they read) even on a tiny
/// table, where the two would otherwise cost the same. `processes_waiting`
/// holds only the rows waiting now, and a listing states its term, so a
/// generic plan may use it. `definition` stays unindexed: every start would
/// pay an id-scattered entry for a filter few listings use.
const V_LISTING_WINDOWS: &str = r#"
CREATE INDEX processes_created ON processes (created_at_ms DESC);
CREATE INDEX processes_waiting ON processes (id) WHERE waiting;
"#;

/// When each env spec and type list was last stored or put, by the server's
/// clock (ADR 0034): a prune collects those no process names, but only those
/// nobody stored in the last hour. A lane names a list it stored up to 10
/// minutes earlier without writing it again, and a put and the registration
/// naming its env are two writes: neither may find it collected between.
/// Rows stored before count as stored at this migration (a node still
/// running the older build may be about to name one it cached); rows an
/// older build inserts after it get the server's time as they are inserted.
const V_TOUCHES: &str = r#"
ALTER TABLE envs ADD COLUMN touched_at_ms bigint NOT NULL DEFAULT (extract(epoch FROM now()) * 1000)::int8;
ALTER TABLE envs ALTER COLUMN touched_at_ms SET DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::int8;
ALTER TABLE type_lists ADD COLUMN touched_at_ms bigint NOT NULL DEFAULT (extract(epoch FROM now()) * 1000)::int8;
ALTER TABLE type_lists ALTER COLUMN touched_at_ms SET DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::int8;
"#;

/// The scopes that held a grant on a process as it was pruned, kept beside
/// its tombstone: the session that owned the work is answered how it ended
/// (`no_longer_retained` with the tombstone), as the host is, where a session
/// that never held it is answered as for an unknown id. A session's deletion
/// removes its rows, as it removes its grants.
const V_TOMBSTONE_GRANTS: &str = r#"
CREATE TABLE tombstone_grants (
    process_id text COLLATE "C" NOT NULL,
    scope_id   text COLLATE "C" NOT NULL,
    session_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (scope_id, process_id)
);
CREATE INDEX tombstone_grants_session ON tombstone_grants (session_id);
"#;

/// A frame's pending wakes (`pending_frame_wakes`, read by every
/// `session_snapshot`): through `wakes_pending` the read parsed every pending
/// wake of the session as JSON to find the frame's. The index holds the frame
/// as the read compares it, so the read walks only the frame's wakes, in order.
/// `jsonb` takes no `\u0000` escape, which a wake's input may hold (it is
/// rendered from a payload): each becomes `\u0020` before the cast, which
/// keeps the text JSON (in `\\u0000`, an escaped backslash and `u0000`, it
/// becomes `\\u0020`) and leaves the frame id (an id holds no control
/// character) as it was.
const V_FRAME_WAKES: &str = r#"
CREATE INDEX wakes_frame_pending ON wakes
    (target_session_id, (replace(delivery, E'\\u0000', E'\\u0020')::jsonb #>> '{target_scope,agent_frame_id}'),
     wake_order) WHERE NOT acked;
"#;

/// The worklist served in the order work became claimable (ADR 0030). The
/// claimable index was keyed `(claimable_at_ms, id)`, where a row claimable
/// at once (no lease, no deadline) has 0: every fresh start came before a due
/// timer or a lapsed lease, and fresh starts among themselves in id order.
/// Rows claimable at once now have their own index, by registration time;
/// rows claimable at a time keep theirs; a claim merges the two by that time.
const V_WORKLIST_BY_TIME: &str = r#"
DROP INDEX processes_claimable;
CREATE INDEX processes_ready ON processes (created_at_ms, id) WHERE run_candidate AND claimable_at_ms = 0;
CREATE INDEX processes_claimable ON processes (claimable_at_ms, id) WHERE run_candidate AND claimable_at_ms > 0;
"#;

/// A schedule's last refused fire (a `FireRefusal` as JSON), until a later
/// fire starts a process.
const V_SCHEDULE_REFUSALS: &str = r#"
ALTER TABLE schedules ADD COLUMN last_refusal text;
"#;

// Ids are `COLLATE "C"`: listings page in byte order whatever the database's
// default collation, as every other backend does.
const V1: &str = r#"
CREATE TABLE cairn_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per process. `record` is the ProcessRecord as JSON without its lease;
-- the lease lives in the lease_* columns (it changes without an event). The other
-- columns are derived from the record on every write and exist to be indexed.
-- `change_cursor` is (writing transaction id << 20 | ordinal): see changed_since.
CREATE TABLE processes (
    id                  text COLLATE "C" PRIMARY KEY,
    record              text NOT NULL,
    status              text NOT NULL,
    disposition         text NOT NULL,
    definition          text NOT NULL,
    originator          text COLLATE "C" NOT NULL,
    originator_scope    text,
    waiting             boolean NOT NULL,
    created_at_ms       bigint NOT NULL,
    terminal_at_ms      bigint,
    last_sequence       bigint NOT NULL,
    change_cursor       bigint NOT NULL,
    run_candidate       boolean NOT NULL,
    abandon_candidate   boolean NOT NULL,
    fencing_counter     bigint NOT NULL,
    lease_owner         text,
    lease_token         text,
    lease_fencing       bigint,
    lease_claimed_at_ms bigint,
    lease_expires_at_ms bigint,
    -- When the row becomes claimable: 0 with no lease, else the lease expiry.
    claimable_at_ms     bigint GENERATED ALWAYS AS (COALESCE(lease_expires_at_ms, 0)) STORED
);
CREATE INDEX processes_status_id ON processes (status, id);
CREATE INDEX processes_originator_id ON processes (originator, id);
CREATE INDEX processes_change_cursor ON processes (change_cursor);
CREATE INDEX processes_terminal_at ON processes (terminal_at_ms) WHERE terminal_at_ms IS NOT NULL;
-- Claims read only rows that may run, in the order they become claimable.
CREATE INDEX processes_claimable ON processes (claimable_at_ms, id) WHERE run_candidate;
-- The worklist adds rows with a pending abandon request.
CREATE INDEX processes_worklist ON processes (claimable_at_ms, id) WHERE run_candidate OR abandon_candidate;

CREATE TABLE events (
    process_id     text COLLATE "C" NOT NULL,
    sequence       bigint NOT NULL,
    event_type     text NOT NULL,
    replay_key     text,
    occurred_at_ms bigint NOT NULL,
    event          text NOT NULL,
    PRIMARY KEY (process_id, sequence)
);
CREATE UNIQUE INDEX events_replay_key ON events (process_id, replay_key) WHERE replay_key IS NOT NULL;

CREATE TABLE grants (
    scope_id   text COLLATE "C" NOT NULL,
    session_id text COLLATE "C" NOT NULL,
    process_id text COLLATE "C" NOT NULL,
    grant_json text NOT NULL,
    PRIMARY KEY (scope_id, process_id)
);
CREATE INDEX grants_session ON grants (session_id);
CREATE INDEX grants_process ON grants (process_id);

CREATE TABLE wakes (
    wake_id           text PRIMARY KEY,
    target_session_id text COLLATE "C" NOT NULL,
    process_id        text COLLATE "C" NOT NULL,
    acked             boolean NOT NULL DEFAULT false,
    wake_order        bigint GENERATED ALWAYS AS IDENTITY,
    delivery          text NOT NULL
);
CREATE INDEX wakes_pending ON wakes (target_session_id, wake_order) WHERE NOT acked;
CREATE INDEX wakes_process ON wakes (process_id);

CREATE TABLE tombstones (
    id             text COLLATE "C" PRIMARY KEY,
    status         text NOT NULL,
    terminal_at_ms bigint NOT NULL,
    pruned_at_ms   bigint NOT NULL
);

CREATE TABLE envs (
    env_ref text PRIMARY KEY,
    bytes   bytea NOT NULL
);
"#;

// Queue tables churn: every transition leaves a dead row version and dead index
// entries (status changes are never HOT). Vacuum and analyze them after 1% of
// their rows change instead of PostgreSQL's default 20%, so listings of live
// rows do not walk dead index entries and plans see current statistics.
const V2: &str = r#"
ALTER TABLE processes SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01);
ALTER TABLE events SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05);
ALTER TABLE grants SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE wakes SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
"#;

// Declared type lists live apart from the rows that share them, keyed by their
// content address (EventTypes::key): a process row stays narrow and a node
// decodes each list once. Rows written from v3 on store `event_types` as [] in
// `record` and name their list in `types_key`; a NULL key (rows v1 and v2
// wrote) means the list is in `record`. (A prune collects the lists no row
// names since V_TOUCHES, ADR 0034.)
// Abandon requests get their own small index, so a driver's per-drive check
// reads only them; the worklist is the union of it and the claimable index.
const V3: &str = r#"
CREATE TABLE type_lists (
    key   text COLLATE "C" PRIMARY KEY,
    types text NOT NULL
);
ALTER TABLE processes ADD COLUMN types_key text;
DROP INDEX processes_worklist;
CREATE INDEX processes_abandon ON processes (claimable_at_ms, id) WHERE abandon_candidate;
"#;

// Suspension and children (SPEC §13): a suspended row is claimable at its deadline
// (`wake_at_ms`) or not at all until a write wakes it; waits recorded before
// this version by rerunnable runs become suspensions a signal wakes. Dropping
// the old generated column drops the indexes over it; they are made again.
const V4: &str = r#"
ALTER TABLE processes ADD COLUMN wake_at_ms bigint;
ALTER TABLE processes DROP COLUMN claimable_at_ms;
ALTER TABLE processes ADD COLUMN claimable_at_ms bigint
    GENERATED ALWAYS AS (COALESCE(lease_expires_at_ms, wake_at_ms, 0)) STORED;
CREATE INDEX processes_claimable ON processes (claimable_at_ms, id) WHERE run_candidate;
CREATE INDEX processes_abandon ON processes (claimable_at_ms, id) WHERE abandon_candidate;
UPDATE processes SET run_candidate = false
    WHERE run_candidate AND disposition = 'rerunnable' AND waiting
      AND (record::jsonb -> 'cancel_request') IS NULL;
-- A child's parent (SPEC §13), for the `caused_by` filter.
ALTER TABLE processes ADD COLUMN caused_by text COLLATE "C";
UPDATE processes SET caused_by = COALESCE(
    record::jsonb #>> '{provenance,caused_by,process_id}',
    CASE WHEN record::jsonb #>> '{provenance,caused_by,kind}' = 'process'
         THEN record::jsonb #>> '{provenance,caused_by,id}' END);
CREATE INDEX processes_caused_by ON processes (caused_by, id) WHERE caused_by IS NOT NULL;
"#;

// Schedules (SPEC §18): the schedule document, its state in columns, and the
// due index the work driver's `next_due` and `due_schedules` read.
const V5: &str = r#"
CREATE TABLE schedules (
    id              text COLLATE "C" PRIMARY KEY,
    schedule        text NOT NULL,
    paused          boolean NOT NULL,
    next_fire_ms    bigint NOT NULL,
    last_fire_ms    bigint,
    last_process_id text
);
CREATE INDEX schedules_due ON schedules (next_fire_ms, id) WHERE NOT paused;
"#;

// Node identities and the sweep (SPEC §2, ADR 0017): one liveness row per node
// id (its latest incarnation and heartbeat), and the node incarnation that
// started each running owner-bound row (derived by `fold::sweep_owner`),
// indexed for the sweep worklist. Rows written before this version name no
// node incarnation, so none is derived.
const V_SWEEP: &str = r#"
CREATE TABLE nodes (
    node_id         text COLLATE "C" PRIMARY KEY,
    incarnation     bigint NOT NULL,
    started_at_ms   bigint NOT NULL,
    heartbeat_at_ms bigint NOT NULL
);
ALTER TABLE processes ADD COLUMN sweep_node text COLLATE "C";
ALTER TABLE processes ADD COLUMN sweep_incarnation bigint;
CREATE INDEX processes_sweep ON processes (sweep_node, sweep_incarnation) WHERE sweep_node IS NOT NULL;
"#;

/// Script modules (SPEC §14): content-addressed and immutable; `exports` is a
/// JSON array of names.
const V_MODULES: &str = r#"
CREATE TABLE modules (
    module_ref    text COLLATE "C" PRIMARY KEY,
    name          text,
    exports       text NOT NULL,
    source        text NOT NULL,
    created_at_ms bigint NOT NULL
);
"#;

/// The listing indexes leave out completed rows and the host's rows (ADR
/// 0026): an update that ends a process, or the insert of a host's process,
/// no longer adds an entry to them. The listing queries state the index terms,
/// so a generic plan may use them too.
const V_PARTIAL_LISTING_INDEXES: &str = r#"
DROP INDEX processes_status_id;
CREATE INDEX processes_status_id ON processes (status, id) WHERE status <> 'completed';
DROP INDEX processes_originator_id;
CREATE INDEX processes_originator_id ON processes (originator, id) WHERE originator_scope IS NOT NULL;
"#;

/// Check a schema name: a plain lower-case SQL identifier, so it never needs
/// escaping beyond double quotes and means the same to every tool.
pub fn validate_schema_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(CairnError::InvalidRequest(format!(
            "postgres schema name `{}` must be 1-48 characters of a-z, 0-9 and _, not start with a digit or `pg_`",
            name.escape_debug()
        )))
    }
}

fn refuse(schema: &str, why: impl std::fmt::Display) -> CairnError {
    CairnError::storage(format!("postgres schema `{schema}` {why}; it was left untouched"))
}

fn pg(schema: &str, e: tokio_postgres::Error) -> CairnError {
    CairnError::storage_caused_by(
        format!("postgres: migrating schema `{schema}`: {}", crate::conn::describe(&e)),
        e,
    )
}

/// Create or migrate cairn's schema; returns the version found before migrating.
///
/// Refuses, changing nothing, a schema that holds tables but no `cairn_meta`, a
/// `cairn_meta` that does not name cairn, and a newer schema version.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<u32> {
    validate_schema_name(schema)?;
    let err = |e| pg(schema, e);
    let tx = client.transaction().await.map_err(err)?;
    // Serialise nodes migrating the same schema; released at commit.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1::text))",
        &[&format!("cairn-migrate:{schema}")],
    )
    .await
    .map_err(err)?;
    let tables: i64 = tx
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = $1::text", &[&schema])
        .await
        .map_err(err)?
        .get(0);
    let has_meta: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1::text AND tablename = 'cairn_meta')",
            &[&schema],
        )
        .await
        .map_err(err)?
        .get(0);
    let found = if has_meta {
        let meta = |key: &'static str| {
            let tx = &tx;
            async move {
                tx.query_opt(
                    &format!("SELECT value FROM \"{schema}\".cairn_meta WHERE key = $1::text"),
                    &[&key],
                )
                .await
                .map(|row| row.map(|r| r.get::<_, String>(0)))
            }
        };
        if meta("application").await.map_err(err)?.as_deref() != Some(APPLICATION_NAME) {
            return Err(refuse(schema, "has a cairn_meta table that does not name cairn"));
        }
        let version = meta("schema_version")
            .await
            .map_err(err)?
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| refuse(schema, "has no readable schema version in cairn_meta"))?;
        if version > SCHEMA_VERSION {
            return Err(refuse(
                schema,
                format_args!(
                    "was written by a newer cairn (schema version {version}; this build supports up to {SCHEMA_VERSION})"
                ),
            ));
        }
        version
    } else if tables > 0 {
        return Err(refuse(
            schema,
            format_args!("is not a cairn schema ({tables} tables and no cairn_meta)"),
        ));
    } else {
        0
    };
    if found == SCHEMA_VERSION {
        tx.rollback().await.map_err(err)?;
        return Ok(found);
    }
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET LOCAL search_path TO \"{schema}\""
    ))
    .await
    .map_err(err)?;
    for migration in &MIGRATIONS[found as usize..] {
        tx.batch_execute(migration).await.map_err(err)?;
    }
    tx.execute(
        "INSERT INTO cairn_meta (key, value) VALUES ('application', $1::text), ('schema_version', $2::text)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&APPLICATION_NAME, &SCHEMA_VERSION.to_string()],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)?;
    tracing::info!(schema, from = found, to = SCHEMA_VERSION, "postgres schema migrated");
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["cairn", "cairn_2", "_x", "a"] {
            assert!(validate_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Cairn",
            "1cairn",
            "pg_cairn",
            "cairn-x",
            "a\"b",
            "cairn x",
            &"a".repeat(49),
        ] {
            let err = validate_schema_name(bad).expect_err(bad);
            assert_eq!(err.code(), "invalid_request", "{bad}");
        }
    }
}
