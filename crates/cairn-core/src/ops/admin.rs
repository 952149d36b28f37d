//! The rules of the writes that span processes: grant transfers, a session's
//! deletion and retention. A backend runs them in one transaction of its own
//! over the primitives of [`AdminTx`]; memory and SQLite answer at once,
//! PostgreSQL awaits its server inside an admin transaction.
//!
//! Invariant: no I/O and no clock here either; the primitives are async only
//! so a networked backend can implement them without blocking.

use crate::model::Grant;
use crate::model::{
    ProcessStatus, PruneReport, SessionDeleteReport, SessionScope, StatusFilter, TransferReport, Watermark,
};
use crate::validate::{validate_id, validate_scope};
use crate::{CairnError, Result};

/// A terminal process a prune may delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneCandidate {
    /// The process.
    pub id: String,
    /// How it ended (its tombstone keeps it).
    pub status: ProcessStatus,
    /// When it ended.
    pub terminal_at_ms: u64,
    /// The change-feed position of its last change (held back by a cursor watermark).
    pub change_cursor: u64,
    /// The process that started it (`caused_by`), if one did.
    pub parent: Option<String>,
    /// Its definition name ([`crate::model::ProcessInput::definition`]).
    pub definition: String,
    /// Its originator's scope id ([`crate::model::Originator::scope_id`]).
    pub originator: String,
    /// When it was created.
    pub created_at_ms: u64,
}

/// Where a walk goes on after a chunk read from `read` (in walk order) when
/// `limit` were asked: past the last, if the chunk was full.
pub fn next_position(read: &[PruneCandidate], limit: usize) -> Option<PrunePosition> {
    (read.len() >= limit)
        .then(|| read.last().map(PruneCandidate::position))
        .flatten()
}

impl PruneCandidate {
    /// Its place in a prune's walk.
    pub fn position(&self) -> PrunePosition {
        PrunePosition {
            terminal_at_ms: self.terminal_at_ms,
            id: self.id.clone(),
        }
    }

    /// Whether it comes after `after` in a prune's walk (all do after none).
    pub fn is_after(&self, after: Option<&PrunePosition>) -> bool {
        after.is_none_or(|a| (self.terminal_at_ms, self.id.as_str()) > (a.terminal_at_ms, a.id.as_str()))
    }
}

/// Where a prune's walk over the candidates stands: it goes in (terminal
/// time, id) order, a chunk at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunePosition {
    /// The last candidate's terminal time.
    pub terminal_at_ms: u64,
    /// The last candidate's id.
    pub id: String,
}

/// How many candidates one prune transaction takes: a prune commits chunk by
/// chunk, so the writes of live work (lease renewals, completions) go on
/// between its chunks, however much there is to delete.
pub const PRUNE_CHUNK: usize = 256;

/// What deleting pruned processes removed beside them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Events deleted.
    pub events: u64,
    /// Grants deleted.
    pub grants: u64,
    /// Wake deliveries deleted.
    pub wakes: u64,
}

/// Where a process a session's deletion touched stands afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantState {
    /// The process.
    pub id: String,
    /// The process exists and is running.
    pub running: bool,
    /// Some scope still holds a grant on it.
    pub granted: bool,
}

/// The storage primitives of one admin transaction. Each sees the writes made
/// before it in the same transaction; on `Err` the caller rolls back.
#[allow(async_fn_in_trait)]
pub trait AdminTx {
    /// The time of this transaction, in epoch ms.
    fn now(&self) -> u64;

    /// Remove the grant of (scope, process), answering it.
    async fn take_grant(&mut self, scope: &SessionScope, id: &str) -> Result<Option<Grant>>;

    /// Insert or replace the grant of (scope, process).
    async fn put_grant(&mut self, grant: &Grant) -> Result<()>;

