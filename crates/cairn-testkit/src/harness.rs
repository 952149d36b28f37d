//! Assertions shared by the contracts: the fold invariant, error codes, and
//! "an error changed nothing" snapshots.
//!
//! These helpers panic with a descriptive message when a backend breaks a
//! contract; that is how the suite reports failures.

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use cairn_core::{
    AppendRequest, AppendResult, CairnError, GrantedProcess, Lease, ManualClock, ProcessEvent, ProcessFilter,
    ProcessRecord, ProcessRegistry, Registration, Result, SessionScope, StartGrant, WakeDelivery, MAX_PAGE_SIZE,
};

use crate::{StoreFactory, TestStore};

/// The clock time every store starts at.
pub const START_MS: u64 = 1_700_000_000_000;

/// The session ids the contracts use; snapshots include their pending wakes.
pub const SESSIONS: &[&str] = &["s1", "s2", "s3"];

/// Page size `assert_fold` reads the log with (small, to exercise paging).
const FOLD_PAGE: usize = 7;

/// A record with its whole log, checked against each other.
#[derive(Clone, Debug, PartialEq)]
pub struct Folded {
    pub record: ProcessRecord,
    pub events: Vec<ProcessEvent>,
}

impl Folded {
    /// The event types of the log, in order.
    pub fn types(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.event_type.as_str()).collect()
    }
}

/// Read the whole log of `id` through `events_after` (paging) and check it against
/// the record: sequences are exactly `1..=last_sequence`, every event belongs to
/// `id`, replay keys are unique, and `cairn_core::fold::check_fold` holds.
///
/// # Panics
/// When the process cannot be read or any of the above does not hold.
pub async fn assert_fold(registry: &dyn ProcessRegistry, id: &str) -> Folded {
    let record = match registry.get(id).await {
        Ok(r) => r,
        Err(e) => panic!("assert_fold: get `{id}` failed: {e} ({})", e.code()),
    };
    let mut events: Vec<ProcessEvent> = Vec::new();
    let mut after = 0u64;
    loop {
        let page = match registry.events_after(id, after, Some(FOLD_PAGE)).await {
            Ok(p) => p,
            Err(e) => panic!("assert_fold: events_after(`{id}`, {after}) failed: {e} ({})", e.code()),
        };
        assert!(
            page.events.len() <= FOLD_PAGE,
            "events_after(`{id}`, {after}, {FOLD_PAGE}) returned {} events",
            page.events.len()
        );
        for (i, e) in page.events.iter().enumerate() {
            let expected = after + 1 + i as u64;
            assert_eq!(
                e.sequence, expected,
                "process `{id}`: event sequences must be gap-free and ordered (after {after})"
            );
            assert_eq!(e.process_id, id, "process `{id}`: event of another process in its log");
        }
        let last = page.events.last().map(|e| e.sequence);
        events.extend(page.events);
        match page.next_after {
            None => break,
            Some(next) => {
                assert_eq!(
                    Some(next),
                    last,
                    "process `{id}`: next_after must be the last sequence of the page"
                );
                after = next;
            }
        }
    }
    assert_eq!(
        events.len() as u64,
        record.last_sequence,
        "process `{id}`: the log must hold exactly 1..=last_sequence ({} events read)",
        events.len()
    );
    let mut keys = HashSet::new();
    for e in &events {
        if let Some(k) = &e.replay_key {
            assert!(
                keys.insert(k.clone()),
                "process `{id}`: replay key `{k}` appears twice in the log"
            );
        }
    }
    if let Err(diff) = cairn_core::fold::check_fold(&record, &events) {
        panic!("fold invariant broken: {diff}");
    }
    if record.is_terminal() {
        assert!(record.outcome.is_some(), "terminal `{id}` without an outcome");
        assert!(record.lease.is_none(), "terminal `{id}` still shows a lease");
    }
    Folded { record, events }
}

