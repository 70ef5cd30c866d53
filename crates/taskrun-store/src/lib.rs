//! Storage for TaskRun's control plane: the traits every backend implements,
//! the state-change logic they all share ([`logic`]), and — behind the
//! `conformance` feature — the one test suite every backend must pass.
//!
//! A backend stores records; it does not decide what a state change means.
//! Finishing a Run, retrying a shard, deriving the Task's status, cancelling,
//! appending output: all of that is [`logic::TaskAggregate`], written once.
//! A backend loads the aggregate, applies the change and writes back what
//! changed, in one atomic step.
//!
//! Every mutating call is acknowledged only once the change is as durable as
//! the backend promises (for sled: flushed to disk). A call that returns an
//! error changed nothing.

mod error;
pub mod index;
pub mod logic;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::fmt;

use async_trait::async_trait;
use taskrun_core::{
    AgentDigest, AgentManifest, AgentName, AgentVersion, Labels, Run, RunId, RunOutcome, Task, TaskEvent, TaskId,
    TaskStatus, Timestamp, Worker, WorkerId, WorkerState,
};

pub use error::{Error, Result};

/// Settings every backend honours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The most output bytes stored for one Run. A Task's own
    /// `limits.output_limit_bytes` may lower it, never raise it.
    pub max_output_bytes_per_run: u64,
    /// The most Tasks one `list_tasks` call looks at (at least 1). A filter
    /// that few Tasks match would otherwise read the whole history in one
    /// call; past this many the call answers with what it found, perhaps
    /// nothing, and a token that carries on from where it stopped.
    pub max_tasks_examined_per_list: usize,
}

impl StoreConfig {
    pub const DEFAULT_MAX_OUTPUT_BYTES_PER_RUN: u64 = 4 << 20;
    /// 20–65 ms of reading on the sled store here (docs/benchmarks.md).
    pub const DEFAULT_MAX_TASKS_EXAMINED_PER_LIST: usize = 10_000;
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_output_bytes_per_run: Self::DEFAULT_MAX_OUTPUT_BYTES_PER_RUN,
            max_tasks_examined_per_list: Self::DEFAULT_MAX_TASKS_EXAMINED_PER_LIST,
        }
    }
}

/// The result of a create that may find its record already there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome<T> {
    /// Newly stored.
    Created(T),
    /// Stored before by an equal request (same idempotency key and spec, or
    /// same agent digest); nothing changed.
    Existing(T),
}

impl<T> CreateOutcome<T> {
    pub fn is_created(&self) -> bool {
        matches!(self, CreateOutcome::Created(_))
    }

    pub fn get(&self) -> &T {
        match self {
            CreateOutcome::Created(t) | CreateOutcome::Existing(t) => t,
        }
    }

    pub fn into_inner(self) -> T {
        match self {
            CreateOutcome::Created(t) | CreateOutcome::Existing(t) => t,
        }
    }

    /// The same outcome about `f` of the value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> CreateOutcome<U> {
        match self {
            CreateOutcome::Created(t) => CreateOutcome::Created(f(t)),
            CreateOutcome::Existing(t) => CreateOutcome::Existing(f(t)),
        }
    }
}

/// Which Tasks [`TaskStore::list_tasks`] returns. Every field that is set
/// must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// The Task is in one of these states; empty = any state.
    pub statuses: Vec<TaskStatus>,
    pub agent: Option<AgentName>,
    /// Each of these labels, with this value, must be on the Task.
    pub labels: Labels,
}

impl TaskFilter {
    pub fn matches(&self, task: &Task) -> bool {
        self.matches_status(task.status)
            && self.agent.as_ref().is_none_or(|a| a == &task.spec.agent.name)
            && self.labels.iter().all(|(k, v)| task.spec.labels.get(k) == Some(v))
    }

    pub fn matches_status(&self, status: TaskStatus) -> bool {
        self.statuses.is_empty() || self.statuses.contains(&status)
    }

    /// Whether every Task the filter can match has ended (`Some(true)`),
    /// none has (`Some(false)`), or either may be listed (`None`). A store
    /// that keeps open and ended Tasks apart reads only the side it needs.
    pub fn ended(&self) -> Option<bool> {
        let first = self.statuses.first()?.is_terminal();
        self.statuses.iter().all(|s| s.is_terminal() == first).then_some(first)
    }
}

/// A page request: at most `page_size` items after the `page_token` an
/// earlier page returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// 0 means [`PageRequest::DEFAULT_PAGE_SIZE`]; more than
    /// [`PageRequest::MAX_PAGE_SIZE`] is cut to it.
    pub page_size: u32,
    pub page_token: Option<String>,
}

impl PageRequest {
    pub const DEFAULT_PAGE_SIZE: u32 = 100;
    pub const MAX_PAGE_SIZE: u32 = 1000;

