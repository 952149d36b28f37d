//! The models a server may call: `--model NAME=BASE_URL[,model=ID][,key_env=VAR]`.

use std::collections::BTreeMap;
use std::str::FromStr;

use cairn_core::validate::validate_id;
use cairn_core::{CairnError, Result};

/// One configured model endpoint. The API key is never held here: only the
/// name of the environment variable it is read from at each call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// The name turns use (`session.model`); `default` when a turn names none.
    pub name: String,
    /// The endpoint's base URL, e.g. `http://127.0.0.1:11434/v1`; requests go
    /// to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The model id sent to the endpoint (default: the name).
    pub model: String,
    /// The environment variable holding the bearer key, if the endpoint needs one.
    /// A key of at least [`SHORTEST_REDACTED_KEY`] bytes is taken out of
    /// whatever the endpoint answers (`[redacted]`); a shorter one (a local
    /// endpoint's dummy key, `ollama`, `EMPTY`) is not a secret worth
    /// rewriting the model's answers for, and is left in them
    /// ([`ModelSpec::key_too_short_to_redact`]).
    pub key_env: Option<String>,
}

/// The shortest key taken out of what an endpoint answers. A shorter one is
/// a word (`ollama`, `EMPTY`) or a few letters: replacing each of its
/// occurrences would rewrite the model's text, tool-call arguments and JSON
/// field names, and a tool would act on `[redacted]`. It is also the shortest
/// quote of a longer key cut off that is taken out.
pub const SHORTEST_REDACTED_KEY: usize = 16;

impl ModelSpec {
    /// Whether this model's key, as the environment holds it now, is shorter
    /// than [`SHORTEST_REDACTED_KEY`]: it is sent, but not taken out of the
    /// endpoint's answers or errors (a server says so when it starts). False
    /// without a key, or with one that cannot be read.
    pub fn key_too_short_to_redact(&self) -> bool {
        matches!(self.key(), Ok(Some(key)) if key.len() < SHORTEST_REDACTED_KEY)
    }

    /// The bearer key, read from the environment now; `None` without
    /// `key_env`; why not when the variable is not set.
    pub(crate) fn key(&self) -> std::result::Result<Option<String>, String> {
        match &self.key_env {
            None => Ok(None),
            Some(var) => {
                let key = std::env::var(var).map_err(|_| {
                    format!(
                        "model `{}`: the environment variable `{var}` holding its key is not set",
                        self.name
                    )
                })?;
                // A bearer header carries visible ASCII only: a key with a
                // trailing newline (a secret made from a file) could never
                // be sent, and would be tried again as an outage.
                if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "model `{}`: the key in `{var}` is empty or holds a space, a control character \
                         (a trailing newline?) or a non-ASCII character; its value is not shown",
                        self.name
                    ));
                }
                Ok(Some(key))
            }
        }
    }
}

impl FromStr for ModelSpec {
    type Err = CairnError;

