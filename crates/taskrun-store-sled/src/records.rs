//! How records and keys are laid out in sled.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use taskrun_core::{
    AgentName, AgentVersion, Json, Run, RunStatus, Task, TaskEvent, TaskId, TaskSpec, TaskStatus, Timestamp,
};
use taskrun_store::logic::{self, RunRecord, TaskAggregate, TaskMeta};
use taskrun_store::{Error, Result};

use crate::trees::storage;

/// What never changes about a Task (`tasks` tree). The input may be large,
/// so it is written once.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskHead {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub created_at: Timestamp,
}

/// What changes about a Task: one small record written by every change to
/// the Task, its Runs or its events.
///
/// Results are not in it: a Run's result is written once, in its own
/// record ([`RESULT`]), by the change that completes the Run, and a
/// COMPLETED Task's result is its shard 0's ([`logic::result_run`]), so
/// `result` and every Run's `result` are written as None. Except in the
/// change that ends the Task: its state record moves to `s` and is never
/// written again, so the Runs that change completed keep their results
/// inline there (a one-Run Task so costs four writes in all, not five;
/// should an ended Task ever change again, the inline results are moved
/// out as those of an old state record are). A state record
/// written before result records existed holds them inline: on load an
/// inline result is kept, and a result record is read only for a
/// COMPLETED Run without one (see [`Loaded::read_results`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskState {
    pub status: TaskStatus,
    pub updated_at: Timestamp,
    pub result: Option<Json>,
    pub error: Option<String>,
    pub meta: TaskMeta,
    pub runs: Vec<RunRecord>,
    /// The Task's latest TaskEvents, not (yet) in an events record; see
    /// [`TAIL_BYTES`].
    pub tail: Vec<TaskEvent>,
    /// What the Runs' serde form leaves out: `(index in runs, flags)` of
    /// each Run with a flag set ([`FAILED_PERMANENTLY`], [`INTERRUPTED`]).
    /// Written after the rest, as a trailer that records from before it
    /// lack: see [`decode_state`].
    #[serde(skip)]
    pub run_flags: Vec<(u32, u8)>,
}

/// In [`TaskState::run_flags`]: [`Run::failed_permanently`].
const FAILED_PERMANENTLY: u8 = 1;
/// In [`TaskState::run_flags`]: [`Run::interrupted`].
const INTERRUPTED: u8 = 2;

/// The `run_flags` of `runs`.
fn run_flags(runs: &[RunRecord]) -> Vec<(u32, u8)> {
    let flags = |run: &Run| {
        (if run.failed_permanently { FAILED_PERMANENTLY } else { 0 }) | (if run.interrupted { INTERRUPTED } else { 0 })
    };
    (0..runs.len()).filter_map(|i| Some((i as u32, flags(&runs[i].run))).filter(|&(_, f)| f != 0)).collect()
}

/// Decodes a state record: a [`TaskState`], then the trailer that holds
/// its `run_flags` (none in a record written before it).
pub(crate) fn decode_state(key: &[u8], bytes: &[u8]) -> Result<TaskState> {
    let corrupt = |e| Error::corrupt("task_state", String::from_utf8_lossy(key), e);
    let (mut state, trailer) = postcard::take_from_bytes::<TaskState>(bytes).map_err(corrupt)?;
    if !trailer.is_empty() {
        state.run_flags = postcard::from_bytes(trailer).map_err(corrupt)?;
    }
    Ok(state)
}

/// The most bytes of TaskEvents the state record carries. A change whose
/// events would take the tail past this writes the tail and its own events
/// as one events record instead, and empties the tail. A Task with little
/// output so never writes an events record: each change is one write
/// fewer, which is most of what a small Task costs.
pub(crate) const TAIL_BYTES: usize = 2048;

/// [`TaskState`] borrowed from an aggregate, for writing (its trailer
/// included).
#[derive(Serialize)]
struct TaskStateRef<'a> {
    status: TaskStatus,
    updated_at: Timestamp,
    result: &'a Option<Json>,
    error: &'a Option<String>,
    meta: &'a TaskMeta,
    runs: &'a [RunRecord],
    tail: &'a [TaskEvent],
    run_flags: &'a [(u32, u8)],
}

#[derive(Serialize)]
struct TaskHeadRef<'a> {
    id: &'a TaskId,
    spec: &'a TaskSpec,
    created_at: Timestamp,
}

pub(crate) fn encode_head(task: &Task) -> Result<Vec<u8>> {
    encode(
        "task",
        task.id.as_str().as_bytes(),
        &TaskHeadRef { id: &task.id, spec: &task.spec, created_at: task.created_at },
    )
}

