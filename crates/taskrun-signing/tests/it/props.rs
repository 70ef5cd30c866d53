//! Property tests: the parser never panics and never accepts a mutation.

use proptest::prelude::*;
use taskrun_core::{AgentDigest, AgentVersion, Timestamp};
use taskrun_signing::{AgentDetails, Envelope, Error, Expect, MAX_ENVELOPE_LEN};

use crate::alloc_count::allocated_by;
use crate::support::{Fixture, component, key, sign};

fn valid_envelope() -> Vec<u8> {
    sign(&key(1), "echo", "1.2.3", &component(64, 1)).into_bytes()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, value: u8 },
    Truncate { len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::Remove { at, len }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::Flip { at, mask } => bytes[at % n] ^= mask,
        Mutation::Set { at, value } => bytes[at % n] = *value,
        Mutation::Truncate { len } => bytes.truncate(len % n),
        Mutation::Insert { at, bytes: b } => {
            let at = at % (n + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Remove { at, len } => {
            let at = at % n;
            let end = (at + len).min(n);
            bytes.drain(at..end);
        }
    }
}

fn parse_bounded(bytes: &[u8]) -> Result<Envelope, Error> {
    let (res, allocated) = allocated_by(|| Envelope::parse(bytes));
    assert!(allocated <= bytes.len().min(MAX_ENVELOPE_LEN) + 1024, "allocated {allocated} for {} bytes", bytes.len());
    res
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
        let _ = parse_bounded(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(
        len in 0u16..1200,
        rest in prop::collection::vec(any::<u8>(), 0..1200),
    ) {
        let mut bytes = taskrun_signing::MAGIC.to_vec();
        bytes.push(taskrun_signing::FORMAT_VERSION);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&rest);
        let _ = parse_bounded(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_panic_and_never_verify(mutations in prop::collection::vec(mutation(), 1..4)) {
        let original = valid_envelope();
        let mut bytes = original.clone();
        for m in &mutations {
            if bytes.is_empty() {
                break;
            }
            apply(&mut bytes, m);
        }
        let parsed = parse_bounded(&bytes);
        if bytes != original {
            let f = Fixture::new();
            let res = f.verifier.verify(&bytes, component(64, 1), &Expect::name(crate::support::name("echo")));
            prop_assert!(res.is_err(), "a mutated envelope verified: {mutations:?}");
            // Whatever parses re-encodes to the same bytes: one encoding per manifest.
            if let Ok(env) = parsed {
                prop_assert_eq!(env.as_bytes(), &bytes[..]);
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_details_round_trip(
        agent in "[a-z]([a-z0-9-]{0,62}[a-z0-9])?",
        (major, minor, patch) in (any::<u32>(), any::<u32>(), any::<u32>()),
        wit in "[!-~]{1,128}",
        created in 0i64..i64::MAX / 2,
        ttl in proptest::option::of(0i64..i64::MAX / 2),
        digest in any::<[u8; 32]>(),
        size in any::<u64>(),
    ) {
        let mut details = AgentDetails::new(agent.parse().unwrap(), AgentVersion::new(major, minor, patch), Timestamp(created))
            .with_wit_world(wit);
        if let Some(ttl) = ttl {
            details = details.with_expires_at(Timestamp(created + ttl));
        }
        let env = key(1).sign_digest(AgentDigest::from_bytes(digest), size, details.clone()).unwrap();
        let parsed = Envelope::parse(env.as_bytes()).unwrap();
        prop_assert_eq!(&parsed, &env);
        let m = parsed.manifest();
        prop_assert_eq!(&m.name, &details.name);
        prop_assert_eq!(m.version, details.version);
        prop_assert_eq!(&m.wit_world, &details.wit_world);
        prop_assert_eq!(m.created_at, details.created_at);
        prop_assert_eq!(m.expires_at, details.expires_at);
        prop_assert_eq!(m.size, size);
        prop_assert_eq!(m.digest, AgentDigest::from_bytes(digest));
    }
}
