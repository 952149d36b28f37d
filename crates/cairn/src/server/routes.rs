//! The HTTP resources of SPEC §10, each a thin layer over [`cairn_core::Processes`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_core::{
    AppendRequest, AppendResult, ChangePage, EventPage, ListPage, Outcome, ProcessEvent, ProcessFilter, ProcessRecord,
    PruneFilter, PruneReport, SessionDeleteReport, SessionScope, StartRequest, StatusFilter, TransferReport,
    WakeDelivery, Watermark,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorSchema};
use super::auth::{self, check_visible, Caller};
use super::{sse, AppState};

pub(crate) type Shared = State<Arc<AppState>>;
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Body of `POST /v1/processes/{id}/events`: an append without a lease (the
/// server never holds one for a caller).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    expecting = "an append: an object with `event_type` and `payload`",
    deny_unknown_fields
)]
pub struct AppendBody {
    /// A declared event type.
    pub event_type: String,
    /// Checked against the type's payload schema.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Makes the append idempotent: a retry with the same payload returns the original event.
    /// Some keys are cairn's own and `invalid_request` here: `cancel:…` on any
    /// event but a cancellation, `signal:…` on any but a signal, `script.…` or
    /// `turn.…` on a script or session turn (its run's journal), and `{type}/…`
    /// naming another declared type of the process.
    #[serde(default)]
    pub replay_key: Option<String>,
    /// Overrides the record's wake target for this event's wake. Only for an
    /// event type with wake semantics: on one without, `invalid_request`.
    #[serde(default)]
    pub wake_target: Option<SessionScope>,
}

/// Body of `POST /v1/processes/{id}/signals/{name}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    expecting = "a signal: an object with `signal_id` and, optionally, `payload`",
    deny_unknown_fields
)]
pub struct SignalBody {
    /// Idempotency key of the signal: repeating it returns the same event.
    pub signal_id: String,
    /// Any JSON; the waiting process receives it.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// Body of `POST /v1/processes/{id}/cancel` (may be empty).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    expecting = "a cancel request: an object, optionally with `reason`",
    deny_unknown_fields
)]
pub struct CancelBody {
    /// Why (requests are idempotent per reason).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Body of `POST /v1/sessions/{session_id}/wakes/{wake_id}/ack` and of
/// `DELETE /v1/sessions/{session_id}`: empty, or `{}`.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct AckBody {}

/// Anything but `{}` is refused in words a client can act on (serde's own
/// would name the Rust type: "expected struct AckBody").
impl<'de> Deserialize<'de> for AckBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Object(m) if m.is_empty() => Ok(Self {}),
            serde_json::Value::Object(m) => Err(serde::de::Error::custom(format!(
                "takes no fields (send no body, or `{{}}`), got `{}`",
                m.keys().next().map_or("", String::as_str)
            ))),
            other => Err(serde::de::Error::custom(format!(
                "must be empty or `{{}}`, got {}",
                cairn_core::validate::json_kind(&other)
            ))),
        }
    }
}

/// Body of `POST /v1/processes/{id}/complete`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(expecting = "a completion: an object with `outcome`", deny_unknown_fields)]
pub struct CompleteBody {
    /// `success`, `failure` or `cancelled` (SPEC §12 outcome shape).
    #[serde(deserialize_with = "Outcome::deserialize_completion")]
    pub outcome: Outcome,
    /// Who completes it (recorded in the terminal payload); defaults to the caller.
    /// Session callers are always recorded as their session.
    #[serde(default)]
    pub authority: Option<String>,
}

/// Body of `POST /v1/processes/{id}/abandon-request`. The first request
/// stands: a later one, whatever its reason or requester, answers the record
/// as it is (200) and records nothing.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(expecting = "an abandon request: an object with `reason`", deny_unknown_fields)]
pub struct AbandonBody {
    /// Defaults to the caller; session callers are always recorded as their session.
    #[serde(default)]
    pub requested_by: Option<String>,
    /// Why the process should be abandoned (not empty: it is the evidence behind `abandoned`).
    pub reason: String,
}

/// Body of `POST /v1/grants/transfer`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    expecting = "a transfer: an object with `from`, `to` and `process_ids`",
    deny_unknown_fields
)]
pub struct TransferBody {
    /// Scope the grants move from (`{"session_id", "agent_frame_id"?}`).
    pub from: SessionScope,
    /// Scope the grants move to.
    pub to: SessionScope,
    /// The processes whose grants move.
    pub process_ids: Vec<String>,
}

/// Body of `POST /v1/prune`.
// Its filters are read whatever their JSON, so that a bad one is refused as
// a bad filter (`invalid_filter`, naming its key), as in a list's query, not
// as a malformed body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(expecting = "a prune request: an object with `cutoff_ms`", deny_unknown_fields)]
pub struct PruneBody {
    /// Prune processes that ended before this time (epoch ms).
    pub cutoff_ms: u64,
    /// Which terminal statuses (default `any`; `running` is refused).
    #[serde(default, skip_serializing_if = "FilterValue::is_absent")]
    #[schema(value_type = StatusFilter)]
    pub status: FilterValue<PruneStatus>,
    /// Only processes of this definition (`tool:NAME`, `script:MODULE_REF#EXPORT`,
    /// `session_turn`, `external`), as the list filter.
    #[serde(default, skip_serializing_if = "FilterValue::is_absent")]
    #[schema(value_type = Option<String>)]
    pub definition: FilterValue<Option<String>>,
    /// Only processes started by this originator scope id (`host`, `host:SCOPE`,
    /// `session:ID`, `session:ID/frame:FRAME`), as the list filter.
    #[serde(default, skip_serializing_if = "FilterValue::is_absent")]
    #[schema(value_type = Option<String>)]
    pub originator: FilterValue<Option<String>>,
    /// Only the children of this process.
    #[serde(default, skip_serializing_if = "FilterValue::is_absent")]
    #[schema(value_type = Option<String>)]
    pub caused_by: FilterValue<Option<String>>,
    /// Only processes created at or after this time (epoch ms).
    #[serde(default, skip_serializing_if = "FilterValue::is_absent")]
    #[schema(value_type = Option<u64>)]
    pub created_from_ms: FilterValue<Option<u64>>,
    /// Only processes created before this time (epoch ms).
    #[serde(default, skip_serializing_if = "FilterValue::is_absent")]
    #[schema(value_type = Option<u64>)]
    pub created_before_ms: FilterValue<Option<u64>>,
    /// `{"type":"no_projector"}` or `{"type":"cursor","cursor":N}`: required, never implied.
    pub watermark: Watermark,
}

