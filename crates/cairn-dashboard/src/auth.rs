//! Who is looking, the login cookie and the CSRF token.
//!
//! The cookie holds the token itself (HttpOnly, SameSite=Strict, path `/ui`):
//! the server keeps no session table, a restart keeps everyone logged in, and
//! the token is resolved by the embedding server's [`Access`] on every request,
//! exactly as a bearer token is. The CSRF token is an HMAC-SHA256 keyed by the
//! cookie's token (so every node behind one address, and a restarted one,
//! derives the same), or, on an open server, by a key drawn when the dashboard
//! starts; pages carry it in htmx's `hx-headers`, and every state-changing
//! request must present it in [`CSRF_HEADER`]. A page from another origin can
//! neither read it nor compute it. (Whoever sees it can test guesses of the
//! token against it offline, as whoever sees the `Cookie` header beside it has
//! the token itself: a token should be long and random.)

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use cairn_core::async_trait;
use cookie::{Cookie, SameSite};
use hmac::{Hmac, Mac};
use maud::html;
use serde::Deserialize;
use sha2::Sha256;

use crate::input::{ActionForm, Fields, NoFields, Refusal};
use crate::{pages, Inner, Shared};

/// The login cookie's name, for a server reached without a port in its
/// address; with one, `cairn_ui_{port}` ([`cookie_name`]).
pub const COOKIE: &str = "cairn_ui";

/// The login cookie's name for a request: browsers keep cookies by host,
/// not port, so two servers on one machine (`:7070`, `:7071`) would take
/// each other's login; the port in the address the browser used keeps them
/// apart.
pub fn cookie_name(headers: &HeaderMap) -> String {
    let port = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .and_then(|a| a.port_u16());
    match port {
        Some(port) => format!("{COOKIE}_{port}"),
        None => COOKIE.to_string(),
    }
}
/// The header every state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-cairn-csrf";

/// Who is looking at the dashboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Viewer {
    /// The host: sees and may act on everything.
    Host,
    /// A session token's holder: sees only what is granted to this session id.
    Session(String),
}

impl Viewer {
    /// How the page names the viewer.
    pub fn label(&self) -> String {
        match self {
            Self::Host => "host".to_string(),
            Self::Session(id) => format!("session:{id}"),
        }
    }
}

/// What the embedding server decides: who a token is and what they may see.
/// The `cairn` binary implements it with the same code its HTTP API uses, so the
/// dashboard shows a session token exactly what `GET /v1/processes` shows it.
#[async_trait]
pub trait Access: Send + Sync + 'static {
    /// No token is configured (a loopback-only server): every visitor is the host
    /// and no login is asked for.
    fn is_open(&self) -> bool;

    /// Who presents `token`; `None` for an unknown token.
    fn resolve(&self, token: &str) -> Option<Viewer>;

    /// `Ok` when `viewer` may address process `id`; otherwise the error the API
    /// answers for it (`unknown_process`, as if the id did not exist).
    async fn check_visible(&self, viewer: &Viewer, id: &str) -> cairn_core::Result<()>;
}

type HmacSha256 = Hmac<Sha256>;

/// The key CSRF tokens are derived under.
pub(crate) struct CsrfKey([u8; 32]);

impl CsrfKey {
    /// 32 bytes from the operating system's generator (through two v4 UUIDs,
    /// whose 122 random bits each come from `getrandom`), drawn once per start.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self(key)
    }

    /// A logged-in visitor's basis is their token, a secret: it keys the
    /// MAC itself, so every node behind one address (and a restarted one)
    /// derives the same CSRF token for it, and a page drawn by one node may
    /// post to another. The open server (no basis; loopback only) keys with
    /// this start's random key.
    fn mac(&self, basis: &str) -> HmacSha256 {
        let key: &[u8] = if basis.is_empty() { &self.0 } else { basis.as_bytes() };
        let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"cairn-ui-csrf\0");
        mac
    }

    /// The token for the visitor whose cookie value is `basis` (empty when open).
    pub fn token(&self, basis: &str) -> String {
        hex::encode(self.mac(basis).finalize().into_bytes())
    }

    /// Whether `presented` is the token for `basis` (compared in constant time).
    pub fn verify(&self, basis: &str, presented: &str) -> bool {
        match hex::decode(presented.trim()) {
            Ok(bytes) => self.mac(basis).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }
}

