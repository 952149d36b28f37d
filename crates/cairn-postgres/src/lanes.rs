//! Write lanes: each lane owns one connection and commits every operation
//! queued behind its previous commit as one batch (see [`crate::uow`]).
//!
//! Operations on one process always go to the same lane, so within a node they
//! commit in the order they were submitted and two lanes never contend for a
//! row. Batch claims go to the lanes round robin.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::clock::SharedClock;
use cairn_core::ops::{Answer, Op};
use cairn_core::{CairnError, Result};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Config;

use crate::conn::{describe, is_transient, open_retrying, Conn};
use crate::uow::{run_batch, BatchError, Target};

/// How many times a batch is run again after a transient fault.
const RETRIES: u32 = 5;

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Answer>>,
    /// [`QUEUED`] until a lane takes the job into a batch ([`TAKEN`]) or its
    /// submitter stops waiting first ([`DROPPED`]): whoever moves it on
    /// first decides whether it is ever sent.
    state: Arc<AtomicU8>,
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const DROPPED: u8 = 2;

/// What every lane shares.
pub(crate) struct LaneConfig {
    pub config: Config,
    pub schema: String,
    pub target: Target,
    pub clock: SharedClock,
    pub max_batch: usize,
    /// Longest a submitter waits for its answer ([`crate::PostgresOptions::call_timeout`]).
    pub call_timeout: Duration,
}

pub(crate) struct Lanes {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    shared: Arc<LaneConfig>,
}

impl Lanes {
    /// Open `count` lanes, each with its connection (opened now, so a bad URL
    /// fails here rather than on the first write).
    pub async fn start(shared: Arc<LaneConfig>, count: usize) -> Result<Self> {
        let mut senders = Vec::new();
        for i in 0..count.max(1) {
            let conn = open_retrying(&shared.config, &shared.schema, "write", 3).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(lane(shared.clone(), i, conn, rx));
            senders.push(tx);
        }
        Ok(Self {
            senders,
            next: AtomicUsize::new(0),
            shared,
        })
    }

    /// Run `ops` as one batch, as a lane runs the work it gathered, on a
    /// connection of its own (tests of what one batch answers).
    #[cfg(any(test, feature = "test-util"))]
    pub async fn run_together(&self, ops: Vec<Op>) -> Vec<Result<Answer>> {
        let mut conn = None;
        execute(&self.shared, usize::MAX, &mut conn, &ops).await
    }

    /// Forget which type lists this node's lanes stored: a collection on
    /// this node may just have deleted some (with a grace shorter than
    /// their trust, as a test's), and the next batch naming one stores it
    /// again.
    pub fn forget_type_lists(&self) {
        self.shared.target.stored_types.lock().clear();
    }

    /// Make every type list this node's lanes stored look stored `by`
    /// earlier by this host's monotonic clock, the registry's clock left as
    /// it is (tests of the trust's end).
    #[cfg(any(test, feature = "test-util"))]
    pub fn age_type_lists(&self, by: Duration) {
        for stored in self.shared.target.stored_types.lock().values_mut() {
            if let Some(earlier) = stored.instant.checked_sub(by) {
                stored.instant = earlier;
            }
        }
    }

    /// Queue `op` and wait for its answer.
    pub async fn submit(&self, op: Op) -> Result<Answer> {
        let lane = match op.process_id() {
            Some(id) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                id.hash(&mut h);
                (h.finish() % self.senders.len() as u64) as usize
            }
            None => self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len(),
        };
        let bounded = bounded(&op);
        let (reply, answer) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        self.senders[lane]
            .send(Job {
                op,
                reply,
                state: state.clone(),
            })
            .map_err(|_| CairnError::Unavailable("postgres registry is shut down".into()))?;
        let stopped = |_| CairnError::Unavailable("postgres write lane stopped".into());
        if !bounded {
            return answer.await.map_err(stopped)?;
        }
        let bound = self.shared.call_timeout;
        match tokio::time::timeout(bound, answer).await {
            Ok(answer) => answer.map_err(stopped)?,
            // Still queued behind a batch the server has not answered: it
            // never will be sent.
            Err(_)
                if state
                    .compare_exchange(QUEUED, DROPPED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok() =>
            {
                Err(CairnError::Unavailable(format!(
                    "postgres: this write waited {} s (URL parameter `call_timeout`) behind writes the server \
                     had not finished (a server not answering, or writes queued faster than it takes them); \
                     it was not sent",
                    bound.as_secs()
                )))
            }
            Err(_) => Err(CairnError::OutcomeUnknown(format!(
                "postgres: the server did not answer this write within {} s (URL parameter `call_timeout`); \
                 it was taken into a batch to send and may still land: read the state it changes before retrying",
                bound.as_secs()
            ))),
        }
    }
}

/// Whether a submitter of `op` gives up at the call timeout. A request's
/// writes do: their caller is told what may have happened. A worker's lease
/// writes (claims, starts, renewals, waits, completions, releases, sweeps)
/// and a run's own appends and children do not, as before the timeout: a
/// worker told `outcome_unknown` of a claim could not tell which processes
/// it then holds (an owner-bound one would be started and never run), and a
/// run's writes are bounded by its lease's guard.
fn bounded(op: &Op) -> bool {
    match op {
        Op::Claim { .. }
        | Op::ClaimBatch { .. }
        | Op::RecordStarted { .. }
        | Op::Renew { .. }
        | Op::Release { .. }
        | Op::Complete { .. }
        | Op::ReconcileAbandon { .. }
        | Op::Sweep { .. }
        | Op::Wait { .. }
        | Op::Resume { .. } => false,
        Op::Append { request, .. } => request.lease.is_none(),
        Op::Register { parent_lease, .. } => parent_lease.is_none(),
        _ => true,
    }
}

