use std::collections::BTreeSet;

use taskrun_core::{
    AgentRef, Error, Json, Labels, Modality, ModelBackend, ModelRequirement, RetryPolicy, Task, TaskId, TaskLimits,
    TaskSpec, TaskStatus, Timestamp, WorkerInfo,
};

fn spec() -> TaskSpec {
    TaskSpec::new("echo".parse().unwrap(), Json::parse("input", r#"{"text":"hi"}"#).unwrap())
}

fn field_of(r: Result<(), Error>) -> Option<&'static str> {
    r.err().and_then(|e| e.field())
}

#[test]
fn json_is_checked_and_kept_verbatim() {
    let j = Json::parse("input", r#"{ "a" : 1 }"#).unwrap();
    assert_eq!(j.as_str(), r#"{ "a" : 1 }"#);
    let err = Json::parse("input", "{not json").unwrap_err();
    assert_eq!(err.field(), Some("input"));
    assert!(err.to_string().contains("not JSON"), "{err}");
    assert!(Json::parse("input", "").is_err());
}

/// Each invalid spec names the field that is wrong.
#[test]
fn spec_validation_names_the_field() {
    type Mutate = fn(&mut TaskSpec);
    let cases: &[(&str, Mutate)] = &[
        ("priority", |s| s.priority = 1001),
        ("priority", |s| s.priority = -1001),
        ("retry.max_attempts", |s| s.retry.max_attempts = 0),
        ("retry.max_attempts", |s| s.retry.max_attempts = 101),
        ("retry.max_backoff_ms", |s| {
            s.retry = RetryPolicy { max_attempts: 2, initial_backoff_ms: 10, max_backoff_ms: 5 }
        }),
        ("limits.run_timeout_ms", |s| s.limits.run_timeout_ms = 0),
        ("limits.run_timeout_ms", |s| s.limits.run_timeout_ms = TaskLimits::MAX_RUN_TIMEOUT_MS + 1),
        ("limits.schedule_to_start_timeout_ms", |s| s.limits.schedule_to_start_timeout_ms = Some(0)),
        ("limits.memory_limit_bytes", |s| s.limits.memory_limit_bytes = Some(10)),
        ("limits.output_limit_bytes", |s| s.limits.output_limit_bytes = Some(0)),
        ("idempotency_key", |s| s.idempotency_key = Some(String::new())),
        ("fan_out", |s| s.fan_out = 0),
        ("fan_out", |s| s.fan_out = 65),
        ("labels", |s| {
            s.labels.insert("bad key".into(), "v".into());
        }),
        ("worker_labels", |s| {
            s.worker_labels.insert("gpu".into(), "a100 80g".into());
        }),
        ("labels", |s| s.labels = (0..33).map(|i| (format!("k{i}"), String::new())).collect()),
        ("input", |s| s.input = Json::parse("input", format!("\"{}\"", "x".repeat(2048))).unwrap()),
    ];
    for (field, mutate) in cases {
        let mut s = spec();
        mutate(&mut s);
        assert_eq!(field_of(s.validate(1024)), Some(*field), "case for {field}");
    }
    assert_eq!(field_of(spec().validate(1024)), None);
}

#[test]
fn new_task_is_pending_and_moves_by_the_state_machine() {
    let mut t = Task::new(TaskId::generate(), spec(), Timestamp(10), 1024).unwrap();
    assert_eq!(t.status, TaskStatus::Pending);
    t.set_status(TaskStatus::Running, Timestamp(11)).unwrap();
    t.set_status(TaskStatus::Completed, Timestamp(12)).unwrap();
    assert!(t.set_status(TaskStatus::Cancelled, Timestamp(13)).is_err());
    assert_eq!((t.status, t.updated_at), (TaskStatus::Completed, Timestamp(12)));
    let mut bad = spec();
    bad.priority = 5000;
    assert!(Task::new(TaskId::generate(), bad, Timestamp(0), 1024).is_err());
}

fn backend(provider: &str, model: &str, window: u32, modalities: &[Modality]) -> ModelBackend {
    ModelBackend {
        name: format!("{provider}-{model}"),
        provider: provider.into(),
        model_name: model.into(),
        context_window: window,
        modalities: modalities.to_vec(),
        supports_streaming: true,
    }
}

#[test]
fn model_requirements_match_one_backend() {
    let text = backend("openai", "gpt-x", 128_000, &[Modality::Text]);
    let vision = backend("openai", "gpt-v", 8_000, &[Modality::Text, Modality::Image]);
    let req = ModelRequirement {
        provider: Some("openai".into()),
        min_context_window: Some(100_000),
        modalities: vec![Modality::Image],
        ..Default::default()
    };
    // Neither single backend has both the window and the modality.
    assert!(!req.met_by(&[text.clone(), vision.clone()]));
    let big_vision = backend("openai", "gpt-vx", 200_000, &[Modality::Text, Modality::Image]);
    assert!(req.met_by(&[text.clone(), big_vision]));
    assert!(ModelRequirement::default().met_by(&[]));
    assert!(!ModelRequirement { model_name: Some("gpt-x".into()), ..Default::default() }.met_by(&[vision]));
    assert!(ModelRequirement { model_name: Some("gpt-x".into()), ..Default::default() }.met_by(&[text]));
}

#[test]
fn worker_info_matches_labels_and_agents() {
    let mut labels = Labels::new();
    labels.insert("region".into(), "eu".into());
    labels.insert("gpu".into(), "a100".into());
    let mut info = WorkerInfo {
        id: "w1".parse().unwrap(),
        agents: BTreeSet::new(),
        digests: BTreeSet::new(),
        model_backends: vec![backend("echo", "echo", 4096, &[Modality::Text])],
        labels,
        slots: 4,
        version: "0.1.0".into(),
    };
    info.validate().unwrap();
    let echo: AgentRef = "echo".parse().unwrap();
    assert!(info.accepts_agent(&echo.name));
    info.agents.insert("chat".parse().unwrap());
    assert!(!info.accepts_agent(&echo.name));
    let need = |k: &str, v: &str| Labels::from([(k.to_owned(), v.to_owned())]);
    assert!(info.has_labels(&need("region", "eu")));
    assert!(!info.has_labels(&need("region", "us")));
    assert!(!info.has_labels(&need("zone", "a")));
    info.slots = 0;
    assert_eq!(info.validate().unwrap_err().field(), Some("slots"));
    info.slots = 1;
    info.model_backends.push(info.model_backends[0].clone());
    assert_eq!(info.validate().unwrap_err().field(), Some("model_backend.name"));
}
