//! Store faults the control plane must outlive: a failover the store
//! refused once is tried again, without waiting for a restart.
//!
//! The store is the real memory store behind a wrapper that refuses the
//! next call (or calls) of one kind with a storage error, as a failing
//! disk would; everything else passes straight through.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_core::{
    AgentDigest, AgentManifest, AgentName, AgentVersion, Run, RunId, RunOutcome, Task, TaskEvent, TaskId, Timestamp,
    Worker, WorkerId, WorkerState,
};
use taskrun_proto::pb;
use taskrun_store::{
    AgentStore, AppendOutcome, CancelOutcome, CreateOutcome, Error, EventStore, FailedRuns, OnApplied, Page,
    PageRequest, Result, RunChange, RunStore, Store, StoredAgent, TaskFilter, TaskStore, WorkerStore,
};
use taskrun_testkit::{Cluster, spec, test_config};

use crate::fencing::{RawWorker, completed, keep_alive};

/// The memory store, with the next `fail_runs` and `fail_runs_of_worker`
/// calls refused as many times as set.
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn Store>,
    refuse_fail_runs: AtomicUsize,
    refuse_fail_runs_of_worker: AtomicUsize,
}

impl Faulty {
    fn new() -> Arc<Faulty> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(StoreKind::Memory, dir.path());
        let inner = taskrun_control_plane::server::open_store(&config).expect("memory store");
        Arc::new(Faulty {
            inner,
            refuse_fail_runs: AtomicUsize::new(0),
            refuse_fail_runs_of_worker: AtomicUsize::new(0),
        })
    }

    /// True (once per count set) when the call is to be refused.
    fn refuse(count: &AtomicUsize) -> bool {
        count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

fn injected() -> Error {
    Error::storage("injected: the disk refused the write")
}

#[async_trait]
impl TaskStore for Faulty {
    async fn create_task(&self, task: Task) -> Result<CreateOutcome<Task>> {
        self.inner.create_task(task).await
    }
    async fn create_task_assigned(
        &self,
        task: Task,
        worker: &WorkerId,
        on_applied: OnApplied<'_>,
    ) -> Result<CreateOutcome<(Task, Option<RunChange>)>> {
        self.inner.create_task_assigned(task, worker, on_applied).await
    }
    async fn get_task(&self, id: &TaskId) -> Result<Task> {
        self.inner.get_task(id).await
    }
    async fn list_tasks(&self, filter: &TaskFilter, page: &PageRequest) -> Result<Page<Task>> {
        self.inner.list_tasks(filter, page).await
    }
    async fn cancel_task(&self, id: &TaskId, reason: &str, now: Timestamp) -> Result<CancelOutcome> {
        self.inner.cancel_task(id, reason, now).await
    }
    async fn fail_task(&self, id: &TaskId, reason: &str, now: Timestamp) -> Result<CancelOutcome> {
        self.inner.fail_task(id, reason, now).await
    }
}

#[async_trait]
impl RunStore for Faulty {
    async fn get_run(&self, id: &RunId) -> Result<Run> {
        self.inner.get_run(id).await
    }
    async fn list_runs(&self, task: &TaskId) -> Result<Vec<Run>> {
        self.inner.list_runs(task).await
    }
    async fn pending_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        self.inner.pending_runs(now, limit).await
    }
    async fn overdue_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        self.inner.overdue_runs(now, limit).await
    }
    async fn active_runs_of_worker(&self, worker: &WorkerId) -> Result<Vec<Run>> {
        self.inner.active_runs_of_worker(worker).await
    }
    async fn assign_run(
        &self,
        id: &RunId,
        worker: &WorkerId,
        expected_lease: u64,
        now: Timestamp,
    ) -> Result<RunChange> {
        self.inner.assign_run(id, worker, expected_lease, now).await
    }
    async fn start_run(&self, id: &RunId, lease: u64, now: Timestamp) -> Result<RunChange> {
        self.inner.start_run(id, lease, now).await
    }
    async fn finish_run_with_output(
        &self,
        id: &RunId,
        lease: u64,
        output: Vec<(u64, String)>,
        outcome: RunOutcome,
        now: Timestamp,
    ) -> Result<RunChange> {
        self.inner.finish_run_with_output(id, lease, output, outcome, now).await
    }
    async fn fail_runs_of_worker(&self, worker: &WorkerId, reason: &str, now: Timestamp) -> Result<FailedRuns> {
        if Faulty::refuse(&self.refuse_fail_runs_of_worker) {
            return Err(injected());
        }
        self.inner.fail_runs_of_worker(worker, reason, now).await
    }
    async fn fail_runs(&self, worker: &WorkerId, runs: &[RunId], reason: &str, now: Timestamp) -> Result<FailedRuns> {
        if Faulty::refuse(&self.refuse_fail_runs) {
            return Err(injected());
        }
        self.inner.fail_runs(worker, runs, reason, now).await
    }
}

