//! The Worker daemon: holds one stream to the control plane
//! (RunService.Connect), runs the Runs it is assigned in the [`Sandbox`],
//! streams their output back and reports how they ended.
//!
//! - It says hello with its [`WorkerInfo`] and the Runs it still has, and
//!   follows the control plane's verdict on each (continue, or stop).
//! - Every report echoes the Run's lease. Terminal reports are kept until
//!   the control plane acks them, and resent (on a timer, and after a
//!   reconnect) until then. Output chunks carry per-Run sequence numbers;
//!   after a reconnect it resends those the control plane has not stored.
//! - It fetches an agent it does not hold from the control plane, verifies
//!   it against its OWN trust policy (the operator's, not the control
//!   plane's) and compiles exactly the verified bytes. A failed
//!   verification fails the Run, and nothing is compiled.
//! - It reconnects with exponential backoff and jitter.
//! - It drains on request ([`Worker::drain`]; the binary does on SIGTERM
//!   or Ctrl-C): it tells the control plane, which places no new Run on it,
//!   lets the Runs it holds finish for up to `shutdown_grace_secs`, stops
//!   and reports FAILED those still going then, waits for the acks and
//!   closes the stream.
//! - Nothing it sends is larger than [`MAX_RUN_MESSAGE_BYTES`], which would
//!   end the stream and every Run on it: output goes in pieces of at most
//!   [`MAX_OUTPUT_CHUNK_BYTES`], a result over `sandbox.max_result_bytes`
//!   (at most [`MAX_RESULT_BYTES`]) fails its Run, error text is cut to
//!   [`MAX_ERROR_BYTES`].

mod config;
mod output;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use taskrun_core::{AgentDigest, Clock, RunId, SystemClock, Timestamp, WorkerInfo};
use taskrun_proto::{DrainNotice, MAX_RUN_MESSAGE_BYTES, pb};
use taskrun_signing::{TrustPolicy, VerifiedAgent, Verifier};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::config::{SandboxSection, WorkerConfig};
pub use self::output::MAX_OUTPUT_CHUNK_BYTES;
use crate::model::ModelBackendsConfig;
use crate::sandbox::{Prepared, RunLimits, Sandbox, SandboxConfig};
use crate::{CancelToken, Error, ModelBackends, Result};

/// The largest `sandbox.max_result_bytes` an operator may set, bytes.
pub const MAX_RESULT_BYTES: u64 = 8 << 20;

/// The longest error text a terminal report carries, bytes; longer text
/// (an agent's error message, a trap's backtrace) is cut.
pub const MAX_ERROR_BYTES: usize = 64 << 10;

/// The longest `shutdown_grace_secs` an operator may set: an hour.
pub const MAX_SHUTDOWN_GRACE_SECS: u64 = 3600;

/// How long a drain waits, once its grace period is over and it stopped
/// the Runs still going, for the control plane to ack their reports.
pub const FINAL_REPORTS_WAIT: Duration = Duration::from_secs(10);

// A terminal report holds a result or an error, at most one output piece,
// and a few small fields: it must fit one message, with room to spare.
const _: () =
    assert!(MAX_RESULT_BYTES as usize + MAX_ERROR_BYTES + MAX_OUTPUT_CHUNK_BYTES + (1 << 20) <= MAX_RUN_MESSAGE_BYTES);

/// Counters a Worker keeps, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerMetrics {
    /// Sessions established with the control plane.
    pub sessions: u64,
    pub runs_started: u64,
    pub runs_finished: u64,
    /// Agents that failed verification (their Runs failed, nothing compiled).
    pub agents_refused: u64,
    /// Assignments refused: as replays (same nonce; not reported), or
    /// issued outside the allowed clock skew or with a short nonce
    /// (reported FAILED). Malformed ones are not counted here.
    pub assignments_refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sessions: AtomicU64,
    runs_started: AtomicU64,
    runs_finished: AtomicU64,
    agents_refused: AtomicU64,
    assignments_refused: AtomicU64,
}

