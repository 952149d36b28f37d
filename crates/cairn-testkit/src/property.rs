//! A property test: random operation sequences against a fresh store and,
//! beside it, a reference model (the memory registry on the same clock).
//!
//! Every operation runs on both and the answers must agree (normalising what
//! legitimately differs: lease tokens, change-feed cursors, the order of a
//! worklist, and which candidates a partial claim batch takes, so batches claim
//! them all); after every step the two stores' whole state must agree too
//! (records, logs, fencing tokens, pending wakes, grants, the worklist, and the
//! records the change feed lists after the step's start). So an operation
//! that answers `Ok` and does nothing, or does something else, fails. On the
//! store under test it also checks, after every step, that
//!
//! - every record is the fold of its log and every log is gap-free (`assert_fold`),
//! - an operation that failed changed nothing,
//! - logs only grow (the old log is a prefix of the new one), and only a prune
//!   removes a process, a terminal one,
//! - a terminal process never changes again,
//! - fencing tokens never go back,
//! - the worklist only lists free or expired, claimable or reconcilable rows.
//!
//! The operations cover registration (new ids, repeats, conflicts, with an env
//! and a grant), appends, signals, waits under a lease (suspensions, woken by
//! signals, deadlines and cancellation) and resumptions, cancellation, claims, leases, abandon,
//! external completion, grants, revoke, transfer, delete_session, prune, wakes
//! and their acks, and envs. The memory registry itself runs the invariants
//! alone ([`Property::reference`] off): against itself the comparison proves nothing.
//!
//! Why one file past 800 lines: the operation generator, the reference
//! comparison and the invariants share one model of a step; split apart they
//! would have to agree on it across files.

