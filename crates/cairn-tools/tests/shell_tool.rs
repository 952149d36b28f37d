//! The `shell` built-in tool, run directly against the in-memory registry.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::awaiter::Awaiter;
use cairn_core::tool::{StopReason, Tool, ToolContext};
use cairn_core::{
    CairnError, Disposition, ManualClock, MemoryRegistry, Outcome, ProcessInput, ProcessRegistry, Provenance,
    Registration,
};
use cairn_tools::ShellTool;
use serde_json::{json, Value};

const RUN_LIMIT: Duration = Duration::from_secs(30);

fn registration(id: &str, args: &Value) -> Registration {
    Registration {
        id: id.to_string(),
        input: ProcessInput::ToolCall {
            tool: "shell".into(),
            args: args.clone(),
        },
        disposition: Disposition::Rerunnable,
        event_types: ShellTool::default().event_types(),
        provenance: Provenance::default(),
        wake_target: None,
        env_ref: None,
        external_ref: None,
    }
}

async fn context(reg: &Arc<dyn ProcessRegistry>, id: &str, args: &Value, ttl_ms: u64) -> ToolContext {
    let record = reg
        .register(registration(id, args), None)
        .await
        .expect("register")
        .process;
    let lease = reg.claim(id, "worker-1", ttl_ms).await.expect("claim");
    ToolContext::new(record, None, reg.clone(), Awaiter::new(reg.clone(), None), lease)
}

fn memory() -> Arc<dyn ProcessRegistry> {
    Arc::new(MemoryRegistry::new())
}

/// Runs the tool to its end on a fresh process.
async fn run_with(tool: ShellTool, args: Value) -> (Arc<dyn ProcessRegistry>, Outcome) {
    let reg = memory();
    let ctx = context(&reg, "p1", &args, 60_000).await;
    let outcome = tokio::time::timeout(RUN_LIMIT, tool.run(ctx, args))
        .await
        .expect("shell run finished in time");
    (reg, outcome)
}

async fn run(args: Value) -> (Arc<dyn ProcessRegistry>, Outcome) {
    run_with(ShellTool::default(), args).await
}

/// Starts the tool in the background.
fn spawn_run(tool: ShellTool, ctx: &ToolContext, args: Value) -> tokio::task::JoinHandle<Outcome> {
    let ctx = ctx.clone();
    tokio::spawn(async move { tool.run(ctx, args).await })
}

async fn finish(handle: tokio::task::JoinHandle<Outcome>) -> Outcome {
    tokio::time::timeout(RUN_LIMIT, handle)
        .await
        .expect("shell run finished in time")
        .expect("shell run did not panic")
}

/// `(stream, lines)` of every `shell.output` event, in log order.
async fn output_events(reg: &Arc<dyn ProcessRegistry>, id: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = reg.events_after(id, after, Some(1000)).await.expect("events");
        for e in &page.events {
            if e.event_type == "shell.output" {
                let stream = e.payload["stream"].as_str().expect("stream").to_string();
                let lines = e.payload["lines"]
                    .as_array()
                    .expect("lines")
                    .iter()
                    .map(|l| l.as_str().expect("line").to_string())
                    .collect();
                out.push((stream, lines));
            }
        }
        match page.next_after {
            Some(n) => after = n,
            None => return out,
        }
    }
}

async fn lines_of(reg: &Arc<dyn ProcessRegistry>, id: &str, stream: &str) -> Vec<String> {
    output_events(reg, id)
        .await
        .into_iter()
        .filter(|(s, _)| s == stream)
        .flat_map(|(_, l)| l)
        .collect()
}

fn expect_failure(outcome: &Outcome, want_code: &str) -> Value {
    match outcome {
        Outcome::Failure { code, raw, .. } if code == want_code => raw.clone().unwrap_or(Value::Null),
        other => panic!("expected failure `{want_code}`, got {other:?}"),
    }
}

/// Reads a pid a shell wrote to `path`, polling (bounded) until it is there.
async fn read_pid(path: &Path) -> i32 {
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pid in {}", path.display());
}

/// Whether `pid` is gone: `kill(pid, 0)` answers ESRCH, or it is a zombie
/// (dead, waiting for an init that may not reap it).
fn pid_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence; no signal is delivered.
    let r = unsafe { libc::kill(pid, 0) };
    if r != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

