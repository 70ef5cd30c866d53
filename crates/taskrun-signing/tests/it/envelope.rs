//! The envelope format: strict, bounded parsing.

use std::time::{Duration, Instant};

use taskrun_core::WIT_WORLD;
use taskrun_signing::{Envelope, Error, FORMAT_VERSION, MAGIC, MAX_ENVELOPE_LEN, MAX_MANIFEST_LEN, SIGNATURE_LEN};

use crate::alloc_count::allocated_by;
use crate::support::{Fields, T0, component, details, envelope_around, fields, join, key, sign};

fn valid() -> Envelope {
    sign(&key(1), "echo", "1.2.3", &component(100, 1))
}

fn malformed(bytes: &[u8]) -> String {
    match Envelope::parse(bytes) {
        Err(Error::Malformed { what }) => what,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn layout_is_header_manifest_signature() {
    let env = valid();
    let b = env.as_bytes();
    assert_eq!(&b[..8], MAGIC);
    assert_eq!(b[8], FORMAT_VERSION);
    let m = usize::from(u16::from_be_bytes([b[9], b[10]]));
    assert_eq!(b.len(), 11 + m + SIGNATURE_LEN);
    assert_eq!(&b[11..11 + m], env.manifest_bytes());
    assert_eq!(&b[11 + m..], env.signature());
    let parsed = Envelope::parse(b).unwrap();
    assert_eq!(parsed, env);
    assert_eq!(parsed.manifest().wit_world, WIT_WORLD);
    assert_eq!(parsed.manifest().expires_at, None);
}

#[test]
fn largest_manifest_fits_the_bounds() {
    let long_name = format!("a{}", "b".repeat(63));
    let d = details("x", "4294967295.4294967295.4294967295")
        .with_expires_at(T0)
        .with_wit_world("w".repeat(taskrun_signing::MAX_WIT_WORLD_LEN));
    let d = taskrun_signing::AgentDetails { name: long_name.parse().unwrap(), ..d };
    let env = key(1).sign_digest(taskrun_core::AgentDigest::of(b""), u64::MAX, d).unwrap();
    assert_eq!(env.manifest_bytes().len(), 343);
    assert!(env.as_bytes().len() <= MAX_ENVELOPE_LEN);
    assert_eq!(Envelope::parse(env.as_bytes()).unwrap(), env);
}

#[test]
fn signing_refuses_invalid_details() {
    let k = key(1);
    let c = component(10, 1);
    let bad = [
        details("echo", "1.0.0").with_wit_world(""),
        details("echo", "1.0.0").with_wit_world("has space"),
        details("echo", "1.0.0").with_wit_world("w".repeat(129)),
        details("echo", "1.0.0").with_expires_at(taskrun_core::Timestamp(T0.0 - 1)),
        taskrun_signing::AgentDetails { created_at: taskrun_core::Timestamp(-1), ..details("echo", "1.0.0") },
    ];
    for d in bad {
        let err = k.sign_component(&c, d.clone()).unwrap_err();
        assert!(matches!(err, Error::InvalidManifest { .. }), "{d:?}: {err:?}");
    }
}

#[test]
fn every_truncation_is_refused_clearly() {
    let env = valid();
    let b = env.as_bytes();
    for len in 0..b.len() {
        let what = malformed(&b[..len]);
        assert!(what.contains("truncated") || what.contains("length is 0"), "len {len}: {what}");
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut b = valid().into_bytes();
    b.push(0);
    assert_eq!(malformed(&b), "1 trailing byte after the signature");
    b.extend_from_slice(&[0; 9]);
    assert_eq!(malformed(&b), "10 trailing bytes after the signature");
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let huge = vec![0u8; 64 << 20];
    let start = Instant::now();
    let (res, allocated) = allocated_by(|| Envelope::parse(&huge));
    assert!(start.elapsed() < Duration::from_millis(50), "{:?}", start.elapsed());
    assert!(allocated < 1024, "allocated {allocated}");
    match res {
        Err(Error::TooLarge { what: "envelope", len, max }) => {
            assert_eq!(len, 64 << 20);
            assert_eq!(max, MAX_ENVELOPE_LEN as u64);
        }
        other => panic!("{other:?}"),
    }

    // A header announcing a manifest larger than allowed.
    let mut b = MAGIC.to_vec();
    b.push(FORMAT_VERSION);
    b.extend_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(
        Envelope::parse(&b),
        Err(Error::TooLarge { what: "manifest", len: 65535, max }) if max == MAX_MANIFEST_LEN as u64
    ));
}

#[test]
fn garbage_is_refused_in_bounded_time_and_memory() {
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        b"\0asm\x0d\0\x01\0".to_vec(),
        b"-----BEGIN PGP SIGNATURE-----".to_vec(),
        vec![0xff; MAX_ENVELOPE_LEN],
        component(MAX_ENVELOPE_LEN, 9),
    ];
    for input in inputs {
        let start = Instant::now();
        let (res, allocated) = allocated_by(|| Envelope::parse(&input));
        assert!(start.elapsed() < Duration::from_millis(50));
        assert!(allocated < 1024, "allocated {allocated}");
        let what = match res {
            Err(Error::Malformed { what }) => what,
            other => panic!("{other:?}"),
        };
        assert!(what.contains("bad magic") || what.contains("truncated"), "{what}");
    }
}

#[test]
fn parsing_allocates_no_more_than_the_input() {
    let env = valid();
    let (res, allocated) = allocated_by(|| Envelope::parse(env.as_bytes()));
    res.unwrap();
    // The envelope's own copy plus the name and wit_world strings.
    assert!(allocated <= env.as_bytes().len() + 256, "allocated {allocated} for {} bytes", env.as_bytes().len());
}

#[test]
fn header_errors() {
    let env = valid();
    let mut b = env.as_bytes().to_vec();
    b[0] = b'X';
    assert_eq!(malformed(&b), "not a TaskRun agent envelope (bad magic)");

    let mut b = env.as_bytes().to_vec();
    b[8] = 2;
    assert_eq!(malformed(&b), "unsupported format version 2 (this verifier reads version 1)");

    let mut b = env.as_bytes().to_vec();
    b[9] = 0;
    b[10] = 0;
    assert_eq!(malformed(&b), "manifest length is 0");

    // A manifest length one short: the manifest's last field is cut and
    // one byte follows the signature.
    let mut b = env.as_bytes().to_vec();
    let m = u16::from_be_bytes([b[9], b[10]]) - 1;
    b[9..11].copy_from_slice(&m.to_be_bytes());
    let what = malformed(&b);
    assert!(what.contains("trailing"), "{what}");
}

/// Manifests that are validly signed but not canonical or not well formed:
/// the parser must refuse them whatever the signature says.
#[test]
fn non_canonical_manifests_are_refused_even_when_signed() {
    let k = key(1);
    let env = valid();
    let f = fields(env.manifest_bytes());
    let with = |edit: &dyn Fn(&mut Fields)| {
        let mut g = f.clone();
        edit(&mut g);
        envelope_around(&k, &join(&g))
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (with(&|g| g.swap(0, 1)), "field name at offset 26 is out of order"),
        (with(&|g| g.insert(1, g[0].clone())), "duplicate field name at offset"),
        (with(&|g| g.push((10, vec![0]))), "unknown field tag 10 at offset"),
        (with(&|g| g.insert(0, (0, vec![0]))), "unknown field tag 0 at offset 11"),
        (with(&|g| g.remove(0).1.clear()), "manifest has no name field"),
        (with(&|g| g.retain(|(t, _)| *t != 9)), "manifest has no public_key field"),
        (with(&|g| g[1].1.push(0)), "field version at offset 18 is 13 bytes, expected 12"),
        (with(&|g| g[0].1 = b"Echo".to_vec()), "field name: invalid agent_name"),
        (with(&|g| g[0].1 = vec![0xff, 0xfe]), "field name is not UTF-8"),
        (with(&|g| g[4].1 = b"taskrun:agent/agent 0.1.0".to_vec()), "wit_world must be printable ASCII"),
        (with(&|g| g[5].1 = (-5i64).to_be_bytes().to_vec()), "field created_at is before 1970"),
        (
            with(&|g| g.insert(6, (7, (T0.0 - 1).to_be_bytes().to_vec()))),
            "field expires_at 1699999999999ms is before created_at 1700000000000ms",
        ),
        (with(&|g| g[6].1 = key(2).key_id().to_string().into_bytes()), "is not the id of the public key"),
        (with(&|g| g[6].1 = b"ED25519-0123456789abcdef".to_vec()), "field key_id: invalid key id"),
        (with(&|g| g[7].1 = [0u8; 32].to_vec()), "field public_key"),
    ];
    for (bytes, want) in cases {
        let what = malformed(&bytes);
        assert!(what.contains(want), "want {want:?}, got {what:?}");
    }
}

#[test]
fn a_field_cut_by_the_end_of_the_manifest_is_refused() {
    let k = key(1);
    let env = valid();
    let m = env.manifest_bytes();
    let what = malformed(&envelope_around(&k, &m[..m.len() - 1]));
    assert!(what.contains("field public_key") && what.contains("runs past the end"), "{what}");
    let what = malformed(&envelope_around(&k, &[m, &[9u8, 0][..]].concat()));
    assert!(what.contains("cut off by the end of the manifest"), "{what}");
}

#[test]
fn expiring_manifest_round_trips() {
    let d = details("echo", "1.0.0").with_expires_at(taskrun_core::Timestamp(T0.0 + 1000));
    let env = key(1).sign_component(b"x", d).unwrap();
    let parsed = Envelope::parse(env.as_bytes()).unwrap();
    assert_eq!(parsed.manifest().expires_at, Some(taskrun_core::Timestamp(T0.0 + 1000)));
    assert_eq!(parsed.manifest().created_at, T0);
}
