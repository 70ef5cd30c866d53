//! The signed manifest and its canonical encoding.
//!
//! A manifest is a sequence of fields, each `tag (u8) | length (u16 BE) |
//! value`, with tags in strictly increasing order, every required field
//! present, no unknown tag, and every value of the exact form its tag
//! prescribes. Each manifest therefore has exactly one encoding; the
//! signature covers those bytes. signing/FORMAT.md is the specification.

use taskrun_core::{AgentDigest, AgentManifest, AgentName, AgentVersion, Timestamp, WIT_WORLD};

use crate::{Error, KeyId, PublicKey, Result};

/// The longest WIT world string accepted, in bytes.
pub const MAX_WIT_WORLD_LEN: usize = 128;

/// The largest manifest accepted, in bytes (the largest valid one is 343).
pub const MAX_MANIFEST_LEN: usize = 1024;

/// What a signed manifest says about one agent component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: AgentName,
    pub version: AgentVersion,
    /// SHA-256 of the component's bytes.
    pub digest: AgentDigest,
    /// The component's length in bytes.
    pub size: u64,
    /// The WIT world (with its package version) the component targets,
    /// e.g. [`WIT_WORLD`].
    pub wit_world: String,
    pub created_at: Timestamp,
    /// After this instant (plus the verifier's skew allowance) the
    /// signature is no longer accepted.
    pub expires_at: Option<Timestamp>,
    /// Always `public_key.key_id()`; both are signed.
    pub key_id: KeyId,
    pub public_key: PublicKey,
}

impl Manifest {
    /// The control plane's record of this agent build.
    pub fn to_agent_manifest(&self, published_at: Timestamp) -> AgentManifest {
        AgentManifest {
            name: self.name.clone(),
            version: self.version,
            digest: self.digest,
            size: self.size,
            wit_world: self.wit_world.clone(),
            signer: self.key_id.to_string(),
            published_at,
        }
    }
}

/// What an author states about the agent they sign; the digest, size and
/// key come from the component and the signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDetails {
    pub name: AgentName,
    pub version: AgentVersion,
    /// Defaults to [`WIT_WORLD`].
    pub wit_world: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

impl AgentDetails {
    pub fn new(name: AgentName, version: AgentVersion, created_at: Timestamp) -> AgentDetails {
        AgentDetails { name, version, wit_world: WIT_WORLD.to_owned(), created_at, expires_at: None }
    }

    pub fn with_expires_at(mut self, expires_at: Timestamp) -> AgentDetails {
        self.expires_at = Some(expires_at);
        self
    }

    pub fn with_wit_world(mut self, wit_world: impl Into<String>) -> AgentDetails {
        self.wit_world = wit_world.into();
        self
    }
}

// Field tags, in the order they must appear.
pub(crate) const TAG_NAME: u8 = 1;
pub(crate) const TAG_VERSION: u8 = 2;
pub(crate) const TAG_DIGEST: u8 = 3;
pub(crate) const TAG_SIZE: u8 = 4;
pub(crate) const TAG_WIT_WORLD: u8 = 5;
pub(crate) const TAG_CREATED_AT: u8 = 6;
pub(crate) const TAG_EXPIRES_AT: u8 = 7;
pub(crate) const TAG_KEY_ID: u8 = 8;
pub(crate) const TAG_PUBLIC_KEY: u8 = 9;
const LAST_TAG: u8 = TAG_PUBLIC_KEY;

/// Each tag's name and allowed value length (inclusive).
fn field_rule(tag: u8) -> Option<(&'static str, usize, usize)> {
    Some(match tag {
        TAG_NAME => ("name", 1, AgentName::MAX_LEN),
        TAG_VERSION => ("version", 12, 12),
        TAG_DIGEST => ("digest", 32, 32),
        TAG_SIZE => ("size", 8, 8),
        TAG_WIT_WORLD => ("wit_world", 1, MAX_WIT_WORLD_LEN),
        TAG_CREATED_AT => ("created_at", 8, 8),
        TAG_EXPIRES_AT => ("expires_at", 8, 8),
        TAG_KEY_ID => ("key_id", KeyId::TEXT_LEN, KeyId::TEXT_LEN),
        TAG_PUBLIC_KEY => ("public_key", 32, 32),
        _ => return None,
    })
}

/// Checks what a signer provides; the decoder checks the same rules.
pub(crate) fn check_details(d: &AgentDetails) -> Result<()> {
    check_wit_world(&d.wit_world).map_err(|reason| Error::InvalidManifest { reason })?;
    if d.created_at.as_millis() < 0 {
        return Err(Error::InvalidManifest { reason: "created_at is before 1970".into() });
    }
    if let Some(exp) = d.expires_at
        && exp < d.created_at
    {
        return Err(Error::InvalidManifest {
            reason: format!("expires_at {exp} is before created_at {}", d.created_at),
        });
    }
    Ok(())
}

fn check_wit_world(w: &str) -> std::result::Result<(), String> {
    if w.is_empty() || w.len() > MAX_WIT_WORLD_LEN {
        return Err(format!("wit_world must be 1 to {MAX_WIT_WORLD_LEN} bytes, got {}", w.len()));
    }
    if !w.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("wit_world must be printable ASCII without spaces".into());
    }
    Ok(())
}