async fn assert_gone(pid: i32) {
    for _ in 0..250 {
        if pid_gone(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("process {pid} is still alive");
}

/// A script that records its own pid and a background grandchild's pid, then waits.
fn pid_script(dir: &Path, prelude: &str) -> String {
    let shell = dir.join("shell.pid");
    let child = dir.join("child.pid");
    format!(
        "{prelude} echo $$ > '{s}.tmp' && mv '{s}.tmp' '{s}'; sleep 1000 & echo $! > '{c}.tmp' && mv '{c}.tmp' '{c}'; wait",
        s = shell.display(),
        c = child.display(),
    )
}

async fn pids(dir: &Path) -> (i32, i32) {
    (
        read_pid(&dir.join("shell.pid")).await,
        read_pid(&dir.join("child.pid")).await,
    )
}

#[tokio::test]
async fn output_lines_arrive_in_order_and_success_carries_tails() {
    let args = json!({"command": "i=1; while [ $i -le 200 ]; do echo line$i; i=$((i+1)); done; echo oops >&2"});
    let (reg, outcome) = run(args).await;

    let expected: Vec<String> = (1..=200).map(|i| format!("line{i}")).collect();
    assert_eq!(lines_of(&reg, "p1", "stdout").await, expected);
    assert_eq!(lines_of(&reg, "p1", "stderr").await, vec!["oops".to_string()]);
    let events = output_events(&reg, "p1").await;
    assert!(
        events.len() >= 4,
        "200 lines need several batches, got {}",
        events.len()
    );
    assert!(events.iter().all(|(_, lines)| !lines.is_empty() && lines.len() <= 64));

    let Outcome::Success { value } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(value["exit_code"], 0);
    let tail = value["stdout_tail"].as_str().expect("stdout_tail");
    assert!(tail.ends_with("line199\nline200\n"), "tail: {tail:?}");
    assert!(!tail.contains("line1\n"), "the tail is bounded");
    assert!(tail.lines().count() <= 64);
    assert_eq!(value["stderr_tail"], "oops\n");
}

#[tokio::test]
async fn nonzero_exit_is_exit_status_failure() {
    let (reg, outcome) = run(json!({"command": "echo before; echo bad >&2; exit 3"})).await;
    let raw = expect_failure(&outcome, "exit_status");
    assert_eq!(raw["exit_code"], 3);
    assert_eq!(raw["stdout_tail"], "before\n");
    assert_eq!(raw["stderr_tail"], "bad\n");
    let Outcome::Failure { class, message, .. } = &outcome else {
        unreachable!()
    };
    assert_eq!(class, "tool");
    assert_eq!(message, "exited with status 3");
    assert_eq!(lines_of(&reg, "p1", "stderr").await, vec!["bad".to_string()]);
}

#[tokio::test]
async fn killed_by_signal_reports_the_signal() {
    let (_reg, outcome) = run(json!({"command": "kill -9 $$"})).await;
    let raw = expect_failure(&outcome, "exit_status");
    assert_eq!(raw["signal"], libc::SIGKILL);
}

#[tokio::test]
async fn argv_form_passes_arguments_verbatim() {
    let (reg, outcome) = run(json!({"argv": ["printf", "%s\\n", "a b", "$HOME", "c"]})).await;
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
    assert_eq!(lines_of(&reg, "p1", "stdout").await, vec!["a b", "$HOME", "c"]);
}

#[tokio::test]
async fn cwd_and_env_are_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().canonicalize().expect("canonical dir");
    let args = json!({
        "command": "pwd -P; echo \"$CAIRN_TEST_VAR\"; test -n \"$PATH\" && echo inherited",
        "cwd": dir.path().to_str().expect("utf-8 path"),
        "env": {"CAIRN_TEST_VAR": "hello there"},
    });
    let (reg, outcome) = run(args).await;
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
    assert_eq!(
        lines_of(&reg, "p1", "stdout").await,
        vec![
            real.to_str().expect("utf-8 path").to_string(),
            "hello there".into(),
            "inherited".into()
        ]
    );
}

#[tokio::test]
async fn long_lines_are_truncated() {
    let (reg, outcome) = run(json!({"command": "head -c 100000 /dev/zero | tr '\\0' a; echo; echo next"})).await;
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
    let lines = lines_of(&reg, "p1", "stdout").await;
    assert_eq!(lines.len(), 2);
    assert!(lines[0].len() <= 16 * 1024 + 64, "line is {} bytes", lines[0].len());
    assert!(lines[0].starts_with("aaaa"));
    assert_eq!(lines[1], "next");
}

#[test]
fn bad_args_are_rejected() {
    let tool = ShellTool::default();
    for args in [
        json!({"argv": ["true"], "command": "true"}),
        json!({}),
        json!({"argv": []}),
        json!({"argv": [""]}),
        json!({"command": ""}),
        json!({"command": "true", "shell": "bash"}),
        json!({"command": "true", "env": {"A=B": "x"}}),
        json!({"command": "true", "env": {"A": 1}}),
        json!({"command": "true", "timeout_ms": -1}),
        json!({"argv": "true"}),
        json!("true"),
        json!([["true"]]),
    ] {
        match tool.validate_args(&args) {
            Err(CairnError::InvalidRequest(_)) => {}
            other => panic!("{args} should be invalid_request, got {other:?}"),
        }
    }
    for args in [
        json!({"argv": ["true"]}),
        json!({"command": "true", "cwd": "/", "env": {"A": "b"}, "timeout_ms": 10}),
    ] {
        tool.validate_args(&args).expect("valid args");
    }
}

#[tokio::test]
async fn bad_args_at_run_time_fail_the_run() {
    let reg = memory();
    let args = json!({"argv": []});
    let ctx = context(&reg, "p1", &args, 60_000).await;
    let outcome = ShellTool::default().run(ctx, args).await;
    expect_failure(&outcome, "invalid_args");
}

#[tokio::test]
async fn spawn_failures_are_reported() {
    // Each says which was missing: the program, or the directory.
    let message = |outcome: &Outcome| match outcome {
        Outcome::Failure { message, .. } => message.clone(),
        other => panic!("{other:?}"),
    };
    let (_reg, outcome) = run(json!({"argv": ["/nonexistent/cairn-no-such-program"]})).await;
    expect_failure(&outcome, "spawn_failed");
    assert!(message(&outcome).contains("no such program"), "{}", message(&outcome));

    let (_reg, outcome) = run(json!({"command": "true", "cwd": "/nonexistent/cairn-no-such-dir"})).await;
    expect_failure(&outcome, "spawn_failed");
    assert!(
        message(&outcome).contains("its working directory `/nonexistent/cairn-no-such-dir` does not exist"),
        "{}",
        message(&outcome)
    );
    // A script that is there, whose interpreter is not.
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("s.sh");
    std::fs::write(&script, "#!/nonexistent/cairn-no-such-interpreter\necho hi\n").expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let (_reg, outcome) = run(json!({"argv": [script.display().to_string()]})).await;
    expect_failure(&outcome, "spawn_failed");
    assert!(
        message(&outcome).contains("it is there, but its interpreter (its `#!` line) is not"),
        "{}",
        message(&outcome)
    );
    let file = tempfile::NamedTempFile::new().expect("file");
    let cwd = file.path().display().to_string();
    let (_reg, outcome) = run(json!({"command": "true", "cwd": cwd})).await;
    expect_failure(&outcome, "spawn_failed");
    assert!(
        message(&outcome).contains("is not a directory"),
        "{}",
        message(&outcome)
    );
}

#[tokio::test]
async fn cancellation_stops_the_whole_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = memory();
    let args = json!({"command": pid_script(dir.path(), "echo started;")});
    let ctx = context(&reg, "p1", &args, 60_000).await;
    let handle = spawn_run(ShellTool::default(), &ctx, args);

    let (shell, grandchild) = pids(dir.path()).await;
    assert!(!pid_gone(shell) && !pid_gone(grandchild));
    ctx.stop(StopReason::Cancelled {
        reason: Some("test".into()),
    });
    let outcome = finish(handle).await;
    assert_eq!(outcome, Outcome::cancelled("test"));
    assert_gone(shell).await;
    assert_gone(grandchild).await;
    // Output written before the stop is kept.
    assert_eq!(lines_of(&reg, "p1", "stdout").await, vec!["started".to_string()]);
}

