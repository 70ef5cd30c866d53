//! Compiled components on disk, keyed by agent digest and engine
//! fingerprint, so a Worker compiles each agent once across restarts.
//!
//! Layout: `<dir>/<fingerprint>/<digest hex>.cwasm`, where the fingerprint
//! hashes wasmtime's compatibility hash (its version and every setting that
//! shapes compiled code). Each file is `MAGIC`, the agent's digest, the
//! engine fingerprint, the SHA-256 of those two and the payload, then the
//! payload (`Component::serialize` output); files are written to a
//! temporary name and renamed. One that fails its checksum, or whose header
//! names another digest or engine (a file copied or renamed into place),
//! is deleted and recompiled: a file is tied to its agent by its checked
//! contents, not by its name. One that cannot be read at all (no
//! permission, a directory in its place) is a miss: the agent is compiled
//! again, and the new file replaces it if it can (else the Worker goes on
//! without caching that digest). Only the Worker writes there (the
//! directories are made, or narrowed, to mode 0700 on Unix): deserializing
//! is `unsafe` precisely because it trusts these bytes.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use taskrun_core::AgentDigest;
use wasmtime::Engine;

use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"TRCWASM2";
/// Bytes of the engine fingerprint (hex of 12 bytes).
const FINGERPRINT: usize = 24;
/// Where the agent digest, the fingerprint and the checksum start.
const DIGEST_AT: usize = MAGIC.len();
const FINGERPRINT_AT: usize = DIGEST_AT + 32;
const CHECKSUM_AT: usize = FINGERPRINT_AT + FINGERPRINT;
const HEADER: usize = CHECKSUM_AT + 32;

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
    fingerprint: String,
}

/// The checksum a file carries: over the digest and fingerprint in its
/// header and its payload.
fn checksum(digest: &[u8], fingerprint: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(digest);
    hasher.update(fingerprint);
    hasher.update(payload);
    hasher.finalize().into()
}

/// Makes `dir` (and its missing parents) with mode 0700, and narrows it to
/// 0700 if it exists: nobody but the Worker may put compiled code there.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        fs::create_dir_all(dir)
    }
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
        for dir in [root, &dir] {
            private_dir(dir).map_err(|source| Error::Cache { path: dir.to_owned(), source })?;
        }
        // The fingerprint is hex of a fixed length; anything else would not
        // fit the header (and no engine makes one).
        let fingerprint = format!("{fingerprint:0<FINGERPRINT$.FINGERPRINT$}");
        Ok(DiskCache { dir, fingerprint })
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
            && checksum(&bytes[DIGEST_AT..FINGERPRINT_AT], &bytes[FINGERPRINT_AT..CHECKSUM_AT], &bytes[HEADER..])
                == bytes[CHECKSUM_AT..HEADER];
        if !valid {
            tracing::warn!(path = %path.display(), "removing corrupt compiled component");
            self.remove(digest);
            return Ok(Lookup::Corrupt);
        }
        if &bytes[DIGEST_AT..FINGERPRINT_AT] != digest.as_bytes()
            || &bytes[FINGERPRINT_AT..CHECKSUM_AT] != self.fingerprint.as_bytes()
        {
            tracing::warn!(
                path = %path.display(),
                "removing a compiled component made for another agent or engine than its name says"
            );
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
        file.extend_from_slice(digest.as_bytes());
        file.extend_from_slice(self.fingerprint.as_bytes());
        file.extend_from_slice(&checksum(digest.as_bytes(), self.fingerprint.as_bytes(), payload));
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
