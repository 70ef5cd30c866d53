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
//! shutdown_grace_secs = 30        # how long a drain lets Runs finish
//!
//! [sandbox]
//! max_memory_mb = 256
//! max_output_bytes = 4194304      # caps what a Task may ask for
//! max_model_calls = 256
//! max_result_bytes = 1048576      # a larger result fails its Run
//!
//! [[model_backends]]
//! name = "default"
//! provider = "echo"
//! ```
//!
//! Relative paths in the file (`data_dir`, `trust_policy`) are read from
//! the file's directory ([`WorkerConfig::from_file`]); paths given any
//! other way (flags, [`WorkerConfig::new`], defaults) stay as they are,
//! relative to the working directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use taskrun_core::{AgentName, Labels, WorkerId};

use super::{MAX_RESULT_BYTES, MAX_SHUTDOWN_GRACE_SECS};
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
    /// How long a drain (SIGTERM, Ctrl-C, [`Worker::drain`](crate::Worker::drain))
    /// lets the Runs in flight finish before it stops them, seconds
    /// (0 to [`MAX_SHUTDOWN_GRACE_SECS`]).
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
}

/// Sandbox settings the operator may change. A Task's limits are cut to
/// the `max_` settings; the `default_` ones apply where a Task sets none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    /// Largest linear memory a Run may get, MiB.
    pub max_memory_mb: u64,
    /// Default memory of a Run whose Task sets none, MiB.
    pub default_memory_mb: u64,
    /// Most output a Run may emit, bytes. The Worker keeps a Run's output
    /// until the control plane acks its end: up to `slots` times this.
    pub max_output_bytes: u64,
    /// Default output cap of a Run whose Task sets none, bytes.
    pub default_output_bytes: u64,
    /// Most ModelBackend calls a Run may make.
    pub max_model_calls: u32,
    /// Default model-call cap of a Run whose Task sets none.
    pub default_model_calls: u32,
    /// Largest result a Run may return, bytes (1 to [`MAX_RESULT_BYTES`]);
    /// a larger one fails the Run.
    pub max_result_bytes: u64,
    /// Environment variables granted to every agent (none by default).
    pub env: Vec<(String, String)>,
}

impl Default for SandboxSection {
    fn default() -> Self {
        SandboxSection {
            max_memory_mb: 256,
            default_memory_mb: 64,
            max_output_bytes: 4 << 20,
            default_output_bytes: 1 << 20,
            max_model_calls: 256,
            default_model_calls: 32,
            max_result_bytes: 1 << 20,
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

fn default_shutdown_grace_secs() -> u64 {
    30
}

impl WorkerConfig {
    /// The config `text` sets, with its paths as written (relative ones
    /// stay relative to the working directory).
    pub fn from_toml(text: &str) -> Result<WorkerConfig> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            Error::Config(taskrun_core::located(text, e.span().map(|s| s.start), e.message()))
        })
    }

    /// The config `text` sets, with the relative paths it sets read from
    /// `dir` (the directory of the file it came from). Paths it leaves to
    /// their defaults stay relative to the working directory.
    pub fn from_toml_in(text: &str, dir: &Path) -> Result<WorkerConfig> {
        let mut config = WorkerConfig::from_toml(text)?;
        // It parsed as a whole, so its path keys parse too.
        let set: taskrun_core::ConfigPaths = toml::from_str(text).map_err(|e: toml::de::Error| {
            Error::Config(taskrun_core::located(text, e.span().map(|s| s.start), e.message()))
        })?;
        let set = set.in_config_dir(dir, Path::exists, Path::is_dir).map_err(Error::Config)?;
        if let Some(data_dir) = set.data_dir {
            config.data_dir = data_dir;
        }
        if let Some(trust_policy) = set.trust_policy {
            config.trust_policy = trust_policy;
        }
        Ok(config)
    }

