//! RunService.Connect: one long-lived stream per Worker.
//!
//! The Worker says hello first; the control plane answers with
//! WorkerAccepted (heartbeat settings, and a verdict on each Run the Worker
//! says it still has). After that both sides talk freely: assignments and
//! cancels go down, heartbeats, status updates and output come up. Every
//! report echoes the Run's lease; a report with a stale lease changes
//! nothing and is answered FENCED. Terminal reports are acked, and the
//! Worker resends them until they are.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use taskrun_core::{RunId, Worker, WorkerId, WorkerInfo, WorkerState};
use taskrun_proto::{InvalidMessage, RunOutputReport, RunProgress, RunStatusReport, pb};
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
        let (tx, rx) = mpsc::unbounded_channel();
        let generation = cp.register(info.clone(), tx.clone()).await?;
        let accepted = cp.accept(&info, &hello.in_flight).await;
        // The receiver is ours until we return it, so this cannot fail.
        let _ = tx.send(Ok(pb::RunServerMessage { kind: Some(ServerKind::Accepted(accepted)) }));
        cp.kick.notify_one();
        tokio::spawn(session_loop(Arc::clone(&cp), info.id, generation, inbound));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
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
                if let Err(status) = cp.handle(&worker, msg).await {
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
        tokio::spawn(lane(Arc::clone(&cp), worker.clone(), rx));
        lanes.insert(run_id, tx);
        since_sweep += 1;
        if since_sweep >= 256 {
            since_sweep = 0;
            lanes.retain(|_, tx| !tx.is_closed());
        }
    };
    cp.worker_lost(&worker, generation, &reason).await;
}

/// Handles one Run's reports in order; ends after its terminal report.
async fn lane(cp: Arc<ControlPlane>, worker: WorkerId, mut rx: mpsc::UnboundedReceiver<pb::RunClientMessage>) {
    while let Some(msg) = rx.recv().await {
        let terminal = matches!(
            &msg.kind,
            Some(ClientKind::Status(u)) if pb::RunStatus::try_from(u.status).is_ok_and(|s| matches!(
                s,
                pb::RunStatus::Completed | pb::RunStatus::Failed | pb::RunStatus::Cancelled
            ))
        );
        if let Err(status) = cp.handle(&worker, msg).await {
            warn!(worker_id = %worker, error = %status.message(), "worker message refused");
        }
        if terminal {
            rx.close();
        }
    }
}

impl ControlPlane {
    /// Records the Worker as connected and installs its session, replacing
    /// an older connection of the same Worker.
    async fn register(&self, info: WorkerInfo, tx: crate::state::Outbound) -> Result<u64, Status> {
        let now = self.clock.now();
        let (first_seen, state) = match self.store.get_worker(&info.id).await {
            Ok(w) if w.state == WorkerState::Revoked => {
                return Err(Status::permission_denied(format!("worker {} is revoked", info.id)));
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
        let active: HashSet<RunId> =
            self.store.active_runs_of_worker(&info.id).await.map_err(store_status)?.into_iter().map(|r| r.id).collect();
        info!(worker_id = %info.id, slots = info.slots, active = active.len(), "worker connected");
        self.sessions().insert(
            info.id.clone(),
            Session { generation, tx, info: Arc::new(info), state, active, reserved: 0, last_assigned: 0 },
        );
        Ok(generation)
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

    /// The highest output seq stored for a Run (0 = none).
    async fn last_output_seq(&self, task: &taskrun_core::TaskId, run: &RunId) -> u64 {
        let mut after = 0;
        let mut last = 0;
        while let Ok(events) = self.store.events_since(task, after, 1000).await {
            let Some(tail) = events.last() else { break };
            after = tail.seq;
            for e in &events {
                if let taskrun_core::TaskEventKind::Output(chunk) = &e.kind
                    && &chunk.run_id == run
                {
                    last = last.max(chunk.seq);
                }
            }
        }
        last
    }

    /// Whether `run` is assigned to `worker`: its session's active Runs
    /// first, the store for the rest (an unknown Run is nobody's).
    async fn runs_on(&self, worker: &WorkerId, run: &RunId) -> Result<bool, Status> {
        if self.sessions().get(worker).is_some_and(|s| s.active.contains(run)) {
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

    async fn handle(&self, worker: &WorkerId, msg: pb::RunClientMessage) -> Result<(), Status> {
        match msg.kind {
            None => Err(InvalidMessage::Missing("kind".into()).into()),
            Some(ClientKind::Hello(_)) => Err(Status::failed_precondition("hello sent twice on one stream")),
            Some(ClientKind::Heartbeat(hb)) => {
                debug!(worker_id = %worker, free_slots = hb.free_slots, "heartbeat");
                Ok(())
            }
            Some(ClientKind::Ack(_)) => Ok(()),
            Some(ClientKind::Output(chunk)) => self.on_output(worker, chunk).await,
            Some(ClientKind::Status(update)) => self.on_status(worker, update).await,
        }
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
                if let Some(s) = self.sessions().get_mut(worker) {
                    s.active.remove(&run_id);
                }
                // A resend of a report that was applied before is a duplicate.
                let current = self.store.get_run(&run_id).await.map_err(store_status)?;
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
    /// retried per policy) and it is fenced off from them.
    pub(crate) async fn worker_lost(&self, worker: &WorkerId, generation: u64, reason: &str) {
        {
            let mut sessions = self.sessions();
            if sessions.get(worker).is_none_or(|s| s.generation != generation) {
                return;
            }
            sessions.remove(worker);
        }
        self.fail_over(worker, reason).await;
    }

    /// Marks a Worker that has no session lost and fails its Runs over:
    /// each gets a new lease (fencing the Worker), fails, and is retried
    /// per its Task's policy; Tasks that ended get their other Runs
    /// cancelled.
    pub(crate) async fn fail_over(&self, worker: &WorkerId, reason: &str) {
        warn!(worker_id = %worker, reason, "worker lost");
        if let Err(e) = self.store.set_worker_state(worker, WorkerState::Lost).await {
            warn!(worker_id = %worker, error = %e, "could not mark worker lost");
        }
        match self.store.fail_runs_of_worker(worker, &format!("worker {worker} lost: {reason}"), self.clock.now()).await
        {
            Ok(changes) => {
                for change in &changes {
                    self.publish(&change.events);
                    self.cancel_on_workers(&change.cancelled_runs, "task ended");
                }
                self.kick.notify_one();
            }
            Err(e) => warn!(worker_id = %worker, error = %e, "could not fail the runs of a lost worker"),
        }
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
