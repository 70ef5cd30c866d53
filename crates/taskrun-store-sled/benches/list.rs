//! ListTasks on `SledStore` with a long history: how long a first page
//! takes when most Tasks have ended.
//!
//! `cargo bench -p taskrun-store-sled --bench list`
//!
//! Fills a store with `TASKRUN_BENCH_ENDED` (default 50,000) COMPLETED
//! Tasks, then adds `TASKRUN_BENCH_OPEN` (default 20) PENDING ones, and
//! times a first page (100) of: every Task; the PENDING ones; the FAILED
//! ones (there are none, so the whole history is read, 10,000 Tasks per
//! call at most); one agent's (likewise none). Prints a Markdown table of
//! medians and maxima over 20 calls each, and what following the page
//! tokens to the end takes: how many calls, and their total time.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskrun_core::{AgentRef, Json, RunOutcome, Task, TaskId, TaskSpec, TaskStatus, Timestamp, WorkerId};
use taskrun_store::{PageRequest, RunStore, StoreConfig, TaskFilter, TaskStore};
use taskrun_store_sled::SledStore;

const T0: Timestamp = Timestamp(1_700_000_000_000);
const WRITERS: usize = 64;
const CALLS: usize = 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn spec() -> TaskSpec {
    TaskSpec::new(
        AgentRef::latest("bench".parse().expect("name")),
        Json::parse("input", r#"{"prompt":"summarize this"}"#).expect("json"),
    )
}

async fn create(store: &SledStore) -> Task {
    let task = Task::new(TaskId::generate(), spec(), T0, usize::MAX).expect("task");
    store.create_task(task).await.expect("create").into_inner()
}

/// `n` Tasks created and completed by [`WRITERS`] concurrent writers.
async fn fill(store: &Arc<SledStore>, n: usize) {
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let count = n / WRITERS + usize::from(w < n % WRITERS);
        handles.push(tokio::spawn(async move {
            let worker: WorkerId = "worker-bench".parse().expect("worker");
            for _ in 0..count {
                let task = create(&store).await;
                let run = store.list_runs(&task.id).await.expect("runs").remove(0);
                let lease = store.assign_run(&run.id, &worker, 0, T0).await.expect("assign").run.lease;
                let result = Json::parse("result", r#"{"summary":"ok"}"#).expect("json");
                store.finish_run(&run.id, lease, RunOutcome::Completed { result }, T0).await.expect("finish");
            }
        }));
    }
    for h in handles {
        h.await.expect("writer");
    }
}

async fn timed(store: &SledStore, filter: &TaskFilter) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(CALLS);
    let mut listed = 0;
    for _ in 0..CALLS {
        let t = Instant::now();
        let page = store.list_tasks(filter, &PageRequest::first(100)).await.expect("list");
        times.push(t.elapsed());
        listed = page.items.len();
    }
    times.sort();
    (times[CALLS / 2], times[CALLS - 1], listed)
}

/// Follows the page tokens to the end: (calls, total time, Tasks listed).
async fn walked(store: &SledStore, filter: &TaskFilter) -> (usize, Duration, usize) {
    let (mut calls, mut listed, mut token) = (0, 0, None);
    let t = Instant::now();
    loop {
        let page = store.list_tasks(filter, &PageRequest { page_size: 100, page_token: token }).await.expect("list");
        calls += 1;
        listed += page.items.len();
        token = page.next_page_token;
        if token.is_none() {
            return (calls, t.elapsed(), listed);
        }
    }
}

fn main() {
    let ended = env("TASKRUN_BENCH_ENDED", 50_000);
    let open = env("TASKRUN_BENCH_OPEN", 20);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).expect("open"));
        let started = Instant::now();
        fill(&store, ended).await;
        for _ in 0..open {
            create(&store).await;
        }
        println!("{ended} COMPLETED and {open} PENDING Tasks stored in {:.1?}", started.elapsed());
        let status = |s: TaskStatus| TaskFilter { statuses: vec![s], ..TaskFilter::default() };
        let cases = [
            ("every Task", TaskFilter::default()),
            ("PENDING", status(TaskStatus::Pending)),
            ("FAILED (none)", status(TaskStatus::Failed)),
            (
                "agent `other` (none)",
                TaskFilter { agent: Some("other".parse().expect("name")), ..TaskFilter::default() },
            ),
        ];
        println!("| first page of | Tasks listed | median | max | every page: calls | Tasks | total |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, filter) in cases {
            let (median, max, listed) = timed(&store, &filter).await;
            let (calls, total, all) = walked(&store, &filter).await;
            println!("| {name} | {listed} | {median:.2?} | {max:.2?} | {calls} | {all} | {total:.2?} |");
        }
    });
}
