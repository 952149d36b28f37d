//! The embedded assets: htmx and its SSE extension (vendored, unchanged; see
//! `assets/vendor/LICENSE-htmx`), the stylesheet and a few lines of page script.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const HTMX: &str = include_str!("../assets/vendor/htmx-2.0.11.min.js");
const HTMX_SSE: &str = include_str!("../assets/vendor/htmx-ext-sse-2.2.4.min.js");
const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");

/// A year: a vendored file's name carries its version, so it never changes.
const FOREVER: &str = "public, max-age=31536000, immutable";

/// The entity tag of `body`: its SHA-256, quoted.
fn etag_of(body: &str) -> String {
    use sha2::Digest;
    format!("\"{}\"", hex::encode(&sha2::Sha256::digest(body.as_bytes())[..16]))
}

static CSS_TAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| etag_of(CSS));
static JS_TAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| etag_of(JS));

/// `GET /ui/assets/{name}`. Vendored files carry their versions in their
/// names and are cached for good; the stylesheet and page script keep their
/// names across releases, so a browser asks again each time, and a copy it
/// holds (its `ETag` still current) is answered 304 without the body.
pub(crate) async fn serve(Path(name): Path<String>, headers: axum::http::HeaderMap) -> Response {
    let (body, kind, tag) = match name.as_str() {
        "htmx-2.0.11.min.js" => (HTMX, "text/javascript; charset=utf-8", None),
        "htmx-ext-sse-2.2.4.min.js" => (HTMX_SSE, "text/javascript; charset=utf-8", None),
        "app.css" => (CSS, "text/css; charset=utf-8", Some(CSS_TAG.as_str())),
        "app.js" => (JS, "text/javascript; charset=utf-8", Some(JS_TAG.as_str())),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    let Some(tag) = tag else {
        return (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, FOREVER),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body,
        )
            .into_response();
    };
    let held = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let head = [
        (header::CONTENT_TYPE, kind),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::ETAG, tag),
    ];
    if held {
        return (StatusCode::NOT_MODIFIED, head).into_response();
    }
    (head, body).into_response()
}
