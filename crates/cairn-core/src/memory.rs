//! The in-memory registry: for tests and ephemeral hosts. One mutex over the
//! whole state makes every operation a transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::json;

use crate::clock::{system_clock, SharedClock};
use crate::events::{self, AppendRequest, AppendResult, EventPage, ProcessEvent};
use crate::fold::{self, Authority};
use crate::model::{
    page_limit, Change, ChangePage, Claim, EnvRef, EnvSpec, Grant, GrantDescriptor, GrantedProcess, Lease, Outcome,
    ProcessFilter, ProcessRecord, PruneReport, Registration, SessionDeleteReport, SessionScope, StartGrant,
    StatusFilter, Tombstone, TransferReport, WakeDelivery, Watermark, WorkAction, WorkItem,
};
use crate::registry::{prune_status, CancelAnswer, ProcessRegistry, Registered};
use crate::validate::{self, validate_id, validate_scope};
use crate::{CairnError, Result};

struct Entry {
    record: ProcessRecord,
    lease: Option<Lease>,
    fencing: u64,
    events: Vec<ProcessEvent>,
    replay: HashMap<String, u64>,
    change_cursor: u64,
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
    /// (scope id) -> process id -> grant
    grants: BTreeMap<String, BTreeMap<String, Grant>>,
    wakes: HashMap<String, WakeRow>,
    wake_order: u64,
    changes: BTreeMap<u64, String>,
    cursor: u64,
    /// Worklist index: ids that are run or abandon candidates (lease ignored).
    candidates: BTreeSet<String>,
    envs: HashMap<String, Vec<u8>>,
}

/// The in-memory [`ProcessRegistry`].
pub struct MemoryRegistry {
    state: Mutex<State>,
    clock: SharedClock,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    /// A registry on the system clock.
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// A registry on an injected clock.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            state: Mutex::new(State::default()),
            clock,
        }
    }

    /// Overwrite stored env bytes (to exercise corruption detection in tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn corrupt_env_for_test(&self, env_ref: &str, bytes: Vec<u8>) {
        self.state.lock().envs.insert(env_ref.to_string(), bytes);
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
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
        let candidate = self
            .entries
            .get(id)
            .is_some_and(|e| fold::is_run_candidate(&e.record) || fold::is_abandon_candidate(&e.record));
        if candidate {
            self.candidates.insert(id.to_string());
        } else {
            self.candidates.remove(id);
        }
    }

    /// Append under the state lock: replay check, preparation, persistence.
    fn append(&mut self, id: &str, req: &AppendRequest, authority: Authority, now: u64) -> Result<AppendResult> {
        let entry = match self.entries.get(id) {
            Some(e) => e,
            None => return Err(self.missing(id)),
        };
        fold::validate_replay_key(req)?;
        if let Some(key) = &req.replay_key {
            if let Some(seq) = entry.replay.get(key) {
                let original = &entry.events[(*seq - 1) as usize];
                fold::check_replay(original, req)?;
                return Ok(AppendResult {
                    event: original.clone(),
                    replayed: true,
                    wake: None,
                });
            }
        }
        let prepared = fold::prepare_append(&entry.record, entry.lease.as_ref(), req, authority, now)?;
        let terminal = prepared.event.semantics.terminal.is_some();
        let entry = match self.entries.get_mut(id) {
            Some(e) => e,
            None => return Err(CairnError::UnknownProcess(id.to_string())),
        };
        if let Some(key) = &req.replay_key {
            entry.replay.insert(key.clone(), prepared.event.sequence);
        }
        entry.events.push(prepared.event.clone());
        entry.record = prepared.record;
        if terminal {
            entry.lease = None;
        }
        let mut wake = None;
        if let Some(w) = prepared.wake {
            if !self.wakes.contains_key(&w.wake_id) {
                self.wake_order += 1;
                self.wakes.insert(
                    w.wake_id.clone(),
                    WakeRow {
                        delivery: w.clone(),
                        acked: false,
                        order: self.wake_order,
                    },
                );
                wake = Some(w);
            }
        }
        self.touch(id);
        self.reindex(id);
        Ok(AppendResult {
            event: prepared.event,
            replayed: false,
            wake,
        })
    }

    fn claim(&mut self, id: &str, owner_id: &str, ttl_ms: u64, now: u64) -> Result<Lease> {
        let entry = match self.entries.get_mut(id) {
            Some(e) => e,
            None => return Err(self.missing(id)),
        };
        if let Some(err) = fold::claim_refusal(&entry.record, owner_id, now) {
            return Err(err);
        }
        entry.fencing += 1;
        let lease = Lease {
            process_id: id.to_string(),
            owner_id: owner_id.to_string(),
            lease_token: uuid::Uuid::new_v4().to_string(),
            fencing_token: entry.fencing,
            claimed_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
        };
        entry.record.lease = Some(lease.view());
        entry.lease = Some(lease.clone());
        Ok(lease)
    }

    fn matches(&self, record: &ProcessRecord, filter: &ProcessFilter) -> bool {
        filter.matches(record)
    }
}