/// The Task's state record: `agg` and `tail`, with no result but those of
/// the Runs `inline` names (see [`TaskState`]). The other results are taken
/// out of `agg` while it is encoded and put back, so nothing is copied.
pub(crate) fn encode_state(
    agg: &mut TaskAggregate,
    tail: &[TaskEvent],
    inline: impl Fn(usize) -> bool,
) -> Result<Vec<u8>> {
    let flags = run_flags(&agg.runs);
    let task_result = agg.task.result.take();
    let run_results: Vec<Option<Json>> =
        agg.runs.iter_mut().enumerate().map(|(i, r)| if inline(i) { None } else { r.run.result.take() }).collect();
    let encoded = encode(
        "task_state",
        agg.task.id.as_str().as_bytes(),
        &TaskStateRef {
            status: agg.task.status,
            updated_at: agg.task.updated_at,
            result: &agg.task.result,
            error: &agg.task.error,
            meta: &agg.meta,
            runs: &agg.runs,
            tail,
            run_flags: &flags,
        },
    );
    agg.task.result = task_result;
    for (record, result) in agg.runs.iter_mut().zip(run_results) {
        if result.is_some() {
            record.run.result = result;
        }
    }
    encoded
}

/// The result record of `run`, a COMPLETED Run: (key, value). None for a
/// Run without a result.
pub(crate) fn encode_result(run: &Run) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let Some(result) = &run.result else {
        return Ok(None);
    };
    let key = result_key(&run.task_id, run.shard, run.attempt);
    let value = encode("run_result", run.id.as_str().as_bytes(), result)?;
    Ok(Some((key, value)))
}

/// A Task as its records hold it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// The aggregate; its COMPLETED Runs lack their results until
    /// [`Loaded::read_results`] reads them from their records.
    pub agg: TaskAggregate,
    pub tail: Vec<TaskEvent>,
    /// The state record holds Run results inline (it was written before
    /// results had records of their own). The next change to the Task
    /// writes them to result records, once, and leaves them out of the
    /// state record from then on.
    pub results_inline: bool,
}

/// The Task of `head` and `state`, its results as the state record holds
/// them: inline in a state record written before result records existed,
/// none otherwise.
pub(crate) fn join(head: TaskHead, state: TaskState) -> Result<Loaded> {
    let results_inline = state.result.is_some() || state.runs.iter().any(|r| r.run.result.is_some());
    let mut agg = TaskAggregate {
        task: Task {
            id: head.id,
            spec: head.spec,
            status: state.status,
            created_at: head.created_at,
            updated_at: state.updated_at,
            result: state.result,
            error: state.error,
        },
        meta: state.meta,
        runs: state.runs,
    };
    for &(i, flags) in &state.run_flags {
        let Some(record) = agg.runs.get_mut(i as usize) else {
            return Err(Error::corrupt(
                "task_state",
                agg.task.id.as_str(),
                format!("flags of run {i}, which it lacks"),
            ));
        };
        record.run.failed_permanently = flags & FAILED_PERMANENTLY != 0;
        record.run.interrupted = flags & INTERRUPTED != 0;
    }
    Ok(Loaded { agg, tail: state.tail, results_inline })
}

impl Loaded {
    /// Reads from their records the results of the COMPLETED Runs that
    /// `wanted` names and whose result is not inline, and the Task's own
    /// result (a COMPLETED Task's is its shard 0's). With every Run wanted
    /// the aggregate is what the store's API shows; with fewer, only the
    /// Task and the wanted Runs are.
    pub(crate) fn read_results(&mut self, tasks: &sled::Tree, wanted: impl Fn(&Run) -> bool) -> Result<()> {
        let agg = &mut self.agg;
        let task_result = match agg.task.status {
            TaskStatus::Completed if agg.task.result.is_none() => logic::result_run(&agg.runs),
            _ => None,
        };
        for (i, record) in agg.runs.iter_mut().enumerate() {
            let run = &mut record.run;
            if run.status != RunStatus::Completed || run.result.is_some() || !(task_result == Some(i) || wanted(run)) {
                continue;
            }
            // A COMPLETED Run always has a result: if it is not inline, the
            // change that completed the Run wrote its record.
            let key = result_key(&run.task_id, run.shard, run.attempt);
            let bytes = tasks
                .get(&key)
                .map_err(storage)?
                .ok_or_else(|| Error::corrupt("run_result", run.id.as_str(), "missing"))?;
            run.result = Some(decode("run_result", run.id.as_str().as_bytes(), &bytes)?);
        }
        if let Some(i) = task_result {
            agg.task.result.clone_from(&agg.runs[i].run.result);
        }
        Ok(())
    }
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, key: &[u8], bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::corrupt(what, String::from_utf8_lossy(key), e))
}

