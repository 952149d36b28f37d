//! Bearer-token auth. The host token has full access; a session token acts as
//! its session and addresses only processes granted to that session or to one
//! of its agent frames. With no token configured (allowed on loopback only)
//! every request is the host.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_core::{CairnError, Processes, SessionScope};
use std::sync::Arc;

use super::api::ApiError;
use super::AppState;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Full access.
    Host,
    /// A session token's holder: acts as this session id.
    Session(String),
}

impl Caller {
    /// The session scope of a session caller.
    pub fn session_scope(&self) -> Option<SessionScope> {
        match self {
            Self::Host => None,
            Self::Session(id) => Some(SessionScope::session(id.clone())),
        }
    }

    /// The identity recorded where an operation names its requester.
    pub fn label(&self) -> String {
        match self {
            Self::Host => "host".to_string(),
            Self::Session(id) => SessionScope::session(id.clone()).scope_id(),
        }
    }

    /// The requester to record: a host may name one, a session is always itself.
    pub fn acting_as(&self, named: Option<String>) -> String {
        match (self, named) {
            (Self::Host, Some(name)) => name,
            _ => self.label(),
        }
    }

    /// Host-only operations answer 403 to session callers (`what` names
    /// them: "schedules", "the change feed", "prune").
    pub fn require_host(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Self::Host => Ok(()),
            Self::Session(_) => Err(ApiError::forbidden(format!("the host token is needed for {what}"))),
        }
    }

    /// Session-keyed operations: the host may touch any session, a session only itself.
    pub fn require_session(&self, session_id: &str) -> Result<(), ApiError> {
        match self {
            Self::Session(own) if own != session_id => {
                Err(ApiError::forbidden("a session token may only address its own session"))
            }
            _ => Ok(()),
        }
    }
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    host_token: Option<String>,
    /// (token, session id)
    session_tokens: Vec<(String, String)>,
}

impl Auth {
    /// Tokens from the command line: the host token and `(session, token)` pairs.
    pub fn new(host_token: Option<String>, session_tokens: &[(String, String)]) -> Self {
        Self {
            host_token,
            session_tokens: session_tokens.iter().map(|(s, t)| (t.clone(), s.clone())).collect(),
        }
    }

    /// Whether no token is configured at all (open access).
    pub fn is_open(&self) -> bool {
        self.host_token.is_none() && self.session_tokens.is_empty()
    }

    /// Whether a host token is configured.
    pub fn has_host_token(&self) -> bool {
        self.host_token.is_some()
    }

