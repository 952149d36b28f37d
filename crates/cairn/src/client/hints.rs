//! The commands a client command's notes and errors suggest pasting
//! (`cairn events ID --follow`, `cairn get ID`): they carry the `--server`
//! the user typed, so that, pasted as they are, they ask the same server and
//! not the default one. A server that came from `CAIRN_SERVER` is left out
//! (the pasted command reads it the same way), and a token never shown: when
//! one was typed, the note says the command needs it.

use std::sync::OnceLock;

/// What the command line gave, set once per client command.
#[derive(Debug, Default)]
struct Given {
    /// ` --server URL` (quoted for a shell when it must be), or empty.
    server: String,
    /// `--token` was on the command line.
    token: bool,
}

static GIVEN: OnceLock<Given> = OnceLock::new();

/// What a write whose answer was lost suggests, set by the command that
/// knows it: the command that reads whether the write was done
/// (`get ci-7`), and the one that repeats it safely, when the repeat must
/// carry an id made here (`signal ci-7 go --id ...`).
#[derive(Debug)]
struct Lost {
    check: String,
    repeat: Option<String>,
}

static LOST: OnceLock<Lost> = OnceLock::new();

/// Record what the command line gave: the `--server` typed, if any, and
/// whether a `--token` was. Later calls change nothing.
pub fn set(server_flag: Option<&str>, token_flag: bool) {
    let server = server_flag
        .map(|s| format!(" --server {}", shell_word(s)))
        .unwrap_or_default();
    let _ = GIVEN.set(Given {
        server,
        token: token_flag,
    });
}

/// `cairn REST` with the `--server` typed, if any (`cairn --server
/// http://h:7070 events x1 --follow`).
pub fn cmd(rest: impl std::fmt::Display) -> String {
    let server = GIVEN.get().map_or("", |g| g.server.as_str());
    format!("cairn{server} {rest}")
}

/// ` (with your --token)` when a token was typed (the command suggested
/// needs it, and it is not shown), else empty.
pub fn token_note() -> &'static str {
    if GIVEN.get().is_some_and(|g| g.token) {
        " (with your --token)"
    } else {
        ""
    }
}

/// Record, for a write whose answer may be lost, the command (after
/// `cairn`) that reads whether it was done and, when a plain repeat would
/// not be taken once, the command that repeats it safely. Later calls
/// change nothing.
pub fn on_lost_answer(check: impl std::fmt::Display, repeat: Option<String>) {
    let _ = LOST.set(Lost {
        check: check.to_string(),
        repeat,
    });
}

/// What to do when a write's answer was lost: read the state first (with
/// the command that reads it, when the command knows one), then repeat it
/// with the same ids.
pub fn lost_answer() -> String {
    let token = token_note();
    let read = match LOST.get() {
        Some(lost) => format!("read the state (`{}`{token}) before repeating it", cmd(&lost.check)),
        None => "read the state before repeating it".to_string(),
    };
    match LOST.get().and_then(|l| l.repeat.as_deref()) {
        Some(repeat) => format!(
            "the request may or may not have been done: {read}; `{}`{token} repeats it with the same ids \
             and is taken once",
            cmd(repeat)
        ),
        None => format!(
            "the request may or may not have been done: {read}; a repeated start, signal or completion with \
             the same ids is taken once"
        ),
    }
}

/// What `cairn append ID signal.NAME` is told in place of the server's
/// refusal, which names the HTTP route: the command that sends a signal, or
/// the replay key that appends one.
pub fn signal_append(id: &str, name: &str) -> String {
    format!(
        "`signal.{name}` is a signal: send it with `{}`{} (a repeated signal id is taken once), or append it with \
         `--replay-key signal:{name}:SIGNAL_ID`",
        cmd(format_args!("signal {} {} --id SIGNAL_ID", word(id), word(name))),
        token_note()
    )
}

/// `word` as one shell word, for a command to paste.
pub fn word(word: &str) -> String {
    shell_word(word)
}

/// `word` as one shell word: as it is when it holds nothing a shell reads
/// specially, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn a_server_is_one_shell_word() {
        assert_eq!(shell_word("http://127.0.0.1:7071"), "http://127.0.0.1:7071");
        assert_eq!(shell_word("http://h/?a=1&b=2"), "'http://h/?a=1&b=2'");
        assert_eq!(shell_word("http://h/it's"), r"'http://h/it'\''s'");
    }
}
