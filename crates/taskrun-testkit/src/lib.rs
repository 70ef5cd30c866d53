//! An in-process cluster for end-to-end tests and benchmarks: a real
//! control plane on 127.0.0.1 (real gRPC, sled or memory store), real
//! Workers running real agents in wasmtime, agents signed with a real
//! Ed25519 key. Helpers panic on failure: this crate is for tests only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use taskrun_control_plane::config::{StoreKind, TransportConfig, WorkersConfig};
use taskrun_control_plane::{Config, Server};
use taskrun_core::{AgentName, AgentVersion, SystemClock, TaskStatus, WorkerId};
use taskrun_proto::pb;
use taskrun_signing::{AgentDetails, SigningKey, TrustPolicy, TrustedKey, Verifier};
use taskrun_store::Store;
use taskrun_worker::{Worker, WorkerConfig};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type TaskClient = pb::task_service_client::TaskServiceClient<Channel>;
pub type AgentClient = pb::agent_service_client::AgentServiceClient<Channel>;

pub fn test_config(store: StoreKind, data_dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        data_dir: data_dir.to_path_buf(),
        store,
        transport: TransportConfig { insecure: true },
        workers: WorkersConfig { heartbeat_interval_ms: 100, heartbeat_timeout_ms: 600, max_clock_skew_ms: 30_000 },
        ..Config::default()
    }
}

/// A new key for signing agents, and a trust policy that pins it, saved
/// as `dir/trust.toml`: (the key, the policy's path).
pub fn trusted_key(dir: &Path) -> (SigningKey, PathBuf) {
    let key = SigningKey::generate();
    let mut policy = TrustPolicy::new();
    policy.trust(TrustedKey::new(key.public_key())).expect("trust key");
    let policy_path = dir.join("trust.toml");
    policy.save(&policy_path).expect("save policy");
    (key, policy_path)
}

/// A control plane, the key that signs agents, and Workers.
#[derive(Debug)]
pub struct Cluster {
    pub dir: TempDir,
    pub server: Option<Server>,
    pub config: Config,
    pub key: SigningKey,
    pub policy_path: PathBuf,
    pub workers: Vec<(Worker, JoinHandle<()>)>,
}

impl Cluster {
    pub async fn start(store: StoreKind) -> Cluster {
        let mut cluster = Cluster::new(store);
        cluster.start_server().await;
        cluster
    }

    /// A cluster whose control plane keeps its state in `store` (a
    /// memory store wrapped to inject faults, say).
    pub async fn start_on(store: Arc<dyn Store>) -> Cluster {
        let mut cluster = Cluster::new(StoreKind::Memory);
        cluster.start_server_on(store).await;
        cluster
    }

