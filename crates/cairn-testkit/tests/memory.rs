//! The conformance suite against the in-memory registry.

use std::sync::Arc;

use cairn_core::{EnvSpec, ManualClock, MemoryRegistry, ProcessRegistry};
use cairn_testkit::TestStore;

async fn memory_store(clock: ManualClock) -> TestStore {
    TestStore::new(Arc::new(MemoryRegistry::with_clock(Arc::new(clock.clone()))), clock)
}

// Against itself the reference comparison proves nothing: the property test
// checks the invariants alone here.
cairn_testkit::conformance_suite!(
    conformance,
    memory_store,
    enabled = true,
    property = cairn_testkit::property::Property {
        cases: 64,
        reference: false,
    }
);

/// Stored env bytes that no longer match their address are `corrupt_env`
/// (memory only: other backends corrupt their storage their own way).
#[test]
fn corrupt_env_is_detected() {
    cairn_testkit::run(async {
        let registry = MemoryRegistry::with_clock(Arc::new(ManualClock::new(0)));
        let spec = EnvSpec {
            plugin_options: serde_json::json!({"image": "alpine"}),
            policy: serde_json::json!({}),
        };
        let env_ref = registry.put_env(&spec).await.expect("put_env");
        registry.corrupt_env_for_test(&env_ref, br#"{"plugin_options":{},"policy":{}}"#.to_vec());
        let err = registry
            .get_env(&env_ref)
            .await
            .expect_err("corrupt bytes must not load");
        assert_eq!(err.code(), "corrupt_env");
    });
}

cairn_testkit::execution_suite!(memory_store);
