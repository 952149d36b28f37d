//! The in-memory registry: for tests and ephemeral hosts. One mutex over the
//! whole state makes every operation a transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::clock::{system_clock, SharedClock};
use crate::events::{AppendRequest, AppendResult, EventPage, ProcessEvent};
use crate::fold;
use crate::model::{
    page_limit, CausalRef, Change, ChangePage, Claim, EnvRef, EnvSpec, Grant, GrantDescriptor, GrantedProcess, Lease,
    ListOrder, NodeIdentity, NodeLiveness, Outcome, ProcessFilter, ProcessRecord, PruneFilter, PruneReport,
    Registration, SessionDeleteReport, SessionScope, StartGrant, StatusFilter, SweepItem, Tombstone, TransferReport,
    WaitRequest, WakeDelivery, Watermark, WorkAction, WorkItem,
};
use crate::ops::admin::{self, AdminTx, Deleted, GrantState, PruneCandidate, PrunePosition};
use crate::ops::{self, at_once, Answer, Op, Row, WriteTx};
use crate::registry::{CancelAnswer, CompleteAnswer, ProcessRegistry, Registered};
use crate::schedule::{Schedule, ScheduleAdvance};
use crate::validate::{self, validate_id, validate_scope, validate_session_id};
use crate::{CairnError, Result};

struct Entry {
    row: Row,
    events: Vec<ProcessEvent>,
    replay: HashMap<String, u64>,
    change_cursor: u64,
}

/// The first `limit` candidates due at `now` that `pick` takes, with what it
/// answers for each, in worklist order (ADR 0030): by [`Row::worklist_key`],
/// then id. The ready index (all due) and the timed index up to `now` are
/// merged, so a read walks the rows it answers (and those `pick` leaves),
/// never every candidate.
fn in_worklist_order<T>(st: &State, now: u64, limit: usize, pick: impl Fn(&Entry) -> Option<T>) -> Vec<(String, T)> {
    let mut ready = st.ready.iter().peekable();
    let mut timed = st.timed.range(..(now.saturating_add(1), String::new())).peekable();
    let mut out = Vec::new();
    while out.len() < limit {
        let next = match (ready.peek(), timed.peek()) {
            (Some(r), Some(t)) if t < r => timed.next(),
            (Some(_), _) => ready.next(),
            (None, _) => timed.next(),
        };
        let Some((_, id)) = next else { break };
        if let Some(t) = st.entries.get(id).and_then(&pick) {
            out.push((id.clone(), t));
        }
    }
    out
}

struct WakeRow {
    delivery: WakeDelivery,
    acked: bool,
    order: u64,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    tombstones: HashMap<String, Tombstone>,
    /// Pruned process id -> the scopes that held a grant on it as it was pruned.
    pruned_grants: HashMap<String, Vec<SessionScope>>,
    /// (scope id) -> process id -> grant
    grants: BTreeMap<String, BTreeMap<String, Grant>>,
    wakes: HashMap<String, WakeRow>,
    wake_order: u64,
    changes: BTreeMap<u64, String>,
    cursor: u64,
    /// Worklist index: ids that are run or abandon candidates (lease ignored).
    candidates: BTreeSet<String>,
    /// The candidates claimable at once, by (registration time, id), and
    /// those claimable at a time, by (that time, id) (ADR 0030); `placed`
    /// says where each candidate is, as (timed, key).
    ready: BTreeSet<(u64, String)>,
    timed: BTreeSet<(u64, String)>,
    placed: HashMap<String, (bool, u64)>,
    /// Env specs by ref: their bytes and when they were last put (a prune's
    /// collection keeps one put within its grace, ADR 0034).
    envs: HashMap<String, (Vec<u8>, u64)>,
    schedules: BTreeMap<String, Schedule>,
    /// Due index: (next fire time, id) of every unpaused schedule.
    schedule_due: BTreeSet<(u64, String)>,
    /// Liveness rows, by node id.
    nodes: BTreeMap<String, NodeLiveness>,
    modules: BTreeMap<String, crate::script::Module>,
}

impl State {
    /// Store `s`, keeping the due index in step.
    fn put_schedule(&mut self, s: Schedule) {
        self.drop_schedule(&s.id);
        if !s.paused {
            self.schedule_due.insert((s.next_fire_ms, s.id.clone()));
        }
        self.schedules.insert(s.id.clone(), s);
    }

    fn drop_schedule(&mut self, id: &str) -> Option<Schedule> {
        let old = self.schedules.remove(id)?;
        self.schedule_due.remove(&(old.next_fire_ms, old.id.clone()));
        Some(old)
    }
}

