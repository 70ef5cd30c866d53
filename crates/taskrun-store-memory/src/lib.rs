//! An in-memory TaskRun store, for tests and development. Nothing survives
//! the process. One mutex guards everything, so every change is atomic; the
//! state-change logic is [`taskrun_store::logic`] and the scheduling indexes
//! are [`taskrun_store::index`], both shared with every backend.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use taskrun_core::{
    AgentDigest, AgentManifest, AgentName, AgentVersion, Run, RunId, RunOutcome, Task, TaskEvent, TaskId, Timestamp,
    Worker, WorkerId, WorkerState,
};
use taskrun_store::index::{self, Indexes};
use taskrun_store::logic::{self, OutputStep, TaskAggregate, Touched};
use taskrun_store::{
    AgentStore, AppendOutcome, CancelOutcome, CreateOutcome, Error, EventStore, FailedRuns, OnApplied, Page,
    PageRequest, Result, RunChange, RunStore, StoreConfig, StoredAgent, TaskFilter, TaskStore, WorkerStore,
};

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    config: StoreConfig,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: BTreeMap<TaskId, TaskAggregate>,
    /// PENDING Runs, overdue Runs and active Runs by Worker.
    indexes: Indexes,
    idempotency: HashMap<String, TaskId>,
    events: HashMap<TaskId, Vec<TaskEvent>>,
    workers: BTreeMap<WorkerId, Worker>,
    agents: BTreeMap<(AgentName, AgentVersion), StoredAgent>,
    digests: HashMap<AgentDigest, (AgentName, AgentVersion)>,
    blobs: HashMap<AgentDigest, Vec<u8>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::with_config(StoreConfig::default())
    }

    pub fn with_config(config: StoreConfig) -> MemoryStore {
        MemoryStore { config, inner: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Changes are applied to a copy and swapped in, so a panic while the
        // lock was held cannot have left half a change behind.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn aggregate(&self, id: &TaskId) -> Result<&TaskAggregate> {
        self.tasks.get(id).ok_or_else(|| Error::not_found("task", id))
    }

    fn task_of_run(&self, run: &RunId) -> Result<TaskId> {
        run.task_id().ok_or_else(|| Error::not_found("run", run))
    }

    fn run(&self, id: &RunId) -> Result<&Run> {
        let agg = self.aggregate(&self.task_of_run(id)?)?;
        Ok(&agg.runs[agg.run_index(id)?].run)
    }

    /// Applies `f` to a copy of the Task's aggregate and stores the copy if
    /// `f` succeeds.
    fn change<R>(&mut self, task: &TaskId, f: impl FnOnce(&mut TaskAggregate) -> Result<(Touched, R)>) -> Result<R> {
        let mut agg = self.aggregate(task)?.clone();
        let (touched, out) = f(&mut agg)?;
        self.store(agg, touched);
        Ok(out)
    }

    fn store(&mut self, agg: TaskAggregate, touched: Touched) {
        for change in index::changes(&agg, &touched) {
            self.indexes.apply(&change);
        }
        self.events.entry(agg.task.id.clone()).or_default().extend(touched.events);
        self.tasks.insert(agg.task.id.clone(), agg);
    }

    /// Fails those of `runs` that `worker` still holds, each in a change
    /// of its own (see [`RunStore::fail_runs_of_worker`]).
    fn fail_runs(&mut self, worker: &WorkerId, runs: &[RunId], reason: &str, now: Timestamp) -> FailedRuns {
        let mut out = FailedRuns::default();
        for id in runs {
            let failed = self.task_of_run(id).and_then(|task| {
                self.change(&task, |agg| {
                    Ok(match agg.fail_lost_run(id, worker, reason, now)? {
                        Some((touched, change)) => (touched, Some(change)),
                        None => (Touched::default(), None),
                    })
                })
            });
            match failed {
                Ok(change) => out.changes.extend(change),
                Err(e) => out.errors.push((id.clone(), e)),
            }
        }
        out
    }

    /// The Runs the indexes named (they follow every change made under the
    /// lock, so each still is what the index says).
    fn runs_named(&self, ids: Vec<RunId>) -> Result<Vec<Run>> {
        ids.iter().map(|id| self.run(id).cloned()).collect()
    }
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn create_task(&self, task: Task) -> Result<CreateOutcome<Task>> {
        // Checked first: a bad Task is InvalidArgument even as a repeat.
        let (agg, touched) = TaskAggregate::create(task)?;
        let mut inner = self.lock();
        if let Some(key) = &agg.task.spec.idempotency_key
            && let Some(existing) = inner.idempotency.get(key)
        {
            let existing = inner.aggregate(existing)?.task.clone();
            return logic::idempotent_repeat(existing, &agg.task);
        }
        if inner.tasks.contains_key(&agg.task.id) {
            return Err(Error::AlreadyExists { kind: "task", id: agg.task.id.to_string() });
        }
        if let Some(key) = &agg.task.spec.idempotency_key {
            inner.idempotency.insert(key.clone(), agg.task.id.clone());
        }
        let task = agg.task.clone();
        inner.store(agg, touched);
        Ok(CreateOutcome::Created(task))
    }

    async fn create_task_assigned(
        &self,
        task: Task,
        worker: &WorkerId,
        on_applied: OnApplied<'_>,
    ) -> Result<CreateOutcome<(Task, Option<RunChange>)>> {
        let (agg, touched, change) = TaskAggregate::create_assigned(task, worker)?;
        let mut inner = self.lock();
        if let Some(key) = &agg.task.spec.idempotency_key
            && let Some(existing) = inner.idempotency.get(key)
        {
            let existing = inner.aggregate(existing)?.task.clone();
            return Ok(logic::idempotent_repeat(existing, &agg.task)?.map(|t| (t, None)));
        }
        if inner.tasks.contains_key(&agg.task.id) {
            return Err(Error::AlreadyExists { kind: "task", id: agg.task.id.to_string() });
        }
        if let Some(key) = &agg.task.spec.idempotency_key {
            inner.idempotency.insert(key.clone(), agg.task.id.clone());
        }
        inner.store(agg, touched);
        drop(inner);
        on_applied(&change);
        Ok(CreateOutcome::Created((change.task.clone(), Some(change))))
    }

    async fn get_task(&self, id: &TaskId) -> Result<Task> {
        Ok(self.lock().aggregate(id)?.task.clone())
    }

    async fn list_tasks(&self, filter: &TaskFilter, page: &PageRequest) -> Result<Page<Task>> {
        let before = page.before()?;
        let inner = self.lock();
        let range = match &before {
            Some(before) => inner.tasks.range::<TaskId, _>(..before),
            None => inner.tasks.range::<TaskId, _>(..),
        };
        page.collect(range.rev(), self.config.max_tasks_examined_per_list, |(id, agg)| {
            Ok((id.clone(), filter.matches(&agg.task).then(|| agg.task.clone())))
        })
    }

    async fn cancel_task(&self, id: &TaskId, reason: &str, now: Timestamp) -> Result<CancelOutcome> {
        self.lock().change(id, |agg| agg.cancel(reason, now))
    }

    async fn fail_task(&self, id: &TaskId, reason: &str, now: Timestamp) -> Result<CancelOutcome> {
        self.lock().change(id, |agg| agg.fail(reason, now))
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn get_run(&self, id: &RunId) -> Result<Run> {
        self.lock().run(id).cloned()
    }

    async fn list_runs(&self, task: &TaskId) -> Result<Vec<Run>> {
        let inner = self.lock();
        let mut runs: Vec<Run> = inner.aggregate(task)?.runs.iter().map(|r| r.run.clone()).collect();
        runs.sort_by_key(|r| (r.shard, r.attempt));
        Ok(runs)
    }

    async fn pending_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        let inner = self.lock();
        inner.runs_named(inner.indexes.pending(now, limit))
    }

    async fn overdue_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        let inner = self.lock();
        inner.runs_named(inner.indexes.overdue(now, limit))
    }

    async fn active_runs_of_worker(&self, worker: &WorkerId) -> Result<Vec<Run>> {
        let inner = self.lock();
        inner.runs_named(inner.indexes.of_worker(worker))
    }

    async fn assign_run(
        &self,
        id: &RunId,
        worker: &WorkerId,
        expected_lease: u64,
        now: Timestamp,
    ) -> Result<RunChange> {
        let mut inner = self.lock();
        let task = inner.task_of_run(id)?;
        inner.change(&task, |agg| agg.assign(id, worker, expected_lease, now))
    }

    async fn start_run(&self, id: &RunId, lease: u64, now: Timestamp) -> Result<RunChange> {
        let mut inner = self.lock();
        let task = inner.task_of_run(id)?;
        inner.change(&task, |agg| agg.start(id, lease, now))
    }

    async fn finish_run_with_output(
        &self,
        id: &RunId,
        lease: u64,
        output: Vec<(u64, String)>,
        outcome: RunOutcome,
        now: Timestamp,
    ) -> Result<RunChange> {
        let mut inner = self.lock();
        let task = inner.task_of_run(id)?;
        let mut agg = inner.aggregate(&task)?.clone();
        let (touched, change) = agg.finish_with_output(id, lease, output, &self.config, outcome, now)?;
        inner.store(agg, touched);
        Ok(change)
    }

    async fn fail_runs_of_worker(&self, worker: &WorkerId, reason: &str, now: Timestamp) -> Result<FailedRuns> {
        let mut inner = self.lock();
        let lost = inner.indexes.of_worker(worker);
        Ok(inner.fail_runs(worker, &lost, reason, now))
    }

    async fn fail_runs(&self, worker: &WorkerId, runs: &[RunId], reason: &str, now: Timestamp) -> Result<FailedRuns> {
        Ok(self.lock().fail_runs(worker, runs, reason, now))
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append_output(
        &self,
        run: &RunId,
        lease: u64,
        seq: u64,
        data: String,
        now: Timestamp,
    ) -> Result<AppendOutcome> {
        let mut inner = self.lock();
        let task = inner.task_of_run(run)?;
        let mut agg = inner.aggregate(&task)?.clone();
        let i = agg.run_index(run)?;
        let step = logic::append_output(&mut agg.meta, &mut agg.runs[i], lease, seq, data, &self.config, now)?;
        match step {
            OutputStep::Duplicate => Ok(AppendOutcome::Duplicate),
            OutputStep::OverLimit { limit_bytes } => {
                inner.tasks.insert(task, agg);
                Err(Error::OutputLimit { run_id: run.clone(), limit_bytes })
            }
            OutputStep::Append(event) => {
                inner.store(agg, Touched { events: vec![event.clone()], ..Touched::default() });
                Ok(AppendOutcome::Appended(event))
            }
        }
    }

    async fn events_since(&self, task: &TaskId, after_seq: u64, limit: usize) -> Result<Vec<TaskEvent>> {
        let limit = if limit == 0 { 1000 } else { limit };
        let inner = self.lock();
        inner.aggregate(task)?;
        let events = inner.events.get(task).map(Vec::as_slice).unwrap_or(&[]);
        let start = events.partition_point(|e| e.seq <= after_seq);
        Ok(events[start..].iter().take(limit).cloned().collect())
    }
}

