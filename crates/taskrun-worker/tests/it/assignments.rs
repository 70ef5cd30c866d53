//! What a Worker does with the assignments a scripted control plane
//! (`scripted`) sends it: the deadline of a Run whose agent is slow to
//! arrive.

use std::time::{Duration, Instant};

use taskrun_agent_artifacts as artifacts;
use taskrun_proto::pb;

use crate::scripted::*;

/// The agent's fetch (and compile) counts against the Run's deadline: a
/// looping agent whose fetch took most of its time is stopped at the
/// deadline counted from the assignment, not a whole run timeout after the
/// fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_the_agent_counts_against_the_deadline() {
    const TIMEOUT: Duration = Duration::from_secs(5);
    const FETCH: Duration = Duration::from_secs(2);
    let mut scripted = Scripted::start().await;
    let busy = scripted.serve("busy", artifacts::HOSTILE_BUSY_LOOP);
    scripted.delay_fetches(FETCH);
    let (worker, running) = scripted.start_worker(scripted.worker_config("w1"));
    let mut session = scripted.session().await;
    assert!(session.hello.in_flight.is_empty(), "a new worker holds no run");
    session.accept(vec![]);

    let assigned = Instant::now();
    session.send(Down::Assignment(assignment("run_busy", &busy, "{}", TIMEOUT)));
    let failed = session.status("run_busy", pb::RunStatus::Failed).await;
    let took = assigned.elapsed();
    let error = failed.error.as_deref().unwrap_or_default();
    assert!(error.starts_with("timed out after "), "{error}");
    assert_eq!(failed.lease, 1);
    // Before, the sandbox started a whole TIMEOUT after the fetch (and the
    // compile): the Run ended after FETCH + TIMEOUT at the earliest.
    assert!(took < TIMEOUT + FETCH, "the run ended {took:?} after its assignment, past its {TIMEOUT:?} deadline");
    assert_eq!(worker.metrics().runs_started, 1);
    session.send(status_ack(&failed));
    eventually("the run to be forgotten", || worker.active_runs().is_empty()).await;

    worker.shut_down();
    let _ = running.await;
}
