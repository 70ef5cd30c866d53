//! The write path: prepared changes, applied in batches by one thread.
//!
//! A caller prepares a change to one Task on its own thread: it takes a
//! snapshot of the Task's aggregate from memory (with its version), runs the
//! shared state-change logic on a copy and encodes the records to write.
//! Then it submits the prepared change ([`Install`]). One applier thread
//! takes every change queued and writes them with ONE atomic `apply_batch`
//! on the `tasks` tree — sled's atomic batches cost a fixed ~100 µs each, so
//! they must be shared. (A multi-tree sled transaction would cost more: each
//! of its writes first reads the key, and its commit reads them all again.)
//! For each change it checks that the Task is still at the version the
//! change was prepared from; if not, the change is not applied and the
//! caller prepares it again from a fresh snapshot (optimistic concurrency).
//! After the batch is written, the applier updates the in-memory state
//! and hands the whole batch to the committer, which answers every caller
//! once its change is flushed. Once a flush has failed, the applier
//! applies nothing more: each caller gets the storage error, and neither
//! memory nor sled changes (see [`crate::commit`]).
//!
//! In memory ([`Memory`]): the aggregates of Tasks that have not ended (a
//! bounded cache: a Task that is not there is read from sled) and the
//! scheduling indexes. Only the applier changes
//! a cached aggregate, and only to what it just committed; versions come
//! from one counter that never repeats, so a snapshot taken before an
//! eviction can never pass for one taken after a reload.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use taskrun_core::{Task, TaskEvent, TaskEventKind, TaskId};
use taskrun_store::index::{self, Indexes};
use taskrun_store::logic::TaskAggregate;
use taskrun_store::{Error, Result};
use tokio::sync::oneshot;

use crate::commit::CommitHandle;
use crate::records;
use crate::trees::{Trees, storage};

/// Most changes in one batch.
const MAX_BATCH: usize = 1024;

/// How much of the open Tasks memory keeps: at most `tasks` aggregates,
/// weighing at most `bytes` in all (see [`weight`]). A Task left out is
/// read from sled when it is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheLimits {
    pub tasks: usize,
    pub bytes: usize,
}

impl Default for CacheLimits {
    /// 100,000 Tasks or 256 MiB: Tasks of up to 1 MiB of input each would
    /// otherwise let a backlog of PENDING ones hold 100 GiB.
    fn default() -> Self {
        CacheLimits { tasks: 100_000, bytes: 256 << 20 }
    }
}

/// Roughly what a cached Task holds: its input, its Runs' results and
/// errors, its events tail, and a fixed part for the rest.
fn weight(agg: &TaskAggregate, tail: &[TaskEvent]) -> usize {
    const FIXED: usize = 512;
    const PER_RUN: usize = 256;
    const PER_EVENT: usize = 96;
    let runs: usize = agg
        .runs
        .iter()
        .map(|r| {
            PER_RUN
                + r.run.result.as_ref().map_or(0, |j| j.as_str().len())
                + r.run.error.as_ref().map_or(0, String::len)
        })
        .sum();
    let events: usize = tail
        .iter()
        .map(|e| {
            PER_EVENT
                + match &e.kind {
                    TaskEventKind::Output(chunk) => chunk.data.len(),
                    TaskEventKind::Status { message, .. } => message.as_ref().map_or(0, String::len),
                }
        })
        .sum();
    FIXED + agg.task.spec.input.as_str().len() + runs + events
}

/// A Task as memory holds it: its aggregate (with every result), its
/// events tail (as in its state record), whether that state record holds
/// results inline ([`records::Loaded::results_inline`]) and the version
/// they have.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub agg: Arc<TaskAggregate>,
    pub tail: Arc<Vec<TaskEvent>>,
    pub results_inline: bool,
    pub version: u64,
}

/// What the store keeps in memory; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    pub indexes: Indexes,
    tasks: HashMap<TaskId, Snapshot>,
    next_version: u64,
    /// What the cached Tasks weigh ([`weight`]).
    bytes: usize,
    pub limits: CacheLimits,
}