impl Manifest {
    /// The canonical encoding. The caller has checked the fields
    /// (`check_details`); names, digests and keys are valid by type.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(400);
        let mut field = |tag: u8, value: &[u8]| {
            out.push(tag);
            // Every field's length is capped far below u16::MAX by `field_rule`.
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
            out.extend_from_slice(value);
        };
        field(TAG_NAME, self.name.as_str().as_bytes());
        let mut version = [0u8; 12];
        version[0..4].copy_from_slice(&self.version.major.to_be_bytes());
        version[4..8].copy_from_slice(&self.version.minor.to_be_bytes());
        version[8..12].copy_from_slice(&self.version.patch.to_be_bytes());
        field(TAG_VERSION, &version);
        field(TAG_DIGEST, self.digest.as_bytes());
        field(TAG_SIZE, &self.size.to_be_bytes());
        field(TAG_WIT_WORLD, self.wit_world.as_bytes());
        field(TAG_CREATED_AT, &self.created_at.as_millis().to_be_bytes());
        if let Some(exp) = self.expires_at {
            field(TAG_EXPIRES_AT, &exp.as_millis().to_be_bytes());
        }
        field(TAG_KEY_ID, self.key_id.to_string().as_bytes());
        field(TAG_PUBLIC_KEY, &self.public_key.to_bytes());
        out
    }

    /// Decodes a manifest strictly. `base` is the manifest's offset in the
    /// envelope, so errors can name envelope offsets.
    pub(crate) fn decode(bytes: &[u8], base: usize) -> Result<Manifest> {
        let mut fields: [Option<&[u8]>; LAST_TAG as usize + 1] = [None; LAST_TAG as usize + 1];
        let mut last_tag = 0u8;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let at = base + pos;
            let Some(&[tag, len_hi, len_lo]) = bytes.get(pos..pos + 3).and_then(|h| <&[u8; 3]>::try_from(h).ok())
            else {
                return Err(Error::malformed(format!(
                    "field header at offset {at} is cut off by the end of the manifest"
                )));
            };
            let Some((name, min, max)) = field_rule(tag) else {
                return Err(Error::malformed(format!("unknown field tag {tag} at offset {at}")));
            };
            if tag == last_tag {
                return Err(Error::malformed(format!("duplicate field {name} at offset {at}")));
            }
            if tag < last_tag {
                return Err(Error::malformed(format!("field {name} at offset {at} is out of order")));
            }
            let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
            if len < min || len > max {
                let expected = if min == max { format!("{min}") } else { format!("{min} to {max}") };
                return Err(Error::malformed(format!(
                    "field {name} at offset {at} is {len} bytes, expected {expected}"
                )));
            }
            let start = pos + 3;
            let Some(value) = bytes.get(start..start + len) else {
                return Err(Error::malformed(format!("field {name} at offset {at} runs past the end of the manifest")));
            };
            fields[usize::from(tag)] = Some(value);
            last_tag = tag;
            pos = start + len;
        }

        let required = |tag: u8| -> Result<&[u8]> {
            fields[usize::from(tag)].ok_or_else(|| {
                let name = field_rule(tag).map_or("?", |r| r.0);
                Error::malformed(format!("manifest has no {name} field"))
            })
        };

        let name_bytes = required(TAG_NAME)?;
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| Error::malformed("field name is not UTF-8"))?
            .parse::<AgentName>()
            .map_err(|e| Error::malformed(format!("field name: {e}")))?;

        let v = required(TAG_VERSION)?;
        let version = AgentVersion::new(be_u32(&v[0..4]), be_u32(&v[4..8]), be_u32(&v[8..12]));

        let digest = AgentDigest::from_bytes(array(required(TAG_DIGEST)?));
        let size = u64::from_be_bytes(array(required(TAG_SIZE)?));

        let wit_world = std::str::from_utf8(required(TAG_WIT_WORLD)?)
            .map_err(|_| Error::malformed("field wit_world is not UTF-8"))?;
        check_wit_world(wit_world).map_err(|reason| Error::malformed(format!("field {reason}")))?;

        let created_at = Timestamp::from_millis(i64::from_be_bytes(array(required(TAG_CREATED_AT)?)));
        if created_at.as_millis() < 0 {
            return Err(Error::malformed("field created_at is before 1970"));
        }
        let expires_at =
            fields[usize::from(TAG_EXPIRES_AT)].map(|v| Timestamp::from_millis(i64::from_be_bytes(array(v))));
        if let Some(exp) = expires_at
            && exp < created_at
        {
            return Err(Error::malformed(format!("field expires_at {exp} is before created_at {created_at}")));
        }

        let key_id = std::str::from_utf8(required(TAG_KEY_ID)?)
            .map_err(|_| Error::malformed("field key_id is not UTF-8"))?
            .parse::<KeyId>()
            .map_err(|e| Error::malformed(format!("field key_id: {e}")))?;
        let public_key = PublicKey::from_bytes(&array(required(TAG_PUBLIC_KEY)?))
            .map_err(|e| Error::malformed(format!("field public_key: {e}")))?;
        if public_key.key_id() != key_id {
            return Err(Error::malformed(format!(
                "field key_id {key_id} is not the id of the public key ({})",
                public_key.key_id()
            )));
        }

        Ok(Manifest {
            name,
            version,
            digest,
            size,
            wit_world: wit_world.to_owned(),
            created_at,
            expires_at,
            key_id,
            public_key,
        })
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(array(b))
}

/// Copies a slice whose length the field rules already fixed at `N`.
fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    // Lengths were checked against `field_rule`; `min` keeps this total.
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}