#[tokio::test]
async fn a_group_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = memory();
    let args = json!({"command": pid_script(dir.path(), "trap '' TERM;")});
    let ctx = context(&reg, "p1", &args, 60_000).await;
    let grace = Duration::from_millis(200);
    let handle = spawn_run(ShellTool::default().with_kill_grace(grace), &ctx, args);

    let (shell, grandchild) = pids(dir.path()).await;
    let stopped_at = Instant::now();
    ctx.stop(StopReason::Shutdown);
    let outcome = finish(handle).await;
    let took = stopped_at.elapsed();
    assert!(matches!(outcome, Outcome::Cancelled { .. }), "{outcome:?}");
    assert!(
        took >= grace,
        "SIGTERM was ignored, so the stop waits out the grace ({took:?})"
    );
    assert!(took < Duration::from_secs(10), "SIGKILL ended it ({took:?})");
    assert_gone(shell).await;
    assert_gone(grandchild).await;
}

/// A run whose lease was lost is killed at once, with no grace: a peer may
/// run the process from the lapse, and a grace would overlap it.
#[tokio::test]
async fn a_run_that_lost_its_lease_is_killed_without_a_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = memory();
    let args = json!({"command": pid_script(dir.path(), "trap '' TERM;")});
    let ctx = context(&reg, "p1", &args, 60_000).await;
    let grace = Duration::from_secs(60);
    let handle = spawn_run(ShellTool::default().with_kill_grace(grace), &ctx, args);

    let (shell, grandchild) = pids(dir.path()).await;
    let stopped_at = Instant::now();
    ctx.stop(StopReason::LeaseLost);
    let outcome = tokio::time::timeout(Duration::from_secs(20), finish(handle))
        .await
        .expect("the group is killed without waiting out the 60 s grace");
    assert!(stopped_at.elapsed() < grace);
    assert!(
        matches!(outcome, Outcome::Cancelled { .. } | Outcome::Failure { .. }),
        "{outcome:?}"
    );
    assert_gone(shell).await;
    assert_gone(grandchild).await;
}

