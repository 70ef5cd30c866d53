//! A scripted control plane: a real gRPC server on 127.0.0.1 whose
//! RunService the test drives by hand, as `BareRunService` in the control
//! plane's replay tests does. The test sees every message a Worker sends on
//! each session, decides what the control plane answers (the
//! WorkerAccepted and its verdicts included), and can end a session. Its
//! AgentService serves agents signed with a key the Worker trusts
//! (FetchAgent only), after a delay the test sets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskrun_core::{AgentDigest, AgentName, AgentVersion, Clock, SystemClock};
use taskrun_proto::pb;
use taskrun_signing::{AgentDetails, SigningKey};
use taskrun_worker::{Worker, WorkerConfig};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub use pb::run_client_message::Kind as Up;
pub use pb::run_server_message::Kind as Down;

type Outbound = mpsc::UnboundedSender<Result<pb::RunServerMessage, Status>>;

/// The longest any wait in these tests may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn now_ms() -> i64 {
    SystemClock.now().as_millis()
}

/// One Worker session as the scripted control plane sees it.
#[derive(Debug)]
pub struct Session {
    pub hello: pb::WorkerHello,
    inbound: mpsc::UnboundedReceiver<pb::RunClientMessage>,
    outbound: Outbound,
}

impl Session {
    /// Sends WorkerAccepted (the control plane's clock, a 30 s skew window)
    /// with `in_flight` verdicts.
    pub fn accept(&self, in_flight: Vec<pb::InFlightRunVerdict>) {
        self.accept_with(pb::WorkerAccepted { in_flight, ..accepted() });
    }

    pub fn accept_with(&self, accepted: pb::WorkerAccepted) {
        self.send(Down::Accepted(accepted));
    }

    pub fn send(&self, kind: Down) {
        self.outbound.send(Ok(pb::RunServerMessage { kind: Some(kind) })).expect("the session is open");
    }

    /// The Worker's next message other than a heartbeat; `None` once its
    /// stream ended. Fails the test after [`WAIT`].
    pub async fn next(&mut self) -> Option<Up> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.inbound.recv()).await.expect("the worker went quiet")?;
            match msg.kind {
                Some(Up::Heartbeat(_)) | None => {}
                Some(kind) => return Some(kind),
            }
        }
    }

    /// Skips messages until a status update on `run_id` with `status`.
    pub async fn status(&mut self, run_id: &str, status: pb::RunStatus) -> pb::RunStatusUpdate {
        loop {
            match self.next().await {
                Some(Up::Status(s)) if s.run_id == run_id && s.status == i32::from(status) => return s,
                Some(_) => {}
                None => panic!("the session ended before {run_id} reported {status:?}"),
            }
        }
    }

    /// Ends the session from the control plane's side (the Worker sees its
    /// stream end, and connects again).
    pub fn end(self) {}
}

/// What WorkerAccepted carries by default: heartbeats rarely, the control
/// plane's clock now, a 30 s skew window, no verdicts.
pub fn accepted() -> pb::WorkerAccepted {
    pb::WorkerAccepted {
        worker_id: "w1".into(),
        heartbeat_interval_ms: 10_000,
        heartbeat_timeout_ms: 60_000,
        server_time_unix_ms: now_ms(),
        max_clock_skew_ms: 30_000,
        in_flight: vec![],
    }
}

#[derive(Clone, Default)]
struct RunService {
    sessions: Arc<Mutex<Option<mpsc::UnboundedSender<Session>>>>,
}

#[tonic::async_trait]
impl pb::run_service_server::RunService for RunService {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<pb::RunServerMessage, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::RunClientMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut stream = request.into_inner();
        let Some(pb::RunClientMessage { kind: Some(Up::Hello(hello)) }) = stream.message().await? else {
            return Err(Status::invalid_argument("the session did not start with a hello"));
        };
        let (outbound, rx) = mpsc::unbounded_channel();
        let (up, inbound) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = stream.message().await {
                if up.send(msg).is_err() {
                    break;
                }
            }
        });
        let sessions = self.sessions.lock().expect("sessions").clone();
        if let Some(sessions) = sessions {
            let _ = sessions.send(Session { hello, inbound, outbound });
        }
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// A signed agent the AgentService serves.
#[derive(Clone)]
struct Served {
    manifest: pb::AgentManifest,
    envelope: Vec<u8>,
    bytes: Vec<u8>,
}

