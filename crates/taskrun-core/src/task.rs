//! Tasks: what a client asked for.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::check_token;
use crate::{AgentRef, Error, ModelRequirement, Result, TaskId, TaskStatus, Timestamp};

/// JSON text that is known to parse. The text is kept byte for byte as the
/// client sent it, shared: a clone (of a Task's input, of a Run's result,
/// with every copy of a Task the store makes) is a reference count, not a
/// copy of up to megabytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Json(Arc<str>);

impl Json {
    /// Parses `text` as JSON, naming `field` when it is not.
    pub fn parse(field: &'static str, text: impl Into<String>) -> Result<Json> {
        let text = text.into();
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
            return Err(Error::invalid(field, &text, format!("not JSON: {e}")));
        }
        Ok(Json(text.into()))
    }

    pub fn null() -> Json {
        Json("null".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json({} bytes)", self.0.len())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Json {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Json::parse("json", s)
    }
}

impl From<Json> for String {
    fn from(j: Json) -> String {
        j.0.as_ref().to_owned()
    }
}

/// Serialized as the JSON text, a string (without copying it).
impl Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Deserialized from a string, which must parse as JSON.
impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Json, D::Error> {
        let text = String::deserialize(deserializer)?;
        Json::try_from(text).map_err(serde::de::Error::custom)
    }
}

/// Key/value labels. Keys are 1–63 bytes of `[A-Za-z0-9._/-]` starting with
/// a letter or digit; values are 0–63 bytes of `[A-Za-z0-9._-]`.
pub type Labels = BTreeMap<String, String>;

/// The most labels one Task or Worker may carry.
pub const MAX_LABELS: usize = 32;

/// Checks every label in `labels`; `field` names where they came from.
pub fn validate_labels(field: &'static str, labels: &Labels) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(field, labels.len(), format!("more than {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.as_bytes()[0].is_ascii_alphanumeric()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !key_ok {
            return Err(Error::invalid(field, k, "label key must be 1-63 bytes of a-z, A-Z, 0-9, '.', '_', '-', '/'"));
        }
        if !v.is_empty() {
            check_token(field, v, 63).map_err(|_| {
                Error::invalid(
                    field,
                    format!("{k}={v}"),
                    "label value must be 0-63 bytes of a-z, A-Z, 0-9, '.', '_', '-'",
                )
            })?;
        }
    }
    Ok(())
}

/// How often, and how soon, a failed Run is tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each attempt after.
    pub initial_backoff_ms: u64,
    /// Longest wait between attempts.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, initial_backoff_ms: 1_000, max_backoff_ms: 60_000 }
    }
}

impl RetryPolicy {
    pub const MAX_ATTEMPTS: u32 = 100;

    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 || self.max_attempts > Self::MAX_ATTEMPTS {
            return Err(Error::invalid(
                "retry.max_attempts",
                self.max_attempts,
                format!("must be 1 to {}", Self::MAX_ATTEMPTS),
            ));
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return Err(Error::invalid(
                "retry.max_backoff_ms",
                self.max_backoff_ms,
                "must not be less than initial_backoff_ms",
            ));
        }
        Ok(())
    }

    /// Whether a shard that has used `attempts` attempts may try again.
    pub fn allows_another(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }

    /// How long to wait before attempt `next_attempt` (2 = the first retry).
    pub fn backoff(&self, next_attempt: u32) -> Duration {
        let doublings = next_attempt.saturating_sub(2).min(63);
        let ms = self.initial_backoff_ms.saturating_mul(1u64 << doublings).min(self.max_backoff_ms);
        Duration::from_millis(ms)
    }
}

/// Limits on one Run of a Task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// Wall-clock time one Run may take once it starts.
    pub run_timeout_ms: u64,
    /// How long the Task may wait for a Worker before it fails; none = forever.
    pub schedule_to_start_timeout_ms: Option<u64>,
    /// Linear memory cap for the agent; none = the Worker's default.
    pub memory_limit_bytes: Option<u64>,
    /// Cap on the output one Run may emit; none = the Worker's default.
    pub output_limit_bytes: Option<u64>,
    /// Cap on ModelBackend calls one Run may make; none = the Worker's default.
    pub max_model_calls: Option<u32>,
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits {
            run_timeout_ms: 5 * 60 * 1000,
            schedule_to_start_timeout_ms: None,
            memory_limit_bytes: None,
            output_limit_bytes: None,
            max_model_calls: None,
        }
    }
}

impl TaskLimits {
    /// The longest Run timeout accepted: one day.
    pub const MAX_RUN_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
    /// The largest memory cap accepted: 4 GiB (wasm32's address space).
    pub const MAX_MEMORY_BYTES: u64 = 4 << 30;