use cairn_core::{
    AppendRequest, CairnError, Clock, Disposition, EnvRef, EnvSpec, GrantDescriptor, Lease, MemoryRegistry, Outcome,
    ProcessRegistry, Registration, SessionScope, StartGrant, StatusFilter, Watermark, WorkAction,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde::Serialize;
use serde_json::{json, Value};

use crate::builders::*;
use crate::harness::{snapshot, StoreSnapshot};
use crate::{StoreFactory, TestStore};

/// Processes registered before the operations run.
const PROCESSES: u8 = 4;
/// Process ids the operations name: the initial ones and two new ones.
const IDS: u8 = PROCESSES + 2;
/// Claim batches ask for more than every process: which candidates a smaller
/// batch takes is the backend's choice (memory takes ids in order, SQLite and
/// PostgreSQL by claimable time), so only a batch that takes them all is
/// comparable. The contracts pin the bound itself.
const CLAIM_ALL: usize = 16;

/// How [`random_operation_sequences_with`] runs.
#[derive(Clone, Copy, Debug)]
pub struct Property {
    /// Random sequences to run, each on a fresh store.
    pub cases: u32,
    /// Compare every answer and every state with the memory registry.
    pub reference: bool,
}

impl Default for Property {
    /// 64 cases against the memory reference.
    fn default() -> Self {
        Self {
            cases: 64,
            reference: true,
        }
    }
}

/// One random operation. `p` picks a process id (`p0`..`p5`; `p4` and `p5`
/// start unregistered), `s` a session (`s1`..`s3`, or `s9` that holds nothing),
/// `scope` a session or frame scope, `lease` one of the leases obtained so far.
#[derive(Clone, Debug)]
pub enum Op {
    Register {
        p: u8,
        disposition: u8,
        env: Option<u8>,
        grant: Option<u8>,
    },
    Append {
        p: u8,
        kind: u8,
        key: Option<u8>,
        n: u8,
    },
    Signal {
        p: u8,
        name: u8,
        id: u8,
    },
    Cancel {
        p: u8,
        reason: Option<u8>,
    },
    Claim {
        p: u8,
        owner: u8,
        ttl: u16,
    },
    ClaimBatch {
        owner: u8,
    },
    Start {
        lease: u8,
    },
    Renew {
        lease: u8,
        ttl: u16,
    },
    Release {
        lease: u8,
    },
    Complete {
        lease: u8,
        outcome: u8,
    },
    FencedAppend {
        lease: u8,
        n: u8,
    },
    Advance {
        ms: u16,
    },
    RequestAbandon {
        p: u8,
    },
    Reconcile {
        p: u8,
    },
    CompleteExternal {
        p: u8,
        outcome: u8,
    },
    /// Record a wait under a lease (a rerunnable one suspends): for signal
    /// `sig0`, without or with a deadline, or a timer.
    Wait {
        lease: u8,
        kind: u8,
    },
    /// End the wait of a run that holds its lease (`process.resumed`).
    Resume {
        lease: u8,
    },
    Grant {
        p: u8,
        scope: u8,
    },
    Revoke {
        p: u8,
        scope: u8,
    },
    Transfer {
        from: u8,
        to: u8,
        ps: Vec<u8>,
    },
    DeleteSession {
        s: u8,
    },
    Prune {
        status: u8,
        held: bool,
    },
    AckWake {
        s: u8,
        wake: u8,
    },
    PutEnv {
        n: u8,
    },
    GetEnv {
        n: u8,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let p = 0..IDS;
    prop_oneof![
        2 => (p.clone(), 0u8..3, proptest::option::of(0u8..3), proptest::option::of(0u8..4))
            .prop_map(|(p, disposition, env, grant)| Op::Register { p, disposition, env, grant }),
        4 => (p.clone(), 0u8..6, proptest::option::of(0u8..3), 0u8..3)
            .prop_map(|(p, kind, key, n)| Op::Append { p, kind, key, n }),
        2 => (p.clone(), 0u8..3, 0u8..3).prop_map(|(p, name, id)| Op::Signal { p, name, id }),
        1 => (p.clone(), proptest::option::of(0u8..2)).prop_map(|(p, reason)| Op::Cancel { p, reason }),
        3 => (p.clone(), 0u8..3, 1u16..2000).prop_map(|(p, owner, ttl)| Op::Claim { p, owner, ttl }),
        2 => (0u8..3).prop_map(|owner| Op::ClaimBatch { owner }),
        2 => any::<u8>().prop_map(|lease| Op::Start { lease }),
        1 => (any::<u8>(), 1u16..2000).prop_map(|(lease, ttl)| Op::Renew { lease, ttl }),
        1 => any::<u8>().prop_map(|lease| Op::Release { lease }),
        2 => (any::<u8>(), 0u8..4).prop_map(|(lease, outcome)| Op::Complete { lease, outcome }),
        2 => (any::<u8>(), 0u8..3).prop_map(|(lease, n)| Op::FencedAppend { lease, n }),
        3 => (0u16..2500).prop_map(|ms| Op::Advance { ms }),
        1 => p.clone().prop_map(|p| Op::RequestAbandon { p }),
        1 => p.clone().prop_map(|p| Op::Reconcile { p }),
        1 => (p.clone(), 0u8..4).prop_map(|(p, outcome)| Op::CompleteExternal { p, outcome }),
        3 => (any::<u8>(), 0u8..3).prop_map(|(lease, kind)| Op::Wait { lease, kind }),
        1 => any::<u8>().prop_map(|lease| Op::Resume { lease }),
        2 => (p.clone(), 0u8..4).prop_map(|(p, scope)| Op::Grant { p, scope }),
        1 => (p.clone(), 0u8..4).prop_map(|(p, scope)| Op::Revoke { p, scope }),
        1 => (0u8..4, 0u8..4, proptest::collection::vec(p.clone(), 0..4))
            .prop_map(|(from, to, ps)| Op::Transfer { from, to, ps }),
        1 => (0u8..4).prop_map(|s| Op::DeleteSession { s }),
        1 => (0u8..4, any::<bool>()).prop_map(|(status, held)| Op::Prune { status, held }),
        2 => (0u8..4, any::<u8>()).prop_map(|(s, wake)| Op::AckWake { s, wake }),
        1 => (0u8..3).prop_map(|n| Op::PutEnv { n }),
        1 => (0u8..4).prop_map(|n| Op::GetEnv { n }),
    ]
}

fn pid(p: u8) -> String {
    format!("p{p}")
}

/// `s1`, `s2`, `s3`, and `s9`, a session nothing names.
fn session_id(s: u8) -> String {
    match s % 4 {
        3 => "s9".to_string(),
        s => format!("s{}", s + 1),
    }
}

/// The sessions `s1`..`s3` and the frame `s1/f1`.
fn scope(i: u8) -> SessionScope {
    match i % 4 {
        3 => SessionScope::frame("s1", "f1"),
        s => session(&format!("s{}", s + 1)),
    }
}

fn env_spec(n: u8) -> EnvSpec {
    EnvSpec {
        plugin_options: json!({ "n": n }),
        policy: json!({}),
    }
}

/// An env address never stored (well formed, so it is `unknown_env`).
const UNKNOWN_ENV: &str = "process-env:sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// `p` with disposition `disposition`, started by session `s1` and waking it.
/// The initial processes use one disposition; registering another is a conflict.
fn registration(p: u8, disposition: u8) -> Registration {
    let id = pid(p);
    let reg = match disposition % 3 {
        0 => tool_call(&id, Disposition::Rerunnable),
        1 => tool_call(&id, Disposition::OwnerBound),
        _ => external(&id),
    };
    waking(originated_by(reg, &session("s1")), &session("s1"))
}

fn outcome(kind: u8, now: u64, lease: Option<&Lease>) -> Outcome {
    match kind % 4 {
        0 => Outcome::success(json!({"ok": true})),
        1 => Outcome::failure("tool", "exit_status", "exit 1"),
        2 => Outcome::cancelled("stopped"),
        _ => Outcome::Abandoned {
            evidence: cairn_core::AbandonEvidence {
                writer: cairn_core::AbandonWriter::OwnerDrain,
                owner: lease.map(Lease::owner),
                epoch_ms: now,
            },
        },
    }
}

fn append_request(kind: u8, key: Option<u8>, n: u8) -> AppendRequest {
    let req = match kind {
        0 => progress(u64::from(n)),
        1 => note(json!({"n": n})),
        2 => notify(&format!("wake {n}")),
        3 => AppendRequest::new(PROGRESS, json!({"n": "not a number"})),
        4 => AppendRequest::new(FINISHED, json!({"result": n})),
        _ => AppendRequest::new("undeclared", json!({})),
    };
    match key {
        Some(k) => req.with_replay_key(format!("key-{k}")),
        None => req,
    }
}

/// JSON of `value` with what legitimately differs between backends blanked:
/// lease tokens (random per claim) and change-feed cursors (each backend
/// numbers its feed its own way; the order of the feed is compared instead).
fn normalized<T: Serialize>(value: &T) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    match k.as_str() {
                        "lease_token" => *child = json!("<token>"),
                        "cursor" | "next_cursor" => *child = json!("<cursor>"),
                        _ => walk(child),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(value).unwrap_or_else(|e| panic!("serialize an answer: {e}"));
    walk(&mut v);
    v
}

/// One backend's answer to one operation: the normalised value or the error,
/// and the leases it obtained.
struct Reply {
    answer: Result<Value, CairnError>,
    leases: Vec<Lease>,
}

impl Reply {
    fn of<T: Serialize>(r: Result<T, CairnError>) -> Self {
        Self {
            answer: r.map(|v| normalized(&v)),
            leases: Vec::new(),
        }
    }

    fn nothing() -> Self {
        Self {
            answer: Ok(Value::Null),
            leases: Vec::new(),
        }
    }
}

/// What an operation may name beside its own arguments.
struct Context<'a> {
    /// The lease of the operation's backend, if the operation presents one.
    lease: Option<&'a Lease>,
    /// Env addresses stored so far.
    envs: &'a [EnvRef],
    /// Pending wake ids per session, before the step.
    wakes: &'a [(String, String)],
    now: u64,
}

/// Run `op` on `registry`.
async fn call(registry: &dyn ProcessRegistry, op: &Op, cx: &Context<'_>) -> Reply {
    let env_ref = |n: u8| {
        if cx.envs.is_empty() {
            UNKNOWN_ENV.to_string()
        } else {
            cx.envs[usize::from(n) % cx.envs.len()].clone()
        }
    };
    match op {
        Op::Register {
            p,
            disposition,
            env,
            grant,
        } => {
            let mut reg = registration(*p, *disposition);
            reg.env_ref = env.map(env_ref);
            let grant = grant.map(|g| StartGrant {
                session_scope: scope(g),
                descriptor: descriptor("tool", &format!("start {g}")),
            });
            Reply::of(registry.register(reg, grant).await)
        }
        Op::Append { p, kind, key, n } => {
            Reply::of(registry.append_event(&pid(*p), append_request(*kind, *key, *n)).await)
        }
        Op::Signal { p, name, id } => Reply::of(
            registry
                .append_event(
                    &pid(*p),
                    signal(&format!("sig{name}"), &format!("id{id}"), json!({"id": id})),
                )
                .await,
        ),
        Op::Cancel { p, reason } => Reply::of(
            registry
                .request_cancel(&pid(*p), reason.map(|r| format!("reason {r}")))
                .await,
        ),
        Op::Claim { p, owner, ttl } => match registry.claim(&pid(*p), &format!("w{owner}"), u64::from(*ttl)).await {
            Ok(lease) => Reply {
                answer: Ok(normalized(&lease)),
                leases: vec![lease],
            },
            Err(e) => Reply::of::<()>(Err(e)),
        },
        Op::ClaimBatch { owner } => match registry.claim_batch(&format!("w{owner}"), 1000, CLAIM_ALL).await {
            Ok(mut claims) => {
                claims.sort_by(|a, b| a.lease.process_id.cmp(&b.lease.process_id));
                Reply {
                    answer: Ok(normalized(&claims)),
                    leases: claims.into_iter().map(|c| c.lease).collect(),
                }
            }
            Err(e) => Reply::of::<()>(Err(e)),
        },
        Op::Start { .. } => match cx.lease {
            Some(l) => Reply::of(registry.record_started(l).await),
            None => Reply::nothing(),
        },
        Op::Renew { ttl, .. } => match cx.lease {
            Some(l) => match registry.renew(l, u64::from(*ttl)).await {
                Ok(renewed) => Reply {
                    answer: Ok(normalized(&renewed)),
                    leases: vec![renewed],
                },
                Err(e) => Reply::of::<()>(Err(e)),
            },
            None => Reply::nothing(),
        },
        Op::Release { .. } => match cx.lease {
            Some(l) => Reply::of(registry.release(l).await),
            None => Reply::nothing(),
        },
        Op::Complete { outcome: kind, .. } => match cx.lease {
            Some(l) => Reply::of(registry.complete(l, outcome(*kind, cx.now, Some(l))).await),
            None => Reply::nothing(),
        },
        Op::FencedAppend { n, .. } => match cx.lease {
            Some(l) => Reply::of(
                registry
                    .append_event(&l.process_id, progress(u64::from(*n)).with_lease(l.clone()))
                    .await,
            ),
            None => Reply::nothing(),
        },
        Op::Advance { .. } => Reply::nothing(),
        Op::RequestAbandon { p } => Reply::of(registry.request_abandon(&pid(*p), "prop", "random").await),
        Op::Reconcile { p } => Reply::of(registry.reconcile_abandon(&pid(*p)).await),
        Op::CompleteExternal { p, outcome: kind } => Reply::of(
            registry
                .complete_external(&pid(*p), outcome(*kind, cx.now, None), "prop")
                .await,
        ),
        Op::Wait { kind, .. } => match cx.lease {
            Some(l) => {
                // The wait has seen the log as it stands (both stores agree on it).
                let seen = match registry.get(&l.process_id).await {
                    Ok(r) => r.last_sequence,
                    Err(e) => return Reply::of::<()>(Err(e)),
                };
                let wait = match kind {
                    0 => cairn_core::WaitRequest::signal("sig0", 1, None),
                    1 => cairn_core::WaitRequest::signal("sig0", 1, Some(cx.now + 500)),
                    _ => cairn_core::WaitRequest::timer(1, cx.now + 500),
                };
                Reply::of(registry.wait(l, wait, seen).await)
            }
            None => Reply::nothing(),
        },
        Op::Resume { .. } => match cx.lease {
            Some(l) => Reply::of(registry.resume(l, json!({"kind": "signal", "reason": "signal"})).await),
            None => Reply::nothing(),
        },
        Op::Grant { p, scope: g } => Reply::of(registry.grant(&scope(*g), &pid(*p), GrantDescriptor::default()).await),
        Op::Revoke { p, scope: g } => Reply::of(registry.revoke(&scope(*g), &pid(*p)).await),
        Op::Transfer { from, to, ps } => {
            let ids: Vec<String> = ps.iter().map(|p| pid(*p)).collect();
            Reply::of(registry.transfer(&scope(*from), &scope(*to), &ids).await)
        }
        Op::DeleteSession { s } => Reply::of(registry.delete_session(&session_id(*s)).await),
        Op::Prune { status, held } => {
            let status = match status % 4 {
                0 => StatusFilter::Any,
                1 => StatusFilter::Completed,
                2 => StatusFilter::Failed,
                _ => StatusFilter::Running,
            };
            // A projector at cursor 0 has seen nothing, on every backend.
            let watermark = if *held {
                Watermark::Cursor { cursor: 0 }
            } else {
                Watermark::NoProjector
            };
            Reply::of(registry.prune(cx.now, status.into(), watermark).await)
        }
        Op::AckWake { s, wake } => {
            let session = session_id(*s);
            let ids: Vec<&String> = cx
                .wakes
                .iter()
                .filter(|(of, _)| *of == session)
                .map(|(_, id)| id)
                .collect();
            let wake_id = if ids.is_empty() || usize::from(*wake) % 4 == 3 {
                // A wake of another session, or none at all.
                cx.wakes
                    .first()
                    .map_or_else(|| "wake:none".to_string(), |(_, id)| id.clone())
            } else {
                ids[usize::from(*wake) % ids.len()].clone()
            };
            Reply::of(registry.ack_wake(&session, &wake_id).await)
        }
        Op::PutEnv { n } => Reply::of(registry.put_env(&env_spec(*n)).await),
        Op::GetEnv { n } => {
            let env = if usize::from(*n) >= cx.envs.len() {
                UNKNOWN_ENV.to_string()
            } else {
                env_ref(*n)
            };
            Reply::of(registry.get_env(&env).await)
        }
    }
}

/// The outcome of one operation on the store under test, for the invariant checks.
type Step = Result<(), CairnError>;

struct Driver {
    store: TestStore,
    /// The reference model on the store's clock, when comparing.
    model: Option<MemoryRegistry>,
    /// Every lease ever obtained, stale ones included (to exercise fencing):
    /// the store's, and the model's for the same claim.
    leases: Vec<(Lease, Option<Lease>)>,
    /// Env addresses stored so far.
    envs: Vec<EnvRef>,
    /// The store's lease the last operation presented, if any.
    used: Option<Lease>,
    /// The store's leases the last operation obtained by a claim.
    obtained: Vec<Lease>,
}

impl Driver {
    fn registry(&self) -> &dyn ProcessRegistry {
        self.store.registry.as_ref()
    }

    fn lease_index(&self, op: &Op) -> Option<usize> {
        let i = match op {
            Op::Start { lease }
            | Op::Renew { lease, .. }
            | Op::Release { lease }
            | Op::Complete { lease, .. }
            | Op::FencedAppend { lease, .. }
            | Op::Wait { lease, .. }
            | Op::Resume { lease } => *lease,
            _ => return None,
        };
        (!self.leases.is_empty()).then(|| usize::from(i) % self.leases.len())
    }

    async fn apply(&mut self, op: &Op, before: &StoreSnapshot) -> Step {
        self.used = None;
        self.obtained.clear();
        if let Op::Advance { ms } = op {
            self.store.clock.advance(u64::from(*ms));
            return Ok(());
        }
        let now = self.store.clock.now_ms();
        let wakes: Vec<(String, String)> = before
            .pending_wakes
            .iter()
            .map(|w| (w.target_session_id.clone(), w.wake_id.clone()))
            .collect();
        let pair = self.lease_index(op).map(|i| self.leases[i].clone());
        self.used = pair.as_ref().map(|(l, _)| l.clone());
        let cx = Context {
            lease: pair.as_ref().map(|(l, _)| l),
            envs: &self.envs,
            wakes: &wakes,
            now,
        };
        let got = call(self.registry(), op, &cx).await;
        if let Some(model) = &self.model {
            let cx = Context {
                lease: pair.as_ref().and_then(|(_, m)| m.as_ref()),
                ..cx
            };
            let expected = call(model, op, &cx).await;
            match (&got.answer, &expected.answer) {
                (Ok(a), Ok(b)) => {
                    if let Some(diff) = first_difference(a, b, "answer") {
                        panic!("{op:?}: the store and the memory reference answer differently: {diff}");
                    }
                }
                (Err(a), Err(b)) => assert_eq!(
                    a.code(),
                    b.code(),
                    "{op:?}: the store fails with `{a}`, the memory reference with `{b}`"
                ),
                (a, b) => panic!("{op:?}: the store answers {a:?}, the memory reference {b:?}"),
            }
            let mut theirs = expected.leases.into_iter();
            for lease in &got.leases {
                self.leases.push((lease.clone(), theirs.next()));
            }
        } else {
            self.leases.extend(got.leases.iter().map(|l| (l.clone(), None)));
        }
        // A renewal keeps its lease's fencing token; only claims obtain new ones.
        if matches!(op, Op::Claim { .. } | Op::ClaimBatch { .. }) {
            self.obtained.clone_from(&got.leases);
        }
        if let (Op::PutEnv { .. }, Ok(Value::String(env))) = (op, &got.answer) {
            if !self.envs.contains(env) {
                self.envs.push(env.clone());
            }
        }
        got.answer.map(|_| ())
    }
}

/// The whole state in `snap` as comparable JSON: every record with its log
/// and fencing token, and the pending wakes and grants of every session.
fn state(snap: &StoreSnapshot) -> Value {
    let processes: Vec<Value> = snap
        .processes
        .iter()
        .map(|(f, fencing)| json!({"record": normalized(&f.record), "events": normalized(&f.events), "fencing": fencing}))
        .collect();
    json!({
        "processes": processes,
        "pending_wakes": normalized(&snap.pending_wakes),
        "grants": normalized(&snap.grants),
    })
}

/// The records the change feed lists after `cursor`, sorted by id (the order
/// of changes one operation made together is the backend's), and the cursor to
/// read on from.
async fn feed_after(registry: &dyn ProcessRegistry, mut cursor: u64) -> (Vec<Value>, u64) {
    let mut changed = Vec::new();
    loop {
        let page = match registry.changed_since(cursor, Some(cairn_core::MAX_PAGE_SIZE)).await {
            Ok(page) => page,
            Err(e) => panic!("changed_since({cursor}) failed: {e}"),
        };
        if page.changes.is_empty() {
            break;
        }
        cursor = page.next_cursor;
        changed.extend(page.changes.into_iter().map(|c| c.process));
    }
    changed.sort_by(|a, b| a.id.cmp(&b.id));
    (changed.iter().map(normalized).collect(), cursor)
}

/// Where `a` and `b` first differ: a JSON path and both values there.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{path}.{k}: store {v}, reference has none")),
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{path}.{k}: store has none, reference {}", y[k]))
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                let at = match v.get("id").or_else(|| v.get("process_id")) {
                    Some(id) => format!("{path}[{i} {id}]"),
                    None => format!("{path}[{i}]"),
                };
                if let Some(d) = first_difference(v, w, &at) {
                    return Some(d);
                }
            }
            (x.len() != y.len()).then(|| format!("{path}: store has {} items, reference {}", x.len(), y.len()))
        }
        _ => (a != b).then(|| format!("{path}: store {a}, reference {b}")),
    }
}

