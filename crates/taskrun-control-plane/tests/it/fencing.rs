//! Fencing and the reporting protocol: a Worker that lost its Run (and its lease) cannot change it, reports are acked, and placement serves the queue first.
//!
//! The Worker here is a plain gRPC client speaking RunService.Connect by
//! hand, so the test can make it misbehave the way a partitioned Worker
//! would: report on a Run after the control plane gave up on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_core::TaskStatus;
use taskrun_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use taskrun_testkit::{Cluster, spec, status_of};

use pb::run_client_message::Kind as Up;
use pb::run_server_message::Kind as Down;

/// Heartbeats on `worker`'s stream, listing the Runs it holds, as a
/// Worker must (the test cluster's heartbeat timeout is 600 ms, which a
/// busy machine can pass between two steps of a test), until that stream
/// is gone or the task is aborted.
pub(crate) fn keep_alive(worker: &RawWorker) -> tokio::task::JoinHandle<()> {
    let (tx, held) = (worker.tx.clone(), Arc::clone(&worker.held));
    tokio::spawn(async move {
        loop {
            let active_runs = held
                .lock()
                .expect("held")
                .iter()
                .map(|(run_id, &lease)| pb::RunLease { run_id: run_id.clone(), lease })
                .collect();
            let beat = pb::WorkerHeartbeat { free_slots: 0, active_runs, ..Default::default() };
            if tx.send(pb::RunClientMessage { kind: Some(Up::Heartbeat(beat)) }).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// This machine's clock, as a hello carries it.
pub(crate) fn now_ms() -> i64 {
    taskrun_core::Clock::now(&taskrun_core::SystemClock).as_millis()
}

pub(crate) struct RawWorker {
    pub(crate) tx: mpsc::UnboundedSender<pb::RunClientMessage>,
    pub(crate) rx: tonic::Streaming<pb::RunServerMessage>,
    /// The Runs it holds, as its heartbeats list them: each assignment it
    /// has read, until it reads that Run's ack or a CancelRun for it.
    pub(crate) held: Arc<Mutex<HashMap<String, i64>>>,
}

impl RawWorker {
    pub(crate) async fn connect(cluster: &Cluster, id: &str) -> RawWorker {
        RawWorker::connect_with(cluster, id, 1, vec![]).await.0
    }

    /// Connects with `slots` and a hello that lists `in_flight`; returns
    /// the WorkerAccepted too.
    pub(crate) async fn connect_with(
        cluster: &Cluster,
        id: &str,
        slots: i32,
        in_flight: Vec<pb::InFlightRun>,
    ) -> (RawWorker, pb::WorkerAccepted) {
        let info = pb::WorkerInfo { worker_id: id.into(), slots, version: "raw".into(), ..Default::default() };
        let hello = pb::WorkerHello { info: Some(info), in_flight, sent_at_unix_ms: now_ms(), draining: None };
        RawWorker::connect_hello(cluster, hello).await.expect("connect")
    }

    /// Connects with `hello`; the control plane's refusal, if it refuses.
    pub(crate) async fn connect_hello(
        cluster: &Cluster,
        hello: pb::WorkerHello,
    ) -> Result<(RawWorker, pb::WorkerAccepted), tonic::Status> {
        // It holds what its hello says it holds (until told to stop).
        let held: Arc<Mutex<HashMap<String, i64>>> =
            Arc::new(Mutex::new(hello.in_flight.iter().map(|r| (r.run_id.clone(), r.lease)).collect()));
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(pb::RunClientMessage { kind: Some(Up::Hello(hello)) }).expect("send hello");
        let mut client = pb::run_service_client::RunServiceClient::new(cluster.channel().await);
        let mut rx = client.connect(UnboundedReceiverStream::new(rx)).await?.into_inner();
        match rx.message().await?.and_then(|m| m.kind) {
            Some(Down::Accepted(accepted)) => {
                for verdict in &accepted.in_flight {
                    if verdict.verdict != i32::from(pb::InFlightVerdict::Continue) {
                        held.lock().expect("held").remove(&verdict.run_id);
                    }
                }
                Ok((RawWorker { tx, rx, held }, accepted))
            }
            other => panic!("expected WorkerAccepted, got {other:?}"),
        }
    }

    pub(crate) fn send(&self, kind: Up) {
        self.tx.send(pb::RunClientMessage { kind: Some(kind) }).expect("send");
    }

    pub(crate) async fn next(&mut self) -> Down {
        let msg = tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await.expect("no message in 10 s");
        let down = msg.expect("stream").and_then(|m| m.kind).expect("a message");
        let mut held = self.held.lock().expect("held");
        match &down {
            Down::Assignment(a) => {
                held.insert(a.run_id.clone(), a.lease);
            }
            Down::Ack(pb::RunAck { run_id, .. }) | Down::Cancel(pb::CancelRun { run_id, .. }) => {
                held.remove(run_id);
            }
            _ => {}
        }
        drop(held);
        down
    }

    pub(crate) async fn next_assignment(&mut self) -> pb::RunAssignment {
        loop {
            if let Down::Assignment(a) = self.next().await {
                return a;
            }
        }
    }

    pub(crate) async fn next_ack(&mut self) -> pb::RunAck {
        loop {
            if let Down::Ack(a) = self.next().await {
                return a;
            }
        }
    }

    pub(crate) async fn next_cancel(&mut self) -> pb::CancelRun {
        loop {
            if let Down::Cancel(cancel) = self.next().await {
                return cancel;
            }
        }
    }
}

pub(crate) fn completed(a: &pb::RunAssignment, result: &str) -> Up {
    Up::Status(pb::RunStatusUpdate {
        run_id: a.run_id.clone(),
        lease: a.lease,
        status: pb::RunStatus::Completed.into(),
        result_json: Some(result.into()),
        error: None,
        at_unix_ms: 0,
        nonce: format!("nonce-{}-{}", a.run_id, a.lease),
        last_output_seq: 0,
        trailing_output: Vec::new(),
        permanent: false,
        interrupted: false,
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
        let got = cluster.get(&task_id).await;
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
    let after = cluster.get(&task_id).await;
    assert_eq!(after, before);
    assert_eq!(status_of(&after), TaskStatus::Running);
    assert_eq!(after.task.and_then(|t| t.result_json), None);
    drop(stale);
}

/// The output a finished Task's event log holds, in order.
async fn stored_output(cluster: &Cluster, task_id: String) -> String {
    let events: Vec<_> = cluster
        .tasks()
        .await
        .watch_task(pb::WatchTaskRequest { task_id, after_cursor: 0 })
        .await
        .expect("watch")
        .into_inner()
        .collect()
        .await;
    events
        .into_iter()
        .filter_map(|e| match e.expect("event").event.and_then(|e| e.kind) {
            Some(pb::task_event::Kind::Output(chunk)) => Some(chunk.data),
            _ => None,
        })
        .collect()
}

/// A cluster on sled with `echo` published, one echo Task, and a raw
/// Worker named `name` holding its assignment.
async fn assigned(name: &str) -> (Cluster, String, RawWorker, pb::RunAssignment) {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let task_id = cluster.create(spec("echo", "{}")).await;
    let mut worker = RawWorker::connect(&cluster, name).await;
    let assignment = worker.next_assignment().await;
    (cluster, task_id, worker, assignment)
}

/// The genuine holder of a lease completes the Run; a resend of the same
/// terminal report (its ack was lost) is a harmless duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_reports_are_acked_and_resends_are_duplicates() {
    let (cluster, task_id, mut worker, assignment) = assigned("honest").await;
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
    let output = stored_output(&cluster, task_id).await;
    assert_eq!(output, "ab");
}

/// A terminal report may carry the Run's last output: it is stored with
/// the Run's end, in order after the chunks sent on their own, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_output_is_stored_with_the_end_of_the_run() {
    let (cluster, task_id, mut worker, assignment) = assigned("trailing").await;
    worker.send(Up::Output(pb::RunOutputChunk {
        run_id: assignment.run_id.clone(),
        lease: 1,
        seq: 1,
        data: "a".into(),
    }));
    let with_trailing = || {
        let Up::Status(mut update) = completed(&assignment, r#""done""#) else {
            unreachable!("completed() is a status")
        };
        update.trailing_output =
            vec![pb::RunOutputPiece { seq: 2, data: "b".into() }, pb::RunOutputPiece { seq: 3, data: "c".into() }];
        update.last_output_seq = 3;
        Up::Status(update)
    };
    worker.send(with_trailing());
    let ack = worker.next_ack().await;
    assert_eq!(ack.outcome, i32::from(pb::RunAckOutcome::Accepted), "{ack:?}");
    // A resend (the ack was lost) stores nothing twice.
    worker.send(with_trailing());
    let ack = worker.next_ack().await;
    assert_eq!(ack.outcome, i32::from(pb::RunAckOutcome::Duplicate), "{ack:?}");

    let got = cluster.wait_terminal(&task_id, Duration::from_secs(5)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed);
    let events: Vec<pb::TaskEvent> = {
        use tokio_stream::StreamExt;
        let stream = cluster.tasks().await.watch_task(pb::WatchTaskRequest { task_id, after_cursor: 0 }).await;
        stream.expect("watch").into_inner().map(|e| e.expect("event").event.expect("event")).collect().await
    };
    let kinds: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::task_event::Kind::Output(c)) => Some(format!("output {}", c.data)),
            Some(pb::task_event::Kind::Status(s)) if s.run_id.is_some() => Some("run status".to_owned()),
            _ => None,
        })
        .collect();
    // The output comes before the Run's terminal status event.
    assert_eq!(
        kinds.iter().filter(|k| k.starts_with("output")).collect::<Vec<_>>(),
        ["output a", "output b", "output c"]
    );
    let last_output = kinds.iter().rposition(|k| k.starts_with("output")).expect("output");
    assert!(kinds[last_output + 1..].iter().any(|k| k == "run status"), "{kinds:?}");
}

/// A terminal report whose trailing output would leave more gaps in the
/// Run's seqs than the store keeps: the output past the limit is dropped,
/// as output past the Run's byte cap is, and the Run still ends (it is not
/// left active for a Worker that cannot send anything better).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_output_past_the_gap_limit_is_dropped_and_the_run_ends() {
    let (cluster, task_id, mut worker, assignment) = assigned("gaps").await;
    let Up::Status(mut update) = completed(&assignment, r#""done""#) else { unreachable!("completed() is a status") };
    update.trailing_output = (0..300).map(|n| pb::RunOutputPiece { seq: 2 * n + 1, data: "x".into() }).collect();
    update.last_output_seq = 599;
    worker.send(Up::Status(update));
    let ack = worker.next_ack().await;
    assert_eq!(ack.outcome, i32::from(pb::RunAckOutcome::Accepted), "{ack:?}");
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed, "{got:?}");
    assert_eq!(got.task.as_ref().and_then(|t| t.result_json.as_deref()), Some(r#""done""#));
    let store = cluster.server.as_ref().expect("server").control_plane().store().clone();
    let events = store.events_since(&task_id.parse().expect("id"), 0, 0).await.expect("events");
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            taskrun_core::TaskEventKind::Output(chunk) => Some(chunk.seq),
            _ => None,
        })
        .collect();
    // The first 256 ranges (seqs 1, 3, …, 511) are kept; nothing after.
    assert_eq!(seqs, (0..256).map(|n| 2 * n + 1).collect::<Vec<u64>>());
}

