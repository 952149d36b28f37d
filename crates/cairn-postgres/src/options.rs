//! [`PostgresOptions`]: how to connect, and the URL parameters that are
//! cairn's (`schema`, `write_lanes`, `read_connections`, `max_batch`,
//! `call_timeout`), taken out of the URL before it reaches the PostgreSQL client.

use std::time::Duration;

use cairn_core::clock::SharedClock;

/// How to connect a [`PostgresRegistry`].
#[derive(Clone)]
pub struct PostgresOptions {
    /// A libpq-style URL or key=value string (`postgres://user@host:5432/db`).
    pub url: String,
    /// The schema cairn's tables live in (default `cairn`).
    pub schema: String,
    /// The clock every expiry and retention decision reads.
    pub clock: SharedClock,
    /// Write lanes, each one connection committing batches (default 1: a batch
    /// is two round trips, so one lane keeps a node's writes flowing, and every
    /// extra lane is another writer contending on the server).
    pub write_lanes: usize,
    /// Most operations committed in one batch (default 256).
    pub max_batch: usize,
    /// Shared connections for reads (default 2); each pipelines many queries.
    pub read_connections: usize,
    /// Longest a call waits for the server (default 30 s): past it a read
    /// fails `unavailable`, and a write fails `unavailable` when it was never
    /// sent, `outcome_unknown` when it was (it may still land). A server that
    /// stops answering (a frozen host or relay, which no TCP fault reports)
    /// would otherwise hold every call until it answers again.
    pub call_timeout: Duration,
    /// How long a prune's collection keeps an env spec or type list no
    /// process names after it was last stored, by the server's clock
    /// (default [`cairn_core::registry::DEFAULT_COLLECT_GRACE`], an hour;
    /// ADR 0034). With several nodes it must stay far above the 10 minutes a
    /// lane names a list it stored without storing it again.
    pub collect_grace: Duration,
    /// Follow the database server's clock (default off): the registry's
    /// clock ([`PostgresRegistry::clock`]) is then [`PostgresOptions::clock`]
    /// plus an offset to the server's `clock_timestamp()`, measured when it
    /// connects and every 30 s after (ADR 0035). Nodes on one database
    /// compare lease expiries, deadlines and schedule fires other nodes
    /// wrote, so a host running several nodes turns this on and gives its
    /// runtime the registry's clock. Off, the clock is used as given (tests
    /// keep a manual clock's time).
    ///
    /// [`PostgresRegistry::clock`]: crate::PostgresRegistry::clock
    pub follow_server_clock: bool,
    /// How often the server's clock is measured again (30 s; tests shorten it).
    pub(crate) clock_refresh: Duration,
    /// Why a cairn parameter in the URL was refused; reported by
    /// [`PostgresRegistry::connect_with`] before it connects.
    pub(crate) url_error: Option<String>,
}

/// cairn's own numeric URL parameters, with their bounds: taken out of the URL
/// before it reaches the PostgreSQL client.
const URL_PARAMETERS: [(&str, usize, usize); 4] = [
    ("write_lanes", 1, 64),
    ("read_connections", 1, 64),
    ("max_batch", 1, 10_000),
    // Seconds.
    ("call_timeout", 1, 3600),
];

