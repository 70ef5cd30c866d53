//! `taskrun agent ...` against a control plane whose trust policy pins the
//! test author's key.

use taskrun_core::AgentDigest;
use taskrun_signing::{Envelope, SigningKey};

use crate::support::{COMPONENT, Env, path_str, run};

#[tokio::test]
async fn sign_then_publish_then_list_and_show() {
    let env = Env::start().await;
    let component = path_str(&env.component);
    let key = path_str(&env.key);
    let digest = AgentDigest::of(COMPONENT).to_string();

    let out = env.run(&["agent", "sign", component, "--key", key, "--name", "echo", "--version", "1.0.0"]).await;
    out.ok();
    assert!(out.stdout.contains(&format!("signed echo@1.0.0 {digest}")), "{}", out.stdout);
    let envelope = Envelope::parse(&std::fs::read(env.path("agent.wasm.sig")).unwrap()).expect("a valid envelope");
    let signer = SigningKey::load(&env.key).unwrap();
    assert_eq!(envelope.manifest().key_id, signer.key_id());
    assert_eq!(envelope.manifest().name.as_str(), "echo");
    assert_eq!(envelope.manifest().digest.to_string(), digest);
    assert_eq!(envelope.manifest().expires_at, None);

    // The envelope next to the component is found without --envelope.
    let out = env.run(&["agent", "publish", component]).await;
    out.ok();
    assert_eq!(out.first_line(), format!("published echo@1.0.0 {digest} (new)"));
    assert!(out.stderr.is_empty(), "no progress line for a small upload off a terminal: {}", out.stderr);

    let out = env.run(&["agent", "publish", component]).await;
    out.ok();
    assert!(out.first_line().ends_with("(existing: this digest was already published)"), "{}", out.stdout);

    let out = env.run(&["agent", "list"]).await;
    out.ok();
    let row = out.stdout.lines().find(|l| l.starts_with("echo ")).expect("a row for echo");
    assert!(row.contains("1.0.0") && row.contains(&digest[..19]) && row.contains(&signer.key_id().to_string()));
    assert!(out.stdout.starts_with("NAME"), "{}", out.stdout);

    for reference in ["echo".to_owned(), "echo@1.0.0".to_owned(), format!("echo@{digest}")] {
        let out = env.run(&["agent", "show", &reference]).await;
        out.ok();
        assert!(out.stdout.contains(&digest), "{reference}: {}", out.stdout);
        assert!(out.stdout.contains(&signer.public_key().to_string()), "{}", out.stdout);
        assert!(out.stdout.contains("Expires:") && out.stdout.contains("never"), "{}", out.stdout);
    }

    let out = env.run(&["agent", "show", "echo", "--json"]).await;
    out.ok();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["name"], "echo");
    assert_eq!(json["version"], "1.0.0");
    assert_eq!(json["digest"], digest.as_str());
    assert_eq!(json["size_bytes"], COMPONENT.len());
    assert_eq!(json["signer"], signer.key_id().to_string());

    let out = env.run(&["agent", "list", "--name", "nope", "--json"]).await;
    out.ok();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!([]));
    env.stop().await;
}

#[tokio::test]
async fn publish_signs_and_publishes_in_one_step() {
    let env = Env::start().await;
    let other = env.path("other.wasm");
    std::fs::write(&other, b"\0asm\x0d\x00\x01\x00another build").unwrap();
    let out = env
        .run(&[
            "agent",
            "publish",
            path_str(&other),
            "--key",
            path_str(&env.key),
            "--name",
            "summarize",
            "--version",
            "0.2.0",
            "--expires-in",
            "30d",
        ])
        .await;
    out.ok();
    assert!(out.first_line().starts_with("published summarize@0.2.0 sha256:"), "{}", out.stdout);
    assert!(!env.path("other.wasm.sig").exists(), "signing in one step writes no envelope file");

    let out = env.run(&["agent", "show", "summarize@0.2.0", "--json"]).await;
    out.ok();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let signed = json["signed_at_unix_ms"].as_i64().unwrap();
    let expires = json["expires_at_unix_ms"].as_i64().unwrap();
    assert_eq!(expires - signed, 30 * 24 * 3600 * 1000);
    env.stop().await;
}

#[tokio::test]
async fn publishing_with_an_untrusted_key_fails_and_says_what_to_do() {
    let env = Env::start().await;
    let stranger = env.path("stranger.key");
    run(None, &["keys", "generate", "--out", path_str(&stranger)]).await.ok();
    let stranger_id = SigningKey::load(&stranger).unwrap().key_id().to_string();

    let out = env
        .run(&[
            "agent",
            "publish",
            path_str(&env.component),
            "--key",
            path_str(&stranger),
            "--name",
            "echo",
            "--version",
            "1.0.0",
        ])
        .await;
    out.expect_code(1);
    let message = out.stderr.trim();
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.starts_with("error: permission denied: agent refused:"), "{message}");
    assert!(message.contains(&format!("key {stranger_id} is not trusted")), "{message}");
    assert!(message.contains("taskrun keys trust"), "{message}");

    let out = env.run(&["agent", "list", "--json"]).await;
    assert_eq!(out.stdout.trim(), "[]", "nothing was published");
    env.stop().await;
}

