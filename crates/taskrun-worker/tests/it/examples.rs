//! The example agents: `echo`, `echo-lean` and `chat`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use taskrun_agent_artifacts::{CHAT, ECHO, ECHO_LEAN};
use taskrun_worker::model::{BackendConfig, ModelBackendsConfig, ProviderKind};
use taskrun_worker::{ModelBackends, Outcome, RunLimits, RunRequest};

use crate::support::*;

#[test]
pub fn echo() {
    echoes(ECHO);
}

/// `echo` built lean (`#![no_std]`, the SDK's allocator and panic handler)
/// behaves the same, from a component that imports no WASI interface.
#[test]
pub fn echo_lean() {
    echoes(ECHO_LEAN);
    let lean = imports(ECHO_LEAN);
    assert!(lean.contains(&"taskrun:agent/output@0.1.0".to_owned()), "{lean:?}");
    assert!(lean.iter().all(|name| name.starts_with("taskrun:agent/")), "{lean:?}");
    let std = imports(ECHO);
    assert!(std.iter().filter(|name| name.starts_with("wasi:")).count() > 5, "{std:?}");
}

/// The names of the interfaces the component at `path` imports.
fn imports(path: &str) -> Vec<String> {
    let engine = wasmtime::Engine::default();
    let component = wasmtime::component::Component::new(&engine, bytes(path)).expect("component");
    component.component_type().imports(&engine).map(|(name, _)| name.to_owned()).collect()
}

fn echoes(agent: &str) {
    let input = r#"{"text":"a longer input that the echo agent emits back in several chunks"}"#;
    let chunks = Chunks::default();
    let report =
        sandbox().run(&prepare(agent), RunRequest::new(input).limits(limits()).output(chunks.sink())).expect("run");
    assert_eq!(report.outcome, completed(input));
    let chunks = chunks.take();
    assert!(chunks.len() > 3, "{chunks:?}");
    assert!(chunks.iter().all(|c| c.chars().count() <= 16), "{chunks:?}");
    assert_eq!(chunks.concat(), input);
    assert_eq!(report.stats.output_bytes, input.len() as u64);
    assert_eq!(report.stats.output_chunks, chunks.len() as u64);
}

#[test]
fn echo_result_must_be_json() {
    // echo returns its input verbatim: text that is not JSON fails the Run.
    let report = sandbox().run(&prepare(ECHO), RunRequest::new("not json").limits(limits())).expect("run");
    let Outcome::Failed(message) = &report.outcome else {
        panic!("expected Failed, got {:?}", report.outcome);
    };
    assert!(message.contains("not JSON"), "{message}");
}

/// A result over the Run's result limit ends the Run with `ResultLimit`
/// (its size), reported as a failure that names the limit and what to do.
#[test]
fn echo_result_over_the_limit() {
    let input = r#"{"text":"just over the limit"}"#;
    let run = |result_bytes| {
        let limits = RunLimits { result_bytes, ..limits() };
        sandbox().run(&prepare(ECHO), RunRequest::new(input).limits(limits)).expect("run")
    };
    assert_eq!(run(input.len() as u64).outcome, completed(input));
    let report = run(input.len() as u64 - 1);
    assert_eq!(report.outcome, Outcome::ResultLimit(input.len() as u64));
    assert_eq!(report.outcome.kind(), "result_limit");
    let taskrun_core::RunOutcome::Failed { error } = report.to_core() else { panic!("{:?}", report.to_core()) };
    assert_eq!(
        error,
        format!(
            "result of {} bytes exceeds the result limit of {} bytes: return less and emit bulk data as output, \
             or raise the worker's sandbox.max_result_bytes",
            input.len(),
            input.len() - 1
        )
    );
}

