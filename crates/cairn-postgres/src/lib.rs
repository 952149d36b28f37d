//! cairn-postgres: the shared backend of cairn. Any number of cairn nodes work
//! on one PostgreSQL database.
//!
//! - **Own schema** (default `cairn`, configurable), created and migrated by
//!   versioned migrations under an advisory lock; a schema that is not cairn's,
//!   or is newer than this build, is refused untouched.
//! - **Batched writes**: every write is an operation queued to one of a few
//!   write lanes; a lane commits everything queued behind its previous commit as
//!   one transaction of a few pipelined multi-row statements (see `uow`).
//! - **Claims never block each other**: `FOR UPDATE SKIP LOCKED` over a partial
//!   index of claimable rows, in bounded batches, with fencing tokens; the
//!   fenced completion is one transaction.
//! - **Cross-node wakes**: each committed batch sends `pg_notify` on the
//!   schema's channel; [`PostgresRegistry::listen`] feeds those into a
//!   [`ChangeHub`], waking awaiters and idle workers on every node.
//! - **Transient faults** (broken connection before commit, serialisation
//!   failure, deadlock) re-run the batch; a connection lost during `COMMIT` is
//!   reported as `outcome_unknown`.
//! - **Same behaviour as [`cairn_core::MemoryRegistry`]**: every rule comes from
//!   [`cairn_core::fold`]; this crate stores what it computes.
//!
//! ```no_run
//! # async fn demo() -> cairn_core::Result<()> {
//! use std::sync::Arc;
//! use cairn_core::{ChangeHub, ProcessRegistry, SystemClock};
//! use cairn_postgres::PostgresRegistry;
//!
//! let registry = PostgresRegistry::connect("postgres://postgres@127.0.0.1/test", Arc::new(SystemClock)).await?;
//! let hub = ChangeHub::new();
//! registry.listen(hub.clone());
//! let running = registry.list(&Default::default()).await?;
//! # let _ = running; Ok(()) }
//! ```

#![warn(missing_docs)]

mod admin_tx;
mod conn;
mod lanes;
mod listen;
mod node_hold;
mod options;
mod read;
mod rows;
mod schedules;
mod schema;
mod server_clock;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod uow;

use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::clock::SharedClock;
use cairn_core::events::{AppendRequest, AppendResult, EventPage};
use cairn_core::model::{
    page_limit, Change, ChangePage, Claim, EnvRef, EnvSpec, Grant, GrantDescriptor, GrantedProcess, Lease,
    NodeIdentity, NodeLiveness, Outcome, ProcessFilter, ProcessRecord, PruneFilter, PruneReport, Registration,
    SessionDeleteReport, SessionScope, StartGrant, SweepItem, Tombstone, TransferReport, WaitRequest, WakeDelivery,
    Watermark, WorkAction, WorkItem,
};
use cairn_core::registry::{CancelAnswer, CompleteAnswer, ProcessRegistry, Registered};
use cairn_core::validate::{self, validate_id, validate_scope, validate_session_id};
use cairn_core::{CairnError, ChangeHub, Result};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_postgres::Config;

pub use node_hold::NodeHold;
pub use options::{redact, secrets, split_schema, PostgresOptions};
pub use schema::{validate_schema_name, SCHEMA_VERSION};

use admin_tx::Admin;
use cairn_core::ops::admin;
use cairn_core::ops::{Answer, Op};
use conn::{is_transient, open_retrying, Conn, Shared};
use lanes::{LaneConfig, Lanes};

/// An error inside a store operation: a cairn answer, or a fault of the storage.
#[derive(Debug)]
pub(crate) enum Fault {
    Cairn(CairnError),
    Pg(tokio_postgres::Error),
    Json(serde_json::Error),
}

impl From<CairnError> for Fault {
    fn from(e: CairnError) -> Self {
        Self::Cairn(e)
    }
}

impl From<tokio_postgres::Error> for Fault {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl From<serde_json::Error> for Fault {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

impl From<Fault> for CairnError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Cairn(e) => e,
            Fault::Pg(e) => conn::storage(e),
            Fault::Json(e) => CairnError::storage(format!("stored data does not decode: {e}")),
        }
    }
}

/// The PostgreSQL [`ProcessRegistry`]. Share it as `Arc<dyn ProcessRegistry>`.
pub struct PostgresRegistry {
    lanes: Lanes,
    shared: Arc<Shared>,
    /// One connection for the rare multi-statement transactions.
    admin: tokio::sync::Mutex<Option<Conn>>,
    config: Config,
    schema: String,
    channel: String,
    clock: SharedClock,
    /// Longest a call waits for the server ([`PostgresOptions::call_timeout`]).
    call_timeout: std::time::Duration,
    /// See [`PostgresOptions::collect_grace`].
    collect_grace: std::time::Duration,
    listener: Mutex<Option<listen::ListenerGuard>>,
    generation: watch::Sender<u64>,
    /// Measures the server's clock again while the registry lives
    /// ([`PostgresOptions::follow_server_clock`]).
    _clock_refresh: Option<server_clock::RefreshGuard>,
}