/// The visitor a gated handler serves (put in the request by [`gate`]).
#[derive(Clone, Debug)]
pub(crate) struct Visitor {
    pub viewer: Viewer,
    /// The CSRF token pages embed.
    pub csrf: String,
    /// Whether a logout button makes sense (tokens are configured).
    pub logged_in: bool,
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(headers);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| Cookie::split_parse_encoded(v.to_string()))
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// Middleware over every page but the login page and the assets: resolve the
/// visitor (or send them to log in) and refuse a state-changing request whose
/// CSRF token is missing or wrong, before its handler runs.
pub(crate) async fn gate(State(d): State<Arc<Inner>>, mut req: Request, next: Next) -> Response {
    let (viewer, basis, logged_in) = if d.access.is_open() {
        (Viewer::Host, String::new(), false)
    } else {
        match cookie_token(req.headers()).and_then(|t| d.access.resolve(&t).map(|v| (v, t))) {
            Some((viewer, token)) => (viewer, token, true),
            None => return to_login(&req),
        }
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if !safe {
        let presented = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !d.csrf.verify(&basis, presented) {
            return (
                StatusCode::FORBIDDEN,
                pages::error_fragment(
                    "csrf_refused",
                    "the request did not carry this page's CSRF token; reload the page and try again",
                ),
            )
                .into_response();
        }
    }
    let csrf = d.csrf.token(&basis);
    req.extensions_mut().insert(Visitor {
        viewer,
        csrf,
        logged_in,
    });
    next.run(req).await
}

fn to_login(req: &Request) -> Response {
    if is_htmx(req.headers()) {
        // A fragment request from a page whose login lapsed: htmx follows
        // `HX-Redirect` with a full navigation, to the login and back to the
        // page (which htmx names in `HX-Current-URL`).
        let page = req
            .headers()
            .get("hx-current-url")
            .and_then(|v| v.to_str().ok())
            .and_then(|url| url.parse::<axum::http::Uri>().ok())
            .and_then(|uri| uri.path_and_query().map(|pq| pq.as_str().to_string()));
        let login = login_href(page.as_deref().and_then(safe_next));
        let mut r = (StatusCode::UNAUTHORIZED, "log in again").into_response();
        if let Ok(v) = HeaderValue::from_str(&login) {
            r.headers_mut().insert("hx-redirect", v);
        }
        return r;
    }
    let wants_stream = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_stream {
        // A live stream (an `EventSource`, which sends no `HX-Request` and
        // cannot follow a redirect to a page) whose login lapsed: a stream of
        // one `login` event the page acts on; a redirect would leave it
        // reconnecting for as long as the tab stays open.
        return (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            "event: login\ndata: log in again\n\n",
        )
            .into_response();
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        let here = req.uri().path_and_query().map_or("/ui", |pq| pq.as_str());
        // A link followed from another site carries no `SameSite=Strict`
        // cookie: a page that reloads itself (a same-site navigation, which
        // carries it) sends a logged-in visitor on without asking again.
        let from_elsewhere = req
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site");
        if from_elsewhere && safe_next(here).is_some() {
            return pages::reload(here).into_response();
        }
        // The login sends the visitor back where they were going.
        let login = login_href(safe_next(here));
        return Redirect::to(&login).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        pages::error_fragment("unauthorized", "log in at /ui/login first"),
    )
        .into_response()
}

/// The login page, sending the visitor on to `next` once logged in.
fn login_href(next: Option<&str>) -> String {
    match next {
        Some(next) => format!(
            "/ui/login?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("next", next)
                .finish()
        ),
        None => "/ui/login".to_string(),
    }
}

/// `next` when it is a dashboard page of this server to go back to after a
/// login: a path under `/ui` (never another site, `//host`), in the URI
/// characters a request line carries (so it makes a `Location` header), with
/// no `.` or `..` segment (`/ui/../v1/...`, `/ui/..//host/x`: the browser
/// resolves them to a path outside the dashboard), spelled plainly or
/// percent-encoded (`%2e`, any case), and no backslash.
fn safe_next(next: &str) -> Option<&str> {
    let under_ui = next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?");
    let plain = next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    let path = next.split(['?', '#']).next().unwrap_or_default();
    let dotted = path.split('/').any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    });
    (under_ui && plain && !dotted && !next.starts_with("/ui/login")).then_some(next)
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// `GET /ui/login`.
pub(crate) async fn login_page(
    State(d): Shared,
    query: Result<axum::extract::Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // A query that is not this page's is no reason to refuse the login.
    let next = query.as_ref().ok().and_then(|q| safe_next(&q.next));
    if d.access.is_open() {
        return Redirect::to(next.unwrap_or("/ui/processes")).into_response();
    }
    pages::login(None, next).into_response()
}

/// The login page's form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginForm {
    token: String,
    /// Where to go once logged in (a dashboard path; anything else goes to
    /// the list).
    #[serde(default)]
    next: String,
}

