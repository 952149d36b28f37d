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

/// The most logins held at once; a new one past it ends the one used least
/// recently.
pub(crate) const LOGINS_HELD: usize = 4096;

/// The logins of this server, in memory only: a restart ends every one, so a
/// token changed at a restart keeps no browser logged in.
pub(crate) struct Logins {
    /// By the SHA-256 of the login id (a lookup compares no secret).
    held: Mutex<HashMap<[u8; 32], Login>>,
}

struct Login {
    viewer: Viewer,
    used: Instant,
}

fn login_key(id: &str) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(id.as_bytes()).into()
}

impl Logins {
    pub fn new() -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Login>> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new login for `viewer`: its id, 256 random bits in hex.
    pub fn open(&self, viewer: Viewer) -> String {
        let id = hex::encode(random_bytes());
        let now = Instant::now();
        let mut held = self.held();
        held.retain(|_, l| now.duration_since(l.used) < LOGIN_IDLE);
        if held.len() >= LOGINS_HELD {
            // A scan of at most LOGINS_HELD entries, only when a login is made
            // with the table full.
            if let Some(oldest) = held.iter().min_by_key(|(_, l)| l.used).map(|(k, _)| *k) {
                held.remove(&oldest);
            }
        }
        held.insert(login_key(&id), Login { viewer, used: now });
        id
    }

    /// Who login `id` is, marking it used; `None` for an id this server did
    /// not hand out, has ended, or that lay unused for [`LOGIN_IDLE`].
    pub fn viewer(&self, id: &str) -> Option<Viewer> {
        let key = login_key(id);
        let now = Instant::now();
        let mut held = self.held();
        let login = held.get_mut(&key)?;
        if now.duration_since(login.used) >= LOGIN_IDLE {
            held.remove(&key);
            return None;
        }
        login.used = now;
        Some(login.viewer.clone())
    }

    /// End login `id` (logging out).
    pub fn close(&self, id: &str) {
        self.held().remove(&login_key(id));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held().len()
    }
}

/// Failed logins the server takes: a bucket of [`FAILURES_HELD`] that
/// refills one each [`FAILURE_REFILL`], shared by every visitor (a guesser
/// may come from anywhere, through DNS rebinding say). Once it is empty a
/// login is refused before its token is looked at, so a guess learns
/// nothing; a right token gets in again as soon as one failure has
/// refilled, and a right token costs nothing.
pub(crate) struct FailedLogins {
    bucket: Mutex<(f64, Instant)>,
}

pub(crate) const FAILURES_HELD: u32 = 10;
pub(crate) const FAILURE_REFILL: Duration = Duration::from_secs(1);

impl FailedLogins {
    pub fn new() -> Self {
        Self {
            bucket: Mutex::new((f64::from(FAILURES_HELD), Instant::now())),
        }
    }

    /// Check a login: `Err(wait)` when it is refused unlooked-at (the time
    /// until the next failure is taken); else `check`'s answer, a failure
    /// taken from the bucket.
    fn attempt<T>(&self, check: impl FnOnce() -> Option<T>) -> Result<Option<T>, Duration> {
        let mut bucket = self.bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let refilled = now.duration_since(bucket.1).as_secs_f64() / FAILURE_REFILL.as_secs_f64();
        bucket.0 = (bucket.0 + refilled).min(f64::from(FAILURES_HELD));
        bucket.1 = now;
        if bucket.0 < 1.0 {
            return Err(FAILURE_REFILL.mul_f64(1.0 - bucket.0));
        }
        let found = check();
        if found.is_none() {
            bucket.0 -= 1.0;
        }
        Ok(found)
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

fn cookie_login(headers: &HeaderMap) -> Presented {
    let name = cookie_name(headers);
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| Cookie::split_parse_encoded(v.to_string()))
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
    let mut c = Cookie::build((cookie_name(headers), value.unwrap_or("").to_string()))
        .path(path.to_string())
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_https(headers));
    if value.is_none() {
        c = c.max_age(cookie::time::Duration::ZERO);
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
                clear_planted(&req, &mut r);
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
    req.extensions_mut().insert(Visitor {
        viewer,
        csrf,
        logged_in,
    });
    next.run(req).await
}

/// Clear the login cookie at every path from `/ui` down to the request's,
/// where a cookie this request carried may have been set (one planted by
/// another service on this host included), so the next login is the only one
/// the browser holds there. The login the cookies named stays until it
/// lapses: which of them was this browser's own is not known.
fn clear_planted(req: &Request, r: &mut Response) {
    let path = req.uri().path();
    let mut at = String::new();
    for segment in path.trim_start_matches('/').split('/').take(8) {
        // A path a `Set-Cookie` can carry as it is.
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
        {
            break;
        }
        at.push('/');
        at.push_str(segment);
        if at == "/ui" || at.starts_with("/ui/") {
            r.headers_mut()
                .append(header::SET_COOKIE, login_cookie(req.headers(), None, &at));
        }
    }
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

/// `POST /ui/login`: check the token (failures throttled, [`FailedLogins`]),
/// then make a login and put its id in the cookie. A login posted from
/// another site is refused (it would sign the browser in as
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
    let viewer = match d.failed_logins.attempt(|| d.access.resolve(token)) {
        Ok(Some(viewer)) => viewer,
        Ok(None) => {
            return (
                StatusCode::UNAUTHORIZED,
                pages::login(
                    Some("unknown token: the server has no host or session token like it"),
                    safe_next(&form.next),
                ),
            )
                .into_response();
        }
        Err(wait) => {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let said = format!(
                "too many failed logins: this server takes {FAILURES_HELD} failed logins per {} s \
                 from anyone, and this one was not checked; try again in {secs} s",
                FAILURE_REFILL.as_secs() * u64::from(FAILURES_HELD)
            );
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                pages::login(Some(&said), safe_next(&form.next)),
            )
                .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
    };
    // A login made again from the same browser replaces the one it had.
    if let Presented::One(old) = cookie_login(&headers) {
        d.logins.close(&old);
    }
    let id = d.logins.open(viewer);
    let mut r = Redirect::to(safe_next(&form.next).unwrap_or("/ui/processes")).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, login_cookie(&headers, Some(&id), "/ui"));
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
        tokio::time::advance(Duration::from_millis(1)).await;
        let rest: Vec<String> = (1..LOGINS_HELD).map(|_| logins.open(Viewer::Host)).collect();
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(logins.viewer(&first).is_some(), "the first is now the latest used");
        logins.open(Viewer::Host);
        assert_eq!(logins.len(), LOGINS_HELD);
        assert!(logins.viewer(&first).is_some());
        assert_eq!(rest.iter().filter(|id| logins.viewer(id).is_none()).count(), 1);
    }

    #[test]
    fn a_cookie_named_twice_is_no_login() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; cairn_ui=s%20t; b=2"));
        assert_eq!(cookie_login(&h), Presented::One("s t".into()));
        h.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        assert_eq!(cookie_login(&h), Presented::None);
        h.insert(header::COOKIE, HeaderValue::from_static("cairn_ui=x; a=1; cairn_ui=y"));
        assert_eq!(cookie_login(&h), Presented::Many);
        h.insert(header::COOKIE, HeaderValue::from_static("cairn_ui=x"));
        h.append(header::COOKIE, HeaderValue::from_static("cairn_ui=x"));
        assert_eq!(cookie_login(&h), Presented::Many);
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
