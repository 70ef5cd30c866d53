//! Requests at the edges of what TaskService accepts: long cancel reasons,
//! pages of large Tasks, watches that start at a finished Task's end.

use std::time::Duration;

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_control_plane::{LIST_PAGE_BYTES, MAX_CANCEL_REASON_BYTES};
use taskrun_core::TaskStatus;
use taskrun_proto::pb;
use tokio_stream::StreamExt;
use tonic::Code;

use taskrun_testkit::{Cluster, spec, status_of, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reason_over_its_cap_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    // No Worker: the Task stays PENDING.
    let task_id = cluster.create(spec("echo", "{}")).await;
    let mut client = cluster.tasks().await;
    let get = |mut client: taskrun_testkit::TaskClient, task_id: String| async move {
        client.get_task(pb::GetTaskRequest { task_id, run_id: None }).await.expect("get").into_inner()
    };
    let before = get(client.clone(), task_id.clone()).await;

    let long = "r".repeat(MAX_CANCEL_REASON_BYTES + 1);
    let err = client.cancel_task(pb::CancelTaskRequest { task_id: task_id.clone(), reason: long }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(&format!("at most {MAX_CANCEL_REASON_BYTES}")), "{}", err.message());
    assert_eq!(get(client.clone(), task_id.clone()).await, before, "the refused cancel changed nothing");

    let longest = "r".repeat(MAX_CANCEL_REASON_BYTES);
    let cancelled = client
        .cancel_task(pb::CancelTaskRequest { task_id: task_id.clone(), reason: longest.clone() })
        .await
        .expect("a reason at the cap is accepted")
        .into_inner();
    assert_eq!(cancelled.task.and_then(|t| t.error), Some(longest));
    assert_eq!(status_of(&get(client, task_id).await), TaskStatus::Cancelled);
}

/// Tasks of nearly 1 MiB each: a page of 100 would be several times gRPC's
/// usual 4 MiB message limit. Pages stop at the byte budget instead, and
/// paging on still lists every Task once, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_large_tasks_stay_readable_by_any_client() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let big = format!("\"{}\"", "x".repeat(900 * 1024));
    let mut created = Vec::new();
    for _ in 0..6 {
        created.push(cluster.create(spec("echo", &big)).await);
    }
    // This client keeps tonic's default 4 MiB decoding limit.
    let mut client = pb::task_service_client::TaskServiceClient::new(cluster.channel().await);
    let (mut listed, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let request = pb::ListTasksRequest { page_size: 100, page_token: token.clone(), ..Default::default() };
        let page = client.list_tasks(request).await.expect("a page fits the client's limit").into_inner();
        let bytes: usize = page.tasks.iter().map(taskrun_proto::encoded_len).sum();
        assert!(!page.tasks.is_empty() && bytes <= LIST_PAGE_BYTES, "{} tasks, {bytes} bytes", page.tasks.len());
        listed.extend(page.tasks.into_iter().filter_map(|t| t.spec.map(|_| t.task_id)));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    created.reverse();
    assert_eq!(listed, created, "every Task once, newest first");
    assert!(pages >= 2, "{pages} page(s)");
}

/// A client that has seen a finished Task's last event and watches again
/// from its cursor (or from past it) gets a stream that ends at once; the
/// control plane forgets the subscription when the stream goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_a_finished_task_from_its_end_ends_at_once() {
    let mut cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    cluster.add_worker(cluster.worker_config("w1")).await;
    let task_id = cluster.create(spec("echo", r#""hi""#)).await;
    let got = cluster.wait_terminal(&task_id, Duration::from_secs(30)).await;
    assert_eq!(status_of(&got), TaskStatus::Completed);

    let watch = |after_cursor: i64| {
        let (cluster, task_id) = (&cluster, task_id.clone());
        async move {
            let stream = cluster
                .tasks()
                .await
                .watch_task(pb::WatchTaskRequest { task_id, after_cursor })
                .await
                .expect("watch")
                .into_inner();
            let events = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>()).await;
            let events = events.expect("the stream of a finished Task ends");
            events.into_iter().map(|e| e.expect("event").event.expect("event").cursor).collect::<Vec<i64>>()
        }
    };
    let all = watch(0).await;
    let last = *all.last().expect("events");
    assert_eq!(watch(last - 1).await, vec![last]);
    assert_eq!(watch(last).await, Vec::<i64>::new());
    assert_eq!(watch(last + 100).await, Vec::<i64>::new());

    let cp = cluster.server.as_ref().expect("server").control_plane().clone();
    wait_for("watch subscriptions released", Duration::from_secs(10), || cp.watched_tasks() == 0).await;
}

/// A config that cannot work is refused before the control plane creates
/// or locks its data dir.
#[tokio::test]
async fn a_bad_config_leaves_the_data_dir_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    // Plaintext without --insecure: refused.
    let config = taskrun_control_plane::Config {
        data_dir: data_dir.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    let error = taskrun_control_plane::Server::start(config).await.expect_err("refused").to_string();
    assert!(error.contains("TLS serving is not available yet"), "{error}");
    assert!(!data_dir.exists(), "the data dir was created");
}

/// A second control plane on the data dir of a running one is refused with
/// a message that says so.
#[tokio::test]
async fn a_data_dir_in_use_is_refused_saying_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = taskrun_control_plane::Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        transport: taskrun_control_plane::config::TransportConfig { insecure: true },
        ..Default::default()
    };
    let first = taskrun_control_plane::Server::start(config.clone()).await.expect("the first one starts");
    let error = taskrun_control_plane::Server::start(config).await.expect_err("the second is refused").to_string();
    assert!(error.contains("is in use by another process: is another control plane running"), "{error}");
    assert!(!error.contains("Os {"), "{error}");
    drop(first);
}
