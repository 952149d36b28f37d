//! Scratch harness (to be merged with the conformance suite).
use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::{ManualClock, ProcessRegistry};

pub mod execution;

pub struct TestStore {
    pub registry: Arc<dyn ProcessRegistry>,
    pub clock: ManualClock,
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

#[async_trait]
pub trait StoreFactory: Send + Sync {
    async fn open(&self, clock: ManualClock) -> TestStore;
}

pub async fn assert_fold(reg: &dyn ProcessRegistry, id: &str) {
    let rec = reg.get(id).await.expect("get");
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = reg.events_after(id, after, Some(1000)).await.expect("events");
        events.extend(page.events);
        match page.next_after {
            Some(n) => after = n,
            None => break,
        }
    }
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
    }
    cairn_core::fold::check_fold(&rec, &events).expect("fold");
}
