//! The conformance suite: one set of tests every backend must pass.
//!
//! Each case is an async function taking a factory that opens a fresh, empty
//! store with the given [`StoreConfig`]. A backend runs them all with
//!
//! ```ignore
//! async fn make(config: StoreConfig) -> Arc<dyn Store> { … }
//! taskrun_store::conformance_tests!(make);
//! ```
//!
//! which generates one `#[tokio::test]` per case (the calling crate needs
//! `tokio` as a dev-dependency). [`check_invariants`] is public so that other
//! tests (the sled crash test) check the same invariants.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use taskrun_core::{
    AgentDigest, AgentManifest, AgentName, AgentRef, AgentVersion, Json, RetryPolicy, Run, RunOutcome, RunStatus, Task,
    TaskEvent, TaskEventKind, TaskId, TaskSpec, TaskStatus, Timestamp, Worker, WorkerId, WorkerInfo, WorkerState,
    derive_task_status,
};

use crate::{AppendOutcome, CreateOutcome, Error, PageRequest, Store, StoreConfig, TaskFilter};

/// Generates one `#[tokio::test]` per conformance case, each calling
/// `$factory(config).await` for its fresh store.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance_tests!(@cases $factory;
            create_task_stores_runs_and_first_event,
            create_task_refuses_bad_tasks_and_reused_ids,
            idempotency_same_key_same_spec,
            idempotency_same_key_other_spec,
            idempotency_concurrent_creates,
            fan_out_creates_one_run_per_shard,
            list_filters_by_status_agent_and_labels,
            list_pages_through_25_tasks,
            list_page_token_is_stable_under_inserts,
            list_looks_at_a_bounded_number_of_tasks_per_call,
            list_refuses_foreign_page_token,
            assign_race_exactly_one_wins,
            assign_refuses_moved_lease,
            start_checks_lease_and_state,
            stale_finish_is_refused_and_changes_nothing,
            failed_finish_creates_retry_with_backoff,
            exhausted_retries_fail_the_task,
            fan_out_completes_when_every_shard_completes,
            fan_out_shard_out_of_attempts_cancels_the_others,
            a_permanent_failure_fails_the_task_without_a_retry,
            an_interrupted_run_does_not_use_up_an_attempt,
            results_are_kept_per_run,
            cancel_task_cancels_runs_and_returns_active_ones,
            fail_task_ends_it_without_a_retry,
            worker_loss_fails_runs_and_fences_the_worker,
            failing_named_runs_skips_those_the_worker_no_longer_holds,
            concurrent_writers_keep_invariants,
            concurrent_finishes_of_one_run_exactly_one_wins,
            output_is_deduplicated_and_ordered,
            output_is_capped_per_run,
            output_with_too_many_gaps_is_refused,
            create_assigned_places_the_run_in_the_same_step,
            finish_with_output_stores_output_and_end_together,
            events_since_resumes_from_a_cursor,
            pending_runs_by_priority_and_not_before,
            overdue_runs_are_found_anywhere_in_the_queue,
            workers_upsert_get_list_and_state,
            agents_and_blobs_by_digest,
            agent_version_and_digest_conflicts,
        );
    };
    (@cases $factory:path; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$case($factory).await;
            }
        )+
    };
}

/// The time the suite's clocks start at.
pub const T0: Timestamp = Timestamp(1_700_000_000_000);

fn at(ms: i64) -> Timestamp {
    Timestamp(T0.0 + ms)
}

/// A spec for agent `agent` with a small input, no retry backoff to speak
/// of, and defaults otherwise.
pub fn spec(agent: &str) -> TaskSpec {
    let mut spec = TaskSpec::new(
        AgentRef::latest(agent.parse().expect("agent name")),
        Json::parse("input", r#"{"q":"hello"}"#).expect("json"),
    );
    spec.retry = RetryPolicy { max_attempts: 3, initial_backoff_ms: 1000, max_backoff_ms: 60_000 };
    spec
}

/// A new PENDING Task with a fresh id.
pub fn new_task(spec: TaskSpec, now: Timestamp) -> Task {
    Task::new(TaskId::generate(), spec, now, usize::MAX).expect("valid task")
}

fn worker(n: u32) -> WorkerId {
    format!("worker-{n}").parse().expect("worker id")
}

fn json(text: &str) -> Json {
    Json::parse("json", text).expect("json")
}

async fn create(store: &dyn Store, spec: TaskSpec) -> (Task, Vec<Run>) {
    let task = store.create_task(new_task(spec, T0)).await.expect("create").into_inner();
    let runs = store.list_runs(&task.id).await.expect("runs");
    (task, runs)
}

async fn all_events(store: &dyn Store, task: &TaskId) -> Vec<TaskEvent> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map(|e: &TaskEvent| e.seq).unwrap_or(0);
        let page = store.events_since(task, after, 100).await.expect("events");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Everything about a Task, to compare before and after a refused change.
async fn snapshot(store: &dyn Store, task: &TaskId) -> (Task, Vec<Run>, Vec<TaskEvent>) {
    (
        store.get_task(task).await.expect("task"),
        store.list_runs(task).await.expect("runs"),
        all_events(store, task).await,
    )
}

/// Assigns and starts `run`, returning its lease.
async fn run_it(store: &dyn Store, run: &Run, w: &WorkerId, now: Timestamp) -> u64 {
    let change = store.assign_run(&run.id, w, run.lease, now).await.expect("assign");
    let lease = change.run.lease;
    store.start_run(&run.id, lease, now).await.expect("start");
    lease
}

fn failed(error: &str) -> RunOutcome {
    RunOutcome::Failed { error: error.to_owned() }
}

fn completed(result: &str) -> RunOutcome {
    RunOutcome::Completed { result: json(result) }
}

/// Checks what must hold for every Task at every moment: its status is the
/// one its Runs give; each shard has consecutive attempts with only the
/// latest one unfinished; leases and workers agree with statuses; a terminal
/// Task has no unfinished Run; its events are numbered 1, 2, … and the last
/// status event carries the Task's status.
pub async fn check_invariants(store: &dyn Store, id: &TaskId) -> Result<(), String> {
    let task = store.get_task(id).await.map_err(|e| format!("get_task: {e}"))?;
    let runs = store.list_runs(id).await.map_err(|e| format!("list_runs: {e}"))?;
    let fan_out = task.spec.fan_out.max(1);
    let ctx = |what: String| format!("task {id} ({}): {what}", task.status);

    // Ended explicitly (cancel_task, or fail_task when nobody started it):
    // the status is not derived from the Runs, but a reason is recorded.
    let ended_explicitly = task.status == TaskStatus::Cancelled
        || (task.status == TaskStatus::Failed && !runs.iter().any(|r| r.status == RunStatus::Failed));
    if ended_explicitly {
        if task.error.is_none() {
            return Err(ctx("ended without a reason".into()));
        }
    } else {
        let derived = derive_task_status(TaskStatus::Pending, fan_out, &task.spec.retry, &runs);
        if derived != task.status {
            return Err(ctx(format!("its Runs give {derived}")));
        }
    }
    if task.status == TaskStatus::Completed {
        let shard0 = runs.iter().find(|r| r.shard == 0 && r.status == RunStatus::Completed);
        if shard0.and_then(|r| r.result.as_ref()) != task.result.as_ref() {
            return Err(ctx("result is not shard 0's".into()));
        }
    }
    for shard in 0..fan_out {
        let mut shard_runs: Vec<&Run> = runs.iter().filter(|r| r.shard == shard).collect();
        shard_runs.sort_by_key(|r| r.attempt);
        if shard_runs.is_empty() {
            return Err(ctx(format!("shard {shard} has no run")));
        }
        for (n, run) in shard_runs.iter().enumerate() {
            if run.attempt as usize != n + 1 {
                return Err(ctx(format!("shard {shard} attempts are not 1, 2, …")));
            }
            let latest = n + 1 == shard_runs.len();
            if !latest && !run.status.is_terminal() {
                return Err(ctx(format!("run {} is unfinished but not latest", run.id)));
            }
        }
    }
    for run in &runs {
        if run.task_id != task.id || run.shard >= fan_out {
            return Err(ctx(format!("run {} does not belong", run.id)));
        }
        if task.status.is_terminal() && !run.status.is_terminal() {
            return Err(ctx(format!("run {} is {}", run.id, run.status)));
        }
        match run.status {
            RunStatus::Pending => {
                if run.lease != 0 || run.worker_id.is_some() {
                    return Err(ctx(format!("pending run {} has a lease", run.id)));
                }
            }
            RunStatus::Assigned | RunStatus::Running | RunStatus::Completed => {
                if run.lease == 0 || run.worker_id.is_none() {
                    return Err(ctx(format!("run {} has no lease or worker", run.id)));
                }
            }
            RunStatus::Failed | RunStatus::Cancelled => {
                if (run.lease == 0) != run.worker_id.is_none() {
                    return Err(ctx(format!("run {} lease and worker disagree", run.id)));
                }
            }
        }
    }
    let events = all_events(store, id).await;
    for (n, event) in events.iter().enumerate() {
        if event.seq != n as u64 + 1 || &event.task_id != id {
            return Err(ctx(format!("event {n} has seq {}", event.seq)));
        }
    }
    let last_status = events.iter().rev().find_map(|e| match &e.kind {
        TaskEventKind::Status { task_status, .. } => Some(*task_status),
        TaskEventKind::Output(_) => None,
    });
    if last_status != Some(task.status) {
        return Err(ctx(format!("last status event says {last_status:?}")));
    }
    Ok(())
}

/// Awaits `op`, which must fail, and checks that it left the Task exactly as
/// it was; returns the error. (`op` is lazy: nothing runs until it is awaited
/// here, after the snapshot.)
async fn refused_unchanged<T: std::fmt::Debug>(
    store: &dyn Store,
    id: &TaskId,
    op: impl Future<Output = crate::Result<T>>,
) -> Error {
    let before = snapshot(store, id).await;
    let err = op.await.expect_err("the operation should be refused");
    assert_eq!(snapshot(store, id).await, before, "a refused operation changed the Task");
    err
}

async fn assert_invariants(store: &dyn Store, id: &TaskId) {
    if let Err(e) = check_invariants(store, id).await {
        panic!("invariant broken: {e}");
    }
}

// ---------------------------------------------------------------- tasks

pub async fn create_task_stores_runs_and_first_event<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let task = new_task(spec("echo"), T0);
    let out = store.create_task(task.clone()).await.unwrap();
    assert_eq!(out, CreateOutcome::Created(task.clone()));
    assert_eq!(store.get_task(&task.id).await.unwrap(), task);

    let runs = store.list_runs(&task.id).await.unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!((run.shard, run.attempt, run.lease, run.status), (0, 1, 0, RunStatus::Pending));
    assert_eq!(run.task_id, task.id);
    assert_eq!(run.not_before, T0);
    assert_eq!(store.get_run(&run.id).await.unwrap(), *run);

    let events = all_events(&*store, &task.id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 1);
    assert!(matches!(events[0].kind, TaskEventKind::Status { task_status: TaskStatus::Pending, run_id: None, .. }));
    let pending = store.pending_runs(T0, 10).await.unwrap();
    assert_eq!(pending, runs);
    assert_invariants(&*store, &task.id).await;

    let missing = TaskId::generate();
    assert!(store.get_task(&missing).await.unwrap_err().is_not_found());
    assert!(store.list_runs(&missing).await.unwrap_err().is_not_found());
    assert!(store.events_since(&missing, 0, 10).await.unwrap_err().is_not_found());
    let missing_run = taskrun_core::RunId::of(&TaskId::generate(), 0, 1);
    assert!(store.get_run(&missing_run).await.unwrap_err().is_not_found());
    assert!(store.assign_run(&missing_run, &worker(1), 0, T0).await.unwrap_err().is_not_found());
    // An attempt, or a shard, the Task never had: not found either.
    for unmade in [taskrun_core::RunId::of(&task.id, 0, 2), taskrun_core::RunId::of(&task.id, 1, 1)] {
        let err = store.get_run(&unmade).await.unwrap_err();
        assert!(err.is_not_found(), "{unmade}: {err}");
    }
}

