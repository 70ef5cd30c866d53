//! The control plane's shared state: the store, the connected Workers'
//! sessions, the scheduler's wake-up and the WatchTask subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use taskrun_core::{Clock, RunId, TaskEvent, TaskId, Timestamp, WorkerId, WorkerInfo, WorkerState};
use taskrun_proto::pb;
use taskrun_store::Store;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// What the control plane sends down one Worker's stream.
pub(crate) type Outbound = mpsc::UnboundedSender<Result<pb::RunServerMessage, tonic::Status>>;

/// One connected Worker.
#[derive(Debug)]
pub(crate) struct Session {
    /// Tells this connection apart from an earlier one of the same Worker.
    pub generation: u64,
    pub tx: Outbound,
    pub info: Arc<WorkerInfo>,
    pub state: WorkerState,
    /// Runs this Worker holds (ASSIGNED or RUNNING), each with the time by
    /// which the Worker must have reported its end: the Run's deadline and
    /// a heartbeat timeout more (see `ControlPlane::watchdog_loop`).
    pub active: HashMap<RunId, Timestamp>,
    /// Runs of `active` its heartbeats have left out, since when (see
    /// `ControlPlane::on_heartbeat`).
    pub unlisted: HashMap<RunId, Timestamp>,
    /// Slots promised to placements whose store write is under way.
    pub reserved: u32,
    /// The oldest connection of the Worker whose reservations `reserved`
    /// counts: a session that replaces an open one takes over its count,
    /// so that the slots stay taken and a drain is not answered while an
    /// assignment made on the old connection may still follow.
    pub counts_from: u64,
    pub last_assigned: u64,
    /// The answer to the Worker's drain notice, held back while a
    /// placement on it is under way (see [`Session::answer_drain_if_settled`]).
    pub drain_answer: Option<pb::Drain>,
}

impl Session {
    pub fn send(&self, kind: pb::run_server_message::Kind) -> bool {
        self.tx.send(Ok(pb::RunServerMessage { kind: Some(kind) })).is_ok()
    }

    /// Sends the held answer to the Worker's drain notice once no slot of
    /// it is reserved: the Worker is draining, so no new reservation comes,
    /// and every RunAssignment this stream will carry is then ahead of the
    /// answer. Called with the sessions locked, after each send of an
    /// assignment and each release of a reservation.
    pub fn answer_drain_if_settled(&mut self) {
        if self.reserved == 0
            && let Some(answer) = self.drain_answer.take()
        {
            self.send(pb::run_server_message::Kind::Drain(answer));
        }
    }
}

/// Counts of Runs placed, by how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlacementStats {
    /// Placed by CreateTask in the write that created the Task.
    pub at_creation: u64,
    /// Placed by the scheduler loop from the queue of PENDING Runs.
    pub by_scheduler: u64,
}

/// Everything the services share. Cheap to clone through `Arc`.
#[derive(Debug)]
pub struct ControlPlane {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Config,
    /// Checks what PublishAgent receives; None = publishing is refused.
    pub(crate) verifier: Option<Arc<taskrun_signing::Verifier>>,
    sessions: Mutex<HashMap<WorkerId, Session>>,
    /// One per Worker id: a registration and the handling of a loss of the
    /// same Worker take turns (see [`ControlPlane::worker_turn`]).
    worker_turns: Mutex<HashMap<WorkerId, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes the scheduler: a Task was created, a slot freed, a Worker came.
    pub(crate) kick: Notify,
    watchers: Mutex<HashMap<TaskId, watch::Sender<u64>>>,
    generation: AtomicU64,
    /// Placement's turn counter (see [`crate::scheduler::place`]); changed
    /// only with the sessions locked.
    pub(crate) turns: AtomicU64,
    /// Due PENDING Runs that the scheduler's last pass could not place
    /// although a connected Worker suits them (all such were busy). While
    /// there are any, new Tasks queue behind them instead of being placed
    /// at creation.
    pub(crate) waiting: AtomicUsize,
    pub(crate) placed_at_creation: AtomicU64,
    pub(crate) placed_by_scheduler: AtomicU64,
    /// Workers whose failover did not finish (a store error), with why they
    /// were lost: the watchdog tries again until it does.
    unsettled: Mutex<HashMap<WorkerId, String>>,
    /// Set when the control plane shuts down: streams end, loops stop.
    pub(crate) shutdown: CancellationToken,
}

impl ControlPlane {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: Config,
        verifier: Option<Arc<taskrun_signing::Verifier>>,
    ) -> Arc<ControlPlane> {
        Arc::new(ControlPlane {
            store,
            clock,
            config,
            verifier,
            sessions: Mutex::new(HashMap::new()),
            worker_turns: Mutex::new(HashMap::new()),
            kick: Notify::new(),
            watchers: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            placed_at_creation: AtomicU64::new(0),
            placed_by_scheduler: AtomicU64::new(0),
            unsettled: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn sessions(&self) -> MutexGuard<'_, HashMap<WorkerId, Session>> {
        // A panic while holding the lock cannot leave a session half-updated
        // in a way that matters more than losing the whole map would.
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn unsettled(&self) -> MutexGuard<'_, HashMap<WorkerId, String>> {
        self.unsettled.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for `worker`'s turn to register or to be handled as lost, so
    /// that the store writes of one never interleave with the other's (a
    /// loss handled late would otherwise mark a Worker that just
    /// reconnected Lost, and fail the Runs it holds now).
    pub(crate) async fn worker_turn(&self, worker: &WorkerId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut turns = self.worker_turns.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(turns.entry(worker.clone()).or_default())
        };
        lock.lock_owned().await
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// How Runs were placed so far.
    pub fn placement_stats(&self) -> PlacementStats {
        PlacementStats {
            at_creation: self.placed_at_creation.load(Ordering::Relaxed),
            by_scheduler: self.placed_by_scheduler.load(Ordering::Relaxed),
        }
    }

    /// The ids of the Workers connected now.
    pub fn connected_workers(&self) -> Vec<WorkerId> {
        let mut ids: Vec<WorkerId> = self.sessions().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// How placement sees a connected Worker now (`Draining` once it said
    /// it shuts down); `None` when it has no session.
    pub fn worker_state(&self, worker: &WorkerId) -> Option<WorkerState> {
        self.sessions().get(worker).map(|s| s.state)
    }

    /// Tells WatchTask streams of the Tasks these events belong to that
    /// there is more to read.
    pub(crate) fn publish(&self, events: &[TaskEvent]) {
        if events.is_empty() {
            return;
        }
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        for event in events {
            if let Some(tx) = watchers.get(&event.task_id) {
                if tx.receiver_count() == 0 {
                    watchers.remove(&event.task_id);
                } else {
                    tx.send_replace(event.seq);
                }
            }
        }
    }

    /// A receiver that changes whenever the Task gets new events.
    pub(crate) fn subscribe(&self, task: &TaskId) -> watch::Receiver<u64> {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.entry(task.clone()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Forgets the Task's subscription if no stream watches it any more.
    pub(crate) fn unsubscribe(&self, task: &TaskId) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if watchers.get(task).is_some_and(|tx| tx.receiver_count() == 0) {
            watchers.remove(task);
        }
    }

    /// Tasks with a live subscription (for tests).
    #[doc(hidden)]
    pub fn watched_tasks(&self) -> usize {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Stops the loops and ends every stream.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
        self.kick.notify_one();
        // Dropping the senders ends every Worker's stream.
        self.sessions().clear();
    }
}