impl Memory {
    pub(crate) fn snapshot(&self, task: &TaskId) -> Option<Snapshot> {
        self.tasks.get(task).cloned()
    }

    /// Aggregates cached, and what they weigh.
    pub(crate) fn usage(&self) -> (usize, usize) {
        (self.tasks.len(), self.bytes)
    }

    /// Whether `loaded` can be cached without passing the limits.
    pub(crate) fn has_room_for(&self, loaded: &records::Loaded) -> bool {
        let weight = weight(&loaded.agg, &loaded.tail);
        self.tasks.len() < self.limits.tasks
            && !self.too_heavy(weight)
            && self.bytes.saturating_add(weight) <= self.limits.bytes
    }

    /// Caches a Task read from sled, every result read, under a new
    /// version. Only call it when the Task is not cached, and with what
    /// sled holds now.
    pub(crate) fn load(&mut self, loaded: records::Loaded) -> Snapshot {
        self.put(Arc::new(loaded.agg), Arc::new(loaded.tail), loaded.results_inline)
    }

    fn put(&mut self, agg: Arc<TaskAggregate>, tail: Arc<Vec<TaskEvent>>, results_inline: bool) -> Snapshot {
        self.next_version += 1;
        self.bytes += weight(&agg, &tail);
        let snapshot = Snapshot { agg, tail, results_inline, version: self.next_version };
        if let Some(old) = self.tasks.insert(snapshot.agg.task.id.clone(), snapshot.clone()) {
            self.bytes -= weight(&old.agg, &old.tail);
        }
        snapshot
    }

    fn forget(&mut self, task: &TaskId) {
        if let Some(old) = self.tasks.remove(task) {
            self.bytes -= weight(&old.agg, &old.tail);
        }
    }

    /// After a commit: the Task is now `agg` with `tail`, its state record
    /// without results. Ended Tasks leave the cache, and so do heavy ones.
    fn install(&mut self, agg: &Arc<TaskAggregate>, tail: &Arc<Vec<TaskEvent>>) {
        if agg.task.status.is_terminal() || self.too_heavy(weight(agg, tail)) {
            self.forget(&agg.task.id);
        } else {
            self.put(agg.clone(), tail.clone(), false);
        }
    }

    /// After a call that read the Task and changed nothing: if memory
    /// would not keep it (ended, or too heavy), it leaves again. (It was
    /// cached to be changed; only a change that is applied leaves the cache
    /// by [`Memory::install`].)
    pub(crate) fn release(&mut self, task: &TaskId) {
        let unkept = self
            .tasks
            .get(task)
            .is_some_and(|s| s.agg.task.status.is_terminal() || self.too_heavy(weight(&s.agg, &s.tail)));
        if unkept {
            self.forget(task);
        }
    }

    /// Whether a Task of `weight` is too heavy to keep: over an eighth of
    /// the byte limit, it would push out many others (and one over the
    /// whole limit, every other). It is read from sled when a change needs it.
    fn too_heavy(&self, weight: usize) -> bool {
        weight > self.limits.bytes / 8
    }

    /// Whether the cache holds more than its limits allow.
    pub(crate) fn over_limits(&self) -> bool {
        self.tasks.len() > self.limits.tasks || self.bytes > self.limits.bytes
    }

    /// Keeps the cache within its limits, sparing the Tasks in `spare`.
    pub(crate) fn trim(&mut self, spare: &HashSet<TaskId>) {
        let limits = self.limits;
        let (mut tasks, mut bytes) = self.usage();
        if !self.over_limits() {
            return;
        }
        let mut victims = Vec::new();
        for (id, snapshot) in &self.tasks {
            if tasks <= limits.tasks && bytes <= limits.bytes {
                break;
            }
            if spare.contains(id) {
                continue;
            }
            tasks -= 1;
            bytes -= weight(&snapshot.agg, &snapshot.tail);
            victims.push(id.clone());
        }
        for id in victims {
            self.forget(&id);
        }
    }
}

