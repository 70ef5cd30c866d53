//! Starting and stopping the control plane's gRPC server.

use std::net::SocketAddr;
use std::sync::Arc;

use taskrun_core::{Clock, SystemClock};
use taskrun_proto::{FILE_DESCRIPTOR_SET, pb};
use taskrun_signing::{TrustPolicy, Verifier};
use taskrun_store::{Store, StoreConfig};
use taskrun_store_memory::MemoryStore;
use taskrun_store_sled::SledStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::agent_service::AgentApi;
use crate::config::{Config, StoreKind};
use crate::run_service::RunApi;
use crate::state::ControlPlane;
use crate::task_service::TaskApi;
use crate::{Error, Result};

/// A running control plane. Dropping it does not stop it; call
/// [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    control_plane: Arc<ControlPlane>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Opens the store the config names: sled under `data_dir/store`, or memory.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    let store_config = StoreConfig { max_output_bytes_per_run: config.limits.max_output_bytes_per_run };
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryStore::with_config(store_config)),
        StoreKind::Sled => {
            let path = config.data_dir.join("store");
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|source| Error::Io { path: config.data_dir.clone(), source })?;
            Arc::new(
                SledStore::open(&path, store_config).map_err(|e| Error::Store(format!("{}: {e}", path.display())))?,
            )
        }
    })
}

/// Loads the trust policy PublishAgent verifies against, if one is set.
pub fn load_verifier(config: &Config, clock: Arc<dyn Clock>) -> Result<Option<Arc<Verifier>>> {
    let Some(path) = &config.trust_policy else { return Ok(None) };
    let policy = TrustPolicy::load(path).map_err(|e| Error::Config(format!("trust policy: {e}")))?;
    // An older maintenance release published late is legitimate here; the
    // Workers guard against rollback for what they run.
    Ok(Some(Arc::new(Verifier::new(policy, clock).with_rollback_protection(false))))
}

impl Server {
    /// Opens the configured store and trust policy and starts serving.
    pub async fn start(config: Config) -> Result<Server> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = open_store(&config)?;
        let verifier = load_verifier(&config, Arc::clone(&clock))?;
        Server::start_with(config, store, clock, verifier).await
    }

    /// Starts serving on `config.listen` (port 0 picks a free port) with
    /// the given parts.
    pub async fn start_with(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        verifier: Option<Arc<Verifier>>,
    ) -> Result<Server> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen).await.map_err(|source| Error::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;
        let control_plane = ControlPlane::new(store, clock, config, verifier);
        tokio::spawn(Arc::clone(&control_plane).scheduler_loop());
        tokio::spawn(Arc::clone(&control_plane).reap_absent_workers());

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<pb::task_service_server::TaskServiceServer<TaskApi>>().await;
        health_reporter.set_serving::<pb::run_service_server::RunServiceServer<RunApi>>().await;
        health_reporter.set_serving::<pb::agent_service_server::AgentServiceServer<AgentApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Config(format!("reflection: {e}")))?;

        let cp = Arc::clone(&control_plane);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let shutdown = control_plane.shutdown.clone();
        let max_message = 16 << 20;
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                pb::task_service_server::TaskServiceServer::new(TaskApi(Arc::clone(&cp)))
                    .max_decoding_message_size(max_message),
            )
            .add_service(pb::run_service_server::RunServiceServer::new(RunApi(Arc::clone(&cp))))
            .add_service(
                pb::agent_service_server::AgentServiceServer::new(AgentApi(cp)).max_decoding_message_size(max_message),
            );
        let serving =
            tokio::spawn(
                async move { router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await },
            );
        info!(addr = %addr, "control plane serving");
        Ok(Server { addr, control_plane, serving })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn control_plane(&self) -> &Arc<ControlPlane> {
        &self.control_plane
    }

    /// Stops accepting, ends every stream, waits for requests in progress.
    /// Every change acknowledged before is already durable in the store.
    pub async fn shutdown(self) -> Result<()> {
        self.control_plane.shut_down();
        match self.serving.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Serve(e.to_string())),
            Err(e) => Err(Error::Serve(e.to_string())),
        }
    }
}
