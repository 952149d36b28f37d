//! The group-commit writer: one thread owns the only write connection and runs
//! queued write jobs, many to a transaction.
//!
//! Every `fsync` of the WAL is shared by all jobs that were queued while the
//! previous commit ran, so concurrent writers pay for one commit between them
//! instead of one each. A job that fails leaves nothing behind and only its
//! caller sees the error; the jobs around it still commit (see [`run_batch`]
//! for how: a savepoint around the job, or, for jobs that may run again, the
//! transaction run again). Callers are answered only after the commit that
//! carries their job succeeded, so an acknowledged write is durable.

use std::collections::VecDeque;
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
    /// Transactions rolled back and run again, each job in a savepoint, because
    /// a job that ran without one failed after writing.
    pub reruns: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    jobs: AtomicU64,
    reruns: AtomicU64,
    /// Commit attempts begun and ended (committed or not): while they differ,
    /// a commit of ours may be visible to other connections but not yet counted.
    attempts_begun: AtomicU64,
    attempts_ended: AtomicU64,
    /// How far this writer's committed transactions moved the stored change
    /// cursor, in all; added before `attempts_ended` counts the commit.
    cursor_moved: AtomicU64,
    /// The highest stored change cursor a transaction of this writer found
    /// as it began, moved since this writer's previous transaction left it:
    /// another connection changed a process in between. 0 while none did.
    foreign_upto: AtomicU64,
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

    /// The highest stored change cursor one of this writer's transactions
    /// found, as it began, moved by another connection (0 if none did). It
    /// tells of foreign changes to processes however busy this writer is:
    /// the watcher cannot tell them from ours in a reading taken while a
    /// commit of ours is under way, and drops such a reading. A reading kept
    /// at or past this cursor has told of them already.
    pub(crate) fn foreign_upto(&self) -> u64 {
        self.0.foreign_upto.load(Ordering::SeqCst)
    }

    /// Count a commit of ours begun, and ended when the answer drops, so that
    /// every reading the watcher takes meanwhile is spoilt (a test's way to
    /// hold the race the watcher drops readings for).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn under_way(&self) -> CommitUnderWay {
        self.0.attempts_begun.fetch_add(1, Ordering::SeqCst);
        CommitUnderWay(self.0.clone())
    }
}

/// See [`OwnCommits::under_way`].
#[cfg(any(test, feature = "test-util"))]
pub struct CommitUnderWay(Arc<Counters>);

#[cfg(any(test, feature = "test-util"))]
impl Drop for CommitUnderWay {
    fn drop(&mut self) {
        self.0.attempts_ended.fetch_add(1, Ordering::SeqCst);
    }
}

