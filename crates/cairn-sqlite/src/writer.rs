//! The group-commit writer: one thread owns the only write connection and runs
//! queued write jobs, many to a transaction.
//!
//! Every `fsync` of the WAL is shared by all jobs that were queued while the
//! previous commit ran, so concurrent writers pay for one commit between them
//! instead of one each. Each job runs inside its own `SAVEPOINT`: a job that
//! fails rolls back to it and only its caller sees the error; the jobs around it
//! still commit. Callers are answered only after the commit that carries their
//! job succeeded, so an acknowledged write is durable.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use cairn_core::{CairnError, Result};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use crate::store::{self, Fault};

/// Counters of the writer, for diagnostics and tests of group commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions committed (each one WAL sync).
    pub commits: u64,
    /// Jobs carried by those commits (failed jobs included: they were answered too).
    pub jobs: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    jobs: AtomicU64,
    /// Commit attempts begun and ended (committed or not): while they differ,
    /// a commit of ours may be visible to other connections but not yet counted.
    attempts_begun: AtomicU64,
    attempts_ended: AtomicU64,
    /// How far this writer's committed transactions moved the stored change
    /// cursor, in all; added before `attempts_ended` counts the commit.
    cursor_moved: AtomicU64,
}

/// What the watcher of other writers reads of this writer's commits.
pub(crate) struct OwnCommits(Arc<Counters>);

impl OwnCommits {
    /// Commit attempts ended so far; read it before looking at the file.
    pub(crate) fn ended(&self) -> u64 {
        self.0.attempts_ended.load(Ordering::SeqCst)
    }

    /// Commit attempts begun so far; read it after looking at the file. Equal
    /// to an `ended()` read before the look, no commit of ours was under way
    /// around it, so whatever changed in the file that `ended()` does not
    /// count was another connection's.
    pub(crate) fn begun(&self) -> u64 {
        self.0.attempts_begun.load(Ordering::SeqCst)
    }

    /// How far this writer's commits moved the stored change cursor, in all;
    /// read between `ended()` and the look at the file. Every commit that
    /// `ended()` counts is in it.
    pub(crate) fn cursor_moved(&self) -> u64 {
        self.0.cursor_moved.load(Ordering::SeqCst)
    }
}

/// One queued write, type-erased so jobs of different answer types share a queue.
trait Job: Send {
    /// Run against the open transaction; `true` when the job's own work succeeded.
    fn run(&mut self, tx: &Transaction<'_>) -> bool;
    /// Answer the caller. `failure` is set when the transaction that carried the
    /// job did not commit; a job that succeeded then reports that failure instead.
    fn finish(self: Box<Self>, failure: Option<CairnError>);
}

struct TypedJob<T, F> {
    work: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&Transaction<'_>) -> std::result::Result<T, Fault> + Send,
{
    fn run(&mut self, tx: &Transaction<'_>) -> bool {
        let result = match self.work.take() {
            // A panicking job must not take the writer thread (and every later
            // caller) down with it: it fails alone, like any other job error.
            Some(work) => match catch_unwind(AssertUnwindSafe(|| work(tx))) {
                Ok(r) => r.map_err(CairnError::from),
                Err(_) => Err(CairnError::storage("a write job panicked; it was rolled back")),
            },
            None => Err(CairnError::storage("a write job ran twice")),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, failure: Option<CairnError>) {
        let answer = match (self.result, failure) {
            (Some(Ok(_)), Some(failure)) => Err(failure),
            (Some(result), _) => result,
            (None, Some(failure)) => Err(failure),
            (None, None) => Err(CairnError::storage("a write job was never run")),
        };
        // The caller may have stopped waiting (a dropped future); the write
        // stands either way, exactly as if the answer had been lost in transit.
        let _ = self.reply.send(answer);
    }
}

/// The handle callers submit jobs through. Dropping it stops the thread after
/// the queued jobs ran and waits for it, so the file is closed on return.
pub(crate) struct Writer {
    sender: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Writer {
    /// Start the writer thread over `conn` (already configured and migrated).
    pub(crate) fn start(conn: Connection, max_batch: usize) -> Result<Self> {
        let (sender, receiver) = mpsc::channel::<Box<dyn Job>>();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let max_batch = max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("cairn-sqlite-writer".into())
            .spawn(move || writer_loop(conn, receiver, max_batch, &thread_counters))
            .map_err(|e| CairnError::storage(format!("cannot start the sqlite writer thread: {e}")))?;
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
            counters,
        })
    }

    /// Run `work` as one job and wait until the transaction carrying it committed.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> std::result::Result<T, Fault> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(TypedJob {
            work: Some(work),
            result: None,
            reply,
        });
        let sender = self
            .sender
            .as_ref()
            .ok_or_else(|| CairnError::storage("the sqlite writer is closed"))?;
        sender
            .send(job)
            .map_err(|_| CairnError::storage("the sqlite writer thread has stopped"))?;
        answer
            .await
            .map_err(|_| CairnError::storage("the sqlite writer thread stopped before answering"))?
    }

    /// This writer's commit attempts, for the watcher of other writers, which
    /// tells this writer's commits from theirs.
    pub(crate) fn own_commits(&self) -> OwnCommits {
        OwnCommits(self.counters.clone())
    }

    /// The writer's counters so far.
    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            jobs: self.counters.jobs.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the loop once the queue is drained.
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn writer_loop(mut conn: Connection, receiver: mpsc::Receiver<Box<dyn Job>>, max_batch: usize, counters: &Counters) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch, counters);
    }
    // The connection drops here; closing the last connection checkpoints the WAL.
}

