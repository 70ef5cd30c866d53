//! Placement rules, without a network.

use std::collections::BTreeSet;
use std::sync::Arc;

use taskrun_control_plane::scheduler::{
    PendingRun, WorkerSlot, place, room_left_after, timeout_reason, unschedulable_reason,
};
use taskrun_core::{
    AgentDigest, Labels, Modality, ModelBackend, ModelRequirement, TaskId, Timestamp, WorkerInfo, WorkerState,
};

fn run(n: u64, priority: i32, created: i64) -> PendingRun {
    PendingRun {
        run_id: format!("run_{n:04}").parse().unwrap(),
        task_id: format!("task_{n:04}").parse::<TaskId>().unwrap(),
        lease: 0,
        priority,
        due_at: Timestamp(created),
        agent: "echo".parse().unwrap(),
        digest: AgentDigest::of(b"echo"),
        worker_labels: Labels::new(),
        model: ModelRequirement::default(),
    }
}

fn worker(id: &str, slots: u32) -> WorkerSlot {
    WorkerSlot {
        info: Arc::new(WorkerInfo {
            id: id.parse().unwrap(),
            agents: BTreeSet::new(),
            digests: BTreeSet::new(),
            model_backends: vec![ModelBackend {
                name: "default".into(),
                provider: "echo".into(),
                model_name: "echo".into(),
                context_window: 4096,
                modalities: vec![Modality::Text],
                supports_streaming: true,
            }],
            labels: Labels::new(),
            slots,
            version: "test".into(),
        }),
        state: WorkerState::Connected,
        active: 0,
        last_assigned: 0,
    }
}

fn placed(pending: &[PendingRun], workers: &mut [WorkerSlot]) -> Vec<(String, String)> {
    let mut counter = 0;
    place(pending, workers, &mut counter)
        .into_iter()
        .map(|(r, w)| (pending[r].run_id.to_string(), workers[w].info.id.to_string()))
        .collect()
}

#[test]
fn higher_priority_first_then_fifo() {
    let pending = vec![run(1, 0, 10), run(2, 5, 30), run(3, 0, 5), run(4, 5, 20)];
    let mut workers = vec![worker("w1", 3)];
    let got: Vec<String> = placed(&pending, &mut workers).into_iter().map(|(r, _)| r).collect();
    // Only three slots: priority 5 (FIFO: 4 then 2), then the oldest priority 0.
    assert_eq!(got, ["run_0004", "run_0002", "run_0003"]);
}

#[test]
fn a_retry_queues_from_when_its_backoff_ended() {
    // Task 1 was created first, but its retry (run 3) became due at 50,
    // after Task 2's first attempt (due at 20): Task 2 goes first.
    let mut retry = run(3, 0, 50);
    retry.task_id = "task_0001".parse().unwrap();
    let pending = vec![retry, run(2, 0, 20)];
    let mut workers = vec![worker("w1", 1)];
    let got: Vec<String> = placed(&pending, &mut workers).into_iter().map(|(r, _)| r).collect();
    assert_eq!(got, ["run_0002"]);
}

#[test]
fn spreads_load_and_takes_turns() {
    let pending: Vec<PendingRun> = (1..=6).map(|n| run(n, 0, n as i64)).collect();
    let mut workers = vec![worker("w1", 4), worker("w2", 4), worker("w3", 4)];
    let got = placed(&pending, &mut workers);
    let per_worker: Vec<u32> = workers.iter().map(|w| w.active).collect();
    assert_eq!(per_worker, [2, 2, 2], "{got:?}");
}

#[test]
fn least_loaded_by_fraction_of_slots() {
    let mut big = worker("big", 10);
    big.active = 4; // 40 % busy
    let mut small = worker("small", 2);
    small.active = 1; // 50 % busy
    let mut workers = vec![small, big];
    let got = placed(&[run(1, 0, 0)], &mut workers);
    assert_eq!(got, [("run_0001".to_owned(), "big".to_owned())]);
}

