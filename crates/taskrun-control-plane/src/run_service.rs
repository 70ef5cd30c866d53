//! RunService.Connect: one long-lived stream per Worker.
//!
//! The Worker says hello first; the control plane answers with
//! WorkerAccepted (heartbeat settings, and a verdict on each Run the Worker
//! says it still has). After that both sides talk freely: assignments and
//! cancels go down, heartbeats, status updates and output come up. Every
//! report echoes the Run's lease; a report with a stale lease changes
//! nothing and is answered FENCED. Terminal reports are acked, and the
//! Worker resends them until they are.
//!
//! A Worker that shuts down gracefully says so (WorkerDraining, or
//! `draining` in the hello of a stream it opens while draining): its
//! session turns Draining, placement gives it nothing more, and once no
//! placement on it is under way it is answered with Drain, behind the last
//! assignment it will get. The drain lives in the session only: the store
//! keeps the Worker's record as it was, so a restarted Worker takes Runs
//! again.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use taskrun_core::{RunId, RunOutcome, Timestamp, Worker, WorkerId, WorkerInfo, WorkerState};
use taskrun_proto::{DrainNotice, InvalidMessage, RunOutputReport, RunProgress, RunStatusReport, pb};
use taskrun_store::{AppendOutcome, Error as StoreError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, instrument, warn};

use crate::state::{ControlPlane, Session};
use crate::status::store_status;

use pb::run_client_message::Kind as ClientKind;
use pb::run_server_message::Kind as ServerKind;

/// The RunService handlers.
#[derive(Debug, Clone)]
pub struct RunApi(pub Arc<ControlPlane>);

#[tonic::async_trait]
impl pb::run_service_server::RunService for RunApi {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<pb::RunServerMessage, Status>> + Send>>;