pub async fn create_task_refuses_bad_tasks_and_reused_ids<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut running = new_task(spec("echo"), T0);
    running.status = TaskStatus::Running;
    let err = store.create_task(running).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");

    let mut bad = new_task(spec("echo"), T0);
    bad.spec.fan_out = 0;
    let err = store.create_task(bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");

    let task = new_task(spec("echo"), T0);
    store.create_task(task.clone()).await.unwrap();
    let mut again = task.clone();
    again.spec.input = json("[1]");
    let err = store.create_task(again.clone()).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    // Bad and a repeat (of an id, of an idempotency key): bad wins, in
    // every store.
    again.spec.fan_out = 0;
    let err = store.create_task(again).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let mut keyed = spec("echo");
    keyed.idempotency_key = Some("kept".into());
    let first = new_task(keyed.clone(), T0);
    store.create_task(first.clone()).await.unwrap();
    let mut bad_repeat = new_task(keyed, T0);
    bad_repeat.spec.fan_out = 0;
    let err = store.create_task(bad_repeat).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(store.get_task(&first.id).await.unwrap(), first);
    assert_eq!(store.get_task(&task.id).await.unwrap(), task);
    let all = store.list_tasks(&TaskFilter::default(), &PageRequest::default()).await.unwrap();
    assert_eq!(all.items, vec![first, task]);
}

pub async fn idempotency_same_key_same_spec<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.idempotency_key = Some("order-17".into());
    let first = new_task(s.clone(), T0);
    assert!(store.create_task(first.clone()).await.unwrap().is_created());

    let second = new_task(s, at(5));
    let out = store.create_task(second.clone()).await.unwrap();
    assert_eq!(out, CreateOutcome::Existing(first.clone()));
    assert!(store.get_task(&second.id).await.unwrap_err().is_not_found());
    assert_eq!(store.list_runs(&first.id).await.unwrap().len(), 1);
    assert_eq!(all_events(&*store, &first.id).await.len(), 1);
    let all = store.list_tasks(&TaskFilter::default(), &PageRequest::default()).await.unwrap();
    assert_eq!(all.items.len(), 1);
}

pub async fn idempotency_same_key_other_spec<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.idempotency_key = Some("order-18".into());
    let first = new_task(s.clone(), T0);
    store.create_task(first.clone()).await.unwrap();

    let mut other = s.clone();
    other.input = json(r#"{"q":"something else"}"#);
    let err = store.create_task(new_task(other, T0)).await.unwrap_err();
    match err {
        Error::IdempotencyConflict { key, task_id } => {
            assert_eq!(key, "order-18");
            assert_eq!(task_id, first.id);
        }
        e => panic!("expected IdempotencyConflict, got {e}"),
    }
    let all = store.list_tasks(&TaskFilter::default(), &PageRequest::default()).await.unwrap();
    assert_eq!(all.items, vec![first]);
}

pub async fn idempotency_concurrent_creates<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.idempotency_key = Some("raced".into());
    let mut handles = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let task = new_task(s.clone(), T0);
        handles.push(tokio::spawn(async move { store.create_task(task).await.unwrap() }));
    }
    let mut created = 0;
    let mut ids = BTreeSet::new();
    for h in handles {
        let out = h.await.unwrap();
        created += usize::from(out.is_created());
        ids.insert(out.into_inner().id);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    let all = store.list_tasks(&TaskFilter::default(), &PageRequest::default()).await.unwrap();
    assert_eq!(all.items.len(), 1);
}

pub async fn fan_out_creates_one_run_per_shard<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.fan_out = 3;
    let (task, runs) = create(&*store, s).await;
    let shards: Vec<(u32, u32, RunStatus)> = runs.iter().map(|r| (r.shard, r.attempt, r.status)).collect();
    assert_eq!(shards, vec![(0, 1, RunStatus::Pending), (1, 1, RunStatus::Pending), (2, 1, RunStatus::Pending)]);
    assert_eq!(store.pending_runs(T0, 10).await.unwrap().len(), 3);
    assert_eq!(all_events(&*store, &task.id).await.len(), 1);
    assert_invariants(&*store, &task.id).await;
}

async fn ids(store: &dyn Store, filter: TaskFilter) -> Vec<TaskId> {
    store.list_tasks(&filter, &PageRequest::default()).await.unwrap().items.into_iter().map(|t| t.id).collect()
}

pub async fn list_filters_by_status_agent_and_labels<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let labelled = |agent: &str, labels: &[(&str, &str)]| {
        let mut s = spec(agent);
        s.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        s
    };
    let (a, _) = create(&*store, labelled("alpha", &[("env", "prod"), ("team", "x")])).await;
    let (b, b_runs) = create(&*store, labelled("alpha", &[("env", "dev")])).await;
    let (c, _) = create(&*store, labelled("beta", &[("env", "prod")])).await;
    let (d, _) = create(&*store, labelled("beta", &[])).await;
    store.assign_run(&b_runs[0].id, &worker(1), 0, T0).await.unwrap();
    store.cancel_task(&c.id, "not needed", T0).await.unwrap();

    let f = |status: Option<TaskStatus>, agent: Option<&str>, labels: &[(&str, &str)]| TaskFilter {
        statuses: status.into_iter().collect(),
        agent: agent.map(|a| a.parse::<AgentName>().unwrap()),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    // Newest first.
    let all = vec![d.id.clone(), c.id.clone(), b.id.clone(), a.id.clone()];
    assert_eq!(ids(&*store, f(None, None, &[])).await, all);
    assert_eq!(ids(&*store, f(Some(TaskStatus::Pending), None, &[])).await, vec![d.id.clone(), a.id.clone()]);
    assert_eq!(ids(&*store, f(Some(TaskStatus::Running), None, &[])).await, vec![b.id.clone()]);
    assert_eq!(ids(&*store, f(Some(TaskStatus::Cancelled), None, &[])).await, vec![c.id.clone()]);
    assert!(ids(&*store, f(Some(TaskStatus::Completed), None, &[])).await.is_empty());
    assert_eq!(ids(&*store, f(None, Some("alpha"), &[])).await, vec![b.id.clone(), a.id.clone()]);
    assert!(ids(&*store, f(None, Some("gamma"), &[])).await.is_empty());
    assert_eq!(ids(&*store, f(None, None, &[("env", "prod")])).await, vec![c.id.clone(), a.id.clone()]);
    assert_eq!(ids(&*store, f(None, None, &[("env", "prod"), ("team", "x")])).await, vec![a.id.clone()]);
    assert!(ids(&*store, f(None, None, &[("env", "prod"), ("team", "y")])).await.is_empty());
    assert_eq!(ids(&*store, f(Some(TaskStatus::Pending), Some("beta"), &[])).await, vec![d.id.clone()]);
    assert!(ids(&*store, f(Some(TaskStatus::Cancelled), Some("alpha"), &[("env", "prod")])).await.is_empty());

    // Several states: any of them, open and ended alike.
    let any_of = |statuses: &[TaskStatus]| TaskFilter { statuses: statuses.to_vec(), ..TaskFilter::default() };
    let open = any_of(&[TaskStatus::Pending, TaskStatus::Running]);
    assert_eq!(ids(&*store, open).await, vec![d.id.clone(), b.id.clone(), a.id.clone()]);
    let ended = any_of(&[TaskStatus::Completed, TaskStatus::Failed, TaskStatus::Cancelled]);
    assert_eq!(ids(&*store, ended).await, vec![c.id.clone()]);
    let mixed = any_of(&[TaskStatus::Cancelled, TaskStatus::Pending]);
    assert_eq!(ids(&*store, mixed).await, vec![d.id.clone(), c.id.clone(), a.id.clone()]);
    let mixed =
        TaskFilter { agent: Some("beta".parse().unwrap()), ..any_of(&[TaskStatus::Running, TaskStatus::Cancelled]) };
    assert_eq!(ids(&*store, mixed).await, vec![c.id.clone()]);
}

async fn page_through(store: &dyn Store, filter: &TaskFilter, size: u32) -> Vec<Vec<TaskId>> {
    let mut pages = Vec::new();
    let mut token = None;
    loop {
        let page = store.list_tasks(filter, &PageRequest { page_size: size, page_token: token }).await.unwrap();
        pages.push(page.items.iter().map(|t| t.id.clone()).collect());
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return pages,
        }
        assert!(pages.len() < 1000, "paging does not end");
    }
}

