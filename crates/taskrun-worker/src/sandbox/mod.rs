//! The sandbox agents run in.
//!
//! One [`Sandbox`] per Worker owns one wasmtime engine (Cranelift, epoch
//! interruption driven by a ticker thread, pooling allocator), one
//! [`InstancePre`](wasmtime::component::InstancePre) per prepared agent
//! digest and a compiled-component cache on disk.
//!
//! - [`Sandbox::prepare`] turns verified component bytes into a
//!   [`Prepared`] agent: from memory, else from the disk cache, else by
//!   compiling (once per digest and engine). A component that imports
//!   anything the Worker does not provide is refused here, before it runs.
//! - [`Sandbox::run_async`] runs one Run in a fresh store under its
//!   [`RunLimits`] (cut to the Worker's maximums), streaming emitted output
//!   to the request's [`OutputSink`], and returns a [`RunReport`] whose
//!   [`Outcome`] says how it ended. The agent executes on the calling task
//!   (on a wasmtime fiber) and yields to the runtime at every epoch tick,
//!   so a Run costs no thread hand-off and a busy agent cannot hold a
//!   runtime thread for longer than a tick. Model calls, the only host calls
//!   that wait, run on tokio's blocking pool. [`Sandbox::run`] is the same
//!   for callers outside any runtime: it blocks its thread.
//!
//! Agents see WASI 0.2 with no preopened directories, no network (TCP,
//! UDP and name lookups denied), no environment variables or arguments
//! unless [`SandboxConfig`] grants them, a closed stdin, and stdout/stderr
//! captured into the Run's bounded log.

mod bindings;
mod cache;
mod clock;
mod host;
mod limits;
mod logs;
mod outcome;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use taskrun_core::{AgentDigest, Json, RunId};
use tracing::Instrument;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig, Store,
    UpdateDeadline,
};

use self::bindings::{Agent, AgentPre};
use self::cache::{DiskCache, Lookup};
use self::host::{LazyWasi, ModelState, OutputState, RunLimiter, RunState, Stop, WasiGrants};
use self::logs::SharedLogs;
use crate::{CancelToken, Error, ModelBackends, Result};

pub use self::host::CompletionStreamHandle;
pub use self::limits::RunLimits;
pub use self::logs::{LogLevel, LogRecord, RunLogs};
pub use self::outcome::{Outcome, RunReport, RunStats};

/// How a Worker's sandbox is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Where compiled components are kept across restarts; `None` keeps
    /// them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Runs that may be instantiated at once (sizes the pooling allocator).
    pub max_concurrent_runs: u32,
    /// The most linear memory any Run may get; larger
    /// [`RunLimits::memory_bytes`] are cut to this.
    pub max_memory_bytes: usize,
    /// The most output any Run may emit; larger [`RunLimits::output_bytes`]
    /// are cut to this (a Worker keeps a Run's output until the control
    /// plane has it).
    pub max_output_bytes: u64,
    /// The most model calls any Run may make; larger
    /// [`RunLimits::model_calls`] are cut to this.
    pub max_model_calls: u32,
    /// How often the epoch advances: the granularity of deadlines and
    /// cancellation.
    pub epoch_tick: Duration,
    /// Bytes of stdout, stderr and `log` records kept per Run.
    pub log_bytes: usize,
    /// Native stack a Run's wasm may use before it traps with a stack
    /// overflow.
    pub max_wasm_stack: usize,
    /// Dirty bytes of an instance's memory reset in place (instead of being
    /// handed back to the kernel) when its slot is reused: a warm Run then
    /// takes no page faults. Costs up to this much resident memory per idle
    /// slot. Uses `PAGEMAP_SCAN` (Linux 6.7+) to find the dirty pages.
    pub keep_resident_bytes: usize,
    /// Environment variables the operator grants every agent (none by
    /// default; the Worker's own environment is never inherited).
    pub env: Vec<(String, String)>,
    /// Arguments the operator grants every agent (none by default).
    pub args: Vec<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cache_dir: None,
            max_concurrent_runs: 16,
            max_memory_bytes: 256 << 20,
            max_output_bytes: 4 << 20,
            max_model_calls: 256,
            epoch_tick: Duration::from_millis(5),
            log_bytes: 64 * 1024,
            max_wasm_stack: 512 * 1024,
            keep_resident_bytes: 1 << 20,
            env: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// Counters the sandbox keeps (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxMetrics {
    /// Components compiled with Cranelift.
    pub compiles: u64,
    /// Components loaded from the disk cache without compiling.
    pub cache_loads: u64,
    /// `prepare` calls answered from memory.
    pub memory_hits: u64,
    /// Cache files that failed their checks and were recompiled.
    pub cache_rejects: u64,
    /// Runs started.
    pub runs: u64,
}

