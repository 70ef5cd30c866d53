//! ModelBackend providers: the TOML config, and the `openai` provider
//! against a local server that speaks the real wire format.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskrun_agent_artifacts::CHAT;
use taskrun_core::Modality;
use taskrun_worker::model::{CallContext, CompletionRequest, Message, ModelBackendsConfig, ModelError, Role};
use taskrun_worker::{CancelToken, ModelBackends, Outcome, RunLimits, RunRequest};

use crate::examples::completed_json;
use crate::support::*;

// ---------------------------------------------------------------- config

const CONFIG: &str = r#"
worker_name = "ignored by the model backends section"

[[model_backends]]
name = "default"
provider = "echo"

[[model_backends]]
name = "gpt"
provider = "openai"
base_url = "http://127.0.0.1:9/"
model = "gpt-4o-mini"
api_key_env = "TEST_OPENAI_KEY"
timeout_ms = 1000
retries = 3
context_window = 128000
modalities = ["text", "image"]
"#;

fn env(var: &str) -> Option<String> {
    (var == "TEST_OPENAI_KEY").then(|| "sk-test-secret".to_owned())
}

#[test]
fn backends_come_from_toml() {
    let config = ModelBackendsConfig::from_toml(CONFIG).expect("parse");
    let backends = ModelBackends::from_config_with_env(&config, &env).expect("build");
    let described = backends.describe();
    assert_eq!(described.len(), 2);
    assert_eq!(described[0].name, "default");
    assert_eq!(described[0].provider, "echo");
    assert_eq!(described[1].name, "gpt");
    assert_eq!(described[1].provider, "openai");
    assert_eq!(described[1].model_name, "gpt-4o-mini");
    assert_eq!(described[1].context_window, 128000);
    assert_eq!(described[1].modalities, [Modality::Text, Modality::Image]);
    assert_eq!(backends.resolve(None).expect("default").info().name, "default");
    assert_eq!(
        backends.resolve(Some("claude")).map(|p| p.info().name.clone()),
        Err(ModelError::UnknownBackend("claude".into()))
    );
    // The key is never printed.
    assert!(!format!("{backends:?}").contains("sk-test-secret"));
}

#[test]
fn bad_backend_configs_are_refused() {
    let check = |toml: &str, expected: &str| {
        let error = ModelBackendsConfig::from_toml(toml)
            .and_then(|c| ModelBackends::from_config_with_env(&c, &env))
            .expect_err(toml);
        assert!(error.to_string().contains(expected), "{error} / {expected}");
    };
    let entry = |body: &str| format!("[[model_backends]]\n{body}\n");
    check(&entry("name = \"a\"\nprovider = \"echo\"\nmodell = \"x\""), "unknown field `modell`");
    check(&entry("name = \"a\"\nprovider = \"bard\""), "unknown variant `bard`");
    check(
        &entry("name = \"a\"\nprovider = \"echo\"\nbase_url = \"http://x\""),
        "base_url applies to provider openai only",
    );
    check(&entry("name = \"a\"\nprovider = \"openai\"\nmodel = \"m\""), "needs base_url");
    check(&entry("name = \"a\"\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \"ftp://x\""), "must start with http");
    check(
        &entry(
            "name = \"a\"\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \"https://x\"\napi_key_env = \"NOT_SET_ANYWHERE\"",
        ),
        "environment variable NOT_SET_ANYWHERE is not set",
    );
    check(
        &format!("{}{}", entry("name = \"a\"\nprovider = \"echo\""), entry("name = \"a\"\nprovider = \"echo\"")),
        "configured twice",
    );
    check(&entry("name = \"has space\"\nprovider = \"echo\""), "model_backend.name");
}

#[test]
fn an_api_key_never_goes_over_cleartext_http_to_another_machine() {
    let config = |base_url: &str, key: bool| {
        let key = if key { "api_key_env = \"TEST_OPENAI_KEY\"\n" } else { "" };
        let toml = format!(
            "[[model_backends]]\nname = \"a\"\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \"{base_url}\"\n{key}"
        );
        ModelBackendsConfig::from_toml(&toml).and_then(|c| ModelBackends::from_config_with_env(&c, &env))
    };
    for remote in
        ["http://10.0.0.5:8000", "http://models.internal/v1-proxy", "http://operator:hunter2@10.0.0.5/?api-key=k3y"]
    {
        let error = config(remote, true).expect_err(remote).to_string();
        assert!(error.contains("cleartext") && error.contains("use https://"), "{remote}: {error}");
        assert!(!error.contains("hunter2") && !error.contains("k3y"), "{remote}: {error}");
        // Without a key, or over https, nothing secret travels.
        config(remote, false).expect(remote);
        config(&remote.replacen("http://", "https://", 1), true).expect(remote);
    }
    // A server on this machine (vLLM, llama.cpp, Ollama) may take a key over http.
    for local in ["http://127.0.0.1:8000", "http://localhost:11434", "http://[::1]:8080"] {
        config(local, true).expect(local);
    }
}

