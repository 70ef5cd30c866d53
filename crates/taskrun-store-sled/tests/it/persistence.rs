//! What sled adds to the conformance suite: state survives closing and
//! reopening, concurrent writers share flushes, corrupt records are errors.

use std::sync::Arc;

use taskrun_core::{
    AgentDigest, AgentManifest, AgentRef, Json, RunOutcome, RunStatus, Task, TaskEventKind, TaskId, TaskSpec,
    TaskStatus, Timestamp, WorkerId,
};
use taskrun_store::{
    AgentStore, AppendOutcome, CreateOutcome, Error, PageRequest, Store, StoreConfig, TaskFilter, TaskStore,
};
use taskrun_store_sled::SledStore;

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn spec(key: Option<&str>) -> TaskSpec {
    let mut spec =
        TaskSpec::new(AgentRef::latest("echo".parse().unwrap()), Json::parse("input", r#"{"q":1}"#).unwrap());
    spec.idempotency_key = key.map(str::to_owned);
    spec
}

fn task(key: Option<&str>) -> Task {
    Task::new(TaskId::generate(), spec(key), T0, usize::MAX).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let w: WorkerId = "worker-1".parse().unwrap();
    let component = b"\0asm persisted".to_vec();
    let manifest = AgentManifest {
        name: "echo".parse().unwrap(),
        version: "1.0.0".parse().unwrap(),
        digest: AgentDigest::of(&component),
        size: component.len() as u64,
        wit_world: taskrun_core::WIT_WORLD.into(),
        signer: "key-1".into(),
        published_at: T0,
    };
    let (t, run, lease, events) = {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
        let t = store.create_task(task(Some("k1"))).await.unwrap().into_inner();
        let run = store.list_runs(&t.id).await.unwrap().remove(0);
        let lease = store.assign_run(&run.id, &w, 0, T0).await.unwrap().run.lease;
        store.start_run(&run.id, lease, T0).await.unwrap();
        store.append_output(&run.id, lease, 1, "first".into(), T0).await.unwrap();
        store.put_agent(manifest.clone(), b"env".to_vec(), component.clone()).await.unwrap();
        let events = store.events_since(&t.id, 0, 0).await.unwrap();
        (t.id, run.id, lease, events)
    };

    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
    let stored = store.get_task(&t).await.unwrap();
    assert_eq!(stored.status, TaskStatus::Running);
    assert_eq!(store.get_run(&run).await.unwrap().status, RunStatus::Running);
    assert_eq!(store.events_since(&t, 0, 0).await.unwrap(), events);
    assert_eq!(store.active_runs_of_worker(&w).await.unwrap()[0].id, run);
    assert_eq!(store.get_blob(&manifest.digest).await.unwrap(), component);
    assert_eq!(store.get_agent(&manifest.name, None).await.unwrap().manifest, manifest);
    // The idempotency index, the (run, seq) set and the event counter are
    // back too.
    match store.create_task(task(Some("k1"))).await.unwrap() {
        CreateOutcome::Existing(existing) => assert_eq!(existing.id, t),
        other => panic!("expected the stored task, got {other:?}"),
    }
    assert_eq!(store.append_output(&run, lease, 1, "first".into(), T0).await.unwrap(), AppendOutcome::Duplicate);
    let next = store.append_output(&run, lease, 2, "second".into(), T0).await.unwrap();
    match next {
        AppendOutcome::Appended(e) => assert_eq!(e.seq, events.len() as u64 + 1),
        AppendOutcome::Duplicate => panic!("seq 2 is new"),
    }
    let change = store
        .finish_run(&run, lease, RunOutcome::Completed { result: Json::parse("r", "7").unwrap() }, T0)
        .await
        .unwrap();
    assert_eq!(change.task.status, TaskStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_flushes() {
    let store = Arc::new(SledStore::temporary(StoreConfig::default()).unwrap());
    let before = store.commit_stats();
    let mut handles = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store.create_task(task(None)).await.unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let after = store.commit_stats();
    let acked = after.acknowledged - before.acknowledged;
    let flushes = after.flushes - before.flushes;
    assert_eq!(acked, 64);
    assert!(flushes >= 1);
    assert!(flushes < acked, "64 concurrent writes took {flushes} flushes: no grouping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, r1, t2, r2) = {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
        let t1 = store.create_task(task(None)).await.unwrap().into_inner();
        let t2 = store.create_task(task(None)).await.unwrap().into_inner();
        let r1 = store.list_runs(&t1.id).await.unwrap().remove(0);
        let r2 = store.list_runs(&t2.id).await.unwrap().remove(0);
        (t1.id, r1.id, t2.id, r2.id)
    };
    {
        let db = taskrun_store_sled::open_raw(dir.path()).unwrap();
        // The `tasks` tree: `h` + id is a Task's head, `p` + id the state
        // of a Task that has not ended.
        let tasks = db.open_tree("tasks").unwrap();
        tasks.insert([b"h", t1.as_str().as_bytes()].concat(), &b"{not json"[..]).unwrap();
        tasks.insert([b"p", t2.as_str().as_bytes()].concat(), &b"[]"[..]).unwrap();
        db.flush().unwrap();
    }
    // The store opens; the two Tasks are left out of scheduling.
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
    let is_corrupt = |e: Error| matches!(e, Error::Corrupt { .. });
    assert!(is_corrupt(store.get_task(&t1).await.unwrap_err()));
    assert!(is_corrupt(store.get_task(&t2).await.unwrap_err()));
    assert!(is_corrupt(store.get_run(&r2).await.unwrap_err()));
    assert!(is_corrupt(store.list_tasks(&TaskFilter::default(), &PageRequest::default()).await.unwrap_err()));
    assert!(is_corrupt(store.list_runs(&t2).await.unwrap_err()));
    assert!(is_corrupt(store.assign_run(&r1, &"w".parse().unwrap(), 0, T0).await.unwrap_err()));
    assert!(is_corrupt(store.assign_run(&r2, &"w".parse().unwrap(), 0, T0).await.unwrap_err()));
    assert!(is_corrupt(store.cancel_task(&t2, "x", T0).await.unwrap_err()));
    assert!(store.pending_runs(T0, 10).await.unwrap().is_empty());
    // The rest of the store still works, in the same batches as refused
    // changes.
    let other = store.create_task(task(None)).await.unwrap().into_inner();
    let events = store.events_since(&other.id, 0, 0).await.unwrap();
    assert!(matches!(events[0].kind, TaskEventKind::Status { .. }));
    assert_eq!(store.pending_runs(T0, 10).await.unwrap().len(), 1);
}

/// A damaged agent record does not stop the store opening. That build is
/// a Corrupt error, and so is the latest of its name (never the build
/// before it, silently); the other builds are served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_agent_record_is_an_error_not_a_dead_store() {
    let dir = tempfile::tempdir().unwrap();
    let build = |name: &str, version: &str| {
        let component = format!("\0asm {name} {version}").into_bytes();
        let manifest = AgentManifest {
            name: name.parse().unwrap(),
            version: version.parse().unwrap(),
            digest: AgentDigest::of(&component),
            size: component.len() as u64,
            wit_world: taskrun_core::WIT_WORLD.into(),
            signer: "key-1".into(),
            published_at: T0,
        };
        (manifest, component)
    };
    let builds = [build("echo", "1.0.0"), build("echo", "1.1.0"), build("chat", "2.0.0")];
    {
        let store = SledStore::open(dir.path(), StoreConfig::default()).unwrap();
        for (manifest, component) in &builds {
            store.put_agent(manifest.clone(), b"env".to_vec(), component.clone()).await.unwrap();
        }
    }
    {
        // An `agents` key is the name, a 0 byte and the version's three
        // numbers (u32, big-endian).
        let db = taskrun_store_sled::open_raw(dir.path()).unwrap();
        let key = [b"echo\0".as_slice(), &1u32.to_be_bytes(), &1u32.to_be_bytes(), &0u32.to_be_bytes()].concat();
        let agents = db.open_tree("agents").unwrap();
        assert!(agents.insert(key, &b"\xff\xff"[..]).unwrap().is_some(), "the key names echo 1.1.0");
        db.flush().unwrap();
    }
    let store = SledStore::open(dir.path(), StoreConfig::default()).unwrap();
    let echo = "echo".parse().unwrap();
    for version in [None, Some("1.1.0".parse().unwrap())] {
        let err = store.get_agent(&echo, version).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{version:?}: {err}");
        assert!(err.to_string().contains("echo@1.1.0"), "{err}");
    }
    let older = store.get_agent(&echo, Some("1.0.0".parse().unwrap())).await.unwrap();
    assert_eq!(older.manifest, builds[0].0);
    assert_eq!(store.get_agent(&"chat".parse().unwrap(), None).await.unwrap().manifest, builds[2].0);
    let listed: Vec<AgentManifest> = store.list_agents().await.unwrap();
    assert_eq!(listed, vec![builds[2].0.clone(), builds[0].0.clone()]);
}

/// Whether a Run failed permanently or was interrupted is kept with it
/// (beside the Run in the state record, whose Run layout predates both):
/// after reopening, the Runs still say so and the Task's status still
/// follows from its Runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_flags_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let w: WorkerId = "worker-1".parse().unwrap();
    let (task, runs) = {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
        let mut s = spec(None);
        s.fan_out = 3;
        let task = store.create_task(Task::new(TaskId::generate(), s, T0, usize::MAX).unwrap()).await.unwrap();
        let runs = store.list_runs(&task.into_inner().id).await.unwrap();
        // Shard 0 fails and is retried, shard 1 is interrupted (and
        // retried), shard 2 fails permanently.
        for (i, outcome) in [
            (0, RunOutcome::Failed { error: "flaky".into() }),
            (1, RunOutcome::Interrupted { error: "worker-1 shut down".into() }),
            (2, RunOutcome::FailedPermanently { error: "bad input".into() }),
        ] {
            let lease = store.assign_run(&runs[i].id, &w, 0, T0).await.unwrap().run.lease;
            store.finish_run(&runs[i].id, lease, outcome, T0).await.unwrap();
        }
        let runs = store.list_runs(&runs[0].task_id).await.unwrap();
        (store.get_task(&runs[0].task_id).await.unwrap(), runs)
    };
    assert_eq!(task.status, TaskStatus::Failed);
    let flags: Vec<(u32, u32, bool, bool)> =
        runs.iter().map(|r| (r.shard, r.attempt, r.failed_permanently, r.interrupted)).collect();
    assert_eq!(
        flags,
        [(0, 1, false, false), (0, 2, false, false), (1, 1, false, true), (1, 2, false, false), (2, 1, true, false)]
    );

    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
    assert_eq!(store.list_runs(&task.id).await.unwrap(), runs);
    assert_eq!(store.get_run(&runs[2].id).await.unwrap(), runs[2]);
    assert_eq!(store.get_run(&runs[4].id).await.unwrap(), runs[4]);
    assert_eq!(store.get_task(&task.id).await.unwrap(), task);
    taskrun_store::conformance::check_invariants(&*store, &task.id).await.unwrap();
}

/// Listing the open Tasks reads only theirs, however long the history of
/// ended ones (whose records are made unreadable here, so that reading any
/// of them would be an error), and listing ended Tasks reads none of the
/// open ones. Both come newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_open_tasks_reads_no_ended_one() {
    let dir = tempfile::tempdir().unwrap();
    let w: WorkerId = "worker-1".parse().unwrap();
    let (ended, open) = {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
        let mut ids = Vec::new();
        for i in 0..6 {
            let t = store.create_task(task(None)).await.unwrap().into_inner();
            if i % 2 == 0 {
                let run = store.list_runs(&t.id).await.unwrap().remove(0);
                let lease = store.assign_run(&run.id, &w, 0, T0).await.unwrap().run.lease;
                let result = Json::parse("result", "1").unwrap();
                store.finish_run(&run.id, lease, RunOutcome::Completed { result }, T0).await.unwrap();
            }
            ids.push(t.id);
        }
        let (ended, open): (Vec<(usize, TaskId)>, _) = ids.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let strip = |v: Vec<(usize, TaskId)>| v.into_iter().rev().map(|(_, id)| id).collect::<Vec<_>>();
        (strip(ended), strip(open))
    };
    let listed = |store: Arc<SledStore>, statuses: Vec<TaskStatus>| async move {
        let filter = TaskFilter { statuses, ..TaskFilter::default() };
        let page = store.list_tasks(&filter, &PageRequest::default()).await?;
        Ok::<_, Error>(page.items.into_iter().map(|t| t.id).collect::<Vec<_>>())
    };
    let store = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
    assert_eq!(listed(store.clone(), vec![TaskStatus::Pending]).await.unwrap(), open);
    assert_eq!(listed(store.clone(), vec![TaskStatus::Completed]).await.unwrap(), ended);
    drop(store);
    {
        let db = taskrun_store_sled::open_raw(dir.path()).unwrap();
        let tasks = db.open_tree("tasks").unwrap();
        // `s` + id is the state record of a Task that ended.
        for id in &ended {
            tasks.insert([b"s", id.as_str().as_bytes()].concat(), &b"{not a state"[..]).unwrap();
        }
        db.flush().unwrap();
    }
    let store = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
    assert_eq!(listed(store.clone(), vec![TaskStatus::Pending, TaskStatus::Running]).await.unwrap(), open);
    let is_corrupt = |e: Error| matches!(e, Error::Corrupt { .. });
    assert!(is_corrupt(listed(store.clone(), vec![TaskStatus::Completed]).await.unwrap_err()));
    assert!(is_corrupt(listed(store.clone(), vec![]).await.unwrap_err()));
    drop(store);
    {
        let db = taskrun_store_sled::open_raw(dir.path()).unwrap();
        let tasks = db.open_tree("tasks").unwrap();
        for id in &open {
            tasks.insert([b"p", id.as_str().as_bytes()].concat(), &b"{not a state"[..]).unwrap();
        }
        for id in &ended {
            tasks.remove([b"s", id.as_str().as_bytes()].concat()).unwrap();
        }
        db.flush().unwrap();
    }
    // Now the open ones are unreadable, and the ended ones gone: listing
    // ended Tasks reads no open one.
    let store = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap());
    assert_eq!(
        listed(store.clone(), vec![TaskStatus::Failed, TaskStatus::Cancelled]).await.unwrap(),
        Vec::<TaskId>::new()
    );
    assert!(is_corrupt(listed(store.clone(), vec![TaskStatus::Pending]).await.unwrap_err()));
}

