//! The sled trees of one store.

use taskrun_store::{Error, Result};

/// The trees; see the crate docs for keys and values.
#[derive(Debug, Clone)]
pub(crate) struct Trees {
    pub tasks: sled::Tree,
    pub workers: sled::Tree,
    pub agents: sled::Tree,
    pub agent_digests: sled::Tree,
    pub blobs: sled::Tree,
    pub envelopes: sled::Tree,
}

pub(crate) fn storage(e: sled::Error) -> Error {
    Error::Storage(Box::new(e))
}

impl Trees {
    pub(crate) fn open(db: &sled::Db) -> Result<Trees> {
        let tree = |name: &str| db.open_tree(name).map_err(storage);
        Ok(Trees {
            tasks: tree("tasks")?,
            workers: tree("workers")?,
            agents: tree("agents")?,
            agent_digests: tree("agent_digests")?,
            blobs: tree("blobs")?,
            envelopes: tree("envelopes")?,
        })
    }
}
