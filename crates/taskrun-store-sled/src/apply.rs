//! The write path: prepared changes, applied in batches by one thread.
//!
//! A caller prepares a change to one Task on its own thread: it takes a
//! snapshot of the Task's aggregate from memory (with its version), runs the
//! shared state-change logic on a copy and encodes the records to write.
//! Then it submits the prepared change ([`Install`]). One applier thread
//! takes every change queued and applies them in ONE sled transaction —
//! sled's transactions cost a fixed ~100 µs each, so they must be shared.
//! For each change it checks that the Task is still at the version the
//! change was prepared from; if not, the change is not applied and the
//! caller prepares it again from a fresh snapshot (optimistic concurrency).
//! After the transaction committed, the applier updates the in-memory state
//! and hands the whole batch to the committer, which answers every caller
//! once its change is flushed.
//!
//! In memory ([`Memory`]): the aggregates of Tasks that have not ended (a
//! bounded cache: a Task that is not there is read from sled), the run→task
//! map of those Tasks, and the scheduling indexes. Only the applier changes
//! a cached aggregate, and only to what it just committed; versions come
//! from one counter that never repeats, so a snapshot taken before an
//! eviction can never pass for one taken after a reload.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use sled::Transactional;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use taskrun_core::{RunId, Task, TaskId};
use taskrun_store::logic::TaskAggregate;
use taskrun_store::{Error, Result};
use tokio::sync::oneshot;

use crate::commit::CommitHandle;
use crate::index::{self, Indexes};
use crate::records::{self, TaskHead, TaskState};
use crate::trees::Trees;

/// Most changes in one transaction.
const MAX_BATCH: usize = 1024;
/// Most Task aggregates kept in memory.
pub(crate) const CACHE_CAP: usize = 100_000;

/// A cached aggregate and the version it has.
#[derive(Debug)]
struct Cached {
    agg: Arc<TaskAggregate>,
    version: u64,
}

/// What the store keeps in memory; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    pub indexes: Indexes,
    tasks: HashMap<TaskId, Cached>,
    runs: HashMap<RunId, TaskId>,
    next_version: u64,
}

impl Memory {
    pub(crate) fn snapshot(&self, task: &TaskId) -> Option<(Arc<TaskAggregate>, u64)> {
        self.tasks.get(task).map(|c| (c.agg.clone(), c.version))
    }

    /// Aggregates cached.
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    pub(crate) fn task_of_run(&self, run: &RunId) -> Option<TaskId> {
        self.runs.get(run).cloned()
    }

    /// Caches `agg`, read from sled, under a new version. Only call it when
    /// the Task is not cached, and with what sled holds now.
    pub(crate) fn load(&mut self, agg: TaskAggregate) -> (Arc<TaskAggregate>, u64) {
        let agg = Arc::new(agg);
        let version = self.put(agg.clone());
        (agg, version)
    }

    fn put(&mut self, agg: Arc<TaskAggregate>) -> u64 {
        self.next_version += 1;
        for record in &agg.runs {
            self.runs.insert(record.run.id.clone(), agg.task.id.clone());
        }
        self.tasks.insert(agg.task.id.clone(), Cached { agg, version: self.next_version });
        self.next_version
    }

    fn forget(&mut self, task: &TaskId) {
        if let Some(cached) = self.tasks.remove(task) {
            for record in &cached.agg.runs {
                self.runs.remove(&record.run.id);
            }
        }
    }

    /// After a commit: the Task is now `agg`. Ended Tasks leave the cache.
    fn install(&mut self, agg: &Arc<TaskAggregate>) {
        if agg.task.status.is_terminal() {
            self.forget(&agg.task.id);
        } else {
            self.put(agg.clone());
        }
    }