/// A change to one Task, prepared by its caller: the records to write.
pub(crate) struct Install {
    pub task: TaskId,
    /// The version the change was prepared from; None for a new Task.
    pub expected: Option<u64>,
    /// The aggregate after the change.
    pub agg: Arc<TaskAggregate>,
    /// The events tail after the change (in `state`).
    pub tail: Arc<Vec<TaskEvent>>,
    pub state: Vec<u8>,
    /// Result records, (key, value): one per Run the change completed (and,
    /// once, one per COMPLETED Run of a state record that held results
    /// inline).
    pub results: Vec<(Vec<u8>, Vec<u8>)>,
    /// A new Task's head record.
    pub head: Option<Vec<u8>>,
    /// An events record, if the tail was moved into one: (key, value).
    pub events: Option<(Vec<u8>, Vec<u8>)>,
    pub changes: Vec<index::Change>,
}

/// What became of an [`Install`].
#[derive(Debug)]
pub(crate) enum Installed {
    Done,
    /// The Task moved on since the snapshot: prepare again.
    Conflict,
    /// A new Task's idempotency key names this stored Task.
    Existing(Box<Task>),
}

struct Submission {
    install: Install,
    outcome: Option<Result<Installed>>,
    reply: oneshot::Sender<Result<Installed>>,
    /// Told once the change is applied (readable, not yet durable).
    applied: Option<oneshot::Sender<()>>,
}

/// What the submissions of one batch have written so far.
#[derive(Default)]
struct Batch {
    writes: sled::Batch,
    /// Tasks changed or created in this batch.
    changed: HashSet<TaskId>,
    /// Idempotency keys taken in this batch, and by which new Task.
    keys: HashMap<String, Task>,
}

fn read_task(tasks: &sled::Tree, id: &TaskId) -> Result<Task> {
    match records::load_task(tasks, id)? {
        Some(mut loaded) => {
            loaded.read_results(tasks, |_| false)?;
            Ok(loaded.agg.task)
        }
        None => Err(Error::corrupt("task", id.as_str(), "missing")),
    }
}

impl Submission {
    /// Checks the change and adds its writes to the batch. `tasks` holds
    /// what earlier batches wrote; only this thread writes task records.
    fn apply(&self, tasks: &sled::Tree, batch: &mut Batch, versions: &HashMap<TaskId, u64>) -> Result<Installed> {
        let i = &self.install;
        match i.expected {
            Some(expected) => {
                if batch.changed.contains(&i.task) || versions.get(&i.task) != Some(&expected) {
                    return Ok(Installed::Conflict);
                }
            }
            None => {
                if let Some(k) = &i.agg.task.spec.idempotency_key {
                    if let Some(task) = batch.keys.get(k) {
                        return Ok(Installed::Existing(Box::new(task.clone())));
                    }
                    if let Some(existing) = tasks.get(records::idempotency_key(k)).map_err(storage)? {
                        let id: TaskId = records::id_from("idempotency", &existing)?;
                        return Ok(Installed::Existing(Box::new(read_task(tasks, &id)?)));
                    }
                }
                if batch.changed.contains(&i.task) || tasks.contains_key(records::head_key(&i.task)).map_err(storage)? {
                    return Err(Error::AlreadyExists { kind: "task", id: i.task.to_string() });
                }
            }
        }
        let w = &mut batch.writes;
        if let Some(head) = &i.head {
            w.insert(records::head_key(&i.task), head.as_slice());
            if let Some(k) = &i.agg.task.spec.idempotency_key {
                w.insert(records::idempotency_key(k), i.task.as_str().as_bytes());
                batch.keys.insert(k.clone(), i.agg.task.clone());
            }
        }
        let open = !i.agg.task.status.is_terminal();
        w.insert(records::state_key(&i.task, open), i.state.as_slice());
        if !open {
            w.remove(records::state_key(&i.task, true));
        }
        if let Some((k, v)) = &i.events {
            w.insert(k.as_slice(), v.as_slice());
        }
        for (k, v) in &i.results {
            w.insert(k.as_slice(), v.as_slice());
        }
        batch.changed.insert(i.task.clone());
        Ok(Installed::Done)
    }

