//! `GET /openapi.json`: the API description, generated from the handlers' path
//! annotations, the server's own body types and the cairn-core wire types
//! (which derive their schemas under cairn-core's `openapi` feature), so the
//! document cannot drift from what the server serializes.

use axum::Json;
use utoipa::OpenApi;

use super::{api, routes};

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cairn",
        description = "Durable process runtime for AI agent hosts. Errors are always \
            `{\"error\":{\"code\",\"message\"}}`. Auth: `Authorization: Bearer TOKEN` (host or session token) \
            unless the server runs open on loopback."
    ),
    paths(
        routes::start,
        routes::list,
        routes::get,
        routes::events,
        routes::await_terminal,
        routes::append,
        routes::signal,
        routes::cancel,
        routes::complete,
        routes::abandon_request,
        routes::transfer,
        routes::delete_session,
        routes::wakes,
        routes::ack_wake,
        routes::prune,
        routes::changes,
        routes::healthz,
        routes::metrics,
    ),
    components(schemas(api::ErrorSchema, api::ErrorDetailSchema))
)]
pub struct ApiDoc;

/// Serve the document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
