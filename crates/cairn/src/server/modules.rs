//! Script modules (SPEC §14): `POST /v1/modules`, `GET /v1/modules`,
//! `GET /v1/modules/{ref}`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_core::{Module, ModuleInfo};
use serde::{Deserialize, Serialize};

use super::api::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorSchema};
use super::auth::Caller;
use super::routes::{ApiResult, Shared};

/// The sessions with a module put pending (queued for the compiler or
/// compiling). Compiles run one at a time server-wide and each may run a
/// module's top level up to the script CPU limit, so one session queueing
/// many would hold every other caller's put behind them: a session token
/// stores one module at a time. The host is not limited.
#[derive(Debug, Default)]
pub struct PutsInFlight(Arc<Mutex<HashSet<String>>>);

impl PutsInFlight {
    /// Mark `session` as storing a module until the answer is dropped (the
    /// put has ended, whether or not its client waited); 429 when it is
    /// already.
    fn hold(&self, session: &str) -> Result<PutHeld, ApiError> {
        let mut pending = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !pending.insert(session.to_string()) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("session `{session}` is already storing a module; store one at a time"),
            ));
        }
        Ok(PutHeld {
            puts: Arc::clone(&self.0),
            session: session.to_string(),
        })
    }
}

/// A session's pending put, released when dropped.
struct PutHeld {
    puts: Arc<Mutex<HashSet<String>>>,
    session: String,
}

impl Drop for PutHeld {
    fn drop(&mut self) {
        let mut pending = self.puts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.remove(&self.session);
    }
}

/// Body of `POST /v1/modules`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(expecting = "a module: an object with `source`", deny_unknown_fields)]
pub struct ModuleBody {
    /// The JavaScript module source (at most 1 MiB of UTF-8).
    pub source: String,
    /// A name to show with it (kept from the first put of that source).
    #[serde(default)]
    pub name: Option<String>,
}

/// Query of `GET /v1/modules`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ModulesQuery {
    /// The last module ref of the previous page (`module:sha256:{hex}`).
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A page of modules, without sources, in ref order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModulesPage {
    /// The modules.
    pub modules: Vec<ModuleInfo>,
    /// The ref to pass as `after` for the next page: set whenever the page is
    /// full (the next page may then be empty), null on a shorter one.
    pub next_after: Option<String>,
}

/// `POST /v1/modules`: compile and store a module; 201, or 200 when that
/// source is stored already.
#[utoipa::path(post, path = "/v1/modules", tag = "modules", request_body = ModuleBody,
    responses(
        (status = 201, description = "Stored", body = ModuleInfo),
        (status = 200, description = "That source was stored already", body = ModuleInfo),
        (status = 400, description = "invalid_module (line and column in the message), invalid_request", body = ErrorSchema),
        (status = 413, description = "payload_too_large: the source is over 1 MiB", body = ErrorSchema),
        (status = 429, description = "too_many_requests: a session token whose session is already storing a module (compiles run one at a time on the server, so a session stores one module at a time); nothing was stored. The host token is not limited", body = ErrorSchema)))]
pub async fn put(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<ModuleBody>,
) -> ApiResult<Response> {
    let held = match &caller {
        Caller::Session(session) => Some(state.module_puts.hold(session)?),
        Caller::Host => None,
    };
    // In a task of its own that holds the session's turn: a client that
    // hangs up drops this future, not the compile, and the turn is free
    // only once the compile is done.
    let processes = state.processes.clone();
    let put = super::routes::to_the_end("the module put", async move {
        let _held = held;
        processes.put_module(body.source, body.name).await
    })
    .await?;
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(put.module)).into_response())
}

/// `GET /v1/modules`: stored modules without their sources.
#[utoipa::path(get, path = "/v1/modules", tag = "modules", params(ModulesQuery),
    responses(
        (status = 200, description = "One page, in ref order", body = ModulesPage),
        (status = 400, description = "invalid_page: a bad `limit`; invalid_id: an `after` that is not a module ref", body = ErrorSchema)))]
pub async fn list(
    State(state): Shared,
    Extension(_caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ModulesQuery>,
) -> ApiResult<Json<ModulesPage>> {
    if let Some(after) = &q.after {
        // Refused as a bad id, as the schedules' listing refuses its
        // cursor: `invalid_page` is a bad `limit`.
        cairn_core::script::validate_module_ref(after).map_err(|e| match e {
            cairn_core::CairnError::InvalidId(why) => {
                cairn_core::CairnError::InvalidId(format!("`after` is the last module ref of a page: {why}"))
            }
            other => other,
        })?;
    }
    let limit = cairn_core::model::page_limit(q.limit)?;
    let modules = state.processes.list_modules(q.after.as_deref(), Some(limit)).await?;
    let next_after = super::api::next_page(&modules, limit, |m| &m.module_ref);
    Ok(Json(ModulesPage { modules, next_after }))
}

/// `GET /v1/modules/{ref}`: one module with its source.
#[utoipa::path(get, path = "/v1/modules/{module_ref}", tag = "modules",
    params(("module_ref" = String, Path, description = "`module:sha256:{hex}`")),
    responses(
        (status = 200, description = "The module", body = Module),
        (status = 400, description = "invalid_id: not a module ref", body = ErrorSchema),
        (status = 404, description = "unknown_module", body = ErrorSchema)))]
pub async fn get(
    State(state): Shared,
    Extension(_caller): Extension<Caller>,
    ApiPath(module_ref): ApiPath<String>,
) -> ApiResult<Json<Module>> {
    Ok(Json(state.processes.get_module(&module_ref).await?))
}
