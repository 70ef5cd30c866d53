//! The compiled-component cache: each digest compiles once per engine, and
//! a restarted Worker loads it from disk without compiling.

use taskrun_agent_artifacts::ECHO;
use taskrun_core::AgentDigest;
use taskrun_worker::sandbox::SandboxMetrics;
use taskrun_worker::{Error, RunRequest, Sandbox, SandboxConfig};

use crate::support::*;

fn sandbox_in(dir: &std::path::Path) -> Sandbox {
    Sandbox::new(SandboxConfig { cache_dir: Some(dir.to_owned()), max_concurrent_runs: 2, ..SandboxConfig::default() })
        .expect("sandbox")
}

fn assert_runs(sandbox: &Sandbox, prepared: &taskrun_worker::Prepared) {
    let report = sandbox.run(prepared, RunRequest::new(r#""cached""#).limits(limits())).expect("run");
    assert_eq!(report.outcome, completed(r#""cached""#));
}

#[test]
fn compiles_once_and_loads_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = bytes(ECHO);
    let digest = AgentDigest::of(&bytes);

    let first = sandbox_in(dir.path());
    let prepared = first.prepare(&digest, &bytes).expect("prepare");
    assert_eq!(first.metrics().compiles, 1);
    assert!(first.cache_path(&digest).expect("path").exists());
    // Same digest again: from memory, no compile.
    let again = first.prepare(&digest, &bytes).expect("prepare");
    assert_eq!(first.metrics(), SandboxMetrics { compiles: 1, memory_hits: 1, ..SandboxMetrics::default() });
    assert_eq!(again.digest(), prepared.digest());
    assert_runs(&first, &again);
    drop(first);

    // A new Sandbox on the same directory (a restarted Worker) loads it.
    let second = sandbox_in(dir.path());
    let prepared = second.prepare(&digest, &bytes).expect("prepare");
    assert_eq!(second.metrics().compiles, 0);
    assert_eq!(second.metrics().cache_loads, 1);
    assert_runs(&second, &prepared);

    // Even without the bytes.
    let third = sandbox_in(dir.path());
    let prepared = third.prepare_cached(&digest).expect("lookup").expect("cached");
    assert_eq!(third.metrics().compiles, 0);
    assert_runs(&third, &prepared);
}

#[test]
fn a_corrupt_cache_file_is_recompiled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = bytes(ECHO);
    let digest = AgentDigest::of(&bytes);
    let first = sandbox_in(dir.path());
    first.prepare(&digest, &bytes).expect("prepare");
    let path = first.cache_path(&digest).expect("path");
    drop(first);

    let mut cached = std::fs::read(&path).expect("read");
    let last = cached.len() - 1;
    cached[last] ^= 0xff;
    std::fs::write(&path, &cached).expect("write");

    let sandbox = sandbox_in(dir.path());
    assert!(sandbox.prepare_cached(&digest).expect("lookup").is_none());
    let prepared = sandbox.prepare(&digest, &bytes).expect("prepare");
    let metrics = sandbox.metrics();
    assert_eq!((metrics.compiles, metrics.cache_loads), (1, 0));
    assert!(metrics.cache_rejects >= 1);
    assert_runs(&sandbox, &prepared);
    // The rewritten file is good again.
    let fresh = sandbox_in(dir.path());
    fresh.prepare(&digest, &bytes).expect("prepare");
    assert_eq!(fresh.metrics().compiles, 0);
}

#[test]
fn an_unreadable_cache_entry_is_compiled_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = bytes(ECHO);
    let digest = AgentDigest::of(&bytes);
    let path = sandbox_in(dir.path()).cache_path(&digest).expect("path");
    // A directory where the compiled file goes: reading it fails (not with
    // NotFound), and a file cannot replace it while it holds something.
    std::fs::create_dir_all(path.join("stray")).expect("mkdir");

    let sandbox = sandbox_in(dir.path());
    assert!(sandbox.prepare_cached(&digest).expect("lookup").is_none());
    let prepared = sandbox.prepare(&digest, &bytes).expect("prepare compiles");
    assert_eq!(sandbox.metrics().compiles, 1);
    assert_runs(&sandbox, &prepared);
    assert!(path.is_dir(), "a directory that is not empty is left alone");

    // Once it is empty, the compiled file takes its place.
    std::fs::remove_dir(path.join("stray")).expect("rmdir");
    let sandbox = sandbox_in(dir.path());
    assert_runs(&sandbox, &sandbox.prepare(&digest, &bytes).expect("prepare compiles"));
    assert_eq!(sandbox.metrics().compiles, 1);
    assert!(path.is_file());
    let restarted = sandbox_in(dir.path());
    assert_runs(&restarted, &restarted.prepare(&digest, &bytes).expect("prepare loads"));
    assert_eq!((restarted.metrics().compiles, restarted.metrics().cache_loads), (0, 1));
}

#[test]
fn bytes_must_match_their_digest() {
    let bytes = bytes(ECHO);
    let other = AgentDigest::of(b"something else");
    let error = sandbox().prepare(&other, &bytes).expect_err("mismatch");
    assert!(
        matches!(&error, Error::DigestMismatch { expected, actual }
            if *expected == other && *actual == AgentDigest::of(&bytes)),
        "{error}"
    );
}

#[test]
fn a_core_module_is_not_an_agent() {
    // The smallest valid core module (not a component).
    let bytes = b"\0asm\x01\0\0\0".to_vec();
    let error = sandbox().prepare(&AgentDigest::of(&bytes), &bytes).expect_err("not a component");
    assert!(matches!(error, Error::Compile { .. }), "{error}");
}

/// Holds the thread it runs on at the sandbox's "compiling agent" event
/// (emitted with the digest's compile lock held) until told to go on.
struct PauseAtCompile {
    reached: std::sync::mpsc::Sender<()>,
    resume: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl tracing::Subscriber for PauseAtCompile {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0 |= field.name() == "message" && format!("{value:?}") == "compiling agent";
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            let _ = self.reached.send(());
            // Bounded, so that a sandbox that makes the other prepare wait
            // for this compile fails the test instead of hanging it.
            let _ = self.resume.lock().expect("resume").recv_timeout(std::time::Duration::from_secs(20));
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// A compile holds up only its own digest: while one agent compiles,
/// another one the disk cache has is prepared (and runs) at once.
#[test]
fn a_compile_does_not_hold_up_other_agents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = bytes(ECHO);
    let echo_digest = AgentDigest::of(&echo);
    sandbox_in(dir.path()).prepare(&echo_digest, &echo).expect("prepare echo");
    let big = bytes(taskrun_agent_artifacts::HOSTILE_OPEN_SOCKET);
    let big_digest = AgentDigest::of(&big);

    // A restarted Worker: echo is on disk, the big agent nowhere.
    let sandbox = sandbox_in(dir.path());
    let (reached, at_compile) = std::sync::mpsc::channel();
    let (go_on, resume) = std::sync::mpsc::channel();
    let order = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let compiling = scope.spawn(|| {
            let pause = PauseAtCompile { reached, resume: std::sync::Mutex::new(resume) };
            let prepared = tracing::subscriber::with_default(pause, || sandbox.prepare(&big_digest, &big));
            order.lock().expect("order").push("compiled");
            prepared.expect("prepare the big agent")
        });
        at_compile.recv_timeout(std::time::Duration::from_secs(20)).expect("the compile began");
        // The big agent's compile is under way (and paused) here.
        let prepared = sandbox.prepare(&echo_digest, &echo).expect("prepare echo");
        order.lock().expect("order").push("echo prepared");
        let _ = go_on.send(());
        assert_runs(&sandbox, &prepared);
        compiling.join().expect("compiling thread");
    });
    assert_eq!(*order.lock().expect("order"), ["echo prepared", "compiled"]);
    let metrics = sandbox.metrics();
    assert_eq!((metrics.compiles, metrics.cache_loads), (1, 1), "{metrics:?}");
}