    pub fn first(page_size: u32) -> PageRequest {
        PageRequest { page_size, page_token: None }
    }

    /// The page size to use.
    pub fn size(&self) -> usize {
        let size = match self.page_size {
            0 => Self::DEFAULT_PAGE_SIZE,
            n => n.min(Self::MAX_PAGE_SIZE),
        };
        size as usize
    }

    /// The Task the previous page ended with, from the page token.
    pub fn before(&self) -> Result<Option<TaskId>> {
        self.page_token.as_deref().map(decode_page_token).transpose()
    }
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// At most the page size. Fewer, even none, with a token set, when
    /// the call stopped at [`StoreConfig::max_tasks_examined_per_list`].
    pub items: Vec<T>,
    /// Set when more items may follow; pass it back to get them.
    pub next_page_token: Option<String>,
}

impl PageRequest {
    /// One page from `records`, a walk newest first that starts after the
    /// token's Task: `examine` reads a record into the id of its Task and
    /// the item, if the Task matches. Stops at a full page (its token
    /// names the last item) or after looking at `max_examined` records (its
    /// token names the last one looked at: the records before it either are
    /// in the page or did not match).
    pub fn collect<R, T>(
        &self,
        records: impl Iterator<Item = R>,
        max_examined: usize,
        mut examine: impl FnMut(R) -> Result<(TaskId, Option<T>)>,
    ) -> Result<Page<T>> {
        let size = self.size();
        let mut records = records.peekable();
        let mut items = Vec::new();
        let mut last_item = None;
        let mut examined = 0;
        let mut resume_before = None;
        while let Some(record) = records.next() {
            let (id, item) = examine(record)?;
            if let Some(item) = item {
                if items.len() == size {
                    resume_before = last_item;
                    break;
                }
                items.push(item);
                last_item = Some(id.clone());
            }
            examined += 1;
            if examined >= max_examined.max(1) && records.peek().is_some() {
                resume_before = Some(id);
                break;
            }
        }
        Ok(Page { items, next_page_token: resume_before.as_ref().map(encode_page_token) })
    }
}

/// Pages go from the newest Task to the oldest: a token names the last
/// Task its page looked at (the last one it holds, unless it stopped at its
/// examination limit), and the next page holds the Tasks created before it.
/// (Tokens of the oldest-first listing that came before began "after:";
/// they are refused, not misread.)
const PAGE_TOKEN_PREFIX: &str = "before:";

/// The opaque token for the page after `last`, which holds the Tasks
/// created before it. Tokens are stable: Tasks are never deleted and ids
/// sort in creation order, so the pages that follow a token neither repeat
/// nor skip a Task; Tasks created since the first page are not in them.
pub fn encode_page_token(last: &TaskId) -> String {
    format!("{PAGE_TOKEN_PREFIX}{last}")
}

fn decode_page_token(token: &str) -> Result<TaskId> {
    token
        .strip_prefix(PAGE_TOKEN_PREFIX)
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Error::invalid("page_token", "not a token this store issued"))
}

/// What a Run state change did. Returned by assign, start and finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunChange {
    /// The Run after the change.
    pub run: Run,
    /// The Task after the change.
    pub task: Task,
    pub previous_task_status: TaskStatus,
    /// The next attempt of the shard, when the Run failed and the retry
    /// policy allows another (PENDING, `not_before` = now + backoff).
    pub retry: Option<Run>,
    /// Other Runs of the Task that this change cancelled because the Task
    /// ended (a fan-out shard ran out of attempts). Those that were active
    /// carry the `worker_id` to send CancelRun to.
    pub cancelled_runs: Vec<Run>,
    /// The TaskEvents appended, in order.
    pub events: Vec<TaskEvent>,
}

impl RunChange {
    pub fn task_status_changed(&self) -> bool {
        self.task.status != self.previous_task_status
    }
}

/// What failing a Worker's Runs did ([`RunStore::fail_runs_of_worker`]).
/// Each Run is failed in a change of its own, so one that could not be
/// failed does not undo the others.
#[derive(Debug, Default)]
pub struct FailedRuns {
    /// One per Run failed, in the order they were failed.
    pub changes: Vec<RunChange>,
    /// The Runs that could not be failed, and why; each is as it was.
    pub errors: Vec<(RunId, Error)>,
}

/// What cancelling (or failing) a Task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOutcome {
    /// The Task, now CANCELLED (or FAILED).
    pub task: Task,
    /// The Runs that were ASSIGNED or RUNNING (now CANCELLED, with the
    /// `worker_id` and `lease` to put in CancelRun).
    pub active_runs: Vec<Run>,
    pub events: Vec<TaskEvent>,
}

/// What appending an output chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored as this TaskEvent.
    Appended(TaskEvent),
    /// A chunk with this (run, seq) was stored before; nothing changed.
    Duplicate,
}

