//! `taskrun keys ...`: key files and trust policies, no control plane.

use taskrun_signing::{KeyId, PublicKey, SigningKey, TrustPolicy};

use crate::support::{path_str, run};

/// The value after `label` on a `label value` line of `text`.
fn value_after<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
}

#[tokio::test]
async fn generate_writes_a_private_key_only_its_owner_reads_and_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("author.key");
    let out = run(None, &["keys", "generate", "--out", path_str(&key_path)]).await;
    out.ok();

    let key = SigningKey::load(&key_path).expect("the private key loads");
    let public = PublicKey::load(dir.path().join("author.key.pub")).expect("the public key loads");
    assert_eq!(key.public_key(), public);
    assert_eq!(value_after(&out.stdout, "key id:"), key.key_id().to_string());
    assert_eq!(value_after(&out.stdout, "public key:"), public.to_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "private key mode");
        let mode = std::fs::metadata(dir.path().join("author.key.pub")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "public key mode");
    }
    assert!(out.stderr.contains("keep it secret"), "{}", out.stderr);
}

#[tokio::test]
async fn generate_refuses_to_overwrite_a_key_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("k");
    run(None, &["keys", "generate", "--out", path_str(&key_path)]).await.ok();
    let first = std::fs::read(&key_path).unwrap();

    let out = run(None, &["keys", "generate", "--out", path_str(&key_path)]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("already exists") && out.stderr.contains("--force"), "{}", out.stderr);
    assert_eq!(std::fs::read(&key_path).unwrap(), first, "the key must be left alone");

    // Only the public half exists: still refused, nothing written.
    let lone = dir.path().join("lone");
    std::fs::write(dir.path().join("lone.pub"), "x").unwrap();
    run(None, &["keys", "generate", "--out", path_str(&lone)]).await.expect_code(64);
    assert!(!lone.exists());

    let out = run(None, &["keys", "generate", "--out", path_str(&key_path), "--force"]).await;
    out.ok();
    assert_ne!(std::fs::read(&key_path).unwrap(), first, "--force replaces the key");
    let key = SigningKey::load(&key_path).unwrap();
    assert_eq!(PublicKey::load(dir.path().join("k.pub")).unwrap(), key.public_key());
}

