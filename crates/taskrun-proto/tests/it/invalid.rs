//! Every way a message can be wrong gives an error that names the field
//! (by its path in the message) and says what is wrong. Each case starts
//! from a valid message, breaks one thing, and shows the error as the
//! client reads it and as code matches it.

use std::fmt::Debug;

use expect_test::{Expect, expect};
use taskrun_core::{AgentDigest, AgentManifest, ModelBackend, Run, TaskEvent, TaskSpec, Worker, WorkerInfo};
use taskrun_proto::{DrainNotice, InvalidMessage, RunOutputReport, RunReply, RunStatusReport, pb};

use crate::samples;

/// Converts `wire` after `mutate` and checks the error.
fn check<P, C>(mut wire: P, mutate: impl FnOnce(&mut P), expect: Expect)
where
    C: TryFrom<P, Error = InvalidMessage> + Debug,
{
    mutate(&mut wire);
    match C::try_from(wire) {
        Ok(value) => panic!("accepted: {value:?}"),
        Err(e) => expect.assert_eq(&format!("{e}\n{e:?}")),
    }
}

fn spec(mutate: impl FnOnce(&mut pb::TaskSpec), expect: Expect) {
    let request = pb::CreateTaskRequest::from(samples::full_spec());
    check::<_, TaskSpec>(request, |r| mutate(r.spec.as_mut().expect("sample has a spec")), expect);
}

fn retry(r: &mut pb::TaskSpec) -> &mut pb::RetryPolicy {
    r.retry.get_or_insert_default()
}

fn limits(r: &mut pb::TaskSpec) -> &mut pb::TaskLimits {
    r.limits.get_or_insert_default()
}

fn model(r: &mut pb::TaskSpec) -> &mut pb::ModelRequirement {
    r.model.get_or_insert_default()
}

fn agent(r: &mut pb::TaskSpec) -> &mut pb::AgentRef {
    r.agent.get_or_insert_default()
}

const TEXT: i32 = pb::Modality::Text as i32;