/// A prune body's `status`: a [`StatusFilter`], whose refusal of a status it
/// does not know lists the ones prune takes. `running` is read, for the
/// prune's filter to refuse saying why ([`PruneFilter::validate`]).
#[derive(Debug)]
pub struct PruneStatus(StatusFilter);

impl<'de> Deserialize<'de> for PruneStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "running" {
            return Ok(Self(StatusFilter::Running));
        }
        StatusFilter::try_from(text.clone()).map(Self).map_err(|_| {
            serde::de::Error::custom(format_args!(
                "unknown status `{text}`: one of completed, failed, cancelled, abandoned, any"
            ))
        })
    }
}

/// A filter of a JSON body, kept as given (`None` when left out) and read as
/// a `T` by [`FilterValue::read`].
#[derive(Debug)]
pub struct FilterValue<T>(Option<Value>, std::marker::PhantomData<T>);

impl<T> Default for FilterValue<T> {
    fn default() -> Self {
        Self(None, std::marker::PhantomData)
    }
}

impl<T> FilterValue<T> {
    fn is_absent(&self) -> bool {
        self.0.is_none()
    }
}

impl<T: serde::de::DeserializeOwned> FilterValue<T> {
    /// The value read as a `T`, `absent` when left out; `invalid_filter`
    /// naming `key` when it is not one.
    fn read(self, key: &str, absent: T) -> Result<T, cairn_core::CairnError> {
        let Some(given) = self.0 else {
            return Ok(absent);
        };
        serde_json::from_value(given).map_err(|e| {
            let why = cairn_core::validate::wire_terms(&e.to_string());
            cairn_core::CairnError::InvalidFilter(format!("`{key}`: {why}"))
        })
    }
}

impl<'de, T> Deserialize<'de> for FilterValue<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(|v| Self(Some(v), std::marker::PhantomData))
    }
}

