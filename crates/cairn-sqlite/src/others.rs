//! Changes committed to the file by other OS processes.
//!
//! A process's own writes reach its change hub through the watched registry,
//! but a second process on the same file (a tool, a second server) writes
//! behind its back. `PRAGMA data_version` on a connection of ours changes when
//! any other connection commits, so one thread per registry reads it on a short
//! interval and, when it moved while this process's writer committed nothing,
//! asks the hub to have every waiter read again (`ChangeHub::resync`). It is
//! one cheap read per interval for the whole process, never one per waiter.
//! A foreign commit that lands in the same interval as one of ours is not told
//! apart from it; the awaiter's backstop read covers that rare case.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use cairn_core::{CairnError, ChangeHub, Result};
use rusqlite::Connection;

/// How often the watcher reads `data_version`.
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// The watcher thread; dropping it stops the thread and closes its connection.
pub(crate) struct Watcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    pub(crate) fn start(
        conn: Connection,
        own_commits: impl Fn() -> u64 + Send + 'static,
        hub: ChangeHub,
        every: Duration,
    ) -> Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cairn-sqlite-watch".into())
            .spawn(move || {
                // Our commit count is read before the version: the writer counts
                // a commit after making it, so a commit of ours is never seen
                // in the version without (by the next read) in the count.
                let read = || {
                    let commits = own_commits();
                    let version = conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0)).ok();
                    (version, commits)
                };
                let mut seen = read();
                // The sender is never used: a drop of the watcher disconnects it.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let now = read();
                    if now.0 != seen.0 && now.1 == seen.1 {
                        hub.resync();
                    }
                    seen = now;
                }
            })
            .map_err(|e| CairnError::storage(format!("cannot start the sqlite watcher thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