fn check_step(op: &Op, step: &Step, before: &StoreSnapshot, after: &StoreSnapshot) {
    if let Err(e) = step {
        assert!(e.is_client_error(), "{op:?}: a store error: {e}");
        assert_eq!(before, after, "{op:?} failed with `{}` but changed the store", e.code());
        return;
    }
    for (old, old_fence) in &before.processes {
        let id = &old.record.id;
        let Some((new, new_fence)) = after.processes.iter().find(|(f, _)| &f.record.id == id) else {
            assert!(
                matches!(op, Op::Prune { .. }) && old.record.is_terminal(),
                "{op:?}: process `{id}` disappeared"
            );
            continue;
        };
        assert!(new_fence >= old_fence, "{op:?}: fencing token of `{id}` went back");
        assert!(
            new.events.len() >= old.events.len() && new.events[..old.events.len()] == old.events[..],
            "{op:?}: the log of `{id}` was rewritten"
        );
        if old.record.is_terminal() {
            assert_eq!(&new.record, &old.record, "{op:?}: terminal `{id}` changed");
            assert_eq!(
                new.events.len(),
                old.events.len(),
                "{op:?}: appended to terminal `{id}`"
            );
        }
    }
}

/// Lease oracles, judged on the state before the step: a lease that was not the
/// live one never renews, completes, starts or appends; a new lease has a fencing
/// token above every earlier one of its process and was never taken from another
/// owner's live lease.
fn check_leases(op: &Op, driver: &Driver, step: &Step, before: &StoreSnapshot, now: u64) {
    let find = |id: &str| before.processes.iter().find(|(f, _)| f.record.id == id);
    if let Some(used) = &driver.used {
        let live = find(&used.process_id).is_some_and(|(f, _)| {
            f.record.lease.as_ref().is_some_and(|l| {
                l.owner_id == used.owner_id && l.fencing_token == used.fencing_token && l.expires_at_ms > now
            })
        });
        let presents_authority = matches!(
            op,
            Op::Start { .. }
                | Op::Renew { .. }
                | Op::Complete { .. }
                | Op::FencedAppend { .. }
                | Op::Wait { .. }
                | Op::Resume { .. }
        );
        if presents_authority && !live {
            assert!(step.is_err(), "{op:?}: a lease that is not the live one was accepted");
        }
    }
    for lease in &driver.obtained {
        let Some((f, fencing)) = find(&lease.process_id) else {
            panic!("{op:?}: claimed unknown `{}`", lease.process_id);
        };
        assert!(
            lease.fencing_token > *fencing,
            "{op:?}: fencing token {} of `{}` is not above {fencing}",
            lease.fencing_token,
            lease.process_id
        );
        let held_by_other = f
            .record
            .lease
            .as_ref()
            .is_some_and(|l| l.owner_id != lease.owner_id && l.expires_at_ms > now);
        assert!(!held_by_other, "{op:?}: took `{}` from a live lease", lease.process_id);
        assert!(
            !f.record.is_terminal(),
            "{op:?}: claimed terminal `{}`",
            lease.process_id
        );
        assert_ne!(
            f.record.disposition,
            Disposition::ExternallyOwned,
            "{op:?}: claimed external `{}`",
            lease.process_id
        );
    }
}