/// A cache file is tied to its agent by its checked header, not by its
/// name: another agent's compiled file copied into its place is refused
/// and the right agent compiled again. The directories are the Worker's
/// alone.
#[test]
fn another_agents_cache_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = bytes(ECHO);
    let echo_digest = AgentDigest::of(&echo);
    let panic = bytes(taskrun_agent_artifacts::HOSTILE_PANIC);
    let panic_digest = AgentDigest::of(&panic);
    let first = sandbox_in(dir.path());
    first.prepare(&echo_digest, &echo).expect("prepare echo");
    first.prepare(&panic_digest, &panic).expect("prepare panic");
    let echo_path = first.cache_path(&echo_digest).expect("path");
    std::fs::copy(first.cache_path(&panic_digest).expect("path"), &echo_path).expect("copy");
    drop(first);

    let sandbox = sandbox_in(dir.path());
    let prepared = sandbox.prepare(&echo_digest, &echo).expect("prepare echo");
    let metrics = sandbox.metrics();
    assert_eq!((metrics.cache_rejects, metrics.compiles, metrics.cache_loads), (1, 1, 0), "{metrics:?}");
    assert_runs(&sandbox, &prepared);
    // The file was replaced by echo's own.
    let fresh = sandbox_in(dir.path());
    assert_runs(&fresh, &fresh.prepare(&echo_digest, &echo).expect("prepare echo"));
    assert_eq!((fresh.metrics().compiles, fresh.metrics().cache_loads), (0, 1));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for dir in [dir.path().to_owned(), echo_path.parent().expect("fingerprint dir").to_owned()] {
            let mode = std::fs::metadata(&dir).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }
}
