//! `GET /openapi.json`: the API description, generated from the handler and body types.

use axum::Json;
use utoipa::OpenApi;

use super::routes;

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cairn",
        description = "Durable process runtime for AI agent hosts (SPEC §10, §12)."
    ),
    components(schemas(
        routes::AppendBody,
        routes::SignalBody,
        routes::CancelBody,
        routes::CompleteBody,
        routes::AbandonBody,
        routes::TransferBody,
        routes::PruneBody,
        routes::ListPage,
        routes::WakesPage,
        routes::AckAnswer,
        routes::Health,
    ))
)]
pub struct ApiDoc;

/// Serve the document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