pub async fn list_pages_through_25_tasks<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut created = Vec::new();
    let mut odd = Vec::new();
    for n in 0..25 {
        let mut s = spec("echo");
        if n % 2 == 1 {
            s.labels.insert("odd".into(), "yes".into());
        }
        let (task, _) = create(&*store, s).await;
        if n % 2 == 1 {
            odd.push(task.id.clone());
        }
        created.push(task.id);
    }
    // Ids are uuid-v7 based: their order is creation order. Listings are
    // newest first.
    let mut sorted = created.clone();
    sorted.sort();
    assert_eq!(sorted, created);
    created.reverse();
    odd.reverse();

    let pages = page_through(&*store, &TaskFilter::default(), 10).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(pages.concat(), created);

    let filter = TaskFilter { labels: [("odd".to_string(), "yes".to_string())].into(), ..TaskFilter::default() };
    let pages = page_through(&*store, &filter, 5).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![5, 5, 2]);
    assert_eq!(pages.concat(), odd);

    // Filtered by state, open or ended (a store may read only those Tasks'
    // records), across pages: cancel every third Task.
    let mut cancelled = Vec::new();
    for id in created.iter().step_by(3) {
        store.cancel_task(id, "paging", T0).await.unwrap();
        cancelled.push(id.clone());
    }
    let pending: Vec<TaskId> = created.iter().filter(|id| !cancelled.contains(id)).cloned().collect();
    for (statuses, expected, size) in
        [(vec![TaskStatus::Pending], &pending, 4), (vec![TaskStatus::Cancelled, TaskStatus::Failed], &cancelled, 3)]
    {
        let filter = TaskFilter { statuses: statuses.clone(), ..TaskFilter::default() };
        let pages = page_through(&*store, &filter, size).await;
        assert!(pages.iter().all(|p| p.len() <= size as usize), "{statuses:?}: {pages:?}");
        assert_eq!(&pages.concat(), expected, "{statuses:?}");
    }

    // Page size 0 is the default size; a huge one is capped.
    let page = store.list_tasks(&TaskFilter::default(), &PageRequest::first(0)).await.unwrap();
    assert_eq!(page.items.len(), 25);
    assert_eq!(page.next_page_token, None);
    let page = store.list_tasks(&TaskFilter::default(), &PageRequest::first(u32::MAX)).await.unwrap();
    assert_eq!(page.items.len(), 25);
}

/// One call looks at no more than `max_tasks_examined_per_list` Tasks: a
/// filter few Tasks match answers short pages, even empty ones, with a
/// token, and following the tokens still lists every match once, in order.
/// Full pages are not cut short.
pub async fn list_looks_at_a_bounded_number_of_tasks_per_call<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig { max_tasks_examined_per_list: 4, ..StoreConfig::default() }).await;
    let mut created = Vec::new();
    for n in 0..25 {
        let mut s = spec("echo");
        if n % 5 == 0 {
            s.labels.insert("fifth".into(), "yes".into());
        }
        created.push(create(&*store, s).await.0.id);
    }
    created.reverse();
    let fifth: Vec<TaskId> = created.iter().rev().step_by(5).rev().cloned().collect();
    assert_eq!(fifth.len(), 5);

    // Four Tasks looked at per call hold at most one of every fifth.
    let filter = TaskFilter { labels: [("fifth".to_string(), "yes".to_string())].into(), ..TaskFilter::default() };
    let pages = page_through(&*store, &filter, 10).await;
    assert!(pages.iter().all(|p| p.len() <= 1), "{pages:?}");
    assert!(pages.iter().any(Vec::is_empty), "{pages:?}");
    assert_eq!(pages.concat(), fifth);

    // Every Task matches: pages are full until the last.
    let pages = page_through(&*store, &TaskFilter::default(), 3).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 3, 3, 3, 3, 3, 3, 1]);
    assert_eq!(pages.concat(), created);

    // The walks by state, open and ended, stop the same way.
    for id in &fifth {
        store.cancel_task(id, "ended", T0).await.unwrap();
    }
    let open: Vec<TaskId> = created.iter().filter(|id| !fifth.contains(id)).cloned().collect();
    for (statuses, expected) in [(vec![TaskStatus::Cancelled], &fifth), (vec![TaskStatus::Pending], &open)] {
        let filter = TaskFilter { statuses: statuses.clone(), ..TaskFilter::default() };
        let pages = page_through(&*store, &filter, 100).await;
        assert!(pages.iter().all(|p| p.len() <= 4), "{statuses:?}: {pages:?}");
        assert_eq!(&pages.concat(), expected, "{statuses:?}");
    }
    let filter = TaskFilter { statuses: vec![TaskStatus::Completed], ..TaskFilter::default() };
    assert!(page_through(&*store, &filter, 100).await.concat().is_empty());
}

pub async fn list_page_token_is_stable_under_inserts<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut created = Vec::new();
    for _ in 0..6 {
        created.push(create(&*store, spec("echo")).await.0.id);
    }
    let first = store.list_tasks(&TaskFilter::default(), &PageRequest::first(4)).await.unwrap();
    assert_eq!(first.items.len(), 4);
    // Changes after the first page neither repeat nor hide a Task; the
    // Tasks created since are newer than the whole listing, so not in it.
    for _ in 0..3 {
        create(&*store, spec("echo")).await;
    }
    store.cancel_task(&created[1], "changed under the cursor", T0).await.unwrap();
    created.reverse();
    let mut seen: Vec<TaskId> = first.items.into_iter().map(|t| t.id).collect();
    let mut token = first.next_page_token;
    while let Some(t) = token {
        let page =
            store.list_tasks(&TaskFilter::default(), &PageRequest { page_size: 4, page_token: Some(t) }).await.unwrap();
        seen.extend(page.items.into_iter().map(|t| t.id));
        token = page.next_page_token;
    }
    assert_eq!(seen, created);
}

pub async fn list_refuses_foreign_page_token<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    create(&*store, spec("echo")).await;
    // "after:" began the tokens of the oldest-first listing of earlier
    // versions: refused rather than read the other way round.
    let old_token = format!("after:{}", TaskId::generate());
    for token in ["", "garbage", "before:", "before:bad id", old_token.as_str()] {
        let err = store
            .list_tasks(&TaskFilter::default(), &PageRequest { page_size: 10, page_token: Some(token.into()) })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { field: "page_token", .. }), "{token:?}: {err}");
    }
}

// ---------------------------------------------------------------- runs

pub async fn assign_race_exactly_one_wins<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    for _ in 0..10 {
        let (task, runs) = create(&*store, spec("echo")).await;
        let run = runs[0].clone();
        let mut handles = Vec::new();
        for n in 0..4 {
            let store = store.clone();
            let id = run.id.clone();
            handles.push(tokio::spawn(async move { (n, store.assign_run(&id, &worker(n), 0, T0).await) }));
        }
        let mut winners = Vec::new();
        for h in handles {
            match h.await.unwrap() {
                (n, Ok(change)) => winners.push((n, change)),
                (_, Err(Error::LeaseConflict { expected: 0, actual: 1, .. })) => {}
                (_, Err(e)) => panic!("a losing assigner got {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one assigner wins");
        let (n, change) = winners.pop().unwrap();
        assert_eq!(change.run.lease, 1);
        assert_eq!(change.run.worker_id, Some(worker(n)));
        let stored = store.get_run(&run.id).await.unwrap();
        assert_eq!(stored, change.run);
        assert_eq!(stored.status, RunStatus::Assigned);
        assert_eq!(stored.assigned_at, Some(T0));
        assert_invariants(&*store, &task.id).await;
    }
}

pub async fn assign_refuses_moved_lease<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let (task, runs) = create(&*store, spec("echo")).await;
    let run = &runs[0];
    let err = refused_unchanged(&*store, &task.id, store.assign_run(&run.id, &worker(1), 5, T0)).await;
    assert!(matches!(err, Error::LeaseConflict { expected: 5, actual: 0, .. }), "{err}");

    let change = store.assign_run(&run.id, &worker(1), 0, at(1)).await.unwrap();
    assert_eq!(change.previous_task_status, TaskStatus::Pending);
    assert_eq!(change.task.status, TaskStatus::Running);
    assert!(change.task_status_changed());
    assert!(!change.events.is_empty());
    assert_eq!(store.get_task(&task.id).await.unwrap(), change.task);
    assert!(store.pending_runs(at(1), 10).await.unwrap().is_empty());
    assert_eq!(store.active_runs_of_worker(&worker(1)).await.unwrap(), vec![change.run.clone()]);

    // Holding the current lease does not make an ASSIGNED Run assignable.
    let err = refused_unchanged(&*store, &task.id, store.assign_run(&run.id, &worker(2), 1, at(2))).await;
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    assert_invariants(&*store, &task.id).await;
}

pub async fn start_checks_lease_and_state<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let (task, runs) = create(&*store, spec("echo")).await;
    let run = &runs[0];
    let err = store.start_run(&run.id, 0, T0).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    let lease = store.assign_run(&run.id, &worker(1), 0, T0).await.unwrap().run.lease;
    let err = store.start_run(&run.id, lease + 1, T0).await.unwrap_err();
    assert!(matches!(err, Error::LeaseConflict { .. }), "{err}");
    let change = store.start_run(&run.id, lease, at(3)).await.unwrap();
    assert_eq!(change.run.status, RunStatus::Running);
    assert_eq!(change.run.started_at, Some(at(3)));
    assert!(!change.task_status_changed());
    let err = store.start_run(&run.id, lease, at(4)).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    assert_invariants(&*store, &task.id).await;
}

