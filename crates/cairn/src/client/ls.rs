//! `cairn ls`, newest first. The server lists in id order only: `ls` reads
//! the matches whole and sorts them while there are few (at most
//! [`LS_SCAN_LIMIT`], and at most a few times what it shows); past that it
//! finds the newest by creation-time windows, newest first, each read no
//! further than a few times what it shows
//! (the dashboard's list finds its pages by windows too, in
//! `cairn-dashboard`'s `list::search`), with the server's own
//! `created_from_ms`/`created_before_ms` filters.

use serde_json::Value;

use super::http::{query, Client, ClientError};
use super::newest_first;

/// How many matches `ls` reads in id order to sort them (fewer for a
/// smaller `--limit`); past it, the newest are found by creation-time
/// windows ([`newest`]).
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
    /// The page size asked of the server ([`page_for`] of `n`): a window
    /// is read no further than `n` and a page past it.
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

/// The page size `ls` asks for to show `n`: twice `n` (at least 10, at
/// most the server's largest). A window is read no further than the rows
/// still wanted and a page, so what a listing reads to find that a window
/// holds too many, and what it holds at once, is a few times `n`.
pub(super) fn page_for(n: usize) -> usize {
    n.saturating_mul(2).clamp(10, cairn_core::MAX_PAGE_SIZE)
}

/// The newest `s.n` matches. Up to `s.scan_limit` (and at most `n` and a
/// page past it) are read in id order and sorted. When more match, they are
/// found newest first, window after window: each window `[lo, hi)` lies just
/// below the last (the first reaches up to `--created-before`, or past the
/// newest match), is read whole, and holds rows all newer than any below
/// it, until the windows read hold more than `n`, reach `--created-from`,
/// or nothing older matches. A window is read no further than the rows
/// still wanted (at most a page of them) and a page past them: one holding
/// more is narrowed from below (halved, or, with no upper bound, moved up
/// eight times further each time) and read again. Each next window is sized
/// by the rows the last held for its width. A millisecond holding more is
/// read whole.
pub(super) async fn newest(pages: &impl Pages, s: &Search<'_>) -> Result<Listing, ClientError> {
    let scan_limit = s.scan_limit.min(s.n.saturating_add(s.page));
    let scan = read(pages, s, s.created_from, s.created_before, Some(scan_limit)).await?;
    let Some(scan_cut) = scan.next else {
        return Ok(listing(scan.rows, s.n, scan.with_grants, None));
    };
    let floor = s.created_from.unwrap_or(0);
    let mut with_grants = scan.with_grants;
    // The first window reaches back a step from the newest row read.
    let newest_read = scan.rows.iter().filter_map(|(r, _)| created(r)).max().unwrap_or(floor);
    drop(scan.rows);
    // Every match in `[hi, --created-before)`, each newer than any below `hi`.
    let mut kept: Vec<Row> = Vec::new();
    let mut hi = s.created_before;
    // A `lo` whose window up to `hi` holds more than the rows still wanted
    // and a page: the next window starts above it.
    let mut over: Option<u64> = None;
    let mut width = FIRST_STEP_MS;
    let mut lo = newest_read.saturating_sub(width).max(floor).min(MAX_MS);
    loop {
        let wanted = s.n + 1 - kept.len();
        // One millisecond known to have held more than a window takes: read whole.
        let whole = over == Some(lo);
        let stop_at = (!whole).then_some(wanted.min(s.page).saturating_add(s.page));
        let window = read(pages, s, Some(lo), hi, stop_at).await?;
        with_grants |= window.with_grants;
        if window.next.is_some() {
            over = Some(lo);
            let newest = window.rows.iter().filter_map(|(r, _)| created(r)).max().unwrap_or(lo);
            lo = match hi {
                // Halved, or up to the newest row read when that is higher
                // (the rows read are a sample of the window when ids are not
                // in creation order).
                Some(h) => (lo + (h - lo) / 2).max(newest),
                None => {
                    let up = lo.saturating_add(width).max(newest).min(MAX_MS);
                    width = width.saturating_mul(8);
                    up
                }
            };
            continue;
        }
        let held = window.rows.len();
        let top = hi.unwrap_or_else(|| {
            window
                .rows
                .iter()
                .filter_map(|(r, _)| created(r))
                .max()
                .map_or(lo, |t| t + 1)
        });
        kept.extend(window.rows);
        if kept.len() > s.n || lo == floor {
            break;
        }
        hi = Some(lo);
        if whole {
            // Read down to it: below it, nothing is known.
            over = None;
        }
        lo = match over {
            // The window below held more than a window takes (and may
            // still): halve it.
            Some(o) if lo - o <= 1 => o,
            Some(o) => o + (lo - o) / 2,
            None if held == 0 => match older_than(pages, s, lo).await? {
                // Nothing older: every match is kept.
                None => break,
                // Down to a match, at least.
                Some(t) => t.min(lo.saturating_sub(width.saturating_mul(8))).max(floor),
            },
            None => {
                // As wide as the last window's rows say the rows still
                // wanted (at most a page of them) need, up to eight times
                // as wide.
                let span = top.saturating_sub(lo).max(1);
                let want = (s.n + 1 - kept.len()).min(s.page) as u128;
                let fit = (u128::from(span) * want / held as u128).min(u128::from(span) * 8);
                width = u64::try_from(fit).unwrap_or(MAX_MS).max(1);
                lo.saturating_sub(width).max(floor)
            }
        };
    }
    Ok(listing(kept, s.n, with_grants, Some(scan_cut)))
}

