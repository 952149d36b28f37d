//! Changes committed to the file by other OS processes.
//!
//! A process's own writes reach its change hub through the watched registry,
//! but a second process on the same file (a tool, a second server) writes
//! behind its back. A commit in WAL mode writes the `-wal` file, so the
//! watcher asks the operating system to tell it when the database's files in
//! its directory change (inotify on Linux, read by a thread of our own;
//! `notify` elsewhere) and, at each notice,
//! reads `PRAGMA data_version` (it changes when any other connection commits)
//! and the stored change cursor (every commit that changes a process moves
//! it) on a connection of its own. When the version moved while this
//! process's writer committed nothing, or the cursor moved further than this
//! process's commits moved it, the hub has every waiter read again
//! (`ChangeHub::resync`). That is one cheap read per burst of notices for the
//! whole process, never one per waiter, and none while nothing is written.
//!
//! A notice may come before the commit it announces is visible (the WAL's
//! frames are written before the wal-index, a mapped file that raises no
//! notice, says they are committed), so after each notice the watcher reads
//! again at 1, 2, 4, ... up to [`CHASE_UNTIL`] ms, every [`FINE_GAP`] for
//! the first 2 ms after a first notice while this process's own writer is
//! quiet. Our own commits
//! raise notices too; while our writer commits, the watcher reads at most once
//! per [`MIN_GAP`], so a busy writer costs it a bounded number of reads. A foreign commit that lands
//! beside ours is told apart by the cursor when it changed a process (a
//! prune, and a lease let go, move it too): in a reading, or, when every
//! reading meets a commit of ours under way (which spoils it), by our writer,
//! which finds the stored cursor moved as its next transaction begins. One that changed none (an
//! acknowledged wake, a grant, a lease renewed) is not announced, and no
//! waiter waits on it. A read every [`BACKSTOP`] catches a commit that came
//! with no notice, as on a file system that sends none. Where no watch can be set
//! up, the watcher reads every [`POLL_INTERVAL`] instead (ADR 0020).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_core::{CairnError, ChangeHub, Result};
use rusqlite::Connection;

use crate::writer::OwnCommits;

/// The least time between two reads of `data_version` while this process's
/// own writer commits (its commits raise notices too).
pub(crate) const MIN_GAP: Duration = Duration::from_millis(1);
/// The first gap of the reads that follow a notice while this process's own
/// writer is quiet: the notice is then another process's commit, which an
/// awaiter here is waiting to hear of, and that commit becomes visible once
/// its sync ends (a few tenths of a millisecond after its first write).
pub(crate) const FINE_GAP: Duration = Duration::from_micros(250);
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
    fs: Option<FsWatch>,
}