/// A Task created while a Worker has a free slot is placed in the write
/// that creates it; one created while every slot is taken waits in the
/// queue, and the queue is served in order before newer Tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_placed_at_creation_only_when_nothing_waits() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let stats = || cluster.server.as_ref().expect("server").control_plane().placement_stats();
    let mut worker = RawWorker::connect(&cluster, "one-slot").await;

    let a = cluster.create(spec("echo", r#""a""#)).await;
    let first = worker.next_assignment().await;
    assert_eq!(first.task_id, a);
    assert_eq!((stats().at_creation, stats().by_scheduler), (1, 0));

    // The only slot is taken: B waits; the scheduler sees it waiting.
    let b = cluster.create(spec("echo", r#""b""#)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The slot frees, and C arrives at once: B is served first.
    worker.send(completed(&first, r#""a""#));
    let c = cluster.create(spec("echo", r#""c""#)).await;
    let second = worker.next_assignment().await;
    assert_eq!(second.task_id, b, "the waiting Task goes first");
    worker.send(completed(&second, r#""b""#));
    let third = worker.next_assignment().await;
    assert_eq!(third.task_id, c);
    worker.send(completed(&third, r#""c""#));
    for id in [&a, &b, &c] {
        assert_eq!(status_of(&cluster.wait_terminal(id, Duration::from_secs(5)).await), TaskStatus::Completed);
    }
    assert_eq!(stats().at_creation, 1, "{:?}", stats());
    assert_eq!(stats().by_scheduler, 2, "{:?}", stats());
}

/// A waiting Task that no connected Worker could take at all is not in
/// line for any slot: it does not stop new Tasks being placed at creation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_worker_suits_does_not_hold_back_new_ones() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let stats = || cluster.server.as_ref().expect("server").control_plane().placement_stats();
    let mut worker = RawWorker::connect(&cluster, "no-gpu").await;

    let mut gpu = spec("echo", r#""gpu""#);
    gpu.worker_labels.insert("gpu".into(), "h100".into());
    let stuck = cluster.create(gpu).await;
    // Let a scheduling pass see it and leave it waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let a = cluster.create(spec("echo", r#""a""#)).await;
    let first = worker.next_assignment().await;
    assert_eq!(first.task_id, a);
    assert_eq!(stats().at_creation, 1, "{:?}", stats());
    worker.send(completed(&first, r#""a""#));
    assert_eq!(status_of(&cluster.wait_terminal(&a, Duration::from_secs(5)).await), TaskStatus::Completed);
    let got = cluster.get(&stuck).await;
    assert_eq!(status_of(&got), TaskStatus::Pending);
}

/// A Task deep in a backlog still fails at its schedule-to-start timeout:
/// timeouts are found by deadline, not by reading the queue from its head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_deep_in_the_queue_fails_at_its_schedule_to_start_timeout() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut worker = RawWorker::connect(&cluster, "busy").await;
    // Keep the Worker alive (connected and busy) throughout.
    let heartbeats = keep_alive(&worker);
    let first = cluster.create(spec("echo", "0")).await;
    assert_eq!(worker.next_assignment().await.task_id, first);
    // The only slot stays taken; 40 Tasks queue ahead of the one with a
    // timeout (a scheduling pass reads about free slots + 16 Runs).
    for i in 1..=40 {
        let mut s = spec("echo", &i.to_string());
        s.priority = 5;
        cluster.create(s).await;
    }
    let mut late = spec("echo", "\"late\"");
    late.limits = Some(pb::TaskLimits { schedule_to_start_timeout_ms: Some(300), ..Default::default() });
    let late = cluster.create(late).await;
    let got = cluster.wait_terminal(&late, Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), TaskStatus::Failed);
    let error = got.task.and_then(|t| t.error).unwrap_or_default();
    assert!(error.contains("schedule-to-start") && error.contains("busy"), "{error}");
    heartbeats.abort();
}

/// A Worker sends output for a Run assigned to another Worker, with the
/// right lease (leases are small counters, easy to guess): it is dropped,
/// and the real Worker's output with the same seq is what the Task keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_for_another_workers_run_is_dropped() {
    let (cluster, task_id, holder, assignment) = assigned("holder").await;
    let mut intruder = RawWorker::connect(&cluster, "intruder").await;
    let chunk = |data: &str| {
        Up::Output(pb::RunOutputChunk {
            run_id: assignment.run_id.clone(),
            lease: assignment.lease,
            seq: 1,
            data: data.into(),
        })
    };
    intruder.send(chunk("forged"));
    // A message after it on the same stream: once it is answered, the
    // forged chunk has been handled.
    intruder.send(completed(&assignment, r#""forged""#));
    let ack = intruder.next_ack().await;
    assert_eq!(ack.outcome, i32::from(pb::RunAckOutcome::Fenced), "{ack:?}");

    holder.send(chunk("real"));
    holder.send(completed(&assignment, r#""real""#));
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(10)).await;
    assert_eq!(got.task.as_ref().and_then(|t| t.result_json.as_deref()), Some(r#""real""#));
    let output = stored_output(&cluster, task_id).await;
    assert_eq!(output, "real");
}

/// A Task with more events than one read of the store returns (500): a
/// watch from the start reads on to the terminal event and ends, whether
/// it starts after the Task ended or follows it live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_reads_past_a_full_page_of_events() {
    const CHUNKS: i64 = 1200;
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let task_id = cluster.create(spec("echo", "{}")).await;
    let mut worker = RawWorker::connect(&cluster, "chatty").await;
    let _beats = keep_alive(&worker);
    let assignment = worker.next_assignment().await;
    let open = || async {
        let request = pb::WatchTaskRequest { task_id: task_id.clone(), after_cursor: 0 };
        cluster.tasks().await.watch_task(request).await.expect("watch").into_inner()
    };
    let collect = |stream: tonic::Streaming<pb::WatchTaskResponse>| async move {
        let events = tokio::time::timeout(Duration::from_secs(20), stream.collect::<Vec<_>>()).await;
        let events = events.expect("the stream ends");
        events.into_iter().map(|e| e.expect("event").event.expect("event")).collect::<Vec<pb::TaskEvent>>()
    };
    // Opened before the output comes, so it follows the Task live.
    let live = open().await;
    for seq in 1..=CHUNKS {
        worker.send(Up::Output(pb::RunOutputChunk {
            run_id: assignment.run_id.clone(),
            lease: assignment.lease,
            seq,
            data: format!("{seq} "),
        }));
    }
    worker.send(completed(&assignment, r#""done""#));
    assert_eq!(worker.next_ack().await.outcome, i32::from(pb::RunAckOutcome::Accepted));
    let live = collect(live).await;
    let after = collect(open().await).await;
    for events in [after, live] {
        let outputs = events.iter().filter(|e| matches!(e.kind, Some(pb::task_event::Kind::Output(_)))).count();
        assert_eq!(outputs as i64, CHUNKS);
        let cursors: Vec<i64> = events.iter().map(|e| e.cursor).collect();
        assert!(cursors.windows(2).all(|w| w[1] == w[0] + 1), "in order, none missing");
        assert!(events.len() > 1000, "{} events", events.len());
    }
}

/// Heartbeats list the Runs a Worker holds. A Run the Worker was given
/// but leaves out of its heartbeats (it dropped the assignment) fails over
/// after a heartbeat timeout instead of staying ASSIGNED for ever; a Run
/// it lists that is no longer its own gets CancelRun with the lease it
/// listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_held_against_the_runs_the_worker_was_given() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut s = spec("echo", "{}");
    s.retry = Some(pb::RetryPolicy { max_attempts: Some(2), initial_backoff_ms: Some(0), max_backoff_ms: Some(0) });
    let task_id = cluster.create(s).await;
    let mut worker = RawWorker::connect(&cluster, "forgetful").await;
    let _beats = keep_alive(&worker);
    let dropped = worker.next_assignment().await;
    worker.held.lock().expect("held").remove(&dropped.run_id);

    let retry = failed_over(&cluster, &mut worker, &dropped, "no longer lists the run in its heartbeats").await;

    // It lists the Run that failed over as if it still ran it: told to
    // stop, under the lease it lists. The retry goes on.
    worker.held.lock().expect("held").insert(dropped.run_id.clone(), dropped.lease);
    let cancel = worker.next_cancel().await;
    assert_eq!((cancel.run_id.as_str(), cancel.lease), (dropped.run_id.as_str(), dropped.lease));
    worker.send(completed(&retry, r#""done""#));
    assert_eq!(worker.next_ack().await.outcome, i32::from(pb::RunAckOutcome::Accepted));
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed, "{got:#?}");
}

/// The control plane took `given` from `worker`: the Worker is told to
/// stop it, under the lease it was given; the Run FAILED, saying `why`;
/// and the retry comes to the Worker. Returns the retry.
async fn failed_over(
    cluster: &Cluster,
    worker: &mut RawWorker,
    given: &pb::RunAssignment,
    why: &str,
) -> pb::RunAssignment {
    let cancel = worker.next_cancel().await;
    assert_eq!((cancel.run_id.as_str(), cancel.lease), (given.run_id.as_str(), given.lease));
    let retry = worker.next_assignment().await;
    assert_eq!((retry.task_id.as_str(), retry.attempt), (given.task_id.as_str(), 2));
    let got = cluster.get(&given.task_id).await;
    assert_eq!(got.runs[0].status, i32::from(pb::RunStatus::Failed), "{got:#?}");
    let error = got.runs[0].error.clone().unwrap_or_default();
    assert!(error.contains(why), "{error}");
    retry
}

/// A RUNNING report sent twice is refused the second time, and the Run
/// keeps its Worker's slot: a Worker with one slot gets no second Run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_running_report_keeps_the_runs_slot() {
    let cluster = Cluster::start(StoreKind::Memory).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut worker = RawWorker::connect(&cluster, "one-slot").await;
    let _beats = keep_alive(&worker);
    let first = cluster.create(spec("echo", "1")).await;
    let a = worker.next_assignment().await;
    assert_eq!(a.task_id, first);
    let running = || {
        Up::Status(pb::RunStatusUpdate {
            run_id: a.run_id.clone(),
            lease: a.lease,
            status: pb::RunStatus::Running.into(),
            nonce: format!("nonce-{}", uuid::Uuid::now_v7()),
            ..Default::default()
        })
    };
    worker.send(running());
    worker.send(running());
    let ack = worker.next_ack().await;
    assert_eq!(ack.outcome, i32::from(pb::RunAckOutcome::Duplicate), "{ack:?}");
    worker.held.lock().expect("held").insert(a.run_id.clone(), a.lease);
    // Placed at creation if a slot were free: it stays PENDING.
    let second = cluster.create(spec("echo", "2")).await;
    let got = cluster.get(&second).await;
    assert_eq!(got.runs[0].status, i32::from(pb::RunStatus::Pending), "{got:#?}");
    worker.send(completed(&a, "1"));
    assert_eq!(worker.next_ack().await.outcome, i32::from(pb::RunAckOutcome::Accepted));
    assert_eq!(worker.next_assignment().await.task_id, second);
}

/// A Run its Worker neither ends nor drops — the Worker heartbeats and
/// lists it, but its sandbox is stuck — fails over once its run timeout
/// and a heartbeat timeout have passed: the Worker is told to stop it,
/// under the lease it was given, and the Task's retry goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_its_worker_does_not_end_in_time_fails_over() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut s = spec("echo", "{}");
    s.retry = Some(pb::RetryPolicy { max_attempts: Some(2), initial_backoff_ms: Some(0), max_backoff_ms: Some(0) });
    s.limits = Some(pb::TaskLimits { run_timeout_ms: Some(300), ..Default::default() });
    let task_id = cluster.create(s).await;
    let mut worker = RawWorker::connect(&cluster, "stuck").await;
    let _beats = keep_alive(&worker);
    let stuck = worker.next_assignment().await;
    worker.send(Up::Status(pb::RunStatusUpdate {
        run_id: stuck.run_id.clone(),
        lease: stuck.lease,
        status: pb::RunStatus::Running.into(),
        nonce: format!("nonce-{}", uuid::Uuid::now_v7()),
        ..Default::default()
    }));

    let retry =
        failed_over(&cluster, &mut worker, &stuck, "did not report the end of the run within its run timeout").await;
    // Not before the run timeout (300 ms) and the heartbeat timeout
    // (600 ms) had passed since the assignment was issued (both clocks are
    // this machine's).
    let waited = now_ms() - stuck.issued_at_unix_ms;
    assert!(waited >= 900, "stopped {waited} ms after the assignment was issued");

    // Its late completion of the first attempt is fenced; the retry's counts.
    worker.send(completed(&stuck, r#""late""#));
    assert_eq!(worker.next_ack().await.outcome, i32::from(pb::RunAckOutcome::Fenced));
    worker.send(completed(&retry, r#""done""#));
    assert_eq!(worker.next_ack().await.outcome, i32::from(pb::RunAckOutcome::Accepted));
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(10)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed, "{got:#?}");
    assert_eq!(got.task.and_then(|t| t.result_json).as_deref(), Some(r#""done""#));
}

/// A Worker whose clock is off by more than the allowed skew is refused
/// at its hello, with what to fix, and is not registered: it would refuse
/// every assignment, using up the attempts of the Tasks placed on it. One
/// within the skew connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_clock_is_off_is_refused() {
    let cluster = Cluster::start(StoreKind::Memory).await;
    let cp = Arc::clone(cluster.server.as_ref().expect("server").control_plane());
    let hello = |id: &str, sent_at_unix_ms: i64| {
        let info = pb::WorkerInfo { worker_id: id.into(), slots: 1, version: "raw".into(), ..Default::default() };
        pb::WorkerHello { info: Some(info), in_flight: vec![], sent_at_unix_ms, draining: None }
    };
    for (sent_at, code, says) in [
        (now_ms() - 60_000, tonic::Code::FailedPrecondition, "ms behind the control plane's"),
        (now_ms() + 60_000, tonic::Code::FailedPrecondition, "ms ahead of the control plane's"),
        (0, tonic::Code::InvalidArgument, "hello.sent_at_unix_ms: required"),
    ] {
        let refused = RawWorker::connect_hello(&cluster, hello("skewed", sent_at)).await.err().expect("refused");
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(refused.message().contains(says), "{}", refused.message());
    }
    let skewed: taskrun_core::WorkerId = "skewed".parse().expect("worker id");
    assert!(cp.store().get_worker(&skewed).await.is_err_and(|e| e.is_not_found()));
    assert!(cp.connected_workers().is_empty());

    // 5 s off, within the 30 s allowed.
    let (_worker, accepted) =
        RawWorker::connect_hello(&cluster, hello("close", now_ms() + 5_000)).await.expect("connect");
    assert_eq!(accepted.worker_id, "close");
    assert_eq!(cp.connected_workers(), vec!["close".parse().expect("worker id")]);
}
