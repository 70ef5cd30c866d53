//! A Worker runs only what a key its operator pinned has signed, verified
//! by the Worker itself: whatever the control plane distributes, a tampered,
//! swapped or unpinned agent is refused and nothing is compiled.

use std::time::Duration;

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_core::{AgentDigest, AgentManifest, SystemClock, TaskStatus, Timestamp};
use taskrun_proto::pb;
use taskrun_signing::{AgentDetails, Revocation, SigningKey, TrustPolicy, TrustedKey};
use taskrun_testkit::{Cluster, spec, status_of};

fn once() -> Option<pb::RetryPolicy> {
    Some(pb::RetryPolicy { max_attempts: Some(1), initial_backoff_ms: Some(0), max_backoff_ms: Some(0) })
}

/// Runs `agent_ref` once on `worker` and returns the Task's error.
async fn refused_reason(cluster: &Cluster, agent: pb::AgentRef) -> String {
    let mut s = spec("unused", "{}");
    s.agent = Some(agent);
    s.retry = once();
    let task_id = cluster.create(s).await;
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(30)).await;
    assert_eq!(status_of(&got), TaskStatus::Failed, "{got:#?}");
    got.task.and_then(|t| t.error).unwrap_or_default()
}

fn by_name(name: &str) -> pb::AgentRef {
    pb::AgentRef { name: name.into(), selector: None }
}

fn by_digest(name: &str, digest: &AgentDigest) -> pb::AgentRef {
    pb::AgentRef { name: name.into(), selector: Some(pb::agent_ref::Selector::Digest(digest.to_string())) }
}

/// Stores an agent straight into the control plane's store, as a
/// compromised control plane would serve it (publish would refuse it).
async fn plant(cluster: &Cluster, name: &str, version: &str, envelope: Vec<u8>, component: Vec<u8>) -> AgentDigest {
    let digest = AgentDigest::of(&component);
    let manifest = AgentManifest {
        name: name.parse().expect("name"),
        version: version.parse().expect("version"),
        digest,
        size: component.len() as u64,
        wit_world: taskrun_core::WIT_WORLD.into(),
        signer: "planted".into(),
        published_at: Timestamp(0),
    };
    let store = cluster.server.as_ref().expect("server").control_plane().store().clone();
    store.put_agent(manifest, envelope, component).await.expect("plant");
    digest
}

fn sign(key: &SigningKey, name: &str, version: &str, bytes: &[u8]) -> Vec<u8> {
    let details = AgentDetails::new(
        name.parse().expect("name"),
        version.parse().expect("version"),
        taskrun_core::Clock::now(&SystemClock),
    );
    key.sign_component(bytes, details).expect("sign").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_key_refuses_and_compiles_nothing() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    // This Worker's operator pinned a different key.
    let mut config = cluster.worker_config("strict");
    let mut policy = TrustPolicy::new();
    policy.trust(TrustedKey::new(SigningKey::generate().public_key())).expect("trust");
    let policy_path = cluster.dir.path().join("strict-trust.toml");
    policy.save(&policy_path).expect("save");
    config.trust_policy = policy_path;
    let worker = cluster.add_worker(config).await;

    let reason = refused_reason(&cluster, by_name("echo")).await;
    assert!(reason.contains("refused") && reason.contains("not trusted"), "{reason}");
    assert_eq!(worker.sandbox().metrics().compiles, 0);
    assert_eq!(worker.metrics().agents_refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_the_worker() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut policy = TrustPolicy::load(&cluster.policy_path).expect("policy");
    policy.revoke(Revocation { key_id: cluster.key.key_id(), comment: Some("leaked".into()), revoked_at: None });
    let policy_path = cluster.dir.path().join("revoked-trust.toml");
    policy.save(&policy_path).expect("save");
    let mut config = cluster.worker_config("careful");
    config.trust_policy = policy_path;
    let worker = cluster.add_worker(config).await;

    let reason = refused_reason(&cluster, by_name("echo")).await;
    assert!(reason.contains("revoked"), "{reason}");
    assert_eq!(worker.sandbox().metrics().compiles, 0);
}

/// One flipped byte at the start, the middle and the end of the component
/// that a compromised control plane serves: each refused, 0 compiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_components_are_refused_before_compiling() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    let bytes = std::fs::read(artifacts::ECHO).expect("echo");
    let envelope = sign(&cluster.key, "echo", "1.0.0", &bytes);
    let worker = cluster.add_worker(cluster.worker_config("w1")).await;
    for (i, at) in [0, bytes.len() / 2, bytes.len() - 1].into_iter().enumerate() {
        let mut tampered = bytes.clone();
        tampered[at] ^= 0x01;
        let digest = plant(&cluster, "echo", &format!("1.0.{i}"), envelope.clone(), tampered).await;
        let reason = refused_reason(&cluster, by_digest("echo", &digest)).await;
        assert!(reason.contains("refused") && reason.contains("digest"), "byte {at}: {reason}");
    }
    // A flipped byte in the envelope's manifest (over echo's genuine bytes)
    // and in its signature (over chat's genuine bytes, signed as echo).
    let chat = std::fs::read(artifacts::CHAT).expect("chat");
    for (version, component, at) in [("1.1.0", bytes.clone(), 20), ("1.1.1", chat, usize::MAX)] {
        let mut bad = sign(&cluster.key, "echo", version, &component);
        let at = if at == usize::MAX { bad.len() - 5 } else { at };
        bad[at] ^= 0x01;
        let digest = plant(&cluster, "echo", version, bad, component).await;
        let reason = refused_reason(&cluster, by_digest("echo", &digest)).await;
        assert!(reason.contains("refused"), "envelope byte {at}: {reason}");
    }
    assert_eq!(worker.sandbox().metrics().compiles, 0, "nothing tampered was compiled");
    assert_eq!(worker.metrics().agents_refused, 5);

    // A genuine, validly signed agent still runs, and is compiled once.
    cluster.publish("read-env", "1.0.0", artifacts::HOSTILE_READ_ENV).await;
    let task_id = cluster.create(spec("read-env", "{}")).await;
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(30)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed, "{got:#?}");
    assert_eq!(worker.sandbox().metrics().compiles, 1);
}

