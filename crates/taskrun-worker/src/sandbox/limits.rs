use std::time::Duration;

use taskrun_core::TaskLimits;

/// What one Run may use. The Worker enforces each of them; hitting one ends
/// the Run with its own [`Outcome`](super::Outcome), except the model-call
/// cap, which fails the call that would pass it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Wall-clock time from the start of the Run (instantiation included),
    /// or from [`RunRequest::since`](super::RunRequest::since) if set.
    pub deadline: Duration,
    /// Linear memory, all memories of the instance together. Capped by
    /// [`SandboxConfig::max_memory_bytes`](super::SandboxConfig::max_memory_bytes).
    pub memory_bytes: usize,
    /// Bytes the agent may `emit`. Capped by
    /// [`SandboxConfig::max_output_bytes`](super::SandboxConfig::max_output_bytes).
    pub output_bytes: u64,
    /// Calls to `complete` and `stream-complete`. Capped by
    /// [`SandboxConfig::max_model_calls`](super::SandboxConfig::max_model_calls).
    pub model_calls: u32,
    /// Bytes of the result `run` may return. The operator's setting, not
    /// the Task's: the result travels to the control plane in one message.
    pub result_bytes: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            deadline: Duration::from_secs(5 * 60),
            memory_bytes: 64 << 20,
            output_bytes: 1 << 20,
            model_calls: 32,
            result_bytes: 1 << 20,
        }
    }
}

impl RunLimits {
    /// The limits a Task asks for, with `defaults` where it leaves one open
    /// (and for the result, which a Task does not set). The sandbox cuts
    /// them to the Worker's maximums when the Run starts.
    pub fn from_task(task: &TaskLimits, defaults: &RunLimits) -> RunLimits {
        RunLimits {
            deadline: Duration::from_millis(task.run_timeout_ms),
            memory_bytes: task
                .memory_limit_bytes
                .and_then(|m| usize::try_from(m).ok())
                .unwrap_or(defaults.memory_bytes),
            output_bytes: task.output_limit_bytes.unwrap_or(defaults.output_bytes),
            model_calls: task.max_model_calls.unwrap_or(defaults.model_calls),
            result_bytes: defaults.result_bytes,
        }
    }

    /// These limits cut to the Worker's maximums: what a Run gets.
    pub(crate) fn capped(self, max: &super::SandboxConfig) -> RunLimits {
        RunLimits {
            memory_bytes: self.memory_bytes.min(max.max_memory_bytes),
            output_bytes: self.output_bytes.min(max.max_output_bytes),
            model_calls: self.model_calls.min(max.max_model_calls),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::SandboxConfig;
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
        // The result cap is the Worker's alone.
        let defaults = RunLimits { result_bytes: 7, ..defaults };
        assert_eq!(RunLimits::from_task(&task, &defaults).result_bytes, 7);
    }

    #[test]
    fn the_workers_maximums_cap_what_a_task_asks_for() {
        let max = SandboxConfig {
            max_memory_bytes: 8 << 20,
            max_output_bytes: 1000,
            max_model_calls: 3,
            ..SandboxConfig::default()
        };
        let greedy = RunLimits {
            deadline: Duration::from_secs(1),
            memory_bytes: 1 << 30,
            output_bytes: u64::MAX,
            model_calls: u32::MAX,
            result_bytes: 5,
        };
        assert_eq!(
            greedy.capped(&max),
            RunLimits { memory_bytes: 8 << 20, output_bytes: 1000, model_calls: 3, ..greedy }
        );
        let modest = RunLimits { memory_bytes: 1 << 20, output_bytes: 10, model_calls: 0, ..greedy };
        assert_eq!(modest.capped(&max), modest);
    }
}
