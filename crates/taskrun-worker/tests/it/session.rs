//! The Worker's session with a real control plane over real gRPC
//! (taskrun-testkit's Cluster): what it sends must always fit the
//! RunService message limit, and one Run's oversized result or output must
//! never cost the other Runs on the Worker their session.

use std::time::{Duration, Instant};

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_proto::pb;
use taskrun_testkit::{Cluster, TaskClient, spec};
use taskrun_worker::WorkerConfig;
use taskrun_worker::model::{BackendConfig, ProviderKind};
use tokio_stream::StreamExt;

/// tonic's default limit on a received message, which RunService used to
/// keep: everything below is made to be larger than it.
const OLD_LIMIT: usize = 4 << 20;

/// A cluster whose control plane takes Task inputs and keeps Run output of
/// up to 8 MiB, so that a Run can carry more than [`OLD_LIMIT`] each way.
async fn roomy_cluster() -> Cluster {
    let mut cluster = Cluster::start(StoreKind::Memory).await;
    cluster.stop_server().await;
    cluster.config.limits.max_input_bytes = 8 << 20;
    cluster.config.limits.max_output_bytes_per_run = 8 << 20;
    cluster.start_server().await;
    for (name, path) in [("chat", artifacts::CHAT), ("sleep", artifacts::HOSTILE_SLEEP), ("echo", artifacts::ECHO)] {
        cluster.publish(name, "1.0.0", path).await;
    }
    cluster
}

/// A Worker config with the `echo` ModelBackend (for `chat`).
fn worker_config(cluster: &Cluster, id: &str) -> WorkerConfig {
    let mut config = cluster.worker_config(id);
    config.model_backends = vec![BackendConfig::new("default", ProviderKind::Echo)];
    config
}

/// A TaskService client that reads replies as large as these tests make
/// (a GetTask reply carries the Task's input and results).
async fn tasks(cluster: &Cluster) -> TaskClient {
    cluster.tasks().await.max_decoding_message_size(64 << 20)
}

async fn create(tasks: &mut TaskClient, spec: pb::TaskSpec) -> String {
    let created = tasks.create_task(pb::CreateTaskRequest { spec: Some(spec) }).await.expect("create");
    created.into_inner().task.expect("task").task_id
}

async fn get(tasks: &mut TaskClient, task_id: &str) -> pb::GetTaskResponse {
    taskrun_testkit::get_task(tasks, task_id).await
}

fn status(got: &pb::GetTaskResponse) -> pb::TaskStatus {
    pb::TaskStatus::try_from(got.task.as_ref().expect("task").status).expect("task status")
}

