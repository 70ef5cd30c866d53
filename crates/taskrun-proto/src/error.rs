//! What can be wrong with a message, field by field.

use std::borrow::Cow;
use std::fmt;

/// Where a field sits in a message, written as a dotted path with list
/// indexes: `spec.retry.max_attempts`, `info.model_backends[1].name`.
///
/// Paths are relative to the message being converted; a converter that
/// converts a nested message puts the field's own name in front with
/// [`InvalidMessage::under`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FieldPath(Cow<'static, str>);

impl FieldPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn owned(path: String) -> FieldPath {
        FieldPath(Cow::Owned(path))
    }

    fn under(self, parent: &str) -> FieldPath {
        FieldPath(Cow::Owned(format!("{parent}.{}", self.0)))
    }

    fn under_index(self, parent: &str, index: usize) -> FieldPath {
        FieldPath(Cow::Owned(format!("{parent}[{index}].{}", self.0)))
    }
}

impl From<&'static str> for FieldPath {
    fn from(field: &'static str) -> FieldPath {
        FieldPath(Cow::Borrowed(field))
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for FieldPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Why a message was refused: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    /// A required field is absent, empty, or (an enum) UNSPECIFIED; or a
    /// required oneof has no case set.
    #[error("missing {0}")]
    Missing(FieldPath),
    /// A field does not parse, or breaks a rule of the domain model (a
    /// malformed id, JSON that is not JSON, a bad label).
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: FieldPath,
        /// The offending value as text, cut to 80 bytes.
        value: String,
        reason: String,
    },
    /// A number outside the range the field allows.
    #[error("{field} out of range: {value} ({})", allowed(*.min, *.max))]
    OutOfRange {
        field: FieldPath,
        value: i64,
        min: i64,
        /// None: no bound above but the wire type's.
        max: Option<i64>,
    },
    /// An enum number this version of the contract does not know.
    #[error("unknown {field} value {value}")]
    UnknownEnum { field: FieldPath, value: i32 },
    /// A value that must be unique within a list appears twice.
    #[error("duplicate {field} {value:?}")]
    Duplicate { field: FieldPath, value: String },
    /// A field that must be absent in this case is set, or one that must be
    /// present in this case is absent (e.g. `result_json` without COMPLETED).
    #[error("{field} {reason}")]
    Inconsistent { field: FieldPath, reason: &'static str },
}

fn allowed(min: i64, max: Option<i64>) -> String {
    match max {
        Some(max) => format!("allowed {min} to {max}"),
        None => format!("must be at least {min}"),
    }
}

impl InvalidMessage {
    /// The field the error is about.
    pub fn field(&self) -> &FieldPath {
        match self {
            InvalidMessage::Missing(field)
            | InvalidMessage::Invalid { field, .. }
            | InvalidMessage::OutOfRange { field, .. }
            | InvalidMessage::UnknownEnum { field, .. }
            | InvalidMessage::Duplicate { field, .. }
            | InvalidMessage::Inconsistent { field, .. } => field,
        }
    }

    fn field_mut(&mut self) -> &mut FieldPath {
        match self {
            InvalidMessage::Missing(field)
            | InvalidMessage::Invalid { field, .. }
            | InvalidMessage::OutOfRange { field, .. }
            | InvalidMessage::UnknownEnum { field, .. }
            | InvalidMessage::Duplicate { field, .. }
            | InvalidMessage::Inconsistent { field, .. } => field,
        }
    }

    /// The same error, its field seen from the message that holds `parent`:
    /// `max_attempts` under `retry` is `retry.max_attempts`.
    pub fn under(mut self, parent: &str) -> InvalidMessage {
        let field = self.field_mut();
        *field = field.clone().under(parent);
        self
    }

    /// The same error, its field seen from the message that holds the list
    /// `parent`: `name` under `model_backends`, 1 is `model_backends[1].name`.
    pub fn under_index(mut self, parent: &str, index: usize) -> InvalidMessage {
        let field = self.field_mut();
        *field = field.clone().under_index(parent, index);
        self
    }

    /// A domain error about the value at `field`: the domain's own field
    /// name is replaced by the path in the message.
    pub(crate) fn at(field: impl Into<FieldPath>, error: taskrun_core::Error) -> InvalidMessage {
        let field = field.into();
        match error {
            taskrun_core::Error::Missing(_) => InvalidMessage::Missing(field),
            taskrun_core::Error::Invalid { value, reason, .. } => InvalidMessage::Invalid { field, value, reason },
            other => InvalidMessage::Invalid { field, value: String::new(), reason: other.to_string() },
        }
    }

    /// A domain error from validating a whole value. The domain names
    /// fields relative to that value, like paths in its message, with
    /// `prefix` in front (`retry.` for a RetryPolicy's own fields), which is
    /// dropped here.
    pub(crate) fn from_validation(prefix: &str, error: taskrun_core::Error) -> InvalidMessage {
        let field = match error.field() {
            Some(field) => match field.strip_prefix(prefix) {
                Some(rest) if !prefix.is_empty() => FieldPath::owned(rest.to_owned()),
                _ => FieldPath::from(field),
            },
            None => FieldPath::from("value"),
        };
        InvalidMessage::at(field, error)
    }
}