/// The in-memory [`ProcessRegistry`].
pub struct MemoryRegistry {
    state: Mutex<State>,
    clock: SharedClock,
    /// The grace a prune's collection gives ([`Self::with_collect_grace`]).
    collect_grace: std::time::Duration,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    /// Pending wakes of a session (of one of its frames, given one), oldest
    /// first: at most `limit`, none after the one that brings the page to
    /// [`crate::LIST_PAGE_BYTES`] as JSON.
    fn pending_wakes_of(
        &self,
        session_id: &str,
        frame_id: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<WakeDelivery>> {
        let limit = page_limit(limit)?;
        let st = self.state.lock();
        let mut rows: Vec<&WakeRow> = st
            .wakes
            .values()
            .filter(|w| {
                !w.acked
                    && w.delivery.target_session_id == session_id
                    && frame_id.is_none_or(|f| w.delivery.target_scope.agent_frame_id.as_deref() == Some(f))
            })
            .collect();
        rows.sort_by_key(|w| w.order);
        let mut bytes = 0usize;
        Ok(rows
            .into_iter()
            .take(limit)
            .take_while(|w| {
                let under = bytes < crate::LIST_PAGE_BYTES;
                bytes = bytes.saturating_add(serde_json::to_vec(&w.delivery).map_or(0, |j| j.len()));
                under
            })
            .map(|w| w.delivery.clone())
            .collect())
    }

    /// A registry on the system clock.
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// A registry on an injected clock.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            state: Mutex::new(State::default()),
            clock,
            collect_grace: crate::registry::DEFAULT_COLLECT_GRACE,
        }
    }

    /// The grace a prune's collection of unreferenced env specs gives
    /// ([`ProcessRegistry::collect_unreferenced`]; default
    /// [`crate::registry::DEFAULT_COLLECT_GRACE`]).
    pub fn with_collect_grace(mut self, grace: std::time::Duration) -> Self {
        self.collect_grace = grace;
        self
    }

    /// Overwrite stored env bytes (to exercise corruption detection in tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn corrupt_env_for_test(&self, env_ref: &str, bytes: Vec<u8>) {
        let mut st = self.state.lock();
        let touched = st.envs.get(env_ref).map_or(0, |(_, touched)| *touched);
        st.envs.insert(env_ref.to_string(), (bytes, touched));
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Run one operation under the state lock. The memory registry has no
    /// rollback: an operation's checks all come before its first write, and
    /// every write after the first is one the operation just made valid (the
    /// suites pin this), so a failing operation changed nothing.
    fn submit(&self, op: Result<Op>) -> Result<Answer> {
        let op = op?;
        let now = self.now();
        let mut st = self.state.lock();
        ops::run(&mut Tx { st: &mut st, now }, &op)
    }
}

impl State {
    fn entry(&self, id: &str) -> Result<&Entry> {
        match self.entries.get(id) {
            Some(e) => Ok(e),
            None => Err(self.missing(id)),
        }
    }

    fn missing(&self, id: &str) -> CairnError {
        match self.tombstones.get(id) {
            Some(t) => CairnError::NoLongerRetained(Box::new(t.clone())),
            None => CairnError::UnknownProcess(id.to_string()),
        }
    }

    fn touch(&mut self, id: &str) {
        self.cursor += 1;
        let cursor = self.cursor;
        if let Some(e) = self.entries.get_mut(id) {
            self.changes.remove(&e.change_cursor);
            e.change_cursor = cursor;
            self.changes.insert(cursor, id.to_string());
        }
    }

    fn reindex(&mut self, id: &str) {
        let place = self.entries.get(id).and_then(|e| {
            (fold::is_run_candidate(&e.row.record) || fold::is_abandon_candidate(&e.row.record))
                .then(|| (e.row.claimable_at() > 0, e.row.worklist_key()))
        });
        if self.placed.get(id) == place.as_ref() {
            return;
        }
        self.unindex(id);
        if let Some((timed, key)) = place {
            self.candidates.insert(id.to_string());
            let set = if timed { &mut self.timed } else { &mut self.ready };
            set.insert((key, id.to_string()));
            self.placed.insert(id.to_string(), (timed, key));
        }
    }

    /// Take `id` out of the worklist indexes.
    fn unindex(&mut self, id: &str) {
        self.candidates.remove(id);
        if let Some((timed, key)) = self.placed.remove(id) {
            let set = if timed { &mut self.timed } else { &mut self.ready };
            set.remove(&(key, id.to_string()));
        }
    }
}

/// One operation's transaction: the locked state at one time.
struct Tx<'a> {
    st: &'a mut State,
    now: u64,
}

impl Tx<'_> {
    fn entry_mut(&mut self, id: &str) -> Result<&mut Entry> {
        self.st
            .entries
            .get_mut(id)
            .ok_or_else(|| CairnError::UnknownProcess(id.to_string()))
    }
}

