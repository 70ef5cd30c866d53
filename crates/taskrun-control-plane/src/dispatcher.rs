//! The scheduler loop: reads PENDING Runs, places them with
//! [`crate::scheduler`], takes each Run's lease in the store and sends the
//! RunAssignment down the chosen Worker's stream.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use taskrun_core::{AgentManifest, AgentRef, Run, RunId, Task, TaskId, Timestamp, WorkerId, WorkerState};
use taskrun_store::Error as StoreError;
use taskrun_store::logic::start_deadline;
use tracing::{debug, info, warn};

use crate::placement::{Reservation, candidate};
use crate::scheduler::{PendingRun, room_left_after, timeout_reason, unschedulable_reason};
use crate::state::ControlPlane;

/// How often the loop looks again without being woken (retry backoffs and
/// schedule-to-start timeouts come due on their own).
const TICK: Duration = Duration::from_millis(100);

/// The most PENDING Runs read in one pass.
const MAX_PER_PASS: usize = 1024;

impl ControlPlane {
    /// Runs until shutdown.
    pub(crate) async fn scheduler_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.kick.notified() => {}
                () = tokio::time::sleep(TICK) => {}
                () = self.shutdown.cancelled() => return,
            }
            // Keep placing while passes place something: a pass reads a
            // bounded number of Runs.
            loop {
                match self.dispatch_once().await {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(error = %e, "scheduling pass failed");
                        break;
                    }
                }
            }
        }
    }

    /// One pass. Returns how many Runs it assigned.
    pub(crate) async fn dispatch_once(self: &Arc<Self>) -> Result<usize, StoreError> {
        let now = self.clock.now();
        self.fail_overdue(now).await?;
        let slots = self.worker_slots();
        let free: usize = slots.iter().filter(|w| w.state == WorkerState::Connected).map(|w| w.free() as usize).sum();
        // Pending Runs come in queue order: read about as many as can be
        // placed (a few more, for Runs no free Worker suits). With no free
        // slot only timeouts can change anything, and a few reads find them.
        // While what was read would leave a free Worker idle, read further
        // (up to MAX_PER_PASS): Runs it can take may queue behind Runs that
        // no free Worker can (a label nobody carries, a full Worker's agent).
        let mut limit = (free + 16).min(MAX_PER_PASS);
        let mut tasks: HashMap<TaskId, Task> = HashMap::new();
        let mut agents: HashMap<AgentRef, Option<AgentManifest>> = HashMap::new();
        let (pending, pending_runs) = loop {
            let runs = self.store.pending_runs(now, limit).await?;
            if runs.is_empty() {
                self.waiting.store(0, Ordering::Relaxed);
                return Ok(0);
            }
            let read_all = runs.len() < limit;
            let (pending, pending_runs) = self.candidates(runs, &mut tasks, &mut agents).await?;
            if read_all || limit == MAX_PER_PASS || !room_left_after(&pending, &slots) {
                break (pending, pending_runs);
            }
            limit = limit.saturating_mul(4).min(MAX_PER_PASS);
        };
        let reserved = self.reserve(&pending);
        // New Tasks queue behind the Runs left waiting for a busy Worker. A
        // Run that no connected Worker could take at all is not in line for
        // any slot, so it does not hold newer Tasks back.
        let placed: HashSet<usize> = reserved.iter().map(|(ri, _)| *ri).collect();
        let now_slots = self.worker_slots();
        let waiting = (0..pending.len())
            .filter(|ri| !placed.contains(ri) && unschedulable_reason(&pending[*ri], &now_slots).is_none())
            .count();
        self.waiting.store(waiting, Ordering::Relaxed);
        let assigned = join_all(reserved.into_iter().map(|(ri, reservation)| {
            let (run, task, manifest) = &pending_runs[ri];
            async move { self.assign(reservation, run, task, manifest).await }
        }))
        .await;
        Ok(assigned.into_iter().filter(|ok| *ok).count())
    }

    /// What placement needs to know of each of `runs`, in their order, and
    /// what assigning them needs. A Run whose agent does not resolve waits.
    /// Tasks and agents already looked up in this pass are not looked up
    /// again.
    async fn candidates(
        &self,
        runs: Vec<Run>,
        tasks: &mut HashMap<TaskId, Task>,
        agents: &mut HashMap<AgentRef, Option<AgentManifest>>,
    ) -> Result<(Vec<PendingRun>, Vec<(Run, Task, AgentManifest)>), StoreError> {
        let mut pending = Vec::with_capacity(runs.len());
        let mut pending_runs = Vec::with_capacity(runs.len());
        for run in runs {
            let task = match tasks.get(&run.task_id) {
                Some(t) => t.clone(),
                None => {
                    let t = self.store.get_task(&run.task_id).await?;
                    tasks.insert(run.task_id.clone(), t.clone());
                    t
                }
            };
            let manifest = match agents.get(&task.spec.agent) {
                Some(m) => m.clone(),
                None => {
                    let m = self.resolve_agent(&task.spec).await.ok().map(|a| a.manifest);
                    agents.insert(task.spec.agent.clone(), m.clone());
                    m
                }
            };
            let Some(manifest) = manifest else {
                debug!(task_id = %task.id, agent = %task.spec.agent, "agent not resolvable; run waits");
                continue;
            };
            pending.push(candidate(run.id.clone(), run.lease, run.not_before, &task, &manifest));
            pending_runs.push((run, task, manifest));
        }
        Ok((pending, pending_runs))
    }

    /// Takes the Run's next lease for the reserved Worker and sends the
    /// assignment.
    async fn assign(&self, reservation: Reservation, run: &Run, task: &Task, manifest: &AgentManifest) -> bool {
        let now = self.clock.now();
        let worker = reservation.worker.clone();
        let change = match self.store.assign_run(&run.id, &worker, run.lease, now).await {
            Ok(change) => change,
            Err(StoreError::LeaseConflict { .. } | StoreError::FailedPrecondition { .. }) => return false,
            Err(e) => {
                warn!(run_id = %run.id, error = %e, "could not assign run");
                return false;
            }
        };
        self.publish(&change.events);
        self.placed_by_scheduler.fetch_add(1, Ordering::Relaxed);
        if !self.deliver(reservation, &change.run, task, manifest) {
            // The Worker went away between placement and sending: its loss
            // handling (or the next one) fails the Run over.
            self.worker_vanished(&worker).await;
        }
        true
    }

    /// Fails the Tasks whose Runs waited past their schedule-to-start
    /// timeout, wherever they are in the queue, saying why no Worker took
    /// them.
    async fn fail_overdue(&self, now: Timestamp) -> Result<(), StoreError> {
        let overdue = self.store.overdue_runs(now, MAX_PER_PASS).await?;
        if overdue.is_empty() {
            return Ok(());
        }
        let slots = self.worker_slots();
        for run in overdue {
            let task = self.store.get_task(&run.task_id).await?;
            let timeout = task.spec.limits.schedule_to_start_timeout_ms.unwrap_or(0);
            let late = start_deadline(&task, &run).map_or(Duration::ZERO, |d| now.since(d));
            let waited_ms = timeout.saturating_add(u64::try_from(late.as_millis()).unwrap_or(u64::MAX));
            let reason = match self.resolve_agent(&task.spec).await {
                Ok(agent) => timeout_reason(
                    &candidate(run.id.clone(), run.lease, run.not_before, &task, &agent.manifest),
                    &slots,
                    waited_ms,
                ),
                Err(status) => {
                    format!("not started within its schedule-to-start timeout ({waited_ms} ms): {}", status.message())
                }
            };
            self.fail_unstarted(&task.id, &reason).await;
        }
        Ok(())
    }

    /// A Task that no Worker started in time fails with `reason`.
    async fn fail_unstarted(&self, task: &TaskId, reason: &str) {
        match self.store.fail_task(task, reason, self.clock.now()).await {
            Ok(out) => {
                info!(task_id = %task, reason, "task failed before it started");
                self.publish(&out.events);
                self.cancel_on_workers(&out.active_runs, reason);
            }
            Err(e) => debug!(task_id = %task, error = %e, "could not fail an unstarted task"),
        }
    }

    /// Fails the Runs of a Worker that has no session (anymore).
    pub(crate) async fn worker_vanished(&self, worker: &WorkerId) {
        // Shutting down clears every session: the Worker did not go
        // anywhere, it will reconnect to the next control plane with its
        // Runs, which must not fail for a routine restart.
        if self.shutdown.is_cancelled() {
            return;
        }
        if !self.sessions().contains_key(worker) {
            self.fail_over(worker, "disconnected").await;
        }
    }

    /// At start-up: Workers the store says were connected get one heartbeat
    /// timeout to reconnect; those that do not are lost and their Runs fail
    /// over.
    pub(crate) async fn reap_absent_workers(self: Arc<Self>) {
        tokio::select! {
            () = tokio::time::sleep(self.config.workers.heartbeat_timeout()) => {}
            () = self.shutdown.cancelled() => return,
        }
        let workers = match self.store.list_workers().await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "could not list workers at start-up");
                return;
            }
        };
        for w in workers {
            if self.sessions().contains_key(&w.info.id) {
                continue;
            }
            let absent = matches!(w.state, WorkerState::Connected | WorkerState::Draining);
            // Lost, but still holding Runs: its failover did not finish.
            let stranded = w.state == WorkerState::Lost
                && self.store.active_runs_of_worker(&w.info.id).await.is_ok_and(|runs| !runs.is_empty());
            if absent || stranded {
                self.fail_over(&w.info.id, "did not reconnect after the control plane restarted").await;
            }
        }
    }

    /// Runs until shutdown, once a heartbeat interval: fails over the Runs
    /// whose Workers did not report their end by their deadline, and tries
    /// again the failovers that did not finish.
    ///
    /// A Worker enforces a Run's timeout itself; this is for the Worker
    /// that does not (hung, or its sandbox stuck) yet still heartbeats and
    /// lists the Run. It is told to stop the Run (CancelRun, under the
    /// lease it was given), and the Run is retried per its Task's policy.
    pub(crate) async fn watchdog_loop(self: Arc<Self>) {
        let every = self.config.workers.heartbeat_interval();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.shutdown.cancelled() => return,
            }
            self.fail_overdue_runs().await;
            self.retry_failovers().await;
        }
    }

    /// Fails over each active Run past its report deadline (see
    /// `Session::active`).
    async fn fail_overdue_runs(&self) {
        let now = self.clock.now();
        let overdue: Vec<(WorkerId, Vec<RunId>)> = self
            .sessions()
            .iter()
            .filter_map(|(worker, session)| {
                let runs: Vec<RunId> =
                    session.active.iter().filter(|(_, due)| **due <= now).map(|(run, _)| run.clone()).collect();
                (!runs.is_empty()).then(|| (worker.clone(), runs))
            })
            .collect();
        let grace = self.config.workers.heartbeat_timeout_ms;
        for (worker, runs) in overdue {
            let reason =
                format!("worker {worker} did not report the end of the run within its run timeout and {grace} ms more");
            self.fail_missing_runs(&worker, &runs, &reason).await;
        }
    }

    /// Fails over again the Workers whose failover did not finish.
    async fn retry_failovers(&self) {
        let unsettled: Vec<(WorkerId, String)> = self.unsettled().drain().collect();
        for (worker, reason) in unsettled {
            info!(worker_id = %worker, "failing over a lost worker's runs again");
            self.fail_over(&worker, &reason).await;
        }
    }

    /// Cancels a Task and tells the Workers of its active Runs to stop.
    ///
    /// The whole of it runs even if the caller goes away while the store
    /// writes: once the Task is CANCELLED, its watchers must hear of it and
    /// its Workers must stop its Runs.
    pub(crate) async fn cancel_task(self: &Arc<Self>, id: &TaskId, reason: &str) -> Result<Task, tonic::Status> {
        let (cp, id, reason) = (Arc::clone(self), id.clone(), reason.to_owned());
        let cancelling = tokio::spawn(async move {
            let now = cp.clock.now();
            let out = cp.store.cancel_task(&id, &reason, now).await.map_err(crate::status::store_status)?;
            info!(task_id = %id, active_runs = out.active_runs.len(), "task cancelled");
            cp.publish(&out.events);
            cp.cancel_on_workers(&out.active_runs, &reason);
            Ok(out.task)
        });
        cancelling.await.map_err(|e| tonic::Status::internal(format!("cancelling the task failed: {e}")))?
    }
}
