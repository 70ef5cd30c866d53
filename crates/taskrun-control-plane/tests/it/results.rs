//! A GetTask reply stays under gRPC's usual 4 MiB message limit however
//! large a Task's results are: the Runs' results that do not fit are left
//! out and said to be, and GetTask with a Run's id fetches one of them.

use std::time::Duration;

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::GET_TASK_BYTES;
use taskrun_control_plane::config::StoreKind;
use taskrun_proto::pb;
use taskrun_testkit::{Cluster, spec};
use taskrun_worker::model::{BackendConfig, ProviderKind};
use tonic::Code;

/// gRPC's default limit on a message a client reads.
const CLIENT_LIMIT: usize = 4 << 20;

/// A fan-out Task whose four Runs each return 700 KiB (`chat` on the echo
/// ModelBackend returns its prompt): with its input and its own result,
/// the Task and every result would make a 4.2 MiB reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_task_leaves_out_the_results_that_do_not_fit() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("chat", "1.0.0", artifacts::CHAT).await;
    let mut config = cluster.worker_config("w1");
    config.model_backends = vec![BackendConfig::new("default", ProviderKind::Echo)];
    cluster.add_worker(config).await;

    let word = "x".repeat(700 << 10);
    let mut spec = spec("chat", &format!(r#"{{"prompt":"{word}"}}"#));
    spec.fan_out = Some(4);
    spec.limits = Some(pb::TaskLimits { memory_limit_bytes: Some(200 << 20), ..Default::default() });
    let task_id = cluster.create(spec).await;
    // Polled with a client that reads at most 4 MiB, as most do.
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(60)).await;
    let task = got.task.clone().expect("task");
    assert_eq!(task.status, i32::from(pb::TaskStatus::Completed), "{:?}", got.runs);
    let result = task.result_json.clone().expect("the Task's result is always sent");
    assert!(result.contains(&word), "{} bytes", result.len());

    // Every shard returned the same result as the Task (shard 0's). The
    // Runs come in order, each with its result while the reply stays
    // within its budget; the others without it, their size said.
    let task_bytes = taskrun_proto::encoded_len(&task);
    let with_result =
        |run: &pb::Run| pb::Run { result_json: Some(result.clone()), result_omitted_bytes: None, ..run.clone() };
    let whole: usize = got.runs.iter().map(|r| taskrun_proto::encoded_len(&with_result(r))).sum();
    assert!(task_bytes + whole > CLIENT_LIMIT, "the test's results are too small to matter: {}", task_bytes + whole);
    assert!(taskrun_proto::encoded_len(&got) < CLIENT_LIMIT);
    let sent: Vec<(i32, Option<usize>, Option<i64>)> =
        got.runs.iter().map(|r| (r.shard, r.result_json.as_ref().map(String::len), r.result_omitted_bytes)).collect();
    let n = result.len();
    let omitted = Some(n as i64);
    assert_eq!(sent, [(0, Some(n), None), (1, Some(n), None), (2, None, omitted), (3, None, omitted)]);
    assert!(task_bytes + 2 * taskrun_proto::encoded_len(&got.runs[0]) <= GET_TASK_BYTES);
    for run in &got.runs[..2] {
        assert_eq!(run.result_json.as_ref(), Some(&result));
    }

    // Each Run left out comes whole when asked for by its id.
    let mut client = cluster.tasks().await;
    for run in &got.runs[2..] {
        let request = pb::GetTaskRequest { task_id: task_id.clone(), run_id: Some(run.run_id.clone()) };
        let one = client.get_task(request).await.expect("get one run").into_inner();
        assert_eq!(one.task, Some(task.clone()));
        assert_eq!(one.runs, [with_result(run)]);
    }
    // "" is no Run id: every Run, as without one.
    let request = pb::GetTaskRequest { task_id: task_id.clone(), run_id: Some(String::new()) };
    assert_eq!(client.get_task(request).await.expect("get").into_inner(), got);

    let other = cluster.create(taskrun_testkit::spec("chat", r#"{"prompt":"hi"}"#)).await;
    let cases = [
        (format!("{other}.0.1"), Code::NotFound, format!("run {other}.0.1 is not a Run of task {task_id}")),
        (format!("{task_id}.0.2"), Code::NotFound, format!("{task_id}.0.2")),
        (format!("{task_id}.4.1"), Code::NotFound, format!("{task_id}.4.1")),
        ("not a run".to_owned(), Code::InvalidArgument, "invalid run_id".to_owned()),
    ];
    for (run_id, code, message) in cases {
        let request = pb::GetTaskRequest { task_id: task_id.clone(), run_id: Some(run_id.clone()) };
        let err = client.get_task(request).await.expect_err(&run_id);
        assert_eq!(err.code(), code, "{run_id}: {err:?}");
        assert!(err.message().contains(&message), "{run_id}: {:?} lacks {message:?}", err.message());
    }
}
