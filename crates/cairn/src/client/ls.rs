//! `cairn ls`, newest first. The server lists in id order only: `ls` reads
//! the matches whole and sorts them while there are at most
//! [`LS_SCAN_LIMIT`]; past that it finds the newest by creation-time windows
//! (the dashboard's list finds its pages the same way, in
//! `cairn-dashboard`'s `list::search`), with the server's own
//! `created_from_ms`/`created_before_ms` filters.

use serde_json::Value;

use super::http::{query, Client, ClientError};
use super::newest_first;

/// How many matches `ls` reads in id order to sort them; past it, the
/// newest are found by creation-time windows ([`newest`]).
pub(super) const LS_SCAN_LIMIT: usize = 10_000;

/// How far the first window reaches past its start, in ms; each further
/// step up or down is eight times the last.
const FIRST_STEP_MS: u64 = 60_000;

/// The largest time the server takes as a bound (its stores' signed 64 bits).
const MAX_MS: u64 = i64::MAX as u64;

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

/// What `ls` asks for.
pub(super) struct Search<'a> {
    /// The filters but the created bounds (`status`, `granted_to`, ...).
    pub filters: &'a [(&'static str, String)],
    /// `--created-from` (inclusive).
    pub created_from: Option<u64>,
    /// `--created-before` (exclusive).
    pub created_before: Option<u64>,
    /// Show at most this many.
    pub n: usize,
    /// Read at most about this many in id order before searching by time
    /// ([`LS_SCAN_LIMIT`]; smaller in tests).
    pub scan_limit: usize,
    /// The page size asked of the server.
    pub page: usize,
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
    /// More than the scan limit matched (the newest were found by time
    /// windows): where the server's id-order pages go on past the first
    /// of them.
    pub scan_cut: Option<String>,
}

/// The newest `s.n` matches. Up to `s.scan_limit` are read in id order and
/// sorted; when more match, windows `[lo, created_before)` are read, `lo`
/// moved down while a window holds `n` or fewer (until `created_from`, or
/// until none older match),
/// and up while one holds more than a bounded number (`cap`, read no
/// further), until one holds more than `n` and at most `cap`: the newest `n`
/// are in it, every row outside being older than every row in it. A
/// millisecond holding more than `cap` is read whole.
pub(super) async fn newest(pages: &impl Pages, s: &Search<'_>) -> Result<Listing, ClientError> {
    let scan = read(pages, s, s.created_from, Some(s.scan_limit)).await?;
    let Some(scan_cut) = scan.next else {
        return Ok(listing(scan.rows, s.n, scan.with_grants, None));
    };
    let floor = s.created_from.unwrap_or(0);
    // `lo` starts where the rows read so far hold more than `n` (or all of
    // them): below it, at least as many match.
    let mut scanned = scan.rows;
    scanned.sort_by(|(a, _), (b, _)| newest_first(a, b));
    let mut lo = scanned
        .get(s.n.min(scanned.len().saturating_sub(1)))
        .and_then(|(r, _)| r.get("created_at_ms").and_then(Value::as_u64))
        .unwrap_or(floor)
        .max(floor)
        .min(MAX_MS);
    let cap = s.n.saturating_mul(2).max(s.n.saturating_add(s.page));
    // `too_few`: the least `lo` known to hold `n` or fewer (none at or past
    // the upper bound); `too_many`: the greatest known to hold more than `cap`.
    let (mut too_few, mut too_many): (Option<u64>, Option<u64>) = (s.created_before, None);
    let mut step = FIRST_STEP_MS;
    loop {
        // Just below `too_few`: the millisecond at `lo` alone holds more than
        // `cap`, and is read whole.
        let whole = too_many == Some(lo);
        let window = read(pages, s, Some(lo), (!whole).then_some(cap)).await?;
        if window.next.is_some() {
            too_many = Some(lo);
            lo = match too_few {
                Some(f) => lo + (f - lo) / 2,
                None => {
                    let up = lo.saturating_add(step).min(MAX_MS);
                    step = step.saturating_mul(8);
                    up
                }
            };
            continue;
        }
        // Nothing older matches (one row asked of what lies below it): the
        // window holds every match, and no wider one need be read.
        if window.rows.len() > s.n || lo == floor || whole || !any_before(pages, s, lo).await? {
            return Ok(listing(window.rows, s.n, window.with_grants, Some(scan_cut)));
        }
        too_few = Some(lo);
        lo = match too_many {
            Some(m) => m + (lo - m) / 2,
            None => {
                let down = lo.saturating_sub(step).max(floor);
                step = step.saturating_mul(8);
                down
            }
        };
    }
}

/// `rows` sorted newest first and cut at `n`.
fn listing(mut rows: Vec<Row>, n: usize, with_grants: bool, scan_cut: Option<String>) -> Listing {
    rows.sort_by(|(a, _), (b, _)| newest_first(a, b));
    let more = rows.len() > n;
    rows.truncate(n);
    Listing {
        rows,
        more,
        with_grants,
        scan_cut,
    }
}

