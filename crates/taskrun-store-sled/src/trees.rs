//! The sled trees of one store.

use taskrun_store::{Error, Result};

/// One tree per kind of record; see the crate docs for keys and values.
#[derive(Debug, Clone)]
pub(crate) struct Trees {
    pub tasks: sled::Tree,
    pub task_state: sled::Tree,
    pub run_task: sled::Tree,
    pub events: sled::Tree,
    pub idempotency: sled::Tree,
    pub output: sled::Tree,
    pub open_tasks: sled::Tree,
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
            task_state: tree("task_state")?,
            run_task: tree("run_task")?,
            events: tree("events")?,
            idempotency: tree("idempotency")?,
            output: tree("output")?,
            open_tasks: tree("open_tasks")?,
            workers: tree("workers")?,
            agents: tree("agents")?,
            agent_digests: tree("agent_digests")?,
            blobs: tree("blobs")?,
            envelopes: tree("envelopes")?,
        })
    }
}