#[derive(Debug, Default)]
struct Counters {
    compiles: AtomicU64,
    cache_loads: AtomicU64,
    memory_hits: AtomicU64,
    cache_rejects: AtomicU64,
    runs: AtomicU64,
}

/// Where a Run's emitted output goes, chunk by chunk, as it is emitted.
pub struct OutputSink(Box<dyn FnMut(String) + Send>);

impl OutputSink {
    /// Calls `f` with each chunk.
    pub fn new(f: impl FnMut(String) + Send + 'static) -> OutputSink {
        OutputSink(Box::new(f))
    }

    /// Drops every chunk.
    pub fn discard() -> OutputSink {
        OutputSink::new(|_| {})
    }

    /// Sends each chunk down a tokio channel (chunks sent after the
    /// receiver is gone are dropped).
    pub fn channel(tx: tokio::sync::mpsc::UnboundedSender<String>) -> OutputSink {
        OutputSink::new(move |chunk| {
            let _ = tx.send(chunk);
        })
    }

    pub(crate) fn send(&mut self, chunk: String) {
        (self.0)(chunk)
    }
}

impl fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OutputSink")
    }
}

impl From<tokio::sync::mpsc::UnboundedSender<String>> for OutputSink {
    fn from(tx: tokio::sync::mpsc::UnboundedSender<String>) -> OutputSink {
        OutputSink::channel(tx)
    }
}

impl From<std::sync::mpsc::Sender<String>> for OutputSink {
    fn from(tx: std::sync::mpsc::Sender<String>) -> OutputSink {
        OutputSink::new(move |chunk| {
            let _ = tx.send(chunk);
        })
    }
}

/// One Run to execute.
#[derive(Debug)]
pub struct RunRequest {
    /// The Task's input, JSON text.
    pub input: String,
    pub limits: RunLimits,
    /// The ModelBackends the agent may reach.
    pub backends: Arc<ModelBackends>,
    pub output: OutputSink,
    /// Keep a clone to cancel the Run from outside.
    pub cancel: CancelToken,
    /// For logs only.
    pub run_id: Option<RunId>,
    /// When the Run's clock started, if before the call to run it (the
    /// Worker starts it when the assignment arrives, so that fetching and
    /// compiling the agent count against the deadline). `None`: when the
    /// sandbox starts the Run.
    pub since: Option<Instant>,
}

impl RunRequest {
    /// A Run of `input` with default limits, no ModelBackends, output
    /// discarded.
    pub fn new(input: impl Into<String>) -> RunRequest {
        RunRequest {
            input: input.into(),
            limits: RunLimits::default(),
            backends: Arc::new(ModelBackends::none()),
            output: OutputSink::discard(),
            cancel: CancelToken::new(),
            run_id: None,
            since: None,
        }
    }

    pub fn limits(mut self, limits: RunLimits) -> RunRequest {
        self.limits = limits;
        self
    }

    pub fn backends(mut self, backends: Arc<ModelBackends>) -> RunRequest {
        self.backends = backends;
        self
    }

    pub fn output(mut self, output: impl Into<OutputSink>) -> RunRequest {
        self.output = output.into();
        self
    }

    pub fn cancel(mut self, cancel: CancelToken) -> RunRequest {
        self.cancel = cancel;
        self
    }

    pub fn run_id(mut self, run_id: RunId) -> RunRequest {
        self.run_id = Some(run_id);
        self
    }

    /// Counts the deadline ([`RunLimits::deadline`]) from `since` rather
    /// than from the start of the Run: the sandbox gets only what is left,
    /// and a Run with nothing left times out without starting the agent.
    pub fn since(mut self, since: Instant) -> RunRequest {
        self.since = Some(since);
        self
    }
}

/// An agent ready to run: compiled, linked against the Worker's imports,
/// pre-instantiated. Cheap to clone.
#[derive(Clone)]
pub struct Prepared(Arc<PreparedInner>);

struct PreparedInner {
    digest: AgentDigest,
    pre: AgentPre<RunState>,
}

impl Prepared {
    pub fn digest(&self) -> &AgentDigest {
        &self.0.digest
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared").field("digest", &self.0.digest).finish_non_exhaustive()
    }
}