impl std::fmt::Debug for PostgresRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRegistry")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresRegistry {
    /// Hold `node` as the node id of one live runtime over this schema, until
    /// the answer is dropped or its connection ends (ADR 0027), asking again
    /// for up to `wait` while another connection holds it. Fails with
    /// [`CairnError::Unavailable`] after that: a runtime that registers a node
    /// id it does not hold could sweep a live runtime's `owner_bound` work.
    pub async fn hold_node(&self, node: &str, wait: std::time::Duration) -> Result<NodeHold> {
        node_hold::hold(&self.config, &self.schema, node, wait).await
    }

    /// Connect to `url` with default options, creating or migrating the schema.
    pub async fn connect(url: &str, clock: SharedClock) -> Result<Self> {
        Self::connect_with(PostgresOptions::new(url, clock)).await
    }

    /// Connect with `options`, creating or migrating the schema.
    ///
    /// Fails with a clear error, changing nothing, when the URL is malformed,
    /// the server cannot be reached, or the schema is not cairn's or is newer
    /// than this build.
    pub async fn connect_with(options: PostgresOptions) -> Result<Self> {
        if let Some(problem) = &options.url_error {
            return Err(CairnError::InvalidRequest(problem.clone()));
        }
        validate_schema_name(&options.schema)?;
        let config: Config = options.url.parse().map_err(|e: tokio_postgres::Error| {
            // The parser's own words (which key, which value) are its source.
            let why = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            CairnError::InvalidRequest(format!(
                "postgres URL `{}` is not valid: {e}{why}",
                redact(&options.url)
            ))
        })?;
        // Without a database name the driver would connect to the user's
        // own database (often the maintenance database `postgres`) and
        // cairn's schema would be made there.
        if config.get_dbname().is_none_or(str::is_empty) {
            return Err(CairnError::InvalidRequest(format!(
                "postgres URL `{}` names no database: give it after the host, as in \
                 `postgres://USER@HOST:PORT/DB` (or `?dbname=DB`)",
                redact(&options.url)
            )));
        }
        let schema = options.schema.clone();
        // Opening a connection is bounded by the call timeout: a server that
        // takes the connection and never answers (a frozen host or relay)
        // fails the start instead of holding it silently. A migration is
        // not: on a large schema it may rightly take longer.
        let bound = options.call_timeout;
        let silent = |what: &str| {
            CairnError::Unavailable(format!(
                "postgres: opening the {what} connection found no answer within {} s (URL parameter \
                 `call_timeout`): the server, or something between, took the connection and did not answer",
                bound.as_secs()
            ))
        };
        let server_clock = options
            .follow_server_clock
            .then(|| Arc::new(server_clock::ServerClock::new(options.clock.clone(), &options.schema)));
        {
            let mut migrating = tokio::time::timeout(bound, open_retrying(&config, &schema, "migrate", 3))
                .await
                .map_err(|_| silent("first"))??;
            // Before anything is written: every time this node writes is
            // on the server's clock from its first write on.
            if let Some(clock) = &server_clock {
                let unanswered = || {
                    CairnError::Unavailable(format!(
                        "postgres: reading the server's clock found no answer within {} s (URL parameter \
                         `call_timeout`)",
                        bound.as_secs()
                    ))
                };
                let measured = server_clock::measure(&migrating.client, options.clock.as_ref());
                let sample = tokio::time::timeout(bound, measured)
                    .await
                    .map_err(|_| unanswered())??;
                clock.set(sample, true);
            }
            schema::migrate(&mut migrating.client, &schema).await?;
        }
        let clock: SharedClock = match &server_clock {
            Some(clock) => clock.clone(),
            None => options.clock.clone(),
        };
        let channel = format!("cairn_{schema}");
        let lanes = Lanes::start(
            Arc::new(LaneConfig {
                config: config.clone(),
                schema: schema.clone(),
                target: uow::Target {
                    channel: channel.clone(),
                    stored_types: Default::default(),
                    clock: clock.clone(),
                },
                clock: clock.clone(),
                max_batch: options.max_batch.max(1),
                call_timeout: options.call_timeout,
            }),
            options.write_lanes,
        );
        // One bound for each connection opened, one after another.
        let each = |n: usize| bound.saturating_mul(u32::try_from(n.max(1)).unwrap_or(u32::MAX));
        let lanes = tokio::time::timeout(each(options.write_lanes), lanes)
            .await
            .map_err(|_| silent("write"))??;
        let shared = Shared::open(&config, &schema, options.read_connections, options.call_timeout);
        let shared = tokio::time::timeout(each(options.read_connections), shared)
            .await
            .map_err(|_| silent("read"))??;
        let shared = Arc::new(shared);
        let clock_refresh =
            server_clock.map(|clock| server_clock::refresh(clock, Arc::downgrade(&shared), options.clock_refresh));
        Ok(Self {
            lanes,
            shared,
            admin: tokio::sync::Mutex::new(None),
            config,
            schema,
            channel,
            clock,
            call_timeout: options.call_timeout,
            collect_grace: options.collect_grace,
            listener: Mutex::new(None),
            generation: watch::channel(0).0,
            _clock_refresh: clock_refresh,
        })
    }

    /// The clock this registry reads for every expiry, deadline and
    /// claimability it decides: the options' clock, plus the offset to the
    /// server's clock when [`PostgresOptions::follow_server_clock`] is on. A
    /// runtime over this registry is given the same one
    /// (`cairn_core::RuntimeBuilder::clock`).
    pub fn clock(&self) -> SharedClock {
        self.clock.clone()
    }

    /// The schema this registry uses.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Feed `hub` with changes every node makes (LISTEN/NOTIFY) until this
    /// registry is dropped. Replaces an earlier listener.
    pub fn listen(&self, hub: ChangeHub) {
        let guard = listen::spawn(
            self.config.clone(),
            self.schema.clone(),
            self.channel.clone(),
            hub,
            self.generation.clone(),
        );
        *self.listener.lock() = Some(guard);
    }

    /// How many times the listener has (re)connected and listened: 0 before the
    /// first LISTEN, 2 after a first reconnect. For tests and diagnostics.
    pub fn listener_generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Overwrite stored env bytes (to exercise corruption detection in tests).
    #[cfg(any(test, feature = "test-util"))]
    pub async fn corrupt_env_for_test(&self, env_ref: &str, bytes: Vec<u8>) -> Result<()> {
        self.shared
            .run(|c| {
                let bytes = bytes.clone();
                async move { read::put_env(&c, env_ref, &bytes, true).await }
            })
            .await
    }

    async fn submit(&self, op: Result<Op>) -> Result<Answer> {
        self.lanes.submit(op?).await
    }

    /// Make every type list this node's lanes stored look stored `by`
    /// earlier by this host's monotonic clock (the registry's clock left as
    /// it is), so a batch naming one past the 10 minutes they trust a list
    /// stores it again (tests; ADR 0034).
    #[cfg(any(test, feature = "test-util"))]
    pub fn age_type_lists_for_test(&self, by: std::time::Duration) {
        self.lanes.age_type_lists(by);
    }

    /// Register `registrations` (no grants) as one write batch, the way a lane
    /// commits registrations queued together (see [`testing::register_together`]).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) async fn claim_together(&self, claims: &[(&str, usize)]) -> Vec<Result<Vec<Claim>>> {
        let mut ops = Vec::new();
        for (owner, limit) in claims {
            match Op::claim_batch(owner, 60_000, *limit) {
                Ok(op) => ops.push(op),
                Err(e) => return vec![Err(e)],
            }
        }
        self.lanes
            .run_together(ops)
            .await
            .into_iter()
            .map(|out| out?.into_claims())
            .collect()
    }

    #[cfg(any(test, feature = "test-util"))]
    pub(crate) async fn register_together(&self, registrations: &[Registration]) -> Vec<Result<Registered>> {
        let now = self.clock.now_ms();
        let mut answers: Vec<Option<Result<Registered>>> = Vec::new();
        let mut ops = Vec::new();
        for registration in registrations {
            match Op::register(registration, None, now) {
                Ok(op) => {
                    answers.push(None);
                    ops.push(op);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let mut outs = self.lanes.run_together(ops).await.into_iter();
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| match outs.next() {
                    Some(out) => out?.into_registered(),
                    None => Err(CairnError::storage("postgres: a registration went unanswered")),
                })
            })
            .collect()
    }

    /// Run `work` in one transaction on the admin connection, again on a fresh
    /// connection after a transient fault that happened before the commit.
    /// A connection that broke while committing leaves the outcome unknown: the
    /// work is not run again (its report would describe the second run, not
    /// what happened) and the answer is `outcome_unknown`, naming `what`.
    ///
    /// The call gives up once the server has not answered within the call
    /// timeout: `unavailable` before the commit was sent (the transaction
    /// rolls back), `outcome_unknown` after.
    async fn transaction<T, F>(&self, what: &str, work: F) -> Result<T>
    where
        F: for<'a> Fn(&'a tokio_postgres::Transaction<'a>, u64) -> futures::future::BoxFuture<'a, read::R<T>>,
    {
        let secs = self.call_timeout.as_secs();
        // Waiting for the connection (another transaction holds it) and
        // the transaction itself are each bounded: a wait behind a long
        // transaction on a healthy server is not said as a silent server.
        let mut guard = tokio::time::timeout(self.call_timeout, self.admin.lock())
            .await
            .map_err(|_| {
                CairnError::Unavailable(format!(
                    "postgres: {what} waited {secs} s (URL parameter `call_timeout`) for the connection another \
                     transaction held; nothing was done"
                ))
            })?;
        let mut committing = false;
        let attempts = async {
            let mut attempt = 0u32;
            loop {
                if guard.as_ref().is_none_or(Conn::is_closed) {
                    *guard = Some(open_retrying(&self.config, &self.schema, "admin", 5).await?);
                }
                let Some(conn) = guard.as_mut() else { continue };
                let now = self.clock.now_ms();
                committing = false;
                let outcome: read::R<T> = async {
                    let tx = conn.client.transaction().await?;
                    let value = work(&tx, now).await?;
                    committing = true;
                    tx.commit().await?;
                    Ok(value)
                }
                .await;
                match outcome {
                    Err(Fault::Pg(e)) if committing && conn::connection_lost(&e) => {
                        return Err(CairnError::OutcomeUnknown(format!(
                            "postgres: the connection broke while committing {what} ({}); it may or may not \
                             have landed: read the state it changes to find out",
                            conn::describe(&e)
                        )));
                    }
                    Err(Fault::Pg(e)) if attempt < 3 && is_transient(&e) => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(10 << attempt)).await;
                    }
                    other => return other.map_err(CairnError::from),
                }
            }
        };
        let answer = tokio::time::timeout(self.call_timeout, attempts).await;
        if answer.is_err() {
            // The connection is left to close (the server rolls back what
            // it did not see committed): the next transaction opens another,
            // as it would after a half-open flow's failover.
            *guard = None;
        }
        match answer {
            Ok(answer) => answer,
            Err(_) if committing => Err(CairnError::OutcomeUnknown(format!(
                "postgres: the server did not answer the commit of {what} within {secs} s (URL parameter \
                 `call_timeout`); it may still land: read the state it changes to find out"
            ))),
            Err(_) => Err(CairnError::Unavailable(format!(
                "postgres: the server did not answer within {secs} s (URL parameter `call_timeout`); {what} \
                 was not committed"
            ))),
        }
    }
}