// ---------------------------------------------------------------- local server

/// One scripted answer.
enum Reply {
    /// A whole response.
    Full { status: u16, headers: Vec<(&'static str, String)>, body: String },
    /// `200` with a chunked SSE body: each event is sent after its pause
    /// (a pause ends early, and the answer with it, when the server stops).
    Sse(Vec<(Duration, String)>),
    /// Reads the request and never answers (until the server stops).
    Hang,
}

/// The longest any scripted pause lasts: "forever" for the tests.
const FOREVER: Duration = Duration::from_secs(30);

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply::Full { status, headers: vec![], body: body.to_string() }
    }
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
    body: Value,
}

/// Set when the server stops: ends every pause still going on.
#[derive(Debug, Clone, Default)]
struct Stopping(Arc<(Mutex<bool>, Condvar)>);

impl Stopping {
    fn stop(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    /// Waits `pause`; `false` if the server stopped meanwhile.
    fn pause(&self, pause: Duration) -> bool {
        let (stopped, wake) = &*self.0;
        let guard = stopped.lock().unwrap();
        let (guard, _) = wake.wait_timeout_while(guard, pause, |stopped| !*stopped).unwrap();
        !*guard
    }
}

/// An HTTP/1.1 server on 127.0.0.1:0 answering one connection per reply,
/// in order, then stopping.
struct Server {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// When the client stopped taking an SSE answer (a write failed).
    client_left: Arc<Mutex<Option<Instant>>>,
    stopping: Stopping,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(replies: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let client_left = Arc::new(Mutex::new(None));
        let stopping = Stopping::default();
        let (log, left, stop) = (seen.clone(), client_left.clone(), stopping.clone());
        let thread = std::thread::spawn(move || {
            for reply in replies {
                let Ok((stream, _)) = listener.accept() else { return };
                stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                let Some(request) = read_request(&stream) else { return };
                log.lock().unwrap().push(request);
                if !answer(stream, reply, &stop) {
                    left.lock().unwrap().get_or_insert_with(Instant::now);
                }
            }
        });
        Server { base_url, seen, client_left, stopping, thread: Some(thread) }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to `within` for the client to stop taking an SSE answer.
    fn client_left_within(&self, within: Duration) -> Option<Instant> {
        let until = Instant::now() + within;
        loop {
            let left = *self.client_left.lock().unwrap();
            if left.is_some() || Instant::now() >= until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // End any pause, unblock a server still waiting for a connection,
        // then join it.
        self.stopping.stop();
        let _ = TcpStream::connect(self.base_url.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Seen { path, headers, body: serde_json::from_slice(&body).ok()? })
}

/// Sends `reply`; `false` if the client went away before all of it was
/// written.
fn answer(mut stream: TcpStream, reply: Reply, stopping: &Stopping) -> bool {
    match reply {
        Reply::Full { status, headers, body } => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            stream.write_all(format!("{head}\r\n{body}").as_bytes()).is_ok()
        }
        Reply::Sse(events) => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).is_err() {
                return false;
            }
            for (pause, event) in events {
                if !stopping.pause(pause) {
                    return true;
                }
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if stream.write_all(chunk.as_bytes()).and_then(|()| stream.flush()).is_err() {
                    return false;
                }
            }
            stream.write_all(b"0\r\n\r\n").is_ok()
        }
        Reply::Hang => {
            stopping.pause(FOREVER);
            true
        }
    }
}

fn delta(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
    )
}

fn openai_backends(server: &Server, extra: &str) -> Arc<ModelBackends> {
    let toml = format!(
        "[[model_backends]]\nname = \"default\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"test-model\"\napi_key_env = \"TEST_OPENAI_KEY\"\nretry_backoff_ms = 20\n{extra}",
        server.base_url
    );
    let config = ModelBackendsConfig::from_toml(&toml).expect("toml");
    Arc::new(ModelBackends::from_config_with_env(&config, &env).expect("backends"))
}

