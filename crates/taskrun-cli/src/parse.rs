//! Parsers for flag values, used by clap (`value_parser = ...`) so that a
//! malformed value is reported as a usage error naming the flag.

use std::time::Duration;

use taskrun_core::{AgentName, AgentRef, AgentVersion, Labels, RunId, TaskId, TaskStatus};
use taskrun_signing::KeyId;

/// A duration such as `1500ms`, `30s`, `5m`, `2h`, `1d` or `1h30m`: one or
/// more numbers, each with a unit (`ms`, `s`, `m`, `h`, `d`).
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration: write e.g. 30s, 5m or 1500ms".to_owned());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("{text:?} is not a duration: expected a number at {rest:?} (e.g. 30s, 5m, 1500ms)"));
        }
        let (number, after) = rest.split_at(digits);
        if after.starts_with('.') {
            return Err(format!("{text:?}: use whole numbers (e.g. 1500ms rather than 1.5s)"));
        }
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("{text:?} has no unit: write e.g. {number}s or {number}ms")),
            other => return Err(format!("{text:?}: unknown unit {other:?} (use ms, s, m, h or d)")),
        };
        let value: u64 = number.parse().map_err(|_| format!("{text:?} is too large"))?;
        total = value
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("{text:?} is too large"))?;
        rest = after;
    }
    Ok(Duration::from_millis(total))
}

/// `ms` milliseconds the way [`duration`] reads them: `300000` → `5m`,
/// `90000` → `1m30s`, `1500` → `1500ms`.
pub fn format_duration_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    if ms == 0 {
        return "0s".to_owned();
    }
    if !ms.is_multiple_of(1_000) {
        return format!("{ms}ms");
    }
    let mut rest = ms;
    let mut text = String::new();
    for (size, unit) in UNITS {
        if rest >= size {
            text.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    text
}

/// One label, `KEY=VALUE` (the value may be empty), checked with the rules
/// the control plane applies.
pub fn label(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("{text:?} is not a label: write KEY=VALUE"));
    };
    let one = Labels::from([(key.to_owned(), value.to_owned())]);
    taskrun_core::validate_labels("label", &one).map_err(|e| match e {
        taskrun_core::Error::Invalid { reason, .. } => format!("{text:?}: {reason}"),
        other => other.to_string(),
    })?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Labels given with a repeatable flag, refusing a key given twice.
pub fn labels(flag: &str, pairs: &[(String, String)]) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for (key, value) in pairs {
        if let Some(first) = labels.insert(key.clone(), value.clone()) {
            return Err(format!("{flag} {key} is given twice ({key}={first} and {key}={value})"));
        }
    }
    Ok(labels)
}

/// An agent reference: `NAME`, `NAME@1.2.3` or `NAME@sha256:<64 hex>`.
pub fn agent_ref(text: &str) -> Result<AgentRef, String> {
    text.parse::<AgentRef>().map_err(|e| domain_message(text, e, "write NAME, NAME@1.2.3 or NAME@sha256:<hex>"))
}

pub fn agent_name(text: &str) -> Result<AgentName, String> {
    text.parse::<AgentName>().map_err(|e| domain_message(text, e, "use a-z, 0-9 and '-', starting with a letter"))
}

pub fn agent_version(text: &str) -> Result<AgentVersion, String> {
    text.parse::<AgentVersion>().map_err(|e| domain_message(text, e, "write MAJOR.MINOR.PATCH, e.g. 1.2.3"))
}

pub fn task_id(text: &str) -> Result<TaskId, String> {
    text.parse::<TaskId>().map_err(|e| domain_message(text, e, "task ids look like task_0199..."))
}

pub fn run_id(text: &str) -> Result<RunId, String> {
    const HINT: &str = "run ids look like task_0199….0.1: the Task's id, shard and attempt";
    let id = text.parse::<RunId>().map_err(|e| domain_message(text, e, HINT))?;
    match id.parts() {
        Some(_) => Ok(id),
        None => Err(format!("{text:?} is not a run id ({HINT})")),
    }
}

pub fn task_status(text: &str) -> Result<TaskStatus, String> {
    text.parse::<TaskStatus>().map_err(|_| {
        let all: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
        format!("{text:?} is not a Task status (one of {})", all.join(", "))
    })
}

pub fn key_id(text: &str) -> Result<KeyId, String> {
    text.parse::<KeyId>().map_err(|e| e.to_string())
}

fn domain_message(text: &str, error: taskrun_core::Error, hint: &str) -> String {
    match error {
        // The hint only where the reason does not already give it.
        taskrun_core::Error::Invalid { reason, .. } if reason.contains(hint.strip_prefix("write ").unwrap_or(hint)) => {
            format!("{text:?}: {reason}")
        }
        taskrun_core::Error::Invalid { reason, .. } => format!("{text:?}: {reason} ({hint})"),
        taskrun_core::Error::Missing(_) => format!("empty value ({hint})"),
        other => format!("{text:?}: {other}"),
    }
}
