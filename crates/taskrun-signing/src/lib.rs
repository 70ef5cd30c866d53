//! Signed agents: Ed25519 keys and key files, the signed-agent envelope,
//! the operator's trust policy, rollback protection and verification.
//!
//! An author signs a small canonical manifest that carries the component's
//! SHA-256 digest and size (not the component: signing 8 MiB directly would
//! cost a SHA-512 pass inside Ed25519 on every verification). A verifier
//! checks the bytes against the digest, the signature, the trust policy,
//! expiry, rollback and what the caller asked for, and hands back a
//! [`VerifiedAgent`] holding exactly the bytes it hashed.
//!
//! ```ignore
//! let key = SigningKey::generate();
//! let envelope = key.sign_component(&wasm, AgentDetails::new(name, version, clock.now()))?;
//!
//! let mut policy = TrustPolicy::new();
//! policy.trust(TrustedKey::new(key.public_key()))?;
//! let verifier = Verifier::new(policy, Arc::new(SystemClock));
//! let agent = verifier.verify(envelope.as_bytes(), wasm, &Expect::agent_ref(&agent_ref))?;
//! compile(agent.component());
//! ```
//!
//! The byte-level format is specified in signing/FORMAT.md.

mod envelope;
mod error;
mod fsutil;
mod keys;
mod manifest;
mod policy;
mod rollback;
mod verify;

pub use envelope::{Envelope, FORMAT_VERSION, MAGIC, MAX_ENVELOPE_LEN, SIGNATURE_LEN, SIGNING_CONTEXT};
pub use error::{Error, Result};
pub use fsutil::Overwrite;
pub use keys::{KEY_ID_PREFIX, KeyId, PRIVATE_KEY_PREFIX, PUBLIC_KEY_PREFIX, PublicKey, SigningKey};
pub use manifest::{AgentDetails, MAX_MANIFEST_LEN, MAX_WIT_WORLD_LEN, Manifest};
pub use policy::{POLICY_VERSION, Revocation, TrustPolicy, TrustedKey};
pub use rollback::{ROLLBACK_STATE_VERSION, RollbackState};
pub use verify::{CacheStats, DEFAULT_CACHE_CAPACITY, DEFAULT_SKEW, Expect, VerifiedAgent, Verifier};
