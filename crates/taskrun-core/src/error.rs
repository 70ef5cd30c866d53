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

/// `error` and its causes on one line, joined by ": ", each said once: a
/// cause whose text its wrapper already carries (a `"{path}: {source}"`
/// message that also names `source` as its cause) is skipped, and line
/// breaks inside a message become spaces. How the binaries print a failure.
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut cause = Some(error);
    while let Some(e) = cause {
        let part = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        if !part.is_empty() && !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// A parse error in `text` as one line: `line L, column C: message`, where
/// `offset` is the byte the error points at (columns count characters).
/// Without an offset, the message alone. Config files say where they are
/// wrong this way, instead of the multi-line caret drawing of TOML errors,
/// which [`error_line`] would flatten into noise.
pub fn located(text: &str, offset: Option<usize>, message: &str) -> String {
    let message = message.trim();
    let Some(before) = offset.and_then(|o| text.get(..o)) else {
        return message.to_owned();
    };
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..].chars().count() + 1;
    format!("line {line}, column {column}: {message}")
}

#[cfg(test)]
mod line_tests {
    use super::{error_line, located};

    #[test]
    fn located_counts_lines_and_characters() {
        let text = "a = 1\nnamé = x\n";
        let cases: &[(Option<usize>, &str)] = &[
            (Some(0), "line 1, column 1: bad"),
            (Some(4), "line 1, column 5: bad"),
            (Some(6), "line 2, column 1: bad"),
            // "namé = " is 8 bytes but 7 characters.
            (Some(14), "line 2, column 8: bad"),
            (None, "bad"),
            // Past the end, or inside a character: no place to name.
            (Some(99), "bad"),
            (Some(10), "bad"),
        ];
        for (offset, expected) in cases {
            assert_eq!(located(text, *offset, "bad\n"), *expected, "{offset:?}");
        }
    }

    #[derive(Debug)]
    struct Wrapped(&'static str, Option<Box<Wrapped>>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_are_joined_once_on_one_line() {
        let io = Wrapped("no such file\nor directory", None);
        // A wrapper that already says its cause, then one that does not.
        let path = Wrapped("k.key: no such file or directory", Some(Box::new(io)));
        let top = Wrapped("cannot load the key", Some(Box::new(path)));
        assert_eq!(error_line(&top), "cannot load the key: k.key: no such file or directory");
    }
}
