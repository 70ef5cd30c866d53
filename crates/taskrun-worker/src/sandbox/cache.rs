//! Compiled components on disk, keyed by agent digest and engine
//! fingerprint, so a Worker compiles each agent once across restarts.
//!
//! Layout: `<dir>/<fingerprint>/<digest hex>.cwasm`, where the fingerprint
//! hashes wasmtime's compatibility hash (its version and every setting that
//! shapes compiled code). Each file is `MAGIC`, the SHA-256 of the payload,
//! then the payload (`Component::serialize` output); files are written to a
//! temporary name and renamed, and one that fails its checksum is deleted
//! and recompiled. One that cannot be read at all (no permission, a
//! directory in its place) is a miss: the agent is compiled again, and the
//! new file replaces it if it can (else the Worker goes on without caching
//! that digest). Only the Worker writes there: deserializing is `unsafe`
//! precisely because it trusts these bytes.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use taskrun_core::AgentDigest;
use wasmtime::Engine;

use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"TRCWASM1";
const HEADER: usize = MAGIC.len() + 32;

/// A [`Hasher`] over SHA-256, so the fingerprint is the same in every
/// process (std's hashers are seeded or unspecified).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Identifies the engine configuration compiled code is valid for.
pub(crate) fn engine_fingerprint(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..12])
}

#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
}

/// What the cache holds for a digest.
pub(crate) enum Lookup {
    Hit(Vec<u8>),
    Miss,
    /// A file was there but failed its checks (and was removed).
    Corrupt,
}

impl DiskCache {
    pub(crate) fn open(root: &Path, fingerprint: &str) -> Result<DiskCache> {
        let dir = root.join(fingerprint);
        fs::create_dir_all(&dir).map_err(|source| Error::Cache { path: dir.clone(), source })?;
        Ok(DiskCache { dir })
    }

    pub(crate) fn path(&self, digest: &AgentDigest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.hex()))
    }

    /// What the cache holds for `digest`. A file that cannot be read is a
    /// miss (with a warning): the caller compiles, as it would without a
    /// cache.
    pub(crate) fn load(&self, digest: &AgentDigest) -> Result<Lookup> {
        let path = self.path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read compiled component; compiling again");
                return Ok(Lookup::Miss);
            }
        };
        let valid = bytes.len() > HEADER
            && &bytes[..MAGIC.len()] == MAGIC
            && Sha256::digest(&bytes[HEADER..]).as_slice() == &bytes[MAGIC.len()..HEADER];
        if !valid {
            tracing::warn!(path = %path.display(), "removing corrupt compiled component");
            self.remove(digest);
            return Ok(Lookup::Corrupt);
        }
        let mut payload = bytes;
        payload.drain(..HEADER);
        Ok(Lookup::Hit(payload))
    }

    /// Writes atomically: a reader sees the old file, no file, or the whole
    /// new one. An empty directory in the file's place is replaced; anything
    /// else that cannot be replaced is an error (the caller goes on without
    /// caching).
    pub(crate) fn store(&self, digest: &AgentDigest, payload: &[u8]) -> Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = self.path(digest);
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            digest.hex(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = Vec::with_capacity(HEADER + payload.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&Sha256::digest(payload));
        file.extend_from_slice(payload);
        let result = fs::write(&tmp, &file).and_then(|()| {
            fs::rename(&tmp, &path).or_else(|e| {
                // rename(2) does not replace a directory with a file.
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) && fs::remove_dir(&path).is_ok() {
                    fs::rename(&tmp, &path)
                } else {
                    Err(e)
                }
            })
        });
        if let Err(source) = result {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Cache { path, source });
        }
        Ok(())
    }

    pub(crate) fn remove(&self, digest: &AgentDigest) {
        let _ = fs::remove_file(self.path(digest));
    }
}