pub async fn stale_finish_is_refused_and_changes_nothing<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let (task, runs) = create(&*store, spec("echo")).await;
    let run = &runs[0];
    let lease = run_it(&*store, run, &worker(1), T0).await;
    let before = snapshot(&*store, &task.id).await;
    for stale in [0, lease + 1] {
        let err = store.finish_run(&run.id, stale, completed("1"), at(1)).await.unwrap_err();
        assert!(matches!(err, Error::LeaseConflict { .. }), "{err}");
        let err = store.finish_run(&run.id, stale, failed("boom"), at(1)).await.unwrap_err();
        assert!(matches!(err, Error::LeaseConflict { .. }), "{err}");
    }
    assert_eq!(snapshot(&*store, &task.id).await, before);

    let change = store.finish_run(&run.id, lease, completed(r#"{"answer":42}"#), at(2)).await.unwrap();
    assert_eq!(change.task.status, TaskStatus::Completed);
    assert_eq!(change.task.result, Some(json(r#"{"answer":42}"#)));
    assert_eq!(change.run.finished_at, Some(at(2)));

    // A repeated report of a terminal Run is refused too.
    let err = refused_unchanged(&*store, &task.id, store.finish_run(&run.id, lease, completed("2"), at(3))).await;
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    assert_invariants(&*store, &task.id).await;
}

pub async fn failed_finish_creates_retry_with_backoff<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let (task, runs) = create(&*store, spec("echo")).await;
    let lease = run_it(&*store, &runs[0], &worker(1), T0).await;
    let change = store.finish_run(&runs[0].id, lease, failed("model timed out"), at(10)).await.unwrap();
    assert_eq!(change.run.status, RunStatus::Failed);
    assert_eq!(change.run.error.as_deref(), Some("model timed out"));
    assert_eq!(change.task.status, TaskStatus::Running);
    let retry = change.retry.clone().expect("a retry run");
    assert_eq!((retry.shard, retry.attempt, retry.status, retry.lease), (0, 2, RunStatus::Pending, 0));
    assert_eq!(retry.not_before, at(10 + 1000));
    assert_eq!(store.get_run(&retry.id).await.unwrap(), retry);
    assert_eq!(store.list_runs(&task.id).await.unwrap().len(), 2);

    // Not schedulable before its backoff ends.
    assert!(store.pending_runs(at(1009), 10).await.unwrap().is_empty());
    let err = store.assign_run(&retry.id, &worker(2), 0, at(500)).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    assert_eq!(store.pending_runs(at(1010), 10).await.unwrap(), vec![retry.clone()]);

    // The next failure doubles the backoff.
    let lease = run_it(&*store, &retry, &worker(2), at(1010)).await;
    let change = store.finish_run(&retry.id, lease, failed("again"), at(1100)).await.unwrap();
    let third = change.retry.expect("a third attempt");
    assert_eq!(third.attempt, 3);
    assert_eq!(third.not_before, at(1100 + 2000));
    assert_invariants(&*store, &task.id).await;

    // A cancelled report without a cancelled Task counts as a failure too.
    let lease = run_it(&*store, &third, &worker(2), at(3100)).await;
    let change = store
        .finish_run(&third.id, lease, RunOutcome::Cancelled { reason: "worker shutting down".into() }, at(3200))
        .await
        .unwrap();
    assert_eq!(change.retry, None);
    assert_eq!(change.task.status, TaskStatus::Failed);
    assert_invariants(&*store, &task.id).await;
}

pub async fn exhausted_retries_fail_the_task<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.retry.max_attempts = 2;
    s.retry.initial_backoff_ms = 0;
    let (task, runs) = create(&*store, s).await;
    let lease = run_it(&*store, &runs[0], &worker(1), T0).await;
    let change = store.finish_run(&runs[0].id, lease, failed("first"), at(1)).await.unwrap();
    let retry = change.retry.unwrap();
    assert_eq!(retry.not_before, at(1));
    let lease = run_it(&*store, &retry, &worker(1), at(1)).await;
    let change = store.finish_run(&retry.id, lease, failed("second"), at(2)).await.unwrap();
    assert_eq!(change.retry, None);
    assert_eq!(change.previous_task_status, TaskStatus::Running);
    assert_eq!(change.task.status, TaskStatus::Failed);
    assert_eq!(change.task.error.as_deref(), Some("second"));
    assert_eq!(store.get_task(&task.id).await.unwrap(), change.task);
    assert!(store.pending_runs(at(10), 10).await.unwrap().is_empty());
    let last = change.events.last().unwrap();
    assert!(matches!(last.kind, TaskEventKind::Status { task_status: TaskStatus::Failed, run_id: None, .. }));
    assert_invariants(&*store, &task.id).await;

    // max_attempts 1: the first failure fails the Task.
    let mut s = spec("echo");
    s.retry.max_attempts = 1;
    let (task, runs) = create(&*store, s).await;
    let lease = run_it(&*store, &runs[0], &worker(1), T0).await;
    let change = store.finish_run(&runs[0].id, lease, failed("only"), at(1)).await.unwrap();
    assert_eq!(change.task.status, TaskStatus::Failed);
    assert_eq!(change.retry, None);
    assert_invariants(&*store, &task.id).await;
}

pub async fn fan_out_completes_when_every_shard_completes<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.fan_out = 3;
    s.retry.initial_backoff_ms = 0;
    let (task, runs) = create(&*store, s).await;
    let mut leases = Vec::new();
    for (n, run) in runs.iter().enumerate() {
        leases.push(run_it(&*store, run, &worker(n as u32), T0).await);
    }
    let change = store.finish_run(&runs[2].id, leases[2], completed(r#""two""#), at(1)).await.unwrap();
    assert_eq!(change.task.status, TaskStatus::Running);
    // Shard 1 fails once, its retry completes.
    let change = store.finish_run(&runs[1].id, leases[1], failed("flaky"), at(2)).await.unwrap();
    let retry = change.retry.unwrap();
    assert_eq!(retry.shard, 1);
    let lease = run_it(&*store, &retry, &worker(7), at(2)).await;
    let change = store.finish_run(&retry.id, lease, completed(r#""one""#), at(3)).await.unwrap();
    assert_eq!(change.task.status, TaskStatus::Running);
    assert_invariants(&*store, &task.id).await;

    let change = store.finish_run(&runs[0].id, leases[0], completed(r#""zero""#), at(4)).await.unwrap();
    assert_eq!(change.previous_task_status, TaskStatus::Running);
    assert_eq!(change.task.status, TaskStatus::Completed);
    assert_eq!(change.task.result, Some(json(r#""zero""#)));
    assert!(change.cancelled_runs.is_empty());
    assert_eq!(store.get_task(&task.id).await.unwrap(), change.task);
    assert_invariants(&*store, &task.id).await;
}

/// Every Run keeps the result it was reported with, whatever happens to
/// its Task afterwards (its other shards finishing, failing, retrying,
/// taking output), and a COMPLETED Task's result is its shard 0's: read
/// Run by Run, as a list and with the Task, while it is open and after it
/// ended.
pub async fn results_are_kept_per_run<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.fan_out = 4;
    s.retry.initial_backoff_ms = 0;
    let (task, runs) = create(&*store, s).await;
    let result = |shard: u32, pad: usize| json(&format!(r#"{{"shard":{shard},"pad":"{}"}}"#, "x".repeat(pad)));
    let mut leases = Vec::new();
    for (n, run) in runs.iter().enumerate() {
        leases.push(run_it(&*store, run, &worker(n as u32), T0).await);
    }
    // What each Run was reported with; a Run not in it has no result.
    let mut reported: BTreeMap<taskrun_core::RunId, Json> = BTreeMap::new();
    let check = |reported: BTreeMap<taskrun_core::RunId, Json>| {
        let store = store.clone();
        let task = task.id.clone();
        async move {
            let listed = store.list_runs(&task).await.unwrap();
            for run in &listed {
                assert_eq!(run.result.as_ref(), reported.get(&run.id), "run {} in list_runs", run.id);
                let got = store.get_run(&run.id).await.unwrap();
                assert_eq!(got.result.as_ref(), reported.get(&run.id), "run {} from get_run", run.id);
            }
            assert_invariants(&*store, &task).await;
        }
    };

    // Shard 2 completes first, with the largest result; every change after
    // it keeps it.
    store
        .finish_run(&runs[2].id, leases[2], RunOutcome::Completed { result: result(2, 100_000) }, at(1))
        .await
        .unwrap();
    reported.insert(runs[2].id.clone(), result(2, 100_000));
    let retry = store.finish_run(&runs[1].id, leases[1], failed("flaky"), at(2)).await.unwrap().retry.unwrap();
    let lease = run_it(&*store, &retry, &worker(7), at(2)).await;
    store.append_output(&retry.id, lease, 1, "some output".into(), at(3)).await.unwrap();
    store.finish_run(&retry.id, lease, RunOutcome::Completed { result: result(1, 10) }, at(3)).await.unwrap();
    reported.insert(retry.id.clone(), result(1, 10));
    store
        .finish_run_with_output(
            &runs[3].id,
            leases[3],
            vec![(1, "trailing".into())],
            RunOutcome::Completed { result: result(3, 50_000) },
            at(4),
        )
        .await
        .unwrap();
    reported.insert(runs[3].id.clone(), result(3, 50_000));
    assert_eq!(store.get_task(&task.id).await.unwrap().result, None, "not COMPLETED yet");
    check(reported.clone()).await;

    let change = store
        .finish_run(&runs[0].id, leases[0], RunOutcome::Completed { result: result(0, 20_000) }, at(5))
        .await
        .unwrap();
    reported.insert(runs[0].id.clone(), result(0, 20_000));
    assert_eq!(change.task.status, TaskStatus::Completed);
    assert_eq!(change.task.result, Some(result(0, 20_000)));
    assert_eq!(store.get_task(&task.id).await.unwrap(), change.task);
    let listed = store.list_tasks(&TaskFilter::default(), &PageRequest::default()).await.unwrap();
    assert_eq!(listed.items, vec![change.task]);
    check(reported).await;
}

pub async fn fan_out_shard_out_of_attempts_cancels_the_others<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.fan_out = 3;
    s.retry.max_attempts = 1;
    let (task, runs) = create(&*store, s).await;
    let lease0 = run_it(&*store, &runs[0], &worker(1), T0).await;
    run_it(&*store, &runs[1], &worker(2), T0).await;
    // Shard 2 is still PENDING.
    let change = store.finish_run(&runs[0].id, lease0, failed("bad input"), at(1)).await.unwrap();
    assert_eq!(change.task.status, TaskStatus::Failed);
    assert_eq!(change.task.error.as_deref(), Some("shard 0: bad input"));
    let cancelled: Vec<(&taskrun_core::RunId, RunStatus, Option<WorkerId>)> =
        change.cancelled_runs.iter().map(|r| (&r.id, r.status, r.worker_id.clone())).collect();
    assert_eq!(
        cancelled,
        vec![(&runs[1].id, RunStatus::Cancelled, Some(worker(2))), (&runs[2].id, RunStatus::Cancelled, None)]
    );
    assert!(store.pending_runs(at(5), 10).await.unwrap().is_empty());
    assert!(store.active_runs_of_worker(&worker(2)).await.unwrap().is_empty());
    assert_invariants(&*store, &task.id).await;
}

/// A Run that failed permanently (the agent said the failure would repeat)
/// gets no retry, however many attempts its Task's policy has left: the
/// Task fails now, its other shards' Runs are cancelled, and the Run keeps
/// saying why (its status follows from its Runs, as always).
pub async fn a_permanent_failure_fails_the_task_without_a_retry<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let permanently = |error: &str| RunOutcome::FailedPermanently { error: error.to_owned() };
    let (task, runs) = create(&*store, spec("echo")).await;
    assert_eq!(task.spec.retry.max_attempts, 3);
    let lease = run_it(&*store, &runs[0], &worker(1), T0).await;
    let change = store.finish_run(&runs[0].id, lease, permanently("agent error: no prompt"), at(1)).await.unwrap();
    assert_eq!(change.retry, None);
    assert_eq!(change.run.status, RunStatus::Failed);
    assert!(change.run.failed_permanently);
    assert_eq!(change.task.status, TaskStatus::Failed);
    assert_eq!(change.task.error.as_deref(), Some("agent error: no prompt (permanent: not retried)"));
    let stored = store.list_runs(&task.id).await.unwrap();
    assert_eq!(stored.len(), 1, "no retry Run: {stored:?}");
    assert!(stored[0].failed_permanently);
    assert_eq!(store.get_run(&runs[0].id).await.unwrap(), stored[0]);
    assert!(store.pending_runs(at(10_000), 10).await.unwrap().is_empty());
    assert_invariants(&*store, &task.id).await;

    // A plain failure beside it is retried as before, and is not permanent.
    let (task, runs) = create(&*store, spec("echo")).await;
    let lease = run_it(&*store, &runs[0], &worker(1), T0).await;
    let change = store.finish_run(&runs[0].id, lease, failed("model timed out"), at(1)).await.unwrap();
    assert!(change.retry.is_some() && !change.run.failed_permanently);
    assert_invariants(&*store, &task.id).await;

    // One shard of a fan-out: the whole Task fails, the others are cancelled.
    let mut s = spec("echo");
    s.fan_out = 2;
    let (task, runs) = create(&*store, s).await;
    let lease1 = run_it(&*store, &runs[1], &worker(2), T0).await;
    run_it(&*store, &runs[0], &worker(1), T0).await;
    let change = store.finish_run(&runs[1].id, lease1, permanently("bad input"), at(1)).await.unwrap();
    assert_eq!(change.task.status, TaskStatus::Failed);
    assert_eq!(change.task.error.as_deref(), Some("shard 1: bad input (permanent: not retried)"));
    let cancelled: Vec<_> = change.cancelled_runs.iter().map(|r| (&r.id, r.status)).collect();
    assert_eq!(cancelled, vec![(&runs[0].id, RunStatus::Cancelled)]);
    assert_invariants(&*store, &task.id).await;
}

/// A Run its Worker stopped while shutting down is retried at once (no
/// backoff), and the attempt does not count: a Task allowed one attempt
/// is still retried after any number of interruptions, and fails only
/// once a Run that was not interrupted failed.
pub async fn an_interrupted_run_does_not_use_up_an_attempt<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.retry.max_attempts = 1;
    let (task, runs) = create(&*store, s).await;
    let mut run = runs[0].clone();
    for n in 1..=2u32 {
        let lease = run_it(&*store, &run, &worker(n), at(i64::from(n))).await;
        let outcome = RunOutcome::Interrupted { error: format!("worker worker-{n} shut down") };
        let change = store.finish_run(&run.id, lease, outcome, at(i64::from(n))).await.unwrap();
        assert!(change.run.interrupted && change.run.status == RunStatus::Failed);
        assert_eq!(change.task.status, TaskStatus::Running);
        let retry = change.retry.expect("a retry, though the Task allows one attempt");
        assert_eq!((retry.attempt, retry.not_before), (n + 1, at(i64::from(n))), "retried at once");
        assert_invariants(&*store, &task.id).await;
        run = retry;
    }
    let lease = run_it(&*store, &run, &worker(3), at(3)).await;
    let change = store.finish_run(&run.id, lease, failed("model timed out"), at(3)).await.unwrap();
    assert_eq!(change.retry, None);
    assert_eq!(change.task.status, TaskStatus::Failed);
    assert_eq!(change.task.error.as_deref(), Some("model timed out"));
    let flags: Vec<(u32, bool)> =
        store.list_runs(&task.id).await.unwrap().iter().map(|r| (r.attempt, r.interrupted)).collect();
    assert_eq!(flags, [(1, true), (2, true), (3, false)]);
    assert_invariants(&*store, &task.id).await;

    // With attempts to spare, an ordinary failure after an interruption
    // is retried with the backoff of the first retry, not the second.
    let (task, runs) = create(&*store, spec("echo")).await;
    let lease = run_it(&*store, &runs[0], &worker(1), T0).await;
    let outcome = RunOutcome::Interrupted { error: "worker worker-1 shut down".into() };
    let retry = store.finish_run(&runs[0].id, lease, outcome, at(10)).await.unwrap().retry.unwrap();
    let lease = run_it(&*store, &retry, &worker(2), at(10)).await;
    let change = store.finish_run(&retry.id, lease, failed("flaky"), at(20)).await.unwrap();
    assert_eq!(change.retry.expect("a third Run").not_before, at(20 + 1000));
    assert_invariants(&*store, &task.id).await;
}

pub async fn fail_task_ends_it_without_a_retry<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let (task, runs) = create(&*store, spec("echo")).await;
    let out = store.fail_task(&task.id, "nobody started it", at(5)).await.unwrap();
    assert_eq!(out.task.status, TaskStatus::Failed);
    assert_eq!(out.task.error.as_deref(), Some("nobody started it"));
    assert!(out.active_runs.is_empty(), "the run was only pending");
    let after = store.list_runs(&task.id).await.unwrap();
    assert_eq!(after.len(), 1, "no retry run: {after:?}");
    assert_eq!(after[0].id, runs[0].id);
    assert_eq!(after[0].status, RunStatus::Cancelled);
    assert!(store.pending_runs(at(10_000_000), 10).await.unwrap().is_empty());
    let last = out.events.last().expect("events");
    assert!(matches!(&last.kind, TaskEventKind::Status { task_status: TaskStatus::Failed, run_id: None, .. }));
    assert_invariants(&*store, &task.id).await;

    let err = refused_unchanged(&*store, &task.id, store.fail_task(&task.id, "again", at(6))).await;
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
}

pub async fn cancel_task_cancels_runs_and_returns_active_ones<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.fan_out = 3;
    let (task, runs) = create(&*store, s).await;
    let a = store.assign_run(&runs[0].id, &worker(1), 0, T0).await.unwrap().run;
    let lease_b = run_it(&*store, &runs[1], &worker(2), T0).await;

    let out = store.cancel_task(&task.id, "user asked", at(5)).await.unwrap();
    assert_eq!(out.task.status, TaskStatus::Cancelled);
    assert_eq!(out.task.error.as_deref(), Some("user asked"));
    let active: Vec<(&taskrun_core::RunId, Option<WorkerId>, u64)> =
        out.active_runs.iter().map(|r| (&r.id, r.worker_id.clone(), r.lease)).collect();
    assert_eq!(active, vec![(&a.id, Some(worker(1)), a.lease), (&runs[1].id, Some(worker(2)), lease_b)]);
    for run in store.list_runs(&task.id).await.unwrap() {
        assert_eq!(run.status, RunStatus::Cancelled);
    }
    assert!(store.pending_runs(at(5), 10).await.unwrap().is_empty());
    assert!(!out.events.is_empty());
    assert_invariants(&*store, &task.id).await;

    // Terminal now: cancelling again, or a late report from a worker, is
    // refused and changes nothing.
    let before = snapshot(&*store, &task.id).await;
    let err = store.cancel_task(&task.id, "again", at(6)).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    let err = store.finish_run(&runs[1].id, lease_b, completed("1"), at(6)).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    assert_eq!(snapshot(&*store, &task.id).await, before);

    // A completed Task cannot be cancelled.
    let (done, runs) = create(&*store, spec("echo")).await;
    let lease = run_it(&*store, &runs[0], &worker(1), T0).await;
    store.finish_run(&runs[0].id, lease, completed("1"), at(1)).await.unwrap();
    let err = store.cancel_task(&done.id, "late", at(2)).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    assert_eq!(store.get_task(&done.id).await.unwrap().status, TaskStatus::Completed);
    let err = store.cancel_task(&TaskId::generate(), "who", at(2)).await.unwrap_err();
    assert!(err.is_not_found());
}

pub async fn worker_loss_fails_runs_and_fences_the_worker<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let (t1, r1) = create(&*store, spec("echo")).await;
    let (t2, r2) = create(&*store, spec("echo")).await;
    let (t3, r3) = create(&*store, spec("echo")).await;
    let mut s = spec("echo");
    s.retry.max_attempts = 1;
    let (t4, r4) = create(&*store, s).await;
    let lease1 = run_it(&*store, &r1[0], &worker(1), T0).await;
    store.assign_run(&r2[0].id, &worker(1), 0, T0).await.unwrap();
    let lease3 = run_it(&*store, &r3[0], &worker(2), T0).await;
    run_it(&*store, &r4[0], &worker(1), T0).await;

    let failed = store.fail_runs_of_worker(&worker(1), "worker lost", at(10)).await.unwrap();
    assert!(failed.errors.is_empty(), "{:?}", failed.errors);
    let mut changes = failed.changes;
    changes.sort_by(|a, b| a.run.task_id.cmp(&b.run.task_id));
    assert_eq!(changes.len(), 3);
    for change in &changes {
        assert_eq!(change.run.status, RunStatus::Failed);
        assert_eq!(change.run.lease, 2, "the lease moved on: the worker is fenced");
        assert_eq!(change.run.error.as_deref(), Some("worker lost"));
    }
    assert_eq!(changes[0].task.id, t1.id);
    assert_eq!(changes[0].task.status, TaskStatus::Running);
    assert!(changes[0].retry.is_some());
    assert!(changes[1].retry.is_some());
    assert_eq!(changes[2].task.id, t4.id);
    assert_eq!(changes[2].task.status, TaskStatus::Failed);

    // The lost worker's late reports are refused.
    let err = store.finish_run(&r1[0].id, lease1, completed("1"), at(11)).await.unwrap_err();
    assert!(matches!(err, Error::LeaseConflict { .. }), "{err}");
    let err = store.append_output(&r1[0].id, lease1, 1, "late".into(), at(11)).await.unwrap_err();
    assert!(matches!(err, Error::LeaseConflict { .. }), "{err}");

    assert!(store.active_runs_of_worker(&worker(1)).await.unwrap().is_empty());
    assert_eq!(store.active_runs_of_worker(&worker(2)).await.unwrap().len(), 1);
    assert_eq!(store.get_run(&r3[0].id).await.unwrap().status, RunStatus::Running);
    store.finish_run(&r3[0].id, lease3, completed("3"), at(12)).await.unwrap();
    let again = store.fail_runs_of_worker(&worker(1), "again", at(13)).await.unwrap();
    assert!(again.changes.is_empty() && again.errors.is_empty(), "{again:?}");
    for t in [&t1, &t2, &t3, &t4] {
        assert_invariants(&*store, &t.id).await;
    }
}

/// A reconnecting Worker that lacks some of its Runs has exactly those
/// failed: a Run it finished, another Worker's Run and an unknown Run are
/// skipped, and its other Runs are left alone.
pub async fn failing_named_runs_skips_those_the_worker_no_longer_holds<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let (t1, r1) = create(&*store, spec("echo")).await;
    let (t2, r2) = create(&*store, spec("echo")).await;
    let (t3, r3) = create(&*store, spec("echo")).await;
    let (t4, r4) = create(&*store, spec("echo")).await;
    store.assign_run(&r1[0].id, &worker(1), 0, T0).await.unwrap();
    let lease2 = run_it(&*store, &r2[0], &worker(1), T0).await;
    let lease3 = run_it(&*store, &r3[0], &worker(1), T0).await;
    store.finish_run(&r3[0].id, lease3, completed("3"), at(1)).await.unwrap();
    run_it(&*store, &r4[0], &worker(2), T0).await;
    let unknown = taskrun_core::RunId::of(&TaskId::generate(), 0, 1);

    let runs = [r1[0].id.clone(), r3[0].id.clone(), r4[0].id.clone(), unknown.clone()];
    let failed = store.fail_runs(&worker(1), &runs, "not on the worker", at(10)).await.unwrap();
    assert_eq!(failed.changes.len(), 1, "{failed:?}");
    let change = &failed.changes[0];
    assert_eq!(change.run.id, r1[0].id);
    assert_eq!(change.run.status, RunStatus::Failed);
    assert_eq!(change.run.lease, 2, "the lease moved on: the worker is fenced");
    assert_eq!(change.run.error.as_deref(), Some("not on the worker"));
    assert!(change.retry.is_some());
    // The unknown Run is reported, not fatal.
    assert_eq!(failed.errors.len(), 1, "{failed:?}");
    assert_eq!(failed.errors[0].0, unknown);
    assert!(failed.errors[0].1.is_not_found(), "{}", failed.errors[0].1);

    assert_eq!(store.get_run(&r2[0].id).await.unwrap().status, RunStatus::Running);
    assert_eq!(store.get_run(&r3[0].id).await.unwrap().status, RunStatus::Completed);
    assert_eq!(store.get_run(&r4[0].id).await.unwrap().status, RunStatus::Running);
    let left: Vec<_> = store.active_runs_of_worker(&worker(1)).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(left, vec![r2[0].id.clone()]);
    store.finish_run(&r2[0].id, lease2, completed("2"), at(11)).await.unwrap();
    for t in [&t1, &t2, &t3, &t4] {
        assert_invariants(&*store, &t.id).await;
    }
}

/// A small deterministic random number generator for the concurrency tests.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

pub async fn concurrent_writers_keep_invariants<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut tasks = Vec::new();
    for n in 0..16u32 {
        let mut s = spec("echo");
        s.fan_out = 1 + n % 3;
        s.retry.max_attempts = 3;
        s.retry.initial_backoff_ms = 0;
        s.priority = (n % 4) as i32;
        tasks.push(create(&*store, s).await.0.id);
    }
    // Many tokio tasks race to assign, start, report output and finish
    // whatever is pending, until every Task has ended.
    let mut handles = Vec::new();
    for n in 0..24u64 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = XorShift::new(n + 1);
            let me = worker(n as u32);
            let mut idle = 0;
            while idle < 50 {
                let pending = store.pending_runs(T0, 8).await.unwrap();
                if pending.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                let run = &pending[rng.below(pending.len() as u64) as usize];
                let lease = match store.assign_run(&run.id, &me, 0, T0).await {
                    Ok(c) => c.run.lease,
                    Err(Error::LeaseConflict { .. } | Error::FailedPrecondition { .. }) => {
                        continue;
                    }
                    Err(e) => panic!("assign: {e}"),
                };
                // A concurrent cancel or a failing sibling shard may end the
                // Run at any point: then the store refuses what follows.
                if rng.below(4) > 0 {
                    match store.start_run(&run.id, lease, T0).await {
                        Ok(_) => {}
                        Err(Error::FailedPrecondition { .. }) => continue,
                        Err(e) => panic!("start: {e}"),
                    }
                }
                for seq in 1..=rng.below(3) {
                    match store.append_output(&run.id, lease, seq, format!("{n}:{seq}"), T0).await {
                        Ok(out) => assert!(matches!(out, AppendOutcome::Appended(_))),
                        Err(Error::FailedPrecondition { .. }) => {}
                        Err(e) => panic!("append: {e}"),
                    }
                }
                let outcome = if rng.below(3) == 0 { failed("unlucky") } else { completed(&format!("{n}")) };
                match store.finish_run(&run.id, lease, outcome, T0).await {
                    Ok(_) => {}
                    Err(Error::FailedPrecondition { .. }) => {}
                    Err(e) => panic!("finish: {e}"),
                }
            }
        }));
    }
    // Meanwhile: a canceller and a lister.
    {
        let store = store.clone();
        let victims = vec![tasks[3].clone(), tasks[7].clone()];
        handles.push(tokio::spawn(async move {
            for id in victims {
                match store.cancel_task(&id, "cancelled mid-flight", T0).await {
                    Ok(_) | Err(Error::FailedPrecondition { .. }) => {}
                    Err(e) => panic!("cancel: {e}"),
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut statuses = BTreeMap::new();
    for id in &tasks {
        let task = store.get_task(id).await.unwrap();
        assert!(task.status.is_terminal(), "task {id} is {}", task.status);
        *statuses.entry(task.status.as_str()).or_insert(0) += 1;
        assert_invariants(&*store, id).await;
    }
    assert!(store.pending_runs(T0, 100).await.unwrap().is_empty());
    for n in 0..24 {
        assert!(store.active_runs_of_worker(&worker(n)).await.unwrap().is_empty());
    }
    assert!(statuses.contains_key("COMPLETED"), "{statuses:?}");
}

pub async fn concurrent_finishes_of_one_run_exactly_one_wins<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    for round in 0..8 {
        let (task, runs) = create(&*store, spec("echo")).await;
        let lease = run_it(&*store, &runs[0], &worker(1), T0).await;
        let mut handles = Vec::new();
        for n in 0..4 {
            let store = store.clone();
            let id = runs[0].id.clone();
            handles.push(tokio::spawn(async move {
                let outcome = if (n + round) % 2 == 0 { completed("1") } else { failed("x") };
                store.finish_run(&id, lease, outcome, at(1)).await
            }));
        }
        let mut wins = 0;
        let mut retries = 0;
        for h in handles {
            match h.await.unwrap() {
                Ok(change) => {
                    wins += 1;
                    retries += usize::from(change.retry.is_some());
                }
                Err(Error::FailedPrecondition { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(wins, 1);
        let runs = store.list_runs(&task.id).await.unwrap();
        assert_eq!(runs.len(), 1 + retries);
        assert_invariants(&*store, &task.id).await;
    }
}

// ---------------------------------------------------------------- events

fn output_of(events: &[TaskEvent]) -> Vec<(String, u64, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            TaskEventKind::Output(c) => Some((c.run_id.to_string(), c.seq, c.data.clone())),
            TaskEventKind::Status { .. } => None,
        })
        .collect()
}

pub async fn output_is_deduplicated_and_ordered<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let (task, runs) = create(&*store, spec("echo")).await;
    let run = &runs[0];
    // Not assigned: takes no output.
    let err = store.append_output(&run.id, 0, 1, "x".into(), T0).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");

    let lease = run_it(&*store, run, &worker(1), T0).await;
    let events_before = all_events(&*store, &task.id).await.len() as u64;
    let first = store.append_output(&run.id, lease, 1, "Hel".into(), at(1)).await.unwrap();
    match &first {
        AppendOutcome::Appended(e) => {
            assert_eq!(e.seq, events_before + 1);
            assert_eq!(e.at, at(1));
        }
        AppendOutcome::Duplicate => panic!("first chunk is not a duplicate"),
    }
    store.append_output(&run.id, lease, 2, "lo, ".into(), at(2)).await.unwrap();
    assert_eq!(store.append_output(&run.id, lease, 1, "Hel".into(), at(3)).await.unwrap(), AppendOutcome::Duplicate);
    // Chunks may arrive out of order; each (run, seq) is stored once.
    store.append_output(&run.id, lease, 4, "!".into(), at(4)).await.unwrap();
    store.append_output(&run.id, lease, 3, "world".into(), at(5)).await.unwrap();
    assert_eq!(store.append_output(&run.id, lease, 4, "!".into(), at(6)).await.unwrap(), AppendOutcome::Duplicate);

    let err = store.append_output(&run.id, lease, 0, "zero".into(), at(6)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = store.append_output(&run.id, lease + 1, 5, "stale".into(), at(6)).await.unwrap_err();
    assert!(matches!(err, Error::LeaseConflict { .. }), "{err}");
    // An empty chunk stores nothing.
    assert_eq!(store.append_output(&run.id, lease, 5, String::new(), at(6)).await.unwrap(), AppendOutcome::Duplicate);

    let events = all_events(&*store, &task.id).await;
    let id = run.id.to_string();
    assert_eq!(
        output_of(&events),
        vec![
            (id.clone(), 1, "Hel".into()),
            (id.clone(), 2, "lo, ".into()),
            (id.clone(), 4, "!".into()),
            (id.clone(), 3, "world".into()),
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());

    store.finish_run(&run.id, lease, completed("1"), at(7)).await.unwrap();
    // A retransmission after the end is still a duplicate; new output is refused.
    assert_eq!(store.append_output(&run.id, lease, 2, "lo, ".into(), at(8)).await.unwrap(), AppendOutcome::Duplicate);
    let err = store.append_output(&run.id, lease, 5, "late".into(), at(8)).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");
    assert_invariants(&*store, &task.id).await;
}

/// The store remembers which chunks it holds as ranges of seqs; a Worker
/// that leaves gap after gap is refused before the Run's record grows. In
/// the terminal report, such a chunk is dropped (with the chunks after it)
/// and the Run still ends, as with output past the cap.
pub async fn output_with_too_many_gaps_is_refused<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let (task, runs) = create(&*store, spec("echo")).await;
    let run = &runs[0];
    let lease = run_it(&*store, run, &worker(1), T0).await;
    let max = crate::logic::SeqSet::MAX_RANGES as u64;
    // Seqs 1, 3, 5, …: one range each.
    for n in 0..max {
        store.append_output(&run.id, lease, 2 * n + 1, "x".into(), T0).await.unwrap();
    }
    let stored = output_of(&all_events(&*store, &task.id).await).len();
    let err = store.append_output(&run.id, lease, 2 * max + 1, "x".into(), T0).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { field: "seq", .. }), "{err}");
    assert_eq!(output_of(&all_events(&*store, &task.id).await).len(), stored, "nothing stored");
    // Filling a gap, or extending the last range, is still taken; so is a
    // retransmission as a duplicate.
    store.append_output(&run.id, lease, 2, "y".into(), T0).await.unwrap();
    store.append_output(&run.id, lease, 2 * max, "y".into(), T0).await.unwrap();
    assert_eq!(store.append_output(&run.id, lease, 3, "x".into(), T0).await.unwrap(), AppendOutcome::Duplicate);
    store.append_output(&run.id, lease, 2 * max + 3, "z".into(), T0).await.unwrap();
    assert_eq!(output_of(&all_events(&*store, &task.id).await).len(), stored + 3);
    assert_invariants(&*store, &task.id).await;

    // The set is full again. Trailing output: the chunk that extends the
    // last range is stored; the one that would open a gap, and the one
    // after it, are dropped; the Run ends.
    let trailing = vec![(2 * max + 4, "w".to_owned()), (2 * max + 6, "v".to_owned()), (2 * max + 7, "u".to_owned())];
    let change = store.finish_run_with_output(&run.id, lease, trailing, completed("1"), at(1)).await.unwrap();
    assert_eq!(change.run.status, RunStatus::Completed);
    assert_eq!(change.task.status, TaskStatus::Completed);
    assert_eq!(store.get_run(&run.id).await.unwrap().status, RunStatus::Completed);
    let output = output_of(&all_events(&*store, &task.id).await);
    assert_eq!(output.len(), stored + 4);
    assert_eq!(output.last(), Some(&(run.id.to_string(), 2 * max + 4, "w".to_owned())));
    assert_invariants(&*store, &task.id).await;
}

pub async fn output_is_capped_per_run<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig { max_output_bytes_per_run: 10, ..StoreConfig::default() }).await;
    let mut s = spec("echo");
    s.fan_out = 2;
    let (task, runs) = create(&*store, s).await;
    let l0 = run_it(&*store, &runs[0], &worker(1), T0).await;
    let l1 = run_it(&*store, &runs[1], &worker(2), T0).await;
    store.append_output(&runs[0].id, l0, 1, "12345".into(), T0).await.unwrap();
    store.append_output(&runs[0].id, l0, 2, "6789".into(), T0).await.unwrap();
    let err = store.append_output(&runs[0].id, l0, 3, "ab".into(), T0).await.unwrap_err();
    match err {
        Error::OutputLimit { run_id, limit_bytes } => {
            assert_eq!(run_id, runs[0].id);
            assert_eq!(limit_bytes, 10);
        }
        e => panic!("expected OutputLimit, got {e}"),
    }
    // Closed for good: even a chunk that would fit is refused, so the stored
    // output stays a prefix without gaps.
    let err = store.append_output(&runs[0].id, l0, 4, "c".into(), T0).await.unwrap_err();
    assert!(matches!(err, Error::OutputLimit { .. }), "{err}");
    // Already stored chunks are still recognised.
    assert_eq!(store.append_output(&runs[0].id, l0, 1, "12345".into(), T0).await.unwrap(), AppendOutcome::Duplicate);
    // The cap is per Run.
    store.append_output(&runs[1].id, l1, 1, "0123456789".into(), T0).await.unwrap();
    let events = all_events(&*store, &task.id).await;
    let out: Vec<String> = output_of(&events).into_iter().map(|o| o.2).collect();
    assert_eq!(out, vec!["12345", "6789", "0123456789"]);
    assert_invariants(&*store, &task.id).await;

    // A Task's own limit lowers the cap.
    let mut s = spec("echo");
    s.limits.output_limit_bytes = Some(4);
    let (_, runs) = create(&*store, s).await;
    let lease = run_it(&*store, &runs[0], &worker(3), T0).await;
    let err = store.append_output(&runs[0].id, lease, 1, "12345".into(), T0).await.unwrap_err();
    assert!(matches!(err, Error::OutputLimit { limit_bytes: 4, .. }), "{err}");
}

pub async fn create_assigned_places_the_run_in_the_same_step<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let mut s = spec("echo");
    s.idempotency_key = Some("placed-once".into());
    let task = new_task(s.clone(), T0);
    let seen = std::sync::Mutex::new(None);
    let out = store
        .create_task_assigned(task.clone(), &worker(1), Box::new(|c| *seen.lock().unwrap() = Some(c.clone())))
        .await
        .unwrap();
    let CreateOutcome::Created((created, Some(change))) = out else {
        panic!("expected a created, assigned task: {out:?}")
    };
    // Told once applied, with the same change.
    assert_eq!(seen.lock().unwrap().as_ref(), Some(&change));
    assert_eq!(created.id, task.id);
    assert_eq!(change.task, created);
    let run = &change.run;
    assert_eq!(
        (run.status, run.lease, run.attempt, run.worker_id.clone()),
        (RunStatus::Assigned, 1, 1, Some(worker(1)))
    );
    // Stored as one step: the Run as returned, not waiting for placement,
    // held by the Worker; the events of creation then assignment.
    assert_eq!(store.list_runs(&task.id).await.unwrap(), vec![run.clone()]);
    assert_eq!(store.get_task(&task.id).await.unwrap(), created);
    assert!(store.pending_runs(at(1), 10).await.unwrap().is_empty());
    assert_eq!(store.active_runs_of_worker(&worker(1)).await.unwrap(), vec![run.clone()]);
    let events = all_events(&*store, &task.id).await;
    assert!(matches!(events[0].kind, TaskEventKind::Status { task_status: TaskStatus::Pending, run_id: None, .. }));
    assert_eq!(events[1..], change.events[..]);
    assert_invariants(&*store, &task.id).await;
    // The lease works as any assignment's: reports with it go through.
    store.finish_run(&run.id, run.lease, completed("1"), at(2)).await.unwrap();
    assert_eq!(store.get_task(&task.id).await.unwrap().status, TaskStatus::Completed);

    // The same key again: the stored Task, nothing assigned.
    let never = || -> crate::OnApplied<'static> { Box::new(|c| panic!("nothing was applied, yet told of {c:?}")) };
    let again = store.create_task_assigned(new_task(s.clone(), at(3)), &worker(2), never()).await.unwrap();
    assert!(matches!(&again, CreateOutcome::Existing((t, None)) if t.id == task.id), "{again:?}");
    assert!(store.active_runs_of_worker(&worker(2)).await.unwrap().is_empty());
    let mut other = s.clone();
    other.priority = 7;
    let err = store.create_task_assigned(new_task(other, at(3)), &worker(2), never()).await.unwrap_err();
    assert!(matches!(err, Error::IdempotencyConflict { .. }), "{err}");

    // Fan-out Tasks are placed by the scheduler; nothing is written.
    let mut fan = spec("echo");
    fan.fan_out = 2;
    let fan = new_task(fan, T0);
    let err = store.create_task_assigned(fan.clone(), &worker(1), never()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(store.get_task(&fan.id).await.unwrap_err().is_not_found());
}

pub async fn finish_with_output_stores_output_and_end_together<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig { max_output_bytes_per_run: 10, ..StoreConfig::default() }).await;
    let (task, runs) = create(&*store, spec("echo")).await;
    let run = &runs[0];
    let lease = run_it(&*store, run, &worker(1), T0).await;
    store.append_output(&run.id, lease, 1, "ab".into(), at(1)).await.unwrap();
    let chunks = || vec![(1, "ab".to_owned()), (2, "cd".to_owned()), (3, "ef".to_owned())];

    // A stale lease: refused, no output stored, nothing changed.
    let err = refused_unchanged(
        &*store,
        &task.id,
        store.finish_run_with_output(&run.id, lease + 1, chunks(), completed("1"), at(2)),
    )
    .await;
    assert!(matches!(err, Error::LeaseConflict { .. }), "{err}");

    // Chunk 1 was stored before and is skipped; 2 and 3 come before the end.
    let change = store.finish_run_with_output(&run.id, lease, chunks(), completed("1"), at(2)).await.unwrap();
    assert_eq!(change.run.status, RunStatus::Completed);
    assert_eq!(change.task.status, TaskStatus::Completed);
    let events = all_events(&*store, &task.id).await;
    let id = run.id.to_string();
    assert_eq!(
        output_of(&events),
        vec![(id.clone(), 1, "ab".into()), (id.clone(), 2, "cd".into()), (id, 3, "ef".into())]
    );
    // The change returns exactly the events it appended, output first.
    assert_eq!(change.events[..], events[events.len() - change.events.len()..]);
    assert!(matches!(change.events[0].kind, TaskEventKind::Output(_)));
    assert!(matches!(change.events.last().unwrap().kind, TaskEventKind::Status { .. }));
    assert_invariants(&*store, &task.id).await;

    // A resend of the same report: refused as already finished; its chunks
    // are not stored twice.
    let err = refused_unchanged(
        &*store,
        &task.id,
        store.finish_run_with_output(&run.id, lease, chunks(), completed("1"), at(3)),
    )
    .await;
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err}");

    // Output past the cap: what fits is stored, the rest is dropped, and
    // the Run still ends.
    let (task, runs) = create(&*store, spec("echo")).await;
    let lease = run_it(&*store, &runs[0], &worker(2), T0).await;
    let big = vec![(1, "123456".to_owned()), (2, "7890x".to_owned()), (3, "y".to_owned())];
    let change = store.finish_run_with_output(&runs[0].id, lease, big, completed("2"), at(4)).await.unwrap();
    assert_eq!(change.run.status, RunStatus::Completed);
    let events = all_events(&*store, &task.id).await;
    let out: Vec<String> = output_of(&events).into_iter().map(|o| o.2).collect();
    assert_eq!(out, vec!["123456"]);
    assert_invariants(&*store, &task.id).await;
}

