//! Runs execute on the caller's tokio runtime: a busy agent must leave the
//! runtime's other tasks (other Runs, the Worker's session) running.

use std::time::{Duration, Instant};

use taskrun_agent_artifacts as agents;
use taskrun_worker::{Error, Outcome, RunLimits, RunRequest, Sandbox, SandboxConfig};

use crate::support::*;

/// A single-threaded runtime: the hardest case, one thread for everything.
fn one_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime")
}

#[test]
fn a_busy_agent_leaves_its_runtime_responsive() {
    let deadline = Duration::from_millis(500);
    let busy = prepare(agents::HOSTILE_BUSY_LOOP);
    let (report, ticks) = one_thread().block_on(ticks_while(
        sandbox().run_async(busy, RunRequest::new("{}").limits(RunLimits { deadline, ..limits() })),
    ));
    let outcome = report.expect("run").outcome;
    assert_eq!(outcome, Outcome::TimedOut);
    // Held by the agent, the only thread would have ticked 0 times in the
    // 500 ms; yielding at every 5 ms epoch tick, it ticks ~30 times.
    assert!(ticks >= 10, "the runtime ticked {ticks} times while the agent looped");
}

#[test]
fn a_quick_run_finishes_beside_a_busy_one_on_one_thread() {
    let busy = prepare(agents::HOSTILE_BUSY_LOOP);
    let echo = prepare(agents::ECHO);
    let (busy_outcome, echo_outcome, echo_took) = one_thread().block_on(async {
        let started = Instant::now();
        let busy = sandbox().run_async(
            busy,
            RunRequest::new("{}").limits(RunLimits { deadline: Duration::from_millis(1500), ..limits() }),
        );
        let quick = async {
            // Let the busy Run get going first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let report = sandbox().run_async(echo, RunRequest::new(r#""beside""#).limits(limits())).await;
            (report.expect("echo run").outcome, started.elapsed())
        };
        let (busy, (echo, took)) = tokio::join!(busy, quick);
        (busy.expect("busy run").outcome, echo, took)
    });
    assert_eq!(busy_outcome, Outcome::TimedOut);
    assert_eq!(echo_outcome, completed(r#""beside""#));
    // Held by the busy agent, the thread would finish the echo Run only
    // after the busy one's 1.5 s deadline.
    assert!(echo_took < Duration::from_millis(750), "the echo Run ended {echo_took:?} after the busy one started");
}

#[test]
fn the_blocking_entry_point_refuses_inside_a_runtime() {
    // Its own sandbox, so the Run counter is this test's alone.
    let sandbox = Sandbox::new(SandboxConfig { max_concurrent_runs: 1, ..SandboxConfig::default() }).expect("sandbox");
    let echo = prepare_in(&sandbox, agents::ECHO);
    let result = one_thread().block_on(async { sandbox.run(&echo, RunRequest::new(r#""hi""#).limits(limits())) });
    match result {
        Err(Error::RunThread(message)) => assert!(message.contains("run_async"), "{message}"),
        other => panic!("expected a RunThread error, got {other:?}"),
    }
    assert_eq!(sandbox.metrics().runs, 0, "nothing ran");
    // Outside a runtime the same call runs.
    let report = sandbox.run(&echo, RunRequest::new(r#""hi""#).limits(limits())).expect("run");
    assert_eq!(report.outcome, completed(r#""hi""#));
    assert_eq!(sandbox.metrics().runs, 1);
}

#[test]
fn dropping_a_run_stops_the_agent_and_frees_its_slot() {
    // One slot: a second Run can start only once the first is torn down.
    let sandbox = Sandbox::new(SandboxConfig { max_concurrent_runs: 1, ..SandboxConfig::default() }).expect("sandbox");
    let busy = prepare_in(&sandbox, agents::HOSTILE_BUSY_LOOP);
    let echo = prepare_in(&sandbox, agents::ECHO);
    let runtime = one_thread();
    let dropped = runtime.block_on(async {
        let run = sandbox.run_async(busy, RunRequest::new("{}").limits(limits()));
        tokio::time::timeout(Duration::from_millis(50), run).await.is_err()
    });
    assert!(dropped, "the busy Run should still have been going after 50 ms");
    let report = runtime
        .block_on(sandbox.run_async(echo, RunRequest::new(r#""next""#).limits(limits())))
        .expect("the slot is free again");
    assert_eq!(report.outcome, completed(r#""next""#));
    assert_eq!(sandbox.metrics().runs, 2);
}