#[async_trait]
impl ProcessRegistry for MemoryRegistry {
    async fn register(&self, registration: Registration, grant: Option<StartGrant>) -> Result<Registered> {
        let now = self.now();
        let record = fold::initial_record(&registration, now)?;
        if let Some(g) = &grant {
            validate_scope(&g.session_scope)?;
        }
        let mut st = self.state.lock();
        if let Some(t) = st.tombstones.get(&registration.id) {
            return Err(CairnError::NoLongerRetained(Box::new(t.clone())));
        }
        if let Some(existing) = st.entries.get(&registration.id) {
            if existing.record.registration_hash == record.registration_hash {
                return Ok(Registered {
                    process: existing.record.clone(),
                    created: false,
                });
            }
            return Err(CairnError::RegistrationConflict { id: registration.id });
        }
        if let Some(env) = &record.env_ref {
            if !st.envs.contains_key(env) {
                return Err(CairnError::UnknownEnv(env.clone()));
            }
        }
        let id = record.id.clone();
        st.entries.insert(
            id.clone(),
            Entry {
                record: record.clone(),
                lease: None,
                fencing: 0,
                events: Vec::new(),
                replay: HashMap::new(),
                change_cursor: 0,
            },
        );
        if let Some(g) = grant {
            let grant = Grant {
                scope: g.session_scope.clone(),
                process_id: id.clone(),
                descriptor: g.descriptor,
                granted_at_ms: now,
            };
            st.grants
                .entry(g.session_scope.scope_id())
                .or_default()
                .insert(id.clone(), grant);
        }
        st.touch(&id);
        st.reindex(&id);
        Ok(Registered {
            process: record,
            created: true,
        })
    }

    async fn get(&self, id: &str) -> Result<ProcessRecord> {
        validate_id("process id", id)?;
        let st = self.state.lock();
        Ok(st.entry(id)?.record.clone())
    }

    async fn list(&self, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        let limit = filter.page_size()?;
        let st = self.state.lock();
        let start = filter.after_id.clone().unwrap_or_default();
        Ok(st
            .entries
            .range(start..)
            .map(|(_, e)| &e.record)
            .filter(|r| st.matches(r, filter))
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
            Some(last) if last.sequence < entry.record.last_sequence => Some(last.sequence),
            _ => None,
        };
        Ok(EventPage { events, next_after })
    }

    async fn append_event(&self, id: &str, request: AppendRequest) -> Result<AppendResult> {
        validate_id("process id", id)?;
        let now = self.now();
        self.state.lock().append(id, &request, Authority::Caller, now)
    }

    async fn request_cancel(&self, id: &str, reason: Option<String>) -> Result<CancelAnswer> {
        validate_id("process id", id)?;
        let now = self.now();
        let req = AppendRequest::new(events::CANCEL_REQUESTED, json!({ "reason": reason }))
            .with_replay_key(fold::cancel_replay_key(reason.as_deref()));
        let mut st = self.state.lock();
        let record = &st.entry(id)?.record;
        if record.is_terminal() {
            return Err(CairnError::ProcessTerminal(id.to_string()));
        }
        st.append(id, &req, Authority::Cairn, now)?;
        let record = &st.entry(id)?.record;
        let mut cancelled_now = false;
        if fold::cancels_at_once(record, now) {
            let outcome = Outcome::cancelled(reason.clone().unwrap_or_else(|| "cancelled before it started".into()));
            st.append(id, &fold::terminal_request(&outcome), Authority::Cairn, now)?;
            cancelled_now = true;
        }
        Ok(CancelAnswer {
            process: st.entry(id)?.record.clone(),
            cancelled_now,
        })
    }