    /// Parse `NAME=BASE_URL[,model=ID][,key_env=VAR]`.
    fn from_str(s: &str) -> Result<Self> {
        // Named by its name only: the rest may carry a secret (a key in a
        // query, a key given as an option); without `=` nothing is shown.
        let shown = s.split_once('=').map_or("", |(name, _)| name);
        let who = if shown.is_empty() {
            "a model".to_string()
        } else {
            format!("model `{shown}`")
        };
        let bad = |why: &str| {
            CairnError::InvalidRequest(format!(
                "{who}: {why} (expected NAME=BASE_URL[,model=ID][,key_env=VAR])"
            ))
        };
        let (name, rest) = s.split_once('=').ok_or_else(|| bad("no `=`"))?;
        validate_id("model name", name)?;
        // Looked for before the options are split off at `,`: a password may
        // hold a `,`, and what follows it would read as an option (named in
        // a refusal, or taken as the model id).
        match userinfo_at(rest) {
            None => {}
            Some(false) => return Err(bad(CREDENTIALS)),
            // `http://h,model=@cf/x` is a model id; `http://u:p,w@h` a
            // password. Which one cannot be told: refused, saying how to
            // write the first.
            Some(true) => {
                return Err(bad(&format!(
                    "{CREDENTIALS} (an `@` in an option after a base URL with no path reads as one: \
                     give the path, such as `/v1`)"
                )))
            }
        }
        let mut parts = rest.split(',');
        let base_url = parts.next().unwrap_or_default().trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base_url).map_err(|e| bad(&format!("base URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the base URL must be http or https"));
        }
        // Requests go to `{base_url}/chat/completions`: a query or a fragment
        // would end up before that path, or be dropped.
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("the base URL may have no query (`?`) or fragment (`#`)"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(CREDENTIALS));
        }
        let mut spec = ModelSpec {
            name: name.to_string(),
            base_url,
            model: name.to_string(),
            key_env: None,
        };
        let mut seen = std::collections::BTreeSet::new();
        for part in parts {
            let option = match part.split_once('=') {
                Some(("model", id)) if !id.is_empty() => {
                    spec.model = id.to_string();
                    "model"
                }
                Some(("key_env", var)) if is_variable_name(var) => {
                    spec.key_env = Some(var.to_string());
                    "key_env"
                }
                // Named by its key only: its value may be a secret (a key
                // given where its variable's name belongs).
                Some(("model", _)) => return Err(bad("`model=` names the model id to ask for, and is empty")),
                Some(("key_env", _)) => {
                    return Err(bad(
                        "`key_env=` names an environment variable (letters, digits and `_`, \
                         not starting with a digit); the value given is not shown",
                    ))
                }
                _ => {
                    return Err(bad(&match part.split_once('=') {
                        Some((key, _)) => format!("unknown option `{key}=`"),
                        None => "an option without `=`".to_string(),
                    }))
                }
            };
            if !seen.insert(option) {
                return Err(bad(&format!("`{option}=` is given twice")));
            }
        }
        Ok(spec)
    }
}

/// Why a base URL with a user or a password is refused: they would be sent
/// as Basic auth, and an endpoint that quotes them in an error would have
/// them stored in the turn's failure and logged (SPEC §15).
const CREDENTIALS: &str = "the base URL may hold no user or password (not shown: it may hold a secret); \
                           give the key in an environment variable named by `key_env=`";

/// Whether the base URL at the start of `rest` may have a userinfo
/// (`user@`, `user:password@`): an `@` before its path, query or fragment, as
/// a URL parser reads it (tabs and newlines dropped, any run of slashes after
/// the scheme taken as the `//`). `Some(true)` when a `,` comes before that
/// `@`, so that it may be in an option instead.
fn userinfo_at(rest: &str) -> Option<bool> {
    let (_, after) = rest.split_once(':')?;
    let after: String = after.chars().filter(|c| !matches!(c, '\t' | '\n' | '\r')).collect();
    let authority = after
        .trim_start_matches(['/', '\\'])
        .split(['/', '\\', '?', '#'])
        .next()
        .unwrap_or_default();
    let at = authority.find('@')?;
    Some(authority[..at].contains(','))
}