#[tokio::test]
async fn timeout_stops_the_group_and_fails_with_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Long enough for a loaded machine to start the shell and its child
    // (their pid files are read below) before the timeout fires.
    let args = json!({"command": pid_script(dir.path(), "echo waiting;"), "timeout_ms": 3000});
    let started = Instant::now();
    let (_reg, outcome) = run(args).await;
    assert!(started.elapsed() >= Duration::from_millis(3000));
    let raw = expect_failure(&outcome, "timeout");
    assert_eq!(raw["stdout_tail"], "waiting\n");
    let (shell, grandchild) = pids(dir.path()).await;
    assert_gone(shell).await;
    assert_gone(grandchild).await;
}

#[tokio::test]
async fn leftover_group_members_do_not_outlive_a_normal_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = dir.path().join("child.pid");
    // The background sleep keeps stdout open; the run must still end promptly.
    let args = json!({"command": format!("sleep 1000 & echo $! > '{}'; echo done", child.display())});
    let started = Instant::now();
    let (_reg, outcome) = run(args).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let Outcome::Success { value } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(value["stdout_tail"], "done\n");
    assert_gone(read_pid(&child).await).await;
}

#[tokio::test]
async fn a_stop_before_the_run_starts_nothing() {
    let reg = memory();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let args = json!({"command": format!("touch '{}'", marker.display())});
    let ctx = context(&reg, "p1", &args, 60_000).await;
    ctx.stop(StopReason::Cancelled { reason: None });
    let outcome = ShellTool::default().run(ctx, args).await;
    assert!(matches!(outcome, Outcome::Cancelled { .. }), "{outcome:?}");
    assert!(!marker.exists());
}

#[tokio::test]
async fn a_command_whose_lease_lapsed_before_it_started_is_not_started() {
    // This node was paused between its claim and the run: by its clock the
    // lease has lapsed, and a peer may have run the command to its end.
    let clock = ManualClock::new(1_000_000);
    let reg: Arc<dyn ProcessRegistry> = Arc::new(MemoryRegistry::with_clock(Arc::new(clock.clone())));
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let args = json!({"command": format!("touch '{}'", marker.display())});
    let ctx = context(&reg, "p1", &args, 1_000)
        .await
        .with_clock(Arc::new(clock.clone()));
    let before = reg.get("p1").await.expect("get").last_sequence;
    clock.advance(1_000);
    let outcome = tokio::time::timeout(RUN_LIMIT, ShellTool::default().run(ctx.clone(), args))
        .await
        .expect("the run ended in time");
    assert!(matches!(outcome, Outcome::Cancelled { .. }), "{outcome:?}");
    assert_eq!(ctx.stop_reason(), Some(StopReason::LeaseLost));
    assert!(!marker.exists(), "the command did not start");
    assert_eq!(
        reg.get("p1").await.expect("get").last_sequence,
        before,
        "nothing was written"
    );
}

#[tokio::test]
async fn a_lost_lease_stops_the_run_and_nothing_more_is_written() {
    let clock = ManualClock::new(1_000_000);
    let reg: Arc<dyn ProcessRegistry> = Arc::new(MemoryRegistry::with_clock(Arc::new(clock.clone())));
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("shell.pid");
    let args = json!({
        "command": format!("echo $$ > '{p}.tmp' && mv '{p}.tmp' '{p}'; while :; do echo tick; sleep 0.02; done", p = pidfile.display())
    });
    let ctx = context(&reg, "p1", &args, 1_000)
        .await
        .with_clock(Arc::new(clock.clone()));
    let handle = spawn_run(ShellTool::default(), &ctx, args);
    let shell = read_pid(&pidfile).await;

    // Wait (bounded) until output is being recorded.
    let mut recorded = false;
    for _ in 0..500 {
        if !output_events(&reg, "p1").await.is_empty() {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recorded, "no shell.output event was recorded");

    // The lease lapses and another owner takes the process over.
    clock.advance(5_000);
    reg.claim("p1", "worker-2", 60_000).await.expect("takeover claim");
    let taken_over_at = reg.get("p1").await.expect("get").last_sequence;

    let outcome = finish(handle).await;
    expect_failure(&outcome, "lease_fenced");
    assert_gone(shell).await;
    assert_eq!(reg.get("p1").await.expect("get").last_sequence, taken_over_at);
    assert!(!ctx.is_stopped(), "the tool noticed the lost lease by itself");
}

/// Live (not zombie) members of process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        if fields.nth(1).and_then(|p| p.parse::<i32>().ok()) == Some(pgid) && !matches!(state, "Z" | "X" | "x") {
            members.push(pid);
        }
    }
    members
}

