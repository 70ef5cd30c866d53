//! The published agents, kept in memory as well as in sled: every
//! CreateTask and every scheduling pass resolves an agent reference, and a
//! sled read on that path would wait behind the applier's batch writes.
//! Loaded at open; a build joins it once its publish is durable.
//!
//! A build whose record is damaged does not stop the store opening: it is
//! left out, and asking for it (or for the latest version of its name,
//! when it would be that) is a Corrupt error, never an older build in
//! its place — as long as its key still names it (a damaged key leaves
//! the build unknown). Looked up by digest, a damaged build is not found.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use taskrun_core::{AgentDigest, AgentManifest, AgentName, AgentVersion};
use taskrun_store::{Error, Result, StoredAgent};

use crate::records::decode;
use crate::trees::{Trees, storage};

#[derive(Debug, Default)]
pub(crate) struct Catalog {
    by_version: BTreeMap<(AgentName, AgentVersion), StoredAgent>,
    by_digest: HashMap<AgentDigest, (AgentName, AgentVersion)>,
    /// Builds whose records could not be read, with why.
    damaged: BTreeMap<(AgentName, AgentVersion), String>,
}

impl Catalog {
    /// Every build sled holds, with its envelope.
    pub(crate) fn load(trees: &Trees) -> Result<Catalog> {
        let mut catalog = Catalog::default();
        for entry in trees.agents.iter() {
            let (key, value) = entry.map_err(storage)?;
            let read = || -> Result<StoredAgent> {
                let manifest: AgentManifest = decode("agent", &key, &value)?;
                let envelope = trees
                    .envelopes
                    .get(manifest.digest.as_bytes())
                    .map_err(storage)?
                    .ok_or_else(|| Error::corrupt("envelope", manifest.digest.to_string(), "missing"))?;
                Ok(StoredAgent { manifest, envelope: envelope.to_vec() })
            };
            match read() {
                Ok(agent) => catalog.insert(agent),
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::error!(error = %e, "agent build left out of the catalog");
                    if let Some(build) = build_of(&key) {
                        catalog.damaged.insert(build, e.to_string());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(catalog)
    }

    pub(crate) fn insert(&mut self, agent: StoredAgent) {
        let key = (agent.manifest.name.clone(), agent.manifest.version);
        self.by_digest.insert(agent.manifest.digest, key.clone());
        self.by_version.insert(key, agent);
    }

    /// `version` None = the highest version of `name`. A damaged build
    /// is an error, and so is the latest of a name when a damaged build
    /// may be it.
    pub(crate) fn get(&self, name: &AgentName, version: Option<AgentVersion>) -> Result<Option<&StoredAgent>> {
        let damaged = |v: AgentVersion| {
            let why = self.damaged.get(&(name.clone(), v))?;
            Some(Error::corrupt("agent", format!("{name}@{v}"), why))
        };
        match version {
            Some(v) => match damaged(v) {
                Some(e) => Err(e),
                None => Ok(self.by_version.get(&(name.clone(), v))),
            },
            None => {
                let latest = last_of(&self.by_version, name);
                match last_of(&self.damaged, name) {
                    Some(((_, v), _)) if latest.is_none_or(|((_, good), _)| v > good) => {
                        Err(damaged(*v).unwrap_or_else(|| Error::corrupt("agent", name.to_string(), "damaged")))
                    }
                    _ => Ok(latest.map(|(_, agent)| agent)),
                }
            }
        }
    }

    pub(crate) fn by_digest(&self, digest: &AgentDigest) -> Option<&StoredAgent> {
        self.by_digest.get(digest).and_then(|key| self.by_version.get(key))
    }

    /// Every build that could be read, by name, then version.
    pub(crate) fn manifests(&self) -> Vec<AgentManifest> {
        self.by_version.values().map(|a| a.manifest.clone()).collect()
    }
}

/// The last entry of `map` under `name`: its highest version.
fn last_of<'a, T>(
    map: &'a BTreeMap<(AgentName, AgentVersion), T>,
    name: &AgentName,
) -> Option<(&'a (AgentName, AgentVersion), &'a T)> {
    map.range((Bound::Included((name.clone(), AgentVersion::new(0, 0, 0))), Bound::Unbounded))
        .take_while(|((n, _), _)| n == name)
        .last()
}

/// The build an `agents` key names (see `records::agent_key`), if it
/// still reads.
fn build_of(key: &[u8]) -> Option<(AgentName, AgentVersion)> {
    let split = key.len().checked_sub(13)?;
    let (name, rest) = key.split_at(split);
    let (sep, version) = rest.split_first()?;
    if *sep != 0 {
        return None;
    }
    let part = |i: usize| Some(u32::from_be_bytes(version.get(i * 4..i * 4 + 4)?.try_into().ok()?));
    let name = std::str::from_utf8(name).ok()?.parse().ok()?;
    Some((name, AgentVersion::new(part(0)?, part(1)?, part(2)?)))
}

#[cfg(test)]
mod tests {
    use taskrun_core::{AgentName, AgentVersion};

    use super::build_of;
    use crate::records::agent_key;

    #[test]
    fn an_agent_key_names_its_build() {
        let name: AgentName = "summarize".parse().unwrap();
        let version = AgentVersion::new(1, 2, 300);
        assert_eq!(build_of(&agent_key(&name, version)), Some((name, version)));
        assert_eq!(build_of(b"short"), None);
        assert_eq!(build_of(&[b"x\x01".as_slice(), &[0; 12]].concat()), None);
    }
}
