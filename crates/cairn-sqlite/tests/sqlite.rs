//! The SQLite registry: opening and refusing files, durability across reopen
//! and crashes, group commit, and a differential run against the memory registry.
//!
//! Why one file past 800 lines: each test here needs SQLite's own file and
//! writer (corrupt files, crash children, held locks); what every backend
//! shares lives in cairn-testkit instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_core::clock::Clock;
use cairn_core::events::{DedupeKey, EventType, SemanticsSpec, WakeSpec};
use cairn_core::{
    AppendRequest, CairnError, Disposition, EnvSpec, GrantDescriptor, ManualClock, MemoryRegistry, Originator, Outcome,
    ProcessFilter, ProcessInput, ProcessRegistry, Provenance, Registration, Selector, SessionScope, StartGrant,
    StatusFilter, Watermark,
};
use cairn_sqlite::{SqliteOptions, SqliteRegistry, APPLICATION_ID, SCHEMA_VERSION};
use rusqlite::Connection;
use serde::Serialize;
use serde_json::{json, Value};

const T0: u64 = 1_700_000_000_000;

/// What `V_LISTING_WINDOWS` adds, undone: the schema as versions before 17 made it.
const UNDO_LISTING_WINDOWS: &str = "DROP INDEX processes_created;
         DROP INDEX processes_waiting;";

/// What `V_LIST_TOUCHES` adds, undone with what came after it: the schema as
/// versions before 16 made it.
const UNDO_LIST_TOUCHES: &str = "DROP INDEX processes_created;
         DROP INDEX processes_waiting;
         DROP TRIGGER envs_touched_on_insert;
         DROP TRIGGER type_lists_touched_on_insert;
         ALTER TABLE type_lists DROP COLUMN touched_at_ms;";

/// What `V_ENV_TOUCHES` adds, undone with what came after it: the schema as
/// versions before 15 made it.
const UNDO_ENV_TOUCHES: &str = "DROP INDEX processes_created;
         DROP INDEX processes_waiting;
         DROP TRIGGER envs_touched_on_insert;
         DROP TRIGGER type_lists_touched_on_insert;
         ALTER TABLE type_lists DROP COLUMN touched_at_ms;
         ALTER TABLE envs DROP COLUMN touched_at_ms;";

/// The worklist index as schema versions before 12 made it (one index, a row
/// claimable at once keyed 0), undoing `V_WORKLIST_BY_TIME` (and the later
/// `V_FRAME_WAKES`, `V_TOMBSTONE_GRANTS`, `V_ENV_TOUCHES`, `V_LIST_TOUCHES`
/// and `V_LISTING_WINDOWS`).
const UNDO_WORKLIST_BY_TIME: &str = "DROP INDEX processes_created;
         DROP INDEX processes_waiting;
         DROP TRIGGER envs_touched_on_insert;
         DROP TRIGGER type_lists_touched_on_insert;
         ALTER TABLE type_lists DROP COLUMN touched_at_ms;
         ALTER TABLE envs DROP COLUMN touched_at_ms;
         DROP TABLE tombstone_grants;
         DROP INDEX wakes_frame_pending;
         DROP INDEX processes_ready;
         DROP INDEX processes_worklist;
         CREATE INDEX processes_worklist ON processes (claimable_at_ms, id)
             WHERE run_candidate = 1 OR abandon_candidate = 1;";

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("cairn.db")
}

fn open(path: &Path, clock: &ManualClock) -> SqliteRegistry {
    SqliteRegistry::open(path, Arc::new(clock.clone())).expect("open")
}

fn storage_message(err: CairnError) -> String {
    match err {
        CairnError::Storage { message, .. } => message,
        other => panic!("expected a storage error, got {other:?}"),
    }
}

fn tool(id: &str, disposition: Disposition) -> Registration {
    Registration {
        id: id.into(),
        input: ProcessInput::ToolCall {
            tool: "echo".into(),
            args: json!({"value": id}),
        },
        disposition,
        event_types: vec![],
        provenance: Provenance::default(),
        wake_target: None,
        env_ref: None,
        external_ref: None,
    }
}

fn external(id: &str) -> Registration {
    Registration {
        input: ProcessInput::External { metadata: json!({}) },
        ..tool(id, Disposition::ExternallyOwned)
    }
}

/// A process started by session `s1` that wakes it on `progress` events.
fn waking(id: &str) -> Registration {
    let progress = EventType::plain("progress")
        .with_schema(json!({"type": "object", "required": ["text"]}))
        .with_semantics(SemanticsSpec {
            terminal: None,
            wake: Some(WakeSpec {
                when: None,
                input: Selector::Pointer("/text".into()),
                dedupe_key: DedupeKey::EventIdentity,
            }),
        });
    let once = EventType::plain("ready").with_semantics(SemanticsSpec {
        terminal: None,
        wake: Some(WakeSpec {
            when: None,
            input: Selector::Const(json!("ready")),
            dedupe_key: DedupeKey::Const("ready".into()),
        }),
    });
    Registration {
        event_types: vec![progress, once],
        provenance: Provenance {
            originator: Originator::session(SessionScope::session("s1")),
            caused_by: None,
        },
        wake_target: Some(SessionScope::session("s1")),
        ..tool(id, Disposition::Rerunnable)
    }
}

fn grant_to(session: &str) -> Option<StartGrant> {
    Some(StartGrant {
        session_scope: SessionScope::session(session),
        descriptor: GrantDescriptor {
            kind: Some("tool".into()),
            label: None,
        },
    })
}

// ------------------------------------------------------------------ opening

#[tokio::test]
async fn a_new_file_gets_the_cairn_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let reg = open(&path, &ManualClock::new(T0));
    assert_eq!(reg.path(), path);
    drop(reg);
    let conn = Connection::open(&path).expect("raw open");
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .expect("app id");
    assert_eq!(app, APPLICATION_ID);
    let version: String = conn
        .query_row("SELECT value FROM cairn_meta WHERE key = 'schema_version'", [], |r| {
            r.get(0)
        })
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION.to_string());
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
    assert_eq!(mode, "wal");
    // Reopening an up-to-date file is a no-op.
    drop(conn);
    drop(open(&path, &ManualClock::new(T0)));
}

#[tokio::test]
async fn a_text_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let text = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &text).expect("write");
    let err = SqliteRegistry::open(&path, Arc::new(ManualClock::new(T0))).expect_err("must refuse");
    let msg = storage_message(err);
    assert!(msg.contains("not a cairn database"), "{msg}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["cairn.db".to_string()], "no journal or WAL files were made");
}

/// A path naming a FIFO (which opening would wait on for ever) or a
/// directory is refused at once, saying what it names, and nothing is made
/// beside it.
#[tokio::test]
async fn a_fifo_or_a_directory_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("pipe.db");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let sub = dir.path().join("sub.db");
    std::fs::create_dir(&sub).expect("mkdir");
    for (path, what) in [(fifo.clone(), "is a FIFO"), (sub.clone(), "is a directory")] {
        // On a thread of its own: an open that waits on the FIFO never returns.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(SqliteRegistry::open(&path, Arc::new(ManualClock::new(T0))).err());
        });
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("refused without waiting")
            .expect("must refuse");
        let msg = storage_message(err);
        assert!(msg.contains(what), "{msg}");
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["pipe.db", "sub.db"], "nothing was made beside them");
}

#[tokio::test]
async fn another_applications_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('hello');")
            .expect("foreign schema");
    }
    let before = std::fs::read(&path).expect("read");
    let err = SqliteRegistry::open(&path, Arc::new(ManualClock::new(T0))).expect_err("must refuse");
    let msg = storage_message(err);
    assert!(msg.contains("not a cairn database"), "{msg}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "the file is byte for byte unchanged"
    );
    let conn = Connection::open(&path).expect("raw open");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema ORDER BY name")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("names");
    assert_eq!(tables, vec!["notes".to_string()]);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
    assert_eq!(mode, "delete", "journal mode not switched to WAL");
}

#[tokio::test]
async fn a_database_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    drop(open(&path, &ManualClock::new(T0)));
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.execute("UPDATE cairn_meta SET value = '99' WHERE key = 'schema_version'", [])
            .expect("bump");
    }
    let err = SqliteRegistry::open(&path, Arc::new(ManualClock::new(T0))).expect_err("must refuse");
    let msg = storage_message(err);
    assert!(msg.contains("newer cairn") && msg.contains("99"), "{msg}");
    let conn = Connection::open(&path).expect("raw open");
    let version: String = conn
        .query_row("SELECT value FROM cairn_meta WHERE key = 'schema_version'", [], |r| {
            r.get(0)
        })
        .expect("version");
    assert_eq!(version, "99", "nothing was migrated down");
}

#[tokio::test]
async fn a_cairn_id_without_cairn_meta_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; CREATE TABLE other (x);"
        ))
        .expect("fake");
    }
    let msg = storage_message(SqliteRegistry::open(&path, Arc::new(ManualClock::new(T0))).expect_err("refuse"));
    assert!(msg.contains("no cairn_meta"), "{msg}");
}

/// A populated, cleanly closed cairn database.
async fn populated(path: &Path) {
    let clock = ManualClock::new(T0);
    let reg = open(path, &clock);
    for i in 0..50 {
        reg.register(tool(&format!("p{i:03}"), Disposition::Rerunnable), None)
            .await
            .expect("register");
    }
}

#[tokio::test]
async fn a_corrupt_header_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    populated(&path).await;
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[..16].copy_from_slice(b"garbage garbage!");
    std::fs::write(&path, &bytes).expect("write");
    let msg = storage_message(SqliteRegistry::open(&path, Arc::new(ManualClock::new(T0))).expect_err("refuse"));
    assert!(msg.contains("not a cairn database") || msg.contains("corrupt"), "{msg}");
    assert_eq!(std::fs::read(&path).expect("read"), bytes, "left untouched");
}

#[tokio::test]
async fn a_corrupt_schema_page_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    populated(&path).await;
    assert!(
        !dir.path().join("cairn.db-wal").exists(),
        "a clean close checkpoints and removes the WAL"
    );
    let mut bytes = std::fs::read(&path).expect("read");
    // Page 1 past the 100-byte file header holds the schema table's b-tree.
    for b in &mut bytes[100..400] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).expect("write");
    let msg = storage_message(SqliteRegistry::open(&path, Arc::new(ManualClock::new(T0))).expect_err("refuse"));
    assert!(msg.contains("corrupt") || msg.contains("malformed"), "{msg}");
    assert_eq!(std::fs::read(&path).expect("read"), bytes, "left untouched");
}

#[tokio::test]
async fn a_missing_directory_is_a_storage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no/such/dir/cairn.db");
    let msg = storage_message(SqliteRegistry::open(&path, Arc::new(ManualClock::new(T0))).expect_err("refuse"));
    assert!(msg.contains("cannot be opened"), "{msg}");
}

// ------------------------------------------------------------------ persistence

