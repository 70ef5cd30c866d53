//! Tasks become Runs on real Workers over real gRPC, end to end.

use std::time::{Duration, Instant};

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_core::{RunStatus, TaskStatus};
use taskrun_proto::pb;
use tokio_stream::StreamExt;

use taskrun_testkit::{Cluster, spec, status_of, wait_for};

fn run_status(run: &pb::Run) -> RunStatus {
    taskrun_proto::run_status_from_wire("status", run.status).expect("run status")
}

fn retry(max_attempts: i32) -> Option<pb::RetryPolicy> {
    Some(pb::RetryPolicy { max_attempts: Some(max_attempts), initial_backoff_ms: Some(0), max_backoff_ms: Some(0) })
}

/// A Task runs on a Worker; a WatchTask client sees its status changes and
/// its output, in order, and the stream ends when the Task completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_runs_end_to_end_with_streamed_output() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let worker = cluster.add_worker(cluster.worker_config("w1")).await;

    let input = r#"{"text":"the quick brown fox jumps over the lazy dog, twice over"}"#;
    let task_id = cluster.create(spec("echo", input)).await;
    let mut watch = cluster
        .tasks()
        .await
        .watch_task(pb::WatchTaskRequest { task_id: task_id.clone(), after_cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut output = String::new();
    let mut statuses = Vec::new();
    let mut cursors = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(30), watch.next()).await.expect("watch stalled") {
        let event = item.expect("event").event.expect("event");
        cursors.push(event.cursor);
        match event.kind.expect("kind") {
            pb::task_event::Kind::Output(chunk) => output.push_str(&chunk.data),
            pb::task_event::Kind::Status(s) => statuses.push((s.task_status, s.run_status)),
        }
    }
    assert_eq!(output, input, "output chunks arrive complete and in order");
    assert!(cursors.windows(2).all(|w| w[1] == w[0] + 1), "cursors count up by one: {cursors:?}");
    let last = statuses.last().expect("a final status");
    assert_eq!(last.0, i32::from(pb::TaskStatus::Completed));
    let run_statuses: Vec<i32> = statuses.iter().filter_map(|(_, r)| *r).collect();
    // A quick Run goes from ASSIGNED straight to COMPLETED (RUNNING is
    // reported only for Runs that take a while).
    let expected: Vec<i32> = [pb::RunStatus::Assigned, pb::RunStatus::Completed].into_iter().map(i32::from).collect();
    assert_eq!(run_statuses, expected);

    let got = cluster.wait_terminal(&task_id, Duration::from_secs(5)).await;
    assert_eq!(got.task.as_ref().and_then(|t| t.result_json.as_deref()), Some(input));
    assert_eq!(got.runs.len(), 1);
    assert_eq!(got.runs[0].worker_id.as_deref(), Some("w1"));

    // A second Task of the same agent does not compile it again.
    let second = cluster.create(spec("echo", "[1,2,3]")).await;
    let got = cluster.wait_terminal(&second, Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed);
    assert_eq!(worker.sandbox().metrics().compiles, 1);

    // Watching a finished Task from a cursor replays only what follows it.
    let replay: Vec<_> = cluster
        .tasks()
        .await
        .watch_task(pb::WatchTaskRequest { task_id, after_cursor: cursors[cursors.len() - 3] })
        .await
        .expect("watch")
        .into_inner()
        .collect()
        .await;
    let replayed: Vec<i64> = replay.into_iter().map(|e| e.expect("event").event.expect("event").cursor).collect();
    assert_eq!(replayed, cursors[cursors.len() - 2..].to_vec());
}

