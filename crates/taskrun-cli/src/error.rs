//! Exit codes, and the one place where failures become the one-line
//! messages the user reads.
//!
//! A gRPC status from the control plane becomes a [`RemoteError`] whose
//! message says what to do; a mistake on the command line that clap could not
//! catch (JSON that does not parse, a label given twice) is a [`UsageError`].
//! Everything else is an `anyhow::Error` with context.

use std::fmt;
use std::process::ExitCode;

use tonic::{Code, Status};

/// The command did what was asked; `task watch`: the Task COMPLETED.
pub const EXIT_OK: u8 = 0;
/// Something went wrong (the message says what); `task watch`: the Task FAILED.
pub const EXIT_ERROR: u8 = 1;
/// `task watch` / `task create --watch`: the Task was CANCELLED.
pub const EXIT_CANCELLED: u8 = 2;
/// The command line is wrong: an unknown flag, a malformed value, input
/// that is not JSON (EX_USAGE from sysexits.h). Nothing was sent.
pub const EXIT_USAGE: u8 = 64;
/// `task watch` was interrupted (Ctrl-C), as a shell reports SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Standard output was closed early (e.g. piped into `head`), as a shell
/// reports SIGPIPE.
pub const EXIT_BROKEN_PIPE: u8 = 141;

/// A mistake in what the user typed, found before anything was sent.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A [`UsageError`] as an `anyhow::Error`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// The control plane refused a request or could not be reached.
#[derive(Debug)]
pub struct RemoteError {
    pub code: Code,
    /// One line that says what went wrong and, where we know, what to do.
    pub message: String,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {}

/// The message for a status the control plane at `url` answered (or that
/// the transport made up when it could not reach it).
pub fn remote(url: &str, status: &Status) -> RemoteError {
    let detail = one_line(status.message());
    let or_code = |detail: String| if detail.is_empty() { format!("{:?}", status.code()) } else { detail };
    let message = match status.code() {
        Code::Unavailable => {
            let detail = if detail.is_empty() { String::new() } else { format!("; {detail}") };
            format!("cannot reach the control plane at {url}: is it running? (set --server or TASKRUN_SERVER{detail})")
        }
        Code::DeadlineExceeded => format!("the control plane at {url} did not answer in time: {}", or_code(detail)),
        Code::InvalidArgument => format!("the control plane refused the request: {}", or_code(detail)),
        Code::PermissionDenied => format!("permission denied: {}", or_code(detail)),
        Code::Unauthenticated => format!("the control plane did not accept our credentials: {}", or_code(detail)),
        Code::Unimplemented => format!(
            "the server at {url} does not offer this call: is it a TaskRun control plane of a matching version? ({})",
            or_code(detail)
        ),
        Code::Internal | Code::Unknown | Code::DataLoss => {
            format!("the control plane at {url} failed: {} (see its log)", or_code(detail))
        }
        // NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED,
        // OUT_OF_RANGE, ABORTED, CANCELLED: the server's message says it.
        _ => or_code(detail),
    };
    RemoteError { code: status.code(), message }
}

/// Statuses after which a dropped stream is worth opening again.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted
    )
}

/// The exit code for a failed command.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(error) {
        ExitCode::from(EXIT_BROKEN_PIPE)
    } else if error.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::from(EXIT_ERROR)
    }
}

/// Whether the command failed only because its standard output was closed.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// The one-line message for a failed command: the error and its causes,
/// joined by ": ", each said once. A cause whose text its wrapper already
/// carries (a `"{path}: {source}"` message that also names `source` as
/// its cause) is not repeated.
pub fn message(error: &anyhow::Error) -> String {
    taskrun_core::error_line(&**error)
}

/// `text` on one line: line breaks become spaces, surrounding blanks go.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
