use std::path::PathBuf;

use taskrun_core::AgentDigest;

/// Everything that can go wrong in the Worker's runtime before or around a
/// Run. How a Run itself ended (trap, timeout, limits, …) is not an error:
/// see [`Outcome`](crate::Outcome).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("wasmtime engine: {0}")]
    Engine(String),

    #[error("agent {expected}: its bytes hash to {actual}")]
    DigestMismatch { expected: AgentDigest, actual: AgentDigest },

    #[error("agent {digest}: not a valid component: {message}")]
    Compile { digest: AgentDigest, message: String },

    #[error("agent {digest}: imports what this worker does not provide ({}): {message}", imports.join(", "))]
    UnsupportedImport {
        digest: AgentDigest,
        /// The imports no Worker offers (empty when only the linker could tell).
        imports: Vec<String>,
        message: String,
    },

    #[error("agent {digest}: does not export the taskrun agent world: {message}")]
    NotAnAgent { digest: AgentDigest, message: String },

    #[error("compiled-component cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("worker at capacity: {0}")]
    Capacity(String),

    #[error("run thread: {0}")]
    RunThread(String),

    #[error("model backend {backend}: {message}")]
    ModelConfig { backend: String, message: String },

    #[error("model backends config: {0}")]
    ModelConfigParse(String),

    #[error("worker config: {0}")]
    Config(String),

    #[error("control plane {url}: {message}")]
    Connect { url: String, message: String },

    #[error("agent {digest}: cannot fetch it: {message}")]
    Fetch { digest: AgentDigest, message: String },

    #[error("agent {digest} refused: {source}")]
    AgentRefused {
        digest: AgentDigest,
        #[source]
        source: taskrun_signing::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