fn request(prompt: &str) -> CompletionRequest {
    CompletionRequest {
        messages: vec![Message { role: Role::User, content: prompt.into() }],
        max_tokens: 32,
        temperature: Some(0.5),
    }
}

fn ctx() -> CallContext {
    CallContext::with_budget(Duration::from_secs(20))
}

// ---------------------------------------------------------------- openai

#[test]
fn openai_streams_tokens_to_the_agent_as_they_arrive() {
    let pause = Duration::from_millis(60);
    let server = Server::start(vec![Reply::Sse(vec![
        (Duration::ZERO, format!("data: {}\n\n", json!({"choices":[{"index":0,"delta":{"role":"assistant"}}]}))),
        (Duration::ZERO, delta("Hel")),
        (pause, delta("lo")),
        (pause, ": keep-alive\n\n".into()),
        (pause, delta(" wor")),
        (pause, delta("ld")),
        (Duration::ZERO, format!("data: {}\n\n", json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}))),
        (Duration::ZERO, "data: [DONE]\n\n".into()),
    ])]);
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = taskrun_worker::OutputSink::new(move |chunk| {
        let _ = tx.send((Instant::now(), chunk));
    });
    let report = sandbox()
        .run(
            &prepare(CHAT),
            RunRequest::new(r#"{"prompt":"say hello","system":"be brief","max_tokens":16}"#)
                .limits(limits())
                .backends(openai_backends(&server, ""))
                .output(sink),
        )
        .expect("run");
    let finished = Instant::now();
    let result = completed_json(&report.outcome);
    assert_eq!(result["text"], "Hello world");
    let chunks: Vec<(Instant, String)> = rx.try_iter().collect();
    let tokens: Vec<&str> = chunks.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(tokens, ["Hel", "lo", " wor", "ld"]);
    assert!(finished.duration_since(chunks[0].0) >= pause * 3);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].headers["authorization"], "Bearer sk-test-secret");
    assert_eq!(
        seen[0].body,
        json!({
            "model": "test-model",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "say hello"},
            ],
            "max_tokens": 16,
            "stream": true,
        })
    );
}