/// What running one job did to the surrounding transaction.
enum Step {
    /// The job ran (kept or rolled back to its savepoint); the transaction is intact.
    Done,
    /// SQLite rolled the whole transaction back (I/O error, disk full, …) or a
    /// savepoint statement failed: every job of the transaction so far is lost.
    Lost(CairnError),
}

fn run_in_savepoint(tx: &Transaction<'_>, job: &mut dyn Job) -> Step {
    if let Err(e) = tx.execute_batch("SAVEPOINT cairn_job") {
        return Step::Lost(CairnError::storage(format!("sqlite: cannot open a savepoint: {e}")));
    }
    let ok = job.run(tx);
    crate::tx::cache_job_done(ok);
    if tx.is_autocommit() {
        return Step::Lost(CairnError::storage(
            "sqlite rolled the write transaction back after an error; nothing was written",
        ));
    }
    let end = if ok {
        "RELEASE cairn_job"
    } else {
        "ROLLBACK TO cairn_job; RELEASE cairn_job"
    };
    match tx.execute_batch(end) {
        Ok(()) => Step::Done,
        Err(e) => Step::Lost(CairnError::storage(format!("sqlite: cannot close a savepoint: {e}"))),
    }
}

/// Run `jobs` in as few transactions as they allow.
fn run_batch(conn: &mut Connection, jobs: Vec<Box<dyn Job>>, counters: &Counters) {
    let mut queue = jobs.into_iter().peekable();
    while queue.peek().is_some() {
        // IMMEDIATE takes the write lock up front, so a second process on the
        // same file waits (busy_timeout) at BEGIN rather than failing mid-batch.
        let begun = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| store::cursor_begin(&tx).map(|()| tx))
            .and_then(|tx| crate::tx::cache_begin(&tx).map(|()| tx));
        let tx = match begun {
            Ok(tx) => tx,
            Err(e) => {
                let failure = CairnError::storage(format!("sqlite: cannot begin a write transaction: {e}"));
                let rest: Vec<Box<dyn Job>> = queue.collect();
                counters.jobs.fetch_add(rest.len() as u64, Ordering::Relaxed);
                for job in rest {
                    job.finish(Some(failure.clone()));
                }
                break;
            }
        };
        let mut ran: Vec<Box<dyn Job>> = Vec::new();
        let mut lost = None;
        for mut job in queue.by_ref() {
            match run_in_savepoint(&tx, job.as_mut()) {
                Step::Done => ran.push(job),
                Step::Lost(failure) => {
                    ran.push(job);
                    lost = Some(failure);
                    break;
                }
            }
        }
        let failure = match lost {
            // Dropping the transaction rolls back whatever is left of it.
            Some(failure) => {
                drop(tx);
                Some(failure)
            }
            None => match store::cursor_flush(&tx) {
                Ok(moved) => {
                    counters.attempts_begun.fetch_add(1, Ordering::SeqCst);
                    let committed = tx.commit();
                    if committed.is_ok() {
                        counters.cursor_moved.fetch_add(moved, Ordering::SeqCst);
                    }
                    counters.attempts_ended.fetch_add(1, Ordering::SeqCst);
                    committed
                        .err()
                        .map(|e| CairnError::storage(format!("sqlite: commit failed, nothing was written: {e}")))
                }
                Err(e) => {
                    drop(tx);
                    Some(CairnError::storage(format!(
                        "sqlite: cannot store the change cursor, nothing was written: {e}"
                    )))
                }
            },
        };
        store::cursor_end();
        crate::tx::cache_end(failure.is_none());
        // Count before answering, so a caller that saw its answer sees it counted.
        if failure.is_none() {
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        counters.jobs.fetch_add(ran.len() as u64, Ordering::Relaxed);
        for job in ran {
            job.finish(failure.clone());
        }
        // Jobs after a lost transaction run again in a fresh one.
    }
}
