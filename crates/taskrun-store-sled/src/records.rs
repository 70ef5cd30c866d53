//! How records and keys are laid out in sled.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use taskrun_core::{AgentName, AgentVersion, Json, Task, TaskEvent, TaskId, TaskSpec, TaskStatus, Timestamp};
use taskrun_store::logic::{RunRecord, TaskAggregate, TaskMeta};
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
}

/// The most bytes of TaskEvents the state record carries. A change whose
/// events would take the tail past this writes the tail and its own events
/// as one events record instead, and empties the tail. A Task with little
/// output so never writes an events record: each change is one write
/// fewer, which is most of what a small Task costs.
pub(crate) const TAIL_BYTES: usize = 2048;

/// [`TaskState`] borrowed from an aggregate, for writing.
#[derive(Serialize)]
struct TaskStateRef<'a> {
    status: TaskStatus,
    updated_at: Timestamp,
    result: &'a Option<Json>,
    error: &'a Option<String>,
    meta: &'a TaskMeta,
    runs: &'a [RunRecord],
    tail: &'a [TaskEvent],
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

pub(crate) fn encode_state(agg: &TaskAggregate, tail: &[TaskEvent]) -> Result<Vec<u8>> {
    encode(
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
        },
    )
}

/// The Task's aggregate and its events tail.
pub(crate) fn join(head: TaskHead, state: TaskState) -> (TaskAggregate, Vec<TaskEvent>) {
    let agg = TaskAggregate {
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
    (agg, state.tail)
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, key: &[u8], bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::corrupt(what, String::from_utf8_lossy(key), e))
}

pub(crate) fn encode<T: Serialize + ?Sized>(what: &'static str, key: &[u8], value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::corrupt(what, String::from_utf8_lossy(key), e))
}

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
/// The state of a Task that ended: status, result, error, event counter,
/// Runs, events tail.
pub(crate) const STATE: u8 = b's';
/// TaskEvents moved out of the state record's tail, in order.
pub(crate) const EVENTS: u8 = b'e';
/// Idempotency key → task id.
pub(crate) const IDEMPOTENCY: u8 = b'i';
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

/// The Task's aggregate and events tail as `tasks` holds them; None if
/// there is no such Task.
pub(crate) fn load_task(tasks: &sled::Tree, id: &TaskId) -> Result<Option<(TaskAggregate, Vec<TaskEvent>)>> {
    let head_key = head_key(id);
    let Some(head) = tasks.get(&head_key).map_err(storage)? else {
        return Ok(None);
    };
    with_state(tasks, decode("task", &head_key, &head)?).map(Some)
}

/// The Task of `head`, with its state record read from `tasks`.
pub(crate) fn with_state(tasks: &sled::Tree, head: TaskHead) -> Result<(TaskAggregate, Vec<TaskEvent>)> {
    // The open key first: a Task's state only ever moves from it to the
    // ended key, in one atomic batch, so if it is missing the other is there.
    for open in [true, false] {
        let key = state_key(&head.id, open);
        if let Some(state) = tasks.get(&key).map_err(storage)? {
            return Ok(join(head, decode("task_state", &key, &state)?));
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