#[test]
fn prefers_a_worker_that_holds_the_agent() {
    let mut warm = worker("warm", 4);
    warm.active = 3;
    Arc::make_mut(&mut warm.info).digests.insert(AgentDigest::of(b"echo"));
    let mut workers = vec![worker("cold", 4), warm];
    let got = placed(&[run(1, 0, 0)], &mut workers);
    assert_eq!(got[0].1, "warm");
}

#[test]
fn labels_agents_and_model_backends_route() {
    let mut gpu = worker("gpu", 2);
    Arc::make_mut(&mut gpu.info).labels.insert("gpu".into(), "a100".into());
    let mut chat_only = worker("chat-only", 2);
    Arc::make_mut(&mut chat_only.info).agents.insert("chat".parse().unwrap());
    let mut vision = worker("vision", 2);
    Arc::make_mut(&mut vision.info).model_backends[0].modalities.push(Modality::Image);
    let mut workers = vec![gpu, chat_only, vision];

    let mut needs_gpu = run(1, 0, 0);
    needs_gpu.worker_labels.insert("gpu".into(), "a100".into());
    let mut needs_image = run(2, 0, 1);
    needs_image.model.modalities = vec![Modality::Image];
    let got = placed(&[needs_gpu, needs_image], &mut workers);
    assert_eq!(got, [("run_0001".into(), "gpu".into()), ("run_0002".into(), "vision".into())]);
}

#[test]
fn full_draining_and_lost_workers_get_nothing() {
    let mut full = worker("full", 1);
    full.active = 1;
    let mut draining = worker("draining", 4);
    draining.state = WorkerState::Draining;
    let mut lost = worker("lost", 4);
    lost.state = WorkerState::Lost;
    let mut workers = vec![full, draining, lost];
    assert!(placed(&[run(1, 0, 0)], &mut workers).is_empty());
}

#[test]
fn explains_why_nothing_can_run() {
    let r = run(1, 0, 0);
    assert_eq!(unschedulable_reason(&r, &[]).as_deref(), Some("no connected worker"));

    let mut w = worker("w1", 1);
    Arc::make_mut(&mut w.info).agents.insert("chat".parse().unwrap());
    assert_eq!(unschedulable_reason(&r, &[w]).as_deref(), Some("no connected worker accepts agent echo"));

    let mut r2 = run(2, 0, 0);
    r2.worker_labels.insert("gpu".into(), "a100".into());
    let msg = unschedulable_reason(&r2, &[worker("w1", 1)]).unwrap();
    assert_eq!(msg, "no connected worker accepts agent echo and carries labels gpu=a100");

    // Busy but compatible: it will run when a slot frees.
    let mut busy = worker("w1", 1);
    busy.active = 1;
    assert_eq!(unschedulable_reason(&r, std::slice::from_ref(&busy)), None);
    assert_eq!(
        timeout_reason(&r, &[busy], 1500),
        "not started within its schedule-to-start timeout (1500 ms): every suitable worker was busy"
    );
}

