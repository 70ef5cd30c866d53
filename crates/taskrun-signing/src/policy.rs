//! The trust policy: which keys may sign agents (and which agents), and
//! which keys are revoked. Operators edit it as TOML; the schema is in
//! signing/FORMAT.md and an example in signing/trust-policy.example.toml.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use taskrun_core::AgentName;

use crate::fsutil::{self, Overwrite};
use crate::{Error, KeyId, Manifest, PublicKey, Result};

/// The policy file's schema version.
pub const POLICY_VERSION: u32 = 1;
const MAX_POLICY_FILE_LEN: u64 = 1 << 20;

/// A key the operator pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub public_key: PublicKey,
    /// Who holds it, what it is for.
    pub comment: Option<String>,
    /// When it was added, as the operator wrote it (a TOML date or string).
    pub added_at: Option<String>,
    /// The agents this key may sign; `None` means any agent.
    pub agents: Option<BTreeSet<AgentName>>,
}

impl TrustedKey {
    pub fn new(public_key: PublicKey) -> TrustedKey {
        TrustedKey { public_key, comment: None, added_at: None, agents: None }
    }

    pub fn key_id(&self) -> KeyId {
        self.public_key.key_id()
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> TrustedKey {
        self.comment = Some(comment.into());
        self
    }

    pub fn with_added_at(mut self, added_at: impl Into<String>) -> TrustedKey {
        self.added_at = Some(added_at.into());
        self
    }

    /// Restricts the key to these agents.
    pub fn with_agents(mut self, agents: impl IntoIterator<Item = AgentName>) -> TrustedKey {
        self.agents = Some(agents.into_iter().collect());
        self
    }

    /// Whether this key may sign agent `name`.
    pub fn allows(&self, name: &AgentName) -> bool {
        self.agents.as_ref().is_none_or(|a| a.contains(name))
    }
}

/// A revoked key. Revocation wins over trust: a key listed both as trusted
/// and revoked is revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub key_id: KeyId,
    pub comment: Option<String>,
    pub revoked_at: Option<String>,
}

/// Which keys are trusted, for which agents, and which are revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    trusted: BTreeMap<KeyId, TrustedKey>,
    revoked: BTreeMap<KeyId, Revocation>,
}

impl TrustPolicy {
    /// A policy that trusts nothing.
    pub fn new() -> TrustPolicy {
        TrustPolicy::default()
    }

    /// Pins a key. Refuses a key id that is already pinned.
    pub fn trust(&mut self, key: TrustedKey) -> Result<()> {
        if let Some(agents) = &key.agents
            && agents.is_empty()
        {
            return Err(Error::Policy {
                reason: format!(
                    "key {}: an empty agent list allows nothing; omit it to allow every agent",
                    key.key_id()
                ),
            });
        }
        let id = key.key_id();
        if self.trusted.contains_key(&id) {
            return Err(Error::Policy { reason: format!("key {id} is trusted twice") });
        }
        self.trusted.insert(id, key);
        Ok(())
    }

    /// Revokes a key id (it need not be pinned). Revoking twice keeps the
    /// first entry.
    pub fn revoke(&mut self, revocation: Revocation) {
        self.revoked.entry(revocation.key_id).or_insert(revocation);
    }

    /// Removes a pinned key; returns it if it was pinned.
    pub fn untrust(&mut self, key_id: &KeyId) -> Option<TrustedKey> {
        self.trusted.remove(key_id)
    }

    pub fn trusted(&self, key_id: &KeyId) -> Option<&TrustedKey> {
        self.trusted.get(key_id)
    }

    pub fn is_revoked(&self, key_id: &KeyId) -> bool {
        self.revoked.contains_key(key_id)
    }

    pub fn trusted_keys(&self) -> impl Iterator<Item = &TrustedKey> {
        self.trusted.values()
    }

    pub fn revocations(&self) -> impl Iterator<Item = &Revocation> {
        self.revoked.values()
    }

    /// Check 3 of verification: the manifest's key is not revoked, is
    /// pinned (the whole public key, not only its id), and may sign this
    /// agent.
    pub fn check(&self, manifest: &Manifest) -> Result<()> {
        let key_id = manifest.key_id;
        if self.is_revoked(&key_id) {
            return Err(Error::RevokedKey { key_id });
        }
        match self.trusted.get(&key_id) {
            Some(k) if k.public_key == manifest.public_key => {
                if k.allows(&manifest.name) {
                    Ok(())
                } else {
                    Err(Error::KeyNotAllowed { key_id, name: manifest.name.clone() })
                }
            }
            // Absent, or another key with the same 64-bit id.
            _ => Err(Error::UntrustedKey { key_id }),
        }
    }

