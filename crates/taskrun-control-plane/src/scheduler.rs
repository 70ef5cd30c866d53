//! Placement: which Worker runs which pending Run. Pure logic — no I/O, no
//! clock — so every rule is testable without a network.
//!
//! Rules, in order:
//! 1. Runs are considered highest priority first, FIFO within a priority
//!    (by when the Run became due — its Task's creation, or the end of a
//!    retry's backoff — then the Task's id, then the Run's id).
//! 2. A Worker is eligible for a Run when it is connected (not draining,
//!    lost or revoked), has a free slot, accepts the agent, carries every
//!    label the Task requires with the same value, and offers a ModelBackend
//!    that meets the Task's requirement. A draining Worker (one that is
//!    shutting down) takes nothing new, however well it would suit.
//! 3. Among eligible Workers: one that already holds the agent's digest
//!    (warm) wins; then the least loaded (lowest fraction of slots in use);
//!    then the Worker that was given a Run longest ago, so equal Workers
//!    take turns.

use std::cmp::Ordering;
use std::sync::Arc;

use taskrun_core::{
    AgentDigest, AgentName, Labels, ModelRequirement, RunId, TaskId, Timestamp, WorkerInfo, WorkerState,
};

/// A Run waiting for a Worker, with what placement needs to know of its Task.
#[derive(Debug, Clone)]
pub struct PendingRun {
    pub run_id: RunId,
    pub task_id: TaskId,
    pub lease: u64,
    pub priority: i32,
    /// When the Run became due: its Task's creation for a first attempt,
    /// the end of its backoff for a retry. FIFO within a priority is by it.
    pub due_at: Timestamp,
    pub agent: AgentName,
    /// The digest the Task's agent reference resolved to.
    pub digest: AgentDigest,
    pub worker_labels: Labels,
    pub model: ModelRequirement,
}

/// A Worker as placement sees it.
#[derive(Debug, Clone)]
pub struct WorkerSlot {
    pub info: Arc<WorkerInfo>,
    pub state: WorkerState,
    /// Runs it has now.
    pub active: u32,
    /// A counter value from the last time it was given a Run (0 = never).
    pub last_assigned: u64,
}

impl WorkerSlot {
    pub fn free(&self) -> u32 {
        self.info.slots.saturating_sub(self.active)
    }

    /// Why this Worker cannot take `run` now, or `None` when it can.
    pub fn refusal(&self, run: &PendingRun) -> Option<Refusal> {
        if self.state != WorkerState::Connected {
            return Some(Refusal::NotConnected);
        }
        self.misfit(run)
    }

    /// Why this Worker could not take `run` even if it were connected, or
    /// `None` when it could.
    fn misfit(&self, run: &PendingRun) -> Option<Refusal> {
        if !self.info.accepts_agent(&run.agent) {
            return Some(Refusal::Agent);
        }
        if !self.info.has_labels(&run.worker_labels) {
            return Some(Refusal::Labels);
        }
        if !run.model.met_by(&self.info.model_backends) {
            return Some(Refusal::ModelBackend);
        }
        if self.free() == 0 {
            return Some(Refusal::Busy);
        }
        None
    }
}

/// Why one Worker cannot take one Run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    NotConnected,
    Agent,
    Labels,
    ModelBackend,
    /// Compatible but every slot is taken: the Run will wait.
    Busy,
}

/// Orders Runs the way they are served: priority, then FIFO.
pub fn queue_order(a: &PendingRun, b: &PendingRun) -> Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.due_at.cmp(&b.due_at))
        .then_with(|| a.task_id.cmp(&b.task_id))
        .then_with(|| a.run_id.cmp(&b.run_id))
}

/// Places as many of `pending` as the `workers` have room for. Updates each
/// chosen Worker's `active` and `last_assigned` so that callers can keep
/// placing against the same slice. Returns (Run index in `pending`, Worker
/// index in `workers`) pairs, in queue order.
pub fn place(pending: &[PendingRun], workers: &mut [WorkerSlot], counter: &mut u64) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..pending.len()).collect();
    order.sort_by(|&a, &b| queue_order(&pending[a], &pending[b]));
    let mut out = Vec::new();
    for i in order {
        if workers.iter().all(|w| w.free() == 0) {
            break;
        }
        let run = &pending[i];
        let best = workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.refusal(run).is_none())
            .min_by(|(_, a), (_, b)| preference(run, a, b))
            .map(|(j, _)| j);
        if let Some(j) = best {
            *counter += 1;
            workers[j].active += 1;
            workers[j].last_assigned = *counter;
            out.push((i, j));
        }
    }
    out
}