pub async fn events_since_resumes_from_a_cursor<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let (task, runs) = create(&*store, spec("echo")).await;
    let (other, other_runs) = create(&*store, spec("echo")).await;
    let lease = run_it(&*store, &runs[0], &worker(1), T0).await;
    let other_lease = run_it(&*store, &other_runs[0], &worker(2), T0).await;
    // Chunks of many sizes, one of them large: a backend may keep events in
    // records of any grouping, and a cursor must work across all of them.
    let chunk = |seq: u64| {
        let pad = if seq == 15 { 5000 } else { (seq as usize * 37) % 300 };
        format!("chunk {seq} {}", "x".repeat(pad))
    };
    // Every cursor, while the Task runs and after it ended.
    let check_every_cursor = |store: Arc<dyn Store>, task: TaskId| async move {
        let all = all_events(&*store, &task).await;
        for cursor in 0..=all.len() {
            let page = store.events_since(&task, cursor as u64, 5).await.unwrap();
            assert_eq!(page, all[cursor..(cursor + 5).min(all.len())], "after {cursor}");
        }
    };
    for seq in 1..=30 {
        store.append_output(&runs[0].id, lease, seq, chunk(seq), at(seq as i64)).await.unwrap();
        store.append_output(&other_runs[0].id, other_lease, seq, "other".into(), T0).await.unwrap();
        if seq % 10 == 0 {
            check_every_cursor(store.clone(), task.id.clone()).await;
        }
    }
    store.finish_run(&runs[0].id, lease, completed("1"), at(40)).await.unwrap();
    check_every_cursor(store.clone(), task.id.clone()).await;

    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let page = store.events_since(&task.id, cursor, 7).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        seen.extend(page);
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seen.len() as u64).collect::<Vec<_>>());
    assert!(seen.iter().all(|e| e.task_id == task.id));
    let chunks: Vec<String> = output_of(&seen).into_iter().map(|o| o.2).collect();
    let expected: Vec<String> = (1..=30).map(chunk).collect();
    assert_eq!(chunks, expected);
    assert!(matches!(seen.last().unwrap().kind, TaskEventKind::Status { task_status: TaskStatus::Completed, .. }));
    assert!(store.events_since(&task.id, cursor, 7).await.unwrap().is_empty());
    // From the middle, and with the default limit.
    let tail = store.events_since(&task.id, 10, 0).await.unwrap();
    assert_eq!(tail, seen[10..].to_vec());
    assert_invariants(&*store, &task.id).await;
    assert_invariants(&*store, &other.id).await;
}