fn pgid_of(pid: i32) -> i32 {
    // SAFETY: getpgid only reads the group id of a process.
    let pgid = unsafe { libc::getpgid(pid) };
    assert!(pgid > 0, "process {pid} has no group");
    pgid
}

/// SIGKILLs a process group when dropped: a failing test leaves no command running.
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: signalling a process group this test's command created.
        unsafe { libc::killpg(self.0, libc::SIGKILL) };
    }
}

/// A rerunnable command's group holds a sentinel that ignores the stop's
/// SIGTERM; it does not count as a member still running, so a group whose
/// command ends on SIGTERM (or exits by itself) ends at once, not after the
/// grace, and the sentinel goes with it.
#[tokio::test]
async fn a_rerunnable_group_ends_well_before_the_grace_when_its_members_do() {
    let grace = Duration::from_secs(60);
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = memory();
    let args = json!({"command": pid_script(dir.path(), "echo started;")});
    let ctx = context(&reg, "p1", &args, 60_000).await;
    assert_eq!(ctx.record().disposition, Disposition::Rerunnable);
    let handle = spawn_run(ShellTool::default().with_kill_grace(grace), &ctx, args);
    let (shell, grandchild) = pids(dir.path()).await;
    let pgid = pgid_of(shell);
    let _cleanup = KillGroup(pgid);
    assert_ne!(pgid, shell, "the sentinel leads the group");
    assert!(group_members(pgid).contains(&pgid), "the sentinel is in the group");

    let stopped_at = Instant::now();
    ctx.stop(StopReason::Cancelled { reason: None });
    let outcome = finish(handle).await;
    assert!(matches!(outcome, Outcome::Cancelled { .. }), "{outcome:?}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(15),
        "the members died on SIGTERM: no grace to wait out ({:?})",
        stopped_at.elapsed()
    );
    assert_gone(shell).await;
    assert_gone(grandchild).await;
    assert_eq!(group_members(pgid), Vec::<i32>::new(), "the sentinel went too");

    // A command that exits by itself does not wait out the grace either.
    let args = json!({"command": "echo done"});
    let started = Instant::now();
    let (_reg, outcome) = run_with(ShellTool::default().with_kill_grace(grace), args).await;
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
}

/// The directory the crash child below writes to; set only in the child.
const CRASH_DIR_ENV: &str = "CAIRN_TOOLS_TEST_CRASH_DIR";

/// Not a test of its own: the body of the process that
/// `a_server_killed_during_the_stop_grace_still_ends_a_rerunnable_group`
/// kills: ignored otherwise, so it never counts as a pass on its own.
#[ignore = "the child process of a_server_killed_during_the_stop_grace_still_ends_a_rerunnable_group"]
#[tokio::test]
async fn crash_child_runs_a_rerunnable_command_into_its_stop_grace() {
    let dir = std::env::var_os(CRASH_DIR_ENV).expect("run only by its parent test");
    let dir = Path::new(&dir);
    let termed = dir.join("termed");
    // The shell notes the SIGTERM and goes on; its child ignores it. First
    // it sends its whole group a signal it ignores itself (as a command may):
    // the sentinel must outlast that too.
    let prelude = format!(
        "trap 'echo > \"{t}.tmp\" && mv \"{t}.tmp\" \"{t}\"' TERM; trap '' ALRM; kill -ALRM 0;",
        t = termed.display()
    );
    let script = format!(
        "{prelude} echo $$ > '{s}.tmp' && mv '{s}.tmp' '{s}'; (trap '' TERM; exec sleep 1000) & echo $! > '{c}.tmp' && mv '{c}.tmp' '{c}'; while :; do wait; done",
        s = dir.join("shell.pid").display(),
        c = dir.join("child.pid").display(),
    );
    let args = json!({"command": script, "timeout_ms": 1000});
    let reg = memory();
    let ctx = context(&reg, "p1", &args, 600_000).await;
    // The parent kills this process during the grace.
    let _ = ShellTool::default()
        .with_kill_grace(Duration::from_secs(120))
        .run(ctx, args)
        .await;
}

