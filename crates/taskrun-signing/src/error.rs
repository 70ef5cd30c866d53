use std::io;
use std::path::PathBuf;

use taskrun_core::{AgentDigest, AgentName, AgentVersion, Timestamp};

use crate::KeyId;

/// Why something was refused. Verification errors come first, in the order
/// [`Verifier::verify`](crate::Verifier::verify) checks them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- verification, check 1: the bytes are the signed ones ----
    /// The component's length is not the signed size.
    #[error("component is {actual} bytes but the signed manifest says {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    /// The component's SHA-256 is not the signed digest.
    #[error("component digest is {actual} but the signed manifest says {expected}")]
    DigestMismatch { expected: AgentDigest, actual: AgentDigest },

    // ---- check 2: the signature ----
    /// The signature does not verify (strictly) under the key the manifest names.
    #[error("signature by key {key_id} does not verify")]
    BadSignature { key_id: KeyId },

    // ---- check 3: the trust policy ----
    /// The signing key is not pinned in the trust policy.
    #[error("key {key_id} is not trusted (not pinned in the trust policy)")]
    UntrustedKey { key_id: KeyId },
    /// The signing key is listed as revoked in the trust policy.
    #[error("key {key_id} is revoked")]
    RevokedKey { key_id: KeyId },
    /// The signing key is trusted, but only for other agents.
    #[error("key {key_id} is trusted but not for agent {name}")]
    KeyNotAllowed { key_id: KeyId, name: AgentName },

    // ---- check 4: expiry ----
    /// The manifest's `expires_at` (plus the allowed clock skew) has passed.
    #[error("signed manifest expired at {expires_at} (now {now})")]
    Expired { expires_at: Timestamp, now: Timestamp },

    // ---- check 5: rollback ----
    /// A higher version of this agent was already accepted by this verifier.
    #[error("agent {name} version {version} is lower than version {highest} already accepted (rollback)")]
    Rollback { name: AgentName, version: AgentVersion, highest: AgentVersion },

    // ---- check 6: it is what was asked for ----
    /// The manifest names another agent than the one requested (mix-and-match).
    #[error("signed manifest is for agent {actual}, not the requested {expected}")]
    NameMismatch { expected: AgentName, actual: AgentName },
    /// The manifest carries another version than the one requested.
    #[error("signed manifest is for version {actual}, not the requested {expected}")]
    VersionMismatch { expected: AgentVersion, actual: AgentVersion },
    /// The manifest's digest is not the requested digest.
    #[error("signed digest {actual} is not the requested {expected}")]
    DigestNotRequested { expected: AgentDigest, actual: AgentDigest },

    // ---- parsing ----
    /// The envelope's bytes do not follow the format (see signing/FORMAT.md).
    #[error("malformed envelope: {what}")]
    Malformed { what: String },
    /// An input is longer than its format allows; refused before parsing.
    #[error("{what} is {len} bytes, more than the {max} allowed")]
    TooLarge { what: &'static str, len: u64, max: u64 },
    /// A key, key id or key file's text is malformed.
    #[error("invalid {what}: {reason}")]
    InvalidKey { what: &'static str, reason: String },
    /// What to sign is invalid (bad WIT world, expiry before creation, ...).
    #[error("cannot sign: {reason}")]
    InvalidManifest { reason: String },
    /// The trust policy file is invalid.
    #[error("invalid trust policy: {reason}")]
    Policy { reason: String },
    /// The rollback state file is invalid.
    #[error("invalid rollback state: {reason}")]
    RollbackState { reason: String },

    // ---- files ----
    /// A private key file is readable or writable by group or others.
    #[error(
        "private key file {} is accessible by group or others (mode {mode:04o}); run `chmod 600` on it",
        .path.display()
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    /// Refused to replace an existing file.
    #[error("{} already exists; refusing to overwrite it", .path.display())]
    AlreadyExists { path: PathBuf },
    /// The content of a file is invalid; `source` says how.
    #[error("{}: {source}", .path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn malformed(what: impl Into<String>) -> Error {
        Error::Malformed { what: what.into() }
    }

    pub(crate) fn invalid_key(what: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidKey { what, reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    /// Puts a content error in the context of the file it came from.
    pub(crate) fn in_file(self, path: impl Into<PathBuf>) -> Error {
        match self {
            // These already name their file.
            e @ (Error::Io { .. }
            | Error::InFile { .. }
            | Error::KeyFilePermissions { .. }
            | Error::AlreadyExists { .. }) => e,
            e => Error::InFile { path: path.into(), source: Box::new(e) },
        }
    }

    /// The error itself, or for [`Error::InFile`] the error inside it.
    pub fn root(&self) -> &Error {
        match self {
            Error::InFile { source, .. } => source.root(),
            e => e,
        }
    }
}