/// The Worker's sandbox. Cheap to clone; all clones share the engine,
/// caches and counters.
#[derive(Clone)]
pub struct Sandbox(Arc<Inner>);

struct Inner {
    engine: Engine,
    linker: Linker<RunState>,
    config: SandboxConfig,
    /// `config.env` and `config.args`, shared by every Run.
    grants: Arc<WasiGrants>,
    fingerprint: String,
    disk: Option<DiskCache>,
    prepared: Mutex<HashMap<AgentDigest, Prepared>>,
    /// One lock per digest being loaded or compiled, held meanwhile, so a
    /// digest is compiled once even when several Runs of it arrive
    /// together, while other digests load and compile alongside. An entry
    /// goes once nobody holds or waits for its lock.
    compiling: Mutex<HashMap<AgentDigest, Arc<Mutex<()>>>>,
    counters: Counters,
    _ticker: Ticker,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.0.config)
            .field("fingerprint", &self.0.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Advances the engine's epoch every tick until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine, tick: Duration) -> Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("taskrun-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| Error::Engine(format!("starting the epoch ticker: {e}")))?;
        Ok(Ticker { stop, thread: Some(thread) })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn engine_error(context: &str, e: wasmtime::Error) -> Error {
    Error::Engine(format!("{context}: {e:#}"))
}

/// Per-component pool limits: a Rust wasip2 agent has one memory and a few
/// core instances (its module plus wit-component shims).
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MAX_MEMORIES_PER_COMPONENT: u32 = 2;
const MAX_TABLES_PER_COMPONENT: u32 = 8;
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Table bytes reset in place (see `keep_resident_bytes`).
const TABLE_KEEP_RESIDENT: usize = 64 * 1024;
const MAX_DEADLINE: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Fiber stack a Run's host calls may use beyond its wasm stack.
const HOST_STACK_BYTES: usize = 1 << 20;
/// wasmtime's default fiber stack, the least a Run gets.
const MIN_FIBER_STACK_BYTES: usize = 2 << 20;

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Sandbox> {
        if config.max_concurrent_runs == 0 {
            return Err(Error::Engine("max_concurrent_runs must be at least 1".into()));
        }
        if config.max_memory_bytes == 0 || config.max_memory_bytes as u64 > 4 << 30 {
            return Err(Error::Engine("max_memory_bytes must be 1 byte to 4 GiB".into()));
        }
        if config.epoch_tick.is_zero() {
            return Err(Error::Engine("epoch_tick must be greater than zero".into()));
        }
        let runs = config.max_concurrent_runs;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(runs)
            .total_core_instances(runs * MAX_CORE_INSTANCES_PER_COMPONENT)
            .total_memories(runs * MAX_MEMORIES_PER_COMPONENT)
            .total_tables(runs * MAX_TABLES_PER_COMPONENT)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .table_elements(MAX_TABLE_ELEMENTS)
            .max_memory_size(config.max_memory_bytes)
            .linear_memory_keep_resident(config.keep_resident_bytes)
            .table_keep_resident(config.keep_resident_bytes.min(TABLE_KEEP_RESIDENT))
            .pagemap_scan(Enabled::Auto)
            .total_stacks(runs);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            // A Run executes on a fiber of this size: its wasm stack plus
            // room for the host calls it makes.
            .async_stack_size(config.max_wasm_stack.saturating_add(HOST_STACK_BYTES).max(MIN_FIBER_STACK_BYTES))
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| engine_error("creating the engine", e))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| engine_error("linking WASI", e))?;
        clock::shadow_timers(&mut linker).map_err(|e| engine_error("linking timers", e))?;
        Agent::add_to_linker::<RunState, HasSelf<RunState>>(&mut linker, |state| state)
            .map_err(|e| engine_error("linking the agent world", e))?;

        let fingerprint = cache::engine_fingerprint(&engine);
        let disk = match &config.cache_dir {
            Some(dir) => Some(DiskCache::open(dir, &fingerprint)?),
            None => None,
        };
        let ticker = Ticker::start(engine.clone(), config.epoch_tick)?;
        tracing::info!(
            fingerprint = %fingerprint,
            cache_dir = ?config.cache_dir,
            max_concurrent_runs = runs,
            "sandbox ready"
        );
        Ok(Sandbox(Arc::new(Inner {
            engine,
            linker,
            grants: Arc::new(WasiGrants { env: config.env.clone(), args: config.args.clone() }),
            config,
            fingerprint,
            disk,
            prepared: Mutex::new(HashMap::new()),
            compiling: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            _ticker: ticker,
        })))
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.0.config
    }

    /// Identifies the engine configuration (part of every cache key).
    pub fn engine_fingerprint(&self) -> &str {
        &self.0.fingerprint
    }

    pub fn metrics(&self) -> SandboxMetrics {
        let c = &self.0.counters;
        SandboxMetrics {
            compiles: c.compiles.load(Ordering::Relaxed),
            cache_loads: c.cache_loads.load(Ordering::Relaxed),
            memory_hits: c.memory_hits.load(Ordering::Relaxed),
            cache_rejects: c.cache_rejects.load(Ordering::Relaxed),
            runs: c.runs.load(Ordering::Relaxed),
        }
    }

    /// Where the disk cache keeps the compiled form of `digest` (if it has
    /// a disk cache).
    pub fn cache_path(&self, digest: &AgentDigest) -> Option<PathBuf> {
        self.0.disk.as_ref().map(|d| d.path(digest))
    }

    /// Prepares the component `bytes`, which must hash to `digest` (the
    /// caller has verified its signature). Compiles only if neither memory
    /// nor the disk cache has it.
    #[tracing::instrument(skip(self, bytes), fields(digest = %digest, bytes = bytes.len()))]
    pub fn prepare(&self, digest: &AgentDigest, bytes: &[u8]) -> Result<Prepared> {
        let actual = AgentDigest::of(bytes);
        if actual != *digest {
            return Err(Error::DigestMismatch { expected: *digest, actual });
        }
        self.prepare_inner(digest, Some(bytes))?.ok_or_else(|| Error::Engine("no component to prepare".into()))
    }

    /// Prepares `digest` from memory or the disk cache only, without its
    /// bytes (e.g. after a restart); `None` if neither has it.
    pub fn prepare_cached(&self, digest: &AgentDigest) -> Result<Option<Prepared>> {
        self.prepare_inner(digest, None)
    }

    /// Forgets the prepared form of `digest` (memory and disk).
    pub fn evict(&self, digest: &AgentDigest) {
        self.lock_prepared().remove(digest);
        if let Some(disk) = &self.0.disk {
            disk.remove(digest);
        }
    }

    fn lock_prepared(&self) -> std::sync::MutexGuard<'_, HashMap<AgentDigest, Prepared>> {
        self.0.prepared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn prepare_inner(&self, digest: &AgentDigest, bytes: Option<&[u8]>) -> Result<Option<Prepared>> {
        let counters = &self.0.counters;
        if let Some(prepared) = self.lock_prepared().get(digest) {
            counters.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(prepared.clone()));
        }
        let turn = Arc::clone(self.lock_compiling().entry(*digest).or_default());
        let result = {
            let _turn = turn.lock().unwrap_or_else(PoisonError::into_inner);
            self.load_or_compile(digest, bytes)
        };
        let mut compiling = self.lock_compiling();
        // Ours and the map's: nobody else holds or waits for it.
        if Arc::strong_count(&turn) == 2 && compiling.get(digest).is_some_and(|t| Arc::ptr_eq(t, &turn)) {
            compiling.remove(digest);
        }
        result
    }

    fn lock_compiling(&self) -> std::sync::MutexGuard<'_, HashMap<AgentDigest, Arc<Mutex<()>>>> {
        self.0.compiling.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`prepare_inner`](Sandbox::prepare_inner) with the digest's lock held.
    fn load_or_compile(&self, digest: &AgentDigest, bytes: Option<&[u8]>) -> Result<Option<Prepared>> {
        let counters = &self.0.counters;
        if let Some(prepared) = self.lock_prepared().get(digest) {
            counters.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(prepared.clone()));
        }

        let mut from_disk = None;
        if let Some(disk) = &self.0.disk {
            match disk.load(digest)? {
                Lookup::Hit(payload) => {
                    // SAFETY: the payload comes from our own cache directory,
                    // written by `Component::serialize` of an engine with this
                    // fingerprint and verified against the SHA-256 stored with
                    // it, so it is what wasmtime wrote (the condition
                    // `deserialize` asks for).
                    #[allow(unsafe_code)]
                    let loaded = unsafe { Component::deserialize(&self.0.engine, &payload) };
                    match loaded {
                        Ok(component) => {
                            counters.cache_loads.fetch_add(1, Ordering::Relaxed);
                            from_disk = Some(component);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cached component does not load; recompiling");
                            counters.cache_rejects.fetch_add(1, Ordering::Relaxed);
                            disk.remove(digest);
                        }
                    }
                }
                Lookup::Corrupt => {
                    counters.cache_rejects.fetch_add(1, Ordering::Relaxed);
                }
                Lookup::Miss => {}
            }
        }

        let loaded_from_disk = from_disk.is_some();
        let component = match (from_disk, bytes) {
            (Some(component), _) => component,
            (None, None) => return Ok(None),
            (None, Some(bytes)) => {
                tracing::debug!("compiling agent");
                let started = Instant::now();
                let component = Component::new(&self.0.engine, bytes)
                    .map_err(|e| Error::Compile { digest: *digest, message: format!("{e:#}") })?;
                counters.compiles.fetch_add(1, Ordering::Relaxed);
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "compiled agent");
                component
            }
        };

        let pre = self.link(digest, &component)?;
        if !loaded_from_disk && let Some(disk) = &self.0.disk {
            match component.serialize() {
                Ok(payload) => {
                    if let Err(e) = disk.store(digest, &payload) {
                        tracing::warn!(error = %e, "could not cache compiled agent");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not serialize compiled agent"),
            }
        }
        let prepared = Prepared(Arc::new(PreparedInner { digest: *digest, pre }));
        self.lock_prepared().insert(*digest, prepared.clone());
        Ok(Some(prepared))
    }

    /// Links `component` against the Worker's imports: refuses any import
    /// the Worker does not provide, and a component that is not an agent.
    fn link(&self, digest: &AgentDigest, component: &Component) -> Result<AgentPre<RunState>> {
        let instance_pre = self.0.linker.instantiate_pre(component).map_err(|e| {
            let imports = component
                .component_type()
                .imports(&self.0.engine)
                .map(|(name, _)| name.to_owned())
                .filter(|name| !is_provided_import(name))
                .collect();
            Error::UnsupportedImport { digest: *digest, imports, message: format!("{e:#}") }
        })?;
        AgentPre::new(instance_pre).map_err(|e| Error::NotAnAgent { digest: *digest, message: format!("{e:#}") })
    }

    /// Runs `request` against `prepared` until it ends one way or another,
    /// blocking this thread: for callers outside any async runtime (tests,
    /// tools, benchmarks). Async code calls [`run_async`](Sandbox::run_async);
    /// from inside a runtime this refuses with [`Error::RunThread`].
    pub fn run(&self, prepared: &Prepared, request: RunRequest) -> Result<RunReport> {
        thread_local! {
            static RUNTIME: std::cell::OnceCell<tokio::runtime::Runtime> = const { std::cell::OnceCell::new() };
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::RunThread("Sandbox::run blocks its thread: from async code, use run_async".into()));
        }
        RUNTIME.with(|cell| {
            let runtime = match cell.get() {
                Some(runtime) => runtime,
                None => {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .map_err(|e| Error::RunThread(format!("starting a runtime for the Run: {e}")))?;
                    cell.get_or_init(|| runtime)
                }
            };
            runtime.block_on(self.execute(prepared, request))
        })
    }

    /// Runs `request` against `prepared` on the calling task, until it ends
    /// one way or another. `Err` only when the Worker could not start the
    /// Run (e.g. every instance slot is taken); the agent's own failures
    /// are [`Outcome`]s. Dropping the future stops the Run.
    pub async fn run_async(&self, prepared: Prepared, request: RunRequest) -> Result<RunReport> {
        self.execute(&prepared, request).await
    }

    async fn execute(&self, prepared: &Prepared, request: RunRequest) -> Result<RunReport> {
        // Fields are formatted only if the span is recorded.
        let run_id = request.run_id.as_ref().map(tracing::field::display);
        let span = tracing::debug_span!("run", run_id, digest = %prepared.digest());
        self.execute_in_span(prepared, request).instrument(span).await
    }

    async fn execute_in_span(&self, prepared: &Prepared, request: RunRequest) -> Result<RunReport> {
        let started = Instant::now();
        self.0.counters.runs.fetch_add(1, Ordering::Relaxed);

        let config = &self.0.config;
        let mut limits = request.limits.capped(config);
        // A year is "no deadline" and keeps `Instant` arithmetic in range.
        limits.deadline = limits.deadline.min(MAX_DEADLINE);
        // The Run's clock may have started before it reached the sandbox
        // (its agent was fetched and compiled meanwhile): what passed since
        // counts.
        let deadline = request.since.map_or(started, |since| since.min(started)) + limits.deadline;
        let logs = SharedLogs::new(config.log_bytes);
        let state = RunState {
            wasi: LazyWasi::new(Arc::clone(&self.0.grants)),
            table: ResourceTable::new(),
            limiter: RunLimiter {
                memory_cap: limits.memory_bytes,
                memory: 0,
                peak_memory: 0,
                memory_exceeded: false,
                table_elements_cap: MAX_TABLE_ELEMENTS,
            },
            output: OutputState {
                sink: request.output,
                cap: limits.output_bytes,
                bytes: 0,
                chunks: 0,
                exceeded: false,
            },
            model: ModelState { backends: request.backends, cap: limits.model_calls, calls: 0 },
            logs: logs.clone(),
            deadline,
            cancel: request.cancel,
            permanent: false,
        };
        let mut store = Store::new(&self.0.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            let state = store.data();
            if state.cancel.is_cancelled() {
                return Err(wasmtime::Error::new(Stop::Cancelled));
            }
            if Instant::now() >= state.deadline {
                return Err(wasmtime::Error::new(Stop::Deadline));
            }
            // Let the runtime's other tasks (other Runs, the session with
            // the control plane) in, then carry on.
            Ok(UpdateDeadline::Yield(1))
        });

        let outcome = if store.data().cancel.is_cancelled() {
            Outcome::Cancelled
        } else if Instant::now() >= deadline {
            // Nothing left of the deadline: the agent does not start.
            Outcome::TimedOut
        } else {
            match prepared.0.pre.instantiate_async(&mut store).await {
                Err(e) if e.is::<PoolConcurrencyLimitError>() => {
                    return Err(Error::Capacity(format!("{e:#}")));
                }
                Err(e) => Outcome::from_error(&e, store.data()),
                Ok(agent) => match agent.call_run(&mut store, &request.input).await {
                    Ok(Ok(output)) if output.len() as u64 > limits.result_bytes => {
                        Outcome::ResultLimit(output.len() as u64)
                    }
                    Ok(Ok(output)) => match Json::parse("result", output) {
                        Ok(result) => Outcome::Completed(result),
                        Err(e) => Outcome::Failed(format!("agent returned {e}")),
                    },
                    Ok(Err(agent_error)) if store.data().permanent => Outcome::FailedPermanently(agent_error.message),
                    Ok(Err(agent_error)) => Outcome::Failed(agent_error.message),
                    Err(e) => Outcome::from_error(&e, store.data()),
                },
            }
        };

        let state = store.into_data();
        let stats = RunStats {
            elapsed: started.elapsed(),
            output_bytes: state.output.bytes,
            output_chunks: state.output.chunks,
            model_calls: state.model.calls,
            peak_memory_bytes: state.limiter.peak_memory,
        };
        drop(state);
        tracing::debug!(
            outcome = outcome.kind(),
            elapsed_us = stats.elapsed.as_micros() as u64,
            output_bytes = stats.output_bytes,
            "run finished"
        );
        Ok(RunReport { outcome, logs: logs.lock().finish(), stats, limits })
    }
}