#[tokio::test]
async fn publish_checks_the_envelope_locally_first() {
    let env = Env::start().await;
    let component = path_str(&env.component);

    // No envelope next to the component.
    let out = env.run(&["agent", "publish", component]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("no signed envelope") && out.stderr.contains("taskrun agent sign"), "{}", out.stderr);

    // An envelope for other bytes.
    let key = path_str(&env.key);
    env.run(&["agent", "sign", component, "--key", key, "--name", "echo", "--version", "1.0.0"]).await.ok();
    std::fs::write(&env.component, b"\0asm\x0d\x00\x01\x00rebuilt since").unwrap();
    let out = env.run(&["agent", "publish", component]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("sign the component again"), "{}", out.stderr);

    // Not an envelope at all.
    std::fs::write(env.path("agent.wasm.sig"), b"hello").unwrap();
    let out = env.run(&["agent", "publish", component]).await;
    out.expect_code(1);
    assert!(out.stderr.contains("is not a signed envelope"), "{}", out.stderr);
    env.stop().await;
}

#[tokio::test]
async fn publish_streams_a_large_component_in_chunks_with_progress() {
    let env = Env::start().await;
    let big = env.path("big.wasm");
    let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
    bytes.extend((0..1_100_000u32).map(|i| (i % 251) as u8));
    std::fs::write(&big, &bytes).unwrap();
    let out = env
        .run(&[
            "agent",
            "publish",
            path_str(&big),
            "--key",
            path_str(&env.key),
            "--name",
            "big",
            "--version",
            "1.0.0",
            "--progress",
        ])
        .await;
    out.ok();
    assert!(out.stdout.contains(&AgentDigest::of(&bytes).to_string()), "{}", out.stdout);
    // Off a terminal: one line per tenth, ending at 100%.
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(lines.len() >= 4, "{}", out.stderr);
    assert!(lines.iter().all(|l| l.starts_with("publishing big@1.0.0:")), "{}", out.stderr);
    assert!(lines.last().unwrap().contains("100% (1.0 MiB of 1.0 MiB)"), "{}", out.stderr);

    let out = env.run(&["agent", "show", "big", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["size_bytes"], bytes.len());
    env.stop().await;
}

#[tokio::test]
async fn show_of_an_unknown_agent_prints_the_servers_message() {
    let env = Env::start().await;
    let out = env.run(&["agent", "show", "nope@1.2.3"]).await;
    out.expect_code(1);
    assert_eq!(out.stderr.trim(), "error: agent nope@1.2.3 is not published (publish it with `taskrun agent publish`)");
    env.stop().await;
}

#[tokio::test]
async fn a_wrong_key_file_is_named_once_with_the_file_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("author.key");
    run(None, &["keys", "generate", "--out", path_str(&key)]).await.ok();
    let public = dir.path().join("author.key.pub");
    let component = dir.path().join("echo.wasm");
    std::fs::write(&component, COMPONENT).unwrap();
    let sign = |key: &str| {
        let component = path_str(&component).to_owned();
        let key = key.to_owned();
        async move { run(None, &["agent", "sign", &component, "--key", &key, "--name", "echo", "--version", "1.0.0"]).await }
    };

    // The public key (mode 0644, as written): that it is a public key comes
    // first, not its mode; also after chmod 600.
    let expected = format!(
        "error: --key {} is a public key; signing needs the private key: give {}, the file next to it without .pub",
        public.display(),
        key.display()
    );
    let out = sign(path_str(&public)).await;
    out.expect_code(64);
    assert_eq!(out.stderr.trim(), expected);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = sign(path_str(&public)).await;
        out.expect_code(64);
        assert_eq!(out.stderr.trim(), expected);
    }
    // The same with `agent publish --key` (nothing is sent: no server).
    let out = run(
        None,
        &["agent", "publish", path_str(&component), "--key", path_str(&public), "--name", "echo", "--version", "1.0.0"],
    )
    .await;
    out.expect_code(64);
    assert_eq!(out.stderr.trim(), expected);

    // A path where nothing is.
    let missing = dir.path().join("nonexistent.key");
    let out = sign(path_str(&missing)).await;
    out.expect_code(64);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: --key {}: no such file; give the private key file `taskrun keys generate` wrote, or make one \
             with `taskrun keys generate --out PATH`",
            missing.display()
        )
    );

    // A file that is no key: the reason once.
    let junk = dir.path().join("junk.key");
    std::fs::write(&junk, "hello\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = sign(path_str(&junk)).await;
    out.expect_code(64);
    let message = out.stderr.trim();
    assert!(
        message.starts_with(&format!("error: --key {} is not a private key file (must start with", junk.display())),
        "{message}"
    );
    assert_eq!(message.matches("must start with").count(), 1, "{message}");

    // A private key others may read: its mode, said once.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = sign(path_str(&key)).await;
        out.expect_code(1);
        assert_eq!(
            out.stderr.trim(),
            format!(
                "error: private key file {} is accessible by group or others (mode 0644); run `chmod 600` on it",
                key.display()
            )
        );
    }
    assert!(!dir.path().join("echo.wasm.sig").exists(), "nothing was signed");
}

#[tokio::test]
async fn a_malformed_version_says_what_to_write_once() {
    let out = run(None, &["agent", "sign", "x.wasm", "--key", "k", "--name", "echo", "--version", "0.2"]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("\"0.2\": expected MAJOR.MINOR.PATCH, e.g. 1.2.3\n"), "{}", out.stderr);
    assert_eq!(out.stderr.matches("MAJOR.MINOR.PATCH").count(), 1, "{}", out.stderr);
}
