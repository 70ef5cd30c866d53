//! The durable TaskRun store, on sled.
//!
//! One sled `Db`, records encoded with postcard. Everything about Tasks is
//! in the `tasks` tree, the first byte of a key saying what the record is,
//! so that a batch of changes is one atomic `apply_batch`:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `tasks` | `h` task id | the Task's id, spec, creation time: written once |
//! | `tasks` | `p` task id | a Task that has not ended: status, error, event counter, every Run ([`RunRecord`](taskrun_store::logic::RunRecord), with the seqs of its stored output, without its result) and the latest TaskEvents (the tail) |
//! | `tasks` | `s` task id | the same, once the Task ended (the change that ends a Task moves the record) |
//! | `tasks` | `r` task id, 0, shard, attempt (u32 BE) | a COMPLETED Run's result, written once by the change that completes it; a COMPLETED Task's result is its shard 0's |
//! | `tasks` | `e` task id, 0, first seq (u64 BE) | TaskEvents moved out of the tail, in order |
//! | `tasks` | `i` idempotency key | task id |
//! | `workers` | worker id | [`Worker`] |
//! | `agents` | name, 0, major, minor, patch (u32 BE) | [`AgentManifest`] |
//! | `agent_digests` | digest (32 bytes) | `agents` key |
//! | `blobs` | digest | component bytes |
//! | `envelopes` | digest | signed envelope bytes |
//!
//! The layout keeps a change to one write, the Task's state record (the
//! Task's Runs and latest events live in it; when the Task ends the record
//! moves from `p` to `s`, one more write), plus an events record each time
//! the events in the state record pass 2 KiB, plus a result record for
//! each Run the change completes. Results stay out of the state record, so
//! a change to a fan-out Task never rewrites the results of its other
//! Runs; loading a Task reads them back from their records (state records
//! written before result records existed hold them inline, and those are
//! kept; the Task's next change moves them out). The change that ends a
//! Task is the exception: its `s` record is never written again, so the
//! results of the Runs that change completed stay inline in it. A Task
//! with little output is two writes when it is created and two when it
//! ends. A Run's id names its
//! Task ([`RunId::task_id`]), so no index maps one to the other. The
//! scheduling indexes (PENDING Runs by priority, active Runs by Worker) are
//! kept in memory and rebuilt at open from the `p` records (the open
//! Tasks), with their aggregates.
//!
//! Writes (see `apply.rs`): a caller prepares its change from an in-memory
//! snapshot of the Task; one applier thread checks that the Task did not
//! move on and writes every queued change in ONE atomic batch (sled's
//! atomic writes cost a fixed ~100 µs each, so they must be shared); then a
//! committer thread flushes, and every change that arrived meanwhile shares
//! that flush (group commit). A call returns only after its change is
//! flushed: an acknowledged change survives kill -9. Reads see written
//! changes, possibly before they are flushed. Workers and agents change
//! rarely: they use plain sled transactions and the same flushes.
//!
//! A record that does not decode is [`Error::Corrupt`], never a panic.

mod apply;
mod catalog;
mod commit;
mod records;
mod trees;

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use taskrun_core::{
    AgentDigest, AgentManifest, AgentName, AgentVersion, Run, RunId, RunOutcome, RunStatus, Task, TaskEvent, TaskId,
    Timestamp, Worker, WorkerId, WorkerState,
};
use taskrun_store::index;
use taskrun_store::logic::{self, OutputStep, TaskAggregate, Touched, TouchedRun};
use taskrun_store::{
    AgentStore, AppendOutcome, CancelOutcome, CreateOutcome, Error, EventStore, FailedRuns, OnApplied, Page,
    PageRequest, Result, RunChange, RunStore, StoreConfig, StoredAgent, TaskFilter, TaskStore, WorkerStore,
};

use crate::apply::{Applier, Install, Installed, Memory, Snapshot};
use crate::catalog::Catalog;
use crate::records::{TaskHead, decode, encode, event_key, id_from};
use crate::trees::{Trees, storage};

/// How often a change is prepared again when other changes to its Task keep
/// winning, before the store gives up.
const MAX_ATTEMPTS: usize = 1000;

/// How much the store grouped so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// sled transactions run by the applier.
    pub transactions: u64,
    /// Changes they carried.
    pub changes: u64,
    /// Flushes to disk.
    pub flushes: u64,
    /// Writes acknowledged after a flush.
    pub acknowledged: u64,
}

/// The sled store. Share it as `Arc<dyn Store>`.
#[derive(Debug)]
pub struct SledStore {
    config: StoreConfig,
    trees: Trees,
    memory: Arc<Mutex<Memory>>,
    catalog: RwLock<Catalog>,
    // Dropped in this order: the applier finishes its queue, then the
    // committer flushes one last time.
    applier: Applier,
    committer: commit::Committer,
}

/// How sled is set up: tuned for write throughput, and without sled's own
/// periodic flush — the committer flushes before any write is acknowledged,
/// so a background flush would only compete with it.
fn sled_config() -> sled::Config {
    sled::Config::new().mode(sled::Mode::HighThroughput).flush_every_ms(None)
}

/// Opens sled in directory `path`. sled locks the directory; a store that
/// closed a moment ago in this process may still hold the lock while sled's
/// IO threads wind down, so a held lock is retried for up to two seconds.
fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled_config().path(path).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => return opened,
        }
    }
}