/// A Run this Worker holds.
#[derive(Debug)]
struct InFlight {
    lease: u64,
    cancel: CancelToken,
    cancel_reason: Option<String>,
    /// Set when the end of a drain's grace period stopped the Run: the
    /// error it is reported FAILED with (unless a CancelRun came first).
    shutdown_error: Option<String>,
    started: bool,
    /// Every chunk sent, kept until the terminal report is acked so that
    /// a reconnect can resend what the control plane did not store.
    outputs: Vec<(u64, String)>,
    /// The terminal report, until acked.
    terminal: Option<pb::RunStatusUpdate>,
}

#[derive(Debug)]
struct Inner {
    config: WorkerConfig,
    sandbox: Sandbox,
    backends: Arc<ModelBackends>,
    verifier: Verifier,
    clock: Arc<dyn Clock>,
    defaults: RunLimits,
    runs: Mutex<HashMap<RunId, InFlight>>,
    /// Agents verified (and prepared) in this process.
    /// Agents verified and prepared, with what was verified: checked again
    /// (policy, expiry, rollback floor, name) before every Run.
    agents: Mutex<HashMap<AgentDigest, (Prepared, VerifiedAgent)>>,
    /// One fetch-verify-compile at a time per digest (an entry goes once
    /// nobody holds or waits for its lock).
    fetching: Mutex<HashMap<AgentDigest, Arc<tokio::sync::Mutex<()>>>>,
    /// The current session's outbound stream, if connected.
    outbound: Mutex<Option<mpsc::UnboundedSender<pb::RunClientMessage>>>,
    channel: Mutex<Option<tonic::transport::Channel>>,
    /// Assignment nonces seen within the skew window.
    nonces: Mutex<SeenNonces>,
    max_skew: Mutex<Duration>,
    counters: Counters,
    /// Where a drain stands. Locked after `outbound` or `runs` when with
    /// either.
    drain: Mutex<DrainState>,
    /// Woken when a Run is forgotten, the drain is answered or a session
    /// ends: what [`Worker::drain`] waits on.
    settled: tokio::sync::Notify,
    shutdown: CancellationToken,
    /// Set by [`Worker::kill`]: nothing more is sent.
    silenced: std::sync::atomic::AtomicBool,
    probe: Mutex<Probe>,
}

/// A drain's progress.
#[derive(Debug, Default)]
struct DrainState {
    /// Set once draining: the notice every session carries from then on.
    notice: Option<pb::WorkerDraining>,
    /// The control plane answered the notice (Drain) on the current
    /// session: no assignment follows it.
    answered: bool,
    /// A session is being set up or is up.
    in_session: bool,
    /// Set once the grace period is over: the error a Run stopped by the
    /// shutdown is reported FAILED with. A Run assigned after that is
    /// stopped at once.
    stopping: Option<String>,
}

/// How a drain went ([`Worker::drain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Runs still going when the grace period ended: stopped, and reported
    /// FAILED so that the control plane retries them elsewhere.
    pub runs_stopped: usize,
    /// Runs whose terminal report the control plane had not acked when the
    /// Worker gave up waiting: it fails them over once it sees the Worker
    /// gone.
    pub reports_unacked: usize,
}

#[derive(Default)]
struct Probe(Option<AssignmentProbe>);

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Probe(set)" } else { "Probe(none)" })
    }
}

/// Called as each assignment arrives, before any work on it (for
/// instrumentation and benchmarks).
pub type AssignmentProbe = Arc<dyn Fn(&taskrun_core::TaskId, &RunId) + Send + Sync>;

/// Nonces seen, remembered for a window: a set to look them up, and a
/// queue in arrival order to forget the old ones in O(1) each.
#[derive(Debug, Default)]
struct SeenNonces {
    set: std::collections::HashSet<String>,
    order: std::collections::VecDeque<(Timestamp, String)>,
}

