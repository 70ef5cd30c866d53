//! The `openai` provider: any server speaking OpenAI's chat completions
//! API (`POST {base_url}/v1/chat/completions`), streamed over SSE or not.
//!
//! Blocking HTTP (ureq) runs on a helper thread per call while the host
//! call waits for it with [`CallContext::wait`], so cancelling the Run or
//! reaching its deadline ends the call within [`POLL_STEP`](super::POLL_STEP)
//! even while the server says nothing: before its response headers, between
//! two streamed chunks, or during a retry's backoff. A helper thread given up
//! on finishes on its own: it holds nothing of the Run but a clone of its
//! [`CallContext`] and a channel whose receiver is gone, stops at its next
//! check of that context or its next send, and its blocking read is bounded
//! by the request's timeout (the smaller of `timeout_ms` and the Run's time
//! left when the request was sent).
//!
//! Every request is bounded by the Run's remaining time, 429 and 5xx answers
//! are retried with exponential backoff (or the server's Retry-After), and
//! error bodies (`{"error":{"message":...}}`) reach the agent in its
//! model-error. The API key is sent but never logged or printed, and so are
//! the userinfo and query of `base_url` ([`BaseUrl`]). An answer over
//! [`MAX_BODY_BYTES`] fails the call saying so, and so does an error body
//! over [`MAX_ERROR_BODY_BYTES`] (keeping its status and first bytes).

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use taskrun_core::ModelBackend;
use ureq::Body;
use ureq::http::Response;

use super::base_url::BaseUrl;
use super::sse::{ErrorBody, SseParser, StreamEvent, stream_event};
use super::{CallContext, Completion, CompletionRequest, ModelError, Provider, TokenStream};

/// The largest response body (or streamed answer) accepted.
const MAX_BODY_BYTES: u64 = 16 << 20;
/// The most of an error response's body read.
const MAX_ERROR_BODY_BYTES: u64 = 64 << 10;
/// The most of an error body passed on to the agent.
const MAX_ERROR_CHARS: usize = 512;
/// The longest SSE line accepted.
const MAX_LINE_BYTES: u64 = 1 << 20;
/// The longest a Retry-After is honoured (longer: give up).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Pieces a stream's reader thread reads ahead of the agent.
const READ_AHEAD: usize = 64;

/// A secret that prints as `<redacted>`.
#[derive(Clone)]
pub(crate) struct ApiKey(String);

impl ApiKey {
    pub(crate) fn new(key: String) -> ApiKey {
        ApiKey(key)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Checked settings of one `openai` backend.
#[derive(Debug, Clone)]
pub(crate) struct OpenAiSettings {
    pub(crate) base_url: BaseUrl,
    pub(crate) model: String,
    pub(crate) api_key: Option<ApiKey>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) retries: u32,
    pub(crate) retry_backoff: Duration,
}

pub struct OpenAiProvider {
    info: ModelBackend,
    client: Arc<Client>,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("info", &self.info)
            .field("settings", &self.client.settings)
            .finish_non_exhaustive()
    }
}

/// What a call's helper thread needs to send requests: shared by the
/// provider and the threads of its calls.
struct Client {
    backend: String,
    settings: OpenAiSettings,
    agent: ureq::Agent,
}

impl OpenAiProvider {
    pub(crate) fn new(info: ModelBackend, settings: OpenAiSettings) -> OpenAiProvider {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(settings.connect_timeout))
            .timeout_global(Some(settings.timeout))
            .max_redirects(0)
            // Only what the operator configured: no proxy from the environment.
            .proxy(None)
            .user_agent(concat!("taskrun-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let client = Client { backend: info.name.clone(), settings, agent };
        OpenAiProvider { info, client: Arc::new(client) }
    }

    fn body(&self, request: &CompletionRequest, stream: bool) -> Result<Vec<u8>, ModelError> {
        if request.max_tokens == 0 {
            return Err(ModelError::InvalidRequest("max-tokens must be greater than zero".into()));
        }
        if request.messages.is_empty() {
            return Err(ModelError::InvalidRequest("no messages".into()));
        }
        if let Some(t) = request.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ModelError::InvalidRequest(format!("temperature {t} is outside 0 to 2")));
        }
        let messages: Vec<_> =
            request.messages.iter().map(|m| json!({ "role": m.role.as_str(), "content": m.content })).collect();
        let mut body = json!({
            "model": self.client.settings.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "stream": stream,
        });
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        serde_json::to_vec(&body).map_err(|e| ModelError::InvalidRequest(e.to_string()))
    }
}

