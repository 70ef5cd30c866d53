//! Ed25519 keys: generation, key ids, text forms and key files.
//!
//! Text forms (see signing/FORMAT.md):
//! - public key: `ed25519:<base64 of the 32-byte key>` (shareable);
//! - private key file: `taskrun-ed25519-private:<base64 of the 32-byte seed>`
//!   and a newline, mode 0600;
//! - key id: `ed25519-<first 16 hex digits of SHA-256(public key bytes)>`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::fsutil::{self, Overwrite};
use crate::{Error, Result};

/// Prefix of a public key's text form.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";
/// Prefix of a private key file's content.
pub const PRIVATE_KEY_PREFIX: &str = "taskrun-ed25519-private:";
/// Prefix of a key id.
pub const KEY_ID_PREFIX: &str = "ed25519-";

/// Length of 32 bytes in padded base64.
const B64_32_LEN: usize = 44;
/// Key files are one short line; anything longer is not one.
const MAX_KEY_FILE_LEN: u64 = 1024;

/// A key's fingerprint: the first 8 bytes of SHA-256 over the 32-byte
/// public key, written `ed25519-<16 lowercase hex digits>`.
///
/// It names a key (in manifests, trust policies, logs); it is never trusted
/// on its own: the trust decision compares the whole public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// Length of the text form in bytes.
    pub const TEXT_LEN: usize = KEY_ID_PREFIX.len() + 16;

    /// The key id of `key`.
    pub fn of(key: &PublicKey) -> KeyId {
        let hash = Sha256::digest(key.to_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash[..8]);
        KeyId(id)
    }

    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_ID_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<KeyId> {
        const WHAT: &str = "key id";
        let Some(hex_part) = s.strip_prefix(KEY_ID_PREFIX) else {
            if s.starts_with(PUBLIC_KEY_PREFIX) {
                return Err(Error::invalid_key(WHAT, "this is a public key, not a key id (ed25519-<16 hex digits>)"));
            }
            return Err(Error::invalid_key(WHAT, format!("must start with {KEY_ID_PREFIX:?}")));
        };
        if hex_part.len() != 16 || !hex_part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::invalid_key(
                WHAT,
                format!("expected 16 lowercase hex digits after {KEY_ID_PREFIX:?}, got {:?}", truncate(hex_part)),
            ));
        }
        let mut id = [0u8; 8];
        hex::decode_to_slice(hex_part, &mut id).map_err(|e| Error::invalid_key(WHAT, e.to_string()))?;
        Ok(KeyId(id))
    }
}

impl TryFrom<String> for KeyId {
    type Error = Error;
    fn try_from(s: String) -> Result<KeyId> {
        s.parse()
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.to_string()
    }
}