/// A record's `created_at_ms`.
fn created(record: &Value) -> Option<u64> {
    record.get("created_at_ms").and_then(Value::as_u64)
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

/// When a match created before `before` (and at or after
/// `--created-from`) was created, if any does: one row asked.
async fn older_than(pages: &impl Pages, s: &Search<'_>, before: u64) -> Result<Option<u64>, ClientError> {
    let mut pairs = s.filters.to_vec();
    pairs.extend(s.created_from.map(|t| ("created_from_ms", t.to_string())));
    pairs.push(("created_before_ms", before.to_string()));
    pairs.push(("limit", "1".to_string()));
    let page = pages.page(&pairs).await?;
    Ok(page
        .get("processes")
        .and_then(Value::as_array)
        .and_then(|p| p.first())
        .map(|r| created(r).unwrap_or(0)))
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

/// The matches created at or after `from` and before `before`, page after
/// page in id order, stopping once `stop_at` are read with more to read.
async fn read(
    pages: &impl Pages,
    s: &Search<'_>,
    from: Option<u64>,
    before: Option<u64>,
    stop_at: Option<usize>,
) -> Result<Read, ClientError> {
    let mut pairs = s.filters.to_vec();
    pairs.extend(from.map(|t| ("created_from_ms", t.to_string())));
    pairs.extend(before.map(|t| ("created_before_ms", t.to_string())));
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
        asked: AtomicUsize,
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
                asked: AtomicUsize::new(0),
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
            self.asked.fetch_add(1, Ordering::Relaxed);
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
        // Windows of at most two pages (of 4 here): a few are read past
        // their rows and narrowed.
        assert!(handed <= 5 * all.len(), "read {handed} rows to list {}", all.len());
        r.p.shutdown().await;
    }

    /// A short listing of a long history reads about what it shows: not
    /// the first [`LS_SCAN_LIMIT`] matches in id order, nor pages of the
    /// server's largest size.
    #[tokio::test]
    async fn a_short_listing_reads_about_what_it_shows() {
        let r = Registry::new();
        const N: u64 = 3_000;
        for i in 0..N {
            // Ids scattered over the id order, a few starts a millisecond.
            r.start_at(&format!("s{:04}", (i * 1_777) % N), i / 3).await;
        }
        for n in [1, 20] {
            let s = Search {
                scan_limit: LS_SCAN_LIMIT,
                page: page_for(n),
                ..search(n)
            };
            let all = r.all_newest(&s).await;
            r.handed.store(0, Ordering::Relaxed);
            let listing = newest(&r, &s).await.expect("list");
            assert_eq!(ids(&listing.rows), all[..n], "n={n}");
            assert!(listing.more);
            let handed = r.handed.load(Ordering::Relaxed);
            assert!(handed <= 1_000, "n={n}: read {handed} rows of {N}");
        }
        r.p.shutdown().await;
    }

    /// Ids in creation order (the first read in id order holds the
    /// oldest), in bursts with gaps between them and crowded milliseconds:
    /// the newest are shown for every `n`, and a short listing makes few
    /// requests of few rows.
    #[tokio::test]
    async fn bursts_gaps_and_ids_in_creation_order() {
        let r = Registry::new();
        let mut at = 0u64;
        let mut seed = 7u64;
        for i in 0..2_000u64 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            at += match (seed >> 33) % 100 {
                0 => 3_600_000,
                1..=9 => 60_000,
                10..=39 => 0,
                _ => (seed >> 40) % 50,
            };
            r.start_at(&format!("k{i:05}"), at).await;
        }
        for n in [1, 7, 20, 99, 100, 101, 450, 1_999, 2_000, 2_001] {
            let s = Search {
                scan_limit: 500,
                page: page_for(n),
                ..search(n)
            };
            let all = r.all_newest(&s).await;
            r.handed.store(0, Ordering::Relaxed);
            r.asked.store(0, Ordering::Relaxed);
            let listing = newest(&r, &s).await.expect("list");
            assert_eq!(ids(&listing.rows), all[..n.min(all.len())], "n={n}");
            assert_eq!(listing.more, all.len() > n, "n={n}");
            let (handed, asked) = (r.handed.load(Ordering::Relaxed), r.asked.load(Ordering::Relaxed));
            if n <= 20 {
                // Of 2,000, where the first read in id order is the oldest.
                assert!(asked <= 30 && handed <= 600, "n={n}: {asked} requests, {handed} rows");
            }
        }
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