impl Client {
    /// POSTs `body`, retrying 429, 5xx and failed connections, and returns
    /// the first successful response.
    fn send(&self, body: &[u8], ctx: &CallContext) -> Result<Response<Body>, ModelError> {
        let mut attempt = 0u32;
        loop {
            ctx.check()?;
            let timeout = self.settings.timeout.min(ctx.remaining());
            let mut request =
                self.agent.post(self.settings.base_url.chat_completions()).header("content-type", "application/json");
            if let Some(key) = &self.settings.api_key {
                request = request.header("authorization", format!("Bearer {}", key.0));
            }
            let result = request.config().timeout_global(Some(timeout)).build().send(body);
            let (retry_after, error) = match result {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after =
                        response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
                    let message = error_message(response.into_body());
                    let error = status_error(status, &message);
                    if !(status == 429 || status >= 500) {
                        return Err(error);
                    }
                    (retry_after, error)
                }
                Err(e @ (ureq::Error::Timeout(_) | ureq::Error::BodyExceedsLimit(_))) => {
                    return Err(self.request_error(&e));
                }
                Err(e) => (None, self.request_error(&e)),
            };
            if attempt >= self.settings.retries {
                return Err(error);
            }
            let delay = retry_delay(attempt, self.settings.retry_backoff, retry_after);
            if delay > MAX_RETRY_AFTER || delay >= ctx.remaining() {
                return Err(error);
            }
            tracing::debug!(
                backend = %self.backend,
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %error,
                "retrying model call"
            );
            ctx.sleep(delay)?;
            attempt += 1;
        }
    }

    /// A request that got no answer, naming the URL without its secrets.
    fn request_error(&self, error: &ureq::Error) -> ModelError {
        let url = self.settings.base_url.shown_chat_completions();
        match error {
            // Its text repeats the whole URL (the base URL was checked at
            // load, so this should not happen).
            ureq::Error::BadUri(_) => ModelError::Provider(format!("{url}: not a valid url")),
            e => ModelError::Provider(format!("{url}: {e}")),
        }
    }

    /// A whole answer: the request, its retries and the body.
    fn complete(&self, body: &[u8], ctx: &CallContext) -> Result<Completion, ModelError> {
        let response = self.send(body, ctx)?;
        let text =
            response.into_body().into_with_config().limit(MAX_BODY_BYTES).read_to_string().map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => too_large(),
                e => ModelError::Provider(format!("reading the answer: {e}")),
            })?;
        parse_completion(&text)
    }

    /// A stream's reader thread: sends the request, says on `started`
    /// whether the server answered, then passes each piece on to `pieces`
    /// until the answer ends, fails, or nobody listens any more.
    fn read_stream(
        &self,
        body: &[u8],
        ctx: &CallContext,
        started: SyncSender<Result<(), ModelError>>,
        pieces: SyncSender<Result<Option<String>, ModelError>>,
    ) {
        let response = match self.send(body, ctx) {
            Ok(response) => response,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        if started.send(Ok(())).is_err() {
            return; // the call was given up while waiting for the headers
        }
        let mut reader = SseReader {
            // One byte over the cap tells an answer over it from one that
            // ends right at it.
            reader: BufReader::new(response.into_body().into_reader().take(MAX_BODY_BYTES + 1)),
            parser: SseParser::default(),
            read: 0,
            done: false,
        };
        // Stops when the Run is over (its host call has returned already),
        // at the end of the answer, or when the stream was dropped.
        while ctx.check().is_ok() {
            let piece = reader.next_piece();
            let last = !matches!(piece, Ok(Some(_)));
            if pieces.send(piece).is_err() || last {
                return;
            }
        }
    }
}

/// Runs `work` on a new thread of its own (detached: it ends when `work`
/// does).
fn spawn(work: impl FnOnce() + Send + 'static) -> Result<(), ModelError> {
    std::thread::Builder::new()
        .name("taskrun-model-call".into())
        .spawn(work)
        .map(drop)
        .map_err(|e| ModelError::Provider(format!("starting the model call: {e}")))
}

