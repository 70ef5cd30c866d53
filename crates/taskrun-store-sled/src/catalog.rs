//! The published agents, kept in memory as well as in sled: every
//! CreateTask and every scheduling pass resolves an agent reference, and a
//! sled read on that path would wait behind the applier's batch writes.
//! Loaded at open; a build joins it once its publish is durable.

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
}

impl Catalog {
    /// Every build sled holds, with its envelope.
    pub(crate) fn load(trees: &Trees) -> Result<Catalog> {
        let mut catalog = Catalog::default();
        for entry in trees.agents.iter() {
            let (key, value) = entry.map_err(storage)?;
            let manifest: AgentManifest = decode("agent", &key, &value)?;
            let envelope = trees
                .envelopes
                .get(manifest.digest.as_bytes())
                .map_err(storage)?
                .ok_or_else(|| Error::corrupt("envelope", manifest.digest.to_string(), "missing"))?;
            catalog.insert(StoredAgent { manifest, envelope: envelope.to_vec() });
        }
        Ok(catalog)
    }

    pub(crate) fn insert(&mut self, agent: StoredAgent) {
        let key = (agent.manifest.name.clone(), agent.manifest.version);
        self.by_digest.insert(agent.manifest.digest, key.clone());
        self.by_version.insert(key, agent);
    }

    /// `version` None = the highest version of `name`.
    pub(crate) fn get(&self, name: &AgentName, version: Option<AgentVersion>) -> Option<&StoredAgent> {
        match version {
            Some(v) => self.by_version.get(&(name.clone(), v)),
            None => self
                .by_version
                .range((Bound::Included((name.clone(), AgentVersion::new(0, 0, 0))), Bound::Unbounded))
                .take_while(|((n, _), _)| n == name)
                .last()
                .map(|(_, agent)| agent),
        }
    }

    pub(crate) fn by_digest(&self, digest: &AgentDigest) -> Option<&StoredAgent> {
        self.by_digest.get(digest).and_then(|key| self.by_version.get(key))
    }

    /// Every build, by name, then version.
    pub(crate) fn manifests(&self) -> Vec<AgentManifest> {
        self.by_version.values().map(|a| a.manifest.clone()).collect()
    }
}