    /// Move the grants `from` holds on processes `ids` (sorted, distinct) to
    /// `to` ([`Grant::moved_to`] at `now`), each replacing the grant `to`
    /// held on that process, if any; answers the ids moved, in id order.
    /// The grants are taken in id order, so two transfers touching the same
    /// grants take them in the same order. By default one
    /// [`Self::take_grant`] and [`Self::put_grant`] per id; a networked store
    /// does it in a few statements.
    async fn move_grants(
        &mut self,
        from: &SessionScope,
        to: &SessionScope,
        ids: &[&str],
        now: u64,
    ) -> Result<Vec<String>> {
        let mut moved = Vec::new();
        for id in ids {
            if let Some(grant) = self.take_grant(from, id).await? {
                self.put_grant(&grant.moved_to(to, now)).await?;
                moved.push((*id).to_string());
            }
        }
        Ok(moved)
    }

    /// Remove every grant of every scope of the session, or with
    /// `keep_frames` only those to the session as a whole (`session:{id}`,
    /// its agent frames' kept); one process id per removed grant.
    async fn delete_session_grants(&mut self, session_id: &str, keep_frames: bool) -> Result<Vec<String>>;

    /// Remove the grants the session's scopes held on pruned processes
    /// (kept by [`Self::delete_pruned`]), or with `keep_frames` only those of
    /// the session as a whole; how many.
    async fn delete_session_pruned_grants(&mut self, session_id: &str, keep_frames: bool) -> Result<u64>;

    /// Remove the session's pending (unacknowledged) wakes; how many.
    async fn delete_pending_wakes(&mut self, session_id: &str) -> Result<u64>;

    /// The state of each id, in the order given.
    async fn grant_states(&mut self, ids: &[String]) -> Result<Vec<GrantState>>;

    /// The next chunk of a prune's walk: of the terminal processes whose
    /// terminal time is before `cutoff_ms` and whose status passes `status`,
    /// the first `limit` after `after` in (terminal time, id) order, locked
    /// for deletion (a store with row locks takes them in id order, as its
    /// other writes do, and skips a row another prune deleted meanwhile);
    /// and where the walk goes on: the last of them read, when `limit` were
    /// read (`None`: the walk is done).
    async fn prune_candidates(
        &mut self,
        cutoff_ms: u64,
        status: StatusFilter,
        after: Option<&PrunePosition>,
        limit: usize,
    ) -> Result<(Vec<PruneCandidate>, Option<PrunePosition>)>;

    /// Of the ended processes `ids`, those with a descendant that has not
    /// ended (through ended children too): a cancel of the tree reaches it
    /// through them.
    async fn with_running_descendants(&mut self, ids: &[String]) -> Result<std::collections::HashSet<String>>;

    /// Lock the rows of processes `ids` (sorted, distinct) against a
    /// concurrent prune before their grants move, in id order. A store whose
    /// transactions run one at a time needs nothing.
    async fn lock_for_transfer(&mut self, _ids: &[&str]) -> Result<()> {
        Ok(())
    }

    /// Delete these processes with their events, grants, wakes and lease, and
    /// leave a tombstone for each, pruned at `now`, with the scopes whose
    /// grants on it were deleted (read by `ProcessRegistry::pruned_grant`).
    async fn delete_pruned(&mut self, victims: &[PruneCandidate]) -> Result<Deleted>;
}

/// Check the arguments of a transfer.
pub fn check_transfer(from: &SessionScope, to: &SessionScope, ids: &[String]) -> Result<()> {
    validate_scope(from)?;
    validate_scope(to)?;
    if from == to {
        return Err(CairnError::InvalidRequest(format!(
            "a transfer from `{}` to itself would move nothing: name another scope to move the grants to",
            from.scope_id()
        )));
    }
    for id in ids {
        validate_id("process id", id)?;
    }
    Ok(())
}

/// Move grants from one scope to another; processes never change.
/// Arguments are checked by [`check_transfer`].
pub async fn transfer<T: AdminTx + ?Sized>(
    tx: &mut T,
    from: &SessionScope,
    to: &SessionScope,
    ids: &[String],
) -> Result<TransferReport> {
    let now = tx.now();
    let mut report = TransferReport::default();
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    tx.lock_for_transfer(&sorted).await?;
    // The grants are moved in id order too (two transfers of one scope's
    // grants, named in other orders, take their rows in the same order), and
    // reported in the order they were named; an id named twice is one grant
    // to move, reported once.
    let moved: std::collections::HashSet<String> = tx.move_grants(from, to, &sorted, now).await?.into_iter().collect();
    let mut seen = std::collections::HashSet::new();
    for id in ids.iter().filter(|id| seen.insert(id.as_str())) {
        if moved.contains(id.as_str()) {
            report.moved.push(id.clone());
        } else {
            report.not_granted.push(id.clone());
        }
    }
    Ok(report)
}

