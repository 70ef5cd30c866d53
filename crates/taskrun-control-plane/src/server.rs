//! Starting and stopping the control plane's gRPC server.

use std::net::SocketAddr;
use std::sync::Arc;

use taskrun_core::{Clock, SystemClock};
use taskrun_proto::{FILE_DESCRIPTOR_SET, MAX_RUN_MESSAGE_BYTES, pb};
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
    let store_config = StoreConfig {
        max_output_bytes_per_run: config.limits.max_output_bytes_per_run,
        max_tasks_examined_per_list: config.limits.max_tasks_examined_per_list,
    };
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryStore::with_config(store_config)),
        StoreKind::Sled => {
            let path = config.data_dir.join("store");
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|source| Error::Io { path: config.data_dir.clone(), source })?;
            Arc::new(SledStore::open(&path, store_config).map_err(|e| {
                // sled's own text for this is an OS error's debug dump.
                if e.to_string().contains("could not acquire lock") {
                    Error::Store(format!(
                        "{} is in use by another process: is another control plane running with data_dir {}?",
                        path.display(),
                        config.data_dir.display()
                    ))
                } else {
                    Error::Store(format!("{}: {e}", path.display()))
                }
            })?)
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

/// Room an assignment needs besides the Task's input (ids, the agent's
/// manifest, limits, the model requirement), with plenty to spare.
const ASSIGNMENT_OVERHEAD_BYTES: usize = 1 << 20;

/// The largest `limits.max_input_bytes`: an assignment carries the input to
/// its Worker in one RunService message.
pub const MAX_INPUT_BYTES: usize = MAX_RUN_MESSAGE_BYTES - ASSIGNMENT_OVERHEAD_BYTES;

/// Refuses settings that would let a message outgrow the RunService limit.
fn check_message_limits(config: &Config) -> Result<()> {
    let max_input = config.limits.max_input_bytes;
    if max_input > MAX_INPUT_BYTES {
        return Err(Error::Config(format!(
            "limits.max_input_bytes is {max_input}; set it to at most {MAX_INPUT_BYTES}: an assignment carries \
             the input to its Worker in one message of at most {MAX_RUN_MESSAGE_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Server {
    /// Opens the configured store and trust policy and starts serving.
    pub async fn start(config: Config) -> Result<Server> {
        // Refuse a bad config before anything touches the data dir.
        config.validate()?;
        check_message_limits(&config)?;
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
        check_message_limits(&config)?;
        let listener =
            TcpListener::bind(config.listen).await.map_err(|source| Error::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;
        let control_plane = ControlPlane::new(store, clock, config, verifier);
        tokio::spawn(Arc::clone(&control_plane).scheduler_loop());
        tokio::spawn(Arc::clone(&control_plane).reap_absent_workers());
        tokio::spawn(Arc::clone(&control_plane).watchdog_loop());

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
            // Matches the Worker's client (taskrun-worker, daemon/session.rs):
            // a message over the limit would end the Worker's whole stream.
            .add_service(
                pb::run_service_server::RunServiceServer::new(RunApi(Arc::clone(&cp)))
                    .max_decoding_message_size(MAX_RUN_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RUN_MESSAGE_BYTES),
            )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_limit_no_assignment_could_carry_is_refused() {
        let mut config = Config::default();
        config.limits.max_input_bytes = MAX_INPUT_BYTES;
        check_message_limits(&config).expect("an assignment of the largest input fits");
        config.limits.max_input_bytes = MAX_INPUT_BYTES + 1;
        let error = check_message_limits(&config).expect_err("too large").to_string();
        assert!(error.contains("limits.max_input_bytes is 15728641; set it to at most 15728640"), "{error}");
    }
}