    /// Reads the TOML file at `path`. Relative paths in it are read from
    /// the file's directory, as Cargo and Spin read theirs, so a Worker
    /// started from any directory finds the same files.
    pub fn from_file(path: &Path) -> Result<WorkerConfig> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Config(format!(
                "{shown}: no such file (give --config the Worker's TOML file; see docs/worker.md)"
            )),
            _ => Error::Config(format!("{shown}: {e}")),
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        // `from_toml`'s error already says "worker config"; add the file only.
        WorkerConfig::from_toml_in(&text, dir).map_err(|e| match e {
            Error::Config(message) => Error::Config(format!("{shown}: {message}")),
            other => other,
        })
    }

    /// The error for a trust policy that did not load. The signing crate's
    /// error names the file already.
    pub(crate) fn trust_policy_error(&self, error: &taskrun_signing::Error) -> Error {
        let path = self.trust_policy.display();
        match error.root() {
            taskrun_signing::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::Config(format!(
                    "trust_policy {path}: no such file (pin the keys whose agents this Worker runs with \
                     `taskrun keys trust KEY.pub --policy {path}`, or point trust_policy at the operator's policy)"
                ))
            }
            _ => Error::Config(format!("trust_policy: {error}")),
        }
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
            shutdown_grace_secs: default_shutdown_grace_secs(),
        }
    }

    /// How long a drain lets Runs finish (`shutdown_grace_secs`).
    pub fn shutdown_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<()> {
        if self.slots == 0 || self.slots > taskrun_core::WorkerInfo::MAX_SLOTS {
            return Err(Error::Config(format!("slots must be 1 to {}", taskrun_core::WorkerInfo::MAX_SLOTS)));
        }
        if self.agents.len() > taskrun_core::WorkerInfo::MAX_AGENTS {
            return Err(Error::Config(format!(
                "agents lists {} agents; a Worker may name at most {} (leave it empty to accept any agent)",
                self.agents.len(),
                taskrun_core::WorkerInfo::MAX_AGENTS
            )));
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
        if self.shutdown_grace_secs > MAX_SHUTDOWN_GRACE_SECS {
            return Err(Error::Config(format!(
                "shutdown_grace_secs must be 0 to {MAX_SHUTDOWN_GRACE_SECS} (seconds), not {}: a Run that needs \
                 longer is better stopped and retried on another Worker",
                self.shutdown_grace_secs
            )));
        }
        self.sandbox.validate()
    }
}