/// The process running a rerunnable command is SIGKILLed while the command's
/// timeout stop waits out its grace (the command ignores SIGTERM): the group
/// still dies with it, at once, as it would have while the command ran; it
/// does not run on beside the rerun a restart would start.
#[tokio::test]
async fn a_server_killed_during_the_stop_grace_still_ends_a_rerunnable_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "crash_child_runs_a_rerunnable_command_into_its_stop_grace",
            "--ignored",
            "--nocapture",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the crash child");
    let (shell, grandchild) = pids(dir.path()).await;
    let pgid = pgid_of(shell);
    let _cleanup = KillGroup(pgid);
    // The timeout sent the group SIGTERM: the grace has begun.
    read_marker(&dir.path().join("termed")).await;
    assert!(!pid_gone(shell) && !pid_gone(grandchild), "both ignored the SIGTERM");

    // SAFETY: signalling a child process this test spawned.
    assert_eq!(unsafe { libc::kill(server.id() as i32, libc::SIGKILL) }, 0);
    server.wait().expect("reap the crash child");
    assert_gone(shell).await;
    assert_gone(grandchild).await;
}

/// Waits (bounded) until `path` exists.
async fn read_marker(path: &Path) {
    for _ in 0..1_000 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {}", path.display());
}

/// Waits (bounded: well under `limit`) until `line` is in the run's stdout;
/// answers how long that took.
async fn recorded_within(reg: &Arc<dyn ProcessRegistry>, line: &str, limit: Duration) -> Duration {
    let since = Instant::now();
    while since.elapsed() < limit {
        if lines_of(reg, "p1", "stdout").await.iter().any(|l| l == line) {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("`{line}` was not recorded within {limit:?}");
}

/// A line written during a stop's grace reaches the log by age, as it would
/// while the command runs, not once the grace is over.
#[tokio::test]
async fn output_written_during_the_stop_grace_is_recorded_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = memory();
    let pidfile = dir.path().join("shell.pid");
    let args = json!({
        "command": format!(
            "trap 'echo term-ignored' TERM; echo $$ > '{p}.tmp' && mv '{p}.tmp' '{p}'; while :; do sleep 0.05; done",
            p = pidfile.display()
        )
    });
    let ctx = context(&reg, "p1", &args, 60_000).await;
    let grace = Duration::from_secs(30);
    let handle = spawn_run(ShellTool::default().with_kill_grace(grace), &ctx, args);
    let shell = read_pid(&pidfile).await;
    let _cleanup = KillGroup(pgid_of(shell));

    ctx.stop(StopReason::Cancelled { reason: None });
    recorded_within(&reg, "term-ignored", Duration::from_secs(10)).await;
    assert!(!handle.is_finished(), "recorded during the grace, not after it");
    handle.abort();
}

/// A line written just before the command exits, while a process that left
/// its group keeps the pipe open (and the run draining it), reaches the log
/// by age, not once the drain is over.
#[tokio::test]
async fn output_written_before_the_exit_is_recorded_while_the_pipe_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = memory();
    let pidfile = dir.path().join("bg.pid");
    // The background writer leaves the group (the command waits until it
    // has, or it would be stopped as a leftover member), so the run drains
    // its lines (one every 0.1 s) for up to 10 s after the command's exit; a
    // batch fills (64 lines) only after 6.4 s.
    let args = json!({
        "command": format!(
            "setsid sh -c 'echo $$ > \"{p}.tmp\" && mv \"{p}.tmp\" \"{p}\"; i=0; while [ $i -lt 300 ]; do echo bg$i; sleep 0.1; i=$((i+1)); done' & while [ ! -e '{p}' ]; do sleep 0.01; done; echo main",
            p = pidfile.display()
        )
    });
    let ctx = context(&reg, "p1", &args, 60_000).await;
    let handle = spawn_run(ShellTool::default(), &ctx, args);
    let bg = read_pid(&pidfile).await;
    let _cleanup = KillGroup(pgid_of(bg));

    recorded_within(&reg, "main", Duration::from_secs(3)).await;
    assert!(!handle.is_finished(), "recorded while the pipe drains, not after");
    handle.abort();
}

