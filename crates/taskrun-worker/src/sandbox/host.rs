//! The per-Run store data and the host side of the agent world's imports.

use std::sync::Arc;
use std::time::Instant;

use taskrun_core::Modality;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{failure, log, model_backend as wit, output};
use super::logs::{LogLevel, LogSource, SharedLogs};
use super::{OutputSink, clock};
use crate::CancelToken;
use crate::model::{self, CallContext, ModelBackends, Provider, TokenStream};

/// Why the host stopped a Run. Carried as the error of the trap, so the
/// outcome can be told from the error alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Stop {
    #[error("run cancelled")]
    Cancelled,
    #[error("run deadline reached")]
    Deadline,
    #[error("memory limit of {0} bytes reached")]
    Memory(usize),
    #[error("output limit of {0} bytes reached")]
    Output(u64),
}

/// Caps an instance's memories (together) and tables.
#[derive(Debug)]
pub(crate) struct RunLimiter {
    pub(crate) memory_cap: usize,
    /// Bytes of all memories now.
    pub(crate) memory: usize,
    pub(crate) peak_memory: usize,
    pub(crate) memory_exceeded: bool,
    pub(crate) table_elements_cap: usize,
}

impl ResourceLimiter for RunLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = (self.memory - current.min(self.memory)).saturating_add(desired);
        if total > self.memory_cap {
            self.memory_exceeded = true;
            return Err(wasmtime::Error::new(Stop::Memory(self.memory_cap)));
        }
        self.memory = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements_cap)
    }
}

/// Where emitted output goes, and how much went.
pub(crate) struct OutputState {
    pub(crate) sink: OutputSink,
    pub(crate) cap: u64,
    pub(crate) bytes: u64,
    pub(crate) chunks: u64,
    pub(crate) exceeded: bool,
}

pub(crate) struct ModelState {
    pub(crate) backends: Arc<ModelBackends>,
    pub(crate) cap: u32,
    pub(crate) calls: u32,
}

/// A `completion-stream` resource: the provider's token stream (away
/// while a `next` call waits for it on a blocking thread).
pub struct CompletionStreamHandle(Option<Box<dyn TokenStream>>);

impl std::fmt::Debug for CompletionStreamHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompletionStreamHandle")
    }
}

/// What the operator grants every Run through WASI (nothing by default).
#[derive(Debug, Default)]
pub(crate) struct WasiGrants {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) args: Vec<String>,
}

/// A Run's WASI context, built on the agent's first WASI call: a Run that
/// makes none (a lean agent cannot make any) does not pay for one.
pub(crate) struct LazyWasi {
    ctx: Option<WasiCtx>,
    grants: Arc<WasiGrants>,
}

impl LazyWasi {
    pub(crate) fn new(grants: Arc<WasiGrants>) -> LazyWasi {
        LazyWasi { ctx: None, grants }
    }

    /// No files, sockets or name lookups; the granted environment and
    /// arguments; stdout and stderr into the Run's log; the Run's clock.
    fn get(&mut self, logs: &SharedLogs) -> &mut WasiCtx {
        self.ctx.get_or_insert_with(|| {
            WasiCtxBuilder::new()
                .stdout(logs.pipe(LogSource::Stdout))
                .stderr(logs.pipe(LogSource::Stderr))
                .envs(&self.grants.env)
                .args(&self.grants.args)
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .monotonic_clock(clock::RunClock)
                .build()
        })
    }
}

/// Everything a Run's store holds.
pub(crate) struct RunState {
    pub(crate) wasi: LazyWasi,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: RunLimiter,
    pub(crate) output: OutputState,
    pub(crate) model: ModelState,
    pub(crate) logs: SharedLogs,
    pub(crate) deadline: Instant,
    pub(crate) cancel: CancelToken,
    /// The agent called `failure.mark-permanent`: an error it returns is
    /// not to be retried.
    pub(crate) permanent: bool,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: self.wasi.get(&self.logs), table: &mut self.table }
    }
}

impl RunState {
    fn call_context(&self) -> CallContext {
        CallContext { deadline: self.deadline, cancel: self.cancel.clone() }
    }

    /// Resolves the backend and takes one model call from the Run's budget.
    fn begin_model_call(
        &mut self,
        backend: Option<&str>,
    ) -> Result<(Arc<dyn Provider>, CallContext), model::ModelError> {
        let provider = self.model.backends.resolve(backend)?.clone();
        if self.model.calls >= self.model.cap {
            return Err(model::ModelError::LimitExceeded);
        }
        self.model.calls += 1;
        let ctx = self.call_context();
        ctx.check()?;
        Ok((provider, ctx))
    }

    /// What a model call that failed hands the agent. A call that failed
    /// because the Run was cancelled or reached its deadline stops the Run
    /// instead (as the next epoch check would), so the Run ends Cancelled or
    /// TimedOut whatever the agent would have done with the error.
    fn model_result<T>(&self, result: Result<T, model::ModelError>) -> wasmtime::Result<Result<T, wit::ModelError>> {
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(_) if self.cancel.is_cancelled() => Err(wasmtime::Error::new(Stop::Cancelled)),
            Err(_) if Instant::now() >= self.deadline => Err(wasmtime::Error::new(Stop::Deadline)),
            Err(e) => Ok(Err(to_wit_error(e))),
        }
    }
}

