//! Schedules across PostgreSQL nodes (SPEC §18): two nodes (two registries,
//! each with its own runtime, worker and connections) on one schema fire the
//! same schedules on one clock; every fire starts exactly one process, and the
//! advance of a fire is a compare-and-set only one node wins.
//!
//! Needs `CAIRN_TEST_POSTGRES_URL`.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_core::{
    Clock, Disposition, ManualClock, Overlap, ProcessFilter, ProcessInput, Processes, ScheduleAdvance, ScheduleRequest,
    StartTemplate,
};
use cairn_postgres::testing::{self, TestSchema};
use serde_json::json;

const SCHEDULES: usize = 20;
const FIRES: u64 = 5;

fn node(registry: Arc<cairn_postgres::PostgresRegistry>, clock: &ManualClock) -> Processes {
    let hub = cairn_core::ChangeHub::new();
    registry.listen(hub.clone());
    Processes::builder(registry)
        .tools(cairn_tools::builtin_tools(false))
        .clock(Arc::new(clock.clone()))
        .hub(hub)
        .start()
}

fn request(id: &str) -> ScheduleRequest {
    ScheduleRequest {
        id: id.into(),
        cron: None,
        every: Some("10s".into()),
        timezone: None,
        start: StartTemplate {
            input: ProcessInput::External {
                metadata: json!({"schedule": id}),
            },
            disposition: Disposition::ExternallyOwned,
            originator: cairn_core::Originator::host(),
            caused_by: None,
            grant: None,
            wake_target: None,
            event_types: Vec::new(),
            env_spec: None,
            external_ref: None,
        },
        overlap: Overlap::Allow,
    }
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_start_each_fire_exactly_once() {
    if !testing::enabled() {
        return;
    }
    let clock = ManualClock::new(1_000_000);
    let schema = TestSchema::new("cairn_sched");
    let shared: cairn_core::SharedClock = Arc::new(clock.clone());
    let a_reg = Arc::new(schema.connect(shared.clone()).await.expect("node a"));
    let b_reg = Arc::new(schema.connect(shared).await.expect("node b"));
    let (a, b) = (node(a_reg.clone(), &clock), node(b_reg.clone(), &clock));
    let t0 = clock.now_ms();
    for i in 0..SCHEDULES {
        let on = if i % 2 == 0 { &a } else { &b };
        on.create_schedule(request(&format!("s{i:02}"))).await.expect("create");
    }
    for _ in 0..FIRES {
        clock.advance(10_000);
        // Both nodes fire at once, twice each (their drivers may fire too).
        let (ra, rb, ra2, rb2) = tokio::join!(
            a.fire_schedules(),
            b.fire_schedules(),
            a.fire_schedules(),
            b.fire_schedules()
        );
        for r in [ra, rb, ra2, rb2] {
            r.expect("fire");
        }
    }
    let mut per_schedule: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut filter = ProcessFilter {
        limit: Some(1000),
        ..ProcessFilter::any()
    };
    loop {
        let page = a.list(&filter).await.expect("list");
        for r in page.items {
            let (sid, at) = r.id.split_once('@').expect("a fired id");
            per_schedule
                .entry(sid.into())
                .or_default()
                .push(at.parse().expect("a time"));
        }
        let Some(next) = page.next_after_id else { break };
        filter.after_id = Some(next);
    }
    assert_eq!(per_schedule.len(), SCHEDULES);
    let expected: Vec<u64> = (1..=FIRES).map(|k| t0 + k * 10_000).collect();
    for (sid, mut fires) in per_schedule {
        fires.sort_unstable();
        assert_eq!(fires, expected, "{sid}: one process per fire, no fire twice or missed");
        let s = b.get_schedule(&sid).await.expect("get");
        assert_eq!(s.next_fire_ms, t0 + (FIRES + 1) * 10_000, "{sid}");
    }

    // The advance itself: both nodes try the same compare-and-set; one wins.
    let s = a.get_schedule("s00").await.expect("get");
    let advance = ScheduleAdvance {
        created_ms: s.created_ms,
        next_fire_ms: Some(s.next_fire_ms + 10_000),
        fired: None,
        refused: None,
    };
    let (wa, wb) = tokio::join!(
        cairn_core::ProcessRegistry::advance_schedule(a_reg.as_ref(), "s00", s.next_fire_ms, &advance),
        cairn_core::ProcessRegistry::advance_schedule(b_reg.as_ref(), "s00", s.next_fire_ms, &advance),
    );
    assert!(wa.expect("a") ^ wb.expect("b"), "exactly one node advances a fire");
    a.shutdown().await;
    b.shutdown().await;
}
