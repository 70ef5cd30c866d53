//! Control-plane configuration: a TOML file, overridden by flags and
//! environment variables in the binary.
//!
//! Relative paths in the file (`data_dir`, `trust_policy`) are read from
//! the file's directory ([`Config::from_file`]); paths given any other way
//! (flags, environment variables, defaults) stay relative to the working
//! directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use taskrun_store::StoreConfig;

use crate::{Error, Result};

/// Everything the control plane can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Where the sled store and other state live.
    pub data_dir: PathBuf,
    /// `sled` (durable, the default) or `memory` (tests and demos).
    pub store: StoreKind,
    /// Transport security.
    pub transport: TransportConfig,
    pub limits: LimitsConfig,
    pub workers: WorkersConfig,
    /// The trust policy PublishAgent verifies against (TOML, see
    /// signing/FORMAT.md). Without one, nothing can be published.
    pub trust_policy: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("taskrun-data"),
            store: StoreKind::Sled,
            transport: TransportConfig::default(),
            limits: LimitsConfig::default(),
            workers: WorkersConfig::default(),
            trust_policy: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sled,
    Memory,
}

/// How connections are secured. `insecure = true` serves plaintext gRPC,
/// and is accepted only on a loopback address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    pub insecure: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest Task input accepted, in bytes.
    pub max_input_bytes: usize,
    /// Output kept per Run, in bytes.
    pub max_output_bytes_per_run: u64,
    /// Largest agent component accepted by PublishAgent, in bytes.
    pub max_agent_bytes: u64,
    /// The most Tasks one ListTasks call looks at; a filter few Tasks match
    /// answers a short page (perhaps empty) with a token to carry on.
    pub max_tasks_examined_per_list: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_input_bytes: 1 << 20,
            max_output_bytes_per_run: 4 << 20,
            max_agent_bytes: 64 << 20,
            max_tasks_examined_per_list: StoreConfig::DEFAULT_MAX_TASKS_EXAMINED_PER_LIST,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// How often Workers heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a Worker is lost and its Runs retried.
    pub heartbeat_timeout_ms: u64,
    /// How far a Worker's clock may be from ours.
    pub max_clock_skew_ms: u64,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig { heartbeat_interval_ms: 2_000, heartbeat_timeout_ms: 6_000, max_clock_skew_ms: 30_000 }
    }
}

impl WorkersConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are errors. Relative paths in it are
    /// read from the file's directory, as Cargo and Spin read theirs.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        Config::from_toml_in(&text, dir).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// The config `text` sets, with its paths as written.
    pub fn from_toml(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e: toml::de::Error| {
            Error::Config(taskrun_core::located(text, e.span().map(|s| s.start), e.message()))
        })?;
        Ok(config)
    }

    /// The config `text` sets, with the relative paths it sets read from
    /// `dir` (the directory of the file it came from). Paths it leaves to
    /// their defaults stay relative to the working directory.
    pub fn from_toml_in(text: &str, dir: &Path) -> Result<Config> {
        let mut config = Config::from_toml(text)?;
        // It parsed as a whole, so its path keys parse too.
        let set: taskrun_core::ConfigPaths = toml::from_str(text).map_err(|e: toml::de::Error| {
            Error::Config(taskrun_core::located(text, e.span().map(|s| s.start), e.message()))
        })?;
        let set = set.in_config_dir(dir, Path::exists, Path::is_dir).map_err(Error::Config)?;
        if let Some(data_dir) = set.data_dir {
            config.data_dir = data_dir;
        }
        if let Some(trust_policy) = set.trust_policy {
            config.trust_policy = Some(trust_policy);
        }
        Ok(config)
    }

    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<()> {
        if !self.transport.insecure {
            return Err(Error::Config(
                "TLS serving is not available yet: set transport.insecure = true (or pass --insecure) \
                 and listen on a loopback address"
                    .to_owned(),
            ));
        }
        if !self.listen.ip().is_loopback() {
            return Err(Error::Config(format!(
                "refusing to serve plaintext on {}: insecure mode listens only on loopback (127.0.0.1 or ::1)",
                self.listen
            )));
        }
        let w = &self.workers;
        if w.heartbeat_interval_ms == 0 || w.heartbeat_timeout_ms <= w.heartbeat_interval_ms {
            return Err(Error::Config(
                "workers.heartbeat_timeout_ms must be greater than workers.heartbeat_interval_ms (> 0)".to_owned(),
            ));
        }
        // Workers allow no less than a second either way; a smaller window
        // would refuse Workers whose clocks are fine.
        if w.max_clock_skew_ms < 1000 {
            return Err(Error::Config(format!(
                "workers.max_clock_skew_ms must be at least 1000 (is {}): clocks kept by NTP still differ by \
                 milliseconds, and a hello takes time to arrive",
                w.max_clock_skew_ms
            )));
        }
        for (key, value) in [
            ("limits.max_input_bytes", self.limits.max_input_bytes as u64),
            ("limits.max_output_bytes_per_run", self.limits.max_output_bytes_per_run),
            ("limits.max_agent_bytes", self.limits.max_agent_bytes),
            ("limits.max_tasks_examined_per_list", self.limits.max_tasks_examined_per_list as u64),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{key} must be greater than zero")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(toml: &str) -> String {
        let config = Config::from_toml(toml).expect("parses");
        config.validate().expect_err(toml).to_string()
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_key() {
        let ok = "[transport]\ninsecure = true\n";
        Config::from_toml(ok).expect("parses").validate().expect("the loopback default with --insecure is fine");
        let cases = [
            ("", "TLS serving is not available yet"),
            ("listen = \"0.0.0.0:7070\"\n[transport]\ninsecure = true", "refusing to serve plaintext on 0.0.0.0:7070"),
            (
                "[transport]\ninsecure = true\n[workers]\nheartbeat_interval_ms = 500\nheartbeat_timeout_ms = 500",
                "workers.heartbeat_timeout_ms must be greater than workers.heartbeat_interval_ms",
            ),
            (
                "[transport]\ninsecure = true\n[workers]\nmax_clock_skew_ms = 0",
                "workers.max_clock_skew_ms must be at least 1000 (is 0)",
            ),
            (
                "[transport]\ninsecure = true\n[limits]\nmax_input_bytes = 0",
                "limits.max_input_bytes must be greater than zero",
            ),
            (
                "[transport]\ninsecure = true\n[limits]\nmax_output_bytes_per_run = 0",
                "limits.max_output_bytes_per_run must be greater than zero",
            ),
            (
                "[transport]\ninsecure = true\n[limits]\nmax_agent_bytes = 0",
                "limits.max_agent_bytes must be greater than zero",
            ),
            (
                "[transport]\ninsecure = true\n[limits]\nmax_tasks_examined_per_list = 0",
                "limits.max_tasks_examined_per_list must be greater than zero",
            ),
        ];
        for (toml, expected) in cases {
            let error = refused(toml);
            assert!(error.contains(expected), "{toml:?}: {error}");
        }
        let error = Config::from_toml("[limits]\nmax_input = 1").expect_err("unknown key").to_string();
        assert!(error.starts_with("config: line 2, column 1: unknown field `max_input`"), "{error}");
        // Where and what on one line, not toml's caret drawing.
        let error = Config::from_toml("listen = \"127.0.0.1:7000\"\nstore = 5\n").expect_err("bad type").to_string();
        assert!(error.starts_with("config: line 2, column 9: "), "{error}");
        assert!(!error.contains('\n') && !error.contains('|'), "{error}");
    }
}