/// The sled database in a store's directory, opened as the store opens it,
/// for tests that read or damage its records directly. Not for anything
/// else: the store's records are its own.
#[doc(hidden)]
pub fn open_raw(path: impl AsRef<Path>) -> sled::Result<sled::Db> {
    open_db(path.as_ref())
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// sled locks the directory. A store that closed a moment ago in this
    /// process may still hold the lock while sled's IO threads wind down,
    /// so a held lock is retried for up to two seconds.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<SledStore> {
        SledStore::with_db(open_db(path.as_ref()).map_err(storage)?, config)
    }

    /// A store in a temporary directory that is removed when it closes.
    pub fn temporary(config: StoreConfig) -> Result<SledStore> {
        let db = sled_config().temporary(true).open().map_err(storage)?;
        SledStore::with_db(db, config)
    }

    fn with_db(db: sled::Db, config: StoreConfig) -> Result<SledStore> {
        let trees = Trees::open(&db)?;
        let memory = Arc::new(Mutex::new(load_open_tasks(&trees)?));
        let catalog = RwLock::new(Catalog::load(&trees)?);
        let committer = commit::Committer::start(db)?;
        let applier = Applier::start(trees.clone(), memory.clone(), committer.handle())?;
        Ok(SledStore { config, trees, memory, catalog, applier, committer })
    }

    pub fn commit_stats(&self) -> CommitStats {
        let (transactions, changes) = self.applier.stats();
        let (flushes, acknowledged) = self.committer.stats();
        CommitStats { transactions, changes, flushes, acknowledged }
    }

    fn catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn catalog_mut(&self) -> RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        match tree.get(key).map_err(storage)? {
            Some(bytes) => Ok(Some(decode(what, key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The Task as sled holds it, its results not read yet.
    fn stored(&self, id: &TaskId) -> Result<records::Loaded> {
        records::load_task(&self.trees.tasks, id)?.ok_or_else(|| Error::not_found("task", id))
    }

    /// The Task's aggregate, from memory if it is there (with every
    /// result). Read from sled otherwise, with only the results of the
    /// Runs `wanted` names, and the Task's own: the caller reads nothing
    /// else of it.
    fn aggregate(&self, id: &TaskId, wanted: impl Fn(&Run) -> bool) -> Result<Arc<TaskAggregate>> {
        if let Some(snapshot) = self.memory().snapshot(id) {
            return Ok(snapshot.agg);
        }
        let mut loaded = self.stored(id)?;
        loaded.read_results(&self.trees.tasks, wanted)?;
        Ok(Arc::new(loaded.agg))
    }

    /// The Task as memory holds it, cached if it was not.
    fn snapshot(&self, id: &TaskId) -> Result<Snapshot> {
        let mut memory = self.memory();
        if let Some(snapshot) = memory.snapshot(id) {
            return Ok(snapshot);
        }
        // Read while holding the lock: the applier changes only cached
        // Tasks, so what sled holds now is the Task's latest state.
        let mut loaded = self.stored(id)?;
        loaded.read_results(&self.trees.tasks, |_| true)?;
        Ok(memory.load(loaded))
    }

    fn task_of_run(&self, run: &RunId) -> Result<TaskId> {
        run.task_id().ok_or_else(|| Error::not_found("run", run))
    }

    /// The Runs an index named that are still PENDING (one may have been
    /// assigned since the index was read).
    fn still_pending(&self, ids: Vec<RunId>) -> Result<Vec<Run>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let run = self.load_run(&id)?;
            if run.status == RunStatus::Pending {
                out.push(run);
            }
        }
        Ok(out)
    }

    fn load_run(&self, id: &RunId) -> Result<Run> {
        let task = self.task_of_run(id)?;
        let agg = self.aggregate(&task, |run| &run.id == id)?;
        // A Run id names its Task, shard and attempt: one that names an
        // attempt the Task never made is not found, not a broken record.
        Ok(agg.runs[agg.run_index(id)?].run.clone())
    }

    /// Refuses a write once a flush has failed, as the applier does for
    /// Tasks: a call that returns an error must have changed nothing, and
    /// nothing written now could be acknowledged.
    fn writable(&self) -> Result<()> {
        match self.committer.handle().failed() {
            None => Ok(()),
            Some(error) => Err(Error::storage(format!("the store takes no more changes: {error}"))),
        }
    }

    /// `refused`, once what it rests on is on disk: the state it was
    /// refused against may be a change applied but not flushed yet, and a
    /// refusal must not outlive a crash that takes that change back (a
    /// Worker told its resent report is a duplicate stops resending it).
    async fn once_durable(&self, task: &TaskId, refused: Error) -> Error {
        self.memory().release(task);
        match self.committer.durable().await {
            Ok(()) => refused,
            Err(flush) => flush,
        }
    }

    /// Applies `f` to the Task's aggregate: prepares the change from a
    /// snapshot, submits it, and prepares it again if the Task moved on
    /// meanwhile. Answers once the change is on disk.
    async fn change<R>(&self, task: &TaskId, f: impl Fn(&mut TaskAggregate) -> Result<(Touched, R)> + Send) -> Result<R>
    where
        R: Send,
    {
        for _ in 0..MAX_ATTEMPTS {
            let snapshot = self.snapshot(task)?;
            let mut agg = TaskAggregate::clone(&snapshot.agg);
            let (touched, value) = match f(&mut agg) {
                Ok(done) => done,
                Err(refused) => return Err(self.once_durable(task, refused).await),
            };
            if touched == Touched::default() {
                // Nothing to write; what the answer rests on is on disk
                // once the next flush is.
                self.memory().release(task);
                self.committer.durable().await?;
                return Ok(value);
            }
            match self.applier.submit(prepare(agg, &snapshot, &touched)?).await? {
                Installed::Done => return Ok(value),
                Installed::Conflict => continue,
                Installed::Existing(_) => {
                    return Err(Error::storage("a change was taken for a new task"));
                }
            }
        }
        Err(Error::storage(format!("task {task}: gave up after {MAX_ATTEMPTS} conflicting changes")))
    }
}

/// The records a change to a Task, prepared from `snapshot`, writes.
fn prepare(agg: TaskAggregate, snapshot: &Snapshot, touched: &Touched) -> Result<Install> {
    prepare_from(agg, &snapshot.tail, snapshot.results_inline, touched, Some(snapshot.version))
}

/// The records a new Task writes.
fn prepare_new(agg: TaskAggregate, touched: &Touched) -> Result<Install> {
    prepare_from(agg, &[], false, touched, None)
}

/// The records a change to a Task writes, when its events tail was `tail`
/// and its state record held results inline or not.
fn prepare_from(
    mut agg: TaskAggregate,
    tail: &[TaskEvent],
    results_inline: bool,
    touched: &Touched,
    expected: Option<u64>,
) -> Result<Install> {
    let id = agg.task.id.clone();
    let mut tail = tail.to_vec();
    tail.extend(touched.events.iter().cloned());
    let mut events = None;
    if let Some(first) = tail.first() {
        let key = event_key(&id, first.seq);
        let value = encode("event", &key, &tail)?;
        if value.len() > records::TAIL_BYTES {
            events = Some((key, value));
            tail.clear();
        }
    }
    let completed_now = |i: usize| {
        agg.runs[i].run.status == RunStatus::Completed
            && touched
                .runs
                .iter()
                .any(|t| t.index == i && t.before.as_ref().is_none_or(|b| b.status != RunStatus::Completed))
    };
    // The change that ends the Task writes its last state record: the Runs
    // it completed keep their results inline there, in no record of their
    // own (see records::TaskState).
    let ends = agg.task.status.is_terminal();
    let inline: Vec<bool> = (0..agg.runs.len()).map(|i| ends && completed_now(i)).collect();
    // The results of the other Runs this change completed; and once, when
    // the state record held results inline, every result, moved out of it.
    let mut results = Vec::new();
    for (i, record) in agg.runs.iter().enumerate() {
        if record.run.status == RunStatus::Completed && !inline[i] && (completed_now(i) || results_inline) {
            results.extend(records::encode_result(&record.run)?);
        }
    }
    let state = records::encode_state(&mut agg, &tail, |i| inline[i])?;
    let head = match expected {
        None => Some(records::encode_head(&agg.task)?),
        Some(_) => None,
    };
    let changes = index::changes(&agg, touched);
    Ok(Install { task: id, expected, agg: Arc::new(agg), tail: Arc::new(tail), state, results, head, events, changes })
}

/// What memory holds at open: the Tasks that have not ended (within the
/// cache's limits) and the scheduling indexes of their Runs. A Task whose
/// records do not decode is left out (and logged): its Runs are not
/// scheduled, and every call about it answers [`Error::Corrupt`].
fn load_open_tasks(trees: &Trees) -> Result<Memory> {
    let mut memory = Memory::default();
    for entry in trees.tasks.scan_prefix([records::OPEN]) {
        let (key, state) = entry.map_err(storage)?;
        let load = || -> Result<records::Loaded> {
            let id: TaskId = id_from("task_state", &key[1..])?;
            let head_key = records::head_key(&id);
            let head = trees
                .tasks
                .get(&head_key)
                .map_err(storage)?
                .ok_or_else(|| Error::corrupt("task", id.as_str(), "missing"))?;
            let mut loaded = records::join(decode("task", &head_key, &head)?, records::decode_state(&key, &state)?)?;
            loaded.read_results(&trees.tasks, |_| true)?;
            Ok(loaded)
        };
        match load() {
            Ok(loaded) => {
                for record in &loaded.agg.runs {
                    memory.indexes.insert(&index::Entry::of(&record.run, &loaded.agg.task));
                }
                if memory.has_room_for(&loaded) {
                    memory.load(loaded);
                }
            }
            Err(e @ Error::Corrupt { .. }) => {
                tracing::error!(error = %e, "open task left out of scheduling");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(memory)
}

// ---------------------------------------------------------------- helpers

type Abort = ConflictableTransactionError<Error>;

fn abort(e: Error) -> Abort {
    ConflictableTransactionError::Abort(e)
}

fn tx_error(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => storage(e),
    }
}

fn tx_get<T: serde::de::DeserializeOwned>(
    tree: &TransactionalTree,
    what: &'static str,
    key: &[u8],
) -> std::result::Result<Option<T>, Abort> {
    match tree.get(key)? {
        Some(bytes) => decode(what, key, &bytes).map(Some).map_err(abort),
        None => Ok(None),
    }
}

// ---------------------------------------------------------------- traits

#[async_trait]
impl TaskStore for SledStore {
    async fn create_task(&self, task: Task) -> Result<CreateOutcome<Task>> {
        let (agg, touched) = TaskAggregate::create(task)?;
        let install = prepare_new(agg, &touched)?;
        let task = install.agg.task.clone();
        // A repeat is answered after the flush too: the Task it found may
        // not have been on disk yet.
        match self.applier.submit(install).await? {
            Installed::Done => Ok(CreateOutcome::Created(task)),
            Installed::Existing(existing) => logic::idempotent_repeat(*existing, &task),
            Installed::Conflict => Err(Error::storage("a new task met a conflict")),
        }
    }

    async fn create_task_assigned(
        &self,
        task: Task,
        worker: &WorkerId,
        on_applied: OnApplied<'_>,
    ) -> Result<CreateOutcome<(Task, Option<RunChange>)>> {
        let (agg, touched, change) = TaskAggregate::create_assigned(task, worker)?;
        let install = prepare_new(agg, &touched)?;
        let task = install.agg.task.clone();
        let (applied_tx, applied_rx) = tokio::sync::oneshot::channel();
        let durable = self.applier.enqueue(install, Some(applied_tx))?;
        // Told before the flush, and only if the change was applied.
        if applied_rx.await.is_ok() {
            on_applied(&change);
        }
        let installed = durable.await.map_err(|_| Error::storage("store closed before the change was applied"))??;
        match installed {
            Installed::Done => Ok(CreateOutcome::Created((change.task.clone(), Some(change)))),
            Installed::Existing(existing) => Ok(logic::idempotent_repeat(*existing, &task)?.map(|t| (t, None))),
            Installed::Conflict => Err(Error::storage("a new task met a conflict")),
        }
    }

    async fn get_task(&self, id: &TaskId) -> Result<Task> {
        Ok(self.aggregate(id, |_| false)?.task.clone())
    }

    async fn list_tasks(&self, filter: &TaskFilter, page: &PageRequest) -> Result<Page<Task>> {
        // The walk reads up to `max_tasks_examined_per_list` records, more
        // than a runtime thread should wait for.
        let (tasks, filter, page) = (self.trees.tasks.clone(), filter.clone(), page.clone());
        let limit = self.config.max_tasks_examined_per_list;
        tokio::task::spawn_blocking(move || list(&tasks, &filter, &page, limit))
            .await
            .map_err(|e| Error::storage(format!("listing Tasks: {e}")))?
    }

    async fn cancel_task(&self, id: &TaskId, reason: &str, now: Timestamp) -> Result<CancelOutcome> {
        self.change(id, |agg| agg.cancel(reason, now)).await
    }

    async fn fail_task(&self, id: &TaskId, reason: &str, now: Timestamp) -> Result<CancelOutcome> {
        self.change(id, |agg| agg.fail(reason, now)).await
    }
}

#[async_trait]
impl RunStore for SledStore {
    async fn get_run(&self, id: &RunId) -> Result<Run> {
        self.load_run(id)
    }

    async fn list_runs(&self, task: &TaskId) -> Result<Vec<Run>> {
        let mut runs: Vec<Run> = self.aggregate(task, |_| true)?.runs.iter().map(|r| r.run.clone()).collect();
        runs.sort_by_key(|r| (r.shard, r.attempt));
        Ok(runs)
    }

    async fn pending_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        let ids = self.memory().indexes.pending(now, limit);
        self.still_pending(ids)
    }

    async fn overdue_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        let ids = self.memory().indexes.overdue(now, limit);
        self.still_pending(ids)
    }

    async fn active_runs_of_worker(&self, worker: &WorkerId) -> Result<Vec<Run>> {
        let ids = self.memory().indexes.of_worker(worker);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let run = self.load_run(&id)?;
            if run.status.is_active() && run.worker_id.as_ref() == Some(worker) {
                out.push(run);
            }
        }
        Ok(out)
    }

    async fn assign_run(
        &self,
        id: &RunId,
        worker: &WorkerId,
        expected_lease: u64,
        now: Timestamp,
    ) -> Result<RunChange> {
        let task = self.task_of_run(id)?;
        self.change(&task, |agg| agg.assign(id, worker, expected_lease, now)).await
    }

    async fn start_run(&self, id: &RunId, lease: u64, now: Timestamp) -> Result<RunChange> {
        let task = self.task_of_run(id)?;
        self.change(&task, |agg| agg.start(id, lease, now)).await
    }

    async fn finish_run_with_output(
        &self,
        id: &RunId,
        lease: u64,
        output: Vec<(u64, String)>,
        outcome: RunOutcome,
        now: Timestamp,
    ) -> Result<RunChange> {
        let task = self.task_of_run(id)?;
        self.change(&task, |agg| agg.finish_with_output(id, lease, output.clone(), &self.config, outcome.clone(), now))
            .await
    }

    async fn fail_runs_of_worker(&self, worker: &WorkerId, reason: &str, now: Timestamp) -> Result<FailedRuns> {
        let lost = self.memory().indexes.of_worker(worker);
        self.fail_runs(worker, &lost, reason, now).await
    }

    async fn fail_runs(&self, worker: &WorkerId, runs: &[RunId], reason: &str, now: Timestamp) -> Result<FailedRuns> {
        let mut out = FailedRuns::default();
        for id in runs {
            let failed = async {
                let task = self.task_of_run(id)?;
                self.change(&task, |agg| {
                    Ok(match agg.fail_lost_run(id, worker, reason, now)? {
                        Some((touched, change)) => (touched, Some(change)),
                        None => (Touched::default(), None),
                    })
                })
                .await
            };
            match failed.await {
                Ok(change) => out.changes.extend(change),
                Err(e) => out.errors.push((id.clone(), e)),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl EventStore for SledStore {
    async fn append_output(
        &self,
        run: &RunId,
        lease: u64,
        seq: u64,
        data: String,
        now: Timestamp,
    ) -> Result<AppendOutcome> {
        let task = self.task_of_run(run)?;
        for _ in 0..MAX_ATTEMPTS {
            let snapshot = self.snapshot(&task)?;
            let mut agg = TaskAggregate::clone(&snapshot.agg);
            let i = agg.run_index(run)?;
            let before = agg.runs[i].run.clone();
            let step = match logic::append_output(
                &mut agg.meta,
                &mut agg.runs[i],
                lease,
                seq,
                data.clone(),
                &self.config,
                now,
            ) {
                Ok(step) => step,
                Err(refused) => return Err(self.once_durable(&task, refused).await),
            };
            let mut touched =
                Touched { task: false, runs: vec![TouchedRun { index: i, before: Some(before) }], events: Vec::new() };
            let (install, answer) = match step {
                OutputStep::Duplicate => {
                    self.memory().release(&task);
                    self.committer.durable().await?;
                    return Ok(AppendOutcome::Duplicate);
                }
                OutputStep::OverLimit { limit_bytes } => {
                    (prepare(agg, &snapshot, &touched)?, Err(Error::OutputLimit { run_id: run.clone(), limit_bytes }))
                }
                OutputStep::Append(event) => {
                    touched.events.push(event.clone());
                    (prepare(agg, &snapshot, &touched)?, Ok(AppendOutcome::Appended(event)))
                }
            };
            match self.applier.submit(install).await? {
                Installed::Done => return answer,
                Installed::Conflict => continue,
                Installed::Existing(_) => {
                    return Err(Error::storage("an output chunk was taken for a new task"));
                }
            }
        }
        Err(Error::storage(format!("task {task}: gave up after {MAX_ATTEMPTS} conflicting changes")))
    }

    async fn events_since(&self, task: &TaskId, after_seq: u64, limit: usize) -> Result<Vec<TaskEvent>> {
        let limit = if limit == 0 { 1000 } else { limit };
        // The tail first, then the events records before it. A change that
        // moves the tail into a record meanwhile writes that record at the
        // tail's first seq: it is left out, not read twice.
        let cached = self.memory().snapshot(task).map(|s| s.tail);
        let tail = match cached {
            Some(tail) => tail,
            None => Arc::new(self.stored(task)?.tail),
        };
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let records_end = match tail.first() {
            Some(e) => Bound::Excluded(event_key(task, e.seq)),
            None => Bound::Included(event_key(task, u64::MAX)),
        };
        let take = |key: &[u8], value: &[u8], out: &mut Vec<TaskEvent>| -> Result<bool> {
            let events: Vec<TaskEvent> = decode("event", key, value)?;
            for e in events {
                if e.seq > after_seq {
                    if out.len() == limit {
                        return Ok(false);
                    }
                    out.push(e);
                }
            }
            Ok(true)
        };
        if tail.first().is_none_or(|e| first < e.seq) {
            // The record holding `first` starts at or before it…
            let start = event_key(task, first);
            if let Some(entry) = self.trees.tasks.range(event_key(task, 0)..=start.clone()).next_back() {
                let (key, value) = entry.map_err(storage)?;
                take(&key, &value, &mut out)?;
            }
            // …and the records after it follow, up to the tail.
            for entry in self.trees.tasks.range((Bound::Excluded(start), records_end)) {
                let (key, value) = entry.map_err(storage)?;
                if !take(&key, &value, &mut out)? {
                    break;
                }
            }
        }
        let room = limit - out.len();
        out.extend(tail.iter().filter(|e| e.seq > after_seq).take(room).cloned());
        // The tail in memory may hold events applied but not flushed yet:
        // none is handed out before it is on disk, or a crash could take
        // it back and give its seq to another event, which a watcher
        // resuming after that seq would never see.
        if !out.is_empty() {
            self.committer.durable().await?;
        }
        Ok(out)
    }
}

#[async_trait]
impl WorkerStore for SledStore {
    async fn upsert_worker(&self, worker: Worker) -> Result<()> {
        self.writable()?;
        let key = worker.info.id.as_str().as_bytes();
        let bytes = encode("worker", key, &worker)?;
        self.trees.workers.insert(key, bytes).map_err(storage)?;
        self.committer.durable().await
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Worker> {
        self.get(&self.trees.workers, "worker", id.as_str().as_bytes())?.ok_or_else(|| Error::not_found("worker", id))
    }

    async fn list_workers(&self) -> Result<Vec<Worker>> {
        let mut out = Vec::new();
        for entry in self.trees.workers.iter() {
            let (key, value) = entry.map_err(storage)?;
            out.push(decode("worker", &key, &value)?);
        }
        Ok(out)
    }

    async fn set_worker_state(&self, id: &WorkerId, state: WorkerState) -> Result<Worker> {
        self.writable()?;
        let key = id.as_str().as_bytes();
        let worker = self
            .trees
            .workers
            .transaction(|workers| {
                let mut worker: Worker =
                    tx_get(workers, "worker", key)?.ok_or_else(|| abort(Error::not_found("worker", id)))?;
                worker.state = state;
                let bytes = encode("worker", key, &worker).map_err(abort)?;
                workers.insert(key, bytes)?;
                Ok(worker)
            })
            .map_err(tx_error)?;
        self.committer.durable().await?;
        Ok(worker)
    }
}

impl SledStore {
    fn stored_agent(&self, manifest: AgentManifest) -> Result<StoredAgent> {
        let envelope = self
            .trees
            .envelopes
            .get(manifest.digest.as_bytes())
            .map_err(storage)?
            .ok_or_else(|| Error::corrupt("envelope", manifest.digest.to_string(), "missing"))?;
        Ok(StoredAgent { manifest, envelope: envelope.to_vec() })
    }
}

#[async_trait]
impl AgentStore for SledStore {
    async fn put_agent(
        &self,
        manifest: AgentManifest,
        envelope: Vec<u8>,
        component: Vec<u8>,
    ) -> Result<CreateOutcome<StoredAgent>> {
        logic::check_component(&manifest, &component)?;
        self.writable()?;
        let key = records::agent_key(&manifest.name, manifest.version);
        let digest = manifest.digest.as_bytes().to_vec();
        let manifest_bytes = encode("agent", &key, &manifest)?;
        let t = &self.trees;
        let existing = (&t.agents, &t.agent_digests, &t.blobs, &t.envelopes)
            .transaction(|(agents, digests, blobs, envelopes)| {
                let by_version: Option<AgentManifest> = tx_get(agents, "agent", &key)?;
                let by_digest: Option<AgentManifest> = match digests.get(&digest)? {
                    Some(k) => tx_get(agents, "agent", &k)?,
                    None => None,
                };
                let repeat =
                    logic::decide_put_agent(&manifest, by_version.as_ref(), by_digest.as_ref()).map_err(abort)?;
                if let Some(stored) = repeat {
                    return Ok(Some(stored.clone()));
                }
                agents.insert(key.as_slice(), manifest_bytes.as_slice())?;
                digests.insert(digest.as_slice(), key.as_slice())?;
                blobs.insert(digest.as_slice(), component.as_slice())?;
                envelopes.insert(digest.as_slice(), envelope.as_slice())?;
                Ok(None)
            })
            .map_err(tx_error)?;
        self.committer.durable().await?;
        match existing {
            Some(stored) => {
                let stored = self.stored_agent(stored)?;
                // Also when an earlier publish of it wrote the records but
                // failed before it reached the catalog (its flush failed).
                self.catalog_mut().insert(stored.clone());
                Ok(CreateOutcome::Existing(stored))
            }
            None => {
                let stored = StoredAgent { manifest, envelope };
                self.catalog_mut().insert(stored.clone());
                Ok(CreateOutcome::Created(stored))
            }
        }
    }

    async fn get_agent(&self, name: &AgentName, version: Option<AgentVersion>) -> Result<StoredAgent> {
        self.catalog().get(name, version)?.cloned().ok_or_else(|| {
            Error::not_found(
                "agent",
                match version {
                    Some(v) => format!("{name}@{v}"),
                    None => name.to_string(),
                },
            )
        })
    }

    async fn get_agent_by_digest(&self, digest: &AgentDigest) -> Result<StoredAgent> {
        self.catalog().by_digest(digest).cloned().ok_or_else(|| Error::not_found("agent", digest))
    }

    async fn list_agents(&self) -> Result<Vec<AgentManifest>> {
        Ok(self.catalog().manifests())
    }

    async fn get_blob(&self, digest: &AgentDigest) -> Result<Vec<u8>> {
        self.trees
            .blobs
            .get(digest.as_bytes())
            .map_err(storage)?
            .map(|b| b.to_vec())
            .ok_or_else(|| Error::not_found("blob", digest))
    }
}

/// One page of `list_tasks`. It walks one kind of record, newest first: the
/// state records of the open Tasks or of the ended ones when the filter's
/// statuses are all on one side (so listing what runs now does not read
/// the history), else the heads.
fn list(tasks: &sled::Tree, filter: &TaskFilter, page: &PageRequest, limit: usize) -> Result<Page<Task>> {
    let tag = match filter.ended() {
        Some(false) => records::OPEN,
        Some(true) => records::STATE,
        None => records::HEAD,
    };
    let end = match page.before()? {
        Some(id) => Bound::Excluded(records::tagged(tag, id.as_str().as_bytes())),
        None => Bound::Excluded(vec![tag + 1]),
    };
    page.collect(tasks.range((Bound::Included(vec![tag]), end)).rev(), limit, |entry| {
        let (key, value) = entry.map_err(storage)?;
        let id: TaskId = id_from("task", &key[1..])?;
        let task = listed(tasks, tag, &id, &key, &value, filter)?;
        Ok((id, task))
    })
}

/// The Task `id` of `key` and `value`, a record with tag `tag` (a head or a
/// state record), if it matches `filter`. What the record holds is checked
/// before anything more is read.
fn listed(
    tasks: &sled::Tree,
    tag: u8,
    id: &TaskId,
    key: &[u8],
    value: &[u8],
    filter: &TaskFilter,
) -> Result<Option<Task>> {
    let head_matches = |head: &TaskHead| {
        filter.agent.as_ref().is_none_or(|a| a == &head.spec.agent.name)
            && filter.labels.iter().all(|(k, v)| head.spec.labels.get(k) == Some(v))
    };
    let mut loaded = if tag == records::HEAD {
        let head: TaskHead = decode("task", key, value)?;
        if !head_matches(&head) {
            return Ok(None);
        }
        records::with_state(tasks, head)?
    } else {
        let state = records::decode_state(key, value)?;
        if !filter.matches_status(state.status) {
            return Ok(None);
        }
        let head_key = records::head_key(id);
        let head =
            tasks.get(&head_key).map_err(storage)?.ok_or_else(|| Error::corrupt("task", id.as_str(), "missing"))?;
        let head: TaskHead = decode("task", &head_key, &head)?;
        if !head_matches(&head) {
            return Ok(None);
        }
        records::join(head, state)?
    };
    if !filter.matches(&loaded.agg.task) {
        return Ok(None);
    }
    loaded.read_results(tasks, |_| false)?;
    Ok(Some(loaded.agg.task))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use taskrun_store::conformance::{new_task, spec};

    use super::*;

    /// One Run that cannot be failed (its Task's cached aggregate is made
    /// inconsistent by hand: the Worker's index lists a Run its Task lacks) does not
    /// undo or hide the Runs failed around it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_that_cannot_be_failed_does_not_lose_the_others() {
        let store = SledStore::temporary(StoreConfig::default()).unwrap();
        let worker: WorkerId = "w".parse().unwrap();
        let now = Timestamp(1_000);
        let mut runs = Vec::new();
        for _ in 0..3 {
            let task = store.create_task(new_task(spec("echo"), now)).await.unwrap().into_inner();
            let run = store.list_runs(&task.id).await.unwrap().remove(0);
            store.assign_run(&run.id, &worker, 0, now).await.unwrap();
            runs.push(run.id);
        }
        runs.sort();
        let broken = runs[1].clone();
        {
            let mut memory = store.memory();
            let snapshot = memory.snapshot(&broken.task_id().unwrap()).unwrap();
            let mut agg = TaskAggregate::clone(&snapshot.agg);
            agg.runs.clear();
            memory.load(records::Loaded { agg, tail: snapshot.tail.to_vec(), results_inline: false });
        }

        let failed = store.fail_runs_of_worker(&worker, "lost", now).await.expect("the runs were listed");
        let mut changed: Vec<_> = failed.changes.iter().map(|c| c.run.id.clone()).collect();
        changed.sort();
        assert_eq!(changed, vec![runs[0].clone(), runs[2].clone()]);
        assert_eq!(failed.errors.len(), 1, "{failed:?}");
        assert_eq!(failed.errors[0].0, broken);
        for id in [&runs[0], &runs[2]] {
            assert_eq!(store.get_run(id).await.unwrap().status, RunStatus::Failed);
        }
        assert!(failed.errors[0].1.is_not_found(), "{}", failed.errors[0].1);
    }

    fn result_of(text: &str) -> taskrun_core::Json {
        taskrun_core::Json::parse("result", text).unwrap()
    }

    /// The bytes of the Task's state record, open or ended.
    fn state_record(store: &SledStore, id: &TaskId) -> Vec<u8> {
        for open in [true, false] {
            if let Some(bytes) = store.trees.tasks.get(records::state_key(id, open)).unwrap() {
                return bytes.to_vec();
            }
        }
        panic!("task {id} has no state record");
    }

    /// Every change to a Task rewrites its state record, but a Run's
    /// result is not in it: it is written once, in a record of its own, by
    /// the change that completes the Run. So what a change writes does not
    /// grow with the results of the Task's other Runs: two fan-out Tasks
    /// whose Runs report results of a few bytes and of 256 KiB have state
    /// records of the same size after every step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_records_do_not_grow_with_results() {
        let store = SledStore::temporary(StoreConfig::default()).unwrap();
        let worker: WorkerId = "w".parse().unwrap();
        let now = Timestamp(1_000);
        let mut s = spec("echo");
        s.fan_out = 8;
        let small = store.create_task(new_task(s.clone(), now)).await.unwrap().into_inner();
        let large = store.create_task(new_task(s, now)).await.unwrap().into_inner();
        let mut leases = std::collections::HashMap::new();
        for task in [&small, &large] {
            for run in store.list_runs(&task.id).await.unwrap() {
                leases.insert(run.id.clone(), store.assign_run(&run.id, &worker, 0, now).await.unwrap().run.lease);
            }
        }
        let mut last = 0;
        for shard in 0..8u32 {
            for (task, pad) in [(&small, 1), (&large, 256 << 10)] {
                let id = RunId::of(&task.id, shard, 1);
                let result = result_of(&format!("\"{}\"", "x".repeat(pad + shard as usize)));
                let outcome = RunOutcome::Completed { result: result.clone() };
                store.finish_run(&id, leases[&id], outcome, now).await.unwrap();
                let stored = store.trees.tasks.get(records::result_key(&task.id, shard, 1)).unwrap();
                if shard < 7 {
                    let stored = stored.expect("a result record");
                    assert_eq!(decode::<taskrun_core::Json>("run_result", b"", &stored).unwrap(), result);
                } else {
                    // The change that ends the Task keeps its Run's result
                    // inline in the ended Task's state record, written once.
                    assert!(stored.is_none(), "the last result has no record of its own");
                    last = result.len();
                }
            }
            let (a, b) = (state_record(&store, &small.id), state_record(&store, &large.id));
            if shard < 7 {
                assert_eq!(a.len(), b.len(), "state records after shard {shard} completed");
                assert!(b.len() < 8 << 10, "the state record holds a result: {} bytes", b.len());
            } else {
                // Only the last Run's result is in the ended record.
                assert!(b.len() < (8 << 10) + last, "{} bytes", b.len());
                assert!(b.len() > last, "{} bytes", b.len());
            }
        }
        let ended = store.get_task(&large.id).await.unwrap();
        assert_eq!(ended.status, taskrun_core::TaskStatus::Completed);
        assert_eq!(ended.result.map(|r| r.len()), Some((256 << 10) + 2));
        assert!(!store.trees.tasks.contains_key(records::state_key(&large.id, true)).unwrap());
    }

    /// A data dir written before results had records of their own holds
    /// them inline in the state record (whose shape is unchanged). It still
    /// opens with every result: an ended Task's, and an open Task's, whose
    /// next change moves them out to result records, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_records_with_results_inline_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let worker: WorkerId = "w".parse().unwrap();
        let now = Timestamp(1_000);
        let result = |shard: u32| result_of(&format!(r#"{{"shard":{shard}}}"#));
        // An aggregate as the shared logic leaves it: every Run assigned,
        // the shards in `completed` COMPLETED. And its events.
        let build = |fan_out: u32, completed: &[u32]| {
            let mut s = spec("echo");
            s.fan_out = fan_out;
            let (mut agg, touched) = TaskAggregate::create(new_task(s, now)).unwrap();
            let mut events = touched.events;
            for shard in 0..fan_out {
                let id = RunId::of(&agg.task.id, shard, 1);
                let (touched, change) = agg.assign(&id, &worker, 0, now).unwrap();
                events.extend(touched.events);
                if completed.contains(&shard) {
                    let outcome = RunOutcome::Completed { result: result(shard) };
                    events.extend(agg.finish(&id, change.run.lease, outcome, now).unwrap().0.events);
                }
            }
            (agg, events)
        };
        let (ended, ended_tail) = build(2, &[0, 1]);
        let (open, open_tail) = build(3, &[0]);
        assert_eq!(ended.task.result, Some(result(0)));
        assert!(!open.task.status.is_terminal());
        {
            // Written as the code before result records wrote them (and
            // before state records had a trailer: `TaskState` leaves it out).
            let store = SledStore::open(dir.path(), StoreConfig::default()).unwrap();
            let tasks = &store.trees.tasks;
            for (agg, tail) in [(&ended, &ended_tail), (&open, &open_tail)] {
                let state = records::TaskState {
                    status: agg.task.status,
                    updated_at: agg.task.updated_at,
                    result: agg.task.result.clone(),
                    error: agg.task.error.clone(),
                    meta: agg.meta.clone(),
                    runs: agg.runs.clone(),
                    tail: tail.clone(),
                    run_flags: Vec::new(),
                };
                let key = records::state_key(&agg.task.id, !agg.task.status.is_terminal());
                tasks.insert(records::head_key(&agg.task.id), records::encode_head(&agg.task).unwrap()).unwrap();
                tasks.insert(&key, encode("task_state", &key, &state).unwrap()).unwrap();
            }
            tasks.flush().unwrap();
        }

        let store = SledStore::open(dir.path(), StoreConfig::default()).unwrap();
        assert!(store.trees.tasks.scan_prefix([records::RESULT]).next().is_none(), "no result records yet");
        assert_eq!(store.get_task(&ended.task.id).await.unwrap(), ended.task);
        assert_eq!(store.get_task(&open.task.id).await.unwrap(), open.task);
        let listed = store.list_tasks(&TaskFilter::default(), &PageRequest::default()).await.unwrap().items;
        assert!(listed.contains(&ended.task), "{listed:?}");
        for agg in [&ended, &open] {
            let runs: Vec<Run> = agg.runs.iter().map(|r| r.run.clone()).collect();
            assert_eq!(store.list_runs(&agg.task.id).await.unwrap(), runs);
            for run in &runs {
                assert_eq!(store.get_run(&run.id).await.unwrap(), *run);
            }
        }

        // The open Task's next change (shard 1 completes) moves its inline
        // result (shard 0's) out with the new one.
        let shard = |n: u32| RunId::of(&open.task.id, n, 1);
        store.finish_run(&shard(1), 1, RunOutcome::Completed { result: result(1) }, now).await.unwrap();
        let key = records::state_key(&open.task.id, true);
        let state = records::decode_state(&key, &state_record(&store, &open.task.id)).unwrap();
        assert!(state.runs.iter().all(|r| r.run.result.is_none()), "{state:?}");
        for n in [0, 1] {
            assert!(store.trees.tasks.contains_key(records::result_key(&open.task.id, n, 1)).unwrap());
        }
        // The ended Task stays as it was written.
        assert!(!store.trees.tasks.contains_key(records::result_key(&ended.task.id, 0, 1)).unwrap());
        let done = store.finish_run(&shard(2), 1, RunOutcome::Completed { result: result(2) }, now).await.unwrap();
        assert_eq!(done.task.result, Some(result(0)));
        drop(store);

        let store = SledStore::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(store.get_task(&open.task.id).await.unwrap(), done.task);
        let results: Vec<_> = store.list_runs(&open.task.id).await.unwrap().into_iter().map(|r| r.result).collect();
        assert_eq!(results, [0, 1, 2].map(|n| Some(result(n))));
        assert_eq!(store.get_task(&ended.task.id).await.unwrap(), ended.task);
    }
}