/// A published agent build: its manifest and the signed envelope a Worker
/// verifies. The component's bytes are a blob: [`AgentStore::get_blob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAgent {
    pub manifest: AgentManifest,
    pub envelope: Vec<u8>,
}

/// Called once a change is applied, before it is durable; see
/// [`TaskStore::create_task_assigned`].
pub type OnApplied<'a> = Box<dyn FnOnce(&RunChange) + Send + 'a>;

/// Tasks, created together with their first Runs.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Stores a PENDING Task with its first PENDING Run for each fan-out
    /// shard and its first TaskEvent, in one atomic step.
    ///
    /// With an idempotency key that is already used: the same spec gets the
    /// stored Task back ([`CreateOutcome::Existing`]), another spec gets
    /// [`Error::IdempotencyConflict`].
    async fn create_task(&self, task: Task) -> Result<CreateOutcome<Task>>;

    /// Like [`TaskStore::create_task`], and hands the Task's single Run to
    /// `worker` (lease 1) in the same atomic step: placement at creation,
    /// which saves a durable write and a scheduling pass when a Worker is
    /// free. A fan-out Task is refused with [`Error::InvalidArgument`]. An
    /// idempotent repeat is [`CreateOutcome::Existing`] and assigns
    /// nothing; a new Task comes with its [`RunChange`].
    ///
    /// `on_applied` is called with that change as soon as it is applied —
    /// visible to reads, perhaps not yet durable — so that the assignment
    /// can be sent while the flush runs; the call itself answers once the
    /// change is durable. (Not called for a repeat or a refusal.)
    async fn create_task_assigned(
        &self,
        task: Task,
        worker: &WorkerId,
        on_applied: OnApplied<'_>,
    ) -> Result<CreateOutcome<(Task, Option<RunChange>)>>;

    async fn get_task(&self, id: &TaskId) -> Result<Task>;

    /// Tasks that match `filter`, newest first (ids sort in creation
    /// order). One call looks at no more than
    /// [`StoreConfig::max_tasks_examined_per_list`] Tasks, so a page may be
    /// short, or empty, and still have a `next_page_token`.
    async fn list_tasks(&self, filter: &TaskFilter, page: &PageRequest) -> Result<Page<Task>>;

    /// Cancels the Task and every Run of it that has not ended. A terminal
    /// Task is refused with [`Error::FailedPrecondition`].
    async fn cancel_task(&self, id: &TaskId, reason: &str, now: Timestamp) -> Result<CancelOutcome>;

    /// Fails the Task with `reason` although no Run failed (no Worker
    /// started it in time); its Runs that have not ended are cancelled and
    /// no retry follows. A terminal Task is refused with
    /// [`Error::FailedPrecondition`].
    async fn fail_task(&self, id: &TaskId, reason: &str, now: Timestamp) -> Result<CancelOutcome>;
}

/// Runs: assignment with a compare-and-set on the lease, and every report a
/// Worker makes echoing that lease.
#[async_trait]
pub trait RunStore: Send + Sync {
    async fn get_run(&self, id: &RunId) -> Result<Run>;

    /// The Task's Runs by shard, then attempt.
    async fn list_runs(&self, task: &TaskId) -> Result<Vec<Run>>;

    /// Up to `limit` PENDING Runs whose `not_before` has come, higher Task
    /// priority first, then the longest due first (a first attempt is due
    /// from its Task's creation, a retry from the end of its backoff), then
    /// by id.
    async fn pending_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>>;

    /// Up to `limit` PENDING Runs whose schedule-to-start deadline
    /// ([`logic::start_deadline`]) is at or before `now`, earliest first —
    /// wherever they are in the queue.
    async fn overdue_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>>;

    /// The ASSIGNED and RUNNING Runs of `worker`.
    async fn active_runs_of_worker(&self, worker: &WorkerId) -> Result<Vec<Run>>;

    /// Hands a PENDING Run to `worker` if it still holds `expected_lease`,
    /// taking the next lease; otherwise [`Error::LeaseConflict`].
    async fn assign_run(&self, id: &RunId, worker: &WorkerId, expected_lease: u64, now: Timestamp)
    -> Result<RunChange>;

    /// The Worker holding `lease` started the Run.
    async fn start_run(&self, id: &RunId, lease: u64, now: Timestamp) -> Result<RunChange>;

    /// Ends the Run, in one atomic step with everything that follows:
    /// the Task's new status, the retry Run, the Task's result or error,
    /// the TaskEvents. A stale lease is refused and changes nothing.
    async fn finish_run(&self, id: &RunId, lease: u64, outcome: RunOutcome, now: Timestamp) -> Result<RunChange> {
        self.finish_run_with_output(id, lease, Vec::new(), outcome, now).await
    }

