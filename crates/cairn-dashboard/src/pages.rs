//! The page frame and the pieces every page shares (maud templates: checked at
//! compile time, escaped by default).

use cairn_core::{ProcessEvent, ProcessRecord, ProcessStatus};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use crate::auth::Visitor;
use crate::time;

/// Which nav item is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Processes,
    Sessions,
    Modules,
    Schedules,
}

/// Any other path under `/ui`: 404, said in a page with the navigation (the
/// API's JSON answer is no page to a browser).
pub(crate) async fn not_found(axum::Extension(visitor): axum::Extension<Visitor>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = html! {
        h1 { "Not found" }
        (error_fragment("not_found", "no such page: the navigation above lists the pages"))
    };
    (
        axum::http::StatusCode::NOT_FOUND,
        layout("Not found", &visitor, Nav::Processes, body),
    )
        .into_response()
}

/// A full page: head, nav and `body`. The CSRF token rides in `hx-headers`, so
/// every htmx request from the page carries it.
pub(crate) fn layout(title: &str, visitor: &Visitor, nav: Nav, body: Markup) -> Markup {
    let headers = serde_json::json!({ crate::CSRF_HEADER: visitor.csrf }).to_string();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="cairn-csrf" content=(visitor.csrf);
                // Read by htmx once the page has loaded: nothing evaluated from
                // attributes (`hx-on`, `js:`), no scripts run from swapped-in
                // HTML, and no `<style>` of its own (app.css has its rules), as
                // the Content-Security-Policy would refuse them anyway.
                meta name="htmx-config" content=(HTMX_CONFIG);
                title { (plain(title)) " · cairn" }
                (icon())
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/htmx-2.0.11.min.js" {}
                script src="/ui/assets/htmx-ext-sse-2.2.4.min.js" {}
                script src="/ui/assets/app.js" {}
            }
            body hx-headers=(headers) {
                header.top {
                    a.brand href="/ui/processes" { "cairn" }
                    nav {
                        a href="/ui/processes" aria-current=[(nav == Nav::Processes).then_some("page")] { "Processes" }
                        a href="/ui/sessions" aria-current=[(nav == Nav::Sessions).then_some("page")] { "Sessions" }
                        a href="/ui/modules" aria-current=[(nav == Nav::Modules).then_some("page")] { "Modules" }
                        @if visitor.viewer == crate::Viewer::Host {
                            a href="/ui/schedules" aria-current=[(nav == Nav::Schedules).then_some("page")] { "Schedules" }
                        }
                    }
                    // Whether the page's live stream is open: shown once it
                    // opens, said when it is lost (`app.js`).
                    span #live-state .live role="status" hidden {}
                    span.viewer title="who this page acts as" { (id(&visitor.viewer.label())) }
                    @if visitor.logged_in {
                        button.link hx-post="/ui/logout" { "Log out" }
                    }
                }
                main {
                    noscript {
                        p.result.err role="alert" {
                            "This dashboard needs JavaScript: without it, pages load, but their actions "
                            "(signal, cancel, abandon, complete, log out), live updates and event timelines do not work. "
                            "The CLI (`cairn events`, `cairn signal`, ...) does all of it."
                        }
                    }
                    (body)
                }
            }
        }
    }
}

/// The page's icon: none, declared, so the browser does not ask for
/// `/favicon.ico` (the API's JSON 404) on every page.
fn icon() -> Markup {
    html! { link rel="icon" href="data:,"; }
}

/// The login page (only shown when the server has tokens).
pub(crate) fn login(problem: Option<&str>, next: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in · cairn" }
                (icon())
                link rel="stylesheet" href="/ui/assets/app.css";
            }
            body {
                main.login {
                    h1 { "cairn" }
                    form method="post" action="/ui/login" {
                        label for="token" { "Token (host or session)" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        @if let Some(next) = next {
                            input type="hidden" name="next" value=(next);
                        }
                        button type="submit" { "Log in" }
                    }
                    @if let Some(p) = problem {
                        p.result.err role="alert" { (p) }
                    }
                    p.hint {
                        "The browser keeps a random login id in a cookie, never the token. Browsers send "
                        "a host's cookies to every port of that host, so other services on this machine "
                        "may see the id: log out when done. A login ends at logout, after 24 h unused, "
                        "or when the server restarts."
                    }
                }
                script { (PreEscaped(LOGIN_SCRIPT)) }
            }
        }
    }
}

