use std::fmt;

/// Why a value was refused by the domain model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field's value is malformed or out of range.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid { field: &'static str, value: String, reason: String },
    /// A required field is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A state change the state machine does not allow.
    #[error(transparent)]
    Transition(#[from] crate::IllegalTransition),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(field: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> Error {
        let mut value = value.to_string();
        if value.len() > 80 {
            let mut cut = 77;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
            value.push_str("...");
        }
        Error::Invalid { field, value, reason: reason.into() }
    }

    /// The field this error is about, when it names one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::Invalid { field, .. } => Some(field),
            Error::Missing(field) => Some(field),
            Error::Transition(_) => None,
        }
    }
}
