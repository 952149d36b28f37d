//! Newest-first listings: their order, their cursor and its parsing.

use cairn_core::{CairnError, ListOrder, Outcome, ProcessFilter, StatusFilter, Watermark};
use serde_json::json;

use super::filters::{ids, listed};
use crate::builders::*;
use crate::harness::{expect_code, ok, Harness};
use crate::StoreFactory;

/// A newest-first filter of `status`.
fn newest(status: StatusFilter) -> ProcessFilter {
    ProcessFilter {
        status,
        order: ListOrder::Newest,
        ..ProcessFilter::default()
    }
}

/// Every page of `filter` at `limit`, each read with `after_id` the last id
/// of the page before, through `read`; checks each page holds at most
/// `limit` and that the walk ends.
async fn walk<F, Fut>(filter: &ProcessFilter, limit: usize, read: F) -> Vec<String>
where
    F: Fn(ProcessFilter) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let mut out: Vec<String> = Vec::new();
    for _ in 0..100 {
        let page = read(ProcessFilter {
            after_id: out.last().cloned(),
            limit: Some(limit),
            ..filter.clone()
        })
        .await;
        assert!(page.len() <= limit, "{filter:?}: a page of {limit} held {page:?}");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
    panic!("{filter:?}: paging by {limit} never ended: {out:?}");
}

/// Register seven processes over three milliseconds, ids out of creation
/// order, and end `b`, `c` and `z` (externally owned): the newest-first
/// order is `k b z a x m c` (ties by descending id), the id order
/// `a b c k m x z`. Answers the three creation times.
async fn seven_over_three_milliseconds(h: &Harness) -> [u64; 3] {
    let mut at = [0; 3];
    for (slot, group) in [["m", "c", "x"].as_slice(), &["a", "z"], &["k", "b"]]
        .into_iter()
        .enumerate()
    {
        if slot > 0 {
            h.advance(10);
        }
        at[slot] = h.now();
        for id in group {
            let reg = if ["b", "c", "z"].contains(id) {
                external(id)
            } else {
                rerunnable(id)
            };
            let rec = h.register(reg).await;
            assert_eq!(rec.created_at_ms, at[slot], "`{id}` is created at the clock's time");
        }
    }
    h.advance(10);
    for id in ["b", "c", "z"] {
        ok(
            h.registry()
                .complete_external(id, Outcome::success(json!(id)), "ci")
                .await,
            "complete",
        );
        h.check(id).await;
    }
    at
}

/// Newest first (descending creation time, ties by descending id), every
/// page read with `after_id` the last id of the one before lists each
/// record once, whatever the page size; the cursor is a position, so one
/// outside the filter (another status) still starts the page after it.
/// Status and created-range filters apply as in id order.
pub async fn newest_first_pages_each_record_once(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let [t0, t1, t2] = seven_over_three_milliseconds(&h).await;
    let any = newest(StatusFilter::Any);
    let read = |filter: ProcessFilter| {
        let h = &h;
        async move { listed(h, &filter).await }
    };
    assert_eq!(
        listed(&h, &ProcessFilter::any()).await,
        ids(&["a", "b", "c", "k", "m", "x", "z"]),
        "id order stays the default"
    );
    let all = ids(&["k", "b", "z", "a", "x", "m", "c"]);
    assert_eq!(read(any.clone()).await, all, "newest first, ties by descending id");
    let from_empty = ProcessFilter {
        after_id: Some(String::new()),
        ..any.clone()
    };
    assert_eq!(
        read(from_empty).await,
        all,
        "an empty cursor starts at the top, as in id order"
    );
    for limit in 1..=4 {
        assert_eq!(walk(&any, limit, read).await, all, "pages of {limit}");
    }
    let window = |filter: ProcessFilter, from: Option<u64>, before: Option<u64>| ProcessFilter {
        created_from_ms: from,
        created_before_ms: before,
        ..filter
    };
    let cases = [
        (newest(StatusFilter::Completed), ids(&["b", "z", "c"])),
        (newest(StatusFilter::Running), ids(&["k", "a", "x", "m"])),
        (window(any.clone(), Some(t1), Some(t2)), ids(&["z", "a"])),
        (window(any.clone(), Some(t1), None), ids(&["k", "b", "z", "a"])),
        (window(any.clone(), None, Some(t1)), ids(&["x", "m", "c"])),
        (
            window(newest(StatusFilter::Running), Some(t0), Some(t2)),
            ids(&["a", "x", "m"]),
        ),
        (
            window(newest(StatusFilter::Completed), Some(t0 + 1), None),
            ids(&["b", "z"]),
        ),
    ];
    for (filter, want) in cases {
        assert_eq!(read(filter.clone()).await, want, "{filter:?}");
        for limit in 1..=2 {
            assert_eq!(walk(&filter, limit, read).await, want, "{filter:?} in pages of {limit}");
        }
    }
    let after = |filter: &ProcessFilter, id: &str| ProcessFilter {
        after_id: Some(id.to_string()),
        ..filter.clone()
    };
    let done = newest(StatusFilter::Completed);
    assert_eq!(
        read(after(&done, "k")).await,
        ids(&["b", "z", "c"]),
        "a running cursor starts a page of completed ones"
    );
    assert_eq!(
        read(after(&done, "a")).await,
        ids(&["c"]),
        "`z` is as old as `a`, with a greater id"
    );
    assert_eq!(
        read(after(&any, "c")).await,
        Vec::<String>::new(),
        "nothing is past the oldest"
    );
}

