//! The schedule resources of SPEC §18, a thin layer over the schedule methods
//! of [`cairn_core::Processes`]. Schedules belong to the host: a session
//! token is refused (403).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_core::{Schedule, SchedulePage, ScheduleRequest};
use serde::Deserialize;
use serde_json::Value;

use super::api::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorSchema};
use super::auth::Caller;
use super::AppState;

type Shared = State<Arc<AppState>>;
type ApiResult<T> = Result<T, ApiError>;

const WHAT: &str = "schedules";

/// Query of `GET /v1/schedules`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScheduleListQuery {
    /// Only schedules with a greater id (the previous page's `next_after`).
    pub after: Option<String>,
    /// Page size (default 100, at most 1000). A page also stops once its
    /// schedules reach 4 MiB of JSON (so it holds at most that and one
    /// schedule more), saying where the next one starts in `next_after`.
    pub limit: Option<usize>,
}

/// `POST /v1/schedules`: 201 created, 200 for a repeated identical create.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules",
    request_body = ScheduleRequest,
    responses(
        (status = 201, description = "Created: the schedule", body = Schedule),
        (status = 200, description = "The same schedule created again: the stored one", body = Schedule),
        (status = 400, description = "invalid_request: a bad cron, timezone or interval, or a template with `id`; a template a start would refuse answers the start's own 400 code (invalid_disposition, invalid_id, invalid_schema, reserved_event_type, ...)", body = ErrorSchema),
        (status = 403, description = "A session token", body = ErrorSchema),
        (status = 404, description = "unknown_tool, unknown_module or unknown_model: the template names what this server does not have", body = ErrorSchema),
        (status = 409, description = "schedule_conflict: the id exists with another definition", body = ErrorSchema)))]
pub async fn create(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    caller.require_host(WHAT)?;
    let request = ScheduleRequest::from_json(body)?;
    let (schedule, created) = state.processes.create_schedule(request).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(schedule)).into_response())
}

/// `GET /v1/schedules`: one page in id order.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    params(ScheduleListQuery),
    responses(
        (status = 200, description = "A page of schedules", body = SchedulePage),
        (status = 400, description = "invalid_page", body = ErrorSchema),
        (status = 403, description = "A session token", body = ErrorSchema)))]
pub async fn list(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ScheduleListQuery>,
) -> ApiResult<Json<SchedulePage>> {
    caller.require_host(WHAT)?;
    // A page ends at its limit, or once its schedules reach
    // `LIST_PAGE_BYTES`; either way it names where the next one starts.
    let listed = state.processes.list_schedules(q.after.as_deref(), q.limit).await?;
    Ok(Json(SchedulePage {
        schedules: listed.items,
        next_after: listed.next_after_id,
    }))
}

/// `GET /v1/schedules/{id}`.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The schedule", body = Schedule),
        (status = 403, description = "A session token", body = ErrorSchema),
        (status = 404, description = "unknown_schedule", body = ErrorSchema)))]
pub async fn get(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Schedule>> {
    caller.require_host(WHAT)?;
    Ok(Json(state.processes.get_schedule(&id).await?))
}

/// `DELETE /v1/schedules/{id}`: the processes it started stay.
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    request_body = EmptyBody,
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "A session token", body = ErrorSchema),
        (status = 404, description = "unknown_schedule", body = ErrorSchema)))]
pub async fn delete(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    // Read only to refuse what is not an empty body or `{}`.
    ApiJson(EmptyBody {}): ApiJson<EmptyBody>,
) -> ApiResult<StatusCode> {
    caller.require_host(WHAT)?;
    state.processes.delete_schedule(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /v1/schedules/{id}/pause` and `/resume`: empty, or `{}`.
#[derive(Debug, Default, serde::Serialize, Deserialize, utoipa::ToSchema)]
#[serde(expecting = "an empty object", deny_unknown_fields)]
pub struct EmptyBody {}

/// `POST /v1/schedules/{id}/pause`.
#[utoipa::path(post, path = "/v1/schedules/{id}/pause", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    request_body = EmptyBody,
    responses(
        (status = 200, description = "The paused schedule", body = Schedule),
        (status = 403, description = "A session token", body = ErrorSchema),
        (status = 404, description = "unknown_schedule", body = ErrorSchema)))]
pub async fn pause(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    // Read only to refuse what is not an empty body or `{}`.
    ApiJson(EmptyBody {}): ApiJson<EmptyBody>,
) -> ApiResult<Json<Schedule>> {
    caller.require_host(WHAT)?;
    Ok(Json(state.processes.pause_schedule(&id).await?))
}

/// `POST /v1/schedules/{id}/resume`: fires again from its first fire time after now.
#[utoipa::path(post, path = "/v1/schedules/{id}/resume", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    request_body = EmptyBody,
    responses(
        (status = 200, description = "The resumed schedule", body = Schedule),
        (status = 403, description = "A session token", body = ErrorSchema),
        (status = 404, description = "unknown_schedule", body = ErrorSchema)))]
pub async fn resume(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    // Read only to refuse what is not an empty body or `{}`.
    ApiJson(EmptyBody {}): ApiJson<EmptyBody>,
) -> ApiResult<Json<Schedule>> {
    caller.require_host(WHAT)?;
    Ok(Json(state.processes.resume_schedule(&id).await?))
}