#[derive(Clone, Default)]
struct AgentService {
    agents: Arc<Mutex<HashMap<String, Served>>>,
    fetch_delay: Arc<Mutex<Duration>>,
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentService {
    type FetchAgentStream = Pin<Box<dyn Stream<Item = Result<pb::FetchAgentResponse, Status>> + Send>>;

    async fn publish_agent(
        &self,
        _: Request<Streaming<pb::PublishAgentRequest>>,
    ) -> Result<Response<pb::PublishAgentResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn list_agents(&self, _: Request<pb::ListAgentsRequest>) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn get_agent(&self, _: Request<pb::GetAgentRequest>) -> Result<Response<pb::GetAgentResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn fetch_agent(
        &self,
        request: Request<pb::FetchAgentRequest>,
    ) -> Result<Response<Self::FetchAgentStream>, Status> {
        let delay = *self.fetch_delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
        let digest = request.into_inner().digest;
        let served = self.agents.lock().expect("agents").get(&digest).cloned();
        let Some(served) = served else { return Err(Status::not_found(digest)) };
        let mut parts = vec![Ok(pb::FetchAgentResponse {
            part: Some(pb::fetch_agent_response::Part::Header(pb::FetchAgentHeader {
                manifest: Some(served.manifest),
                envelope: served.envelope,
            })),
        })];
        for chunk in served.bytes.chunks(1 << 20) {
            parts
                .push(Ok(pb::FetchAgentResponse { part: Some(pb::fetch_agent_response::Part::Chunk(chunk.to_vec())) }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(parts))))
    }
}

/// The scripted control plane, its signing key and the trust policy that
/// pins it.
pub struct Scripted {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    key: SigningKey,
    policy_path: std::path::PathBuf,
    sessions: mpsc::UnboundedReceiver<Session>,
    agents: AgentService,
    server: tokio::task::JoinHandle<()>,
}

impl Scripted {
    pub async fn start() -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, sessions) = mpsc::unbounded_channel();
        let runs = RunService { sessions: Arc::new(Mutex::new(Some(tx))) };
        let agents = AgentService::default();
        let server = tokio::spawn({
            let agents = agents.clone();
            async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(pb::run_service_server::RunServiceServer::new(runs))
                    .add_service(pb::agent_service_server::AgentServiceServer::new(agents))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                    .await;
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, policy_path) = taskrun_testkit::trusted_key(dir.path());
        Scripted { addr, dir, key, policy_path, sessions, agents, server }
    }

    /// A Worker config that connects here and trusts the key agents are
    /// signed with.
    pub fn worker_config(&self, id: &str) -> WorkerConfig {
        let mut config = WorkerConfig::new(
            id.parse().expect("worker id"),
            format!("http://{}", self.addr),
            self.policy_path.clone(),
            self.dir.path().join(id),
        );
        config.slots = 4;
        config
    }

    /// Starts `config`'s Worker in the background.
    pub fn start_worker(&self, config: WorkerConfig) -> (Worker, tokio::task::JoinHandle<()>) {
        let worker = Worker::new(config).expect("worker");
        let running = tokio::spawn({
            let worker = worker.clone();
            async move {
                let _ = worker.run().await;
            }
        });
        (worker, running)
    }

    /// The next session a Worker opens (not yet accepted).
    pub async fn session(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.recv()).await.expect("no worker connected").expect("server up")
    }

    /// Signs the component at `path` as `name@1.0.0` and serves it; its
    /// manifest, for assignments.
    pub fn serve(&self, name: &str, path: &str) -> pb::AgentManifest {
        let bytes = std::fs::read(path).expect("agent component");
        let agent: AgentName = name.parse().expect("agent name");
        let version: AgentVersion = "1.0.0".parse().expect("version");
        let envelope =
            self.key.sign_component(&bytes, AgentDetails::new(agent, version, SystemClock.now())).expect("sign");
        let digest = AgentDigest::of(&bytes).to_string();
        let manifest = pb::AgentManifest {
            name: name.into(),
            version: "1.0.0".into(),
            digest: digest.clone(),
            size_bytes: bytes.len() as i64,
            wit_world: taskrun_core::WIT_WORLD.into(),
            signer: self.key.key_id().to_string(),
            published_at_unix_ms: now_ms(),
        };
        let served = Served { manifest: manifest.clone(), envelope: envelope.as_bytes().to_vec(), bytes };
        self.agents.agents.lock().expect("agents").insert(digest, served);
        manifest
    }

    /// FetchAgent answers only after `delay`.
    pub fn delay_fetches(&self, delay: Duration) {
        *self.agents.fetch_delay.lock().expect("delay") = delay;
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An assignment of `run_id` (lease 1) to run `agent` on `input` with a
/// run timeout of `timeout`, issued now with a fresh nonce.
pub fn assignment(run_id: &str, agent: &pb::AgentManifest, input: &str, timeout: Duration) -> pb::RunAssignment {
    let timeout_ms = timeout.as_millis() as i64;
    pb::RunAssignment {
        message_id: format!("m-{run_id}"),
        run_id: run_id.into(),
        task_id: format!("task_{run_id}"),
        shard: 0,
        fan_out: 1,
        attempt: 1,
        lease: 1,
        agent: Some(agent.clone()),
        input_json: input.into(),
        limits: Some(pb::TaskLimits { run_timeout_ms: Some(timeout_ms), ..Default::default() }),
        deadline_unix_ms: now_ms() + timeout_ms,
        issued_at_unix_ms: now_ms(),
        nonce: uuid::Uuid::now_v7().simple().to_string(),
        model: None,
        model_backend: None,
    }
}

/// A terminal status ack of `update`, ACCEPTED.
pub fn status_ack(update: &pb::RunStatusUpdate) -> Down {
    Down::Ack(pb::RunAck {
        run_id: update.run_id.clone(),
        lease: update.lease,
        subject: Some(pb::run_ack::Subject::Status(update.status)),
        outcome: pb::RunAckOutcome::Accepted.into(),
        reason: String::new(),
    })
}

/// Polls `check` every 10 ms until it holds; fails the test after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