impl Fields for LoginForm {
    const FIELDS: &'static [&'static str] = &["token", "next"];
}

/// `POST /ui/login`: check the token, then keep it in the cookie. A login
/// posted from another site is refused (it would sign the browser in as
/// whoever that site chose); browsers say where a request came from in
/// `Sec-Fetch-Site`.
pub(crate) async fn login(
    State(d): Shared,
    headers: HeaderMap,
    form: Result<ActionForm<LoginForm>, Refusal>,
) -> Response {
    if d.access.is_open() {
        return Redirect::to("/ui/processes").into_response();
    }
    // Not this page's form (no `token` field, a field it has not, another
    // content type): said on the page, as a wrong token is.
    let form = match form {
        Ok(ActionForm(form)) => form,
        Err(refusal) => {
            let said = if refusal.message == "missing field `token`" {
                "the login form carried no token: sign in from this page".to_string()
            } else {
                format!("{}; sign in from this page", refusal.message)
            };
            return (refusal.status, pages::login(Some(&said), None)).into_response();
        }
    };
    // A browser without `Sec-Fetch-Site` still says where a POST came from
    // in `Origin`: another origin than this server's (its `Host`) is
    // another site's page. Only then: behind a proxy that rewrites `Host`
    // (nginx's default), `Origin` names the public address, never `Host`,
    // while `Sec-Fetch-Site` still says the form was this page's own.
    let foreign_origin = headers.get("origin").is_some_and(|origin| {
        let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default();
        let origin = origin.to_str().unwrap_or_default();
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| !host.is_empty() && o == host);
        !own
    });
    let refused = match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "cross-site" || site == "same-site",
        None => foreign_origin,
    };
    if refused {
        return (
            StatusCode::FORBIDDEN,
            pages::login(
                Some("a login must be posted from this page, not from another site"),
                None,
            ),
        )
            .into_response();
    }
    let token = form.token.trim();
    if d.access.resolve(token).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            pages::login(
                Some("unknown token: the server has no host or session token like it"),
                safe_next(&form.next),
            ),
        )
            .into_response();
    }
    let cookie = Cookie::build((cookie_name(&headers), token.to_string()))
        .path("/ui")
        .http_only(true)
        .same_site(SameSite::Strict)
        .build();
    let mut r = Redirect::to(safe_next(&form.next).unwrap_or("/ui/processes")).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie.encoded().to_string()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /ui/logout`: forget the cookie. The button sends no field; a
/// request with any is refused, and the login stands.
pub(crate) async fn logout(headers: HeaderMap, form: Result<ActionForm<NoFields>, Refusal>) -> Response {
    if let Err(refusal) = form {
        return refusal.into_response();
    }
    let cookie = Cookie::build((cookie_name(&headers), ""))
        .path("/ui")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build();
    let mut r = html! { "logged out" }.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert("hx-redirect", HeaderValue::from_static("/ui/login"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_bind_to_the_cookie_and_the_key() {
        let key = CsrfKey::random();
        let t = key.token("tok");
        assert!(key.verify("tok", &t));
        assert!(!key.verify("other", &t));
        assert!(!key.verify("tok", ""));
        assert!(!key.verify("tok", "not hex"));
        // A login's token keys it: another node (another start) agrees.
        assert!(CsrfKey::random().verify("tok", &t));
        // The open server's is this start's own.
        let open = key.token("");
        assert!(key.verify("", &open));
        assert!(!CsrfKey::random().verify("", &open));
    }

    #[test]
    fn next_is_a_dashboard_path_without_dot_segments() {
        for good in [
            "/ui",
            "/ui/processes",
            "/ui?x=1",
            "/ui/processes/a.b",
            "/ui/processes/...",
            "/ui/p?q=..#ev-2",
        ] {
            assert_eq!(safe_next(good), Some(good), "{good}");
        }
        for bad in [
            "/ui/..//evil.example/x",
            "/ui/../v1/processes",
            "/ui/./processes",
            "/ui/processes/..",
            "/ui/processes/.",
            "/ui/%2e%2e/v1/processes",
            "/ui/%2E%2e/v1/processes",
            "/ui/.%2E/v1",
            "/ui/%2e/processes",
            "/ui/%2E?x",
            "/ui/..#ev-1",
            "/ui\\..\\v1",
            "/ui/p\\x",
            "//evil.example/ui",
            "/v1/processes",
            "/ui/login",
        ] {
            assert_eq!(safe_next(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; cairn_ui=s%20t; b=2"));
        assert_eq!(cookie_token(&h).as_deref(), Some("s t"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        assert_eq!(cookie_token(&h), None);
    }
}
