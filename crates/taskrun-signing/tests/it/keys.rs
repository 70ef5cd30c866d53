//! Keys: ids, text forms, key files.

use std::fs;

use sha2::{Digest as _, Sha256};
use taskrun_signing::{Error, KeyId, Overwrite, PublicKey, SigningKey};

use crate::support::key;

#[test]
fn key_id_is_first_8_bytes_of_sha256_of_public_key() {
    let k = key(1);
    let pk = k.public_key().to_bytes();
    let expected = format!("ed25519-{}", hex::encode(&Sha256::digest(pk)[..8]));
    assert_eq!(k.key_id().to_string(), expected);
    assert_eq!(expected.parse::<KeyId>().unwrap(), k.key_id());
    assert_eq!(KeyId::TEXT_LEN, expected.len());
}

#[test]
fn key_id_parse_errors_are_precise() {
    let cases = [
        ("", "must start with \"ed25519-\""),
        ("ed25519-0123", "expected 16 lowercase hex digits"),
        ("ed25519-0123456789ABCDEF", "expected 16 lowercase hex digits"),
        ("ed25519-0123456789abcdef0", "expected 16 lowercase hex digits"),
        ("ed25519:AAAA", "this is a public key, not a key id"),
    ];
    for (input, want) in cases {
        let err = input.parse::<KeyId>().unwrap_err();
        assert!(matches!(err, Error::InvalidKey { what: "key id", .. }), "{input:?}: {err:?}");
        assert!(err.to_string().contains(want), "{input:?}: {err}");
    }
}

#[test]
fn public_key_text_round_trip() {
    let pk = key(2).public_key();
    let text = pk.to_string();
    assert!(text.starts_with("ed25519:"));
    assert_eq!(text.len(), "ed25519:".len() + 44);
    assert_eq!(text.parse::<PublicKey>().unwrap(), pk);
}

#[test]
fn public_key_parse_errors_are_precise() {
    let good = key(2).public_key().to_string();
    let b64 = good.strip_prefix("ed25519:").unwrap();
    let cases = [
        (format!("ssh-ed25519:{b64}"), "must start with \"ed25519:\""),
        ("ed25519:!!!!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned(), "bad base64"),
        (format!("ed25519:{}", &b64[..40]), "expected 44 base64 characters (32 bytes), got 40"),
        (format!("ed25519:{b64}AAAA"), "expected 44 base64 characters (32 bytes), got 48"),
        (key(2).key_id().to_string(), "this is a key id, not a public key"),
        (key(2).to_private_text().trim().to_owned(), "this is a private key"),
        // The identity point: valid encoding, small order.
        (format!("ed25519:{}", base64_of(&identity_point())), "weak key"),
    ];
    for (input, want) in cases {
        let err = input.parse::<PublicKey>().unwrap_err();
        assert!(matches!(err, Error::InvalidKey { what: "public key", .. }), "{input:?}: {err:?}");
        assert!(err.to_string().contains(want), "{input:?}: {err}");
    }
}

fn identity_point() -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 1;
    p
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn private_text_round_trip_and_errors() {
    let k = key(3);
    let text = k.to_private_text();
    assert!(text.starts_with("taskrun-ed25519-private:"));
    assert!(text.ends_with('\n'));
    let back = SigningKey::from_private_text(&text).unwrap();
    assert_eq!(back.public_key(), k.public_key());

    for (input, want) in [
        ("", "must start with \"taskrun-ed25519-private:\""),
        ("taskrun-ed25519-private:AAAA", "expected 44 base64 characters"),
        ("taskrun-ed25519-private:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=", "bad base64"),
        ("taskrun-ed25519-private:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nmore", "got 49 characters"),
    ] {
        let err = SigningKey::from_private_text(input).unwrap_err();
        assert!(matches!(err, Error::InvalidKey { what: "private key", .. }), "{input:?}: {err:?}");
        assert!(err.to_string().contains(want), "{input:?}: {err}");
    }
    let err = SigningKey::from_private_text(&k.public_key().to_string()).unwrap_err();
    assert!(err.to_string().contains("this is a public key, not a private key"), "{err}");
}

#[test]
fn debug_never_shows_the_secret() {
    let k = key(4);
    let text = k.to_private_text();
    let b64 = text.trim().strip_prefix("taskrun-ed25519-private:").unwrap().to_owned();
    let debug = format!("{k:?}");
    assert!(debug.contains(&k.key_id().to_string()), "{debug}");
    assert!(!debug.contains(&b64), "{debug}");
    assert!(!debug.contains(&hex::encode(crate::support::seed_of(&k))), "{debug}");
}

#[test]
fn generated_keys_differ() {
    let a = SigningKey::generate();
    let b = SigningKey::generate();
    assert_ne!(a.public_key(), b.public_key());
}

#[test]
fn private_key_file_round_trip_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("author.key");
    let k = SigningKey::generate();
    k.write(&path, Overwrite::Refuse).unwrap();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }
    let loaded = SigningKey::load(&path).unwrap();
    assert_eq!(loaded.public_key(), k.public_key());
    // No temporary file is left behind.
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("author.key")]);
}

#[test]
fn private_key_file_is_not_overwritten_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("author.key");
    let first = key(5);
    first.write(&path, Overwrite::Refuse).unwrap();
    let err = key(6).write(&path, Overwrite::Refuse).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(SigningKey::load(&path).unwrap().public_key(), first.public_key());

    key(6).write(&path, Overwrite::Allow).unwrap();
    assert_eq!(SigningKey::load(&path).unwrap().public_key(), key(6).public_key());
}

#[cfg(unix)]
#[test]
fn private_key_file_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("author.key");
    key(7).write(&path, Overwrite::Refuse).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = SigningKey::load(&path).unwrap_err();
        assert!(matches!(err, Error::KeyFilePermissions { mode: m, .. } if m == mode), "{mode:o}: {err:?}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(SigningKey::load(&path).is_ok());
}

#[test]
fn key_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.key");
    write_private(&path, b"taskrun-ed25519-private:nope\n");
    let err = SigningKey::load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bad.key") && msg.contains("invalid private key"), "{msg}");
    assert!(matches!(err.root(), Error::InvalidKey { .. }), "{err:?}");

    // Not a key file at all: refused without reading it whole.
    write_private(&path, &vec![b'A'; 1 << 20]);
    let err = SigningKey::load(&path).unwrap_err();
    assert!(matches!(err.root(), Error::TooLarge { .. }), "{err:?}");

    let missing = SigningKey::load(dir.path().join("missing.key")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
}

fn write_private(path: &std::path::Path, content: &[u8]) {
    fs::write(path, content).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn public_key_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("author.pub");
    let pk = key(8).public_key();
    pk.write(&path, Overwrite::Refuse).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), format!("{pk}\n"));
    assert_eq!(PublicKey::load(&path).unwrap(), pk);
    let err = pk.write(&path, Overwrite::Refuse).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
}
