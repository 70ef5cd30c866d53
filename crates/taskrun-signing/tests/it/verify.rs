//! Verification: each check, its error, and their order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use taskrun_core::{AgentDigest, AgentRef, Timestamp};
use taskrun_signing::{Error, Expect, Revocation, RollbackState, TrustPolicy, TrustedKey, VerifiedAgent, Verifier};

use crate::support::{Fixture, T0, component, details, field_offset, key, name, sign, ver};

// Manifest field tags (signing/FORMAT.md).
const NAME: u8 = 1;
const VERSION: u8 = 2;
const DIGEST: u8 = 3;
const SIZE: u8 = 4;
const CREATED_AT: u8 = 6;
const EXPIRES_AT: u8 = 7;

fn echo() -> Expect {
    Expect::name(name("echo"))
}

#[test]
fn verifier_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Verifier>();
    check::<VerifiedAgent>();
}

#[test]
fn a_valid_agent_verifies_and_keeps_the_exact_bytes() {
    let f = Fixture::new();
    let c = Bytes::from(component(4096, 1));
    let env = sign(&f.key, "echo", "1.2.3", &c);
    let agent = f.verifier.verify(env.as_bytes(), c.clone(), &echo()).unwrap();
    assert_eq!(agent.name(), &name("echo"));
    assert_eq!(agent.version(), ver("1.2.3"));
    assert_eq!(agent.digest(), AgentDigest::of(&c));
    assert_eq!(agent.manifest().size, 4096);
    assert_eq!(agent.manifest().key_id, f.key.key_id());
    // Not a copy: the very buffer that was hashed.
    assert_eq!(agent.component().as_ptr(), c.as_ptr());
    assert_eq!(agent.envelope().as_bytes(), env.as_bytes());
    assert_eq!(f.verifier.rollback_state().highest(&name("echo")), Some(ver("1.2.3")));

    let record = agent.to_agent_manifest(Timestamp(42));
    assert_eq!(record.signer, f.key.key_id().to_string());
    assert_eq!(record.digest, agent.digest());
    assert_eq!(record.published_at, Timestamp(42));
    assert!(!format!("{agent:?}").contains("[1"), "Debug must not dump the component");
}

#[test]
fn a_flipped_component_byte_is_a_digest_mismatch() {
    let f = Fixture::new();
    let c = component(10_000, 1);
    let env = sign(&f.key, "echo", "1.0.0", &c);
    for at in [0, c.len() / 2, c.len() - 1] {
        let mut bad = c.clone();
        bad[at] ^= 0x01;
        match f.verifier.verify(env.as_bytes(), bad.clone(), &echo()) {
            Err(Error::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, AgentDigest::of(&c));
                assert_eq!(actual, AgentDigest::of(&bad));
            }
            other => panic!("byte {at}: {other:?}"),
        }
    }
}