/// `Less` when `a` is the better home for `run`.
fn preference(run: &PendingRun, a: &WorkerSlot, b: &WorkerSlot) -> Ordering {
    let warm = |w: &WorkerSlot| !w.info.digests.contains(&run.digest);
    // load = active / slots, compared without floating point
    let load = |x: &WorkerSlot, y: &WorkerSlot| {
        (u64::from(x.active) * u64::from(y.info.slots.max(1)))
            .cmp(&(u64::from(y.active) * u64::from(x.info.slots.max(1))))
    };
    warm(a)
        .cmp(&warm(b))
        .then_with(|| load(a, b))
        .then(a.last_assigned.cmp(&b.last_assigned))
        .then_with(|| a.info.id.cmp(&b.info.id))
}

/// Whether a connected Worker would still have a free slot once `pending`
/// were placed: then Runs further back in the queue may suit it, and the
/// dispatcher reads on rather than leave it idle behind Runs it cannot take.
pub fn room_left_after(pending: &[PendingRun], workers: &[WorkerSlot]) -> bool {
    let mut workers = workers.to_vec();
    let mut counter = 0;
    place(pending, &mut workers, &mut counter);
    workers.iter().any(|w| w.state == WorkerState::Connected && w.free() > 0)
}

/// How many draining Workers [`unschedulable_reason`] names at most.
const DRAINING_NAMED: usize = 3;

/// Why no Worker at all can take `run` — `None` when some Worker could
/// (perhaps once a slot frees up): then the Run is waiting, not refused.
/// Used for the Task's reason when its schedule-to-start timeout passes,
/// and to count the Runs that new Tasks queue behind. Draining Workers that
/// would suit the Run are named: they are why it found no home.
pub fn unschedulable_reason(run: &PendingRun, workers: &[WorkerSlot]) -> Option<String> {
    let why = unsuited_reason(run, workers)?;
    let mut draining: Vec<&str> = workers
        .iter()
        .filter(|w| w.state == WorkerState::Draining && matches!(w.misfit(run), None | Some(Refusal::Busy)))
        .map(|w| w.info.id.as_str())
        .collect();
    if draining.is_empty() {
        return Some(why);
    }
    draining.sort_unstable();
    let more = draining.len().saturating_sub(DRAINING_NAMED);
    draining.truncate(DRAINING_NAMED);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    Some(format!("{why} (suitable but draining: {}{more})", draining.join(", ")))
}

/// [`unschedulable_reason`] without the draining Workers.
fn unsuited_reason(run: &PendingRun, workers: &[WorkerSlot]) -> Option<String> {
    let mut closest: Option<Refusal> = None;
    let mut any_connected = false;
    for w in workers.iter().filter(|w| w.state == WorkerState::Connected) {
        any_connected = true;
        match w.refusal(run) {
            // It can take the Run now, or once a slot frees up.
            None | Some(Refusal::Busy) => return None,
            // The refusal from the Worker that passed the most checks is
            // the one worth reporting: it names what is missing everywhere.
            Some(r) => closest = closest.max(Some(r)),
        }
    }
    if !any_connected {
        return Some("no connected worker".to_owned());
    }
    let labels = || run.worker_labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let need = match closest? {
        Refusal::Agent | Refusal::NotConnected | Refusal::Busy => format!("accepts agent {}", run.agent),
        Refusal::Labels => format!("accepts agent {} and carries labels {}", run.agent, labels()),
        Refusal::ModelBackend if run.worker_labels.is_empty() => {
            format!("accepts agent {} and offers a ModelBackend meeting {:?}", run.agent, run.model)
        }
        Refusal::ModelBackend => format!(
            "accepts agent {}, carries labels {} and offers a ModelBackend meeting {:?}",
            run.agent,
            labels(),
            run.model
        ),
    };
    Some(format!("no connected worker {need}"))
}

/// What to tell a client when a Run waited longer than its
/// schedule-to-start timeout.
pub fn timeout_reason(run: &PendingRun, workers: &[WorkerSlot], waited_ms: u64) -> String {
    let why = unschedulable_reason(run, workers).unwrap_or_else(|| "every suitable worker was busy".to_owned());
    format!("not started within its schedule-to-start timeout ({waited_ms} ms): {why}")
}
