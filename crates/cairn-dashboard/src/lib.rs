//! The cairn web dashboard (SPEC §17): server-rendered pages at `/ui` over the
//! [`Processes`] facade, with htmx (vendored, embedded) for partial updates.
//!
//! - **Processes**: the filters of SPEC §4, newest first, paged, kept live by the
//!   change feed (one server-wide follower, fanned out to every open list).
//! - **A process**: record, outcome, wait, lease, disposition, provenance, and its
//!   event timeline streamed over SSE; while it runs, signal, cancel, abandon
//!   request and external completion, each answering the server's error verbatim
//!   when refused.
//! - **Sessions**: granted-to and originated-by lists, pending wakes with acknowledge.
//! - **Modules**: each stored script module's exports and source, and the
//!   newest scripts started from each export, linked to the filtered list.
//! - **Schedules** (host only): spec, overlap, state, next and last fire, the last
//!   process started, with pause and resume.
//!
//! The crate decides nothing about who may see what: the embedding server gives it
//! an [`Access`] that resolves tokens and answers visibility exactly as its API does.
//! With tokens configured, a login page takes a token once and keeps a login
//! in the server's memory, named by a random id in an HttpOnly,
//! SameSite=Strict cookie (never the token); every state-changing request
//! carries a CSRF token (an HMAC of the login id under a key drawn at start). Forms and queries are read as the API reads bodies and
//! queries: a field or parameter a route does not take, or one given twice,
//! is refused (400, naming it) before anything is done, and a form of another
//! content type is 415.
//!
//! ```no_run
//! # async fn demo(processes: cairn_core::Processes, access: std::sync::Arc<dyn cairn_dashboard::Access>) {
//! let notice = cairn_dashboard::ChangeNotice::new(); // its `sink()` goes to the runtime builder
//! let ui = cairn_dashboard::Dashboard::new(processes, access, notice, Default::default());
//! let app: axum::Router = axum::Router::new().merge(ui.router());
//! # }
//! ```

use std::sync::Arc;

use axum::Router;
use cairn_core::Processes;
use tokio_util::sync::CancellationToken;

mod actions;
mod assets;
mod auth;
mod input;
mod list;
mod live;
mod modules;
mod pages;
mod process;
mod schedules;
mod sessions;
mod time;

pub use auth::{cookie_name, Access, Viewer, COOKIE, CSRF_HEADER};
pub use live::ChangeNotice;

/// Where the dashboard is mounted; every route it serves starts with this.
pub const BASE: &str = "/ui";

/// The dashboard: build it once per server and merge [`Dashboard::router`].
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub processes: Processes,
    pub access: Arc<dyn Access>,
    pub csrf: auth::CsrfKey,
    pub logins: auth::Logins,
    pub feed: live::Feed,
    pub shutdown: CancellationToken,
}

pub(crate) type Shared = axum::extract::State<Arc<Inner>>;

impl Dashboard {
    /// A dashboard over `processes`. `notice` must follow the runtime's hub
    /// ([`ChangeNotice::from_hub`]) or be the one whose [`ChangeNotice::sink`]
    /// the runtime was built with, so the list learns of changes as they commit. `shutdown` ends the live streams so a graceful
    /// shutdown is not held open by a browser tab. Must be called inside a tokio
    /// runtime (it starts the change follower, which reads only while a list page
    /// is open).
    pub fn new(
        processes: Processes,
        access: Arc<dyn Access>,
        notice: ChangeNotice,
        shutdown: CancellationToken,
    ) -> Self {
        let feed = live::Feed::start(processes.clone(), notice, shutdown.clone());
        Self {
            inner: Arc::new(Inner {
                processes,
                access,
                csrf: auth::CsrfKey::random(),
                logins: auth::Logins::new(),
                feed,
                shutdown,
            }),
        }
    }

