//! ModelBackend providers: the host side of the WIT `model-backend` import.
//!
//! A Worker configures its ModelBackends in TOML ([`ModelBackendsConfig`]);
//! [`ModelBackends`] turns that into providers and is handed to every Run.
//! An agent reaches only the backends its Worker configured: any other name
//! is [`ModelError::UnknownBackend`].
//!
//! Providers are synchronous: a host call blocks the Run's thread, so every
//! call honours the Run's [`CallContext`]: its deadline bounds timeouts and
//! retries, and a call waiting on the network, between streamed chunks or in
//! a retry's backoff returns within [`POLL_STEP`] (plus scheduling) of the
//! Run being cancelled or reaching its deadline. The `openai` provider does
//! its blocking I/O on a helper thread and waits for it with
//! [`CallContext::wait`]; a thread given up on finishes on its own, bounded
//! by its request's timeout, and can reach nothing of the Run.

mod base_url;
mod config;
mod echo;
mod openai;
mod sse;

use std::fmt;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use taskrun_core::ModelBackend;

use crate::CancelToken;

pub use config::{BackendConfig, ModelBackendsConfig, ProviderKind};
pub use echo::EchoProvider;
pub use openai::OpenAiProvider;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// What an agent asked a ModelBackend for.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    pub finish_reason: Option<String>,
}

/// Why a model call failed; agents see it as the WIT `model-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model backend {0:?}")]
    UnknownBackend(String),
    #[error("model call limit exceeded")]
    LimitExceeded,
    #[error("provider: {0}")]
    Provider(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// How often a waiting model call looks at its Run's cancellation and
/// deadline: the latency of stopping a call blocked on a slow server.
pub const POLL_STEP: Duration = Duration::from_millis(10);

/// The time and cancellation a model call must respect: those of its Run.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub deadline: Instant,
    pub cancel: CancelToken,
}

impl CallContext {
    /// A context that ends after `budget` and is never cancelled.
    pub fn with_budget(budget: Duration) -> CallContext {
        // A year is "no deadline" and keeps `Instant` arithmetic in range.
        let budget = budget.min(Duration::from_secs(365 * 24 * 60 * 60));
        CallContext { deadline: Instant::now() + budget, cancel: CancelToken::new() }
    }

    /// Time left before the Run's deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Fails once the Run is cancelled or out of time.
    pub fn check(&self) -> Result<(), ModelError> {
        if self.cancel.is_cancelled() {
            return Err(ModelError::Provider("run cancelled".into()));
        }
        if self.remaining().is_zero() {
            return Err(ModelError::LimitExceeded);
        }
        Ok(())
    }

    /// Sleeps `duration` in short steps, stopping early (with an error) when
    /// the Run is cancelled or its deadline comes first.
    pub fn sleep(&self, duration: Duration) -> Result<(), ModelError> {
        let until = Instant::now() + duration;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep(POLL_STEP.min(until - now).min(self.remaining()));
        }
    }

    /// What a failed call reports: the Run's cancellation or deadline once
    /// the Run is over (a request timeout that fired with the deadline is
    /// the deadline), else `error`.
    pub(crate) fn reason(&self, error: ModelError) -> ModelError {
        self.check().err().unwrap_or(error)
    }

    /// Waits for the next message on `rx` in steps of [`POLL_STEP`],
    /// failing (as [`check`](CallContext::check) does) as soon as the Run is
    /// cancelled or out of time. `Ok(None)`: every sender is gone.
    pub(crate) fn wait<T>(&self, rx: &Receiver<T>) -> Result<Option<T>, ModelError> {
        loop {
            self.check()?;
            match rx.recv_timeout(POLL_STEP.min(self.remaining())) {
                Ok(message) => return Ok(Some(message)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }
}

/// A host implementation of a ModelBackend.
pub trait Provider: Send + Sync + fmt::Debug {
    /// What the Worker announces about it.
    fn info(&self) -> &ModelBackend;

    /// A whole completion.
    fn complete(&self, request: &CompletionRequest, ctx: &CallContext) -> Result<Completion, ModelError>;

    /// A completion delivered piece by piece, as the model produces it.
    fn stream(&self, request: &CompletionRequest, ctx: &CallContext) -> Result<Box<dyn TokenStream>, ModelError>;
}

/// The pieces of one streamed completion.
pub trait TokenStream: Send {
    /// The next piece; `None` once the completion is finished.
    fn next_token(&mut self, ctx: &CallContext) -> Result<Option<String>, ModelError>;
}

/// The ModelBackends a Worker offers, by name. The one named `default` (or
/// else the first) answers requests that name none.
#[derive(Debug, Clone, Default)]
pub struct ModelBackends {
    providers: Vec<Arc<dyn Provider>>,
}

impl ModelBackends {
    /// The name that requests without a backend name resolve to first.
    pub const DEFAULT_NAME: &'static str = "default";

    /// No ModelBackends: every model call fails with unknown-backend.
    pub fn none() -> ModelBackends {
        ModelBackends::default()
    }

    /// Builds the providers `config` describes (reading API keys from the
    /// environment variables it names).
    pub fn from_config(config: &ModelBackendsConfig) -> crate::Result<ModelBackends> {
        ModelBackends::from_config_with_env(config, &|var| std::env::var(var).ok())
    }

    /// Like [`from_config`](ModelBackends::from_config), with `env` looking
    /// up environment variables (tests, or keys from a secret store).
    pub fn from_config_with_env(
        config: &ModelBackendsConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> crate::Result<ModelBackends> {
        let mut backends = ModelBackends::none();
        for backend in &config.model_backends {
            backends = backends.with(backend.build_with_env(env)?)?;
        }
        Ok(backends)
    }

    /// Parses `[[model_backends]]` tables out of a TOML document (other keys
    /// are ignored) and builds them.
    pub fn from_toml(text: &str) -> crate::Result<ModelBackends> {
        ModelBackends::from_config(&ModelBackendsConfig::from_toml(text)?)
    }

    /// Adds `provider`; its name must be new.
    pub fn with(mut self, provider: Arc<dyn Provider>) -> crate::Result<ModelBackends> {
        let name = &provider.info().name;
        if self.providers.iter().any(|p| &p.info().name == name) {
            return Err(crate::Error::ModelConfig { backend: name.clone(), message: "configured twice".into() });
        }
        self.providers.push(provider);
        Ok(self)
    }

    /// What the Worker announces (e.g. in its WorkerHello).
    pub fn describe(&self) -> Vec<ModelBackend> {
        self.providers.iter().map(|p| p.info().clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// The provider named `name`, or the default one for `None`.
    pub fn resolve(&self, name: Option<&str>) -> Result<&Arc<dyn Provider>, ModelError> {
        match name {
            Some(name) => self
                .providers
                .iter()
                .find(|p| p.info().name == name)
                .ok_or_else(|| ModelError::UnknownBackend(name.to_owned())),
            None => self
                .providers
                .iter()
                .find(|p| p.info().name == Self::DEFAULT_NAME)
                .or_else(|| self.providers.first())
                .ok_or_else(|| ModelError::UnknownBackend(Self::DEFAULT_NAME.to_owned())),
        }
    }
}

/// The last user message of a conversation (or the last message of any
/// role, or nothing).
fn last_user_text(request: &CompletionRequest) -> &str {
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .or_else(|| request.messages.last())
        .map(|m| m.content.as_str())
        .unwrap_or("")
}
