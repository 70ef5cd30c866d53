//! The signed envelope: a header, the canonical manifest and an Ed25519
//! signature over a domain-separated copy of the manifest.
//!
//! ```text
//! offset  size  content
//! 0       8     magic "TRAGENT\0"
//! 8       1     format version, 0x01
//! 9       2     manifest length M, u16 big-endian, 1..=1024
//! 11      M     manifest (see manifest.rs)
//! 11+M    64    Ed25519 signature over SIGNING_CONTEXT || manifest
//! ```
//! Nothing may follow the signature.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _};
use sha2::{Digest as _, Sha256};
use taskrun_core::AgentDigest;

use crate::manifest::{AgentDetails, MAX_MANIFEST_LEN, check_details};
use crate::{Error, Manifest, PublicKey, Result, SigningKey};

/// The first 8 bytes of every envelope.
pub const MAGIC: &[u8; 8] = b"TRAGENT\0";
/// The envelope format this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// What the signature covers is `SIGNING_CONTEXT || manifest bytes`, so a
/// signature made for anything else can never verify as a manifest's.
pub const SIGNING_CONTEXT: &[u8] = b"taskrun-agent-manifest-v1\0";
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
const HEADER_LEN: usize = MAGIC.len() + 1 + 2;
/// The largest envelope accepted; longer inputs are refused before parsing.
pub const MAX_ENVELOPE_LEN: usize = HEADER_LEN + MAX_MANIFEST_LEN + SIGNATURE_LEN;

/// A parsed envelope. Parsing checks only the format: the signature, the
/// trust policy and the component are checked by
/// [`Verifier`](crate::Verifier), so nothing in an `Envelope` is trusted yet.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    bytes: Vec<u8>,
    manifest: Manifest,
}

impl Envelope {
    /// Parses an envelope strictly: bounded length, known magic and version,
    /// a canonical manifest, a 64-byte signature, no trailing bytes. Never
    /// panics, and allocates no more than the input's length (plus the
    /// manifest's few small fields).
    pub fn parse(bytes: &[u8]) -> Result<Envelope> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(Error::TooLarge { what: "envelope", len: bytes.len() as u64, max: MAX_ENVELOPE_LEN as u64 });
        }
        if bytes.len() < MAGIC.len() {
            return Err(Error::malformed(if MAGIC.starts_with(bytes) {
                format!("truncated: {} bytes, shorter than the magic", bytes.len())
            } else {
                "not a TaskRun agent envelope (bad magic)".to_owned()
            }));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::malformed("not a TaskRun agent envelope (bad magic)"));
        }
        let Some(&version) = bytes.get(MAGIC.len()) else {
            return Err(Error::malformed("truncated: no format version after the magic"));
        };
        if version != FORMAT_VERSION {
            return Err(Error::malformed(format!(
                "unsupported format version {version} (this verifier reads version {FORMAT_VERSION})"
            )));
        }
        let Some(&[hi, lo]) = bytes.get(MAGIC.len() + 1..HEADER_LEN).and_then(|b| <&[u8; 2]>::try_from(b).ok()) else {
            return Err(Error::malformed("truncated: no manifest length"));
        };
        let manifest_len = usize::from(u16::from_be_bytes([hi, lo]));
        if manifest_len == 0 {
            return Err(Error::malformed("manifest length is 0"));
        }
        if manifest_len > MAX_MANIFEST_LEN {
            return Err(Error::TooLarge { what: "manifest", len: manifest_len as u64, max: MAX_MANIFEST_LEN as u64 });
        }
        let expected = HEADER_LEN + manifest_len + SIGNATURE_LEN;
        if bytes.len() < expected {
            return Err(Error::malformed(format!(
                "truncated: {} bytes, the header announces {expected} ({manifest_len}-byte manifest and a \
                 {SIGNATURE_LEN}-byte signature)",
                bytes.len()
            )));
        }
        if bytes.len() > expected {
            let n = bytes.len() - expected;
            let s = if n == 1 { "" } else { "s" };
            return Err(Error::malformed(format!("{n} trailing byte{s} after the signature")));
        }
        let manifest = Manifest::decode(&bytes[HEADER_LEN..HEADER_LEN + manifest_len], HEADER_LEN)?;
        Ok(Envelope { bytes: bytes.to_vec(), manifest })
    }

    /// The manifest, as claimed: not verified by parsing.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's canonical bytes, as signed (without the context prefix).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..self.bytes.len() - SIGNATURE_LEN]
    }

    pub fn signature(&self) -> [u8; SIGNATURE_LEN] {
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(&self.bytes[self.bytes.len() - SIGNATURE_LEN..]);
        sig
    }

    /// The whole envelope, as written to a `.sig` file or sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// SHA-256 of the envelope's bytes.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }

    /// Checks the signature strictly (`verify_strict`: canonical `s`, no
    /// small-order `R` or key) under the public key the manifest carries.
    /// Whether that key is trusted is the trust policy's question.
    pub(crate) fn check_signature(&self) -> Result<()> {
        let sig = Signature::from_bytes(&self.signature());
        let key: &PublicKey = &self.manifest.public_key;
        key.verifying_key()
            .verify_strict(&signed_message(self.manifest_bytes()), &sig)
            .map_err(|_| Error::BadSignature { key_id: self.manifest.key_id })
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("manifest", &self.manifest)
            .field("signature", &hex::encode(self.signature()))
            .finish()
    }
}

/// The message the signature covers: `SIGNING_CONTEXT || manifest`.
pub(crate) fn signed_message(manifest: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + manifest.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(manifest);
    msg
}

impl SigningKey {
    /// Signs a component: hashes it and signs a manifest carrying its
    /// SHA-256 digest and size (never the component itself, so signing and
    /// verifying cost one SHA-256 pass plus one small signature).
    pub fn sign_component(&self, component: &[u8], details: AgentDetails) -> Result<Envelope> {
        self.sign_digest(AgentDigest::of(component), component.len() as u64, details)
    }

    /// Signs a manifest for a component whose digest and size the caller
    /// computed (e.g. while streaming a file).
    pub fn sign_digest(&self, digest: AgentDigest, size: u64, details: AgentDetails) -> Result<Envelope> {
        check_details(&details)?;
        let public_key = self.public_key();
        let manifest = Manifest {
            name: details.name,
            version: details.version,
            digest,
            size,
            wit_world: details.wit_world,
            created_at: details.created_at,
            expires_at: details.expires_at,
            key_id: public_key.key_id(),
            public_key,
        };
        let manifest_bytes = manifest.encode();
        if manifest_bytes.len() > MAX_MANIFEST_LEN {
            return Err(Error::InvalidManifest {
                reason: format!("manifest is {} bytes, more than {MAX_MANIFEST_LEN}", manifest_bytes.len()),
            });
        }
        let signature = self.dalek().sign(&signed_message(&manifest_bytes));
        let mut bytes = Vec::with_capacity(HEADER_LEN + manifest_bytes.len() + SIGNATURE_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.extend_from_slice(&(manifest_bytes.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&manifest_bytes);
        bytes.extend_from_slice(&signature.to_bytes());
        Ok(Envelope { bytes, manifest })
    }
}
