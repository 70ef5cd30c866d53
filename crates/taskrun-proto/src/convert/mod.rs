//! Converters between the wire types in [`crate::pb`] and taskrun-core.
//!
//! Every `TryFrom<pb::X>` checks each field (presence, ids, JSON, ranges,
//! enum values) and then runs the domain's own validation, so a value that
//! converts is a value the domain accepts. Field paths in errors are
//! relative to the message converted.
//!
//! `From<core>` never fails. Core counts and sizes are unsigned while the
//! wire's are signed (see common.proto); a value too large for the wire type
//! is sent as the wire type's maximum, which the domain refuses anyway.

mod agent;
mod enums;
mod model;
mod run;
mod session;
mod task;
mod worker;

use std::str::FromStr;

use taskrun_core::{Json, Timestamp};

use crate::{FieldPath, InvalidMessage};

pub use enums::{modality_from_wire, run_status_from_wire, task_status_from_wire, worker_state_from_wire};
pub use run::RunReply;
pub use session::{DrainNotice, RunOutputReport, RunProgress, RunStatusReport};

type Result<T, E = InvalidMessage> = std::result::Result<T, E>;

/// A path to element `index` of the scalar list `parent`: `agents[2]`.
fn indexed(parent: &str, index: usize) -> FieldPath {
    FieldPath::owned(format!("{parent}[{index}]"))
}

/// A required message field.
fn required<T>(field: &'static str, value: Option<T>) -> Result<T> {
    value.ok_or(InvalidMessage::Missing(field.into()))
}

/// Parses an id or another domain value written as text; empty = missing.
fn parse<T>(field: impl Into<FieldPath>, text: &str) -> Result<T>
where
    T: FromStr<Err = taskrun_core::Error>,
{
    let field = field.into();
    if text.is_empty() {
        return Err(InvalidMessage::Missing(field));
    }
    text.parse().map_err(|e| InvalidMessage::at(field, e))
}

fn parse_opt<T>(field: &'static str, text: Option<&str>) -> Result<Option<T>>
where
    T: FromStr<Err = taskrun_core::Error>,
{
    text.map(|text| parse(field, text)).transpose()
}

/// Required JSON text; empty = missing.
fn json(field: &'static str, text: String) -> Result<Json> {
    if text.is_empty() {
        return Err(InvalidMessage::Missing(field.into()));
    }
    Json::parse(field, text).map_err(|e| InvalidMessage::at(field, e))
}

fn json_opt(field: &'static str, text: Option<String>) -> Result<Option<Json>> {
    text.map(|text| json(field, text)).transpose()
}

/// Refuses a list of more than `max` entries: checked before any entry is
/// looked at, so a message's size alone bounds the work it costs.
fn at_most_entries(field: &'static str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(InvalidMessage::Invalid {
            field: field.into(),
            value: format!("{len} entries"),
            reason: format!("more than {max} entries"),
        });
    }
    Ok(())
}

/// Refuses text of more than `max` bytes.
fn at_most_bytes(field: &'static str, text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(InvalidMessage::Invalid {
            field: field.into(),
            value: format!("{} bytes", text.len()),
            reason: format!("longer than {max} bytes"),
        });
    }
    Ok(())
}

/// Checks `min <= value <= max` (`None`: no bound above).
fn in_range(field: &'static str, value: i64, min: i64, max: Option<i64>) -> Result<i64> {
    if value < min || max.is_some_and(|max| value > max) {
        return Err(InvalidMessage::OutOfRange { field: field.into(), value, min, max });
    }
    Ok(value)
}

/// A wire `int64` of at least `min` and at most `max` (`None`: no bound
/// above) as a core `u64`.
fn to_u64(field: &'static str, value: i64, min: u64, max: Option<u64>) -> Result<u64> {
    let min = i64::try_from(min).unwrap_or(i64::MAX);
    let max = max.map(|max| i64::try_from(max).unwrap_or(i64::MAX));
    in_range(field, value, min, max)?;
    // At least `min`, so not negative.
    Ok(value.unsigned_abs())
}

/// A wire `int32` of at least `min` and at most `max` (`None`: no bound
/// above) as a core `u32`.
fn to_u32(field: &'static str, value: i32, min: u32, max: Option<u32>) -> Result<u32> {
    in_range(field, value.into(), min.into(), max.map(i64::from))?;
    // At least `min`, so not negative.
    Ok(value.unsigned_abs())
}

/// The wire form of a core count, saturating at `i32::MAX`.
fn wire_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// The wire form of a core size or counter, saturating at `i64::MAX`.
fn wire_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn timestamp(unix_ms: i64) -> Timestamp {
    Timestamp::from_millis(unix_ms)
}
