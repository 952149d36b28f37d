//! The conformance and execution suites against a fresh SQLite file each.

use std::sync::Arc;

use cairn_core::ManualClock;
use cairn_sqlite::SqliteRegistry;
use cairn_testkit::TestStore;

async fn sqlite_store(clock: ManualClock) -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = SqliteRegistry::open(dir.path().join("cairn.db"), Arc::new(clock.clone())).expect("open sqlite");
    TestStore::new(Arc::new(registry), clock).with_guard(dir)
}

cairn_testkit::conformance_suite!(sqlite_store);
cairn_testkit::execution_suite!(sqlite_store);