/// Runs a provider's blocking call on tokio's blocking pool: the Run
/// itself executes on the Worker's runtime threads, which must not wait
/// for the network. The call still watches its Run's cancellation and
/// deadline ([`CallContext`]).
async fn off_runtime<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, model::ModelError> + Send + 'static,
) -> Result<T, model::ModelError> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result,
        Err(e) => Err(model::ModelError::Provider(format!("the model call's thread failed: {e}"))),
    }
}

fn to_model_request(request: wit::CompletionRequest) -> model::CompletionRequest {
    model::CompletionRequest {
        messages: request
            .messages
            .into_iter()
            .map(|m| model::Message {
                role: match m.role {
                    wit::Role::System => model::Role::System,
                    wit::Role::User => model::Role::User,
                    wit::Role::Assistant => model::Role::Assistant,
                },
                content: m.content,
            })
            .collect(),
        max_tokens: request.max_tokens,
        temperature: request.temperature,
    }
}

fn to_wit_error(error: model::ModelError) -> wit::ModelError {
    match error {
        model::ModelError::UnknownBackend(name) => wit::ModelError::UnknownBackend(name),
        model::ModelError::LimitExceeded => wit::ModelError::LimitExceeded,
        model::ModelError::Provider(message) => wit::ModelError::Provider(message),
        model::ModelError::InvalidRequest(message) => wit::ModelError::InvalidRequest(message),
    }
}

fn to_wit_modality(modality: Modality) -> wit::Modality {
    match modality {
        Modality::Text => wit::Modality::Text,
        Modality::Image => wit::Modality::Image,
        Modality::Audio => wit::Modality::Audio,
    }
}

impl wit::Host for RunState {
    fn list_backends(&mut self) -> wasmtime::Result<Vec<wit::BackendInfo>> {
        Ok(self
            .model
            .backends
            .describe()
            .into_iter()
            .map(|b| wit::BackendInfo {
                name: b.name,
                provider: b.provider,
                model_name: b.model_name,
                context_window: b.context_window,
                modalities: b.modalities.into_iter().map(to_wit_modality).collect(),
                supports_streaming: b.supports_streaming,
            })
            .collect())
    }

    async fn complete(
        &mut self,
        request: wit::CompletionRequest,
    ) -> wasmtime::Result<Result<wit::Completion, wit::ModelError>> {
        let backend = request.backend.clone();
        let result = match self.begin_model_call(backend.as_deref()) {
            Ok((provider, ctx)) => {
                let request = to_model_request(request);
                off_runtime(move || {
                    let started = Instant::now();
                    let result = provider.complete(&request, &ctx);
                    tracing::debug!(
                        backend = %provider.info().name,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        ok = result.is_ok(),
                        "model complete"
                    );
                    result.map(|c| wit::Completion {
                        text: c.text,
                        backend: provider.info().name.clone(),
                        finish_reason: c.finish_reason,
                    })
                })
                .await
            }
            Err(e) => Err(e),
        };
        self.model_result(result)
    }

    async fn stream_complete(
        &mut self,
        request: wit::CompletionRequest,
    ) -> wasmtime::Result<Result<Resource<CompletionStreamHandle>, wit::ModelError>> {
        let backend = request.backend.clone();
        let stream = match self.begin_model_call(backend.as_deref()) {
            Ok((provider, ctx)) => {
                let request = to_model_request(request);
                off_runtime(move || {
                    tracing::debug!(backend = %provider.info().name, "model stream");
                    provider.stream(&request, &ctx)
                })
                .await
            }
            Err(e) => Err(e),
        };
        match self.model_result(stream)? {
            Ok(stream) => Ok(Ok(self.table.push(CompletionStreamHandle(Some(stream)))?)),
            Err(e) => Ok(Err(e)),
        }
    }
}

impl wit::HostCompletionStream for RunState {
    async fn next(
        &mut self,
        stream: Resource<CompletionStreamHandle>,
    ) -> wasmtime::Result<Result<Option<String>, wit::ModelError>> {
        let ctx = self.call_context();
        // The stream goes to the blocking thread and comes back with the
        // token. The guest makes one call at a time, so it is always here.
        let Some(mut tokens) = self.table.get_mut(&stream)?.0.take() else {
            return Ok(Err(wit::ModelError::Provider("the stream was lost by an earlier call".into())));
        };
        let token = off_runtime(move || {
            let token = tokens.next_token(&ctx);
            Ok((tokens, token))
        })
        .await;
        let token = match token {
            Ok((tokens, token)) => {
                self.table.get_mut(&stream)?.0 = Some(tokens);
                token
            }
            Err(e) => Err(e),
        };
        self.model_result(token)
    }

    fn drop(&mut self, stream: Resource<CompletionStreamHandle>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

impl output::Host for RunState {
    fn emit(&mut self, chunk: String) -> wasmtime::Result<()> {
        let total = self.output.bytes + chunk.len() as u64;
        if total > self.output.cap {
            self.output.exceeded = true;
            return Err(wasmtime::Error::new(Stop::Output(self.output.cap)));
        }
        self.output.bytes = total;
        self.output.chunks += 1;
        self.output.sink.send(chunk);
        Ok(())
    }
}

impl log::Host for RunState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.logs.lock().push(LogSource::Agent(level), message.as_bytes());
        Ok(())
    }
}

impl failure::Host for RunState {
    fn mark_permanent(&mut self) -> wasmtime::Result<()> {
        self.permanent = true;
        Ok(())
    }
}
