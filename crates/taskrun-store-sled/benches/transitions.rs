//! Durable Run transitions per second on `SledStore`.
//!
//! `cargo bench -p taskrun-store-sled --bench transitions`
//!
//! For 1, 16 and 256 concurrent writers: creates fresh Tasks (one Run each),
//! then times `assign_run` on every Run, then `finish_run` (COMPLETED, which
//! also completes the Task). Every call counts only once acknowledged, i.e.
//! flushed to disk. Prints a Markdown table.
//! `TASKRUN_BENCH_OPS=n` sets the transitions per measurement (default
//! 40,000, a tenth of it for one writer); `TASKRUN_BENCH_WRITERS=1,16,256`
//! the writer counts.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskrun_core::{AgentRef, Json, RunId, RunOutcome, Task, TaskId, TaskSpec, Timestamp, WorkerId};
use taskrun_store::{RunStore, StoreConfig, TaskStore};
use taskrun_store_sled::SledStore;

const T0: Timestamp = Timestamp(1_700_000_000_000);

struct Measured {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    flushes: u64,
    acks: u64,
    transactions: u64,
    changes: u64,
}

async fn timed<F, Fut>(writers: usize, work: Vec<Vec<RunId>>, store: &Arc<SledStore>, op: F) -> Measured
where
    F: Fn(Arc<SledStore>, RunId) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    assert_eq!(work.len(), writers);
    let before = store.commit_stats();
    let started = Instant::now();
    let mut handles = Vec::new();
    for runs in work {
        let store = store.clone();
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(runs.len());
            for run in runs {
                let t = Instant::now();
                op(store.clone(), run).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await.expect("writer"));
    }
    let elapsed = started.elapsed();
    let after = store.commit_stats();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Measured {
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        flushes: after.flushes - before.flushes,
        acks: after.acknowledged - before.acknowledged,
        transactions: after.transactions - before.transactions,
        changes: after.changes - before.changes,
    }
}

async fn bench(writers: usize, ops: usize) -> (Measured, Measured) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path(), StoreConfig::default()).expect("open"));
    let per_writer = ops / writers;

    // Fresh Tasks, one Run each, created concurrently (not timed).
    let mut handles = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut runs = Vec::with_capacity(per_writer);
            for _ in 0..per_writer {
                let spec = TaskSpec::new(
                    AgentRef::latest("bench".parse().expect("name")),
                    Json::parse("input", r#"{"prompt":"summarize this"}"#).expect("json"),
                );
                let task = Task::new(TaskId::generate(), spec, T0, usize::MAX).expect("task");
                let task = store.create_task(task).await.expect("create").into_inner();
                let run = store.list_runs(&task.id).await.expect("runs").remove(0);
                runs.push(run.id);
            }
            runs
        }));
    }
    let mut work = Vec::new();
    for h in handles {
        work.push(h.await.expect("setup"));
    }

    let assign = timed(writers, work.clone(), &store, |store, run| async move {
        let worker: WorkerId = "worker-bench".parse().expect("worker");
        store.assign_run(&run, &worker, 0, T0).await.expect("assign");
    })
    .await;
    let finish = timed(writers, work, &store, |store, run| async move {
        let result = Json::parse("result", r#"{"summary":"ok"}"#).expect("json");
        store.finish_run(&run, 1, RunOutcome::Completed { result }, T0).await.expect("finish");
    })
    .await;
    (assign, finish)
}

fn main() {
    let ops: usize = std::env::var("TASKRUN_BENCH_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(40_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("| writers | transition | transitions/s | p50 | p99 | flushes | writes/flush | changes/transaction |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let counts: Vec<usize> = std::env::var("TASKRUN_BENCH_WRITERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 256]);
    for writers in counts {
        let ops = if writers == 1 { ops / 10 } else { ops };
        let (assign, finish) = runtime.block_on(bench(writers, ops));
        for (name, m) in [("assign_run", assign), ("finish_run", finish)] {
            println!(
                "| {writers} | {name} | {:.0} | {:.2?} | {:.2?} | {} | {:.1} | {:.1} |",
                m.per_sec,
                m.p50,
                m.p99,
                m.flushes,
                m.acks as f64 / m.flushes.max(1) as f64,
                m.changes as f64 / m.transactions.max(1) as f64
            );
        }
    }
}