#[async_trait]
impl WorkerStore for MemoryStore {
    async fn upsert_worker(&self, worker: Worker) -> Result<()> {
        self.lock().workers.insert(worker.info.id.clone(), worker);
        Ok(())
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Worker> {
        self.lock().workers.get(id).cloned().ok_or_else(|| Error::not_found("worker", id))
    }

    async fn list_workers(&self) -> Result<Vec<Worker>> {
        Ok(self.lock().workers.values().cloned().collect())
    }

    async fn set_worker_state(&self, id: &WorkerId, state: WorkerState) -> Result<Worker> {
        let mut inner = self.lock();
        let worker = inner.workers.get_mut(id).ok_or_else(|| Error::not_found("worker", id))?;
        worker.state = state;
        Ok(worker.clone())
    }
}

#[async_trait]
impl AgentStore for MemoryStore {
    async fn put_agent(
        &self,
        manifest: AgentManifest,
        envelope: Vec<u8>,
        component: Vec<u8>,
    ) -> Result<CreateOutcome<StoredAgent>> {
        logic::check_component(&manifest, &component)?;
        let mut inner = self.lock();
        let key = (manifest.name.clone(), manifest.version);
        let by_digest = inner.digests.get(&manifest.digest).and_then(|k| inner.agents.get(k)).map(|a| &a.manifest);
        let by_version = inner.agents.get(&key).map(|a| &a.manifest);
        if logic::decide_put_agent(&manifest, by_version, by_digest)?.is_some() {
            let stored = inner.agents.get(&key).cloned();
            return stored.map(CreateOutcome::Existing).ok_or_else(|| Error::not_found("agent", &manifest.name));
        }
        let stored = StoredAgent { manifest, envelope };
        inner.blobs.insert(stored.manifest.digest, component);
        inner.digests.insert(stored.manifest.digest, key.clone());
        inner.agents.insert(key, stored.clone());
        Ok(CreateOutcome::Created(stored))
    }

