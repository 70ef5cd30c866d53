//! A Worker that connects again while its previous stream is still open on
//! the control plane (the network dropped, the old TCP connection stays
//! half-open; or the process restarted before its loss was noticed).
//!
//! Its hello lists the Runs it holds. The Runs the store gave it that the
//! hello does not list never reached it: they fail over and are retried,
//! instead of staying ASSIGNED and holding its slots. The old stream
//! ending later is not a loss: the Worker stays connected.

use std::time::Duration;

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_core::{TaskStatus, WorkerId, WorkerState};
use taskrun_proto::pb;
use taskrun_testkit::{Cluster, spec, status_of};

use crate::fencing::{RawWorker, completed, keep_alive};

fn retry_at_once() -> Option<pb::RetryPolicy> {
    Some(pb::RetryPolicy { max_attempts: Some(2), initial_backoff_ms: Some(1), max_backoff_ms: Some(1) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_fails_over_the_runs_its_hello_lacks_and_keeps_the_worker() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let cp = std::sync::Arc::clone(cluster.server.as_ref().expect("server").control_plane());
    let id: WorkerId = "w".parse().expect("worker id");

    // The first stream gets two assignments and then goes half-open: it
    // stays open (heartbeats keep it so) but the Worker reads no more.
    let (mut old, _) = RawWorker::connect_with(&cluster, "w", 2, vec![]).await;
    keep_alive(&old);
    let mut tasks = Vec::new();
    for input in ["\"kept\"", "\"lost\""] {
        let mut s = spec("echo", input);
        s.retry = retry_at_once();
        tasks.push(cluster.create(s).await);
    }
    let first = old.next_assignment().await;
    let second = old.next_assignment().await;
    let (kept, lost) = if first.task_id == tasks[0] { (first, second) } else { (second, first) };
    assert_eq!((kept.attempt, lost.attempt), (1, 1));

    // The Worker connects again with the same id; it holds only `kept`.
    let held = pb::InFlightRun {
        run_id: kept.run_id.clone(),
        lease: kept.lease,
        status: pb::RunStatus::Assigned.into(),
        ..Default::default()
    };
    let (mut new, accepted) = RawWorker::connect_with(&cluster, "w", 2, vec![held]).await;
    keep_alive(&new);
    assert_eq!(accepted.in_flight.len(), 1);
    assert_eq!(accepted.in_flight[0].verdict, i32::from(pb::InFlightVerdict::Continue), "{accepted:?}");

    // `lost` failed over (not stuck ASSIGNED) and its retry comes down the
    // new stream.
    let retry = new.next_assignment().await;
    assert_eq!((retry.task_id.as_str(), retry.attempt), (tasks[1].as_str(), 2));
    let got = cluster.get(&tasks[1]).await;
    assert_eq!(got.runs[0].status, i32::from(pb::RunStatus::Failed), "{got:#?}");
    let error = got.runs[0].error.clone().unwrap_or_default();
    assert!(error.contains("reconnected without"), "{error}");

    // The old stream was closed by the control plane when it was replaced;
    // the Worker's side of it ends now, after the new one registered.
    let closed = tokio::time::timeout(Duration::from_secs(5), old.rx.message()).await.expect("old stream ends");
    assert!(matches!(closed, Ok(None) | Err(_)), "{closed:?}");
    drop(old);
    // Longer than the heartbeat timeout: whichever way the old stream's
    // end is seen, it has been handled.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(cp.connected_workers(), vec![id.clone()]);
    assert_eq!(cp.store().get_worker(&id).await.expect("worker").state, WorkerState::Connected);

    new.send(completed(&kept, r#""kept""#));
    new.send(completed(&retry, r#""lost""#));
    for (task_id, runs) in [(&tasks[0], 1), (&tasks[1], 2)] {
        let got = cluster.wait_terminal(task_id, Duration::from_secs(10)).await;
        assert_eq!(status_of(&got), TaskStatus::Completed, "{got:#?}");
        assert_eq!(got.runs.len(), runs, "{got:#?}");
    }
}

/// A Worker process restarts before its old stream is seen as lost: its
/// hello is empty, so the Run it was given is retried at once rather than
/// after the old stream's heartbeat timeout — or never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_with_an_empty_hello_gets_its_run_retried() {
    let cluster = Cluster::start(StoreKind::Memory).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let cp = std::sync::Arc::clone(cluster.server.as_ref().expect("server").control_plane());
    let id: WorkerId = "w".parse().expect("worker id");
    let (mut old, _) = RawWorker::connect_with(&cluster, "w", 1, vec![]).await;
    keep_alive(&old);
    let mut s = spec("echo", "\"again\"");
    s.retry = retry_at_once();
    let task_id = cluster.create(s).await;
    let lost = old.next_assignment().await;

    let (mut new, accepted) = RawWorker::connect_with(&cluster, "w", 1, vec![]).await;
    keep_alive(&new);
    assert!(accepted.in_flight.is_empty());
    // Its only slot is free again: the retry is placed on it.
    let retry = new.next_assignment().await;
    assert_eq!((retry.task_id.as_str(), retry.attempt), (task_id.as_str(), 2));
    assert_ne!(retry.run_id, lost.run_id);

    // The old process's late report is fenced.
    new.send(completed(&lost, r#""stale""#));
    let ack = new.next_ack().await;
    assert_eq!(ack.outcome, i32::from(pb::RunAckOutcome::Fenced), "{ack:?}");
    new.send(completed(&retry, r#""again""#));
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed, "{got:#?}");
    assert_eq!(cp.store().get_worker(&id).await.expect("worker").state, WorkerState::Connected);
    drop(old);
}

/// A Worker reconnecting is told how far its Run's stored output goes
/// without a gap, not the highest chunk stored: a chunk lost before a
/// later one arrived is resent, and the output is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resends_output_from_its_first_gap() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let cp = std::sync::Arc::clone(cluster.server.as_ref().expect("server").control_plane());
    let task_id = cluster.create(spec("echo", "{}")).await;
    let (mut old, _) = RawWorker::connect_with(&cluster, "w", 1, vec![]).await;
    keep_alive(&old);
    let a = old.next_assignment().await;
    // Chunk 3 is lost on the way.
    for (seq, data) in [(1, "a"), (2, "b"), (4, "d")] {
        old.send(pb::run_client_message::Kind::Output(pb::RunOutputChunk {
            run_id: a.run_id.clone(),
            lease: a.lease,
            seq,
            data: data.into(),
        }));
    }
    let task: taskrun_core::TaskId = task_id.parse().expect("task id");
    let output_events = || async {
        let events = cp.store().events_since(&task, 0, 100).await.expect("events");
        events.iter().filter(|e| matches!(e.kind, taskrun_core::TaskEventKind::Output(_))).count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while output_events().await < 3 {
        assert!(std::time::Instant::now() < deadline, "the three chunks were not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let held = pb::InFlightRun {
        run_id: a.run_id.clone(),
        lease: a.lease,
        status: pb::RunStatus::Assigned.into(),
        last_output_seq: 4,
    };
    let (mut new, accepted) = RawWorker::connect_with(&cluster, "w", 1, vec![held]).await;
    keep_alive(&new);
    drop(old);
    assert_eq!(accepted.in_flight.len(), 1, "{accepted:?}");
    assert_eq!(accepted.in_flight[0].verdict, i32::from(pb::InFlightVerdict::Continue), "{accepted:?}");
    assert_eq!(accepted.in_flight[0].output_seq_acked, 2, "{accepted:?}");

    // It resends 3 and 4 (4 is a duplicate) and ends the Run.
    for (seq, data) in [(3, "c"), (4, "d")] {
        new.send(pb::run_client_message::Kind::Output(pb::RunOutputChunk {
            run_id: a.run_id.clone(),
            lease: a.lease,
            seq,
            data: data.into(),
        }));
    }
    new.send(completed(&a, r#""done""#));
    assert_eq!(new.next_ack().await.outcome, i32::from(pb::RunAckOutcome::Accepted));
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed, "{got:#?}");
    let mut seqs: Vec<u64> = cp
        .store()
        .events_since(&task, 0, 100)
        .await
        .expect("events")
        .iter()
        .filter_map(|e| match &e.kind {
            taskrun_core::TaskEventKind::Output(chunk) => Some(chunk.seq),
            _ => None,
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
}