/// The verdict looks at every connected Worker: a Run that one Worker
/// could take (now, or once a slot frees up) is waiting, whatever the
/// others refuse; only when every Worker refuses is the Run unschedulable,
/// and then the reason names what the closest Worker lacked.
#[test]
fn a_run_is_refused_only_when_every_worker_refuses_it() {
    let full = || {
        let mut w = worker("full", 1);
        w.active = 1;
        w
    };
    let chat_only = || {
        let mut w = worker("chat-only", 4);
        Arc::make_mut(&mut w.info).agents.insert("chat".parse().unwrap());
        w
    };
    let gpu = || {
        let mut w = worker("gpu", 4);
        Arc::make_mut(&mut w.info).labels.insert("gpu".into(), "a100".into());
        w
    };
    let draining = || {
        let mut w = worker("draining", 4);
        w.state = WorkerState::Draining;
        w
    };
    let plain = run(1, 0, 0);
    let mut needs_gpu = run(2, 0, 0);
    needs_gpu.worker_labels.insert("gpu".into(), "a100".into());
    let mut needs_image = run(3, 0, 0);
    needs_image.model.modalities = vec![Modality::Image];
    let mut needs_gpu_and_image = needs_gpu.clone();
    needs_gpu_and_image.model.modalities = vec![Modality::Image];

    let mut full_gpu = gpu();
    full_gpu.active = 4;

    let busy = "every suitable worker was busy";
    let cases: Vec<(&str, &PendingRun, Vec<WorkerSlot>, &str)> = vec![
        ("full, and one that refuses the agent", &plain, vec![full(), chat_only()], busy),
        ("refuses the agent, and one that is full", &plain, vec![chat_only(), full()], busy),
        ("one free and suitable among refusals", &plain, vec![chat_only(), worker("w", 1)], busy),
        ("full gpu Worker, and plain ones", &needs_gpu, vec![worker("plain", 4), chat_only(), full_gpu], busy),
        (
            "only a draining Worker suits",
            &plain,
            vec![draining(), chat_only()],
            "no connected worker accepts agent echo",
        ),
        ("nobody accepts the agent", &plain, vec![chat_only()], "no connected worker accepts agent echo"),
        (
            "one accepts the agent but lacks the label",
            &needs_gpu,
            vec![chat_only(), worker("plain", 4)],
            "no connected worker accepts agent echo and carries labels gpu=a100",
        ),
        (
            "one refuses the agent, one lacks the ModelBackend",
            &needs_image,
            vec![chat_only(), worker("plain", 4)],
            "no connected worker accepts agent echo and offers a ModelBackend meeting",
        ),
        (
            "the gpu Worker lacks the ModelBackend",
            &needs_gpu_and_image,
            vec![worker("plain", 4), chat_only(), gpu()],
            "no connected worker accepts agent echo, carries labels gpu=a100 and offers a ModelBackend meeting",
        ),
        ("no connected Worker", &plain, vec![draining()], "no connected worker"),
    ];
    for (case, r, workers, want) in cases {
        let got = timeout_reason(r, &workers, 10);
        let why = got.strip_prefix("not started within its schedule-to-start timeout (10 ms): ").unwrap();
        assert!(why.starts_with(want), "{case}: got {why:?}, want {want:?}");
        let waits = unschedulable_reason(r, &workers).is_none();
        assert_eq!(waits, want == busy, "{case}: {why}");
    }
}

