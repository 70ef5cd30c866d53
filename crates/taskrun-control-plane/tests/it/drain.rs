//! A Worker that drains (shuts down gracefully), seen from the control
//! plane, with Workers that speak RunService.Connect by hand: the notice
//! closes the Worker to new Runs, it is answered with Drain, nothing is
//! assigned to it after that answer, and the Run it holds still counts.

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_core::{TaskStatus, WorkerId, WorkerState};
use taskrun_proto::pb;
use taskrun_testkit::{Cluster, spec, status_of, wait_for};

use crate::fencing::{RawWorker, completed, keep_alive, now_ms};

use pb::run_client_message::Kind as Up;
use pb::run_server_message::Kind as Down;

const DEADLINE: i64 = 1_900_000_000_000;

fn state(cluster: &Cluster, worker: &str) -> Option<WorkerState> {
    let id: WorkerId = worker.parse().expect("worker id");
    cluster.server.as_ref().expect("control plane").control_plane().worker_state(&id)
}

fn notice() -> pb::WorkerDraining {
    pb::WorkerDraining { deadline_unix_ms: DEADLINE, reason: "SIGTERM".to_owned() }
}

fn hello(id: &str, draining: Option<pb::WorkerDraining>) -> pb::WorkerHello {
    let info = pb::WorkerInfo { worker_id: id.into(), slots: 4, version: "raw".into(), ..Default::default() };
    pb::WorkerHello { info: Some(info), in_flight: Vec::new(), sent_at_unix_ms: now_ms(), draining }
}

