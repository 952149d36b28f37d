//! Listing filters and their parsing.

use cairn_core::{
    CausalRef, Originator, Outcome, ProcessFilter, ProcessInput, ProcessRecord, ProcessStatus, SessionScope,
    StatusFilter, WaitRequest,
};
use serde_json::json;

use crate::builders::*;
use crate::harness::{expect_code, ok, Harness};
use crate::StoreFactory;

pub(crate) async fn listed(h: &Harness, filter: &ProcessFilter) -> Vec<String> {
    ok(h.registry().list(filter).await, "list")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

pub(crate) fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn status(status: StatusFilter) -> ProcessFilter {
    ProcessFilter {
        status,
        ..ProcessFilter::default()
    }
}

/// One process in each status: `a-abandoned`, `c-completed`, `f-failed`, `r-running`, `x-cancelled`.
async fn one_of_each_status(h: &Harness) {
    h.register(rerunnable("r-running")).await;
    h.register(external("c-completed")).await;
    ok(
        h.registry()
            .complete_external("c-completed", Outcome::success(json!(1)), "ci")
            .await,
        "complete",
    );
    h.register(rerunnable("f-failed")).await;
    let lease = h.claim("f-failed", "w1", 1000).await;
    ok(
        h.registry()
            .complete(&lease, Outcome::failure("tool", "exit", "boom"))
            .await,
        "fail",
    );
    h.register(owner_bound("x-cancelled")).await;
    ok(h.registry().request_cancel("x-cancelled", None).await, "cancel");
    h.register(rerunnable("a-abandoned")).await;
    ok(
        h.registry().request_abandon("a-abandoned", "op", "gone").await,
        "abandon",
    );
    let rec = ok(h.registry().reconcile_abandon("a-abandoned").await, "reconcile");
    assert_eq!(rec.map(|r| r.status), Some(ProcessStatus::Abandoned));
    h.check_all().await;
}

/// The status filter: `running` by default, each terminal status, and `any`.
pub async fn list_status_filter(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    one_of_each_status(&h).await;
    assert_eq!(
        listed(&h, &ProcessFilter::default()).await,
        ids(&["r-running"]),
        "running by default"
    );
    assert_eq!(listed(&h, &status(StatusFilter::Running)).await, ids(&["r-running"]));
    assert_eq!(
        listed(&h, &status(StatusFilter::Completed)).await,
        ids(&["c-completed"])
    );
    assert_eq!(listed(&h, &status(StatusFilter::Failed)).await, ids(&["f-failed"]));
    assert_eq!(
        listed(&h, &status(StatusFilter::Cancelled)).await,
        ids(&["x-cancelled"])
    );
    assert_eq!(
        listed(&h, &status(StatusFilter::Abandoned)).await,
        ids(&["a-abandoned"])
    );
    assert_eq!(
        listed(&h, &ProcessFilter::any()).await,
        ids(&["a-abandoned", "c-completed", "f-failed", "r-running", "x-cancelled"]),
        "any, in id order"
    );
    let parsed = ok(ProcessFilter::from_query([("status", "failed")]), "from_query");
    assert_eq!(listed(&h, &parsed).await, ids(&["f-failed"]));
}

/// Definition, waiting, originator and created-range filters, combined with status.
pub async fn list_filters(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let s1 = session("s1");
    let t0 = h.now();
    h.register(rerunnable("echo-host")).await;
    h.advance(100);
    let t1 = h.now();
    let mut shell = originated_by(rerunnable("shell-s1"), &s1);
    shell.input = ProcessInput::ToolCall {
        tool: "shell".into(),
        args: json!({"argv": ["true"]}),
    };
    h.register(shell).await;
    h.advance(100);
    let t2 = h.now();
    let mut ops = external("ext-ops");
    ops.provenance.originator = Originator::Host {
        scope: Some("ops".into()),
    };
    h.register(ops).await;
    let (lease, rec) = h.claim_started("echo-host", "w1", 30_000).await;
    let suspended = ok(
        h.registry()
            .wait(&lease, WaitRequest::signal("go", 1, None), rec.last_sequence)
            .await,
        "suspend echo-host",
    );
    assert!(suspended);
    h.register(originated_by(external("ext-frame"), &SessionScope::frame("s1", "f")))
        .await;

    let f = |edit: &dyn Fn(&mut ProcessFilter)| {
        let mut filter = ProcessFilter::default();
        edit(&mut filter);
        filter
    };
    assert_eq!(
        listed(&h, &f(&|x| x.definition = Some("tool:echo".into()))).await,
        ids(&["echo-host"])
    );
    assert_eq!(
        listed(&h, &f(&|x| x.definition = Some("tool:shell".into()))).await,
        ids(&["shell-s1"])
    );
    assert_eq!(
        listed(&h, &f(&|x| x.definition = Some("external".into()))).await,
        ids(&["ext-frame", "ext-ops"])
    );
    assert_eq!(listed(&h, &f(&|x| x.waiting = Some(true))).await, ids(&["echo-host"]));
    assert_eq!(
        listed(&h, &f(&|x| x.waiting = Some(false))).await,
        ids(&["ext-frame", "ext-ops", "shell-s1"])
    );
    assert_eq!(
        listed(&h, &f(&|x| x.originator = Some("host".into()))).await,
        ids(&["echo-host"])
    );
    assert_eq!(
        listed(&h, &f(&|x| x.originator = Some("host:ops".into()))).await,
        ids(&["ext-ops"])
    );
    assert_eq!(
        listed(&h, &f(&|x| x.originator = Some("session:s1".into()))).await,
        ids(&["shell-s1"]),
        "originator matches the exact scope id"
    );
    assert_eq!(
        listed(&h, &f(&|x| x.originator = Some("session:s1/frame:f".into()))).await,
        ids(&["ext-frame"])
    );
    assert_eq!(
        listed(&h, &f(&|x| x.created_from_ms = Some(t1))).await,
        ids(&["ext-frame", "ext-ops", "shell-s1"]),
        "created_from_ms is inclusive"
    );
    assert_eq!(
        listed(&h, &f(&|x| x.created_before_ms = Some(t1))).await,
        ids(&["echo-host"]),
        "created_before_ms is exclusive"
    );
    assert_eq!(
        listed(
            &h,
            &f(&|x| {
                x.created_from_ms = Some(t0 + 1);
                x.created_before_ms = Some(t2);
            })
        )
        .await,
        ids(&["shell-s1"])
    );
    assert_eq!(
        listed(
            &h,
            &f(&|x| {
                x.definition = Some("external".into());
                x.waiting = Some(false);
            })
        )
        .await,
        ids(&["ext-frame", "ext-ops"]),
        "filters combine"
    );
    ok(
        h.registry()
            .complete_external("ext-ops", Outcome::success(json!(null)), "ci")
            .await,
        "complete",
    );
    h.check("ext-ops").await;
    h.append("echo-host", signal("go", "s1", json!(1))).await;
    h.claim_started("echo-host", "w2", 30_000).await;
    assert_eq!(
        listed(&h, &f(&|x| x.waiting = Some(true))).await,
        Vec::<String>::new(),
        "a resumed process no longer waits"
    );
    assert_eq!(
        listed(
            &h,
            &f(&|x| {
                x.status = StatusFilter::Any;
                x.originator = Some("host:ops".into());
            })
        )
        .await,
        ids(&["ext-ops"])
    );
}

/// Listings come in id order, one page of `limit`, continuing after `after_id`.
pub async fn list_paging(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let mut order: Vec<usize> = (0..12).collect();
    order.reverse();
    order.swap(2, 9);
    for i in order {
        h.register(rerunnable(&format!("p{i:02}"))).await;
    }
    let page = |after: Option<&str>, limit: usize| ProcessFilter {
        after_id: after.map(str::to_string),
        limit: Some(limit),
        ..ProcessFilter::default()
    };
    assert_eq!(
        listed(&h, &page(None, 5)).await,
        ids(&["p00", "p01", "p02", "p03", "p04"])
    );
    assert_eq!(
        listed(&h, &page(Some("p04"), 5)).await,
        ids(&["p05", "p06", "p07", "p08", "p09"])
    );
    assert_eq!(listed(&h, &page(Some("p09"), 5)).await, ids(&["p10", "p11"]));
    assert!(listed(&h, &page(Some("p11"), 5)).await.is_empty());
    assert_eq!(
        listed(&h, &page(Some("p045"), 2)).await,
        ids(&["p05", "p06"]),
        "after_id need not exist"
    );
    assert_eq!(
        listed(&h, &ProcessFilter::default()).await.len(),
        12,
        "default page holds all 12"
    );
}

/// The two lenses apply status, paging and the other filters too.
pub async fn lens_listings_apply_filters(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let s1 = session("s1");
    for i in 0..5 {
        let id = format!("p{i}");
        let reg = if i % 2 == 0 {
            originated_by(external(&id), &s1)
        } else {
            originated_by(rerunnable(&id), &s1)
        };
        h.register_granted(reg, Some(start_grant(&s1, "k", &id))).await;
    }
    ok(
        h.registry()
            .complete_external("p2", Outcome::success(json!(2)), "ci")
            .await,
        "complete",
    );
    h.check("p2").await;
    let granted = |filter: ProcessFilter| {
        let h = &h;
        let s1 = &s1;
        async move {
            ok(h.registry().list_granted_to(s1, &filter).await, "list_granted_to")
                .into_iter()
                .map(|g| g.process.id)
                .collect::<Vec<_>>()
        }
    };
    let originated = |filter: ProcessFilter| {
        let h = &h;
        let s1 = &s1;
        async move {
            ok(h.registry().list_originated_by(s1, &filter).await, "list_originated_by")
                .into_iter()
                .map(|r: ProcessRecord| r.id)
                .collect::<Vec<_>>()
        }
    };
    let running = ids(&["p0", "p1", "p3", "p4"]);
    assert_eq!(granted(ProcessFilter::default()).await, running, "running by default");
    assert_eq!(
        originated(ProcessFilter::default()).await,
        running,
        "running by default"
    );
    let done = status(StatusFilter::Completed);
    assert_eq!(granted(done.clone()).await, ids(&["p2"]));
    assert_eq!(originated(done).await, ids(&["p2"]));
    let paged = ProcessFilter {
        after_id: Some("p0".into()),
        limit: Some(2),
        ..ProcessFilter::any()
    };
    assert_eq!(granted(paged.clone()).await, ids(&["p1", "p2"]));
    assert_eq!(originated(paged).await, ids(&["p1", "p2"]));
    let ext = ProcessFilter {
        definition: Some("external".into()),
        ..ProcessFilter::default()
    };
    assert_eq!(granted(ext.clone()).await, ids(&["p0", "p4"]));
    assert_eq!(originated(ext).await, ids(&["p0", "p4"]));
}

/// `ProcessFilter::from_json` / `from_query` reject unknown keys and wrong value
/// types (`invalid_filter`), and a parsed filter lists what it says.
pub async fn filter_parsing_errors(factory: &dyn StoreFactory) {
    for bad in [
        json!({"nope": 1}),
        json!({"status": "bogus"}),
        json!({"status": 1}),
        json!({"waiting": "yes"}),
        json!({"limit": "5"}),
        json!({"created_from_ms": -1}),
        json!({"originator": {"type": "host"}}),
        json!(["status", "any"]),
        // No id holds a control character (and PostgreSQL takes no NUL).
        json!({"after_id": "a\u{0}b"}),
        json!({"definition": "tool:\u{0}"}),
        json!({"definition": "script:m\u{0}#main"}),
        // A script's module is named by its content address, never otherwise.
        json!({"definition": "script:deploy#main"}),
        json!({"definition": "script:module:sha256:00#main"}),
        json!({"definition": format!("script:module:sha256:{}#main", "A".repeat(64))}),
    ] {
        expect_code(
            ProcessFilter::from_json(bad.clone()),
            "invalid_filter",
            &format!("from_json {bad}"),
        );
    }
    expect_code(ProcessFilter::from_json(json!({"limit": 0})), "invalid_page", "limit 0");
    // A page size that is no number is as bad a page as 0 is, on every route.
    expect_code(
        ProcessFilter::from_query([("limit", "x")]),
        "invalid_page",
        "from_query limit x",
    );
    let bad_queries: [&[(&str, &str)]; 5] = [
        &[("nope", "1")],
        &[("waiting", "yes")],
        &[("created_before_ms", "-5")],
        &[("status", "bogus")],
        &[("status", "any"), ("status", "running")],
    ];
    for q in bad_queries {
        expect_code(
            ProcessFilter::from_query(q.iter().copied()),
            "invalid_filter",
            &format!("from_query {q:?}"),
        );
    }
    let parsed = ok(
        ProcessFilter::from_json(json!({"status": "any", "waiting": false, "definition": "external", "limit": 5})),
        "from_json",
    );
    let queried = ok(
        ProcessFilter::from_query([
            ("status", "any"),
            ("waiting", "false"),
            ("definition", "external"),
            ("limit", "5"),
        ]),
        "from_query",
    );
    assert_eq!(parsed, queried);
    assert_eq!(
        parsed,
        ProcessFilter {
            status: StatusFilter::Any,
            waiting: Some(false),
            definition: Some("external".into()),
            limit: Some(5),
            ..ProcessFilter::default()
        }
    );
    let h = Harness::new(factory).await;
    h.register(external("e1")).await;
    h.register(rerunnable("r1")).await;
    ok(
        h.registry()
            .complete_external("e1", Outcome::success(json!(1)), "ci")
            .await,
        "complete",
    );
    h.check("e1").await;
    assert_eq!(listed(&h, &parsed).await, ids(&["e1"]));
}

/// A filter built in code, not parsed, is checked by every listing as a
/// parsed one is: `invalid_filter` from each backend alike (PostgreSQL takes
/// no NUL in text, and would otherwise fail as a storage error).
pub async fn listings_check_a_filter_built_in_code(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    h.register(external("e1")).await;
    let scope = cairn_core::SessionScope::session("s1");
    let bad = [
        ProcessFilter {
            after_id: Some("a\u{0}".into()),
            ..ProcessFilter::any()
        },
        ProcessFilter {
            definition: Some("tool:x\u{0}".into()),
            ..ProcessFilter::any()
        },
    ];
    for filter in &bad {
        expect_code(
            h.registry().list(filter).await,
            "invalid_filter",
            &format!("list {filter:?}"),
        );
        expect_code(
            h.registry().list_granted_to(&scope, filter).await,
            "invalid_filter",
            &format!("list_granted_to {filter:?}"),
        );
        expect_code(
            h.registry().list_originated_by(&scope, filter).await,
            "invalid_filter",
            &format!("list_originated_by {filter:?}"),
        );
    }
}

/// `caused_by` lists a process's children (SPEC §13): those whose provenance
/// names it as `{"process_id"}` or `{"kind": "process", "id"}`; a malformed
/// `caused_by` is refused at registration.
pub async fn caused_by_lists_children(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let child = |id: &str, cause: CausalRef| {
        let mut reg = external(id);
        reg.provenance.caused_by = Some(cause);
        reg
    };
    h.register(external("parent")).await;
    h.register(child("c1", CausalRef::process("parent"))).await;
    h.register(child(
        "c2",
        CausalRef {
            kind: Some("process".into()),
            id: Some("parent".into()),
            process_id: None,
        },
    ))
    .await;
    h.register(child("g1", CausalRef::process("c1"))).await;
    h.register(child(
        "turn-child",
        CausalRef {
            kind: Some("turn".into()),
            id: Some("parent".into()),
            process_id: None,
        },
    ))
    .await;
    let of = |p: &str| ProcessFilter {
        caused_by: Some(p.into()),
        ..ProcessFilter::default()
    };
    assert_eq!(listed(&h, &of("parent")).await, ids(&["c1", "c2"]));
    assert_eq!(listed(&h, &of("c1")).await, ids(&["g1"]));
    assert_eq!(listed(&h, &of("nobody")).await, Vec::<String>::new());
    let parsed = ok(
        ProcessFilter::from_query([("caused_by", "parent"), ("status", "any")]),
        "parse caused_by",
    );
    assert_eq!(parsed.caused_by.as_deref(), Some("parent"));
    for bad in [
        CausalRef {
            process_id: Some("parent".into()),
            kind: Some("process".into()),
            id: None,
        },
        CausalRef {
            kind: Some("turn".into()),
            ..CausalRef::default()
        },
        CausalRef::default(),
    ] {
        h.rejects(
            "invalid_request",
            &format!("caused_by {bad:?}"),
            h.registry().register(child("bad", bad.clone()), None),
        )
        .await;
    }
}