/// Three Workers with different labels; each Task lands on the Worker whose
/// labels it requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_label_routing() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    for (id, k, v) in [("eu-1", "region", "eu"), ("us-1", "region", "us"), ("gpu-1", "gpu", "a100")] {
        let mut config = cluster.worker_config(id);
        config.labels.insert(k.to_owned(), v.to_owned());
        cluster.add_worker(config).await;
    }
    let mut wanted = Vec::new();
    for (want, k, v) in [("eu-1", "region", "eu"), ("us-1", "region", "us"), ("gpu-1", "gpu", "a100")] {
        for i in 0..3 {
            let mut s = spec("echo", &format!("{{\"i\":{i}}}"));
            s.worker_labels.insert(k.to_owned(), v.to_owned());
            wanted.push((cluster.create(s).await, want));
        }
    }
    for (task_id, want) in wanted {
        let got = cluster.wait_terminal(&task_id, Duration::from_secs(20)).await;
        assert_eq!(status_of(&got), TaskStatus::Completed);
        assert_eq!(got.runs[0].worker_id.as_deref(), Some(want), "task {task_id}");
    }
}

/// CancelTask stops a looping agent on its Worker within a second, and the
/// Task and its Run end CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_a_looping_agent() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("busy-loop", "1.0.0", artifacts::HOSTILE_BUSY_LOOP).await;
    let worker = cluster.add_worker(cluster.worker_config("w1")).await;
    let mut s = spec("busy-loop", "{}");
    s.limits = Some(pb::TaskLimits { run_timeout_ms: Some(60_000), ..Default::default() });
    let task_id = cluster.create(s).await;
    let mut client = cluster.tasks().await;
    wait_for_run_status(&mut client, &task_id, RunStatus::Running).await;
    assert_eq!(worker.active_runs().len(), 1);

    let asked = Instant::now();
    let cancelled = client
        .cancel_task(pb::CancelTaskRequest { task_id: task_id.clone(), reason: "test says stop".into() })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancelled.task.expect("task").status, i32::from(pb::TaskStatus::Cancelled));
    wait_for("the worker to stop the agent", Duration::from_secs(1), || worker.active_runs().is_empty()).await;
    let stopped_after = asked.elapsed();
    assert!(stopped_after < Duration::from_secs(1), "stopped after {stopped_after:?}");
    assert_eq!(worker.metrics().runs_finished, 1);

    let got = cluster.wait_terminal(&task_id, Duration::from_secs(1)).await;
    assert_eq!(status_of(&got), TaskStatus::Cancelled);
    assert_eq!(run_status(&got.runs[0]), RunStatus::Cancelled);

    // Cancelling a terminal Task is a clear FAILED_PRECONDITION.
    let again = client.cancel_task(pb::CancelTaskRequest { task_id, reason: String::new() }).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
}