/// Another agent's validly signed component, served under this agent's
/// name: refused (mix-and-match), nothing compiled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agents_signed_component_is_refused() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    let panic = std::fs::read(artifacts::HOSTILE_PANIC).expect("panic agent");
    let envelope = sign(&cluster.key, "panic", "1.0.0", &panic);
    let digest = plant(&cluster, "echo", "9.0.0", envelope, panic).await;
    let worker = cluster.add_worker(cluster.worker_config("w1")).await;
    let reason = refused_reason(&cluster, by_digest("echo", &digest)).await;
    assert!(reason.contains("refused") && reason.contains("panic"), "{reason}");
    assert_eq!(worker.sandbox().metrics().compiles, 0);
}

/// After running version 2.0.0 of an agent, the Worker refuses 1.0.0 of it
/// (rollback) and compiles nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_refused_by_the_worker() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("read-env", "2.0.0", artifacts::HOSTILE_READ_ENV).await;
    cluster.publish("read-env", "1.0.0", artifacts::HOSTILE_READ_FILE).await;
    let worker = cluster.add_worker(cluster.worker_config("w1")).await;
    let task_id = cluster.create(spec("read-env", "{}")).await;
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(30)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed, "{got:#?}");
    assert_eq!(worker.sandbox().metrics().compiles, 1);

    let old =
        pb::AgentRef { name: "read-env".into(), selector: Some(pb::agent_ref::Selector::Version("1.0.0".into())) };
    let reason = refused_reason(&cluster, old).await;
    assert!(reason.contains("rollback"), "{reason}");
    assert_eq!(worker.sandbox().metrics().compiles, 1, "the old version was not compiled");
}

/// A signed manifest that has expired is refused by the Worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_signature_is_refused_by_the_worker() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    let bytes = std::fs::read(artifacts::ECHO).expect("echo");
    let an_hour_ago = Timestamp(taskrun_core::Clock::now(&SystemClock).as_millis() - 3_600_000);
    let details = AgentDetails::new("echo".parse().expect("name"), "1.0.0".parse().expect("version"), an_hour_ago)
        .with_expires_at(Timestamp(an_hour_ago.as_millis() + 60_000));
    let envelope = cluster.key.sign_component(&bytes, details).expect("sign").into_bytes();
    // The control plane's own check refuses it at publish time…
    let mut agents = cluster.agents().await;
    let err = taskrun_testkit::publish_envelope(&mut agents, "echo", "1.0.0", &envelope, &bytes).await.unwrap_err();
    assert!(err.message().contains("expired"), "{err:?}");
    // …and a Worker refuses it too, whoever serves it.
    let digest = plant(&cluster, "echo", "1.0.0", envelope, bytes).await;
    let worker = cluster.add_worker(cluster.worker_config("w1")).await;
    let reason = refused_reason(&cluster, by_digest("echo", &digest)).await;
    assert!(reason.contains("expired"), "{reason}");
    assert_eq!(worker.sandbox().metrics().compiles, 0);
}

/// A version the Worker verified and compiled before a newer one ran is
/// refused after it too: the Worker checks its agents again before every
/// Run (policy, expiry, rollback floor, name), not only the first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_already_compiled_is_refused_once_a_newer_one_ran() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("read-env", "1.0.0", artifacts::HOSTILE_READ_FILE).await;
    cluster.publish("read-env", "2.0.0", artifacts::HOSTILE_READ_ENV).await;
    let worker = cluster.add_worker(cluster.worker_config("w1")).await;
    let version =
        |v: &str| pb::AgentRef { name: "read-env".into(), selector: Some(pb::agent_ref::Selector::Version(v.into())) };
    let run = |agent: pb::AgentRef| {
        let mut s = spec("unused", "{}");
        s.agent = Some(agent);
        s.retry = once();
        s
    };
    for (v, compiles) in [("1.0.0", 1), ("2.0.0", 2)] {
        let task_id = cluster.create(run(version(v))).await;
        let got = cluster.wait_terminal(&task_id, Duration::from_secs(30)).await;
        assert_eq!(status_of(&got), TaskStatus::Completed, "{v}: {got:#?}");
        assert_eq!(worker.sandbox().metrics().compiles, compiles);
    }
    let reason = refused_reason(&cluster, version("1.0.0")).await;
    assert!(reason.contains("rollback"), "{reason}");
    assert_eq!(worker.sandbox().metrics().runs, 2, "the refused version did not run");
}