/// Assert `result` is an error with `code`, and return it.
///
/// # Panics
/// When `result` is `Ok` or another error.
pub fn expect_code<T: Debug>(result: Result<T>, code: &str, what: &str) -> CairnError {
    match result {
        Ok(v) => panic!("{what}: expected error `{code}`, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(
                e.code(),
                code,
                "{what}: expected error `{code}`, got `{}`: {e}",
                e.code()
            );
            e
        }
    }
}

/// Unwrap `result` with a message naming the operation.
///
/// # Panics
/// When `result` is an error.
pub fn ok<T>(result: Result<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error `{}`: {e}", e.code()),
    }
}

/// Everything observable about a store: every record (any status) with its log
/// and fencing token, the change-feed head, and the pending wakes of [`SESSIONS`].
#[derive(Clone, Debug, PartialEq)]
pub struct StoreSnapshot {
    pub processes: Vec<(Folded, u64)>,
    pub feed_head: u64,
    pub pending_wakes: Vec<WakeDelivery>,
    /// The grants of each of [`SESSIONS`] (whole-session scopes).
    pub grants: Vec<GrantedProcess>,
}

/// Every record, any status, in id order (paging through `list`).
pub async fn list_all(registry: &dyn ProcessRegistry) -> Vec<ProcessRecord> {
    let mut out: Vec<ProcessRecord> = Vec::new();
    loop {
        let filter = ProcessFilter {
            after_id: out.last().map(|r| r.id.clone()),
            limit: Some(MAX_PAGE_SIZE),
            ..ProcessFilter::any()
        };
        let page = ok(registry.list(&filter).await, "list(any)");
        let done = page.len() < MAX_PAGE_SIZE;
        out.extend(page);
        if done {
            return out;
        }
    }
}

/// The cursor of the most recent change-feed entry (0 for none).
pub async fn feed_head(registry: &dyn ProcessRegistry) -> u64 {
    let mut cursor = 0;
    loop {
        let page = ok(
            registry.changed_since(cursor, Some(MAX_PAGE_SIZE)).await,
            "changed_since",
        );
        if page.changes.is_empty() {
            return cursor;
        }
        cursor = page.next_cursor;
    }
}

/// Take a [`StoreSnapshot`], checking the fold of every process on the way.
pub async fn snapshot(registry: &dyn ProcessRegistry) -> StoreSnapshot {
    let mut processes = Vec::new();
    for record in list_all(registry).await {
        let folded = assert_fold(registry, &record.id).await;
        let fencing = ok(registry.fencing_token(&record.id).await, "fencing_token");
        processes.push((folded, fencing));
    }
    let mut pending_wakes = Vec::new();
    let mut grants = Vec::new();
    for s in SESSIONS {
        pending_wakes.extend(ok(
            registry.pending_wakes(s, Some(MAX_PAGE_SIZE)).await,
            "pending_wakes",
        ));
        let filter = ProcessFilter {
            limit: Some(MAX_PAGE_SIZE),
            ..ProcessFilter::any()
        };
        grants.extend(ok(
            registry.list_granted_to(&SessionScope::session(*s), &filter).await,
            "list_granted_to",
        ));
    }
    StoreSnapshot {
        processes,
        feed_head: feed_head(registry).await,
        pending_wakes,
        grants,
    }
}

/// A fresh store with conveniences that check the fold after every operation.
pub struct Harness {
    pub store: TestStore,
}

impl Harness {
    /// Build a fresh store on a clock at [`START_MS`].
    pub async fn new(factory: &dyn StoreFactory) -> Self {
        let clock = ManualClock::new(START_MS);
        let store = factory.create(clock).await;
        Self { store }
    }

    pub fn registry(&self) -> &dyn ProcessRegistry {
        self.store.registry.as_ref()
    }

    pub fn shared(&self) -> Arc<dyn ProcessRegistry> {
        self.store.registry.clone()
    }

    pub fn clock(&self) -> &ManualClock {
        &self.store.clock
    }

