//! Agents: signed WebAssembly components, referred to by name and version or
//! by digest.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{AgentDigest, AgentName, AgentVersion, Error, Result, Timestamp};

/// The WIT world every agent component targets.
pub const WIT_WORLD: &str = "taskrun:agent/agent@0.1.0";

/// Which build of an agent a Task wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentSelector {
    /// The highest version published.
    Latest,
    Version(AgentVersion),
    Digest(AgentDigest),
}

/// An agent by name, with an optional version or digest. Written
/// `name`, `name@1.2.3` or `name@sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AgentRef {
    pub name: AgentName,
    pub selector: AgentSelector,
}

impl AgentRef {
    pub fn latest(name: AgentName) -> AgentRef {
        AgentRef { name, selector: AgentSelector::Latest }
    }
}

impl fmt::Display for AgentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            AgentSelector::Latest => write!(f, "{}", self.name),
            AgentSelector::Version(v) => write!(f, "{}@{v}", self.name),
            AgentSelector::Digest(d) => write!(f, "{}@{d}", self.name),
        }
    }
}

impl FromStr for AgentRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, selector) = match s.split_once('@') {
            None => (s, AgentSelector::Latest),
            Some((name, rest)) if rest.starts_with(AgentDigest::PREFIX) => (name, AgentSelector::Digest(rest.parse()?)),
            Some((name, rest)) => (name, AgentSelector::Version(rest.parse()?)),
        };
        Ok(AgentRef { name: name.parse()?, selector })
    }
}

/// What the control plane records about a published agent build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentManifest {
    pub name: AgentName,
    pub version: AgentVersion,
    pub digest: AgentDigest,
    /// Size of the component in bytes.
    pub size: u64,
    /// The WIT world it targets, e.g. [`WIT_WORLD`].
    pub wit_world: String,
    /// Key id of the key that signed it.
    pub signer: String,
    pub published_at: Timestamp,
}
