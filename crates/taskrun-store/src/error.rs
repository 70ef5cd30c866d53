use taskrun_core::{AgentDigest, AgentName, AgentVersion, RunId, TaskId};

/// Why a store refused or failed an operation.
///
/// A refused operation changed nothing: every state change is all or nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No record with that id.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },

    /// A record with that id exists already (and no idempotency key makes the
    /// request a repeat).
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: &'static str, id: String },

    /// The idempotency key was used before, by a Task with another spec.
    #[error("idempotency key {key:?} is already used by task {task_id} with a different spec")]
    IdempotencyConflict { key: String, task_id: TaskId },

    /// The Run's lease moved on: the caller's view (or the Worker's
    /// assignment) is stale.
    #[error("run {run_id}: lease {expected} is stale, the run holds lease {actual}")]
    LeaseConflict { run_id: RunId, expected: u64, actual: u64 },

    /// The record is not in a state that allows the operation (a terminal
    /// Task cancelled, a COMPLETED Run finished again, a Run assigned before
    /// its backoff ended, …).
    #[error("{kind} {id}: {reason}")]
    FailedPrecondition { kind: &'static str, id: String, reason: String },

    /// That name and version is already published with another component.
    #[error("agent {name}@{version} is already published with digest {existing}, not {offered}")]
    AgentVersionConflict { name: AgentName, version: AgentVersion, existing: AgentDigest, offered: AgentDigest },

    /// That component is already published under another name or version.
    #[error("agent component {digest} is already published as {existing}")]
    AgentDigestConflict { digest: AgentDigest, existing: String },

    /// The Run's output reached its cap; this chunk and every later one are
    /// refused, the output stored so far is kept.
    #[error("run {run_id}: output is over its {limit_bytes}-byte cap")]
    OutputLimit { run_id: RunId, limit_bytes: u64 },

    /// An argument is malformed (a page token the store did not issue, a
    /// component whose digest does not match its manifest, …).
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// A stored record does not decode. The store never panics on one.
    #[error("corrupt {what} record {key:?}: {reason}")]
    Corrupt { what: &'static str, key: String, reason: String },

    /// The storage engine failed (I/O error, store closed).
    #[error("storage: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn not_found(kind: &'static str, id: impl ToString) -> Error {
        Error::NotFound { kind, id: id.to_string() }
    }

    pub fn precondition(kind: &'static str, id: impl ToString, reason: impl Into<String>) -> Error {
        Error::FailedPrecondition { kind, id: id.to_string(), reason: reason.into() }
    }

    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument { field, reason: reason.into() }
    }

    pub fn corrupt(what: &'static str, key: impl Into<String>, reason: impl ToString) -> Error {
        Error::Corrupt { what, key: key.into(), reason: reason.to_string() }
    }

    /// A storage failure described by `message`.
    pub fn storage(message: impl Into<String>) -> Error {
        Error::Storage(message.into().into())
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}
