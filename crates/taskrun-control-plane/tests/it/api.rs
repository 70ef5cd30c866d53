//! TaskService and AgentService refuse bad requests precisely, and write
//! nothing when they do.

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_proto::pb;
use tonic::Code;

use taskrun_testkit::{Cluster, publish_envelope, publish_signed, spec};

async fn task_count(cluster: &Cluster) -> usize {
    let listed = cluster.tasks().await.list_tasks(pb::ListTasksRequest::default()).await.expect("list");
    listed.into_inner().tasks.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_write_nothing() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut client = cluster.tasks().await;

    let mut oversized = spec("echo", &format!("\"{}\"", "x".repeat(2 << 20)));
    oversized.labels.clear();
    let mut bad_label = spec("echo", "{}");
    bad_label.labels.insert("no spaces".into(), "v".into());
    let mut bad_retry = spec("echo", "{}");
    bad_retry.retry = Some(pb::RetryPolicy { max_attempts: Some(0), ..Default::default() });
    let cases: Vec<(&str, pb::TaskSpec, Code, &str)> = vec![
        ("unknown agent", spec("nope", "{}"), Code::NotFound, "agent nope is not published"),
        ("invalid JSON", spec("echo", "{not json"), Code::InvalidArgument, "input_json"),
        ("empty input", spec("echo", ""), Code::InvalidArgument, "missing spec.input_json"),
        ("oversized input", oversized, Code::InvalidArgument, "larger than the 1048576-byte cap"),
        ("malformed agent name", spec("Not_An_Agent", "{}"), Code::InvalidArgument, "agent.name"),
        ("bad label", bad_label, Code::InvalidArgument, "labels"),
        ("zero attempts", bad_retry, Code::InvalidArgument, "spec.retry.max_attempts out of range: 0"),
    ];
    for (case, spec, code, message) in cases {
        let err = client.create_task(pb::CreateTaskRequest { spec: Some(spec) }).await.expect_err(case);
        assert_eq!(err.code(), code, "{case}: {err:?}");
        assert!(err.message().contains(message), "{case}: {:?} lacks {message:?}", err.message());
    }
    let err = client.create_task(pb::CreateTaskRequest { spec: None }).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "missing spec"));
    assert_eq!(task_count(&cluster).await, 0, "nothing was written");

    for bad_id in ["", "not an id", "../../etc"] {
        let err = client.get_task(pb::GetTaskRequest { task_id: bad_id.into(), run_id: None }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad_id:?}");
        let err = client.cancel_task(pb::CancelTaskRequest { task_id: bad_id.into(), reason: String::new() }).await;
        assert_eq!(err.unwrap_err().code(), Code::InvalidArgument, "{bad_id:?}");
    }
    let err = client.get_task(pb::GetTaskRequest { task_id: "task_0000".into(), run_id: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client.watch_task(pb::WatchTaskRequest { task_id: "task_0000".into(), after_cursor: 0 }).await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound);
    let err = client.list_tasks(pb::ListTasksRequest { page_token: "garbage".into(), ..Default::default() }).await;
    assert_eq!(err.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_task_or_refuses_another_spec() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut client = cluster.tasks().await;
    let mut s = spec("echo", r#"{"n":1}"#);
    s.idempotency_key = Some("order-42".into());
    let first = client.create_task(pb::CreateTaskRequest { spec: Some(s.clone()) }).await.expect("first").into_inner();
    let again = client.create_task(pb::CreateTaskRequest { spec: Some(s.clone()) }).await.expect("again").into_inner();
    assert!(!first.existing && again.existing);
    assert_eq!(first.task.expect("task").task_id, again.task.expect("task").task_id);

    s.input_json = r#"{"n":2}"#.into();
    let err = client.create_task(pb::CreateTaskRequest { spec: Some(s) }).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(task_count(&cluster).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_tasks_filters_and_pages() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    cluster.publish("echo", "1.0.0", artifacts::ECHO).await;
    let mut client = cluster.tasks().await;
    for i in 0..7 {
        let mut s = spec("echo", &i.to_string());
        s.labels.insert("team".into(), if i % 2 == 0 { "even" } else { "odd" }.into());
        client.create_task(pb::CreateTaskRequest { spec: Some(s) }).await.expect("create");
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let mut req = pb::ListTasksRequest { page_size: 2, page_token: token.clone(), ..Default::default() };
        req.label_selector.insert("team".into(), "even".into());
        let page = client.list_tasks(req).await.expect("list").into_inner();
        assert!(page.tasks.len() <= 2);
        seen.extend(page.tasks.into_iter().map(|t| t.spec.expect("spec").input_json));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["6", "4", "2", "0"], "newest first");
    let pending = client
        .list_tasks(pb::ListTasksRequest { statuses: vec![pb::TaskStatus::Pending.into()], ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(pending.tasks.len(), 7, "no worker, so all pending");
    let none = client
        .list_tasks(pb::ListTasksRequest { agent_name: Some("other".into()), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert!(none.tasks.is_empty());
}

/// PublishAgent stores only what verifies against the control plane's
/// trust policy; tampered or unknown-key uploads are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_what_does_not_verify() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    let bytes = std::fs::read(artifacts::ECHO).expect("echo component");
    let mut agents = cluster.agents().await;

    let stranger = taskrun_signing::SigningKey::generate();
    let err = publish_signed(&mut agents, &stranger, "echo", "1.0.0", &bytes).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("not trusted"), "{}", err.message());

    // Signed by the trusted key, but one byte of the component changed.
    let envelope = cluster
        .key
        .sign_component(
            &bytes,
            taskrun_signing::AgentDetails::new(
                "echo".parse().expect("name"),
                "1.0.0".parse().expect("version"),
                taskrun_core::Clock::now(&taskrun_core::SystemClock),
            ),
        )
        .expect("sign");
    let mut tampered = bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    let err = publish_envelope(&mut agents, "echo", "1.0.0", envelope.as_bytes(), &tampered).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("digest"), "{}", err.message());
    let listed = agents.list_agents(pb::ListAgentsRequest::default()).await.expect("list").into_inner();
    assert!(listed.agents.is_empty(), "nothing stored");

    // Validly signed, but not a component: a text file, a core module.
    for (what, junk) in [("text", b"not wasm\n".to_vec()), ("core module", b"\0asm\x01\x00\x00\x00".to_vec())] {
        let err = publish_signed(&mut agents, &cluster.key, "junk", "1.0.0", &junk).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains("not a WebAssembly component"), "{what}: {}", err.message());
    }
    let listed = agents.list_agents(pb::ListAgentsRequest::default()).await.expect("list").into_inner();
    assert!(listed.agents.is_empty(), "nothing stored");

    // The genuine upload is stored; the same again is idempotent; the same
    // version with other bytes is refused.
    let stored = publish_envelope(&mut agents, "echo", "1.0.0", envelope.as_bytes(), &bytes).await.expect("publish");
    assert_eq!(stored.digest, taskrun_core::AgentDigest::of(&bytes).to_string());
    publish_envelope(&mut agents, "echo", "1.0.0", envelope.as_bytes(), &bytes).await.expect("idempotent");
    let other = std::fs::read(artifacts::HOSTILE_PANIC).expect("panic component");
    let err = publish_signed(&mut agents, &cluster.key, "echo", "1.0.0", &other).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let listed = agents.list_agents(pb::ListAgentsRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.agents.len(), 1);
}

/// The bytes FetchAgent streams for `digest` from `offset`, after checking
/// that the header comes first and every chunk is within the chunk size.
async fn fetched(cluster: &Cluster, digest: &str, offset: i64) -> Result<Vec<u8>, tonic::Status> {
    use futures::StreamExt;
    let request = pb::FetchAgentRequest { digest: digest.to_owned(), offset };
    let mut stream = cluster.agents().await.fetch_agent(request).await?.into_inner();
    let first = stream.next().await.expect("a header")?;
    assert!(matches!(first.part, Some(pb::fetch_agent_response::Part::Header(_))), "the header comes first");
    let mut bytes = Vec::new();
    while let Some(message) = stream.next().await {
        match message?.part {
            Some(pb::fetch_agent_response::Part::Chunk(chunk)) => {
                assert!(!chunk.is_empty() && chunk.len() <= taskrun_control_plane::FETCH_CHUNK_BYTES);
                bytes.extend_from_slice(&chunk);
            }
            other => panic!("only chunks follow the header, got {other:?}"),
        }
    }
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_agent_streams_the_component_from_any_offset() {
    let cluster = Cluster::start(StoreKind::Sled).await;
    // The echo component with a custom section that makes it span chunks.
    let mut component = std::fs::read(artifacts::ECHO).expect("echo component");
    let name = b"padding";
    let payload = vec![7u8; 600 * 1024];
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    component.push(0);
    let mut size = section.len();
    while size >= 0x80 {
        component.push((size as u8 & 0x7f) | 0x80);
        size >>= 7;
    }
    component.push(size as u8);
    component.extend_from_slice(&section);
    let manifest = publish_signed(&mut cluster.agents().await, &cluster.key, "padded", "1.0.0", &component)
        .await
        .expect("publish");

    assert_eq!(fetched(&cluster, &manifest.digest, 0).await.expect("from the start"), component);
    let middle = 300_001;
    assert_eq!(
        fetched(&cluster, &manifest.digest, middle).await.expect("from the middle"),
        component[middle as usize..]
    );
    let end = component.len() as i64;
    assert!(fetched(&cluster, &manifest.digest, end).await.expect("from the end").is_empty());
    let past = fetched(&cluster, &manifest.digest, end + 1).await.expect_err("past the end");
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");
}