/// Runs `chat` with `input`, recording when each chunk arrived.
fn chat_run(
    backends: Arc<ModelBackends>,
    input: &str,
    limits: RunLimits,
) -> (taskrun_worker::RunReport, Vec<(Instant, String)>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = taskrun_worker::OutputSink::new(move |chunk| {
        let _ = tx.send((Instant::now(), chunk));
    });
    let report = sandbox()
        .run(&prepare(CHAT), RunRequest::new(input).limits(limits).backends(backends).output(sink))
        .expect("run");
    (report, rx.try_iter().collect())
}

pub fn completed_json(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Completed(json) => serde_json::from_str(json.as_str()).expect("json"),
        other => panic!("expected Completed, got {other:?}"),
    }
}

#[test]
pub fn chat() {
    // An echo backend that pauses before each token: the tokens must reach
    // the sink one by one, as they are produced, in order.
    let mut backend = BackendConfig::new("default", ProviderKind::Echo);
    backend.token_delay_ms = Some(40);
    let backends =
        ModelBackends::from_config(&ModelBackendsConfig { model_backends: vec![backend] }).expect("backends");
    let (report, chunks) = chat_run(Arc::new(backends), r#"{"prompt":"the quick brown fox jumps"}"#, limits());
    let result = completed_json(&report.outcome);
    assert_eq!(result["text"], "the quick brown fox jumps");
    assert_eq!(result["tokens"], 5);
    let tokens: Vec<&str> = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(tokens, ["the ", "quick ", "brown ", "fox ", "jumps"]);
    // Streamed, not batched: each token reached the sink when the backend
    // produced it, one pause after the previous one.
    for pair in chunks.windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0);
        assert!(gap >= Duration::from_millis(30), "tokens arrived together: {gap:?}");
    }
    assert_eq!(report.stats.model_calls, 1);
    assert!(report.logs.agent_records().any(|(_, text)| text == "streamed 5 tokens"), "{:?}", report.logs);
}

#[test]
fn chat_reaches_only_configured_backends() {
    let (report, chunks) = chat_run(echo_backends(), r#"{"prompt":"hi","backend":"gpt-5"}"#, limits());
    assert_eq!(report.outcome, Outcome::Failed(r#"model call failed: unknown model backend "gpt-5""#.into()));
    assert!(chunks.is_empty());

    let (report, _) = chat_run(Arc::new(ModelBackends::none()), r#"{"prompt":"hi"}"#, limits());
    assert_eq!(report.outcome, Outcome::Failed(r#"model call failed: unknown model backend "default""#.into()));
}

/// `chat` given input it cannot read says its failure is permanent (the
/// SDK's `Error::permanent`, through the `failure` import): no attempt
/// would go better. A model error beside it is an ordinary failure. Only
/// an agent that makes permanent errors imports `failure`.
#[test]
fn chat_bad_input_fails_permanently() {
    let (report, chunks) = chat_run(echo_backends(), r#"{"no_prompt":1}"#, limits());
    let Outcome::FailedPermanently(message) = &report.outcome else {
        panic!("expected FailedPermanently, got {:?}", report.outcome);
    };
    assert!(message.starts_with("bad input: missing field `prompt`"), "{message}");
    assert_eq!(report.outcome.kind(), "failed_permanently");
    assert_eq!(
        report.to_core(),
        taskrun_core::RunOutcome::FailedPermanently { error: format!("agent error: {message}") }
    );
    assert!(chunks.is_empty() && report.stats.model_calls == 0);

    assert!(imports(CHAT).contains(&"taskrun:agent/failure@0.1.0".to_owned()));
    for agent in [ECHO, ECHO_LEAN] {
        assert!(!imports(agent).iter().any(|name| name.contains("failure")), "{agent}");
    }
}

#[test]
fn chat_model_call_cap() {
    let limits = RunLimits { model_calls: 0, ..limits() };
    let (report, _) = chat_run(echo_backends(), r#"{"prompt":"hi"}"#, limits);
    assert_eq!(report.outcome, Outcome::Failed("model call failed: model call limit exceeded".into()));
    assert_eq!(report.stats.model_calls, 0);
}