#[async_trait]
impl ProcessRegistry for PostgresRegistry {
    async fn register(&self, registration: Registration, grant: Option<StartGrant>) -> Result<Registered> {
        self.submit(Op::register(&registration, grant, self.clock.now_ms()))
            .await?
            .into_registered()
    }

    async fn register_child(
        &self,
        registration: Registration,
        grants: Vec<StartGrant>,
        parent_lease: &Lease,
    ) -> Result<Registered> {
        self.submit(Op::register_child(
            &registration,
            grants,
            parent_lease,
            self.clock.now_ms(),
        ))
        .await?
        .into_registered()
    }

    async fn register_claimed(
        &self,
        registration: Registration,
        grant: Option<StartGrant>,
        owner_id: &str,
        ttl_ms: u64,
    ) -> Result<(Registered, Option<Claim>)> {
        self.submit(Op::register_claimed(
            &registration,
            grant,
            self.clock.now_ms(),
            owner_id,
            ttl_ms,
        ))
        .await?
        .into_registered_claimed()
        .map(|b| *b)
    }

    async fn get(&self, id: &str) -> Result<ProcessRecord> {
        validate_id("process id", id)?;
        self.shared.run(|c| async move { read::get(&c, id).await }).await
    }

    async fn list(&self, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        filter.validate()?;
        let limit = filter.page_size()?;
        self.shared
            .run(|c| async move { read::list(&c, filter, limit).await })
            .await
    }

