//! A clock that follows the database server's (ADR 0035).
//!
//! Nodes on one database compare times other nodes wrote: a lease's expiry,
//! a wait's deadline, when a row becomes claimable, a schedule's next fire.
//! Each node decides those in its own memory (the fold) before it writes, so
//! every node must read the same time: this clock is the node's base clock
//! plus an offset measured against the server's `clock_timestamp()`, measured
//! when the registry connects and again every [`REFRESH`].
//!
//! The offset's error is at most half the round trip of the sample it was
//! taken from, plus what the two clocks drift apart until the next refresh.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cairn_core::clock::{Clock, SharedClock};
use cairn_core::CairnError;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::conn::Shared;
use crate::Fault;

/// How often the offset is measured again.
pub(crate) const REFRESH: Duration = Duration::from_secs(30);

/// Samples taken per measurement; the one with the shortest round trip is kept.
const SAMPLES: usize = 3;

/// Past this, the node's clock and the server's disagree enough to say so.
const FAR_MS: i64 = 1_000;

/// The server's time in epoch milliseconds: one simple query, one round trip.
const SERVER_NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8";

/// The base clock plus the measured offset to the server's clock.
#[derive(Debug)]
pub(crate) struct ServerClock {
    base: SharedClock,
    /// The registry's schema, named in what is logged.
    schema: String,
    offset_ms: AtomicI64,
    /// Whether the offset was last past [`FAR_MS`] (to log each crossing once).
    far: AtomicBool,
}

impl Clock for ServerClock {
    fn now_ms(&self) -> u64 {
        self.base
            .now_ms()
            .saturating_add_signed(self.offset_ms.load(Ordering::Relaxed))
    }
}

/// One measurement: the offset (server minus the base clock at the round
/// trip's midpoint) and the round trip it came from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub offset_ms: i64,
    pub round_trip: Duration,
}

impl ServerClock {
    /// A clock at `base`'s time until [`ServerClock::set`] gives it an offset.
    pub fn new(base: SharedClock, schema: &str) -> Self {
        Self {
            base,
            schema: schema.to_string(),
            offset_ms: AtomicI64::new(0),
            far: AtomicBool::new(false),
        }
    }

    /// Take `sample`'s offset, saying so when it crosses [`FAR_MS`] either
    /// way (`first`: the measurement at connect, said at info when near).
    pub fn set(&self, sample: Sample, first: bool) {
        self.offset_ms.store(sample.offset_ms, Ordering::Relaxed);
        let far = sample.offset_ms.abs() > FAR_MS;
        let was = self.far.swap(far, Ordering::Relaxed);
        let round_trip_ms = sample.round_trip.as_millis() as u64;
        if far && (first || !was) {
            tracing::warn!(
                schema = %self.schema,
                offset_ms = sample.offset_ms,
                round_trip_ms,
                "this node's clock is {} the PostgreSQL server's by {:.1} s: cairn follows the server's clock \
                 for leases, deadlines and schedules; set this host's clock right (NTP)",
                if sample.offset_ms < 0 { "ahead of" } else { "behind" },
                sample.offset_ms.unsigned_abs() as f64 / 1000.0
            );
        } else if !far && was {
            tracing::warn!(
                schema = %self.schema,
                offset_ms = sample.offset_ms,
                round_trip_ms,
                "this node's clock is within 1 s of the PostgreSQL server's again; cairn follows the server's clock"
            );
        } else if first {
            tracing::info!(
                schema = %self.schema,
                offset_ms = sample.offset_ms,
                round_trip_ms,
                "following the PostgreSQL server's clock"
            );
        }
    }

    /// The offset in use now (server minus base).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

/// Measure the offset of `base` to the server on `client`: [`SAMPLES`]
/// round trips, keeping the shortest (a query queued behind others on a
/// shared connection has a long one, and a wide error).
pub(crate) async fn measure(client: &Client, base: &dyn Clock) -> Result<Sample, Fault> {
    let mut best = sample(client, base).await?;
    for _ in 1..SAMPLES {
        let next = sample(client, base).await?;
        if next.round_trip < best.round_trip {
            best = next;
        }
    }
    Ok(best)
}

async fn sample(client: &Client, base: &dyn Clock) -> Result<Sample, Fault> {
    let started = Instant::now();
    let before = base.now_ms();
    let messages = client.simple_query(SERVER_NOW).await?;
    let after = base.now_ms();
    let round_trip = started.elapsed();
    let server = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse::<i64>().ok()),
            _ => None,
        })
        .ok_or_else(|| CairnError::storage("postgres: the server's clock read as no whole number of milliseconds"))?;
    let midpoint = before.saturating_add(after.saturating_sub(before) / 2);
    let midpoint = i64::try_from(midpoint).unwrap_or(i64::MAX);
    Ok(Sample {
        offset_ms: server.saturating_sub(midpoint),
        round_trip,
    })
}

/// Stops the refresh when dropped.
pub(crate) struct RefreshGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Measure again every `every` on a pooled connection of `shared`, until the
/// guard or the pool is dropped. A failed measurement keeps the last offset.
pub(crate) fn refresh(clock: Arc<ServerClock>, shared: Weak<Shared>, every: Duration) -> RefreshGuard {
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(shared) = shared.upgrade() else { return };
            let base = clock.base.clone();
            let measured = shared
                .run(|c| {
                    let base = base.clone();
                    async move { measure(&c.client, base.as_ref()).await }
                })
                .await;
            drop(shared);
            match measured {
                Ok(sample) => clock.set(sample, false),
                Err(e) => tracing::debug!(
                    schema = %clock.schema,
                    error = %e,
                    offset_ms = clock.offset_ms(),
                    "measuring the PostgreSQL server's clock failed; keeping the last offset"
                ),
            }
        }
    });
    RefreshGuard { task }
}
