//! The Worker's reports on RunService.Connect that carry core values:
//! RunStatusUpdate (a RunOutcome, or "started") and RunOutputChunk (an
//! OutputChunk), each with the lease it echoes; and its WorkerDraining
//! notice.

use taskrun_core::{OutputChunk, RunId, RunOutcome, RunStatus, Timestamp};

use super::enums::run_status_from_wire;
use super::{Result, at_most_bytes, at_most_entries, json, parse, timestamp, to_u64, wire_i64};
use crate::{InvalidMessage, pb};

/// Where a Run got to, as a RunStatusUpdate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunProgress {
    /// RUNNING: the agent started.
    Started,
    /// COMPLETED, FAILED or CANCELLED.
    Finished(RunOutcome),
}

impl RunProgress {
    pub fn status(&self) -> RunStatus {
        match self {
            RunProgress::Started => RunStatus::Running,
            RunProgress::Finished(outcome) => outcome.status(),
        }
    }
}

/// A validated RunStatusUpdate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStatusReport {
    pub run_id: RunId,
    /// The lease echoed from the assignment (1 or more).
    pub lease: u64,
    pub progress: RunProgress,
    /// When it happened, on the Worker's clock.
    pub at: Timestamp,
    /// 16 to 128 bytes; the same for a resend of the same update.
    pub nonce: String,
    /// With a terminal status, the seq of the Run's last output chunk
    /// (0 = none).
    pub last_output_seq: u64,
    /// With a terminal status, the Run's last output chunks `(seq, data)`
    /// not sent on their own, in seq order, ending at `last_output_seq`.
    pub trailing_output: Vec<(u64, String)>,
}

impl RunStatusReport {
    pub const MIN_NONCE_LEN: usize = 16;
    pub const MAX_NONCE_LEN: usize = 128;
    /// Longest `result_json`, bytes: the most any Worker may be configured
    /// to return (taskrun-worker's `MAX_RESULT_BYTES`).
    pub const MAX_RESULT_BYTES: usize = 8 << 20;
    /// Longest `error`, bytes: a Worker cuts longer text to this
    /// (taskrun-worker's `MAX_ERROR_BYTES`).
    pub const MAX_ERROR_BYTES: usize = 64 << 10;
    /// Most `trailing_output` pieces (a Worker sends at most one).
    pub const MAX_TRAILING_PIECES: usize = 1024;
}

impl From<RunStatusReport> for pb::RunStatusUpdate {
    fn from(r: RunStatusReport) -> pb::RunStatusUpdate {
        let status = pb::RunStatus::from(r.progress.status()).into();
        let (mut permanent, mut interrupted) = (false, false);
        let (result_json, error) = match r.progress {
            RunProgress::Started => (None, None),
            RunProgress::Finished(RunOutcome::Completed { result }) => (Some(result.into()), None),
            RunProgress::Finished(RunOutcome::Failed { error } | RunOutcome::Cancelled { reason: error }) => {
                (None, Some(error))
            }
            RunProgress::Finished(RunOutcome::FailedPermanently { error }) => {
                permanent = true;
                (None, Some(error))
            }
            RunProgress::Finished(RunOutcome::Interrupted { error }) => {
                interrupted = true;
                (None, Some(error))
            }
        };
        pb::RunStatusUpdate {
            run_id: r.run_id.into(),
            lease: wire_i64(r.lease),
            status,
            result_json,
            error,
            at_unix_ms: r.at.as_millis(),
            nonce: r.nonce,
            last_output_seq: wire_i64(r.last_output_seq),
            trailing_output: r
                .trailing_output
                .into_iter()
                .map(|(seq, data)| pb::RunOutputPiece { seq: wire_i64(seq), data })
                .collect(),
            permanent,
            interrupted,
        }
    }
}

impl TryFrom<pb::RunStatusUpdate> for RunStatusReport {
    type Error = InvalidMessage;
    fn try_from(u: pb::RunStatusUpdate) -> Result<RunStatusReport> {
        let run_id = parse("run_id", &u.run_id)?;
        let lease = to_u64("lease", u.lease, 1, None)?;
        let status = run_status_from_wire("status", u.status)?;
        for (field, set) in [("permanent", u.permanent), ("interrupted", u.interrupted)] {
            if set && status != RunStatus::Failed {
                return Err(InvalidMessage::Invalid {
                    field: field.into(),
                    value: "true".to_owned(),
                    reason: format!("is set only when FAILED, not {status}"),
                });
            }
        }
        if u.permanent && u.interrupted {
            return Err(InvalidMessage::Inconsistent {
                field: "interrupted".into(),
                reason: "is set with permanent (a Run fails one way)",
            });
        }
        let progress = match status {
            RunStatus::Pending | RunStatus::Assigned => {
                return Err(InvalidMessage::Invalid {
                    field: "status".into(),
                    value: status.to_string(),
                    reason: "a Worker reports RUNNING, COMPLETED, FAILED or CANCELLED".to_owned(),
                });
            }
            RunStatus::Running => {
                absent("result_json", &u.result_json, "is set only when COMPLETED")?;
                absent("error", &u.error, "is set only when FAILED or CANCELLED")?;
                RunProgress::Started
            }
            RunStatus::Completed => {
                absent("error", &u.error, "is set only when FAILED or CANCELLED")?;
                let Some(result) = u.result_json else {
                    return Err(InvalidMessage::Missing("result_json".into()));
                };
                at_most_bytes("result_json", &result, RunStatusReport::MAX_RESULT_BYTES)?;
                RunProgress::Finished(RunOutcome::Completed { result: json("result_json", result)? })
            }
            RunStatus::Failed | RunStatus::Cancelled => {
                absent("result_json", &u.result_json, "is set only when COMPLETED")?;
                let Some(error) = u.error else {
                    return Err(InvalidMessage::Missing("error".into()));
                };
                at_most_bytes("error", &error, RunStatusReport::MAX_ERROR_BYTES)?;
                RunProgress::Finished(match status {
                    RunStatus::Failed if u.permanent => RunOutcome::FailedPermanently { error },
                    RunStatus::Failed if u.interrupted => RunOutcome::Interrupted { error },
                    RunStatus::Failed => RunOutcome::Failed { error },
                    _ => RunOutcome::Cancelled { reason: error },
                })
            }
        };
        let nonce_len = u.nonce.len();
        if u.nonce.is_empty() {
            return Err(InvalidMessage::Missing("nonce".into()));
        }
        if !(RunStatusReport::MIN_NONCE_LEN..=RunStatusReport::MAX_NONCE_LEN).contains(&nonce_len) {
            return Err(InvalidMessage::Invalid {
                field: "nonce".into(),
                value: format!("{nonce_len} bytes"),
                reason: format!(
                    "must be {} to {} bytes",
                    RunStatusReport::MIN_NONCE_LEN,
                    RunStatusReport::MAX_NONCE_LEN
                ),
            });
        }
        let last_output_seq = to_u64("last_output_seq", u.last_output_seq, 0, None)?;
        let trailing_output = trailing(&progress, last_output_seq, u.trailing_output)?;
        Ok(RunStatusReport {
            run_id,
            lease,
            progress,
            at: timestamp(u.at_unix_ms),
            nonce: u.nonce,
            last_output_seq,
            trailing_output,
        })
    }
}

