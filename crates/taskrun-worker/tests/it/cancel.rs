//! Cancelling a Run from outside.

use std::time::{Duration, Instant};

use taskrun_agent_artifacts as agents;
use taskrun_worker::{CancelToken, Outcome, RunRequest};

use crate::support::*;

const WITHIN: Duration = Duration::from_millis(100);

/// Starts `path` with a long deadline, cancels it after `after`, and
/// returns the outcome and how long the Run took to stop once cancelled.
fn cancel_after(path: &str, input: &str, after: Duration) -> (Outcome, Duration) {
    let prepared = prepare(path);
    let cancel = CancelToken::new();
    let request = RunRequest::new(input).limits(limits()).cancel(cancel.clone());
    std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            let report = sandbox().run(&prepared, request).expect("run");
            (report, Instant::now())
        });
        std::thread::sleep(after);
        let cancelled_at = Instant::now();
        cancel.cancel();
        let (report, ended_at) = run.join().expect("run thread");
        (report.outcome, ended_at.duration_since(cancelled_at))
    })
}

#[test]
fn cancelling_a_busy_agent_stops_it_within_100ms() {
    let (outcome, took) = cancel_after(agents::HOSTILE_BUSY_LOOP, "{}", Duration::from_millis(200));
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(took <= WITHIN, "took {took:?}");
}

#[test]
fn cancelling_a_sleeping_agent_stops_it_within_100ms() {
    let (outcome, took) = cancel_after(agents::HOSTILE_SLEEP, r#"{"ms":3600000}"#, Duration::from_millis(200));
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(took <= WITHIN, "took {took:?}");
}

#[test]
fn a_run_cancelled_before_it_starts_never_runs() {
    let cancel = CancelToken::new();
    cancel.cancel();
    let chunks = Chunks::default();
    let report = sandbox()
        .run(&prepare(agents::ECHO), RunRequest::new(r#""hi""#).limits(limits()).cancel(cancel).output(chunks.sink()))
        .expect("run");
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert!(chunks.take().is_empty());
}

#[test]
fn runs_cancel_independently() {
    // Cancelling one Run leaves another Run of the same agent going.
    let prepared = prepare(agents::HOSTILE_BUSY_LOOP);
    let (first, second) = (CancelToken::new(), CancelToken::new());
    let request = |cancel: &CancelToken| RunRequest::new("{}").limits(limits()).cancel(cancel.clone());
    std::thread::scope(|scope| {
        let a = scope.spawn(|| sandbox().run(&prepared, request(&first)).expect("run"));
        let b = scope.spawn(|| sandbox().run(&prepared, request(&second)).expect("run"));
        std::thread::sleep(Duration::from_millis(100));
        first.cancel();
        let a = a.join().expect("thread");
        assert_eq!(a.outcome, Outcome::Cancelled);
        assert!(!b.is_finished(), "the other Run stopped too");
        second.cancel();
        assert_eq!(b.join().expect("thread").outcome, Outcome::Cancelled);
    });
}

#[test]
fn a_full_sandbox_refuses_more_runs_until_one_ends() {
    // One instance slot: while a Run holds it, the next Run is refused with
    // a capacity error (the Worker's problem, not the agent's outcome).
    let full = taskrun_worker::Sandbox::new(taskrun_worker::SandboxConfig {
        cache_dir: sandbox().config().cache_dir.clone(),
        max_concurrent_runs: 1,
        ..taskrun_worker::SandboxConfig::default()
    })
    .expect("sandbox");
    let busy = prepare_in(&full, agents::HOSTILE_BUSY_LOOP);
    let echo = prepare_in(&full, agents::ECHO);
    let cancel = CancelToken::new();
    std::thread::scope(|scope| {
        let run = scope
            .spawn(|| full.run(&busy, RunRequest::new("{}").limits(limits()).cancel(cancel.clone())).expect("run"));
        std::thread::sleep(Duration::from_millis(100));
        let refused = full.run(&echo, RunRequest::new(r#""hi""#).limits(limits()));
        assert!(matches!(refused, Err(taskrun_worker::Error::Capacity(_))), "{refused:?}");
        cancel.cancel();
        assert_eq!(run.join().expect("thread").outcome, Outcome::Cancelled);
    });
    let report = full.run(&echo, RunRequest::new(r#""hi""#).limits(limits())).expect("run");
    assert_eq!(report.outcome, completed(r#""hi""#));
}
