//! The TaskRun Worker's runtime: the wasmtime sandbox that runs agents
//! ([`sandbox`]) and the ModelBackend providers agents reach through it
//! ([`model`]).
//!
//! This is the only crate that knows wasmtime. A Worker builds one
//! [`Sandbox`] (one engine, one compiled-component cache), prepares each
//! agent digest once ([`Sandbox::prepare`]) and runs every Run in a fresh
//! store ([`Sandbox::run`] / [`Sandbox::run_async`]).

mod cancel;
pub mod daemon;
mod error;
pub mod model;
pub mod sandbox;

pub use cancel::CancelToken;
pub use daemon::{AssignmentProbe, Drained, Worker, WorkerConfig, WorkerMetrics};
pub use error::{Error, Result};
pub use model::ModelBackends;
pub use sandbox::{Outcome, OutputSink, Prepared, RunLimits, RunReport, RunRequest, Sandbox, SandboxConfig};