    /// Stores the Run's last output chunks and ends it, in one atomic step:
    /// what [`EventStore::append_output`] would do with each `(seq, data)`
    /// in turn (a chunk stored before is skipped; from the chunk that
    /// passes the cap on, nothing is stored), then [`RunStore::finish_run`].
    /// The output events come first in [`RunChange::events`]. A stale lease
    /// is refused and changes nothing, output included.
    async fn finish_run_with_output(
        &self,
        id: &RunId,
        lease: u64,
        output: Vec<(u64, String)>,
        outcome: RunOutcome,
        now: Timestamp,
    ) -> Result<RunChange>;

    /// The Worker is lost: each of its active Runs gets a new lease (so the
    /// Worker is fenced off) and fails with `reason`, exactly as a failed
    /// finish would (retry, Task status, events).
    ///
    /// Each Run changes in a step of its own: a Run that cannot be failed
    /// is reported in [`FailedRuns::errors`] and stays as it was, and the
    /// Runs failed before and after it stay failed ([`FailedRuns::changes`],
    /// which the caller must publish). An `Err` means the Worker's Runs
    /// could not be listed, and nothing changed.
    async fn fail_runs_of_worker(&self, worker: &WorkerId, reason: &str, now: Timestamp) -> Result<FailedRuns>;

    /// [`RunStore::fail_runs_of_worker`] for only those of `runs` that are
    /// still active and held by `worker` (the others are skipped: they
    /// ended, or moved on, since the caller looked). Used when a Worker
    /// reconnects without some Runs the store says it holds.
    async fn fail_runs(&self, worker: &WorkerId, runs: &[RunId], reason: &str, now: Timestamp) -> Result<FailedRuns>;
}

/// The TaskEvent log: status changes and output, per Task, numbered from 1.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends an output chunk of a Run as the Task's next TaskEvent.
    ///
    /// `seq` numbers the Run's chunks from 1; a (run, seq) stored before is
    /// [`AppendOutcome::Duplicate`], and so is an empty chunk (nothing is
    /// stored for it). The Run must be active and `lease` must
    /// be its lease. Output is bounded per Run
    /// (`min(StoreConfig::max_output_bytes_per_run, limits.output_limit_bytes)`):
    /// the chunk that would pass the cap is refused with
    /// [`Error::OutputLimit`], and so is every later chunk of that Run, so
    /// the stored output is always a gap-free prefix of what was produced.
    /// Chunks may arrive out of order, but the seqs stored must not leave
    /// more than [`logic::SeqSet::MAX_RANGES`] separate runs of seqs: a
    /// chunk that would is refused with [`Error::InvalidArgument`].
    async fn append_output(
        &self,
        run: &RunId,
        lease: u64,
        seq: u64,
        data: String,
        now: Timestamp,
    ) -> Result<AppendOutcome>;

    /// Up to `limit` (0 = 1000) TaskEvents with `seq > after_seq`, in order.
    async fn events_since(&self, task: &TaskId, after_seq: u64, limit: usize) -> Result<Vec<TaskEvent>>;
}

#[async_trait]
pub trait WorkerStore: Send + Sync {
    /// Stores the Worker, replacing what was stored under its id.
    async fn upsert_worker(&self, worker: Worker) -> Result<()>;

    async fn get_worker(&self, id: &WorkerId) -> Result<Worker>;

    /// Every Worker, by id.
    async fn list_workers(&self) -> Result<Vec<Worker>>;

    async fn set_worker_state(&self, id: &WorkerId, state: WorkerState) -> Result<Worker>;
}

/// Published agents, content-addressed by the SHA-256 of the component.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Stores a build. The component must hash to `manifest.digest` and be
    /// `manifest.size` bytes. Publishing the same build twice is
    /// [`CreateOutcome::Existing`]; the same name and version with another
    /// digest is [`Error::AgentVersionConflict`].
    async fn put_agent(
        &self,
        manifest: AgentManifest,
        envelope: Vec<u8>,
        component: Vec<u8>,
    ) -> Result<CreateOutcome<StoredAgent>>;

    /// `version` None = the highest version published.
    async fn get_agent(&self, name: &AgentName, version: Option<AgentVersion>) -> Result<StoredAgent>;

    async fn get_agent_by_digest(&self, digest: &AgentDigest) -> Result<StoredAgent>;

    /// Every build, by name, then version.
    async fn list_agents(&self) -> Result<Vec<AgentManifest>>;

    /// The component's bytes.
    async fn get_blob(&self, digest: &AgentDigest) -> Result<Vec<u8>>;
}

/// Everything the control plane stores. Use it as `Arc<dyn Store>`.
pub trait Store: TaskStore + RunStore + EventStore + WorkerStore + AgentStore + fmt::Debug {}

impl<T> Store for T where T: TaskStore + RunStore + EventStore + WorkerStore + AgentStore + fmt::Debug {}
