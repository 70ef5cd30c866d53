//! Run, OutputChunk, TaskEvent (and WatchTaskResponse).

use taskrun_core::{OutputChunk, Run, TaskEvent, TaskEventKind};

use super::enums::{run_status_from_wire, task_status_from_wire};
use super::{Result, json_opt, parse, parse_opt, required, timestamp, to_u32, to_u64, wire_i32, wire_i64};
use crate::{InvalidMessage, pb};

impl From<Run> for pb::Run {
    fn from(r: Run) -> pb::Run {
        pb::Run {
            run_id: r.id.into(),
            task_id: r.task_id.into(),
            shard: wire_i32(r.shard),
            attempt: wire_i32(r.attempt),
            lease: wire_i64(r.lease),
            status: pb::RunStatus::from(r.status).into(),
            worker_id: r.worker_id.map(String::from),
            created_at_unix_ms: r.created_at.as_millis(),
            updated_at_unix_ms: r.updated_at.as_millis(),
            not_before_unix_ms: r.not_before.as_millis(),
            assigned_at_unix_ms: r.assigned_at.map(|t| t.as_millis()),
            started_at_unix_ms: r.started_at.map(|t| t.as_millis()),
            finished_at_unix_ms: r.finished_at.map(|t| t.as_millis()),
            result_json: r.result.map(String::from),
            error: r.error,
            result_omitted_bytes: None,
            failed_permanently: r.failed_permanently,
            interrupted: r.interrupted,
        }
    }
}

/// A Run as a GetTask reply carries it: whole, or — when the reply left
/// its result out to stay under 4 MiB — without its result, with the
/// result's size. GetTask with the Run's id fetches such a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReply {
    /// The Run; without its result if `result_omitted_bytes` is set.
    pub run: Run,
    /// The size of the result left out, in bytes.
    pub result_omitted_bytes: Option<u64>,
}

impl RunReply {
    /// The whole Run.
    pub fn whole(run: Run) -> RunReply {
        RunReply { run, result_omitted_bytes: None }
    }

    /// The Run without its result (if it has one).
    pub fn without_result(mut run: Run) -> RunReply {
        let result_omitted_bytes = run.result.take().map(|r| r.len() as u64);
        RunReply { run, result_omitted_bytes }
    }
}

impl pb::Run {
    /// Leaves the result out, as a GetTask reply does when it would not fit:
    /// `result_omitted_bytes` says its size. Nothing changes without one.
    pub fn omit_result(&mut self) {
        if let Some(result) = self.result_json.take() {
            self.result_omitted_bytes = Some(wire_i64(result.len() as u64));
        }
    }
}

impl From<RunReply> for pb::Run {
    fn from(r: RunReply) -> pb::Run {
        pb::Run { result_omitted_bytes: r.result_omitted_bytes.map(wire_i64), ..pb::Run::from(r.run) }
    }
}

impl TryFrom<pb::Run> for RunReply {
    type Error = InvalidMessage;
    fn try_from(mut r: pb::Run) -> Result<RunReply> {
        let result_omitted_bytes = match r.result_omitted_bytes.take() {
            None => None,
            Some(_) if r.result_json.is_some() => {
                return Err(InvalidMessage::Inconsistent {
                    field: "result_omitted_bytes".into(),
                    reason: "must not be set with result_json",
                });
            }
            Some(_) if r.status != i32::from(pb::RunStatus::Completed) => {
                return Err(InvalidMessage::Inconsistent {
                    field: "result_omitted_bytes".into(),
                    reason: "is set only on a COMPLETED Run",
                });
            }
            Some(n) => Some(to_u64("result_omitted_bytes", n, 1, None)?),
        };
        Ok(RunReply { run: Run::try_from(r)?, result_omitted_bytes })
    }
}