/// Everything observable about a registry, as JSON with lease tokens blanked.
async fn snapshot(reg: &dyn ProcessRegistry, ids: &[&str], env: &str) -> Value {
    let mut out = serde_json::Map::new();
    for id in ids {
        let rec = reg.get(id).await.map_err(|e| e.code());
        let events = reg.events_after(id, 0, Some(1000)).await.map_err(|e| e.code());
        let fencing = reg.fencing_token(id).await.map_err(|e| e.code());
        out.insert(id.to_string(), normalized(&(rec, events, fencing)));
    }
    let any = ProcessFilter::any();
    out.insert("list".into(), normalized(&reg.list(&any).await.map_err(|e| e.code())));
    out.insert(
        "granted".into(),
        normalized(
            &reg.list_granted_to(&SessionScope::session("s1"), &any)
                .await
                .map_err(|e| e.code()),
        ),
    );
    out.insert(
        "originated".into(),
        normalized(
            &reg.list_originated_by(&SessionScope::session("s1"), &any)
                .await
                .map_err(|e| e.code()),
        ),
    );
    out.insert(
        "wakes".into(),
        normalized(&reg.pending_wakes("s1", None).await.map_err(|e| e.code())),
    );
    out.insert(
        "changes".into(),
        normalized(&reg.changed_since(0, None).await.map_err(|e| e.code())),
    );
    out.insert(
        "worklist".into(),
        normalized(&reg.worklist(100).await.map_err(|e| e.code())),
    );
    out.insert("env".into(), normalized(&reg.get_env(env).await.map_err(|e| e.code())));
    Value::Object(out)
}

#[tokio::test]
async fn reopening_preserves_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let ids = ["a-wake", "b-claimed", "c-done", "d-pruned", "e-ext"];
    let reg = open(&path, &clock);
    let env = reg
        .put_env(&EnvSpec {
            plugin_options: json!({"image": "alpine"}),
            policy: json!({"net": false}),
        })
        .await
        .expect("env");
    reg.register(waking("a-wake"), grant_to("s1")).await.expect("a");
    for n in 0..3 {
        reg.append_event(
            "a-wake",
            AppendRequest::new("progress", json!({"text": format!("step {n}")})),
        )
        .await
        .expect("progress");
    }
    let wakes = reg.pending_wakes("s1", None).await.expect("wakes");
    assert_eq!(wakes.len(), 3);
    assert!(reg.ack_wake("s1", &wakes[0].wake_id).await.expect("ack"));
    reg.register(tool("b-claimed", Disposition::OwnerBound), grant_to("s2"))
        .await
        .expect("b");
    let lease = reg.claim("b-claimed", "w1", 60_000).await.expect("claim");
    reg.record_started(&lease).await.expect("started");
    reg.register(tool("c-done", Disposition::Rerunnable), None)
        .await
        .expect("c");
    let c = reg.claim("c-done", "w1", 1_000).await.expect("claim c");
    reg.complete(&c, Outcome::success(json!(1))).await.expect("complete c");
    reg.register(tool("d-pruned", Disposition::Rerunnable), None)
        .await
        .expect("d");
    reg.request_cancel("d-pruned", Some("no".into()))
        .await
        .expect("cancel d");
    let mut e = external("e-ext");
    e.env_ref = Some(env.clone());
    reg.register(e, None).await.expect("e");
    clock.advance(10);
    let report = reg
        .prune(clock.now_ms(), StatusFilter::Cancelled.into(), Watermark::NoProjector)
        .await
        .expect("prune");
    assert_eq!(report.pruned, 1);
    let before = snapshot(&reg, &ids, &env).await;
    let cursor_before = reg.changed_since(0, Some(1000)).await.expect("changes").next_cursor;
    drop(reg);

    let reg = open(&path, &clock);
    assert_eq!(snapshot(&reg, &ids, &env).await, before);
    // Counters carry on where they stopped.
    let appended = reg
        .append_event("a-wake", AppendRequest::new("progress", json!({"text": "after"})))
        .await
        .expect("append after reopen");
    assert_eq!(appended.event.sequence, 4);
    let page = reg.changed_since(cursor_before, None).await.expect("changes");
    assert_eq!(page.changes.len(), 1);
    assert!(page.changes[0].cursor > cursor_before);
    clock.advance(120_000);
    let again = reg.claim("c-done", "w2", 1_000).await;
    assert_eq!(again.map_err(|e| e.code()).err(), Some("process_terminal"));
    let b = reg.fencing_token("b-claimed").await.expect("fencing");
    assert_eq!(b, 1);
    let tomb = reg.get("d-pruned").await.expect_err("pruned");
    assert_eq!(tomb.code(), "no_longer_retained");
    // Acked wakes still deduplicate after reopen; pending ones are still pending.
    assert_eq!(reg.pending_wakes("s1", None).await.expect("wakes").len(), 3);
    assert!(!reg.ack_wake("s1", &wakes[0].wake_id).await.expect("ack again"));
}

#[tokio::test]
async fn fencing_counters_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let reg = open(&path, &clock);
    reg.register(tool("r", Disposition::Rerunnable), None).await.expect("r");
    for _ in 0..3 {
        let lease = reg.claim("r", "w1", 10).await.expect("claim");
        reg.release(&lease).await.expect("release");
    }
    drop(reg);
    let reg = open(&path, &clock);
    assert_eq!(reg.fencing_token("r").await.expect("fencing"), 3);
    let lease = reg.claim("r", "w1", 10).await.expect("claim");
    assert_eq!(lease.fencing_token, 4);
}

/// The child half of `acknowledged_writes_survive_a_crash`: writes, and dies
/// without any cleanup. Run only by that test (it is ignored otherwise, so it
/// never counts as a pass on its own).
#[tokio::test]
#[ignore = "child process of acknowledged_writes_survive_a_crash"]
async fn crash_child() {
    let path = std::env::var("CAIRN_SQLITE_CRASH_DB").expect("the child needs the database path");
    let clock = ManualClock::new(T0);
    let reg = open(Path::new(&path), &clock);
    reg.register(waking("crash"), grant_to("s1")).await.expect("register");
    for n in 0..20 {
        reg.append_event("crash", AppendRequest::new("progress", json!({"text": format!("{n}")})))
            .await
            .expect("append");
    }
    // Acknowledged: say so, and wait for the parent's SIGKILL (no
    // destructors, no checkpoint).
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ACKED").expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    std::future::pending::<()>().await;
}

#[test]
fn acknowledged_writes_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "crash_child", "--ignored", "--test-threads=1", "--nocapture"])
        .env("CAIRN_SQLITE_CRASH_DB", &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let acked = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .any(|line| line.ends_with("ACKED"));
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert!(acked, "the child acknowledged its writes: {status:?}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the child was killed by SIGKILL: {status:?}"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let reg = open(&path, &ManualClock::new(T0));
        let rec = reg.get("crash").await.expect("record survived");
        assert_eq!(rec.last_sequence, 20);
        let page = reg.events_after("crash", 0, None).await.expect("events");
        assert_eq!(page.events.len(), 20);
        assert_eq!(reg.pending_wakes("s1", None).await.expect("wakes").len(), 20);
        assert_eq!(
            reg.list_granted_to(&SessionScope::session("s1"), &ProcessFilter::any())
                .await
                .expect("g")
                .len(),
            1
        );
    });
}

/// The child half of `commits_sync_the_wal_with_fdatasync`: commits a few
/// writes and exits. Run only by that test.
#[tokio::test]
#[ignore = "child process of commits_sync_the_wal_with_fdatasync"]
async fn sync_child() {
    let path = std::env::var("CAIRN_SQLITE_SYNC_DB").expect("the child needs the database path");
    let reg = open(Path::new(&path), &ManualClock::new(T0));
    reg.register(waking("synced"), None).await.expect("register");
    for n in 0..5 {
        reg.append_event(
            "synced",
            AppendRequest::new("progress", json!({"text": format!("{n}")})),
        )
        .await
        .expect("append");
    }
}

/// Every commit syncs the WAL with `fdatasync`, not `fsync`: SQLite's bundled
/// build uses `fsync` unless built with `HAVE_FDATASYNC` (set for the
/// workspace in `.cargo/config.toml`, ADR 0028), and `fsync` also writes the
/// file's timestamps, a journal commit of its own on ext4 and XFS.
#[cfg(target_os = "linux")]
#[test]
#[cfg_attr(cairn_no_strace, ignore = "strace is not installed (.ci/run installs it)")]
fn commits_sync_the_wal_with_fdatasync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let trace = dir.path().join("syncs.txt");
    let status = std::process::Command::new("strace")
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().expect("exe"))
        .args(["--exact", "sync_child", "--ignored", "--test-threads=1"])
        .env("CAIRN_SQLITE_SYNC_DB", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run strace");
    assert!(status.success(), "the traced child commits and exits");
    let text = std::fs::read_to_string(&trace).expect("trace");
    let wal = format!("{}-wal>", path.display());
    let syncs: Vec<&str> = text.lines().filter(|l| l.contains(&wal)).collect();
    let data_syncs = syncs.iter().filter(|l| l.contains(" fdatasync(")).count();
    // The migration's commit, the registration and five appends.
    assert!(data_syncs >= 7, "each commit syncs the WAL with fdatasync:\n{text}");
    assert!(
        !syncs.iter().any(|l| l.contains(" fsync(")),
        "no commit syncs the WAL with fsync:\n{text}"
    );
}

// ------------------------------------------------------------------ group commit

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_commits_and_stay_gap_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Arc::new(open(&db(&dir), &ManualClock::new(T0)));
    let ids: Vec<String> = (0..4).map(|i| format!("g{i}")).collect();
    for id in &ids {
        reg.register(waking(id), None).await.expect("register");
    }
    let base = reg.write_stats();
    let mut tasks = Vec::new();
    for n in 0..200 {
        let reg = reg.clone();
        let id = ids[n % ids.len()].clone();
        tasks.push(tokio::spawn(async move {
            reg.append_event(&id, AppendRequest::new("progress", json!({"text": format!("{n}")})))
                .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("append");
    }
    for id in &ids {
        let page = reg.events_after(id, 0, Some(1000)).await.expect("events");
        let seqs: Vec<u64> = page.events.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (1..=50).collect::<Vec<u64>>(), "{id}");
        let rec = reg.get(id).await.expect("get");
        cairn_core::fold::check_fold(&rec, &page.events).expect("fold");
    }
    let stats = reg.write_stats();
    let (jobs, commits) = (stats.jobs - base.jobs, stats.commits - base.commits);
    assert_eq!(jobs, 200);
    assert!(
        commits < jobs,
        "group commit shares transactions: {commits} commits for {jobs} jobs"
    );
}

/// A write lock another process holds past the busy timeout is
/// `unavailable` (nothing was written, try again), not a storage fault; the
/// same write goes through once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_is_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SqliteOptions::new(Arc::new(ManualClock::new(T0)));
    options.busy_timeout = std::time::Duration::from_millis(100);
    let reg = SqliteRegistry::open_with(db(&dir), options).expect("open");
    let blocker = Connection::open(db(&dir)).expect("raw open");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let err = reg.register(waking("locked-out"), None).await.expect_err("locked");
    assert_eq!(err.code(), "unavailable", "{err:?}");
    blocker.execute_batch("ROLLBACK").expect("release the write lock");
    assert!(reg.get("locked-out").await.is_err(), "nothing was written");
    reg.register(waking("locked-out"), None)
        .await
        .expect("register once the lock is gone");
}

