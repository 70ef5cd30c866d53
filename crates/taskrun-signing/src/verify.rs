//! Verification: is this component, with this envelope, something the
//! operator's trust policy lets run, and is it what was asked for?

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use taskrun_core::{AgentDigest, AgentManifest, AgentName, AgentRef, AgentSelector, AgentVersion, Clock, Timestamp};

use crate::{Envelope, Error, MAX_ENVELOPE_LEN, Manifest, Result, RollbackState, TrustPolicy};

/// Default clock skew allowed when checking `expires_at`.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);
/// Default number of envelopes whose signature check the cache remembers.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;

/// What the caller asked for; check 6 compares the manifest with it, so a
/// validly signed component of another agent (or another build) cannot be
/// swapped in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub name: Option<AgentName>,
    pub version: Option<AgentVersion>,
    pub digest: Option<AgentDigest>,
}

impl Expect {
    /// Expects agent `name`, any version.
    pub fn name(name: AgentName) -> Expect {
        Expect { name: Some(name), version: None, digest: None }
    }

    /// Expects exactly this digest.
    pub fn digest(digest: AgentDigest) -> Expect {
        Expect { name: None, version: None, digest: Some(digest) }
    }

    /// Expects what a Task's agent reference names: always the name, and the
    /// version or digest when it has one.
    pub fn agent_ref(agent: &AgentRef) -> Expect {
        let mut e = Expect::name(agent.name.clone());
        match &agent.selector {
            AgentSelector::Latest => {}
            AgentSelector::Version(v) => e.version = Some(*v),
            AgentSelector::Digest(d) => e.digest = Some(*d),
        }
        e
    }

    /// Expects nothing beyond what the manifest says. Only for the publish
    /// path, where the signed manifest itself is the request.
    pub fn anything() -> Expect {
        Expect { name: None, version: None, digest: None }
    }

    pub fn and_name(mut self, name: AgentName) -> Expect {
        self.name = Some(name);
        self
    }

    pub fn and_version(mut self, version: AgentVersion) -> Expect {
        self.version = Some(version);
        self
    }

    pub fn and_digest(mut self, digest: AgentDigest) -> Expect {
        self.digest = Some(digest);
        self
    }

    fn check(&self, m: &Manifest) -> Result<()> {
        if let Some(expected) = &self.name
            && *expected != m.name
        {
            return Err(Error::NameMismatch { expected: expected.clone(), actual: m.name.clone() });
        }
        if let Some(expected) = self.version
            && expected != m.version
        {
            return Err(Error::VersionMismatch { expected, actual: m.version });
        }
        if let Some(expected) = self.digest
            && expected != m.digest
        {
            return Err(Error::DigestNotRequested { expected, actual: m.digest });
        }
        Ok(())
    }
}

impl From<&AgentRef> for Expect {
    fn from(agent: &AgentRef) -> Expect {
        Expect::agent_ref(agent)
    }
}

/// A component that passed verification, with the exact bytes that were
/// hashed: compile [`component`](VerifiedAgent::component), nothing else.
/// Only this crate creates one.
#[derive(Clone)]
pub struct VerifiedAgent {
    envelope: Arc<Envelope>,
    component: Bytes,
}

impl VerifiedAgent {
    pub fn manifest(&self) -> &Manifest {
        self.envelope.manifest()
    }

    pub fn name(&self) -> &AgentName {
        &self.manifest().name
    }

    pub fn version(&self) -> AgentVersion {
        self.manifest().version
    }

    pub fn digest(&self) -> AgentDigest {
        self.manifest().digest
    }

    /// The verified bytes (immutable; cloning is cheap).
    pub fn component(&self) -> &Bytes {
        &self.component
    }

    /// The envelope that was verified, to store or forward with the component.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The control plane's record of this agent build.
    pub fn to_agent_manifest(&self, published_at: Timestamp) -> AgentManifest {
        self.manifest().to_agent_manifest(published_at)
    }
}

impl fmt::Debug for VerifiedAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedAgent")
            .field("manifest", self.manifest())
            .field("component_len", &self.component.len())
            .finish()
    }
}

/// Cache counters, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Verifications that found their envelope in the cache (no parse, no
    /// signature check).
    pub hits: u64,
    /// Verifications that did not (the envelope is parsed and, if the
    /// component matches, its signature checked).
    pub misses: u64,
    /// Envelopes remembered now.
    pub entries: usize,
}

/// Remembers envelopes (by SHA-256 of their bytes) whose format and
/// signature were checked. Nothing policy-, time- or history-dependent is
/// cached: checks 1 and 3–6 run on every verification.
#[derive(Debug)]
struct SignatureCache {
    capacity: usize,
    map: HashMap<[u8; 32], Arc<Envelope>>,
    order: VecDeque<[u8; 32]>,
}

