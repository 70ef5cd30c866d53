//! RetryPolicy, TaskLimits, TaskSpec (and CreateTaskRequest), Task.

use taskrun_core::{AgentRef, ModelRequirement, RetryPolicy, Task, TaskLimits, TaskSpec};

use super::enums::task_status_from_wire;
use super::{Result, in_range, json, json_opt, parse, required, timestamp, to_u32, to_u64, wire_i32, wire_i64};
use crate::{InvalidMessage, pb};

impl From<RetryPolicy> for pb::RetryPolicy {
    fn from(r: RetryPolicy) -> pb::RetryPolicy {
        pb::RetryPolicy {
            max_attempts: Some(wire_i32(r.max_attempts)),
            initial_backoff_ms: Some(wire_i64(r.initial_backoff_ms)),
            max_backoff_ms: Some(wire_i64(r.max_backoff_ms)),
        }
    }
}

/// Unset fields take [`RetryPolicy::default`]'s values.
impl TryFrom<pb::RetryPolicy> for RetryPolicy {
    type Error = InvalidMessage;
    fn try_from(r: pb::RetryPolicy) -> Result<RetryPolicy> {
        let defaults = RetryPolicy::default();
        let policy = RetryPolicy {
            max_attempts: match r.max_attempts {
                None => defaults.max_attempts,
                Some(v) => to_u32("max_attempts", v, 1, Some(RetryPolicy::MAX_ATTEMPTS))?,
            },
            initial_backoff_ms: match r.initial_backoff_ms {
                None => defaults.initial_backoff_ms,
                Some(v) => to_u64("initial_backoff_ms", v, 0, None)?,
            },
            max_backoff_ms: match r.max_backoff_ms {
                None => defaults.max_backoff_ms,
                Some(v) => to_u64("max_backoff_ms", v, 0, None)?,
            },
        };
        policy.validate().map_err(|e| InvalidMessage::from_validation("retry.", e))?;
        Ok(policy)
    }
}

impl From<TaskLimits> for pb::TaskLimits {
    fn from(l: TaskLimits) -> pb::TaskLimits {
        pb::TaskLimits {
            run_timeout_ms: Some(wire_i64(l.run_timeout_ms)),
            schedule_to_start_timeout_ms: l.schedule_to_start_timeout_ms.map(wire_i64),
            memory_limit_bytes: l.memory_limit_bytes.map(wire_i64),
            output_limit_bytes: l.output_limit_bytes.map(wire_i64),
            max_model_calls: l.max_model_calls.map(wire_i32),
        }
    }
}

/// The smallest memory cap accepted: one wasm page.
const MIN_MEMORY_BYTES: u64 = 64 * 1024;

/// Unset fields take [`TaskLimits::default`]'s values.
impl TryFrom<pb::TaskLimits> for TaskLimits {
    type Error = InvalidMessage;
    fn try_from(l: pb::TaskLimits) -> Result<TaskLimits> {
        let limits = TaskLimits {
            run_timeout_ms: match l.run_timeout_ms {
                None => TaskLimits::default().run_timeout_ms,
                Some(v) => to_u64("run_timeout_ms", v, 1, Some(TaskLimits::MAX_RUN_TIMEOUT_MS))?,
            },
            schedule_to_start_timeout_ms: l
                .schedule_to_start_timeout_ms
                .map(|v| to_u64("schedule_to_start_timeout_ms", v, 1, None))
                .transpose()?,
            memory_limit_bytes: l
                .memory_limit_bytes
                .map(|v| to_u64("memory_limit_bytes", v, MIN_MEMORY_BYTES, Some(TaskLimits::MAX_MEMORY_BYTES)))
                .transpose()?,
            output_limit_bytes: l.output_limit_bytes.map(|v| to_u64("output_limit_bytes", v, 1, None)).transpose()?,
            max_model_calls: l.max_model_calls.map(|v| to_u32("max_model_calls", v, 0, None)).transpose()?,
        };
        limits.validate().map_err(|e| InvalidMessage::from_validation("limits.", e))?;
        Ok(limits)
    }
}

