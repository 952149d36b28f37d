//! The overlay a batch decides against: the rows it loaded, what its
//! operations changed, and a journal to undo a failing operation alone.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use cairn_core::events::ProcessEvent;
use cairn_core::fold;
use cairn_core::model::{CausalRef, Grant, Lease, ProcessRecord, Tombstone, WakeDelivery};
use cairn_core::ops::{self, Answer, Op, WriteTx};
use cairn_core::{CairnError, Result};

use crate::rows::Entry;

/// A loaded (or newly registered) process row in the overlay.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) entry: Option<Entry>,
    /// The row exists in the database (update rather than insert).
    pub(super) stored: bool,
    /// The row must be written.
    pub(super) dirty: bool,
    /// The record changed (the change-feed cursor moves).
    pub(super) changed: bool,
}

/// What the running operation changed, to undo it if it fails.
#[derive(Default)]
pub(super) struct Journal {
    /// Each slot the operation changed, as it was before its first change.
    slots: HashMap<String, Option<Slot>>,
    replays: Vec<(String, String)>,
    grants: Vec<((String, String), Option<Grant>)>,
    wake_ids: Vec<String>,
    events: usize,
    wakes: usize,
}

/// The overlay a batch decides against, and the writes it collects.
pub(crate) struct Uow {
    pub(super) now: u64,
    pub(super) slots: HashMap<String, Slot>,
    pub(super) tombstones: HashMap<String, Tombstone>,
    pub(super) replays: HashMap<(String, String), ProcessEvent>,
    pub(super) envs: HashSet<String>,
    pub(super) candidates: VecDeque<String>,
    pub(super) events: Vec<ProcessEvent>,
    pub(super) wakes: Vec<WakeDelivery>,
    pub(super) wake_ids: HashSet<String>,
    pub(super) grants: HashMap<(String, String), Grant>,
    /// The stored grants of the parents whose holders a child may take
    /// ([`Op::inherits_grants_from`]), loaded after their rows' locks.
    pub(super) parent_grants: HashMap<String, Vec<Grant>>,
    /// Ids whose log moved, with their last sequence (for notifications).
    pub(super) touched: HashMap<String, u64>,
    pub(super) work: bool,
    pub(super) journal: Journal,
    /// The slots' ids by the parent process their provenance names, and
    /// the slot count it was made at (made again when another count says
    /// slots came or went otherwise than through [`Uow::put`]): a cancel's
    /// cascade asks for the children of each descendant in turn, and a scan
    /// of every slot for each would be quadratic in the tree.
    children: Option<(usize, HashMap<String, BTreeSet<String>>)>,
}

impl Uow {
    pub(super) fn new(now: u64) -> Self {
        Self {
            now,
            slots: HashMap::new(),
            tombstones: HashMap::new(),
            replays: HashMap::new(),
            envs: HashSet::new(),
            candidates: VecDeque::new(),
            events: Vec::new(),
            wakes: Vec::new(),
            wake_ids: HashSet::new(),
            grants: HashMap::new(),
            parent_grants: HashMap::new(),
            touched: HashMap::new(),
            work: false,
            journal: Journal::default(),
            children: None,
        }
    }

    // ------------------------------------------------------------ the overlay

    /// Journal the slot of `id` as it was before the running operation's first
    /// change: the entry moves into the journal when `take` (the operation is
    /// about to replace it), else it is copied.
    fn journal_slot(&mut self, id: &str, take: bool) {
        if self.journal.slots.contains_key(id) {
            return;
        }
        let before = match self.slots.get_mut(id) {
            Some(slot) if take => Some(Slot {
                entry: slot.entry.take(),
                ..*slot
            }),
            Some(slot) => Some(slot.clone()),
            None => None,
        };
        self.journal.slots.insert(id.to_string(), before);
    }