async fn next_drain(worker: &mut RawWorker) -> pb::Drain {
    match worker.next().await {
        Down::Drain(drain) => drain,
        other => panic!("expected Drain, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_is_answered_gets_no_new_runs_and_finishes_its_own() {
    let cluster = Cluster::start(StoreKind::Memory).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut draining = RawWorker::connect_with(&cluster, "draining", 4, vec![]).await.0;
    let beats = keep_alive(&draining);
    let held_task = cluster.create(spec("echo", "\"held\"")).await;
    let held = draining.next_assignment().await;

    draining.send(Up::Draining(notice()));
    let answer = next_drain(&mut draining).await;
    assert_eq!(answer.deadline_unix_ms, Some(DEADLINE), "{answer:?}");
    assert_eq!(state(&cluster, "draining"), Some(WorkerState::Draining));

    // Three free slots, but new Tasks go to the other Worker.
    let mut other = RawWorker::connect_with(&cluster, "other", 4, vec![]).await.0;
    let _other_beats = keep_alive(&other);
    for input in ["1", "2"] {
        let task_id = cluster.create(spec("echo", input)).await;
        let assignment = other.next_assignment().await;
        assert_eq!(assignment.task_id, task_id);
        other.send(completed(&assignment, input));
    }

    // The Run it held still counts; the next thing it hears is that Run's
    // ack: no assignment came after the answer.
    draining.send(completed(&held, "\"held\""));
    match draining.next().await {
        Down::Ack(ack) => assert_eq!(
            (ack.run_id.as_str(), ack.outcome),
            (held.run_id.as_str(), i32::from(pb::RunAckOutcome::Accepted))
        ),
        other => panic!("expected the ack, got {other:?}"),
    }
    let got = cluster.wait_terminal(&held_task, std::time::Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed);

    // It closes its stream: gone, with nothing to fail over.
    beats.abort();
    let _ = beats.await;
    drop(draining);
    wait_for("the drained worker to go", std::time::Duration::from_secs(10), || state(&cluster, "draining").is_none())
        .await;
    assert_eq!(got.runs.len(), 1);
}

/// A Worker that connects again while it drains says so in its hello: the
/// session never takes a Run, and Drain follows WorkerAccepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_that_says_draining_opens_a_closed_session() {
    let cluster = Cluster::start(StoreKind::Memory).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let (mut draining, _) =
        RawWorker::connect_hello(&cluster, hello("draining", Some(notice()))).await.expect("connect");
    let _beats = keep_alive(&draining);
    let answer = next_drain(&mut draining).await;
    assert_eq!(answer.deadline_unix_ms, Some(DEADLINE));
    assert_eq!(state(&cluster, "draining"), Some(WorkerState::Draining));

    let task_id = cluster.create(spec("echo", "3")).await;
    let mut other = RawWorker::connect_with(&cluster, "other", 4, vec![]).await.0;
    assert_eq!(other.next_assignment().await.task_id, task_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_drain_notice_in_a_hello_is_refused_naming_the_field() {
    let cluster = Cluster::start(StoreKind::Memory).await;
    let cases = [
        (pb::WorkerDraining { deadline_unix_ms: 0, ..notice() }, "missing hello.draining.deadline_unix_ms"),
        (
            pb::WorkerDraining { reason: "r".repeat(1025), ..notice() },
            "invalid hello.draining.reason \"1025 bytes\": longer than 1024 bytes",
        ),
    ];
    for (notice, message) in cases {
        let refused = RawWorker::connect_hello(&cluster, hello("w", Some(notice))).await.err().expect("refused");
        assert_eq!((refused.code(), refused.message()), (tonic::Code::InvalidArgument, message));
    }
    assert_eq!(state(&cluster, "w"), None);
}

/// A Run reported interrupted (stopped by its Worker's shutdown) is retried
/// without using up an attempt only when its Worker said it was draining;
/// from any other Worker the claim is an ordinary failure that counts, so
/// no Worker can keep a Task retrying for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_counts_unless_its_worker_drains() {
    let cluster = Cluster::start(StoreKind::Memory).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let one_attempt = || {
        let mut s = spec("echo", "{}");
        s.retry = Some(pb::RetryPolicy { max_attempts: Some(1), initial_backoff_ms: Some(0), max_backoff_ms: Some(0) });
        s
    };
    let interrupted = |a: &pb::RunAssignment| {
        Up::Status(pb::RunStatusUpdate {
            run_id: a.run_id.clone(),
            lease: a.lease,
            status: pb::RunStatus::Failed.into(),
            error: Some("worker shut down: the run was still going".to_owned()),
            nonce: format!("nonce-{}-{}", a.run_id, a.lease),
            interrupted: true,
            ..Default::default()
        })
    };

    // Not draining: the Task, allowed one attempt, fails.
    let task = cluster.create(one_attempt()).await;
    let mut liar = RawWorker::connect(&cluster, "not-draining").await;
    let liar_beats = keep_alive(&liar);
    let a = liar.next_assignment().await;
    liar.send(interrupted(&a));
    assert_eq!(liar.next_ack().await.outcome, i32::from(pb::RunAckOutcome::Accepted));
    let got = cluster.get(&task).await;
    assert_eq!(status_of(&got), TaskStatus::Failed, "{got:#?}");
    assert_eq!(got.runs.len(), 1);
    assert!(!got.runs[0].interrupted);
    // Gone, so that the next Task can only go to the draining one: wait
    // until the control plane has ended its session, or the next Task could
    // still be placed on it and fail with it.
    liar_beats.abort();
    drop(liar);
    wait_for("the liar's session to end", std::time::Duration::from_secs(10), || {
        state(&cluster, "not-draining").is_none()
    })
    .await;

    // Draining: the Run is retried, the Task goes on.
    let task = cluster.create(one_attempt()).await;
    let mut drainer = RawWorker::connect(&cluster, "draining").await;
    let _drainer_beats = keep_alive(&drainer);
    let a = drainer.next_assignment().await;
    drainer.send(Up::Draining(notice()));
    drainer.send(interrupted(&a));
    assert_eq!(drainer.next_ack().await.outcome, i32::from(pb::RunAckOutcome::Accepted));
    let got = cluster.get(&task).await;
    assert_eq!(status_of(&got), TaskStatus::Running, "{got:#?}");
    assert_eq!(got.runs.len(), 2, "retried: {:#?}", got.runs);
    assert!(got.runs[0].interrupted && !got.runs[1].interrupted);
}
