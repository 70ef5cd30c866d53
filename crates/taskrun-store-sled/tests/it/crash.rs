//! kill -9 in the middle of concurrent writes loses no acknowledged write
//! and breaks no invariant.
//!
//! Each round runs `taskrun-store-crash-child` (src/bin) on a database
//! directory, lets it write for a random 10–300 ms, SIGKILLs it, reopens the
//! directory and checks every write the child acknowledged (one stdout line
//! each) and every invariant. Five rounds share a directory, so recovery of
//! an already recovered database is tested too. 50 rounds by default;
//! `TASKRUN_CRASH_ROUNDS=n` for more.
//!
//! Known upstream defect: after roughly one kill in a hundred, sled 0.34.7
//! refuses to reopen the directory ("Read corrupted data at file offset
//! None"; spacejam/sled#1509, open). Nothing acknowledged is wrong in that
//! case — the store does not open at all — and our code cannot repair it.
//! Such a round is reported, counted, and the test moves to a fresh
//! directory; it fails if that happens in more than one round in ten, if
//! the store fails to open for any other reason, or if a store that opens
//! lacks any acknowledged write. See docs/benchmarks.md ("Store").

#![allow(clippy::print_stderr)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use taskrun_core::{RunId, RunStatus, Task, TaskEventKind, TaskId, TaskStatus, Timestamp, WorkerId};
use taskrun_store::conformance::{XorShift, check_invariants};
use taskrun_store::{CreateOutcome, PageRequest, Store, StoreConfig, TaskFilter};
use taskrun_store_sled::SledStore;

const DEFAULT_ROUNDS: usize = 50;
const ROUNDS_PER_DIR: usize = 5;
/// The most rounds out of ten that may hit sled's reopen defect.
const MAX_UNOPENABLE_PER_TEN: usize = 1;
const WRITERS: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ack {
    Created { task: TaskId, key: String },
    Assigned { run: RunId, lease: u64 },
    Started { run: RunId, lease: u64 },
    Output { run: RunId, seq: u64 },
    Finished { run: RunId, lease: u64, status: RunStatus },
    Lost { run: RunId, lease: u64 },
    Cancelled { task: TaskId },
}

fn field<T: std::str::FromStr>(line: &str, s: &str) -> T
where
    T::Err: std::fmt::Display,
{
    s.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn parse(line: &str) -> Ack {
    let parts: Vec<&str> = line.split(' ').collect();
    let id = |s: &str| field::<TaskId>(line, s);
    let run_id = |s: &str| field::<RunId>(line, s);
    let num = |s: &str| field::<u64>(line, s);
    match parts.as_slice() {
        ["created", task, key] => Ack::Created { task: id(task), key: key.to_string() },
        ["assigned", run, lease] => Ack::Assigned { run: run_id(run), lease: num(lease) },
        ["started", run, lease] => Ack::Started { run: run_id(run), lease: num(lease) },
        ["output", run, seq] => Ack::Output { run: run_id(run), seq: num(seq) },
        ["finished", run, lease, status] => {
            Ack::Finished { run: run_id(run), lease: num(lease), status: field(line, status) }
        }
        ["lost", run, lease] => Ack::Lost { run: run_id(run), lease: num(lease) },
        ["cancelled", task] => Ack::Cancelled { task: id(task) },
        _ => panic!("the child printed {line:?}"),
    }
}

/// Runs the child for `kill_after`, kills it with SIGKILL and returns the
/// acknowledgements it printed in full lines.
fn run_child(dir: &Path, tag: &str, seed: u64, kill_after: Duration) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskrun-store-crash-child"))
        .arg(dir)
        .arg(tag)
        .arg(seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the crash child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut stderr = child.stderr.take().expect("child stderr");
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut acks = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return acks,
                // A line cut by the kill was never fully acknowledged.
                Ok(_) if line.last() != Some(&b'\n') => return acks,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    acks.push(parse(&text));
                }
            }
        }
    });
    std::thread::sleep(kill_after);
    if let Ok(Some(status)) = child.try_wait() {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        panic!("the crash child exited by itself ({status}): {err}");
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().expect("stdout reader")
}

async fn all_tasks(store: &dyn Store) -> Vec<Task> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = store
            .list_tasks(&TaskFilter::default(), &PageRequest { page_size: 500, page_token: token })
            .await
            .expect("list tasks");
        out.extend(page.items);
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
}

