//! TaskRun's pure domain model.
//!
//! This crate knows what a Task, a Run, a Worker, an Agent and a ModelBackend
//! are and which state changes are legal. It does no I/O: no network, no
//! database, no async runtime, no wasm. Everything that talks to the outside
//! world converts to and from these types at its edge.

mod agent;
mod clock;
mod error;
pub mod ids;
mod model;
mod paths;
mod run;
mod status;
mod task;
mod worker;

pub use agent::{AgentManifest, AgentRef, AgentSelector, WIT_WORLD};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use error::{Error, Result, error_line, located};
pub use ids::{AgentDigest, AgentName, AgentVersion, RunId, TaskId, WorkerId};
pub use model::{Modality, ModelBackend, ModelRequirement};
pub use paths::ConfigPaths;
pub use run::{OutputChunk, Run, RunOutcome, TaskEvent, TaskEventKind};
pub use status::{
    IllegalTransition, RunStatus, TaskStatus, UNCOUNTED_INTERRUPTIONS, counted_attempts, derive_task_status,
};
pub use task::{Json, Labels, MAX_LABELS, RetryPolicy, Task, TaskLimits, TaskSpec, validate_labels};
pub use worker::{Worker, WorkerInfo, WorkerState};