    async fn events_after(&self, id: &str, after: u64, limit: Option<usize>) -> Result<EventPage> {
        validate_id("process id", id)?;
        let limit = page_limit(limit)?;
        let (events, last_sequence) = self
            .shared
            .run(|c| async move { read::events_after(&c, id, after, limit).await })
            .await?;
        let next_after = match events.last() {
            Some(last) if last.sequence < last_sequence => Some(last.sequence),
            _ => None,
        };
        Ok(EventPage { events, next_after })
    }

    async fn append_event(&self, id: &str, request: AppendRequest) -> Result<AppendResult> {
        self.submit(Op::append(id, request)).await?.into_appended()
    }

    async fn request_cancel(&self, id: &str, reason: Option<String>) -> Result<CancelAnswer> {
        self.submit(Op::cancel(id, reason)).await?.into_cancel()
    }

    async fn grant(&self, scope: &SessionScope, id: &str, descriptor: GrantDescriptor) -> Result<Grant> {
        self.submit(Op::grant(scope, id, descriptor, self.clock.now_ms()))
            .await?
            .into_grant()
    }

    async fn revoke(&self, scope: &SessionScope, id: &str) -> Result<bool> {
        validate_scope(scope)?;
        validate_id("process id", id)?;
        self.shared
            .run_flag("revoking the grant", "the grant is gone now", |c| async move {
                read::revoke(&c, scope, id).await
            })
            .await
    }

    async fn transfer(&self, from: &SessionScope, to: &SessionScope, ids: &[String]) -> Result<TransferReport> {
        admin::check_transfer(from, to, ids)?;
        self.transaction("the transfer", move |tx, now| {
            let (from, to, ids, channel) = (from.clone(), to.clone(), ids.to_vec(), self.channel.clone());
            Box::pin(async move {
                let mut a = Admin::new(tx, now);
                let out = admin::transfer(&mut a, &from, &to, &ids).await;
                if out.is_ok() {
                    // The named processes' rows were locked (`FOR SHARE`),
                    // moved or not (a retry finds them moved): a claim made
                    // meanwhile passed over them, and nothing else will say
                    // they are still there to claim.
                    tx.execute(crate::uow::NOTIFY, &[&channel, &"w"]).await?;
                }
                a.finish(out)
            })
        })
        .await
    }

