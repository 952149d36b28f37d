//! Who is looking, the login cookie and the CSRF token.
//!
//! A login is held in this server's memory ([`Logins`]): the cookie
//! (HttpOnly, SameSite=Strict, path `/ui`) carries only a random login id
//! that names it, never the token. Browsers send a host's cookies to every
//! port of that host, so another service on the machine may see the cookie:
//! it learns an id that logging out, 24 h unused, or a restart ends, and no
//! token. The CSRF token is an HMAC-SHA256, under a key drawn when the
//! dashboard starts, of the login id (on an open server, of nothing); pages
//! carry it in htmx's `hx-headers`, and every state-changing request must
//! present it in [`CSRF_HEADER`]. A page from another origin can neither
//! read it nor compute it, and it tells nothing about the token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

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

/// 32 bytes from the operating system's generator (through two v4 UUIDs,
/// whose 122 random bits each come from `getrandom`).
fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes
}

/// The key CSRF tokens are derived under.
pub(crate) struct CsrfKey([u8; 32]);

impl CsrfKey {
    /// A key drawn once per start.
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// Keyed by this start's key alone, never by a token: a CSRF token seen
    /// in a log is no way to test guesses of the token.
    fn mac(&self, basis: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"cairn-ui-csrf\0");
        mac.update(basis.as_bytes());
        mac
    }

    /// The token for the login whose id is `basis` (empty when open).
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

/// How long a login lasts unused.
pub(crate) const LOGIN_IDLE: Duration = Duration::from_secs(24 * 3600);

/// The most logins one viewer (the host, or one session) holds at once; a
/// new one past it ends that viewer's login used least recently, never
/// another viewer's: a session token's holder cannot log the host out.
pub(crate) const LOGINS_PER_VIEWER: usize = 64;

/// The most logins held at once, whoever they are: far above
/// [`LOGINS_PER_VIEWER`] times the viewers a server configures (one per
/// token), so it bounds memory only for an [`Access`] of unbounded viewers;
/// a new one past it ends the one used least recently.
pub(crate) const LOGINS_HELD: usize = 1 << 16;

/// The logins of this server, in memory only: a restart ends every one, so a
/// token changed at a restart keeps no browser logged in.
pub(crate) struct Logins {
    held: Mutex<Held>,
}

struct Held {
    /// By the SHA-256 of the login id (a lookup compares no secret).
    logins: HashMap<[u8; 32], Login>,
    /// Counts every open and use: the login of the lowest `turn` is the one
    /// used least recently, even among logins used within one clock tick.
    turn: u64,
}

struct Login {
    viewer: Viewer,
    used: Instant,
    turn: u64,
}

fn login_key(id: &str) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(id.as_bytes()).into()
}

