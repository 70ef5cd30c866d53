//! The `[[model_backends]]` section of a Worker's TOML config.
//!
//! ```toml
//! [[model_backends]]
//! name = "default"
//! provider = "echo"
//!
//! [[model_backends]]
//! name = "gpt"
//! provider = "openai"
//! base_url = "https://api.openai.com"   # POST {base_url}/v1/chat/completions
//! model = "gpt-4o-mini"
//! api_key_env = "OPENAI_API_KEY"         # the key itself never sits in the file
//! timeout_ms = 60000
//! connect_timeout_ms = 5000
//! retries = 2
//! context_window = 128000
//! modalities = ["text", "image"]
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskrun_core::{Modality, ModelBackend};

use super::base_url::BaseUrl;
use super::openai::{ApiKey, OpenAiSettings};
use super::{EchoProvider, OpenAiProvider, Provider};
use crate::{Error, Result};

/// The ModelBackends part of a Worker config. Parsing a whole Worker config
/// file with it is fine: keys other than `model_backends` are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelBackendsConfig {
    #[serde(default)]
    pub model_backends: Vec<BackendConfig>,
}

impl ModelBackendsConfig {
    pub fn from_toml(text: &str) -> Result<ModelBackendsConfig> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            Error::ModelConfigParse(taskrun_core::located(text, e.span().map(|s| s.start), e.message()))
        })
    }
}

/// Which host implementation serves a ModelBackend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Deterministic: answers with the last user message (dev and tests).
    Echo,
    /// An OpenAI-compatible HTTP server (OpenAI, vLLM, llama.cpp, Ollama).
    Openai,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Echo => "echo",
            ProviderKind::Openai => "openai",
        }
    }
}

/// One `[[model_backends]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// How agents name it (`default` answers requests that name none).
    pub name: String,
    pub provider: ProviderKind,
    /// The provider's model name (required for `openai`).
    #[serde(default)]
    pub model: Option<String>,
    /// `openai`: scheme, host and port (and a path, a query), without
    /// `/v1`. Errors and logs show its scheme, host, port and path only.
    #[serde(default)]
    pub base_url: Option<String>,
    /// `openai`: the environment variable holding the API key (none: send
    /// no key, as local servers expect). Needs an `https://` base_url,
    /// unless its host is a loopback address or `localhost`.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `openai`: the longest one HTTP request may take (default 60 s; the
    /// Run's deadline cuts it shorter).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// `openai`: the longest connecting may take (default 5 s).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// `openai`: retries after a 429, a 5xx or a failed connection
    /// (default 2).
    #[serde(default)]
    pub retries: Option<u32>,
    /// `openai`: the first retry's delay, doubled each time, unless the
    /// server sends Retry-After (default 200 ms).
    #[serde(default)]
    pub retry_backoff_ms: Option<u64>,
    /// `echo`: a pause before each streamed token.
    #[serde(default)]
    pub token_delay_ms: Option<u64>,
    #[serde(default)]
    pub context_window: Option<u32>,
    #[serde(default)]
    pub modalities: Option<Vec<Modality>>,
}

impl BackendConfig {
    /// A minimal entry of `provider` named `name`.
    pub fn new(name: &str, provider: ProviderKind) -> BackendConfig {
        BackendConfig {
            name: name.to_owned(),
            provider,
            model: None,
            base_url: None,
            api_key_env: None,
            timeout_ms: None,
            connect_timeout_ms: None,
            retries: None,
            retry_backoff_ms: None,
            token_delay_ms: None,
            context_window: None,
            modalities: None,
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::ModelConfig { backend: self.name.clone(), message: message.into() }
    }

    fn info(&self, default_model: &str, supports_streaming: bool) -> Result<ModelBackend> {
        let info = ModelBackend {
            name: self.name.clone(),
            provider: self.provider.as_str().to_owned(),
            model_name: self.model.clone().unwrap_or_else(|| default_model.to_owned()),
            context_window: self.context_window.unwrap_or(8192),
            modalities: self.modalities.clone().unwrap_or_else(|| vec![Modality::Text]),
            supports_streaming,
        };
        info.validate().map_err(|e| self.error(e.to_string()))?;
        Ok(info)
    }

    /// Checks the entry and builds its provider, reading the API key from
    /// the process environment.
    pub fn build(&self) -> Result<Arc<dyn Provider>> {
        self.build_with_env(&|var| std::env::var(var).ok())
    }

    /// Like [`build`](BackendConfig::build), with `env` looking up
    /// environment variables.
    pub fn build_with_env(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Arc<dyn Provider>> {
        match self.provider {
            ProviderKind::Echo => {
                let openai_only = [
                    ("base_url", self.base_url.is_some()),
                    ("api_key_env", self.api_key_env.is_some()),
                    ("timeout_ms", self.timeout_ms.is_some()),
                    ("connect_timeout_ms", self.connect_timeout_ms.is_some()),
                    ("retries", self.retries.is_some()),
                    ("retry_backoff_ms", self.retry_backoff_ms.is_some()),
                ];
                if let Some((field, _)) = openai_only.iter().find(|(_, set)| *set) {
                    return Err(self.error(format!("{field} applies to provider openai only")));
                }
                let delay = Duration::from_millis(self.token_delay_ms.unwrap_or(0));
                Ok(Arc::new(EchoProvider::new(self.info("echo", true)?, delay)))
            }
            ProviderKind::Openai => {
                if self.token_delay_ms.is_some() {
                    return Err(self.error("token_delay_ms applies to provider echo only"));
                }
                let Some(model) = self.model.as_deref() else {
                    return Err(self.error("provider openai needs model"));
                };
                let Some(base_url) = self.base_url.as_deref() else {
                    return Err(self.error("provider openai needs base_url"));
                };
                let base_url = BaseUrl::parse(base_url).map_err(|e| self.error(e))?;
                if self.api_key_env.is_some() && base_url.is_cleartext_remote() {
                    return Err(self.error(format!(
                        "api_key_env with base_url {base_url} would send the API key in cleartext: \
                         use https://, or http:// to a loopback address (127.0.0.1, [::1], localhost) \
                         for a server on this machine"
                    )));
                }
                let api_key = match &self.api_key_env {
                    None => None,
                    Some(var) => match env(var) {
                        Some(key) if !key.is_empty() => Some(ApiKey::new(key)),
                        _ => {
                            return Err(self.error(format!("environment variable {var} is not set")));
                        }
                    },
                };
                let positive = |field: &str, value: Option<u64>, default: u64| match value.unwrap_or(default) {
                    0 => Err(self.error(format!("{field} must be greater than zero"))),
                    ms => Ok(Duration::from_millis(ms)),
                };
                let retries = self.retries.unwrap_or(2);
                if retries > 10 {
                    return Err(self.error("retries must be at most 10"));
                }
                let settings = OpenAiSettings {
                    base_url,
                    model: model.to_owned(),
                    api_key,
                    timeout: positive("timeout_ms", self.timeout_ms, 60_000)?,
                    connect_timeout: positive("connect_timeout_ms", self.connect_timeout_ms, 5_000)?,
                    retries,
                    retry_backoff: positive("retry_backoff_ms", self.retry_backoff_ms, 200)?,
                };
                Ok(Arc::new(OpenAiProvider::new(self.info(model, true)?, settings)))
            }
        }
    }
}