/// Trailing output: only with a terminal status, seqs from 1 rising, the
/// last one `last_output_seq`.
fn trailing(
    progress: &RunProgress,
    last_output_seq: u64,
    pieces: Vec<pb::RunOutputPiece>,
) -> Result<Vec<(u64, String)>> {
    if pieces.is_empty() {
        return Ok(Vec::new());
    }
    if matches!(progress, RunProgress::Started) {
        return Err(InvalidMessage::Inconsistent {
            field: "trailing_output".into(),
            reason: "is sent only with a terminal status",
        });
    }
    at_most_entries("trailing_output", pieces.len(), RunStatusReport::MAX_TRAILING_PIECES)?;
    let mut out = Vec::with_capacity(pieces.len());
    let mut previous = 0;
    for (i, piece) in pieces.into_iter().enumerate() {
        let seq = to_u64("seq", piece.seq, 1, None).map_err(|e| e.under_index("trailing_output", i))?;
        if seq <= previous {
            return Err(InvalidMessage::Inconsistent {
                field: crate::error::FieldPath::owned(format!("trailing_output[{i}].seq")),
                reason: "must be higher than the previous piece's",
            });
        }
        previous = seq;
        out.push((seq, piece.data));
    }
    if previous != last_output_seq {
        return Err(InvalidMessage::Inconsistent {
            field: "last_output_seq".into(),
            reason: "must be the seq of the last trailing_output piece",
        });
    }
    Ok(out)
}

fn absent(field: &'static str, value: &Option<String>, reason: &'static str) -> Result<()> {
    match value {
        None => Ok(()),
        Some(_) => Err(InvalidMessage::Inconsistent { field: field.into(), reason }),
    }
}

/// A validated RunOutputChunk: the chunk and the lease it echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutputReport {
    /// The lease echoed from the assignment (1 or more).
    pub lease: u64,
    pub chunk: OutputChunk,
}

impl From<RunOutputReport> for pb::RunOutputChunk {
    fn from(r: RunOutputReport) -> pb::RunOutputChunk {
        pb::RunOutputChunk {
            run_id: r.chunk.run_id.into(),
            lease: wire_i64(r.lease),
            seq: wire_i64(r.chunk.seq),
            data: r.chunk.data,
        }
    }
}

impl TryFrom<pb::RunOutputChunk> for RunOutputReport {
    type Error = InvalidMessage;
    fn try_from(c: pb::RunOutputChunk) -> Result<RunOutputReport> {
        let run_id = parse("run_id", &c.run_id)?;
        let lease = to_u64("lease", c.lease, 1, None)?;
        Ok(RunOutputReport { lease, chunk: OutputChunk { run_id, seq: to_u64("seq", c.seq, 1, None)?, data: c.data } })
    }
}

/// A validated WorkerDraining: the Worker is shutting down and takes no new
/// Runs; those still going at `deadline` are stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainNotice {
    /// When the Worker's grace period ends, on its clock.
    pub deadline: Timestamp,
    /// Why, for logs; at most [`DrainNotice::MAX_REASON_BYTES`].
    pub reason: String,
}

impl DrainNotice {
    pub const MAX_REASON_BYTES: usize = 1024;
}

impl From<DrainNotice> for pb::WorkerDraining {
    fn from(n: DrainNotice) -> pb::WorkerDraining {
        pb::WorkerDraining { deadline_unix_ms: n.deadline.as_millis(), reason: n.reason }
    }
}

impl TryFrom<pb::WorkerDraining> for DrainNotice {
    type Error = InvalidMessage;
    fn try_from(d: pb::WorkerDraining) -> Result<DrainNotice> {
        if d.deadline_unix_ms == 0 {
            return Err(InvalidMessage::Missing("deadline_unix_ms".into()));
        }
        to_u64("deadline_unix_ms", d.deadline_unix_ms, 1, None)?;
        at_most_bytes("reason", &d.reason, DrainNotice::MAX_REASON_BYTES)?;
        Ok(DrainNotice { deadline: timestamp(d.deadline_unix_ms), reason: d.reason })
    }
}
