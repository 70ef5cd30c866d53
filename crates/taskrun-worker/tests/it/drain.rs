//! A Worker's graceful drain, through a real control plane over real gRPC
//! (taskrun-testkit's Cluster): once it says it drains, it gets no new
//! Runs; the Runs it holds finish, or are stopped at the end of its grace
//! period and retried on another Worker; and the drain ends as soon as
//! nothing is in flight. The `sleep` agent makes a Run last (it sleeps in a
//! host call that a cancel or the Worker's shutdown interrupts).

use std::time::{Duration, Instant};

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_core::{WorkerId, WorkerState};
use taskrun_proto::pb;
use taskrun_testkit::{Cluster, spec, status_of, wait_for};
use taskrun_worker::{Drained, Worker, WorkerConfig};

const WAIT: Duration = Duration::from_secs(30);

async fn cluster(store: StoreKind) -> Cluster {
    let cluster = Cluster::start(store).await;
    cluster.publish("sleep", "1.0.0", artifacts::HOSTILE_SLEEP).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    cluster
}

fn config(cluster: &Cluster, id: &str, grace_secs: u64) -> WorkerConfig {
    let mut config = cluster.worker_config(id);
    config.shutdown_grace_secs = grace_secs;
    config
}

/// A `sleep` Task of `ms`, with `attempts` attempts and no backoff.
fn sleep_spec(ms: u64, attempts: i32) -> pb::TaskSpec {
    let mut spec = spec("sleep", &format!(r#"{{"ms": {ms}}}"#));
    spec.retry =
        Some(pb::RetryPolicy { max_attempts: Some(attempts), initial_backoff_ms: Some(0), max_backoff_ms: Some(0) });
    spec
}

fn state(cluster: &Cluster, worker: &str) -> Option<WorkerState> {
    let id: WorkerId = worker.parse().expect("worker id");
    cluster.server.as_ref().expect("control plane").control_plane().worker_state(&id)
}

/// Polls the Task until one of its Runs matches `attempt`, `status` and
/// `worker`; returns that Run.
async fn wait_run(cluster: &Cluster, task_id: &str, attempt: i32, status: pb::RunStatus, worker: &str) -> pb::Run {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = cluster.get(task_id).await;
        if let Some(run) = got
            .runs
            .iter()
            .find(|r| r.attempt == attempt && r.status == i32::from(status) && r.worker_id.as_deref() == Some(worker))
        {
            return run.clone();
        }
        assert!(Instant::now() < deadline, "no attempt {attempt} {status:?} on {worker}: {:#?}", got.runs);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts draining `worker` in the background, and waits until the control
/// plane has it as draining.
async fn start_drain(cluster: &Cluster, worker: &Worker) -> tokio::task::JoinHandle<Drained> {
    let drain = tokio::spawn({
        let worker = worker.clone();
        async move { worker.drain().await }
    });
    let id = worker.info().id.to_string();
    wait_for("the control plane to see the drain", WAIT, || state(cluster, &id) == Some(WorkerState::Draining)).await;
    drain
}

/// The Worker stopped: its `run` returned and the control plane let it go.
async fn wait_stopped(cluster: &Cluster, id: &str) {
    let index = cluster.workers.iter().position(|(w, _)| w.info().id.as_str() == id).expect("a worker of the cluster");
    wait_for("the worker's run to return", WAIT, || cluster.workers[index].1.is_finished()).await;
    wait_for("the control plane to let the worker go", WAIT, || state(cluster, id).is_none()).await;
    assert!(!cluster.workers[index].0.is_connected());
}

/// (a) The Run a draining Worker holds completes there; Tasks created once
/// the drain began go to the other Worker, though the draining one has
/// free slots (and would otherwise take its turn: it is as loaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_finishes_its_run_and_new_tasks_go_elsewhere() {
    let mut cluster = cluster(StoreKind::Memory).await;
    let w1 = cluster.add_worker(config(&cluster, "w1", 30)).await;
    let slow = cluster.create(sleep_spec(5000, 1)).await;
    wait_run(&cluster, &slow, 1, pb::RunStatus::Running, "w1").await;
    cluster.add_worker(config(&cluster, "w2", 30)).await;

    let drain = start_drain(&cluster, &w1).await;
    assert_eq!(w1.active_runs().len(), 1, "the sleep Run is still going");
    let mut quick = Vec::new();
    for n in 0..4 {
        quick.push(cluster.create(spec("echo", &format!("[{n}]"))).await);
    }
    for task_id in &quick {
        let got = cluster.wait_terminal(task_id, WAIT).await;
        assert_eq!(status_of(&got), taskrun_core::TaskStatus::Completed, "{:?}", got.runs);
        let workers: Vec<_> = got.runs.iter().map(|r| r.worker_id.as_deref()).collect();
        assert_eq!(workers, [Some("w2")], "a Task created during the drain");
    }

    let got = cluster.wait_terminal(&slow, WAIT).await;
    assert_eq!(status_of(&got), taskrun_core::TaskStatus::Completed, "{:?}", got.runs);
    assert_eq!(got.runs.len(), 1, "not retried: {:?}", got.runs);
    assert_eq!(got.runs[0].worker_id.as_deref(), Some("w1"));
    let result = got.task.as_ref().and_then(|t| t.result_json.as_deref()).expect("result");
    assert!(result.starts_with(r#"{"slept_ms":"#), "{result}");

    let drained = tokio::time::timeout(WAIT, drain).await.expect("the drain ends").expect("drain task");
    assert_eq!(drained, Drained { runs_stopped: 0, reports_unacked: 0 });
    wait_stopped(&cluster, "w1").await;
}

/// (b) A Run still going when the grace period ends is stopped, reported
/// FAILED with the Worker's shutdown as the reason, marked interrupted,
/// and retried on the other Worker without using up an attempt: its Task
/// allows one attempt only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_outlives_the_grace_period_fails_and_is_retried_elsewhere() {
    let mut cluster = cluster(StoreKind::Memory).await;
    let w1 = cluster.add_worker(config(&cluster, "w1", 1)).await;
    let slow = cluster.create(sleep_spec(600_000, 1)).await;
    wait_run(&cluster, &slow, 1, pb::RunStatus::Running, "w1").await;
    cluster.add_worker(config(&cluster, "w2", 30)).await;

    let drained = tokio::time::timeout(WAIT, w1.drain()).await.expect("the drain ends after its grace period");
    assert_eq!(drained, Drained { runs_stopped: 1, reports_unacked: 0 });
    wait_stopped(&cluster, "w1").await;

    let first = wait_run(&cluster, &slow, 1, pb::RunStatus::Failed, "w1").await;
    assert_eq!(
        first.error.as_deref(),
        Some("worker w1 shut down: the run was still going when its shutdown grace period of 1 s ended")
    );
    assert_eq!(first.lease, 1, "reported by w1 under its lease, not failed over as lost");
    assert!(first.interrupted && !first.failed_permanently);
    let second = wait_run(&cluster, &slow, 2, pb::RunStatus::Running, "w2").await;
    assert!(!second.interrupted);
    assert_eq!(status_of(&cluster.get(&slow).await), taskrun_core::TaskStatus::Running);
}

/// (c) The drain ends as soon as nothing is in flight, long before its
/// grace period (an hour here): at once for an idle Worker, and for a busy
/// one when its last Run ends (cancelled here, and reported CANCELLED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_once_nothing_is_in_flight() {
    let mut cluster = cluster(StoreKind::Memory).await;
    let idle = cluster.add_worker(config(&cluster, "idle", 3600)).await;
    let drained = tokio::time::timeout(WAIT, idle.drain()).await.expect("an idle worker drains at once");
    assert_eq!(drained, Drained { runs_stopped: 0, reports_unacked: 0 });
    wait_stopped(&cluster, "idle").await;

    let busy = cluster.add_worker(config(&cluster, "busy", 3600)).await;
    let slow = cluster.create(sleep_spec(3_600_000, 1)).await;
    wait_run(&cluster, &slow, 1, pb::RunStatus::Running, "busy").await;
    let drain = start_drain(&cluster, &busy).await;
    assert!(!drain.is_finished(), "a Run is in flight");
    assert!(busy.is_connected());

    let request = pb::CancelTaskRequest { task_id: slow.clone(), reason: "enough".to_owned() };
    cluster.tasks().await.cancel_task(request).await.expect("cancel");
    let drained = tokio::time::timeout(WAIT, drain).await.expect("the drain ends").expect("drain task");
    assert_eq!(drained, Drained { runs_stopped: 0, reports_unacked: 0 });
    wait_stopped(&cluster, "busy").await;
    let got = cluster.wait_terminal(&slow, WAIT).await;
    assert_eq!(status_of(&got), taskrun_core::TaskStatus::Cancelled);
    assert_eq!(got.runs[0].status, i32::from(pb::RunStatus::Cancelled), "{:?}", got.runs);
}

/// A Worker whose stream breaks while it drains (here: the control plane
/// restarts) says so in its new hello: it stays closed to new Runs, and
/// keeps the Run it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_reconnects_while_draining_gets_no_new_runs() {
    let mut cluster = cluster(StoreKind::Sled).await;
    let w1 = cluster.add_worker(config(&cluster, "w1", 3600)).await;
    let slow = cluster.create(sleep_spec(3_600_000, 1)).await;
    wait_run(&cluster, &slow, 1, pb::RunStatus::Running, "w1").await;
    let drain = start_drain(&cluster, &w1).await;

    cluster.stop_server().await;
    cluster.start_server().await;
    wait_for("w1 to come back, draining", WAIT, || state(&cluster, "w1") == Some(WorkerState::Draining)).await;
    cluster.add_worker(config(&cluster, "w2", 30)).await;
    for n in 0..3 {
        let task_id = cluster.create(spec("echo", &format!("[{n}]"))).await;
        let got = cluster.wait_terminal(&task_id, WAIT).await;
        assert_eq!(got.runs.iter().map(|r| r.worker_id.as_deref()).collect::<Vec<_>>(), [Some("w2")]);
    }
    let run = wait_run(&cluster, &slow, 1, pb::RunStatus::Running, "w1").await;
    assert_eq!(run.lease, 1, "the Run went on across the reconnect");
    assert!(!drain.is_finished());

    let request = pb::CancelTaskRequest { task_id: slow.clone(), reason: "enough".to_owned() };
    cluster.tasks().await.cancel_task(request).await.expect("cancel");
    let drained = tokio::time::timeout(WAIT, drain).await.expect("the drain ends").expect("drain task");
    assert_eq!(drained, Drained { runs_stopped: 0, reports_unacked: 0 });
}