#[test]
fn openai_complete_without_streaming() {
    let server = Server::start(vec![Reply::json(
        200,
        json!({"id":"c2","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}]}),
    )]);
    let backends = openai_backends(&server, "");
    let completion = backends.resolve(None).expect("backend").complete(&request("hello"), &ctx()).expect("complete");
    assert_eq!(completion.text, "Hi there");
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    let seen = server.seen();
    assert_eq!(seen[0].body["stream"], false);
    assert_eq!(seen[0].body["temperature"], 0.5);
}

#[test]
fn openai_error_bodies_reach_the_caller() {
    let error = |message: &str| json!({"error":{"message":message,"type":"invalid_request_error"}});
    let server = Server::start(vec![
        Reply::json(400, error("max_tokens is too large")),
        Reply::json(401, error("Incorrect API key provided")),
    ]);
    let backends = openai_backends(&server, "");
    let provider = backends.resolve(None).expect("backend");
    assert_eq!(
        provider.complete(&request("x"), &ctx()),
        Err(ModelError::InvalidRequest("http 400: max_tokens is too large".into()))
    );
    assert_eq!(
        provider.stream(&request("x"), &ctx()).err(),
        Some(ModelError::Provider("http 401: Incorrect API key provided".into()))
    );
    // Neither was retried.
    assert_eq!(server.seen().len(), 2);
}

#[test]
fn openai_retries_429_honouring_retry_after() {
    let server = Server::start(vec![
        Reply::Full {
            status: 429,
            headers: vec![("retry-after", "1".into())],
            body: json!({"error":{"message":"Rate limit reached"}}).to_string(),
        },
        Reply::Sse(vec![(Duration::ZERO, delta("ok")), (Duration::ZERO, "data: [DONE]\n\n".into())]),
    ]);
    let backends = openai_backends(&server, "");
    let started = Instant::now();
    let mut stream =
        backends.resolve(None).expect("backend").stream(&request("x"), &ctx()).expect("stream after retry");
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After ignored");
    assert_eq!(stream.next_token(&ctx()), Ok(Some("ok".into())));
    assert_eq!(stream.next_token(&ctx()), Ok(None));
    assert_eq!(server.seen().len(), 2);
}

#[test]
fn openai_retries_5xx_with_backoff_then_gives_up() {
    let unavailable = || Reply::json(503, json!({"error":{"message":"overloaded"}}));
    let ok = || Reply::json(200, json!({"choices":[{"message":{"content":"third time"},"finish_reason":"stop"}]}));
    let server = Server::start(vec![unavailable(), unavailable(), ok()]);
    let backends = openai_backends(&server, "retries = 2");
    let completion = backends.resolve(None).expect("backend").complete(&request("x"), &ctx()).expect("complete");
    assert_eq!(completion.text, "third time");
    assert_eq!(server.seen().len(), 3);

    let server = Server::start(vec![unavailable(), unavailable(), ok()]);
    let backends = openai_backends(&server, "retries = 1");
    assert_eq!(
        backends.resolve(None).expect("backend").complete(&request("x"), &ctx()),
        Err(ModelError::Provider("http 503: overloaded".into()))
    );
    assert_eq!(server.seen().len(), 2);
}

#[test]
fn openai_error_events_mid_stream_fail_the_agent() {
    let server = Server::start(vec![Reply::Sse(vec![
        (Duration::ZERO, delta("par")),
        (Duration::ZERO, format!("data: {}\n\n", json!({"error":{"message":"server overloaded"}}))),
    ])]);
    let chunks = Chunks::default();
    let report = sandbox()
        .run(
            &prepare(CHAT),
            RunRequest::new(r#"{"prompt":"x"}"#)
                .limits(limits())
                .backends(openai_backends(&server, ""))
                .output(chunks.sink()),
        )
        .expect("run");
    assert_eq!(report.outcome, Outcome::Failed("model call failed: provider: server overloaded".into()));
    assert_eq!(chunks.take(), ["par"]);
}

// ---------------------------------------------------------------- cancellation

/// The requirement: a model call blocked on a silent server ends this soon
/// after its Run is cancelled or reaches its deadline.
const WITHIN: Duration = Duration::from_millis(100);
/// When the tests cancel, counted from the moment the call is blocked.
const CANCEL_AFTER: Duration = Duration::from_millis(50);

fn cancelled() -> ModelError {
    ModelError::Provider("run cancelled".into())
}

/// Makes `call` with a fresh context (deadline far off) whose Run is
/// cancelled `after` into the call. Returns what the call returned and how
/// long after the cancel it returned.
fn cancel_during<T>(after: Duration, call: impl FnOnce(&CallContext) -> T) -> (T, Duration) {
    let ctx = ctx();
    let cancel = ctx.cancel.clone();
    std::thread::scope(|scope| {
        let canceller = scope.spawn(move || {
            std::thread::sleep(after);
            let cancelled_at = Instant::now();
            cancel.cancel();
            cancelled_at
        });
        let result = call(&ctx);
        let returned_at = Instant::now();
        let cancelled_at = canceller.join().expect("canceller");
        (result, returned_at.saturating_duration_since(cancelled_at))
    })
}

#[test]
fn openai_call_stalled_before_its_headers_ends_within_100ms_of_cancel() {
    let server = Server::start(vec![Reply::Hang]);
    let backends = openai_backends(&server, "");
    let provider = backends.resolve(None).expect("backend");
    let (result, took) = cancel_during(CANCEL_AFTER, |ctx| provider.complete(&request("x"), ctx));
    assert_eq!(result, Err(cancelled()));
    assert!(took < WITHIN, "complete returned {took:?} after the cancel");
    assert_eq!(server.seen().len(), 1, "the request was sent");

    let server = Server::start(vec![Reply::Hang]);
    let backends = openai_backends(&server, "");
    let provider = backends.resolve(None).expect("backend");
    let (result, took) = cancel_during(CANCEL_AFTER, |ctx| provider.stream(&request("x"), ctx).err());
    assert_eq!(result, Some(cancelled()));
    assert!(took < WITHIN, "stream returned {took:?} after the cancel");
}

#[test]
fn openai_stream_stalled_between_chunks_ends_within_100ms_of_cancel() {
    let server = Server::start(vec![Reply::Sse(vec![
        (Duration::ZERO, delta("Hel")),
        (Duration::ZERO, delta("lo")),
        (FOREVER, delta(" never")),
    ])]);
    let backends = openai_backends(&server, "");
    let provider = backends.resolve(None).expect("backend");
    let mut tokens = Vec::new();
    let ((), took) = cancel_during(CANCEL_AFTER, |ctx| {
        let mut stream = provider.stream(&request("x"), ctx).expect("stream");
        loop {
            match stream.next_token(ctx) {
                Ok(Some(token)) => tokens.push(Ok(token)),
                Ok(None) => break tokens.push(Err(None)),
                Err(e) => break tokens.push(Err(Some(e))),
            }
        }
        // Cancelled stays cancelled.
        assert_eq!(stream.next_token(ctx), Err(cancelled()));
    });
    assert_eq!(tokens, [Ok("Hel".to_owned()), Ok("lo".to_owned()), Err(Some(cancelled()))]);
    assert!(took < WITHIN, "next_token returned {took:?} after the cancel");
}

#[test]
fn openai_retry_backoff_ends_within_100ms_of_cancel() {
    // A 503 asking for a 10 s pause before the retry.
    let server = Server::start(vec![Reply::Full {
        status: 503,
        headers: vec![("retry-after", "10".into())],
        body: json!({"error":{"message":"overloaded"}}).to_string(),
    }]);
    let backends = openai_backends(&server, "retries = 1");
    let provider = backends.resolve(None).expect("backend");
    // Long enough for the 503 to arrive: the cancel comes during the backoff.
    let (result, took) = cancel_during(Duration::from_millis(200), |ctx| provider.complete(&request("x"), ctx));
    assert_eq!(result, Err(cancelled()));
    assert!(took < WITHIN, "complete returned {took:?} after the cancel");
    assert_eq!(server.seen().len(), 1, "retried after the cancel");
}

#[test]
fn openai_call_stalled_at_the_deadline_ends_with_it() {
    let budget = Duration::from_millis(150);
    let server = Server::start(vec![Reply::Hang]);
    let backends = openai_backends(&server, "");
    let provider = backends.resolve(None).expect("backend");
    let ctx = CallContext::with_budget(budget);
    assert_eq!(provider.complete(&request("x"), &ctx), Err(ModelError::LimitExceeded));
    let late = Instant::now().saturating_duration_since(ctx.deadline);
    assert!(late < WITHIN, "complete returned {late:?} after the deadline");

    let server = Server::start(vec![Reply::Sse(vec![(Duration::ZERO, delta("Hel")), (FOREVER, delta(" never"))])]);
    let backends = openai_backends(&server, "");
    let provider = backends.resolve(None).expect("backend");
    let ctx = CallContext::with_budget(budget);
    let mut stream = provider.stream(&request("x"), &ctx).expect("stream");
    assert_eq!(stream.next_token(&ctx), Ok(Some("Hel".into())));
    assert_eq!(stream.next_token(&ctx), Err(ModelError::LimitExceeded));
    let late = Instant::now().saturating_duration_since(ctx.deadline);
    assert!(late < WITHIN, "next_token returned {late:?} after the deadline");
}

#[test]
fn a_dropped_stream_stops_reading_the_answer() {
    // A long answer, one event every 5 ms: dropping the stream ends its
    // reader thread, which closes the connection long before the end.
    let events: Vec<_> = (0..400).map(|i| (Duration::from_millis(5), delta(&format!("t{i} ")))).collect();
    let server = Server::start(vec![Reply::Sse(events)]);
    let backends = openai_backends(&server, "");
    let mut stream = backends.resolve(None).expect("backend").stream(&request("x"), &ctx()).expect("stream");
    assert_eq!(stream.next_token(&ctx()), Ok(Some("t0 ".into())));
    assert_eq!(stream.next_token(&ctx()), Ok(Some("t1 ".into())));
    drop(stream);
    let dropped_at = Instant::now();
    let left_at = server.client_left_within(Duration::from_secs(1)).expect("the reader thread still reads");
    assert!(left_at.saturating_duration_since(dropped_at) < Duration::from_millis(500));
}

/// Runs `chat` against `server` and cancels the Run once `ready` returns
/// (with the output it took from the Run's sink). Returns the Run's
/// outcome, all of its output and how long after the cancel it ended.
fn cancel_chat(
    server: &Server,
    ready: impl FnOnce(&std::sync::mpsc::Receiver<String>) -> Vec<String>,
) -> (Outcome, Vec<String>, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = taskrun_worker::OutputSink::new(move |chunk| {
        let _ = tx.send(chunk);
    });
    let chat = prepare(CHAT);
    let cancel = CancelToken::new();
    let request = RunRequest::new(r#"{"prompt":"x"}"#)
        .limits(limits())
        .backends(openai_backends(server, ""))
        .output(sink)
        .cancel(cancel.clone());
    std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            let report = sandbox().run(&chat, request).expect("run");
            (report, Instant::now())
        });
        let mut output = ready(&rx);
        let cancelled_at = Instant::now();
        cancel.cancel();
        let (report, ended_at) = run.join().expect("run thread");
        output.extend(rx.try_iter());
        (report.outcome, output, ended_at.saturating_duration_since(cancelled_at))
    })
}