/// A whole Run: one whose result a GetTask reply left out is refused (a
/// COMPLETED Run has its result); convert that one to a [`RunReply`].
impl TryFrom<pb::Run> for Run {
    type Error = InvalidMessage;
    fn try_from(r: pb::Run) -> Result<Run> {
        if r.result_omitted_bytes.is_some() {
            return Err(InvalidMessage::Inconsistent {
                field: "result_omitted_bytes".into(),
                reason: "is set: the result was left out of the reply (convert the Run to a RunReply)",
            });
        }
        let status = run_status_from_wire("status", r.status)?;
        for (field, set) in [("failed_permanently", r.failed_permanently), ("interrupted", r.interrupted)] {
            if set && status != taskrun_core::RunStatus::Failed {
                return Err(InvalidMessage::Inconsistent {
                    field: field.into(),
                    reason: "is set on a Run that did not fail",
                });
            }
        }
        if r.failed_permanently && r.interrupted {
            return Err(InvalidMessage::Inconsistent {
                field: "interrupted".into(),
                reason: "is set with failed_permanently (a Run fails one way)",
            });
        }
        Ok(Run {
            id: parse("run_id", &r.run_id)?,
            task_id: parse("task_id", &r.task_id)?,
            shard: to_u32("shard", r.shard, 0, None)?,
            attempt: to_u32("attempt", r.attempt, 1, None)?,
            lease: to_u64("lease", r.lease, 0, None)?,
            status,
            worker_id: parse_opt("worker_id", r.worker_id.as_deref())?,
            created_at: timestamp(r.created_at_unix_ms),
            updated_at: timestamp(r.updated_at_unix_ms),
            not_before: timestamp(r.not_before_unix_ms),
            assigned_at: r.assigned_at_unix_ms.map(timestamp),
            started_at: r.started_at_unix_ms.map(timestamp),
            finished_at: r.finished_at_unix_ms.map(timestamp),
            result: json_opt("result_json", r.result_json)?,
            error: r.error,
            failed_permanently: r.failed_permanently,
            interrupted: r.interrupted,
        })
    }
}

impl From<OutputChunk> for pb::OutputChunk {
    fn from(c: OutputChunk) -> pb::OutputChunk {
        pb::OutputChunk { run_id: c.run_id.into(), seq: wire_i64(c.seq), data: c.data }
    }
}

impl TryFrom<pb::OutputChunk> for OutputChunk {
    type Error = InvalidMessage;
    fn try_from(c: pb::OutputChunk) -> Result<OutputChunk> {
        Ok(OutputChunk { run_id: parse("run_id", &c.run_id)?, seq: to_u64("seq", c.seq, 1, None)?, data: c.data })
    }
}

impl From<TaskEvent> for pb::TaskEvent {
    fn from(e: TaskEvent) -> pb::TaskEvent {
        pb::TaskEvent {
            task_id: e.task_id.into(),
            cursor: wire_i64(e.seq),
            at_unix_ms: e.at.as_millis(),
            kind: Some(match e.kind {
                TaskEventKind::Status { task_status, run_id, run_status, message } => {
                    pb::task_event::Kind::Status(pb::TaskStatusChange {
                        task_status: pb::TaskStatus::from(task_status).into(),
                        run_id: run_id.map(String::from),
                        run_status: run_status.map(|s| pb::RunStatus::from(s).into()),
                        message,
                    })
                }
                TaskEventKind::Output(chunk) => pb::task_event::Kind::Output(chunk.into()),
            }),
        }
    }
}

impl TryFrom<pb::TaskEvent> for TaskEvent {
    type Error = InvalidMessage;
    fn try_from(e: pb::TaskEvent) -> Result<TaskEvent> {
        let task_id = parse("task_id", &e.task_id)?;
        let seq = to_u64("cursor", e.cursor, 1, None)?;
        let kind = match required("kind", e.kind)? {
            pb::task_event::Kind::Status(change) => status_change(change).map_err(|e| e.under("status"))?,
            pb::task_event::Kind::Output(chunk) => {
                TaskEventKind::Output(OutputChunk::try_from(chunk).map_err(|e| e.under("output"))?)
            }
        };
        Ok(TaskEvent { task_id, seq, at: timestamp(e.at_unix_ms), kind })
    }
}

fn status_change(c: pb::TaskStatusChange) -> Result<TaskEventKind> {
    let task_status = task_status_from_wire("task_status", c.task_status)?;
    let run_id = parse_opt("run_id", c.run_id.as_deref())?;
    let run_status = c.run_status.map(|s| run_status_from_wire("run_status", s)).transpose()?;
    if run_id.is_some() != run_status.is_some() {
        return Err(InvalidMessage::Inconsistent {
            field: "run_status".into(),
            reason: "must be set exactly when run_id is",
        });
    }
    Ok(TaskEventKind::Status { task_status, run_id, run_status, message: c.message })
}

impl From<TaskEvent> for pb::WatchTaskResponse {
    fn from(event: TaskEvent) -> pb::WatchTaskResponse {
        pb::WatchTaskResponse { event: Some(event.into()) }
    }
}

/// The response's event; field paths start with `event.`.
impl TryFrom<pb::WatchTaskResponse> for TaskEvent {
    type Error = InvalidMessage;
    fn try_from(response: pb::WatchTaskResponse) -> Result<TaskEvent> {
        let event = required("event", response.event)?;
        TaskEvent::try_from(event).map_err(|e| e.under("event"))
    }
}
