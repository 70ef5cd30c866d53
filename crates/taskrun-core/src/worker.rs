//! Workers: what they announce and how the control plane sees them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{AgentDigest, AgentName, Error, Labels, ModelBackend, Result, Timestamp, WorkerId, validate_labels};

/// What a Worker announces in its hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    /// Agents this Worker is willing to run; empty means any.
    pub agents: BTreeSet<AgentName>,
    /// Agent digests this Worker already holds (verified and compiled).
    pub digests: BTreeSet<AgentDigest>,
    pub model_backends: Vec<ModelBackend>,
    pub labels: Labels,
    /// How many Runs it runs at once.
    pub slots: u32,
    /// The Worker's software version, for operators.
    pub version: String,
}

impl WorkerInfo {
    pub const MAX_SLOTS: u32 = 4096;
    /// Most agent names a Worker may list.
    pub const MAX_AGENTS: usize = 1024;
    /// Most agent digests a Worker may announce.
    pub const MAX_DIGESTS: usize = 4096;
    /// Most ModelBackends a Worker may announce.
    pub const MAX_MODEL_BACKENDS: usize = 256;
    /// Longest `version`, bytes.
    pub const MAX_VERSION_LEN: usize = 128;

    pub fn validate(&self) -> Result<()> {
        if self.slots == 0 || self.slots > Self::MAX_SLOTS {
            return Err(Error::invalid("slots", self.slots, format!("must be 1 to {}", Self::MAX_SLOTS)));
        }
        for (field, len, max) in [
            ("agents", self.agents.len(), Self::MAX_AGENTS),
            ("digests", self.digests.len(), Self::MAX_DIGESTS),
            ("model_backends", self.model_backends.len(), Self::MAX_MODEL_BACKENDS),
        ] {
            if len > max {
                return Err(Error::invalid(field, format!("{len} entries"), format!("more than {max} entries")));
            }
        }
        if self.version.len() > Self::MAX_VERSION_LEN {
            return Err(Error::invalid(
                "version",
                format!("{} bytes", self.version.len()),
                format!("longer than {} bytes", Self::MAX_VERSION_LEN),
            ));
        }
        validate_labels("labels", &self.labels)?;
        for backend in &self.model_backends {
            backend.validate()?;
        }
        let mut names = BTreeSet::new();
        for backend in &self.model_backends {
            if !names.insert(&backend.name) {
                return Err(Error::invalid("model_backend.name", &backend.name, "announced twice"));
            }
        }
        Ok(())
    }

    /// Whether this Worker may run agent `name`.
    pub fn accepts_agent(&self, name: &AgentName) -> bool {
        self.agents.is_empty() || self.agents.contains(name)
    }

    /// Whether this Worker carries every label in `required` with its value.
    pub fn has_labels(&self, required: &Labels) -> bool {
        required.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// Where a Worker stands with the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerState {
    /// Holding a stream, heartbeating: gets new Runs.
    Connected,
    /// Finishing what it has; gets no new Runs.
    Draining,
    /// Stream dropped or heartbeats missed.
    Lost,
    /// Its certificate was revoked; never gets Runs again.
    Revoked,
}

/// A Worker as the control plane keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub info: WorkerInfo,
    pub state: WorkerState,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}
