//! ModelBackend: the model behind an agent, configured on a Worker and
//! reached by the agent only through the WIT `model-backend` host import.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What kind of content a ModelBackend accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Text,
    Image,
    Audio,
}

impl Modality {
    pub const ALL: [Modality; 3] = [Modality::Text, Modality::Image, Modality::Audio];

    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::Audio => "audio",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Modality {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Modality::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| Error::invalid("modality", s, "expected text, image or audio"))
    }
}

/// A model a Worker offers to the agents it runs.
///
/// `name` is how agents and Tasks refer to it on that Worker (e.g. `default`,
/// `fast`); `provider` is the host implementation (`echo`, `openai`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelBackend {
    pub name: String,
    pub provider: String,
    pub model_name: String,
    pub context_window: u32,
    pub modalities: Vec<Modality>,
    pub supports_streaming: bool,
}

impl ModelBackend {
    /// Longest `name`, bytes.
    pub const MAX_NAME_LEN: usize = 64;
    /// Longest `provider`, bytes.
    pub const MAX_PROVIDER_LEN: usize = 64;
    /// Longest `model_name`, bytes.
    pub const MAX_MODEL_NAME_LEN: usize = 256;

    /// Checks the fields a ModelBackend must have to be announced.
    pub fn validate(&self) -> Result<()> {
        crate::ids::check_token("model_backend.name", &self.name, Self::MAX_NAME_LEN)?;
        check_provider("model_backend.provider", &self.provider)?;
        check_model_name("model_backend.model_name", &self.model_name)?;
        if self.context_window == 0 {
            return Err(Error::invalid("model_backend.context_window", "0", "must be greater than zero"));
        }
        Ok(())
    }
}

/// What a Task needs from a Worker's ModelBackends. Every field that is set
/// must be met by one single ModelBackend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRequirement {
    pub provider: Option<String>,
    pub model_name: Option<String>,
    pub min_context_window: Option<u32>,
    pub modalities: Vec<Modality>,
}

impl ModelRequirement {
    pub fn is_empty(&self) -> bool {
        self == &ModelRequirement::default()
    }

    /// Checks that what is set could be met: a provider or model name that
    /// no ModelBackend may announce (see [`ModelBackend::validate`]) would
    /// match no Worker, and its Task would wait forever.
    pub fn validate(&self) -> Result<()> {
        if let Some(provider) = &self.provider {
            check_provider("model.provider", provider)?;
        }
        if let Some(model_name) = &self.model_name {
            check_model_name("model.model_name", model_name)?;
        }
        Ok(())
    }

    /// Whether `backend` satisfies this requirement.
    pub fn matches(&self, backend: &ModelBackend) -> bool {
        self.provider.as_ref().is_none_or(|p| p == &backend.provider)
            && self.model_name.as_ref().is_none_or(|m| m == &backend.model_name)
            && self.min_context_window.is_none_or(|w| backend.context_window >= w)
            && self.modalities.iter().all(|m| backend.modalities.contains(m))
    }

    /// Whether any of `backends` satisfies this requirement (an empty
    /// requirement is met by every Worker, even one with no ModelBackend).
    pub fn met_by(&self, backends: &[ModelBackend]) -> bool {
        self.is_empty() || backends.iter().any(|b| self.matches(b))
    }
}

/// A provider as a ModelBackend may announce it.
fn check_provider(field: &'static str, provider: &str) -> Result<()> {
    crate::ids::check_token(field, provider, ModelBackend::MAX_PROVIDER_LEN)
}

/// A model name as a ModelBackend may announce it.
fn check_model_name(field: &'static str, model_name: &str) -> Result<()> {
    if model_name.is_empty() || model_name.len() > ModelBackend::MAX_MODEL_NAME_LEN {
        return Err(Error::invalid(
            field,
            model_name,
            format!("must be 1 to {} bytes", ModelBackend::MAX_MODEL_NAME_LEN),
        ));
    }
    Ok(())
}