/// A server opening the file while another process holds its write lock
/// (another cairn migrating a file of millions of processes, for tens of
/// seconds) waits past the busy timeout writes use, and opens once the lock
/// is released.
#[test]
fn an_open_waits_for_a_write_lock_held_longer_than_the_busy_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    drop(open(&path, &ManualClock::new(T0)));
    let options = SqliteOptions::new(Arc::new(ManualClock::new(T0)));
    let busy_timeout = options.busy_timeout;
    assert_eq!(busy_timeout, std::time::Duration::from_secs(5));
    let held = busy_timeout + std::time::Duration::from_secs(1);
    let (locked, is_locked) = std::sync::mpsc::channel();
    let blocker = std::thread::spawn({
        let path = path.clone();
        move || {
            let conn = Connection::open(&path).expect("raw open");
            conn.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
            locked.send(()).expect("say it is locked");
            std::thread::sleep(held);
            conn.execute_batch("COMMIT").expect("release the write lock");
        }
    });
    is_locked.recv().expect("locked");
    let started = std::time::Instant::now();
    let reg = SqliteRegistry::open_with(&path, options).expect("open once the lock is released");
    let waited = started.elapsed();
    blocker.join().expect("blocker");
    assert!(
        waited > busy_timeout,
        "the open waited {waited:?}, past the busy timeout of {busy_timeout:?}"
    );
    drop(reg);
}

/// An open that waited its whole `open_lock_wait` for another process's lock
/// says that another cairn may be migrating or writing the file; once the
/// lock is gone the file opens.
#[test]
fn an_open_that_waits_too_long_for_a_lock_names_the_likely_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    drop(open(&path, &ManualClock::new(T0)));
    let options = || {
        let mut options = SqliteOptions::new(Arc::new(ManualClock::new(T0)));
        options.open_lock_wait = std::time::Duration::from_millis(300);
        options
    };
    let blocker = Connection::open(&path).expect("raw open");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let err = SqliteRegistry::open_with(&path, options()).expect_err("locked");
    let message = storage_message(err);
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message
            .contains("stayed locked by another process for 0.3 s: another cairn may be migrating or writing the file"),
        "{message}"
    );
    blocker.execute_batch("ROLLBACK").expect("release the write lock");
    SqliteRegistry::open_with(&path, options()).expect("open once the lock is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_job_rolls_back_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let reg = Arc::new(open(&path, &ManualClock::new(T0)));
    reg.register(waking("mixed"), None).await.expect("register");
    // Another connection holds the write lock, so the writer thread stalls at
    // BEGIN (within its busy timeout) on whatever it took first, while every
    // append below queues behind it: the queued ones share transactions.
    let blocker = Connection::open(&path).expect("raw open");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let base = reg.write_stats();
    let mut appends = Vec::new();
    for n in 0..100 {
        // Odd ones violate the schema (no `text`): they must fail alone.
        let payload = if n % 2 == 0 {
            json!({"text": n})
        } else {
            json!({"nope": n})
        };
        let reg = reg.clone();
        let mut append =
            Box::pin(async move { reg.append_event("mixed", AppendRequest::new("progress", payload)).await });
        // One poll queues the job on the writer's channel (it cannot finish yet).
        assert!(
            futures::poll!(append.as_mut()).is_pending(),
            "append {n} finished under the lock"
        );
        appends.push((n, append));
    }
    blocker.execute_batch("ROLLBACK").expect("release the write lock");
    for (n, append) in appends {
        let result = append.await;
        match result {
            Ok(_) => assert_eq!(n % 2, 0),
            Err(e) => {
                assert_eq!(n % 2, 1);
                assert_eq!(e.code(), "schema_violation");
            }
        }
    }
    let page = reg.events_after("mixed", 0, Some(1000)).await.expect("events");
    assert_eq!(page.events.len(), 50);
    assert!(page.events.iter().enumerate().all(|(i, e)| e.sequence == i as u64 + 1));
    assert_eq!(reg.pending_wakes("s1", Some(1000)).await.expect("wakes").len(), 50);
    let rec = reg.get("mixed").await.expect("get");
    cairn_core::fold::check_fold(&rec, &page.events).expect("fold");
    // 100 alternating jobs in at most 1 + ceil(100 / 64) transactions: some
    // transaction carried failing and succeeding jobs side by side.
    let stats = reg.write_stats();
    let (jobs, commits) = (stats.jobs - base.jobs, stats.commits - base.commits);
    assert_eq!(jobs, 100);
    assert!(
        commits <= 3,
        "{commits} commits for {jobs} jobs: the jobs did not share transactions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_writes_with_small_batches_still_all_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SqliteOptions::new(Arc::new(ManualClock::new(T0)));
    options.max_batch = 3;
    options.read_connections = 1;
    let reg = Arc::new(SqliteRegistry::open_with(db(&dir), options).expect("open"));
    let mut tasks = Vec::new();
    for n in 0..60 {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            reg.register(tool(&format!("b{n:02}"), Disposition::Rerunnable), None)
                .await
        }));
    }
    for t in tasks {
        assert!(t.await.expect("join").expect("register").created);
    }
    let listed = reg
        .list(&ProcessFilter {
            limit: Some(1000),
            ..ProcessFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 60);
    let claims = reg.claim_batch("w", 1_000, 1000).await.expect("claim batch");
    assert_eq!(claims.len(), 60);
}

// ------------------------------------------------------------------ differential

/// JSON of a value with every lease token blanked (tokens are random per claim).
fn normalized<T: Serialize>(value: &T) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if k == "lease_token" {
                        *child = json!("<token>");
                    } else {
                        walk(child);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(value).expect("serialize");
    walk(&mut v);
    v
}

/// The memory and SQLite registries on one clock.
struct Pair {
    mem: MemoryRegistry,
    sql: SqliteRegistry,
    clock: ManualClock,
    steps: usize,
    _dir: tempfile::TempDir,
}

impl Pair {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(T0);
        Self {
            mem: MemoryRegistry::with_clock(Arc::new(clock.clone())),
            sql: open(&db(&dir), &clock),
            clock,
            steps: 0,
            _dir: dir,
        }
    }

    /// Assert both answers agree (values with lease tokens blanked; errors exactly).
    fn same<T: Serialize + std::fmt::Debug>(
        &mut self,
        what: &str,
        mem: cairn_core::Result<T>,
        sql: cairn_core::Result<T>,
    ) -> Both<T> {
        self.steps += 1;
        match (&mem, &sql) {
            (Ok(a), Ok(b)) => assert_eq!(normalized(a), normalized(b), "step {}: {what}", self.steps),
            (Err(a), Err(b)) => assert_eq!(a, b, "step {}: {what}", self.steps),
            _ => panic!("step {}: {what}: memory {mem:?} vs sqlite {sql:?}", self.steps),
        }
        Both { mem, sql }
    }
}

/// The two answers of one differential step.
struct Both<T> {
    mem: cairn_core::Result<T>,
    sql: cairn_core::Result<T>,
}

/// Run the same call on both registries and compare; evaluates to (memory, sqlite).
macro_rules! both {
    ($pair:ident, $what:expr, |$r:ident| $call:expr) => {{
        let m = {
            let $r: &dyn ProcessRegistry = &$pair.mem;
            $call.await
        };
        let s = {
            let $r: &dyn ProcessRegistry = &$pair.sql;
            $call.await
        };
        $pair.same($what, m, s)
    }};
}

/// Like `both!` with a per-backend argument (a lease): `$m` for memory, `$s` for SQLite.
macro_rules! both_with {
    ($pair:ident, $what:expr, ($m:expr, $s:expr), |$r:ident, $x:ident| $call:expr) => {{
        let m = {
            let $r: &dyn ProcessRegistry = &$pair.mem;
            let $x = $m;
            $call.await
        };
        let s = {
            let $r: &dyn ProcessRegistry = &$pair.sql;
            let $x = $s;
            $call.await
        };
        $pair.same($what, m, s)
    }};
}

/// The worklist in id order: its order is not part of the contract (SQLite
/// answers by claimable time, memory by id), its content is.
async fn worklist_by_id(r: &dyn ProcessRegistry, limit: usize) -> cairn_core::Result<Vec<cairn_core::WorkItem>> {
    let mut items = r.worklist(limit).await?;
    items.sort_by(|a, b| a.process_id.cmp(&b.process_id));
    Ok(items)
}

fn leases(pair: Both<cairn_core::Lease>) -> (cairn_core::Lease, cairn_core::Lease) {
    (pair.mem.expect("memory lease"), pair.sql.expect("sqlite lease"))
}