impl<T> Serialize for FilterValue<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Query of `GET /v1/processes/{id}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a greater sequence (default 0). For streams, `Last-Event-ID` wins.
    pub after: Option<u64>,
    /// Page size (default 100, at most 1000). A page also stops once its
    /// events reach 4 MiB of JSON (so it holds at most that and one event
    /// more), saying where the next one starts in `next_after`.
    pub limit: Option<usize>,
}

/// Query of `GET /v1/processes/{id}/await`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AwaitQuery {
    /// How long to wait (default 30000, capped by the server's `--max-await`).
    pub timeout_ms: Option<u64>,
}

/// Query of `GET /v1/sessions/{session_id}/wakes`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WakesQuery {
    /// Page size (default 100, at most 1000). A page also stops at the wake
    /// that brings it to 4 MiB as JSON (so at most that and one wake), so a
    /// page shorter than the limit may have more after it: acknowledging its
    /// wakes brings the next.
    pub limit: Option<usize>,
}

/// Query of `GET /v1/changes`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// Read changes after this cursor (default 0).
    pub cursor: Option<u64>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Answer of `GET /v1/sessions/{session_id}/wakes`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WakesPage {
    /// Pending wakes, oldest first.
    pub wakes: Vec<WakeDelivery>,
}

/// Answer of the wake acknowledgement.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AckAnswer {
    /// True when this call acknowledged the wake, false when it already was.
    pub acked: bool,
}

/// Answer of `GET /healthz`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The server's version.
    pub version: String,
}

const DEFAULT_AWAIT: Duration = Duration::from_secs(30);

/// Cursors, sequences and times are signed 64-bit in every store (and in the
/// OpenAPI document): a larger number is refused, not wrapped or clamped.
fn within_int64(name: &str, value: Option<u64>) -> Result<(), ApiError> {
    match value {
        Some(v) if i64::try_from(v).is_err() => Err(ApiError::invalid_request(format!(
            "`{name}` is {v}, over the largest accepted value {}",
            i64::MAX
        ))),
        _ => Ok(()),
    }
}

fn scope_of_session(caller: &Caller) -> Option<SessionScope> {
    caller.session_scope()
}

/// 409 `registration_conflict` for a session whose start names an id it may
/// not address: the same words for a live process and a pruned one.
fn id_taken(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "registration_conflict",
        format!("process id `{id}` is taken; choose another"),
    )
}

/// `POST /v1/processes`: 201 created, 200 for a repeated identical start.
#[utoipa::path(post, path = "/v1/processes", tag = "processes",
    request_body = StartRequest,
    responses(
        (status = 201, description = "Created: the process record", body = ProcessRecord),
        (status = 200, description = "The same start repeated (the registration hash, which leaves out `grant`, matches): the existing record; the repeat's `grant` is not applied, grants move with `/v1/grants/transfer`", body = ProcessRecord),
        (status = 400, description = "Malformed or invalid request", body = ErrorSchema),
        (status = 404, description = "unknown_tool, unknown_model or unknown_env", body = ErrorSchema),
        (status = 409, description = "registration_conflict", body = ErrorSchema),
        (status = 410, description = "no_longer_retained: the id was pruned", body = ErrorSchema),
        (status = 413, description = "payload_too_large", body = ErrorSchema)))]
pub async fn start(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiJson(mut req): ApiJson<StartRequest>,
) -> ApiResult<Response> {
    if let Some(scope) = scope_of_session(&caller) {
        // A session starts processes as itself, granted to itself, and may only
        // wake itself.
        req.refuse_runtime_id_forms()?;
        req.confine_to_session(&scope)?;
        // A parent the session may not address is answered as a missing one
        // (the operation layer checks the parent first, so the answer is the
        // same whatever else the start gets wrong): no probing for other
        // sessions' processes, no children grafted onto their trees. A pruned
        // parent the session held when it was pruned counts as existing, as
        // it does for the host.
        if let Some(parent) = req.caused_by.as_ref().and_then(|c| c.parent_process()) {
            match auth::visible(&state.processes, &caller, parent).await {
                Ok(()) | Err(cairn_core::CairnError::NoLongerRetained(_)) => {}
                Err(_) => return Err(cairn_core::ops::missing_parent(parent).into()),
            }
        }
    }
    let id = req.id.clone();
    let registered = match state.processes.start(req).await {
        Ok(r) => r,
        // A pruned id's tombstone says how someone's process ended and when,
        // and a conflict says a process is there: a session learns only that
        // the id is taken, in the same words whatever holds it, unless it
        // may address the process, or held it when it was pruned (it learns
        // nothing its GET does not say).
        Err(
            e @ (cairn_core::CairnError::NoLongerRetained(_) | cairn_core::CairnError::RegistrationConflict { .. }),
        ) if scope_of_session(&caller).is_some() => {
            let pruned = matches!(e, cairn_core::CairnError::NoLongerRetained(_));
            return match auth::visible(&state.processes, &caller, &id).await {
                Ok(()) => Err(e.into()),
                Err(cairn_core::CairnError::NoLongerRetained(_)) if pruned => Err(e.into()),
                Err(_) => Err(id_taken(&id)),
            };
        }
        Err(e) => return Err(e.into()),
    };
    if registered.created {
        return Ok((StatusCode::CREATED, Json(registered.process)).into_response());
    }
    // A repeated start must not reveal a process the session can no longer
    // address; one pruned since it was read is said so to the session that
    // held it, as its GET would.
    match auth::visible(&state.processes, &caller, &id).await {
        Ok(()) => {}
        Err(e @ cairn_core::CairnError::NoLongerRetained(_)) => return Err(e.into()),
        Err(_) => return Err(id_taken(&id)),
    }
    Ok((StatusCode::OK, Json(registered.process)).into_response())
}

/// The query keys `GET /v1/processes` takes: the two lenses, then those of
/// [`ProcessFilter::from_query`].
const LIST_KEYS: &[&str] = &[
    "granted_to",
    "originated_by",
    "status",
    "definition",
    "waiting",
    "originator",
    "caused_by",
    "created_from_ms",
    "created_before_ms",
    "order",
    "after_id",
    "limit",
];

/// `GET /v1/processes`: the filter keys of [`ProcessFilter::from_query`] plus
/// `granted_to` and `originated_by` (session scopes: `SESSION` or
/// `SESSION/frame:FRAME`). Unknown keys are `invalid_filter`.
#[utoipa::path(get, path = "/v1/processes", tag = "processes",
    params(
        ("status" = Option<String>, Query, description = "running (default), completed, failed, cancelled, abandoned or any"),
        ("granted_to" = Option<String>, Query, description = "SESSION or SESSION/frame:FRAME: what that scope's grants address (the security lens; a session's own, not its frames'; a session token: its own session's scopes only)"),
        ("originated_by" = Option<String>, Query, description = "SESSION or SESSION/frame:FRAME: what that scope created (the provenance lens; a session's own, not its frames'; host only)"),
        ("waiting" = Option<bool>, Query, description = "Only processes waiting (true) or not (false)"),
        ("definition" = Option<String>, Query, description = "tool:NAME, script:MODULE#NAME, session_turn or external"),
        ("originator" = Option<String>, Query, description = "Originator scope id: host, host:SCOPE, session:ID, session:ID/frame:F"),
        ("caused_by" = Option<String>, Query, description = "Process id: only its children (whose provenance's caused_by names it)"),
        ("created_from_ms" = Option<u64>, Query, description = "Inclusive lower bound on created_at_ms"),
        ("created_before_ms" = Option<u64>, Query, description = "Exclusive upper bound on created_at_ms"),
        ("order" = Option<String>, Query, description = "id (default): ascending id; newest: newest first (descending created_at_ms, then id)"),
        ("after_id" = Option<String>, Query, description = "Where the page starts: the previous page's next_after_id (in id order, ids after it; newest first, processes created before it)"),
        ("limit" = Option<usize>, Query, description = "Page size (default 100, at most 1000)")),
    responses(
        (status = 200, description = "One page in the order asked for", body = ListPage),
        (status = 400, description = "invalid_filter (unknown key, wrong type) or invalid_page (a bad limit; newest first, an after_id naming no process)", body = ErrorSchema),
        (status = 403, description = "`originated_by` with a session token (host only)", body = ErrorSchema)))]
pub async fn list(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<ListPage>> {
    super::api::utf8_query(query.as_deref())?;
    let raw = query.unwrap_or_default();
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes()).into_owned().collect();
    let mut granted_to = None;
    let mut originated_by = None;
    let mut rest = Vec::new();
    for (k, v) in &pairs {
        let slot = match k.as_str() {
            "granted_to" => &mut granted_to,
            "originated_by" => &mut originated_by,
            key if LIST_KEYS.contains(&key) => {
                rest.push((k.as_str(), v.as_str()));
                continue;
            }
            // Named with the keys it takes, as the other routes name theirs.
            other => {
                let taken: Vec<String> = LIST_KEYS.iter().map(|k| (*k).to_string()).collect();
                return Err(cairn_core::CairnError::InvalidFilter(format!(
                    "unknown filter key `{other}`: this route takes {}",
                    super::api::said_list(&taken)
                ))
                .into());
            }
        };
        if slot.replace(v.clone()).is_some() {
            return Err(cairn_core::CairnError::InvalidFilter(format!("filter key `{k}` given twice")).into());
        }
    }
    // A session id no session can have is a filter value no process
    // passes: refused as every other bad one is (`invalid_filter`).
    let mut granted_to = granted_to
        .as_deref()
        .map(|v| cairn_core::validate::filter_scope("granted_to", v))
        .transpose()?;
    let originated_by = originated_by
        .as_deref()
        .map(|v| cairn_core::validate::filter_scope("originated_by", v))
        .transpose()?;
    // A time past the stores' signed 64 bits is a filter refused as every
    // other bad filter value is (`invalid_filter`).
    for (k, v) in &rest {
        let over = v.parse::<u64>().ok().filter(|v| i64::try_from(*v).is_err());
        if let (true, Some(v)) = (matches!(*k, "created_from_ms" | "created_before_ms"), over) {
            return Err(cairn_core::CairnError::InvalidFilter(format!(
                "`{k}` is {v}, over the largest accepted value {}",
                i64::MAX
            ))
            .into());
        }
    }
    let filter = ProcessFilter::from_query(rest)?;
    filter.page_size()?;
    if let Some(own) = scope_of_session(&caller) {
        // Session tokens list through the security lens only.
        if originated_by.is_some() {
            // A well-formed filter this caller may not use: 403, like every host-only operation.
            return Err(ApiError::forbidden(
                "`originated_by` needs the host token; session tokens list what is granted to them",
            ));
        }
        if granted_to.as_ref().is_some_and(|g| g.session_id != own.session_id) {
            // Another session's grants are its state: 403, as its wakes are.
            return Err(ApiError::forbidden("a session token may only address its own session"));
        }
        // Its own session's frames it may list, as it may list its session.
        granted_to = granted_to.or(Some(SessionScope::session(own.session_id)));
    }
    // A page ends at its limit, or once its records reach
    // `LIST_PAGE_BYTES`; either way it names where the next one starts.
    let page = match (granted_to, originated_by) {
        (Some(_), Some(_)) => {
            return Err(cairn_core::CairnError::InvalidFilter(
                "`granted_to` and `originated_by` are different lenses; pass one".into(),
            )
            .into())
        }
        (Some(scope), None) => {
            let granted = state.processes.list_granted_to(&scope, &filter).await?;
            let (grants, processes) = granted.items.into_iter().map(|g| (g.grant, g.process)).unzip();
            ListPage {
                processes,
                grants: Some(grants),
                next_after_id: granted.next_after_id,
            }
        }
        (None, Some(scope)) => {
            let listed = state.processes.list_originated_by(&scope, &filter).await?;
            ListPage {
                processes: listed.items,
                grants: None,
                next_after_id: listed.next_after_id,
            }
        }
        (None, None) => {
            let listed = state.processes.list(&filter).await?;
            ListPage {
                processes: listed.items,
                grants: None,
                next_after_id: listed.next_after_id,
            }
        }
    };
    Ok(Json(page))
}

/// `GET /v1/processes/{id}`.
#[utoipa::path(get, path = "/v1/processes/{id}", tag = "processes",
    params(("id" = String, Path, description = "Process id")),
    responses(
        (status = 200, description = "The process record (SPEC §12)", body = ProcessRecord),
        (status = 404, description = "unknown_process", body = ErrorSchema),
        (status = 410, description = "no_longer_retained, with the tombstone", body = ErrorSchema)))]
pub async fn get(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ProcessRecord>> {
    check_visible(&state, &caller, &id).await?;
    Ok(Json(state.processes.get(&id).await?))
}

/// `GET /v1/processes/{id}/events`: a page of JSON, or a live SSE stream when
/// the client accepts `text/event-stream`.
#[utoipa::path(get, path = "/v1/processes/{id}/events", tag = "events",
    params(("id" = String, Path, description = "Process id"), EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Streams: resume after this sequence (wins over `after`)")),
    responses(
        (status = 200, description = "JSON: one page of events. With `Accept: text/event-stream`: an SSE stream whose events carry `id` = sequence and `data` = the event JSON; it closes after the terminal event", content((EventPage = "application/json"), (String = "text/event-stream"))),
        (status = 204, description = "With `Accept: text/event-stream`, of an ended process whose log ends at or before `Last-Event-ID` (or `after`): nothing more will come (an `EventSource` stops reconnecting)"),
        (status = 404, description = "unknown_process", body = ErrorSchema)))]
pub async fn events(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    within_int64("after", q.after)?;
    check_visible(&state, &caller, &id).await?;
    if wants_event_stream(&headers) {
        let after = match headers.get("last-event-id") {
            Some(v) => {
                let given = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
                let n = given.parse::<u64>().map_err(|_| {
                    ApiError::invalid_request(if !given.is_empty() && given.bytes().all(|b| b.is_ascii_digit()) {
                        format!(
                            "`Last-Event-ID` is {given}, over the largest accepted value {}",
                            i64::MAX
                        )
                    } else {
                        format!(
                            "`Last-Event-ID` must be a non-negative integer (an event sequence number), got `{given}`"
                        )
                    })
                })?;
                within_int64("Last-Event-ID", Some(n))?;
                n
            }
            None => q.after.unwrap_or(0),
        };
        // Fail fast on an unknown or pruned id before committing to a stream.
        let record = state.processes.get(&id).await?;
        cairn_core::page_limit(q.limit)?;
        // An ended process's log has nothing after `after`: 204 tells an
        // `EventSource` (which reconnects when a stream closes) to stop.
        if record.is_terminal() && record.last_sequence <= after {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        return Ok(sse::stream(state.clone(), caller, id, after, q.limit).into_response());
    }
    let page = state.processes.events(&id, q.after.unwrap_or(0), q.limit).await?;
    Ok(Json(page).into_response())
}

/// Whether the client's `Accept` prefers `text/event-stream` to JSON (RFC 9110
/// §12.5.1: quality values, `q=0` refuses a type, the more specific range
/// wins, ties go to the one listed first). `*/*`, no `Accept`, one that names
/// neither, or one that does not parse get JSON. Either type may name
/// `charset=utf-8`, the only one served.
fn wants_event_stream(headers: &HeaderMap) -> bool {
    use mediatype::{names, MediaType, Value};
    let Some(utf_8) = Value::new("utf-8") else {
        return false;
    };
    let utf_8 = [(names::CHARSET, utf_8)];
    let served = [
        MediaType::new(names::APPLICATION, names::JSON),
        MediaType::from_parts(names::APPLICATION, names::JSON, None, &utf_8),
        MediaType::new(names::TEXT, names::EVENT_STREAM),
        MediaType::from_parts(names::TEXT, names::EVENT_STREAM, None, &utf_8),
    ];
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return false;
    }
    // Media types and charset names are case-insensitive: one case matches.
    match values.join(", ").to_ascii_lowercase().parse::<headers_accept::Accept>() {
        Ok(accept) => accept
            .negotiate(&served)
            .is_some_and(|m| m.subty == names::EVENT_STREAM),
        Err(_) => false,
    }
}

/// `GET /v1/processes/{id}/await`: the record once terminal, or the still-running
/// record when the timeout passes (or the server shuts down) first.
#[utoipa::path(get, path = "/v1/processes/{id}/await", tag = "processes",
    params(("id" = String, Path, description = "Process id"), AwaitQuery),
    responses(
        (status = 200, description = "The record: terminal, or still running when the timeout passed first", body = ProcessRecord),
        (status = 404, description = "unknown_process", body = ErrorSchema)))]
pub async fn await_terminal(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<AwaitQuery>,
) -> ApiResult<Json<ProcessRecord>> {
    within_int64("timeout_ms", q.timeout_ms)?;
    check_visible(&state, &caller, &id).await?;
    let timeout = q
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_AWAIT)
        .min(state.limits.max_await);
    let started = Instant::now();
    let open = state.metrics.await_opened();
    let record = tokio::select! {
        r = state.processes.await_output(&id, timeout) => r?,
        _ = state.shutdown.cancelled() => state.processes.get(&id).await?,
    };
    drop(open);
    state.metrics.await_latency.observe(started.elapsed().as_secs_f64());
    // A grant moved or revoked while the session waited: what it answers is
    // no longer the session's to read (the event stream asks again before
    // each page, too).
    check_visible(&state, &caller, &id).await?;
    Ok(Json(record))
}

/// `POST /v1/processes/{id}/events`: append a declared event (external owners).
#[utoipa::path(post, path = "/v1/processes/{id}/events", tag = "events",
    params(("id" = String, Path, description = "Process id")),
    request_body = AppendBody,
    responses(
        (status = 200, description = "The event, whether a replay key matched an earlier append, and the wake written with it", body = AppendResult),
        (status = 400, description = "undeclared_event_type, reserved_event_type, schema_violation, terminal_needs_authority, invalid_outcome; invalid_request for a `signal.{name}` event without the replay key `signal:{name}:{signal_id}` (signals are sent with their id, through the signals route), and for a session token's `process.completed`, `process.failed` or `process.cancelled` (a session ends its external work with `/complete`, which records it as the session)", body = ErrorSchema),
        (status = 404, description = "unknown_process", body = ErrorSchema),
        (status = 409, description = "replay_conflict or process_terminal", body = ErrorSchema),
        (status = 413, description = "payload_too_large", body = ErrorSchema)))]
pub async fn append(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<AppendBody>,
) -> ApiResult<Json<AppendResult>> {
    check_visible(&state, &caller, &id).await?;
    if let (Some(own), Some(target)) = (scope_of_session(&caller), &body.wake_target) {
        if target.session_id != own.session_id {
            return Err(ApiError::invalid_request(
                "a session token may only set a wake target in its own session",
            ));
        }
    }
    // A core terminal event names who ended the process; `complete` records
    // a session as itself, and is the session's only way to write one.
    if scope_of_session(&caller).is_some()
        && [
            cairn_core::events::COMPLETED,
            cairn_core::events::FAILED,
            cairn_core::events::CANCELLED,
        ]
        .contains(&body.event_type.as_str())
    {
        return Err(ApiError::invalid_request(format!(
            "a session token ends an externally owned process with POST /v1/processes/{id}/complete \
             (which records it as the session), not by appending `{}`",
            body.event_type
        )));
    }
    let req = AppendRequest {
        event_type: body.event_type,
        payload: body.payload,
        replay_key: body.replay_key,
        wake_target: body.wake_target,
        lease: None,
    };
    let started = Instant::now();
    let result = state.processes.append_event(&id, req).await;
    state.metrics.append_latency.observe(started.elapsed().as_secs_f64());
    Ok(Json(result?))
}

/// `POST /v1/processes/{id}/signals/{name}`: 200 with the event; a repeated signal id returns the same event.
#[utoipa::path(post, path = "/v1/processes/{id}/signals/{name}", tag = "events",
    params(("id" = String, Path, description = "Process id"), ("name" = String, Path, description = "Signal name: ASCII letters, digits, `_`, `-`")),
    request_body = SignalBody,
    responses(
        (status = 200, description = "The `signal.{name}` event; the same event when the signal id repeats", body = ProcessEvent),
        (status = 400, description = "invalid_signal_name or invalid_id", body = ErrorSchema),
        (status = 404, description = "unknown_process", body = ErrorSchema),
        (status = 409, description = "replay_conflict (same signal id, other payload) or process_terminal", body = ErrorSchema)))]
pub async fn signal(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath((id, name)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<SignalBody>,
) -> ApiResult<Json<ProcessEvent>> {
    check_visible(&state, &caller, &id).await?;
    let started = Instant::now();
    let result = state.processes.signal(&id, &name, &body.signal_id, body.payload).await;
    state.metrics.append_latency.observe(started.elapsed().as_secs_f64());
    Ok(Json(result?))
}

/// `POST /v1/processes/{id}/cancel`: record a cancellation request; answers the record.
#[utoipa::path(post, path = "/v1/processes/{id}/cancel", tag = "processes",
    params(("id" = String, Path, description = "Process id")),
    request_body(content = CancelBody, description = "May be empty"),
    responses(
        (status = 200, description = "The record (cancelled at once when nobody had started it and it is not externally owned; an externally owned process records the request for its owner); also when the same request (same reason) was recorded before the process ended (a retried cancel writes nothing), and when it has ended but the request reached children of it still running", body = ProcessRecord),
        (status = 404, description = "unknown_process", body = ErrorSchema),
        (status = 409, description = "process_terminal: it ended, this request was never recorded, and no child of it still running was left to reach", body = ErrorSchema)))]
pub async fn cancel(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CancelBody>,
) -> ApiResult<Json<ProcessRecord>> {
    check_visible(&state, &caller, &id).await?;
    Ok(Json(state.processes.cancel(&id, body.reason).await?))
}

/// `POST /v1/processes/{id}/complete`: end an externally owned process.
#[utoipa::path(post, path = "/v1/processes/{id}/complete", tag = "processes",
    params(("id" = String, Path, description = "Process id")),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "The terminal record; also when the process already ended with this outcome (a retried completion writes nothing)", body = ProcessRecord),
        (status = 400, description = "invalid_outcome", body = ErrorSchema),
        (status = 404, description = "unknown_process", body = ErrorSchema),
        (status = 409, description = "not_externally_owned, or process_terminal when it ended otherwise", body = ErrorSchema)))]
pub async fn complete(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CompleteBody>,
) -> ApiResult<Json<ProcessRecord>> {
    check_visible(&state, &caller, &id).await?;
    // A session is recorded as itself, but what it names is refused as the
    // host's would be.
    if let Some(named) = &body.authority {
        cairn_core::validate::validate_authority("authority", named)?;
    }
    let authority = caller.acting_as(body.authority);
    Ok(Json(
        state.processes.complete_external(&id, body.outcome, &authority).await?,
    ))
}

/// `POST /v1/processes/{id}/abandon-request`: record an abandon request
/// (the first stands: a later one answers the record and records nothing).
#[utoipa::path(post, path = "/v1/processes/{id}/abandon-request", tag = "processes",
    params(("id" = String, Path, description = "Process id")),
    request_body = AbandonBody,
    responses(
        (status = 200, description = "The record with its abandon request (reconciled once no live lease holds the process)", body = ProcessRecord),
        (status = 404, description = "unknown_process", body = ErrorSchema),
        (status = 409, description = "process_terminal", body = ErrorSchema)))]
pub async fn abandon_request(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<AbandonBody>,
) -> ApiResult<Json<ProcessRecord>> {
    check_visible(&state, &caller, &id).await?;
    // A session is recorded as itself, but what it names is refused as the
    // host's would be.
    if let Some(named) = &body.requested_by {
        cairn_core::validate::validate_authority("requested_by", named)?;
    }
    let requested_by = caller.acting_as(body.requested_by);
    Ok(Json(
        state
            .processes
            .request_abandon(&id, &requested_by, &body.reason)
            .await?,
    ))
}

/// `POST /v1/grants/transfer`: move grants between scopes.
#[utoipa::path(post, path = "/v1/grants/transfer", tag = "sessions",
    request_body = TransferBody,
    responses(
        (status = 200, description = "Which grants moved", body = TransferReport),
        (status = 403, description = "A session token moving another session's grants, or an agent frame's (from or to one)", body = ErrorSchema)))]
pub async fn transfer(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<TransferBody>,
) -> ApiResult<Json<TransferReport>> {
    caller.require_session(&body.from.session_id)?;
    // A session token moves only what is granted to its session as a whole:
    // an agent frame's own grants are the host's to move (the token reads
    // its frames' processes, but the frames' grants are the host's word).
    if matches!(caller, Caller::Session(_)) && (body.from.agent_frame_id.is_some() || body.to.agent_frame_id.is_some())
    {
        return Err(ApiError::forbidden(
            "a session token moves grants only between whole sessions, not from or to an agent frame",
        ));
    }
    Ok(Json(
        state
            .processes
            .transfer(&body.from, &body.to, &body.process_ids)
            .await?,
    ))
}

/// `DELETE /v1/sessions/{session_id}`: remove a session's grants and pending wakes.
#[utoipa::path(delete, path = "/v1/sessions/{session_id}", tag = "sessions",
    params(("session_id" = String, Path, description = "Session id")),
    request_body = AckBody,
    responses(
        (status = 200, description = "What was removed; never cancels anything. The host token's delete removes the grants of every scope of the session; a session token's removes only the grants to the session as a whole (grants the host made to its agent frames stay, and a process a frame still holds is preserved, not orphaned). Either removes the session's pending wakes, its frames' included", body = SessionDeleteReport),
        (status = 403, description = "A session token naming another session", body = ErrorSchema)))]
pub async fn delete_session(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(session_id): ApiPath<String>,
    // Read only to refuse what is not an empty body or `{}`.
    ApiJson(AckBody {}): ApiJson<AckBody>,
) -> ApiResult<Json<SessionDeleteReport>> {
    caller.require_session(&session_id)?;
    // A session token may not move or remove its agent frames' grants (the
    // host made them): its delete takes only the grants to the session as a
    // whole, and the session's pending wakes, which it reads and acknowledges.
    let keep_frames = matches!(caller, Caller::Session(_));
    Ok(Json(
        state.processes.delete_session_with(&session_id, keep_frames).await?,
    ))
}

/// Answer of `POST /v1/sessions/{session_id}/cancel`: counts, never ids (a
/// session's work may be hundreds of thousands of processes).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionCancelReport {
    /// Running processes granted to the session, and their running
    /// descendants, whose cancellation this call requested. One that
    /// already carried a request is not requested again and not counted.
    pub requested: u64,
    /// Of those, the ones that ended `cancelled` at once (nobody had started them).
    pub cancelled_now: u64,
}

/// `POST /v1/sessions/{session_id}/cancel`: request cancellation of every
/// running process granted to the session as a whole.
#[utoipa::path(post, path = "/v1/sessions/{session_id}/cancel", tag = "sessions",
    params(("session_id" = String, Path, description = "Session id")),
    request_body(content = CancelBody, description = "May be empty"),
    responses(
        (status = 200, description = "How many running processes granted to the session (`session:{id}`, not its agent frames': cancel those by id) and their running descendants (SPEC §13) had their cancellation requested by this call, and how many of them ended at once. A process that already carries a cancellation request is skipped and not counted, whatever its reason. A child started under a process whose cancellation was requested is born cancelled, so work that starts copies of itself stops. Zero counts for a session with nothing running or nothing left to request. The requests go on to the end when the client hangs up; a failure part way leaves those made, and a retry requests only what they did not reach", body = SessionCancelReport),
        (status = 403, description = "A session token naming another session", body = ErrorSchema)))]
pub async fn cancel_session(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(session_id): ApiPath<String>,
    ApiJson(body): ApiJson<CancelBody>,
) -> ApiResult<Json<SessionCancelReport>> {
    caller.require_session(&session_id)?;
    let scope = SessionScope::session(session_id);
    // In a task of its own: a client that hangs up part way does not stop
    // the requests (the handler's future would be dropped with it).
    let processes = state.processes.clone();
    let report = to_the_end("the session's cancel", async move {
        processes.cancel_all(&scope, body.reason).await
    })
    .await?;
    Ok(Json(SessionCancelReport {
        requested: report.requested,
        cancelled_now: report.cancelled_now,
    }))
}

/// Run `work` to its end in a task of its own, whether or not the client
/// waits for the answer (a handler's future is dropped when it hangs up).
pub(crate) async fn to_the_end<T: Send + 'static>(
    what: &str,
    work: impl std::future::Future<Output = cairn_core::Result<T>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work)
        .await
        .map_err(|e| cairn_core::CairnError::Unavailable(format!("{what} stopped: {e}")))?
        .map_err(ApiError::from)
}

/// `GET /v1/sessions/{session_id}/wakes`: pending wakes, oldest first.
#[utoipa::path(get, path = "/v1/sessions/{session_id}/wakes", tag = "sessions",
    params(("session_id" = String, Path, description = "Session id"), WakesQuery),
    responses(
        (status = 200, description = "Pending wakes, oldest first", body = WakesPage),
        (status = 403, description = "A session token naming another session", body = ErrorSchema)))]
pub async fn wakes(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(session_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WakesQuery>,
) -> ApiResult<Json<WakesPage>> {
    caller.require_session(&session_id)?;
    Ok(Json(WakesPage {
        wakes: state.processes.wakes(&session_id, q.limit).await?,
    }))
}

/// `POST /v1/sessions/{session_id}/wakes/{wake_id}/ack`.
#[utoipa::path(post, path = "/v1/sessions/{session_id}/wakes/{wake_id}/ack", tag = "sessions",
    params(("session_id" = String, Path, description = "Session id"), ("wake_id" = String, Path, description = "Wake id")),
    request_body = AckBody,
    responses(
        (status = 200, description = "Acknowledged (or already acknowledged)", body = AckAnswer),
        (status = 404, description = "unknown_wake", body = ErrorSchema)))]
pub async fn ack_wake(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath((session_id, wake_id)): ApiPath<(String, String)>,
    // Read only to refuse what is not an empty body or `{}`.
    ApiJson(AckBody {}): ApiJson<AckBody>,
) -> ApiResult<Json<AckAnswer>> {
    caller.require_session(&session_id)?;
    Ok(Json(AckAnswer {
        acked: state.processes.ack_wake(&session_id, &wake_id).await?,
    }))
}

/// `POST /v1/prune`: retention (host only).
#[utoipa::path(post, path = "/v1/prune", tag = "retention",
    request_body = PruneBody,
    responses(
        (status = 200, description = "What was deleted", body = PruneReport),
        (status = 400, description = "invalid_filter: a filter of the wrong JSON kind, status running, or a value no process can have; invalid_request: the rest of the body", body = ErrorSchema),
        (status = 403, description = "Host only", body = ErrorSchema)))]
pub async fn prune(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<PruneBody>,
) -> ApiResult<Json<PruneReport>> {
    caller.require_host("prune")?;
    within_int64("cutoff_ms", Some(body.cutoff_ms))?;
    if let Watermark::Cursor { cursor } = &body.watermark {
        within_int64("watermark.cursor", Some(*cursor))?;
    }
    let filter = PruneFilter {
        status: body.status.read("status", PruneStatus(StatusFilter::Any))?.0,
        definition: body.definition.read("definition", None)?,
        originator: body.originator.read("originator", None)?,
        caused_by: body.caused_by.read("caused_by", None)?,
        created_from_ms: body.created_from_ms.read("created_from_ms", None)?,
        created_before_ms: body.created_before_ms.read("created_before_ms", None)?,
    };
    for (key, at) in [
        ("created_from_ms", filter.created_from_ms),
        ("created_before_ms", filter.created_before_ms),
    ] {
        // Past the stores' signed 64 bits: refused as the list's query refuses it.
        if let Some(v) = at.filter(|v| i64::try_from(*v).is_err()) {
            return Err(cairn_core::CairnError::InvalidFilter(format!(
                "`{key}` is {v}, over the largest accepted value {}",
                i64::MAX
            ))
            .into());
        }
    }
    Ok(Json(
        state.processes.prune(body.cutoff_ms, filter, body.watermark).await?,
    ))
}

/// `GET /v1/changes`: the change feed (host only).
#[utoipa::path(get, path = "/v1/changes", tag = "retention",
    params(ChangesQuery),
    responses(
        (status = 200, description = "Changed records in cursor order", body = ChangePage),
        (status = 403, description = "Host only", body = ErrorSchema)))]
pub async fn changes(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> ApiResult<Json<ChangePage>> {
    caller.require_host("the change feed")?;
    within_int64("cursor", q.cursor)?;
    Ok(Json(
        state.processes.changed_since(q.cursor.unwrap_or(0), q.limit).await?,
    ))
}

/// How long the readiness check waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /healthz`: ready when the database answers a read within 5 s.
#[utoipa::path(get, path = "/healthz", tag = "ops", operation_id = "health",
    responses(
        (status = 200, description = "Ready: the server answers and its database answered a read", body = Health),
        (status = 503, description = "unavailable: the database did not answer (in time)", body = ErrorSchema)))]
pub async fn healthz(State(state): Shared) -> ApiResult<Json<Health>> {
    let probe = ProcessFilter {
        limit: Some(1),
        ..ProcessFilter::default()
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, state.processes.list(&probe)).await {
        Ok(Ok(_)) => Ok(Json(Health {
            status: "ok".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })),
        // The database's own words (a schema, a relation, a role) are the
        // operator's, in the log; this route answers anyone.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness probe: the database did not answer");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database did not answer (the server's log says why)",
            ))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the database did not answer within {HEALTH_TIMEOUT:?}"),
        )),
    }
}

/// `GET /metrics` (host only): the OpenMetrics text format, or the classic
/// Prometheus text format (0.0.4) when the `Accept` header prefers
/// `text/plain` ([`super::metrics::Exposition::negotiate`]).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "OpenMetrics text format; the classic Prometheus text format (`text/plain; version=0.0.4`) when `Accept` prefers `text/plain` to `application/openmetrics-text`", content((String = "application/openmetrics-text"), (String = "text/plain"))),
        (status = 403, description = "Host only", body = ErrorSchema)))]
pub async fn metrics(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require_host("metrics")?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = super::metrics::Exposition::negotiate(accept);
    let text = format.text(state.metrics.render(&state.processes).await?);
    Ok((
        [(header::CONTENT_TYPE, format.content_type()), (header::VARY, "accept")],
        text,
    )
        .into_response())
}

/// Unknown routes. A path under a collection of named things most often
/// holds an id with a `/` in it unencoded (a script's child is `{id}/{n}`),
/// which reads as more path: said how to name it.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    const NAMED: [&str; 4] = ["/v1/processes/", "/v1/schedules/", "/v1/sessions/", "/v1/modules/"];
    if NAMED.iter().any(|named| uri.path().starts_with(named)) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route (an id holding `/`, as a script's child `{id}/{n}` does, is one path segment: \
             percent-encode its `/` as `%2F`, e.g. `/v1/processes/deploy%2F1`)",
        );
    }
    ApiError::no_route()
}

/// Known routes with another method.
pub async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{auth::Auth, metrics::Metrics, Limits};

    /// A store that does not answer at all (a stalled database, not one
    /// that answers with an error) makes `/healthz` answer 503 `unavailable`
    /// once its bound (`HEALTH_TIMEOUT`) passes, not after the store's own
    /// call timeout (30 s on PostgreSQL), past a load balancer's probe.
    #[tokio::test]
    async fn readiness_of_a_stalled_store_answers_within_its_bound() {
        let probe = cairn_testkit::probe::ReadProbe::new(Arc::new(cairn_core::MemoryRegistry::new()));
        let processes = cairn_core::Processes::builder(probe.clone()).without_worker().start();
        let state = Arc::new(AppState {
            processes,
            auth: Auth::new(None, &[]),
            metrics: Arc::new(Metrics::new("memory")),
            limits: Limits::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            mcp_shutdown: tokio_util::sync::CancellationToken::new(),
            tools: Vec::new(),
            module_puts: Default::default(),
        });
        let ready = healthz(State(state.clone())).await.expect("the store answers");
        assert_eq!(ready.0.status, "ok");

        probe.hang_lists(true);
        let said = tokio::time::timeout(Duration::from_secs(15), healthz(State(state)))
            .await
            .expect("the readiness check answered, not waiting on the store")
            .expect_err("a store that does not answer is not ready");
        assert_eq!(said.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(said.code, "unavailable");
        assert_eq!(said.message, "the database did not answer within 5s");
    }
}