/// One queued write, type-erased so jobs of different answer types share a queue.
trait Job: Send {
    /// Run against the open transaction; `true` when the job's own work succeeded.
    fn run(&mut self, tx: &Transaction<'_>) -> bool;
    /// Whether the job may run again after the transaction that ran it rolled
    /// back: its work depends only on what it reads, and it has answered nobody.
    fn rerunnable(&self) -> bool;
    /// Forget the result of a run whose transaction rolled back, before it
    /// runs again (only asked of a rerunnable job).
    fn reset(&mut self);
    /// Answer the caller. `failure` is set when the transaction that carried the
    /// job did not commit; a job that succeeded then reports that failure instead.
    fn finish(self: Box<Self>, failure: Option<CairnError>);
}

/// A queued job: its work, whether that work may run again, and its answer.
struct TypedJob<T, F> {
    work: F,
    rerunnable: bool,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnMut(&Transaction<'_>) -> std::result::Result<T, Fault> + Send,
{
    fn run(&mut self, tx: &Transaction<'_>) -> bool {
        // A panicking job must not take the writer thread (and every later
        // caller) down with it: it fails alone, like any other job error.
        let result = match catch_unwind(AssertUnwindSafe(|| (self.work)(tx))) {
            Ok(r) => r.map_err(CairnError::from),
            Err(_) => Err(CairnError::storage("a write job panicked; it was rolled back")),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn rerunnable(&self) -> bool {
        self.rerunnable
    }

    fn reset(&mut self) {
        self.result = None;
    }

    fn finish(self: Box<Self>, failure: Option<CairnError>) {
        let answer = match (self.result, failure) {
            (Some(Ok(_)), Some(failure)) => Err(failure),
            // A refusal decided in a transaction that did not commit may
            // rest on what that transaction wrote before it (a registration,
            // an end, a claim): it says "this changed nothing and never
            // will" of a state that never was. The transaction's own
            // failure is the answer, and a retry decides again.
            (Some(Err(e)), Some(failure)) if e.is_client_error() => Err(failure),
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
        // Queued as not rerunnable, so the writer never runs it a second time.
        let mut work = Some(work);
        let once = move |tx: &Transaction<'_>| match work.take() {
            Some(work) => work(tx),
            None => Err(CairnError::storage("a write job ran twice").into()),
        };
        self.queue(once, false).await
    }

    /// Run `work`, which may run more than once, as one job (see [`run_batch`]:
    /// such jobs need no savepoint of their own) and wait until the
    /// transaction carrying it committed.
    pub(crate) async fn run_rerunnable<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Transaction<'_>) -> std::result::Result<T, Fault> + Send + 'static,
    {
        self.queue(work, true).await
    }

    async fn queue<T, F>(&self, work: F, rerunnable: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Transaction<'_>) -> std::result::Result<T, Fault> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(TypedJob {
            work,
            rerunnable,
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
            reruns: self.counters.reruns.load(Ordering::Relaxed),
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
    // The stored change cursor as this writer's last transaction left it; at
    // first, as it is when the thread starts (a foreign move after that is
    // one; unreadable, the first transaction sets it).
    let mut left = store::cursor_stored(&conn).ok();
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch, counters, &mut left);
    }
    // The connection drops here; closing the last connection checkpoints the WAL.
}

/// What running one job did to the surrounding transaction.
enum Step {
    /// The job ran (kept, rolled back to its savepoint, or failed having
    /// written nothing); the transaction is intact.
    Done,
    /// SQLite rolled the whole transaction back (I/O error, disk full, …) or a
    /// savepoint statement failed: every job of the transaction so far is lost.
    Lost(CairnError),
    /// A job without a savepoint failed after writing: roll the transaction
    /// back and run its jobs again.
    RunAgain,
}

/// Run a rerunnable job without a savepoint.
fn run_bare(tx: &Transaction<'_>, job: &mut dyn Job) -> Step {
    let before = tx.total_changes();
    let ok = job.run(tx);
    crate::tx::cache_job_done(ok);
    if tx.is_autocommit() {
        return Step::Lost(CairnError::storage(
            "sqlite rolled the write transaction back after an error; nothing was written",
        ));
    }
    // A statement that failed changed nothing (SQLite undoes it, or the whole
    // transaction as above), so an unchanged count means no row was written.
    if ok || tx.total_changes() == before {
        Step::Done
    } else {
        Step::RunAgain
    }
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
///
/// A job that fails must leave nothing behind while the jobs around it
/// commit. A savepoint around each job does that, but costs a copy of every
/// page the job changes (a tenth of a busy writer's time). So rerunnable jobs
/// run bare while every job of the transaction so far is rerunnable: one that
/// fails before writing anything (the usual failure: the operation layer
/// decides before it writes) leaves nothing behind anyway; one that fails
/// after writing has the transaction rolled back and its jobs run again, this
/// time each in a savepoint. Once a job that cannot run again has run, the
/// transaction's later jobs take savepoints too.
///
/// `left` is the stored change cursor as the last transaction left it: a
/// transaction that begins with another value tells of a foreign move
/// ([`OwnCommits::foreign_upto`]). The cursor only grows, and only this
/// thread moves it in this process.
fn run_batch(conn: &mut Connection, jobs: Vec<Box<dyn Job>>, counters: &Counters, left: &mut Option<u64>) {
    let mut queue: VecDeque<Box<dyn Job>> = jobs.into();
    // How many jobs at the front of the queue run in savepoints whatever they
    // are: those of a transaction rolled back to be run again.
    let mut guarded = 0usize;
    while !queue.is_empty() {
        // IMMEDIATE takes the write lock up front, so a second process on the
        // same file waits (busy_timeout) at BEGIN rather than failing mid-batch.
        let begun = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| store::cursor_begin(&tx).map(|at| (tx, at)))
            .and_then(|(tx, at)| crate::tx::cache_begin(&tx).map(|()| (tx, at)));
        let (tx, at_begin) = match begun {
            Ok(begun) => begun,
            Err(e) => {
                // Another process held the file's write lock past the busy
                // timeout: nothing was written, and the caller may try again.
                let failure = if store::is_busy(&e) {
                    CairnError::Unavailable(format!(
                        "sqlite: another process holds the database's write lock; nothing was written, try again ({e})"
                    ))
                } else {
                    CairnError::storage(format!("sqlite: cannot begin a write transaction: {e}"))
                };
                counters.jobs.fetch_add(queue.len() as u64, Ordering::Relaxed);
                for job in queue {
                    job.finish(Some(failure.clone()));
                }
                break;
            }
        };
        if left.is_some_and(|l| l != at_begin) {
            counters.foreign_upto.fetch_max(at_begin, Ordering::SeqCst);
        }
        // What a transaction that does not commit leaves.
        *left = Some(at_begin);
        let mut ran: Vec<Box<dyn Job>> = Vec::new();
        let mut lost = None;
        let mut run_again = false;
        // Whether every job of this transaction so far may run again.
        let mut all_rerunnable = true;
        while let Some(mut job) = queue.pop_front() {
            let bare = guarded == 0 && all_rerunnable && job.rerunnable();
            guarded = guarded.saturating_sub(1);
            all_rerunnable &= job.rerunnable();
            let step = if bare {
                run_bare(&tx, job.as_mut())
            } else {
                run_in_savepoint(&tx, job.as_mut())
            };
            ran.push(job);
            match step {
                Step::Done => {}
                Step::Lost(failure) => {
                    lost = Some(failure);
                    break;
                }
                Step::RunAgain => {
                    run_again = true;
                    break;
                }
            }
        }
        if run_again {
            drop(tx);
            store::cursor_end();
            crate::tx::cache_end(false);
            counters.reruns.fetch_add(1, Ordering::Relaxed);
            guarded = ran.len();
            for mut job in ran.into_iter().rev() {
                job.reset();
                queue.push_front(job);
            }
            continue;
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
                        *left = Some(at_begin + moved);
                    }
                    counters.attempts_ended.fetch_add(1, Ordering::SeqCst);
                    committed.err().map(|e| {
                        if store::is_disk_full(&e) {
                            CairnError::Unavailable(format!(
                                "sqlite: the disk is full; nothing was written, try again once there is room ({e})"
                            ))
                        } else {
                            CairnError::storage(format!("sqlite: commit failed, nothing was written: {e}"))
                        }
                    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn keys(conn: &Connection) -> Vec<String> {
        let mut stmt = conn.prepare("SELECT k FROM t ORDER BY k").expect("prepare");
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).expect("query");
        rows.collect::<rusqlite::Result<_>>().expect("rows")
    }

    fn insert(tx: &Transaction<'_>, k: &str) -> std::result::Result<(), Fault> {
        tx.execute("INSERT INTO t (k) VALUES (?1)", [k])?;
        Ok(())
    }

    /// A refusal decided inside a transaction whose commit then fails is
    /// not the answer: it may rest on what the transaction wrote before it,
    /// which was never stored; the commit's failure is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusal_from_a_transaction_that_did_not_commit_is_its_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let conn = crate::schema::open_writer(&path, std::time::Duration::from_secs(1)).expect("open");
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; CREATE TABLE t (k TEXT PRIMARY KEY); \
             CREATE TABLE parent (id TEXT PRIMARY KEY); \
             CREATE TABLE child (p TEXT REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)",
        )
        .expect("tables");
        let writer = Writer::start(conn, 64).expect("writer");
        let gate = Arc::new(Barrier::new(2));
        let held = gate.clone();
        let mut first = Box::pin(writer.run(move |_| {
            held.wait();
            held.wait();
            Ok(())
        }));
        assert!(futures::poll!(first.as_mut()).is_pending());
        let gate_ = gate.clone();
        tokio::task::spawn_blocking(move || gate_.wait()).await.expect("gate");
        let mut x = Box::pin(writer.run_rerunnable(|tx| insert(tx, "x")));
        let mut refused = Box::pin(writer.run_rerunnable(|tx| -> std::result::Result<(), Fault> {
            let there: i64 = tx.query_row("SELECT count(*) FROM t WHERE k = 'x'", [], |r| r.get(0))?;
            if there > 0 {
                return Err(CairnError::InvalidRequest("x exists".into()).into());
            }
            Ok(())
        }));
        // Its commit fails: a child of no parent, checked at the commit.
        let mut breaks = Box::pin(writer.run(|tx| -> std::result::Result<(), Fault> {
            tx.execute("INSERT INTO child (p) VALUES ('missing')", [])?;
            Ok(())
        }));
        assert!(futures::poll!(x.as_mut()).is_pending());
        assert!(futures::poll!(refused.as_mut()).is_pending());
        assert!(futures::poll!(breaks.as_mut()).is_pending());
        gate.wait();
        first.await.expect("first");
        assert!(x.await.is_err(), "x was not stored");
        let said = refused.await.expect_err("refused");
        assert!(!said.is_client_error(), "answered from a state that never was: {said}");
        assert!(breaks.await.is_err());
    }

    /// Jobs queued together (a, c, refused, b, d) share a transaction. One
    /// that fails before writing leaves nothing behind without a savepoint;
    /// one that fails after writing has the transaction run again, each job
    /// in a savepoint, so only its own write is lost; a job that cannot run
    /// again runs once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_fails_after_writing_is_undone_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let conn = crate::schema::open_writer(&path, std::time::Duration::from_secs(1)).expect("open");
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .expect("table");
        let writer = Writer::start(conn, 64).expect("writer");

        // Hold the writer in a first job while the others queue behind it.
        let gate = Arc::new(Barrier::new(2));
        let held = gate.clone();
        let mut first = Box::pin(writer.run(move |_| {
            held.wait();
            held.wait();
            Ok(())
        }));
        assert!(futures::poll!(first.as_mut()).is_pending());
        let gate_ = gate.clone();
        tokio::task::spawn_blocking(move || gate_.wait()).await.expect("gate");

        let runs = Arc::new(AtomicU64::new(0));
        let counted = runs.clone();
        let mut a = Box::pin(writer.run_rerunnable(|tx| insert(tx, "a")));
        let mut refused = Box::pin(writer.run_rerunnable(|_| -> std::result::Result<(), Fault> {
            Err(CairnError::InvalidRequest("refused before writing".into()).into())
        }));
        let mut b = Box::pin(writer.run_rerunnable(|tx| -> std::result::Result<(), Fault> {
            insert(tx, "b")?;
            Err(CairnError::InvalidRequest("refused after writing".into()).into())
        }));
        let mut c = Box::pin(writer.run_rerunnable(move |tx| {
            counted.fetch_add(1, Ordering::SeqCst);
            insert(tx, "c")
        }));
        assert!(futures::poll!(a.as_mut()).is_pending());
        assert!(futures::poll!(c.as_mut()).is_pending());
        assert!(futures::poll!(refused.as_mut()).is_pending());
        assert!(futures::poll!(b.as_mut()).is_pending());
        let once = Arc::new(AtomicU64::new(0));
        let ran = once.clone();
        let mut d = Box::pin(writer.run(move |tx| {
            ran.fetch_add(1, Ordering::SeqCst);
            insert(tx, "d")
        }));
        assert!(futures::poll!(d.as_mut()).is_pending());
        gate.wait();

        first.await.expect("first");
        a.await.expect("a");
        c.await.expect("c");
        d.await.expect("d");
        let refused = refused.await.expect_err("refused");
        assert!(refused.to_string().contains("before writing"), "{refused}");
        let b = b.await.expect_err("b");
        assert!(b.to_string().contains("after writing"), "{b}");

        let stats = writer.stats();
        assert_eq!(stats.reruns, 1, "{stats:?}");
        assert_eq!(stats.commits, 2, "{stats:?}");
        // c ran in the transaction rolled back and again in the one that committed.
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(once.load(Ordering::SeqCst), 1, "a job that cannot run again ran twice");
        drop(writer);
        let conn = Connection::open(&path).expect("reopen");
        assert_eq!(keys(&conn), ["a", "c", "d"]);
    }
}