/// Whether any match was created before `before` (and at or after
/// `--created-from`): one row asked.
async fn any_before(pages: &impl Pages, s: &Search<'_>, before: u64) -> Result<bool, ClientError> {
    let mut pairs = s.filters.to_vec();
    pairs.extend(s.created_from.map(|t| ("created_from_ms", t.to_string())));
    pairs.push(("created_before_ms", before.to_string()));
    pairs.push(("limit", "1".to_string()));
    let page = pages.page(&pairs).await?;
    Ok(page
        .get("processes")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty()))
}

/// The rows read, and where the next page starts when reading stopped with
/// more to read.
struct Read {
    rows: Vec<Row>,
    with_grants: bool,
    next: Option<String>,
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

/// The matches created at or after `from` (and before `--created-before`),
/// page after page in id order, stopping once `stop_at` are read with more
/// to read.
async fn read(
    pages: &impl Pages,
    s: &Search<'_>,
    from: Option<u64>,
    stop_at: Option<usize>,
) -> Result<Read, ClientError> {
    let mut pairs = s.filters.to_vec();
    pairs.extend(from.map(|t| ("created_from_ms", t.to_string())));
    pairs.extend(s.created_before.map(|t| ("created_before_ms", t.to_string())));
    pairs.push(("limit", s.page.to_string()));
    let (mut rows, mut with_grants) = (Vec::new(), false);
    let mut after_id: Option<String> = None;
    loop {
        let mut page_pairs = pairs.clone();
        page_pairs.extend(after_id.map(|a| ("after_id", a)));
        let page = pages.page(&page_pairs).await?;
        let (page_rows, next, granted) = page_rows(&page);
        with_grants |= granted;
        rows.extend(page_rows);
        match next {
            Some(next) if stop_at.is_some_and(|c| rows.len() >= c) => {
                return Ok(Read {
                    rows,
                    with_grants,
                    next: Some(next),
                })
            }
            Some(next) => after_id = Some(next),
            None => {
                return Ok(Read {
                    rows,
                    with_grants,
                    next: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use cairn_core::{ManualClock, MemoryRegistry, ProcessFilter, Processes, StartRequest};
    use serde_json::json;

    use super::*;

    const T0: u64 = 1_796_083_200_000;

    /// The server's listing over an in-memory registry: its query parser and
    /// its id-order pages, counting the rows it hands out.
    struct Registry {
        p: Processes,
        clock: Arc<ManualClock>,
        handed: AtomicUsize,
    }

    impl Registry {
        fn new() -> Registry {
            let clock = Arc::new(ManualClock::new(T0));
            let p = Processes::builder(Arc::new(MemoryRegistry::with_clock(clock.clone())))
                .clock(clock.clone())
                .without_worker()
                .start();
            Registry {
                p,
                clock,
                handed: AtomicUsize::new(0),
            }
        }

        /// Start `id` at `at` ms past [`T0`].
        async fn start_at(&self, id: &str, at: u64) {
            self.clock.set(T0 + at);
            self.p
                .start(StartRequest::external(id.to_string(), json!({})))
                .await
                .expect("start");
        }

        /// Every match of `s`, newest first: what `ls` must show.
        async fn all_newest(&self, s: &Search<'_>) -> Vec<String> {
            let whole = Search {
                scan_limit: usize::MAX,
                n: usize::MAX,
                ..*s
            };
            ids(&newest(self, &whole).await.expect("list").rows)
        }
    }

    impl Pages for Registry {
        async fn page(&self, pairs: &[(&'static str, String)]) -> Result<Value, ClientError> {
            let f = ProcessFilter::from_query(pairs.iter().map(|(k, v)| (*k, v.as_str())))
                .map_err(|e| ClientError::Usage(e.to_string()))?;
            let page = self.p.list(&f).await.map_err(|e| ClientError::Usage(e.to_string()))?;
            self.handed.fetch_add(page.items.len(), Ordering::Relaxed);
            Ok(json!({"processes": page.items, "next_after_id": page.next_after_id}))
        }
    }

    fn ids(rows: &[Row]) -> Vec<String> {
        rows.iter()
            .map(|(r, _)| r["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn search(n: usize) -> Search<'static> {
        Search {
            filters: &[],
            created_from: None,
            created_before: None,
            n,
            scan_limit: 10,
            page: 4,
        }
    }

    /// With more matches than one id-order read takes, and ids whose order
    /// is not their creation order, the rows shown are the newest: not the
    /// newest of the first ones by id.
    #[tokio::test]
    async fn past_the_scan_limit_the_newest_are_shown_whatever_the_id_order() {
        let r = Registry::new();
        // `a…` first by id, created first (an hour of them); `z…` last by
        // id, created last; `m…` in between, created in the middle.
        for i in 0..30u64 {
            r.start_at(&format!("a{i:03}"), i * 120_000).await;
        }
        for i in 0..20u64 {
            r.start_at(&format!("m{i:03}"), 3_600_000 + i * 7).await;
        }
        for i in 0..12u64 {
            r.start_at(&format!("z{i:03}"), 7_200_000 + i * 1_000).await;
        }
        for n in [1, 3, 5, 12, 13, 25, 40, 61, 62, 100] {
            let s = search(n);
            let listing = newest(&r, &s).await.expect("list");
            let all = r.all_newest(&s).await;
            assert_eq!(ids(&listing.rows), all[..n.min(all.len())], "n={n}");
            assert_eq!(listing.more, all.len() > n, "n={n}");
            assert!(listing.scan_cut.is_some(), "n={n}: more than the scan limit match");
        }
        // The newest 3 are the last `z`s, where the first 10 by id are `a`s.
        let listing = newest(&r, &search(3)).await.expect("list");
        assert_eq!(ids(&listing.rows), ["z011", "z010", "z009"]);
        r.p.shutdown().await;
    }

    /// Within `--created-from`/`--created-before`, the newest of those.
    #[tokio::test]
    async fn the_created_bounds_hold_in_every_window() {
        let r = Registry::new();
        for i in 0..80u64 {
            // Ids in reverse creation order.
            r.start_at(&format!("p{:03}", 999 - i), i * 50_000).await;
        }
        for (from, before) in [
            (None, Some(T0 + 2_000_000)),
            (Some(T0 + 500_000), None),
            (Some(T0 + 100_000), Some(T0 + 3_000_000)),
        ] {
            for n in [2, 15, 50] {
                let s = Search {
                    created_from: from,
                    created_before: before,
                    ..search(n)
                };
                let listing = newest(&r, &s).await.expect("list");
                let all = r.all_newest(&s).await;
                assert_eq!(
                    ids(&listing.rows),
                    all[..n.min(all.len())],
                    "{from:?}..{before:?} n={n}"
                );
                assert_eq!(listing.more, all.len() > n, "{from:?}..{before:?} n={n}");
            }
        }
        r.p.shutdown().await;
    }

    /// A millisecond holding more than a window reads is read whole; and
    /// far more matches than shown are not all read to find the newest.
    #[tokio::test]
    async fn a_crowded_millisecond_is_read_whole_and_a_long_history_is_not() {
        let r = Registry::new();
        for i in 0..400u64 {
            r.start_at(&format!("h{i:04}"), i * 10_000).await;
        }
        for i in 0..40 {
            r.start_at(&format!("b{i:03}"), 4_000_000).await;
        }
        let s = search(3);
        let all = r.all_newest(&s).await;
        r.handed.store(0, Ordering::Relaxed);
        let listing = newest(&r, &s).await.expect("list");
        assert_eq!(ids(&listing.rows), all[..3]);
        assert_eq!(ids(&listing.rows), ["b039", "b038", "b037"]);
        assert!(listing.more);
        let handed = r.handed.load(Ordering::Relaxed);
        assert!(handed < all.len(), "read {handed} rows of {}", all.len());
        r.p.shutdown().await;
    }

    /// More asked for than match, past the scan limit: once a window holds
    /// them all, nothing wider is read (a window reaching back to the epoch
    /// would read them all again at each step).
    #[tokio::test]
    async fn a_window_holding_every_match_is_the_last_read() {
        let r = Registry::new();
        for i in 0..60u64 {
            r.start_at(&format!("q{:03}", 999 - i), i * 1_000).await;
        }
        let s = search(100);
        let all = r.all_newest(&s).await;
        r.handed.store(0, Ordering::Relaxed);
        let listing = newest(&r, &s).await.expect("list");
        assert_eq!(ids(&listing.rows), all);
        assert!(!listing.more && listing.scan_cut.is_some());
        let handed = r.handed.load(Ordering::Relaxed);
        assert!(handed <= 2 * all.len(), "read {handed} rows to list {}", all.len());
        r.p.shutdown().await;
    }

    /// At most the scan limit match: one read, sorted, nothing said cut.
    #[tokio::test]
    async fn within_the_scan_limit_all_are_read_and_sorted() {
        let r = Registry::new();
        for (i, id) in ["d", "c", "b", "a"].iter().enumerate() {
            r.start_at(id, i as u64).await;
        }
        let listing = newest(&r, &search(3)).await.expect("list");
        assert_eq!(ids(&listing.rows), ["a", "b", "c"]);
        assert!(listing.more && listing.scan_cut.is_none());
        let listing = newest(&r, &search(4)).await.expect("list");
        assert!(!listing.more && listing.scan_cut.is_none());
        r.p.shutdown().await;
    }
}