#[tokio::test]
async fn trust_revoke_and_list_round_trip_through_the_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    let policy = path_str(&policy_path);
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    run(None, &["keys", "generate", "--out", path_str(&alice)]).await.ok();
    run(None, &["keys", "generate", "--out", path_str(&bob)]).await.ok();
    let alice_key = PublicKey::load(dir.path().join("alice.pub")).unwrap();
    let bob_key = PublicKey::load(dir.path().join("bob.pub")).unwrap();

    // A public key file; the policy is created.
    let alice_pub = dir.path().join("alice.pub");
    let out = run(
        None,
        &["keys", "trust", path_str(&alice_pub), "--policy", policy, "--comment", "alice's laptop", "--agent", "echo"],
    )
    .await;
    out.ok();
    assert!(out.stdout.contains(&format!("trusted {}", alice_key.key_id())), "{}", out.stdout);
    assert!(out.stderr.contains("created"), "{}", out.stderr);

    // The key's text form; no agent list = any agent.
    let bob_text = bob_key.to_string();
    run(None, &["keys", "trust", &bob_text, "--policy", policy]).await.ok();

    let loaded = TrustPolicy::load(&policy_path).expect("the policy file is valid");
    let a = loaded.trusted(&alice_key.key_id()).expect("alice pinned");
    assert_eq!(a.public_key, alice_key);
    assert_eq!(a.comment.as_deref(), Some("alice's laptop"));
    let agents: Vec<String> = a.agents.iter().flatten().map(ToString::to_string).collect();
    assert_eq!(agents, ["echo"]);
    assert!(a.added_at.is_some(), "added_at is recorded");
    let b = loaded.trusted(&bob_key.key_id()).expect("bob pinned");
    assert!(b.agents.is_none());
    let text = std::fs::read_to_string(&policy_path).unwrap();
    assert!(text.contains("version = 1"), "{text}");
    assert!(text.contains(&format!("public_key = \"{alice_key}\"")), "{text}");

    // Pinning the same key again is refused and changes nothing.
    let out = run(None, &["keys", "trust", &bob_text, "--policy", policy]).await;
    out.expect_code(1);
    assert!(out.stderr.contains("already trusted"), "{}", out.stderr);

    let out = run(None, &["keys", "list", "--policy", policy]).await;
    out.ok();
    let alice_row = out.stdout.lines().find(|l| l.starts_with(&alice_key.key_id().to_string())).expect("alice row");
    assert!(alice_row.contains("trusted") && alice_row.contains("echo") && alice_row.contains("alice's laptop"));

    // Revoke bob; the entry stays pinned but revocation wins.
    let bob_id = bob_key.key_id().to_string();
    let out = run(None, &["keys", "revoke", &bob_id, "--policy", policy, "--reason", "laptop stolen"]).await;
    out.ok();
    assert!(out.stdout.contains(&format!("revoked {bob_id}")), "{}", out.stdout);
    let loaded = TrustPolicy::load(&policy_path).unwrap();
    assert!(loaded.is_revoked(&bob_key.key_id()));
    assert!(!loaded.is_revoked(&alice_key.key_id()));
    let revocation = loaded.revocations().find(|r| r.key_id == bob_key.key_id()).unwrap();
    assert_eq!(revocation.comment.as_deref(), Some("laptop stolen"));

    // Revoking again is a no-op that says so.
    let out = run(None, &["keys", "revoke", &bob_id, "--policy", policy]).await;
    out.ok();
    assert!(out.stdout.contains("already revoked"), "{}", out.stdout);

    let out = run(None, &["keys", "list", "--policy", policy]).await;
    out.ok();
    let bob_row = out.stdout.lines().find(|l| l.starts_with(&bob_id)).expect("bob row");
    assert!(bob_row.contains("revoked") && bob_row.contains("laptop stolen"), "{bob_row}");

    // A revoked key cannot be pinned again.
    let out = run(None, &["keys", "trust", path_str(&dir.path().join("bob.pub")), "--policy", policy]).await;
    out.expect_code(1);
    assert!(out.stderr.contains("revoked"), "{}", out.stderr);
}

#[tokio::test]
async fn revoking_in_a_missing_policy_is_refused_rather_than_creating_one() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("typo.toml");
    let id = KeyId::of(&SigningKey::generate().public_key()).to_string();
    let out = run(None, &["keys", "revoke", &id, "--policy", path_str(&policy)]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("no such trust policy"), "{}", out.stderr);
    assert!(!policy.exists());
}

#[tokio::test]
async fn trust_explains_what_is_wrong_with_the_key_argument() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    let key = dir.path().join("k");
    run(None, &["keys", "generate", "--out", path_str(&key)]).await.ok();

    // The private key file by mistake: said once, with the file to give.
    let out = run(None, &["keys", "trust", path_str(&key), "--policy", path_str(&policy)]).await;
    out.expect_code(64);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: {} is a private key file, which must stay with its author (do not share it); give the public \
             key instead: {}.pub, the file next to it",
            key.display(),
            key.display()
        )
    );

    // A file that is no key at all.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "hello\n").unwrap();
    let out = run(None, &["keys", "trust", path_str(&junk), "--policy", path_str(&policy)]).await;
    out.expect_code(64);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: {} is not a public key file (must start with \"ed25519:\"); give a public key file, e.g. \
             KEY.pub, or the key itself, ed25519:<base64>",
            junk.display()
        )
    );

    // The private key's text pasted in: refused, and not echoed back.
    let secret = std::fs::read_to_string(&key).unwrap();
    let secret = secret.trim();
    let out = run(None, &["keys", "trust", secret, "--policy", path_str(&policy)]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("that is a private key"), "{}", out.stderr);
    let b64 = secret.rsplit(':').next().unwrap();
    assert!(!out.stderr.contains(b64) && !out.stdout.contains(b64), "the secret was echoed: {}", out.stderr);

    // A file that does not exist.
    let out = run(None, &["keys", "trust", "nowhere.pub", "--policy", path_str(&policy)]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("no such file"), "{}", out.stderr);

    // A key id where a key belongs.
    let out = run(None, &["keys", "trust", "ed25519:abc", "--policy", path_str(&policy)]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("invalid public key"), "{}", out.stderr);
    assert!(!policy.exists(), "nothing was written");
}