    #[instrument(skip_all)]
    async fn connect(
        &self,
        request: Request<Streaming<pb::RunClientMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let cp = Arc::clone(&self.0);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(cp.config.workers.heartbeat_timeout(), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no WorkerHello within the heartbeat timeout"))??;
        let Some(pb::RunClientMessage { kind: Some(ClientKind::Hello(hello)) }) = first else {
            return Err(Status::failed_precondition("the first message on Connect must be a WorkerHello"));
        };
        let info = WorkerInfo::try_from(hello.info.ok_or(InvalidMessage::Missing("hello.info".into()))?)
            .map_err(|e| Status::from(e.under("hello.info")))?;
        cp.check_clock(&info.id, hello.sent_at_unix_ms)?;
        let draining = hello
            .draining
            .map(DrainNotice::try_from)
            .transpose()
            .map_err(|e| Status::from(e.under("hello.draining")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        // Registration runs to its end even if this call goes away midway
        // (its session is then ended by its loop, which finds the stream
        // gone): dropped halfway, it would leave a session that no loop
        // watches, and placement would keep giving it Runs.
        let registering = tokio::spawn(async move {
            let generation = cp.register(info.clone(), tx, &hello.in_flight, draining).await?;
            let accepted = cp.accept(&info, &hello.in_flight).await;
            cp.kick.notify_one();
            tokio::spawn(session_loop(Arc::clone(&cp), info.id, generation, inbound));
            Ok::<_, Status>(accepted)
        });
        let accepted =
            registering.await.map_err(|e| Status::internal(format!("registering the worker failed: {e}")))??;
        // WorkerAccepted comes first, before anything sent to the session
        // while it registered (an assignment, a cancel).
        let accepted = Ok(pb::RunServerMessage { kind: Some(ServerKind::Accepted(accepted)) });
        let stream = futures::stream::once(std::future::ready(accepted)).chain(UnboundedReceiverStream::new(rx));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Reads one Worker's messages until the stream ends or goes silent.
///
/// Reports about one Run are handled in order, each Run in its own lane, so
/// that the store writes of different Runs proceed together (and share a
/// flush) instead of queueing behind each other.
async fn session_loop(
    cp: Arc<ControlPlane>,
    worker: WorkerId,
    generation: u64,
    mut inbound: Streaming<pb::RunClientMessage>,
) {
    let timeout = cp.config.workers.heartbeat_timeout();
    let mut lanes: HashMap<String, mpsc::UnboundedSender<pb::RunClientMessage>> = HashMap::new();
    let mut since_sweep = 0u32;
    let reason = loop {
        let next = tokio::select! {
            next = tokio::time::timeout(timeout, inbound.message()) => next,
            () = cp.shutdown.cancelled() => return,
        };
        let msg = match next {
            Err(_) => break format!("no message for {} ms (heartbeat timeout)", timeout.as_millis()),
            Ok(Err(status)) => break format!("stream failed: {}", status.message()),
            Ok(Ok(None)) => break "stream closed".to_owned(),
            Ok(Ok(Some(msg))) => msg,
        };
        if !cp.is_current(&worker, generation) {
            // A newer connection of the same Worker took over.
            return;
        }
        let run_id = match &msg.kind {
            Some(ClientKind::Status(u)) => u.run_id.clone(),
            Some(ClientKind::Output(c)) => c.run_id.clone(),
            _ => {
                if let Err(status) = cp.handle(&worker, generation, msg).await {
                    warn!(worker_id = %worker, error = %status.message(), "worker message refused");
                }
                continue;
            }
        };
        // A lane that ended (its Run's terminal report went through) gets
        // a successor for late resends.
        let msg = match lanes.get(&run_id) {
            Some(lane) => match lane.send(msg) {
                Ok(()) => continue,
                Err(mpsc::error::SendError(msg)) => msg,
            },
            None => msg,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(msg);
        tokio::spawn(lane(Arc::clone(&cp), worker.clone(), generation, rx));
        lanes.insert(run_id, tx);
        since_sweep += 1;
        if since_sweep >= 256 {
            since_sweep = 0;
            lanes.retain(|_, tx| !tx.is_closed());
        }
    };
    cp.worker_lost(&worker, generation, &reason).await;
}

/// Handles one Run's reports in order; ends after its terminal report, or
/// after a report on a Run this Worker does not hold (refused, or late):
/// reports on Runs that are not its own must not keep lanes open.
async fn lane(
    cp: Arc<ControlPlane>,
    worker: WorkerId,
    generation: u64,
    mut rx: mpsc::UnboundedReceiver<pb::RunClientMessage>,
) {
    while let Some(msg) = rx.recv().await {
        let run_id = match &msg.kind {
            Some(ClientKind::Status(u)) => u.run_id.parse::<RunId>().ok(),
            Some(ClientKind::Output(c)) => c.run_id.parse::<RunId>().ok(),
            _ => None,
        };
        let terminal = matches!(
            &msg.kind,
            Some(ClientKind::Status(u)) if pb::RunStatus::try_from(u.status).is_ok_and(|s| matches!(
                s,
                pb::RunStatus::Completed | pb::RunStatus::Failed | pb::RunStatus::Cancelled
            ))
        );
        if let Err(status) = cp.handle(&worker, generation, msg).await {
            warn!(worker_id = %worker, error = %status.message(), "worker message refused");
        }
        let held = run_id.is_some_and(|id| cp.sessions().get(&worker).is_some_and(|s| s.active.contains_key(&id)));
        if terminal || !held {
            rx.close();
        }
    }
}

impl ControlPlane {
    /// Records the Worker as connected and installs its session, replacing
    /// an older connection of the same Worker (whose stream is closed).
    ///
    /// The Worker's hello lists the Runs it holds. Every other Run the
    /// store says it holds never reached it (sent down a connection that
    /// was already dead, or held by a process that restarted): those fail
    /// over as a lost Worker's Runs do, and are retried per their Tasks'
    /// policies. Two live processes must not share a Worker id; if they
    /// do, each connection replaces the other and fails over the Runs the
    /// other holds.
    ///
    /// A hello with a drain notice (a Worker that connected again while it
    /// drains) opens a session that stays Draining, and is answered with
    /// Drain right after WorkerAccepted.
    async fn register(
        &self,
        info: WorkerInfo,
        tx: crate::state::Outbound,
        in_flight: &[pb::InFlightRun],
        draining: Option<DrainNotice>,
    ) -> Result<u64, Status> {
        let id = info.id.clone();
        let _turn = self.worker_turn(&id).await;
        let now = self.clock.now();
        let (first_seen, state) = match self.store.get_worker(&id).await {
            Ok(w) if w.state == WorkerState::Revoked => {
                return Err(Status::permission_denied(format!("worker {id} is revoked")));
            }
            // A drained Worker stays draining across reconnects.
            Ok(w) if w.state == WorkerState::Draining => (w.first_seen, WorkerState::Draining),
            Ok(w) => (w.first_seen, WorkerState::Connected),
            Err(e) if e.is_not_found() => (now, WorkerState::Connected),
            Err(e) => return Err(store_status(e)),
        };
        self.store
            .upsert_worker(Worker { info: info.clone(), state, first_seen, last_seen: now })
            .await
            .map_err(store_status)?;
        let generation = self.next_generation();
        let slots = info.slots;
        // The session goes in before the store is read, closed to placement
        // (draining) until it is known which Runs the Worker holds: a Run
        // delivered from now on goes down this stream and into `active`;
        // one delivered before is in what the store read returns.
        let replaced = {
            let mut sessions = self.sessions();
            // Placements under way on the connection this one replaces
            // deliver here: they stay counted (see Session::counts_from).
            let (reserved, counts_from) =
                sessions.get(&id).map_or((0, generation), |old| (old.reserved, old.counts_from));
            sessions.insert(
                id.clone(),
                Session {
                    generation,
                    tx,
                    info: Arc::new(info),
                    state: WorkerState::Draining,
                    active: HashMap::new(),
                    unlisted: HashMap::new(),
                    reserved,
                    counts_from,
                    last_assigned: 0,
                    drain_answer: None,
                },
            )
        };
        if let Some(old) = replaced {
            warn!(
                worker_id = %id,
                old_generation = old.generation,
                "worker connected again while its previous stream was open: that stream is closed (a second live \
                 process with this worker id would lose its runs)"
            );
        }
        let held = match self.store.active_runs_of_worker(&id).await {
            Ok(runs) => runs,
            Err(e) => {
                let mut sessions = self.sessions();
                if sessions.get(&id).is_some_and(|s| s.generation == generation) {
                    sessions.remove(&id);
                }
                return Err(store_status(e));
            }
        };
        let listed: HashMap<&str, i64> = in_flight.iter().map(|r| (r.run_id.as_str(), r.lease)).collect();
        // The Runs it still holds, each with when it must have ended.
        let mut adopted = HashMap::new();
        for run in &held {
            if i64::try_from(run.lease).ok().is_some_and(|lease| listed.get(run.id.as_str()) == Some(&lease)) {
                adopted.insert(run.id.clone(), self.report_deadline(run).await);
            }
        }
        let (active, missing) = {
            let mut sessions = self.sessions();
            // Only shutdown removes a session while we hold the Worker's turn.
            let Some(session) = sessions.get_mut(&id).filter(|s| s.generation == generation) else {
                return Err(Status::unavailable("the control plane is shutting down"));
            };
            let mut missing = Vec::new();
            for run in held {
                match session.active.entry(run.id) {
                    // Delivered down this stream after the session went in.
                    Entry::Occupied(_) => {}
                    Entry::Vacant(slot) => match adopted.remove(slot.key()) {
                        Some(deadline) => {
                            slot.insert(deadline);
                        }
                        None => missing.push(slot.into_key()),
                    },
                }
            }
            match &draining {
                // Its own drain is not stored: a restarted Worker takes Runs again.
                Some(notice) => {
                    session.state = WorkerState::Draining;
                    session.drain_answer = Some(drain_answer(notice));
                    session.answer_drain_if_settled();
                }
                None => session.state = state,
            }
            (session.active.len(), missing)
        };
        info!(
            worker_id = %id,
            generation,
            slots,
            active,
            missing = missing.len(),
            draining = draining.is_some(),
            "worker connected"
        );
        if !missing.is_empty() {
            self.fail_missing_runs(&id, &missing, &format!("worker {id} reconnected without the run")).await;
        }
        Ok(generation)
    }

    /// Holds a heartbeat's list of Runs against what the Worker was given.
    ///
    /// A Run given to it that its heartbeats have left out for a heartbeat
    /// timeout never reached it, or it dropped the Run: the Run fails over
    /// as a lost Worker's do. (One heartbeat alone proves nothing: it may
    /// have left before the assignment arrived.) A Run it lists that is no
    /// longer its own (failed over, or given to another Worker) is stopped
    /// with CancelRun, under the lease it lists.
    async fn on_heartbeat(&self, worker: &WorkerId, generation: u64, runs: &[pb::RunLease]) {
        let listed: HashMap<&str, i64> = runs.iter().map(|r| (r.run_id.as_str(), r.lease)).collect();
        let now = self.clock.now();
        let timeout = i64::try_from(self.config.workers.heartbeat_timeout_ms).unwrap_or(i64::MAX);
        let (missing, unknown) = {
            let mut sessions = self.sessions();
            let Some(session) = sessions.get_mut(worker).filter(|s| s.generation == generation) else { return };
            let Session { active, unlisted, .. } = session;
            unlisted.retain(|id, _| active.contains_key(id) && !listed.contains_key(id.as_str()));
            let mut missing = Vec::new();
            for id in active.keys().filter(|id| !listed.contains_key(id.as_str())) {
                let since = *unlisted.entry(id.clone()).or_insert(now);
                if now.0.saturating_sub(since.0) >= timeout {
                    missing.push(id.clone());
                }
            }
            let unknown: Vec<(RunId, i64)> = listed
                .iter()
                .filter_map(|(&id, &lease)| Some((id.parse::<RunId>().ok()?, lease)))
                .filter(|(id, _)| !active.contains_key(id))
                .collect();
            (missing, unknown)
        };
        if !missing.is_empty() {
            let reason = format!("worker {worker} no longer lists the run in its heartbeats");
            self.fail_missing_runs(worker, &missing, &reason).await;
        }
        for (id, lease) in unknown {
            let stop = match self.store.get_run(&id).await {
                Ok(run) if run.worker_id.as_ref() == Some(worker) && i64::try_from(run.lease).ok() == Some(lease) => {
                    // Its own: ended, and waiting in the Worker's list for
                    // the ack; or active, and so this session's.
                    if run.status.is_active() {
                        let deadline = self.report_deadline(&run).await;
                        if let Some(session) = self.sessions().get_mut(worker).filter(|s| s.generation == generation) {
                            session.active.entry(id.clone()).or_insert(deadline);
                        }
                    }
                    false
                }
                Ok(_) => true,
                Err(e) if e.is_not_found() => true,
                Err(_) => false,
            };
            if stop {
                let cancel = pb::CancelRun {
                    message_id: uuid::Uuid::now_v7().simple().to_string(),
                    run_id: id.to_string(),
                    lease,
                    reason: "the run is no longer this worker's".to_owned(),
                };
                info!(worker_id = %worker, run_id = %id, lease, "worker lists a run that is not its own; stopping it");
                self.send_to(worker, ServerKind::Cancel(cancel));
            }
        }
    }

    /// When the Worker must have reported the end of `run`, a Run it held
    /// before this session: the Run's deadline (its assignment and its
    /// Task's run timeout) and a heartbeat timeout more, for the report.
    /// A deadline that passed while the Worker was away (a control-plane
    /// restart, a long partition) counts from now instead: the report of a
    /// Run that ended meanwhile is on its way, resent after the hello.
    async fn report_deadline(&self, run: &taskrun_core::Run) -> Timestamp {
        let timeout = match self.store.get_task(&run.task_id).await {
            Ok(task) => task.spec.limits.run_timeout_ms,
            Err(_) => taskrun_core::TaskLimits::MAX_RUN_TIMEOUT_MS,
        };
        let now = self.clock.now();
        let deadline = run.assigned_at.unwrap_or(now).saturating_add(Duration::from_millis(timeout));
        deadline.max(now).saturating_add(self.config.workers.heartbeat_timeout())
    }

    /// Fails over Runs the store says `worker` holds that the Worker does
    /// not have (its hello or its heartbeats left them out), or did not
    /// end in time.
    ///
    /// A Run skipped (it ended, or moved on, since) is no longer the
    /// Worker's. One the store could not fail stays the Worker's and is
    /// tried again: by the watchdog when it is overdue, at the next
    /// heartbeat that leaves it out otherwise.
    pub(crate) async fn fail_missing_runs(&self, worker: &WorkerId, missing: &[RunId], reason: &str) {
        warn!(worker_id = %worker, runs = missing.len(), reason, "failing runs over");
        let failed = match self.store.fail_runs(worker, missing, reason, self.clock.now()).await {
            Ok(failed) => failed,
            Err(e) => {
                warn!(worker_id = %worker, error = %e, "could not fail runs over; they are tried again");
                self.retry_missing_runs(worker, missing);
                return;
            }
        };
        let retry: Vec<RunId> = failed
            .errors
            .iter()
            .filter(|(_, e)| matches!(e, StoreError::Storage(_)))
            .map(|(id, _)| id.clone())
            .collect();
        for change in &failed.changes {
            // Such a Run may yet have been delivered down the new stream
            // (a placement that raced the reconnect): stop it there, under
            // the lease the Worker was given (failing it moved the lease
            // on by one, which fences the Worker's reports).
            let delivered = self.sessions().get_mut(worker).is_some_and(|s| s.active.remove(&change.run.id).is_some());
            if delivered {
                let mut given = change.run.clone();
                given.lease = given.lease.saturating_sub(1);
                self.cancel_on_workers(std::slice::from_ref(&given), reason);
            }
        }
        if let Some(session) = self.sessions().get_mut(worker) {
            for id in missing.iter().filter(|id| !retry.contains(id)) {
                session.active.remove(id);
            }
        }
        self.retry_missing_runs(worker, &retry);
        self.settle_failed(worker, failed);
    }

    /// Keeps `retry` in the Worker's session to be failed over again. A
    /// Run the session does not hold yet (its hello left it out) counts as
    /// left out of heartbeats for long: the next heartbeat fails it over
    /// again.
    fn retry_missing_runs(&self, worker: &WorkerId, retry: &[RunId]) {
        let now = self.clock.now();
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(worker) else { return };
        for id in retry {
            if let Entry::Vacant(slot) = session.active.entry(id.clone()) {
                let far = now.saturating_add(Duration::from_millis(taskrun_core::TaskLimits::MAX_RUN_TIMEOUT_MS));
                slot.insert(far);
                session.unlisted.insert(id.clone(), Timestamp::ZERO);
            }
        }
    }

    /// The answer to a hello: settings and a verdict per in-flight Run.
    async fn accept(&self, info: &WorkerInfo, in_flight: &[pb::InFlightRun]) -> pb::WorkerAccepted {
        let mut verdicts = Vec::new();
        for r in in_flight {
            let verdict = match r.run_id.parse::<RunId>() {
                Err(e) => (pb::InFlightVerdict::Stop, 0, format!("invalid run_id: {e}")),
                Ok(id) => match self.store.get_run(&id).await {
                    Ok(run)
                        if run.status.is_active()
                            && run.worker_id.as_ref() == Some(&info.id)
                            && i64::try_from(run.lease).ok() == Some(r.lease) =>
                    {
                        let acked = self.last_output_seq(&run.task_id, &id).await;
                        (pb::InFlightVerdict::Continue, acked, String::new())
                    }
                    Ok(run) if run.status.is_terminal() && i64::try_from(run.lease).ok() == Some(r.lease) => {
                        (pb::InFlightVerdict::Stop, 0, format!("run is already {}", run.status))
                    }
                    Ok(run) => {
                        (pb::InFlightVerdict::Stop, 0, format!("stale lease: the run holds lease {}", run.lease))
                    }
                    Err(e) => (pb::InFlightVerdict::Stop, 0, e.to_string()),
                },
            };
            verdicts.push(pb::InFlightRunVerdict {
                run_id: r.run_id.clone(),
                lease: r.lease,
                verdict: verdict.0.into(),
                output_seq_acked: i64::try_from(verdict.1).unwrap_or(i64::MAX),
                reason: verdict.2,
            });
        }
        let w = &self.config.workers;
        pb::WorkerAccepted {
            worker_id: info.id.to_string(),
            heartbeat_interval_ms: i64::try_from(w.heartbeat_interval_ms).unwrap_or(i64::MAX),
            heartbeat_timeout_ms: i64::try_from(w.heartbeat_timeout_ms).unwrap_or(i64::MAX),
            server_time_unix_ms: self.clock.now().as_millis(),
            max_clock_skew_ms: i64::try_from(w.max_clock_skew_ms).unwrap_or(i64::MAX),
            in_flight: verdicts,
        }
    }

    /// How far a Run's stored output goes without a gap: every chunk up to
    /// this seq is stored (0 = none). The Worker resends what follows it, so
    /// a chunk lost before a later one was stored is sent again (a later
    /// chunk it resends is a duplicate, and changes nothing).
    async fn last_output_seq(&self, task: &taskrun_core::TaskId, run: &RunId) -> u64 {
        let mut after = 0;
        let mut seqs = Vec::new();
        while let Ok(events) = self.store.events_since(task, after, 1000).await {
            let Some(tail) = events.last() else { break };
            after = tail.seq;
            for e in &events {
                if let taskrun_core::TaskEventKind::Output(chunk) = &e.kind
                    && &chunk.run_id == run
                {
                    seqs.push(chunk.seq);
                }
            }
        }
        gap_free_end(seqs)
    }

    /// Refuses a Worker whose clock is further from ours than the allowed
    /// skew. It would refuse every assignment (their times are checked
    /// against its clock) and each refusal would use up an attempt of a
    /// Task: better that it is not given any, and hears why.
    fn check_clock(&self, worker: &WorkerId, sent_at_unix_ms: i64) -> Result<(), Status> {
        if sent_at_unix_ms <= 0 {
            return Err(Status::invalid_argument(
                "hello.sent_at_unix_ms: required: the worker's clock (unix ms) when it sent the hello",
            ));
        }
        let offset_ms = sent_at_unix_ms.saturating_sub(self.clock.now().as_millis());
        let allowed = self.config.workers.max_clock_skew_ms;
        if offset_ms.unsigned_abs() <= allowed {
            return Ok(());
        }
        let side = if offset_ms > 0 { "ahead of" } else { "behind" };
        warn!(worker_id = %worker, offset_ms, max_clock_skew_ms = allowed, "worker refused: its clock is off");
        Err(Status::failed_precondition(format!(
            "worker {worker}: its clock is {} ms {side} the control plane's, beyond the allowed skew \
             (workers.max_clock_skew_ms = {allowed}); synchronise the clocks (NTP) and it can connect",
            offset_ms.unsigned_abs()
        )))
    }

    /// Whether `run` is assigned to `worker`: its session's active Runs
    /// first, the store for the rest (an unknown Run is nobody's).
    async fn runs_on(&self, worker: &WorkerId, run: &RunId) -> Result<bool, Status> {
        if self.sessions().get(worker).is_some_and(|s| s.active.contains_key(run)) {
            return Ok(true);
        }
        match self.store.get_run(run).await {
            Ok(stored) => Ok(stored.worker_id.as_ref() == Some(worker)),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(store_status(e)),
        }
    }

    fn is_current(&self, worker: &WorkerId, generation: u64) -> bool {
        self.sessions().get(worker).is_some_and(|s| s.generation == generation)
    }

    /// Sends `kind` to `worker` if it is connected.
    pub(crate) fn send_to(&self, worker: &WorkerId, kind: ServerKind) -> bool {
        self.sessions().get(worker).is_some_and(|s| s.send(kind))
    }

    /// Handles a message that came on the Worker's connection `generation`.
    /// What it says of the session (heartbeats, a drain) is dropped once a
    /// newer connection has replaced that one.
    async fn handle(&self, worker: &WorkerId, generation: u64, msg: pb::RunClientMessage) -> Result<(), Status> {
        match msg.kind {
            None => Err(InvalidMessage::Missing("kind".into()).into()),
            Some(ClientKind::Hello(_)) => Err(Status::failed_precondition("hello sent twice on one stream")),
            Some(ClientKind::Heartbeat(hb)) => {
                debug!(worker_id = %worker, free_slots = hb.free_slots, runs = hb.active_runs.len(), "heartbeat");
                self.on_heartbeat(worker, generation, &hb.active_runs).await;
                Ok(())
            }
            Some(ClientKind::Ack(_)) => Ok(()),
            Some(ClientKind::Draining(notice)) => self.on_draining(worker, generation, DrainNotice::try_from(notice)?),
            Some(ClientKind::Output(chunk)) => self.on_output(worker, chunk).await,
            Some(ClientKind::Status(update)) => self.on_status(worker, update).await,
        }
    }

    /// `outcome`, unless it says the Run was interrupted by the Worker's
    /// shutdown while the Worker never said it was shutting down: then an
    /// ordinary failure, which counts as an attempt (a Worker that claims
    /// interruptions it did not announce cannot retry a Task for ever).
    fn vouched(&self, worker: &WorkerId, outcome: RunOutcome) -> RunOutcome {
        match outcome {
            RunOutcome::Interrupted { error }
                if self.sessions().get(worker).is_none_or(|s| s.state != WorkerState::Draining) =>
            {
                warn!(worker_id = %worker, "a run reported interrupted by a worker that is not draining: counted as a failure");
                RunOutcome::Failed { error }
            }
            other => other,
        }
    }

    /// The Worker is shutting down: it gets no new Runs, and Drain once no
    /// placement on it is under way.
    fn on_draining(&self, worker: &WorkerId, generation: u64, notice: DrainNotice) -> Result<(), Status> {
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(worker).filter(|s| s.generation == generation) else { return Ok(()) };
        if session.state != WorkerState::Draining {
            info!(
                worker_id = %worker,
                active = session.active.len(),
                deadline_unix_ms = notice.deadline.as_millis(),
                reason = %notice.reason,
                "worker draining: it gets no new runs"
            );
        }
        session.state = WorkerState::Draining;
        session.drain_answer = Some(drain_answer(&notice));
        session.answer_drain_if_settled();
        Ok(())
    }

    async fn on_output(&self, worker: &WorkerId, chunk: pb::RunOutputChunk) -> Result<(), Status> {
        let report = RunOutputReport::try_from(chunk)?;
        let chunk = report.chunk;
        // Like a status report, output must come from the Run's Worker: a
        // lease alone could be guessed.
        if !self.runs_on(worker, &chunk.run_id).await? {
            debug!(worker_id = %worker, run_id = %chunk.run_id, "output for another worker's run dropped");
            return Ok(());
        }
        match self.store.append_output(&chunk.run_id, report.lease, chunk.seq, chunk.data, self.clock.now()).await {
            Ok(AppendOutcome::Appended(event)) => {
                self.publish(std::slice::from_ref(&event));
                Ok(())
            }
            Ok(AppendOutcome::Duplicate) => Ok(()),
            Err(StoreError::OutputLimit { run_id, limit_bytes }) => {
                // Keep what fits; tell the Worker to stop sending.
                debug!(worker_id = %worker, run_id = %run_id, limit_bytes, "output over its cap");
                Ok(())
            }
            Err(e @ (StoreError::LeaseConflict { .. } | StoreError::FailedPrecondition { .. })) => {
                debug!(worker_id = %worker, run_id = %chunk.run_id, error = %e, "output from a fenced run dropped");
                Ok(())
            }
            Err(e) => Err(store_status(e)),
        }
    }

    async fn on_status(&self, worker: &WorkerId, update: pb::RunStatusUpdate) -> Result<(), Status> {
        let (wire_run_id, wire_lease, wire_status) = (update.run_id.clone(), update.lease, update.status);
        let report = match RunStatusReport::try_from(update) {
            Ok(r) => r,
            Err(e) => {
                let ack = ack(&wire_run_id, wire_lease, wire_status, pb::RunAckOutcome::Rejected, e.to_string());
                self.send_to(worker, ack);
                return Err(e.into());
            }
        };
        let status = report.progress.status();
        let wire_status = pb::RunStatus::from(status).into();
        let lease = report.lease;
        let run_id = report.run_id.clone();
        // The Run must be this Worker's: a lease alone could be guessed.
        let run = match self.store.get_run(&run_id).await {
            Ok(run) => run,
            // Unknown here (e.g. its creation was lost in a crash before it
            // reached the disk): answered, so the Worker stops resending.
            Err(e) if e.is_not_found() => {
                let reason = format!("run {run_id} is unknown to the control plane");
                self.send_to(
                    worker,
                    ack(run_id.as_str(), wire_lease, wire_status, pb::RunAckOutcome::Rejected, reason),
                );
                return Ok(());
            }
            Err(e) => return Err(store_status(e)),
        };
        if run.worker_id.as_ref() != Some(worker) {
            let reason = format!("run {run_id} is not assigned to worker {worker}");
            self.send_to(worker, ack(run_id.as_str(), wire_lease, wire_status, pb::RunAckOutcome::Fenced, reason));
            return Ok(());
        }
        let now = self.clock.now();
        let result = match report.progress {
            RunProgress::Started => self.store.start_run(&run_id, lease, now).await,
            RunProgress::Finished(outcome) => {
                let outcome = self.vouched(worker, outcome);
                self.store.finish_run_with_output(&run_id, lease, report.trailing_output, outcome, now).await
            }
        };
        let (outcome, reason) = match result {
            Ok(change) => {
                self.publish(&change.events);
                if status.is_terminal() {
                    if let Some(s) = self.sessions().get_mut(worker) {
                        s.active.remove(&run_id);
                    }
                    info!(worker_id = %worker, run_id = %run_id, task_id = %change.task.id, status = %status, "run finished");
                    self.kick.notify_one();
                }
                self.cancel_on_workers(&change.cancelled_runs, "task ended");
                (pb::RunAckOutcome::Accepted, String::new())
            }
            Err(StoreError::LeaseConflict { actual, .. }) => {
                if let Some(s) = self.sessions().get_mut(worker) {
                    s.active.remove(&run_id);
                }
                (pb::RunAckOutcome::Fenced, format!("stale lease {lease}: the run holds lease {actual}"))
            }
            Err(StoreError::FailedPrecondition { reason, .. }) => {
                // A resend of a report that was applied before is a duplicate.
                let current = self.store.get_run(&run_id).await.map_err(store_status)?;
                // The Worker holds the slot while the Run is still its own
                // (a RUNNING report repeated); otherwise the slot is free.
                let still_running_here =
                    current.status.is_active() && current.lease == lease && current.worker_id.as_ref() == Some(worker);
                if !still_running_here && let Some(s) = self.sessions().get_mut(worker) {
                    s.active.remove(&run_id);
                }
                if current.lease == lease && (current.status == status || current.status.is_terminal()) {
                    (pb::RunAckOutcome::Duplicate, format!("run is already {}", current.status))
                } else {
                    (pb::RunAckOutcome::Rejected, reason)
                }
            }
            // A report that can never be stored (e.g. trailing output whose
            // seqs leave too many gaps): resending it would not help.
            Err(StoreError::InvalidArgument { field, reason }) => {
                (pb::RunAckOutcome::Rejected, format!("invalid {field}: {reason}"))
            }
            Err(e) => return Err(store_status(e)),
        };
        if status.is_terminal() || outcome != pb::RunAckOutcome::Accepted {
            self.send_to(worker, ack(run_id.as_str(), wire_lease, wire_status, outcome, reason));
        }
        Ok(())
    }

    /// Sends CancelRun to the Worker of each Run in `runs` that had one
    /// (the store lists exactly the Runs a change took from their Workers).
    pub(crate) fn cancel_on_workers(&self, runs: &[taskrun_core::Run], reason: &str) {
        for run in runs {
            let Some(worker) = &run.worker_id else { continue };
            let cancel = pb::CancelRun {
                message_id: uuid::Uuid::now_v7().simple().to_string(),
                run_id: run.id.to_string(),
                lease: i64::try_from(run.lease).unwrap_or(i64::MAX),
                reason: reason.to_owned(),
            };
            let mut sessions = self.sessions();
            if let Some(s) = sessions.get_mut(worker) {
                s.active.remove(&run.id);
                s.send(ServerKind::Cancel(cancel));
            }
        }
    }

    /// The Worker's stream ended or went silent: its Runs fail (and are
    /// retried per policy) and it is fenced off from them. Nothing happens
    /// if a newer connection of the Worker has registered since.
    pub(crate) async fn worker_lost(&self, worker: &WorkerId, generation: u64, reason: &str) {
        let _turn = self.worker_turn(worker).await;
        let drained = {
            let mut sessions = self.sessions();
            if sessions.get(worker).is_none_or(|s| s.generation != generation) {
                debug!(worker_id = %worker, generation, reason, "a replaced connection of the worker ended");
                return;
            }
            sessions.remove(worker).is_some_and(|s| s.state == WorkerState::Draining && s.active.is_empty())
        };
        if drained {
            // The end of a graceful shutdown: nothing to fail over.
            info!(worker_id = %worker, reason, "drained worker disconnected");
            self.mark_lost(worker).await;
            return;
        }
        self.fail_over_now(worker, reason).await;
    }

    /// Marks a Worker that has no session lost and fails its Runs over:
    /// each gets a new lease (fencing the Worker), fails, and is retried
    /// per its Task's policy; Tasks that ended get their other Runs
    /// cancelled. Nothing happens if the Worker has (re)connected.
    pub(crate) async fn fail_over(&self, worker: &WorkerId, reason: &str) {
        let _turn = self.worker_turn(worker).await;
        if self.sessions().contains_key(worker) {
            debug!(worker_id = %worker, reason, "worker reconnected: not failed over");
            return;
        }
        self.fail_over_now(worker, reason).await;
    }

    /// [`ControlPlane::fail_over`], for a caller that holds the Worker's
    /// turn and has seen it has no session.
    ///
    /// The Runs fail first, then the Worker is marked lost: a crash
    /// between the two leaves it marked connected, and the next start's
    /// reaper fails it over again. A Worker marked lost that still holds
    /// Runs (a Run that could not be failed) is failed over again there too.
    async fn fail_over_now(&self, worker: &WorkerId, reason: &str) {
        warn!(worker_id = %worker, reason, "worker lost");
        let settled = match self
            .store
            .fail_runs_of_worker(worker, &format!("worker {worker} lost: {reason}"), self.clock.now())
            .await
        {
            Ok(failed) => {
                // A Run that cannot be failed for another reason (a
                // damaged record) would fail the same way again.
                let settled = !failed.errors.iter().any(|(_, e)| matches!(e, StoreError::Storage(_)));
                self.settle_failed(worker, failed);
                settled
            }
            Err(e) => {
                warn!(worker_id = %worker, error = %e, "could not fail the runs of a lost worker");
                false
            }
        };
        if settled {
            self.unsettled().remove(worker);
        } else {
            // The watchdog tries again (ControlPlane::retry_failovers).
            self.unsettled().insert(worker.clone(), reason.to_owned());
        }
        self.mark_lost(worker).await;
    }

    async fn mark_lost(&self, worker: &WorkerId) {
        if let Err(e) = self.store.set_worker_state(worker, WorkerState::Lost).await {
            warn!(worker_id = %worker, error = %e, "could not mark worker lost");
        }
    }

    /// Publishes what failing a Worker's Runs changed, cancels the other
    /// Runs of Tasks that ended, and logs each Run that could not be failed.
    fn settle_failed(&self, worker: &WorkerId, failed: taskrun_store::FailedRuns) {
        for change in &failed.changes {
            self.publish(&change.events);
            self.cancel_on_workers(&change.cancelled_runs, "task ended");
        }
        for (run, e) in &failed.errors {
            warn!(worker_id = %worker, run_id = %run, error = %e, "could not fail a run over");
        }
        self.kick.notify_one();
    }
}

/// The end of the run of seqs 1, 2, 3, … in `seqs` (0 if 1 is missing).
fn gap_free_end(mut seqs: Vec<u64>) -> u64 {
    seqs.sort_unstable();
    let mut end = 0;
    for seq in seqs {
        if seq == end + 1 {
            end = seq;
        } else if seq > end + 1 {
            break;
        }
    }
    end
}

/// The answer to a Worker's drain notice: no new Runs will come; Runs
/// still going at its own deadline are stopped (by the Worker).
fn drain_answer(notice: &DrainNotice) -> pb::Drain {
    pb::Drain {
        message_id: uuid::Uuid::now_v7().simple().to_string(),
        reason: "the worker is draining: no new runs will come".to_owned(),
        deadline_unix_ms: Some(notice.deadline.as_millis()),
    }
}

fn ack(run_id: &str, lease: i64, status: i32, outcome: pb::RunAckOutcome, reason: String) -> ServerKind {
    ServerKind::Ack(pb::RunAck {
        run_id: run_id.to_owned(),
        lease,
        subject: Some(pb::run_ack::Subject::Status(status)),
        outcome: outcome.into(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::gap_free_end;

    #[test]
    fn output_is_acked_up_to_its_first_gap() {
        for (seqs, end) in [
            (vec![], 0),
            (vec![2, 3], 0),
            (vec![1], 1),
            (vec![3, 1, 2], 3),
            (vec![1, 2, 4, 5], 2),
            (vec![1, 1, 2, 2], 2),
        ] {
            assert_eq!(gap_free_end(seqs.clone()), end, "{seqs:?}");
        }
    }
}
