//! The trust policy file.

use std::path::Path;

use taskrun_signing::{Error, Revocation, TrustPolicy, TrustedKey};

use crate::support::{key, name};

fn example_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../signing/trust-policy.example.toml")
}

#[test]
fn the_example_policy_parses() {
    let policy = TrustPolicy::load(example_path()).unwrap();
    let keys: Vec<_> = policy.trusted_keys().collect();
    assert_eq!(keys.len(), 2);
    let vector_key = crate::vectors::vector_key();
    let k = policy.trusted(&vector_key.key_id()).expect("the test-vector key is pinned in the example");
    assert_eq!(k.public_key, vector_key.public_key());
    assert!(k.allows(&name("echo")) && k.allows(&name("anything")));
    let limited = keys.iter().find(|k| k.agents.is_some()).unwrap();
    assert!(limited.allows(&name("summarize")) && !limited.allows(&name("echo")));
    assert_eq!(policy.revocations().count(), 1);
}

#[test]
fn policy_toml_round_trip() {
    let mut p = TrustPolicy::new();
    p.trust(
        TrustedKey::new(key(1).public_key())
            .with_comment("release key")
            .with_added_at("2025-01-15")
            .with_agents([name("echo"), name("summarize")]),
    )
    .unwrap();
    p.trust(TrustedKey::new(key(2).public_key()).with_added_at("last week")).unwrap();
    p.revoke(Revocation {
        key_id: key(3).key_id(),
        comment: Some("lost".into()),
        revoked_at: Some("2025-02-01T10:00:00Z".into()),
    });
    let text = p.to_toml().unwrap();
    assert!(text.contains("added_at = 2025-01-15\n"), "{text}");
    assert!(text.contains("added_at = \"last week\"\n"), "{text}");
    assert_eq!(TrustPolicy::from_toml(&text).unwrap(), p);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trust.toml");
    p.save(&path).unwrap();
    assert_eq!(TrustPolicy::load(&path).unwrap(), p);
}

#[test]
fn policy_errors_are_precise() {
    let k = key(1);
    let entry = |extra: &str| {
        format!("version = 1\n[[trusted]]\nkey_id = \"{}\"\npublic_key = \"{}\"\n{extra}", k.key_id(), k.public_key())
    };
    let cases = [
        ("version = 2\n".to_owned(), "version is 2, this build reads version 1"),
        ("# nothing\n".to_owned(), "missing field `version`"),
        (entry("public_kye = \"x\"\n"), "unknown field `public_kye`"),
        (entry("agents = []\n"), "an empty agent list allows nothing"),
        (entry("agents = [\"Echo\"]\n"), "agents: invalid agent_name"),
        (entry("agents = [\"echo\", \"echo\"]\n"), "agent echo is listed twice"),
        (entry("added_at = 5\n"), "added_at must be a date or a string, not integer"),
        (
            format!(
                "version = 1\n[[trusted]]\nkey_id = \"{}\"\npublic_key = \"{}\"\n",
                key(2).key_id(),
                k.public_key()
            ),
            "does not match public_key",
        ),
        (
            format!("version = 1\n[[trusted]]\nkey_id = \"{}\"\npublic_key = \"ed25519:AAAA\"\n", k.key_id()),
            "trusted[0]: invalid public key: expected 44 base64 characters",
        ),
        (
            format!("{}[[trusted]]\nkey_id = \"{}\"\npublic_key = \"{}\"\n", entry(""), k.key_id(), k.public_key()),
            "is trusted twice",
        ),
        (
            format!("version = 1\n[[revoked]]\nkey_id = \"{0}\"\n[[revoked]]\nkey_id = \"{0}\"\n", k.key_id()),
            "revoked[1]: key",
        ),
        ("version = 1\n[[revoked]]\nkey_id = \"nope\"\n".to_owned(), "revoked[0]: invalid key id"),
    ];
    for (text, want) in cases {
        let err = TrustPolicy::from_toml(&text).unwrap_err();
        assert!(matches!(err, Error::Policy { .. }), "{text}: {err:?}");
        assert!(err.to_string().contains(want), "want {want:?} in {err}");
    }
}

#[test]
fn policy_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trust.toml");
    std::fs::write(&path, "version = 1\nbogus = true\n").unwrap();
    let err = TrustPolicy::load(&path).unwrap_err();
    assert!(err.to_string().contains("trust.toml"), "{err}");
    assert!(matches!(err.root(), Error::Policy { .. }), "{err:?}");
}

#[test]
fn trusting_a_key_twice_is_refused() {
    let mut p = TrustPolicy::new();
    p.trust(TrustedKey::new(key(1).public_key())).unwrap();
    assert!(matches!(p.trust(TrustedKey::new(key(1).public_key())), Err(Error::Policy { .. })));
    assert!(p.untrust(&key(1).key_id()).is_some());
    assert!(p.trusted(&key(1).key_id()).is_none());
}

#[test]
fn a_broken_policy_says_where_on_one_line() {
    let text = "version = 1\n[[trusted]]\nkey_id = \"ed25519-28febadf08b06dad\"\npublic_key = 7\n";
    let error = TrustPolicy::from_toml(text).expect_err("a number is no key").to_string();
    assert!(error.starts_with("invalid trust policy: line 4, column 14: "), "{error}");
    assert!(!error.contains('\n'), "{error}");
}