impl SandboxSection {
    fn validate(&self) -> Result<()> {
        let at_most = |default: &str, d: u64, max: &str, m: u64| {
            if d > m {
                return Err(Error::Config(format!(
                    "sandbox.{default} ({d}) is above sandbox.{max} ({m}): lower the default or raise the maximum"
                )));
            }
            Ok(())
        };
        if !(1..=4096).contains(&self.max_memory_mb) {
            return Err(Error::Config(format!(
                "sandbox.max_memory_mb must be 1 to 4096 (MiB; wasm32 memories end at 4 GiB), not {}",
                self.max_memory_mb
            )));
        }
        at_most("default_memory_mb", self.default_memory_mb, "max_memory_mb", self.max_memory_mb)?;
        at_most("default_output_bytes", self.default_output_bytes, "max_output_bytes", self.max_output_bytes)?;
        at_most(
            "default_model_calls",
            self.default_model_calls.into(),
            "max_model_calls",
            self.max_model_calls.into(),
        )?;
        if !(1..=MAX_RESULT_BYTES).contains(&self.max_result_bytes) {
            return Err(Error::Config(format!(
                "sandbox.max_result_bytes must be 1 to {MAX_RESULT_BYTES}: a result travels to the control plane \
                 in one message (bulk data belongs in a Run's output)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "id = \"w1\"\ninsecure = true\ntrust_policy = \"trust.toml\"\n";

    fn parse(sandbox: &str) -> Result<WorkerConfig> {
        let config = WorkerConfig::from_toml(&format!("{BASE}[sandbox]\n{sandbox}"))?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn sandbox_maximums_come_from_toml_with_defaults() {
        let s = parse("").expect("defaults").sandbox;
        assert_eq!((s.max_output_bytes, s.max_model_calls, s.max_result_bytes), (4 << 20, 256, 1 << 20));
        let s = parse("max_output_bytes = 100\ndefault_output_bytes = 100\nmax_model_calls = 0\ndefault_model_calls = 0\nmax_result_bytes = 8388608")
            .expect("explicit")
            .sandbox;
        assert_eq!((s.max_output_bytes, s.max_model_calls, s.max_result_bytes), (100, 0, 8 << 20));
    }

    #[test]
    fn a_config_file_that_does_not_load_is_named_once_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("w.toml");
        let error = WorkerConfig::from_file(&missing).expect_err("no such file").to_string();
        assert_eq!(
            error,
            format!(
                "worker config: {}: no such file (give --config the Worker's TOML file; see docs/worker.md)",
                missing.display()
            )
        );
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "id = \"w1\"\nslots = [\n").expect("write");
        let error = WorkerConfig::from_file(&broken).expect_err("bad TOML").to_string();
        assert_eq!(error.matches("worker config").count(), 1, "{error}");
        assert!(error.starts_with(&format!("worker config: {}: line 2, column ", broken.display())), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");

        let config =
            WorkerConfig::new("w1".parse().expect("id"), "http://127.0.0.1:7070", missing.clone(), dir.path().into());
        let policy_error = taskrun_signing::TrustPolicy::load(&missing).expect_err("no policy");
        let error = config.trust_policy_error(&policy_error).to_string();
        assert_eq!(error.matches(&missing.display().to_string()).count(), 2, "the path, then the command: {error}");
        assert!(
            error.starts_with(&format!("worker config: trust_policy {}: no such file (", missing.display())),
            "{error}"
        );
        assert!(!error.contains("os error"), "{error}");
    }

    /// A Worker may name as many agents as a hello may carry, no more.
    #[test]
    fn an_agent_list_longer_than_a_hello_carries_is_refused() {
        let names = |n: usize| (0..n).map(|i| format!("\"agent-{i}\"")).collect::<Vec<_>>().join(", ");
        let at = |n: usize| WorkerConfig::from_toml(&format!("{BASE}agents = [{}]\n", names(n))).expect("parses");
        at(taskrun_core::WorkerInfo::MAX_AGENTS).validate().expect("at the cap");
        let error = at(taskrun_core::WorkerInfo::MAX_AGENTS + 1).validate().expect_err("over the cap").to_string();
        assert!(error.contains("agents lists 1025 agents; a Worker may name at most 1024"), "{error}");
    }

    #[test]
    fn sandbox_settings_that_contradict_are_refused() {
        let check = |sandbox: &str, expected: &str| {
            let error = parse(sandbox).expect_err(sandbox).to_string();
            assert!(error.contains(expected), "{error} / {expected}");
        };
        check(
            "max_output_bytes = 1000",
            "sandbox.default_output_bytes (1048576) is above sandbox.max_output_bytes (1000): lower the default",
        );
        check("max_model_calls = 4", "sandbox.default_model_calls (32) is above sandbox.max_model_calls (4)");
        check("max_memory_mb = 32", "sandbox.default_memory_mb (64) is above sandbox.max_memory_mb (32)");
        check(
            "max_memory_mb = 0",
            "sandbox.max_memory_mb must be 1 to 4096 (MiB; wasm32 memories end at 4 GiB), not 0",
        );
        check(
            "max_memory_mb = 5000",
            "sandbox.max_memory_mb must be 1 to 4096 (MiB; wasm32 memories end at 4 GiB), not 5000",
        );
        check("max_result_bytes = 0", "sandbox.max_result_bytes must be 1 to 8388608");
        check("max_result_bytes = 8388609", "sandbox.max_result_bytes must be 1 to 8388608");
        check("max_output = 1", "unknown field `max_output`");
    }
}
