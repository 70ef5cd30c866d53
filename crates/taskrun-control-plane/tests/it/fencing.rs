//! Fencing: a Worker that lost its Run (and its lease) cannot change it.
//!
//! The Worker here is a plain gRPC client speaking RunService.Connect by
//! hand, so the test can make it misbehave the way a partitioned Worker
//! would: report on a Run after the control plane gave up on it.

use std::time::Duration;

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_core::TaskStatus;
use taskrun_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use taskrun_testkit::{Cluster, spec, status_of};

use pb::run_client_message::Kind as Up;
use pb::run_server_message::Kind as Down;

struct RawWorker {
    tx: mpsc::UnboundedSender<pb::RunClientMessage>,
    rx: tonic::Streaming<pb::RunServerMessage>,
}

impl RawWorker {
    async fn connect(cluster: &Cluster, id: &str) -> RawWorker {
        let (tx, rx) = mpsc::unbounded_channel();
        let info = pb::WorkerInfo { worker_id: id.into(), slots: 1, version: "raw".into(), ..Default::default() };
        let hello = pb::WorkerHello { info: Some(info), in_flight: vec![], sent_at_unix_ms: 0 };
        tx.send(pb::RunClientMessage { kind: Some(Up::Hello(hello)) }).expect("send hello");
        let mut client = pb::run_service_client::RunServiceClient::new(cluster.channel().await);
        let mut rx = client.connect(UnboundedReceiverStream::new(rx)).await.expect("connect").into_inner();
        match rx.message().await.expect("accepted").and_then(|m| m.kind) {
            Some(Down::Accepted(_)) => {}
            other => panic!("expected WorkerAccepted, got {other:?}"),
        }
        RawWorker { tx, rx }
    }

    fn send(&self, kind: Up) {
        self.tx.send(pb::RunClientMessage { kind: Some(kind) }).expect("send");
    }

    async fn next(&mut self) -> Down {
        let msg = tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await.expect("no message in 10 s");
        msg.expect("stream").and_then(|m| m.kind).expect("a message")
    }

    async fn next_assignment(&mut self) -> pb::RunAssignment {
        loop {
            if let Down::Assignment(a) = self.next().await {
                return a;
            }
        }
    }

    async fn next_ack(&mut self) -> pb::RunAck {
        loop {
            if let Down::Ack(a) = self.next().await {
                return a;
            }
        }
    }
}

fn completed(a: &pb::RunAssignment, result: &str) -> Up {
    Up::Status(pb::RunStatusUpdate {
        run_id: a.run_id.clone(),
        lease: a.lease,
        status: pb::RunStatus::Completed.into(),
        result_json: Some(result.into()),
        error: None,
        at_unix_ms: 0,
        nonce: format!("nonce-{}-{}", a.run_id, a.lease),
        last_output_seq: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_workers_completion_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut s = spec("echo", "{}");
    s.retry =
        Some(pb::RetryPolicy { max_attempts: Some(3), initial_backoff_ms: Some(60_000), max_backoff_ms: Some(60_000) });
    let task_id = cluster.create(s).await;

    let mut stale = RawWorker::connect(&cluster, "stale").await;
    let assignment = stale.next_assignment().await;
    assert_eq!((assignment.attempt, assignment.lease), (1, 1));

    // The Worker goes silent: the control plane declares it lost (after the
    // 600 ms heartbeat timeout) and fails the Run, fencing its lease.
    let got = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = cluster.tasks().await.get_task(pb::GetTaskRequest { task_id: task_id.clone() }).await;
        let got = got.expect("get").into_inner();
        if got.runs.len() == 2 {
            break got;
        }
    };
    assert_eq!(got.runs[0].status, i32::from(pb::RunStatus::Failed));
    let before = got.clone();

    // Back from its partition on a new stream, it reports the old Run done.
    let mut back = RawWorker::connect(&cluster, "stale").await;
    back.send(completed(&assignment, r#""too late""#));
    let ack = back.next_ack().await;
    assert_eq!(ack.outcome, i32::from(pb::RunAckOutcome::Fenced), "{ack:?}");

    // The Task is exactly as it was: RUNNING, waiting for its retry.
    let after = cluster.tasks().await.get_task(pb::GetTaskRequest { task_id }).await.expect("get").into_inner();
    assert_eq!(after, before);
    assert_eq!(status_of(&after), TaskStatus::Running);
    assert_eq!(after.task.and_then(|t| t.result_json), None);
    drop(stale);
}

/// The genuine holder of a lease completes the Run; a resend of the same
/// terminal report (its ack was lost) is a harmless duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_reports_are_acked_and_resends_are_duplicates() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let task_id = cluster.create(spec("echo", "{}")).await;
    let mut worker = RawWorker::connect(&cluster, "honest").await;
    let assignment = worker.next_assignment().await;
    worker.send(Up::Output(pb::RunOutputChunk {
        run_id: assignment.run_id.clone(),
        lease: 1,
        seq: 1,
        data: "a".into(),
    }));
    worker.send(Up::Output(pb::RunOutputChunk {
        run_id: assignment.run_id.clone(),
        lease: 1,
        seq: 1,
        data: "a".into(),
    }));
    worker.send(Up::Output(pb::RunOutputChunk {
        run_id: assignment.run_id.clone(),
        lease: 1,
        seq: 2,
        data: "b".into(),
    }));
    worker.send(completed(&assignment, r#""done""#));
    let ack = worker.next_ack().await;
    assert_eq!(ack.outcome, i32::from(pb::RunAckOutcome::Accepted), "{ack:?}");
    worker.send(completed(&assignment, r#""done""#));
    let ack = worker.next_ack().await;
    assert_eq!(ack.outcome, i32::from(pb::RunAckOutcome::Duplicate), "{ack:?}");

    let got = cluster.wait_terminal(&task_id, Duration::from_secs(5)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed);
    assert_eq!(got.task.and_then(|t| t.result_json).as_deref(), Some(r#""done""#));
    // The duplicated chunk was stored once.
    let events: Vec<_> = {
        use tokio_stream::StreamExt;
        cluster
            .tasks()
            .await
            .watch_task(pb::WatchTaskRequest { task_id, after_cursor: 0 })
            .await
            .expect("watch")
            .into_inner()
            .collect()
            .await
    };
    let output: String = events
        .into_iter()
        .filter_map(|e| match e.expect("event").event.and_then(|e| e.kind) {
            Some(pb::task_event::Kind::Output(c)) => Some(c.data),
            _ => None,
        })
        .collect();
    assert_eq!(output, "ab");
}