pub async fn pending_runs_by_priority_and_not_before<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let prio = |p: i32| {
        let mut s = spec("echo");
        s.priority = p;
        s
    };
    let (_, low) = create(&*store, prio(-5)).await;
    let (_, zero) = create(&*store, prio(0)).await;
    let (_, high_a) = create(&*store, prio(10)).await;
    let (_, high_b) = create(&*store, prio(10)).await;
    let order: Vec<taskrun_core::RunId> = store.pending_runs(T0, 10).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(order, vec![high_a[0].id.clone(), high_b[0].id.clone(), zero[0].id.clone(), low[0].id.clone()]);
    assert_eq!(store.pending_runs(T0, 2).await.unwrap().len(), 2);
    assert!(store.pending_runs(at(-1), 10).await.unwrap().is_empty());

    // A retry waits for its backoff.
    let lease = run_it(&*store, &high_a[0], &worker(1), T0).await;
    let retry = store.finish_run(&high_a[0].id, lease, failed("x"), at(100)).await.unwrap().retry.unwrap();
    let ids_at = |t| {
        let store = store.clone();
        async move { store.pending_runs(t, 10).await.unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>() }
    };
    // Until then the lower priorities' due Runs come next: the retry waits
    // at the tail of its priority's queue, not at the head of the line.
    assert_eq!(ids_at(at(1099)).await, vec![high_b[0].id.clone(), zero[0].id.clone(), low[0].id.clone()]);
    assert_eq!(
        ids_at(at(1100)).await,
        vec![high_b[0].id.clone(), retry.id.clone(), zero[0].id.clone(), low[0].id.clone()]
    );
    // A limit that ends inside a lower priority's queue.
    let first_three: Vec<_> = store.pending_runs(at(1100), 3).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(first_three, vec![high_b[0].id.clone(), retry.id.clone(), zero[0].id.clone()]);
}

