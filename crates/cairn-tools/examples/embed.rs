//! Embed cairn in a host with the in-memory registry: start a shell process,
//! stream its events, signal a `wait_signal` process, and await both.
//!
//! Run with `cargo run -p cairn-tools --example embed`.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{Disposition, MemoryRegistry, Processes, Result, StartRequest};
use cairn_tools::builtin_tools;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<()> {
    let registry = Arc::new(MemoryRegistry::new());
    // `shell` runs host commands, so a host opts in to it explicitly.
    let processes = Processes::builder(registry).tools(builtin_tools(true)).start();

    let build = StartRequest::tool(
        "build-1",
        "shell",
        json!({"command": "for step in fetch compile link; do echo $step; done"}),
        Disposition::OwnerBound,
    );
    processes.start(build).await?;

    let approval = StartRequest::tool(
        "approval-1",
        "wait_signal",
        json!({"name": "approve", "timeout_ms": 60_000}),
        Disposition::Rerunnable,
    );
    processes.start(approval).await?;

    // Stream the shell's events as they are appended, until the log ends.
    let mut after = 0;
    loop {
        let page = processes
            .follow("build-1", after, None, Duration::from_secs(30))
            .await?;
        if page.events.is_empty() {
            break;
        }
        for event in &page.events {
            after = event.sequence;
            println!("build-1 #{} {} {}", event.sequence, event.event_type, event.payload);
        }
    }

    // The approval process is waiting durably; a signal resumes it.
    processes
        .await_event("approval-1", "process.waiting", 0, Duration::from_secs(10))
        .await?;
    println!("approval-1 is waiting: {:?}", processes.get("approval-1").await?.wait);
    processes
        .signal("approval-1", "approve", "approval-from-alice", json!({"by": "alice"}))
        .await?;

    for id in ["build-1", "approval-1"] {
        let record = processes.await_output(id, Duration::from_secs(30)).await?;
        println!(
            "{id}: {} {}",
            record.status.label(),
            serde_json::to_string(&record.outcome).unwrap_or_default()
        );
    }
    processes.shutdown().await;
    Ok(())
}