#[tokio::test]
async fn sqlite_answers_like_memory() {
    let mut p = Pair::new();
    let s1 = SessionScope::session("s1");
    let s2 = SessionScope::session("s2");
    let f1 = SessionScope::frame("s1", "f1");
    let any = ProcessFilter::any();

    // Envs.
    let spec = EnvSpec {
        plugin_options: json!({"a": 1}),
        policy: json!({}),
    };
    let env = both!(p, "put_env", |r| r.put_env(&spec)).mem;
    let env = env.expect("env");
    both!(p, "put_env again", |r| r.put_env(&spec));
    both!(p, "get_env", |r| r.get_env(&env));
    both!(p, "get_env unknown", |r| r.get_env("process-env:sha256:00"));
    both!(p, "get_env invalid", |r| r.get_env(""));

    // Registration.
    let mut with_env = tool("env-1", Disposition::Rerunnable);
    with_env.env_ref = Some(env.clone());
    both!(p, "register with env", |r| r.register(with_env.clone(), None));
    let mut bad_env = tool("env-2", Disposition::Rerunnable);
    bad_env.env_ref = Some("process-env:sha256:ff".into());
    both!(p, "register unknown env", |r| r.register(bad_env.clone(), None));
    both!(p, "register waking", |r| r.register(waking("w-1"), grant_to("s1")));
    both!(p, "register again", |r| r.register(waking("w-1"), grant_to("s2")));
    both!(p, "register conflict", |r| r
        .register(tool("w-1", Disposition::Rerunnable), None));
    both!(p, "register invalid", |r| r
        .register(tool("", Disposition::Rerunnable), None));
    let mut framed = waking("w-2");
    framed.provenance.originator = Originator::session(f1.clone());
    both!(p, "register framed", |r| r.register(framed.clone(), grant_to("s1")));
    p.clock.advance(5);
    both!(p, "register owner-bound", |r| r
        .register(tool("ob-1", Disposition::OwnerBound), grant_to("s1")));
    both!(p, "register external", |r| r
        .register(external("ext-1"), grant_to("s2")));
    p.clock.advance(5);
    both!(p, "register rerunnable", |r| r
        .register(tool("rr-1", Disposition::Rerunnable), None));

    // Reads.
    both!(p, "get", |r| r.get("w-1"));
    both!(p, "get unknown", |r| r.get("nope"));
    both!(p, "get invalid", |r| r.get("bad\nid"));
    both!(p, "list running", |r| r.list(&ProcessFilter::running()));
    both!(p, "list any", |r| r.list(&any));
    let filters = [
        json!({"definition": "tool:echo"}),
        json!({"definition": "external"}),
        json!({"originator": "session:s1"}),
        json!({"originator": "session:s1/frame:f1"}),
        json!({"originator": "host"}),
        json!({"created_from_ms": T0 + 5}),
        json!({"created_before_ms": T0 + 5}),
        json!({"after_id": "ext-1", "limit": 2}),
        json!({"waiting": false, "status": "any"}),
    ];
    for f in &filters {
        let filter = ProcessFilter::from_json(f.clone()).expect("filter");
        both!(p, &format!("list {f}"), |r| r.list(&filter));
    }
    let bad_page = ProcessFilter {
        limit: Some(0),
        ..ProcessFilter::default()
    };
    both!(p, "list bad page", |r| r.list(&bad_page));

    // Appends.
    let progress = |t: &str| AppendRequest::new("progress", json!({"text": t}));
    both!(p, "append progress", |r| r.append_event("w-1", progress("one")));
    both!(p, "append keyed", |r| r
        .append_event("w-1", progress("two").with_replay_key("k2")));
    both!(p, "append replay", |r| r
        .append_event("w-1", progress("two").with_replay_key("k2")));
    both!(p, "append replay conflict", |r| r
        .append_event("w-1", progress("other").with_replay_key("k2")));
    both!(p, "append bad replay key", |r| r
        .append_event("w-1", progress("x").with_replay_key("")));
    both!(p, "append undeclared", |r| r
        .append_event("w-1", AppendRequest::new("nope", json!({}))));
    both!(p, "append reserved", |r| r
        .append_event("w-1", AppendRequest::new("process.started", json!({}))));
    both!(p, "append schema violation", |r| r
        .append_event("w-1", AppendRequest::new("progress", json!({"x": 1}))));
    both!(p, "append once-wake", |r| r
        .append_event("w-1", AppendRequest::new("ready", json!({}))));
    both!(p, "append once-wake deduped", |r| r
        .append_event("w-1", AppendRequest::new("ready", json!({"again": true}))));
    both!(p, "append wake override", |r| r
        .append_event("w-2", progress("to s2").with_wake_target(s2.clone())));
    both!(p, "append waiting", |r| r.append_event(
        "w-2",
        AppendRequest::new("process.waiting", json!({"kind": "signal", "name": "go", "ordinal": 1}))
    ));
    both!(p, "list waiting", |r| r.list(&ProcessFilter {
        waiting: Some(true),
        ..ProcessFilter::default()
    }));
    both!(p, "signal", |r| r.append_event(
        "w-2",
        AppendRequest::new("signal.go", json!({"v": 1})).with_replay_key("signal:go:1")
    ));
    both!(p, "bad signal", |r| r
        .append_event("w-2", AppendRequest::new("signal.bad name", json!({}))));
    both!(p, "append resumed", |r| r
        .append_event("w-2", AppendRequest::new("process.resumed", json!({}))));
    both!(p, "terminal without authority", |r| r.append_event(
        "rr-1",
        AppendRequest::new(
            "process.completed",
            json!({"await_output": {"type": "success", "value": 1}})
        )
    ));
    both!(p, "append unknown process", |r| r.append_event("nope", progress("x")));
    both!(p, "events", |r| r.events_after("w-1", 0, None));
    both!(p, "events paged", |r| r.events_after("w-1", 1, Some(2)));
    both!(p, "events past end", |r| r.events_after("w-1", 99, None));
    both!(p, "events bad page", |r| r.events_after("w-1", 0, Some(1001)));
    both!(p, "events unknown", |r| r.events_after("nope", 0, None));

    // Wakes.
    both!(p, "pending s1", |r| r.pending_wakes("s1", None));
    both!(p, "pending s1 page", |r| r.pending_wakes("s1", Some(1)));
    both!(p, "pending s2", |r| r.pending_wakes("s2", None));
    let w = both!(p, "pending s1 again", |r| r.pending_wakes("s1", None)).mem;
    let first = w.expect("wakes")[0].wake_id.clone();
    both!(p, "ack", |r| r.ack_wake("s1", &first));
    both!(p, "ack again", |r| r.ack_wake("s1", &first));
    both!(p, "ack wrong session", |r| r.ack_wake("s2", &first));
    both!(p, "ack unknown", |r| r.ack_wake("s1", "wake:nope"));
    both!(p, "pending after ack", |r| r.pending_wakes("s1", None));

    // Grants.
    let desc = GrantDescriptor {
        kind: Some("k".into()),
        label: Some("l".into()),
    };
    both!(p, "grant", |r| r.grant(&f1, "rr-1", desc.clone()));
    both!(p, "grant again", |r| r.grant(&f1, "rr-1", GrantDescriptor::default()));
    both!(p, "grant unknown", |r| r.grant(&f1, "nope", desc.clone()));
    both!(p, "granted s1", |r| r.list_granted_to(&s1, &any));
    both!(p, "granted f1", |r| r.list_granted_to(&f1, &any));
    both!(p, "originated s1", |r| r.list_originated_by(&s1, &any));
    both!(p, "originated f1", |r| r.list_originated_by(&f1, &any));
    let ids = vec!["w-1".to_string(), "nope".to_string(), "ob-1".to_string()];
    both!(p, "transfer", |r| r.transfer(&s1, &s2, &ids));
    both!(p, "granted s2", |r| r.list_granted_to(&s2, &any));
    both!(p, "originated s1 after transfer", |r| r.list_originated_by(&s1, &any));
    both!(p, "revoke", |r| r.revoke(&s2, "ob-1"));
    both!(p, "revoke again", |r| r.revoke(&s2, "ob-1"));

    // Leases.
    leases(both!(p, "claim", |r| r.claim("rr-1", "w1", 1_000)));
    both!(p, "claim held", |r| r.claim("rr-1", "w2", 1_000));
    both!(p, "claim external", |r| r.claim("ext-1", "w1", 1_000));
    both!(p, "claim zero ttl", |r| r.claim("rr-1", "w1", 0));
    both!(p, "claim unknown", |r| r.claim("nope", "w1", 10));
    let (lm, ls) = leases(both!(p, "claim own", |r| r.claim("rr-1", "w1", 1_000)));
    both!(p, "fencing", |r| r.fencing_token("rr-1"));
    both_with!(p, "record_started", (&lm, &ls), |r, l| r.record_started(l));
    p.clock.advance(500);
    let (lm, ls) = leases(both_with!(p, "renew", (&lm, &ls), |r, l| r.renew(l, 2_000)));
    let mut stale_m = lm.clone();
    stale_m.fencing_token -= 1;
    let mut stale_s = ls.clone();
    stale_s.fencing_token -= 1;
    both_with!(p, "renew stale", (&stale_m, &stale_s), |r, l| r.renew(l, 2_000));
    both_with!(p, "release stale", (&stale_m, &stale_s), |r, l| r.release(l));
    both_with!(p, "complete stale", (&stale_m, &stale_s), |r, l| r
        .complete(l, Outcome::success(json!("x"))));
    both!(p, "cancel leased", |r| r.request_cancel("rr-1", Some("stop".into())));
    both!(p, "cancel leased again", |r| r
        .request_cancel("rr-1", Some("stop".into())));
    both!(p, "worklist while leased", |r| worklist_by_id(r, 100));
    both_with!(p, "append fenced ok", (&lm, &ls), |r, l| r.append_event(
        "rr-1",
        AppendRequest::new("process.waiting", json!({"kind": "x"})).with_lease(l.clone())
    ));
    both_with!(p, "complete", (&lm, &ls), |r, l| r
        .complete(l, Outcome::cancelled("stopped")));
    both_with!(p, "complete again", (&lm, &ls), |r, l| r
        .complete(l, Outcome::success(json!(1))));
    both_with!(p, "release after complete", (&lm, &ls), |r, l| r.release(l));
    both!(p, "claim terminal", |r| r.claim("rr-1", "w1", 10));
    both!(p, "cancel terminal", |r| r.request_cancel("rr-1", None));

    // Owner-bound: started once, never again.
    let (om, os) = leases(both!(p, "claim ob", |r| r.claim("ob-1", "w1", 100)));
    both_with!(p, "start ob", (&om, &os), |r, l| r.record_started(l));
    p.clock.advance(200);
    both!(p, "claim started ob", |r| r.claim("ob-1", "w2", 100));
    both!(p, "cancel started ob", |r| r.request_cancel("ob-1", None));
    both!(p, "worklist", |r| worklist_by_id(r, 100));
    both!(p, "abandon request", |r| r.request_abandon("ob-1", "host", "gone"));
    both!(p, "abandon request again", |r| r
        .request_abandon("ob-1", "other", "twice"));
    both!(p, "claim abandon requested", |r| r.claim("ob-1", "w1", 100));
    both!(p, "worklist with abandon", |r| worklist_by_id(r, 100));
    both!(p, "reconcile", |r| r.reconcile_abandon("ob-1"));
    both!(p, "reconcile again", |r| r.reconcile_abandon("ob-1"));
    both!(p, "abandon terminal", |r| r.request_abandon("ob-1", "host", "late"));

    // Abandon request under a live lease waits for it to lapse.
    both!(p, "register ob-2", |r| r
        .register(tool("ob-2", Disposition::OwnerBound), None));
    let (om, os) = leases(both!(p, "claim ob-2", |r| r.claim("ob-2", "w1", 100)));
    both!(p, "abandon ob-2", |r| r.request_abandon("ob-2", "host", "why"));
    both!(p, "reconcile live", |r| r.reconcile_abandon("ob-2"));
    both!(p, "worklist live", |r| worklist_by_id(r, 100));
    p.clock.advance(100);
    both!(p, "worklist lapsed", |r| worklist_by_id(r, 100));
    both!(p, "reconcile lapsed", |r| r.reconcile_abandon("ob-2"));
    both_with!(p, "release after abandon", (&om, &os), |r, l| r.release(l));

    // Cancel before start ends at once.
    both!(p, "register c-1", |r| r
        .register(tool("c-1", Disposition::Rerunnable), grant_to("s1")));
    both!(p, "cancel unstarted", |r| r.request_cancel("c-1", None));

    // External completion.
    both!(p, "complete_external non-external", |r| r.complete_external(
        "w-1",
        Outcome::success(json!(1)),
        "ci"
    ));
    let abandoned = Outcome::Abandoned {
        evidence: cairn_core::AbandonEvidence {
            writer: cairn_core::AbandonWriter::Sweep,
            owner: None,
            epoch_ms: 0,
        },
    };
    both!(p, "complete_external abandoned", |r| r.complete_external(
        "ext-1",
        abandoned.clone(),
        "ci"
    ));
    both!(p, "cancel external", |r| r
        .request_cancel("ext-1", Some("please".into())));
    both!(p, "append external terminal", |r| r.append_event(
        "ext-1",
        AppendRequest::new(
            "process.failed",
            json!({"await_output": {"type": "failure", "class": "c", "code": "x", "message": "m"}})
        )
        .with_replay_key("done")
    ));
    both!(p, "complete_external terminal", |r| r.complete_external(
        "ext-1",
        Outcome::success(json!(2)),
        "ci"
    ));

    // Batch claims: every free candidate, in order.
    for i in 0..5 {
        let id = format!("batch-{i}");
        both!(p, "register batch", |r| r
            .register(tool(&id, Disposition::Rerunnable), None));
    }
    both!(p, "worklist before batch", |r| worklist_by_id(r, 3));
    let batch = both!(p, "claim_batch", |r| r.claim_batch("w9", 100, 3));
    let (cm, cs) = (batch.mem.expect("claims"), batch.sql.expect("claims"));
    both!(p, "claim_batch rest", |r| r.claim_batch("w9", 100, 10));
    both!(p, "claim_batch none", |r| r.claim_batch("w9", 100, 10));
    both!(p, "claim_batch zero ttl", |r| r.claim_batch("w9", 0, 10));
    p.clock.advance(100);
    // Expired rerunnable leases come back; a second attempt is recorded.
    both!(p, "worklist after expiry", |r| worklist_by_id(r, 100));
    both!(p, "claim_batch again", |r| r.claim_batch("w8", 100, 2));
    for (m, s) in cm.iter().zip(cs.iter()) {
        both_with!(p, "complete expired", (&m.lease, &s.lease), |r, l| r
            .complete(l, Outcome::success(json!(0))));
    }

    // Sessions.
    both!(p, "delete session s1", |r| r.delete_session("s1"));
    both!(p, "pending after delete", |r| r.pending_wakes("s1", None));
    both!(p, "delete session s2", |r| r.delete_session("s2"));
    both!(p, "delete session none", |r| r.delete_session("s9"));

    // Retention.
    both!(p, "changes", |r| r.changed_since(0, None));
    both!(p, "changes paged", |r| r.changed_since(3, Some(4)));
    both!(p, "changes bad page", |r| r.changed_since(0, Some(0)));
    let page = both!(p, "changes all", |r| r.changed_since(0, Some(1000)))
        .mem
        .expect("changes");
    let mid = page.changes[page.changes.len() / 2].cursor;
    // Every status and originator listing over ended rows of each kind (the
    // completed and the host's are outside the partial indexes, ADR 0026).
    let by_session = |id: &str| Registration {
        provenance: Provenance {
            originator: Originator::session(SessionScope::session("s1")),
            caused_by: None,
        },
        ..external(id)
    };
    for reg in [external("done-host"), by_session("done-s1")] {
        let id = reg.id.clone();
        both!(p, &format!("register {id}"), |r| r.register(reg.clone(), None));
        both!(p, &format!("complete {id}"), |r| r.complete_external(
            &id,
            Outcome::success(json!(1)),
            "host"
        ));
    }
    for status in ["running", "completed", "failed", "cancelled", "abandoned", "any"] {
        for originator in [None, Some("host"), Some("session:s1"), Some("session:s2")] {
            let mut f = json!({"status": status});
            if let Some(o) = originator {
                f["originator"] = json!(o);
            }
            let filter = ProcessFilter::from_json(f.clone()).expect("filter");
            let listed = both!(p, &format!("list ended {f}"), |r| r.list(&filter)).mem;
            if originator.is_none() {
                assert!(!listed.expect("list").is_empty(), "some rows are {status}");
            }
        }
    }
    p.clock.advance(1_000);
    let cutoff = p.clock.now_ms();
    both!(p, "prune running", |r| r.prune(
        cutoff,
        StatusFilter::Running.into(),
        Watermark::NoProjector
    ));
    both!(p, "prune held", |r| r.prune(
        cutoff,
        StatusFilter::Any.into(),
        Watermark::Cursor { cursor: mid }
    ));
    both!(p, "prune completed", |r| r.prune(
        cutoff,
        StatusFilter::Completed.into(),
        Watermark::NoProjector
    ));
    both!(p, "prune all", |r| r.prune(
        cutoff,
        StatusFilter::Any.into(),
        Watermark::NoProjector
    ));
    both!(p, "get pruned", |r| r.get("c-1"));
    both!(p, "events pruned", |r| r.events_after("c-1", 0, None));
    both!(p, "fencing pruned", |r| r.fencing_token("ob-1"));
    both!(p, "register pruned", |r| r
        .register(tool("c-1", Disposition::Rerunnable), None));
    both!(p, "grant pruned", |r| r.grant(&s1, "c-1", GrantDescriptor::default()));
    both!(p, "list after prune", |r| r.list(&any));
    both!(p, "changes after prune", |r| r.changed_since(0, None));
    both!(p, "pending after prune", |r| r.pending_wakes("s2", None));

    // Corrupt env.
    p.mem.corrupt_env_for_test(&env, b"{}".to_vec());
    p.sql.corrupt_env_for_test(&env, b"{}".to_vec()).await.expect("corrupt");
    both!(p, "get corrupt env", |r| r.get_env(&env));

    // Every surviving record is the fold of its log in both stores.
    let all = both!(p, "final list", |r| r.list(&any)).mem;
    for rec in all.expect("list") {
        let events = p.sql.events_after(&rec.id, 0, Some(1000)).await.expect("events").events;
        let stored = p.sql.get(&rec.id).await.expect("get");
        cairn_core::fold::check_fold(&stored, &events).expect("fold");
    }
    assert!(p.steps > 150, "ran {} steps", p.steps);
}