async fn check_worklist(registry: &dyn ProcessRegistry, now: u64, op: &Op) {
    let items = match registry.worklist(100).await {
        Ok(items) => items,
        Err(e) => panic!("{op:?}: worklist failed: {e}"),
    };
    let mut abandon = match registry.abandon_worklist(100).await {
        Ok(ids) => ids,
        Err(e) => panic!("{op:?}: abandon_worklist failed: {e}"),
    };
    abandon.sort();
    let mut reconcile: Vec<String> = items
        .iter()
        .filter(|i| i.action == WorkAction::ReconcileAbandon)
        .map(|i| i.process_id.clone())
        .collect();
    reconcile.sort();
    assert_eq!(
        abandon, reconcile,
        "{op:?}: the abandon worklist is the worklist's reconcile items"
    );
    for item in items {
        let rec = match registry.get(&item.process_id).await {
            Ok(r) => r,
            Err(e) => panic!("{op:?}: worklist lists unreadable `{}`: {e}", item.process_id),
        };
        assert!(!rec.is_terminal(), "{op:?}: worklist lists terminal `{}`", rec.id);
        assert!(
            !rec.has_live_lease(now),
            "{op:?}: worklist lists live-leased `{}`",
            rec.id
        );
        match item.action {
            WorkAction::Run => {
                assert!(
                    rec.abandon_request.is_none(),
                    "{op:?}: `{}` should be reconciled",
                    rec.id
                );
                assert_ne!(
                    rec.disposition,
                    Disposition::ExternallyOwned,
                    "{op:?}: runs external `{}`",
                    rec.id
                );
                assert!(
                    rec.disposition != Disposition::OwnerBound || rec.started.is_none(),
                    "{op:?}: reruns started owner-bound `{}`",
                    rec.id
                );
            }
            WorkAction::ReconcileAbandon => {
                assert!(
                    rec.abandon_request.is_some(),
                    "{op:?}: nothing to reconcile on `{}`",
                    rec.id
                )
            }
        }
    }
}

