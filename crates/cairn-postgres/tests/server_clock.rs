//! Nodes whose clocks disagree with the database server's follow the
//! server's (ADR 0035): a node whose clock runs ahead neither takes a live
//! lease nor wakes a timer early. Needs `CAIRN_TEST_POSTGRES_URL`.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{Clock, ManualClock, ProcessRegistry, SystemClock, WaitRequest};
use cairn_postgres::testing::{self, TestSchema};
use cairn_postgres::PostgresRegistry;
use cairn_testkit::rerunnable;

/// Far enough that a node this far ahead would take any live lease.
const AHEAD_MS: u64 = 60_000;

/// How far a clock following the server's may read from it in these tests:
/// the offset's error is half a round trip on a local server.
const TOLERANCE_MS: u64 = 2_000;

/// The system clock, `0` milliseconds ahead.
#[derive(Debug)]
struct Ahead(u64);

impl Clock for Ahead {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms() + self.0
    }
}

/// The server's clock, in epoch milliseconds.
async fn server_now(url: &str) -> u64 {
    let client = testing::test_client(url).await;
    u64::try_from(testing::server_now_ms(&client).await).expect("after the epoch")
}

fn near(a: u64, b: u64) -> bool {
    a.abs_diff(b) <= TOLERANCE_MS
}

/// Every line this test binary logs.
fn logs() -> &'static testing::Captured {
    testing::captured_logs(|writer| {
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
    })
}

/// The lines logged about `schema`'s registries.
fn logged_about(schema: &TestSchema) -> Vec<String> {
    let name = format!("schema={}", schema.name);
    logs()
        .text()
        .lines()
        .filter(|l| l.contains(&name))
        .map(str::to_string)
        .collect()
}

async fn connect(schema: &TestSchema, clock: Arc<dyn Clock>, follow: bool) -> PostgresRegistry {
    PostgresRegistry::connect_with(schema.options(clock).following_server_clock(follow))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "current_thread")]
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
async fn a_registry_ahead_of_the_server_tells_the_servers_time() {
    if !testing::enabled() {
        return;
    }
    logs();
    let schema = TestSchema::new("cairn_clock");
    let ahead = SystemClock.now_ms() + AHEAD_MS;
    let manual = ManualClock::new(ahead);
    // Off (the library's default), the clock given is the clock used.
    let plain = connect(&schema, Arc::new(manual.clone()), false).await;
    assert_eq!(plain.clock().now_ms(), ahead);
    drop(plain);
    let following = connect(&schema, Arc::new(manual.clone()), true).await;
    let (now, server) = (following.clock().now_ms(), server_now(&schema.url).await);
    assert!(near(now, server), "the registry reads {now}, the server {server}");
    // What it writes is on the server's clock too: a lease's expiry.
    following.register(rerunnable("p"), None).await.expect("register");
    let lease = following.claim("p", "w", 10_000).await.expect("claim");
    let server = server_now(&schema.url).await;
    assert!(
        near(lease.expires_at_ms, server + 10_000),
        "the lease expires at {}, the server's time plus its ttl is {}",
        lease.expires_at_ms,
        server + 10_000
    );
    // Said once, at WARN, with the offset.
    let said = logged_about(&schema);
    let warned: Vec<&String> = said
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("cairn follows the server's clock"))
        .collect();
    assert_eq!(warned.len(), 1, "{said:#?}");
    assert!(warned[0].contains("ahead of the PostgreSQL server's by "), "{said:#?}");
    let offset: i64 = warned[0]
        .split("offset_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the offset logged");
    assert!(
        offset.unsigned_abs().abs_diff(AHEAD_MS) <= TOLERANCE_MS && offset < 0,
        "{said:#?}"
    );
}