/// Commits another OS process makes to the file reach this process's hub
/// (every waiter reads again); this process's own commits do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_by_another_writer_reach_the_hub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(1_000);
    let ours = open(&path, &clock);
    let theirs = open(&path, &clock);
    let hub = cairn_core::ChangeHub::new();
    ours.watch_other_writers(hub.clone()).expect("watch");
    let mut resync = hub.subscribe_resync();
    ours.register(external("own"), None).await.expect("own write");
    // Several watch intervals pass: an own commit is never taken for a foreign one.
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), resync.changed()).await;
    assert!(quiet.is_err(), "an own commit asked waiters to read again");
    theirs.register(external("theirs"), None).await.expect("their write");
    tokio::time::timeout(std::time::Duration::from_secs(10), resync.changed())
        .await
        .expect("a foreign commit reaches the hub")
        .expect("hub alive");
}

/// A database opened through a symbolic link is watched where SQLite keeps
/// it (beside the file the link names): another writer's commits reach the
/// hub at once, not at the watch's backstop read, seconds apart.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_reach_a_hub_watching_through_a_symlink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let target = data.join("cairn.db");
    let clock = ManualClock::new(1_000);
    let theirs = open(&target, &clock);
    let link = dir.path().join("current.db");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let ours = open(&link, &clock);
    let hub = cairn_core::ChangeHub::new();
    ours.watch_other_writers(hub.clone()).expect("watch");
    let mut resync = hub.subscribe_resync();
    for i in 0..5 {
        theirs
            .register(external(&format!("theirs-{i}")), None)
            .await
            .expect("their write");
        tokio::time::timeout(std::time::Duration::from_millis(500), resync.changed())
            .await
            .unwrap_or_else(|_| panic!("commit {i} reached the hub only at the backstop"))
            .expect("hub alive");
    }
}

/// An end this process wrote is not answered from the hub's recent ends once
/// another OS process pruned it, even with a commit of ours beside the prune:
/// the foreign commit has the hub forget them, so an await reads and finds
/// the process gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_by_another_writer_is_not_answered_from_recent_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(1_000);
    let sqlite = open(&path, &clock);
    let hub = cairn_core::ChangeHub::new();
    sqlite.watch_other_writers(hub.clone()).expect("watch");
    let ours: Arc<dyn ProcessRegistry> =
        Arc::new(cairn_core::WatchedRegistry::new(Arc::new(sqlite), hub.clone(), None));
    let theirs = open(&path, &clock);
    let awaiter = cairn_core::Awaiter::new(ours.clone(), Some(hub.clone()));

    ours.register(external("gone"), None).await.expect("register");
    ours.complete_external("gone", Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    let ended = awaiter.await_terminal("gone").await.expect("ended here");
    assert_eq!(ended.status, cairn_core::ProcessStatus::Completed);

    let mut resync = hub.subscribe_resync();
    clock.advance(10);
    let report = theirs
        .prune(clock.now_ms(), StatusFilter::Any.into(), Watermark::NoProjector)
        .await
        .expect("their prune");
    assert_eq!(report.pruned, 1, "{report:?}");
    // A commit of ours right after it: the prune must be told from it.
    ours.register(external("beside"), None).await.expect("our write");
    tokio::time::timeout(std::time::Duration::from_secs(10), resync.changed())
        .await
        .expect("their prune reaches the hub")
        .expect("hub alive");
    let gone = awaiter.await_terminal("gone").await.expect_err("pruned elsewhere");
    assert_eq!(gone.code(), "no_longer_retained", "{gone}");
}

/// A foreign commit that lands beside this process's own commits still
/// reaches the hub: while our writer commits without pause, each of their
/// registrations, one after another, has waiters read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_commits_beside_our_own_reach_the_hub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(1_000);
    let ours = Arc::new(open(&path, &clock));
    let theirs = open(&path, &clock);
    let hub = cairn_core::ChangeHub::new();
    ours.watch_other_writers(hub.clone()).expect("watch");
    let mut resync = hub.subscribe_resync();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut busy = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (r, stop) = (ours.clone(), stop.clone());
        busy.spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                r.register(external(&format!("own-{w}-{i}")), None)
                    .await
                    .expect("own write");
                i += 1;
                // Leave the write lock free now and then: SQLite's lock is not
                // fair, and their writer must get it within its busy timeout.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            i
        });
    }
    // Our writer is committing: wait until it has, so every foreign commit below lands among ours.
    while ours.write_stats().commits < 20 {
        tokio::task::yield_now().await;
    }
    for k in 0..25 {
        resync.borrow_and_update();
        theirs
            .register(external(&format!("theirs-{k}")), None)
            .await
            .expect("their write");
        tokio::time::timeout(std::time::Duration::from_secs(10), resync.changed())
            .await
            .unwrap_or_else(|_| panic!("foreign commit {k} beside ours never reached the hub"))
            .expect("hub alive");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut own = 0;
    while let Some(done) = busy.join_next().await {
        own += done.expect("writer task");
    }
    assert!(own > 10, "our writer committed only {own} registrations");
}

/// Two registries on one file (ours watched into a hub; theirs as another OS
/// process would be), our writer's first commit made, and the hub's resyncs
/// heard from here on.
async fn watched_pair() -> (
    tempfile::TempDir,
    SqliteRegistry,
    SqliteRegistry,
    tokio::sync::watch::Receiver<u64>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(1_000);
    let ours = open(&path, &clock);
    let theirs = open(&path, &clock);
    let hub = cairn_core::ChangeHub::new();
    ours.watch_other_writers(hub.clone()).expect("watch");
    ours.register(external("own-0"), None).await.expect("own write");
    let mut resync = hub.subscribe_resync();
    resync.borrow_and_update();
    (dir, ours, theirs, resync)
}

/// A foreign commit reaches the hub even when every reading of the watcher
/// meets a commit of ours under way (which spoils the reading): our writer
/// finds the cursor moved as its next transaction begins. Commits of ours
/// alone still have nobody read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_commit_is_heard_while_every_reading_meets_a_commit_of_ours() {
    let (_dir, ours, theirs, mut resync) = watched_pair().await;
    let busy = ours.commit_under_way_for_test();
    // Control: our own commits (each raising a notice, each reading spoilt)
    // have nobody read again.
    ours.register(external("own-1"), None).await.expect("own write");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), resync.changed())
            .await
            .is_err(),
        "our own commit was taken for a foreign one"
    );
    theirs.register(external("theirs"), None).await.expect("their write");
    ours.register(external("own-2"), None).await.expect("own write");
    tokio::time::timeout(std::time::Duration::from_secs(10), resync.changed())
        .await
        .expect("the foreign commit beside ours never reached the hub")
        .expect("hub alive");
    drop(busy);
}

/// A foreign commit is told of once: the reading that follows its notice
/// has waiters read again, and our writer, finding the cursor moved as its
/// next transaction begins, does not have them read again for the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_commit_is_told_of_once() {
    let (_dir, ours, theirs, mut resync) = watched_pair().await;
    theirs.register(external("theirs"), None).await.expect("their write");
    tokio::time::timeout(std::time::Duration::from_secs(10), resync.changed())
        .await
        .expect("the foreign commit reached the hub")
        .expect("hub alive");
    resync.borrow_and_update();
    ours.register(external("own-1"), None).await.expect("own write");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), resync.changed())
            .await
            .is_err(),
        "the same foreign commit had waiters read again"
    );
}

