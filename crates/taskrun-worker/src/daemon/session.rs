//! One session with the control plane, and the Runs it carries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use taskrun_core::{AgentDigest, AgentManifest, RunId, RunOutcome, TaskLimits, Timestamp};
use taskrun_proto::{MAX_RUN_MESSAGE_BYTES, RunOutputReport, RunProgress, RunStatusReport, pb};
use taskrun_signing::Expect;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, error, info, warn};

use super::{InFlight, MAX_ERROR_BYTES, MAX_RESULT_BYTES, Worker, lock, output};
use crate::sandbox::{OutputSink, Prepared, RunLimits, RunRequest};
use crate::{CancelToken, Error, Result};

use pb::run_client_message::Kind as ClientKind;
use pb::run_server_message::Kind as ServerKind;

/// A Run still going after this long is reported RUNNING.
const REPORT_RUNNING_AFTER: Duration = Duration::from_millis(50);

/// How often unacked terminal reports are sent again.
const RESEND_EVERY: Duration = Duration::from_secs(2);

/// A deadline this far off is no deadline (and keeps `Instant` arithmetic
/// in range).
const MAX_DEADLINE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The largest agent component a Worker accepts from the control plane.
const MAX_AGENT_BYTES: u64 = 64 << 20;

fn nonce() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Marks the end of a session, however [`Worker::session`] returns: the
/// drain's answer belonged to it, and a drain waiting on it looks again.
struct SessionEnd<'a>(&'a Worker);

impl Drop for SessionEnd<'_> {
    fn drop(&mut self) {
        let worker = self.0;
        {
            let mut drain = lock(&worker.0.drain);
            drain.in_session = false;
            drain.answered = false;
        }
        worker.0.settled.notify_waiters();
    }
}

/// A Run's turn to fetch, verify and compile a digest. Dropping it (also
/// when the Run stops waiting) lets the next Run of that digest go, and
/// forgets the digest's lock once nobody holds or waits for it.
struct FetchTurn<'a> {
    worker: &'a Worker,
    digest: AgentDigest,
    lock: Arc<tokio::sync::Mutex<()>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<'a> FetchTurn<'a> {
    async fn take(worker: &'a Worker, digest: AgentDigest) -> FetchTurn<'a> {
        let shared = Arc::clone(lock(&worker.0.fetching).entry(digest).or_default());
        let mut turn = FetchTurn { worker, digest, lock: shared, held: None };
        turn.held = Some(Arc::clone(&turn.lock).lock_owned().await);
        turn
    }
}

impl Drop for FetchTurn<'_> {
    fn drop(&mut self) {
        self.held = None;
        let mut fetching = lock(&self.worker.0.fetching);
        // Ours and the map's: nobody else holds or waits for it.
        if Arc::strong_count(&self.lock) == 2 && fetching.get(&self.digest).is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            fetching.remove(&self.digest);
        }
    }
}