/// An Ed25519 public key, written `ed25519:<base64>`.
///
/// Only keys that are valid curve points and not of small order are
/// accepted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_| Error::invalid_key("public key", "not a valid Ed25519 point"))?;
        if key.is_weak() {
            return Err(Error::invalid_key("public key", "weak key (a point of small order)"));
        }
        Ok(PublicKey(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn key_id(&self) -> KeyId {
        KeyId::of(self)
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// Loads a public key file (its text form, surrounding whitespace ignored).
    pub fn load(path: impl AsRef<Path>) -> Result<PublicKey> {
        let path = path.as_ref();
        let (_, bytes) = fsutil::read_bounded(path, "public key file", MAX_KEY_FILE_LEN)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::invalid_key("public key", "not UTF-8 text").in_file(path))?;
        text.trim().parse().map_err(|e: Error| e.in_file(path))
    }

    /// Writes the text form and a newline to `path` atomically, mode 0644.
    pub fn write(&self, path: impl AsRef<Path>, overwrite: Overwrite) -> Result<()> {
        fsutil::write_atomic(path.as_ref(), format!("{self}\n").as_bytes(), 0o644, overwrite)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<PublicKey> {
        const WHAT: &str = "public key";
        if s.starts_with(PRIVATE_KEY_PREFIX) {
            return Err(Error::invalid_key(WHAT, "this is a private key, not a public key; do not share it"));
        }
        let Some(b64) = s.strip_prefix(PUBLIC_KEY_PREFIX) else {
            if s.starts_with(KEY_ID_PREFIX) {
                return Err(Error::invalid_key(WHAT, "this is a key id, not a public key (ed25519:<base64>)"));
            }
            return Err(Error::invalid_key(WHAT, format!("must start with {PUBLIC_KEY_PREFIX:?}")));
        };
        let bytes = decode_32(b64).map_err(|reason| Error::invalid_key(WHAT, reason))?;
        PublicKey::from_bytes(&bytes)
    }
}

impl TryFrom<String> for PublicKey {
    type Error = Error;
    fn try_from(s: String) -> Result<PublicKey> {
        s.parse()
    }
}

impl From<PublicKey> for String {
    fn from(k: PublicKey) -> String {
        k.to_string()
    }
}

/// An Ed25519 signing key. Its secret never appears in `Debug` output and
/// is wiped from memory when dropped.
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl SigningKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> SigningKey {
        SigningKey::from_dalek(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The key with this 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey::from_dalek(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    fn from_dalek(inner: ed25519_dalek::SigningKey) -> SigningKey {
        // A key derived from a seed is never a small-order point.
        let public = PublicKey(inner.verifying_key());
        SigningKey { inner, public }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    pub(crate) fn dalek(&self) -> &ed25519_dalek::SigningKey {
        &self.inner
    }

    /// The private key file's content: `taskrun-ed25519-private:<base64 seed>\n`.
    pub fn to_private_text(&self) -> Zeroizing<String> {
        let seed = Zeroizing::new(self.inner.to_bytes());
        let mut text = Zeroizing::new(String::with_capacity(PRIVATE_KEY_PREFIX.len() + B64_32_LEN + 1));
        text.push_str(PRIVATE_KEY_PREFIX);
        BASE64.encode_string(seed.as_slice(), &mut text);
        text.push('\n');
        text
    }

    /// Parses a private key file's content (surrounding whitespace ignored).
    pub fn from_private_text(text: &str) -> Result<SigningKey> {
        const WHAT: &str = "private key";
        let text = text.trim();
        let Some(b64) = text.strip_prefix(PRIVATE_KEY_PREFIX) else {
            if text.starts_with(PUBLIC_KEY_PREFIX) {
                return Err(Error::invalid_key(WHAT, "this is a public key, not a private key"));
            }
            return Err(Error::invalid_key(WHAT, format!("must start with {PRIVATE_KEY_PREFIX:?}")));
        };
        let seed = Zeroizing::new(decode_32(b64).map_err(|reason| Error::invalid_key(WHAT, reason))?);
        Ok(SigningKey::from_seed(&seed))
    }

    /// Loads a private key file. On Unix the file must not be accessible
    /// by group or others (like OpenSSH, this is an error, not a warning):
    /// a key others could read is no longer only its owner's.
    pub fn load(path: impl AsRef<Path>) -> Result<SigningKey> {
        let path = path.as_ref();
        let (file, bytes) = fsutil::read_bounded(path, "private key file", MAX_KEY_FILE_LEN)?;
        let bytes = Zeroizing::new(bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = file.metadata().map_err(|e| Error::io(path, e))?.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(Error::KeyFilePermissions { path: path.to_owned(), mode });
            }
        }
        drop(file);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::invalid_key("private key", "not UTF-8 text").in_file(path))?;
        SigningKey::from_private_text(text).map_err(|e| e.in_file(path))
    }

    /// Writes the private key file atomically with mode 0600 (a temporary
    /// file in the same directory, synced, then renamed). Refuses to replace
    /// an existing file unless `overwrite` is [`Overwrite::Allow`].
    pub fn write(&self, path: impl AsRef<Path>, overwrite: Overwrite) -> Result<()> {
        let text = self.to_private_text();
        fsutil::write_atomic(path.as_ref(), text.as_bytes(), 0o600, overwrite)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.key_id()).finish_non_exhaustive()
    }
}

/// Decodes exactly 32 bytes of canonical padded base64, checking the length
/// before decoding so no input makes it allocate more than 32 bytes.
fn decode_32(b64: &str) -> std::result::Result<[u8; 32], String> {
    if b64.len() != B64_32_LEN {
        return Err(format!(
            "expected {B64_32_LEN} base64 characters (32 bytes), got {} characters",
            b64.chars().count()
        ));
    }
    let mut out = [0u8; 32];
    let decoded = Zeroizing::new(BASE64.decode(b64).map_err(|e| format!("bad base64: {e}"))?);
    if decoded.len() != 32 {
        return Err(format!("expected 32 bytes, got {}", decoded.len()));
    }
    out.copy_from_slice(&decoded);
    Ok(out)
}

fn truncate(s: &str) -> String {
    if s.len() <= 40 {
        return s.to_owned();
    }
    let mut cut = 37;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
}