    /// The current clock time.
    pub fn now(&self) -> u64 {
        cairn_core::Clock::now_ms(&self.store.clock)
    }

    /// Move the clock forward.
    pub fn advance(&self, ms: u64) {
        self.store.clock.advance(ms);
    }

    /// Check the fold of one process.
    pub async fn check(&self, id: &str) -> Folded {
        assert_fold(self.registry(), id).await
    }

    /// Check the fold of every process.
    pub async fn check_all(&self) -> StoreSnapshot {
        snapshot(self.registry()).await
    }

    /// Register a new process (must be created) and check its fold.
    pub async fn register(&self, reg: Registration) -> ProcessRecord {
        self.register_granted(reg, None).await
    }

    /// Register a new process with an initial grant (must be created).
    pub async fn register_granted(&self, reg: Registration, grant: Option<StartGrant>) -> ProcessRecord {
        let id = reg.id.clone();
        let answer = ok(self.registry().register(reg, grant).await, &format!("register `{id}`"));
        assert!(answer.created, "register `{id}`: a new id must answer created: true");
        let folded = self.check(&id).await;
        assert_eq!(
            folded.record, answer.process,
            "register `{id}`: answer differs from get"
        );
        answer.process
    }

    /// Append (must succeed) and check the fold.
    pub async fn append(&self, id: &str, req: AppendRequest) -> AppendResult {
        let what = format!("append `{}` to `{id}`", req.event_type);
        let res = ok(self.registry().append_event(id, req).await, &what);
        self.check(id).await;
        res
    }

    /// Claim (must succeed) and check the fold.
    pub async fn claim(&self, id: &str, owner: &str, ttl_ms: u64) -> Lease {
        let lease = ok(
            self.registry().claim(id, owner, ttl_ms).await,
            &format!("claim `{id}` by `{owner}`"),
        );
        self.check(id).await;
        lease
    }

    /// Claim and record the start of a run.
    pub async fn claim_started(&self, id: &str, owner: &str, ttl_ms: u64) -> (Lease, ProcessRecord) {
        let lease = self.claim(id, owner, ttl_ms).await;
        let record = ok(self.registry().record_started(&lease).await, "record_started");
        self.check(id).await;
        (lease, record)
    }

    /// Get (must succeed), checking the fold.
    pub async fn get(&self, id: &str) -> ProcessRecord {
        self.check(id).await.record
    }

    /// Run `op`, which must fail with `code`, and assert the store is unchanged.
    pub async fn rejects<T: Debug>(&self, code: &str, what: &str, op: impl Future<Output = Result<T>>) -> CairnError {
        let before = self.check_all().await;
        let err = expect_code(op.await, code, what);
        let after = self.check_all().await;
        assert_eq!(before, after, "{what}: the error `{code}` must change nothing");
        err
    }

    /// Run `op`, which must fail with one of `codes`, and assert the store is unchanged.
    pub async fn rejects_any<T: Debug>(
        &self,
        codes: &[&str],
        what: &str,
        op: impl Future<Output = Result<T>>,
    ) -> CairnError {
        let before = self.check_all().await;
        let err = match op.await {
            Ok(v) => panic!("{what}: expected one of {codes:?}, got Ok({v:?})"),
            Err(e) => e,
        };
        assert!(
            codes.contains(&err.code()),
            "{what}: expected one of {codes:?}, got `{}`: {err}",
            err.code()
        );
        let after = self.check_all().await;
        assert_eq!(before, after, "{what}: the error `{}` must change nothing", err.code());
        err
    }

    /// Run `op`, which must succeed, and assert the store is unchanged.
    pub async fn no_change<T>(&self, what: &str, op: impl Future<Output = Result<T>>) -> T {
        let before = self.check_all().await;
        let v = ok(op.await, what);
        let after = self.check_all().await;
        assert_eq!(before, after, "{what}: must change nothing");
        v
    }
}
