//! Shared test helpers: deterministic keys, components and a verifier on a
//! manual clock.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use taskrun_core::{AgentName, AgentVersion, ManualClock, Timestamp};
use taskrun_signing::{
    AgentDetails, Envelope, FORMAT_VERSION, MAGIC, SIGNING_CONTEXT, SigningKey, TrustPolicy, TrustedKey, Verifier,
};

/// The manual clock's start: 2023-11-14T22:13:20Z.
pub const T0: Timestamp = Timestamp(1_700_000_000_000);

/// A deterministic test key (not secret: derived from a public string).
pub fn key(n: u32) -> SigningKey {
    let seed: [u8; 32] = Sha256::digest(format!("taskrun-signing integration test key {n}")).into();
    SigningKey::from_seed(&seed)
}

pub fn name(s: &str) -> AgentName {
    s.parse().expect("test agent name")
}

pub fn ver(s: &str) -> AgentVersion {
    s.parse().expect("test agent version")
}

/// `len` deterministic bytes, different for each `salt`.
pub fn component(len: usize, salt: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block: [u8; 32] = Sha256::digest([salt]).into();
    while out.len() < len {
        let take = (len - out.len()).min(32);
        out.extend_from_slice(&block[..take]);
        block = Sha256::digest(block).into();
    }
    out
}

pub fn details(agent: &str, version: &str) -> AgentDetails {
    AgentDetails::new(name(agent), ver(version), T0)
}

pub fn sign(key: &SigningKey, agent: &str, version: &str, component: &[u8]) -> Envelope {
    key.sign_component(component, details(agent, version)).expect("sign")
}

/// A verifier on a manual clock at `T0` that trusts `key(1)` for any agent.
pub struct Fixture {
    pub key: SigningKey,
    pub clock: ManualClock,
    pub verifier: Verifier,
}

impl Fixture {
    pub fn new() -> Fixture {
        let key = key(1);
        let mut policy = TrustPolicy::new();
        policy.trust(TrustedKey::new(key.public_key()).with_comment("test key 1")).expect("trust");
        Fixture::with_policy(key, policy)
    }

    pub fn with_policy(key: SigningKey, policy: TrustPolicy) -> Fixture {
        let clock = ManualClock::new(T0);
        let verifier = Verifier::new(policy, Arc::new(clock.clone())).with_skew(Duration::from_secs(60));
        Fixture { key, clock, verifier }
    }
}

/// Builds an envelope around arbitrary manifest bytes, validly signed by
/// `key`: for testing that the parser, not the signature, refuses them.
pub fn envelope_around(key: &SigningKey, manifest: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer as _;
    let dalek = ed25519_dalek::SigningKey::from_bytes(&seed_of(key));
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(manifest);
    let sig = dalek.sign(&msg);
    let mut out = MAGIC.to_vec();
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&u16::try_from(manifest.len()).expect("small manifest").to_be_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&sig.to_bytes());
    out
}

/// The seed of a key, through its private text form.
pub fn seed_of(key: &SigningKey) -> [u8; 32] {
    use base64::Engine as _;
    let text = key.to_private_text();
    let b64 = text.trim().strip_prefix(taskrun_signing::PRIVATE_KEY_PREFIX).expect("prefix");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    bytes.try_into().expect("32 bytes")
}

/// A manifest's (tag, value) fields.
pub type Fields = Vec<(u8, Vec<u8>)>;

/// Splits a manifest into (tag, value) fields; the input must be valid.
pub fn fields(manifest: &[u8]) -> Fields {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < manifest.len() {
        let tag = manifest[pos];
        let len = usize::from(u16::from_be_bytes([manifest[pos + 1], manifest[pos + 2]]));
        out.push((tag, manifest[pos + 3..pos + 3 + len].to_vec()));
        pos += 3 + len;
    }
    out
}

/// Joins (tag, value) fields into manifest bytes, in the order given.
pub fn join(fields: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, value) in fields {
        out.push(*tag);
        out.extend_from_slice(&u16::try_from(value.len()).expect("short").to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The offset, in the envelope, of the value of field `tag`.
pub fn field_offset(envelope: &Envelope, tag: u8) -> usize {
    let manifest = envelope.manifest_bytes();
    let mut pos = 0;
    while pos < manifest.len() {
        let len = usize::from(u16::from_be_bytes([manifest[pos + 1], manifest[pos + 2]]));
        if manifest[pos] == tag {
            return 11 + pos + 3;
        }
        pos += 3 + len;
    }
    panic!("no field {tag}")
}
