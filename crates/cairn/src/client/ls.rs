//! `cairn ls`, newest first (`--after-id`: after the process it names): the
//! server's newest-first pages (`order=newest`), each read after the last
//! one's `next_after_id`, until the rows to show and one more are read (that
//! one says more match) or the pages end: what is sent is about what it
//! shows (the server's cost per page: ADR 0038).

use serde_json::Value;

use super::http::{query, Client, ClientError};

/// How many `ls` shows when no `--limit` is given.
pub(super) const LS_DEFAULT_LIMIT: usize = 10_000;

/// A process record, and its grant when the lens carries grants.
pub(super) type Row = (Value, Option<Value>);

/// One page of `GET /v1/processes` for the given query pairs: the server's
/// `{"processes", "grants"?, "next_after_id"}`.
pub(super) trait Pages {
    async fn page(&self, pairs: &[(&'static str, String)]) -> Result<Value, ClientError>;
}

impl Pages for Client {
    async fn page(&self, pairs: &[(&'static str, String)]) -> Result<Value, ClientError> {
        self.get(&format!("/v1/processes?{}", query(pairs.iter().cloned())))
            .await
    }
}

/// The newest matches, newest first.
#[derive(Debug)]
pub(super) struct Listing {
    /// At most `n`, newest first.
    pub rows: Vec<Row>,
    /// Matches were left out: more than `n` match.
    pub more: bool,
    /// Some page carried grants (a session's lens).
    pub with_grants: bool,
}

/// The newest `n` matches of `filters` (the server's query pairs: `status`,
/// `granted_to`, the created bounds, ...), newest first as the server orders
/// them (by `created_at_ms`, then the greater id first), from the top or,
/// given `after`, after that process (where a listing that showed it as its
/// last row stopped). Pages are asked for `order=newest`, each at most the
/// rows still wanted (`n` and one more) and at most the server's largest
/// page, each after the last one's `next_after_id`, until `n` and one more
/// are read or the pages end.
pub(super) async fn newest(
    pages: &impl Pages,
    filters: &[(&'static str, String)],
    n: usize,
    after: Option<String>,
) -> Result<Listing, ClientError> {
    let wanted = n.saturating_add(1);
    let (mut rows, mut with_grants) = (Vec::new(), false);
    let mut after_id: Option<String> = after;
    while rows.len() < wanted {
        let mut pairs = filters.to_vec();
        pairs.push(("order", "newest".to_string()));
        pairs.extend(after_id.take().map(|a| ("after_id", a)));
        let limit = (wanted - rows.len()).min(cairn_core::MAX_PAGE_SIZE);
        pairs.push(("limit", limit.to_string()));
        let page = pages.page(&pairs).await?;
        let (page_rows, next, granted) = page_rows(&page);
        with_grants |= granted;
        let read_none = page_rows.is_empty();
        rows.extend(page_rows);
        match next {
            // An empty page naming a next one would be asked again: it ends the listing.
            Some(next) if !read_none => after_id = Some(next),
            _ => break,
        }
    }
    let more = rows.len() > n;
    rows.truncate(n);
    Ok(Listing {
        rows,
        more,
        with_grants,
    })
}

/// A listing page's records, each with its grants when the page carries
/// them (a session's listing), the id the next page starts after, and
/// whether it carried grants.
pub(super) fn page_rows(page: &Value) -> (Vec<Row>, Option<String>, bool) {
    let processes = page
        .get("processes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let grants = page.get("grants").and_then(Value::as_array);
    let rows = processes
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, grants.and_then(|g| g.get(i).cloned())))
        .collect();
    let next = page.get("next_after_id").and_then(Value::as_str).map(str::to_string);
    (rows, next, grants.is_some())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use cairn_core::{ManualClock, MemoryRegistry, ProcessFilter, Processes, StartRequest};
    use serde_json::json;

    use super::*;

    const T0: u64 = 1_796_083_200_000;

    /// The query pairs of one request, and the `next_after_id` answered.
    type Asked = (Vec<(&'static str, String)>, Option<String>);

    /// The server's listing over an in-memory registry: its query parser and
    /// its pages, each cut at `cap` rows (as the server cuts a page at its
    /// bytes), counting the rows it hands out and keeping what was asked.
    struct Registry {
        p: Processes,
        clock: Arc<ManualClock>,
        cap: usize,
        handed: AtomicUsize,
        asked: Mutex<Vec<Asked>>,
        /// Every process started: its creation time and id.
        started: Mutex<Vec<(u64, String)>>,
    }

    impl Registry {
        fn new(cap: usize) -> Registry {
            let clock = Arc::new(ManualClock::new(T0));
            let p = Processes::builder(Arc::new(MemoryRegistry::with_clock(clock.clone())))
                .clock(clock.clone())
                .without_worker()
                .start();
            Registry {
                p,
                clock,
                cap,
                handed: AtomicUsize::new(0),
                asked: Mutex::new(Vec::new()),
                started: Mutex::new(Vec::new()),
            }
        }

        /// Start `id` at `at` ms past [`T0`].
        async fn start_at(&self, id: &str, at: u64) {
            self.clock.set(T0 + at);
            self.p
                .start(StartRequest::external(id.to_string(), json!({})))
                .await
                .expect("start");
            self.started.lock().unwrap().push((T0 + at, id.to_string()));
        }

        /// The ids of the processes started in `[from, before)`, newest
        /// first and in one millisecond the greater id first.
        fn newest_started(&self, from: u64, before: u64) -> Vec<String> {
            let mut all: Vec<(u64, String)> = self
                .started
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| (from..before).contains(t))
                .cloned()
                .collect();
            all.sort_by(|a, b| b.cmp(a));
            all.into_iter().map(|(_, id)| id).collect()
        }

        /// Forget the requests made and rows handed out so far.
        fn reset(&self) {
            self.handed.store(0, Ordering::Relaxed);
            self.asked.lock().unwrap().clear();
        }
    }

    impl Pages for Registry {
        async fn page(&self, pairs: &[(&'static str, String)]) -> Result<Value, ClientError> {
            let cut: Vec<(&str, String)> = pairs
                .iter()
                .map(|(k, v)| match *k {
                    "limit" => (*k, v.parse::<usize>().expect("limit").min(self.cap).to_string()),
                    _ => (*k, v.clone()),
                })
                .collect();
            let f = ProcessFilter::from_query(cut.iter().map(|(k, v)| (*k, v.as_str())))
                .map_err(|e| ClientError::Usage(e.to_string()))?;
            let page = self.p.list(&f).await.map_err(|e| ClientError::Usage(e.to_string()))?;
            self.handed.fetch_add(page.items.len(), Ordering::Relaxed);
            self.asked
                .lock()
                .unwrap()
                .push((pairs.to_vec(), page.next_after_id.clone()));
            Ok(json!({"processes": page.items, "next_after_id": page.next_after_id}))
        }
    }

    /// A session's lens of `rows` processes (`r0000` the newest), each
    /// with its grant, in pages of at most the limit asked, keeping what
    /// was asked.
    struct Lens {
        rows: usize,
        asked: Mutex<Vec<Asked>>,
    }

    impl Pages for Lens {
        async fn page(&self, pairs: &[(&'static str, String)]) -> Result<Value, ClientError> {
            let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
            let limit: usize = get("limit").expect("limit").parse().expect("limit");
            let start = get("after_id").map_or(0, |a| a[1..].parse::<usize>().expect("cursor") + 1);
            let end = (start + limit).min(self.rows);
            let id = |i: usize| format!("r{i:04}");
            let next = (end < self.rows).then(|| id(end - 1));
            self.asked.lock().unwrap().push((pairs.to_vec(), next.clone()));
            Ok(json!({
                "processes": (start..end).map(|i| json!({"id": id(i)})).collect::<Vec<_>>(),
                "grants": (start..end).map(|i| json!({"process_id": id(i)})).collect::<Vec<_>>(),
                "next_after_id": next,
            }))
        }
    }

    fn ids(rows: &[Row]) -> Vec<String> {
        rows.iter()
            .map(|(r, _)| r["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The value of `key` in one request's pairs.
    fn value<'a>(pairs: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
        pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    /// Every request asks for newest-first pages, the first from the top
    /// and each next one after the `next_after_id` the last one answered.
    fn assert_follows_the_cursor(asked: &[Asked]) {
        assert!(!asked.is_empty());
        let mut after: Option<&str> = None;
        for (pairs, next) in asked {
            assert_eq!(value(pairs, "order"), Some("newest"), "{pairs:?}");
            assert_eq!(value(pairs, "after_id"), after, "{pairs:?}");
            after = next.as_deref();
        }
    }

    /// Ids whose order is not their creation order, a few processes a
    /// millisecond, over pages the server cuts short: the newest `n` are
    /// shown newest first (the greater id first within a millisecond), read
    /// page after page through `next_after_id`, and no more than `n` and
    /// one are read.
    #[tokio::test]
    async fn pages_are_followed_newest_first_until_n_and_one_more_are_read() {
        let r = Registry::new(4);
        const N: u64 = 30;
        for i in 0..N {
            r.start_at(&format!("p{:02}", (i * 7) % N), i / 3).await;
        }
        let all = r.newest_started(0, u64::MAX);
        for n in [1, 3, 4, 10, 29, 30, 31, 50] {
            r.reset();
            let listing = newest(&r, &[], n, None).await.expect("list");
            assert_eq!(ids(&listing.rows), all[..n.min(all.len())], "n={n}");
            assert_eq!(listing.more, all.len() > n, "n={n}");
            assert!(!listing.with_grants);
            assert_eq!(r.handed.load(Ordering::Relaxed), (n + 1).min(all.len()), "n={n}");
            let asked = r.asked.lock().unwrap();
            assert_follows_the_cursor(&asked);
            // Pages of 4 (the server's cut) to read `n` and one more.
            assert_eq!(asked.len(), (n + 1).min(all.len()).div_ceil(4), "n={n}");
        }
        r.p.shutdown().await;
    }

    /// Given the last row a listing showed, the next listing goes on after
    /// it: listings of `n` chained so show every match once, newest first.
    #[tokio::test]
    async fn a_listing_goes_on_after_the_last_row_shown() {
        let r = Registry::new(4);
        for i in 0..23u64 {
            r.start_at(&format!("p{:02}", (i * 5) % 23), i / 4).await;
        }
        let all = r.newest_started(0, u64::MAX);
        let mut shown: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            r.reset();
            let listing = newest(&r, &[], 5, after.clone()).await.expect("list");
            let page = ids(&listing.rows);
            assert_eq!(
                value(&r.asked.lock().unwrap()[0].0, "after_id"),
                after.as_deref(),
                "the first page starts after the row given"
            );
            shown.extend(page.iter().cloned());
            if !listing.more {
                break;
            }
            after = page.last().cloned();
        }
        assert_eq!(shown, all);
        r.p.shutdown().await;
    }

    /// The filters and the created bounds go with every page, and the rows
    /// shown are the newest of those that match them.
    #[tokio::test]
    async fn the_filters_go_with_every_page() {
        let r = Registry::new(3);
        for i in 0..40u64 {
            // Ids in reverse creation order.
            r.start_at(&format!("q{:03}", 999 - i), i * 10).await;
        }
        let filters = [
            ("status", "running".to_string()),
            ("definition", "external".to_string()),
            ("created_from_ms", (T0 + 50).to_string()),
            ("created_before_ms", (T0 + 250).to_string()),
        ];
        let within = r.newest_started(T0 + 50, T0 + 250);
        assert_eq!(within.len(), 20);
        for n in [4, 19, 20, 100] {
            r.reset();
            let listing = newest(&r, &filters, n, None).await.expect("list");
            assert_eq!(ids(&listing.rows), within[..n.min(within.len())], "n={n}");
            assert_eq!(listing.more, within.len() > n, "n={n}");
            let asked = r.asked.lock().unwrap();
            assert_follows_the_cursor(&asked);
            for (pairs, _) in asked.iter() {
                assert!(filters.iter().all(|f| pairs.contains(f)), "{pairs:?}");
            }
        }
        r.p.shutdown().await;
    }

    /// More than the server's largest page: pages of at most it, and the
    /// last of only the rows still wanted; a session's lens passes through
    /// and each row keeps its grant.
    #[tokio::test]
    async fn a_long_listing_asks_pages_of_at_most_the_servers_largest() {
        let lens = Lens {
            rows: 2_500,
            asked: Mutex::new(Vec::new()),
        };
        let filters = [("granted_to", "s1".to_string())];
        let listing = newest(&lens, &filters, 2_100, None).await.expect("list");
        assert_eq!(listing.rows.len(), 2_100);
        assert!(listing.more && listing.with_grants);
        for (i, (p, g)) in listing.rows.iter().enumerate() {
            assert_eq!(p["id"], format!("r{i:04}"));
            assert_eq!(g.as_ref().map(|g| &g["process_id"]), Some(&p["id"]));
        }
        let asked = std::mem::take(&mut *lens.asked.lock().unwrap());
        assert_follows_the_cursor(&asked);
        let limits: Vec<&str> = asked.iter().map(|(p, _)| value(p, "limit").unwrap()).collect();
        assert_eq!(limits, ["1000", "1000", "101"]);
        assert!(asked.iter().all(|(p, _)| value(p, "granted_to") == Some("s1")));
        // Fewer match than asked for: every page is read, nothing more.
        let listing = newest(&lens, &filters, 3_000, None).await.expect("list");
        assert_eq!(listing.rows.len(), 2_500);
        assert!(!listing.more);
        assert_eq!(lens.asked.lock().unwrap().len(), 3);
        // A session's lens matching nothing still says it carries grants.
        let empty = Lens {
            rows: 0,
            asked: Mutex::new(Vec::new()),
        };
        let listing = newest(&empty, &filters, 5, None).await.expect("list");
        assert!(listing.rows.is_empty() && !listing.more && listing.with_grants);
    }
}