impl Logins {
    pub fn new() -> Self {
        Self {
            held: Mutex::new(Held {
                logins: HashMap::new(),
                turn: 0,
            }),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new login for `viewer`: its id, 256 random bits in hex.
    pub fn open(&self, viewer: Viewer) -> String {
        let id = hex::encode(random_bytes());
        let now = Instant::now();
        let mut held = self.held();
        held.turn += 1;
        let turn = held.turn;
        held.logins.retain(|_, l| now.duration_since(l.used) < LOGIN_IDLE);
        // One scan of the logins held (at most LOGINS_HELD), as the lapse
        // check above already makes.
        let mut theirs = 0;
        let mut their_oldest: Option<(u64, [u8; 32])> = None;
        let mut oldest: Option<(u64, [u8; 32])> = None;
        for (key, l) in &held.logins {
            if oldest.is_none_or(|(t, _)| l.turn < t) {
                oldest = Some((l.turn, *key));
            }
            if l.viewer == viewer {
                theirs += 1;
                if their_oldest.is_none_or(|(t, _)| l.turn < t) {
                    their_oldest = Some((l.turn, *key));
                }
            }
        }
        let evicted = if theirs >= LOGINS_PER_VIEWER {
            their_oldest
        } else if held.logins.len() >= LOGINS_HELD {
            oldest
        } else {
            None
        };
        if let Some((_, key)) = evicted {
            held.logins.remove(&key);
        }
        held.logins.insert(
            login_key(&id),
            Login {
                viewer,
                used: now,
                turn,
            },
        );
        id
    }

    /// Who login `id` is, marking it used; `None` for an id this server did
    /// not hand out, has ended, or that lay unused for [`LOGIN_IDLE`].
    pub fn viewer(&self, id: &str) -> Option<Viewer> {
        let key = login_key(id);
        let now = Instant::now();
        let mut held = self.held();
        held.turn += 1;
        let turn = held.turn;
        let login = held.logins.get_mut(&key)?;
        if now.duration_since(login.used) >= LOGIN_IDLE {
            held.logins.remove(&key);
            return None;
        }
        login.used = now;
        login.turn = turn;
        Some(login.viewer.clone())
    }

    /// Whether login `id` still stands (not ended, replaced or lapsed),
    /// without marking it used: an open live stream asks this, and a page
    /// left open is no use that keeps a login from lapsing.
    pub fn holds(&self, id: &str) -> bool {
        let now = Instant::now();
        self.held()
            .logins
            .get(&login_key(id))
            .is_some_and(|l| now.duration_since(l.used) < LOGIN_IDLE)
    }

    /// End login `id` (logging out).
    pub fn close(&self, id: &str) {
        self.held().logins.remove(&login_key(id));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held().logins.len()
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
    /// The login the request came with (none on an open server): a live
    /// stream ends once it does.
    pub login: Option<String>,
}

/// What the request's login cookie says.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    None,
    One(String),
    /// The cookie's name more than once: another service on this host (which
    /// browsers send this host's cookies to, and let set them) planted one
    /// with a longer path, which the browser sends first. Neither is taken.
    Many,
}

/// The login cookie the request carries, by its name as the browser sent it:
/// names are not percent-decoded, since the browser keeps
/// `cairn%5Fui%5F7070` apart from `cairn_ui_7070` and a clear of the one
/// leaves the other; one such is another cookie, never taken and never
/// counted. The value is taken as sent too (an id is hex).
fn cookie_login(headers: &HeaderMap) -> Presented {
    let name = cookie_name(headers);
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| Cookie::split_parse(v.to_string()))
        .filter_map(Result::ok)
        .filter(|c| c.name() == name)
        .map(|c| c.value().to_string());
    match (found.next(), found.next()) {
        (None, _) => Presented::None,
        (Some(one), None) => Presented::One(one),
        (Some(_), Some(_)) => Presented::Many,
    }
}

/// Whether the browser reached this page over HTTPS, as it says itself: a
/// POST carries its page's `Origin`, and the login and logout are posted
/// only from this server's pages (see [`login`]). The server speaks plain
/// HTTP; TLS is a proxy's in front of it, whose `X-Forwarded-*` is not
/// believed.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"))
}

