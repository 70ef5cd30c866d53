//! The Worker daemon's TOML configuration.
//!
//! ```toml
//! control_plane = "http://127.0.0.1:7070"
//! insecure = true                 # plaintext, loopback only, until TLS lands
//! id = "worker-1"
//! data_dir = "worker-data"        # compiled-agent cache, rollback state
//! slots = 4
//! trust_policy = "trust.toml"     # keys whose agents this Worker runs
//! agents = []                     # agent names it runs; empty = any
//! labels = { region = "eu" }
//!
//! [sandbox]
//! max_memory_mb = 256
//!
//! [[model_backends]]
//! name = "default"
//! provider = "echo"
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use taskrun_core::{AgentName, Labels, WorkerId};

use crate::model::BackendConfig;
use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The control plane's URL.
    #[serde(default = "default_control_plane")]
    pub control_plane: String,
    /// Talk plaintext gRPC (accepted only for a loopback control plane).
    #[serde(default)]
    pub insecure: bool,
    /// This Worker's id. (With enrollment it will come from the certificate.)
    pub id: WorkerId,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Runs at once.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// The operator's trust policy: only agents signed by a key pinned here
    /// run on this Worker.
    pub trust_policy: PathBuf,
    /// Agent names this Worker runs; empty = any.
    #[serde(default)]
    pub agents: BTreeSet<AgentName>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub sandbox: SandboxSection,
    #[serde(default)]
    pub model_backends: Vec<BackendConfig>,
}

/// Sandbox settings the operator may change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    /// Largest linear memory a Run may get, MiB.
    pub max_memory_mb: u64,
    /// Default memory of a Run whose Task sets none, MiB.
    pub default_memory_mb: u64,
    /// Default output cap of a Run whose Task sets none, bytes.
    pub default_output_bytes: u64,
    /// Default model-call cap of a Run whose Task sets none.
    pub default_model_calls: u32,
    /// Environment variables granted to every agent (none by default).
    pub env: Vec<(String, String)>,
}

impl Default for SandboxSection {
    fn default() -> Self {
        SandboxSection {
            max_memory_mb: 256,
            default_memory_mb: 64,
            default_output_bytes: 1 << 20,
            default_model_calls: 32,
            env: Vec::new(),
        }
    }
}

fn default_control_plane() -> String {
    "http://127.0.0.1:7070".to_owned()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("taskrun-worker-data")
}

fn default_slots() -> u32 {
    4
}

impl WorkerConfig {
    pub fn from_toml(text: &str) -> Result<WorkerConfig> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    pub fn from_file(path: &Path) -> Result<WorkerConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        WorkerConfig::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// A config with defaults, for tests and embedding.
    pub fn new(
        id: WorkerId,
        control_plane: impl Into<String>,
        trust_policy: PathBuf,
        data_dir: PathBuf,
    ) -> WorkerConfig {
        WorkerConfig {
            control_plane: control_plane.into(),
            insecure: true,
            id,
            data_dir,
            slots: default_slots(),
            trust_policy,
            agents: BTreeSet::new(),
            labels: Labels::new(),
            sandbox: SandboxSection::default(),
            model_backends: Vec::new(),
        }
    }

    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<()> {
        if self.slots == 0 || self.slots > taskrun_core::WorkerInfo::MAX_SLOTS {
            return Err(Error::Config(format!("slots must be 1 to {}", taskrun_core::WorkerInfo::MAX_SLOTS)));
        }
        let url = self.control_plane.as_str();
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| Error::Config(format!("control_plane {url:?} must start with http:// or https://")))?;
        if !self.insecure {
            return Err(Error::Config(
                "TLS to the control plane is not available yet: set insecure = true (or pass --insecure) \
                 for a control plane on this machine"
                    .to_owned(),
            ));
        }
        let host = host.split('/').next().unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.starts_with("127.");
        if !loopback {
            return Err(Error::Config(format!(
                "refusing plaintext to {host}: insecure mode talks only to a loopback control plane"
            )));
        }
        taskrun_core::validate_labels("labels", &self.labels).map_err(|e| Error::Config(e.to_string()))?;
        Ok(())
    }
}
