//! Runs: concrete attempts of a Task on one Worker.

use serde::{Deserialize, Serialize};

use crate::{Error, Json, Result, RunId, RunStatus, TaskId, TaskStatus, Timestamp, WorkerId};

/// One attempt of one shard of a Task.
///
/// `attempt` counts the Runs of a shard (1, 2, …); `lease` counts the times
/// this Run was handed to a Worker. Every report about the Run must echo the
/// lease it was assigned with: a Worker holding an older lease is fenced off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub task_id: TaskId,
    pub shard: u32,
    pub attempt: u32,
    pub lease: u64,
    pub status: RunStatus,
    pub worker_id: Option<WorkerId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Not to be assigned before this time (retry backoff).
    pub not_before: Timestamp,
    pub assigned_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Results of a COMPLETED Run.
    pub result: Option<Json>,
    /// Why a Run FAILED or was CANCELLED.
    pub error: Option<String>,
    /// FAILED in a way that would repeat ([`RunOutcome::FailedPermanently`]):
    /// its shard gets no retry, so its Task fails. Not in the Run's serde
    /// form, whose layout stored records keep: a store that writes Runs
    /// keeps it beside them.
    #[serde(skip)]
    pub failed_permanently: bool,
    /// FAILED because its Worker stopped it while shutting down
    /// ([`RunOutcome::Interrupted`]): retried, and the attempt does not
    /// count against the Task's `max_attempts`. Kept like
    /// `failed_permanently`.
    #[serde(skip)]
    pub interrupted: bool,
}

impl Run {
    /// A new PENDING Run, lease 0, with the id [`RunId::of`] gives it.
    pub fn new(task_id: TaskId, shard: u32, attempt: u32, now: Timestamp, not_before: Timestamp) -> Run {
        Run {
            id: RunId::of(&task_id, shard, attempt),
            task_id,
            shard,
            attempt,
            lease: 0,
            status: RunStatus::Pending,
            worker_id: None,
            created_at: now,
            updated_at: now,
            not_before,
            assigned_at: None,
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
            failed_permanently: false,
            interrupted: false,
        }
    }

    /// Hands the Run to `worker`, taking the next lease. Refused unless the
    /// Run is PENDING and still holds `expected_lease`.
    pub fn assign(&mut self, worker: WorkerId, expected_lease: u64, now: Timestamp) -> Result<u64> {
        self.check_lease(expected_lease)?;
        self.status = self.status.transition(RunStatus::Assigned)?;
        self.lease += 1;
        self.worker_id = Some(worker);
        self.assigned_at = Some(now);
        self.updated_at = now;
        Ok(self.lease)
    }

    /// Refused unless the Run holds `lease`.
    pub fn check_lease(&self, lease: u64) -> Result<()> {
        if self.lease != lease {
            return Err(Error::invalid("lease", lease, format!("stale: run {} holds lease {}", self.id, self.lease)));
        }
        Ok(())
    }

    /// The Worker reports that the agent started.
    pub fn start(&mut self, now: Timestamp) -> Result<()> {
        self.status = self.status.transition(RunStatus::Running)?;
        self.started_at = Some(now);
        self.updated_at = now;
        Ok(())
    }

    /// Ends the Run with `outcome`.
    pub fn finish(&mut self, outcome: RunOutcome, now: Timestamp) -> Result<()> {
        self.status = self.status.transition(outcome.status())?;
        match outcome {
            RunOutcome::Completed { result } => self.result = Some(result),
            RunOutcome::FailedPermanently { error } => {
                self.error = Some(error);
                self.failed_permanently = true;
            }
            RunOutcome::Interrupted { error } => {
                self.error = Some(error);
                self.interrupted = true;
            }
            RunOutcome::Failed { error } | RunOutcome::Cancelled { reason: error } => self.error = Some(error),
        }
        self.finished_at = Some(now);
        self.updated_at = now;
        Ok(())
    }
}

/// How a Run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunOutcome {
    Completed {
        result: Json,
    },
    /// FAILED; retried while the Task's retry policy allows.
    Failed {
        error: String,
    },
    /// FAILED in a way that would repeat (the agent said so): the Task
    /// fails without a retry.
    FailedPermanently {
        error: String,
    },
    /// FAILED because the Worker stopped it while shutting down (its grace
    /// period ran out): retried, without using up an attempt.
    Interrupted {
        error: String,
    },
    Cancelled {
        reason: String,
    },
}

impl RunOutcome {
    pub fn status(&self) -> RunStatus {
        match self {
            RunOutcome::Completed { .. } => RunStatus::Completed,
            RunOutcome::Failed { .. } | RunOutcome::FailedPermanently { .. } | RunOutcome::Interrupted { .. } => {
                RunStatus::Failed
            }
            RunOutcome::Cancelled { .. } => RunStatus::Cancelled,
        }
    }
}

/// A piece of a Run's output, numbered per Run from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub run_id: RunId,
    pub seq: u64,
    pub data: String,
}

/// Something that happened to a Task, in the order it happened. `seq` is the
/// Task's own event counter (from 1) and serves as WatchTask's cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub task_id: TaskId,
    pub seq: u64,
    pub at: Timestamp,
    pub kind: TaskEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskEventKind {
    /// The Task's or one of its Runs' status changed.
    Status { task_status: TaskStatus, run_id: Option<RunId>, run_status: Option<RunStatus>, message: Option<String> },
    /// A Run emitted output.
    Output(OutputChunk),
}