    /// Keeps the cache under its cap, sparing the Tasks just changed.
    fn trim(&mut self, spare: &HashSet<TaskId>) {
        if self.tasks.len() <= CACHE_CAP {
            return;
        }
        let excess = self.tasks.len() - CACHE_CAP;
        let victims: Vec<TaskId> = self.tasks.keys().filter(|id| !spare.contains(*id)).take(excess).cloned().collect();
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
    pub state: Vec<u8>,
    /// A new Task's `tasks` record.
    pub head: Option<Vec<u8>>,
    /// The events record: (key, value).
    pub events: Option<(Vec<u8>, Vec<u8>)>,
    /// Runs the change created (for `run_task`).
    pub new_runs: Vec<RunId>,
    /// An output chunk's (run, seq) key.
    pub output_key: Option<Vec<u8>>,
    pub changes: Vec<index::Change>,
}

/// What became of an [`Install`].
#[derive(Debug)]
pub(crate) enum Installed {
    Done,
    /// The Task moved on since the snapshot: prepare again.
    Conflict,
    /// A new Task's idempotency key names this stored Task.
    Existing(Task),
}

struct Job {
    install: Install,
    outcome: RefCell<Option<Result<Installed>>>,
    reply: oneshot::Sender<Result<Installed>>,
}

/// Reads inside a batch's transaction.
struct BatchTx<'a> {
    heads: &'a TransactionalTree,
    states: &'a TransactionalTree,
    run_task: &'a TransactionalTree,
    events: &'a TransactionalTree,
    idempotency: &'a TransactionalTree,
    output: &'a TransactionalTree,
    open: &'a TransactionalTree,
}

enum Fail {
    Op(Error),
    Storage(UnabortableTransactionError),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Op(e)
    }
}

impl From<UnabortableTransactionError> for Fail {
    fn from(e: UnabortableTransactionError) -> Fail {
        Fail::Storage(e)
    }
}