    /// Who presents `bearer` (`None`: no `Authorization` header).
    pub fn resolve(&self, bearer: Option<&str>) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller::Host);
        }
        let Some(token) = bearer else {
            return Err(ApiError::unauthorized(
                "this server needs `Authorization: Bearer TOKEN`",
            ));
        };
        if self.host_token.as_deref().is_some_and(|h| constant_time_eq(h, token)) {
            return Ok(Caller::Host);
        }
        // Compare against every session token so timing does not tell which matched.
        let mut found = None;
        for (t, session) in &self.session_tokens {
            if constant_time_eq(t, token) && found.is_none() {
                found = Some(session.clone());
            }
        }
        found
            .map(Caller::Session)
            .ok_or_else(|| ApiError::unauthorized("unknown token"))
    }

    /// Refuse tokens that would give a holder more than its session: a
    /// session token that is also the host token (its holder is the host), or
    /// one token for two sessions (its holder would act as whichever is
    /// listed first).
    pub fn check_tokens(&self) -> Result<(), String> {
        // A token no client can present is a mistake to say at start: an
        // empty one (an unset secret) would leave the server open, and one
        // with surrounding whitespace (a secret file's newline) or bytes a
        // header does not carry as text would refuse everyone.
        let usable = |what: &str, token: &str| {
            if token.is_empty() {
                return Err(format!(
                    "{what} is empty: give a token, or leave the option (and its variable) unset for an open server"
                ));
            }
            if token.trim() != token {
                return Err(format!(
                    "{what} begins or ends with whitespace (a newline from a file?), which no request can carry"
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{what} holds a character other than visible ASCII, which a request's header cannot carry as text"
                ));
            }
            Ok(())
        };
        if let Some(host) = &self.host_token {
            usable("the host token (--token, CAIRN_TOKEN)", host)?;
        }
        for (token, session) in &self.session_tokens {
            usable(
                &format!("the session token for `{session}` (--session-token, CAIRN_SESSION_TOKENS)"),
                token,
            )?;
        }
        for (i, (token, session)) in self.session_tokens.iter().enumerate() {
            if self.host_token.as_deref() == Some(token.as_str()) {
                return Err(format!(
                    "the session token for `{session}` (--session-token, CAIRN_SESSION_TOKENS) is the host token \
                     (--token, or CAIRN_TOKEN when --token is not given): its holder would have host access; give \
                     the session a token of its own"
                ));
            }
            if let Some((_, other)) = self.session_tokens[..i]
                .iter()
                .find(|(t, s)| t == token && s != session)
            {
                return Err(format!(
                    "the session tokens (--session-token, CAIRN_SESSION_TOKENS) give sessions `{other}` and \
                     `{session}` the same token: \
                     its holder could act only as one of them; give each session its own token"
                ));
            }
        }
        Ok(())
    }

    /// The tokens too short to stand against guessing, each named as a
    /// start-up warning names it: nothing slows guesses (a server answers
    /// thousands a second, and a web page can send them by DNS rebinding to a
    /// server with tokens, which answers any `Host`), so a token's length is
    /// its strength. Warned of, not refused: a short token on a loopback
    /// server in a test is the host's call.
    pub fn short_tokens(&self) -> Vec<String> {
        let short = |t: &str| t.chars().count() < MIN_TOKEN_CHARS;
        let host = self
            .host_token
            .as_deref()
            .filter(|t| short(t))
            .map(|_| "the host token (--token, CAIRN_TOKEN)".to_string());
        let mut named: Vec<String> = host.into_iter().collect();
        for (_, session) in self.session_tokens.iter().filter(|(t, _)| short(t)) {
            let said = format!("the session token for `{session}`");
            if !named.contains(&said) {
                named.push(said);
            }
        }
        named
    }

    /// Refuse configurations that would expose an open server beyond this machine.
    pub fn check_bind(&self, addr: &SocketAddr) -> Result<(), String> {
        if !addr.ip().is_loopback() && !self.has_host_token() {
            return Err(format!(
                "refusing to listen on non-loopback address {addr} without a host token: \
                 pass --token (or CAIRN_TOKEN), or listen on 127.0.0.1"
            ));
        }
        Ok(())
    }
}

/// Token comparison whose time does not depend on where the bytes differ
/// (`subtle`; a length difference alone is not hidden, and token lengths are not secret).
fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Middleware: resolve the caller and put it in the request extensions. A
/// request with more than one `Authorization` or `Content-Type` header is
/// refused (400, before anything runs): which one counts is not for the
/// server to guess. A session token on a host-only route
/// ([`host_only_route`]) is refused here, 403 `forbidden`, before the
/// route reads its query or body: a caller is not asked to fix a request
/// it may never make.
///
/// A refused request's body is left unread, so unless it has none the
/// answer closes the connection (`Connection: close`): the rest of a body
/// still on its way would otherwise be read as the next request, or the
/// connection dropped under the client's next request on it.
pub async fn authenticate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    match admit(&state.auth, &req) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(refused) => {
            let unread = axum::body::HttpBody::size_hint(req.body()).exact() != Some(0);
            ApiError {
                close_connection: refused.close_connection || unread,
                ..refused
            }
            .into_response()
        }
    }
}

