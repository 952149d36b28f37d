//! What a request carries besides its path: an action's form and a page's
//! query. Both are read strictly, as the API reads its bodies and queries: a
//! field or parameter the route does not take, or one given twice, is
//! refused (and the action changes nothing), and every refusal is said in
//! cairn's words, naming the field, never in the HTTP framework's.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::pages;

/// The fields a form takes (those its struct reads; the struct denies any
/// other, so the two cannot drift apart unnoticed).
pub(crate) trait Fields {
    /// Every field, in the order the form shows them.
    const FIELDS: &'static [&'static str];
}

/// The parameters a page's query takes.
pub(crate) trait Params {
    /// Every parameter, in the order the page's links write them.
    const KEYS: &'static [&'static str];
    /// The processes list: its parameters are filters, refused as
    /// `invalid_filter` in the words `GET /v1/processes` uses.
    const FILTERS: bool = false;
}

/// A form that takes no field: the action buttons (pause, resume, ack, log
/// out), whose request is all in its path.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoFields {}

impl Fields for NoFields {
    const FIELDS: &'static [&'static str] = &[];
}

/// A page's query that takes no parameter: the live list stream and the
/// record fragment, which the pages ask for by a bare address, and a
/// module's page. One sent anyway (a link edited by hand, a client that
/// believes the route filters) is refused, not ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

impl Params for NoParams {
    const KEYS: &'static [&'static str] = &[];
}

/// Why a form or a query was refused: what the page shows
/// ([`pages::error_fragment`]) and the status it is answered with.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn invalid(code: &'static str, message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
        }
    }

    fn unsupported(message: String) -> Self {
        Self {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "invalid_request",
            message,
        }
    }

    /// The refusal as the error fragment an action answers with.
    pub fn fragment(&self) -> maud::Markup {
        pages::error_fragment(self.code, &self.message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, self.fragment()).into_response()
    }
}

/// The form type every dashboard form is sent as (htmx's, and a browser's
/// `<form method="post">`).
const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// An action's form, read strictly: sent as [`FORM_TYPE`] (else 415, as the
/// API answers a body of the wrong type), each field `T` takes at most once,
/// none it does not take, and no query string (a form's fields go in its
/// body: one sent in the address would be ignored while the action went
/// ahead). An empty body may leave its type out (a bare `POST`).
pub(crate) struct ActionForm<T>(pub T);

impl<S, T> FromRequest<S> for ActionForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Fields,
{
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(query) = req.uri().query().filter(|q| !q.is_empty()) {
            return Err(Refusal::invalid(
                "invalid_request",
                format!(
                    "`{} {}` takes no query parameters (got `{}`): a form's fields go in its body",
                    req.method(),
                    req.uri().path(),
                    clip(query)
                ),
            ));
        }
        let content_type = form_type(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Refusal {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    code: "payload_too_large",
                    message: "request body is over the server's size limit".into(),
                }
            } else {
                Refusal {
                    status: e.status(),
                    code: "invalid_request",
                    message: "the request body could not be read".into(),
                }
            }
        })?;
        // A bare `POST` (no body) names no type; a body must be a form.
        if content_type.is_none() && !bytes.is_empty() {
            return Err(not_a_form());
        }
        let body = std::str::from_utf8(&bytes).map_err(|_| {
            Refusal::invalid(
                "invalid_request",
                "the form is not UTF-8 text: send it as `application/x-www-form-urlencoded`".into(),
            )
        })?;
        let pairs = pairs(body, "the form")?;
        read_form(pairs).map(ActionForm)
    }
}

/// The form's type: none (an empty body may leave it out), or
/// [`FORM_TYPE`], in UTF-8 and not compressed; anything else is 415.
fn form_type(headers: &HeaderMap) -> Result<Option<()>, Refusal> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let coding = value.to_str().unwrap_or("?").trim();
        if !coding.is_empty() && !coding.eq_ignore_ascii_case("identity") {
            return Err(Refusal::unsupported(format!(
                "forms are read as sent: `Content-Encoding: {}` is not supported",
                coding.escape_debug()
            )));
        }
    }
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    // Read by the `mime` crate: quoted parameters, case and spacing as RFC
    // 9110 allows them.
    let mime: mime::Mime = value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(not_a_form)?;
    if mime.essence_str() != FORM_TYPE {
        return Err(not_a_form());
    }
    if let Some(charset) = mime.get_param(mime::CHARSET) {
        let charset = charset.as_str().to_ascii_lowercase();
        if !["utf-8", "utf8", "us-ascii", "ascii"].contains(&charset.as_str()) {
            return Err(Refusal::unsupported(format!(
                "forms are read as UTF-8: `charset={}` is not supported",
                charset.escape_debug()
            )));
        }
    }
    Ok(Some(()))
}