async fn wait_terminal(tasks: &mut TaskClient, task_id: &str, within: Duration) -> pb::GetTaskResponse {
    let deadline = Instant::now() + within;
    loop {
        let got = get(tasks, task_id).await;
        if matches!(status(&got), pb::TaskStatus::Completed | pb::TaskStatus::Failed | pb::TaskStatus::Cancelled) {
            return got;
        }
        assert!(Instant::now() < deadline, "task {task_id} still {:?} after {within:?}", status(&got));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `chat` asked to repeat one word of `bytes` bytes: the echo ModelBackend
/// answers with that word as ONE token, which the agent emits as one chunk
/// and returns inside its result.
fn one_big_word(bytes: usize) -> (String, pb::TaskSpec) {
    let word = "x".repeat(bytes);
    let mut spec = spec("chat", &serde_json::json!({ "prompt": word }).to_string());
    spec.retry = Some(pb::RetryPolicy { max_attempts: Some(1), initial_backoff_ms: Some(0), max_backoff_ms: Some(0) });
    spec.limits = Some(pb::TaskLimits {
        memory_limit_bytes: Some(200 << 20),
        output_limit_bytes: Some(8 << 20),
        ..Default::default()
    });
    (word, spec)
}

/// A `sleep` Run that is still going when the test is done with the Run
/// beside it: the Worker's other Runs must not notice that one.
async fn neighbour(tasks: &mut TaskClient) -> String {
    let task_id = create(tasks, spec("sleep", r#"{"ms": 60000}"#)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(tasks, &task_id).await.runs.first().is_none_or(|r| r.status != i32::from(pb::RunStatus::Running)) {
        assert!(Instant::now() < deadline, "the neighbouring Run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task_id
}

/// The neighbour is still running on its first attempt and lease (it was
/// not failed over), and a new Run on the same Worker completes.
async fn worker_unharmed(tasks: &mut TaskClient, neighbour: &str) {
    let got = get(tasks, neighbour).await;
    assert_eq!(got.runs.len(), 1, "the neighbour was not retried: {:?}", got.runs);
    let run = &got.runs[0];
    assert_eq!((run.status, run.attempt, run.lease), (i32::from(pb::RunStatus::Running), 1, 1), "{run:?}");

    let task_id = create(tasks, spec("echo", "[1,2,3]")).await;
    let got = wait_terminal(tasks, &task_id, Duration::from_secs(20)).await;
    assert_eq!(status(&got), pb::TaskStatus::Completed, "{:?}", got.runs);
    assert_eq!(got.runs[0].worker_id.as_deref(), Some("w1"));
}

/// A result larger than the Worker's `sandbox.max_result_bytes` fails its
/// Run with a message naming the limit; before, it was sent anyway, the
/// control plane could not read it and dropped the Worker with every Run
/// on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_fails_only_its_run() {
    let mut cluster = roomy_cluster().await;
    let mut config = worker_config(&cluster, "w1");
    config.sandbox.max_output_bytes = 8 << 20;
    let worker = cluster.add_worker(config).await;
    let mut tasks = tasks(&cluster).await;
    let neighbour = neighbour(&mut tasks).await;

    let (_, spec) = one_big_word(OLD_LIMIT + (1 << 20));
    let task_id = create(&mut tasks, spec).await;
    let got = wait_terminal(&mut tasks, &task_id, Duration::from_secs(60)).await;
    assert_eq!(status(&got), pb::TaskStatus::Failed);
    assert_eq!(got.runs.len(), 1);
    let error = got.runs[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("exceeds the result limit of 1048576 bytes"), "{error}");
    assert!(error.contains("sandbox.max_result_bytes"), "{error}");

    worker_unharmed(&mut tasks, &neighbour).await;
    assert_eq!(worker.metrics().sessions, 1, "the Worker kept its session");
}

/// One emitted chunk and a result each larger than tonic's default 4 MiB
/// travel: the chunk in pieces, the result in a terminal report the control
/// plane's RunService is set to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_and_a_result_over_the_old_limit_get_through() {
    let mut cluster = roomy_cluster().await;
    let mut config = worker_config(&cluster, "w1");
    config.sandbox.max_output_bytes = 8 << 20;
    config.sandbox.max_result_bytes = 8 << 20;
    let worker = cluster.add_worker(config).await;
    let mut tasks = tasks(&cluster).await;
    let neighbour = neighbour(&mut tasks).await;

    let (word, spec) = one_big_word(OLD_LIMIT + (1 << 20));
    let task_id = create(&mut tasks, spec).await;
    let mut watch = tasks
        .watch_task(pb::WatchTaskRequest { task_id: task_id.clone(), after_cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(60), watch.next()).await.expect("watch stalled") {
        if let Some(pb::task_event::Kind::Output(chunk)) = item.expect("event").event.expect("event").kind {
            chunks.push(chunk);
        }
    }
    let got = wait_terminal(&mut tasks, &task_id, Duration::from_secs(5)).await;
    assert_eq!(status(&got), pb::TaskStatus::Completed, "{:?}", got.runs);
    let result: serde_json::Value =
        serde_json::from_str(got.task.as_ref().and_then(|t| t.result_json.as_deref()).expect("result")).expect("json");
    assert_eq!(result, serde_json::json!({ "text": word, "tokens": 1 }));

    // The one emitted chunk arrived whole, in pieces numbered 1, 2, 3, …
    // none larger than the Worker sends.
    let seqs: Vec<i64> = chunks.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (1..=chunks.len() as i64).collect::<Vec<_>>());
    assert!(chunks.len() > 1, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.data.len() <= taskrun_worker::daemon::MAX_OUTPUT_CHUNK_BYTES));
    assert!(chunks.iter().map(|c| c.data.as_str()).eq(word.as_bytes().chunks(1 << 20).map(|c| {
        // `word` is ASCII: its pieces are whole characters.
        std::str::from_utf8(c).expect("ascii")
    })));

    worker_unharmed(&mut tasks, &neighbour).await;
    assert_eq!(worker.metrics().sessions, 1, "the Worker kept its session");
}

/// A Task's output and model-call limits are capped by the Worker's
/// `sandbox.max_output_bytes` and `sandbox.max_model_calls`, as its memory
/// limit is by `sandbox.max_memory_mb`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_caps_what_a_task_asks_for() {
    let mut cluster = roomy_cluster().await;
    cluster.publish("flood", "1.0.0", artifacts::HOSTILE_OUTPUT_FLOOD).await;
    let mut config = worker_config(&cluster, "w1");
    config.sandbox.max_output_bytes = 100_000;
    config.sandbox.default_output_bytes = 100_000;
    config.sandbox.default_model_calls = 0;
    config.sandbox.max_model_calls = 0;
    cluster.add_worker(config).await;
    let mut tasks = tasks(&cluster).await;
    let greedy = |mut spec: pb::TaskSpec| {
        spec.retry = Some(pb::RetryPolicy { max_attempts: Some(1), ..Default::default() });
        spec.limits = Some(pb::TaskLimits {
            output_limit_bytes: Some(8 << 20),
            max_model_calls: Some(1000),
            ..Default::default()
        });
        spec
    };

    let flood = create(&mut tasks, greedy(spec("flood", r#"{"via":"emit"}"#))).await;
    let got = wait_terminal(&mut tasks, &flood, Duration::from_secs(30)).await;
    assert_eq!(got.runs[0].error.as_deref(), Some("output limit of 100000 bytes exceeded"));

    let chat = create(&mut tasks, greedy(spec("chat", r#"{"prompt":"hello"}"#))).await;
    let got = wait_terminal(&mut tasks, &chat, Duration::from_secs(30)).await;
    assert_eq!(status(&got), pb::TaskStatus::Failed);
    let error = got.runs[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("model call limit exceeded"), "{error}");
}