    /// Parses and validates a policy from TOML text.
    pub fn from_toml(text: &str) -> Result<TrustPolicy> {
        let file: PolicyFile = toml::from_str(text).map_err(|e: toml::de::Error| Error::Policy {
            reason: taskrun_core::located(text, e.span().map(|s| s.start), e.message()),
        })?;
        if file.version != POLICY_VERSION {
            return Err(Error::Policy {
                reason: format!("version is {}, this build reads version {POLICY_VERSION}", file.version),
            });
        }
        let mut policy = TrustPolicy::new();
        for (i, entry) in file.trusted.into_iter().enumerate() {
            let ctx = |e: Error| Error::Policy { reason: format!("trusted[{i}]: {}", root_message(&e)) };
            let key_id: KeyId = entry.key_id.parse().map_err(ctx)?;
            let public_key: PublicKey = entry.public_key.parse().map_err(ctx)?;
            if public_key.key_id() != key_id {
                return Err(Error::Policy {
                    reason: format!(
                        "trusted[{i}]: key_id {key_id} does not match public_key (whose id is {})",
                        public_key.key_id()
                    ),
                });
            }
            let agents = match entry.agents {
                None => None,
                Some(names) => {
                    let mut set = BTreeSet::new();
                    for n in names {
                        let name: AgentName = n
                            .parse()
                            .map_err(|e| Error::Policy { reason: format!("trusted[{i}] ({key_id}): agents: {e}") })?;
                        if !set.insert(name) {
                            return Err(Error::Policy {
                                reason: format!("trusted[{i}] ({key_id}): agent {n} is listed twice"),
                            });
                        }
                    }
                    Some(set)
                }
            };
            let added_at =
                entry.added_at.map(date_text).transpose().map_err(|reason| Error::Policy {
                    reason: format!("trusted[{i}] ({key_id}): added_at {reason}"),
                })?;
            policy
                .trust(TrustedKey { public_key, comment: entry.comment, added_at, agents })
                .map_err(|e| Error::Policy { reason: format!("trusted[{i}]: {}", root_message(&e)) })?;
        }
        for (i, entry) in file.revoked.into_iter().enumerate() {
            let key_id: KeyId = entry
                .key_id
                .parse()
                .map_err(|e: Error| Error::Policy { reason: format!("revoked[{i}]: {}", root_message(&e)) })?;
            if policy.is_revoked(&key_id) {
                return Err(Error::Policy { reason: format!("revoked[{i}]: key {key_id} is revoked twice") });
            }
            let revoked_at =
                entry.revoked_at.map(date_text).transpose().map_err(|reason| Error::Policy {
                    reason: format!("revoked[{i}] ({key_id}): revoked_at {reason}"),
                })?;
            policy.revoke(Revocation { key_id, comment: entry.comment, revoked_at });
        }
        Ok(policy)
    }

    /// The policy as TOML (comments in the original file are not kept).
    pub fn to_toml(&self) -> Result<String> {
        let file = PolicyFile {
            version: POLICY_VERSION,
            trusted: self
                .trusted
                .values()
                .map(|k| TrustedKeyFile {
                    key_id: k.key_id().to_string(),
                    public_key: k.public_key.to_string(),
                    comment: k.comment.clone(),
                    added_at: k.added_at.as_deref().map(date_value),
                    agents: k.agents.as_ref().map(|a| a.iter().map(|n| n.to_string()).collect()),
                })
                .collect(),
            revoked: self
                .revoked
                .values()
                .map(|r| RevokedFile {
                    key_id: r.key_id.to_string(),
                    comment: r.comment.clone(),
                    revoked_at: r.revoked_at.as_deref().map(date_value),
                })
                .collect(),
        };
        toml::to_string(&file).map_err(|e| Error::Policy { reason: e.to_string() })
    }

    /// Loads a policy file (at most 1 MiB).
    pub fn load(path: impl AsRef<Path>) -> Result<TrustPolicy> {
        let path = path.as_ref();
        let (_, bytes) = fsutil::read_bounded(path, "trust policy file", MAX_POLICY_FILE_LEN)?;
        let text =
            std::str::from_utf8(&bytes).map_err(|_| Error::Policy { reason: "not UTF-8 text".into() }.in_file(path))?;
        TrustPolicy::from_toml(text).map_err(|e| e.in_file(path))
    }

    /// Writes the policy atomically (mode 0644), replacing the file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        fsutil::write_atomic(path.as_ref(), self.to_toml()?.as_bytes(), 0o644, Overwrite::Allow)
    }
}

fn root_message(e: &Error) -> String {
    match e {
        Error::Policy { reason } => reason.clone(),
        e => e.to_string(),
    }
}

/// `added_at` / `revoked_at` may be a TOML date-time or a string.
fn date_text(v: toml::Value) -> std::result::Result<String, String> {
    match v {
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::String(s) => Ok(s),
        other => Err(format!("must be a date or a string, not {}", other.type_str())),
    }
}

fn date_value(s: &str) -> toml::Value {
    match s.parse::<toml::value::Datetime>() {
        Ok(d) => toml::Value::Datetime(d),
        Err(_) => toml::Value::String(s.to_owned()),
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    trusted: Vec<TrustedKeyFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    revoked: Vec<RevokedFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedKeyFile {
    key_id: String,
    public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    added_at: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agents: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedFile {
    key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_at: Option<toml::Value>,
}