async fn wait_for_run_status(client: &mut taskrun_testkit::TaskClient, task_id: &str, want: RunStatus) -> pb::Run {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = taskrun_testkit::get_task(client, task_id).await;
        if let Some(run) = got.runs.iter().find(|r| run_status(r) == want) {
            return run.clone();
        }
        assert!(Instant::now() < deadline, "no run of {task_id} reached {want}: {got:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A Worker that dies mid-Run loses the Run; the retry runs on another
/// Worker and the Task completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_run_is_retried_on_another_worker() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("sleep", "1.0.0", artifacts::HOSTILE_SLEEP).await;
    let first = cluster.add_worker(cluster.worker_config("doomed")).await;
    let mut s = spec("sleep", r#"{"ms":1500}"#);
    s.retry = retry(2);
    let task_id = cluster.create(s).await;
    let mut client = cluster.tasks().await;
    let run = wait_for_run_status(&mut client, &task_id, RunStatus::Running).await;
    assert_eq!(run.worker_id.as_deref(), Some("doomed"));

    // Only now does a second Worker exist, so the retry can only go there.
    cluster.add_worker(cluster.worker_config("survivor")).await;
    first.kill();

    let got = cluster.wait_terminal(&task_id, Duration::from_secs(20)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed, "{got:#?}");
    assert_eq!(got.runs.len(), 2);
    assert_eq!((got.runs[0].attempt, run_status(&got.runs[0])), (1, RunStatus::Failed));
    assert!(got.runs[0].error.as_deref().is_some_and(|e| e.contains("doomed")), "{:?}", got.runs[0].error);
    assert_eq!((got.runs[1].attempt, run_status(&got.runs[1])), (2, RunStatus::Completed));
    assert_eq!(got.runs[1].worker_id.as_deref(), Some("survivor"));
}

/// An agent that says its failure is permanent (`chat` given input without
/// a prompt) fails its Task on the first attempt, though the retry policy
/// allows three, and GetTask says why; the same agent failing for an
/// ordinary reason (no such ModelBackend) is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_not_retried() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("chat", "1.0.0", artifacts::CHAT).await;
    let mut config = cluster.worker_config("w1");
    config.model_backends =
        vec![taskrun_worker::model::BackendConfig::new("default", taskrun_worker::model::ProviderKind::Echo)];
    cluster.add_worker(config).await;

    let mut s = spec("chat", r#"{"question":"no prompt field"}"#);
    s.retry = retry(3);
    let task_id = cluster.create(s).await;
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(20)).await;
    assert_eq!(status_of(&got), TaskStatus::Failed, "{got:#?}");
    assert_eq!(got.runs.len(), 1, "no retry: {:#?}", got.runs);
    assert!(got.runs[0].failed_permanently);
    let error = got.task.as_ref().and_then(|t| t.error.clone()).unwrap_or_default();
    assert!(error.starts_with("agent error: bad input: missing field `prompt`"), "{error}");
    assert!(error.ends_with("(permanent: not retried)"), "{error}");

    let mut s = spec("chat", r#"{"prompt":"hi","backend":"absent"}"#);
    s.retry = retry(2);
    let task_id = cluster.create(s).await;
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(20)).await;
    assert_eq!(status_of(&got), TaskStatus::Failed, "{got:#?}");
    assert_eq!(got.runs.len(), 2, "retried once: {:#?}", got.runs);
    assert!(got.runs.iter().all(|r| !r.failed_permanently));
}

/// The control plane stops mid-flight; it comes back from sled, the Worker
/// reconnects and re-reports its Run, and the Tasks finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_mid_flight() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("sleep", "1.0.0", artifacts::HOSTILE_SLEEP).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let worker = cluster.add_worker(cluster.worker_config("w1")).await;
    let mut s = spec("sleep", r#"{"ms":1500}"#);
    s.retry = retry(1);
    let in_flight = cluster.create(s).await;
    wait_for_run_status(&mut cluster.tasks().await, &in_flight, RunStatus::Running).await;

    cluster.stop_server().await;
    wait_for("the worker to notice", Duration::from_secs(5), || !worker.is_connected()).await;
    cluster.start_server().await;
    // Created after the restart: needs the reconnected Worker too.
    let after = cluster.create(spec("echo", r#""after the restart""#)).await;

    for task_id in [&in_flight, &after] {
        let got = cluster.wait_terminal(task_id, Duration::from_secs(30)).await;
        assert_eq!(status_of(&got), TaskStatus::Completed, "{got:#?}");
        assert_eq!(got.runs.len(), 1, "no retry was needed: {got:#?}");
    }
    assert!(worker.metrics().sessions >= 2);
}

/// A Task nobody can run fails at its schedule-to-start timeout, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_task_fails_at_its_schedule_to_start_timeout() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    cluster.add_worker(cluster.worker_config("plain")).await;
    let mut s = spec("echo", "{}");
    s.worker_labels.insert("gpu".into(), "h100".into());
    s.limits = Some(pb::TaskLimits { schedule_to_start_timeout_ms: Some(300), ..Default::default() });
    let task_id = cluster.create(s).await;
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), TaskStatus::Failed);
    let error = got.task.and_then(|t| t.error).unwrap_or_default();
    assert!(error.contains("schedule-to-start") && error.contains("gpu=h100"), "{error}");
}