impl SeenNonces {
    /// Records `nonce` seen at `now`; false if it was seen within `window`.
    fn first_sighting(&mut self, nonce: &str, now: Timestamp, window: Duration) -> bool {
        while let Some((at, old)) = self.order.front() {
            if now.since(*at) <= window {
                break;
            }
            self.set.remove(old);
            self.order.pop_front();
        }
        if !self.set.insert(nonce.to_owned()) {
            return false;
        }
        self.order.push_back((now, nonce.to_owned()));
        true
    }
}

/// A Worker. Clone it to keep a handle while [`Worker::run`] runs.
#[derive(Debug, Clone)]
pub struct Worker(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Worker {
    /// Builds the sandbox, the ModelBackends and the verifier `config`
    /// names. Fails on a bad config, an unreadable trust policy, or a
    /// ModelBackend that cannot be set up.
    pub fn new(config: WorkerConfig) -> Result<Worker> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| Error::Config(format!("data_dir {}: {e}", config.data_dir.display())))?;
        let policy = TrustPolicy::load(&config.trust_policy).map_err(|e| config.trust_policy_error(&e))?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let verifier = Verifier::new(policy, Arc::clone(&clock))
            .with_rollback_file(config.data_dir.join("rollback-state.toml"))
            .map_err(|e| Error::Config(format!("rollback state: {e}")))?;
        let backends =
            ModelBackends::from_config(&ModelBackendsConfig { model_backends: config.model_backends.clone() })?;
        if config.model_backends.is_empty() {
            warn!(
                worker_id = %config.id,
                "no ModelBackends configured: agents that call a ModelBackend will get an error; configure one with \
                 a [[model_backends]] entry in worker.toml (see docs/worker.md)"
            );
        }
        let s = &config.sandbox;
        let mb = |m: u64| usize::try_from(m.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let sandbox = Sandbox::new(SandboxConfig {
            cache_dir: Some(config.data_dir.join("compiled")),
            // Headroom over the slots: a Run the control plane fenced or
            // stopped gives its slot back at once, but its instance lives
            // until it notices (up to an epoch tick), and the Run placed in
            // that slot must not fail for want of a pool slot meanwhile.
            max_concurrent_runs: config.slots.max(1).saturating_add((config.slots / 4).max(4)),
            max_memory_bytes: mb(s.max_memory_mb),
            max_output_bytes: s.max_output_bytes,
            max_model_calls: s.max_model_calls,
            env: s.env.clone(),
            ..SandboxConfig::default()
        })?;
        let defaults = RunLimits {
            memory_bytes: mb(s.default_memory_mb),
            output_bytes: s.default_output_bytes,
            model_calls: s.default_model_calls,
            result_bytes: s.max_result_bytes,
            ..RunLimits::default()
        };
        Ok(Worker(Arc::new(Inner {
            config,
            sandbox,
            backends: Arc::new(backends),
            verifier,
            clock,
            defaults,
            runs: Mutex::new(HashMap::new()),
            agents: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            outbound: Mutex::new(None),
            channel: Mutex::new(None),
            nonces: Mutex::new(SeenNonces::default()),
            max_skew: Mutex::new(Duration::from_secs(30)),
            counters: Counters::default(),
            drain: Mutex::new(DrainState::default()),
            settled: tokio::sync::Notify::new(),
            shutdown: CancellationToken::new(),
            silenced: std::sync::atomic::AtomicBool::new(false),
            probe: Mutex::new(Probe::default()),
        })))
    }

    /// What this Worker announces.
    pub fn info(&self) -> WorkerInfo {
        let c = &self.0.config;
        WorkerInfo {
            id: c.id.clone(),
            agents: c.agents.clone(),
            // A placement hint: past the cap the control plane accepts in a
            // hello, the rest go unannounced (and are fetched again if need be).
            digests: lock(&self.0.agents).keys().copied().take(WorkerInfo::MAX_DIGESTS).collect(),
            model_backends: self.0.backends.describe(),
            labels: c.labels.clone(),
            slots: c.slots,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.0.sandbox
    }

    pub fn metrics(&self) -> WorkerMetrics {
        let c = &self.0.counters;
        WorkerMetrics {
            sessions: c.sessions.load(Ordering::Relaxed),
            runs_started: c.runs_started.load(Ordering::Relaxed),
            runs_finished: c.runs_finished.load(Ordering::Relaxed),
            agents_refused: c.agents_refused.load(Ordering::Relaxed),
            assignments_refused: c.assignments_refused.load(Ordering::Relaxed),
        }
    }

    /// Runs it holds now.
    pub fn active_runs(&self) -> Vec<RunId> {
        lock(&self.0.runs).keys().cloned().collect()
    }

    /// Whether a session with the control plane is up.
    pub fn is_connected(&self) -> bool {
        lock(&self.0.outbound).is_some()
    }

    /// Whether [`Worker::drain`] has begun.
    pub fn is_draining(&self) -> bool {
        lock(&self.0.drain).notice.is_some()
    }

    /// Drains and stops, for a graceful shutdown: tells the control plane
    /// (which places no new Run here and answers with Drain), lets the Runs
    /// in flight finish and waits for the acks of their reports, for up to
    /// `shutdown_grace_secs`. Runs still going then are stopped and
    /// reported FAILED and interrupted ("worker … shut down"), so that the
    /// control plane retries them on another Worker without using up an
    /// attempt, and their acks get up to [`FINAL_REPORTS_WAIT`] more (a
    /// report still unacked then is failed over as a lost Worker's Runs
    /// are, and that attempt counts). An assignment that
    /// crossed the notice on the wire is run like the others. Then the
    /// session ends, as [`Worker::shut_down`] ends it, and [`Worker::run`]
    /// returns.
    ///
    /// It returns as soon as nothing is in flight and the control plane
    /// has answered (or no session is up, so no assignment can come).
    pub async fn drain(&self) -> Drained {
        let grace = self.0.config.shutdown_grace();
        let until = tokio::time::Instant::now() + grace;
        let in_flight = lock(&self.0.runs).len();
        info!(
            worker_id = %self.0.config.id,
            grace_secs = grace.as_secs(),
            in_flight,
            "draining: no new runs; letting the runs in flight finish"
        );
        self.notify_draining(grace);
        let mut runs_stopped = 0;
        if !self.settled_by(until, Worker::drained).await {
            runs_stopped = self.stop_for_shutdown(grace);
            if runs_stopped > 0 {
                warn!(
                    worker_id = %self.0.config.id,
                    runs_stopped,
                    grace_secs = grace.as_secs(),
                    "grace period over: runs still going are stopped and reported failed"
                );
            }
            let until = tokio::time::Instant::now() + FINAL_REPORTS_WAIT;
            self.settled_by(until, |w| lock(&w.0.runs).is_empty()).await;
        }
        let reports_unacked = lock(&self.0.runs).len();
        if reports_unacked > 0 {
            warn!(
                worker_id = %self.0.config.id,
                reports_unacked,
                "the control plane did not ack every run's end: it fails those runs over once it sees this worker gone"
            );
        }
        self.shut_down();
        info!(worker_id = %self.0.config.id, runs_stopped, reports_unacked, "worker drained");
        Drained { runs_stopped, reports_unacked }
    }

    /// Starts draining (once): records the notice and sends it on the
    /// session, if one is up. A session set up from now on carries it in
    /// its hello, or sends it as soon as it is up.
    fn notify_draining(&self, grace: Duration) {
        let deadline = self.0.clock.now().saturating_add(grace);
        let outbound = lock(&self.0.outbound);
        let mut drain = lock(&self.0.drain);
        if drain.notice.is_some() {
            return;
        }
        let notice: pb::WorkerDraining = DrainNotice { deadline, reason: "shutting down".to_owned() }.into();
        drain.notice = Some(notice.clone());
        if !self.0.silenced.load(Ordering::SeqCst)
            && let Some(tx) = outbound.as_ref()
        {
            let _ = tx.send(pb::RunClientMessage { kind: Some(pb::run_client_message::Kind::Draining(notice)) });
        }
    }

    /// Nothing is in flight, and no assignment can come: the control plane
    /// answered the notice on this session, or no session is up (the next
    /// one's hello says the Worker drains).
    fn drained(&self) -> bool {
        if !lock(&self.0.runs).is_empty() {
            return false;
        }
        let drain = lock(&self.0.drain);
        drain.answered || !drain.in_session
    }

    /// Waits until `done` holds or `until` passes; whether it holds.
    async fn settled_by(&self, until: tokio::time::Instant, done: impl Fn(&Worker) -> bool) -> bool {
        loop {
            let changed = self.0.settled.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return true;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(until) => return done(self),
            }
        }
    }

    /// The grace period is over: stops every Run still going, to be
    /// reported FAILED, and any assigned from now on. Returns how many.
    fn stop_for_shutdown(&self, grace: Duration) -> usize {
        let error = format!(
            "worker {} shut down: the run was still going when its shutdown grace period of {} s ended",
            self.0.config.id,
            grace.as_secs()
        );
        let mut runs = lock(&self.0.runs);
        lock(&self.0.drain).stopping = Some(error.clone());
        let mut stopped = 0;
        for (id, run) in runs.iter_mut().filter(|(_, r)| r.terminal.is_none()) {
            info!(run_id = %id, "stopping run: the worker shuts down");
            run.shutdown_error = Some(error.clone());
            run.cancel.cancel();
            stopped += 1;
        }
        stopped
    }

    /// Stops at once: ends the session, cancels the Runs in flight (their
    /// reports are not waited for; the control plane fails them over when
    /// it sees the stream end). See [`Worker::drain`] for a graceful stop.
    pub fn shut_down(&self) {
        self.0.shutdown.cancel();
        for run in lock(&self.0.runs).values() {
            run.cancel.cancel();
        }
    }

    /// Calls `probe` as each assignment arrives.
    pub fn set_assignment_probe(&self, probe: AssignmentProbe) {
        *lock(&self.0.probe) = Probe(Some(probe));
    }

    /// Stops at once and reports nothing more: to the control plane this
    /// looks like a crashed machine (the stream just ends).
    pub fn kill(&self) {
        self.0.silenced.store(true, Ordering::SeqCst);
        *lock(&self.0.outbound) = None;
        self.shut_down();
    }

    /// Connects, and keeps reconnecting with backoff and jitter, until
    /// [`Worker::shut_down`].
    pub async fn run(&self) -> Result<()> {
        const FIRST: Duration = Duration::from_millis(100);
        const MAX: Duration = Duration::from_secs(10);
        let mut backoff = FIRST;
        info!(worker_id = %self.0.config.id, control_plane = %self.0.config.control_plane, "worker starting");
        while !self.0.shutdown.is_cancelled() {
            match self.session().await {
                Ok(()) => backoff = FIRST,
                Err(e) => warn!(worker_id = %self.0.config.id, error = %e, "session failed"),
            }
            *lock(&self.0.outbound) = None;
            if self.0.shutdown.is_cancelled() {
                break;
            }
            let wait = jitter(backoff);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.0.shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX);
        }
        info!(worker_id = %self.0.config.id, "worker stopped");
        Ok(())
    }
}

/// `d` scaled by a factor in [0.5, 1.5), so Workers that lost the control
/// plane together do not come back in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
    let factor = 0.5 + f64::from(nanos % 1000) / 1000.0;
    d.mul_f64(factor)
}