    async fn grants_of(&self, id: &str) -> Result<Vec<Grant>> {
        validate_id("process id", id)?;
        self.shared.run(|c| async move { read::grants_of(&c, id).await }).await
    }

    async fn pruned_grant(&self, scope: &SessionScope, id: &str) -> Result<Option<Tombstone>> {
        validate_scope(scope)?;
        validate_id("process id", id)?;
        self.shared
            .run(|c| async move { read::pruned_grant(&c, scope, id).await })
            .await
    }

    async fn list_granted_to(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<GrantedProcess>> {
        validate_scope(scope)?;
        filter.validate()?;
        let limit = filter.page_size()?;
        self.shared
            .run(|c| async move { read::list_granted_to(&c, scope, filter, limit).await })
            .await
    }

    async fn list_originated_by(&self, scope: &SessionScope, filter: &ProcessFilter) -> Result<Vec<ProcessRecord>> {
        validate_scope(scope)?;
        filter.validate()?;
        let limit = filter.page_size()?;
        self.shared
            .run(|c| async move { read::list_originated_by(&c, scope, filter, limit).await })
            .await
    }

    async fn delete_session_with(&self, session_id: &str, keep_frames: bool) -> Result<SessionDeleteReport> {
        validate_session_id(session_id)?;
        self.transaction("the session's deletion", move |tx, now| {
            let (session_id, channel) = (session_id.to_string(), self.channel.clone());
            Box::pin(async move {
                let mut a = Admin::new(tx, now);
                let out = admin::delete_session(&mut a, &session_id, keep_frames).await;
                if out.as_ref().is_ok_and(|r| r.revoked_grants > 0) {
                    // The session's processes were locked (`FOR SHARE`), as a
                    // transfer locks them: a claim made meanwhile passed over
                    // them, and nothing else will say they are there to claim.
                    tx.execute(crate::uow::NOTIFY, &[&channel, &"w"]).await?;
                }
                a.finish(out)
            })
        })
        .await
    }

    async fn pending_wakes(&self, session_id: &str, limit: Option<usize>) -> Result<Vec<WakeDelivery>> {
        validate_session_id(session_id)?;
        let limit = page_limit(limit)?;
        self.shared
            .run(|c| async move { read::pending_wakes(&c, session_id, None, limit).await })
            .await
    }

    async fn pending_frame_wakes(
        &self,
        session_id: &str,
        frame_id: &str,
        limit: Option<usize>,
    ) -> Result<Vec<WakeDelivery>> {
        validate_session_id(session_id)?;
        validate_id("agent frame id", frame_id)?;
        let limit = page_limit(limit)?;
        self.shared
            .run(|c| async move { read::pending_wakes(&c, session_id, Some(frame_id), limit).await })
            .await
    }

    async fn ack_wake(&self, session_id: &str, wake_id: &str) -> Result<bool> {
        validate_session_id(session_id)?;
        validate_id("wake id", wake_id)?;
        self.shared
            .run_flag("acknowledging the wake", "it is acknowledged now", |c| async move {
                read::ack_wake(&c, session_id, wake_id).await
            })
            .await
    }

    async fn claim(&self, id: &str, owner_id: &str, ttl_ms: u64) -> Result<Lease> {
        self.submit(Op::claim(id, owner_id, ttl_ms)).await?.into_lease()
    }

    async fn claim_batch(&self, owner_id: &str, ttl_ms: u64, limit: usize) -> Result<Vec<Claim>> {
        let op = Op::claim_batch(owner_id, ttl_ms, limit)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.submit(Ok(op)).await?.into_claims()
    }

    async fn record_started(&self, lease: &Lease) -> Result<ProcessRecord> {
        self.submit(Op::record_started(lease)).await?.into_record()
    }

    async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease> {
        self.submit(Op::renew(lease, ttl_ms)).await?.into_lease()
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.submit(Op::release(lease)).await?.into_bool()
    }

    async fn complete(&self, lease: &Lease, outcome: Outcome) -> Result<ProcessRecord> {
        self.submit(Op::complete(lease, outcome)).await?.into_record()
    }

    async fn abandon_worklist(&self, limit: usize) -> Result<Vec<String>> {
        let now = self.clock.now_ms();
        self.shared
            .run(|c| async move { read::abandon_worklist(&c, now, limit).await })
            .await
    }

    async fn worklist(&self, limit: usize) -> Result<Vec<WorkItem>> {
        let now = self.clock.now_ms();
        let rows = self
            .shared
            .run(|c| async move { read::worklist(&c, now, limit).await })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(process_id, abandon)| WorkItem {
                process_id,
                action: if abandon {
                    WorkAction::ReconcileAbandon
                } else {
                    WorkAction::Run
                },
            })
            .collect())
    }

    async fn request_abandon(&self, id: &str, requested_by: &str, reason: &str) -> Result<ProcessRecord> {
        self.submit(Op::request_abandon(id, requested_by, reason))
            .await?
            .into_record()
    }

    async fn reconcile_abandon(&self, id: &str) -> Result<Option<ProcessRecord>> {
        self.submit(Op::reconcile_abandon(id)).await?.into_maybe_record()
    }

    async fn register_node(&self, node: &str) -> Result<NodeIdentity> {
        NodeIdentity::validate_node_id(node)?;
        let now = self.clock.now_ms();
        let incarnation = self
            .shared
            .run_write("registering the node", |c| async move {
                read::register_node(&c, node, now).await
            })
            .await?;
        Ok(NodeIdentity {
            node: node.to_string(),
            incarnation,
        })
    }

    async fn heartbeat(&self, identity: &NodeIdentity) -> Result<bool> {
        NodeIdentity::validate_node_id(&identity.node)?;
        let now = self.clock.now_ms();
        self.shared
            .run_write("recording the heartbeat", |c| async move {
                read::heartbeat(&c, &identity.node, identity.incarnation, now).await
            })
            .await
    }

    async fn node(&self, node: &str) -> Result<Option<NodeLiveness>> {
        NodeIdentity::validate_node_id(node)?;
        self.shared.run(|c| async move { read::node(&c, node).await }).await
    }

    async fn leases_of_earlier_incarnations(&self, node: &str, incarnation: u64, limit: usize) -> Result<Vec<Lease>> {
        let node = node.to_string();
        self.shared
            .run(|c| {
                let node = node.clone();
                async move { read::leases_of_earlier_incarnations(&c, &node, incarnation, limit).await }
            })
            .await
    }

    async fn sweep_worklist(&self, limit: usize) -> Result<Vec<SweepItem>> {
        self.shared
            .run(|c| async move { read::sweep_worklist(&c, limit).await })
            .await
    }

    async fn sweep(&self, id: &str, node: &str, incarnation: u64) -> Result<Option<ProcessRecord>> {
        self.submit(Op::sweep(id, node, incarnation)).await?.into_maybe_record()
    }

    async fn complete_external(&self, id: &str, outcome: Outcome, authority: &str) -> Result<CompleteAnswer> {
        self.submit(Op::complete_external(id, &outcome, authority))
            .await?
            .into_complete()
    }

    async fn prune(&self, cutoff_ms: u64, filter: PruneFilter, watermark: Watermark) -> Result<PruneReport> {
        filter.validate()?;
        let mut report = PruneReport::default();
        let mut after: Option<admin::PrunePosition> = None;
        loop {
            // One transaction per chunk: it locks a chunk's rows, not every
            // ended row before the cutoff, and lanes' batches that touch one
            // wait for a chunk, never for the whole prune.
            let (channel, filter) = (self.channel.clone(), filter.clone());
            let from = after.clone();
            let (chunk, next) = self
                .transaction("the prune", move |tx, now| {
                    let (channel, filter, from) = (channel.clone(), filter.clone(), from.clone());
                    Box::pin(async move {
                        let mut a = Admin::new(tx, now);
                        let out = admin::prune(&mut a, cutoff_ms, &filter, watermark, from.as_ref()).await;
                        if out.as_ref().is_ok_and(|(r, _)| r.pruned > 0) {
                            // Every node forgets the ends its hub keeps (listen::deliver):
                            // some may be of processes pruned here.
                            tx.execute(crate::uow::NOTIFY, &[&channel, &"f"]).await?;
                        }
                        a.finish(out)
                    })
                })
                .await
                .map_err(|e| report.interrupted_by(e))?;
            report.add(&chunk);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        cairn_core::registry::collect_after_prune(self, &report, self.collect_grace).await;
        Ok(report)
    }

    async fn collect_unreferenced(&self, grace: std::time::Duration) -> Result<cairn_core::registry::Collected> {
        // Far past any grace meant, and no underflow of the server's `now() - grace`.
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX).min(i64::MAX / 2);
        let (envs, type_lists) = self
            .transaction("the collection of unreferenced envs and type lists", move |tx, _| {
                Box::pin(async move { read::collect_unreferenced(tx, grace_ms).await })
            })
            .await?;
        // Lists other nodes trust are older than any grace worth the name;
        // this node's own may be younger than a short one.
        if type_lists > 0 {
            self.lanes.forget_type_lists();
        }
        Ok(cairn_core::registry::Collected { envs, type_lists })
    }

    async fn change_head(&self) -> Result<u64> {
        self.shared.run(|c| async move { read::change_head(&c).await }).await
    }

    async fn changed_since(&self, cursor: u64, limit: Option<usize>) -> Result<ChangePage> {
        let limit = page_limit(limit)?;
        let rows = self
            .shared
            .run(|c| async move { read::changed_since(&c, cursor, limit).await })
            .await?;
        let changes: Vec<Change> = rows
            .into_iter()
            .map(|(cursor, process)| Change { cursor, process })
            .collect();
        let next_cursor = changes.last().map_or(cursor, |c| c.cursor);
        Ok(ChangePage { changes, next_cursor })
    }

    async fn put_env(&self, spec: &EnvSpec) -> Result<EnvRef> {
        let (env_ref, bytes) = validate::env_ref_and_bytes(spec)?;
        self.shared
            .run_write("storing the env", |c| {
                let (env_ref, bytes) = (&env_ref, &bytes);
                async move { read::put_env(&c, env_ref, bytes, false).await }
            })
            .await?;
        Ok(env_ref)
    }

    async fn get_env(&self, env_ref: &str) -> Result<EnvSpec> {
        validate_id("env ref", env_ref)?;
        let bytes = self
            .shared
            .run(|c| async move { read::env_bytes(&c, env_ref).await })
            .await?;
        match bytes {
            Some(b) => validate::decode_env(env_ref, &b),
            None => Err(CairnError::UnknownEnv(env_ref.to_string())),
        }
    }

    async fn put_module(&self, module: &cairn_core::Module) -> Result<cairn_core::ModulePut> {
        cairn_core::script::validate_module(module)?;
        self.shared
            .run_write(
                "storing the module",
                |c| async move { read::put_module(&c, module).await },
            )
            .await
    }

    async fn list_modules(&self, after: Option<&str>, limit: Option<usize>) -> Result<Vec<cairn_core::ModuleInfo>> {
        let limit = cairn_core::model::page_limit(limit)?;
        self.shared
            .run(|c| async move { read::list_modules(&c, after, limit).await })
            .await
    }

    async fn get_module(&self, module_ref: &str) -> Result<cairn_core::Module> {
        cairn_core::script::validate_module_ref(module_ref)?;
        self.shared
            .run(|c| async move { read::get_module(&c, module_ref).await })
            .await?
            .ok_or_else(|| CairnError::UnknownModule(module_ref.to_string()))
    }

    async fn fencing_token(&self, id: &str) -> Result<u64> {
        validate_id("process id", id)?;
        self.shared
            .run(|c| async move { read::fencing_token(&c, id).await })
            .await
    }

    async fn wait(&self, lease: &Lease, wait: WaitRequest, seen_sequence: u64) -> Result<bool> {
        self.submit(Op::wait(lease, wait, seen_sequence)).await?.into_bool()
    }

    async fn resume(&self, lease: &Lease, payload: serde_json::Value) -> Result<ProcessRecord> {
        self.submit(Op::resume(lease, payload)).await?.into_record()
    }

    async fn gauges(&self) -> Result<cairn_core::Gauges> {
        let now = self.clock.now_ms();
        self.shared.run(|c| async move { read::gauges(&c, now).await }).await
    }

    async fn next_due(&self, after_ms: u64) -> Result<Option<u64>> {
        self.shared
            .run(|c| async move { read::next_due(&c, after_ms).await })
            .await
    }

    async fn insert_schedule(&self, schedule: &cairn_core::Schedule) -> Result<Option<cairn_core::Schedule>> {
        let channel = &self.channel;
        self.shared
            .run_write("storing the schedule", |c| async move {
                schedules::insert(&c, channel, schedule).await
            })
            .await
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<cairn_core::Schedule>> {
        self.shared.run(|c| async move { schedules::get(&c, id).await }).await
    }

    async fn list_schedules(&self, after_id: Option<&str>, limit: usize) -> Result<Vec<cairn_core::Schedule>> {
        self.shared
            .run(|c| async move { schedules::list(&c, after_id, limit).await })
            .await
    }

    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        self.shared
            .run_flag("deleting the schedule", "the schedule is gone now", |c| async move {
                schedules::delete(&c, id).await
            })
            .await
    }

    async fn set_schedule_paused(
        &self,
        id: &str,
        paused: bool,
        next_fire_ms: Option<u64>,
    ) -> Result<Option<cairn_core::Schedule>> {
        let channel = &self.channel;
        self.shared
            .run_write("pausing or resuming the schedule", |c| async move {
                schedules::set_paused(&c, channel, id, paused, next_fire_ms).await
            })
            .await
    }

    async fn advance_schedule(
        &self,
        id: &str,
        expected_next_fire_ms: u64,
        advance: &cairn_core::ScheduleAdvance,
    ) -> Result<bool> {
        self.shared
            .run_flag("advancing the schedule", "read the schedule to see", |c| async move {
                schedules::advance(&c, id, expected_next_fire_ms, advance).await
            })
            .await
    }

    async fn due_schedules(&self, now_ms: u64, limit: usize) -> Result<Vec<cairn_core::Schedule>> {
        self.shared
            .run(|c| async move { schedules::due(&c, now_ms, limit).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> PostgresOptions {
        PostgresOptions::new(url, Arc::new(cairn_core::SystemClock))
    }

    #[test]
    fn numeric_parameters_set_their_fields_and_leave_the_url() {
        let o = options(
            "postgres://u@h/db?write_lanes=2&connect_timeout=5&read_connections=3&max_batch=64&schema=s&call_timeout=7",
        );
        assert_eq!(o.url, "postgres://u@h/db?connect_timeout=5");
        assert_eq!((o.write_lanes, o.read_connections, o.max_batch), (2, 3, 64));
        assert_eq!(o.call_timeout, std::time::Duration::from_secs(7));
        assert_eq!(o.schema, "s");
        assert!(o.url_error.is_none());
        let d = options("postgres://u@h/db");
        assert_eq!((d.write_lanes, d.read_connections, d.max_batch), (1, 2, 256));
        assert_eq!(d.call_timeout, options::DEFAULT_CALL_TIMEOUT);
        // The given clock is the one used unless a host asks to follow the server's.
        assert!(!d.follow_server_clock);
    }

    #[tokio::test]
    async fn a_bad_numeric_parameter_is_refused_before_connecting() {
        // Port 1 answers nothing: a refusal that names the parameter proves
        // nothing was attempted.
        for (query, says) in [
            (
                "write_lanes=0",
                "`write_lanes` must be a whole number from 1 to 64, not `0`",
            ),
            (
                "read_connections=lots",
                "`read_connections` must be a whole number from 1 to 64, not `lots`",
            ),
            (
                "call_timeout=0",
                "`call_timeout` must be a whole number from 1 to 3600, not `0`",
            ),
            (
                "max_batch=10001",
                "`max_batch` must be a whole number from 1 to 10000, not `10001`",
            ),
            (
                "write_lanes",
                "`write_lanes` must be a whole number from 1 to 64, not ``",
            ),
            ("write_lanes=2&write_lanes=3", "`write_lanes` is given twice"),
            ("schema=a&schema=b", "`schema` is given twice"),
            ("schema=a&write_lanes=2&schema=a", "`schema` is given twice"),
            ("sslmode=require", "`sslmode` asks for TLS"),
            ("sslmode=verify-full", "`sslmode` asks for TLS"),
            ("sslrootcert=/ca.pem", "`sslrootcert` asks for TLS"),
            ("shema=x", "shema"),
        ] {
            let Err(err) =
                PostgresRegistry::connect_with(options(&format!("postgres://u@127.0.0.1:1/db?{query}"))).await
            else {
                panic!("{query}: connected");
            };
            assert_eq!(err.code(), "invalid_request", "{query}: {err}");
            assert!(err.to_string().contains(says), "{query}: {err}");
        }
    }

    #[tokio::test]
    async fn a_url_without_a_database_is_refused_before_connecting() {
        // Port 1 answers nothing: the refusal proves nothing was attempted.
        for url in [
            "postgres://u@127.0.0.1:1",
            "postgres://u@127.0.0.1:1/",
            "postgres://u@127.0.0.1:1?schema=x",
            "postgresql://u:secret@127.0.0.1:1/?schema=x&write_lanes=2",
            "host=127.0.0.1 port=1 user=u",
        ] {
            let Err(err) = PostgresRegistry::connect_with(options(url)).await else {
                panic!("{url}: connected");
            };
            assert_eq!(err.code(), "invalid_request", "{url}: {err}");
            assert!(
                err.to_string().contains("names no database")
                    && err.to_string().contains("`postgres://USER@HOST:PORT/DB`"),
                "{url}: {err}"
            );
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        // A database named in the path, the query or a `key=value` string
        // passes the check: the connection is tried (and port 1 refuses it).
        for url in [
            "postgres://u@127.0.0.1:1/db?call_timeout=2",
            "postgres://u@127.0.0.1:1?dbname=db&call_timeout=2",
            "host=127.0.0.1 port=1 user=u dbname=db",
        ] {
            let Err(err) = PostgresRegistry::connect_with(options(url)).await else {
                panic!("{url}: connected");
            };
            assert!(!err.to_string().contains("names no database"), "{url}: {err}");
            assert_ne!(err.code(), "invalid_request", "{url}: {err}");
        }
    }

    #[test]
    fn schema_parameter_is_taken_out_of_the_url() {
        assert_eq!(
            split_schema("postgres://u@h/db?schema=abc"),
            ("postgres://u@h/db".to_string(), Some("abc".to_string()))
        );
        assert_eq!(
            split_schema("postgres://u@h/db?connect_timeout=5&schema=abc"),
            (
                "postgres://u@h/db?connect_timeout=5".to_string(),
                Some("abc".to_string())
            )
        );
        assert_eq!(
            split_schema("postgres://u@h/db"),
            ("postgres://u@h/db".to_string(), None)
        );
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("postgres://h/db?user=u&password=secret&schema=s"),
            "postgres://h/db?user=u&password=***&schema=s"
        );
        for url in [
            "postgres://u:p@zq@h/db",
            "postgres://u:pa?zq@h/db",
            "postgres://h/db?password=x@zq",
            "postgres://h:5432/db?application_name=a@b&password=zq",
            "postgres://h:5432/db?password=x@zq",
            "postgres://[::1]/db?password=p@zq",
            "host=h user=u password=zq dbname=d",
            "host=h password = zq dbname=d",
            "host=h password='a zq' dbname=d",
            "host=h password='a\\' zq' dbname=d",
            "postgres://h/db?%70assword=zq",
            "postgres://h/db?PASS%57ORD=zq&schema=s",
            "postgres://h/db?sslpassword=zq",
            "postgres:/u:zq@h/db",
        ] {
            assert!(!redact(url).contains("zq"), "{url} -> {}", redact(url));
        }
        assert_eq!(redact("sqlite:cairn.db"), "sqlite:cairn.db");
        assert_eq!(redact("sqlite:/home/a@b:c/x.db"), "sqlite:/home/a@b:c/x.db");
    }
}