    async fn grant(&self, scope: &SessionScope, id: &str, descriptor: GrantDescriptor) -> Result<Grant> {
        validate_scope(scope)?;
        validate_id("process id", id)?;
        let now = self.now();
        let mut st = self.state.lock();
        st.entry(id)?;
        let grant = Grant {
            scope: scope.clone(),
            process_id: id.to_string(),
            descriptor,
            granted_at_ms: now,
        };
        st.grants
            .entry(scope.scope_id())
            .or_default()
            .insert(id.to_string(), grant.clone());
        Ok(grant)
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
        validate_scope(from)?;
        validate_scope(to)?;
        for id in ids {
            validate_id("process id", id)?;
        }
        let now = self.now();
        let mut st = self.state.lock();
        let mut report = TransferReport::default();
        for id in ids {
            let taken = st.grants.get_mut(&from.scope_id()).and_then(|m| m.remove(id));
            match taken {
                Some(g) => {
                    let moved = g.moved_to(to, now);
                    st.grants.entry(to.scope_id()).or_default().insert(id.clone(), moved);
                    report.moved.push(id.clone());
                }
                None => report.not_granted.push(id.clone()),
            }
        }
        Ok(report)
    }

    async fn list_granted_to(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<GrantedProcess>> {
        validate_scope(scope)?;
        let limit = filter.page_size()?;
        let st = self.state.lock();
        let Some(grants) = st.grants.get(&scope.scope_id()) else {
            return Ok(Vec::new());
        };
        Ok(grants
            .values()
            .filter_map(|g| st.entries.get(&g.process_id).map(|e| (g, &e.record)))
            .filter(|(_, r)| st.matches(r, filter))
            .take(limit)
            .map(|(g, r)| GrantedProcess {
                grant: g.clone(),
                process: r.clone(),
            })
            .collect())
    }

    async fn list_originated_by(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        validate_scope(scope)?;
        let limit = filter.page_size()?;
        let st = self.state.lock();
        let start = filter.after_id.clone().unwrap_or_default();
        Ok(st
            .entries
            .range(start..)
            .map(|(_, e)| &e.record)
            .filter(
                |r| matches!(&r.provenance.originator, crate::model::Originator::Session { scope: s } if s == scope),
            )
            .filter(|r| st.matches(r, filter))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn delete_session(&self, session_id: &str) -> Result<SessionDeleteReport> {
        validate_id("session id", session_id)?;
        let mut st = self.state.lock();
        let scope_ids: Vec<String> = st
            .grants
            .iter()
            .filter(|(_, m)| m.values().next().is_some_and(|g| g.scope.session_id == session_id))
            .map(|(k, _)| k.clone())
            .collect();
        let mut report = SessionDeleteReport {
            session_id: session_id.to_string(),
            ..Default::default()
        };
        let mut touched = BTreeSet::new();
        for k in scope_ids {
            if let Some(m) = st.grants.remove(&k) {
                report.revoked_grants += m.len() as u64;
                touched.extend(m.into_keys());
            }
        }
        let before = st.wakes.len();
        st.wakes
            .retain(|_, w| w.acked || w.delivery.target_session_id != session_id);
        report.deleted_wakes = (before - st.wakes.len()) as u64;
        for id in touched {
            let running = st.entries.get(&id).is_some_and(|e| !e.record.is_terminal());
            let still_granted = st.grants.values().any(|m| m.contains_key(&id));
            if running && !still_granted {
                report.orphaned.push(id);
            } else {
                report.preserved.push(id);
            }
        }
        Ok(report)
    }

    async fn pending_wakes(&self, session_id: &str, limit: Option<usize>) -> Result<Vec<WakeDelivery>> {
        validate_id("session id", session_id)?;
        let limit = page_limit(limit)?;
        let st = self.state.lock();
        let mut rows: Vec<&WakeRow> = st
            .wakes
            .values()
            .filter(|w| !w.acked && w.delivery.target_session_id == session_id)
            .collect();
        rows.sort_by_key(|w| w.order);
        Ok(rows.into_iter().take(limit).map(|w| w.delivery.clone()).collect())
    }

    async fn ack_wake(&self, session_id: &str, wake_id: &str) -> Result<bool> {
        validate_id("session id", session_id)?;
        validate_id("wake id", wake_id)?;
        let mut st = self.state.lock();
        match st.wakes.get_mut(wake_id) {
            Some(w) if w.delivery.target_session_id == session_id => Ok(!std::mem::replace(&mut w.acked, true)),
            _ => Err(CairnError::UnknownWake(wake_id.to_string())),
        }
    }

    async fn claim(&self, id: &str, owner_id: &str, ttl_ms: u64) -> Result<Lease> {
        validate_id("process id", id)?;
        validate_id("owner id", owner_id)?;
        fold::check_ttl(ttl_ms)?;
        let now = self.now();
        self.state.lock().claim(id, owner_id, ttl_ms, now)
    }

    async fn claim_batch(&self, owner_id: &str, ttl_ms: u64, limit: usize) -> Result<Vec<Claim>> {
        validate_id("owner id", owner_id)?;
        fold::check_ttl(ttl_ms)?;
        let now = self.now();
        let mut st = self.state.lock();
        let ids: Vec<String> = st
            .candidates
            .iter()
            .filter(|id| {
                st.entries.get(*id).is_some_and(|e| {
                    fold::is_run_candidate(&e.record) && e.lease.as_ref().is_none_or(|l| l.expires_at_ms <= now)
                })
            })
            .take(limit)
            .cloned()
            .collect();
        let mut claims = Vec::with_capacity(ids.len());
        for id in ids {
            let lease = st.claim(&id, owner_id, ttl_ms, now)?;
            let req = fold::started_request(&st.entry(&id)?.record, &lease);
            st.append(&id, &req, Authority::Cairn, now)?;
            claims.push(Claim {
                lease,
                process: st.entry(&id)?.record.clone(),
            });
        }
        Ok(claims)
    }

    async fn record_started(&self, lease: &Lease) -> Result<ProcessRecord> {
        validate_id("process id", &lease.process_id)?;
        let now = self.now();
        let mut st = self.state.lock();
        let req = fold::started_request(&st.entry(&lease.process_id)?.record, lease);
        st.append(&lease.process_id, &req, Authority::Cairn, now)?;
        Ok(st.entry(&lease.process_id)?.record.clone())
    }

    async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        validate_id("process id", &lease.process_id)?;
        fold::check_ttl(ttl_ms)?;
        let now = self.now();
        let mut st = self.state.lock();
        let id = lease.process_id.clone();
        let entry = match st.entries.get_mut(&id) {
            Some(e) => e,
            None => return Err(st.missing(&id)),
        };
        fold::check_lease(&id, entry.lease.as_ref(), lease, now)?;
        let mut renewed = lease.clone();
        renewed.expires_at_ms = now.saturating_add(ttl_ms);
        entry.record.lease = Some(renewed.view());
        entry.lease = Some(renewed.clone());
        Ok(renewed)
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        validate_id("process id", &lease.process_id)?;
        let mut st = self.state.lock();
        let id = lease.process_id.clone();
        let entry = match st.entries.get_mut(&id) {
            Some(e) => e,
            None => return Err(st.missing(&id)),
        };
        let matches = entry.lease.as_ref().is_some_and(|l| {
            l.owner_id == lease.owner_id && l.lease_token == lease.lease_token && l.fencing_token == lease.fencing_token
        });
        if matches {
            entry.lease = None;
            entry.record.lease = None;
        }
        Ok(matches)
    }

    async fn complete(&self, lease: &Lease, outcome: Outcome) -> Result<ProcessRecord> {
        validate_id("process id", &lease.process_id)?;
        let now = self.now();
        let req = fold::terminal_request(&outcome).with_lease(lease.clone());
        let mut st = self.state.lock();
        st.append(&lease.process_id, &req, Authority::Cairn, now)?;
        Ok(st.entry(&lease.process_id)?.record.clone())
    }

    async fn worklist(&self, limit: usize) -> Result<Vec<WorkItem>> {
        let now = self.now();
        let st = self.state.lock();
        Ok(st
            .candidates
            .iter()
            .filter_map(|id| {
                let e = st.entries.get(id)?;
                if e.lease.as_ref().is_some_and(|l| l.expires_at_ms > now) {
                    return None;
                }
                let action = if fold::is_abandon_candidate(&e.record) {
                    WorkAction::ReconcileAbandon
                } else {
                    WorkAction::Run
                };
                Some(WorkItem {
                    process_id: id.clone(),
                    action,
                })
            })
            .take(limit)
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
                    fold::is_abandon_candidate(&e.record) && e.lease.as_ref().is_none_or(|l| l.expires_at_ms <= now)
                })
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn request_abandon(&self, id: &str, requested_by: &str, reason: &str) -> Result<ProcessRecord> {
        validate_id("process id", id)?;
        validate_id("requested_by", requested_by)?;
        let now = self.now();
        let mut st = self.state.lock();
        let record = &st.entry(id)?.record;
        if record.is_terminal() {
            return Err(CairnError::ProcessTerminal(id.to_string()));
        }
        if record.abandon_request.is_some() {
            return Ok(record.clone());
        }
        let req = AppendRequest::new(
            events::ABANDON_REQUESTED,
            json!({"requested_by": requested_by, "reason": reason}),
        );
        st.append(id, &req, Authority::Cairn, now)?;
        Ok(st.entry(id)?.record.clone())
    }

    async fn reconcile_abandon(&self, id: &str) -> Result<Option<ProcessRecord>> {
        validate_id("process id", id)?;
        let now = self.now();
        let mut st = self.state.lock();
        let entry = st.entry(id)?;
        let record = &entry.record;
        if !fold::abandon_reconcilable(record, entry.lease.as_ref(), now) {
            return Ok(None);
        }
        let outcome = fold::reconciled_abandon_outcome(record, now);
        st.append(id, &fold::terminal_request(&outcome), Authority::Cairn, now)?;
        Ok(Some(st.entry(id)?.record.clone()))
    }

    async fn complete_external(&self, id: &str, outcome: Outcome, authority: &str) -> Result<ProcessRecord> {
        validate_id("process id", id)?;
        validate_id("authority", authority)?;
        let req = fold::external_completion(id, &outcome, authority)?;
        let now = self.now();
        let mut st = self.state.lock();
        let record = &st.entry(id)?.record;
        if record.disposition != crate::model::Disposition::ExternallyOwned {
            return Err(CairnError::NotExternallyOwned(id.to_string()));
        }
        st.append(id, &req, Authority::Cairn, now)?;
        Ok(st.entry(id)?.record.clone())
    }

    async fn prune(&self, cutoff_ms: u64, status: StatusFilter, watermark: Watermark) -> Result<PruneReport> {
        let status = prune_status(status)?;
        let now = self.now();
        let mut st = self.state.lock();
        let mut report = PruneReport::default();
        let victims: Vec<String> = st
            .entries
            .iter()
            .filter(|(_, e)| {
                e.record.is_terminal()
                    && status.matches(e.record.status)
                    && e.record.terminal_at_ms.is_some_and(|t| t < cutoff_ms)
            })
            .filter_map(|(id, e)| match watermark {
                Watermark::Cursor { cursor } if e.change_cursor > cursor => {
                    report.held_by_watermark += 1;
                    None
                }
                _ => Some(id.clone()),
            })
            .collect();
        for id in victims {
            let Some(e) = st.entries.remove(&id) else { continue };
            st.changes.remove(&e.change_cursor);
            st.candidates.remove(&id);
            report.pruned += 1;
            report.events_deleted += e.events.len() as u64;
            for m in st.grants.values_mut() {
                if m.remove(&id).is_some() {
                    report.grants_deleted += 1;
                }
            }
            let before = st.wakes.len();
            st.wakes.retain(|_, w| w.delivery.process_id != id);
            report.wakes_deleted += (before - st.wakes.len()) as u64;
            st.tombstones.insert(
                id.clone(),
                Tombstone {
                    id: id.clone(),
                    status: e.record.status,
                    terminal_at_ms: e.record.terminal_at_ms.unwrap_or(e.record.updated_at_ms),
                    pruned_at_ms: now,
                },
            );
        }
        st.grants.retain(|_, m| !m.is_empty());
        Ok(report)
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
                    process: e.record.clone(),
                })
            })
            .collect();
        let next_cursor = changes.last().map_or(cursor, |c| c.cursor);
        Ok(ChangePage { changes, next_cursor })
    }

    async fn put_env(&self, spec: &EnvSpec) -> Result<EnvRef> {
        let (env_ref, bytes) = validate::env_ref_and_bytes(spec)?;
        self.state.lock().envs.entry(env_ref.clone()).or_insert(bytes);
        Ok(env_ref)
    }

    async fn get_env(&self, env_ref: &str) -> Result<EnvSpec> {
        validate_id("env ref", env_ref)?;
        let bytes = self.state.lock().envs.get(env_ref).cloned();
        match bytes {
            Some(b) => validate::decode_env(env_ref, &b),
            None => Err(CairnError::UnknownEnv(env_ref.to_string())),
        }
    }

    async fn fencing_token(&self, id: &str) -> Result<u64> {
        validate_id("process id", id)?;
        Ok(self.state.lock().entry(id)?.fencing)
    }
}