/// A page that loads `here` again at once: what a link from another site
/// gets, so the browser asks again as a same-site navigation, which carries
/// the `SameSite=Strict` login cookie.
///
/// The request never carries the link's fragment (`#ev-2`), so `here` lacks
/// it; the browser's own address has it, and the script goes there
/// ([`RELOAD_SCRIPT`]). Without scripts, a refresh to `here` (the fragment
/// lost). (The Content-Security-Policy admits this script by its hash.)
pub(crate) fn reload(here: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                script { (PreEscaped(RELOAD_SCRIPT)) }
                noscript { meta http-equiv="refresh" content={ "0; url=" (here) }; }
                title { "cairn" }
            }
            body { p { a href=(here) { "Continue to cairn" } } }
        }
    }
}

/// Loads the page's own address again, fragment and all, as a new
/// navigation from this page (same-origin: the login cookie goes along).
/// Going to the address the page already has, with a fragment, would only
/// scroll to it; and a reload would be the first, cross-site, navigation
/// again. So the entry's address is first set to another page's (the
/// login's, which `here` never is), then replaced by the page's own.
pub(crate) const RELOAD_SCRIPT: &str = "var to = location.href; \
history.replaceState(null, \"\", \"/ui/login\"); location.replace(to);";

/// On the login page: the fragment of the page the visitor was going to
/// (a redirect to the login keeps it in the login page's address, but a
/// form's post never sends it) goes along in `next`, so the login's
/// redirect lands on it.
pub(crate) const LOGIN_SCRIPT: &str = "(function () { \
var next = document.querySelector(\"form input[name=next]\"); \
if (next && location.hash && next.value.indexOf(\"#\") < 0) next.value += location.hash; })();";

/// htmx's settings on every page (`meta name="htmx-config"`).
const HTMX_CONFIG: &str = r#"{"allowEval":false,"allowScriptTags":false,"includeIndicatorStyles":false}"#;

/// The dashboard's Content-Security-Policy: scripts from its own assets and
/// its two fixed inline scripts (by their SHA-256, computed here from the
/// text the pages send), styles from its stylesheet, nothing posted or
/// framed elsewhere. An escaping slip in a page would then run nothing.
pub(crate) fn content_security_policy() -> &'static axum::http::HeaderValue {
    static POLICY: std::sync::LazyLock<axum::http::HeaderValue> = std::sync::LazyLock::new(|| {
        let hash = |script: &str| {
            use sha2::Digest;
            format!("'sha256-{}'", base64(&sha2::Sha256::digest(script.as_bytes())))
        };
        let policy = format!(
            "default-src 'self'; script-src 'self' {} {}; style-src 'self'; img-src 'self' data:; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
            hash(RELOAD_SCRIPT),
            hash(LOGIN_SCRIPT)
        );
        axum::http::HeaderValue::from_str(&policy).unwrap_or_else(|_| unreachable!("the policy is ASCII"))
    });
    &POLICY
}

/// Standard base64 with padding (what a CSP hash source is written in).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Inside a live stream's element: what hears the stream's `login` event
/// (its login lapsed; `app.js` sends the page to log in, and back).
pub(crate) fn login_listener() -> Markup {
    html! { div.login-listener hidden sse-swap="login" hx-swap="none" {} }
}

/// An error as the server gave it: its code and its message, verbatim but
/// for each [`hidden_char`] shown as its escape (a message may quote an id,
/// a reason or other text a caller gave).
pub(crate) fn error_fragment(code: &str, message: &str) -> Markup {
    html! {
        div.result.err role="alert" {
            code.code { (text(code)) } ": " span.message { (text(message)) }
        }
    }
}

/// A success note (it may quote who asked, as [`error_fragment`] may).
pub(crate) fn ok_fragment(message: &str) -> Markup {
    html! { div.result.ok role="status" { (text(message)) } }
}

/// Whether a page shows `c` as its escape (`\u202e`) rather than as it is:
/// a control character, or an invisible format one (Unicode `Cf`: the bidi
/// controls that reorder what follows, zero-width spaces and joiners, ...).
/// Shown as they are, `invoice-\u{202e}gnp.exe` reads `invoice-exe.png` and
/// `a\u{200b}b` reads `ab`; an HTML parser drops or replaces control ones.
pub(crate) fn hidden_char(c: char) -> bool {
    c.is_control() || is_format(c)
}