/// An answer over [`MAX_BODY_BYTES`].
fn too_large() -> ModelError {
    ModelError::Provider(format!("answer larger than the {} MiB cap: ask for fewer tokens", MAX_BODY_BYTES >> 20))
}

/// What a helper thread that ended without answering leaves its caller.
fn vanished() -> ModelError {
    ModelError::Provider("model call ended without an answer".into())
}

impl Provider for OpenAiProvider {
    fn info(&self) -> &ModelBackend {
        &self.info
    }

    fn complete(&self, request: &CompletionRequest, ctx: &CallContext) -> Result<Completion, ModelError> {
        let body = self.body(request, false)?;
        ctx.check()?;
        let (tx, rx) = sync_channel(1);
        let (client, thread_ctx) = (self.client.clone(), ctx.clone());
        spawn(move || {
            let _ = tx.send(client.complete(&body, &thread_ctx));
        })?;
        ctx.wait(&rx)?.unwrap_or_else(|| Err(vanished())).map_err(|e| ctx.reason(e))
    }

    fn stream(&self, request: &CompletionRequest, ctx: &CallContext) -> Result<Box<dyn TokenStream>, ModelError> {
        let body = self.body(request, true)?;
        ctx.check()?;
        let (started_tx, started) = sync_channel(1);
        let (pieces_tx, pieces) = sync_channel(READ_AHEAD);
        let (client, thread_ctx) = (self.client.clone(), ctx.clone());
        spawn(move || client.read_stream(&body, &thread_ctx, started_tx, pieces_tx))?;
        ctx.wait(&started)?.unwrap_or_else(|| Err(vanished())).map_err(|e| ctx.reason(e))?;
        Ok(Box::new(OpenAiStream { pieces, end: None }))
    }
}

/// An SSE answer being read by its reader thread, which reads ahead (at
/// most [`READ_AHEAD`] pieces) as the server produces them. Dropping it
/// ends that thread at its next piece.
struct OpenAiStream {
    pieces: Receiver<Result<Option<String>, ModelError>>,
    /// How the answer ended, once it has (the reader thread is gone then).
    end: Option<Result<(), ModelError>>,
}

impl TokenStream for OpenAiStream {
    fn next_token(&mut self, ctx: &CallContext) -> Result<Option<String>, ModelError> {
        if let Some(end) = &self.end {
            return end.clone().map(|()| None);
        }
        match ctx.wait(&self.pieces)?.unwrap_or_else(|| Err(vanished())) {
            Ok(Some(token)) => Ok(Some(token)),
            Ok(None) => {
                self.end = Some(Ok(()));
                Ok(None)
            }
            Err(e) => {
                let e = ctx.reason(e);
                self.end = Some(Err(e.clone()));
                Err(e)
            }
        }
    }
}

/// Reads an SSE answer piece by piece, reading just far enough each time
/// to return the next one.
struct SseReader {
    reader: BufReader<std::io::Take<ureq::BodyReader<'static>>>,
    parser: SseParser,
    /// Bytes of the answer read so far.
    read: u64,
    done: bool,
}

impl SseReader {
    /// The next piece; `None` once the answer is complete.
    fn next_piece(&mut self) -> Result<Option<String>, ModelError> {
        let mut line = Vec::new();
        while !self.done {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE_BYTES)
                .read_until(b'\n', &mut line)
                .map_err(|e| ModelError::Provider(format!("reading the stream: {e}")))?;
            self.read += n as u64;
            if self.read > MAX_BODY_BYTES {
                self.done = true;
                return Err(too_large());
            }
            let event = if n == 0 {
                self.done = true;
                match self.parser.finish() {
                    Some(data) => data,
                    None => {
                        return Err(ModelError::Provider("stream ended before [DONE]".into()));
                    }
                }
            } else {
                if !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE_BYTES {
                    return Err(ModelError::Provider("stream line too long".into()));
                }
                let text =
                    std::str::from_utf8(&line).map_err(|_| ModelError::Provider("stream is not UTF-8".into()))?;
                match self.parser.line(text) {
                    Some(data) => data,
                    None => continue,
                }
            };
            match stream_event(&event)? {
                StreamEvent::Token(token) => return Ok(Some(token)),
                StreamEvent::Nothing => {}
                StreamEvent::Done => self.done = true,
            }
        }
        Ok(None)
    }
}