    /// Store `entry` (journalled already); `changed` when its record changed.
    fn put(&mut self, mut entry: Entry, changed: bool) {
        entry.normalise();
        let claimable = entry.lease.as_ref().is_none_or(|l| l.expires_at_ms <= self.now);
        if claimable && (fold::is_run_candidate(&entry.record) || fold::is_abandon_candidate(&entry.record)) {
            // Claimable now, or (a suspension with a deadline) at a new due time
            // every driver should look at.
            self.work = true;
        }
        let id = entry.record.id.clone();
        if changed {
            self.touched.insert(id.clone(), entry.record.last_sequence);
        }
        // The slot joins the children index, when there is one, if it is
        // not in it (a child registered in the batch, or a row whose slot
        // held no entry when it was made); without one nothing is copied.
        let indexed = self.children.as_ref().is_some_and(|(n, _)| *n == self.slots.len());
        let child = indexed
            .then(|| {
                let parent = entry.record.provenance.caused_by.as_ref()?.parent_process()?;
                Some((parent.to_string(), id.clone()))
            })
            .flatten();
        let slot = self.slots.entry(id).or_insert(Slot {
            entry: None,
            stored: false,
            dirty: false,
            changed: false,
        });
        slot.entry = Some(entry);
        slot.dirty = true;
        slot.changed |= changed;
        if indexed {
            let now = self.slots.len();
            if let Some((made_at, index)) = self.children.as_mut() {
                *made_at = now;
                if let Some((parent, id)) = child {
                    index.entry(parent).or_default().insert(id);
                }
            }
        }
    }

    fn loaded(&mut self, id: &str) -> Result<&mut Entry> {
        self.slots
            .get_mut(id)
            .and_then(|s| s.entry.as_mut())
            .ok_or_else(|| CairnError::UnknownProcess(id.to_string()))
    }

    fn begin(&mut self) {
        self.journal = Journal {
            events: self.events.len(),
            wakes: self.wakes.len(),
            ..Journal::default()
        };
    }

    fn undo(&mut self) {
        // Slots the operation added go: the children index is made again.
        self.children = None;
        let journal = std::mem::take(&mut self.journal);
        for (id, before) in journal.slots {
            restore(&mut self.slots, id, before);
        }
        for key in journal.replays {
            self.replays.remove(&key);
        }
        for (key, before) in journal.grants.into_iter().rev() {
            restore(&mut self.grants, key, before);
        }
        for id in journal.wake_ids {
            self.wake_ids.remove(&id);
        }
        self.events.truncate(journal.events);
        self.wakes.truncate(journal.wakes);
    }

    /// Run one operation; on failure nothing it did remains in the overlay.
    /// One that panics fails alone, as a SQLite write job does: the lane's
    /// task (every later write of the lane) must not go down with it.
    pub(super) fn run(&mut self, op: &Op) -> Result<Answer> {
        self.begin();
        let out = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ops::run(self, op))) {
            Ok(out) => out,
            Err(_) => Err(cairn_core::CairnError::storage(
                "a write operation panicked; it was undone",
            )),
        };
        if out.is_err() {
            self.undo();
        }
        out
    }
}

impl WriteTx for Uow {
    fn now(&self) -> u64 {
        self.now
    }

    fn row(&mut self, id: &str) -> Result<Option<&Entry>> {
        Ok(self.slots.get(id).and_then(|s| s.entry.as_ref()))
    }

    fn tombstone(&mut self, id: &str) -> Result<Option<Tombstone>> {
        Ok(self.tombstones.get(id).cloned())
    }

    fn replayed(&mut self, id: &str, replay_key: &str) -> Result<Option<ProcessEvent>> {
        Ok(self.replays.get(&(id.to_string(), replay_key.to_string())).cloned())
    }

    fn env_stored(&mut self, env_ref: &str) -> Result<bool> {
        Ok(self.envs.contains(env_ref))
    }

    /// Candidates locked by the load, skipping those an earlier operation of
    /// the batch took or changed.
    fn tree_children(&mut self, parent: &str) -> Result<Vec<String>> {
        // The batch loaded and locked the tree of every process it cancels
        // (`load_descendants`: unended descendants, through ended children
        // that have children); children it registered are slots too.
        if self.children.as_ref().is_none_or(|(n, _)| *n != self.slots.len()) {
            let mut index: HashMap<String, BTreeSet<String>> = HashMap::new();
            for (id, slot) in &self.slots {
                let parent = slot
                    .entry
                    .as_ref()
                    .and_then(|e| e.record.provenance.caused_by.as_ref())
                    .and_then(CausalRef::parent_process);
                if let Some(parent) = parent {
                    index.entry(parent.to_string()).or_default().insert(id.clone());
                }
            }
            self.children = Some((self.slots.len(), index));
        }
        let Some((_, index)) = &self.children else {
            return Ok(Vec::new());
        };
        // A slot whose entry is gone (taken, or undone) is no child now; nor
        // is an ended child with no children here, as on the other backends
        // (those it has are loaded: only unended ones matter). The set keeps
        // them in id order.
        let live = |id: &String| self.slots.get(id).and_then(|s| s.entry.as_ref());
        Ok(index
            .get(parent)
            .into_iter()
            .flatten()
            .filter(|id| {
                live(id).is_some_and(|e| {
                    !e.record.is_terminal()
                        || index
                            .get(*id)
                            .is_some_and(|kids| kids.iter().any(|k| live(k).is_some()))
                })
            })
            .cloned()
            .collect())
    }

