//! The conformance and execution suites against a real PostgreSQL server, each
//! test on its own schema. Needs `CAIRN_TEST_POSTGRES_URL` (see `testing`).

use std::sync::Arc;

use cairn_core::ManualClock;
use cairn_postgres::testing;
use cairn_testkit::TestStore;

async fn postgres_store(clock: ManualClock) -> TestStore {
    let (registry, schema) = testing::fresh(Arc::new(clock.clone())).await;
    TestStore::new(registry, clock).with_guard(schema)
}

// Each property case makes a schema and compares every step with the memory
// reference: a few dozen cases keep the suite fast.
cairn_testkit::conformance_suite!(
    conformance,
    postgres_store,
    enabled = testing::enabled(),
    property = cairn_testkit::property::Property {
        cases: 24,
        reference: true,
    },
    skip_when = cairn_no_postgres
);
cairn_testkit::execution_suite!(
    execution,
    postgres_store,
    enabled = testing::enabled(),
    skip_when = cairn_no_postgres
);