/// [`PostgresOptions::call_timeout`]'s default: past any healthy statement of
/// cairn's (each touches a bounded set of rows), and under the CLI's own
/// 60 s wait for an answer, so a silent server reads as such.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl PostgresOptions {
    /// The defaults for `url`, on `clock`. A `schema=NAME` query parameter in the
    /// URL chooses the schema (it is cairn's, not libpq's, and is removed).
    ///
    /// So do `write_lanes`, `read_connections`, `max_batch` and `call_timeout`
    /// (whole numbers within 1..=64, 1..=64, 1..=10000 and 1..=3600, the last
    /// in seconds), which set the fields of the same names; a value out of
    /// range or not a number is refused by
    /// [`PostgresRegistry::connect_with`] before it connects.
    pub fn new(url: &str, clock: SharedClock) -> Self {
        let raw = url;
        let (url, schema) = split_schema(url);
        let mut options = Self {
            url: String::new(),
            schema: schema.unwrap_or_else(|| "cairn".into()),
            clock,
            write_lanes: 1,
            max_batch: 256,
            read_connections: 2,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            collect_grace: cairn_core::registry::DEFAULT_COLLECT_GRACE,
            follow_server_clock: false,
            clock_refresh: crate::server_clock::REFRESH,
            url_error: None,
        };
        // As cairn's other parameters: given twice, which one was meant
        // cannot be told.
        let schemas = url_query(raw).filter(|kv| kv.starts_with("schema=")).count();
        if schemas > 1 {
            options.url_error = Some("postgres URL parameter `schema` is given twice".into());
        }
        options.url = options.take_url_parameters(&url);
        options
    }

    /// Set the fields cairn's numeric parameters name; answers the URL without them.
    fn take_url_parameters(&mut self, url: &str) -> String {
        let Some((base, query)) = url.split_once('?') else {
            return url.to_string();
        };
        let mut seen: Vec<&str> = Vec::new();
        let mut rest = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            // cairn connects without TLS: a setting that asks for it would
            // fail later as a network fault, or not at all (`prefer` falls
            // back to plain text, as libpq's does).
            let tls_asked = match key {
                "sslmode" => matches!(value, "require" | "verify-ca" | "verify-full"),
                "sslrootcert" | "sslcert" | "sslkey" | "sslpassword" => true,
                _ => false,
            };
            if tls_asked {
                self.url_error.get_or_insert(format!(
                    "postgres URL parameter `{key}` asks for TLS, which cairn's PostgreSQL connections do not \
                     make: reach the server over a private network or a TLS-terminating proxy (`sslmode=disable` \
                     or `prefer` connect in plain text)"
                ));
                continue;
            }
            let Some(&(name, min, max)) = URL_PARAMETERS.iter().find(|(name, _, _)| *name == key) else {
                rest.push(kv);
                continue;
            };
            let parsed = value.parse::<usize>().ok().filter(|n| (min..=max).contains(n));
            let problem = if seen.contains(&name) {
                Some(format!("postgres URL parameter `{name}` is given twice"))
            } else if parsed.is_none() {
                Some(format!(
                    "postgres URL parameter `{name}` must be a whole number from {min} to {max}, not `{}`",
                    value.escape_debug()
                ))
            } else {
                None
            };
            seen.push(name);
            match (problem, parsed) {
                (Some(p), _) => {
                    self.url_error.get_or_insert(p);
                }
                (None, Some(n)) => match name {
                    "write_lanes" => self.write_lanes = n,
                    "read_connections" => self.read_connections = n,
                    "call_timeout" => self.call_timeout = Duration::from_secs(n as u64),
                    _ => self.max_batch = n,
                },
                (None, None) => {}
            }
        }
        if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        }
    }

    /// The same options, following the database server's clock or not
    /// ([`PostgresOptions::follow_server_clock`]).
    pub fn following_server_clock(mut self, follow: bool) -> Self {
        self.follow_server_clock = follow;
        self
    }

    /// The same options, measuring the server's clock again every `every`
    /// instead of every 30 s (tests of the refresh).
    #[cfg(any(test, feature = "test-util"))]
    pub fn clock_refresh_for_test(mut self, every: Duration) -> Self {
        self.clock_refresh = every;
        self
    }

    /// The same options on another schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("write_lanes", &self.write_lanes)
            .field("max_batch", &self.max_batch)
            .field("read_connections", &self.read_connections)
            .field("call_timeout", &self.call_timeout)
            .field("collect_grace", &self.collect_grace)
            .field("follow_server_clock", &self.follow_server_clock)
            .finish_non_exhaustive()
    }
}