impl WriteTx for Tx<'_> {
    fn now(&self) -> u64 {
        self.now
    }

    fn row(&mut self, id: &str) -> Result<Option<&Row>> {
        Ok(self.st.entries.get(id).map(|e| &e.row))
    }

    fn tombstone(&mut self, id: &str) -> Result<Option<Tombstone>> {
        Ok(self.st.tombstones.get(id).cloned())
    }

    fn replayed(&mut self, id: &str, replay_key: &str) -> Result<Option<ProcessEvent>> {
        let Some(entry) = self.st.entries.get(id) else {
            return Ok(None);
        };
        Ok(entry
            .replay
            .get(replay_key)
            .and_then(|seq| entry.events.get((*seq - 1) as usize))
            .cloned())
    }

    fn env_stored(&mut self, env_ref: &str) -> Result<bool> {
        Ok(self.st.envs.contains_key(env_ref))
    }

    fn run_candidates(&mut self, limit: usize) -> Result<Vec<String>> {
        let now = self.now;
        let st = &*self.st;
        Ok(
            in_worklist_order(st, now, limit, |e| fold::is_run_candidate(&e.row.record).then_some(()))
                .into_iter()
                .map(|(id, ())| id)
                .collect(),
        )
    }

    fn tree_children(&mut self, parent: &str) -> Result<Vec<String>> {
        // A scan (the in-memory registry keeps no index of provenance): the
        // children of `parent`, and which of them have children of their own.
        let parent_of = |e: &Entry| {
            e.row
                .record
                .provenance
                .caused_by
                .as_ref()
                .and_then(CausalRef::parent_process)
                .map(str::to_string)
        };
        let mut children = Vec::new();
        let mut parents = std::collections::HashSet::new();
        for e in self.st.entries.values() {
            if let Some(p) = parent_of(e) {
                if p == parent {
                    children.push((e.row.record.id.clone(), e.row.record.is_terminal()));
                }
                parents.insert(p);
            }
        }
        let mut ids: Vec<String> = children
            .into_iter()
            .filter(|(id, ended)| !ended || parents.contains(id))
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn insert_row(&mut self, record: ProcessRecord) -> Result<()> {
        let id = record.id.clone();
        self.st.entries.insert(
            id.clone(),
            Entry {
                row: Row {
                    record,
                    lease: None,
                    fencing: 0,
                },
                events: Vec::new(),
                replay: HashMap::new(),
                change_cursor: 0,
            },
        );
        self.st.touch(&id);
        self.st.reindex(&id);
        Ok(())
    }

    fn update_record(&mut self, record: ProcessRecord, release_lease: bool) -> Result<()> {
        let id = record.id.clone();
        let row = &mut self.entry_mut(&id)?.row;
        row.record = record;
        if release_lease {
            row.lease = None;
        }
        row.normalise();
        self.st.touch(&id);
        self.st.reindex(&id);
        Ok(())
    }

    fn set_lease(&mut self, id: &str, lease: Option<Lease>, fencing: u64) -> Result<()> {
        let row = &mut self.entry_mut(id)?.row;
        row.lease = lease;
        row.fencing = fencing;
        row.normalise();
        self.st.reindex(id);
        Ok(())
    }

    fn push_event(&mut self, event: &ProcessEvent) -> Result<()> {
        let entry = self.entry_mut(&event.process_id)?;
        if let Some(key) = &event.replay_key {
            entry.replay.insert(key.clone(), event.sequence);
        }
        entry.events.push(event.clone());
        Ok(())
    }

    fn insert_wake(&mut self, wake: &WakeDelivery) -> Result<bool> {
        if self.st.wakes.contains_key(&wake.wake_id) {
            return Ok(false);
        }
        self.st.wake_order += 1;
        self.st.wakes.insert(
            wake.wake_id.clone(),
            WakeRow {
                delivery: wake.clone(),
                acked: false,
                order: self.st.wake_order,
            },
        );
        Ok(true)
    }

    fn upsert_grant(&mut self, grant: &Grant) -> Result<()> {
        self.st
            .grants
            .entry(grant.scope.scope_id())
            .or_default()
            .insert(grant.process_id.clone(), grant.clone());
        Ok(())
    }

    fn grants_of(&mut self, id: &str) -> Result<Vec<Grant>> {
        Ok(self.st.grants.values().filter_map(|m| m.get(id).cloned()).collect())
    }
}