    pub fn validate(&self) -> Result<()> {
        if self.run_timeout_ms == 0 || self.run_timeout_ms > Self::MAX_RUN_TIMEOUT_MS {
            return Err(Error::invalid(
                "limits.run_timeout_ms",
                self.run_timeout_ms,
                format!("must be 1 to {}", Self::MAX_RUN_TIMEOUT_MS),
            ));
        }
        if self.schedule_to_start_timeout_ms == Some(0) {
            return Err(Error::invalid("limits.schedule_to_start_timeout_ms", 0, "must be greater than zero"));
        }
        if let Some(m) = self.memory_limit_bytes
            && !(64 * 1024..=Self::MAX_MEMORY_BYTES).contains(&m)
        {
            return Err(Error::invalid(
                "limits.memory_limit_bytes",
                m,
                format!("must be 65536 to {}", Self::MAX_MEMORY_BYTES),
            ));
        }
        if self.output_limit_bytes == Some(0) {
            return Err(Error::invalid("limits.output_limit_bytes", 0, "must be greater than zero"));
        }
        Ok(())
    }
}

/// Everything a client says about a Task when it creates one. Two requests
/// with the same idempotency key must carry equal specs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub agent: AgentRef,
    pub input: Json,
    /// Labels of the Task itself (for listing and filtering).
    pub labels: Labels,
    /// Labels a Worker must carry (same key, same value) to run this Task.
    pub worker_labels: Labels,
    /// Higher runs first; FIFO within one priority.
    pub priority: i32,
    pub retry: RetryPolicy,
    pub limits: TaskLimits,
    pub idempotency_key: Option<String>,
    /// What the Task needs from the Worker's ModelBackends.
    pub model: ModelRequirement,
    /// How many Runs of the Task run side by side (1 = no fan-out).
    pub fan_out: u32,
}

impl TaskSpec {
    pub const MAX_PRIORITY: i32 = 1000;
    pub const MAX_FAN_OUT: u32 = 64;
    /// Default cap on input JSON; the control plane may configure its own.
    pub const DEFAULT_MAX_INPUT_BYTES: usize = 1 << 20;

    /// A spec with defaults for everything but the agent and the input.
    pub fn new(agent: AgentRef, input: Json) -> TaskSpec {
        TaskSpec {
            agent,
            input,
            labels: Labels::new(),
            worker_labels: Labels::new(),
            priority: 0,
            retry: RetryPolicy::default(),
            limits: TaskLimits::default(),
            idempotency_key: None,
            model: ModelRequirement::default(),
            fan_out: 1,
        }
    }

    /// Checks every field; `max_input_bytes` caps the input JSON.
    pub fn validate(&self, max_input_bytes: usize) -> Result<()> {
        if self.input.len() > max_input_bytes {
            return Err(Error::invalid(
                "input",
                format!("{} bytes", self.input.len()),
                format!("larger than the {max_input_bytes}-byte cap"),
            ));
        }
        validate_labels("labels", &self.labels)?;
        validate_labels("worker_labels", &self.worker_labels)?;
        if !(-Self::MAX_PRIORITY..=Self::MAX_PRIORITY).contains(&self.priority) {
            return Err(Error::invalid(
                "priority",
                self.priority,
                format!("must be {} to {}", -Self::MAX_PRIORITY, Self::MAX_PRIORITY),
            ));
        }
        self.retry.validate()?;
        self.limits.validate()?;
        self.model.validate()?;
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(Error::invalid("idempotency_key", key, "must be 1 to 256 bytes"));
        }
        if self.fan_out == 0 || self.fan_out > Self::MAX_FAN_OUT {
            return Err(Error::invalid("fan_out", self.fan_out, format!("must be 1 to {}", Self::MAX_FAN_OUT)));
        }
        Ok(())
    }
}

/// A Task as the control plane keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub status: TaskStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The agent's result (JSON) once COMPLETED; with fan-out, shard 0's.
    pub result: Option<Json>,
    /// Why the Task FAILED or was CANCELLED.
    pub error: Option<String>,
}

impl Task {
    /// A new PENDING Task. Validates the spec.
    pub fn new(id: TaskId, spec: TaskSpec, now: Timestamp, max_input_bytes: usize) -> Result<Task> {
        spec.validate(max_input_bytes)?;
        Ok(Task { id, spec, status: TaskStatus::Pending, created_at: now, updated_at: now, result: None, error: None })
    }

    /// Moves to `to` if the state machine allows it.
    pub fn set_status(&mut self, to: TaskStatus, now: Timestamp) -> Result<()> {
        self.status = self.status.transition(to)?;
        self.updated_at = now;
        Ok(())
    }
}