/// Both lenses list newest first too, paging by `after_id` and filtering
/// as the listing of every process does; what is outside the lens (not
/// granted to the scope, or originated elsewhere) is skipped, however
/// new, and refused as a cursor (`invalid_page`, as for no process).
pub async fn lens_listings_page_newest_first(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let s1 = session("s1");
    // (id, originated by s1, granted to s1), in creation order, two per millisecond.
    let made = [
        ("g3", true, true),
        ("g1", false, true),
        ("o2", true, false),
        ("g5", true, true),
        ("h9", false, false),
        ("g2", true, true),
        ("g4", false, true),
        ("o1", true, false),
    ];
    for (i, (id, ours, granted)) in made.into_iter().enumerate() {
        if i % 2 == 0 {
            h.advance(5);
        }
        let reg = if id == "g5" || id == "o1" {
            external(id)
        } else {
            rerunnable(id)
        };
        let reg = if ours { originated_by(reg, &s1) } else { reg };
        let grant = granted.then(|| start_grant(&s1, "k", id));
        h.register_granted(reg, grant).await;
    }
    for id in ["g5", "o1"] {
        ok(
            h.registry()
                .complete_external(id, Outcome::success(json!(id)), "ci")
                .await,
            "complete",
        );
        h.check(id).await;
    }
    let granted = |filter: ProcessFilter| {
        let (h, s1) = (&h, &s1);
        async move {
            ok(h.registry().list_granted_to(s1, &filter).await, "list_granted_to")
                .into_iter()
                .map(|g| {
                    assert_eq!(g.grant.process_id, g.process.id, "a grant comes with its process");
                    g.process.id
                })
                .collect::<Vec<_>>()
        }
    };
    let originated = |filter: ProcessFilter| {
        let (h, s1) = (&h, &s1);
        async move {
            ok(h.registry().list_originated_by(s1, &filter).await, "list_originated_by")
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    let any = newest(StatusFilter::Any);
    // Ties: g3 and g1, o2 and g5, h9 and g2, g4 and o1 share a millisecond.
    let granted_all = ids(&["g4", "g2", "g5", "g3", "g1"]);
    let originated_all = ids(&["o1", "g2", "o2", "g5", "g3"]);
    assert_eq!(granted(any.clone()).await, granted_all);
    assert_eq!(originated(any.clone()).await, originated_all);
    for limit in 1..=3 {
        assert_eq!(
            walk(&any, limit, granted).await,
            granted_all,
            "granted, pages of {limit}"
        );
        assert_eq!(
            walk(&any, limit, originated).await,
            originated_all,
            "originated, pages of {limit}"
        );
    }
    let running = newest(StatusFilter::Running);
    assert_eq!(walk(&running, 1, granted).await, ids(&["g4", "g2", "g3", "g1"]));
    assert_eq!(walk(&running, 1, originated).await, ids(&["g2", "o2", "g3"]));
    let done = newest(StatusFilter::Completed);
    assert_eq!(granted(done.clone()).await, ids(&["g5"]));
    assert_eq!(originated(done).await, ids(&["o1", "g5"]));
    // A cursor outside the lens is refused as one naming no process is: a
    // session's listing tells nothing of a process it does not hold.
    for (cursor, granted_holds, originated_holds) in [("h9", false, false), ("o2", false, true), ("g4", true, false)] {
        let past = ProcessFilter {
            after_id: Some(cursor.into()),
            ..any.clone()
        };
        let g = h.registry().list_granted_to(&s1, &past).await;
        assert_eq!(g.is_ok(), granted_holds, "list_granted_to after `{cursor}`: {g:?}");
        if let Err(e) = g {
            assert!(
                matches!(e, CairnError::InvalidPage(_)),
                "list_granted_to after `{cursor}`: {e:?}"
            );
        }
        let o = h.registry().list_originated_by(&s1, &past).await;
        assert_eq!(
            o.is_ok(),
            originated_holds,
            "list_originated_by after `{cursor}`: {o:?}"
        );
        if let Err(e) = o {
            assert!(
                matches!(e, CairnError::InvalidPage(_)),
                "list_originated_by after `{cursor}`: {e:?}"
            );
        }
    }
    let past_o2 = ProcessFilter {
        after_id: Some("o2".into()),
        ..any.clone()
    };
    assert_eq!(originated(past_o2).await, ids(&["g5", "g3"]));
    let rec = h.get("g2").await;
    let window = ProcessFilter {
        created_from_ms: Some(rec.created_at_ms - 5),
        created_before_ms: Some(rec.created_at_ms + 1),
        ..any
    };
    assert_eq!(walk(&window, 1, granted).await, ids(&["g2", "g5"]));
    assert_eq!(walk(&window, 1, originated).await, ids(&["g2", "o2", "g5"]));
}

/// A newest-first page starts where its cursor was created: a cursor that
/// names no process (pruned since, or never one) is `invalid_page` on
/// every listing, a session's with no grants too, and changes nothing. In
/// id order the same cursor is only a position, as before.
pub async fn a_newest_cursor_naming_no_process_is_invalid_page(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    let (s1, s2) = (session("s1"), session("s2"));
    h.register_granted(originated_by(external("old"), &s1), Some(start_grant(&s1, "k", "old")))
        .await;
    ok(
        h.registry()
            .complete_external("old", Outcome::success(json!(1)), "ci")
            .await,
        "complete",
    );
    h.check("old").await;
    h.advance(100);
    let cutoff = h.now();
    h.advance(10);
    h.register_granted(
        originated_by(rerunnable("young"), &s1),
        Some(start_grant(&s1, "k", "young")),
    )
    .await;
    let at = |id: &str, order: ListOrder| ProcessFilter {
        after_id: Some(id.to_string()),
        order,
        ..ProcessFilter::any()
    };
    let from_old = at("old", ListOrder::Newest);
    assert_eq!(
        listed(&h, &from_old).await,
        Vec::<String>::new(),
        "nothing is older than `old`"
    );
    let report = ok(
        h.registry()
            .prune(cutoff, StatusFilter::Any.into(), Watermark::NoProjector)
            .await,
        "prune",
    );
    assert_eq!(report.pruned, 1, "{report:?}");
    let invalid = |err: CairnError, what: &str| {
        assert!(matches!(err, CairnError::InvalidPage(_)), "{what}: {err:?}");
    };
    for cursor in ["old", "never"] {
        let filter = at(cursor, ListOrder::Newest);
        let what = format!("newest first after `{cursor}`");
        invalid(
            h.rejects("invalid_page", &format!("list {what}"), h.registry().list(&filter))
                .await,
            &what,
        );
        for scope in [&s1, &s2] {
            invalid(
                h.rejects(
                    "invalid_page",
                    &format!("list_granted_to {scope:?} {what}"),
                    h.registry().list_granted_to(scope, &filter),
                )
                .await,
                &what,
            );
            invalid(
                h.rejects(
                    "invalid_page",
                    &format!("list_originated_by {scope:?} {what}"),
                    h.registry().list_originated_by(scope, &filter),
                )
                .await,
                &what,
            );
        }
        assert_eq!(
            listed(&h, &at(cursor, ListOrder::Id)).await,
            ids(&["young"]),
            "in id order `{cursor}` is a position"
        );
    }
    let from_young = at("young", ListOrder::Newest);
    assert!(ok(h.registry().list_granted_to(&s1, &from_young).await, "granted").is_empty());
    assert!(ok(h.registry().list_originated_by(&s1, &from_young).await, "originated").is_empty());
}

/// `order` parses from a query (`order=newest`, `order=id`) and from JSON
/// alike, `id` when left out; any other value, or one of another type, is
/// `invalid_filter` naming it; a parsed newest-first filter lists so.
pub async fn list_order_parsing(factory: &dyn StoreFactory) {
    for (raw, order) in [("newest", ListOrder::Newest), ("id", ListOrder::Id)] {
        let queried = ok(
            ProcessFilter::from_query([("status", "any"), ("order", raw)]),
            &format!("from_query order={raw}"),
        );
        assert_eq!(queried.order, order, "order={raw}");
        let parsed = ok(
            ProcessFilter::from_json(json!({"status": "any", "order": raw})),
            &format!("from_json order {raw}"),
        );
        assert_eq!(parsed, queried, "{raw}: JSON and query alike");
    }
    assert_eq!(
        ok(ProcessFilter::from_query(std::iter::empty()), "no order").order,
        ListOrder::Id
    );
    let err = expect_code(
        ProcessFilter::from_query([("order", "bogus")]),
        "invalid_filter",
        "from_query order=bogus",
    );
    assert!(err.to_string().contains("bogus"), "{err}");
    for bad in [
        &[("order", "Newest")][..],
        &[("order", "")],
        &[("order", "id"), ("order", "newest")],
    ] {
        expect_code(
            ProcessFilter::from_query(bad.iter().copied()),
            "invalid_filter",
            &format!("from_query {bad:?}"),
        );
    }
    for bad in [
        json!({"order": 5}),
        json!({"order": "bogus"}),
        json!({"order": null}),
        json!({"order": ["newest"]}),
    ] {
        expect_code(
            ProcessFilter::from_json(bad.clone()),
            "invalid_filter",
            &format!("from_json {bad}"),
        );
    }
    let h = Harness::new(factory).await;
    for id in ["b", "a", "c"] {
        h.register(rerunnable(id)).await;
        h.advance(1);
    }
    let parsed = ok(
        ProcessFilter::from_query([("order", "newest"), ("limit", "2")]),
        "parse",
    );
    assert_eq!(listed(&h, &parsed).await, ids(&["c", "a"]));
    let next = ok(
        ProcessFilter::from_query([("order", "newest"), ("after_id", "a")]),
        "parse with a cursor",
    );
    assert_eq!(listed(&h, &next).await, ids(&["b"]));
}

/// Newest first by a status over a long history, page after page: a page is
/// the same whether the newest processes hold it (many running) or it lies
/// past more than a thousand newer ended ones (a few old ones still
/// running), as a store may look for it either way.
pub async fn newest_first_by_status_over_a_long_history(factory: &dyn StoreFactory) {
    let h = Harness::new(factory).await;
    // (created at, id, still running), ids out of creation order, a few a millisecond.
    let mut made: Vec<(u64, String, bool)> = Vec::new();
    for i in 0..5u64 {
        let id = format!("old-{}", (i * 3) % 5);
        h.register(external(&id)).await;
        made.push((h.now(), id, true));
    }
    for i in 0..1_500u64 {
        if i % 4 == 0 {
            h.advance(1);
        }
        let id = format!("done-{:04}", (i * 7) % 1_500);
        h.register(external(&id)).await;
        ok(
            h.registry()
                .complete_external(&id, Outcome::success(json!(1)), "ci")
                .await,
            "complete",
        );
        made.push((h.now(), id, false));
    }
    let expected = |running: bool, made: &[(u64, String, bool)]| {
        let mut of: Vec<&(u64, String, bool)> = made.iter().filter(|m| m.2 == running).collect();
        of.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        of.into_iter().map(|m| m.1.clone()).collect::<Vec<_>>()
    };
    let read = |filter: ProcessFilter| {
        let h = &h;
        async move { listed(h, &filter).await }
    };
    let running = newest(StatusFilter::Running);
    for limit in [1, 2, 3, 100] {
        assert_eq!(
            walk(&running, limit, read).await,
            expected(true, &made),
            "the old ones still running, pages of {limit}"
        );
    }
    for i in 0..1_200u64 {
        if i % 3 == 0 {
            h.advance(1);
        }
        let id = format!("live-{:04}", (i * 11) % 1_200);
        h.register(external(&id)).await;
        made.push((h.now(), id, true));
    }
    for limit in [13, 100, 1_000] {
        assert_eq!(
            walk(&running, limit, read).await,
            expected(true, &made),
            "1,205 running, pages of {limit}"
        );
    }
    assert_eq!(
        walk(&newest(StatusFilter::Completed), 250, read).await,
        expected(false, &made)
    );
}