/// Resolves once `cancel` is cancelled (checked every 10 ms).
async fn cancelled(cancel: &CancelToken) {
    while !cancel.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `outcome` made to fit a terminal report: error text cut to
/// [`MAX_ERROR_BYTES`], and a result over [`MAX_RESULT_BYTES`] (which the
/// sandbox already refuses under any valid config) turned into a failure.
fn fit_for_report(outcome: RunOutcome) -> RunOutcome {
    match outcome {
        RunOutcome::Completed { result } if result.len() as u64 > MAX_RESULT_BYTES => RunOutcome::Failed {
            error: format!(
                "result of {} bytes exceeds the {MAX_RESULT_BYTES}-byte maximum of any worker",
                result.len()
            ),
        },
        RunOutcome::Failed { error } => RunOutcome::Failed { error: cut(error, MAX_ERROR_BYTES) },
        RunOutcome::FailedPermanently { error } => RunOutcome::FailedPermanently { error: cut(error, MAX_ERROR_BYTES) },
        RunOutcome::Interrupted { error } => RunOutcome::Interrupted { error: cut(error, MAX_ERROR_BYTES) },
        RunOutcome::Cancelled { reason } => RunOutcome::Cancelled { reason: cut(reason, MAX_ERROR_BYTES) },
        completed => completed,
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), saying so.
fn cut(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let note = format!(" … (cut: {} bytes in all)", text.len());
    let mut end = max.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&note);
    text
}

impl Worker {
    fn send(&self, kind: ClientKind) -> bool {
        if self.0.silenced.load(Ordering::SeqCst) {
            return false;
        }
        lock(&self.0.outbound).as_ref().is_some_and(|tx| tx.send(pb::RunClientMessage { kind: Some(kind) }).is_ok())
    }

    async fn channel(&self) -> Result<Channel> {
        let url = &self.0.config.control_plane;
        let connect = |message: String| Error::Connect { url: url.clone(), message };
        Endpoint::from_shared(url.clone())
            .map_err(|e| connect(e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| connect(format!("{e}: is the control plane running?")))
    }

    /// Connects, says hello, and serves the session until it ends.
    pub(super) async fn session(&self) -> Result<()> {
        lock(&self.0.drain).in_session = true;
        let _ended = SessionEnd(self);
        let channel = self.channel().await?;
        let url = self.0.config.control_plane.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight: Vec<pb::InFlightRun> = lock(&self.0.runs)
            .iter()
            .map(|(id, r)| pb::InFlightRun {
                run_id: id.to_string(),
                lease: i64::try_from(r.lease).unwrap_or(i64::MAX),
                status: if r.terminal.is_some() {
                    r.terminal.as_ref().map_or(0, |t| t.status)
                } else if r.started {
                    pb::RunStatus::Running.into()
                } else {
                    pb::RunStatus::Assigned.into()
                },
                last_output_seq: r.outputs.last().map_or(0, |(s, _)| i64::try_from(*s).unwrap_or(i64::MAX)),
            })
            .collect();
        // A Worker that drains says so from the start of every session.
        let draining = lock(&self.0.drain).notice.clone();
        let said_draining = draining.is_some();
        let hello = pb::WorkerHello {
            info: Some(self.info().into()),
            in_flight,
            sent_at_unix_ms: self.0.clock.now().as_millis(),
            draining,
        };
        let _ = tx.send(pb::RunClientMessage { kind: Some(ClientKind::Hello(hello)) });
        // Matches the control plane's RunService server (taskrun-control-plane,
        // server.rs); what the Worker sends is sized to fit it.
        let mut client = pb::run_service_client::RunServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_RUN_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RUN_MESSAGE_BYTES);
        let response = client
            .connect(UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| Error::Connect { url: url.clone(), message: format!("{}: {}", s.code(), s.message()) })?;
        let mut inbound = response.into_inner();
        let accepted = match inbound.message().await {
            Ok(Some(pb::RunServerMessage { kind: Some(ServerKind::Accepted(a)) })) => a,
            Ok(_) => {
                return Err(Error::Connect { url, message: "the session did not start with WorkerAccepted".into() });
            }
            Err(s) => return Err(Error::Connect { url, message: format!("{}: {}", s.code(), s.message()) }),
        };
        *lock(&self.0.channel) = Some(channel);
        {
            // Senders hold this lock while they send. What the control plane
            // lacks (output after the seq it has, then stored terminal
            // reports) goes into the new stream before the stream is
            // published, so nothing new of a Run (its next chunk, its final
            // report) can overtake what is resent of it.
            let mut outbound = lock(&self.0.outbound);
            if self.0.silenced.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.apply_verdicts(&accepted.in_flight, &tx);
            *outbound = Some(tx.clone());
            // A drain that began after the hello was made: say it now
            // ([`Worker::drain`] found no session to say it on).
            if !said_draining && let Some(notice) = lock(&self.0.drain).notice.clone() {
                let _ = tx.send(pb::RunClientMessage { kind: Some(ClientKind::Draining(notice)) });
            }
        }
        let max_skew = Duration::from_millis(accepted.max_clock_skew_ms.max(1000).unsigned_abs());
        *lock(&self.0.max_skew) = max_skew;
        // Assignments from a control plane whose clock is this far from ours
        // would all be refused: say so once, plainly.
        let offset_ms = accepted.server_time_unix_ms.saturating_sub(self.0.clock.now().as_millis());
        if accepted.server_time_unix_ms > 0 && u128::from(offset_ms.unsigned_abs()) > max_skew.as_millis() {
            error!(
                worker_id = %self.0.config.id,
                offset_ms,
                max_clock_skew_ms = max_skew.as_millis() as u64,
                "the control plane's clock is {offset_ms} ms from this worker's, beyond the allowed skew: its \
                 assignments will be refused; check the clocks"
            );
        }
        self.0.counters.sessions.fetch_add(1, Ordering::Relaxed);
        info!(worker_id = %self.0.config.id, in_flight = accepted.in_flight.len(), "session established");

        let interval = Duration::from_millis(accepted.heartbeat_interval_ms.max(50).unsigned_abs());
        let ticker = {
            let worker = self.clone();
            tokio::spawn(async move { worker.tick(interval).await })
        };
        let result = loop {
            let msg = tokio::select! {
                msg = inbound.message() => msg,
                () = self.0.shutdown.cancelled() => break Ok(()),
            };
            match msg {
                Ok(Some(msg)) => self.on_message(msg),
                Ok(None) => break Ok(()),
                Err(s) => {
                    break Err(Error::Connect { url: url.clone(), message: format!("{}: {}", s.code(), s.message()) });
                }
            }
        };
        ticker.abort();
        *lock(&self.0.outbound) = None;
        info!(worker_id = %self.0.config.id, "session ended");
        result
    }

    /// Heartbeats, and resends terminal reports not acked yet.
    async fn tick(&self, interval: Duration) {
        let mut heartbeat = tokio::time::interval(interval);
        let mut resend = tokio::time::interval(RESEND_EVERY);
        resend.tick().await;
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    let draining = self.is_draining();
                    let (free, active) = {
                        let runs = lock(&self.0.runs);
                        let busy = u32::try_from(runs.values().filter(|r| r.terminal.is_none()).count()).unwrap_or(u32::MAX);
                        let active = runs
                            .iter()
                            .map(|(id, r)| pb::RunLease { run_id: id.to_string(), lease: i64::try_from(r.lease).unwrap_or(i64::MAX) })
                            .collect();
                        let free = if draining { 0 } else { self.0.config.slots.saturating_sub(busy) };
                        (free, active)
                    };
                    self.send(ClientKind::Heartbeat(pb::WorkerHeartbeat {
                        sent_at_unix_ms: self.0.clock.now().as_millis(),
                        free_slots: i32::try_from(free).unwrap_or(i32::MAX),
                        active_runs: active,
                    }));
                }
                _ = resend.tick() => {
                    let pending: Vec<pb::RunStatusUpdate> =
                        lock(&self.0.runs).values().filter_map(|r| r.terminal.clone()).collect();
                    for update in pending {
                        debug!(run_id = %update.run_id, "resending terminal report");
                        self.send(ClientKind::Status(update));
                    }
                }
            }
        }
    }

    /// Follows the control plane's verdict on the Runs we said we hold,
    /// resending on `tx` (the new stream, not published yet) what it lacks
    /// of each: output chunks in seq order, then the terminal report.
    fn apply_verdicts(&self, verdicts: &[pb::InFlightRunVerdict], tx: &mpsc::UnboundedSender<pb::RunClientMessage>) {
        let send = |kind| {
            let _ = tx.send(pb::RunClientMessage { kind: Some(kind) });
        };
        for v in verdicts {
            let Ok(id) = v.run_id.parse::<RunId>() else { continue };
            let continue_ = v.verdict == i32::from(pb::InFlightVerdict::Continue);
            let (outputs, terminal) = {
                let mut runs = lock(&self.0.runs);
                let Some(run) = runs.get_mut(&id) else { continue };
                if !continue_ {
                    info!(run_id = %id, reason = %v.reason, "control plane says stop");
                    run.cancel.cancel();
                    runs.remove(&id);
                    self.0.settled.notify_waiters();
                    continue;
                }
                let acked = u64::try_from(v.output_seq_acked).unwrap_or(0);
                let outputs: Vec<(u64, String)> = run.outputs.iter().filter(|(s, _)| *s > acked).cloned().collect();
                (outputs, run.terminal.clone())
            };
            let lease = v.lease;
            for (seq, data) in outputs {
                send(ClientKind::Output(pb::RunOutputChunk {
                    run_id: v.run_id.clone(),
                    lease,
                    seq: i64::try_from(seq).unwrap_or(i64::MAX),
                    data,
                }));
            }
            if let Some(update) = terminal {
                send(ClientKind::Status(update));
            }
        }
        // Runs the verdicts did not mention were not known to the control
        // plane as ours: they keep their terminal report for the resend.
    }

    fn on_message(&self, msg: pb::RunServerMessage) {
        match msg.kind {
            Some(ServerKind::Assignment(a)) => self.on_assignment(a),
            Some(ServerKind::Cancel(c)) => {
                let Ok(id) = c.run_id.parse::<RunId>() else { return };
                let mut runs = lock(&self.0.runs);
                if let Some(run) = runs.get_mut(&id)
                    && i64::try_from(run.lease).ok() == Some(c.lease)
                {
                    info!(run_id = %id, reason = %c.reason, "cancelling run");
                    run.cancel_reason = Some(c.reason);
                    run.cancel.cancel();
                }
            }
            Some(ServerKind::Ack(ack)) => {
                let Ok(id) = ack.run_id.parse::<RunId>() else { return };
                let outcome = pb::RunAckOutcome::try_from(ack.outcome).unwrap_or(pb::RunAckOutcome::Unspecified);
                let mut runs = lock(&self.0.runs);
                let Some(run) = runs.get_mut(&id) else { return };
                if i64::try_from(run.lease).ok() != Some(ack.lease) {
                    return;
                }
                match outcome {
                    pb::RunAckOutcome::Fenced => {
                        warn!(run_id = %id, reason = %ack.reason, "fenced: the run is no longer ours");
                        run.cancel.cancel();
                        runs.remove(&id);
                        self.0.settled.notify_waiters();
                    }
                    // Only an ack of the terminal status itself ends what
                    // the Worker owes: one of its output, or of an earlier
                    // status, leaves the final report to be resent.
                    _ if run
                        .terminal
                        .as_ref()
                        .is_some_and(|t| ack.subject == Some(pb::run_ack::Subject::Status(t.status))) =>
                    {
                        debug!(run_id = %id, outcome = ?outcome, "terminal report acked");
                        runs.remove(&id);
                        self.0.settled.notify_waiters();
                    }
                    pb::RunAckOutcome::Rejected => warn!(run_id = %id, reason = %ack.reason, "report rejected"),
                    _ => {}
                }
            }
            Some(ServerKind::Drain(d)) => {
                let mut drain = lock(&self.0.drain);
                if drain.notice.is_some() {
                    // The answer to our notice: every assignment is ahead of it.
                    debug!(reason = %d.reason, "the control plane answered the drain");
                    drain.answered = true;
                    drop(drain);
                    self.0.settled.notify_waiters();
                } else {
                    info!(reason = %d.reason, "asked to drain: no new runs will come");
                }
            }
            Some(ServerKind::Accepted(_)) | None => {}
        }
    }

    fn on_assignment(&self, a: pb::RunAssignment) {
        // The Run's deadline counts from now: fetching and compiling its
        // agent use it up as running it does.
        let arrived = Instant::now();
        if let Some(probe) = lock(&self.0.probe).0.as_ref()
            && let (Ok(task), Ok(run)) = (a.task_id.parse(), a.run_id.parse())
        {
            probe(&task, &run);
        }
        let parsed = (|| -> std::result::Result<(RunId, u64, AgentManifest, TaskLimits), String> {
            let id: RunId = a.run_id.parse().map_err(|e| format!("run_id: {e}"))?;
            let lease = u64::try_from(a.lease).map_err(|_| format!("lease out of range: {}", a.lease))?;
            let manifest =
                AgentManifest::try_from(a.agent.clone().ok_or("missing agent")?).map_err(|e| e.to_string())?;
            let limits = TaskLimits::try_from(a.limits.unwrap_or_default()).map_err(|e| e.to_string())?;
            Ok((id, lease, manifest, limits))
        })();
        let (id, lease, manifest, limits) = match parsed {
            Ok(p) => p,
            Err(e) => {
                warn!(run_id = %a.run_id, error = %e, "malformed assignment refused");
                self.refuse(&a, format!("assignment refused as malformed: {e}"));
                return;
            }
        };
        // Replay protection: a nonce is used once; an assignment must be
        // issued within the allowed clock skew of now.
        let now = self.0.clock.now();
        let skew = *lock(&self.0.max_skew);
        let issued = Timestamp::from_millis(a.issued_at_unix_ms);
        let off = if issued > now { issued.since(now) } else { now.since(issued) };
        let refusal = if off > skew {
            Some(format!(
                "assignment refused: issued_at is {} ms from this Worker's clock, beyond the {} ms allowed skew; \
                 check the clocks",
                off.as_millis(),
                skew.as_millis()
            ))
        } else if a.nonce.len() < 16 {
            Some(format!(
                "assignment refused as malformed: its nonce has {} characters, fewer than the 16 required",
                a.nonce.len()
            ))
        } else {
            None
        };
        if let Some(error) = refusal {
            // Not a replay of an assignment we run: reported, so that the
            // control plane does not wait on the Run for ever.
            self.0.counters.assignments_refused.fetch_add(1, Ordering::Relaxed);
            warn!(run_id = %id, skew_ms = off.as_millis() as u64, error = %error, "assignment refused");
            self.refuse(&a, error);
            return;
        }
        if !lock(&self.0.nonces).first_sighting(&a.nonce, now, skew * 2) {
            // A replay: the assignment it repeats is ours already (or was).
            self.0.counters.assignments_refused.fetch_add(1, Ordering::Relaxed);
            warn!(run_id = %id, "assignment refused as a replay: its nonce was seen before");
            return;
        }
        let cancel = CancelToken::new();
        {
            let mut runs = lock(&self.0.runs);
            if runs.get(&id).is_some_and(|r| r.lease >= lease) {
                return;
            }
            // Past a drain's grace period, a Run that still arrives is
            // stopped before it starts, and reported FAILED like the others.
            // (Read with the Runs locked, as the drain sets it.)
            let shutdown_error = lock(&self.0.drain).stopping.clone();
            if shutdown_error.is_some() {
                cancel.cancel();
            }
            runs.insert(
                id.clone(),
                InFlight {
                    lease,
                    cancel: cancel.clone(),
                    cancel_reason: None,
                    shutdown_error,
                    started: false,
                    outputs: Vec::new(),
                    terminal: None,
                },
            );
        }
        let deadline = Timestamp::from_millis(a.deadline_unix_ms);
        let mut run_limits = RunLimits::from_task(&limits, &self.0.defaults);
        if a.deadline_unix_ms > 0 {
            run_limits.deadline = run_limits.deadline.min(deadline.since(now));
        }
        let worker = self.clone();
        tokio::spawn(async move {
            worker.execute(id, lease, manifest, a.input_json, run_limits, arrived, cancel).await;
        });
    }

    /// Runs a Run whose deadline, `limits.deadline`, counts from `since`
    /// (when its assignment arrived).
    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        id: RunId,
        lease: u64,
        manifest: AgentManifest,
        input: String,
        limits: RunLimits,
        since: Instant,
        cancel: CancelToken,
    ) {
        self.0.counters.runs_started.fetch_add(1, Ordering::Relaxed);
        // Fetching and compiling count against the Run's deadline, and a
        // CancelRun stops the wait (the compile, once started, finishes in
        // the background and serves the next Run of that agent).
        let deadline = tokio::time::Instant::from_std(since) + limits.deadline.min(MAX_DEADLINE);
        let prepared = tokio::select! {
            biased;
            prepared = self.agent(&manifest) => prepared,
            () = cancelled(&cancel) => {
                self.finish(&id, lease, self.stopped(&id));
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                let error = format!(
                    "timed out after {} ms fetching and preparing the agent",
                    limits.deadline.as_millis()
                );
                self.finish(&id, lease, RunOutcome::Failed { error });
                return;
            }
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                warn!(run_id = %id, digest = %manifest.digest, error = %e, "agent not runnable");
                self.finish(&id, lease, RunOutcome::Failed { error: e.to_string() });
                return;
            }
        };
        if cancel.is_cancelled() {
            self.finish(&id, lease, self.stopped(&id));
            return;
        }
        {
            let mut runs = lock(&self.0.runs);
            match runs.get_mut(&id) {
                Some(r) if r.lease == lease => r.started = true,
                _ => return,
            }
        }
        let (otx, orx) = mpsc::unbounded_channel::<String>();
        let forward = {
            let worker = self.clone();
            let id = id.clone();
            // Output still waiting when the Run ends rides with its
            // terminal report.
            tokio::spawn(output::forward(orx, move |seq, data| {
                {
                    let mut runs = lock(&worker.0.runs);
                    match runs.get_mut(&id) {
                        Some(r) if r.lease == lease => r.outputs.push((seq, data.clone())),
                        _ => return,
                    }
                }
                let report =
                    RunOutputReport { lease, chunk: taskrun_core::OutputChunk { run_id: id.clone(), seq, data } };
                worker.send(ClientKind::Output(report.into()));
            }))
        };
        // The sandbox gets what is left of the deadline (and, with nothing
        // left, times the Run out without starting the agent).
        let request = RunRequest::new(input)
            .limits(limits)
            .since(since)
            .backends(Arc::clone(&self.0.backends))
            .output(OutputSink::channel(otx))
            .cancel(cancel)
            .run_id(id.clone());
        // RUNNING is reported only for a Run still going after a moment:
        // a quick Run goes from ASSIGNED straight to its end, which saves
        // the control plane a durable write per Run (as Temporal records
        // an activity's start lazily).
        let run = self.0.sandbox.run_async(prepared, request);
        tokio::pin!(run);
        let report = tokio::select! {
            report = &mut run => report,
            () = tokio::time::sleep(REPORT_RUNNING_AFTER) => {
                self.send(ClientKind::Status(
                    RunStatusReport {
                        run_id: id.clone(),
                        lease,
                        progress: RunProgress::Started,
                        at: self.0.clock.now(),
                        nonce: nonce(),
                        last_output_seq: 0,
                        trailing_output: Vec::new(),
                    }
                    .into(),
                ));
                run.await
            }
        };
        // The sink is gone with the Run: the forwarder ends after the last chunk.
        let (last_seq, trailing) = forward.await.unwrap_or((0, None));
        let outcome = match report {
            Ok(report) => {
                debug!(run_id = %id, outcome = report.outcome.kind(), elapsed_ms = report.stats.elapsed.as_millis() as u64, "run ended");
                match report.to_core() {
                    RunOutcome::Cancelled { .. } => self.stopped(&id),
                    other => other,
                }
            }
            Err(e) => RunOutcome::Failed { error: format!("worker could not run the agent: {e}") },
        };
        self.finish_with_seq(&id, lease, outcome, last_seq, trailing.into_iter().collect());
    }

    /// How a Run that was stopped from outside ended: CANCELLED with the
    /// CancelRun's reason, or interrupted (FAILED) when the Worker's
    /// shutdown stopped it, so that it is retried elsewhere without using
    /// up an attempt.
    fn stopped(&self, id: &RunId) -> RunOutcome {
        let runs = lock(&self.0.runs);
        let run = runs.get(id);
        match (run.and_then(|r| r.cancel_reason.clone()), run.and_then(|r| r.shutdown_error.clone())) {
            (Some(reason), _) => RunOutcome::Cancelled { reason },
            (None, Some(error)) => RunOutcome::Interrupted { error },
            (None, None) => RunOutcome::Cancelled { reason: "cancelled".to_owned() },
        }
    }

    fn finish(&self, id: &RunId, lease: u64, outcome: RunOutcome) {
        self.finish_with_seq(id, lease, outcome, 0, Vec::new());
    }

    /// Records the terminal report (kept until acked) and sends it, with
    /// the output not sent on its own yet.
    fn finish_with_seq(
        &self,
        id: &RunId,
        lease: u64,
        outcome: RunOutcome,
        last_output_seq: u64,
        trailing_output: Vec<(u64, String)>,
    ) {
        self.0.counters.runs_finished.fetch_add(1, Ordering::Relaxed);
        let update = self.terminal_update(id, lease, outcome, last_output_seq, trailing_output);
        {
            let mut runs = lock(&self.0.runs);
            match runs.get_mut(id) {
                Some(r) if r.lease == lease => r.terminal = Some(update.clone()),
                // Fenced or told to stop meanwhile: nobody wants the report.
                _ => return,
            }
        }
        self.send(ClientKind::Status(update));
    }

    fn terminal_update(
        &self,
        id: &RunId,
        lease: u64,
        outcome: RunOutcome,
        last_output_seq: u64,
        trailing_output: Vec<(u64, String)>,
    ) -> pb::RunStatusUpdate {
        RunStatusReport {
            run_id: id.clone(),
            lease,
            progress: RunProgress::Finished(fit_for_report(outcome)),
            at: self.0.clock.now(),
            nonce: nonce(),
            last_output_seq,
            trailing_output,
        }
        .into()
    }

    /// Reports the Run of an assignment this Worker refuses FAILED with
    /// `error`, as a terminal report kept (and resent) until acked, so that
    /// the control plane does not keep it assigned for ever. Nothing is
    /// reported for an assignment whose run id or lease does not parse
    /// (there is no Run to report on), nor for a Run this Worker holds.
    fn refuse(&self, a: &pb::RunAssignment, error: String) {
        let (Ok(id), Ok(lease)) = (a.run_id.parse::<RunId>(), u64::try_from(a.lease)) else { return };
        let update = self.terminal_update(&id, lease, RunOutcome::Failed { error }, 0, Vec::new());
        {
            let mut runs = lock(&self.0.runs);
            if runs.contains_key(&id) {
                return;
            }
            runs.insert(
                id,
                InFlight {
                    lease,
                    cancel: CancelToken::new(),
                    cancel_reason: None,
                    shutdown_error: None,
                    started: false,
                    outputs: Vec::new(),
                    terminal: Some(update.clone()),
                },
            );
        }
        self.send(ClientKind::Status(update));
    }

    /// The agent `manifest` names, verified against this Worker's trust
    /// policy and prepared: from memory, or fetched from the control plane.
    async fn agent(&self, manifest: &AgentManifest) -> Result<Prepared> {
        let digest = manifest.digest;
        let expect = Expect::digest(digest).and_name(manifest.name.clone());
        if let Some(p) = self.known_agent(&digest, &expect)? {
            return Ok(p);
        }
        // One fetch and compile per digest at a time; other agents' go on.
        let _turn = FetchTurn::take(self, digest).await;
        if let Some(p) = self.known_agent(&digest, &expect)? {
            return Ok(p);
        }
        let (envelope, bytes) = self.fetch(&digest).await?;
        let verified = self
            .0
            .verifier
            .verify_unrecorded(&envelope, bytes, &expect)
            .map_err(|source| self.refused(digest, source))?;
        info!(digest = %digest, agent = %verified.name(), version = %verified.version(), "agent verified");
        // Compile exactly the bytes that were verified.
        let sandbox = self.0.sandbox.clone();
        let component = verified.component().clone();
        let prepared = tokio::task::spawn_blocking(move || sandbox.prepare(&digest, &component))
            .await
            .map_err(|e| Error::RunThread(e.to_string()))??;
        // Only a version that can run raises the rollback floor: one that
        // fails to compile or link must not lock the older ones out.
        self.0.verifier.record(&verified, &expect).map_err(|source| self.refused(digest, source))?;
        lock(&self.0.agents).insert(digest, (prepared.clone(), verified));
        Ok(prepared)
    }

    /// `digest` if it was verified and prepared before, and still passes
    /// the trust policy, its expiry, the rollback floor and the name the
    /// assignment gives (all may have moved on since).
    fn known_agent(&self, digest: &AgentDigest, expect: &Expect) -> Result<Option<Prepared>> {
        let Some((prepared, verified)) = lock(&self.0.agents).get(digest).cloned() else {
            return Ok(None);
        };
        self.0.verifier.recheck(&verified, expect).map_err(|source| self.refused(*digest, source))?;
        Ok(Some(prepared))
    }

    fn refused(&self, digest: AgentDigest, source: taskrun_signing::Error) -> Error {
        self.0.counters.agents_refused.fetch_add(1, Ordering::Relaxed);
        Error::AgentRefused { digest, source }
    }

    /// The envelope and component bytes of `digest`, from the control plane.
    async fn fetch(&self, digest: &AgentDigest) -> Result<(Vec<u8>, Vec<u8>)> {
        let fail = |message: String| Error::Fetch { digest: *digest, message };
        let channel = lock(&self.0.channel).clone().ok_or_else(|| fail("not connected".into()))?;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
        let mut stream = client
            .fetch_agent(pb::FetchAgentRequest { digest: digest.to_string(), offset: 0 })
            .await
            .map_err(|s| fail(format!("{}: {}", s.code(), s.message())))?
            .into_inner();
        let mut envelope = None;
        let mut bytes = Vec::new();
        let mut size = MAX_AGENT_BYTES;
        while let Some(msg) = stream.message().await.map_err(|s| fail(format!("{}: {}", s.code(), s.message())))? {
            match msg.part {
                Some(pb::fetch_agent_response::Part::Header(h)) if envelope.is_none() => {
                    size = h
                        .manifest
                        .as_ref()
                        .map_or(MAX_AGENT_BYTES, |m| m.size_bytes.unsigned_abs())
                        .min(MAX_AGENT_BYTES);
                    envelope = Some(h.envelope);
                }
                Some(pb::fetch_agent_response::Part::Chunk(c)) if envelope.is_some() => {
                    if (bytes.len() + c.len()) as u64 > size {
                        return Err(fail(format!("more than the {size} bytes announced")));
                    }
                    bytes.extend_from_slice(&c);
                }
                _ => return Err(fail("unexpected message in the FetchAgent stream".into())),
            }
        }
        let envelope = envelope.ok_or_else(|| fail("no header in the FetchAgent stream".into()))?;
        Ok((envelope, bytes))
    }
}

