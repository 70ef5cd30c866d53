//! What a Worker does with the assignments a scripted control plane
//! (`scripted`) sends it: the deadline of a Run whose agent is slow to
//! arrive, assignments it refuses, and the acks it waits for.

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

/// An assignment the Worker refuses for its clock skew, or as malformed,
/// is reported FAILED under its lease (and resent until acked), so that
/// the control plane does not keep its Run assigned for ever; a replayed
/// one (a nonce seen before) is refused without a word, as the Run it
/// repeats is reported on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_assignments_are_reported_failed() {
    let mut scripted = Scripted::start().await;
    let echo = scripted.serve("echo", artifacts::ECHO);
    let (worker, running) = scripted.start_worker(scripted.worker_config("w1"));
    let mut session = scripted.session().await;
    session.accept(vec![]);

    // A fresh nonce, but issued ten minutes ago (outside the 30 s skew).
    let mut stale = assignment("run_stale", &echo, "{}", Duration::from_secs(10));
    stale.issued_at_unix_ms -= 600_000;
    stale.lease = 7;
    session.send(Down::Assignment(stale));
    let failed = session.status("run_stale", pb::RunStatus::Failed).await;
    assert_eq!(failed.lease, 7);
    let error = failed.error.clone().unwrap_or_default();
    assert!(error.starts_with("assignment refused: issued_at is 6000"), "{error}");
    assert!(
        error.ends_with("ms from this Worker's clock, beyond the 30000 ms allowed skew; check the clocks"),
        "{error}"
    );
    // Not acked: sent again, as any terminal report is.
    let again = session.status("run_stale", pb::RunStatus::Failed).await;
    assert_eq!(again.nonce, failed.nonce, "the same report");
    session.send(status_ack(&again));
    eventually("the refused run to be forgotten", || worker.active_runs().is_empty()).await;

    // Malformed: no agent.
    let mut malformed = assignment("run_malformed", &echo, "{}", Duration::from_secs(10));
    malformed.agent = None;
    session.send(Down::Assignment(malformed));
    let failed = session.status("run_malformed", pb::RunStatus::Failed).await;
    assert_eq!(failed.error.as_deref(), Some("assignment refused as malformed: missing agent"));
    session.send(status_ack(&failed));

    // A good assignment runs; its replay (the same nonce, even for another
    // Run) is refused and not reported; the next refusal is.
    let good = assignment("run_good", &echo, "[1]", Duration::from_secs(10));
    let mut replay = assignment("run_replay", &echo, "[2]", Duration::from_secs(10));
    replay.nonce = good.nonce.clone();
    let mut future = assignment("run_future", &echo, "{}", Duration::from_secs(10));
    future.issued_at_unix_ms += 600_000;
    session.send(Down::Assignment(good));
    session.send(Down::Assignment(replay));
    session.send(Down::Assignment(future));
    let mut reported = Vec::new();
    let mut completed = false;
    while !(completed && reported.contains(&"run_future".to_owned())) {
        match session.next().await.expect("session open") {
            Up::Status(s) if s.status == i32::from(pb::RunStatus::Completed) => {
                assert_eq!(s.run_id, "run_good");
                completed = true;
                session.send(status_ack(&s));
            }
            Up::Status(s) if s.status == i32::from(pb::RunStatus::Failed) => {
                reported.push(s.run_id.clone());
                session.send(status_ack(&s));
            }
            _ => {}
        }
    }
    assert_eq!(reported, ["run_future"], "the replay is not reported");
    let metrics = worker.metrics();
    assert_eq!((metrics.runs_started, metrics.assignments_refused), (1, 3), "{metrics:?}");

    worker.shut_down();
    let _ = running.await;
}

/// A Run's end is forgotten only once the control plane acks its terminal
/// status: an ack of its output (or of an earlier status) leaves it held,
/// and its final report is resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_ack_of_the_terminal_status_forgets_a_run() {
    let mut scripted = Scripted::start().await;
    let echo = scripted.serve("echo", artifacts::ECHO);
    let (worker, running) = scripted.start_worker(scripted.worker_config("w1"));
    let mut session = scripted.session().await;
    session.accept(vec![]);

    session.send(Down::Assignment(assignment("run_echo", &echo, "[1]", Duration::from_secs(10))));
    let done = session.status("run_echo", pb::RunStatus::Completed).await;
    let ack = |subject| {
        Down::Ack(pb::RunAck {
            run_id: "run_echo".into(),
            lease: 1,
            subject: Some(subject),
            outcome: pb::RunAckOutcome::Accepted.into(),
            reason: String::new(),
        })
    };
    session.send(ack(pb::run_ack::Subject::OutputSeq(done.last_output_seq)));
    session.send(ack(pb::run_ack::Subject::Status(pb::RunStatus::Running.into())));
    // Two resends: the acks above were read before the second one at the
    // latest (resends are 2 s apart).
    for _ in 0..2 {
        let again = session.status("run_echo", pb::RunStatus::Completed).await;
        assert_eq!(again.nonce, done.nonce);
    }
    assert_eq!(worker.active_runs().iter().map(|r| r.as_str()).collect::<Vec<_>>(), ["run_echo"]);

    session.send(status_ack(&done));
    eventually("the run to be forgotten", || worker.active_runs().is_empty()).await;

    worker.shut_down();
    let _ = running.await;
}