/// A lease let go moves the stored change cursor, as a change of a record
/// does: another OS process's watcher tells a foreign commit that landed
/// beside its own by the cursor (`others`), and a release makes work there
/// (the process may be claimed now). A renewal makes none and moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_let_go_moves_the_change_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(1_000);
    let reg = open(&path, &clock);
    let cursor = || {
        Connection::open(&path)
            .expect("open")
            .query_row("SELECT value FROM counters WHERE name = 'change_cursor'", [], |r| {
                r.get::<_, i64>(0)
            })
            .expect("cursor")
    };
    reg.register(tool("r", Disposition::Rerunnable), None)
        .await
        .expect("register");
    let lease = reg.claim("r", "w1", 60_000).await.expect("claim");
    let before = cursor();
    let lease = reg.renew(&lease, 60_000).await.expect("renew");
    assert_eq!(cursor(), before, "a renewal makes no work");
    assert!(reg.release(&lease).await.expect("release"), "released");
    assert!(cursor() > before, "a release moves the cursor");
}

/// The change feed's cursors keep growing when writes of two registries on
/// one file interleave (each transaction takes the stored cursor under the
/// write lock), when many writes share one transaction, when a job of that
/// transaction fails, and across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_cursors_grow_across_writers_batches_and_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(1_000);
    let ours = open(&path, &clock);
    let theirs = open(&path, &clock);
    ours.register(external("a"), None).await.expect("a");
    theirs.register(external("b"), None).await.expect("b");
    ours.register(external("c"), None).await.expect("c");
    // Many at once: they share transactions; a registration that conflicts
    // with `a` fails alone among them, rolled back to its savepoint.
    let ours = Arc::new(ours);
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..41 {
        let r = ours.clone();
        writes.spawn(async move {
            if i == 20 {
                let other = Registration {
                    input: ProcessInput::External {
                        metadata: json!({"other": true}),
                    },
                    ..tool("a", Disposition::ExternallyOwned)
                };
                (i, r.register(other, None).await.map(|_| ()))
            } else {
                (i, r.register(external(&format!("m{i}")), None).await.map(|_| ()))
            }
        });
    }
    while let Some(done) = writes.join_next().await {
        let (i, result) = done.expect("task");
        match result {
            Err(CairnError::RegistrationConflict { .. }) if i == 20 => {}
            other => assert!(i != 20 && other.is_ok(), "{i}: {other:?}"),
        }
    }
    theirs.register(external("d"), None).await.expect("d");
    drop(theirs);
    drop(Arc::into_inner(ours).expect("one owner"));
    let reopened = open(&path, &clock);
    reopened.register(external("e"), None).await.expect("e");

    let page = reopened.changed_since(0, Some(1000)).await.expect("feed");
    let ids: Vec<&str> = page.changes.iter().map(|c| c.process.id.as_str()).collect();
    assert_eq!(page.changes.len(), 45, "{ids:?}");
    assert!(page.changes.windows(2).all(|w| w[0].cursor < w[1].cursor), "{ids:?}");
    assert_eq!(&ids[..3], ["a", "b", "c"]);
    assert_eq!(&ids[43..], ["d", "e"]);
    assert_eq!(page.next_cursor, page.changes[44].cursor);
}

/// The writer keeps rows decoded between jobs; a row another connection
/// changed is read again, never answered from what this writer last wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_another_writer_changed_are_read_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(1_000);
    let ours = open(&path, &clock);
    let theirs = open(&path, &clock);
    let declared = Registration {
        event_types: vec![EventType::plain("progress")],
        ..external("x")
    };
    ours.register(declared, None).await.expect("register");
    for n in 0..6 {
        let writer = if n % 2 == 0 { &theirs } else { &ours };
        writer
            .append_event("x", AppendRequest::new("progress", json!({"n": n})))
            .await
            .unwrap_or_else(|e| panic!("append {n}: {e}"));
    }
    ours.complete_external("x", Outcome::success(json!("done")), "host")
        .await
        .expect("complete");
    for reg in [&ours, &theirs] {
        let events = reg.events_after("x", 0, Some(100)).await.expect("events").events;
        let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
        let progress: Vec<i64> = events
            .iter()
            .filter(|e| e.event_type == "progress")
            .map(|e| e.payload["n"].as_i64().expect("n"))
            .collect();
        assert_eq!(progress, [0, 1, 2, 3, 4, 5]);
        let record = reg.get("x").await.expect("get");
        cairn_core::fold::check_fold(&record, &events).expect("fold");
        assert_eq!(record.status, cairn_core::ProcessStatus::Completed);
    }
}

async fn log(reg: &SqliteRegistry, id: &str) -> Vec<cairn_core::ProcessEvent> {
    reg.events_after(id, 0, None).await.expect("events").events
}

/// A file whose event logs are keyed by process id (schema versions before
/// log keys, ADR 0021) is upgraded when opened: every event reads back as it
/// was, a replayed append still finds its first answer, the next append
/// follows on, a new process's log starts after every older one, and prune
/// still deletes a log with its process.
#[tokio::test]
async fn event_logs_keyed_by_process_id_are_upgraded() {
    /// The schema version whose migration keys event logs by `log_key`.
    const LOG_KEYS_FROM: u32 = 6;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let reg = open(&path, &clock);
    let noting = |id: &str| Registration {
        event_types: vec![EventType::plain("note")],
        ..external(id)
    };
    let note = |n: u64| AppendRequest::new("note", json!({"n": n}));
    for id in ["old-a", "old-b"] {
        reg.register(noting(id), None).await.expect("register");
    }
    reg.append_event("old-a", note(1).with_replay_key("k1"))
        .await
        .expect("append");
    reg.append_event("old-a", note(2)).await.expect("append");
    reg.complete_external("old-b", Outcome::success(json!("b")), "host")
        .await
        .expect("complete");
    let (a, b) = (log(&reg, "old-a").await, log(&reg, "old-b").await);
    assert_eq!((a.len(), b.len()), (2, 1));
    drop(reg);

    // The file as schema version 6, the one before log keys, left it.
    let raw = Connection::open(&path).expect("raw");
    raw.execute_batch(&format!(
        "CREATE TABLE events_old (
             process_id TEXT NOT NULL, sequence INTEGER NOT NULL, event_type TEXT NOT NULL, replay_key TEXT,
             occurred_at_ms INTEGER NOT NULL, event TEXT NOT NULL, PRIMARY KEY (process_id, sequence));
         INSERT INTO events_old
             SELECT p.id, e.sequence, e.event_type, e.replay_key, e.occurred_at_ms, e.event
             FROM events e JOIN processes p ON p.log_key = e.log_key;
         DROP TABLE events;
         ALTER TABLE events_old RENAME TO events;
         CREATE UNIQUE INDEX events_replay_key ON events (process_id, replay_key) WHERE replay_key IS NOT NULL;
         ALTER TABLE processes DROP COLUMN log_key;
         ALTER TABLE schedules DROP COLUMN last_refusal;
         DROP INDEX processes_abandon;
         DROP INDEX wakes_unacked;
         {UNDO_WORKLIST_BY_TIME}
         UPDATE cairn_meta SET value = '{LOG_KEYS_FROM}' WHERE key = 'schema_version';"
    ))
    .expect("make the older shape");
    drop(raw);

    let reg = open(&path, &clock);
    assert_eq!(log(&reg, "old-a").await, a);
    assert_eq!(log(&reg, "old-b").await, b);
    let again = reg
        .append_event("old-a", note(1).with_replay_key("k1"))
        .await
        .expect("replay");
    assert!(again.replayed, "the replay key survived the upgrade");
    assert_eq!(again.event, a[0]);
    let next = reg.append_event("old-a", note(3)).await.expect("append");
    assert_eq!(next.event.sequence, 3);
    reg.register(noting("new-c"), None).await.expect("register new");
    reg.append_event("new-c", note(1)).await.expect("append new");
    assert_eq!(log(&reg, "new-c").await.len(), 1);
    assert_eq!(log(&reg, "old-a").await.len(), 3);
    let raw = Connection::open(&path).expect("raw");
    let key = |id: &str| -> i64 {
        raw.query_row("SELECT log_key FROM processes WHERE id = ?1", [id], |r| r.get(0))
            .expect("log key")
    };
    assert!(
        key("new-c") > key("old-a").max(key("old-b")),
        "a new log starts after the older ones"
    );
    let version: String = raw
        .query_row("SELECT value FROM cairn_meta WHERE key = 'schema_version'", [], |r| {
            r.get(0)
        })
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION.to_string());
    clock.advance(10);
    let report = reg
        .prune(clock.now_ms(), StatusFilter::Completed.into(), Watermark::NoProjector)
        .await
        .expect("prune");
    assert_eq!((report.pruned, report.events_deleted), (1, 1));
    let left: i64 = raw
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 4, "old-a's three events and new-c's one");
}