    /// After the batch committed: memory follows what was written.
    fn commit(&mut self, memory: &mut Memory) {
        if let Some(Ok(Installed::Done)) = &self.outcome {
            memory.install(&self.install.agg, &self.install.tail);
            for change in &self.install.changes {
                memory.indexes.apply(change);
            }
            if let Some(applied) = self.applied.take() {
                let _ = applied.send(());
            }
        }
    }

    fn deliver(self, flushed: std::result::Result<(), &str>) {
        let reply = match (flushed, self.outcome) {
            (Err(e), _) => Err(Error::storage(e.to_owned())),
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(Error::storage("change was not applied")),
        };
        // The caller may have gone away (its future was dropped); the change
        // stands all the same.
        let _ = self.reply.send(reply);
    }
}

fn lock(memory: &Mutex<Memory>) -> MutexGuard<'_, Memory> {
    memory.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Queue {
    submissions: Vec<Submission>,
    shutdown: bool,
    /// The applier waits for the queue to fill: a submission must wake it.
    /// Otherwise it takes the queue when its batch is done, and a wake-up
    /// (a futex syscall per submission) would be wasted.
    idle: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    memory: Arc<Mutex<Memory>>,
    committer: CommitHandle,
    batches: AtomicU64,
    submissions: AtomicU64,
    /// Tests: the next batch fails, as a failing disk would fail it.
    #[cfg(test)]
    fail_next_batch: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The applier thread and its queue.
pub(crate) struct Applier {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("batches", &self.shared.batches)
            .field("submissions", &self.shared.submissions)
            .finish_non_exhaustive()
    }
}