/// The `key=value` pairs of a URL's query string, as [`split_schema`] reads them.
fn url_query(url: &str) -> impl Iterator<Item = &str> {
    url.split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default()
        .split('&')
}

/// Remove cairn's `schema=` parameter from a URL's query string: the URL a
/// plain PostgreSQL client accepts, and the schema it named.
pub fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("schema=") {
            Some(v) => {
                schema = Some(v.to_string());
                false
            }
            None => !kv.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, schema)
}

/// A URL with its password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut shown = 0;
    for (start, end) in secret_spans(url) {
        let start = start.max(shown);
        if end <= start {
            continue;
        }
        out.push_str(&url[shown..start]);
        out.push_str("***");
        shown = end;
    }
    out.push_str(&url[shown..]);
    out
}

/// The passwords a URL or libpq string may carry, under every reading
/// [`redact`] hides: for a caller that must also hide them where a message
/// quotes them apart from the URL.
pub fn secrets(url: &str) -> Vec<&str> {
    secret_spans(url)
        .into_iter()
        .map(|(start, end)| &url[start..end])
        .filter(|s| !s.is_empty())
        .collect()
}

/// The byte spans [`redact`] hides, sorted by start.
fn secret_spans(url: &str) -> Vec<(usize, usize)> {
    // Hidden under every reading of the URL, since a password may hold `?`,
    // `@` or `:` unencoded and the parser and a reader may split it apart
    // differently: hiding too much is no harm here, showing any of it is.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    // The credentials as the parser reads them: after the scheme, up to the
    // first `@`, or to the last `@` before the host's end when more follow
    // (`u:p@ss@h`); the password is what follows the first `:` in them.
    let rest_at = url.find("://").map_or(0, |i| i + 3);
    // A SQLite path is a path: an `@` in it names no credentials.
    let credentials = !url.starts_with("sqlite:");
    if let Some(first) = url[rest_at..].find('@').map(|i| rest_at + i).filter(|_| credentials) {
        let mut at = first;
        while let Some(next) = url[at + 1..].find('@').map(|i| at + 1 + i) {
            if url[at + 1..next].contains(['/', '?']) {
                break;
            }
            at = next;
        }
        let colon = if rest_at > 0 {
            url[rest_at..at].find(':').map(|i| rest_at + i)
        } else {
            url[..at].rfind(':')
        };
        if let Some(colon) = colon {
            spans.push((colon + 1, at));
        }
    }
    spans.extend(password_values(url));
    spans.sort();
    spans
}

/// The spans of every `...password=VALUE` parameter or word, wherever it
/// stands, under the readings a client gives them: a query key
/// percent-encoded (`%70assword=`, which the parser decodes), and a libpq
/// `key = value` word with spaces around its `=` or a quoted value.
fn password_values(url: &str) -> Vec<(usize, usize)> {
    let bytes = url.as_bytes();
    let mut spans = Vec::new();
    for (eq, _) in url.match_indices('=') {
        // The key: back over spaces, then to the previous separator.
        let key_end = url[..eq].trim_end().len();
        let key_start = url[..key_end]
            .rfind(['?', '&', ';', ' ', '\t', '\n'])
            .map_or(0, |i| i + 1);
        let key = form_urlencoded::parse(&url.as_bytes()[key_start..key_end])
            .next()
            .map(|(k, _)| k.to_ascii_lowercase())
            .unwrap_or_default();
        if !key.ends_with("password") {
            continue;
        }
        let start = eq + 1 + (url[eq + 1..].len() - url[eq + 1..].trim_start().len());
        let end = if bytes.get(start) == Some(&b'\'') {
            // A quoted libpq value ends at its closing quote (`\'` escapes
            // one); unclosed, it runs to the end.
            let mut i = start + 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            (i + 1).min(bytes.len())
        } else {
            url[start..]
                .find(['&', ' ', ';', '\t', '\n'])
                .map_or(url.len(), |e| start + e)
        };
        spans.push((start, end));
    }
    spans
}