#[tokio::test]
async fn a_line_of_exactly_the_limit_ending_in_crlf_is_not_marked() {
    let limit = 16 * 1024;
    let command = format!(
        "head -c {limit} /dev/zero | tr '\\0' y; printf '\\r\\n'; \
         head -c {limit} /dev/zero | tr '\\0' z; printf 'x\\r\\n'; \
         head -c {limit} /dev/zero | tr '\\0' w; printf '\\n'; \
         head -c {limit} /dev/zero | tr '\\0' v; printf 'u\\n'"
    );
    let (reg, outcome) = run(json!({ "command": command })).await;
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
    let lines = lines_of(&reg, "p1", "stdout").await;
    let full = |c: &str| c.repeat(limit);
    let cut = |c: &str| format!("{}…[truncated]", c.repeat(limit));
    assert_eq!(lines, vec![full("y"), cut("z"), full("w"), cut("v")]);
}

#[tokio::test]
async fn a_program_found_on_path_whose_interpreter_is_missing_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("cairn-badinterp.sh");
    std::fs::write(&script, "#!/nonexistent/cairn-no-such-interpreter\necho hi\n").expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    let (_reg, outcome) = run(json!({"argv": ["cairn-badinterp.sh"], "env": {"PATH": path}})).await;
    let Outcome::Failure { code, message, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(code, "spawn_failed");
    assert!(
        message.contains("it is there (`") && message.contains("but its interpreter (its `#!` line) is not"),
        "{message}"
    );
    assert!(message.contains(&script.display().to_string()), "{message}");

    // Not on that PATH: no such program.
    let (_reg, outcome) = run(json!({"argv": ["cairn-badinterp.sh"], "env": {"PATH": "/usr/bin:/bin"}})).await;
    let Outcome::Failure { message, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(message.contains("no such program"), "{message}");
}

/// The marker a stream's output ends with when the bound cut it:
/// `(lines, bytes)` it says were not kept.
fn not_kept_counts(marker: &str, stream: &str, max: u64) -> (u64, u64) {
    let rest = marker
        .strip_prefix("…[not kept: ")
        .and_then(|r| r.strip_suffix(&format!(" of {stream} past max_output_bytes ({max} bytes)]")))
        .unwrap_or_else(|| panic!("not a marker of {stream}: {marker:?}"));
    let number = |part: &str| part.split(' ').next().and_then(|n| n.parse().ok()).expect("a count");
    let (lines, bytes) = rest.split_once(", ").expect("lines, bytes");
    (number(lines), number(bytes))
}

const NOTICE_1000: &str = "…[output past max_output_bytes (1000 bytes) is not kept from here on]";

/// Output past `max_output_bytes` (each line counted with its newline) is
/// not appended; a notice says so where it is cut, and a last line how much
/// was not kept; the tails are the command's real last lines and its exit
/// is a success as without the bound.
#[tokio::test]
async fn output_past_max_output_bytes_is_not_kept_and_its_loss_is_counted() {
    let args = json!({
        "command": "i=1; while [ $i -le 500 ]; do echo line$i; i=$((i+1)); done",
        "max_output_bytes": 1000,
    });
    let (reg, outcome) = run(args).await;
    // `lineN\n`: 9 of 6 bytes, 90 of 7, then 8 each: 684 + 39 * 8 = 996,
    // and line139 would make it 1004.
    let mut expected: Vec<String> = (1..=138).map(|i| format!("line{i}")).collect();
    expected.push(NOTICE_1000.to_string());
    expected.push("…[not kept: 362 lines, 2896 bytes of stdout past max_output_bytes (1000 bytes)]".to_string());
    assert_eq!(lines_of(&reg, "p1", "stdout").await, expected);
    assert!(lines_of(&reg, "p1", "stderr").await.is_empty());
    let Outcome::Success { value } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(value["exit_code"], 0);
    let tail = value["stdout_tail"].as_str().expect("stdout_tail");
    assert!(tail.ends_with("line499\nline500\n"), "tail: {tail:?}");
    assert!(!tail.contains("not kept"), "the tail is the command's own: {tail:?}");

    // A bound of 0 keeps nothing but the markers.
    let (reg, outcome) = run(json!({"command": "echo a; echo bc", "max_output_bytes": 0})).await;
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
    assert_eq!(
        lines_of(&reg, "p1", "stdout").await,
        vec![
            "…[output past max_output_bytes (0 bytes) is not kept from here on]".to_string(),
            "…[not kept: 2 lines, 5 bytes of stdout past max_output_bytes (0 bytes)]".to_string(),
        ]
    );

    // Output within the bound is all kept, with no marker.
    let (reg, _) = run(json!({"command": "echo a; echo bc", "max_output_bytes": 5})).await;
    assert_eq!(lines_of(&reg, "p1", "stdout").await, vec!["a", "bc"]);
}

/// The bytes not kept are those the command wrote: a line past the length
/// cut counts whole, and a `\r` before its newline counts.
#[tokio::test]
async fn bytes_not_kept_are_counted_as_written() {
    let args = json!({
        "command": "head -c 100000 /dev/zero | tr '\\0' a; echo; printf 'b\\r\\n'; printf c",
        "max_output_bytes": 0,
    });
    let (reg, outcome) = run(args).await;
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
    let mut lines = lines_of(&reg, "p1", "stdout").await;
    let marker = lines.pop().expect("marker");
    // 100,000 bytes and a newline, `b\r\n`, and `c` with no newline.
    assert_eq!(not_kept_counts(&marker, "stdout", 0), (3, 100_001 + 3 + 1));
}

/// The bound is of both streams together; each stream that lost lines says
/// how many, and a failed exit stays the failure it is.
#[tokio::test]
async fn max_output_bytes_bounds_both_streams_together() {
    let args = json!({
        "command": "(yes out | head -n 3000) & yes err | head -n 2000 >&2; wait; exit 3",
        "max_output_bytes": 1000,
    });
    let (reg, outcome) = run(args).await;
    let raw = expect_failure(&outcome, "exit_status");
    assert_eq!(raw["exit_code"], 3);
    assert!(
        raw["stdout_tail"].as_str().expect("tail").ends_with("out\nout\n"),
        "{raw}"
    );
    assert!(
        raw["stderr_tail"].as_str().expect("tail").ends_with("err\nerr\n"),
        "{raw}"
    );

    let mut kept_bytes = 0;
    let mut notices = 0;
    for (stream, word, total) in [("stdout", "out", 3000u64), ("stderr", "err", 2000)] {
        let mut lines = lines_of(&reg, "p1", stream).await;
        let marker = lines.pop().expect("a last line");
        let (lost_lines, lost_bytes) = not_kept_counts(&marker, stream, 1000);
        notices += lines.iter().filter(|l| *l == NOTICE_1000).count();
        lines.retain(|l| l != NOTICE_1000);
        assert!(lines.iter().all(|l| l == word), "{stream}: {lines:?}");
        let kept = lines.len() as u64;
        assert_eq!(kept + lost_lines, total, "{stream}: every line kept or counted");
        assert_eq!(lost_bytes, lost_lines * 4, "{stream}");
        kept_bytes += kept * 4;
    }
    // 250 lines of 4 bytes fill the bound exactly; the notice is said once.
    assert_eq!(kept_bytes, 1000);
    assert_eq!(notices, 1);
}

/// Past the bound the output is still read as fast as it comes (the
/// command is never held up by a full pipe), to its very end.
#[tokio::test]
async fn a_command_writing_far_past_the_bound_runs_to_its_end() {
    // 50000 lines of 99 bytes and their newlines, then `END`.
    let args = json!({
        "command": format!("yes {} | head -n 50000; echo END", "x".repeat(99)),
        "max_output_bytes": 1000,
    });
    let started = Instant::now();
    let (reg, outcome) = run(args).await;
    let Outcome::Success { value } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert!(value["stdout_tail"]
        .as_str()
        .expect("tail")
        .ends_with(&format!("{}\nEND\n", "x".repeat(99))));
    let mut lines = lines_of(&reg, "p1", "stdout").await;
    let marker = lines.pop().expect("marker");
    assert_eq!(not_kept_counts(&marker, "stdout", 1000), (49_991, 49_990 * 100 + 4));
    assert_eq!(lines.pop().as_deref(), Some(NOTICE_1000));
    assert_eq!(lines, vec!["x".repeat(99); 10]);
    assert!(started.elapsed() < RUN_LIMIT);
}

/// A `max_output_bytes` that is negative, not an integer, or over 1 GiB is
/// refused at start, naming it; at run time it fails the run as bad args.
#[tokio::test]
async fn a_bad_max_output_bytes_is_refused_at_start() {
    let tool = ShellTool::default();
    for bad in [json!(-1), json!("1000"), json!(1.5), json!(true), json!(1u64 << 30 | 1)] {
        let args = json!({"command": "true", "max_output_bytes": bad});
        match tool.validate_args(&args) {
            Err(CairnError::InvalidRequest(message)) => {
                assert!(message.contains("max_output_bytes"), "{args}: {message}")
            }
            other => panic!("{args} should be invalid_request, got {other:?}"),
        }
        let (reg, outcome) = run(args.clone()).await;
        let Outcome::Failure { code, message, .. } = &outcome else {
            panic!("{args}: {outcome:?}");
        };
        assert_eq!(code, "invalid_args", "{args}");
        assert!(message.contains("max_output_bytes"), "{args}: {message}");
        assert!(output_events(&reg, "p1").await.is_empty());
    }
    for good in [0u64, 1000, 1 << 30] {
        tool.validate_args(&json!({"command": "true", "max_output_bytes": good}))
            .expect("a bound in range");
    }
}