/// Who sends `req`, or why it is refused ([`authenticate`]).
fn admit(auth: &Auth, req: &Request) -> Result<Caller, ApiError> {
    let mut given = req.headers().get_all(header::AUTHORIZATION).iter();
    let first = given.next();
    if given.next().is_some() {
        return Err(ApiError::invalid_request("send one Authorization header"));
    }
    if req.headers().get_all(header::CONTENT_TYPE).iter().nth(1).is_some() {
        return Err(ApiError::invalid_request("send one Content-Type header"));
    }
    let bearer = first.and_then(|v| v.to_str().ok()).and_then(bearer_token);
    let caller = auth.resolve(bearer)?;
    if let Some(what) = host_only_route(req.uri().path()) {
        caller.require_host(what)?;
    }
    Ok(caller)
}

/// The refusal [`authenticate`] answers a session token on a host-only
/// route with, for a check that runs before it (a body over
/// `--max-body-bytes`, `api::refuse_oversized`): such a caller is told the
/// route is not its own, not to make its body smaller. `None` for any other
/// request, among them one `authenticate` refuses for another reason (no
/// token, two `Authorization` headers): those are weighed first, as on any
/// other route.
pub fn host_only_refusal(auth: &Auth, req: &Request) -> Option<ApiError> {
    host_only_route(req.uri().path())?;
    admit(auth, req)
        .err()
        .filter(|refused| refused.status == StatusCode::FORBIDDEN)
}

/// What the route at `path` is for, when only the host may call it (any
/// method): prune, the change feed, schedules and metrics.
pub fn host_only_route(path: &str) -> Option<&'static str> {
    match path {
        "/v1/prune" => Some("prune"),
        "/v1/changes" => Some("the change feed"),
        "/metrics" => Some("metrics"),
        "/v1/schedules" => Some("schedules"),
        _ if path.starts_with("/v1/schedules/") => Some("schedules"),
        _ => None,
    }
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme's name
/// is case-insensitive (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The fewest characters of a token `cairn serve` takes without a warning:
/// 16 random ones from `openssl rand -hex 16`'s 32 are past any guessing.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Whether `caller` may address process `id`: the host always; a session when
/// the process is granted to its session or to one of its agent frames (a
/// frame is inside its session, SPEC §1; a listing shows one scope's grants,
/// so a frame's processes are listed by naming the frame). A pruned process the whole
/// session held a grant on as it was pruned is answered as the host is
/// answered, `no_longer_retained` with the tombstone (the work it owned ended
/// and is gone); a frame's kept grant is read by its exact scope, which the
/// caller does not name, so a pruned process only a frame held answers as an
/// unknown id. Anything else is answered exactly like an unknown id so a
/// session cannot probe for other sessions' processes.
pub async fn check_visible(state: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    Ok(visible(&state.processes, caller, id).await?)
}

/// [`check_visible`] over the facade alone (the dashboard asks it too, so both
/// surfaces scope a session token the same way).
pub async fn visible(processes: &Processes, caller: &Caller, id: &str) -> Result<(), CairnError> {
    let Some(scope) = caller.session_scope() else {
        return Ok(());
    };
    if granted(processes, &scope.session_id, id).await? {
        return Ok(());
    }
    // Read after the live grants: a prune between the two reads is seen here.
    match processes.pruned_grant(&scope, id).await? {
        Some(tombstone) => Err(CairnError::NoLongerRetained(Box::new(tombstone))),
        None => Err(CairnError::UnknownProcess(id.to_string())),
    }
}