pub(crate) fn encode<T: Serialize + ?Sized>(what: &'static str, key: &[u8], value: &T) -> Result<Vec<u8>> {
    // Room for a small Task's records up front: growing from empty took
    // about six reallocations per record.
    postcard::to_extend(value, Vec::with_capacity(ENCODE_CAPACITY))
        .map_err(|e| Error::corrupt(what, String::from_utf8_lossy(key), e))
}

/// The bytes [`encode`] reserves before it writes.
const ENCODE_CAPACITY: usize = 512;

/// `a`, a 0 byte, `b`. Ids never contain a 0 byte, so `a, 0` is a prefix
/// that no longer id shares.
pub(crate) fn joined(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + 1 + b.len());
    key.extend_from_slice(a);
    key.push(0);
    key.extend_from_slice(b);
    key
}

// Everything about Tasks lives in the one `tasks` tree, so that a batch of
// changes is one atomic `apply_batch`. The first byte of a key says what
// the record is.

/// The Task's id, spec and creation time: written once.
pub(crate) const HEAD: u8 = b'h';
/// The state of a Task that ended: status, error, event counter, Runs,
/// events tail (no results: see [`RESULT`]).
pub(crate) const STATE: u8 = b's';
/// TaskEvents moved out of the state record's tail, in order.
pub(crate) const EVENTS: u8 = b'e';
/// Idempotency key → task id.
pub(crate) const IDEMPOTENCY: u8 = b'i';
/// A COMPLETED Run's result: written once, in the change that completes
/// the Run, and never again (the state record does not carry it). Keyed by
/// the Run's Task, shard and attempt — what its id names — so a Task's
/// result records are one prefix (`r`, task id, 0). They do not move when
/// the Task ends.
pub(crate) const RESULT: u8 = b'r';
/// The state of a Task that has not ended. A Task's state record moves
/// from `p` to `s` in the change that ends it, so the open Tasks are a
/// prefix scan away and cost no record of their own.
pub(crate) const OPEN: u8 = b'p';

pub(crate) fn tagged(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(tag);
    key.extend_from_slice(rest);
    key
}

pub(crate) fn head_key(task: &TaskId) -> Vec<u8> {
    tagged(HEAD, task.as_str().as_bytes())
}

/// The key of the Task's state record while it is open, or once it ended.
pub(crate) fn state_key(task: &TaskId, open: bool) -> Vec<u8> {
    tagged(if open { OPEN } else { STATE }, task.as_str().as_bytes())
}

/// The key of the result record of attempt `attempt` of shard `shard` of
/// Task `task`.
pub(crate) fn result_key(task: &TaskId, shard: u32, attempt: u32) -> Vec<u8> {
    let mut rest = Vec::with_capacity(8);
    rest.extend_from_slice(&shard.to_be_bytes());
    rest.extend_from_slice(&attempt.to_be_bytes());
    tagged(RESULT, &joined(task.as_str().as_bytes(), &rest))
}

/// The Task as `tasks` holds it, its results not read yet (see
/// [`Loaded::read_results`]); None if there is no such Task.
pub(crate) fn load_task(tasks: &sled::Tree, id: &TaskId) -> Result<Option<Loaded>> {
    let head_key = head_key(id);
    let Some(head) = tasks.get(&head_key).map_err(storage)? else {
        return Ok(None);
    };
    with_state(tasks, decode("task", &head_key, &head)?).map(Some)
}

/// The Task of `head`, with its state record read from `tasks` (its
/// results not read yet).
pub(crate) fn with_state(tasks: &sled::Tree, head: TaskHead) -> Result<Loaded> {
    // The open key first: a Task's state only ever moves from it to the
    // ended key, in one atomic batch, so if it is missing the other is there.
    for open in [true, false] {
        let key = state_key(&head.id, open);
        if let Some(state) = tasks.get(&key).map_err(storage)? {
            return join(head, decode_state(&key, &state)?);
        }
    }
    Err(Error::corrupt("task_state", head.id.as_str(), "missing"))
}

pub(crate) fn idempotency_key(key: &str) -> Vec<u8> {
    tagged(IDEMPOTENCY, key.as_bytes())
}

/// The key of the events record whose first event has `seq`.
pub(crate) fn event_key(task: &TaskId, seq: u64) -> Vec<u8> {
    tagged(EVENTS, &joined(task.as_str().as_bytes(), &seq.to_be_bytes()))
}

pub(crate) fn agent_key(name: &AgentName, version: AgentVersion) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&version.major.to_be_bytes());
    v.extend_from_slice(&version.minor.to_be_bytes());
    v.extend_from_slice(&version.patch.to_be_bytes());
    joined(name.as_str().as_bytes(), &v)
}

pub(crate) fn id_from<T: std::str::FromStr>(what: &'static str, bytes: &[u8]) -> Result<T> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::corrupt(what, String::from_utf8_lossy(bytes), "not an id"))
}
