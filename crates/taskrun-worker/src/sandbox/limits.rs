use std::time::Duration;

use taskrun_core::TaskLimits;

/// What one Run may use. The Worker enforces each of them; hitting one ends
/// the Run with its own [`Outcome`](super::Outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Wall-clock time from the start of the Run (instantiation included).
    pub deadline: Duration,
    /// Linear memory, all memories of the instance together. Capped by
    /// [`SandboxConfig::max_memory_bytes`](super::SandboxConfig::max_memory_bytes).
    pub memory_bytes: usize,
    /// Bytes the agent may `emit`.
    pub output_bytes: u64,
    /// Calls to `complete` and `stream-complete`.
    pub model_calls: u32,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            deadline: Duration::from_secs(5 * 60),
            memory_bytes: 64 << 20,
            output_bytes: 1 << 20,
            model_calls: 32,
        }
    }
}

impl RunLimits {
    /// The limits a Task asks for, with `defaults` where it leaves one open.
    pub fn from_task(task: &TaskLimits, defaults: &RunLimits) -> RunLimits {
        RunLimits {
            deadline: Duration::from_millis(task.run_timeout_ms),
            memory_bytes: task
                .memory_limit_bytes
                .and_then(|m| usize::try_from(m).ok())
                .unwrap_or(defaults.memory_bytes),
            output_bytes: task.output_limit_bytes.unwrap_or(defaults.output_bytes),
            model_calls: task.max_model_calls.unwrap_or(defaults.model_calls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_limits_override_the_defaults_they_set() {
        let defaults = RunLimits::default();
        let task = TaskLimits { run_timeout_ms: 1500, output_limit_bytes: Some(10), ..TaskLimits::default() };
        assert_eq!(
            RunLimits::from_task(&task, &defaults),
            RunLimits { deadline: Duration::from_millis(1500), output_bytes: 10, ..defaults }
        );
        let task = TaskLimits { memory_limit_bytes: Some(1 << 20), max_model_calls: Some(0), ..task };
        let limits = RunLimits::from_task(&task, &defaults);
        assert_eq!((limits.memory_bytes, limits.model_calls), (1 << 20, 0));
    }
}
