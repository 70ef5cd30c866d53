use taskrun_core::{
    RetryPolicy, Run, RunOutcome, RunStatus, TaskId, TaskStatus, Timestamp, UNCOUNTED_INTERRUPTIONS, WorkerId,
    counted_attempts, derive_task_status,
};

/// Every (from, to) pair for TaskStatus: the legal ones succeed, every other
/// one is refused.
#[test]
fn task_transitions_table() {
    use TaskStatus::*;
    let legal = [
        (Pending, Running),
        (Pending, Failed),
        (Pending, Cancelled),
        (Running, Completed),
        (Running, Failed),
        (Running, Cancelled),
    ];
    let mut checked = 0;
    for &from in TaskStatus::ALL {
        for &to in TaskStatus::ALL {
            let result = from.transition(to);
            if legal.contains(&(from, to)) {
                assert_eq!(result, Ok(to), "{from} -> {to} should be legal");
            } else {
                let err = result.expect_err(&format!("{from} -> {to} should be refused"));
                assert_eq!(err.to_string(), format!("illegal task transition {from} -> {to}"));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 25);
    for &s in TaskStatus::ALL {
        assert_eq!(s.is_terminal(), matches!(s, Completed | Failed | Cancelled));
        assert_eq!(s.as_str().parse::<TaskStatus>(), Ok(s));
    }
}

#[test]
fn run_transitions_table() {
    use RunStatus::*;
    let legal = [
        (Pending, Assigned),
        (Pending, Failed),
        (Pending, Cancelled),
        (Assigned, Running),
        (Assigned, Completed),
        (Assigned, Failed),
        (Assigned, Cancelled),
        (Running, Completed),
        (Running, Failed),
        (Running, Cancelled),
    ];
    let mut checked = 0;
    for &from in RunStatus::ALL {
        for &to in RunStatus::ALL {
            let result = from.transition(to);
            if legal.contains(&(from, to)) {
                assert_eq!(result, Ok(to), "{from} -> {to} should be legal");
            } else {
                assert!(result.is_err(), "{from} -> {to} should be refused");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
    for &s in RunStatus::ALL {
        assert_eq!(s.is_terminal(), matches!(s, Completed | Failed | Cancelled));
        assert_eq!(s.is_active(), matches!(s, Assigned | Running));
    }
}

#[test]
fn status_parse_rejects_unknown() {
    let err = "DONE".parse::<TaskStatus>().unwrap_err();
    assert_eq!(err.to_string(), r#"invalid task_status "DONE": not a task status"#);
    assert_eq!("running".parse::<RunStatus>(), Ok(RunStatus::Running));
}

fn run(shard: u32, attempt: u32, status: RunStatus) -> Run {
    let mut r = Run::new("task_1".parse().unwrap(), shard, attempt, Timestamp(0), Timestamp(0));
    let w: WorkerId = "w1".parse().unwrap();
    let now = Timestamp(1);
    match status {
        RunStatus::Pending => {}
        RunStatus::Assigned => {
            r.assign(w, 0, now).unwrap();
        }
        RunStatus::Running => {
            r.assign(w, 0, now).unwrap();
            r.start(now).unwrap();
        }
        RunStatus::Completed => {
            r.assign(w, 0, now).unwrap();
            r.finish(RunOutcome::Completed { result: taskrun_core::Json::null() }, now).unwrap();
        }
        RunStatus::Failed => {
            r.assign(w, 0, now).unwrap();
            r.finish(RunOutcome::Failed { error: "boom".into() }, now).unwrap();
        }
        RunStatus::Cancelled => {
            r.finish(RunOutcome::Cancelled { reason: "stop".into() }, now).unwrap();
        }
    }
    r
}

/// (case, current, fan_out, max_attempts, runs as (shard, attempt, status), expected)
type Case = (&'static str, TaskStatus, u32, u32, &'static [(u32, u32, RunStatus)], TaskStatus);

#[test]
fn task_status_follows_runs() {
    use RunStatus as R;
    use TaskStatus as T;
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("no runs yet", T::Pending, 1, 3, &[], T::Pending),
        ("first run pending", T::Pending, 1, 3, &[(0, 1, R::Pending)], T::Pending),
        ("assigned", T::Pending, 1, 3, &[(0, 1, R::Assigned)], T::Running),
        ("running", T::Pending, 1, 3, &[(0, 1, R::Running)], T::Running),
        ("completed", T::Running, 1, 3, &[(0, 1, R::Completed)], T::Completed),
        ("failed, retry pending", T::Running, 1, 3, &[(0, 1, R::Failed), (0, 2, R::Pending)], T::Running),
        ("failed, retry waiting to be created", T::Running, 1, 3, &[(0, 1, R::Failed)], T::Running),
        ("retry completed", T::Running, 1, 3, &[(0, 1, R::Failed), (0, 2, R::Completed)], T::Completed),
        ("attempts exhausted", T::Running, 1, 2, &[(0, 1, R::Failed), (0, 2, R::Failed)], T::Failed),
        ("no retries, failed", T::Running, 1, 1, &[(0, 1, R::Failed)], T::Failed),
        ("run cancelled, no attempts left", T::Running, 1, 1, &[(0, 1, R::Cancelled)], T::Failed),
        ("fan-out: one of two done", T::Running, 2, 1, &[(0, 1, R::Completed), (1, 1, R::Running)], T::Running),
        ("fan-out: both done", T::Running, 2, 1, &[(0, 1, R::Completed), (1, 1, R::Completed)], T::Completed),
        ("fan-out: one shard exhausted", T::Running, 2, 1, &[(0, 1, R::Completed), (1, 1, R::Failed)], T::Failed),
        ("fan-out: shard retrying", T::Running, 2, 2, &[(0, 1, R::Completed), (1, 1, R::Failed), (1, 2, R::Running)], T::Running),
        ("cancelled task stays cancelled", T::Cancelled, 1, 3, &[(0, 1, R::Completed)], T::Cancelled),
        ("completed task stays completed", T::Completed, 1, 3, &[(0, 1, R::Failed)], T::Completed),
        ("never back to pending", T::Running, 1, 3, &[(0, 2, R::Pending)], T::Running),
    ];
    for (name, current, fan_out, max_attempts, runs, expected) in cases {
        let retry = RetryPolicy { max_attempts: *max_attempts, ..RetryPolicy::default() };
        let runs: Vec<Run> = runs.iter().map(|&(s, a, st)| run(s, a, st)).collect();
        let got = derive_task_status(*current, *fan_out, &retry, &runs);
        assert_eq!(got, *expected, "case {name:?}");
    }
}

#[test]
fn lease_fences_stale_assignments() {
    let mut r = Run::new(TaskId::generate(), 0, 1, Timestamp(0), Timestamp(0));
    let w: WorkerId = "w1".parse().unwrap();
    assert_eq!(r.assign(w.clone(), 0, Timestamp(5)), Ok(1));
    // A second assignment with the old lease is refused, and changes nothing.
    let before = r.clone();
    let err = r.assign(w, 0, Timestamp(6)).unwrap_err();
    assert!(err.to_string().contains("stale"), "{err}");
    assert_eq!(r, before);
    assert!(r.check_lease(1).is_ok());
    assert!(r.check_lease(2).is_err());
}

#[test]
fn terminal_runs_refuse_more_changes() {
    let mut r = run(0, 1, RunStatus::Completed);
    let before = r.clone();
    assert!(r.finish(RunOutcome::Failed { error: "late".into() }, Timestamp(9)).is_err());
    assert!(r.start(Timestamp(9)).is_err());
    assert_eq!(r.status, before.status);
    assert_eq!(r.error, None);
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let p = RetryPolicy { max_attempts: 10, initial_backoff_ms: 100, max_backoff_ms: 1_000 };
    let got: Vec<u128> = (2..=7).map(|a| p.backoff(a).as_millis()).collect();
    assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
    assert!(p.allows_another(9));
    assert!(!p.allows_another(10));
    // Huge attempt numbers neither overflow nor panic.
    assert_eq!(p.backoff(u32::MAX).as_millis(), 1000);
}

/// Interrupted Runs (stopped by a Worker's shutdown) do not count as
/// attempts, up to UNCOUNTED_INTERRUPTIONS of them per shard; a permanent
/// failure ends the shard whatever attempts are left.
#[test]
fn interruptions_and_permanent_failures_in_the_derived_status() {
    let retry = RetryPolicy { max_attempts: 2, ..RetryPolicy::default() };
    let interrupted = |attempt| {
        let mut r = run(0, attempt, RunStatus::Assigned);
        r.finish(RunOutcome::Interrupted { error: "worker shut down".into() }, Timestamp(2)).unwrap();
        r
    };
    // Attempts 1–3 interrupted, 4 failed: two counted (interruptions 1–3
    // are free), so one more is allowed.
    let mut runs: Vec<Run> = (1..=3).map(interrupted).collect();
    runs.push(run(0, 4, RunStatus::Failed));
    assert_eq!(counted_attempts(&runs, 0, 4), 1);
    assert_eq!(derive_task_status(TaskStatus::Running, 1, &retry, &runs), TaskStatus::Running);
    // Past the free ones, interruptions count.
    let n = UNCOUNTED_INTERRUPTIONS + 2;
    let runs: Vec<Run> = (1..=n).map(interrupted).collect();
    assert_eq!(counted_attempts(&runs, 0, n), 2);
    assert_eq!(derive_task_status(TaskStatus::Running, 1, &retry, &runs), TaskStatus::Failed);
    // Counted per shard.
    assert_eq!(counted_attempts(&runs, 1, n), n);

    let mut permanent = run(0, 1, RunStatus::Assigned);
    permanent.finish(RunOutcome::FailedPermanently { error: "bad input".into() }, Timestamp(2)).unwrap();
    assert!(permanent.failed_permanently);
    assert_eq!(derive_task_status(TaskStatus::Running, 1, &retry, &[permanent]), TaskStatus::Failed);
}
