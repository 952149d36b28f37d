//! Where every client command writes: its output on stdout, its notes on
//! stderr. A write that fails ends the command with an error instead of a
//! panic: its reader gone (`cairn ls | head -1`, a broken pipe) quietly, with
//! [`EXIT_OUTPUT_CLOSED`] as `cairn run` answers it; any other failure (a
//! full disk, `> /dev/full`) said on stderr, with exit code 1.
//!
//! Client commands ignore `SIGPIPE` (Rust's default), so a closed pipe is an
//! error of the write, not a signal that kills the command mid-way.

use std::fmt;
use std::io::{self, Write};

use super::http::ClientError;

/// Exit code: the command's output was closed (its reader went away): 128 +
/// SIGPIPE, as a shell reports a command that signal ended.
pub const EXIT_OUTPUT_CLOSED: u8 = 128 + 13;

/// Which of the command's outputs a write went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output: what the command prints.
    Stdout,
    /// Standard error: its notes and errors.
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        })
    }
}

fn failed(stream: Stream) -> impl FnOnce(io::Error) -> ClientError {
    move |source| ClientError::Output { stream, source }
}

/// Write `args` and a newline to stdout.
pub fn line(args: fmt::Arguments<'_>) -> Result<(), ClientError> {
    writeln!(io::stdout().lock(), "{args}").map_err(failed(Stream::Stdout))
}

/// Write `bytes` to stdout as they are.
pub fn bytes(bytes: &[u8]) -> Result<(), ClientError> {
    io::stdout().lock().write_all(bytes).map_err(failed(Stream::Stdout))
}

/// Write what stdout holds back (a last line without its newline): a
/// command's output is written whole before it says it succeeded.
pub fn flush() -> Result<(), ClientError> {
    io::stdout().lock().flush().map_err(failed(Stream::Stdout))
}

/// Write `args` and a newline to stderr (a note beside the output).
pub fn note(args: fmt::Arguments<'_>) -> Result<(), ClientError> {
    writeln!(io::stderr().lock(), "{args}").map_err(failed(Stream::Stderr))
}

/// A line of the command's output: `outln!("{id}")?`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::client::output::line(format_args!($($arg)*))
    };
}

/// A line on stderr beside the output: `errln!("(more: ...)")?`.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::client::output::note(format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_output_exits_141_and_a_full_one_1() {
        let closed = ClientError::Output {
            stream: Stream::Stdout,
            source: io::Error::from(io::ErrorKind::BrokenPipe),
        };
        assert_eq!(closed.exit_code(), EXIT_OUTPUT_CLOSED);
        let full = ClientError::Output {
            stream: Stream::Stdout,
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(full.exit_code(), 1);
        assert!(full.to_string().starts_with("cannot write to stdout: "), "{full}");
        assert_eq!(full.to_json()["error"]["code"], "output");
    }
}
