//! A store fault of the moment (`unavailable`, `storage`, `outcome_unknown`),
//! tried again with backoff while a run's lease holds: what a run reads and
//! writes is known to it alone until the store has it, and a blip must not
//! fail a process for good. A client error (a missing env, a fenced lease) is
//! an answer, never retried.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::clock::SharedClock;
use crate::error::{CairnError, Result};
use crate::model::Lease;

/// `op`, tried again while it fails with a store fault and `lease` has not
/// lapsed by `clock`: every 2 s at most once backed off, for as long as the
/// lease lasts (a fixed count of tries would give up on an outage the lease
/// outlives, and with it an outcome known nowhere else).
pub(crate) async fn while_lease_holds<T, Fut, F>(clock: &SharedClock, lease: &Lease, what: &str, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    op.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .without_max_times(),
    )
    .when(|e: &CairnError| !e.is_client_error() && clock.now_ms() < lease.expires_at_ms)
    .notify(|e, after| {
        tracing::warn!(process_id = %lease.process_id, error = %e, ?after, "{what} failed; retrying");
    })
    .await
}
