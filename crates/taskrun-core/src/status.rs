//! The Task and Run state machines.
//!
//! ```text
//! TaskStatus: PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED
//! RunStatus:  PENDING -> ASSIGNED -> RUNNING -> COMPLETED | FAILED | CANCELLED
//! ```
//!
//! A Task may be cancelled or failed (schedule-to-start timeout) straight from
//! PENDING, and a Run may end from any non-terminal state (a Worker lost
//! before it started the Run fails it; a cancel reaches Runs in every state).
//! Terminal states are final. Moving to the state one is already in is not a
//! transition and is refused too, so callers notice duplicate reports.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, RetryPolicy, Run};

/// A state change that the state machine refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {machine} transition {from} -> {to}")]
pub struct IllegalTransition {
    pub machine: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

macro_rules! status_enum {
    ($name:ident, $machine:literal, $field:literal, [$($variant:ident => $text:literal),+ $(,)?]) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Moves to `to` if the state machine allows it.
            pub fn transition(self, to: $name) -> Result<$name, IllegalTransition> {
                if self.can_move_to(to) {
                    Ok(to)
                } else {
                    Err(IllegalTransition { machine: $machine, from: self.as_str(), to: to.as_str() })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| Error::invalid($field, s, concat!("not a ", $machine, " status")))
            }
        }
    };
}

status_enum!(TaskStatus, "task", "task_status", [
    Pending => "PENDING",
    Running => "RUNNING",
    Completed => "COMPLETED",
    Failed => "FAILED",
    Cancelled => "CANCELLED",
]);

status_enum!(RunStatus, "run", "run_status", [
    Pending => "PENDING",
    Assigned => "ASSIGNED",
    Running => "RUNNING",
    Completed => "COMPLETED",
    Failed => "FAILED",
    Cancelled => "CANCELLED",
]);

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    }

    fn can_move_to(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!((self, to), (Pending, Running | Failed | Cancelled) | (Running, Completed | Failed | Cancelled))
    }
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }

    /// Assigned to a Worker and not yet finished.
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Assigned | RunStatus::Running)
    }

    fn can_move_to(self, to: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, to),
            (Pending, Assigned | Failed | Cancelled)
                | (Assigned, Running | Completed | Failed | Cancelled)
                | (Running, Completed | Failed | Cancelled)
        )
    }
}

/// How many of a shard's Runs may be [`Run::interrupted`] without counting
/// as attempts; interruptions past these count like failures, so that no
/// Task is retried for ever.
pub const UNCOUNTED_INTERRUPTIONS: u32 = 10;

/// The attempts of shard `shard` up to `attempt` that count against the
/// retry policy's `max_attempts`: all but the (first
/// [`UNCOUNTED_INTERRUPTIONS`]) Runs that were [`Run::interrupted`] — a
/// Worker's shutdown stopped them, which is no fault of the Run.
pub fn counted_attempts(runs: &[Run], shard: u32, attempt: u32) -> u32 {
    let interrupted = runs.iter().filter(|r| r.shard == shard && r.attempt <= attempt && r.interrupted).count();
    attempt.saturating_sub(u32::try_from(interrupted).unwrap_or(u32::MAX).min(UNCOUNTED_INTERRUPTIONS))
}

/// A Task's status, following from its Runs.
///
/// A Task has `fan_out` shards (1 unless it fans out); each shard is tried by
/// one Run at a time, and retried by a new Run (next attempt) until the
/// retry policy's `max_attempts` is spent. Then:
/// - a terminal Task stays as it is (a Task is cancelled explicitly, and
///   terminal states are final);
/// - COMPLETED once every shard has a completed Run;
/// - FAILED once some shard's latest Run failed (or was cancelled without the
///   Task being cancelled) and that shard has no attempts left (its Runs
///   that were [`Run::interrupted`] do not count), or its failure was
///   permanent ([`Run::failed_permanently`]);
/// - RUNNING once any Run was assigned — including while a failed shard waits
///   for its retry: a Task never goes back to PENDING;
/// - PENDING otherwise.
pub fn derive_task_status(current: TaskStatus, fan_out: u32, retry: &RetryPolicy, runs: &[Run]) -> TaskStatus {
    if current.is_terminal() {
        return current;
    }
    let fan_out = fan_out.max(1);
    let mut completed_shards = 0;
    let mut started = current == TaskStatus::Running;
    for shard in 0..fan_out {
        let shard_runs = runs.iter().filter(|r| r.shard == shard);
        let latest = shard_runs.clone().max_by_key(|r| r.attempt);
        if shard_runs.clone().any(|r| r.status != RunStatus::Pending) {
            started = true;
        }
        if shard_runs.clone().any(|r| r.status == RunStatus::Completed) {
            completed_shards += 1;
            continue;
        }
        if let Some(latest) = latest
            && matches!(latest.status, RunStatus::Failed | RunStatus::Cancelled)
            && (counted_attempts(runs, shard, latest.attempt) >= retry.max_attempts || latest.failed_permanently)
        {
            return TaskStatus::Failed;
        }
    }
    if completed_shards == fan_out {
        TaskStatus::Completed
    } else if started {
        TaskStatus::Running
    } else {
        TaskStatus::Pending
    }
}