impl Watcher {
    pub(crate) fn start(conn: Connection, path: &Path, own: OwnCommits, hub: ChangeHub) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let fs = watch_files(path, tx.clone());
        let every = if fs.is_some() { BACKSTOP } else { POLL_INTERVAL };
        // The first reading is taken before this returns, so a foreign commit
        // that lands after the caller set up the watch is measured against it
        // (taken later, by a thread that started late, it could include that
        // commit and never announce it). A commit of ours under way spoils a
        // reading: try again while it ends.
        let mut first = read(&conn, &own);
        for _ in 0..1000 {
            if first.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
            first = read(&conn, &own);
        }
        let thread = std::thread::Builder::new()
            .name("cairn-sqlite-watch".into())
            .spawn(move || {
                let read = || read(&conn, &own);
                let mut seen = first.unwrap_or(Reading {
                    version: None,
                    ended: u64::MAX,
                    moved: 0,
                    cursor: None,
                });
                // The stored cursor up to which foreign changes are told of:
                // by a kept reading (compared with the one before it), or by
                // a resync for what our writer found.
                let mut told = seen.cursor.map_or(0, cursor_u64);
                let mut last = Instant::now();
                // After a notice, the next read is due this long after the last.
                let mut chase: Option<Duration> = None;
                let mut noticed = Instant::now();
                // No commit of ours began since the last reading: a notice is
                // then another process's.
                let quiet = |seen: &Reading| own.begun() == seen.ended;
                loop {
                    match rx.recv_timeout(chase.unwrap_or(every)) {
                        // The commit whose write raised the notice may not be
                        // visible yet (WAL frames are written before the
                        // wal-index says they are committed, and the index is
                        // a mapped file that raises no notice): read again
                        // after it, as `chase_after_notice` and `chase_next` say.
                        Ok(Msg::Changed) => {
                            chase = Some(chase_after_notice(quiet(&seen), noticed.elapsed()));
                            noticed = Instant::now();
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            chase = chase.and_then(|d| chase_next(d, noticed.elapsed()));
                        }
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let least = chase.map_or(MIN_GAP, |d| d.min(MIN_GAP));
                    if let Some(wait) = least.checked_sub(last.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    // One read answers every notice that came before it.
                    while let Ok(msg) = rx.try_recv() {
                        match msg {
                            Msg::Stop => return,
                            Msg::Changed => {
                                chase = Some(chase_after_notice(quiet(&seen), noticed.elapsed()));
                                noticed = Instant::now();
                            }
                        }
                    }
                    let now = read();
                    last = Instant::now();
                    let mut foreign = false;
                    if let Some(now) = now {
                        foreign = foreign_between(&seen, &now);
                        told = told.max(now.cursor.map_or(0, cursor_u64));
                        seen = now;
                    }
                    // Our writer found another connection's cursor move as a
                    // transaction of ours began, past what readings told of:
                    // heard even when this reading met a commit of ours and
                    // says nothing (with our writer committing without pause,
                    // most readings do).
                    let found = own.foreign_upto();
                    if found > told {
                        foreign = true;
                        told = found;
                    }
                    if foreign {
                        hub.resync();
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

/// How long the quarter-millisecond reads after a foreign notice last.
const FINE_FOR: Duration = Duration::from_millis(2);

/// The gap before the first read after a notice: [`FINE_GAP`] when our
/// writer is `quiet` (the notice is another process's commit) and the last
/// notice came at least [`FINE_FOR`] before (a first notice, not one more of
/// a busy writer's, which come a millisecond apart); else [`MIN_GAP`], so a
/// busy writer, ours or another's, costs at most about a read a millisecond.
fn chase_after_notice(quiet: bool, since_last_notice: Duration) -> Duration {
    if quiet && since_last_notice >= FINE_FOR {
        FINE_GAP
    } else {
        MIN_GAP
    }
}

/// The gap before the next read of a chase whose last gap was `gap`, its
/// notice `since_notice` ago: fine gaps for [`FINE_FOR`], then doubling from
/// 2 ms; none past [`CHASE_UNTIL`] (the backstop reads on).
fn chase_next(gap: Duration, since_notice: Duration) -> Option<Duration> {
    let next = if gap < MIN_GAP && since_notice < FINE_FOR {
        gap
    } else {
        (gap * 2).max(2 * MIN_GAP)
    };
    (next <= CHASE_UNTIL).then_some(next)
}

/// One look at the file. Our ended commit attempts (and how far they moved
/// the change cursor) are read before the file and our begun ones after it:
/// when the two agree, no commit of ours was under way around the read, and
/// every commit of ours it sees is counted. When they differ the reading says
/// nothing (`None`) and is dropped.
fn read(conn: &Connection, own: &OwnCommits) -> Option<Reading> {
    let ended = own.ended();
    let moved = own.cursor_moved();
    let version = conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0)).ok();
    // After the version, so it sees at least the commits the version saw.
    let cursor = conn
        .prepare_cached("SELECT value FROM counters WHERE name = 'change_cursor'")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .ok();
    (own.begun() == ended).then_some(Reading {
        version,
        ended,
        moved,
        cursor,
    })
}

/// A stored cursor as the writer counts it (never negative).
fn cursor_u64(cursor: i64) -> u64 {
    u64::try_from(cursor).unwrap_or(0)
}

/// One look at the file, with this process's own commits around it.
#[derive(Clone, Copy, Debug)]
struct Reading {
    /// `PRAGMA data_version`: moves when another connection commits.
    version: Option<i64>,
    /// This process's commit attempts ended before the look.
    ended: u64,
    /// How far those commits moved the stored change cursor, in all.
    moved: u64,
    /// The stored change cursor: every commit that changes a process moves it.
    cursor: Option<i64>,
}

/// Whether another connection committed between two readings: the version
/// moved while no commit of ours ended, or the change cursor moved further
/// than our commits moved it. The second catches a foreign change to a
/// process that landed beside commits of ours, which the version alone
/// cannot tell apart from them; a foreign commit that changed no process and
/// landed beside ours goes unannounced (no waiter waits on it).
fn foreign_between(seen: &Reading, now: &Reading) -> bool {
    if now.version != seen.version && now.ended == seen.ended {
        return true;
    }
    match (seen.cursor, now.cursor) {
        (Some(before), Some(after)) => {
            let total = after.saturating_sub(before);
            let ours = now.moved.saturating_sub(seen.moved);
            u64::try_from(total).is_ok_and(|total| total > ours)
        }
        _ => false,
    }
}

/// Whether `file` is the database file named `name` or one of its companions
/// (`-wal`, `-journal`, `-shm`).
fn is_ours(file: &std::ffi::OsStr, name: &str) -> bool {
    file.to_string_lossy()
        .strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// The database's name and directory, where SQLite keeps it: a symbolic
/// link is followed (SQLite writes the `-wal` beside the file it names).
fn name_and_dir(path: &Path) -> Option<(String, PathBuf)> {
    let resolved = std::fs::canonicalize(path).ok();
    let path = resolved.as_deref().unwrap_or(path);
    let name = path.file_name()?.to_string_lossy().into_owned();
    let dir: PathBuf = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((name, dir))
}

/// The file-system watch; dropping it stops it.
#[cfg(target_os = "linux")]
pub(crate) struct FsWatch {
    watches: inotify::Watches,
    wd: inotify::WatchDescriptor,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Watch the directory of `path` for writes to the database's files; `None`
/// when the platform or file system cannot (the caller polls instead).
///
/// Every `write` to a watched file queues a notice, and SQLite writes a WAL
/// commit one page at a time: a reader that takes each notice as it comes
/// is woken once per page (with `notify`'s thread, a tenth of a busy
/// writer's time went into those wake-ups). This thread reads what is
/// queued and then sleeps [`MIN_GAP`]; meanwhile the kernel merges each new
/// notice into the identical one still unread, without waking anyone.
#[cfg(target_os = "linux")]
fn watch_files(path: &Path, tx: mpsc::Sender<Msg>) -> Option<FsWatch> {
    use inotify::{EventMask, Inotify, WatchMask};
    use std::sync::atomic::{AtomicBool, Ordering};

    let (name, dir) = name_and_dir(path)?;
    let warn = |e: std::io::Error| {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the database's directory; reading for other writers every 50 ms");
    };
    let mut inotify = Inotify::init().map_err(warn).ok()?;
    let mut watches = inotify.watches();
    // Between a notice and the end of the pause after it, the watch leaves
    // out writes: the kernel then skips building a notice for each page a
    // busy writer writes (a tenth of that writer's time when it did not).
    let quiet = WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::DELETE;
    let mask = quiet | WatchMask::MODIFY;
    let wd = watches.add(&dir, mask).map_err(warn).ok()?;
    let mut rearm = inotify.watches();
    let watched = dir.clone();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("cairn-sqlite-fsw".into())
        .spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                let events = match inotify.read_events_blocking(&mut buffer) {
                    Ok(events) => events,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let mut changed = false;
                let mut gone = false;
                for event in events {
                    // A lost notice (the queue overflowed) may have been a foreign commit.
                    changed |= event.mask.contains(EventMask::Q_OVERFLOW)
                        || event.name.is_some_and(|file| is_ours(file, &name));
                    // The watch ended (the directory went away, or it was removed).
                    gone |= event.mask.contains(EventMask::IGNORED);
                }
                if (changed && tx.send(Msg::Changed).is_err()) || gone {
                    return;
                }
                // A commit written while the watch is quiet is not missed: the
                // watcher reads again up to `CHASE_UNTIL` after the notice
                // just sent, after the watch hears writes again. Replacing
                // the mask keeps the watch (and its descriptor).
                let quieted = rearm.add(&watched, quiet).is_ok();
                std::thread::sleep(MIN_GAP);
                if quieted && rearm.add(&watched, mask).is_err() {
                    // The directory went away: its watch has ended too.
                    return;
                }
                // A drop that removed the watch before the calls above (which
                // then made a new one no drop removes) has set `stop` first.
                if stopped.load(Ordering::Acquire) {
                    return;
                }
            }
        })
        .map_err(warn)
        .ok()?;
    Some(FsWatch {
        watches,
        wd,
        stop,
        thread: Some(thread),
    })
}

#[cfg(target_os = "linux")]
impl Drop for FsWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        // Removing the watch queues its last notice, which wakes the thread.
        // If the watch had already ended, so had the thread.
        let _ = self.watches.remove(self.wd.clone());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The file-system watch; dropping it stops it.
#[cfg(not(target_os = "linux"))]
pub(crate) type FsWatch = notify::RecommendedWatcher;

/// Watch the directory of `path` for changes to the database's files (the
/// file itself, `-wal`, `-journal`); `None` when the platform or file system
/// cannot (the caller polls instead).
#[cfg(not(target_os = "linux"))]
fn watch_files(path: &Path, tx: mpsc::Sender<Msg>) -> Option<FsWatch> {
    use notify::Watcher as _;

    let (name, dir) = name_and_dir(path)?;
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|f| is_ours(f, &name)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(version: i64, ended: u64, moved: u64, cursor: i64) -> Reading {
        Reading {
            version: Some(version),
            ended,
            moved,
            cursor: Some(cursor),
        }
    }

    /// The reads a chase makes after a notice, as times since the notice
    /// (the first read, at the notice itself, left out).
    fn schedule(first: Duration) -> Vec<Duration> {
        let (mut at, mut gap, mut reads) = (Duration::ZERO, Some(first), Vec::new());
        while let Some(g) = gap {
            at += g;
            reads.push(at);
            gap = chase_next(g, at);
        }
        reads
    }

    #[test]
    fn a_first_foreign_notice_is_chased_every_quarter_millisecond_for_two() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        // Our writer quiet, no notice for a while: another process committed.
        let first = chase_after_notice(true, ms(50));
        assert_eq!(first, FINE_GAP);
        let fine = schedule(first);
        assert_eq!(&fine[..8], &(1..=8).map(|k| us(250 * k)).collect::<Vec<_>>()[..]);
        assert_eq!(&fine[8..], &[ms(4), ms(8), ms(16), ms(32), ms(64), ms(128)]);
        // Our writer busy, or one more notice of a busy writer: 1 ms apart,
        // then doubling, as before.
        for first in [chase_after_notice(false, ms(50)), chase_after_notice(true, ms(1))] {
            assert_eq!(first, MIN_GAP);
            assert_eq!(
                schedule(first),
                [1, 3, 7, 15, 31, 63, 127].map(ms).to_vec(),
                "the reads of a busy writer's chase"
            );
        }
    }

    #[test]
    fn a_foreign_commit_is_told_from_ours_by_the_version_or_the_cursor() {
        let seen = reading(7, 3, 40, 100);
        // Nothing committed.
        assert!(!foreign_between(&seen, &seen));
        // Ours alone: two commits that moved the cursor by 5.
        assert!(!foreign_between(&seen, &reading(8, 5, 45, 105)));
        // Theirs alone, with or without a change to a process.
        assert!(foreign_between(&seen, &reading(8, 3, 40, 102)));
        assert!(foreign_between(&seen, &reading(8, 3, 40, 100)));
        // Theirs beside ours: the cursor moved 2 further than ours did.
        assert!(foreign_between(&seen, &reading(9, 5, 45, 107)));
        // Theirs beside ours, changing no process: not told apart.
        assert!(!foreign_between(&seen, &reading(9, 5, 45, 105)));
        // A first reading, or a cursor that could not be read, compares versions only.
        let first = Reading {
            version: None,
            ended: u64::MAX,
            moved: 0,
            cursor: None,
        };
        assert!(!foreign_between(&first, &seen));
        let unread = Reading { cursor: None, ..seen };
        assert!(!foreign_between(&unread, &reading(9, 5, 45, 107)));
    }
}