fn not_a_form() -> Refusal {
    Refusal::unsupported(format!("forms must be sent with `Content-Type: {FORM_TYPE}`"))
}

/// `T` read from a form's `pairs`: each a field `T` takes, none twice.
fn read_form<T: DeserializeOwned + Fields>(pairs: Vec<(String, String)>) -> Result<T, Refusal> {
    let bad = |message| Refusal::invalid("invalid_request", message);
    let mut fields = serde_json::Map::new();
    for (key, value) in pairs {
        if key.is_empty() {
            return Err(bad(format!("a field has no name: {}", form_takes(T::FIELDS))));
        }
        if !T::FIELDS.contains(&key.as_str()) {
            return Err(bad(format!(
                "unknown field `{}`: {}",
                clip(&key),
                form_takes(T::FIELDS)
            )));
        }
        if fields.contains_key(&key) {
            return Err(bad(format!("field `{key}` given twice")));
        }
        fields.insert(key, serde_json::Value::String(value));
    }
    // Every field is text, so only one left out can fail here
    // (`missing field `outcome``).
    serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| bad(e.to_string()))
}

/// "this form takes `a`, `b` and `c`", or "this action takes no fields".
fn form_takes(fields: &[&str]) -> String {
    if fields.is_empty() {
        "this action takes no fields".into()
    } else {
        format!("this form takes {}", said_list(fields))
    }
}

/// A page's query, read strictly: each parameter `T` takes at most once,
/// none it does not take, in UTF-8; refused in the words the API uses for
/// the same mistakes (the processes list's in `GET /v1/processes`'s, as
/// `invalid_filter`).
pub(crate) struct UiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for UiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Params,
{
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        read_query(parts.uri.query()).map(UiQuery)
    }
}

/// `T` read from the query `raw`.
pub(crate) fn read_query<T: DeserializeOwned + Params>(raw: Option<&str>) -> Result<T, Refusal> {
    let code = if T::FILTERS {
        "invalid_filter"
    } else {
        "invalid_request"
    };
    let bad = |message| Refusal::invalid(code, message);
    let raw = raw.unwrap_or("");
    let pairs = pairs(raw, "the query").map_err(|r| bad(r.message))?;
    let (what, takes) = if T::FILTERS {
        ("filter key", format!("this route takes {}", said_list(T::KEYS)))
    } else {
        ("query parameter", format!("this route takes {}", said_list(T::KEYS)))
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, _) in &pairs {
        if key.is_empty() {
            return Err(bad(format!("a {what} has no name: {takes}")));
        }
        if !T::KEYS.contains(&key.as_str()) {
            return Err(bad(format!("unknown {what} `{}`: {takes}", clip(key))));
        }
        if seen.contains(&key.as_str()) {
            return Err(bad(if T::FILTERS {
                format!("filter key `{key}` given twice")
            } else {
                format!("`{key}` is given twice")
            }));
        }
        seen.push(key);
    }
    // Keys checked, only a value can be refused here: which parameter
    // wants what. Read as axum's `Query` reads it (the query is part of a
    // URI that parsed, so it parses again).
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|_| bad("the query cannot be read".into()))?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| bad(value_refused(&e.body_text(), &pairs)))
}

/// A parameter's value refused by its type, in words: which parameter
/// wants what, and what it got (the reader says only "invalid digit found
/// in string").
fn value_refused(text: &str, pairs: &[(String, String)]) -> String {
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    let numeric = [
        "invalid digit found in string",
        "cannot parse integer from empty string",
        "number too large to fit in target type",
    ];
    if let Some((field, why)) = detail.split_once(": ") {
        let given = pairs
            .iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| clip(v))
            .unwrap_or_default();
        if numeric.contains(&why) {
            let meant = if why.starts_with("number too large") {
                format!("is over the largest accepted value {}", u64::MAX)
            } else {
                "must be a non-negative integer".into()
            };
            return format!("`{field}` {meant}, got `{given}`");
        }
        if why.contains("`true` or `false`") {
            return format!("`{field}` must be `true` or `false`, got `{given}`");
        }
        if !field.is_empty() && !field.contains(' ') {
            return format!("`{field}`: {}", cairn_core::validate::wire_terms(why));
        }
    }
    cairn_core::validate::wire_terms(detail)
}

/// The `key=value` pairs of an `application/x-www-form-urlencoded` text
/// (a form body or a query), decoded; a key or value whose bytes are not
/// UTF-8 is refused (a lenient reader would turn it into U+FFFD and act on
/// that). Empty pieces (`a=1&&b=2`) are skipped, as every reader does.
fn pairs(text: &str, what: &str) -> Result<Vec<(String, String)>, Refusal> {
    let mut out = Vec::new();
    for piece in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
        let decode = |part: &str| {
            decoded(part).ok_or_else(|| {
                Refusal::invalid(
                    "invalid_request",
                    format!("{what} holds `{}`, which does not decode to UTF-8 text", clip(part)),
                )
            })
        };
        out.push((decode(key)?, decode(value)?));
    }
    Ok(out)
}