/// A Worker that is shutting down takes nothing new, however well it suits
/// (warm, idle): the Run goes to a colder, busier Worker, or waits. When a
/// Run finds no home, the reason names the draining Workers that would
/// have taken it, since they are why.
#[test]
fn a_draining_worker_gets_nothing_and_is_named_when_it_is_why() {
    let draining = |id: &str| {
        let mut w = worker(id, 4);
        w.state = WorkerState::Draining;
        Arc::make_mut(&mut w.info).digests.insert(AgentDigest::of(b"echo"));
        w
    };
    let mut busy = worker("busy", 4);
    busy.active = 3;
    let mut workers = vec![draining("d1"), busy];
    let got = placed(&[run(1, 0, 0), run(2, 0, 1)], &mut workers);
    assert_eq!(got, [("run_0001".to_owned(), "busy".to_owned())], "one slot left, and not on the draining Worker");
    assert_eq!(workers[0].active, 0);

    let full = |mut w: WorkerSlot| {
        w.active = w.info.slots;
        w
    };
    let chat_only = |mut w: WorkerSlot| {
        Arc::make_mut(&mut w.info).agents.insert("chat".parse().unwrap());
        w
    };
    let gpu = |mut w: WorkerSlot| {
        Arc::make_mut(&mut w.info).labels.insert("gpu".into(), "a100".into());
        w
    };
    let plain = run(1, 0, 0);
    let mut needs_gpu = run(2, 0, 0);
    needs_gpu.worker_labels.insert("gpu".into(), "a100".into());
    let cases: Vec<(&str, &PendingRun, Vec<WorkerSlot>, Option<&str>)> = vec![
        (
            "only a draining Worker",
            &plain,
            vec![draining("d1")],
            Some("no connected worker (suitable but draining: d1)"),
        ),
        (
            "a draining Worker and one that refuses the agent",
            &plain,
            vec![chat_only(worker("c", 4)), draining("d1")],
            Some("no connected worker accepts agent echo (suitable but draining: d1)"),
        ),
        (
            "a full draining Worker would still suit",
            &plain,
            vec![full(draining("d1"))],
            Some("no connected worker (suitable but draining: d1)"),
        ),
        (
            "a draining Worker that would refuse the agent is not named",
            &plain,
            vec![chat_only(draining("d1"))],
            Some("no connected worker"),
        ),
        (
            "only the draining Worker with the label is named",
            &needs_gpu,
            vec![draining("d1"), gpu(draining("d2")), worker("plain", 4)],
            Some("no connected worker accepts agent echo and carries labels gpu=a100 (suitable but draining: d2)"),
        ),
        (
            "many draining Workers",
            &plain,
            ["d5", "d2", "d4", "d1", "d3"].into_iter().map(draining).collect(),
            Some("no connected worker (suitable but draining: d1, d2, d3 and 2 more)"),
        ),
        ("a busy connected Worker suits: the Run waits", &plain, vec![draining("d1"), full(worker("w", 2))], None),
    ];
    for (case, r, workers, want) in cases {
        assert_eq!(unschedulable_reason(r, &workers).as_deref(), want, "{case}");
    }
    assert_eq!(
        timeout_reason(&plain, &[draining("d1")], 10),
        "not started within its schedule-to-start timeout (10 ms): no connected worker (suitable but draining: d1)"
    );
}

/// The dispatcher reads further down the queue while a free Worker would
/// be left idle by the Runs read so far.
#[test]
fn room_is_left_when_no_run_read_suits_a_free_worker() {
    let gpu_runs: Vec<PendingRun> = (1..=20)
        .map(|n| {
            let mut r = run(n, 0, n as i64);
            r.worker_labels.insert("gpu".into(), "a100".into());
            r
        })
        .collect();
    assert!(room_left_after(&gpu_runs, &[worker("plain", 4)]), "nothing read suits the free Worker");

    let plain: Vec<PendingRun> = (1..=4).map(|n| run(n, 0, n as i64)).collect();
    assert!(!room_left_after(&plain, &[worker("plain", 4)]), "the Runs read fill it");
    let mut full = worker("full", 4);
    full.active = 4;
    assert!(!room_left_after(&gpu_runs, &[full.clone()]), "no free slot to fill");
    let mut draining = worker("draining", 4);
    draining.state = WorkerState::Draining;
    assert!(!room_left_after(&gpu_runs, &[draining, full]), "a draining Worker takes nothing");

    // One free slot of two taken: the Runs read leave the other idle.
    let mut mixed = gpu_runs.clone();
    mixed.push(run(21, 0, 21));
    let mut workers = vec![worker("plain", 2)];
    assert!(room_left_after(&mixed, &workers));
    // It only asks: the Workers passed in are left as they were.
    assert_eq!(workers[0].active, 0);
    workers[0].active = 1;
    assert!(!room_left_after(&mixed, &workers));
}

#[test]
fn thousand_runs_place_deterministically() {
    let pending: Vec<PendingRun> = (0..1000).map(|n| run(n, (n % 7) as i32, n as i64)).collect();
    let mut a = vec![worker("w1", 100), worker("w2", 100), worker("w3", 100)];
    let mut b = a.clone();
    let first = placed(&pending, &mut a);
    assert_eq!(first.len(), 300);
    assert_eq!(first, placed(&pending, &mut b));
}