/// Unicode's `Cf` (format) characters.
fn is_format(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// The escape a page shows for a [`hidden_char`]: `\u202e`.
fn escape(c: char) -> String {
    format!("\\u{:04x}", u32::from(c))
}

/// `text` with each [`hidden_char`] (but a line break or tab, when
/// `keep_lines`) shown as its escape in a `span.fmt`, set apart from text
/// that spells the same.
fn shown_with(text: &str, keep_lines: bool) -> Markup {
    let hidden = |c: char| hidden_char(c) && !(keep_lines && (c == '\n' || c == '\t'));
    if !text.chars().any(hidden) {
        return html! { (text) };
    }
    html! {
        @for (plain, c) in pieces(text, hidden) {
            (plain)
            @if let Some(c) = c { span.fmt title={ "U+" (format!("{:04X}", u32::from(c))) } { (escape(c)) } }
        }
    }
}

/// `text` cut before each character `hidden` takes: each run of text with
/// the character that ends it.
fn pieces(text: &str, hidden: impl Fn(char) -> bool) -> Vec<(&str, Option<char>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if hidden(c) {
            out.push((&text[start..i], Some(c)));
            start = i + c.len_utf8();
        }
    }
    out.push((&text[start..], None));
    out
}

/// An id, a session id or a label as a page shows it: each [`hidden_char`]
/// as its escape, the whole isolated (`bdi`) so right-to-left text in it
/// does not reorder the text around it.
pub(crate) fn id(text: &str) -> Markup {
    html! { bdi { (shown_with(text, false)) } }
}

/// Text (a payload's, a message, a reason, a module's source) as a page
/// shows it: each [`hidden_char`] but line breaks and tabs as its escape.
pub(crate) fn text(text: &str) -> Markup {
    shown_with(text, true)
}

/// Text where no markup goes (a page's title, a tooltip): each [`hidden_char`] as
/// its escape.
pub(crate) fn plain(text: &str) -> String {
    text.chars()
        .map(|c| if hidden_char(c) { escape(c) } else { c.to_string() })
        .collect()
}

/// A status badge (colour per status, readable as text too).
pub(crate) fn status(s: ProcessStatus) -> Markup {
    html! { span class={ "status s-" (s.label()) } { (s.label()) } }
}

/// A record's status badge plus `waiting` when it is in a durable wait.
pub(crate) fn status_of(r: &ProcessRecord) -> Markup {
    html! {
        (status(r.status))
        @if let Some(w) = &r.wait {
            " " span.status.s-waiting title={ "waiting since " (time::absolute(w.since_ms)) } {
                "waiting"
                @if let Some(n) = &w.name { ": " (text(n)) }
            }
        }
    }
}

/// Pretty JSON in a `<pre>`.
pub(crate) fn json(v: &Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    if text.len() <= JSON_SHOWN_BYTES {
        return html! { pre.json { (self::text(&text)) } };
    }
    let mut cut = JSON_SHOWN_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    html! {
        pre.json { (self::text(&text[..cut])) "\n…" }
        p.hint.cut {
            "Shown: the first " (JSON_SHOWN_BYTES / 1024) " KiB of " (text.len()) " bytes. "
            code { "cairn get" } " and " code { "cairn events" } " print it whole."
        }
    }
}

/// The most of one JSON value a page shows. An input, an outcome or an event
/// may be a mebibyte (pretty-printed, more): a page showing them whole grew
/// by megabytes each, and a timeline of them stalled the tab.
pub(crate) const JSON_SHOWN_BYTES: usize = 64 * 1024;

/// Anything serializable as pretty JSON.
pub(crate) fn json_of<T: serde::Serialize>(v: &T) -> Markup {
    json(&serde_json::to_value(v).unwrap_or(Value::Null))
}

/// One timeline entry: sequence, type, time, and the payload folded away.
pub(crate) fn timeline_entry(e: &ProcessEvent) -> Markup {
    let terminal = e.semantics.terminal.is_some();
    // A script's journaled shell call names the variables it forwards, not
    // their values (as the child's own input is shown).
    let mut payload = e.payload.clone();
    cairn_core::tool::hide_shell_env(&mut payload);
    let summary = payload_summary(&payload);
    html! {
        li.event.terminal[terminal] id={ "ev-" (e.sequence) } data-seq=(e.sequence) {
            details {
                summary {
                    span.seq { "#" (e.sequence) }
                    " " code.etype { (e.event_type) }
                    " " (time::when(e.occurred_at_ms))
                    @if !summary.is_empty() { " " span.peek { (text(&summary)) } }
                }
                (json(&payload))
                @if let Some(k) = &e.replay_key { p.hint { "replay key " code { (id(k)) } } }
            }
        }
    }
}

/// A short one-line look at a payload for the collapsed entry.
fn payload_summary(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::Object(m) if m.is_empty() => return String::new(),
        other => other.to_string(),
    };
    let mut short: String = text.chars().take(90).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_the_standard_alphabet_with_padding() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), coded);
        }
        assert_eq!(super::base64(&[0xfb, 0xff]), "+/8=");
    }
}