/// Checks the acknowledged writes and the invariants on the reopened store.
async fn verify(store: &dyn Store, acks: &[Ack], tags: &[String], context: &str) {
    for ack in acks {
        let run_of = |run: &RunId| {
            let run = run.clone();
            async move {
                let r = store.get_run(&run).await.unwrap_or_else(|e| panic!("{context}: {ack:?} lost: {e}"));
                store
                    .get_task(&r.task_id)
                    .await
                    .unwrap_or_else(|e| panic!("{context}: run {run} without its task: {e}"));
                r
            }
        };
        match ack {
            Ack::Created { task, key } => {
                let stored = store.get_task(task).await.unwrap_or_else(|e| panic!("{context}: {ack:?} lost: {e}"));
                assert_eq!(stored.spec.idempotency_key.as_deref(), Some(key.as_str()));
            }
            Ack::Assigned { run, lease } => {
                let r = run_of(run).await;
                assert!(r.lease >= *lease, "{context}: {ack:?} but {r:?}");
                assert_ne!(r.status, RunStatus::Pending, "{context}: {ack:?}");
            }
            Ack::Started { run, lease } => {
                let r = run_of(run).await;
                assert!(r.lease >= *lease, "{context}: {ack:?} but {r:?}");
                assert!(r.started_at.is_some(), "{context}: {ack:?} but {r:?}");
                assert!(!matches!(r.status, RunStatus::Pending | RunStatus::Assigned), "{context}: {ack:?} but {r:?}");
            }
            Ack::Output { run, seq } => {
                let r = run_of(run).await;
                let events = store.events_since(&r.task_id, 0, 100_000).await.expect("events");
                let found = events
                    .iter()
                    .any(|e| matches!(&e.kind, TaskEventKind::Output(c) if &c.run_id == run && c.seq == *seq));
                assert!(found, "{context}: {ack:?} lost");
            }
            Ack::Finished { run, lease, status } => {
                let r = run_of(run).await;
                assert_eq!((r.lease, r.status), (*lease, *status), "{context}: {ack:?} but {r:?}");
            }
            Ack::Lost { run, lease } => {
                let r = run_of(run).await;
                assert_eq!((r.lease, r.status), (*lease, RunStatus::Failed), "{context}: {ack:?} but {r:?}");
            }
            Ack::Cancelled { task } => {
                let t = store.get_task(task).await.expect("cancelled task");
                assert_eq!(t.status, TaskStatus::Cancelled, "{context}: {ack:?}");
            }
        }
    }

    // Every Task, acknowledged or not, is consistent.
    let far = Timestamp(i64::MAX);
    let pending: BTreeSet<RunId> =
        store.pending_runs(far, 1_000_000).await.expect("pending").into_iter().map(|r| r.id).collect();
    let mut active = BTreeSet::new();
    for tag in tags {
        for n in 0..WRITERS {
            let worker: WorkerId = format!("w-{tag}-{n}").parse().expect("worker id");
            for run in store.active_runs_of_worker(&worker).await.expect("active") {
                assert_eq!(run.worker_id.as_ref(), Some(&worker));
                active.insert(run.id);
            }
        }
    }
    for task in all_tasks(store).await {
        if let Err(e) = check_invariants(store, &task.id).await {
            panic!("{context}: {e}");
        }
        for run in store.list_runs(&task.id).await.expect("runs") {
            // The indexes agree with the records.
            assert_eq!(
                pending.contains(&run.id),
                run.status == RunStatus::Pending,
                "{context}: pending index vs {run:?}"
            );
            assert_eq!(active.contains(&run.id), run.status.is_active(), "{context}: worker index vs {run:?}");
        }
        // The idempotency index names this Task for its key.
        let again = Task::new(TaskId::generate(), task.spec.clone(), task.created_at, usize::MAX).expect("task");
        match store.create_task(again).await {
            Ok(CreateOutcome::Existing(t)) => assert_eq!(t.id, task.id, "{context}"),
            other => panic!("{context}: idempotent repeat of {} gave {other:?}", task.id),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let rounds = std::env::var("TASKRUN_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_ROUNDS);
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let mut rng = XorShift::new(seed);
    let started = Instant::now();
    let mut dir = None;
    let mut acks = Vec::new();
    let mut tags = Vec::new();
    let mut total = 0;
    let mut unopenable = 0;
    let mut fresh = false;
    for round in 0..rounds {
        if round % ROUNDS_PER_DIR == 0 || std::mem::take(&mut fresh) {
            dir = Some(tempfile::tempdir().expect("tempdir"));
            acks.clear();
            tags.clear();
        }
        let path = dir.as_ref().expect("dir").path();
        let tag = format!("r{round}");
        let kill_after = Duration::from_millis(10 + rng.below(291));
        let new = run_child(path, &tag, rng.next_u64(), kill_after);
        total += new.len();
        acks.extend(new);
        tags.push(tag);

        let context = format!("seed {seed} round {round} (killed after {kill_after:?})");
        let store = match SledStore::open(path, StoreConfig::default()) {
            Ok(store) => store,
            Err(e) if e.to_string().contains("Read corrupted data") => {
                // sled's own recovery gave up (see the module docs).
                eprintln!("crash test: {context}: sled cannot reopen the directory: {e}");
                unopenable += 1;
                fresh = true;
                continue;
            }
            Err(e) => panic!("{context}: reopen: {e}"),
        };
        verify(&store, &acks, &tags, &context).await;
        drop(store);
    }
    eprintln!(
        "crash test: {rounds} rounds, {total} acknowledged writes verified, {unopenable} rounds sled could not reopen, {:.1?}",
        started.elapsed()
    );
    assert!(total > rounds, "the child acknowledged only {total} writes in {rounds} rounds");
    assert!(
        unopenable * 10 <= rounds.max(10) * MAX_UNOPENABLE_PER_TEN,
        "sled could not reopen after {unopenable} of {rounds} kills"
    );
}