    fn run_candidates(&mut self, limit: usize) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        while ids.len() < limit {
            let Some(id) = self.candidates.pop_front() else { break };
            let Some(entry) = self.slots.get(&id).and_then(|s| s.entry.as_ref()) else {
                continue;
            };
            let due = match &entry.lease {
                Some(l) => l.expires_at_ms,
                None => fold::resumable_at(&entry.record).unwrap_or(0),
            };
            if due <= self.now && fold::is_run_candidate(&entry.record) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn insert_row(&mut self, record: ProcessRecord) -> Result<()> {
        self.journal_slot(&record.id, true);
        self.put(
            Entry {
                record,
                lease: None,
                fencing: 0,
            },
            true,
        );
        Ok(())
    }

    fn update_record(&mut self, record: ProcessRecord, release_lease: bool) -> Result<()> {
        let id = record.id.clone();
        // The entry being replaced moves into the journal (no copy of its
        // record) unless an earlier change of this operation journalled it.
        self.journal_slot(&id, true);
        let (lease, fencing) = match self.slots.get_mut(&id).and_then(|s| s.entry.take()) {
            Some(current) => (current.lease, current.fencing),
            None => {
                let before = self
                    .journal
                    .slots
                    .get(&id)
                    .and_then(Option::as_ref)
                    .and_then(|s| s.entry.as_ref())
                    .ok_or_else(|| CairnError::UnknownProcess(id.clone()))?;
                (before.lease.clone(), before.fencing)
            }
        };
        let lease = if release_lease { None } else { lease };
        self.put(Entry { record, lease, fencing }, true);
        Ok(())
    }

    fn set_lease(&mut self, id: &str, lease: Option<Lease>, fencing: u64) -> Result<()> {
        self.loaded(id)?;
        self.journal_slot(id, false);
        let mut entry = self
            .slots
            .get_mut(id)
            .and_then(|s| s.entry.take())
            .ok_or_else(|| CairnError::UnknownProcess(id.to_string()))?;
        entry.lease = lease;
        entry.fencing = fencing;
        self.put(entry, false);
        Ok(())
    }

    fn push_event(&mut self, event: &ProcessEvent) -> Result<()> {
        if let Some(key) = &event.replay_key {
            let k = (event.process_id.clone(), key.clone());
            self.replays.insert(k.clone(), event.clone());
            self.journal.replays.push(k);
        }
        self.events.push(event.clone());
        Ok(())
    }

    fn insert_wake(&mut self, wake: &WakeDelivery) -> Result<bool> {
        if !self.wake_ids.insert(wake.wake_id.clone()) {
            return Ok(false);
        }
        self.journal.wake_ids.push(wake.wake_id.clone());
        self.wakes.push(wake.clone());
        Ok(true)
    }

    fn upsert_grant(&mut self, grant: &Grant) -> Result<()> {
        let key = (grant.scope.scope_id(), grant.process_id.clone());
        let before = self.grants.insert(key.clone(), grant.clone());
        self.journal.grants.push((key, before));
        Ok(())
    }

    fn grants_of(&mut self, id: &str) -> Result<Vec<Grant>> {
        // The stored grants (loaded for the parents that may be asked, none
        // for a row this batch created), overlaid with this batch's.
        let stored = match self.parent_grants.get(id) {
            Some(stored) => stored.as_slice(),
            None if self.slots.get(id).is_some_and(|s| !s.stored) => &[],
            None => {
                return Err(CairnError::storage(format!(
                    "the grants of `{id}` were not loaded with the batch"
                )))
            }
        };
        let mut by_scope: std::collections::BTreeMap<String, Grant> =
            stored.iter().map(|g| (g.scope.scope_id(), g.clone())).collect();
        for ((scope_id, process_id), g) in &self.grants {
            if process_id == id {
                by_scope.insert(scope_id.clone(), g.clone());
            }
        }
        Ok(by_scope.into_values().collect())
    }
}

/// Put `key` back as the journal saw it: its earlier value, or absent.
fn restore<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, before: Option<V>) {
    match before {
        Some(v) => {
            map.insert(key, v);
        }
        None => {
            map.remove(&key);
        }
    }
}
