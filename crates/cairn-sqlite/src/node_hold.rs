//! One live runtime per node id over a database file (ADR 0027).
//!
//! A sweep ends a node's `owner_bound` work once a newer incarnation of the
//! node registers (ADR 0017), which is proof only while no two live runtimes
//! share a node id. A runtime that takes its node id first takes an exclusive
//! lock on a file beside the database, `{database}-node-{id}.lock`, which the
//! kernel releases when the holder exits or dies (SIGKILL included): a restart
//! after a crash finds it free, and a second server under the same id is
//! refused instead of sweeping the first one's live work.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cairn_core::{CairnError, NodeIdentity, Result};

/// A held node id: the lock lasts as long as this value (or the process).
#[derive(Debug)]
pub struct NodeHold {
    _file: File,
    path: PathBuf,
}

impl NodeHold {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file of `node` beside the database at `db`.
pub(crate) fn lock_path(db: &Path, node: &str) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!("-node-{node}.lock"));
    db.with_file_name(name)
}

/// Take `node` for this OS process over the database at `db`, or say who has it.
pub(crate) fn hold(db: &Path, node: &str) -> Result<NodeHold> {
    NodeIdentity::validate_node_id(node)?;
    // SQLite opens a database by its resolved path (symlinks followed), so
    // the lock follows it too: two spellings of one file are one node id.
    let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
    let path = lock_path(&db, node);
    let io = |e: std::io::Error| CairnError::storage(format!("node id lock `{}`: {e}", path.display()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            // The holder's pid, for the refusal a second runtime gets; the
            // lock, not this text, is what counts.
            file.set_len(0).map_err(io)?;
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            file.write_all(std::process::id().to_string().as_bytes()).map_err(io)?;
            Ok(NodeHold { _file: file, path })
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() || !holder.bytes().all(|b| b.is_ascii_digit()) {
                "another live process".to_string()
            } else {
                format!("process {holder}")
            };
            Err(CairnError::Unavailable(format!(
                "node id `{node}` is in use over this database by {who}: two live runtimes under one node id \
                 would sweep each other's owner_bound work; stop the other one or give this one its own node id"
            )))
        }
        Err(TryLockError::Error(e)) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_id_is_held_once_and_free_again_when_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("cairn.db");
        let first = hold(&db, "box-1").expect("first hold");
        assert_eq!(first.path(), dir.path().join("cairn.db-node-box-1.lock"));
        let err = hold(&db, "box-1").expect_err("a second hold of the same id");
        let msg = err.to_string();
        assert!(
            msg.contains("`box-1`") && msg.contains(&format!("process {}", std::process::id())),
            "{msg}"
        );
        // Another id, or the same id over another database, is free.
        let _other = hold(&db, "box-2").expect("another id");
        let _elsewhere = hold(&dir.path().join("other.db"), "box-1").expect("another database");
        drop(first);
        let _again = hold(&db, "box-1").expect("free once dropped");
    }

    /// Two spellings of one database file (one through a symlink) hold one
    /// node id: SQLite opens both as the same file.
    #[test]
    fn a_node_id_is_held_once_whatever_the_path_spelling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("cairn.db");
        std::fs::write(&db, b"").expect("the database file");
        let alias = dir.path().join("current.db");
        std::os::unix::fs::symlink(&db, &alias).expect("symlink");
        let _first = hold(&alias, "box-1").expect("first hold");
        let err = hold(&db, "box-1").expect_err("the same file by its own name");
        assert!(err.to_string().contains("`box-1`"), "{err}");
    }

    #[test]
    fn an_invalid_node_id_is_refused_and_makes_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("cairn.db");
        for bad in ["", "../x", "a/b", "a b"] {
            assert!(matches!(hold(&db, bad), Err(CairnError::InvalidId(_))), "{bad:?}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