/// A fan-out Task's results, each in its own record, come back after
/// reopening exactly as they were reported: while the Task is open (its
/// aggregate rebuilt at open) and after it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_results_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let open = || -> Arc<dyn Store> { Arc::new(SledStore::open(dir.path(), StoreConfig::default()).unwrap()) };
    let w: WorkerId = "worker-1".parse().unwrap();
    let result = |shard: u32, pad: usize| {
        Json::parse("result", format!(r#"{{"shard":{shard},"pad":"{}"}}"#, "r".repeat(pad))).unwrap()
    };
    let mut s = spec(None);
    s.fan_out = 8;
    s.retry.initial_backoff_ms = 0;
    let task = Task::new(TaskId::generate(), s, T0, usize::MAX).unwrap();

    // What each Run was reported with; a Run not in it has no result.
    let mut reported = std::collections::BTreeMap::new();
    let mut leases = std::collections::BTreeMap::new();
    {
        let store = open();
        let task = store.create_task(task.clone()).await.unwrap().into_inner();
        for run in store.list_runs(&task.id).await.unwrap() {
            let lease = store.assign_run(&run.id, &w, 0, T0).await.unwrap().run.lease;
            leases.insert(run.id, lease);
        }
        // Shards 1 to 6 complete, with results of 40 bytes to 1.25 MiB;
        // shard 3 fails first and its retry completes. Shard 0 and 7 are
        // still running.
        for shard in 1..7u32 {
            let mut id = taskrun_core::RunId::of(&task.id, shard, 1);
            if shard == 3 {
                let retry = store.finish_run(&id, leases[&id], RunOutcome::Failed { error: "flaky".into() }, T0);
                let retry = retry.await.unwrap().retry.unwrap();
                let lease = store.assign_run(&retry.id, &w, 0, T0).await.unwrap().run.lease;
                leases.insert(retry.id.clone(), lease);
                id = retry.id;
            }
            let r = result(shard, 5 << (3 * shard));
            store.finish_run(&id, leases[&id], RunOutcome::Completed { result: r.clone() }, T0).await.unwrap();
            reported.insert(id, r);
        }
    }

    let store = open();
    check_results(&*store, &task.id, &reported).await;
    assert_eq!(store.get_task(&task.id).await.unwrap().status, TaskStatus::Running);
    // The reopened store carries on: shard 7, then shard 0, which ends the
    // Task with its result.
    for shard in [7, 0] {
        let id = taskrun_core::RunId::of(&task.id, shard, 1);
        let r = result(shard, 1000 + shard as usize);
        store.finish_run(&id, leases[&id], RunOutcome::Completed { result: r.clone() }, T0).await.unwrap();
        reported.insert(id, r);
    }
    let ended = store.get_task(&task.id).await.unwrap();
    assert_eq!(ended.status, TaskStatus::Completed);
    assert_eq!(ended.result.as_ref(), Some(&result(0, 1000)));
    drop(store);

    let store = open();
    check_results(&*store, &task.id, &reported).await;
    assert_eq!(store.get_task(&task.id).await.unwrap(), ended);
    let listed = store.list_tasks(&TaskFilter::default(), &PageRequest::default()).await.unwrap();
    assert_eq!(listed.items, vec![ended]);
}

/// Every Run of `task` (nine: eight shards, one retried) has the result in
/// `reported`, or none if it is not there; get_run agrees with list_runs.
async fn check_results(
    store: &dyn Store,
    task: &TaskId,
    reported: &std::collections::BTreeMap<taskrun_core::RunId, Json>,
) {
    let runs = store.list_runs(task).await.unwrap();
    assert_eq!(runs.len(), 9);
    for run in &runs {
        assert_eq!(run.result.as_ref(), reported.get(&run.id), "run {}", run.id);
        assert_eq!(store.get_run(&run.id).await.unwrap(), *run);
    }
}
