//! Every hostile agent is contained: it gets its named outcome, and an echo
//! Run beside it completes as if nothing happened.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::Value;
use taskrun_agent_artifacts as agents;
use taskrun_core::{AgentDigest, RunOutcome};
use taskrun_worker::{Error, Outcome, RunLimits, RunRequest, Sandbox, SandboxConfig};

use crate::examples::completed_json;
use crate::support::*;

const DEADLINE: Duration = Duration::from_millis(500);
/// Scheduling slack on top of the 10 % allowed past a deadline (2 cores,
/// tests running in parallel).
const SLACK: Duration = Duration::from_millis(25);

fn short_deadline() -> RunLimits {
    RunLimits { deadline: DEADLINE, ..limits() }
}

fn assert_stopped_on_time(elapsed: Duration) {
    assert!(elapsed >= DEADLINE, "stopped early: {elapsed:?}");
    assert!(elapsed <= DEADLINE.mul_f64(1.1) + SLACK, "stopped late: {elapsed:?} for a {DEADLINE:?} deadline");
}

#[test]
pub fn hostile_busy_loop() {
    let (report, elapsed) = contained(agents::HOSTILE_BUSY_LOOP, RunRequest::new("{}").limits(short_deadline()));
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert_stopped_on_time(elapsed);
    assert_stopped_on_time(report.stats.elapsed);
    assert_eq!(report.to_core(), RunOutcome::Failed { error: "timed out after 500 ms".into() });
    assert_eq!(
        report.logs.agent_records().collect::<Vec<_>>(),
        [(taskrun_worker::sandbox::LogLevel::Info, "spinning")]
    );
}