impl From<TaskSpec> for pb::TaskSpec {
    fn from(s: TaskSpec) -> pb::TaskSpec {
        pb::TaskSpec {
            agent: Some(s.agent.into()),
            input_json: s.input.into(),
            labels: s.labels,
            worker_labels: s.worker_labels,
            priority: s.priority,
            retry: Some(s.retry.into()),
            limits: Some(s.limits.into()),
            idempotency_key: s.idempotency_key,
            model: (!s.model.is_empty()).then(|| s.model.into()),
            fan_out: Some(wire_i32(s.fan_out)),
        }
    }
}

/// Checks every field and the spec as a whole, except the size of the
/// input, whose cap the control plane configures: check it with
/// [`TaskSpec::validate`].
impl TryFrom<pb::TaskSpec> for TaskSpec {
    type Error = InvalidMessage;
    fn try_from(s: pb::TaskSpec) -> Result<TaskSpec> {
        let agent = required("agent", s.agent)?;
        let agent = AgentRef::try_from(agent).map_err(|e| e.under("agent"))?;
        let input = json("input_json", s.input_json)?;
        let priority = in_range(
            "priority",
            s.priority.into(),
            (-TaskSpec::MAX_PRIORITY).into(),
            Some(TaskSpec::MAX_PRIORITY.into()),
        )
        .map(|_| s.priority)?;
        let retry = match s.retry {
            None => RetryPolicy::default(),
            Some(r) => RetryPolicy::try_from(r).map_err(|e| e.under("retry"))?,
        };
        let limits = match s.limits {
            None => TaskLimits::default(),
            Some(l) => TaskLimits::try_from(l).map_err(|e| e.under("limits"))?,
        };
        let model = match s.model {
            None => ModelRequirement::default(),
            Some(m) => ModelRequirement::try_from(m).map_err(|e| e.under("model"))?,
        };
        let fan_out = match s.fan_out {
            None => 1,
            Some(v) => to_u32("fan_out", v, 1, Some(TaskSpec::MAX_FAN_OUT))?,
        };
        let spec = TaskSpec {
            agent,
            input,
            labels: s.labels,
            worker_labels: s.worker_labels,
            priority,
            retry,
            limits,
            idempotency_key: s.idempotency_key,
            model,
            fan_out,
        };
        spec.validate(usize::MAX).map_err(|e| InvalidMessage::from_validation("", e))?;
        Ok(spec)
    }
}

impl From<TaskSpec> for pb::CreateTaskRequest {
    fn from(spec: TaskSpec) -> pb::CreateTaskRequest {
        pb::CreateTaskRequest { spec: Some(spec.into()) }
    }
}

/// The request's spec; field paths start with `spec.`.
impl TryFrom<pb::CreateTaskRequest> for TaskSpec {
    type Error = InvalidMessage;
    fn try_from(request: pb::CreateTaskRequest) -> Result<TaskSpec> {
        let spec = required("spec", request.spec)?;
        TaskSpec::try_from(spec).map_err(|e| e.under("spec"))
    }
}

impl From<Task> for pb::Task {
    fn from(t: Task) -> pb::Task {
        pb::Task {
            task_id: t.id.into(),
            spec: Some(t.spec.into()),
            status: pb::TaskStatus::from(t.status).into(),
            created_at_unix_ms: t.created_at.as_millis(),
            updated_at_unix_ms: t.updated_at.as_millis(),
            result_json: t.result.map(String::from),
            error: t.error,
        }
    }
}

impl TryFrom<pb::Task> for Task {
    type Error = InvalidMessage;
    fn try_from(t: pb::Task) -> Result<Task> {
        let id = parse("task_id", &t.task_id)?;
        let spec = required("spec", t.spec)?;
        Ok(Task {
            id,
            spec: TaskSpec::try_from(spec).map_err(|e| e.under("spec"))?,
            status: task_status_from_wire("status", t.status)?,
            created_at: timestamp(t.created_at_unix_ms),
            updated_at: timestamp(t.updated_at_unix_ms),
            result: json_opt("result_json", t.result_json)?,
            error: t.error,
        })
    }
}
