//! Replay protection on the Worker: an assignment whose nonce was seen
//! before, or that was issued outside the allowed clock skew, is refused
//! and nothing runs. A refusal for the clock skew is reported FAILED under
//! the assignment's lease (so its Run does not stay assigned for ever); a
//! replay is not reported. The "control plane" here is a bare RunService
//! that sends whatever the test tells it to, as an attacker replaying
//! captured messages would.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use taskrun_proto::pb;
use taskrun_testkit::wait_for;
use taskrun_worker::{Worker, WorkerConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use pb::run_server_message::Kind as Down;

type Outbound = mpsc::UnboundedSender<Result<pb::RunServerMessage, Status>>;

/// A RunService that accepts one Worker and hands its stream to the test.
#[derive(Clone, Default)]
struct BareRunService {
    session: Arc<Mutex<Option<Outbound>>>,
    /// Every status update the Worker sent.
    statuses: Arc<Mutex<Vec<pb::RunStatusUpdate>>>,
}

#[tonic::async_trait]
impl pb::run_service_server::RunService for BareRunService {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<pb::RunServerMessage, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::RunClientMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let _hello = inbound.message().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = pb::WorkerAccepted {
            worker_id: "target".into(),
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
            server_time_unix_ms: now_ms(),
            max_clock_skew_ms: 30_000,
            in_flight: vec![],
        };
        let _ = tx.send(Ok(pb::RunServerMessage { kind: Some(Down::Accepted(accepted)) }));
        *self.session.lock().expect("session") = Some(tx);
        // Keep reading so the Worker's stream stays open.
        let statuses = Arc::clone(&self.statuses);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if let Some(pb::run_client_message::Kind::Status(update)) = msg.kind {
                    statuses.lock().expect("statuses").push(update);
                }
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

fn now_ms() -> i64 {
    taskrun_core::Clock::now(&taskrun_core::SystemClock).as_millis()
}

fn assignment(run: &str, nonce: &str, issued_at_unix_ms: i64) -> pb::RunServerMessage {
    let digest = taskrun_core::AgentDigest::of(b"no such agent");
    pb::RunServerMessage {
        kind: Some(Down::Assignment(pb::RunAssignment {
            message_id: format!("m-{run}-{nonce}"),
            run_id: run.into(),
            task_id: format!("task_{run}"),
            shard: 0,
            fan_out: 1,
            attempt: 1,
            lease: 1,
            agent: Some(pb::AgentManifest {
                name: "echo".into(),
                version: "1.0.0".into(),
                digest: digest.to_string(),
                size_bytes: 13,
                wit_world: taskrun_core::WIT_WORLD.into(),
                signer: "nobody".into(),
                published_at_unix_ms: 0,
            }),
            input_json: "{}".into(),
            limits: Some(pb::TaskLimits { run_timeout_ms: Some(10_000), ..Default::default() }),
            deadline_unix_ms: now_ms() + 10_000,
            issued_at_unix_ms,
            nonce: nonce.into(),
            model: None,
            model_backend: None,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_stale_assignments_are_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = BareRunService::default();
    let server = tokio::spawn({
        let service = service.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(pb::run_service_server::RunServiceServer::new(service))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        }
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("trust.toml");
    taskrun_signing::TrustPolicy::new().save(&policy).expect("policy");
    let config =
        WorkerConfig::new("target".parse().expect("id"), format!("http://{addr}"), policy, dir.path().join("data"));
    let worker = Worker::new(config).expect("worker");
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run().await }
    });
    wait_for("the worker to connect", Duration::from_secs(10), || service.session.lock().expect("s").is_some()).await;
    let send = |msg: pb::RunServerMessage| {
        let session = service.session.lock().expect("session");
        session.as_ref().expect("connected").send(Ok(msg)).expect("send");
    };

    let fresh = "0123456789abcdef0123456789abcdef";
    send(assignment("run_first", fresh, now_ms()));
    wait_for("the first assignment to start", Duration::from_secs(5), || worker.metrics().runs_started == 1).await;
    // The same nonce again (a captured assignment replayed, even for another Run).
    send(assignment("run_replayed", fresh, now_ms()));
    // A fresh nonce, but issued ten minutes ago (outside the 30 s skew).
    send(assignment("run_stale", "fedcba9876543210fedcba9876543210", now_ms() - 600_000));
    // And one from the future.
    send(assignment("run_future", "00000000000000001111111111111111", now_ms() + 600_000));
    wait_for("the refusals", Duration::from_secs(5), || worker.metrics().assignments_refused == 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(worker.metrics().runs_started, 1, "nothing but the first assignment ran");
    // The stale and future ones are reported FAILED (and held until acked);
    // the replay is not reported.
    wait_for("the refusals' reports", Duration::from_secs(5), || {
        service.statuses.lock().expect("statuses").iter().filter(|s| s.run_id != "run_first").count() >= 2
    })
    .await;
    let mut refused: Vec<(String, i64, i32)> = service
        .statuses
        .lock()
        .expect("statuses")
        .iter()
        .filter(|s| s.run_id != "run_first")
        .map(|s| (s.run_id.clone(), s.lease, s.status))
        .collect();
    refused.sort();
    let failed = i32::from(pb::RunStatus::Failed);
    assert_eq!(refused, [("run_future".to_owned(), 1, failed), ("run_stale".to_owned(), 1, failed)]);
    let mut active = worker.active_runs();
    active.sort();
    assert_eq!(active.iter().map(|r| r.as_str()).collect::<Vec<_>>(), ["run_first", "run_future", "run_stale"]);

    worker.shut_down();
    let _ = running.await;
    server.abort();
}
