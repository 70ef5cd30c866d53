//! Putting Runs on Workers: choose with [`crate::scheduler`] and reserve
//! the slot in one critical section, write the lease to the store, then
//! send the RunAssignment (or give the slot back).
//!
//! Two callers place Runs: the scheduler loop (Runs that wait in the store)
//! and CreateTask, which places a new Task's single Run in the same durable
//! write that creates it when a Worker is free and no due Run is waiting —
//! one write and no scheduling pass instead of two writes and a pass (what
//! Temporal calls eager dispatch). A slot counts as taken from its
//! reservation on, so the two never promise one slot twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use taskrun_core::{AgentManifest, Run, RunId, Task, Timestamp, WorkerId, WorkerState};
use taskrun_proto::pb;
use tracing::{info, warn};

use crate::scheduler::{PendingRun, WorkerSlot, place};
use crate::state::{ControlPlane, Session};

/// A slot promised to one placement until its store write is done.
/// Dropped without [`ControlPlane::deliver`], it gives the slot back.
#[derive(Debug)]
pub(crate) struct Reservation {
    cp: Arc<ControlPlane>,
    pub worker: WorkerId,
    generation: u64,
    settled: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let mut sessions = self.cp.sessions();
            release(&mut sessions, &self.worker, self.generation);
        }
    }
}

/// Gives back a slot reserved on `worker`'s connection `generation`, if the
/// Worker's session counts it: its own, or one it replaced (a reconnect
/// takes over the reservations still under way, see [`Session::counts_from`]).
fn release(sessions: &mut HashMap<WorkerId, Session>, worker: &WorkerId, generation: u64) {
    if let Some(s) = sessions.get_mut(worker)
        && (s.counts_from..=s.generation).contains(&generation)
    {
        s.reserved = s.reserved.saturating_sub(1);
        s.answer_drain_if_settled();
    }
}

/// The Workers as placement sees them: reserved slots are taken.
fn slots_of(sessions: &HashMap<WorkerId, Session>) -> Vec<WorkerSlot> {
    sessions
        .values()
        .map(|s| WorkerSlot {
            info: Arc::clone(&s.info),
            state: s.state,
            active: u32::try_from(s.active.len()).unwrap_or(u32::MAX).saturating_add(s.reserved),
            last_assigned: s.last_assigned,
        })
        .collect()
}

/// What placement needs to know of a Run of `task`.
pub(crate) fn candidate(
    run_id: RunId,
    lease: u64,
    due_at: Timestamp,
    task: &Task,
    manifest: &AgentManifest,
) -> PendingRun {
    PendingRun {
        run_id,
        task_id: task.id.clone(),
        lease,
        priority: task.spec.priority,
        due_at,
        agent: task.spec.agent.name.clone(),
        digest: manifest.digest,
        worker_labels: task.spec.worker_labels.clone(),
        model: task.spec.model.clone(),
    }
}

impl ControlPlane {
    /// A snapshot of the Workers as placement sees them.
    pub(crate) fn worker_slots(&self) -> Vec<WorkerSlot> {
        slots_of(&self.sessions())
    }

    /// Places what it can of `pending` and reserves each chosen slot.
    /// Returns (index in `pending`, reservation) pairs in queue order.
    pub(crate) fn reserve(self: &Arc<Self>, pending: &[PendingRun]) -> Vec<(usize, Reservation)> {
        let mut sessions = self.sessions();
        let mut slots = slots_of(&sessions);
        let mut turn = self.turns.load(Ordering::Relaxed);
        let placed = place(pending, &mut slots, &mut turn);
        self.turns.store(turn, Ordering::Relaxed);
        let mut out = Vec::with_capacity(placed.len());
        for (ri, wi) in placed {
            let slot = &slots[wi];
            if let Some(s) = sessions.get_mut(&slot.info.id) {
                s.reserved += 1;
                s.last_assigned = slot.last_assigned;
                let reservation = Reservation {
                    cp: Arc::clone(self),
                    worker: slot.info.id.clone(),
                    generation: s.generation,
                    settled: false,
                };
                out.push((ri, reservation));
            }
        }
        out
    }

    /// A slot for a new Task's single Run, if it can be placed at creation:
    /// not a fan-out, no due Run waiting (it would otherwise jump the
    /// queue), and a connected Worker suits it and has a free slot.
    pub(crate) fn reserve_at_creation(self: &Arc<Self>, task: &Task, manifest: &AgentManifest) -> Option<Reservation> {
        if task.spec.fan_out > 1 || self.waiting.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if !self.sessions().values().any(|s| s.state == WorkerState::Connected) {
            return None;
        }
        let pending = [candidate(RunId::of(&task.id, 0, 1), 0, task.created_at, task, manifest)];
        self.reserve(&pending).pop().map(|(_, r)| r)
    }

    /// Sends the RunAssignment for `run`, which the store now records as
    /// held by the reserved Worker; the reservation becomes an active Run.
    /// False when the Worker has gone: its loss handling fails the Run over.
    pub(crate) fn deliver(
        &self,
        mut reservation: Reservation,
        run: &Run,
        task: &Task,
        manifest: &AgentManifest,
    ) -> bool {
        let now = self.clock.now();
        let deadline = now.saturating_add(Duration::from_millis(task.spec.limits.run_timeout_ms));
        let assignment = pb::RunAssignment {
            message_id: uuid::Uuid::now_v7().simple().to_string(),
            run_id: run.id.to_string(),
            task_id: task.id.to_string(),
            shard: i32::try_from(run.shard).unwrap_or(i32::MAX),
            fan_out: i32::try_from(task.spec.fan_out).unwrap_or(i32::MAX),
            attempt: i32::try_from(run.attempt).unwrap_or(i32::MAX),
            lease: i64::try_from(run.lease).unwrap_or(i64::MAX),
            agent: Some(manifest.clone().into()),
            input_json: task.spec.input.to_string(),
            limits: Some(task.spec.limits.clone().into()),
            deadline_unix_ms: deadline.as_millis(),
            issued_at_unix_ms: now.as_millis(),
            nonce: uuid::Uuid::now_v7().simple().to_string(),
            model: Some(task.spec.model.clone().into()),
            model_backend: None,
        };
        let worker = &reservation.worker;
        let sent = {
            let mut sessions = self.sessions();
            let sent = match sessions.get_mut(worker) {
                Some(s) => {
                    s.active.insert(run.id.clone(), deadline.saturating_add(self.config.workers.heartbeat_timeout()));
                    s.send(pb::run_server_message::Kind::Assignment(assignment))
                }
                None => false,
            };
            // After the send: a Worker that is draining gets the answer to
            // its notice behind this assignment.
            release(&mut sessions, worker, reservation.generation);
            reservation.settled = true;
            sent
        };
        if sent {
            info!(run_id = %run.id, task_id = %task.id, worker_id = %worker, lease = run.lease, "run assigned");
        } else {
            warn!(run_id = %run.id, worker_id = %worker, "worker gone before the assignment was sent");
        }
        sent
    }
}
