//! ModelBackend providers: the TOML config, and the `openai` provider
//! against a local server that speaks the real wire format.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskrun_agent_artifacts::CHAT;
use taskrun_core::Modality;
use taskrun_worker::model::{CallContext, CompletionRequest, Message, ModelBackendsConfig, ModelError, Role};
use taskrun_worker::{ModelBackends, Outcome, RunLimits, RunRequest};

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
            "name = \"a\"\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \"http://x\"\napi_key_env = \"NOT_SET_ANYWHERE\"",
        ),
        "environment variable NOT_SET_ANYWHERE is not set",
    );
    check(
        &format!("{}{}", entry("name = \"a\"\nprovider = \"echo\""), entry("name = \"a\"\nprovider = \"echo\"")),
        "configured twice",
    );
    check(&entry("name = \"has space\"\nprovider = \"echo\""), "model_backend.name");
}

// ---------------------------------------------------------------- local server

/// One scripted answer.
enum Reply {
    /// A whole response.
    Full { status: u16, headers: Vec<(&'static str, String)>, body: String },
    /// `200` with a chunked SSE body: each event is sent after its pause.
    Sse(Vec<(Duration, String)>),
    /// Reads the request and never answers.
    Hang,
}

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

/// An HTTP/1.1 server on 127.0.0.1:0 answering one connection per reply,
/// in order, then stopping.
struct Server {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(replies: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let thread = std::thread::spawn(move || {
            for reply in replies {
                let Ok((stream, _)) = listener.accept() else { return };
                stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                let Some(request) = read_request(&stream) else { return };
                log.lock().unwrap().push(request);
                answer(stream, reply);
            }
        });
        Server { base_url, seen, thread: Some(thread) }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Unblock a server still waiting for a connection, then join it.
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

fn answer(mut stream: TcpStream, reply: Reply) {
    match reply {
        Reply::Full { status, headers, body } => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            let _ = stream.write_all(format!("{head}\r\n{body}").as_bytes());
        }
        Reply::Sse(events) => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            for (pause, event) in events {
                std::thread::sleep(pause);
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if stream.write_all(chunk.as_bytes()).and_then(|()| stream.flush()).is_err() {
                    return;
                }
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        }
        Reply::Hang => std::thread::sleep(Duration::from_millis(1500)),
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
    assert!(matches!(report.outcome, Outcome::TimedOut | Outcome::Failed(_)), "{:?}", report.outcome);
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