#[test]
pub fn hostile_sleep() {
    // Sleeping happens in a host call, out of reach of epoch interruption:
    // the Worker's timers still end it at the deadline.
    let (report, elapsed) =
        contained(agents::HOSTILE_SLEEP, RunRequest::new(r#"{"ms":3600000}"#).limits(short_deadline()));
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert_stopped_on_time(elapsed);

    // A short sleep is just a sleep.
    let report =
        sandbox().run(&prepare(agents::HOSTILE_SLEEP), RunRequest::new(r#"{"ms":30}"#).limits(limits())).expect("run");
    let slept = completed_json(&report.outcome)["slept_ms"].as_u64().expect("slept_ms");
    assert!((30..1000).contains(&slept), "{slept}");
}

#[test]
pub fn hostile_memory_bomb() {
    let cap = 32 << 20;
    let limits = RunLimits { memory_bytes: cap, ..limits() };
    let (report, _) = contained(agents::HOSTILE_MEMORY_BOMB, RunRequest::new("{}").limits(limits));
    assert_eq!(report.outcome, Outcome::MemoryLimit);
    assert_eq!(report.to_core(), RunOutcome::Failed { error: format!("memory limit of {cap} bytes exceeded") });
    assert!(report.stats.peak_memory_bytes <= cap);
    assert!(report.stats.peak_memory_bytes > cap / 2, "{:?}", report.stats);

    // Under the cap, the same agent allocates what it asks for.
    let report = sandbox()
        .run(&prepare(agents::HOSTILE_MEMORY_BOMB), RunRequest::new(r#"{"mib":4}"#).limits(limits))
        .expect("run");
    assert_eq!(report.outcome, completed(r#"{"allocated_mib":4}"#));
}

#[test]
pub fn hostile_recursion() {
    let (report, _) = contained(agents::HOSTILE_RECURSION, RunRequest::new("{}").limits(limits()));
    let Outcome::Trapped(message) = &report.outcome else {
        panic!("expected Trapped, got {:?}", report.outcome);
    };
    assert!(message.contains("call stack exhausted"), "{message}");
}

#[test]
pub fn hostile_panic() {
    let (report, _) = contained(agents::HOSTILE_PANIC, RunRequest::new("{}").limits(limits()));
    let Outcome::Trapped(message) = &report.outcome else {
        panic!("expected Trapped, got {:?}", report.outcome);
    };
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        report.logs.stderr().contains("hostile agent panicked on purpose (input was 2 bytes)"),
        "{:?}",
        report.logs
    );
    // What the Worker reports carries the panic message.
    let RunOutcome::Failed { error } = report.to_core() else { panic!("a trap fails the Run") };
    assert!(error.starts_with("agent trapped: "), "{error}");
    assert!(error.contains("hostile agent panicked on purpose (input was 2 bytes)"), "{error}");
}

/// The lean runtime (`#![no_std]` agents): JSON read without `std`, the
/// heap grown past the SDK's arena, and a panic logged, then a trap.
#[test]
pub fn hostile_lean_panic() {
    let (report, _) = contained(agents::HOSTILE_LEAN_PANIC, RunRequest::new(r#"{"fill_kib": 512}"#).limits(limits()));
    let Outcome::Trapped(message) = &report.outcome else {
        panic!("expected Trapped, got {:?}", report.outcome);
    };
    assert!(message.contains("unreachable"), "{message}");
    let records: Vec<_> = report.logs.agent_records().collect();
    let [(taskrun_worker::sandbox::LogLevel::Error, text)] = records.as_slice() else {
        panic!("expected one error record, got {records:?}");
    };
    assert!(text.starts_with("agent panicked at "), "{text}");
    // 512 KiB of 0x5a, all written: the block lies past the 256 KiB arena.
    assert!(text.ends_with("after filling 512 KiB (sum 47185920)"), "{text}");
    let RunOutcome::Failed { error } = report.to_core() else { panic!("a trap fails the Run") };
    assert!(error.ends_with(&format!("its last words: {text}")), "{error}");
}

/// A lean agent whose heap would pass the memory cap: the growth is
/// refused, and the Run ends MemoryLimit, not as a panic of its own.
#[test]
fn lean_heap_past_the_memory_cap() {
    let cap = 2 << 20;
    let limits = RunLimits { memory_bytes: cap, ..limits() };
    let request = RunRequest::new(r#"{"fill_kib": 4096}"#).limits(limits);
    let report = sandbox().run(&prepare(agents::HOSTILE_LEAN_PANIC), request).expect("run");
    assert_eq!(report.outcome, Outcome::MemoryLimit);
    assert!(report.stats.peak_memory_bytes <= cap, "{:?}", report.stats);
}

/// A lean agent's own error, found by comparing JSON keys (`memcmp` comes
/// from the SDK, not libc), fails the Run with its message.
#[test]
fn lean_agent_error_is_a_failure() {
    let prepared = prepare(agents::HOSTILE_LEAN_PANIC);
    let report = sandbox().run(&prepared, RunRequest::new(r#"{"fill_mib": 1}"#).limits(limits())).expect("run");
    assert_eq!(report.outcome, Outcome::Failed(r#"input must be {"fill_kib": n}"#.into()));
    let report = sandbox().run(&prepared, RunRequest::new("[1,").limits(limits())).expect("run");
    let Outcome::Failed(message) = &report.outcome else {
        panic!("expected Failed, got {:?}", report.outcome);
    };
    assert!(message.starts_with("input is not JSON: EOF while parsing"), "{message}");
}

#[test]
pub fn hostile_output_flood() {
    let cap = 256 * 1024;
    let limits = RunLimits { output_bytes: cap, ..limits() };
    let chunks = Chunks::default();
    let (report, _) = contained(
        agents::HOSTILE_OUTPUT_FLOOD,
        RunRequest::new(r#"{"via":"emit"}"#).limits(limits).output(chunks.sink()),
    );
    assert_eq!(report.outcome, Outcome::OutputLimit);
    let delivered: u64 = chunks.take().iter().map(|c| c.len() as u64).sum();
    assert_eq!(delivered, report.stats.output_bytes);
    assert!(delivered <= cap && delivered > cap - 64 * 1024, "{delivered}");

    // Flooding stdout fills the Run's log budget and no more; the agent
    // carries on.
    let printed = 1 << 20;
    let report = sandbox()
        .run(
            &prepare(agents::HOSTILE_OUTPUT_FLOOD),
            RunRequest::new(format!(r#"{{"via":"stdout","bytes":{printed}}}"#)).limits(limits),
        )
        .expect("run");
    assert_eq!(report.outcome, completed(&format!(r#"{{"printed":{printed}}}"#)));
    let budget = sandbox().config().log_bytes;
    assert_eq!(report.logs.stdout().len(), budget);
    assert_eq!(report.logs.dropped_bytes, (printed - budget) as u64);
}

fn attempts(outcome: &Outcome) -> Vec<Value> {
    completed_json(outcome)["attempts"].as_array().expect("attempts").clone()
}

#[test]
pub fn hostile_read_file() {
    let (report, _) = contained(agents::HOSTILE_READ_FILE, RunRequest::new("{}").limits(limits()));
    let attempts = attempts(&report.outcome);
    assert_eq!(attempts.len(), 6);
    for attempt in &attempts {
        assert_eq!(attempt["ok"], false, "{attempt}");
    }
    assert!(!std::path::Path::new("/tmp/taskrun-hostile").exists());
}

#[test]
pub fn hostile_open_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let (report, _) =
        contained(agents::HOSTILE_OPEN_SOCKET, RunRequest::new(format!(r#"{{"port":{port}}}"#)).limits(limits()));
    let attempts = attempts(&report.outcome);
    assert_eq!(attempts.len(), 4);
    for attempt in &attempts {
        assert_eq!(attempt["ok"], false, "{attempt}");
    }
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the agent reached the listener: {accepted:?}"
    );
}

#[test]
pub fn hostile_read_env() {
    let (report, _) = contained(agents::HOSTILE_READ_ENV, RunRequest::new("{}").limits(limits()));
    let seen = completed_json(&report.outcome);
    assert_eq!(seen["vars"], serde_json::json!({}), "{seen}");
    assert_eq!(seen["args"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["home"], Value::Null);
    assert_eq!(seen["path"], Value::Null);

    // What the operator grants, and only that, is visible.
    let granted = Sandbox::new(SandboxConfig {
        cache_dir: sandbox().config().cache_dir.clone(),
        max_concurrent_runs: 2,
        env: vec![("TASKRUN_GREETING".into(), "hello".into())],
        args: vec!["agent".into()],
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let report = granted
        .run(&prepare_in(&granted, agents::HOSTILE_READ_ENV), RunRequest::new("{}").limits(limits()))
        .expect("run");
    let seen = completed_json(&report.outcome);
    assert_eq!(seen["vars"], serde_json::json!({"TASKRUN_GREETING": "hello"}));
    assert_eq!(seen["args"], serde_json::json!(["agent"]));
}

#[test]
pub fn hostile_forbidden_import() {
    let bytes = bytes(agents::HOSTILE_FORBIDDEN_IMPORT);
    let digest = AgentDigest::of(&bytes);
    let error = sandbox().prepare(&digest, &bytes).expect_err("a component with an unknown import must be refused");
    let Error::UnsupportedImport { imports, .. } = &error else {
        panic!("expected UnsupportedImport, got {error}");
    };
    assert_eq!(imports, &["taskrun:fixtures/forbidden@0.1.0"]);
    // Refused components are not cached for later.
    let cached = sandbox().cache_path(&digest).expect("cache dir");
    assert!(!cached.exists());
    assert!(sandbox().prepare_cached(&digest).expect("lookup").is_none());
}