/// The login cookie as set (`value`) or cleared (`None`), at `path`.
fn login_cookie(headers: &HeaderMap, value: Option<&str>, path: &str) -> HeaderValue {
    match value {
        Some(value) => {
            let c = Cookie::build((cookie_name(headers), value.to_string()))
                .path(path.to_string())
                .http_only(true)
                .same_site(SameSite::Strict)
                .secure(over_https(headers));
            HeaderValue::from_str(&c.build().encoded().to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
        }
        None => cleared(headers, path, None, false),
    }
}

/// The login cookie cleared at `path`, for `Domain=domain` if given, and
/// as a `Partitioned` cookie if `partitioned` (which browsers delete only
/// through a `Set-Cookie` that is itself `Partitioned`, and `Secure`).
fn cleared(headers: &HeaderMap, path: &str, domain: Option<&str>, partitioned: bool) -> HeaderValue {
    let mut c = Cookie::build((cookie_name(headers), ""))
        .path(path.to_string())
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(partitioned || over_https(headers))
        .max_age(cookie::time::Duration::ZERO);
    if let Some(domain) = domain {
        c = c.domain(domain.to_string());
    }
    if partitioned {
        c = c.partitioned(true);
    }
    HeaderValue::from_str(&c.build().encoded().to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
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
        match cookie_login(req.headers()) {
            Presented::One(id) => match d.logins.viewer(&id) {
                Some(viewer) => (viewer, id, true),
                None => return to_login(&req),
            },
            Presented::None => return to_login(&req),
            Presented::Many => {
                let mut r = to_login(&req);
                clear_planted(req.headers(), &[req.uri().path()], &mut r);
                return r;
            }
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
    let login = logged_in.then(|| basis.clone());
    req.extensions_mut().insert(Visitor {
        viewer,
        csrf,
        logged_in,
        login,
    });
    next.run(req).await
}

/// The data of the `login` event that ends a live stream whose login ended.
pub(crate) const LOGIN_AGAIN: &str = "log in again";

/// The most path segments of a request the cookie is cleared along.
const CLEARED_DEPTH: usize = 16;

/// Clear the login cookie at every path a cookie this request carried may
/// have been set at (one planted by another service on this host
/// included), so the next login is the only one the browser holds there:
/// `/`, and each prefix of `path` (the request's, as the browser sent it)
/// with and without a slash after it (`/ui`, `/ui/`, `/ui/processes`,
/// `/ui/processes/`, ...), since a cookie is the browser's by name, domain
/// and path, and one at `/ui/` is sent with every page but is not the one
/// at `/ui`. A byte a `Set-Cookie` path cannot carry is percent-encoded, as
/// the browser sends it. On a host reached by name, each path is cleared
/// also for the cookie set with `Domain=` the name and each name it ends
/// in ([`cookie_domains`]): a browser keeps those apart from the one set
/// without (a `Domain` a browser would not take is ignored by it). Each of
/// these is cleared twice: as a plain cookie and as a `Partitioned` one
/// (`Secure; Partitioned`), which a browser keeps apart from the plain one
/// and deletes only by a `Set-Cookie` that says `Partitioned` itself. The
/// login the cookies named stays until it lapses: which of them was this
/// browser's own is not known.
///
/// At most 594 `Set-Cookie` lines (`MOST_CLEARS`): at most 33 paths (32
/// for a request of [`CLEARED_DEPTH`] segments, and `/ui/login` with a
/// login's), each without `Domain` and with up to [`CLEARED_LABELS`] of
/// them (9 forms), each form twice.
fn clear_planted(headers: &HeaderMap, paths: &[&str], r: &mut Response) {
    let mut done: Vec<String> = Vec::new();
    let domains = cookie_domains(headers);
    for at in paths.iter().flat_map(|path| cookie_paths(path)) {
        if done.contains(&at) {
            continue;
        }
        for domain in std::iter::once(None).chain(domains.iter().map(|d| Some(d.as_str()))) {
            for partitioned in [false, true] {
                r.headers_mut()
                    .append(header::SET_COOKIE, cleared(headers, &at, domain, partitioned));
            }
        }
        done.push(at);
    }
}

/// The most `Set-Cookie` lines [`clear_planted`] sends in one answer.
#[cfg(test)]
const MOST_CLEARS: usize = (2 * CLEARED_DEPTH + 1) * (1 + CLEARED_LABELS) * 2;

/// The most labels of a host name the cookie is cleared at the domains of.
const CLEARED_LABELS: usize = 8;

/// The `Domain` attributes a cookie the browser sends this host may carry,
/// besides none: the host's name (from `Host`) and each name it ends in
/// (`cairn.example.com`, `example.com`, `com`); none for an IP address,
/// whose cookies are the host's alone.
fn cookie_domains(headers: &HeaderMap) -> Vec<String> {
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .map(|a| a.host().trim_end_matches('.').to_ascii_lowercase())
    else {
        return Vec::new();
    };
    if host.is_empty() || host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Vec::new();
    }
    let labels: Vec<&str> = host.split('.').collect();
    let from = labels.len().saturating_sub(CLEARED_LABELS);
    (from..labels.len())
        .map(|i| labels[i..].join("."))
        .filter(|d| !d.starts_with('.') && !d.is_empty())
        .collect()
}

/// The paths a cookie sent with a request for `path` can have been set at
/// ([`clear_planted`]), shortest first: those a browser sends it to `path`
/// from (`path` itself, each prefix that ends in `/`, and each that a `/`
/// follows), down to [`CLEARED_DEPTH`] segments.
fn cookie_paths(path: &str) -> Vec<String> {
    let mut encoded = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_graphic() && b != b';' {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let mut paths: Vec<String> = Vec::new();
    let mut add = |p: &str| {
        if p.starts_with('/') && paths.last().is_none_or(|last| last != p) {
            paths.push(p.to_string());
        }
    };
    let slashes: Vec<usize> = encoded.match_indices('/').map(|(i, _)| i).collect();
    for &i in slashes.iter().take(CLEARED_DEPTH) {
        add(&encoded[..i]);
        add(&encoded[..=i]);
    }
    if slashes.len() <= CLEARED_DEPTH {
        add(&encoded);
    }
    paths
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
                (header::CACHE_CONTROL, "no-store"),
            ],
            format!("event: login\ndata: {LOGIN_AGAIN}\n\n"),
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

/// `POST /ui/login`: check the token, then make a login (or keep the one
/// this browser has as the same viewer) and put its id in the cookie. A
/// login posted from another site is refused (it would sign the browser in
/// as whoever that site chose); browsers say where a request came from in
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
    // No throttle on failures: one shared by every visitor would let
    // anyone keep everyone out, one per address would share 127.0.0.1 with
    // whoever guesses from this host, and the API takes bearer guesses as
    // fast anyway. A token's strength is its length and randomness.
    let token = form.token.trim();
    let Some(viewer) = d.access.resolve(token) else {
        return (
            StatusCode::UNAUTHORIZED,
            pages::login(
                Some("unknown token: the server has no host or session token like it"),
                safe_next(&form.next),
            ),
        )
            .into_response();
    };
    let next = safe_next(&form.next).unwrap_or("/ui/processes");
    let mut r = Redirect::to(next).into_response();
    // A cookie that names no login of this server's (one planted at
    // `/ui/`, say, sent here and with every page besides the one set
    // below), or the name sent twice, is cleared first, along this path and
    // the page's it goes on to, so that page gets the cookie set last,
    // after them, alone.
    let clear = |r: &mut Response| {
        let page = next.split(['?', '#']).next().unwrap_or(next);
        clear_planted(&headers, &["/ui/login", page], r);
    };
    let id = match cookie_login(&headers) {
        Presented::One(old) => match d.logins.viewer(&old) {
            // A login made again from the same browser as the same viewer
            // keeps the one it had: the pages open in other tabs carry its
            // CSRF token.
            Some(had) if had == viewer => old,
            // As another viewer, it replaces it.
            Some(_) => {
                d.logins.close(&old);
                d.logins.open(viewer)
            }
            None => {
                clear(&mut r);
                d.logins.open(viewer)
            }
        },
        Presented::None => d.logins.open(viewer),
        Presented::Many => {
            clear(&mut r);
            d.logins.open(viewer)
        }
    };
    r.headers_mut()
        .append(header::SET_COOKIE, login_cookie(&headers, Some(&id), "/ui"));
    r
}

/// `POST /ui/logout`: end the login, here and in the browser. The button
/// sends no field; a request with any is refused, and the login stands.
pub(crate) async fn logout(
    State(d): Shared,
    headers: HeaderMap,
    form: Result<ActionForm<NoFields>, Refusal>,
) -> Response {
    if let Err(refusal) = form {
        return refusal.into_response();
    }
    if let Presented::One(id) = cookie_login(&headers) {
        d.logins.close(&id);
    }
    let mut r = html! { "logged out" }.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, login_cookie(&headers, None, "/ui"));
    r.headers_mut()
        .insert("hx-redirect", HeaderValue::from_static("/ui/login"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_bind_to_the_login_and_the_key() {
        let key = CsrfKey::random();
        let t = key.token("login-id");
        assert!(key.verify("login-id", &t));
        assert!(!key.verify("other", &t));
        assert!(!key.verify("login-id", ""));
        assert!(!key.verify("login-id", "not hex"));
        // Another start's key makes other tokens: they say nothing of the id.
        assert!(!CsrfKey::random().verify("login-id", &t));
        let open = key.token("");
        assert!(key.verify("", &open));
        assert!(!CsrfKey::random().verify("", &open));
    }

    #[tokio::test(start_paused = true)]
    async fn logins_lapse_unused_and_the_least_used_goes_first() {
        let logins = Logins::new();
        let a = logins.open(Viewer::Host);
        let b = logins.open(Viewer::Session("s1".into()));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(logins.viewer(&b), Some(Viewer::Session("s1".into())));
        tokio::time::advance(LOGIN_IDLE - Duration::from_secs(1)).await;
        assert_eq!(logins.viewer(&a), Some(Viewer::Host), "used within the day");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(logins.viewer(&b), None, "a day unused");
        assert_eq!(logins.viewer(&a), Some(Viewer::Host));
        logins.close(&a);
        assert_eq!(logins.viewer(&a), None);

        let first = logins.open(Viewer::Host);
        let rest: Vec<String> = (1..LOGINS_PER_VIEWER).map(|_| logins.open(Viewer::Host)).collect();
        assert!(logins.viewer(&first).is_some(), "the first is now the latest used");
        logins.open(Viewer::Host);
        assert_eq!(logins.len(), LOGINS_PER_VIEWER);
        assert!(logins.viewer(&first).is_some());
        assert_eq!(logins.viewer(&rest[0]), None, "the least used went");
        assert!(rest[1..].iter().all(|id| logins.viewer(id).is_some()));
    }

    /// Each viewer holds its own logins: however many a session token
    /// makes, it ends only its own least used one, never the host's.
    #[test]
    fn a_viewers_logins_end_only_its_own() {
        let logins = Logins::new();
        let host = logins.open(Viewer::Host);
        let s1 = Viewer::Session("s1".into());
        let session: Vec<String> = (0..LOGINS_PER_VIEWER).map(|_| logins.open(s1.clone())).collect();
        assert!(session.iter().all(|id| logins.viewer(id).is_some()));
        // The 65th ends the session's oldest, not the host's (the oldest of all).
        logins.open(s1.clone());
        assert_eq!(logins.viewer(&session[0]), None);
        assert!(session[1..].iter().all(|id| logins.viewer(id).is_some()));
        // More than any cap of all logins held together would take.
        for _ in 0..5000 {
            logins.open(s1.clone());
        }
        assert_eq!(logins.viewer(&host), Some(Viewer::Host));
        assert_eq!(logins.len(), LOGINS_PER_VIEWER + 1);
    }

    #[test]
    fn the_cookie_is_cleared_at_every_domain_a_host_name_ends_in() {
        let domains = |host: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(host) = host {
                h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            }
            cookie_domains(&h)
        };
        assert_eq!(
            domains(Some("Cairn.Example.com:7070")),
            ["cairn.example.com", "example.com", "com"]
        );
        assert_eq!(domains(Some("localhost")), ["localhost"]);
        for host in [None, Some("127.0.0.1:7070"), Some("[::1]:7070"), Some("10.0.0.1")] {
            assert!(domains(host).is_empty(), "{host:?}");
        }
        assert_eq!(domains(Some(&format!("{}x", "a.".repeat(20)))).len(), CLEARED_LABELS);
    }

    #[test]
    fn the_cookie_is_cleared_at_every_path_the_browser_sends_it_from() {
        assert_eq!(
            cookie_paths("/ui/processes/rw-1"),
            [
                "/",
                "/ui",
                "/ui/",
                "/ui/processes",
                "/ui/processes/",
                "/ui/processes/rw-1"
            ]
        );
        assert_eq!(cookie_paths("/ui/login"), ["/", "/ui", "/ui/", "/ui/login"]);
        assert_eq!(cookie_paths("/ui/"), ["/", "/ui", "/ui/"]);
        // Characters a `Set-Cookie` path carries as they are; those it
        // cannot, percent-encoded.
        assert_eq!(
            cookie_paths("/ui/processes/poll@2026-01-01T00:00:00Z:x=y,z/record"),
            [
                "/",
                "/ui",
                "/ui/",
                "/ui/processes",
                "/ui/processes/",
                "/ui/processes/poll@2026-01-01T00:00:00Z:x=y,z",
                "/ui/processes/poll@2026-01-01T00:00:00Z:x=y,z/",
                "/ui/processes/poll@2026-01-01T00:00:00Z:x=y,z/record",
            ]
        );
        assert_eq!(cookie_paths("/ui/a;b%20c"), ["/", "/ui", "/ui/", "/ui/a%3Bb%20c"]);
        let deep = format!("/ui{}", "/x".repeat(40));
        assert_eq!(cookie_paths(&deep).len(), 2 * CLEARED_DEPTH - 1);
    }

    #[test]
    fn a_cookie_named_twice_is_no_login() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; cairn_ui=s%20t; b=2"));
        assert_eq!(cookie_login(&h), Presented::One("s%20t".into()));
        // A name the browser keeps apart from the login cookie's is another
        // cookie, however it decodes.
        for stranger in ["cairn%5Fui=x", "cairn_u%69=x", "Cairn_ui=x"] {
            h.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("{stranger}; cairn_ui=y")).unwrap(),
            );
            assert_eq!(cookie_login(&h), Presented::One("y".into()), "{stranger}");
            h.insert(header::COOKIE, HeaderValue::from_str(stranger).unwrap());
            assert_eq!(cookie_login(&h), Presented::None, "{stranger}");
        }
        h.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        assert_eq!(cookie_login(&h), Presented::None);
        h.insert(header::COOKIE, HeaderValue::from_static("cairn_ui=x; a=1; cairn_ui=y"));
        assert_eq!(cookie_login(&h), Presented::Many);
        h.insert(header::COOKIE, HeaderValue::from_static("cairn_ui=x"));
        h.append(header::COOKIE, HeaderValue::from_static("cairn_ui=x"));
        assert_eq!(cookie_login(&h), Presented::Many);
    }

    /// The clears of the deepest path a request names, a login's besides,
    /// on a host of many labels: bounded by [`MOST_CLEARS`], each cleared
    /// plainly and `Partitioned`.
    #[test]
    fn clearing_sends_a_bounded_number_of_lines() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("a.b.c.d.e.f.g.h.i.j.example.com:7070"),
        );
        let mut r = Response::new(axum::body::Body::empty());
        let page = format!("/ui{}", "/x".repeat(CLEARED_DEPTH - 1));
        assert_eq!(cookie_paths(&page).len(), 2 * CLEARED_DEPTH);
        clear_planted(&h, &["/ui/login", &page], &mut r);
        let set: Vec<&str> = r
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(set.len(), MOST_CLEARS);
        let partitioned = set.iter().filter(|c| c.contains("; Partitioned")).count();
        assert_eq!(partitioned * 2, set.len());
        assert!(set
            .iter()
            .filter(|c| c.contains("; Partitioned"))
            .all(|c| c.contains("; Secure") && c.contains("Max-Age=0")));
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
}