    /// Every route under [`BASE`], its own state applied (so it merges into a
    /// router of any state).
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        use axum::routing::{get, post};
        let gated = Router::new()
            .route("/ui", get(list::page))
            .route("/ui/processes", get(list::page))
            .route("/ui/list/rows", get(list::rows))
            .route("/ui/list/live", get(live::list_stream))
            .route("/ui/processes/{id}", get(process::page))
            .route("/ui/processes/{id}/", get(process_without_slash))
            .route("/ui/processes/{id}/record", get(process::record))
            .route("/ui/processes/{id}/live", get(live::process_stream))
            .route("/ui/processes/{id}/signal", post(actions::signal))
            .route("/ui/processes/{id}/cancel", post(actions::cancel))
            .route("/ui/processes/{id}/abandon", post(actions::abandon))
            .route("/ui/processes/{id}/complete", post(actions::complete))
            .route("/ui/sessions", get(sessions::page))
            .route("/ui/sessions/{session_id}/wakes/{wake_id}/ack", post(sessions::ack))
            .route("/ui/modules", get(modules::page))
            .route("/ui/modules/{module_ref}", get(modules::one))
            .route("/ui/modules/{module_ref}/", get(module_without_slash))
            .route("/ui/schedules", get(schedules::page))
            .route("/ui/schedules/{id}/pause", post(schedules::pause))
            .route("/ui/schedules/{id}/resume", post(schedules::resume))
            .route("/ui/logout", post(auth::logout))
            // Any other path under /ui is a page that is not there, said as a page.
            .route("/ui/{*rest}", axum::routing::any(pages::not_found))
            .route_layer(axum::middleware::from_fn_with_state(self.inner.clone(), auth::gate));
        let mut open = Router::new()
            .route("/ui/login", get(auth::login_page).post(auth::login))
            .route("/ui/assets/{name}", get(assets::serve));
        // A page's address with a slash after it (as people and browsers
        // add one) is that page, with the same query.
        for page in ["/ui", "/ui/processes", "/ui/sessions", "/ui/modules", "/ui/schedules"] {
            open =
                open.route(
                    &format!("{page}/"),
                    get(move |uri: axum::http::Uri| async move {
                        axum::response::Redirect::permanent(&with_query(page, &uri))
                    }),
                );
        }
        gated
            .merge(open)
            // Set here, inside the headers' layer: a server's own fallback
            // set on the router this one is merged into would replace
            // axum's default one, which `layer` wraps, and answer without
            // them.
            .method_not_allowed_fallback(wrong_method)
            .layer(axum::middleware::map_response(page_headers))
            .with_state(self.inner.clone())
    }
}

/// A dashboard path asked with a method it does not take (axum adds the
/// `Allow` header).
async fn wrong_method() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        pages::error_fragment("method_not_allowed", "this page does not take that method"),
    )
        .into_response()
}

/// `to` with the query `uri` carries, if any.
fn with_query(to: &str, uri: &axum::http::Uri) -> String {
    match uri.query() {
        Some(q) => format!("{to}?{q}"),
        None => to.to_string(),
    }
}

/// A process's page with a slash after it (as people and browsers add one)
/// is that page, with the same query, when what comes before the slash is
/// an id (an id's own `/` is encoded in its page's address, `repo%2Fissue-12`,
/// so the router reads it as one segment); when it is not one, the process
/// page's answer for a bad id (400), as without the slash; when it is
/// empty (`/ui/processes//`), no page.
async fn process_without_slash(
    visitor: axum::Extension<auth::Visitor>,
    uri: axum::http::Uri,
    id: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> axum::response::Response {
    let id = id.ok().map(|axum::extract::Path(id)| id).filter(|id| !id.is_empty());
    if let Some(id) = &id {
        if let Err(e) = cairn_core::validate::validate_id("process id", id) {
            return process::failed_page(&visitor, id, &e);
        }
    }
    slash_to_page(id.is_some(), visitor, &uri).await
}

/// A module's page with a slash after it, as a process's
/// ([`process_without_slash`]), when what comes before it is a module ref;
/// when it is not one, the module page's answer for a bad ref (400), as
/// without the slash.
async fn module_without_slash(
    visitor: axum::Extension<auth::Visitor>,
    uri: axum::http::Uri,
    module_ref: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> axum::response::Response {
    if let Ok(axum::extract::Path(m)) = &module_ref {
        if let Err(e) = cairn_core::script::validate_module_ref(m) {
            return modules::refused(&visitor, m, &e);
        }
    }
    slash_to_page(module_ref.is_ok(), visitor, &uri).await
}

/// The page without the slash (`uri`'s path, as sent, less its last
/// character), or the page saying there is none.
async fn slash_to_page(
    named: bool,
    visitor: axum::Extension<auth::Visitor>,
    uri: &axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match uri.path().strip_suffix('/') {
        Some(page) if named => axum::response::Redirect::permanent(&with_query(page, uri)).into_response(),
        _ => pages::not_found(visitor).await,
    }
}

/// Headers on every dashboard answer: no framing by other sites (the action
/// buttons must not be clickable through someone else's page), no referrer
/// leaving the dashboard, no window of another site keeping a handle on a
/// dashboard page it opened (COOP), no content sniffing, and a policy that
/// runs only the dashboard's own scripts ([`pages::content_security_policy`]).
async fn page_headers(mut r: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let h = r.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        pages::content_security_policy().clone(),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // A page is not kept: Back after a logout (or on a shared machine) must
    // not show what the last viewer could see. Assets say their own; an
    // event stream's `no-cache` (axum's) would still let it be stored.
    let stream = h
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if stream || !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}