#[test]
fn create_task_request_presence() {
    check::<_, TaskSpec>(
        pb::CreateTaskRequest::from(samples::full_spec()),
        |r| r.spec = None,
        expect![[r#"
            missing spec
            Missing("spec")"#]],
    );
    spec(
        |s| s.agent = None,
        expect![[r#"
        missing spec.agent
        Missing("spec.agent")"#]],
    );
    spec(
        |s| agent(s).name.clear(),
        expect![[r#"
        missing spec.agent.name
        Missing("spec.agent.name")"#]],
    );
    spec(
        |s| s.input_json.clear(),
        expect![[r#"
        missing spec.input_json
        Missing("spec.input_json")"#]],
    );
}

#[test]
fn create_task_request_malformed_values() {
    spec(
        |s| agent(s).name = "Summarize".into(),
        expect![[r#"
        invalid spec.agent.name "Summarize": must start with a lowercase letter
        Invalid { field: "spec.agent.name", value: "Summarize", reason: "must start with a lowercase letter" }"#]],
    );
    spec(
        |s| agent(s).name = "sum_marize".into(),
        expect![[r#"
        invalid spec.agent.name "sum_marize": character '_' is not allowed (use a-z, 0-9, '-')
        Invalid { field: "spec.agent.name", value: "sum_marize", reason: "character '_' is not allowed (use a-z, 0-9, '-')" }"#]],
    );
    spec(
        |s| agent(s).selector = Some(pb::agent_ref::Selector::Version("1.2".into())),
        expect![[r#"
            invalid spec.agent.version "1.2": expected MAJOR.MINOR.PATCH, e.g. 1.2.3
            Invalid { field: "spec.agent.version", value: "1.2", reason: "expected MAJOR.MINOR.PATCH, e.g. 1.2.3" }"#]],
    );
    spec(
        |s| agent(s).selector = Some(pb::agent_ref::Selector::Version(String::new())),
        expect![[r#"
            missing spec.agent.version
            Missing("spec.agent.version")"#]],
    );
    spec(
        |s| agent(s).selector = Some(pb::agent_ref::Selector::Digest("sha256:abc".into())),
        expect![[r#"
            invalid spec.agent.digest "sha256:abc": expected 64 lowercase hex digits after "sha256:"
            Invalid { field: "spec.agent.digest", value: "sha256:abc", reason: "expected 64 lowercase hex digits after \"sha256:\"" }"#]],
    );
    spec(
        |s| s.input_json = "{\"text\": ".into(),
        expect![[r#"
        invalid spec.input_json "{\"text\": ": not JSON: EOF while parsing a value at line 1 column 9
        Invalid { field: "spec.input_json", value: "{\"text\": ", reason: "not JSON: EOF while parsing a value at line 1 column 9" }"#]],
    );
    spec(
        |s| s.input_json = "hello".into(),
        expect![[r#"
        invalid spec.input_json "hello": not JSON: expected value at line 1 column 1
        Invalid { field: "spec.input_json", value: "hello", reason: "not JSON: expected value at line 1 column 1" }"#]],
    );
    spec(
        |s| {
            s.labels.insert("bad key".into(), "v".into());
        },
        expect![[r#"
            invalid spec.labels "bad key": label key must be 1-63 bytes of a-z, A-Z, 0-9, '.', '_', '-', '/'
            Invalid { field: "spec.labels", value: "bad key", reason: "label key must be 1-63 bytes of a-z, A-Z, 0-9, '.', '_', '-', '/'" }"#]],
    );
    spec(
        |s| {
            s.worker_labels.insert("gpu".into(), "a100 x2".into());
        },
        expect![[r#"
            invalid spec.worker_labels "gpu=a100 x2": label value must be 0-63 bytes of a-z, A-Z, 0-9, '.', '_', '-'
            Invalid { field: "spec.worker_labels", value: "gpu=a100 x2", reason: "label value must be 0-63 bytes of a-z, A-Z, 0-9, '.', '_', '-'" }"#]],
    );
    spec(
        |s| s.idempotency_key = Some(String::new()),
        expect![[r#"
        invalid spec.idempotency_key "": must be 1 to 256 bytes
        Invalid { field: "spec.idempotency_key", value: "", reason: "must be 1 to 256 bytes" }"#]],
    );
    spec(
        |s| s.idempotency_key = Some("k".repeat(257)),
        expect![[r#"
        invalid spec.idempotency_key "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...": must be 1 to 256 bytes
        Invalid { field: "spec.idempotency_key", value: "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...", reason: "must be 1 to 256 bytes" }"#]],
    );
    spec(
        |s| model(s).provider = Some(String::new()),
        expect![[r#"
            spec.model.provider is set but empty (leave it unset to accept any)
            Inconsistent { field: "spec.model.provider", reason: "is set but empty (leave it unset to accept any)" }"#]],
    );
}

/// A ModelRequirement no ModelBackend could meet (past the limits
/// ModelBackend::validate applies) is refused, not left to wait forever.
#[test]
fn create_task_request_model_beyond_any_backend() {
    let mut at_limits = samples::full_spec();
    at_limits.model.provider = Some("p".repeat(ModelBackend::MAX_PROVIDER_LEN));
    at_limits.model.model_name = Some("m".repeat(ModelBackend::MAX_MODEL_NAME_LEN));
    let wire = pb::CreateTaskRequest::from(at_limits.clone());
    assert_eq!(TaskSpec::try_from(wire), Ok(at_limits));

    spec(
        |s| model(s).provider = Some("p".repeat(65)),
        expect![[r#"
            invalid spec.model.provider "ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp": longer than 64 bytes
            Invalid { field: "spec.model.provider", value: "ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp", reason: "longer than 64 bytes" }"#]],
    );
    spec(
        |s| model(s).provider = Some("open ai".into()),
        expect![[r#"
            invalid spec.model.provider "open ai": character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')
            Invalid { field: "spec.model.provider", value: "open ai", reason: "character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')" }"#]],
    );
    spec(
        |s| model(s).model_name = Some("m".repeat(257)),
        expect![[r#"
            invalid spec.model.model_name "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm...": must be 1 to 256 bytes
            Invalid { field: "spec.model.model_name", value: "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm...", reason: "must be 1 to 256 bytes" }"#]],
    );
}

#[test]
fn create_task_request_out_of_range() {
    spec(
        |s| s.priority = 1001,
        expect![[r#"
        spec.priority out of range: 1001 (allowed -1000 to 1000)
        OutOfRange { field: "spec.priority", value: 1001, min: -1000, max: Some(1000) }"#]],
    );
    spec(
        |s| s.priority = -1001,
        expect![[r#"
        spec.priority out of range: -1001 (allowed -1000 to 1000)
        OutOfRange { field: "spec.priority", value: -1001, min: -1000, max: Some(1000) }"#]],
    );
    spec(
        |s| retry(s).max_attempts = Some(0),
        expect![[r#"
        spec.retry.max_attempts out of range: 0 (allowed 1 to 100)
        OutOfRange { field: "spec.retry.max_attempts", value: 0, min: 1, max: Some(100) }"#]],
    );
    spec(
        |s| retry(s).max_attempts = Some(101),
        expect![[r#"
        spec.retry.max_attempts out of range: 101 (allowed 1 to 100)
        OutOfRange { field: "spec.retry.max_attempts", value: 101, min: 1, max: Some(100) }"#]],
    );
    spec(
        |s| retry(s).max_attempts = Some(-1),
        expect![[r#"
        spec.retry.max_attempts out of range: -1 (allowed 1 to 100)
        OutOfRange { field: "spec.retry.max_attempts", value: -1, min: 1, max: Some(100) }"#]],
    );
    spec(
        |s| retry(s).initial_backoff_ms = Some(-5),
        expect![[r#"
        spec.retry.initial_backoff_ms out of range: -5 (must be at least 0)
        OutOfRange { field: "spec.retry.initial_backoff_ms", value: -5, min: 0, max: None }"#]],
    );
    spec(
        |s| {
            retry(s).initial_backoff_ms = Some(10_000);
            retry(s).max_backoff_ms = Some(9_999);
        },
        expect![[r#"
            invalid spec.retry.max_backoff_ms "9999": must not be less than initial_backoff_ms
            Invalid { field: "spec.retry.max_backoff_ms", value: "9999", reason: "must not be less than initial_backoff_ms" }"#]],
    );
    spec(
        |s| limits(s).run_timeout_ms = Some(-1),
        expect![[r#"
        spec.limits.run_timeout_ms out of range: -1 (allowed 1 to 86400000)
        OutOfRange { field: "spec.limits.run_timeout_ms", value: -1, min: 1, max: Some(86400000) }"#]],
    );
    spec(
        |s| limits(s).run_timeout_ms = Some(0),
        expect![[r#"
        spec.limits.run_timeout_ms out of range: 0 (allowed 1 to 86400000)
        OutOfRange { field: "spec.limits.run_timeout_ms", value: 0, min: 1, max: Some(86400000) }"#]],
    );
    spec(
        |s| limits(s).run_timeout_ms = Some(24 * 60 * 60 * 1000 + 1),
        expect![[r#"
            spec.limits.run_timeout_ms out of range: 86400001 (allowed 1 to 86400000)
            OutOfRange { field: "spec.limits.run_timeout_ms", value: 86400001, min: 1, max: Some(86400000) }"#]],
    );
    spec(
        |s| limits(s).schedule_to_start_timeout_ms = Some(0),
        expect![[r#"
            spec.limits.schedule_to_start_timeout_ms out of range: 0 (must be at least 1)
            OutOfRange { field: "spec.limits.schedule_to_start_timeout_ms", value: 0, min: 1, max: None }"#]],
    );
    spec(
        |s| limits(s).memory_limit_bytes = Some(1024),
        expect![[r#"
        spec.limits.memory_limit_bytes out of range: 1024 (allowed 65536 to 4294967296)
        OutOfRange { field: "spec.limits.memory_limit_bytes", value: 1024, min: 65536, max: Some(4294967296) }"#]],
    );
    spec(
        |s| limits(s).memory_limit_bytes = Some(5 << 30),
        expect![[r#"
            spec.limits.memory_limit_bytes out of range: 5368709120 (allowed 65536 to 4294967296)
            OutOfRange { field: "spec.limits.memory_limit_bytes", value: 5368709120, min: 65536, max: Some(4294967296) }"#]],
    );
    spec(
        |s| limits(s).output_limit_bytes = Some(0),
        expect![[r#"
        spec.limits.output_limit_bytes out of range: 0 (must be at least 1)
        OutOfRange { field: "spec.limits.output_limit_bytes", value: 0, min: 1, max: None }"#]],
    );
    spec(
        |s| limits(s).max_model_calls = Some(-1),
        expect![[r#"
        spec.limits.max_model_calls out of range: -1 (must be at least 0)
        OutOfRange { field: "spec.limits.max_model_calls", value: -1, min: 0, max: None }"#]],
    );
    spec(
        |s| model(s).min_context_window = Some(0),
        expect![[r#"
        spec.model.min_context_window out of range: 0 (must be at least 1)
        OutOfRange { field: "spec.model.min_context_window", value: 0, min: 1, max: None }"#]],
    );
    spec(
        |s| s.fan_out = Some(0),
        expect![[r#"
        spec.fan_out out of range: 0 (allowed 1 to 64)
        OutOfRange { field: "spec.fan_out", value: 0, min: 1, max: Some(64) }"#]],
    );
    spec(
        |s| s.fan_out = Some(65),
        expect![[r#"
        spec.fan_out out of range: 65 (allowed 1 to 64)
        OutOfRange { field: "spec.fan_out", value: 65, min: 1, max: Some(64) }"#]],
    );
}

#[test]
fn create_task_request_enums() {
    spec(
        |s| model(s).modalities = vec![TEXT, 0],
        expect![[r#"
        missing spec.model.modalities[1]
        Missing("spec.model.modalities[1]")"#]],
    );
    spec(
        |s| model(s).modalities = vec![TEXT, 7],
        expect![[r#"
        unknown spec.model.modalities[1] value 7
        UnknownEnum { field: "spec.model.modalities[1]", value: 7 }"#]],
    );
    spec(
        |s| model(s).modalities = vec![TEXT, TEXT],
        expect![[r#"
        duplicate spec.model.modalities[1] "text"
        Duplicate { field: "spec.model.modalities[1]", value: "text" }"#]],
    );
}

#[test]
fn task() {
    let task = || pb::Task::from(samples::tasks()[1].clone());
    let t = |mutate: fn(&mut pb::Task), expect| check::<_, taskrun_core::Task>(task(), mutate, expect);
    t(
        |t| t.task_id.clear(),
        expect![[r#"
        missing task_id
        Missing("task_id")"#]],
    );
    t(
        |t| t.task_id = "task 1".into(),
        expect![[r#"
        invalid task_id "task 1": character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')
        Invalid { field: "task_id", value: "task 1", reason: "character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')" }"#]],
    );
    t(
        |t| t.spec = None,
        expect![[r#"
        missing spec
        Missing("spec")"#]],
    );
    t(
        |t| t.spec.as_mut().unwrap().priority = 5000,
        expect![[r#"
            spec.priority out of range: 5000 (allowed -1000 to 1000)
            OutOfRange { field: "spec.priority", value: 5000, min: -1000, max: Some(1000) }"#]],
    );
    t(
        |t| t.status = 0,
        expect![[r#"
        missing status
        Missing("status")"#]],
    );
    t(
        |t| t.status = 42,
        expect![[r#"
        unknown status value 42
        UnknownEnum { field: "status", value: 42 }"#]],
    );
    t(
        |t| t.result_json = Some("{".into()),
        expect![[r#"
        invalid result_json "{": not JSON: EOF while parsing an object at line 1 column 1
        Invalid { field: "result_json", value: "{", reason: "not JSON: EOF while parsing an object at line 1 column 1" }"#]],
    );
}

#[test]
fn run() {
    let run = || pb::Run::from(samples::runs()[1].clone());
    let r = |mutate: fn(&mut pb::Run), expect| check::<_, Run>(run(), mutate, expect);
    r(
        |r| r.run_id = "run/1".into(),
        expect![[r#"
        invalid run_id "run/1": character '/' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')
        Invalid { field: "run_id", value: "run/1", reason: "character '/' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')" }"#]],
    );
    r(
        |r| r.task_id.clear(),
        expect![[r#"
        missing task_id
        Missing("task_id")"#]],
    );
    r(
        |r| r.shard = -1,
        expect![[r#"
        shard out of range: -1 (must be at least 0)
        OutOfRange { field: "shard", value: -1, min: 0, max: None }"#]],
    );
    r(
        |r| r.attempt = 0,
        expect![[r#"
        attempt out of range: 0 (must be at least 1)
        OutOfRange { field: "attempt", value: 0, min: 1, max: None }"#]],
    );
    r(
        |r| r.lease = -1,
        expect![[r#"
        lease out of range: -1 (must be at least 0)
        OutOfRange { field: "lease", value: -1, min: 0, max: None }"#]],
    );
    r(
        |r| r.status = 0,
        expect![[r#"
        missing status
        Missing("status")"#]],
    );
    r(
        |r| r.worker_id = Some(String::new()),
        expect![[r#"
        missing worker_id
        Missing("worker_id")"#]],
    );
    r(
        |r| r.result_json = Some("[1,".into()),
        expect![[r#"
        invalid result_json "[1,": not JSON: EOF while parsing a value at line 1 column 3
        Invalid { field: "result_json", value: "[1,", reason: "not JSON: EOF while parsing a value at line 1 column 3" }"#]],
    );
    r(
        |r| r.result_omitted_bytes = r.result_json.take().map(|j| j.len() as i64),
        expect![[r#"
        result_omitted_bytes is set: the result was left out of the reply (convert the Run to a RunReply)
        Inconsistent { field: "result_omitted_bytes", reason: "is set: the result was left out of the reply (convert the Run to a RunReply)" }"#]],
    );
    r(
        |r| {
            r.status = pb::RunStatus::Failed.into();
            r.failed_permanently = true;
            r.interrupted = true;
        },
        expect![[r#"
            interrupted is set with failed_permanently (a Run fails one way)
            Inconsistent { field: "interrupted", reason: "is set with failed_permanently (a Run fails one way)" }"#]],
    );
    r(
        |r| r.interrupted = true,
        expect![[r#"
            interrupted is set on a Run that did not fail
            Inconsistent { field: "interrupted", reason: "is set on a Run that did not fail" }"#]],
    );
    r(
        |r| r.failed_permanently = true,
        expect![[r#"
            failed_permanently is set on a Run that did not fail
            Inconsistent { field: "failed_permanently", reason: "is set on a Run that did not fail" }"#]],
    );
}

/// A Run in a GetTask reply, whose result may have been left out.
#[test]
fn run_reply() {
    let omitted = || pb::Run::from(samples::run_replies().pop().expect("the reply without its result"));
    let r = |wire, mutate: fn(&mut pb::Run), expect| check::<_, RunReply>(wire, mutate, expect);
    r(
        omitted(),
        |r| r.result_json = Some("[1,2,3]".into()),
        expect![[r#"
        result_omitted_bytes must not be set with result_json
        Inconsistent { field: "result_omitted_bytes", reason: "must not be set with result_json" }"#]],
    );
    r(
        omitted(),
        |r| r.status = pb::RunStatus::Failed.into(),
        expect![[r#"
        result_omitted_bytes is set only on a COMPLETED Run
        Inconsistent { field: "result_omitted_bytes", reason: "is set only on a COMPLETED Run" }"#]],
    );
    r(
        omitted(),
        |r| r.result_omitted_bytes = Some(0),
        expect![[r#"
        result_omitted_bytes out of range: 0 (must be at least 1)
        OutOfRange { field: "result_omitted_bytes", value: 0, min: 1, max: None }"#]],
    );
    // The checks of a whole Run apply too.
    r(
        omitted(),
        |r| r.attempt = 0,
        expect![[r#"
        attempt out of range: 0 (must be at least 1)
        OutOfRange { field: "attempt", value: 0, min: 1, max: None }"#]],
    );
}

#[test]
fn task_event() {
    let status = || pb::TaskEvent::from(samples::task_events()[1].clone());
    let output = || pb::TaskEvent::from(samples::task_events()[2].clone());
    let e = |wire, mutate: fn(&mut pb::TaskEvent), expect| check::<_, TaskEvent>(wire, mutate, expect);
    fn change(e: &mut pb::TaskEvent) -> &mut pb::TaskStatusChange {
        match e.kind.as_mut() {
            Some(pb::task_event::Kind::Status(change)) => change,
            _ => panic!("not a status event"),
        }
    }
    fn chunk(e: &mut pb::TaskEvent) -> &mut pb::OutputChunk {
        match e.kind.as_mut() {
            Some(pb::task_event::Kind::Output(chunk)) => chunk,
            _ => panic!("not an output event"),
        }
    }
    e(
        status(),
        |e| e.kind = None,
        expect![[r#"
        missing kind
        Missing("kind")"#]],
    );
    e(
        status(),
        |e| e.cursor = 0,
        expect![[r#"
        cursor out of range: 0 (must be at least 1)
        OutOfRange { field: "cursor", value: 0, min: 1, max: None }"#]],
    );
    e(
        status(),
        |e| e.task_id = "a b".into(),
        expect![[r#"
        invalid task_id "a b": character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')
        Invalid { field: "task_id", value: "a b", reason: "character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')" }"#]],
    );
    e(
        status(),
        |e| change(e).task_status = 0,
        expect![[r#"
        missing status.task_status
        Missing("status.task_status")"#]],
    );
    e(
        status(),
        |e| change(e).task_status = 9,
        expect![[r#"
        unknown status.task_status value 9
        UnknownEnum { field: "status.task_status", value: 9 }"#]],
    );
    e(
        status(),
        |e| change(e).run_status = None,
        expect![[r#"
        status.run_status must be set exactly when run_id is
        Inconsistent { field: "status.run_status", reason: "must be set exactly when run_id is" }"#]],
    );
    e(
        status(),
        |e| change(e).run_status = Some(0),
        expect![[r#"
        missing status.run_status
        Missing("status.run_status")"#]],
    );
    e(
        status(),
        |e| change(e).run_id = Some("!".into()),
        expect![[r#"
        invalid status.run_id "!": must start with a letter or digit
        Invalid { field: "status.run_id", value: "!", reason: "must start with a letter or digit" }"#]],
    );
    e(
        output(),
        |e| chunk(e).seq = 0,
        expect![[r#"
        output.seq out of range: 0 (must be at least 1)
        OutOfRange { field: "output.seq", value: 0, min: 1, max: None }"#]],
    );
    e(
        output(),
        |e| chunk(e).run_id.clear(),
        expect![[r#"
        missing output.run_id
        Missing("output.run_id")"#]],
    );

    check::<_, TaskEvent>(
        pb::WatchTaskResponse::from(samples::task_events()[2].clone()),
        |r| {
            if let Some(pb::task_event::Kind::Output(chunk)) = r.event.as_mut().and_then(|e| e.kind.as_mut()) {
                chunk.seq = -3;
            }
        },
        expect![[r#"
            event.output.seq out of range: -3 (must be at least 1)
            OutOfRange { field: "event.output.seq", value: -3, min: 1, max: None }"#]],
    );
    check::<_, TaskEvent>(
        pb::WatchTaskResponse { event: None },
        |_| {},
        expect![[r#"
            missing event
            Missing("event")"#]],
    );
}

#[test]
fn worker_info() {
    let info = || pb::WorkerInfo::from(samples::worker_infos()[1].clone());
    let w = |mutate: fn(&mut pb::WorkerInfo), expect| check::<_, WorkerInfo>(info(), mutate, expect);
    w(
        |w| w.worker_id.clear(),
        expect![[r#"
        missing worker_id
        Missing("worker_id")"#]],
    );
    w(
        |w| w.agents.push("Echo".into()),
        expect![[r#"
        invalid agents[2] "Echo": must start with a lowercase letter
        Invalid { field: "agents[2]", value: "Echo", reason: "must start with a lowercase letter" }"#]],
    );
    w(
        |w| w.agents.push("echo".into()),
        expect![[r#"
        duplicate agents[2] "echo"
        Duplicate { field: "agents[2]", value: "echo" }"#]],
    );
    w(
        |w| w.digests.push("sha256:".into()),
        expect![[r#"
        invalid digests[2] "sha256:": expected 64 lowercase hex digits after "sha256:"
        Invalid { field: "digests[2]", value: "sha256:", reason: "expected 64 lowercase hex digits after \"sha256:\"" }"#]],
    );
    w(
        |w| {
            let first = w.digests[0].clone();
            w.digests.push(first);
        },
        expect![[r#"
            duplicate digests[2] "sha256:d9298a10d1b0735837dc4bd85dac641b0f3cef27a47e5d53a54f2f3f5b2fcffa"
            Duplicate { field: "digests[2]", value: "sha256:d9298a10d1b0735837dc4bd85dac641b0f3cef27a47e5d53a54f2f3f5b2fcffa" }"#]],
    );
    w(
        |w| w.model_backends[1].name.clear(),
        expect![[r#"
        missing model_backends[1].name
        Missing("model_backends[1].name")"#]],
    );
    w(
        |w| w.model_backends[1].name = "bad name".into(),
        expect![[r#"
        invalid model_backends[1].name "bad name": character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')
        Invalid { field: "model_backends[1].name", value: "bad name", reason: "character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')" }"#]],
    );
    w(
        |w| w.model_backends[0].context_window = 0,
        expect![[r#"
        model_backends[0].context_window out of range: 0 (must be at least 1)
        OutOfRange { field: "model_backends[0].context_window", value: 0, min: 1, max: None }"#]],
    );
    w(
        |w| w.model_backends[0].modalities.push(5),
        expect![[r#"
        unknown model_backends[0].modalities[2] value 5
        UnknownEnum { field: "model_backends[0].modalities[2]", value: 5 }"#]],
    );
    w(
        |w| {
            let first = w.model_backends[0].clone();
            w.model_backends.push(first);
        },
        expect![[r#"
            duplicate model_backends[2].name "default"
            Duplicate { field: "model_backends[2].name", value: "default" }"#]],
    );
    w(
        |w| w.slots = 0,
        expect![[r#"
        slots out of range: 0 (allowed 1 to 4096)
        OutOfRange { field: "slots", value: 0, min: 1, max: Some(4096) }"#]],
    );
    w(
        |w| w.slots = 4097,
        expect![[r#"
        slots out of range: 4097 (allowed 1 to 4096)
        OutOfRange { field: "slots", value: 4097, min: 1, max: Some(4096) }"#]],
    );
    w(
        |w| {
            w.labels.insert(String::new(), "x".into());
        },
        expect![[r#"
            invalid labels "": label key must be 1-63 bytes of a-z, A-Z, 0-9, '.', '_', '-', '/'
            Invalid { field: "labels", value: "", reason: "label key must be 1-63 bytes of a-z, A-Z, 0-9, '.', '_', '-', '/'" }"#]],
    );
}

/// A hello comes from whoever connects: every list and the version are
/// capped, and the caps are checked before any entry is parsed.
#[test]
fn worker_info_caps() {
    let mut at_caps = samples::worker_infos()[1].clone();
    at_caps.agents = (0..WorkerInfo::MAX_AGENTS).map(|i| format!("agent-{i}").parse().unwrap()).collect();
    at_caps.digests = (0..WorkerInfo::MAX_DIGESTS).map(|i| AgentDigest::of(&i.to_le_bytes())).collect();
    at_caps.model_backends = (0..WorkerInfo::MAX_MODEL_BACKENDS)
        .map(|i| ModelBackend { name: format!("backend-{i}"), ..samples::worker_infos()[1].model_backends[0].clone() })
        .collect();
    at_caps.version = "v".repeat(WorkerInfo::MAX_VERSION_LEN);
    assert_eq!(WorkerInfo::try_from(pb::WorkerInfo::from(at_caps.clone())), Ok(at_caps));

    let info = || pb::WorkerInfo::from(samples::worker_infos()[1].clone());
    let w = |mutate: fn(&mut pb::WorkerInfo), expect| check::<_, WorkerInfo>(info(), mutate, expect);
    // Names that would not parse: the count is refused first.
    w(
        |w| w.agents = vec!["Echo".into(); 1025],
        expect![[r#"
            invalid agents "1025 entries": more than 1024 entries
            Invalid { field: "agents", value: "1025 entries", reason: "more than 1024 entries" }"#]],
    );
    w(
        |w| w.digests = vec![w.digests[0].clone(); 4097],
        expect![[r#"
            invalid digests "4097 entries": more than 4096 entries
            Invalid { field: "digests", value: "4097 entries", reason: "more than 4096 entries" }"#]],
    );
    // Repeats: without the cap, each would be compared with the others.
    w(
        |w| w.model_backends = vec![w.model_backends[0].clone(); 257],
        expect![[r#"
            invalid model_backends "257 entries": more than 256 entries
            Invalid { field: "model_backends", value: "257 entries", reason: "more than 256 entries" }"#]],
    );
    w(
        |w| w.version = "v".repeat(129),
        expect![[r#"
            invalid version "129 bytes": longer than 128 bytes
            Invalid { field: "version", value: "129 bytes", reason: "longer than 128 bytes" }"#]],
    );
}

#[test]
fn worker() {
    let worker = || pb::Worker::from(samples::workers()[1].clone());
    let w = |mutate: fn(&mut pb::Worker), expect| check::<_, Worker>(worker(), mutate, expect);
    w(
        |w| w.info = None,
        expect![[r#"
        missing info
        Missing("info")"#]],
    );
    w(
        |w| w.info.as_mut().unwrap().slots = -4,
        expect![[r#"
        info.slots out of range: -4 (allowed 1 to 4096)
        OutOfRange { field: "info.slots", value: -4, min: 1, max: Some(4096) }"#]],
    );
    w(
        |w| w.info.as_mut().unwrap().model_backends[0].model_name.clear(),
        expect![[r#"
            missing info.model_backends[0].model_name
            Missing("info.model_backends[0].model_name")"#]],
    );
    w(
        |w| w.state = 0,
        expect![[r#"
        missing state
        Missing("state")"#]],
    );
    w(
        |w| w.state = 17,
        expect![[r#"
        unknown state value 17
        UnknownEnum { field: "state", value: 17 }"#]],
    );
}

#[test]
fn agent_manifest() {
    let manifest = || pb::AgentManifest::from(samples::manifest());
    let m = |mutate: fn(&mut pb::AgentManifest), expect| check::<_, AgentManifest>(manifest(), mutate, expect);
    m(
        |m| m.name.clear(),
        expect![[r#"
        missing name
        Missing("name")"#]],
    );
    m(
        |m| m.version = "v1.2.3".into(),
        expect![[r#"
        invalid version "v1.2.3": each part must be a number without leading zeros
        Invalid { field: "version", value: "v1.2.3", reason: "each part must be a number without leading zeros" }"#]],
    );
    m(
        |m| m.version = "1.02.3".into(),
        expect![[r#"
        invalid version "1.02.3": each part must be a number without leading zeros
        Invalid { field: "version", value: "1.02.3", reason: "each part must be a number without leading zeros" }"#]],
    );
    m(
        |m| m.digest = m.digest.to_uppercase().replacen("SHA256", "sha256", 1),
        expect![[r#"
        invalid digest "sha256:DD76F242C71FE8A8CAD9AB0D85E4C86952DE772820C5BF9B5ED5DF8E8C326C51": expected 64 lowercase hex digits after "sha256:"
        Invalid { field: "digest", value: "sha256:DD76F242C71FE8A8CAD9AB0D85E4C86952DE772820C5BF9B5ED5DF8E8C326C51", reason: "expected 64 lowercase hex digits after \"sha256:\"" }"#]],
    );
    m(
        |m| m.digest.clear(),
        expect![[r#"
        missing digest
        Missing("digest")"#]],
    );
    m(
        |m| m.size_bytes = 0,
        expect![[r#"
        size_bytes out of range: 0 (must be at least 1)
        OutOfRange { field: "size_bytes", value: 0, min: 1, max: None }"#]],
    );
    m(
        |m| m.wit_world.clear(),
        expect![[r#"
        missing wit_world
        Missing("wit_world")"#]],
    );
    m(
        |m| m.signer.clear(),
        expect![[r#"
        missing signer
        Missing("signer")"#]],
    );
}

#[test]
fn run_status_update() {
    let running = || pb::RunStatusUpdate::from(samples::status_reports()[0].clone());
    let completed = || pb::RunStatusUpdate::from(samples::status_reports()[1].clone());
    let failed = || pb::RunStatusUpdate::from(samples::status_reports()[2].clone());
    let u = |wire, mutate: fn(&mut pb::RunStatusUpdate), expect| check::<_, RunStatusReport>(wire, mutate, expect);
    u(
        running(),
        |u| u.run_id.clear(),
        expect![[r#"
        missing run_id
        Missing("run_id")"#]],
    );
    u(
        running(),
        |u| u.lease = 0,
        expect![[r#"
        lease out of range: 0 (must be at least 1)
        OutOfRange { field: "lease", value: 0, min: 1, max: None }"#]],
    );
    u(
        running(),
        |u| u.status = 0,
        expect![[r#"
        missing status
        Missing("status")"#]],
    );
    u(
        running(),
        |u| u.status = 99,
        expect![[r#"
        unknown status value 99
        UnknownEnum { field: "status", value: 99 }"#]],
    );
    u(
        running(),
        |u| u.status = pb::RunStatus::Assigned.into(),
        expect![[r#"
            invalid status "ASSIGNED": a Worker reports RUNNING, COMPLETED, FAILED or CANCELLED
            Invalid { field: "status", value: "ASSIGNED", reason: "a Worker reports RUNNING, COMPLETED, FAILED or CANCELLED" }"#]],
    );
    u(
        running(),
        |u| u.permanent = true,
        expect![[r#"
            invalid permanent "true": is set only when FAILED, not RUNNING
            Invalid { field: "permanent", value: "true", reason: "is set only when FAILED, not RUNNING" }"#]],
    );
    u(
        completed(),
        |u| u.interrupted = true,
        expect![[r#"
            invalid interrupted "true": is set only when FAILED, not COMPLETED
            Invalid { field: "interrupted", value: "true", reason: "is set only when FAILED, not COMPLETED" }"#]],
    );
    u(
        failed(),
        |u| {
            u.permanent = true;
            u.interrupted = true;
        },
        expect![[r#"
            interrupted is set with permanent (a Run fails one way)
            Inconsistent { field: "interrupted", reason: "is set with permanent (a Run fails one way)" }"#]],
    );
    u(
        completed(),
        |u| u.permanent = true,
        expect![[r#"
            invalid permanent "true": is set only when FAILED, not COMPLETED
            Invalid { field: "permanent", value: "true", reason: "is set only when FAILED, not COMPLETED" }"#]],
    );
    u(
        running(),
        |u| u.error = Some("x".into()),
        expect![[r#"
        error is set only when FAILED or CANCELLED
        Inconsistent { field: "error", reason: "is set only when FAILED or CANCELLED" }"#]],
    );
    u(
        completed(),
        |u| u.result_json = None,
        expect![[r#"
        missing result_json
        Missing("result_json")"#]],
    );
    u(
        completed(),
        |u| u.result_json = Some("nope".into()),
        expect![[r#"
        invalid result_json "nope": not JSON: expected ident at line 1 column 2
        Invalid { field: "result_json", value: "nope", reason: "not JSON: expected ident at line 1 column 2" }"#]],
    );
    u(
        completed(),
        |u| u.error = Some("x".into()),
        expect![[r#"
        error is set only when FAILED or CANCELLED
        Inconsistent { field: "error", reason: "is set only when FAILED or CANCELLED" }"#]],
    );
    u(
        failed(),
        |u| u.error = None,
        expect![[r#"
        missing error
        Missing("error")"#]],
    );
    u(
        failed(),
        |u| u.result_json = Some("1".into()),
        expect![[r#"
        result_json is set only when COMPLETED
        Inconsistent { field: "result_json", reason: "is set only when COMPLETED" }"#]],
    );
    u(
        failed(),
        |u| u.nonce.clear(),
        expect![[r#"
        missing nonce
        Missing("nonce")"#]],
    );
    u(
        failed(),
        |u| u.nonce = "short".into(),
        expect![[r#"
        invalid nonce "5 bytes": must be 16 to 128 bytes
        Invalid { field: "nonce", value: "5 bytes", reason: "must be 16 to 128 bytes" }"#]],
    );
    u(
        failed(),
        |u| u.last_output_seq = -1,
        expect![[r#"
        last_output_seq out of range: -1 (must be at least 0)
        OutOfRange { field: "last_output_seq", value: -1, min: 0, max: None }"#]],
    );
    u(
        running(),
        |u| u.trailing_output = vec![pb::RunOutputPiece { seq: 1, data: "x".into() }],
        expect![[r#"
        trailing_output is sent only with a terminal status
        Inconsistent { field: "trailing_output", reason: "is sent only with a terminal status" }"#]],
    );
    u(
        failed(),
        |u| {
            u.trailing_output = vec![pb::RunOutputPiece { seq: 0, data: "x".into() }];
        },
        expect![[r#"
            trailing_output[0].seq out of range: 0 (must be at least 1)
            OutOfRange { field: "trailing_output[0].seq", value: 0, min: 1, max: None }"#]],
    );
    u(
        failed(),
        |u| {
            u.trailing_output =
                vec![pb::RunOutputPiece { seq: 2, data: "a".into() }, pb::RunOutputPiece { seq: 2, data: "b".into() }];
            u.last_output_seq = 2;
        },
        expect![[r#"
            trailing_output[1].seq must be higher than the previous piece's
            Inconsistent { field: "trailing_output[1].seq", reason: "must be higher than the previous piece's" }"#]],
    );
    u(
        failed(),
        |u| {
            u.trailing_output = vec![pb::RunOutputPiece { seq: 3, data: "a".into() }];
            u.last_output_seq = 4;
        },
        expect![[r#"
            last_output_seq must be the seq of the last trailing_output piece
            Inconsistent { field: "last_output_seq", reason: "must be the seq of the last trailing_output piece" }"#]],
    );
}

/// A terminal report's result, error and trailing output are capped: the
/// control plane does not rely on the Worker keeping to its own caps.
#[test]
fn run_status_update_caps() {
    let completed = || pb::RunStatusUpdate::from(samples::status_reports()[1].clone());
    let failed = || pb::RunStatusUpdate::from(samples::status_reports()[2].clone());
    let quoted = |len: usize| format!("\"{}\"", "r".repeat(len - 2));

    let mut at_caps = completed();
    at_caps.result_json = Some(quoted(RunStatusReport::MAX_RESULT_BYTES));
    at_caps.trailing_output = (1..=RunStatusReport::MAX_TRAILING_PIECES as i64)
        .map(|seq| pb::RunOutputPiece { seq, data: "x".into() })
        .collect();
    at_caps.last_output_seq = RunStatusReport::MAX_TRAILING_PIECES as i64;
    RunStatusReport::try_from(at_caps).unwrap();
    let mut at_caps = failed();
    at_caps.error = Some("e".repeat(RunStatusReport::MAX_ERROR_BYTES));
    RunStatusReport::try_from(at_caps).unwrap();

    let mut wire = completed();
    wire.result_json = Some(quoted(RunStatusReport::MAX_RESULT_BYTES + 1));
    check::<_, RunStatusReport>(
        wire,
        |_| {},
        expect![[r#"
        invalid result_json "8388609 bytes": longer than 8388608 bytes
        Invalid { field: "result_json", value: "8388609 bytes", reason: "longer than 8388608 bytes" }"#]],
    );
    let mut wire = failed();
    wire.error = Some("e".repeat(RunStatusReport::MAX_ERROR_BYTES + 1));
    check::<_, RunStatusReport>(
        wire,
        |_| {},
        expect![[r#"
        invalid error "65537 bytes": longer than 65536 bytes
        Invalid { field: "error", value: "65537 bytes", reason: "longer than 65536 bytes" }"#]],
    );
    let mut wire = pb::RunStatusUpdate::from(samples::status_reports()[3].clone());
    wire.error = Some("c".repeat(RunStatusReport::MAX_ERROR_BYTES + 1));
    check::<_, RunStatusReport>(
        wire,
        |_| {},
        expect![[r#"
        invalid error "65537 bytes": longer than 65536 bytes
        Invalid { field: "error", value: "65537 bytes", reason: "longer than 65536 bytes" }"#]],
    );
    let mut wire = failed();
    wire.trailing_output = (1..=1025).map(|seq| pb::RunOutputPiece { seq, data: "x".into() }).collect();
    wire.last_output_seq = 1025;
    check::<_, RunStatusReport>(
        wire,
        |_| {},
        expect![[r#"
        invalid trailing_output "1025 entries": more than 1024 entries
        Invalid { field: "trailing_output", value: "1025 entries", reason: "more than 1024 entries" }"#]],
    );
}

#[test]
fn run_output_chunk() {
    let chunk = || pb::RunOutputChunk::from(samples::output_report());
    let c = |mutate: fn(&mut pb::RunOutputChunk), expect| check::<_, RunOutputReport>(chunk(), mutate, expect);
    c(
        |c| c.run_id = "run b".into(),
        expect![[r#"
        invalid run_id "run b": character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')
        Invalid { field: "run_id", value: "run b", reason: "character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')" }"#]],
    );
    c(
        |c| c.lease = -2,
        expect![[r#"
        lease out of range: -2 (must be at least 1)
        OutOfRange { field: "lease", value: -2, min: 1, max: None }"#]],
    );
    c(
        |c| c.seq = 0,
        expect![[r#"
        seq out of range: 0 (must be at least 1)
        OutOfRange { field: "seq", value: 0, min: 1, max: None }"#]],
    );
}

#[test]
fn worker_draining() {
    let notice = || pb::WorkerDraining::from(samples::drain_notices()[1].clone());
    let d = |mutate: fn(&mut pb::WorkerDraining), expect| check::<_, DrainNotice>(notice(), mutate, expect);
    d(
        |d| d.deadline_unix_ms = 0,
        expect![[r#"
            missing deadline_unix_ms
            Missing("deadline_unix_ms")"#]],
    );
    d(
        |d| d.deadline_unix_ms = -5,
        expect![[r#"
            deadline_unix_ms out of range: -5 (must be at least 1)
            OutOfRange { field: "deadline_unix_ms", value: -5, min: 1, max: None }"#]],
    );
    d(
        |d| d.reason = "r".repeat(DrainNotice::MAX_REASON_BYTES + 1),
        expect![[r#"
            invalid reason "1025 bytes": longer than 1024 bytes
            Invalid { field: "reason", value: "1025 bytes", reason: "longer than 1024 bytes" }"#]],
    );
}

#[test]
fn enum_without_a_field() {
    assert_eq!(
        taskrun_core::TaskStatus::try_from(pb::TaskStatus::Unspecified),
        Err(InvalidMessage::Missing("task_status".into()))
    );
    assert_eq!(
        taskrun_core::WorkerState::try_from(pb::WorkerState::Unspecified).map_err(|e| e.to_string()),
        Err("missing worker_state".to_owned())
    );
}
