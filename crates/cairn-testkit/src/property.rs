//! A property test: random operation sequences against a fresh store, checking
//! after every step that
//!
//! - every record is the fold of its log and every log is gap-free (`assert_fold`),
//! - an operation that failed changed nothing,
//! - logs only grow (the old log is a prefix of the new one),
//! - a terminal process never changes again,
//! - fencing tokens never go back,
//! - the worklist only lists free or expired, claimable or reconcilable rows.

use cairn_core::events as ev;
use cairn_core::{
    AppendRequest, CairnError, Clock, Disposition, Lease, Outcome, ProcessRegistry, Registration, WorkAction,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::json;

use crate::builders::*;
use crate::harness::{snapshot, StoreSnapshot};
use crate::{StoreFactory, TestStore};

const PROCESSES: u8 = 4;

/// One random operation.
#[derive(Clone, Debug)]
pub enum Op {
    Register { p: u8, disposition: u8 },
    Append { p: u8, kind: u8, key: Option<u8>, n: u8 },
    Signal { p: u8, name: u8, id: u8 },
    Cancel { p: u8, reason: Option<u8> },
    Claim { p: u8, owner: u8, ttl: u16 },
    ClaimBatch { owner: u8, limit: u8 },
    Start { lease: u8 },
    Renew { lease: u8, ttl: u16 },
    Release { lease: u8 },
    Complete { lease: u8, outcome: u8 },
    FencedAppend { lease: u8, n: u8 },
    Advance { ms: u16 },
    RequestAbandon { p: u8 },
    Reconcile { p: u8 },
    CompleteExternal { p: u8, outcome: u8 },
    Wait { p: u8, resume: bool },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let p = 0..PROCESSES;
    prop_oneof![
        1 => (p.clone(), 0u8..3).prop_map(|(p, disposition)| Op::Register { p, disposition }),
        4 => (p.clone(), 0u8..6, proptest::option::of(0u8..3), 0u8..3)
            .prop_map(|(p, kind, key, n)| Op::Append { p, kind, key, n }),
        2 => (p.clone(), 0u8..3, 0u8..3).prop_map(|(p, name, id)| Op::Signal { p, name, id }),
        1 => (p.clone(), proptest::option::of(0u8..2)).prop_map(|(p, reason)| Op::Cancel { p, reason }),
        3 => (p.clone(), 0u8..3, 1u16..2000).prop_map(|(p, owner, ttl)| Op::Claim { p, owner, ttl }),
        2 => (0u8..3, 1u8..4).prop_map(|(owner, limit)| Op::ClaimBatch { owner, limit }),
        2 => any::<u8>().prop_map(|lease| Op::Start { lease }),
        1 => (any::<u8>(), 1u16..2000).prop_map(|(lease, ttl)| Op::Renew { lease, ttl }),
        1 => any::<u8>().prop_map(|lease| Op::Release { lease }),
        2 => (any::<u8>(), 0u8..4).prop_map(|(lease, outcome)| Op::Complete { lease, outcome }),
        2 => (any::<u8>(), 0u8..3).prop_map(|(lease, n)| Op::FencedAppend { lease, n }),
        3 => (0u16..2500).prop_map(|ms| Op::Advance { ms }),
        1 => p.clone().prop_map(|p| Op::RequestAbandon { p }),
        1 => p.clone().prop_map(|p| Op::Reconcile { p }),
        1 => (p.clone(), 0u8..4).prop_map(|(p, outcome)| Op::CompleteExternal { p, outcome }),
        1 => (p, any::<bool>()).prop_map(|(p, resume)| Op::Wait { p, resume }),
    ]
}

fn pid(p: u8) -> String {
    format!("p{p}")
}

fn registration(p: u8, disposition: u8) -> Registration {
    let id = pid(p);
    let reg = match disposition % 3 {
        0 => tool_call(&id, Disposition::Rerunnable),
        1 => tool_call(&id, Disposition::OwnerBound),
        _ => external(&id),
    };
    waking(reg, &session("s1"))
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

/// The outcome of one operation, reduced to what the checks need.
type Step = Result<(), CairnError>;

fn done<T>(r: Result<T, CairnError>) -> Step {
    r.map(|_| ())
}

struct Driver {
    store: TestStore,
    /// Every lease ever obtained (stale ones included, to exercise fencing).
    leases: Vec<Lease>,
    /// The lease the last operation presented, if any.
    used: Option<Lease>,
    /// The leases the last operation obtained.
    obtained: Vec<Lease>,
}

impl Driver {
    fn registry(&self) -> &dyn ProcessRegistry {
        self.store.registry.as_ref()
    }

    fn lease(&mut self, i: u8) -> Option<Lease> {
        if self.leases.is_empty() {
            None
        } else {
            let lease = self.leases[usize::from(i) % self.leases.len()].clone();
            self.used = Some(lease.clone());
            Some(lease)
        }
    }

    async fn apply(&mut self, op: &Op) -> Step {
        self.used = None;
        self.obtained.clear();
        let now = self.store.clock.now_ms();
        match op {
            Op::Register { p, disposition } => {
                done(self.registry().register(registration(*p, *disposition), None).await)
            }
            Op::Append { p, kind, key, n } => done(
                self.registry()
                    .append_event(&pid(*p), append_request(*kind, *key, *n))
                    .await,
            ),
            Op::Signal { p, name, id } => done(
                self.registry()
                    .append_event(
                        &pid(*p),
                        signal(&format!("sig{name}"), &format!("id{id}"), json!({"id": id})),
                    )
                    .await,
            ),
            Op::Cancel { p, reason } => done(
                self.registry()
                    .request_cancel(&pid(*p), reason.map(|r| format!("reason {r}")))
                    .await,
            ),
            Op::Claim { p, owner, ttl } => {
                let lease = self
                    .registry()
                    .claim(&pid(*p), &format!("w{owner}"), u64::from(*ttl))
                    .await?;
                self.obtained.push(lease.clone());
                self.leases.push(lease);
                Ok(())
            }
            Op::ClaimBatch { owner, limit } => {
                let claims = self
                    .registry()
                    .claim_batch(&format!("w{owner}"), 1000, usize::from(*limit))
                    .await?;
                self.obtained.extend(claims.iter().map(|c| c.lease.clone()));
                self.leases.extend(claims.into_iter().map(|c| c.lease));
                Ok(())
            }
            Op::Start { lease } => match self.lease(*lease) {
                Some(l) => done(self.registry().record_started(&l).await),
                None => Ok(()),
            },
            Op::Renew { lease, ttl } => match self.lease(*lease) {
                Some(l) => {
                    let renewed = self.registry().renew(&l, u64::from(*ttl)).await?;
                    self.leases.push(renewed);
                    Ok(())
                }
                None => Ok(()),
            },
            Op::Release { lease } => match self.lease(*lease) {
                Some(l) => done(self.registry().release(&l).await),
                None => Ok(()),
            },
            Op::Complete { lease, outcome: kind } => match self.lease(*lease) {
                Some(l) => done(self.registry().complete(&l, outcome(*kind, now, Some(&l))).await),
                None => Ok(()),
            },
            Op::FencedAppend { lease, n } => match self.lease(*lease) {
                Some(l) => done(
                    self.registry()
                        .append_event(&l.process_id, progress(u64::from(*n)).with_lease(l.clone()))
                        .await,
                ),
                None => Ok(()),
            },
            Op::Advance { ms } => {
                self.store.clock.advance(u64::from(*ms));
                Ok(())
            }
            Op::RequestAbandon { p } => done(self.registry().request_abandon(&pid(*p), "prop", "random").await),
            Op::Reconcile { p } => done(self.registry().reconcile_abandon(&pid(*p)).await),
            Op::CompleteExternal { p, outcome: kind } => done(
                self.registry()
                    .complete_external(&pid(*p), outcome(*kind, now, None), "prop")
                    .await,
            ),
            Op::Wait { p, resume } => {
                let req = if *resume {
                    AppendRequest::new(ev::RESUMED, json!({}))
                } else {
                    AppendRequest::new(ev::WAITING, json!({"kind": "signal", "name": "sig0", "ordinal": 1}))
                };
                done(self.registry().append_event(&pid(*p), req).await)
            }
        }
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
            panic!("{op:?}: process `{id}` disappeared");
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
            Op::Start { .. } | Op::Renew { .. } | Op::Complete { .. } | Op::FencedAppend { .. }
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

async fn run_case(factory: &dyn StoreFactory, (dispositions, ops): &Case) {
    let clock = cairn_core::ManualClock::new(crate::harness::START_MS);
    let store = factory.create(clock).await;
    let mut driver = Driver {
        store,
        leases: Vec::new(),
        used: None,
        obtained: Vec::new(),
    };
    for (p, d) in dispositions.iter().enumerate() {
        let p = u8::try_from(p).unwrap_or(u8::MAX);
        if let Err(e) = driver.registry().register(registration(p, *d), None).await {
            panic!("initial register of p{p}: {e}");
        }
    }
    let mut before = snapshot(driver.registry()).await;
    for op in ops {
        let now = driver.store.clock.now_ms();
        let step = driver.apply(op).await;
        let after = snapshot(driver.registry()).await;
        check_step(op, &step, &before, &after);
        check_leases(op, &driver, &step, &before, now);
        check_worklist(driver.registry(), driver.store.clock.now_ms(), op).await;
        before = after;
    }
}

/// Run `cases` random sequences of up to 30 operations, each on a fresh store.
///
/// # Panics
/// With the smallest failing sequence found, when a case breaks an invariant.
pub fn random_operation_sequences_with(factory: &dyn StoreFactory, cases: u32) {
    let config = Config {
        cases,
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
            runtime.block_on(run_case(factory, &case));
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

/// [`random_operation_sequences_with`] 64 cases.
pub fn random_operation_sequences(factory: &dyn StoreFactory) {
    random_operation_sequences_with(factory, 64);
}

/// The strategy of cases: 4 initially registered processes (by disposition
/// index) and 1 to 30 operations.
pub fn case_strategy() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(0u8..3, usize::from(PROCESSES)),
        proptest::collection::vec(op_strategy(), 1..=30),
    )
}