#[test]
fn cancelling_a_run_waiting_on_a_stalled_model_server_stops_it_within_100ms() {
    // Stalled before the response headers.
    let server = Server::start(vec![Reply::Hang]);
    let (outcome, output, took) = cancel_chat(&server, |_| {
        // Cancel once the agent's request has reached the server.
        let asked = Instant::now() + Duration::from_secs(10);
        while server.seen().is_empty() && Instant::now() < asked {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(CANCEL_AFTER);
        Vec::new()
    });
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(output.is_empty(), "{output:?}");
    assert!(took < WITHIN, "the Run ended {took:?} after the cancel");
    assert_eq!(server.seen().len(), 1, "the agent was waiting on the model call");

    // Stalled between two chunks: what came before the stall reached the
    // output, in order.
    let server = Server::start(vec![Reply::Sse(vec![
        (Duration::ZERO, delta("Hel")),
        (Duration::ZERO, delta("lo")),
        (FOREVER, delta(" never")),
    ])]);
    let (outcome, output, took) = cancel_chat(&server, |rx| {
        // Cancel once the agent has emitted the two tokens and waits.
        let output: Vec<String> = (0..2).filter_map(|_| rx.recv_timeout(Duration::from_secs(10)).ok()).collect();
        std::thread::sleep(CANCEL_AFTER);
        output
    });
    assert_eq!(outcome, Outcome::Cancelled);
    assert_eq!(output, ["Hel", "lo"]);
    assert!(took < WITHIN, "the Run ended {took:?} after the cancel");
}

#[test]
fn a_hanging_provider_cannot_outlast_the_run() {
    let server = Server::start(vec![Reply::Hang]);
    let deadline = Duration::from_millis(500);
    let chat = prepare(CHAT);
    let started = Instant::now();
    let report = sandbox()
        .run(
            &chat,
            RunRequest::new(r#"{"prompt":"x"}"#)
                .limits(RunLimits { deadline, ..limits() })
                .backends(openai_backends(&server, "")),
        )
        .expect("run");
    let elapsed = started.elapsed();
    assert!(elapsed <= deadline.mul_f64(1.1) + Duration::from_millis(25), "{elapsed:?}");
    assert_eq!(report.outcome, Outcome::TimedOut);
    drop(server);
}

#[test]
fn no_key_means_no_authorization_header() {
    let server = Server::start(vec![Reply::json(200, json!({"choices":[{"message":{"content":"local"}}]}))]);
    let toml = format!(
        "[[model_backends]]\nname = \"llama\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"llama-3\"\n",
        server.base_url
    );
    let backends = ModelBackends::from_toml(&toml).expect("backends");
    let completion =
        backends.resolve(Some("llama")).expect("backend").complete(&request("x"), &ctx()).expect("complete");
    assert_eq!(completion.text, "local");
    assert!(!server.seen()[0].headers.contains_key("authorization"));
}

#[test]
fn a_run_waiting_on_its_model_leaves_its_runtime_responsive() {
    // The model pauses 400 ms between two tokens. The Run and a ticker
    // share one thread: the wait must not hold it.
    let pause = Duration::from_millis(400);
    let server = Server::start(vec![Reply::Sse(vec![
        (Duration::ZERO, delta("Hel")),
        (pause, delta("lo")),
        (Duration::ZERO, format!("data: {}\n\n", json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}))),
        (Duration::ZERO, "data: [DONE]\n\n".into()),
    ])]);
    let chat = prepare(CHAT);
    let request = RunRequest::new(r#"{"prompt":"x"}"#).limits(limits()).backends(openai_backends(&server, ""));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let (report, ticks) = runtime.block_on(ticks_while(sandbox().run_async(chat, request)));
    let outcome = report.expect("run").outcome;
    assert_eq!(completed_json(&outcome)["text"], "Hello");
    // Blocked in the model call, the thread would tick ~0 times in 400 ms.
    assert!(ticks >= 15, "the runtime ticked {ticks} times while the Run waited on its model");
}

/// A `[[model_backends]]` entry named `default` for `base_url`, key set.
fn backends_at(base_url: &str, extra: &str) -> Arc<ModelBackends> {
    let toml = format!(
        "[[model_backends]]\nname = \"default\"\nprovider = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"m\"\napi_key_env = \"TEST_OPENAI_KEY\"\n{extra}"
    );
    let config = ModelBackendsConfig::from_toml(&toml).expect("toml");
    Arc::new(ModelBackends::from_config_with_env(&config, &env).expect("backends"))
}

#[test]
fn the_agent_never_sees_the_userinfo_or_query_of_base_url() {
    let secrets = ["operator", "hunter2", "api-key", "k3y-in-query"];
    // A port nobody listens on: the call fails to connect.
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let backends =
        backends_at(&format!("http://operator:hunter2@127.0.0.1:{port}/proxy/?api-key=k3y-in-query"), "retries = 0");
    let report = sandbox()
        .run(&prepare(CHAT), RunRequest::new(r#"{"prompt":"x"}"#).limits(limits()).backends(backends.clone()))
        .expect("run");
    let Outcome::Failed(message) = &report.outcome else { panic!("{:?}", report.outcome) };
    assert!(message.contains(&format!("http://127.0.0.1:{port}/proxy/v1/chat/completions: ")), "{message}");
    let debug = format!("{backends:?}");
    for secret in secrets {
        assert!(!message.contains(secret), "{message}");
        assert!(!debug.contains(secret), "{debug}");
    }

    // The query still reaches the server, after the path.
    let server = Server::start(vec![Reply::json(200, json!({"choices":[{"message":{"content":"hi"}}]}))]);
    let base_url = server.base_url.replacen("http://", "http://operator:hunter2@", 1);
    let backends = backends_at(&format!("{base_url}/?api-key=k3y-in-query"), "");
    let completion = backends.resolve(None).expect("backend").complete(&request("x"), &ctx()).expect("complete");
    assert_eq!(completion.text, "hi");
    let seen = server.seen();
    assert_eq!(seen[0].path, "/v1/chat/completions?api-key=k3y-in-query");
    assert_eq!(seen[0].headers["host"], server.base_url.trim_start_matches("http://"));
}

#[test]
fn an_answer_over_the_cap_fails_saying_so() {
    let too_large = ModelError::Provider("answer larger than the 16 MiB cap: ask for fewer tokens".into());
    // 17 MiB streamed in 256 KiB tokens; then 17 MiB in one body.
    let token = "x".repeat(256 << 10);
    let events = (0..68).map(|_| (Duration::ZERO, delta(&token))).collect();
    let body = json!({"choices":[{"message":{"content":"y".repeat(17 << 20)},"finish_reason":"stop"}]});
    let server = Server::start(vec![Reply::Sse(events), Reply::json(200, body)]);
    let backends = openai_backends(&server, "");
    let provider = backends.resolve(None).expect("backend");

    let mut stream = provider.stream(&request("x"), &ctx()).expect("stream");
    let mut tokens = 0;
    let end = loop {
        match stream.next_token(&ctx()) {
            Ok(Some(_)) => tokens += 1,
            end => break end,
        }
    };
    assert_eq!(end, Err(too_large.clone()));
    assert_eq!(tokens, 63, "every token within the cap reached the caller");
    assert_eq!(stream.next_token(&ctx()), Err(too_large.clone()));

    assert_eq!(provider.complete(&request("x"), &ctx()).map(|c| c.text.len()), Err(too_large));
}

#[test]
fn an_error_body_over_the_cap_keeps_its_status_and_start() {
    let body = json!({"error":{"message":format!("overloaded {}", "z".repeat(100 << 10))}}).to_string();
    let server = Server::start(vec![Reply::Full { status: 503, headers: vec![], body }]);
    let backends = openai_backends(&server, "retries = 0");
    let error = backends.resolve(None).expect("backend").complete(&request("x"), &ctx()).expect_err("503");
    let ModelError::Provider(message) = &error else { panic!("{error:?}") };
    let expected = r#"http 503: error body over the 64 KiB cap, starting: {"error":{"message":"overloaded zzz"#;
    assert!(message.starts_with(expected), "{message}");
    assert!(message.len() < 1024, "{} bytes", message.len());
}
