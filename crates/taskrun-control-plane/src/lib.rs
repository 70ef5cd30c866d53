//! The TaskRun control plane: keeps Tasks, decides where each Run goes,
//! serves TaskService, RunService and AgentService over gRPC.
//!
//! - [`scheduler`]: placement, pure;
//! - `dispatcher`: the loop that takes leases and sends assignments;
//! - `run_service`: the Worker sessions (RunService.Connect);
//! - `task_service`, `agent_service`: the client APIs;
//! - [`server`]: start and graceful shutdown.

mod agent_service;
pub mod config;
mod dispatcher;
mod placement;
mod run_service;
pub mod scheduler;
pub mod server;
mod state;
mod status;
mod task_service;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use agent_service::FETCH_CHUNK_BYTES;
pub use config::Config;
pub use server::Server;
pub use state::{ControlPlane, PlacementStats};
pub use task_service::{GET_TASK_BYTES, LIST_PAGE_BYTES, MAX_CANCEL_REASON_BYTES};

/// Why the control plane could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("store: {0}")]
    Store(String),
    #[error("server: {0}")]
    Serve(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
