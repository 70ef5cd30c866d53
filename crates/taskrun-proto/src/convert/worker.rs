//! WorkerInfo and Worker.

use std::collections::{BTreeSet, HashSet};

use taskrun_core::{AgentDigest, AgentName, ModelBackend, Worker, WorkerInfo};

use super::enums::worker_state_from_wire;
use super::{Result, at_most_bytes, at_most_entries, indexed, parse, required, timestamp, to_u32, wire_i32};
use crate::{InvalidMessage, pb};

impl From<WorkerInfo> for pb::WorkerInfo {
    fn from(w: WorkerInfo) -> pb::WorkerInfo {
        pb::WorkerInfo {
            worker_id: w.id.into(),
            agents: w.agents.into_iter().map(String::from).collect(),
            digests: w.digests.into_iter().map(String::from).collect(),
            model_backends: w.model_backends.into_iter().map(Into::into).collect(),
            labels: w.labels,
            slots: wire_i32(w.slots),
            version: w.version,
        }
    }
}

/// Every list and the version are bounded (see [`WorkerInfo`]'s `MAX_…`),
/// and checked for size before anything in them is parsed: a hello comes
/// from whoever connects.
impl TryFrom<pb::WorkerInfo> for WorkerInfo {
    type Error = InvalidMessage;
    fn try_from(w: pb::WorkerInfo) -> Result<WorkerInfo> {
        let id = parse("worker_id", &w.worker_id)?;
        at_most_entries("agents", w.agents.len(), WorkerInfo::MAX_AGENTS)?;
        at_most_entries("digests", w.digests.len(), WorkerInfo::MAX_DIGESTS)?;
        at_most_entries("model_backends", w.model_backends.len(), WorkerInfo::MAX_MODEL_BACKENDS)?;
        at_most_bytes("version", &w.version, WorkerInfo::MAX_VERSION_LEN)?;
        let mut agents = BTreeSet::new();
        for (i, text) in w.agents.iter().enumerate() {
            let name: AgentName = parse(indexed("agents", i), text)?;
            if !agents.insert(name) {
                return Err(duplicate(indexed("agents", i), text));
            }
        }
        let mut digests = BTreeSet::new();
        for (i, text) in w.digests.iter().enumerate() {
            let digest: AgentDigest = parse(indexed("digests", i), text)?;
            if !digests.insert(digest) {
                return Err(duplicate(indexed("digests", i), text));
            }
        }
        let mut model_backends: Vec<ModelBackend> = Vec::with_capacity(w.model_backends.len());
        let mut names = HashSet::with_capacity(w.model_backends.len());
        for (i, backend) in w.model_backends.into_iter().enumerate() {
            let backend = ModelBackend::try_from(backend).map_err(|e| e.under_index("model_backends", i))?;
            if !names.insert(backend.name.clone()) {
                return Err(duplicate("name".into(), &backend.name).under_index("model_backends", i));
            }
            model_backends.push(backend);
        }
        let info = WorkerInfo {
            id,
            agents,
            digests,
            model_backends,
            labels: w.labels,
            slots: to_u32("slots", w.slots, 1, Some(WorkerInfo::MAX_SLOTS))?,
            version: w.version,
        };
        info.validate().map_err(|e| InvalidMessage::from_validation("", e))?;
        Ok(info)
    }
}

fn duplicate(field: crate::FieldPath, value: &str) -> InvalidMessage {
    InvalidMessage::Duplicate { field, value: value.to_owned() }
}

impl From<Worker> for pb::Worker {
    fn from(w: Worker) -> pb::Worker {
        pb::Worker {
            info: Some(w.info.into()),
            state: pb::WorkerState::from(w.state).into(),
            first_seen_unix_ms: w.first_seen.as_millis(),
            last_seen_unix_ms: w.last_seen.as_millis(),
        }
    }
}

impl TryFrom<pb::Worker> for Worker {
    type Error = InvalidMessage;
    fn try_from(w: pb::Worker) -> Result<Worker> {
        let info = required("info", w.info)?;
        Ok(Worker {
            info: WorkerInfo::try_from(info).map_err(|e| e.under("info"))?,
            state: worker_state_from_wire("state", w.state)?,
            first_seen: timestamp(w.first_seen_unix_ms),
            last_seen: timestamp(w.last_seen_unix_ms),
        })
    }
}
