//! Rollback protection: the highest version of each agent a verifier has
//! accepted. A lower version of the same agent is refused afterwards, so an
//! old (validly signed, perhaps vulnerable) build cannot be replayed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use taskrun_core::{AgentName, AgentVersion};

use crate::fsutil::{self, Overwrite};
use crate::{Error, Result};

/// The rollback file's schema version.
pub const ROLLBACK_STATE_VERSION: u32 = 1;
const MAX_ROLLBACK_FILE_LEN: u64 = 16 << 20;

/// Highest accepted version per agent name. Persist it with
/// [`save`](RollbackState::save) / [`load`](RollbackState::load), or let the
/// [`Verifier`](crate::Verifier) do it
/// ([`with_rollback_file`](crate::Verifier::with_rollback_file)).
///
/// File format (TOML):
/// ```toml
/// version = 1
/// [highest]
/// echo = "1.2.0"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollbackState {
    highest: BTreeMap<AgentName, AgentVersion>,
}

impl RollbackState {
    pub fn new() -> RollbackState {
        RollbackState::default()
    }

    /// The highest version of `name` accepted so far.
    pub fn highest(&self, name: &AgentName) -> Option<AgentVersion> {
        self.highest.get(name).copied()
    }

    /// Refuses a version lower than the highest accepted. The same version
    /// is accepted again (re-verification, another Run of it).
    pub fn check(&self, name: &AgentName, version: AgentVersion) -> Result<()> {
        match self.highest(name) {
            Some(highest) if version < highest => Err(Error::Rollback { name: name.clone(), version, highest }),
            _ => Ok(()),
        }
    }

    /// Records an accepted version; returns whether the state changed.
    pub fn record(&mut self, name: &AgentName, version: AgentVersion) -> bool {
        match self.highest.get_mut(name) {
            Some(h) if *h >= version => false,
            Some(h) => {
                *h = version;
                true
            }
            None => {
                self.highest.insert(name.clone(), version);
                true
            }
        }
    }

    /// Forgets an agent (an operator's deliberate downgrade); returns the
    /// version that was recorded.
    pub fn forget(&mut self, name: &AgentName) -> Option<AgentVersion> {
        self.highest.remove(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&AgentName, AgentVersion)> {
        self.highest.iter().map(|(n, v)| (n, *v))
    }

    pub fn len(&self) -> usize {
        self.highest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.highest.is_empty()
    }

    pub fn from_toml(text: &str) -> Result<RollbackState> {
        let file: RollbackFile = toml::from_str(text).map_err(|e: toml::de::Error| Error::RollbackState {
            reason: taskrun_core::located(text, e.span().map(|s| s.start), e.message()),
        })?;
        if file.version != ROLLBACK_STATE_VERSION {
            return Err(Error::RollbackState {
                reason: format!("version is {}, this build reads version {ROLLBACK_STATE_VERSION}", file.version),
            });
        }
        Ok(RollbackState { highest: file.highest })
    }

    pub fn to_toml(&self) -> Result<String> {
        let file = RollbackFile { version: ROLLBACK_STATE_VERSION, highest: self.highest.clone() };
        toml::to_string(&file).map_err(|e| Error::RollbackState { reason: e.to_string() })
    }

    /// Loads a state file.
    pub fn load(path: impl AsRef<Path>) -> Result<RollbackState> {
        let path = path.as_ref();
        let (_, bytes) = fsutil::read_bounded(path, "rollback state file", MAX_ROLLBACK_FILE_LEN)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::RollbackState { reason: "not UTF-8 text".into() }.in_file(path))?;
        RollbackState::from_toml(text).map_err(|e| e.in_file(path))
    }

    /// Loads a state file, or an empty state if there is no file yet.
    pub fn load_or_default(path: impl AsRef<Path>) -> Result<RollbackState> {
        let path = path.as_ref();
        match path.symlink_metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RollbackState::new()),
            _ => RollbackState::load(path),
        }
    }

    /// Writes the state atomically (mode 0644), replacing the file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        fsutil::write_atomic(path.as_ref(), self.to_toml()?.as_bytes(), 0o644, Overwrite::Allow)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackFile {
    version: u32,
    #[serde(default)]
    highest: BTreeMap<AgentName, AgentVersion>,
}