impl SignatureCache {
    fn get(&self, hash: &[u8; 32]) -> Option<Arc<Envelope>> {
        self.map.get(hash).cloned()
    }

    fn insert(&mut self, hash: [u8; 32], envelope: Arc<Envelope>) {
        if self.capacity == 0 || self.map.contains_key(&hash) {
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(hash, envelope);
        self.order.push_back(hash);
    }
}

/// Verifies signed agents against a trust policy. Share one per process
/// (`Arc<Verifier>`): it is `Send + Sync`, and its rollback state and cache
/// are only meaningful if every verification goes through it.
///
/// Checks, in this order, each with its own error:
/// 1. the component's size and SHA-256 are the signed ones
///    ([`Error::SizeMismatch`], [`Error::DigestMismatch`]);
/// 2. the signature verifies strictly under the key the manifest carries
///    ([`Error::BadSignature`]);
/// 3. that key is not revoked, is pinned, and may sign this agent
///    ([`Error::RevokedKey`], [`Error::UntrustedKey`], [`Error::KeyNotAllowed`]);
/// 4. the manifest has not expired, allowing `skew` ([`Error::Expired`]);
/// 5. no higher version of the agent was accepted before ([`Error::Rollback`]);
/// 6. name, version and digest are the expected ones ([`Error::NameMismatch`],
///    [`Error::VersionMismatch`], [`Error::DigestNotRequested`]).
///
/// Format errors ([`Error::TooLarge`], [`Error::Malformed`]) come before all.
///
/// Caching: an envelope already verified is found by its SHA-256, which
/// covers the signed digest, so the cache is in effect keyed by (envelope,
/// component digest); a hit skips parsing and the signature check (2) only.
/// The component's bytes are always hashed again by
/// [`verify`](Verifier::verify): they are new bytes, whatever they claim.
/// Only [`recheck`](Verifier::recheck), given a [`VerifiedAgent`] whose
/// bytes cannot have changed, skips hashing.
pub struct Verifier {
    policy: RwLock<Arc<TrustPolicy>>,
    clock: Arc<dyn Clock>,
    skew: Duration,
    rollback: Mutex<RollbackState>,
    rollback_file: Option<PathBuf>,
    rollback_protection: bool,
    cache: Mutex<SignatureCache>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("clock", &self.clock)
            .field("skew", &self.skew)
            .field("rollback_protection", &self.rollback_protection)
            .field("rollback_file", &self.rollback_file)
            .field("cache", &self.cache_stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the data
    // is still consistent (every update is a single insert).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Verifier {
    /// A verifier with an empty rollback state, held in memory only.
    pub fn new(policy: TrustPolicy, clock: Arc<dyn Clock>) -> Verifier {
        Verifier {
            policy: RwLock::new(Arc::new(policy)),
            clock,
            skew: DEFAULT_SKEW,
            rollback: Mutex::new(RollbackState::new()),
            rollback_file: None,
            rollback_protection: true,
            cache: Mutex::new(SignatureCache {
                capacity: DEFAULT_CACHE_CAPACITY,
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Clock skew allowed past `expires_at`.
    pub fn with_skew(mut self, skew: Duration) -> Verifier {
        self.skew = skew;
        self
    }

    /// Starts from a rollback state the caller loaded.
    pub fn with_rollback_state(self, state: RollbackState) -> Verifier {
        *lock(&self.rollback) = state;
        self
    }

    /// Loads the rollback state from `path` (empty if the file does not
    /// exist yet) and saves it there, atomically, whenever it changes. If
    /// saving fails the verification fails too (fail closed).
    pub fn with_rollback_file(mut self, path: impl Into<PathBuf>) -> Result<Verifier> {
        let path = path.into();
        *lock(&self.rollback) = RollbackState::load_or_default(&path)?;
        self.rollback_file = Some(path);
        Ok(self)
    }

    /// Turns check 5 (rollback) off, and with it the recording of versions.
    /// For the control plane's publish path, where an older maintenance
    /// release published after a newer one is legitimate; Workers keep it on.
    pub fn with_rollback_protection(mut self, on: bool) -> Verifier {
        self.rollback_protection = on;
        self
    }

    /// How many envelopes the signature cache remembers; 0 disables it.
    pub fn with_cache_capacity(self, capacity: usize) -> Verifier {
        {
            let mut cache = lock(&self.cache);
            cache.capacity = capacity;
            cache.map.clear();
            cache.order.clear();
        }
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<TrustPolicy> {
        Arc::clone(&self.policy.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the policy (e.g. after the operator edited the file). It
    /// applies to every later verification, cached or not.
    pub fn set_policy(&self, policy: TrustPolicy) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
    }

    /// A copy of the rollback state.
    pub fn rollback_state(&self) -> RollbackState {
        lock(&self.rollback).clone()
    }

    /// Forgets the highest version seen of `name` (a deliberate downgrade
    /// by the operator), saving the state if it has a file.
    pub fn forget_version(&self, name: &AgentName) -> Result<Option<AgentVersion>> {
        let mut state = lock(&self.rollback);
        let old = state.forget(name);
        if old.is_some()
            && let Some(path) = &self.rollback_file
        {
            state.save(path)?;
        }
        Ok(old)
    }

    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: lock(&self.cache).map.len(),
        }
    }

    /// Verifies `component` against `envelope` (checks 1–6, see
    /// [`Verifier`]) and records its version for rollback protection.
    ///
    /// `component` becomes the [`VerifiedAgent`]'s bytes without a copy
    /// (`Vec<u8>`, `Bytes`, ...); those bytes are the ones hashed.
    pub fn verify(&self, envelope: &[u8], component: impl Into<Bytes>, expect: &Expect) -> Result<VerifiedAgent> {
        let agent = self.verify_unrecorded(envelope, component, expect)?;
        self.record(&agent, expect)?;
        Ok(agent)
    }

    /// Like [`verify`](Verifier::verify) but does not record the version
    /// for rollback protection yet: for callers that must first make sure
    /// the agent can run (e.g. compile it), so that a version that never
    /// ran cannot raise the floor. Call [`record`](Verifier::record) once
    /// it can.
    pub fn verify_unrecorded(
        &self,
        envelope: &[u8],
        component: impl Into<Bytes>,
        expect: &Expect,
    ) -> Result<VerifiedAgent> {
        let component: Bytes = component.into();
        if envelope.len() > MAX_ENVELOPE_LEN {
            return Err(Error::TooLarge { what: "envelope", len: envelope.len() as u64, max: MAX_ENVELOPE_LEN as u64 });
        }
        let envelope_hash: [u8; 32] = Sha256::digest(envelope).into();
        let cached = lock(&self.cache).get(&envelope_hash);
        let (parsed, signature_checked) = match cached {
            Some(e) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                (e, true)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                (Arc::new(Envelope::parse(envelope)?), false)
            }
        };
        let m = parsed.manifest();

        // 1. The bytes are the signed ones.
        if component.len() as u64 != m.size {
            return Err(Error::SizeMismatch { expected: m.size, actual: component.len() as u64 });
        }
        let actual = AgentDigest::of(&component);
        if actual != m.digest {
            return Err(Error::DigestMismatch { expected: m.digest, actual });
        }

        // 2. The signature.
        if !signature_checked {
            parsed.check_signature()?;
            lock(&self.cache).insert(envelope_hash, Arc::clone(&parsed));
        }

        let agent = VerifiedAgent { envelope: parsed, component };
        self.check_policy(&agent, expect, false)?;
        Ok(agent)
    }

    /// Checks 3–6 again and records the agent's version for rollback
    /// protection (saving the state file when it changes): refused if a
    /// newer version was recorded since it was verified.
    pub fn record(&self, agent: &VerifiedAgent, expect: &Expect) -> Result<()> {
        self.check_policy(agent, expect, true)
    }

    /// Re-applies checks 3–6 to an agent verified earlier (the policy may
    /// have changed, time has passed, a newer version may have been
    /// accepted). Skips hashing and the signature: a [`VerifiedAgent`]'s
    /// bytes are immutable and were hashed when it was created.
    pub fn recheck(&self, agent: &VerifiedAgent, expect: &Expect) -> Result<()> {
        self.check_policy(agent, expect, true)
    }

    /// Checks 3–6, then records the version if `record`.
    fn check_policy(&self, agent: &VerifiedAgent, expect: &Expect, record: bool) -> Result<()> {
        let m = agent.manifest();
        // 3. Trusted key.
        self.policy().check(m)?;
        // 4. Not expired.
        if let Some(expires_at) = m.expires_at {
            let now = self.clock.now();
            if now > expires_at.saturating_add(self.skew) {
                return Err(Error::Expired { expires_at, now });
            }
        }
        // 5 and 6 under one lock, so a concurrent verification of a newer
        // version cannot slip between the check and the record.
        if !self.rollback_protection {
            return expect.check(m);
        }
        let mut state = lock(&self.rollback);
        state.check(&m.name, m.version)?;
        expect.check(m)?;
        if record
            && state.record(&m.name, m.version)
            && let Some(path) = &self.rollback_file
        {
            state.save(path)?;
        }
        Ok(())
    }
}
