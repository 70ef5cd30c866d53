use std::time::Duration;

use taskrun_core::{Json, RunOutcome};

use super::RunLimits;
use super::host::{RunState, Stop};
use super::logs::RunLogs;

/// How a Run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `run` returned `ok` with valid JSON.
    Completed(Json),
    /// `run` returned `err` (its message), or an `ok` that is not JSON.
    Failed(String),
    /// `run` returned `err` (its message) after calling
    /// `failure.mark-permanent`: the same input would fail again, so the
    /// Task is not to be retried.
    FailedPermanently(String),
    /// The agent trapped: a panic, a stack overflow, a wasm fault, an
    /// `exit` call… (the trap's message).
    Trapped(String),
    /// The Run's wall-clock deadline passed.
    TimedOut,
    /// The agent tried to grow its memory past the Run's memory limit.
    MemoryLimit,
    /// The agent emitted more than the Run's output limit.
    OutputLimit,
    /// `run` returned a result larger than the Run's result limit (its
    /// size in bytes). The result is dropped: it could not reach the
    /// control plane.
    ResultLimit(u64),
    /// Someone cancelled the Run.
    Cancelled,
}

impl Outcome {
    /// A short lowercase name (`completed`, `timed_out`, …) for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Completed(_) => "completed",
            Outcome::Failed(_) => "failed",
            Outcome::FailedPermanently(_) => "failed_permanently",
            Outcome::Trapped(_) => "trapped",
            Outcome::TimedOut => "timed_out",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::OutputLimit => "output_limit",
            Outcome::ResultLimit(_) => "result_limit",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Classifies the error a call into the instance ended with. The host's
    /// own stops travel as [`Stop`] errors; a memory-limit hit is recognised
    /// by its root cause, not by a trap code (it is no `wasmtime::Trap`).
    pub(crate) fn from_error(error: &wasmtime::Error, state: &RunState) -> Outcome {
        match error.downcast_ref::<Stop>() {
            Some(Stop::Cancelled) => return Outcome::Cancelled,
            Some(Stop::Deadline) => return Outcome::TimedOut,
            Some(Stop::Memory(_)) => return Outcome::MemoryLimit,
            Some(Stop::Output(_)) => return Outcome::OutputLimit,
            None => {}
        }
        if state.limiter.memory_exceeded {
            return Outcome::MemoryLimit;
        }
        if state.output.exceeded {
            return Outcome::OutputLimit;
        }
        if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Outcome::Trapped(format!("agent called exit({})", exit.0));
        }
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => Outcome::Trapped(trap.to_string()),
            None => Outcome::Trapped(format!("{error:#}")),
        }
    }
}

/// Counters of one Run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// From the start of `run` to the outcome.
    pub elapsed: Duration,
    pub output_bytes: u64,
    pub output_chunks: u64,
    pub model_calls: u32,
    /// The most linear memory the instance had at once.
    pub peak_memory_bytes: usize,
}

/// Everything a finished Run leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub outcome: Outcome,
    /// What the agent printed and logged (bounded).
    pub logs: RunLogs,
    pub stats: RunStats,
    /// The limits the Run ran under (after the Worker's caps).
    pub limits: RunLimits,
}

/// How much of a trapped agent's stderr and error log its Run's error
/// carries.
pub const LAST_WORDS_BYTES: usize = 2048;

impl RunReport {
    /// The domain outcome the Worker reports for its Run.
    pub fn to_core(&self) -> RunOutcome {
        let failed = |error: String| RunOutcome::Failed { error };
        match &self.outcome {
            Outcome::Completed(result) => RunOutcome::Completed { result: result.clone() },
            Outcome::Failed(message) => failed(format!("agent error: {message}")),
            Outcome::FailedPermanently(message) => {
                RunOutcome::FailedPermanently { error: format!("agent error: {message}") }
            }
            Outcome::Trapped(message) => failed(match self.logs.last_words(LAST_WORDS_BYTES) {
                // A Rust agent's panic message is there (stderr for a std
                // agent, an error record for a lean one): without it
                // "unreachable instruction executed" says nothing.
                Some(words) => format!("agent trapped: {message}; its last words: {words}"),
                None => format!("agent trapped: {message}"),
            }),
            Outcome::TimedOut => failed(format!("timed out after {} ms", self.limits.deadline.as_millis())),
            Outcome::MemoryLimit => failed(format!("memory limit of {} bytes exceeded", self.limits.memory_bytes)),
            Outcome::OutputLimit => failed(format!("output limit of {} bytes exceeded", self.limits.output_bytes)),
            Outcome::ResultLimit(bytes) => failed(format!(
                "result of {bytes} bytes exceeds the result limit of {} bytes: return less and emit bulk data \
                 as output, or raise the worker's sandbox.max_result_bytes",
                self.limits.result_bytes
            )),
            Outcome::Cancelled => RunOutcome::Cancelled { reason: "cancelled".into() },
        }
    }
}
