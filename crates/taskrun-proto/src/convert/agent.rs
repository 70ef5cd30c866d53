//! AgentRef and AgentManifest.

use taskrun_core::{AgentManifest, AgentRef, AgentSelector};

use super::{Result, parse, timestamp, to_u64, wire_i64};
use crate::{InvalidMessage, pb};

impl From<AgentRef> for pb::AgentRef {
    fn from(r: AgentRef) -> pb::AgentRef {
        pb::AgentRef {
            name: r.name.into(),
            selector: match r.selector {
                AgentSelector::Latest => None,
                AgentSelector::Version(v) => Some(pb::agent_ref::Selector::Version(v.to_string())),
                AgentSelector::Digest(d) => Some(pb::agent_ref::Selector::Digest(d.to_string())),
            },
        }
    }
}

impl TryFrom<pb::AgentRef> for AgentRef {
    type Error = InvalidMessage;
    fn try_from(r: pb::AgentRef) -> Result<AgentRef> {
        Ok(AgentRef {
            name: parse("name", &r.name)?,
            selector: match r.selector {
                None => AgentSelector::Latest,
                Some(pb::agent_ref::Selector::Version(v)) => AgentSelector::Version(parse("version", &v)?),
                Some(pb::agent_ref::Selector::Digest(d)) => AgentSelector::Digest(parse("digest", &d)?),
            },
        })
    }
}

impl From<AgentManifest> for pb::AgentManifest {
    fn from(m: AgentManifest) -> pb::AgentManifest {
        pb::AgentManifest {
            name: m.name.into(),
            version: m.version.to_string(),
            digest: m.digest.to_string(),
            size_bytes: wire_i64(m.size),
            wit_world: m.wit_world,
            signer: m.signer,
            published_at_unix_ms: m.published_at.as_millis(),
        }
    }
}

impl TryFrom<pb::AgentManifest> for AgentManifest {
    type Error = InvalidMessage;
    fn try_from(m: pb::AgentManifest) -> Result<AgentManifest> {
        let name = parse("name", &m.name)?;
        let version = parse("version", &m.version)?;
        let digest = parse("digest", &m.digest)?;
        let size = to_u64("size_bytes", m.size_bytes, 1, None)?;
        if m.wit_world.is_empty() {
            return Err(InvalidMessage::Missing("wit_world".into()));
        }
        if m.signer.is_empty() {
            return Err(InvalidMessage::Missing("signer".into()));
        }
        Ok(AgentManifest {
            name,
            version,
            digest,
            size,
            wit_world: m.wit_world,
            signer: m.signer,
            published_at: timestamp(m.published_at_unix_ms),
        })
    }
}