/// Remove a session's grants (with `keep_frames`, only those to the session
/// as a whole: its agent frames keep theirs), those kept of its pruned
/// processes by the same rule, and its pending wakes, and report
/// what is left of the processes whose grants it removed: running with no
/// grant (orphaned) or not (preserved; a grant kept by a frame counts).
/// Never changes a process.
pub async fn delete_session<T: AdminTx + ?Sized>(
    tx: &mut T,
    session_id: &str,
    keep_frames: bool,
) -> Result<SessionDeleteReport> {
    let removed = tx.delete_session_grants(session_id, keep_frames).await?;
    let revoked_grants = removed.len() as u64;
    let mut touched = removed;
    touched.sort();
    touched.dedup();
    tx.delete_session_pruned_grants(session_id, keep_frames).await?;
    let deleted_wakes = tx.delete_pending_wakes(session_id).await?;
    let (mut orphaned, mut preserved) = (Vec::new(), Vec::new());
    for state in tx.grant_states(&touched).await? {
        if state.running && !state.granted {
            orphaned.push(state.id);
        } else {
            preserved.push(state.id);
        }
    }
    Ok(SessionDeleteReport {
        session_id: session_id.to_string(),
        revoked_grants,
        deleted_wakes,
        orphaned,
        preserved,
    })
}

/// One chunk of a prune, in one transaction: of the next [`PRUNE_CHUNK`]
/// terminal processes older than the cutoff after `after`, delete those the
/// filter admits, except those a cursor watermark holds back, children
/// whose parent still runs (it may yet read how they ended) and those with a
/// descendant that still runs (a tree cancel reaches it through them),
/// leaving tombstones. Answers what it did and where the next chunk starts (`None`
/// when the walk is done). `status` is checked by
/// [`crate::model::PruneFilter::validate`]. A backend's prune runs chunks in
/// transactions of their own until the walk is done ([`PruneReport::add`]).
pub async fn prune<T: AdminTx + ?Sized>(
    tx: &mut T,
    cutoff_ms: u64,
    filter: &crate::model::PruneFilter,
    watermark: Watermark,
    after: Option<&PrunePosition>,
) -> Result<(PruneReport, Option<PrunePosition>)> {
    let mut report = PruneReport::default();
    let (mut victims, next) = tx
        .prune_candidates(cutoff_ms, filter.status, after, PRUNE_CHUNK)
        .await?;
    victims.retain(|v| filter.admits(&v.definition, &v.originator, v.parent.as_deref(), v.created_at_ms));
    victims.retain(|v| match watermark {
        Watermark::Cursor { cursor } if v.change_cursor > cursor => {
            report.held_by_watermark += 1;
            false
        }
        _ => true,
    });
    let mut parents: Vec<String> = victims.iter().filter_map(|v| v.parent.clone()).collect();
    parents.sort();
    parents.dedup();
    if !parents.is_empty() {
        let running: std::collections::HashSet<String> = tx
            .grant_states(&parents)
            .await?
            .into_iter()
            .filter(|s| s.running)
            .map(|s| s.id)
            .collect();
        victims.retain(|v| match &v.parent {
            Some(p) if running.contains(p) => {
                report.held_by_running_parent += 1;
                false
            }
            _ => true,
        });
    }
    if !victims.is_empty() {
        let ids: Vec<String> = victims.iter().map(|v| v.id.clone()).collect();
        let above_running = tx.with_running_descendants(&ids).await?;
        victims.retain(|v| {
            let keep = above_running.contains(&v.id);
            report.held_by_running_descendant += u64::from(keep);
            !keep
        });
    }
    if victims.is_empty() {
        return Ok((report, next));
    }
    let deleted = tx.delete_pruned(&victims).await?;
    report.pruned = victims.len() as u64;
    report.events_deleted = deleted.events;
    report.grants_deleted = deleted.grants;
    report.wakes_deleted = deleted.wakes;
    Ok((report, next))
}