/// A file whose status and originator indexes hold every row (schema
/// versions before ADR 0026) has them made partial when opened, and lists as
/// before.
#[tokio::test]
async fn listing_indexes_are_made_partial_on_upgrade() {
    /// The schema version whose migration makes the listing indexes partial.
    const PARTIAL_FROM: u32 = 7;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let reg = open(&path, &clock);
    for id in ["a-done", "b-live"] {
        reg.register(external(id), None).await.expect("register");
    }
    reg.complete_external("a-done", Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    drop(reg);
    let raw = Connection::open(&path).expect("raw");
    raw.execute_batch(&format!(
        "DROP INDEX processes_status_id;
         CREATE INDEX processes_status_id ON processes (status, id);
         DROP INDEX processes_originator_id;
         CREATE INDEX processes_originator_id ON processes (originator, id);
         ALTER TABLE schedules DROP COLUMN last_refusal;
         DROP INDEX processes_abandon;
         DROP INDEX wakes_unacked;
         {UNDO_WORKLIST_BY_TIME}
         UPDATE cairn_meta SET value = '{PARTIAL_FROM}' WHERE key = 'schema_version';"
    ))
    .expect("make the older shape");
    drop(raw);

    let reg = open(&path, &clock);
    // The later migrations ran too: schedules read their refusal column.
    assert!(reg.list_schedules(None, 10).await.expect("schedules").is_empty());
    let ids = |status: &str| {
        let filter = ProcessFilter::from_json(json!({"status": status, "originator": "host"})).expect("filter");
        let reg = &reg;
        async move {
            reg.list(&filter)
                .await
                .expect("list")
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids("completed").await, ["a-done"]);
    assert_eq!(ids("running").await, ["b-live"]);
    assert_eq!(ids("any").await, ["a-done", "b-live"]);
    let raw = Connection::open(&path).expect("raw");
    for index in ["processes_status_id", "processes_originator_id"] {
        let sql: String = raw
            .query_row("SELECT sql FROM sqlite_master WHERE name = ?1", [index], |r| r.get(0))
            .expect("index");
        assert!(sql.contains("WHERE"), "{index} is partial: {sql}");
    }
}

/// A file from before the worklist was served in time order (ADR 0030) has
/// its worklist indexes rebuilt on open: its queued rows come in the order
/// they were registered, and the claim reads the new indexes.
#[tokio::test]
async fn worklist_indexes_are_rebuilt_on_upgrade() {
    /// The schema version whose migration rebuilds the worklist indexes.
    const BY_TIME_FROM: u32 = 11;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let reg = open(&path, &clock);
    for id in ["c-first", "b-second", "a-third"] {
        reg.register(tool(id, Disposition::Rerunnable), None)
            .await
            .expect("register");
        clock.advance(1);
    }
    drop(reg);
    let raw = Connection::open(&path).expect("raw");
    raw.execute_batch(&format!(
        "{UNDO_WORKLIST_BY_TIME}
         UPDATE cairn_meta SET value = '{BY_TIME_FROM}' WHERE key = 'schema_version';"
    ))
    .expect("make the older shape");
    drop(raw);

    let reg = open(&path, &clock);
    let work: Vec<String> = reg
        .worklist(10)
        .await
        .expect("worklist")
        .into_iter()
        .map(|w| w.process_id)
        .collect();
    assert_eq!(work, ["c-first", "b-second", "a-third"]);
    let claims = reg.claim_batch("w", 30_000, 1).await.expect("claim");
    assert_eq!(claims[0].process.id, "c-first");
    let raw = Connection::open(&path).expect("raw");
    for index in ["processes_ready", "processes_worklist"] {
        let sql: String = raw
            .query_row("SELECT sql FROM sqlite_master WHERE name = ?1", [index], |r| r.get(0))
            .expect("index");
        assert!(
            sql.contains("claimable_at_ms"),
            "{index} is partial by claimability: {sql}"
        );
    }
}

/// A file from before the kept grants of pruned processes gains their table
/// on open: what was pruned before keeps its tombstone (and no session is told
/// of it), and a prune after the upgrade keeps which sessions held a grant.
#[tokio::test]
async fn tombstone_grants_are_added_on_upgrade() {
    /// The schema version whose migration adds the kept grants.
    const TOMBSTONE_GRANTS_FROM: u32 = 13;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let prune = |reg: SqliteRegistry, clock: ManualClock| async move {
        clock.advance(10);
        reg.prune(clock.now_ms(), StatusFilter::Any.into(), Watermark::NoProjector)
            .await
            .expect("prune");
        reg
    };
    let reg = open(&path, &clock);
    reg.register(external("before"), grant_to("s1"))
        .await
        .expect("register");
    reg.complete_external("before", Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    drop(prune(reg, clock.clone()).await);
    let raw = Connection::open(&path).expect("raw");
    raw.execute_batch(&format!(
        "DROP TABLE tombstone_grants;
         {UNDO_ENV_TOUCHES}
         UPDATE cairn_meta SET value = '{TOMBSTONE_GRANTS_FROM}' WHERE key = 'schema_version';"
    ))
    .expect("make the older shape");
    drop(raw);

    let reg = open(&path, &clock);
    let s1 = SessionScope::session("s1");
    assert_eq!(reg.pruned_grant(&s1, "before").await.expect("read"), None);
    assert_eq!(
        reg.get("before").await.expect_err("pruned").code(),
        "no_longer_retained"
    );
    reg.register(external("after"), grant_to("s1")).await.expect("register");
    reg.complete_external("after", Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    let reg = prune(reg, clock.clone()).await;
    let tombstone = reg.pruned_grant(&s1, "after").await.expect("read").expect("kept");
    assert_eq!(tombstone.id, "after");
    assert_eq!(
        reg.pruned_grant(&SessionScope::session("s2"), "after")
            .await
            .expect("read"),
        None
    );
}

/// A row stores its record without the type list, which is stored once per
/// list (ADR 0008); a row written before that (its list inline, no key) still
/// loads, and its next write moves the list out; a row naming a list that is
/// not stored, or a list whose content does not match its key, is a clear
/// storage error.
#[tokio::test]
async fn type_lists_are_stored_once_and_older_rows_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let reg = open(&path, &clock);
    for id in ["core-a", "core-b"] {
        reg.register(external(id), None).await.expect("register");
    }
    let declared = Registration {
        event_types: vec![EventType::plain("note")],
        ..external("declared")
    };
    reg.register(declared, None).await.expect("register declared");
    let raw = Connection::open(&path).expect("raw");
    let lists: i64 = raw
        .query_row("SELECT count(*) FROM type_lists", [], |r| r.get(0))
        .expect("count");
    assert_eq!(lists, 2, "one list for the core types, one for the declared ones");
    let stored = |id: &str| -> (Value, Option<String>) {
        raw.query_row("SELECT record, types_key FROM processes WHERE id = ?1", [id], |r| {
            Ok((serde_json::from_str(&r.get::<_, String>(0)?).expect("json"), r.get(1)?))
        })
        .expect("row")
    };
    let before = reg.get("core-a").await.expect("get");
    let (json, key) = stored("core-a");
    assert_eq!(json["event_types"], json!([]));
    assert_eq!(key.as_deref(), Some(before.event_types.key()));
    assert!(reg
        .get("declared")
        .await
        .expect("get")
        .event_types
        .find("note")
        .is_some());

    // A row as an older build wrote it: the list inline, no key.
    raw.execute(
        "UPDATE processes SET record = ?2, types_key = NULL WHERE id = ?1",
        rusqlite::params!["core-a", serde_json::to_string(&before).expect("encode")],
    )
    .expect("make an older row");
    drop(reg);
    let reg = open(&path, &clock);
    assert_eq!(reg.get("core-a").await.expect("older row loads"), before);
    reg.complete_external("core-a", Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    let (json, key) = stored("core-a");
    assert_eq!(json["event_types"], json!([]), "the next write moves the list out");
    assert_eq!(key.as_deref(), Some(before.event_types.key()));

    // A key no list is stored under.
    let nowhere = format!("types:sha256:{}", "0".repeat(64));
    raw.execute("UPDATE processes SET types_key = ?1 WHERE id = 'core-b'", [&nowhere])
        .expect("point at nothing");
    let message = storage_message(reg.get("core-b").await.expect_err("a missing list"));
    assert!(message.contains("which is not stored"), "{message}");
    // A stored list whose content is not what its key addresses.
    let forged = format!("types:sha256:{}", "1".repeat(64));
    raw.execute(
        "INSERT INTO type_lists (key, types) SELECT ?1, types FROM type_lists LIMIT 1",
        [&forged],
    )
    .expect("forge");
    raw.execute("UPDATE processes SET types_key = ?1 WHERE id = 'core-b'", [&forged])
        .expect("point at the forgery");
    let message = storage_message(reg.get("core-b").await.expect_err("a forged list"));
    assert!(message.contains("does not match its content address"), "{message}");
}

/// A cancel another OS process writes to the file stops a run here once the
/// hub hears of the foreign commit (a resync), not at the run's next lease
/// renewal (a third of a two-minute lease, here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_another_writer_makes_stops_a_run_here() {
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = Arc::new(cairn_core::SystemClock);
    let ours = Arc::new(SqliteRegistry::open(&path, clock.clone()).expect("open ours"));
    let theirs = SqliteRegistry::open(&path, clock).expect("open theirs");
    let p = cairn_core::Processes::builder(ours.clone())
        .tools(cairn_tools::builtin_tools(false))
        .worker_config(cairn_core::WorkerConfig {
            lease_ttl: Duration::from_secs(120),
            ..cairn_core::WorkerConfig::default()
        })
        .start();
    ours.watch_other_writers(p.hub().clone()).expect("watch");
    p.start(cairn_core::StartRequest::tool(
        "long",
        "sleep",
        json!({"ms": 600_000}),
        Disposition::OwnerBound,
    ))
    .await
    .expect("start");
    p.await_event("long", "process.waiting", 0, Duration::from_secs(10))
        .await
        .expect("the sleep waits in its run");
    theirs
        .request_cancel("long", Some("from there".into()))
        .await
        .expect("cancel from the other writer");
    let r = p.await_output("long", Duration::from_secs(20)).await.expect("await");
    assert_eq!(r.outcome, Some(Outcome::cancelled("from there")), "{r:?}");
    p.shutdown().await;
}

/// The wall clock, in epoch ms.
fn wall() -> u64 {
    cairn_core::SystemClock.now_ms()
}

/// Make the file `raw` is open on one of schema `version`, undoing what
/// came after it with `undo`.
fn make_older(raw: &Connection, undo: &str, version: u32) {
    raw.execute_batch(&format!(
        "{undo}
         UPDATE cairn_meta SET value = '{version}' WHERE key = 'schema_version';"
    ))
    .expect("make the older shape");
}

/// Check that `table` holds `count` rows, each touched within
/// `before..=after` (`what` says how).
fn assert_all_touched_within(raw: &Connection, table: &str, count: usize, before: u64, after: u64, what: &str) {
    let touched: Vec<i64> = raw
        .prepare(&format!("SELECT touched_at_ms FROM {table}"))
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    assert_eq!(touched.len(), count, "{table}");
    for t in touched {
        assert!(
            (before as i64..=after as i64).contains(&t),
            "{what} ({before}..={after}), not {t}"
        );
    }
}

/// A registration declaring the one event type `name`.
fn declaring(id: &str, name: &str) -> Registration {
    Registration {
        event_types: vec![EventType::plain(name)],
        ..external(id)
    }
}

/// Register `id` declaring `name`, complete it, and answer the key of its
/// type list.
async fn register_ended(reg: &SqliteRegistry, id: &str, name: &str) -> String {
    let key = reg
        .register(declaring(id, name), None)
        .await
        .expect("register")
        .process
        .event_types
        .key()
        .to_string();
    reg.complete_external(id, Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    key
}

/// Prune every ended process, as of `clock`.
async fn prune_ended(reg: &SqliteRegistry, clock: &ManualClock) -> cairn_core::model::PruneReport {
    reg.prune(clock.now_ms(), StatusFilter::Any.into(), Watermark::NoProjector)
        .await
        .expect("prune")
}

/// How many type lists the file `raw` is open on stores under `key`.
fn lists_stored(raw: &Connection, key: &str) -> i64 {
    raw.query_row("SELECT count(*) FROM type_lists WHERE key = ?1", [key], |r| r.get(0))
        .expect("count")
}

/// A registry on `path` whose prunes collect with no grace.
fn open_without_grace(path: &Path, clock: &ManualClock) -> SqliteRegistry {
    SqliteRegistry::open_with(
        path,
        SqliteOptions {
            collect_grace: std::time::Duration::ZERO,
            ..SqliteOptions::new(Arc::new(clock.clone()))
        },
    )
    .expect("open")
}

/// A file from before env specs kept when they were last put gains the
/// column on open, every stored spec put as of the upgrade (by the wall
/// clock): a writer of the older build may be about to name one, so no
/// collection takes it within the grace; past the grace one no process names
/// goes, and one a process names stays.
#[tokio::test]
async fn env_touches_are_added_on_upgrade() {
    /// The schema version whose migration adds when each env was put.
    const ENV_TOUCHES_FROM: u32 = 14;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(wall());
    let reg = open(&path, &clock);
    let spec = |task: &str| EnvSpec {
        plugin_options: json!({ "cwd": task }),
        policy: json!({}),
    };
    let loose = reg.put_env(&spec("loose")).await.expect("put");
    let named = reg.put_env(&spec("named")).await.expect("put");
    reg.register(
        Registration {
            env_ref: Some(named.clone()),
            ..external("named")
        },
        None,
    )
    .await
    .expect("register");
    drop(reg);
    let raw = Connection::open(&path).expect("raw");
    make_older(&raw, UNDO_ENV_TOUCHES, ENV_TOUCHES_FROM);

    let before = wall();
    let reg = open(&path, &clock);
    let after = wall();
    assert_all_touched_within(&raw, "envs", 2, before, after, "put as of the upgrade");
    let grace = cairn_core::registry::DEFAULT_COLLECT_GRACE;
    clock.set(after);
    assert_eq!(
        reg.collect_unreferenced(grace).await.expect("collect").envs,
        0,
        "within the grace of the upgrade"
    );
    reg.get_env(&loose).await.expect("kept");
    clock.set(after + grace.as_millis() as u64 + 1);
    assert_eq!(reg.collect_unreferenced(grace).await.expect("collect").envs, 1);
    assert_eq!(reg.get_env(&loose).await.expect_err("collected").code(), "unknown_env");
    reg.get_env(&named).await.expect("a process names it");
}

/// A file from before type lists kept when they were last stored gains the
/// column on open, every stored list stored as of the upgrade (by the wall
/// clock): a writer of the older build may have cached one, and goes on
/// naming it without storing it, so no collection takes it within the
/// grace; past the grace one no process names goes.
#[tokio::test]
async fn list_touches_are_added_on_upgrade() {
    /// The schema version whose migration adds when each list was stored.
    const LIST_TOUCHES_FROM: u32 = 15;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(wall());
    let reg = open(&path, &clock);
    let loose = register_ended(&reg, "loose", "upgrade.loose").await;
    reg.register(declaring("named", "upgrade.named"), None)
        .await
        .expect("register");
    drop(reg);
    let raw = Connection::open(&path).expect("raw");
    make_older(&raw, UNDO_LIST_TOUCHES, LIST_TOUCHES_FROM);

    let before = wall();
    let reg = open(&path, &clock);
    let after = wall();
    let version: String = raw
        .query_row("SELECT value FROM cairn_meta WHERE key = 'schema_version'", [], |r| {
            r.get(0)
        })
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION.to_string());
    assert_all_touched_within(&raw, "type_lists", 2, before, after, "stored as of the upgrade");
    clock.set(after + 10);
    prune_ended(&reg, &clock).await;
    assert_eq!(lists_stored(&raw, &loose), 1, "within the grace of the upgrade");
    let grace = cairn_core::registry::DEFAULT_COLLECT_GRACE;
    clock.set(after + grace.as_millis() as u64 + 1);
    assert_eq!(
        reg.collect_unreferenced(grace).await.expect("collect"),
        cairn_core::registry::Collected { envs: 0, type_lists: 1 }
    );
    assert_eq!(lists_stored(&raw, &loose), 0, "past the grace");
    cairn_core::ops::columns::forget_type_lists();
    let named = reg.get("named").await.expect("a process names its list");
    assert!(named.event_types.find("upgrade.named").is_some(), "{named:?}");
}

/// A writer of the older build, still running on the file after the
/// upgrade, inserts envs and type lists naming no time (the column's
/// default, 0): each is touched as it is inserted, by the wall clock, so no
/// prune collects it within the grace of that insert. A row inserted with
/// its time (this build's) keeps that time.
#[tokio::test]
async fn an_older_writers_inserts_are_touched_as_they_are_inserted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(wall());
    let reg = open(&path, &clock);
    let raw = Connection::open(&path).expect("raw");
    let before = wall();
    // The older build's statements, as it sends them.
    raw.execute(
        "INSERT INTO envs (env_ref, bytes) VALUES (?1, ?2) ON CONFLICT (env_ref) DO NOTHING",
        rusqlite::params!["process-env:sha256:older", b"{}".to_vec()],
    )
    .expect("older env insert");
    raw.execute(
        "INSERT INTO type_lists (key, types) VALUES (?1, ?2)",
        ["types:sha256:older", "[]"],
    )
    .expect("older list insert");
    raw.execute(
        "INSERT INTO type_lists (key, types, touched_at_ms) VALUES (?1, ?2, ?3)",
        rusqlite::params!["types:sha256:newer", "[]", 7_i64],
    )
    .expect("insert with a time");
    let after = wall();
    let touched = |sql: &str, key: &str| -> i64 { raw.query_row(sql, [key], |r| r.get(0)).expect("touched") };
    for t in [
        touched(
            "SELECT touched_at_ms FROM envs WHERE env_ref = ?1",
            "process-env:sha256:older",
        ),
        touched(
            "SELECT touched_at_ms FROM type_lists WHERE key = ?1",
            "types:sha256:older",
        ),
    ] {
        assert!(
            (before as i64..=after as i64).contains(&t),
            "touched as inserted ({before}..={after}), not {t}"
        );
    }
    assert_eq!(
        touched(
            "SELECT touched_at_ms FROM type_lists WHERE key = ?1",
            "types:sha256:newer"
        ),
        7
    );
    let grace = cairn_core::registry::DEFAULT_COLLECT_GRACE;
    clock.set(after);
    assert_eq!(
        reg.collect_unreferenced(grace).await.expect("collect"),
        cairn_core::registry::Collected { envs: 0, type_lists: 1 },
        "only the list stored at 7 is past the grace"
    );
    clock.set(after + grace.as_millis() as u64 + 1);
    assert_eq!(
        reg.collect_unreferenced(grace).await.expect("collect"),
        cairn_core::registry::Collected { envs: 1, type_lists: 1 }
    );
}

/// A prune with the default grace keeps a type list stored within the hour
/// though no process names it any more, as it keeps envs: a writer of an
/// older build on the same file may be naming it from its cache. Collected
/// with no grace, it goes; declared again, it is stored again.
#[tokio::test]
async fn a_list_stored_within_the_grace_outlives_a_prune() {
    use rusqlite::OptionalExtension;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let reg = open(&path, &clock);
    let key = register_ended(&reg, "once", "only.here").await;
    let raw = Connection::open(&path).expect("raw");
    let touched = |key: &str| -> Option<i64> {
        raw.query_row("SELECT touched_at_ms FROM type_lists WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()
        .expect("touched")
    };
    assert_eq!(touched(&key), Some(T0 as i64), "stored at the writer's time");
    clock.advance(10);
    assert_eq!(prune_ended(&reg, &clock).await.pruned, 1);
    assert_eq!(touched(&key), Some(T0 as i64), "stored within the grace: kept");
    assert_eq!(
        reg.collect_unreferenced(std::time::Duration::ZERO)
            .await
            .expect("collect"),
        cairn_core::registry::Collected { envs: 0, type_lists: 1 }
    );
    assert_eq!(touched(&key), None, "collected with no grace");
    clock.advance(10);
    reg.register(declaring("again", "only.here"), None)
        .await
        .expect("register again");
    assert_eq!(touched(&key), Some(T0 as i64 + 20), "stored again, at its time");
}

/// Two registries on one file, each with its writer and its knowledge of
/// the type lists stored: one registers a process declaring a list (and so
/// knows it stored), the other prunes that process and collects the list;
/// the first then registers another process declaring the same list, which
/// it stores again (another connection committed since its last write, so
/// it looks the list up), and the record reads back with its types.
#[tokio::test]
async fn a_list_another_writer_collected_is_stored_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let first = open(&path, &clock);
    let second = open_without_grace(&path, &clock);
    let key = register_ended(&first, "once", "only.here").await;
    let raw = Connection::open(&path).expect("raw");
    assert_eq!(lists_stored(&raw, &key), 1);
    clock.advance(10);
    assert_eq!(prune_ended(&second, &clock).await.pruned, 1);
    assert_eq!(
        lists_stored(&raw, &key),
        0,
        "the prune collected the list no process names"
    );

    first
        .register(declaring("again", "only.here"), None)
        .await
        .expect("register again");
    assert_eq!(lists_stored(&raw, &key), 1, "the first writer stored the list again");
    // Read through a registry that never decoded the list in this process's
    // cache of lists: the row's list comes from the file.
    cairn_core::ops::columns::forget_type_lists();
    let again = second.get("again").await.expect("the record reads back");
    assert!(again.event_types.find("only.here").is_some(), "{again:?}");
}

/// A prune's collection on the writer thread forgets the lists that thread
/// knew were stored, in the same job: a registration right after it, on the
/// same writer, stores the collected list again.
#[tokio::test]
async fn a_list_this_writer_collected_is_stored_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let reg = open_without_grace(&path, &clock);
    let key = register_ended(&reg, "once", "only.here").await;
    clock.advance(10);
    prune_ended(&reg, &clock).await;
    let raw = Connection::open(&path).expect("raw");
    assert_eq!(lists_stored(&raw, &key), 0, "collected");
    reg.register(declaring("again", "only.here"), None)
        .await
        .expect("register again");
    assert_eq!(lists_stored(&raw, &key), 1, "stored again");
}

/// A populated file from before the listing windows (schema version 16)
/// gains the creation-time and waiting indexes on open, and its listings by
/// creation time and of waiting processes find what they found before.
#[tokio::test]
async fn listing_window_indexes_are_added_on_upgrade() {
    /// The schema version whose migration adds the listing window indexes.
    const LISTING_WINDOWS_FROM: u32 = 16;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let clock = ManualClock::new(T0);
    let reg = open(&path, &clock);
    for i in 0..30u64 {
        reg.register(tool(&format!("p{:02}", 29 - i), Disposition::Rerunnable), None)
            .await
            .expect("register");
        clock.advance(10);
    }
    for id in ["p05", "p21"] {
        suspend(&reg, id).await;
    }
    drop(reg);
    let raw = Connection::open(&path).expect("raw");
    make_older(&raw, UNDO_LISTING_WINDOWS, LISTING_WINDOWS_FROM);

    let reg = open(&path, &clock);
    let version: String = raw
        .query_row("SELECT value FROM cairn_meta WHERE key = 'schema_version'", [], |r| {
            r.get(0)
        })
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION.to_string());
    for index in ["processes_created", "processes_waiting"] {
        let found: i64 = raw
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [index],
                |r| r.get(0),
            )
            .expect("index");
        assert_eq!(found, 1, "{index}");
    }
    // Created at T0, T0 + 10, ...: `p29` first, `p00` last.
    let window = ProcessFilter {
        status: StatusFilter::Any,
        created_from_ms: Some(T0 + 100),
        created_before_ms: Some(T0 + 150),
        ..ProcessFilter::default()
    };
    let ids: Vec<String> = reg
        .list(&window)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["p15", "p16", "p17", "p18", "p19"]);
    let newest = ProcessFilter {
        created_from_ms: Some(T0 + 270),
        created_before_ms: None,
        ..window.clone()
    };
    let ids: Vec<String> = reg
        .list(&newest)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["p00", "p01", "p02"]);
    let waiting = ProcessFilter {
        status: StatusFilter::Any,
        waiting: Some(true),
        ..ProcessFilter::default()
    };
    let waiting_ids = || async {
        reg.list(&waiting)
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<String>>()
    };
    assert_eq!(waiting_ids().await, ["p05", "p21"]);
    // A row that starts waiting after the upgrade enters the index.
    suspend(&reg, "p10").await;
    assert_eq!(waiting_ids().await, ["p05", "p10", "p21"]);
}

/// Claim `id`, start it and suspend it on signal `go`: it waits.
async fn suspend(reg: &SqliteRegistry, id: &str) {
    let lease = reg.claim(id, "w1", 30_000).await.expect("claim");
    let rec = reg.record_started(&lease).await.expect("started");
    let waited = reg
        .wait(
            &lease,
            cairn_core::WaitRequest::signal("go", 1, None),
            rec.last_sequence,
        )
        .await
        .expect("wait");
    assert!(waited, "{id} waits");
}
