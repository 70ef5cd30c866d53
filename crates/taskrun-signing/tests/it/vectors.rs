//! Test vectors in signing/vectors/: regenerated from a documented public
//! test seed with `TASKRUN_REGENERATE_VECTORS=1 cargo test -p taskrun-signing
//! vectors`, checked otherwise.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use taskrun_core::{AgentDigest, ManualClock, Timestamp, WIT_WORLD};
use taskrun_signing::{
    AgentDetails, Envelope, Expect, PublicKey, SIGNING_CONTEXT, SigningKey, TrustPolicy, TrustedKey, Verifier,
};

use crate::support::{Fields, envelope_around, fields, join, name, ver};

/// The test-vector key's seed is SHA-256 of this string. The key is public
/// and for tests only: never trust it outside tests.
pub const VECTOR_SEED_TEXT: &str = "taskrun-signing test vector key 1 (public, test only)";

pub fn vector_key() -> SigningKey {
    SigningKey::from_seed(&Sha256::digest(VECTOR_SEED_TEXT).into())
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../signing/vectors")
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Vectors {
    key: KeyVector,
    valid: Vec<ValidVector>,
    invalid: Vec<InvalidVector>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct KeyVector {
    seed: String,
    public_key: String,
    public_key_hex: String,
    key_id: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ValidVector {
    name: String,
    agent: String,
    version: String,
    wit_world: String,
    created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    size: u64,
    digest: String,
    component_file: String,
    component_hex: String,
    manifest_hex: String,
    signed_message_hex: String,
    signature_hex: String,
    envelope_file: String,
    envelope_hex: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct InvalidVector {
    name: String,
    /// The valid vector whose component goes with this envelope.
    component: String,
    envelope_hex: String,
    /// The verifier's error message, exactly.
    error: String,
}

fn valid_inputs() -> Vec<(&'static str, Vec<u8>, AgentDetails)> {
    let mut basic = b"\0asm\x0d\0\x01\0".to_vec();
    basic.extend_from_slice(b"taskrun test vector: not a real component\n");
    let expiring: Vec<u8> = (0..100u32).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        ("basic", basic, AgentDetails::new(name("echo"), ver("1.2.3"), Timestamp(1_700_000_000_000))),
        (
            "expiring",
            expiring,
            AgentDetails::new(name("summarize"), ver("0.4.0"), Timestamp(1_700_000_000_000))
                .with_expires_at(Timestamp(1_731_536_000_000)),
        ),
    ]
}

fn generate() -> (Vectors, Vec<(String, Vec<u8>)>) {
    let key = vector_key();
    let mut files = Vec::new();
    let mut valid = Vec::new();
    let mut basic_envelope = None;
    for (vname, component, details) in valid_inputs() {
        let env = key.sign_component(&component, details.clone()).unwrap();
        let mut signed = SIGNING_CONTEXT.to_vec();
        signed.extend_from_slice(env.manifest_bytes());
        files.push((format!("{vname}.component"), component.clone()));
        files.push((format!("{vname}.envelope"), env.as_bytes().to_vec()));
        valid.push(ValidVector {
            name: vname.to_owned(),
            agent: details.name.to_string(),
            version: details.version.to_string(),
            wit_world: details.wit_world.clone(),
            created_at: details.created_at.0,
            expires_at: details.expires_at.map(|t| t.0),
            size: component.len() as u64,
            digest: AgentDigest::of(&component).to_string(),
            component_file: format!("{vname}.component"),
            component_hex: hex::encode(&component),
            manifest_hex: hex::encode(env.manifest_bytes()),
            signed_message_hex: hex::encode(&signed),
            signature_hex: hex::encode(env.signature()),
            envelope_file: format!("{vname}.envelope"),
            envelope_hex: hex::encode(env.as_bytes()),
        });
        if vname == "basic" {
            basic_envelope = Some(env);
        }
    }
    let basic = basic_envelope.unwrap();
    let b = basic.as_bytes().to_vec();
    let f = fields(basic.manifest_bytes());
    let resigned = |edit: &dyn Fn(&mut Fields)| {
        let mut g = f.clone();
        edit(&mut g);
        envelope_around(&key, &join(&g))
    };
    let edited = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut x = b.clone();
        edit(&mut x);
        x
    };
    let invalid_inputs: Vec<(&str, Vec<u8>)> = vec![
        ("bad-magic", edited(&|x| x[0] = b'X')),
        ("unsupported-version", edited(&|x| x[8] = 2)),
        ("truncated", b[..b.len() - 1].to_vec()),
        ("trailing-byte", edited(&|x| x.push(0))),
        ("unknown-field", resigned(&|g| g.push((10, vec![])))),
        ("duplicate-field", resigned(&|g| g.insert(1, g[0].clone()))),
        ("fields-out-of-order", resigned(&|g| g.swap(0, 1))),
        ("missing-field", resigned(&|g| g.retain(|(t, _)| *t != 5))),
        ("key-id-mismatch", resigned(&|g| g[6].1 = crate::support::key(2).key_id().to_string().into_bytes())),
        ("expires-before-created", resigned(&|g| g.insert(6, (7, 0i64.to_be_bytes().to_vec())))),
        ("digest-mismatch", resigned(&|g| g[2].1 = vec![0; 32])),
        ("bad-signature", edited(&|x| *x.last_mut().unwrap() ^= 1)),
        ("manifest-changed-after-signing", edited(&|x| x[11 + 3 + 4 + 3 + 11] ^= 1)),
    ];
    let invalid = invalid_inputs
        .into_iter()
        .map(|(iname, bytes)| InvalidVector {
            name: iname.to_owned(),
            component: "basic".into(),
            error: verify_error(&bytes, &valid_inputs()[0].1),
            envelope_hex: hex::encode(&bytes),
        })
        .collect();
    let pk = key.public_key();
    let vectors = Vectors {
        key: KeyVector {
            seed: format!("SHA-256 of the ASCII string {VECTOR_SEED_TEXT:?} (public, test only)"),
            public_key: pk.to_string(),
            public_key_hex: hex::encode(pk.to_bytes()),
            key_id: pk.key_id().to_string(),
        },
        valid,
        invalid,
    };
    (vectors, files)
}

/// A verifier that trusts only the vector key, at the vectors' time.
fn verifier() -> Verifier {
    let mut policy = TrustPolicy::new();
    policy.trust(TrustedKey::new(vector_key().public_key())).unwrap();
    Verifier::new(policy, Arc::new(ManualClock::new(Timestamp(1_700_000_000_000))))
}

fn verify_error(envelope: &[u8], component: &[u8]) -> String {
    match verifier().verify(envelope, component.to_vec(), &Expect::anything()) {
        Ok(_) => panic!("an invalid vector verified"),
        Err(e) => e.to_string(),
    }
}

const HEADER: &str = "# TaskRun signed-agent test vectors (signing/FORMAT.md).\n\
# Generated by `TASKRUN_REGENERATE_VECTORS=1 cargo test -p taskrun-signing vectors`; do not edit.\n\
# The key below is a PUBLIC TEST-ONLY key derived from a published seed: never trust it outside tests.\n\n";

fn render(v: &Vectors) -> String {
    format!("{HEADER}{}", toml::to_string(v).unwrap())
}

#[test]
fn vectors_match() {
    let (vectors, files) = generate();
    let text = render(&vectors);
    let dir = dir();
    if std::env::var_os("TASKRUN_REGENERATE_VECTORS").is_some() {
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vectors.toml"), &text).unwrap();
        for (file, bytes) in &files {
            fs::write(dir.join(file), bytes).unwrap();
        }
    }
    let committed = fs::read_to_string(dir.join("vectors.toml")).unwrap();
    assert!(committed == text, "signing/vectors/vectors.toml is stale: regenerate with TASKRUN_REGENERATE_VECTORS=1");
    for (file, bytes) in &files {
        assert_eq!(&fs::read(dir.join(file)).unwrap(), bytes, "signing/vectors/{file} is stale");
    }
}

/// Checks the committed vectors on their own terms, as another
/// implementation would: parse, recompute, verify.
#[test]
fn committed_vectors_verify() {
    let dir = dir();
    let text = fs::read_to_string(dir.join("vectors.toml")).unwrap();
    let v: Vectors = toml::from_str(&text).unwrap();

    let pk: PublicKey = v.key.public_key.parse().unwrap();
    assert_eq!(hex::encode(pk.to_bytes()), v.key.public_key_hex);
    assert_eq!(pk.key_id().to_string(), v.key.key_id);
    assert_eq!(
        v.key.key_id,
        format!("ed25519-{}", hex::encode(&Sha256::digest(hex::decode(&v.key.public_key_hex).unwrap())[..8]))
    );
    assert_eq!(vector_key().public_key(), pk);

    let verifier = verifier();
    for t in &v.valid {
        let component = hex::decode(&t.component_hex).unwrap();
        let envelope = hex::decode(&t.envelope_hex).unwrap();
        assert_eq!(fs::read(dir.join(&t.component_file)).unwrap(), component, "{}", t.name);
        assert_eq!(fs::read(dir.join(&t.envelope_file)).unwrap(), envelope, "{}", t.name);
        assert_eq!(component.len() as u64, t.size);
        assert_eq!(AgentDigest::of(&component).to_string(), t.digest);
        // Envelope = magic, version, length, manifest, signature.
        let manifest = hex::decode(&t.manifest_hex).unwrap();
        let signature = hex::decode(&t.signature_hex).unwrap();
        let mut expected = b"TRAGENT\0\x01".to_vec();
        expected.extend_from_slice(&(manifest.len() as u16).to_be_bytes());
        expected.extend_from_slice(&manifest);
        expected.extend_from_slice(&signature);
        assert_eq!(envelope, expected, "{}", t.name);
        assert_eq!(hex::decode(&t.signed_message_hex).unwrap(), [SIGNING_CONTEXT, &manifest[..]].concat());
        // The signature verifies with plain Ed25519 over the signed message.
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk.to_bytes()).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&signature).unwrap();
        vk.verify_strict(&hex::decode(&t.signed_message_hex).unwrap(), &sig).unwrap();

        let parsed = Envelope::parse(&envelope).unwrap();
        let m = parsed.manifest();
        assert_eq!(m.name.as_str(), t.agent);
        assert_eq!(m.version.to_string(), t.version);
        assert_eq!(m.wit_world, t.wit_world);
        assert_eq!(m.wit_world, WIT_WORLD);
        assert_eq!(m.created_at.0, t.created_at);
        assert_eq!(m.expires_at.map(|x| x.0), t.expires_at);
        let agent = verifier.verify(&envelope, component, &Expect::name(m.name.clone())).unwrap();
        assert_eq!(agent.digest().to_string(), t.digest);
    }
    for t in &v.invalid {
        let component = &v.valid.iter().find(|x| x.name == t.component).unwrap().component_hex;
        let err = verify_error(&hex::decode(&t.envelope_hex).unwrap(), &hex::decode(component).unwrap());
        assert_eq!(err, t.error, "{}", t.name);
    }
    assert!(v.invalid.len() >= 10);
}