/// Whether `var` is an environment variable's name as shells write one.
fn is_variable_name(var: &str) -> bool {
    var.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The configured models, by name.
#[derive(Clone, Debug, Default)]
pub struct Models {
    by_name: BTreeMap<String, ModelSpec>,
}

impl Models {
    /// The models `specs` name; a name given twice is refused, and so is a
    /// model whose `key_env` variable is not set (no call to it could succeed).
    /// A key shorter than [`SHORTEST_REDACTED_KEY`] is taken, but not redacted
    /// ([`Models::keys_too_short_to_redact`] names those models).
    pub fn new(specs: impl IntoIterator<Item = ModelSpec>) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for spec in specs {
            spec.key().map_err(CairnError::InvalidRequest)?;
            let name = spec.name.clone();
            if by_name.insert(name.clone(), spec).is_some() {
                return Err(CairnError::InvalidRequest(format!(
                    "model `{name}` is configured twice"
                )));
            }
        }
        Ok(Self { by_name })
    }

    /// The model a turn names (`default` when it names none), or `unknown_model`.
    pub fn get(&self, name: Option<&str>) -> Result<&ModelSpec> {
        let name = name.unwrap_or("default");
        self.by_name
            .get(name)
            .ok_or_else(|| CairnError::UnknownModel(name.to_string()))
    }

    /// Whether no model is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The names of the models whose key is too short to be redacted
    /// ([`ModelSpec::key_too_short_to_redact`]), for a server to warn of at
    /// start: their key, if an endpoint quotes it, is journaled as quoted.
    pub fn keys_too_short_to_redact(&self) -> Vec<&str> {
        self.by_name
            .values()
            .filter(|spec| spec.key_too_short_to_redact())
            .map(|spec| spec.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        let m: ModelSpec = "default=http://127.0.0.1:8080/v1/,model=llama3,key_env=LOCAL_KEY"
            .parse()
            .expect("parse");
        assert_eq!(m.name, "default");
        assert_eq!(m.base_url, "http://127.0.0.1:8080/v1");
        assert_eq!(m.model, "llama3");
        assert_eq!(m.key_env.as_deref(), Some("LOCAL_KEY"));
        let plain: ModelSpec = "gpt=https://api.example.com/v1".parse().expect("parse");
        assert_eq!((plain.model.as_str(), plain.key_env), ("gpt", None));
        for bad in [
            "noequals",
            "x=ftp://h/v1",
            "x=not a url",
            "x=http://h,colour=red",
            "=http://h",
            "x=http://h/v1?api_key=k",
            "x=http://h/v1#frag",
            "x=http://h/v1,key_env=A,key_env=B",
            "x=http://h/v1,model=a,model=b",
        ] {
            assert!(bad.parse::<ModelSpec>().is_err(), "{bad} should be refused");
        }
        // The refusal names the model, never the rest (a key in a query, a
        // key given as an option, a spec without its name).
        for (given, named) in [
            ("x=http://h/v1?api_key=sk-secret", "model `x`"),
            ("x=http://h/v1,api_key=sk-secret", "unknown option `api_key=`"),
            ("x=http://h/v1,sk-secret", "an option without `=`"),
            (
                "x=http://h/v1,model=",
                "`model=` names the model id to ask for, and is empty",
            ),
            ("https://user:sk-secret@h/v1", "no `=`"),
            (
                "x=http://h/v1,key_env=sk-secret",
                "`key_env=` names an environment variable",
            ),
            (
                "x=http://h/v1,key_env=sk_secret/x",
                "`key_env=` names an environment variable",
            ),
            (
                "x=http://h/v1,key_env=9sk_secret",
                "`key_env=` names an environment variable",
            ),
        ] {
            let e = given.parse::<ModelSpec>().expect_err("refused");
            assert!(
                e.to_string().contains(named) && !e.to_string().contains("sk-secret"),
                "{e}"
            );
        }
    }

    /// A user or a password in a base URL would go out as Basic auth, and
    /// be stored and logged wherever an endpoint quotes it: refused at
    /// parse, pointing to `key_env`, without showing any of the URL.
    #[test]
    fn credentials_in_a_base_url_are_refused_unshown() {
        for given in [
            "uk=http://bob:PASS@127.0.0.1:7721/v1",
            "uk=https://bob@h/v1",
            "uk=http://:PASS@h/v1",
            "uk=HTTP://bob:PASS@h/v1/",
            "uk=http://bob:PASS@h,model=m,key_env=K",
            "uk=http:bob:PASS@h/v1",
            "uk=http:/\t/bob:PASS@h/v1",
            "uk=http:\\\\bob:PASS@h/v1",
            "uk=http://bob%3APASS@h/v1",
            "uk=http://bob:PASS@h?x#y",
            // A `,` in the password: the base URL cut there would parse
            // (`bob:12` a host and port), and what follows read as options.
            "uk=http://bob:12,PASS@h/v1",
            "uk=http://bob:12,PASS=x@h/v1",
            "uk=http://bob:12,model=PASS@h/v1",
            "uk=http://bob:PA,SS@h/v1",
        ] {
            let e = given.parse::<ModelSpec>().expect_err(given).to_string();
            assert!(
                e.contains("model `uk`: the base URL may hold no user or password"),
                "{given}: {e}"
            );
            assert!(e.contains("`key_env=`"), "{given}: {e}");
            assert!(!e.contains("bob") && !e.contains("PASS"), "{given}: {e}");
        }
        // An `@` after a base URL's host is in its path or an option.
        for (given, model) in [
            ("uk=http://h/v1,model=@cf/meta/llama", "@cf/meta/llama"),
            ("uk=http://h/v1/@x", "uk"),
            ("uk=http://h:8080/v1,model=a@b", "a@b"),
        ] {
            let spec: ModelSpec = given.parse().expect(given);
            assert_eq!(spec.model, model, "{given}");
        }
        // After a base URL without a path, it cannot be told from a
        // password with a `,`: refused, saying how to write it.
        let e = "uk=http://h,model=@cf/meta/llama"
            .parse::<ModelSpec>()
            .expect_err("ambiguous");
        assert!(e.to_string().contains("give the path, such as `/v1`"), "{e}");
    }

    #[test]
    fn a_key_a_header_cannot_carry_is_refused_unshown() {
        const VAR: &str = "CAIRN_TURN_CONFIG_TEST_NEWLINE_KEY";
        std::env::set_var(VAR, "sk-from-a-file\n");
        let spec: ModelSpec = format!("nl=http://h/v1,key_env={VAR}").parse().expect("parse");
        let e = spec.key().expect_err("a trailing newline is refused");
        assert!(e.contains("trailing newline") && e.contains(VAR), "{e}");
        assert!(!e.contains("sk-from-a-file"), "{e}");
        assert!(Models::new([spec.clone()]).is_err(), "refused at start too");
        std::env::set_var(VAR, "sk-fine_1.2");
        assert_eq!(spec.key(), Ok(Some("sk-fine_1.2".to_string())));
        std::env::remove_var(VAR);
    }

    /// A dummy key (`ollama`) is sent but not redacted, and said to be so;
    /// a key at the floor is redacted.
    #[test]
    fn a_short_key_is_said_to_be_left_unredacted() {
        const SHORT: &str = "CAIRN_TURN_CONFIG_TEST_SHORT_KEY";
        const LONG: &str = "CAIRN_TURN_CONFIG_TEST_LONG_KEY";
        std::env::set_var(SHORT, "ollama");
        std::env::set_var(LONG, "k".repeat(SHORTEST_REDACTED_KEY));
        let short: ModelSpec = format!("local=http://h/v1,key_env={SHORT}").parse().expect("parse");
        let long: ModelSpec = format!("remote=http://h/v1,key_env={LONG}").parse().expect("parse");
        let keyless: ModelSpec = "open=http://h/v1".parse().expect("parse");
        assert!(short.key_too_short_to_redact());
        assert!(!long.key_too_short_to_redact());
        assert!(!keyless.key_too_short_to_redact());
        let models = Models::new([short, long, keyless]).expect("a short key is taken");
        assert_eq!(models.keys_too_short_to_redact(), ["local"]);
        std::env::remove_var(SHORT);
        std::env::remove_var(LONG);
    }

    #[test]
    fn unknown_and_duplicate_models() {
        let a: ModelSpec = "default=http://h/v1".parse().expect("parse");
        let models = Models::new([a.clone()]).expect("models");
        assert_eq!(models.get(None).expect("default").name, "default");
        assert_eq!(models.get(Some("other")).expect_err("unknown").code(), "unknown_model");
        assert!(Models::new([a.clone(), a]).is_err());
        let unset: ModelSpec = "k=http://h/v1,key_env=CAIRN_TURN_CONFIG_TEST_UNSET"
            .parse()
            .expect("parse");
        let e = Models::new([unset]).expect_err("an unset key variable");
        assert!(
            e.to_string()
                .contains("the environment variable `CAIRN_TURN_CONFIG_TEST_UNSET` holding its key is not set"),
            "{e}"
        );
    }
}