    async fn get_agent(&self, name: &AgentName, version: Option<AgentVersion>) -> Result<StoredAgent> {
        let inner = self.lock();
        let found = match version {
            Some(v) => inner.agents.get(&(name.clone(), v)),
            None => inner
                .agents
                .range((name.clone(), AgentVersion::new(0, 0, 0))..)
                .take_while(|((n, _), _)| n == name)
                .last()
                .map(|(_, a)| a),
        };
        found.cloned().ok_or_else(|| {
            let id = match version {
                Some(v) => format!("{name}@{v}"),
                None => name.to_string(),
            };
            Error::not_found("agent", id)
        })
    }

    async fn get_agent_by_digest(&self, digest: &AgentDigest) -> Result<StoredAgent> {
        let inner = self.lock();
        inner
            .digests
            .get(digest)
            .and_then(|k| inner.agents.get(k))
            .cloned()
            .ok_or_else(|| Error::not_found("agent", digest))
    }

    async fn list_agents(&self) -> Result<Vec<AgentManifest>> {
        Ok(self.lock().agents.values().map(|a| a.manifest.clone()).collect())
    }

    async fn get_blob(&self, digest: &AgentDigest) -> Result<Vec<u8>> {
        self.lock().blobs.get(digest).cloned().ok_or_else(|| Error::not_found("blob", digest))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use taskrun_core::RunStatus;
    use taskrun_store::conformance::{new_task, spec};

    use super::*;

    /// One Run that cannot be failed (its Task's record is made
    /// inconsistent by hand: the Worker's index lists a Run its Task lacks) does not
    /// undo or hide the Runs failed around it.
    #[tokio::test]
    async fn a_run_that_cannot_be_failed_does_not_lose_the_others() {
        let store = MemoryStore::new();
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
        store.lock().tasks.get_mut(&broken.task_id().unwrap()).unwrap().runs.clear();

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
}