/// `part` with `+` as a space and each `%XX` as its byte; `None` when the
/// bytes are not UTF-8. A `%` not followed by two hex digits stands for
/// itself, as in every form reader.
fn decoded(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// At most 100 characters of `s` (a key or value a caller sent may be of
/// any length), with `…` when cut.
fn clip(s: &str) -> String {
    let mut shown: String = s.chars().take(100).collect();
    if s.chars().nth(100).is_some() {
        shown.push('…');
    }
    shown
}

/// `` only `a` ``, `` `a` and `b` `` or `` `a`, `b` and `c` ``, as the API
/// names what a route takes; "no parameters" for none.
fn said_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => "no parameters".into(),
        [one] => format!("only {one}"),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Two {
        a: String,
        #[serde(default)]
        b: String,
    }

    impl Fields for Two {
        const FIELDS: &'static [&'static str] = &["a", "b"];
    }

    fn form(body: &str) -> Result<Two, String> {
        pairs(body, "the form")
            .and_then(read_form::<Two>)
            .map_err(|r| r.message)
    }

    #[test]
    fn a_form_is_read_strictly_and_refused_by_field() {
        assert_eq!(
            form("a=x+y%21&b=").unwrap(),
            Two {
                a: "x y!".into(),
                b: String::new()
            }
        );
        assert_eq!(form("a=1&&").unwrap().a, "1");
        assert_eq!(form("a=100%").unwrap().a, "100%", "a lone `%` stands for itself");
        assert_eq!(
            form("a=1&bogus=2").unwrap_err(),
            "unknown field `bogus`: this form takes `a` and `b`"
        );
        assert_eq!(form("a=1&a=2").unwrap_err(), "field `a` given twice");
        assert_eq!(
            form("a=1&%61=2").unwrap_err(),
            "field `a` given twice",
            "the key as decoded"
        );
        assert_eq!(form("b=1").unwrap_err(), "missing field `a`");
        assert_eq!(
            form("=1").unwrap_err(),
            "a field has no name: this form takes `a` and `b`"
        );
        assert_eq!(
            form("a=%FF").unwrap_err(),
            "the form holds `%FF`, which does not decode to UTF-8 text"
        );
        let long = "k".repeat(500);
        let said = form(&format!("{long}=1")).unwrap_err();
        assert!(said.len() < 200, "{said}");
        assert_eq!(
            pairs("x=1", "the form")
                .and_then(read_form::<NoFields>)
                .err()
                .map(|r| r.message),
            Some("unknown field `x`: this action takes no fields".to_string())
        );
        assert!(pairs("", "the form").and_then(read_form::<NoFields>).is_ok());
    }

    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Page {
        after: Option<u64>,
        all: bool,
    }

    impl Params for Page {
        const KEYS: &'static [&'static str] = &["after", "all"];
    }

    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Filters {
        status: String,
    }

    impl Params for Filters {
        const KEYS: &'static [&'static str] = &["status"];
        const FILTERS: bool = true;
    }

    #[test]
    fn a_query_is_refused_in_the_apis_words() {
        let page = |q: &str| read_query::<Page>(Some(q)).map_err(|r| (r.code, r.message));
        assert_eq!(page("after=3&all=true").unwrap().after, Some(3));
        assert!(page("").unwrap().after.is_none());
        assert_eq!(
            page("bogus=1").unwrap_err(),
            (
                "invalid_request",
                "unknown query parameter `bogus`: this route takes `after` and `all`".into()
            )
        );
        assert_eq!(page("after=1&after=2").unwrap_err().1, "`after` is given twice");
        assert_eq!(
            page("after=x").unwrap_err().1,
            "`after` must be a non-negative integer, got `x`"
        );
        assert_eq!(
            page("after=-1").unwrap_err().1,
            "`after` must be a non-negative integer, got `-1`"
        );
        assert_eq!(
            page("all=maybe").unwrap_err().1,
            "`all` must be `true` or `false`, got `maybe`"
        );
        assert_eq!(
            page("after=%FF").unwrap_err().1,
            "the query holds `%FF`, which does not decode to UTF-8 text"
        );
        let list = |q: &str| read_query::<Filters>(Some(q)).map_err(|r| (r.code, r.message));
        assert_eq!(
            list("bogus=1").unwrap_err(),
            (
                "invalid_filter",
                "unknown filter key `bogus`: this route takes only `status`".into()
            )
        );
        assert_eq!(
            list("status=running&status=any").unwrap_err(),
            ("invalid_filter", "filter key `status` given twice".into())
        );
        assert_eq!(list("status=a%26b").unwrap().status, "a&b", "a value is decoded");
    }
}
