//! Schedules (SPEC §18): a backend stores what the runtime computed, answers
//! due schedules and the earliest fire from an index, and advances a fire only
//! by compare-and-set.

use cairn_core::schedule::{ScheduleRequest, ScheduleSpec, StartTemplate};
use cairn_core::{Disposition, Originator, Overlap, ProcessInput, Schedule, ScheduleAdvance};
use serde_json::json;

use crate::harness::{ok, Harness};
use crate::StoreFactory;

/// A schedule `id` firing every `every` from `now`.
fn schedule(id: &str, every: &str, now: u64) -> Schedule {
    let request = ScheduleRequest {
        id: id.into(),
        cron: None,
        every: Some(every.into()),
        timezone: None,
        start: StartTemplate {
            input: ProcessInput::ToolCall {
                tool: "echo".into(),
                args: json!({"value": id}),
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
    let spec: ScheduleSpec = request.validate().expect("a valid schedule");
    Schedule::new(request, &spec, now).expect("it fires")
}

/// Insert stores a schedule once (a taken id answers the stored one and
/// writes nothing); get, list (id order, paged), pause and delete round-trip.
pub async fn schedules_round_trip(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let r = h.registry();
    let now = cairn_core::Clock::now_ms(h.clock());
    let b = schedule("b", "10s", now);
    assert_eq!(ok(r.insert_schedule(&b).await, "insert b"), None, "stored");
    let other = schedule("b", "1m", now);
    let existing = ok(r.insert_schedule(&other).await, "insert b again");
    assert_eq!(existing.as_ref(), Some(&b), "a taken id answers the stored schedule");
    assert_eq!(ok(r.get_schedule("b").await, "get").as_ref(), Some(&b), "unchanged");
    for id in ["c", "a"] {
        ok(r.insert_schedule(&schedule(id, "1m", now)).await, "insert");
    }
    let ids = |v: Vec<Schedule>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(ok(r.list_schedules(None, 10).await, "list")), ["a", "b", "c"]);
    assert_eq!(ids(ok(r.list_schedules(Some("a"), 1).await, "page")), ["b"]);
    let paused = ok(r.set_schedule_paused("b", true, None).await, "pause").expect("b exists");
    assert!(
        paused.paused && paused.next_fire_ms == b.next_fire_ms,
        "pausing keeps the next fire"
    );
    let resumed = ok(r.set_schedule_paused("b", false, Some(now + 99_000)).await, "resume").expect("b");
    assert!(!resumed.paused);
    assert_eq!(resumed.next_fire_ms, now + 99_000, "a resume sets the next fire");
    assert_eq!(ok(r.set_schedule_paused("zz", true, None).await, "pause unknown"), None);
    assert!(ok(r.delete_schedule("b").await, "delete"));
    assert!(
        !ok(r.delete_schedule("b").await, "delete again"),
        "nothing left to delete"
    );
    assert_eq!(ok(r.get_schedule("b").await, "get deleted"), None);
}

/// Due schedules come earliest first and only unpaused; `next_due` names the
/// earliest fire after a time; an advance is a compare-and-set on the next
/// fire time that records the last fire.
pub async fn schedule_advance_is_compare_and_set(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let r = h.registry();
    let now = cairn_core::Clock::now_ms(h.clock());
    let fast = schedule("fast", "10s", now);
    let slow = schedule("slow", "20s", now);
    let idle = schedule("idle", "5s", now);
    for s in [&fast, &slow, &idle] {
        ok(r.insert_schedule(s).await, "insert");
    }
    ok(r.set_schedule_paused("idle", true, None).await, "pause idle");
    assert_eq!(
        ok(r.next_due(now).await, "next_due"),
        Some(now + 10_000),
        "a paused schedule is not due"
    );
    assert!(ok(r.due_schedules(now + 9_999, 10).await, "due").is_empty());
    let due = ok(r.due_schedules(now + 20_000, 10).await, "due");
    assert_eq!(
        due.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["fast", "slow"],
        "earliest first, paused left out"
    );
    assert_eq!(ok(r.due_schedules(now + 20_000, 1).await, "due").len(), 1, "bounded");

    let fire = (now + 10_000, format!("fast@{}", now + 10_000));
    let advance = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 20_000),
        fired: Some(fire.clone()),
        refused: None,
    };
    assert!(ok(r.advance_schedule("fast", now + 10_000, &advance).await, "advance"));
    assert!(
        !ok(
            r.advance_schedule("fast", now + 10_000, &advance).await,
            "advance again"
        ),
        "a second advance from the same fire finds it moved"
    );
    let got = ok(r.get_schedule("fast").await, "get").expect("fast");
    assert_eq!(got.next_fire_ms, now + 20_000);
    assert_eq!(
        (got.last_fire_ms, got.last_process_id),
        (Some(fire.0), Some(fire.1.clone()))
    );
    assert_eq!(ok(r.next_due(now + 10_000).await, "next_due"), Some(now + 20_000));

    // A refused fire is recorded and leaves the last fire; a started one clears it.
    let refusal = cairn_core::FireRefusal {
        fire_ms: now + 20_000,
        process_id: format!("fast@{}", now + 20_000),
        code: "unknown_tool".into(),
        message: "unknown tool `gone`".into(),
    };
    let refused = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 30_000),
        fired: None,
        refused: Some(refusal.clone()),
    };
    assert!(ok(
        r.advance_schedule("fast", now + 20_000, &refused).await,
        "advance refused"
    ));
    let got = ok(r.get_schedule("fast").await, "get").expect("fast");
    assert_eq!(got.last_refusal, Some(refusal.clone()));
    assert_eq!(
        got.last_process_id.as_deref(),
        Some(fire.1.as_str()),
        "the last fire stays"
    );
    let quiet = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 40_000),
        fired: None,
        refused: None,
    };
    assert!(ok(
        r.advance_schedule("fast", now + 30_000, &quiet).await,
        "advance skipped"
    ));
    let got = ok(r.get_schedule("fast").await, "get").expect("fast");
    assert_eq!(got.last_refusal, Some(refusal), "a skip keeps it");
    let started = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 50_000),
        fired: Some((now + 40_000, format!("fast@{}", now + 40_000))),
        refused: None,
    };
    assert!(ok(
        r.advance_schedule("fast", now + 40_000, &started).await,
        "advance started"
    ));
    let got = ok(r.get_schedule("fast").await, "get").expect("fast");
    assert_eq!(got.last_refusal, None, "a started fire clears it");

    // Two nodes decide one fire differently: one skips it (the previous
    // fire's process still ran when it looked) and wins the advance; the
    // other started the fire's process. Its losing advance still records
    // that process as the last fire, so the next fire's overlap check sees it.
    let skipped = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 60_000),
        fired: None,
        refused: None,
    };
    assert!(ok(r.advance_schedule("fast", now + 50_000, &skipped).await, "skip"));
    let late = (now + 50_000, format!("fast@{}", now + 50_000));
    let lost = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 60_000),
        fired: Some(late.clone()),
        refused: None,
    };
    assert!(
        !ok(r.advance_schedule("fast", now + 50_000, &lost).await, "lost start"),
        "the start's advance loses"
    );
    let got = ok(r.get_schedule("fast").await, "get").expect("fast");
    assert_eq!(got.next_fire_ms, now + 60_000, "the winner's next fire stands");
    assert_eq!(
        (got.last_fire_ms, got.last_process_id.as_deref()),
        (Some(late.0), Some(late.1.as_str())),
        "the started fire is the last one"
    );
    // A winner refused the start (its tool missing on that node) while the
    // loser started the fire's process: the refusal goes, the process is there.
    let refused_then_started = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 70_000),
        fired: None,
        refused: Some(cairn_core::FireRefusal {
            fire_ms: now + 60_000,
            process_id: format!("fast@{}", now + 60_000),
            code: "unknown_tool".into(),
            message: "unknown tool `echo` on this node".into(),
        }),
    };
    assert!(ok(
        r.advance_schedule("fast", now + 60_000, &refused_then_started).await,
        "refused"
    ));
    let started_elsewhere = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 70_000),
        fired: Some((now + 60_000, format!("fast@{}", now + 60_000))),
        refused: None,
    };
    assert!(!ok(
        r.advance_schedule("fast", now + 60_000, &started_elsewhere).await,
        "started elsewhere"
    ));
    let got = ok(r.get_schedule("fast").await, "get").expect("fast");
    assert_eq!(got.last_fire_ms, Some(now + 60_000), "{got:?}");
    assert_eq!(got.last_refusal, None, "the fire's process exists: {got:?}");
    // An older fire's losing advance leaves a later one recorded.
    let stale = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 50_000),
        fired: Some((now + 40_000, format!("fast@{}", now + 40_000))),
        refused: None,
    };
    assert!(!ok(r.advance_schedule("fast", now + 40_000, &stale).await, "stale"));
    let got = ok(r.get_schedule("fast").await, "get").expect("fast");
    assert_eq!(
        got.last_process_id,
        Some(format!("fast@{}", now + 60_000)),
        "a later fire stays"
    );
    // A pause that lands between a fire's start and its advance: the advance
    // loses, and the fire it started is still recorded.
    ok(r.set_schedule_paused("fast", true, None).await, "pause fast");
    let paused_fire = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 80_000),
        fired: Some((now + 70_000, format!("fast@{}", now + 70_000))),
        refused: None,
    };
    assert!(!ok(
        r.advance_schedule("fast", now + 70_000, &paused_fire).await,
        "paused"
    ));
    let got = ok(r.get_schedule("fast").await, "get").expect("fast");
    assert!(got.paused, "{got:?}");
    assert_eq!(got.last_fire_ms, Some(now + 70_000), "{got:?}");

    // A skip leaves the last fire; a schedule that never fires again pauses.
    let skip = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: None,
        fired: None,
        refused: None,
    };
    ok(r.set_schedule_paused("slow", true, None).await, "pause slow");
    assert!(
        !ok(r.advance_schedule("slow", now + 20_000, &skip).await, "advance paused"),
        "a paused schedule does not advance"
    );
    ok(r.set_schedule_paused("slow", false, None).await, "resume slow");
    assert!(ok(r.advance_schedule("slow", now + 20_000, &skip).await, "advance"));
    let got = ok(r.get_schedule("slow").await, "get").expect("slow");
    assert!(got.paused && got.last_fire_ms.is_none(), "{got:?}");
    assert!(!ok(r.advance_schedule("nope", 1, &skip).await, "advance unknown"));

    // A fire of a schedule deleted meanwhile and made again under its id:
    // its losing advance records nothing on the new schedule, whose own
    // fires (and `overlap: skip`) know nothing of the old one's process.
    ok(r.delete_schedule("idle").await, "delete idle");
    let again = schedule("idle", "5s", now + 1);
    ok(r.insert_schedule(&again).await, "insert idle again");
    let old_fire = ScheduleAdvance {
        created_ms: now,
        next_fire_ms: Some(now + 10_000),
        fired: Some((now + 5_000, format!("idle@{}", now + 5_000))),
        refused: None,
    };
    assert!(!ok(
        r.advance_schedule("idle", now + 5_000, &old_fire).await,
        "old fire"
    ));
    let got = ok(r.get_schedule("idle").await, "get").expect("idle");
    assert_eq!(
        (got.last_fire_ms, got.last_process_id.as_deref()),
        (None, None),
        "{got:?}"
    );
    assert_eq!(got.next_fire_ms, again.next_fire_ms);
}