impl AdminTx for Tx<'_> {
    fn now(&self) -> u64 {
        self.now
    }

    async fn take_grant(&mut self, scope: &SessionScope, id: &str) -> Result<Option<Grant>> {
        Ok(self.st.grants.get_mut(&scope.scope_id()).and_then(|m| m.remove(id)))
    }

    async fn put_grant(&mut self, grant: &Grant) -> Result<()> {
        WriteTx::upsert_grant(self, grant)
    }

    async fn delete_session_grants(&mut self, session_id: &str, keep_frames: bool) -> Result<Vec<String>> {
        let scope_ids: Vec<String> = if keep_frames {
            vec![SessionScope::session(session_id).scope_id()]
        } else {
            self.st
                .grants
                .iter()
                .filter(|(_, m)| m.values().next().is_some_and(|g| g.scope.session_id == session_id))
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut removed = Vec::new();
        for k in scope_ids {
            if let Some(m) = self.st.grants.remove(&k) {
                removed.extend(m.into_keys());
            }
        }
        Ok(removed)
    }

    async fn delete_session_pruned_grants(&mut self, session_id: &str, keep_frames: bool) -> Result<u64> {
        let whole = SessionScope::session(session_id);
        let mut removed = 0;
        self.st.pruned_grants.retain(|_, scopes| {
            let before = scopes.len();
            scopes.retain(|s| s.session_id != session_id || (keep_frames && *s != whole));
            removed += (before - scopes.len()) as u64;
            !scopes.is_empty()
        });
        Ok(removed)
    }

    async fn delete_pending_wakes(&mut self, session_id: &str) -> Result<u64> {
        let before = self.st.wakes.len();
        self.st
            .wakes
            .retain(|_, w| w.acked || w.delivery.target_session_id != session_id);
        Ok((before - self.st.wakes.len()) as u64)
    }

    async fn grant_states(&mut self, ids: &[String]) -> Result<Vec<GrantState>> {
        Ok(ids
            .iter()
            .map(|id| GrantState {
                id: id.clone(),
                running: self.st.entries.get(id).is_some_and(|e| !e.row.record.is_terminal()),
                granted: self.st.grants.values().any(|m| m.contains_key(id)),
            })
            .collect())
    }

    async fn with_running_descendants(&mut self, ids: &[String]) -> Result<std::collections::HashSet<String>> {
        // A scan (the in-memory registry keeps no index of provenance): each
        // process's children, then a walk down from each id.
        let mut children: HashMap<&str, Vec<&Entry>> = HashMap::new();
        for e in self.st.entries.values() {
            if let Some(p) = e
                .row
                .record
                .provenance
                .caused_by
                .as_ref()
                .and_then(CausalRef::parent_process)
            {
                children.entry(p).or_default().push(e);
            }
        }
        let mut above = std::collections::HashSet::new();
        for id in ids {
            let mut seen = std::collections::HashSet::new();
            let mut stack: Vec<&str> = vec![id.as_str()];
            while let Some(at) = stack.pop() {
                for child in children.get(at).into_iter().flatten() {
                    let child_id = child.row.record.id.as_str();
                    if !child.row.record.is_terminal() {
                        above.insert(id.clone());
                        stack.clear();
                        break;
                    }
                    if seen.insert(child_id) {
                        stack.push(child_id);
                    }
                }
            }
        }
        Ok(above)
    }

    async fn prune_candidates(
        &mut self,
        cutoff_ms: u64,
        status: StatusFilter,
        after: Option<&PrunePosition>,
        limit: usize,
    ) -> Result<(Vec<PruneCandidate>, Option<PrunePosition>)> {
        let mut candidates: Vec<PruneCandidate> = self
            .st
            .entries
            .values()
            .filter(|e| e.row.record.is_terminal() && status.matches(e.row.record.status))
            .filter_map(|e| {
                let r = &e.row.record;
                let terminal_at_ms = r.terminal_at_ms.filter(|t| *t < cutoff_ms)?;
                Some(PruneCandidate {
                    id: r.id.clone(),
                    status: r.status,
                    terminal_at_ms,
                    change_cursor: e.change_cursor,
                    parent: r
                        .provenance
                        .caused_by
                        .as_ref()
                        .and_then(crate::model::CausalRef::parent_process)
                        .map(str::to_string),
                    definition: r.input.definition(),
                    originator: r.provenance.originator.scope_id(),
                    created_at_ms: r.created_at_ms,
                })
            })
            .filter(|c| c.is_after(after))
            .collect();
        candidates.sort_by(|a, b| (a.terminal_at_ms, &a.id).cmp(&(b.terminal_at_ms, &b.id)));
        candidates.truncate(limit);
        let next = admin::next_position(&candidates, limit);
        Ok((candidates, next))
    }

    async fn delete_pruned(&mut self, victims: &[PruneCandidate]) -> Result<Deleted> {
        let mut deleted = Deleted::default();
        let st = &mut *self.st;
        for v in victims {
            let Some(e) = st.entries.remove(&v.id) else { continue };
            st.changes.remove(&e.change_cursor);
            st.unindex(&v.id);
            deleted.events += e.events.len() as u64;
            let mut held = Vec::new();
            for m in st.grants.values_mut() {
                if let Some(g) = m.remove(&v.id) {
                    deleted.grants += 1;
                    held.push(g.scope);
                }
            }
            if !held.is_empty() {
                st.pruned_grants.insert(v.id.clone(), held);
            }
            let before = st.wakes.len();
            st.wakes.retain(|_, w| w.delivery.process_id != v.id);
            deleted.wakes += (before - st.wakes.len()) as u64;
            st.tombstones.insert(
                v.id.clone(),
                Tombstone {
                    id: v.id.clone(),
                    status: v.status,
                    terminal_at_ms: v.terminal_at_ms,
                    pruned_at_ms: self.now,
                },
            );
        }
        st.grants.retain(|_, m| !m.is_empty());
        Ok(deleted)
    }
}

#[async_trait]
impl ProcessRegistry for MemoryRegistry {
    async fn register(&self, registration: Registration, grant: Option<StartGrant>) -> Result<Registered> {
        self.submit(Op::register(&registration, grant, self.now()))?
            .into_registered()
    }

    async fn register_child(
        &self,
        registration: Registration,
        grants: Vec<StartGrant>,
        parent_lease: &Lease,
    ) -> Result<Registered> {
        self.submit(Op::register_child(&registration, grants, parent_lease, self.now()))?
            .into_registered()
    }

    async fn register_claimed(
        &self,
        registration: Registration,
        grant: Option<StartGrant>,
        owner_id: &str,
        ttl_ms: u64,
    ) -> Result<(Registered, Option<Claim>)> {
        self.submit(Op::register_claimed(&registration, grant, self.now(), owner_id, ttl_ms))?
            .into_registered_claimed()
            .map(|b| *b)
    }

    async fn get(&self, id: &str) -> Result<ProcessRecord> {
        validate_id("process id", id)?;
        let st = self.state.lock();
        Ok(st.entry(id)?.row.record.clone())
    }

