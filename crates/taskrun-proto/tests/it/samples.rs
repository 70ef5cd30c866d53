//! Valid core values to convert: a minimal and a full one of each kind.

use std::collections::BTreeSet;

use taskrun_core::{
    AgentDigest, AgentManifest, AgentRef, AgentSelector, AgentVersion, Json, Labels, Modality, ModelBackend,
    ModelRequirement, OutputChunk, RetryPolicy, Run, RunOutcome, Task, TaskEvent, TaskEventKind, TaskLimits, TaskSpec,
    TaskStatus, Timestamp, WIT_WORLD, Worker, WorkerInfo, WorkerState,
};

pub const T0: Timestamp = Timestamp(1_700_000_000_000);

pub fn at(offset_ms: i64) -> Timestamp {
    Timestamp(T0.0 + offset_ms)
}

pub fn digest() -> AgentDigest {
    AgentDigest::of(b"component bytes")
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

pub fn agent_refs() -> Vec<AgentRef> {
    vec![
        "summarize".parse().unwrap(),
        "summarize@1.2.3".parse().unwrap(),
        AgentRef { name: "summarize".parse().unwrap(), selector: AgentSelector::Digest(digest()) },
    ]
}

pub fn manifest() -> AgentManifest {
    AgentManifest {
        name: "summarize".parse().unwrap(),
        version: AgentVersion::new(1, 2, 3),
        digest: digest(),
        size: 81_234,
        wit_world: WIT_WORLD.to_owned(),
        signer: "ed25519:team-a".to_owned(),
        published_at: at(5),
    }
}

pub fn model_backend() -> ModelBackend {
    ModelBackend {
        name: "default".to_owned(),
        provider: "openai".to_owned(),
        model_name: "gpt-4o-mini".to_owned(),
        context_window: 128_000,
        modalities: vec![Modality::Text, Modality::Image],
        supports_streaming: true,
    }
}

pub fn echo_backend() -> ModelBackend {
    ModelBackend {
        name: "echo".to_owned(),
        provider: "echo".to_owned(),
        model_name: "echo-1".to_owned(),
        context_window: 1,
        modalities: vec![],
        supports_streaming: false,
    }
}

pub fn model_requirements() -> Vec<ModelRequirement> {
    vec![
        ModelRequirement::default(),
        ModelRequirement {
            provider: Some("openai".to_owned()),
            model_name: Some("gpt-4o-mini".to_owned()),
            min_context_window: Some(32_000),
            modalities: vec![Modality::Audio, Modality::Text],
        },
    ]
}

pub fn retry_policies() -> Vec<RetryPolicy> {
    vec![
        RetryPolicy::default(),
        RetryPolicy { max_attempts: 1, initial_backoff_ms: 0, max_backoff_ms: 0 },
        RetryPolicy { max_attempts: RetryPolicy::MAX_ATTEMPTS, initial_backoff_ms: 250, max_backoff_ms: 3_600_000 },
    ]
}

pub fn task_limits() -> Vec<TaskLimits> {
    vec![
        TaskLimits::default(),
        TaskLimits {
            run_timeout_ms: TaskLimits::MAX_RUN_TIMEOUT_MS,
            schedule_to_start_timeout_ms: Some(30_000),
            memory_limit_bytes: Some(TaskLimits::MAX_MEMORY_BYTES),
            output_limit_bytes: Some(1 << 20),
            max_model_calls: Some(0),
        },
        TaskLimits {
            run_timeout_ms: 1,
            schedule_to_start_timeout_ms: None,
            memory_limit_bytes: Some(64 * 1024),
            output_limit_bytes: None,
            max_model_calls: Some(10),
        },
    ]
}

pub fn minimal_spec() -> TaskSpec {
    TaskSpec::new("echo".parse().unwrap(), Json::null())
}

pub fn full_spec() -> TaskSpec {
    TaskSpec {
        agent: "summarize@1.2.3".parse().unwrap(),
        input: Json::parse("input", r#"{"text": "hello", "n": [1, 2.5, null]}"#).unwrap(),
        labels: labels(&[("team", "search"), ("example.com/tier", "gold"), ("empty", "")]),
        worker_labels: labels(&[("gpu", "a100"), ("region", "eu-west-1")]),
        priority: -TaskSpec::MAX_PRIORITY,
        retry: retry_policies()[2].clone(),
        limits: task_limits()[1].clone(),
        idempotency_key: Some("order-42/summarize".to_owned()),
        model: model_requirements()[1].clone(),
        fan_out: TaskSpec::MAX_FAN_OUT,
    }
}

pub fn specs() -> Vec<TaskSpec> {
    let mut by_digest = minimal_spec();
    by_digest.agent = agent_refs()[2].clone();
    by_digest.priority = TaskSpec::MAX_PRIORITY;
    vec![minimal_spec(), full_spec(), by_digest]
}

pub fn tasks() -> Vec<Task> {
    let pending = Task::new("task_0001".parse().unwrap(), minimal_spec(), T0, usize::MAX).unwrap();
    let mut completed = Task::new("task-2".parse().unwrap(), full_spec(), T0, usize::MAX).unwrap();
    completed.set_status(TaskStatus::Running, at(10)).unwrap();
    completed.set_status(TaskStatus::Completed, at(20)).unwrap();
    completed.result = Some(Json::parse("result", r#"{"summary":"hi"}"#).unwrap());
    let mut cancelled = pending.clone();
    cancelled.set_status(TaskStatus::Cancelled, at(1)).unwrap();
    cancelled.error = Some("no longer needed".to_owned());
    vec![pending, completed, cancelled]
}

pub fn runs() -> Vec<Run> {
    let new = Run::new("task_0001".parse().unwrap(), 0, 1, T0, T0);
    let mut completed = Run::new("task-2".parse().unwrap(), 63, 2, T0, at(1_000));
    completed.assign("worker-7".parse().unwrap(), 0, at(1_001)).unwrap();
    completed.start(at(1_002)).unwrap();
    completed.finish(RunOutcome::Completed { result: Json::parse("result", "[1,2,3]").unwrap() }, at(1_003)).unwrap();
    let mut failed = new.clone();
    failed.assign("worker-7".parse().unwrap(), 0, at(1)).unwrap();
    failed.finish(RunOutcome::Failed { error: "worker lost".to_owned() }, at(2)).unwrap();
    let mut permanent = new.clone();
    permanent.assign("worker-7".parse().unwrap(), 0, at(1)).unwrap();
    permanent.finish(RunOutcome::FailedPermanently { error: "agent error: bad input".to_owned() }, at(2)).unwrap();
    assert!(permanent.failed_permanently);
    let mut interrupted = new.clone();
    interrupted.assign("worker-7".parse().unwrap(), 0, at(1)).unwrap();
    interrupted.finish(RunOutcome::Interrupted { error: "worker worker-7 shut down".to_owned() }, at(2)).unwrap();
    assert!(interrupted.interrupted);
    vec![new, completed, failed, permanent, interrupted]
}

/// Runs as a GetTask reply carries them: whole, and the COMPLETED one
/// without its result.
pub fn run_replies() -> Vec<taskrun_proto::RunReply> {
    let mut replies: Vec<_> = runs().into_iter().map(taskrun_proto::RunReply::whole).collect();
    let omitted = taskrun_proto::RunReply::without_result(runs()[1].clone());
    assert_eq!(omitted.result_omitted_bytes, Some(7));
    replies.push(omitted);
    replies
}

pub fn output_chunk() -> OutputChunk {
    OutputChunk { run_id: "run_b".parse().unwrap(), seq: 7, data: "partial ✓ output\n".to_owned() }
}

pub fn task_events() -> Vec<TaskEvent> {
    let task_id: taskrun_core::TaskId = "task-2".parse().unwrap();
    vec![
        TaskEvent {
            task_id: task_id.clone(),
            seq: 1,
            at: T0,
            kind: TaskEventKind::Status {
                task_status: TaskStatus::Pending,
                run_id: None,
                run_status: None,
                message: None,
            },
        },
        TaskEvent {
            task_id: task_id.clone(),
            seq: 2,
            at: at(3),
            kind: TaskEventKind::Status {
                task_status: TaskStatus::Running,
                run_id: Some("run_b".parse().unwrap()),
                run_status: Some(taskrun_core::RunStatus::Failed),
                message: Some("retrying in 2s".to_owned()),
            },
        },
        TaskEvent { task_id, seq: 3, at: at(4), kind: TaskEventKind::Output(output_chunk()) },
    ]
}

pub fn worker_infos() -> Vec<WorkerInfo> {
    let minimal = WorkerInfo {
        id: "worker-1".parse().unwrap(),
        agents: BTreeSet::new(),
        digests: BTreeSet::new(),
        model_backends: vec![],
        labels: Labels::new(),
        slots: 1,
        version: String::new(),
    };
    let full = WorkerInfo {
        id: "worker-7".parse().unwrap(),
        agents: ["summarize", "echo"].iter().map(|n| n.parse().unwrap()).collect(),
        digests: [digest(), AgentDigest::of(b"other")].into_iter().collect(),
        model_backends: vec![model_backend(), echo_backend()],
        labels: labels(&[("gpu", "a100"), ("region", "eu-west-1")]),
        slots: WorkerInfo::MAX_SLOTS,
        version: "0.1.0".to_owned(),
    };
    vec![minimal, full]
}

pub fn workers() -> Vec<Worker> {
    [WorkerState::Connected, WorkerState::Draining, WorkerState::Lost, WorkerState::Revoked]
        .into_iter()
        .zip(worker_infos().into_iter().cycle())
        .map(|(state, info)| Worker { info, state, first_seen: T0, last_seen: at(60_000) })
        .collect()
}

pub fn status_reports() -> Vec<taskrun_proto::RunStatusReport> {
    use taskrun_proto::{RunProgress, RunStatusReport};
    let report = |progress, last_output_seq| RunStatusReport {
        run_id: "run_b".parse().unwrap(),
        lease: 3,
        progress,
        at: at(9),
        nonce: "0123456789abcdef0123456789abcdef".to_owned(),
        last_output_seq,
        trailing_output: Vec::new(),
    };
    let mut with_trailing = report(
        RunProgress::Finished(RunOutcome::Completed { result: Json::parse("result", r#"{"ok":1}"#).unwrap() }),
        5,
    );
    with_trailing.trailing_output = vec![(3, "tail ".to_owned()), (5, "end".to_owned())];
    vec![
        report(RunProgress::Started, 0),
        report(
            RunProgress::Finished(RunOutcome::Completed { result: Json::parse("result", r#"{"ok":true}"#).unwrap() }),
            12,
        ),
        report(RunProgress::Finished(RunOutcome::Failed { error: "deadline exceeded".to_owned() }), 0),
        report(RunProgress::Finished(RunOutcome::Cancelled { reason: String::new() }), 4),
        with_trailing,
        report(RunProgress::Finished(RunOutcome::FailedPermanently { error: "bad input".to_owned() }), 0),
        report(RunProgress::Finished(RunOutcome::Interrupted { error: "worker w shut down".to_owned() }), 2),
    ]
}

pub fn output_report() -> taskrun_proto::RunOutputReport {
    taskrun_proto::RunOutputReport { lease: 1, chunk: output_chunk() }
}

pub fn drain_notices() -> Vec<taskrun_proto::DrainNotice> {
    use taskrun_proto::DrainNotice;
    vec![
        DrainNotice { deadline: at(30_000), reason: String::new() },
        DrainNotice { deadline: at(1), reason: "SIGTERM".to_owned() },
        DrainNotice { deadline: at(0), reason: "r".repeat(DrainNotice::MAX_REASON_BYTES) },
    ]
}