#[tokio::test(flavor = "current_thread")]
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
async fn the_offset_is_measured_again_while_the_registry_lives() {
    if !testing::enabled() {
        return;
    }
    logs();
    let schema = TestSchema::new("cairn_clock");
    let manual = ManualClock::new(SystemClock.now_ms());
    let options = schema
        .options(Arc::new(manual.clone()))
        .following_server_clock(true)
        .clock_refresh_for_test(Duration::from_millis(100));
    let registry = PostgresRegistry::connect_with(options).await.expect("connect");
    let clock = registry.clock();
    let warnings = || {
        logged_about(&schema)
            .into_iter()
            .filter(|l| l.contains("WARN"))
            .collect::<Vec<_>>()
    };
    assert!(warnings().is_empty(), "{:#?}", warnings());
    // The host's clock jumps a minute ahead (and its time then stands
    // still): the next measurement brings the registry's back to the server's.
    manual.advance(AHEAD_MS);
    let offset_applied = |now: u64| now + AHEAD_MS / 2 < manual.now_ms();
    following(&schema, &*clock, offset_applied).await;
    let said = warnings();
    assert!(
        said.len() == 1 && said[0].contains("ahead of the PostgreSQL server's by "),
        "{said:#?}"
    );
    // And back: said once more, that it is within 1 s again.
    manual.set(SystemClock.now_ms());
    following(&schema, &*clock, |now| now.abs_diff(manual.now_ms()) < TOLERANCE_MS).await;
    let said = warnings();
    assert!(
        said.len() == 2 && said[1].contains("within 1 s of the PostgreSQL server's again"),
        "{said:#?}"
    );
    // Once dropped, nothing measures any more: the refresh ended with it.
    drop(registry);
    manual.advance(AHEAD_MS);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        clock.now_ms().abs_diff(manual.now_ms()) < TOLERANCE_MS,
        "the dropped registry's clock keeps its last offset"
    );
}

/// Wait (up to 10 s) until `clock` reads the server's time and `measured`
/// holds for its reading: the refresh took a new measurement.
async fn following(schema: &TestSchema, clock: &dyn Clock, measured: impl Fn(u64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (now, server) = (clock.now_ms(), server_now(&schema.url).await);
        if near(now, server) && measured(now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never measured again: the registry reads {now}, the server {server}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
async fn a_node_whose_clock_runs_ahead_takes_no_live_lease_and_wakes_no_timer_early() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_clock");
    let honest = connect(&schema, Arc::new(SystemClock), true).await;
    let ahead = connect(&schema, Arc::new(Ahead(AHEAD_MS)), true).await;
    let ttl = 2_000;
    honest.register(rerunnable("leased"), None).await.expect("register");
    honest.register(rerunnable("timer"), None).await.expect("register");
    let lease = honest.claim("leased", "honest", ttl).await.expect("claim");
    // A rerunnable run waiting on a timer is suspended: claimable at its due time.
    let timer_lease = honest.claim("timer", "honest", 60_000).await.expect("claim");
    let due = honest.clock().now_ms() + ttl;
    let wait = WaitRequest {
        kind: "timer".into(),
        name: None,
        ordinal: Some(1),
        until_ms: Some(due),
        ids: None,
        mode: None,
        signals: None,
        due_timer: false,
    };
    honest.wait(&timer_lease, wait, 0).await.expect("wait on the timer");

    let refused = ahead
        .claim("leased", "ahead", ttl)
        .await
        .expect_err("a live lease of another owner");
    assert_eq!(refused.code(), "lease_held", "{refused}");
    let taken = ahead.claim_batch("ahead", ttl, 10).await.expect("claim batch");
    assert!(taken.is_empty(), "took {taken:?} before its time");

    // Until they really expire: just before, still refused.
    let server = server_now(&schema.url).await;
    let until = lease.expires_at_ms.max(due);
    let early = until.saturating_sub(500).saturating_sub(server);
    tokio::time::sleep(Duration::from_millis(early)).await;
    let taken = ahead.claim_batch("ahead", ttl, 10).await.expect("claim batch");
    assert!(taken.is_empty(), "took {taken:?} before its time");
    assert_eq!(
        ahead
            .claim("leased", "ahead", ttl)
            .await
            .expect_err("still live")
            .code(),
        "lease_held"
    );

    // Just after, both are the other node's to take.
    let server = server_now(&schema.url).await;
    tokio::time::sleep(Duration::from_millis((until + 200).saturating_sub(server))).await;
    let mut taken: Vec<String> = ahead
        .claim_batch("ahead", ttl, 10)
        .await
        .expect("claim batch")
        .into_iter()
        .map(|c| c.lease.process_id.to_string())
        .collect();
    taken.sort();
    assert_eq!(taken, ["leased", "timer"]);
}