// ---------------------------------------------------------------- workers

fn worker_record(n: u32, slots: u32, now: Timestamp) -> Worker {
    Worker {
        info: WorkerInfo {
            id: worker(n),
            agents: BTreeSet::new(),
            digests: BTreeSet::new(),
            model_backends: Vec::new(),
            labels: [("zone".to_string(), format!("z{n}"))].into(),
            slots,
            version: "0.1.0".into(),
        },
        state: WorkerState::Connected,
        first_seen: now,
        last_seen: now,
    }
}

pub async fn overdue_runs_are_found_anywhere_in_the_queue<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    // Ahead in the queue: higher priority, no timeout.
    for _ in 0..5 {
        let mut s = spec("echo");
        s.priority = 10;
        create(&*store, s).await;
    }
    let mut s = spec("echo");
    s.limits.schedule_to_start_timeout_ms = Some(1000);
    let (task, runs) = create(&*store, s).await;
    assert!(!store.pending_runs(T0, 2).await.unwrap().iter().any(|r| r.task_id == task.id));
    assert!(store.overdue_runs(at(999), 10).await.unwrap().is_empty());
    assert_eq!(store.overdue_runs(at(1000), 10).await.unwrap(), runs);
    assert_eq!(store.overdue_runs(at(5000), 10).await.unwrap(), runs);

    // A retry is overdue its timeout after it became due.
    let lease = run_it(&*store, &runs[0], &worker(1), at(10)).await;
    assert!(store.overdue_runs(at(5000), 10).await.unwrap().is_empty(), "a running Run is not overdue");
    let change = store.finish_run(&runs[0].id, lease, failed("boom"), at(20)).await.unwrap();
    let retry = change.retry.expect("a retry");
    assert_eq!(retry.not_before, at(1020));
    assert!(store.overdue_runs(at(2019), 10).await.unwrap().is_empty());
    assert_eq!(store.overdue_runs(at(2020), 10).await.unwrap(), vec![retry]);
}

