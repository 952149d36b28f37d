//! The embedded assets: htmx and its SSE extension (vendored, unchanged; see
//! `assets/vendor/LICENSE-htmx`), the stylesheet and a few lines of page script.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const HTMX: &str = include_str!("../assets/vendor/htmx-2.0.11.min.js");
const HTMX_SSE: &str = include_str!("../assets/vendor/htmx-ext-sse-2.2.4.min.js");
const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");

/// `GET /ui/assets/{name}`. The names carry versions, so they may be cached.
pub(crate) async fn serve(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "htmx-2.0.11.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "htmx-ext-sse-2.2.4.min.js" => (HTMX_SSE, "text/javascript; charset=utf-8"),
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "app.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