/// Whether `name` is an import the Worker provides: the agent world's
/// interfaces and WASI 0.2's (the linker has the final word).
fn is_provided_import(name: &str) -> bool {
    const AGENT: &[&str] = &["model-backend", "output", "log", "failure"];
    const WASI: &[&str] = &["cli", "clocks", "filesystem", "io", "random", "sockets"];
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let Some((package, interface)) = path.split_once('/') else {
        return false;
    };
    match package {
        "taskrun:agent" => version.starts_with("0.1.") && AGENT.contains(&interface),
        _ => package.strip_prefix("wasi:").is_some_and(|p| WASI.contains(&p)) && version.starts_with("0.2."),
    }
}

#[cfg(test)]
mod tests {
    use super::is_provided_import;

    #[test]
    fn provided_imports() {
        for name in [
            "taskrun:agent/model-backend@0.1.0",
            "taskrun:agent/log@0.1.0",
            "taskrun:agent/failure@0.1.0",
            "wasi:cli/environment@0.2.4",
            "wasi:io/streams@0.2.12",
        ] {
            assert!(is_provided_import(name), "{name}");
        }
        for name in [
            "taskrun:fixtures/forbidden@0.1.0",
            "taskrun:agent/forbidden@0.1.0",
            "wasi:http/types@0.2.0",
            "wasi:cli/environment@0.3.0",
            "anything",
        ] {
            assert!(!is_provided_import(name), "{name}");
        }
    }
}