    fn new(store: StoreKind) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, policy_path) = trusted_key(dir.path());
        let config = test_config(store, &dir.path().join("cp"));
        Cluster { dir, server: None, config, key, policy_path, workers: Vec::new() }
    }

    /// (Re)starts the control plane on the configured address.
    pub async fn start_server(&mut self) {
        let store = taskrun_control_plane::server::open_store(&self.config).expect("open store");
        self.start_server_on(store).await;
    }

    async fn start_server_on(&mut self, store: Arc<dyn Store>) {
        let clock = Arc::new(SystemClock);
        let policy = TrustPolicy::load(&self.policy_path).expect("load policy");
        let verifier = Arc::new(Verifier::new(policy, clock.clone()).with_rollback_protection(false));
        let server = Server::start_with(self.config.clone(), store, clock, Some(verifier)).await.expect("start server");
        // Restarts come back on the same port, where the Workers look.
        self.config.listen = server.addr();
        self.server = Some(server);
    }

    pub async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.config.listen)
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.url()).expect("url").connect().await.expect("connect")
    }

    pub async fn tasks(&self) -> TaskClient {
        TaskClient::new(self.channel().await)
    }

    pub async fn agents(&self) -> AgentClient {
        AgentClient::new(self.channel().await)
    }

    /// Signs the component at `path` as `name@version` and publishes it.
    pub async fn publish(&self, name: &str, version: &str, path: &str) -> pb::AgentManifest {
        let bytes = std::fs::read(path).expect("agent component");
        publish_signed(&mut self.agents().await, &self.key, name, version, &bytes).await.expect("publish")
    }

    pub fn worker_config(&self, id: &str) -> WorkerConfig {
        let id: WorkerId = id.parse().expect("worker id");
        let mut config =
            WorkerConfig::new(id.clone(), self.url(), self.policy_path.clone(), self.dir.path().join(id.as_str()));
        config.slots = 4;
        config
    }

    /// Starts a Worker and waits until the control plane knows it.
    pub async fn add_worker(&mut self, config: WorkerConfig) -> Worker {
        let worker = Worker::new(config).expect("worker");
        let handle = {
            let worker = worker.clone();
            tokio::spawn(async move {
                let _ = worker.run().await;
            })
        };
        let id = worker.info().id;
        wait_for("worker to connect", Duration::from_secs(10), || {
            self.server.as_ref().is_some_and(|s| s.control_plane().connected_workers().contains(&id))
        })
        .await;
        self.workers.push((worker.clone(), handle));
        worker
    }

    /// Creates a Task and returns its id.
    pub async fn create(&self, spec: pb::TaskSpec) -> String {
        let created = self.tasks().await.create_task(pb::CreateTaskRequest { spec: Some(spec) }).await.expect("create");
        created.into_inner().task.expect("task").task_id
    }

    /// GetTask for `task_id` (on a new connection), every Run with its
    /// result as far as it fits.
    pub async fn get(&self, task_id: &str) -> pb::GetTaskResponse {
        get_task(&mut self.tasks().await, task_id).await
    }

    /// Polls until the Task is terminal.
    pub async fn wait_terminal(&self, task_id: &str, within: Duration) -> pb::GetTaskResponse {
        let deadline = Instant::now() + within;
        let mut client = self.tasks().await;
        loop {
            let got = get_task(&mut client, task_id).await;
            let status = taskrun_proto::task_status_from_wire("status", got.task.as_ref().expect("task").status)
                .expect("status");
            if status.is_terminal() {
                return got;
            }
            assert!(Instant::now() < deadline, "task {task_id} still {status} after {within:?}: {got:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (worker, handle) in &self.workers {
            worker.shut_down();
            handle.abort();
        }
        if let Some(server) = &self.server {
            server.control_plane().shut_down();
        }
    }
}

/// Signs `bytes` as `name@version` with `key` and publishes them.
pub async fn publish_signed(
    client: &mut AgentClient,
    key: &SigningKey,
    name: &str,
    version: &str,
    bytes: &[u8],
) -> Result<pb::AgentManifest, tonic::Status> {
    let name: AgentName = name.parse().expect("agent name");
    let version: AgentVersion = version.parse().expect("version");
    let envelope = key
        .sign_component(bytes, AgentDetails::new(name.clone(), version, taskrun_core::Clock::now(&SystemClock)))
        .expect("sign");
    publish_envelope(client, &name.to_string(), &version.to_string(), envelope.as_bytes(), bytes).await
}

pub async fn publish_envelope(
    client: &mut AgentClient,
    name: &str,
    version: &str,
    envelope: &[u8],
    bytes: &[u8],
) -> Result<pb::AgentManifest, tonic::Status> {
    let header = pb::PublishAgentHeader {
        name: name.to_owned(),
        version: version.to_owned(),
        digest: taskrun_core::AgentDigest::of(bytes).to_string(),
        size_bytes: bytes.len() as i64,
        wit_world: taskrun_core::WIT_WORLD.to_owned(),
        envelope: envelope.to_vec(),
    };
    let mut messages = vec![pb::PublishAgentRequest { part: Some(pb::publish_agent_request::Part::Header(header)) }];
    for chunk in bytes.chunks(64 * 1024) {
        messages.push(pb::PublishAgentRequest { part: Some(pb::publish_agent_request::Part::Chunk(chunk.to_vec())) });
    }
    let response = client.publish_agent(futures::stream::iter(messages)).await?;
    Ok(response.into_inner().manifest.expect("manifest"))
}

/// GetTask for `task_id` through `client`, every Run with its result as
/// far as it fits.
pub async fn get_task(client: &mut TaskClient, task_id: &str) -> pb::GetTaskResponse {
    let request = pb::GetTaskRequest { task_id: task_id.to_owned(), run_id: None };
    client.get_task(request).await.expect("get").into_inner()
}

/// A spec for `agent` with `input` and defaults elsewhere.
pub fn spec(agent: &str, input: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        agent: Some(pb::AgentRef { name: agent.to_owned(), selector: None }),
        input_json: input.to_owned(),
        ..Default::default()
    }
}

pub fn status_of(got: &pb::GetTaskResponse) -> TaskStatus {
    taskrun_proto::task_status_from_wire("status", got.task.as_ref().expect("task").status).expect("status")
}

/// Polls `check` every 10 ms until it holds; fails the test after `within`.
pub async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
