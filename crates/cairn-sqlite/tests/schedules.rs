//! A schedule survives a restart of the whole store: the file is closed, an
//! hour passes, the file is opened again by a new runtime, and exactly one
//! missed fire is caught up (SPEC §18).

use std::sync::Arc;

use cairn_core::{
    Clock, Disposition, ManualClock, Originator, Overlap, ProcessFilter, ProcessInput, Processes, ScheduleRequest,
    StartTemplate,
};
use cairn_sqlite::SqliteRegistry;
use serde_json::json;

fn runtime(path: &std::path::Path, clock: &ManualClock) -> Processes {
    let registry = SqliteRegistry::open(path, Arc::new(clock.clone())).expect("open");
    Processes::builder(Arc::new(registry))
        .tools(cairn_tools::builtin_tools(false))
        .clock(Arc::new(clock.clone()))
        .start()
}

async fn fired(p: &Processes) -> Vec<String> {
    let mut ids: Vec<String> = p
        .list(&ProcessFilter::any())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_file_catches_up_one_missed_fire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cairn.db");
    let clock = ManualClock::new(1_000_000);
    let t0 = clock.now_ms();
    let request = ScheduleRequest {
        id: "sync".into(),
        cron: None,
        every: Some("10s".into()),
        timezone: None,
        start: StartTemplate {
            input: ProcessInput::ToolCall {
                tool: "echo".into(),
                args: json!({"value": "sync"}),
            },
            disposition: Disposition::Rerunnable,
            originator: Originator::host(),
            caused_by: None,
            grant: None,
            wake_target: None,
            event_types: Vec::new(),
            env_spec: None,
            external_ref: None,
        },
        overlap: Overlap::Skip,
    };
    {
        let p = runtime(&path, &clock);
        p.create_schedule(request).await.expect("create");
        clock.advance(10_000);
        p.fire_schedules().await.expect("fire");
        p.await_output(&format!("sync@{}", t0 + 10_000), std::time::Duration::from_secs(20))
            .await
            .expect("the first fire ran");
        p.shutdown().await;
    }
    clock.advance(3_600_000);
    let p = runtime(&path, &clock);
    p.fire_schedules().await.expect("fire");
    p.fire_schedules().await.expect("fire again");
    assert_eq!(
        fired(&p).await,
        [format!("sync@{}", t0 + 10_000), format!("sync@{}", t0 + 20_000)],
        "one catch-up after an hour closed"
    );
    let s = p.get_schedule("sync").await.expect("get");
    assert_eq!(s.next_fire_ms, t0 + 3_620_000);
    p.shutdown().await;
}
