//! CreateTask → COMPLETED throughput, and dispatch latency (CreateTask sent
//! → RunAssignment received by a Worker) at a fixed offered rate.
//!
//! Release build, loopback gRPC, the durable sled store, the trivial `echo`
//! agent, 4 Workers — all in this one process:
//!
//! ```sh
//! cargo bench -p taskrun-control-plane --bench dispatch
//! ```
//!
//! Environment: TASKRUN_BENCH_TASKS (throughput run, default 20000),
//! TASKRUN_BENCH_RATE (tasks/s for the latency run, default 1000),
//! TASKRUN_BENCH_SECONDS (latency run length, default 5),
//! TASKRUN_BENCH_CLIENTS (concurrent CreateTask callers in the throughput
//! run, default 128), TASKRUN_BENCH_THREADS (tokio worker threads, default
//! one per core).
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_core::TaskId;
use taskrun_testkit::{Cluster, spec};
use taskrun_worker::Worker;

// The allocator the control plane and Worker binaries use.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WORKERS: usize = 4;
const SLOTS: u32 = 64;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn finished(workers: &[Worker]) -> u64 {
    workers.iter().map(|w| w.metrics().runs_finished).sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn wait_finished(workers: &[Worker], target: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while finished(workers) < target {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

fn main() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Ok(threads) = std::env::var("TASKRUN_BENCH_THREADS") {
        builder.worker_threads(threads.parse().expect("TASKRUN_BENCH_THREADS: a number"));
    }
    let runtime = builder.enable_all().build().expect("tokio runtime");
    runtime.block_on(bench());
}

async fn bench() {
    // TASKRUN_BENCH_STORE=memory runs the same on the in-memory store, to
    // tell the store's share from the rest.
    let store = match std::env::var("TASKRUN_BENCH_STORE").as_deref() {
        Ok("memory") => StoreKind::Memory,
        _ => StoreKind::Sled,
    };
    println!("store: {store:?}, {WORKERS} workers x {SLOTS} slots");
    let mut cluster = Cluster::start(store).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let arrivals: Arc<Mutex<HashMap<TaskId, Instant>>> = Arc::default();
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let mut config = cluster.worker_config(&format!("bench-{i}"));
        config.slots = SLOTS;
        let worker = cluster.add_worker(config).await;
        let arrivals = Arc::clone(&arrivals);
        worker.set_assignment_probe(Arc::new(move |task, _run| {
            if let Ok(mut a) = arrivals.lock() {
                a.insert(task.clone(), Instant::now());
            }
        }));
        workers.push(worker);
    }

    // Warm up: compile the agent on every Worker, fill caches.
    let warm = 400;
    let clients = env("TASKRUN_BENCH_CLIENTS", 128) as usize;
    create_many(&cluster, warm, clients).await;
    assert!(wait_finished(&workers, warm, Duration::from_secs(120)).await, "warm-up did not finish");

    // Throughput: N Tasks created by `clients` concurrent callers, until every
    // Run has been reported finished by its Worker.
    let n = env("TASKRUN_BENCH_TASKS", 20_000);
    let base = finished(&workers);
    let start = Instant::now();
    let progress = {
        let workers = workers.clone();
        tokio::spawn(async move {
            let mut last = finished(&workers);
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let now = finished(&workers);
                println!("  progress: {:.0} tasks/s over the last 2 s", (now - last) as f64 / 2.0);
                last = now;
            }
        })
    };
    create_many(&cluster, n, clients).await;
    let created = start.elapsed();
    let done = wait_finished(&workers, base + n, Duration::from_secs(600)).await;
    let elapsed = start.elapsed();
    progress.abort();
    // A Worker counts a Run finished before its report reaches the store:
    // give the last reports a moment before counting.
    let expected = (warm + n) as usize;
    let mut completed = count_completed(&cluster).await;
    let until = Instant::now() + Duration::from_secs(10);
    while completed < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        completed = count_completed(&cluster).await;
    }
    println!("throughput: {n} tasks created in {created:.2?}, all finished in {elapsed:.2?} (finished: {done})");
    println!(
        "throughput: {:.0} tasks/s CreateTask -> COMPLETED ({completed} tasks COMPLETED in the store)",
        n as f64 / elapsed.as_secs_f64()
    );

    // Latency: an open-loop offered rate; dispatch latency = CreateTask sent
    // -> RunAssignment received by the Worker.
    let rate = env("TASKRUN_BENCH_RATE", 1000);
    let seconds = env("TASKRUN_BENCH_SECONDS", 5);
    let total = rate * seconds;
    let starts: Arc<Mutex<HashMap<TaskId, Instant>>> = Arc::default();
    let base = finished(&workers);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let shared = cluster.tasks().await;
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = t0 + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let mut client = shared.clone();
        let starts = Arc::clone(&starts);
        handles.push(tokio::spawn(async move {
            let sent = Instant::now();
            let request = taskrun_proto::pb::CreateTaskRequest { spec: Some(spec("echo", &i.to_string())) };
            let created = client.create_task(request).await.expect("create");
            let id: TaskId = created.into_inner().task.expect("task").task_id.parse().expect("task id");
            starts.lock().expect("starts").insert(id, sent);
        }));
    }
    for h in handles {
        h.await.expect("create task");
    }
    let offered = t0.elapsed();
    assert!(wait_finished(&workers, base + total, Duration::from_secs(120)).await, "latency run did not finish");
    let starts = starts.lock().expect("starts").clone();
    let arrivals = arrivals.lock().expect("arrivals").clone();
    let mut measured: Vec<(Duration, Duration)> = starts
        .iter()
        .filter_map(|(id, sent)| {
            arrivals.get(id).map(|got| (got.saturating_duration_since(*sent), sent.saturating_duration_since(t0)))
        })
        .collect();
    measured.sort();
    let mut latencies: Vec<Duration> = measured.iter().map(|(latency, _)| *latency).collect();
    latencies.sort();
    println!(
        "latency at {rate} tasks/s offered ({total} tasks over {offered:.2?}): dispatch p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?} ({} measured)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        latencies.len()
    );
    // Where the slowest ones were sent, to tell a stall from a spread.
    let slowest: Vec<String> =
        measured.iter().rev().take(3).map(|(latency, at)| format!("{latency:.2?} (sent at +{at:.0?})")).collect();
    println!("slowest dispatches: {}", slowest.join(", "));
    if let Some(server) = &cluster.server {
        let placed = server.control_plane().placement_stats();
        println!(
            "placement: {} Runs placed at creation, {} by the scheduler loop",
            placed.at_creation, placed.by_scheduler
        );
    }
    cluster.stop_server().await;
}

async fn create_many(cluster: &Cluster, n: u64, concurrency: usize) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut handles = Vec::new();
    // A few connections, many requests in flight on each (HTTP/2).
    let mut clients = Vec::new();
    for _ in 0..env("TASKRUN_BENCH_CONNECTIONS", 4) {
        clients.push(cluster.tasks().await);
    }
    for c in 0..concurrency {
        let mut client = clients[c % clients.len()].clone();
        let next = Arc::clone(&next);
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let request = taskrun_proto::pb::CreateTaskRequest { spec: Some(spec("echo", &i.to_string())) };
                client.create_task(request).await.expect("create");
            }
        }));
    }
    for h in handles {
        h.await.expect("creator");
    }
}

async fn count_completed(cluster: &Cluster) -> usize {
    let mut client = cluster.tasks().await;
    let mut token = String::new();
    let mut count = 0;
    loop {
        let page = client
            .list_tasks(taskrun_proto::pb::ListTasksRequest {
                statuses: vec![taskrun_proto::pb::TaskStatus::Completed.into()],
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        count += page.tasks.len();
        if page.next_page_token.is_empty() {
            return count;
        }
        token = page.next_page_token;
    }
}