pub async fn workers_upsert_get_list_and_state<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    assert!(store.list_workers().await.unwrap().is_empty());
    let w2 = worker_record(2, 4, T0);
    let w1 = worker_record(1, 2, T0);
    store.upsert_worker(w2.clone()).await.unwrap();
    store.upsert_worker(w1.clone()).await.unwrap();
    assert_eq!(store.get_worker(&worker(1)).await.unwrap(), w1);
    assert_eq!(store.list_workers().await.unwrap(), vec![w1.clone(), w2.clone()]);

    let mut w1b = worker_record(1, 8, at(5));
    w1b.first_seen = T0;
    store.upsert_worker(w1b.clone()).await.unwrap();
    assert_eq!(store.get_worker(&worker(1)).await.unwrap(), w1b);
    assert_eq!(store.list_workers().await.unwrap().len(), 2);

    let drained = store.set_worker_state(&worker(1), WorkerState::Draining).await.unwrap();
    assert_eq!(drained.state, WorkerState::Draining);
    assert_eq!(drained.info, w1b.info);
    assert_eq!(store.get_worker(&worker(1)).await.unwrap(), drained);
    assert!(store.set_worker_state(&worker(9), WorkerState::Lost).await.unwrap_err().is_not_found());
    assert!(store.get_worker(&worker(9)).await.unwrap_err().is_not_found());
}

// ---------------------------------------------------------------- agents

fn manifest(name: &str, version: &str, component: &[u8], at: Timestamp) -> AgentManifest {
    AgentManifest {
        name: name.parse().unwrap(),
        version: version.parse().unwrap(),
        digest: AgentDigest::of(component),
        size: component.len() as u64,
        wit_world: taskrun_core::WIT_WORLD.into(),
        signer: "key-1".into(),
        published_at: at,
    }
}

pub async fn agents_and_blobs_by_digest<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let v1 = b"\0asm component one".to_vec();
    let m1 = manifest("summarize", "1.0.0", &v1, T0);
    let out = store.put_agent(m1.clone(), b"envelope-1".to_vec(), v1.clone()).await.unwrap();
    assert!(out.is_created());
    assert_eq!(out.get().manifest, m1);
    assert_eq!(out.get().envelope, b"envelope-1".to_vec());

    // The same build again: nothing changes, the first record is returned.
    let again = manifest("summarize", "1.0.0", &v1, at(99));
    let out = store.put_agent(again, b"envelope-1".to_vec(), v1.clone()).await.unwrap();
    assert!(!out.is_created());
    assert_eq!(out.get().manifest, m1);

    let v2 = b"\0asm component two".to_vec();
    let v10 = b"\0asm component ten".to_vec();
    let m2 = manifest("summarize", "1.2.0", &v2, at(1));
    let m10 = manifest("summarize", "1.10.0", &v10, at(2));
    let other_bytes = b"\0asm other".to_vec();
    let other = manifest("aaa-first", "0.1.0", &other_bytes, at(3));
    store.put_agent(m10.clone(), b"e10".to_vec(), v10.clone()).await.unwrap();
    store.put_agent(m2.clone(), b"e2".to_vec(), v2.clone()).await.unwrap();
    store.put_agent(other.clone(), b"eo".to_vec(), other_bytes.clone()).await.unwrap();

    let name: AgentName = "summarize".parse().unwrap();
    let latest = store.get_agent(&name, None).await.unwrap();
    assert_eq!(latest.manifest, m10, "versions order numerically");
    assert_eq!(latest.envelope, b"e10".to_vec());
    let exact = store.get_agent(&name, Some(AgentVersion::new(1, 2, 0))).await.unwrap();
    assert_eq!(exact.manifest, m2);
    assert!(store.get_agent(&name, Some(AgentVersion::new(9, 9, 9))).await.unwrap_err().is_not_found());
    assert!(store.get_agent(&"summ".parse().unwrap(), None).await.unwrap_err().is_not_found());
    assert!(store.get_agent(&"summarize-more".parse().unwrap(), None).await.unwrap_err().is_not_found());

    let by_digest = store.get_agent_by_digest(&m2.digest).await.unwrap();
    assert_eq!(by_digest.manifest, m2);
    assert_eq!(store.get_blob(&m2.digest).await.unwrap(), v2);
    assert_eq!(store.get_blob(&m1.digest).await.unwrap(), v1);
    let unknown = AgentDigest::of(b"nothing");
    assert!(store.get_blob(&unknown).await.unwrap_err().is_not_found());
    assert!(store.get_agent_by_digest(&unknown).await.unwrap_err().is_not_found());

    let listed: Vec<String> =
        store.list_agents().await.unwrap().into_iter().map(|m| format!("{}@{}", m.name, m.version)).collect();
    assert_eq!(listed, vec!["aaa-first@0.1.0", "summarize@1.0.0", "summarize@1.2.0", "summarize@1.10.0"]);

    // A component that is not what its manifest says is refused.
    let wrong = manifest("summarize", "2.0.0", b"something else", at(4));
    let err = store.put_agent(wrong, Vec::new(), b"not that".to_vec()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let mut wrong_size = manifest("summarize", "2.0.0", b"abc", at(4));
    wrong_size.size = 4;
    let err = store.put_agent(wrong_size, Vec::new(), b"abc".to_vec()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(store.list_agents().await.unwrap().len(), 4);
}

pub async fn agent_version_and_digest_conflicts<F, Fut>(make: F)
where
    F: Fn(StoreConfig) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let store = make(StoreConfig::default()).await;
    let v1 = b"build one".to_vec();
    let m1 = manifest("translate", "1.0.0", &v1, T0);
    store.put_agent(m1.clone(), b"e1".to_vec(), v1.clone()).await.unwrap();

    let v2 = b"build two".to_vec();
    let m2 = manifest("translate", "1.0.0", &v2, at(1));
    match store.put_agent(m2.clone(), b"e2".to_vec(), v2).await {
        Err(Error::AgentVersionConflict { existing, offered, .. }) => {
            assert_eq!(existing, m1.digest);
            assert_eq!(offered, m2.digest);
        }
        other => panic!("expected AgentVersionConflict, got {other:?}"),
    }
    assert!(store.get_blob(&m2.digest).await.unwrap_err().is_not_found());
    let stored = store.get_agent(&m1.name, Some(m1.version)).await.unwrap();
    assert_eq!(stored.manifest, m1);
    assert_eq!(stored.envelope, b"e1".to_vec());

    // The same component under another name or version is refused too.
    let m3 = manifest("translate", "1.0.1", &v1, at(2));
    let err = store.put_agent(m3, b"e3".to_vec(), v1.clone()).await.unwrap_err();
    assert!(matches!(err, Error::AgentDigestConflict { .. }), "{err}");
    assert_eq!(store.list_agents().await.unwrap(), vec![m1]);
}