/// Whether session `session_id` holds a grant on `id`, to the whole session
/// or to one of its agent frames: one point read of the process's grants,
/// however many the session holds.
async fn granted(processes: &Processes, session_id: &str, id: &str) -> Result<bool, CairnError> {
    Ok(processes
        .grants_of(id)
        .await?
        .iter()
        .any(|g| g.scope.session_id == session_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_tokens() {
        let open = Auth::new(None, &[]);
        assert_eq!(open.resolve(None).ok(), Some(Caller::Host));
        let auth = Auth::new(Some("h".into()), &[("s1".into(), "t1".into())]);
        assert_eq!(auth.resolve(Some("h")).ok(), Some(Caller::Host));
        assert_eq!(auth.resolve(Some("t1")).ok(), Some(Caller::Session("s1".into())));
        assert!(auth.resolve(Some("nope")).is_err());
        assert!(auth.resolve(None).is_err());
    }

    /// The refusal reads as a sentence whatever it names, one thing or many.
    #[test]
    fn a_host_only_refusal_names_what_it_is_for() {
        assert!(Caller::Host.require_host("schedules").is_ok());
        let refused = Caller::Session("s1".into()).require_host("schedules").unwrap_err();
        assert_eq!(refused.code, "forbidden");
        assert_eq!(refused.message, "the host token is needed for schedules");
    }

    #[test]
    fn host_only_routes_are_named_by_what_they_are_for() {
        assert_eq!(host_only_route("/v1/prune"), Some("prune"));
        assert_eq!(host_only_route("/v1/changes"), Some("the change feed"));
        assert_eq!(host_only_route("/metrics"), Some("metrics"));
        assert_eq!(host_only_route("/v1/schedules"), Some("schedules"));
        assert_eq!(host_only_route("/v1/schedules/s/pause"), Some("schedules"));
        for open in [
            "/v1/processes",
            "/v1/modules",
            "/v1/sessions/s1/wakes",
            "/mcp",
            "/v1/schedulesx",
        ] {
            assert_eq!(host_only_route(open), None, "{open}");
        }
    }

    #[test]
    fn refuses_tokens_that_give_more_than_a_session() {
        let pairs = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(s, t)| (s.to_string(), t.to_string()))
                .collect::<Vec<_>>()
        };
        let host_as_session = Auth::new(Some("h".into()), &pairs(&[("s1", "h")]));
        assert!(host_as_session.check_tokens().unwrap_err().contains("host token"));
        let shared = Auth::new(Some("h".into()), &pairs(&[("s1", "t"), ("s2", "t")]));
        let e = shared.check_tokens().unwrap_err();
        assert!(e.contains("`s1`") && e.contains("`s2`"), "{e}");
        let fine = Auth::new(
            Some("h".into()),
            &pairs(&[("s1", "t1"), ("s1", "t2"), ("s1", "t1"), ("s2", "t3")]),
        );
        assert!(
            fine.check_tokens().is_ok(),
            "two tokens for one session, or one repeated, give no more"
        );
        assert!(Auth::new(None, &pairs(&[("s1", "t1")])).check_tokens().is_ok());
        // Short tokens are taken, and named for the start-up warning.
        let long = "0123456789abcdef";
        let some_short = Auth::new(
            Some("h".into()),
            &pairs(&[("s1", "t1"), ("s1", "t2"), ("s2", long), ("s3", "x")]),
        );
        assert_eq!(
            some_short.short_tokens(),
            [
                "the host token (--token, CAIRN_TOKEN)",
                "the session token for `s1`",
                "the session token for `s3`"
            ]
        );
        assert!(Auth::new(Some(long.into()), &pairs(&[("s2", long)]))
            .short_tokens()
            .is_empty());
        for bad in ["", "t\n", " t", "pässwörd", "a b"] {
            let host = Auth::new(Some(bad.into()), &[]).check_tokens();
            assert!(host.is_err(), "host token {bad:?}");
            let session = Auth::new(None, &pairs(&[("s1", bad)])).check_tokens();
            assert!(session.is_err(), "session token {bad:?}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer t", "bearer t", "BEARER t", "bEaReR  t ", " Bearer t"] {
            assert_eq!(bearer_token(v), Some("t"), "{v:?}");
        }
        for v in ["Basic dDp0", "Bearert", "Token t", ""] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }

    #[test]
    fn refuses_open_non_loopback() {
        let open = Auth::new(None, &[]);
        assert!(open.check_bind(&"0.0.0.0:1".parse().unwrap()).is_err());
        assert!(open.check_bind(&"127.0.0.1:1".parse().unwrap()).is_ok());
        let host = Auth::new(Some("h".into()), &[]);
        assert!(host.check_bind(&"0.0.0.0:1".parse().unwrap()).is_ok());
    }
}
