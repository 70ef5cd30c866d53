//! Identifiers. Each is a newtype that can only hold a valid value: parse
//! with `FromStr` (or serde), print with `Display`. The text is shared
//! (`Arc<str>`): ids are cloned into every record, event, index entry and
//! message, and a clone is then a reference count, not an allocation.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Checks a short identifier-like token: 1 to `max` bytes of ASCII letters,
/// digits, `.`, `_` and `-`, starting with a letter or digit.
pub(crate) fn check_token(field: &'static str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() {
        return Err(Error::Missing(field));
    }
    if s.len() > max {
        return Err(Error::invalid(field, s, format!("longer than {max} bytes")));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(Error::invalid(field, s, "must start with a letter or digit"));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(Error::invalid(
            field,
            s,
            format!("character {c:?} is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')"),
        ));
    }
    Ok(())
}

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(Arc<str>);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            /// The longest id accepted, in bytes.
            pub const MAX_LEN: usize = $max;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                check_token($field, s, Self::MAX_LEN)?;
                Ok($name(s.into()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                check_token($field, &s, Self::MAX_LEN)?;
                Ok($name(s.into()))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.as_ref().to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

opaque_id!(
    /// Identifies a Task. Short enough that a Run's id, which embeds it,
    /// fits [`RunId::MAX_LEN`].
    TaskId, "task_id", 96
);
opaque_id!(
    /// Identifies a Run (one attempt of a Task on one Worker): its Task's
    /// id, shard and attempt, as `task_0192….0.1` (see [`RunId::of`]).
    RunId, "run_id", 128
);
opaque_id!(
    /// Identifies a Worker. Under mTLS it comes from the Worker's certificate.
    WorkerId, "worker_id", 128
);

impl TaskId {
    /// A new unique id, ordered by creation time.
    pub fn generate() -> TaskId {
        TaskId(format!("task_{}", uuid::Uuid::now_v7().simple()).into())
    }
}

impl RunId {
    /// The id of attempt `attempt` of shard `shard` of Task `task`. Unique
    /// as long as Task ids are, and it names its Task: a store finds the
    /// Task of a Run without an index ([`RunId::task_id`]).
    pub fn of(task: &TaskId, shard: u32, attempt: u32) -> RunId {
        // At most 96 + 1 + 10 + 1 + 10 bytes, of characters a TaskId may hold.
        RunId(format!("{task}.{shard}.{attempt}").into())
    }

    /// The Task, shard and attempt this id was made from by [`RunId::of`];
    /// None for an id that was not.
    pub fn parts(&self) -> Option<(TaskId, u32, u32)> {
        let mut it = self.0.rsplitn(3, '.');
        let attempt = it.next()?;
        let shard = it.next()?;
        let task = it.next()?;
        let number = |s: &str| -> Option<u32> {
            // Canonical decimal only, so one Run has one id.
            if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        Some((task.parse().ok()?, number(shard)?, number(attempt)?))
    }

    /// The Task this Run belongs to, if the id was made by [`RunId::of`].
    pub fn task_id(&self) -> Option<TaskId> {
        self.parts().map(|(task, _, _)| task)
    }
}

/// An agent's name: 1 to 64 bytes of lowercase letters, digits and `-`,
/// starting with a letter and not ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct AgentName(Arc<str>);

impl Serialize for AgentName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl AgentName {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn check(s: &str) -> Result<()> {
        const FIELD: &str = "agent_name";
        if s.is_empty() {
            return Err(Error::Missing(FIELD));
        }
        if s.len() > Self::MAX_LEN {
            return Err(Error::invalid(FIELD, s, format!("longer than {} bytes", Self::MAX_LEN)));
        }
        if !s.as_bytes()[0].is_ascii_lowercase() {
            return Err(Error::invalid(FIELD, s, "must start with a lowercase letter"));
        }
        if s.ends_with('-') {
            return Err(Error::invalid(FIELD, s, "must not end with '-'"));
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return Err(Error::invalid(FIELD, s, format!("character {c:?} is not allowed (use a-z, 0-9, '-')")));
        }
        Ok(())
    }
}

impl FromStr for AgentName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::check(s)?;
        Ok(AgentName(s.into()))
    }
}

impl TryFrom<String> for AgentName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::check(&s)?;
        Ok(AgentName(s.into()))
    }
}

impl From<AgentName> for String {
    fn from(n: AgentName) -> String {
        n.0.as_ref().to_owned()
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent's version, `MAJOR.MINOR.PATCH`, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl AgentVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> AgentVersion {
        AgentVersion { major, minor, patch }
    }
}

impl FromStr for AgentVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        const FIELD: &str = "agent_version";
        if s.is_empty() {
            return Err(Error::Missing(FIELD));
        }
        let parts: Vec<&str> = s.split('.').collect();
        let [major, minor, patch] = parts.as_slice() else {
            return Err(Error::invalid(FIELD, s, "expected MAJOR.MINOR.PATCH, e.g. 1.2.3"));
        };
        let num = |p: &str| -> Result<u32> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || (p.len() > 1 && p.starts_with('0')) {
                return Err(Error::invalid(FIELD, s, "each part must be a number without leading zeros"));
            }
            p.parse().map_err(|_| Error::invalid(FIELD, s, "part does not fit in 32 bits"))
        };
        Ok(AgentVersion { major: num(major)?, minor: num(minor)?, patch: num(patch)? })
    }
}

impl TryFrom<String> for AgentVersion {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<AgentVersion> for String {
    fn from(v: AgentVersion) -> String {
        v.to_string()
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The SHA-256 digest of an agent component's bytes, written
/// `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct AgentDigest([u8; 32]);

/// Written as its `Display` form.
impl Serialize for AgentDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let text = self.text();
        s.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
    }
}

impl AgentDigest {
    pub const PREFIX: &'static str = "sha256:";

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> AgentDigest {
        AgentDigest(Sha256::digest(bytes).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> AgentDigest {
        AgentDigest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits without the `sha256:` prefix (fit for file names).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The `Display` form as ASCII bytes, without allocating.
    fn text(&self) -> [u8; 71] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 71];
        let (prefix, digits) = out.split_at_mut(Self::PREFIX.len());
        prefix.copy_from_slice(Self::PREFIX.as_bytes());
        for (pair, byte) in digits.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        out
    }
}

impl fmt::Debug for AgentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentDigest({self})")
    }
}

impl fmt::Display for AgentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.text()).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for AgentDigest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        const FIELD: &str = "agent_digest";
        if s.is_empty() {
            return Err(Error::Missing(FIELD));
        }
        let Some(hex_part) = s.strip_prefix(Self::PREFIX) else {
            return Err(Error::invalid(FIELD, s, "must start with \"sha256:\""));
        };
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::invalid(FIELD, s, "expected 64 lowercase hex digits after \"sha256:\""));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|e| Error::invalid(FIELD, s, e.to_string()))?;
        Ok(AgentDigest(out))
    }
}

impl TryFrom<String> for AgentDigest {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<AgentDigest> for String {
    fn from(d: AgentDigest) -> String {
        d.to_string()
    }
}