    async fn list(&self, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        filter.validate()?;
        let limit = filter.page_size()?;
        let st = self.state.lock();
        if filter.order == ListOrder::Newest {
            let all = st.entries.values().map(|e| &e.row.record);
            return Ok(newest_page(filter, all, |r| r, limit)?.into_iter().cloned().collect());
        }
        let start = filter.after_id.clone().unwrap_or_default();
        Ok(st
            .entries
            .range(start..)
            .map(|(_, e)| &e.row.record)
            .filter(|r| filter.matches(r))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn events_after(&self, id: &str, after: u64, limit: Option<usize>) -> Result<EventPage> {
        validate_id("process id", id)?;
        let limit = page_limit(limit)?;
        let st = self.state.lock();
        let entry = st.entry(id)?;
        let events: Vec<ProcessEvent> = entry
            .events
            .iter()
            .skip(after.min(usize::MAX as u64) as usize)
            .take(limit)
            .cloned()
            .collect();
        let next_after = match events.last() {
            Some(last) if last.sequence < entry.row.record.last_sequence => Some(last.sequence),
            _ => None,
        };
        Ok(EventPage { events, next_after })
    }

    async fn append_event(&self, id: &str, request: AppendRequest) -> Result<AppendResult> {
        self.submit(Op::append(id, request))?.into_appended()
    }

    async fn request_cancel(&self, id: &str, reason: Option<String>) -> Result<CancelAnswer> {
        self.submit(Op::cancel(id, reason))?.into_cancel()
    }

    async fn grant(&self, scope: &SessionScope, id: &str, descriptor: GrantDescriptor) -> Result<Grant> {
        self.submit(Op::grant(scope, id, descriptor, self.now()))?.into_grant()
    }

    async fn revoke(&self, scope: &SessionScope, id: &str) -> Result<bool> {
        validate_scope(scope)?;
        validate_id("process id", id)?;
        let mut st = self.state.lock();
        Ok(st
            .grants
            .get_mut(&scope.scope_id())
            .and_then(|m| m.remove(id))
            .is_some())
    }

    async fn transfer(&self, from: &SessionScope, to: &SessionScope, ids: &[String]) -> Result<TransferReport> {
        admin::check_transfer(from, to, ids)?;
        let now = self.now();
        let mut st = self.state.lock();
        at_once(admin::transfer(&mut Tx { st: &mut st, now }, from, to, ids))
    }

    async fn grants_of(&self, id: &str) -> Result<Vec<Grant>> {
        crate::validate::validate_id("process id", id)?;
        let st = self.state.lock();
        if !st.entries.contains_key(id) {
            return Ok(Vec::new());
        }
        Ok(st.grants.values().filter_map(|m| m.get(id).cloned()).collect())
    }

    async fn pruned_grant(&self, scope: &SessionScope, id: &str) -> Result<Option<Tombstone>> {
        validate_scope(scope)?;
        validate_id("process id", id)?;
        let st = self.state.lock();
        let held = st.pruned_grants.get(id).is_some_and(|scopes| scopes.contains(scope));
        Ok(held.then(|| st.tombstones.get(id).cloned()).flatten())
    }

    async fn list_granted_to(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<GrantedProcess>> {
        validate_scope(scope)?;
        filter.validate()?;
        let limit = filter.page_size()?;
        let st = self.state.lock();
        // A scope with no grants lists nothing, but a newest-first cursor
        // naming no process is refused all the same (`newest_page`).
        let granted = st
            .grants
            .get(&scope.scope_id())
            .into_iter()
            .flat_map(|grants| grants.values())
            .filter_map(|g| st.entries.get(&g.process_id).map(|e| (g, &e.row.record)));
        let page: Vec<(&Grant, &ProcessRecord)> = if filter.order == ListOrder::Newest {
            newest_page(filter, granted, |(_, r)| r, limit)?
        } else {
            granted.filter(|(_, r)| filter.matches(r)).take(limit).collect()
        };
        Ok(page
            .into_iter()
            .map(|(g, r)| GrantedProcess {
                grant: g.clone(),
                process: r.clone(),
            })
            .collect())
    }

    async fn list_originated_by(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        validate_scope(scope)?;
        filter.validate()?;
        let limit = filter.page_size()?;
        let st = self.state.lock();
        let theirs = |r: &&ProcessRecord| matches!(&r.provenance.originator, crate::model::Originator::Session { scope: s } if s == scope);
        if filter.order == ListOrder::Newest {
            let all = st.entries.values().map(|e| &e.row.record).filter(theirs);
            return Ok(newest_page(filter, all, |r| r, limit)?.into_iter().cloned().collect());
        }
        let start = filter.after_id.clone().unwrap_or_default();
        Ok(st
            .entries
            .range(start..)
            .map(|(_, e)| &e.row.record)
            .filter(theirs)
            .filter(|r| filter.matches(r))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn delete_session_with(&self, session_id: &str, keep_frames: bool) -> Result<SessionDeleteReport> {
        validate_session_id(session_id)?;
        let now = self.now();
        let mut st = self.state.lock();
        at_once(admin::delete_session(
            &mut Tx { st: &mut st, now },
            session_id,
            keep_frames,
        ))
    }

    async fn pending_wakes(&self, session_id: &str, limit: Option<usize>) -> Result<Vec<WakeDelivery>> {
        validate_session_id(session_id)?;
        self.pending_wakes_of(session_id, None, limit)
    }

    async fn pending_frame_wakes(
        &self,
        session_id: &str,
        frame_id: &str,
        limit: Option<usize>,
    ) -> Result<Vec<WakeDelivery>> {
        validate_session_id(session_id)?;
        validate_id("agent frame id", frame_id)?;
        self.pending_wakes_of(session_id, Some(frame_id), limit)
    }

    async fn ack_wake(&self, session_id: &str, wake_id: &str) -> Result<bool> {
        validate_session_id(session_id)?;
        validate_id("wake id", wake_id)?;
        let mut st = self.state.lock();
        match st.wakes.get_mut(wake_id) {
            Some(w) if w.delivery.target_session_id == session_id => Ok(!std::mem::replace(&mut w.acked, true)),
            _ => Err(CairnError::UnknownWake(wake_id.to_string())),
        }
    }

    async fn claim(&self, id: &str, owner_id: &str, ttl_ms: u64) -> Result<Lease> {
        self.submit(Op::claim(id, owner_id, ttl_ms))?.into_lease()
    }

    async fn claim_batch(&self, owner_id: &str, ttl_ms: u64, limit: usize) -> Result<Vec<Claim>> {
        self.submit(Op::claim_batch(owner_id, ttl_ms, limit))?.into_claims()
    }

    async fn record_started(&self, lease: &Lease) -> Result<ProcessRecord> {
        self.submit(Op::record_started(lease))?.into_record()
    }

    async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        self.submit(Op::renew(lease, ttl_ms))?.into_lease()
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.submit(Op::release(lease))?.into_bool()
    }

    async fn complete(&self, lease: &Lease, outcome: Outcome) -> Result<ProcessRecord> {
        self.submit(Op::complete(lease, outcome))?.into_record()
    }

    async fn worklist(&self, limit: usize) -> Result<Vec<WorkItem>> {
        let now = self.now();
        let st = self.state.lock();
        let action = |e: &Entry| {
            Some(if fold::is_abandon_candidate(&e.row.record) {
                WorkAction::ReconcileAbandon
            } else {
                WorkAction::Run
            })
        };
        Ok(in_worklist_order(&st, now, limit, action)
            .into_iter()
            .map(|(process_id, action)| WorkItem { process_id, action })
            .collect())
    }

    async fn abandon_worklist(&self, limit: usize) -> Result<Vec<String>> {
        let now = self.now();
        let st = self.state.lock();
        Ok(st
            .candidates
            .iter()
            .filter(|id| {
                st.entries.get(*id).is_some_and(|e| {
                    fold::is_abandon_candidate(&e.row.record)
                        && e.row.lease.as_ref().is_none_or(|l| l.expires_at_ms <= now)
                })
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn request_abandon(&self, id: &str, requested_by: &str, reason: &str) -> Result<ProcessRecord> {
        self.submit(Op::request_abandon(id, requested_by, reason))?
            .into_record()
    }

    async fn reconcile_abandon(&self, id: &str) -> Result<Option<ProcessRecord>> {
        self.submit(Op::reconcile_abandon(id))?.into_maybe_record()
    }

    async fn register_node(&self, node: &str) -> Result<NodeIdentity> {
        NodeIdentity::validate_node_id(node)?;
        let now = self.now();
        let mut st = self.state.lock();
        let incarnation = st.nodes.get(node).map_or(0, |n| n.incarnation) + 1;
        st.nodes.insert(
            node.to_string(),
            NodeLiveness {
                node: node.to_string(),
                incarnation,
                started_at_ms: now,
                heartbeat_at_ms: now,
            },
        );
        Ok(NodeIdentity {
            node: node.to_string(),
            incarnation,
        })
    }

    async fn heartbeat(&self, identity: &NodeIdentity) -> Result<bool> {
        NodeIdentity::validate_node_id(&identity.node)?;
        let now = self.now();
        let mut st = self.state.lock();
        match st.nodes.get_mut(&identity.node) {
            Some(n) if n.incarnation == identity.incarnation => {
                n.heartbeat_at_ms = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn node(&self, node: &str) -> Result<Option<NodeLiveness>> {
        NodeIdentity::validate_node_id(node)?;
        Ok(self.state.lock().nodes.get(node).cloned())
    }

    async fn leases_of_earlier_incarnations(&self, node: &str, incarnation: u64, limit: usize) -> Result<Vec<Lease>> {
        let st = self.state.lock();
        Ok(st
            .entries
            .values()
            .filter(|e| {
                e.row.record.disposition == crate::model::Disposition::Rerunnable && !e.row.record.is_terminal()
            })
            .filter_map(|e| e.row.lease.clone())
            .filter(|l| {
                crate::model::NodeIdentity::parse_owner(&l.owner_id)
                    .is_some_and(|o| o.node == node && o.incarnation < incarnation)
            })
            .take(limit)
            .collect())
    }

    async fn sweep_worklist(&self, limit: usize) -> Result<Vec<SweepItem>> {
        let st = self.state.lock();
        if st.nodes.is_empty() {
            return Ok(Vec::new());
        }
        // A scan of the rows: this registry is for tests and ephemeral hosts,
        // and it holds nothing a restart could sweep.
        Ok(st
            .entries
            .iter()
            .filter_map(|(id, e)| {
                let owner = fold::sweep_owner(&e.row.record)?;
                let registered = st.nodes.get(&owner.node)?.incarnation;
                (owner.incarnation < registered).then(|| SweepItem {
                    process_id: id.clone(),
                    node: owner.node,
                    incarnation: registered,
                })
            })
            .take(limit)
            .collect())
    }

    async fn sweep(&self, id: &str, node: &str, incarnation: u64) -> Result<Option<ProcessRecord>> {
        self.submit(Op::sweep(id, node, incarnation))?.into_maybe_record()
    }

    async fn complete_external(&self, id: &str, outcome: Outcome, authority: &str) -> Result<CompleteAnswer> {
        self.submit(Op::complete_external(id, &outcome, authority))?
            .into_complete()
    }

    async fn prune(&self, cutoff_ms: u64, filter: PruneFilter, watermark: Watermark) -> Result<PruneReport> {
        filter.validate()?;
        let mut report = PruneReport::default();
        let mut after = None;
        loop {
            // A chunk at a time, as the other backends: other writes go on
            // between the chunks.
            let now = self.now();
            let mut st = self.state.lock();
            let (chunk, next) = at_once(admin::prune(
                &mut Tx { st: &mut st, now },
                cutoff_ms,
                &filter,
                watermark,
                after.as_ref(),
            ))?;
            report.add(&chunk);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        crate::registry::collect_after_prune(self, &report, self.collect_grace).await;
        Ok(report)
    }

    async fn collect_unreferenced(&self, grace: std::time::Duration) -> Result<crate::registry::Collected> {
        let cutoff = self
            .now()
            .saturating_sub(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX));
        let mut st = self.state.lock();
        let State { entries, envs, .. } = &mut *st;
        // One pass over the processes; records keep their own type lists
        // here, so there are none apart to collect.
        let named: std::collections::HashSet<&str> = entries
            .values()
            .filter_map(|e| e.row.record.env_ref.as_deref())
            .collect();
        let before = envs.len();
        envs.retain(|env_ref, (_, touched)| *touched > cutoff || named.contains(env_ref.as_str()));
        Ok(crate::registry::Collected {
            envs: (before - envs.len()) as u64,
            type_lists: 0,
        })
    }

    async fn change_head(&self) -> Result<u64> {
        Ok(self.state.lock().cursor)
    }

    async fn changed_since(&self, cursor: u64, limit: Option<usize>) -> Result<ChangePage> {
        let limit = page_limit(limit)?;
        let st = self.state.lock();
        let changes: Vec<Change> = st
            .changes
            .range(cursor.saturating_add(1)..)
            .take(limit)
            .filter_map(|(c, id)| {
                st.entries.get(id).map(|e| Change {
                    cursor: *c,
                    process: e.row.record.clone(),
                })
            })
            .collect();
        let next_cursor = changes.last().map_or(cursor, |c| c.cursor);
        Ok(ChangePage { changes, next_cursor })
    }

    async fn put_env(&self, spec: &EnvSpec) -> Result<EnvRef> {
        let (env_ref, bytes) = validate::env_ref_and_bytes(spec)?;
        let now = self.now();
        // Put again, it counts as touched now: the registration that names
        // it comes next, and a prune's collection keeps it for the grace.
        self.state
            .lock()
            .envs
            .entry(env_ref.clone())
            .and_modify(|(_, touched)| *touched = now.max(*touched))
            .or_insert((bytes, now));
        Ok(env_ref)
    }

    async fn get_env(&self, env_ref: &str) -> Result<EnvSpec> {
        validate_id("env ref", env_ref)?;
        let bytes = self.state.lock().envs.get(env_ref).map(|(bytes, _)| bytes.clone());
        match bytes {
            Some(b) => validate::decode_env(env_ref, &b),
            None => Err(CairnError::UnknownEnv(env_ref.to_string())),
        }
    }

    async fn put_module(&self, module: &crate::script::Module) -> Result<crate::script::ModulePut> {
        crate::script::validate_module(module)?;
        let mut state = self.state.lock();
        let mut created = false;
        let stored = state.modules.entry(module.info.module_ref.clone()).or_insert_with(|| {
            created = true;
            module.clone()
        });
        Ok(crate::script::ModulePut {
            module: stored.info.clone(),
            created,
        })
    }

    async fn list_modules(&self, after: Option<&str>, limit: Option<usize>) -> Result<Vec<crate::script::ModuleInfo>> {
        let limit = page_limit(limit)?;
        let state = self.state.lock();
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(state
            .modules
            .range((from, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(_, m)| m.info.clone())
            .collect())
    }

    async fn get_module(&self, module_ref: &str) -> Result<crate::script::Module> {
        crate::script::validate_module_ref(module_ref)?;
        self.state
            .lock()
            .modules
            .get(module_ref)
            .cloned()
            .ok_or_else(|| CairnError::UnknownModule(module_ref.to_string()))
    }

    async fn fencing_token(&self, id: &str) -> Result<u64> {
        validate_id("process id", id)?;
        Ok(self.state.lock().entry(id)?.row.fencing)
    }

    async fn wait(&self, lease: &Lease, wait: WaitRequest, seen_sequence: u64) -> Result<bool> {
        self.submit(Op::wait(lease, wait, seen_sequence))?.into_bool()
    }

    async fn resume(&self, lease: &Lease, payload: serde_json::Value) -> Result<ProcessRecord> {
        self.submit(Op::resume(lease, payload))?.into_record()
    }

    async fn gauges(&self) -> Result<crate::model::Gauges> {
        let now = self.now();
        let st = self.state.lock();
        let mut g = crate::model::Gauges::default();
        for e in st.entries.values().filter(|e| !e.row.record.is_terminal()) {
            g.running += 1;
            g.waiting += u64::from(e.row.record.wait.is_some());
            g.leased += u64::from(e.row.lease.is_some());
            g.lapsed += u64::from(e.row.lease.as_ref().is_some_and(|l| l.expires_at_ms <= now));
        }
        g.pending_wakes = st.wakes.values().filter(|w| !w.acked).count() as u64;
        Ok(g)
    }

    async fn next_due(&self, after_ms: u64) -> Result<Option<u64>> {
        let st = self.state.lock();
        Ok(st
            .timed
            .range((after_ms.saturating_add(1), String::new())..)
            .next()
            .map(|(t, _)| *t)
            .into_iter()
            .chain(
                st.schedule_due
                    .range((after_ms.saturating_add(1), String::new())..)
                    .next()
                    .map(|(t, _)| *t),
            )
            .min())
    }

    async fn insert_schedule(&self, schedule: &Schedule) -> Result<Option<Schedule>> {
        let mut st = self.state.lock();
        if let Some(existing) = st.schedules.get(&schedule.id) {
            return Ok(Some(existing.clone()));
        }
        st.put_schedule(schedule.clone());
        Ok(None)
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>> {
        Ok(self.state.lock().schedules.get(id).cloned())
    }

    async fn list_schedules(&self, after_id: Option<&str>, limit: usize) -> Result<Vec<Schedule>> {
        let st = self.state.lock();
        let from = match after_id {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(st
            .schedules
            .range((from, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        Ok(self.state.lock().drop_schedule(id).is_some())
    }

    async fn set_schedule_paused(&self, id: &str, paused: bool, next_fire_ms: Option<u64>) -> Result<Option<Schedule>> {
        let mut st = self.state.lock();
        let Some(mut s) = st.schedules.get(id).cloned() else {
            return Ok(None);
        };
        s.paused = paused;
        if let Some(next) = next_fire_ms {
            s.next_fire_ms = next;
        }
        st.put_schedule(s.clone());
        Ok(Some(s))
    }

    async fn advance_schedule(&self, id: &str, expected_next_fire_ms: u64, advance: &ScheduleAdvance) -> Result<bool> {
        let mut st = self.state.lock();
        let Some(mut s) = st.schedules.get(id).cloned() else {
            return Ok(false);
        };
        if s.paused || s.next_fire_ms != expected_next_fire_ms {
            if let Some((at, pid)) = &advance.fired {
                if s.created_ms == advance.created_ms && s.last_fire_ms.is_none_or(|last| last < *at) {
                    s.last_fire_ms = Some(*at);
                    s.last_process_id = Some(pid.clone());
                    if s.last_refusal.as_ref().is_some_and(|r| r.fire_ms <= *at) {
                        s.last_refusal = None;
                    }
                    st.put_schedule(s);
                }
            }
            return Ok(false);
        }
        match advance.next_fire_ms {
            Some(next) => s.next_fire_ms = next,
            None => s.paused = true,
        }
        if let Some((at, pid)) = &advance.fired {
            s.last_fire_ms = Some(*at);
            s.last_process_id = Some(pid.clone());
            s.last_refusal = None;
        }
        if let Some(refused) = &advance.refused {
            s.last_refusal = Some(refused.clone());
        }
        st.put_schedule(s);
        Ok(true)
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<Schedule>> {
        let st = self.state.lock();
        Ok(st
            .schedule_due
            .iter()
            .take_while(|(t, _)| *t <= now_ms)
            .take(limit)
            .filter_map(|(_, id)| st.schedules.get(id).cloned())
            .collect())
    }
}

/// One newest-first page of `items` (records through `record`: what the
/// listing's lens holds): those matching `filter` and past its cursor,
/// newest first, at most `limit`. The cursor is looked up among `items`, so
/// a lens tells nothing of processes outside it.
fn newest_page<T>(
    filter: &ProcessFilter,
    items: impl Iterator<Item = T>,
    record: impl Fn(&T) -> &ProcessRecord,
    limit: usize,
) -> Result<Vec<T>> {
    let items: Vec<T> = items.collect();
    let cursor = match filter.newest_cursor() {
        Some(a) => Some(
            items
                .iter()
                .map(&record)
                .find(|r| r.id == a)
                .ok_or_else(|| filter.cursor_gone())?
                .created_at_ms,
        ),
        None => None,
    };
    let mut page: Vec<T> = items
        .into_iter()
        .filter(|i| filter.matches(record(i)) && cursor.is_none_or(|c| filter.is_past(record(i), c)))
        .collect();
    page.sort_by(|a, b| {
        let (a, b) = (record(a), record(b));
        (b.created_at_ms, b.id.as_str()).cmp(&(a.created_at_ms, a.id.as_str()))
    });
    page.truncate(limit);
    Ok(page)
}