impl BatchTx<'_> {
    fn get<T: serde::de::DeserializeOwned>(
        tree: &TransactionalTree,
        what: &'static str,
        key: &[u8],
    ) -> std::result::Result<Option<T>, Fail> {
        match tree.get(key)? {
            Some(bytes) => Ok(Some(records::decode(what, key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn task(&self, id: &TaskId) -> std::result::Result<Task, Fail> {
        let key = id.as_str().as_bytes();
        let head: TaskHead = Self::get(self.heads, "task", key)?
            .ok_or_else(|| Error::corrupt("idempotency", id.as_str(), "names no task"))?;
        let state: TaskState = Self::get(self.states, "task_state", key)?
            .ok_or_else(|| Error::corrupt("task_state", id.as_str(), "missing"))?;
        Ok(records::join(head, state).task)
    }
}

impl Job {
    fn run(
        &self,
        tx: &BatchTx<'_>,
        changed: &mut HashSet<TaskId>,
        memory: &Mutex<Memory>,
    ) -> std::result::Result<(), UnabortableTransactionError> {
        let outcome = match self.apply(tx, changed, memory) {
            Ok(installed) => Ok(installed),
            Err(Fail::Op(e)) => Err(e),
            Err(Fail::Storage(e)) => return Err(e),
        };
        *self.outcome.borrow_mut() = Some(outcome);
        Ok(())
    }

    fn apply(
        &self,
        tx: &BatchTx<'_>,
        changed: &mut HashSet<TaskId>,
        memory: &Mutex<Memory>,
    ) -> std::result::Result<Installed, Fail> {
        let i = &self.install;
        let key = i.task.as_str().as_bytes();
        match i.expected {
            Some(expected) => {
                if changed.contains(&i.task) {
                    return Ok(Installed::Conflict);
                }
                let current = lock(memory).tasks.get(&i.task).map(|c| c.version);
                if current != Some(expected) {
                    return Ok(Installed::Conflict);
                }
            }
            None => {
                if let Some(k) = &i.agg.task.spec.idempotency_key
                    && let Some(existing) = tx.idempotency.get(k.as_bytes())?
                {
                    let id: TaskId = records::id_from("idempotency", &existing)?;
                    return Ok(Installed::Existing(tx.task(&id)?));
                }
                if tx.heads.get(key)?.is_some() || changed.contains(&i.task) {
                    return Err(Error::AlreadyExists { kind: "task", id: i.task.to_string() }.into());
                }
            }
        }
        if let Some(head) = &i.head {
            tx.heads.insert(key, head.as_slice())?;
            tx.open.insert(key, &[] as &[u8])?;
            if let Some(k) = &i.agg.task.spec.idempotency_key {
                tx.idempotency.insert(k.as_bytes(), key)?;
            }
        }
        tx.states.insert(key, i.state.as_slice())?;
        if let Some((k, v)) = &i.events {
            tx.events.insert(k.as_slice(), v.as_slice())?;
        }
        for run in &i.new_runs {
            tx.run_task.insert(run.as_str().as_bytes(), key)?;
        }
        if let Some(k) = &i.output_key {
            tx.output.insert(k.as_slice(), &[] as &[u8])?;
        }
        if i.agg.task.status.is_terminal() {
            tx.open.remove(key)?;
        }
        changed.insert(i.task.clone());
        Ok(Installed::Done)
    }

    /// After the batch committed: memory follows what was written.
    fn commit(&self, memory: &mut Memory) {
        if let Some(Ok(Installed::Done)) = &*self.outcome.borrow() {
            memory.install(&self.install.agg);
            for change in &self.install.changes {
                memory.indexes.apply(change);
            }
        }
    }

    fn deliver(self, flushed: std::result::Result<(), &str>) {
        let reply = match (flushed, self.outcome.into_inner()) {
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
    jobs: Vec<Job>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    memory: Arc<Mutex<Memory>>,
    committer: CommitHandle,
    batches: AtomicU64,
    jobs: AtomicU64,
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
            .field("jobs", &self.shared.jobs)
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
            jobs: AtomicU64::new(0),
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
        let (reply, rx) = oneshot::channel();
        {
            let mut queue = self.shared.lock();
            if queue.shutdown {
                return Err(Error::storage("store is closed"));
            }
            queue.jobs.push(Job { install, outcome: RefCell::new(None), reply });
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| Error::storage("store closed before the change was applied"))?
    }

    /// (transactions, changes) so far.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (self.shared.batches.load(Ordering::Relaxed), self.shared.jobs.load(Ordering::Relaxed))
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
        let jobs: Vec<Job> = {
            let mut queue = shared.lock();
            while queue.jobs.is_empty() && !queue.shutdown {
                queue = shared.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
            }
            if queue.jobs.is_empty() {
                return;
            }
            let n = queue.jobs.len().min(MAX_BATCH);
            queue.jobs.drain(..n).collect()
        };
        let changed = RefCell::new(HashSet::new());
        let result = (&t.tasks, &t.task_state, &t.run_task, &t.events, &t.idempotency, &t.output, &t.open_tasks)
            .transaction(|(heads, states, run_task, events, idempotency, output, open)| {
                let tx = BatchTx { heads, states, run_task, events, idempotency, output, open };
                // sled may run this again after a conflict: start afresh.
                let mut changed = changed.borrow_mut();
                changed.clear();
                for job in &jobs {
                    job.run(&tx, &mut changed, &shared.memory)?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            });
        shared.batches.fetch_add(1, Ordering::Relaxed);
        shared.jobs.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                {
                    let mut memory = lock(&shared.memory);
                    for job in &jobs {
                        job.commit(&mut memory);
                    }
                    memory.trim(&changed.borrow());
                }
                shared.committer.after_flush(
                    jobs.len() as u64,
                    Box::new(move |flushed| {
                        for job in jobs {
                            job.deliver(flushed);
                        }
                    }),
                );
            }
            Err(e) => {
                let error = match e {
                    sled::transaction::TransactionError::Storage(e) => e.to_string(),
                    sled::transaction::TransactionError::Abort(()) => "batch aborted".to_owned(),
                };
                tracing::error!(error = %error, jobs = jobs.len(), "sled transaction failed");
                for job in jobs {
                    job.deliver(Err(&error));
                }
            }
        }
    }
}