#[derive(Deserialize)]
struct CompletionBody {
    #[serde(default)]
    choices: Vec<CompletionChoice>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    message: Option<CompletionMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CompletionMessage {
    content: Option<String>,
}

fn parse_completion(text: &str) -> Result<Completion, ModelError> {
    let body: CompletionBody =
        serde_json::from_str(text).map_err(|e| ModelError::Provider(format!("malformed answer: {e}")))?;
    let Some(choice) = body.choices.into_iter().next() else {
        return Err(ModelError::Provider("answer has no choices".into()));
    };
    Ok(Completion {
        text: choice.message.and_then(|m| m.content).unwrap_or_default(),
        finish_reason: choice.finish_reason,
    })
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

/// The message of an error response: `error.message` when the body is
/// OpenAI's error envelope, else the start of the body; a body over
/// [`MAX_ERROR_BODY_BYTES`] is not parsed, and the message says so.
fn error_message(body: Body) -> String {
    let mut bytes = Vec::new();
    let read = body.into_reader().take(MAX_ERROR_BODY_BYTES + 1).read_to_end(&mut bytes);
    let start =
        |bytes: &[u8]| -> String { String::from_utf8_lossy(bytes).trim().chars().take(MAX_ERROR_CHARS).collect() };
    if bytes.len() as u64 > MAX_ERROR_BODY_BYTES {
        return format!("error body over the {} KiB cap, starting: {}", MAX_ERROR_BODY_BYTES >> 10, start(&bytes));
    }
    if let Err(e) = read {
        return match start(&bytes) {
            text if text.is_empty() => format!("error body unreadable: {e}"),
            text => format!("{text} (error body cut short: {e})"),
        };
    }
    match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
        Ok(ErrorEnvelope { error: ErrorBody { message: Some(m) } }) => m,
        _ => start(&bytes),
    }
}

fn status_error(status: u16, message: &str) -> ModelError {
    let message = if message.is_empty() { format!("http {status}") } else { format!("http {status}: {message}") };
    match status {
        400 | 413 | 422 => ModelError::InvalidRequest(message),
        _ => ModelError::Provider(message),
    }
}

/// Retry-After in seconds (HTTP dates are not honoured: backoff applies).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// The pause before retry number `attempt + 1`.
fn retry_delay(attempt: u32, backoff: Duration, retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or_else(|| backoff.saturating_mul(1u32 << attempt.min(16)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_never_prints() {
        let key = ApiKey::new("sk-secret".into());
        assert_eq!(format!("{key:?}"), "<redacted>");
        let settings = OpenAiSettings {
            base_url: BaseUrl::parse("http://user:pw@127.0.0.1:1/?api-key=q").expect("url"),
            model: "m".into(),
            api_key: Some(key),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            retries: 0,
            retry_backoff: Duration::from_millis(1),
        };
        let info = ModelBackend {
            name: "gpt".into(),
            provider: "openai".into(),
            model_name: "m".into(),
            context_window: 8,
            modalities: vec![],
            supports_streaming: true,
        };
        let provider = OpenAiProvider::new(info, settings);
        let debug = format!("{provider:?}");
        assert!(!debug.contains("sk-secret") && !debug.contains("pw") && !debug.contains("api-key"), "{debug}");
    }

    #[test]
    fn retry_after_and_backoff() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("1e300"), None);
        assert_eq!(parse_retry_after("NaN"), None);
        let base = Duration::from_millis(100);
        assert_eq!(retry_delay(0, base, None), base);
        assert_eq!(retry_delay(3, base, None), Duration::from_millis(800));
        assert_eq!(retry_delay(3, base, Some(Duration::from_secs(1))), Duration::from_secs(1));
    }

    #[test]
    fn completions_and_errors_parse() {
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
        assert_eq!(parse_completion(ok), Ok(Completion { text: "hi".into(), finish_reason: Some("stop".into()) }));
        assert!(matches!(parse_completion(r#"{"choices":[]}"#), Err(ModelError::Provider(_))));
        assert_eq!(status_error(400, "bad"), ModelError::InvalidRequest("http 400: bad".into()));
        assert_eq!(status_error(503, ""), ModelError::Provider("http 503".into()));
    }
}