/// Runs that no Worker can take, first in the queue, do not keep the Runs
/// behind them from an idle Worker: a pass reads past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_behind_unplaceable_ones_are_placed() {
    let mut cluster = Cluster::start(StoreKind::Memory).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    // Created while no Worker is connected, so all of them queue (none is
    // placed at creation): first 24 Runs that need a label nobody carries,
    // then Tasks any Worker can run.
    let mut gpu = spec("echo", "{}");
    gpu.fan_out = Some(24);
    gpu.worker_labels.insert("gpu".into(), "a100".into());
    let stuck = cluster.create(gpu).await;
    let mut plain = Vec::new();
    for i in 0..6 {
        plain.push(cluster.create(spec("echo", &format!("{{\"i\":{i}}}"))).await);
    }
    // Four free slots: a pass first reads 4 + 16 = 20 Runs, all of them gpu.
    cluster.add_worker(cluster.worker_config("plain")).await;
    for task_id in &plain {
        let got = cluster.wait_terminal(task_id, Duration::from_secs(20)).await;
        assert_eq!(status_of(&got), TaskStatus::Completed, "{got:#?}");
    }
    let got = cluster.get(&stuck).await;
    assert_eq!(status_of(&got), TaskStatus::Pending);
    assert!(got.runs.iter().all(|r| run_status(r) == RunStatus::Pending), "{got:#?}");
}

/// A Task that a busy Worker could run is waiting, not unschedulable,
/// even though another Worker refuses its agent: at its schedule-to-start
/// timeout it fails saying every suitable Worker was busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_one_worker_refuses_waits_for_the_busy_one() {
    let mut cluster = Cluster::start(StoreKind::Memory).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    cluster.publish("busy-loop", "1.0.0", artifacts::HOSTILE_BUSY_LOOP).await;
    let mut one_slot = cluster.worker_config("one-slot");
    one_slot.slots = 1;
    cluster.add_worker(one_slot).await;
    let mut chat_only = cluster.worker_config("chat-only");
    chat_only.agents.insert("chat".parse().expect("agent name"));
    cluster.add_worker(chat_only).await;

    let mut busy = spec("busy-loop", "{}");
    busy.limits = Some(pb::TaskLimits { run_timeout_ms: Some(60_000), ..Default::default() });
    let looping = cluster.create(busy).await;
    let mut client = cluster.tasks().await;
    let run = wait_for_run_status(&mut client, &looping, RunStatus::Running).await;
    assert_eq!(run.worker_id.as_deref(), Some("one-slot"));

    let mut s = spec("echo", "{}");
    s.limits = Some(pb::TaskLimits { schedule_to_start_timeout_ms: Some(300), ..Default::default() });
    let task_id = cluster.create(s).await;
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), TaskStatus::Failed);
    let error = got.task.and_then(|t| t.error).unwrap_or_default();
    assert!(error.ends_with("every suitable worker was busy"), "{error}");

    client.cancel_task(pb::CancelTaskRequest { task_id: looping, reason: "done".into() }).await.expect("cancel");
}

/// Fetching, verifying and compiling an agent count against the Run's
/// deadline: a first Run with a 1 ms deadline on a Worker that has never
/// seen the agent ends at its deadline, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_while_the_agent_is_prepared_ends_the_run() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    cluster.add_worker(cluster.worker_config("w1")).await;
    let mut s = spec("echo", "{}");
    s.limits = Some(pb::TaskLimits { run_timeout_ms: Some(1), ..Default::default() });
    s.retry = retry(1);
    let task_id = cluster.create(s).await;
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(30)).await;
    assert_eq!(status_of(&got), TaskStatus::Failed, "{got:#?}");
    let error = got.task.and_then(|t| t.error).unwrap_or_default();
    // (What is left of the 1 ms when the Worker starts: 0 or 1 ms.)
    assert!(
        error.starts_with("timed out after ") && error.ends_with(" ms fetching and preparing the agent"),
        "{error}"
    );
}