#[test]
fn a_component_of_another_length_is_a_size_mismatch() {
    let f = Fixture::new();
    let c = component(1000, 1);
    let env = sign(&f.key, "echo", "1.0.0", &c);
    for bad in [c[..999].to_vec(), [&c[..], &[0u8][..]].concat(), Vec::new()] {
        match f.verifier.verify(env.as_bytes(), bad.clone(), &echo()) {
            Err(Error::SizeMismatch { expected: 1000, actual }) => assert_eq!(actual, bad.len() as u64),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_flipped_manifest_byte_is_refused_with_the_right_error() {
    let f = Fixture::new();
    let c = component(1000, 1);
    let d = details("echo", "1.0.0").with_expires_at(Timestamp(T0.0 + 3_600_000));
    let env = f.key.sign_component(&c, d).unwrap();
    let flip = |offset: usize, mask: u8| {
        let mut b = env.as_bytes().to_vec();
        b[offset] ^= mask;
        f.verifier.verify(&b, c.clone(), &echo())
    };
    // The claimed digest or size no longer matches the bytes: check 1.
    assert!(matches!(flip(field_offset(&env, DIGEST), 0x80), Err(Error::DigestMismatch { .. })));
    assert!(matches!(flip(field_offset(&env, DIGEST) + 31, 0x01), Err(Error::DigestMismatch { .. })));
    assert!(matches!(flip(field_offset(&env, SIZE) + 7, 0x01), Err(Error::SizeMismatch { .. })));
    // Still well-formed, still the same bytes: the signature catches it.
    let key_id = f.key.key_id();
    for (offset, mask) in [
        (field_offset(&env, NAME), 0x03),         // "echo" -> "fcho"
        (field_offset(&env, VERSION) + 3, 0x01),  // 1.0.0 -> 0.0.0
        (field_offset(&env, VERSION) + 11, 0x01), // 1.0.0 -> 1.0.1
        (field_offset(&env, CREATED_AT) + 7, 0x01),
        (field_offset(&env, EXPIRES_AT) + 4, 0x01),
    ] {
        match flip(offset, mask) {
            Err(Error::BadSignature { key_id: k }) => assert_eq!(k, key_id),
            other => panic!("offset {offset}: {other:?}"),
        }
    }
}

#[test]
fn a_flipped_signature_byte_is_a_bad_signature() {
    let f = Fixture::new();
    let c = component(1000, 1);
    let env = sign(&f.key, "echo", "1.0.0", &c);
    let len = env.as_bytes().len();
    for offset in [len - 64, len - 32, len - 1] {
        for mask in [0x01, 0x80] {
            let mut b = env.as_bytes().to_vec();
            b[offset] ^= mask;
            let res = f.verifier.verify(&b, c.clone(), &echo());
            assert!(matches!(res, Err(Error::BadSignature { .. })), "offset {offset} mask {mask:#x}: {res:?}");
        }
    }
}

#[test]
fn no_single_bit_flip_anywhere_in_the_envelope_verifies() {
    let f = Fixture::new();
    let c = component(300, 1);
    let env = sign(&f.key, "echo", "1.0.0", &c);
    for offset in 0..env.as_bytes().len() {
        for bit in 0..8 {
            let mut b = env.as_bytes().to_vec();
            b[offset] ^= 1 << bit;
            let res = f.verifier.verify(&b, c.clone(), &echo());
            assert!(res.is_err(), "offset {offset} bit {bit} verified");
        }
    }
}

#[test]
fn a_key_that_is_not_pinned_is_refused() {
    let f = Fixture::new();
    let stranger = key(99);
    let c = component(100, 1);
    let env = sign(&stranger, "echo", "1.0.0", &c);
    match f.verifier.verify(env.as_bytes(), c, &echo()) {
        Err(Error::UntrustedKey { key_id }) => assert_eq!(key_id, stranger.key_id()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_revoked_key_is_refused_even_if_still_pinned() {
    let k = key(1);
    let revocation = Revocation { key_id: k.key_id(), comment: Some("laptop lost".into()), revoked_at: None };
    let mut policy = TrustPolicy::new();
    policy.trust(TrustedKey::new(k.public_key())).unwrap();
    policy.revoke(revocation.clone());
    let f = Fixture::with_policy(k.clone(), policy);
    let c = component(100, 1);
    let env = sign(&k, "echo", "1.0.0", &c);
    assert!(
        matches!(f.verifier.verify(env.as_bytes(), c.clone(), &echo()), Err(Error::RevokedKey { key_id }) if key_id == k.key_id())
    );

    // Revoked and not pinned: still reported as revoked.
    let mut policy = TrustPolicy::new();
    policy.revoke(revocation);
    f.verifier.set_policy(policy);
    assert!(matches!(f.verifier.verify(env.as_bytes(), c, &echo()), Err(Error::RevokedKey { .. })));
}

#[test]
fn a_key_may_be_limited_to_some_agents() {
    let k = key(1);
    let mut policy = TrustPolicy::new();
    policy.trust(TrustedKey::new(k.public_key()).with_agents([name("echo")])).unwrap();
    let f = Fixture::with_policy(k.clone(), policy);
    let c = component(100, 1);
    f.verifier.verify(sign(&k, "echo", "1.0.0", &c).as_bytes(), c.clone(), &echo()).unwrap();
    let other = sign(&k, "summarize", "1.0.0", &c);
    match f.verifier.verify(other.as_bytes(), c, &Expect::name(name("summarize"))) {
        Err(Error::KeyNotAllowed { key_id, name: n }) => {
            assert_eq!(key_id, k.key_id());
            assert_eq!(n, name("summarize"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expired_manifest_is_refused_after_the_skew() {
    let f = Fixture::new();
    let c = component(100, 1);
    let expires_at = Timestamp(T0.0 + 3_600_000);
    let env = f.key.sign_component(&c, details("echo", "1.0.0").with_expires_at(expires_at)).unwrap();
    f.verifier.verify(env.as_bytes(), c.clone(), &echo()).unwrap();

    // Within the 60 s skew allowance: accepted.
    f.clock.set(Timestamp(expires_at.0 + 60_000));
    f.verifier.verify(env.as_bytes(), c.clone(), &echo()).unwrap();

    f.clock.advance(Duration::from_millis(1));
    match f.verifier.verify(env.as_bytes(), c, &echo()) {
        Err(Error::Expired { expires_at: e, now }) => {
            assert_eq!(e, expires_at);
            assert_eq!(now, Timestamp(expires_at.0 + 60_001));
        }
        other => panic!("{other:?}"),
    }
}

/// A version verified but not yet recorded (the Worker has not compiled it
/// yet) does not raise the rollback floor; recording it does, and a
/// version recorded meanwhile that is newer refuses the older one's record.
#[test]
fn an_unrecorded_version_does_not_raise_the_floor() {
    let f = Fixture::new();
    let c = component(100, 1);
    let v = |s: &str| sign(&f.key, "echo", s, &c);
    let two = f.verifier.verify_unrecorded(v("2.0.0").as_bytes(), c.clone(), &echo()).unwrap();
    // 2.0.0 never ran: 1.0.0 still verifies.
    let one = f.verifier.verify_unrecorded(v("1.0.0").as_bytes(), c.clone(), &echo()).unwrap();
    f.verifier.record(&one, &echo()).unwrap();
    f.verifier.verify(v("1.0.0").as_bytes(), c.clone(), &echo()).unwrap();
    // Once 2.0.0 is recorded, 1.0.0 is a rollback, and so is recording it.
    f.verifier.record(&two, &echo()).unwrap();
    assert!(matches!(f.verifier.verify(v("1.0.0").as_bytes(), c.clone(), &echo()), Err(Error::Rollback { .. })));
    assert!(matches!(f.verifier.record(&one, &echo()), Err(Error::Rollback { .. })));
}

#[test]
fn a_lower_version_is_a_rollback() {
    let f = Fixture::new();
    let c = component(100, 1);
    let v = |s: &str| sign(&f.key, "echo", s, &c);
    f.verifier.verify(v("1.2.0").as_bytes(), c.clone(), &echo()).unwrap();
    match f.verifier.verify(v("1.1.9").as_bytes(), c.clone(), &echo()) {
        Err(Error::Rollback { name: n, version, highest }) => {
            assert_eq!(n, name("echo"));
            assert_eq!(version, ver("1.1.9"));
            assert_eq!(highest, ver("1.2.0"));
        }
        other => panic!("{other:?}"),
    }
    // The same version again is fine; versions compare numerically.
    f.verifier.verify(v("1.2.0").as_bytes(), c.clone(), &echo()).unwrap();
    f.verifier.verify(v("1.10.0").as_bytes(), c.clone(), &echo()).unwrap();
    assert!(matches!(f.verifier.verify(v("1.9.0").as_bytes(), c.clone(), &echo()), Err(Error::Rollback { .. })));
    // Other agents are not affected.
    let other = sign(&f.key, "summarize", "0.1.0", &c);
    f.verifier.verify(other.as_bytes(), c.clone(), &Expect::name(name("summarize"))).unwrap();
    // A refused verification records nothing.
    assert_eq!(f.verifier.rollback_state().highest(&name("echo")), Some(ver("1.10.0")));

    // The operator may allow a deliberate downgrade.
    assert_eq!(f.verifier.forget_version(&name("echo")).unwrap(), Some(ver("1.10.0")));
    f.verifier.verify(v("1.1.9").as_bytes(), c, &echo()).unwrap();
}

#[test]
fn another_agents_validly_signed_component_cannot_be_swapped_in() {
    let f = Fixture::new();
    let echo_c = component(100, 1);
    let sum_c = component(100, 2);
    let echo_env = sign(&f.key, "echo", "1.0.0", &echo_c);
    let sum_env = sign(&f.key, "summarize", "1.0.0", &sum_c);

    // The whole pair of the other agent, when "echo" was asked for.
    match f.verifier.verify(sum_env.as_bytes(), sum_c.clone(), &echo()) {
        Err(Error::NameMismatch { expected, actual }) => {
            assert_eq!(expected, name("echo"));
            assert_eq!(actual, name("summarize"));
        }
        other => panic!("{other:?}"),
    }
    // The other agent's bytes under echo's envelope.
    assert!(matches!(
        f.verifier.verify(echo_env.as_bytes(), sum_c.clone(), &echo()),
        Err(Error::DigestMismatch { .. })
    ));
    // Asked by digest for echo's build, handed the other pair.
    let by_digest = Expect::digest(AgentDigest::of(&echo_c));
    match f.verifier.verify(sum_env.as_bytes(), sum_c.clone(), &by_digest) {
        Err(Error::DigestNotRequested { expected, actual }) => {
            assert_eq!(expected, AgentDigest::of(&echo_c));
            assert_eq!(actual, AgentDigest::of(&sum_c));
        }
        other => panic!("{other:?}"),
    }
    f.verifier.verify(echo_env.as_bytes(), echo_c.clone(), &by_digest).unwrap();

    // From a Task's agent reference.
    let at_version: AgentRef = "echo@2.0.0".parse().unwrap();
    assert!(matches!(
        f.verifier.verify(echo_env.as_bytes(), echo_c.clone(), &Expect::from(&at_version)),
        Err(Error::VersionMismatch { .. })
    ));
    let at_digest: AgentRef = format!("echo@{}", AgentDigest::of(&sum_c)).parse().unwrap();
    assert!(matches!(
        f.verifier.verify(echo_env.as_bytes(), echo_c.clone(), &Expect::agent_ref(&at_digest)),
        Err(Error::DigestNotRequested { .. })
    ));
    let exact: AgentRef = format!("echo@{}", AgentDigest::of(&echo_c)).parse().unwrap();
    f.verifier.verify(echo_env.as_bytes(), echo_c, &Expect::agent_ref(&exact)).unwrap();
}

/// When several checks fail, the first in the documented order is reported.
#[test]
fn checks_run_in_the_documented_order() {
    let f = Fixture::new();
    let stranger = key(99);
    let c = component(100, 1);
    let mut wrong = c.clone();
    wrong[0] ^= 1;
    let expired = details("echo", "1.0.0").with_expires_at(T0);

    // Untrusted key, expired, and the wrong bytes: the bytes first.
    let env = stranger.sign_component(&c, expired.clone()).unwrap();
    f.clock.set(Timestamp(T0.0 + 3_600_000));
    assert!(matches!(f.verifier.verify(env.as_bytes(), wrong.clone(), &echo()), Err(Error::DigestMismatch { .. })));
    // Bad signature and untrusted: the signature.
    let mut b = env.as_bytes().to_vec();
    *b.last_mut().unwrap() ^= 1;
    assert!(matches!(f.verifier.verify(&b, c.clone(), &echo()), Err(Error::BadSignature { .. })));
    // Untrusted and expired: the key.
    assert!(matches!(f.verifier.verify(env.as_bytes(), c.clone(), &echo()), Err(Error::UntrustedKey { .. })));
    // Expired, a rollback and another name: expiry.
    f.clock.set(T0);
    f.verifier.verify(sign(&f.key, "echo", "2.0.0", &c).as_bytes(), c.clone(), &echo()).unwrap();
    let env = f.key.sign_component(&c, expired).unwrap();
    f.clock.set(Timestamp(T0.0 + 3_600_000));
    let other = Expect::name(name("summarize"));
    assert!(matches!(f.verifier.verify(env.as_bytes(), c.clone(), &other), Err(Error::Expired { .. })));
    // A rollback and another name: the rollback.
    f.clock.set(T0);
    assert!(matches!(f.verifier.verify(env.as_bytes(), c, &other), Err(Error::Rollback { .. })));
}

#[test]
fn the_cache_skips_the_signature_check_only() {
    let f = Fixture::new();
    let c = component(5000, 1);
    let env = sign(&f.key, "echo", "1.0.0", &c);
    f.verifier.verify(env.as_bytes(), c.clone(), &echo()).unwrap();
    assert_eq!(f.verifier.cache_stats().misses, 1);
    assert_eq!(f.verifier.cache_stats().entries, 1);
    f.verifier.verify(env.as_bytes(), c.clone(), &echo()).unwrap();
    assert_eq!(f.verifier.cache_stats().hits, 1);

    // A cached envelope with other bytes: still hashed, still refused.
    let mut bad = c.clone();
    bad[2500] ^= 1;
    assert!(matches!(f.verifier.verify(env.as_bytes(), bad, &echo()), Err(Error::DigestMismatch { .. })));
    // The policy applies to cached envelopes too.
    let mut policy = (*f.verifier.policy()).clone();
    policy.revoke(Revocation { key_id: f.key.key_id(), comment: None, revoked_at: None });
    f.verifier.set_policy(policy);
    assert!(matches!(f.verifier.verify(env.as_bytes(), c.clone(), &echo()), Err(Error::RevokedKey { .. })));
    // So do expectations.
    let mut policy = TrustPolicy::new();
    policy.trust(TrustedKey::new(f.key.public_key())).unwrap();
    f.verifier.set_policy(policy);
    assert!(matches!(
        f.verifier.verify(env.as_bytes(), c, &Expect::name(name("other"))),
        Err(Error::NameMismatch { .. })
    ));
    assert_eq!(f.verifier.cache_stats().hits, 4);
    assert_eq!(f.verifier.cache_stats().misses, 1);
}

#[test]
fn a_refused_signature_is_not_cached() {
    let f = Fixture::new();
    let c = component(100, 1);
    let env = sign(&f.key, "echo", "1.0.0", &c);
    let mut b = env.as_bytes().to_vec();
    *b.last_mut().unwrap() ^= 1;
    for _ in 0..2 {
        assert!(matches!(f.verifier.verify(&b, c.clone(), &echo()), Err(Error::BadSignature { .. })));
    }
    assert_eq!(f.verifier.cache_stats(), taskrun_signing::CacheStats { hits: 0, misses: 2, entries: 0 });
}

#[test]
fn the_cache_is_bounded_and_can_be_disabled() {
    let f = Fixture::new();
    let verifier = Verifier::new((*f.verifier.policy()).clone(), Arc::new(f.clock.clone())).with_cache_capacity(2);
    let c = component(10, 1);
    let envs: Vec<_> = (0..3).map(|i| sign(&f.key, "echo", &format!("1.0.{i}"), &c)).collect();
    for e in &envs {
        verifier.verify(e.as_bytes(), c.clone(), &echo()).unwrap();
    }
    assert_eq!(verifier.cache_stats().entries, 2);
    // The oldest was evicted, the newest is served from the cache.
    verifier.verify(envs[2].as_bytes(), c.clone(), &echo()).unwrap();
    assert_eq!(verifier.cache_stats().hits, 1);

    let uncached = Verifier::new((*f.verifier.policy()).clone(), Arc::new(f.clock.clone())).with_cache_capacity(0);
    for _ in 0..2 {
        uncached.verify(envs[0].as_bytes(), c.clone(), &echo()).unwrap();
    }
    assert_eq!(uncached.cache_stats(), taskrun_signing::CacheStats { hits: 0, misses: 2, entries: 0 });
}

#[test]
fn recheck_reapplies_policy_time_and_rollback_without_rehashing() {
    let f = Fixture::new();
    let c = component(1000, 1);
    let env = f.key.sign_component(&c, details("echo", "1.0.0").with_expires_at(Timestamp(T0.0 + 1000))).unwrap();
    let agent = f.verifier.verify(env.as_bytes(), c.clone(), &echo()).unwrap();
    f.verifier.recheck(&agent, &echo()).unwrap();
    assert!(matches!(f.verifier.recheck(&agent, &Expect::name(name("other"))), Err(Error::NameMismatch { .. })));

    // A newer version accepted since: the old one is now a rollback.
    let newer = sign(&f.key, "echo", "1.1.0", &c);
    f.verifier.verify(newer.as_bytes(), c.clone(), &echo()).unwrap();
    assert!(matches!(f.verifier.recheck(&agent, &echo()), Err(Error::Rollback { .. })));
    f.verifier.forget_version(&name("echo")).unwrap();
    f.verifier.recheck(&agent, &echo()).unwrap();

    f.clock.advance(Duration::from_secs(120));
    assert!(matches!(f.verifier.recheck(&agent, &echo()), Err(Error::Expired { .. })));

    f.verifier.set_policy(TrustPolicy::new());
    assert!(matches!(f.verifier.recheck(&agent, &echo()), Err(Error::UntrustedKey { .. })));
}

#[test]
fn rollback_state_survives_a_restart_through_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollback.toml");
    let f = Fixture::new();
    let policy = (*f.verifier.policy()).clone();
    let c = component(100, 1);
    let clock = Arc::new(f.clock.clone());

    let first = Verifier::new(policy.clone(), clock.clone()).with_rollback_file(&path).unwrap();
    first.verify(sign(&f.key, "echo", "2.0.0", &c).as_bytes(), c.clone(), &echo()).unwrap();
    drop(first);
    assert_eq!(RollbackState::load(&path).unwrap().highest(&name("echo")), Some(ver("2.0.0")));

    let second = Verifier::new(policy, clock).with_rollback_file(&path).unwrap();
    assert!(matches!(
        second.verify(sign(&f.key, "echo", "1.0.0", &c).as_bytes(), c.clone(), &echo()),
        Err(Error::Rollback { .. })
    ));
    second.forget_version(&name("echo")).unwrap();
    assert!(RollbackState::load(&path).unwrap().is_empty());
}

#[test]
fn failing_to_save_the_rollback_state_fails_the_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("rollback.toml");
    let f = Fixture::new();
    let verifier =
        Verifier::new((*f.verifier.policy()).clone(), Arc::new(f.clock.clone())).with_rollback_file(&path).unwrap();
    let c = component(100, 1);
    let res = verifier.verify(sign(&f.key, "echo", "1.0.0", &c).as_bytes(), c, &echo());
    assert!(matches!(res, Err(Error::Io { .. })), "{res:?}");
}

#[test]
fn rollback_state_file_round_trip_and_errors() {
    let mut s = RollbackState::new();
    assert!(s.record(&name("echo"), ver("1.2.3")));
    assert!(!s.record(&name("echo"), ver("1.2.3")));
    assert!(!s.record(&name("echo"), ver("1.0.0")));
    assert!(s.record(&name("summarize"), ver("0.0.1")));
    let text = s.to_toml().unwrap();
    assert_eq!(text, "version = 1\n\n[highest]\necho = \"1.2.3\"\nsummarize = \"0.0.1\"\n");
    assert_eq!(RollbackState::from_toml(&text).unwrap(), s);
    for bad in [
        "version = 2\n",
        "version = 1\n[highest]\nEcho = \"1.0.0\"\n",
        "version = 1\n[highest]\necho = \"1.0\"\n",
        "version = 1\nx = 1\n",
    ] {
        assert!(matches!(RollbackState::from_toml(bad), Err(Error::RollbackState { .. })), "{bad}");
    }
}

#[test]
fn concurrent_verifications_agree() {
    let f = Arc::new(Fixture::new());
    let c = Bytes::from(component(100_000, 1));
    let env = sign(&f.key, "echo", "1.0.0", &c);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (f, c, env) = (Arc::clone(&f), c.clone(), env.clone());
            std::thread::spawn(move || {
                for _ in 0..10 {
                    f.verifier.verify(env.as_bytes(), c.clone(), &echo()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = f.verifier.cache_stats();
    assert_eq!(stats.hits + stats.misses, 40);
    assert_eq!(stats.entries, 1);
}

#[test]
fn rollback_protection_can_be_turned_off_for_publishing() {
    let f = Fixture::new();
    let verifier =
        Verifier::new((*f.verifier.policy()).clone(), Arc::new(f.clock.clone())).with_rollback_protection(false);
    let c = component(100, 1);
    for v in ["2.0.0", "1.0.1"] {
        verifier.verify(sign(&f.key, "echo", v, &c).as_bytes(), c.clone(), &Expect::anything()).unwrap();
    }
    assert!(verifier.rollback_state().is_empty());
}
