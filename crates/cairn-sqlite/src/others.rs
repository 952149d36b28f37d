//! Changes committed to the file by other OS processes.
//!
//! A process's own writes reach its change hub through the watched registry,
//! but a second process on the same file (a tool, a second server) writes
//! behind its back. A commit in WAL mode writes the `-wal` file, so the
//! watcher asks the operating system to tell it when the database's files in
//! its directory change (`notify`: inotify on Linux) and, at each notice,
//! reads `PRAGMA data_version` on a connection of its own: it changes when any
//! other connection commits. When it moved while this process's writer
//! committed nothing, the hub has every waiter read again
//! (`ChangeHub::resync`). That is one cheap read per burst of notices for the
//! whole process, never one per waiter, and none while nothing is written.
//!
//! A notice may come before the commit it announces is visible (the WAL's
//! frames are written before the wal-index, a mapped file that raises no
//! notice, says they are committed), so after each notice the watcher reads
//! again at 1, 2, 4, ... up to [`CHASE_UNTIL`] ms. Our own commits raise
//! notices too; the watcher reads at most once per [`MIN_GAP`], so a busy
//! writer costs it a bounded number of reads. A
//! foreign commit that lands between one of ours and the read that follows
//! is not told apart from ours; a read every [`BACKSTOP`] catches it, and
//! catches a file system that sends no notices. Where no watch can be set
//! up, the watcher reads every [`POLL_INTERVAL`] instead (ADR 0020).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_core::{CairnError, ChangeHub, Result};
use notify::Watcher as _;
use rusqlite::Connection;

use crate::writer::OwnCommits;

/// The least time between two reads of `data_version`.
pub(crate) const MIN_GAP: Duration = Duration::from_millis(1);
/// The longest gap of the reads that follow a notice.
pub(crate) const CHASE_UNTIL: Duration = Duration::from_millis(64);
/// How often the watcher reads without a notice, when notices arrive.
pub(crate) const BACKSTOP: Duration = Duration::from_secs(1);
/// How often it reads when the file system cannot be watched.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);

enum Msg {
    /// A file of the database changed.
    Changed,
    /// The watcher is dropped.
    Stop,
}

/// The watcher thread; dropping it stops the thread and closes its connection.
pub(crate) struct Watcher {
    stop: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    /// The file-system watch.
    fs: Option<notify::RecommendedWatcher>,
}

impl Watcher {
    pub(crate) fn start(conn: Connection, path: &Path, own: OwnCommits, hub: ChangeHub) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let fs = watch_files(path, tx.clone());
        let every = if fs.is_some() { BACKSTOP } else { POLL_INTERVAL };
        let thread = std::thread::Builder::new()
            .name("cairn-sqlite-watch".into())
            .spawn(move || {
                // Our ended commit attempts are read before the version and our
                // begun ones after it: when the two agree, no commit of ours was
                // under way around the read, so a version that moved while the
                // ended count did not was moved by another connection. When
                // they differ the reading says nothing (`None`) and is dropped.
                let read = || {
                    let ended = own.ended();
                    let version = conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0)).ok();
                    (own.begun() == ended).then_some((version, ended))
                };
                let mut seen = read().unwrap_or((None, u64::MAX));
                let mut last = Instant::now();
                // After a notice, the next read is due this long after the last.
                let mut chase: Option<Duration> = None;
                loop {
                    match rx.recv_timeout(chase.unwrap_or(every)) {
                        // The commit whose write raised the notice may not be
                        // visible yet (WAL frames are written before the
                        // wal-index says they are committed, and the index is
                        // a mapped file that raises no notice): read again at
                        // 1, 2, 4, ... 64 ms after it.
                        Ok(Msg::Changed) => chase = Some(MIN_GAP),
                        Err(RecvTimeoutError::Timeout) => {
                            chase = chase.map(|d| d * 2).filter(|d| *d <= CHASE_UNTIL);
                        }
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if let Some(wait) = MIN_GAP.checked_sub(last.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    // One read answers every notice that came before it.
                    while let Ok(msg) = rx.try_recv() {
                        match msg {
                            Msg::Stop => return,
                            Msg::Changed => chase = Some(MIN_GAP),
                        }
                    }
                    let now = read();
                    last = Instant::now();
                    if let Some(now) = now {
                        if now.0 != seen.0 && now.1 == seen.1 {
                            hub.resync();
                        }
                        seen = now;
                    }
                }
            })
            .map_err(|e| CairnError::storage(format!("cannot start the sqlite watcher thread: {e}")))?;
        Ok(Self {
            stop: Some(tx),
            thread: Some(thread),
            fs,
        })
    }
}

/// Watch the directory of `path` for changes to the database's files (the
/// file itself, `-wal`, `-journal`); `None` when the platform or file system
/// cannot (the caller polls instead).
fn watch_files(path: &Path, tx: mpsc::Sender<Msg>) -> Option<notify::RecommendedWatcher> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let dir: PathBuf = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let ours = event.paths.iter().any(|p| {
            p.file_name().map(|f| f.to_string_lossy()).is_some_and(|f| {
                f.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
            })
        });
        if ours {
            let _ = tx.send(Msg::Changed);
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the database's directory; reading for other writers every 50 ms");
            return None;
        }
    };
    match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the database's directory; reading for other writers every 50 ms");
            None
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.fs.take();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