#[cfg(test)]
mod tests {
    use taskrun_core::Json;

    use super::*;

    #[test]
    fn terminal_reports_are_made_to_fit() {
        let long = "é".repeat(MAX_ERROR_BYTES);
        let RunOutcome::Failed { error } = fit_for_report(RunOutcome::Failed { error: long.clone() }) else {
            panic!("still failed");
        };
        assert!(error.len() <= MAX_ERROR_BYTES, "{}", error.len());
        assert!(error.ends_with(&format!(" … (cut: {} bytes in all)", long.len())), "{}", &error[error.len() - 40..]);
        assert!(long.starts_with(error.split(" … ").next().expect("text")));

        let RunOutcome::Cancelled { reason } = fit_for_report(RunOutcome::Cancelled { reason: long }) else {
            panic!("still cancelled");
        };
        assert!(reason.len() <= MAX_ERROR_BYTES);

        let small = RunOutcome::Failed { error: "agent error: no".into() };
        assert_eq!(fit_for_report(small.clone()), small);
        let ok = RunOutcome::Completed { result: Json::parse("result", "[1]".to_owned()).expect("json") };
        assert_eq!(fit_for_report(ok.clone()), ok);
        let huge = format!("\"{}\"", "x".repeat(MAX_RESULT_BYTES as usize));
        let huge = RunOutcome::Completed { result: Json::parse("result", huge).expect("json") };
        let RunOutcome::Failed { error } = fit_for_report(huge) else { panic!("a result over the maximum fails") };
        assert!(error.contains("exceeds the 8388608-byte maximum"), "{error}");
    }
}