/// One case: the disposition each process starts with, then the operations.
pub type Case = (Vec<u8>, Vec<Op>);

/// How long one case may take before it fails as hung.
const CASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn run_case(factory: &dyn StoreFactory, reference: bool, (dispositions, ops): &Case) {
    let clock = cairn_core::ManualClock::new(crate::harness::START_MS);
    let model = reference.then(|| MemoryRegistry::with_clock(std::sync::Arc::new(clock.clone())));
    let store = factory.create(clock).await;
    let mut driver = Driver {
        store,
        model,
        leases: Vec::new(),
        envs: Vec::new(),
        used: None,
        obtained: Vec::new(),
    };
    for (p, d) in dispositions.iter().enumerate() {
        let p = u8::try_from(p).unwrap_or(u8::MAX);
        let grant = Some(StartGrant {
            session_scope: session("s1"),
            descriptor: descriptor("tool", "initial"),
        });
        if let Err(e) = driver.registry().register(registration(p, *d), grant.clone()).await {
            panic!("initial register of p{p}: {e}");
        }
        if let Some(model) = &driver.model {
            if let Err(e) = model.register(registration(p, *d), grant).await {
                panic!("initial register of p{p} in the reference: {e}");
            }
        }
    }
    let mut before = snapshot(driver.registry()).await;
    // How far each backend's change feed has been compared (store, reference).
    let mut heads = (0, 0);
    for (i, op) in ops.iter().enumerate() {
        let now = driver.store.clock.now_ms();
        let step = driver.apply(op, &before).await;
        let after = snapshot(driver.registry()).await;
        check_step(op, &step, &before, &after);
        check_leases(op, &driver, &step, &before, now);
        check_worklist(driver.registry(), driver.store.clock.now_ms(), op).await;
        if let Some(model) = &driver.model {
            let expected = snapshot(model).await;
            if let Some(diff) = first_difference(&state(&after), &state(&expected), "state") {
                panic!("step {i}, {op:?}: the store's state differs from the memory reference's: {diff}");
            }
            let (ours, head) = feed_after(driver.registry(), heads.0).await;
            let (theirs, model_head) = feed_after(model, heads.1).await;
            heads = (head, model_head);
            if let Some(diff) = first_difference(&json!(ours), &json!(theirs), "changed") {
                panic!("step {i}, {op:?}: the change feed differs from the memory reference's: {diff}");
            }
            let mut worklists = Vec::new();
            for registry in [driver.registry(), model as &dyn ProcessRegistry] {
                let mut items = match registry.worklist(100).await {
                    Ok(items) => items,
                    Err(e) => panic!("{op:?}: worklist failed: {e}"),
                };
                // The worklist's order is not part of the contract, its content is.
                items.sort_by(|a, b| a.process_id.cmp(&b.process_id));
                worklists.push(normalized(&items));
            }
            assert_eq!(worklists[0], worklists[1], "{op:?}: the worklists differ");
        }
        before = after;
    }
}