impl Applier {
    pub(crate) fn start(trees: Trees, memory: Arc<Mutex<Memory>>, committer: CommitHandle) -> Result<Applier> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            memory,
            committer,
            batches: AtomicU64::new(0),
            submissions: AtomicU64::new(0),
            #[cfg(test)]
            fail_next_batch: std::sync::atomic::AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("taskrun-store-apply".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, &trees)
            })
            .map_err(|e| Error::Storage(Box::new(e)))?;
        Ok(Applier { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Applies `install` in the next batch; answers once it is flushed.
    pub(crate) async fn submit(&self, install: Install) -> Result<Installed> {
        let rx = self.enqueue(install, None)?;
        rx.await.map_err(|_| Error::storage("store closed before the change was applied"))?
    }

    /// Queues `install` for the next batch now; the receiver answers once
    /// it is flushed. `applied`, if given, is told as soon as the change is
    /// applied — readable, not yet on disk — and dropped untold if it was
    /// not (a conflict, a repeat or an error).
    pub(crate) fn enqueue(
        &self,
        install: Install,
        applied: Option<oneshot::Sender<()>>,
    ) -> Result<oneshot::Receiver<Result<Installed>>> {
        let (reply, rx) = oneshot::channel();
        let wake = {
            let mut queue = self.shared.lock();
            if queue.shutdown {
                return Err(Error::storage("store is closed"));
            }
            queue.submissions.push(Submission { install, outcome: None, reply, applied });
            std::mem::take(&mut queue.idle)
        };
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(rx)
    }

    /// (batches, changes) so far.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (self.shared.batches.load(Ordering::Relaxed), self.shared.submissions.load(Ordering::Relaxed))
    }

    /// Tests: makes the next batch fail.
    #[cfg(test)]
    pub(crate) fn fail_next_batch(&self) {
        self.shared.fail_next_batch.store(true, Ordering::SeqCst);
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, t: &Trees) {
    loop {
        let mut submissions: Vec<Submission> = {
            let mut queue = shared.lock();
            while queue.submissions.is_empty() && !queue.shutdown {
                queue.idle = true;
                queue = shared.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
            }
            queue.idle = false;
            if queue.submissions.is_empty() {
                return;
            }
            let n = queue.submissions.len().min(MAX_BATCH);
            queue.submissions.drain(..n).collect()
        };
        // Nothing is acknowledged after a failed flush, so nothing is
        // applied: a call that returns an error has changed nothing.
        if let Some(error) = shared.committer.failed() {
            let error = format!("the store takes no more changes: {error}");
            for submission in submissions {
                submission.deliver(Err(&error));
            }
            continue;
        }
        // The cached versions the changes were prepared against. Only this
        // thread changes a cached Task's version, so they hold until the
        // batch is written; a Task cached meanwhile just makes its change
        // conflict.
        let versions: HashMap<TaskId, u64> = {
            let memory = lock(&shared.memory);
            submissions
                .iter()
                .filter(|j| j.install.expected.is_some())
                .filter_map(|j| {
                    let task = &j.install.task;
                    memory.tasks.get(task).map(|s| (task.clone(), s.version))
                })
                .collect()
        };
        let mut batch = Batch::default();
        for submission in &mut submissions {
            submission.outcome = Some(submission.apply(&t.tasks, &mut batch, &versions));
        }
        let changed = batch.changed;
        #[cfg(test)]
        let result = if shared.fail_next_batch.swap(false, Ordering::SeqCst) {
            Err(sled::Error::Unsupported("injected batch failure".into()))
        } else {
            t.tasks.apply_batch(batch.writes)
        };
        #[cfg(not(test))]
        let result = t.tasks.apply_batch(batch.writes);
        shared.batches.fetch_add(1, Ordering::Relaxed);
        shared.submissions.fetch_add(submissions.len() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                {
                    let mut memory = lock(&shared.memory);
                    for submission in &mut submissions {
                        submission.commit(&mut memory);
                    }
                    if memory.over_limits() {
                        // Spare the Tasks whose changes wait for the next
                        // batch too: evicted, each would conflict there and
                        // be prepared again from sled.
                        let mut spare = changed;
                        spare.extend(shared.lock().submissions.iter().map(|s| s.install.task.clone()));
                        memory.trim(&spare);
                    }
                }
                shared.committer.after_flush(
                    submissions.len() as u64,
                    Box::new(move |flushed| {
                        for submission in submissions {
                            submission.deliver(flushed);
                        }
                    }),
                );
            }
            Err(e) => {
                let error = format!("writing a batch failed: {e}");
                tracing::error!(
                    error = %error,
                    submissions = submissions.len(),
                    "the store takes no more changes"
                );
                // sled may hold part of the batch in memory (its log
                // recovers a batch whole or not at all): nothing more may
                // be applied on top of that, as after a failed flush.
                shared.committer.stop_changes(&error);
                for submission in submissions {
                    submission.deliver(Err(&error));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use taskrun_core::{
        AgentRef, Json, RunOutcome, RunStatus, Task, TaskId, TaskSpec, TaskStatus, Timestamp, WorkerId,
    };
    use taskrun_store::{Error, EventStore, RunStore, StoreConfig, TaskStore, WorkerStore};

    use super::CacheLimits;
    use crate::{SledStore, records};

    const T0: Timestamp = Timestamp(1_700_000_000_000);

    fn task() -> Task {
        let spec = TaskSpec::new(AgentRef::latest("echo".parse().unwrap()), Json::parse("input", "{}").unwrap());
        Task::new(TaskId::generate(), spec, T0, usize::MAX).unwrap()
    }

    /// Once a flush has failed, a call that returns an error has changed
    /// nothing: not the Run in memory, not the indexes, not sled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_failed_flush_nothing_is_applied() {
        let store = SledStore::temporary(StoreConfig::default()).unwrap();
        let worker: WorkerId = "worker-1".parse().unwrap();
        let created = store.create_task(task()).await.unwrap().into_inner();
        let run = store.list_runs(&created.id).await.unwrap().remove(0);
        let stored = records::load_task(&store.trees.tasks, &created.id).unwrap();

        store.committer.fail_flushes();
        // The change whose flush fails: applied before the failure was
        // known, so its outcome is unknown; the caller gets the error.
        let err = store.create_task(task()).await.unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err}");

        // From now on every change is refused before it is applied.
        let err = store.assign_run(&run.id, &worker, run.lease, T0).await.unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err}");
        assert!(err.to_string().contains("injected flush failure"), "{err}");
        assert_eq!(store.get_run(&run.id).await.unwrap().status, RunStatus::Pending);
        assert!(store.active_runs_of_worker(&worker).await.unwrap().is_empty());
        assert!(store.pending_runs(T0, 10).await.unwrap().iter().any(|r| r.id == run.id));
        assert_eq!(records::load_task(&store.trees.tasks, &created.id).unwrap(), stored);
        let err = store.create_task(task()).await.unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err}");
        // Nor a Worker's record.
        let stored = store.get_worker(&worker).await;
        let info = taskrun_core::WorkerInfo {
            id: worker.clone(),
            agents: Default::default(),
            digests: Default::default(),
            model_backends: Vec::new(),
            labels: Default::default(),
            slots: 1,
            version: "0.1.0".into(),
        };
        let record =
            taskrun_core::Worker { info, state: taskrun_core::WorkerState::Connected, first_seen: T0, last_seen: T0 };
        let err = store.upsert_worker(record).await.unwrap_err();
        assert!(err.to_string().contains("takes no more changes"), "{err}");
        assert_eq!(store.get_worker(&worker).await.map_err(|e| e.to_string()), stored.map_err(|e| e.to_string()));
    }

    /// A batch that could not be written may be half in sled's memory:
    /// its callers get the error, and from then on the store takes no
    /// change, so nothing builds on the half. What was applied before it
    /// is flushed and stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_failed_batch_nothing_is_applied() {
        let store = SledStore::temporary(StoreConfig::default()).unwrap();
        let worker: WorkerId = "worker-1".parse().unwrap();
        let created = store.create_task(task()).await.unwrap().into_inner();
        let run = store.list_runs(&created.id).await.unwrap().remove(0);

        store.applier.fail_next_batch();
        let err = store.assign_run(&run.id, &worker, run.lease, T0).await.unwrap_err();
        assert!(err.to_string().contains("writing a batch failed: "), "{err}");
        assert!(err.to_string().contains("injected batch failure"), "{err}");
        // Before, the next batch was written on top of it.
        let err = store.create_task(task()).await.unwrap_err();
        assert!(err.to_string().contains("the store takes no more changes: writing a batch failed"), "{err}");
        let err = store.cancel_task(&created.id, "x", T0).await.unwrap_err();
        assert!(err.to_string().contains("takes no more changes"), "{err}");
        assert_eq!(store.get_run(&run.id).await.unwrap().status, RunStatus::Pending);
        assert_eq!(store.get_task(&created.id).await.unwrap(), created);
        let all = store.list_tasks(&Default::default(), &Default::default()).await.unwrap();
        assert_eq!(all.items, vec![created]);
    }

    /// A refusal rests on what is on disk. Here the change it rests on was
    /// applied and its flush failed (a crash would have taken it back): a
    /// resent report that memory would call a repeat gets the storage
    /// error, not a refusal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusal_waits_until_what_it_rests_on_is_durable() {
        let store = SledStore::temporary(StoreConfig::default()).unwrap();
        let worker: WorkerId = "worker-1".parse().unwrap();
        let created = store.create_task(task()).await.unwrap().into_inner();
        let run = store.list_runs(&created.id).await.unwrap().remove(0);
        let lease = store.assign_run(&run.id, &worker, 0, T0).await.unwrap().run.lease;
        store.committer.fail_flushes();
        let done = || RunOutcome::Completed { result: Json::parse("result", "1").unwrap() };
        let err = store.finish_run(&run.id, lease, done(), T0).await.unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err}");
        let err = store.finish_run(&run.id, lease, done(), T0).await.unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "the resend: {err}");
        let err = store.cancel_task(&created.id, "too late", T0).await.unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "a cancel: {err}");
        // Nor are the events of a change that is not on disk handed out.
        let err = store.events_since(&created.id, 0, 100).await.unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "events: {err}");
    }

    /// Open Tasks with large inputs: memory keeps what fits in its byte
    /// limit, however few Tasks that is, keeps none heavier than an eighth
    /// of it, and every Task left out still works, read from sled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_stays_within_its_byte_limit() {
        const INPUT: usize = 64 << 10;
        let store = SledStore::temporary(StoreConfig::default()).unwrap();
        let limits = CacheLimits { tasks: 1000, bytes: 12 * INPUT };
        store.memory().limits = limits;
        let create = |i: usize, size: usize| {
            let digits = i.to_string();
            let input = Json::parse("input", format!("\"{}{digits}\"", "0".repeat(size - 2 - digits.len()))).unwrap();
            let spec = TaskSpec::new(AgentRef::latest("echo".parse().unwrap()), input);
            store.create_task(Task::new(TaskId::generate(), spec, T0, usize::MAX).unwrap())
        };
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(create(i, INPUT).await.unwrap().into_inner().id);
            let (tasks, bytes) = store.memory().usage();
            assert!(bytes <= limits.bytes, "{tasks} Tasks weigh {bytes} bytes");
        }
        let (tasks, _) = store.memory().usage();
        assert!((1..12).contains(&tasks), "{tasks} Tasks cached");
        // Twice the size: over an eighth of the limit, so not kept.
        let heavy = create(20, 2 * INPUT).await.unwrap().into_inner().id;
        assert!(store.memory().snapshot(&heavy).is_none());
        assert_eq!(store.get_task(&heavy).await.unwrap().spec.input.as_str().len(), 2 * INPUT);
        let run = store.list_runs(&heavy).await.unwrap().remove(0);
        store.cancel_task(&heavy, "too heavy to keep, not to run", T0).await.unwrap();
        assert_eq!(store.get_run(&run.id).await.unwrap().status, RunStatus::Cancelled);

        // Every Task, cached or not, is whole and can be scheduled and run.
        assert_eq!(store.pending_runs(T0, 100).await.unwrap().len(), 20);
        let worker: WorkerId = "worker-1".parse().unwrap();
        for (i, id) in ids.iter().enumerate() {
            let task = store.get_task(id).await.unwrap();
            assert_eq!(task.spec.input.as_str().len(), INPUT);
            assert!(task.spec.input.as_str().ends_with(&format!("{i}\"")));
            let run = store.list_runs(id).await.unwrap().remove(0);
            let lease = store.assign_run(&run.id, &worker, 0, T0).await.unwrap().run.lease;
            let result = Json::parse("result", i.to_string()).unwrap();
            store.finish_run(&run.id, lease, RunOutcome::Completed { result }, T0).await.unwrap();
            assert_eq!(store.get_task(id).await.unwrap().status, TaskStatus::Completed);
            assert!(store.memory().usage().1 <= limits.bytes);
        }
        // Ended Tasks leave the cache.
        assert_eq!(store.memory().usage(), (0, 0));
        // And stay out of it when a call reads one and changes nothing: a
        // cancel of an ended Task, a report under a stale lease.
        store.cancel_task(&ids[0], "too late", T0).await.unwrap_err();
        let run = store.list_runs(&heavy).await.unwrap().remove(0);
        store.start_run(&run.id, run.lease + 7, T0).await.unwrap_err();
        assert_eq!(store.memory().usage(), (0, 0));
    }
}