async fn lane(shared: Arc<LaneConfig>, index: usize, conn: Conn, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut conn = Some(conn);
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        gather(&mut rx, &mut jobs, shared.max_batch).await;
        // A job whose submitter gave up waiting is not sent: it was told so.
        jobs.retain(|j| {
            j.state
                .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if jobs.is_empty() {
            continue;
        }
        let (ops, replies): (Vec<Op>, Vec<_>) = jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
        let outs = execute(&shared, index, &mut conn, &ops).await;
        for (reply, out) in replies.into_iter().zip(outs) {
            let _ = reply.send(out);
        }
    }
}

/// Most times a lane yields to let submitters queue more work before it runs a batch.
const GATHER_YIELDS: usize = 4;

/// Take what is queued behind the first job, up to `max`. A reply wakes many
/// submitters at once, and the first to submit again wakes the lane before the
/// others have run; so the lane yields (a few microseconds when nothing else is
/// ready) while each yield brings more work, and the batch holds them all.
async fn gather(rx: &mut mpsc::UnboundedReceiver<Job>, jobs: &mut Vec<Job>, max: usize) {
    let drain = |rx: &mut mpsc::UnboundedReceiver<Job>, jobs: &mut Vec<Job>| {
        while jobs.len() < max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
    };
    drain(rx, jobs);
    for _ in 0..GATHER_YIELDS {
        if jobs.len() >= max {
            return;
        }
        let before = jobs.len();
        tokio::task::yield_now().await;
        drain(rx, jobs);
        if jobs.len() == before {
            return;
        }
    }
}

/// Run a batch to an answer per operation: retry transient faults on a fresh
/// connection, and split a batch that fails for another reason so that only
/// the operation at fault fails.
async fn execute(shared: &LaneConfig, index: usize, conn: &mut Option<Conn>, ops: &[Op]) -> Vec<Result<Answer>> {
    let mut delay = Duration::from_millis(5);
    let mut attempt = 0;
    loop {
        if conn.as_ref().is_none_or(Conn::is_closed) {
            match open_retrying(&shared.config, &shared.schema, "write", 5).await {
                Ok(c) => *conn = Some(c),
                Err(e) => return ops.iter().map(|_| Err(e.clone())).collect(),
            }
        }
        let Some(c) = conn.as_ref() else { continue };
        let now = shared.clock.now_ms();
        match run_batch(c, ops, now, &shared.target).await {
            Ok(outs) => return outs,
            Err(BatchError::Ambiguous(e)) => {
                tracing::warn!(lane = index, error = %describe(&e), "connection lost during COMMIT");
                let msg = format!(
                    "postgres: the connection broke while committing ({}); the write may or may not have \
                     landed: read the process to find out",
                    describe(&e)
                );
                return ops
                    .iter()
                    .map(|_| Err(CairnError::OutcomeUnknown(msg.clone())))
                    .collect();
            }
            Err(BatchError::NotCommitted(fault)) => {
                let transient = matches!(&fault, crate::Fault::Pg(e) if is_transient(e));
                if transient && attempt < RETRIES {
                    attempt += 1;
                    tracing::debug!(
                        lane = index,
                        attempt,
                        "transient postgres fault; running the batch again"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                    continue;
                }
                if ops.len() > 1 {
                    // Isolate the culprit: run each operation as its own batch.
                    let mut outs = Vec::with_capacity(ops.len());
                    for op in ops {
                        let one = Box::pin(execute(shared, index, conn, std::slice::from_ref(op))).await;
                        outs.extend(one);
                    }
                    return outs;
                }
                let err = CairnError::from(fault);
                return vec![Err(err)];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(i: usize) -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            op: Op::ReconcileAbandon { id: format!("p-{i}") },
            reply,
            state: Arc::default(),
        }
    }

    /// Submitters woken by one batch's replies submit again together; the
    /// first wakes the lane, which must still take them all in one batch.
    ///
    /// Every party, the one that opens the barrier included, runs on the
    /// runtime's worker thread, as a lane's replies do: the test's own thread
    /// would wake the submitters one at a time into the injection queue, and
    /// under load the lane could take the first and find the rest not yet
    /// queued.
    async fn gathered(submitters: usize, max: usize) -> usize {
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let go = Arc::new(tokio::sync::Barrier::new(submitters + 1));
            let lane = tokio::spawn(async move {
                let first = rx.recv().await.expect("a job");
                let mut jobs = vec![first];
                gather(&mut rx, &mut jobs, max).await;
                jobs.len()
            });
            for i in 0..submitters {
                let (tx, go) = (tx.clone(), go.clone());
                tokio::spawn(async move {
                    go.wait().await;
                    // The lane drops its receiver once its batch is full.
                    let _ = tx.send(job(i));
                });
            }
            go.wait().await;
            lane.await.expect("lane")
        })
        .await
        .expect("the test's task")
    }

    // One worker thread, so a woken lane runs next on the thread that woke it,
    // as it does under load.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_batch_takes_every_submitter_woken_together() {
        assert_eq!(gathered(32, 512).await, 32);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_batch_never_exceeds_its_maximum() {
        assert_eq!(gathered(32, 8).await, 8);
    }
}