/// Run `property.cases` random sequences of up to 30 operations, each on a
/// fresh store (and a fresh reference model when `property.reference`).
///
/// # Panics
/// With the smallest failing sequence found, when a case breaks an invariant
/// or disagrees with the reference.
pub fn random_operation_sequences_with(factory: &dyn StoreFactory, property: Property) {
    let config = Config {
        cases: property.cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case_strategy(), |case| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(format!("build a tokio runtime: {e}")))?;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                if tokio::time::timeout(CASE_TIMEOUT, run_case(factory, property.reference, &case))
                    .await
                    .is_err()
                {
                    panic!("the case did not finish within {CASE_TIMEOUT:?}: it hangs");
                }
            });
        }));
        outcome.map_err(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            TestCaseError::fail(message)
        })
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, case)) => panic!("property failed: {reason}\nminimal case: {case:#?}"),
        Err(e) => panic!("property test aborted: {e}"),
    }
}

/// [`random_operation_sequences_with`] the default [`Property`]: 64 cases
/// against the memory reference.
pub fn random_operation_sequences(factory: &dyn StoreFactory) {
    random_operation_sequences_with(factory, Property::default());
}

/// The strategy of cases: 4 initially registered processes (by disposition
/// index) and 1 to 30 operations.
pub fn case_strategy() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(0u8..3, usize::from(PROCESSES)),
        proptest::collection::vec(op_strategy(), 1..=30),
    )
}