#[async_trait]
impl EventStore for Faulty {
    async fn append_output(
        &self,
        run: &RunId,
        lease: u64,
        seq: u64,
        data: String,
        now: Timestamp,
    ) -> Result<AppendOutcome> {
        self.inner.append_output(run, lease, seq, data, now).await
    }
    async fn events_since(&self, task: &TaskId, after_seq: u64, limit: usize) -> Result<Vec<TaskEvent>> {
        self.inner.events_since(task, after_seq, limit).await
    }
}

#[async_trait]
impl WorkerStore for Faulty {
    async fn upsert_worker(&self, worker: Worker) -> Result<()> {
        self.inner.upsert_worker(worker).await
    }
    async fn get_worker(&self, id: &WorkerId) -> Result<Worker> {
        self.inner.get_worker(id).await
    }
    async fn list_workers(&self) -> Result<Vec<Worker>> {
        self.inner.list_workers().await
    }
    async fn set_worker_state(&self, id: &WorkerId, state: WorkerState) -> Result<Worker> {
        self.inner.set_worker_state(id, state).await
    }
}

#[async_trait]
impl AgentStore for Faulty {
    async fn put_agent(
        &self,
        manifest: AgentManifest,
        envelope: Vec<u8>,
        component: Vec<u8>,
    ) -> Result<CreateOutcome<StoredAgent>> {
        self.inner.put_agent(manifest, envelope, component).await
    }
    async fn get_agent(&self, name: &AgentName, version: Option<AgentVersion>) -> Result<StoredAgent> {
        self.inner.get_agent(name, version).await
    }
    async fn get_agent_by_digest(&self, digest: &AgentDigest) -> Result<StoredAgent> {
        self.inner.get_agent_by_digest(digest).await
    }
    async fn list_agents(&self) -> Result<Vec<AgentManifest>> {
        self.inner.list_agents().await
    }
    async fn get_blob(&self, digest: &AgentDigest) -> Result<Vec<u8>> {
        self.inner.get_blob(digest).await
    }
}

/// `first` failed over, saying `why`: its retry comes to `worker`, which
/// completes it, and the Task completes.
async fn retried(cluster: &Cluster, worker: &mut RawWorker, first: &pb::RunAssignment, why: &str) {
    let retry = worker.next_assignment().await;
    assert_eq!((retry.task_id.as_str(), retry.attempt), (first.task_id.as_str(), 2));
    assert_ne!(first.run_id, retry.run_id);
    let got = cluster.get(&first.task_id).await;
    let error = got.runs[0].error.clone().unwrap_or_default();
    assert!(error.contains(why), "{error}");
    worker.send(completed(&retry, "\"again\""));
    assert_eq!(worker.next_ack().await.outcome, i32::from(pb::RunAckOutcome::Accepted));
}

fn retried_once() -> Option<pb::RetryPolicy> {
    Some(pb::RetryPolicy { max_attempts: Some(2), initial_backoff_ms: Some(0), max_backoff_ms: Some(0) })
}

/// A Worker is lost, and the store refuses the write that fails its Run
/// over. The watchdog tries again: the Run is retried on another Worker
/// within moments, not left ASSIGNED to the lost one until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_workers_failover_the_store_refused_is_tried_again() {
    let store = Faulty::new();
    let cluster = Cluster::start_on(store.clone()).await;
    // The start-up reaper (one heartbeat timeout after the start) would
    // also fail over a lost Worker's Runs: let it pass first.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut s = spec("echo", "\"again\"");
    s.retry = retried_once();
    let task_id = cluster.create(s).await;
    let mut lost = RawWorker::connect(&cluster, "gone").await;
    let given = lost.next_assignment().await;
    assert_eq!(given.task_id, task_id);

    store.refuse_fail_runs_of_worker.store(1, Ordering::SeqCst);
    let mut other = RawWorker::connect(&cluster, "other").await;
    let _beats = keep_alive(&other);
    drop(lost);

    retried(&cluster, &mut other, &given, "worker gone lost").await;
    assert_eq!(store.refuse_fail_runs_of_worker.load(Ordering::SeqCst), 0, "the refusal was not met");
}

/// A Worker reconnects without a Run the store says it holds, and the
/// store refuses the write that fails that Run over. The Run stays the
/// Worker's and is failed over at its next heartbeat, then retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_a_hello_left_out_is_failed_over_when_the_store_lets_it() {
    let store = Faulty::new();
    let cluster = Cluster::start_on(store.clone()).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut s = spec("echo", "\"again\"");
    s.retry = retried_once();
    let task_id = cluster.create(s).await;
    let (mut old, _) = RawWorker::connect_with(&cluster, "w", 1, vec![]).await;
    let lost = old.next_assignment().await;
    assert_eq!(lost.task_id, task_id);

    store.refuse_fail_runs.store(1, Ordering::SeqCst);
    // The process restarted: its hello holds nothing.
    let (mut new, _) = RawWorker::connect_with(&cluster, "w", 1, vec![]).await;
    let _beats = keep_alive(&new);
    drop(old);
    retried(&cluster, &mut new, &lost, "no longer lists the run in its heartbeats").await;
    assert_eq!(store.refuse_fail_runs.load(Ordering::SeqCst), 0, "the refusal was not met");
}
