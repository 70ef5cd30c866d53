//! The scheduling indexes: PENDING Runs by priority and by schedule-to-start
//! deadline, active Runs by Worker.
//!
//! Every backend keeps them in memory, so the scheduler's questions cost
//! O(answer), not O(Tasks ever created). They follow from the Runs of the
//! Tasks that have not ended, so a durable backend rebuilds them when it
//! opens (the sled store from its open Tasks' state records) instead of
//! writing them: on disk they would cost two more writes per Run change.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use taskrun_core::{Run, RunId, RunStatus, Task, Timestamp, WorkerId};

use crate::logic::{TaskAggregate, Touched};

/// A Run as the indexes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: RunId,
    pub status: RunStatus,
    pub worker: Option<WorkerId>,
    pub not_before: Timestamp,
    pub priority: i32,
    /// When the Run is overdue if still PENDING (schedule-to-start).
    pub start_deadline: Option<Timestamp>,
}

impl Entry {
    pub fn of(run: &Run, task: &Task) -> Entry {
        Entry {
            id: run.id.clone(),
            status: run.status,
            worker: run.worker_id.clone(),
            not_before: run.not_before,
            priority: task.spec.priority,
            start_deadline: crate::logic::start_deadline(task, run),
        }
    }
}

/// One Run's change: what it was (None if new) and what it is.
#[derive(Debug, Clone)]
pub struct Change {
    pub before: Option<Entry>,
    pub after: Entry,
}

/// The index changes of `touched`, a change made to `agg`.
pub fn changes(agg: &TaskAggregate, touched: &Touched) -> Vec<Change> {
    touched
        .runs
        .iter()
        .map(|t| Change {
            before: t.before.as_ref().map(|b| Entry::of(b, &agg.task)),
            after: Entry::of(&agg.runs[t.index].run, &agg.task),
        })
        .collect()
}

/// Higher priority first (then earliest due, then run id).
fn order(priority: i32) -> u32 {
    !((priority as u32) ^ 0x8000_0000)
}

#[derive(Debug, Default)]
pub struct Indexes {
    /// PENDING Runs: a queue per priority (highest first), each by
    /// `not_before`, then run id.
    pending: BTreeMap<u32, BTreeSet<(Timestamp, RunId)>>,
    /// PENDING Runs with a schedule-to-start deadline, by deadline.
    deadlines: BTreeSet<(Timestamp, RunId)>,
    by_worker: HashMap<WorkerId, BTreeSet<RunId>>,
}

impl Indexes {
    pub fn apply(&mut self, change: &Change) {
        if let Some(b) = &change.before {
            self.remove(b);
        }
        self.insert(&change.after);
    }

    pub fn insert(&mut self, e: &Entry) {
        if e.status == RunStatus::Pending {
            self.pending.entry(order(e.priority)).or_default().insert((e.not_before, e.id.clone()));
            if let Some(d) = e.start_deadline {
                self.deadlines.insert((d, e.id.clone()));
            }
        }
        if e.status.is_active()
            && let Some(w) = &e.worker
        {
            self.by_worker.entry(w.clone()).or_default().insert(e.id.clone());
        }
    }

    fn remove(&mut self, e: &Entry) {
        if e.status == RunStatus::Pending {
            let priority = order(e.priority);
            if let Some(queue) = self.pending.get_mut(&priority) {
                queue.remove(&(e.not_before, e.id.clone()));
                if queue.is_empty() {
                    self.pending.remove(&priority);
                }
            }
            if let Some(d) = e.start_deadline {
                self.deadlines.remove(&(d, e.id.clone()));
            }
        }
        if e.status.is_active()
            && let Some(w) = &e.worker
            && let Some(set) = self.by_worker.get_mut(w)
        {
            set.remove(&e.id);
            if set.is_empty() {
                self.by_worker.remove(w);
            }
        }
    }

    /// Up to `limit` PENDING Runs due at `now`, in scheduling order.
    ///
    /// A priority's Runs are ordered by `not_before`, so the ones not yet
    /// due (retries in their backoff) are its tail, and the walk stops at
    /// each tail instead of reading it: O(answer + priorities), however
    /// many Runs wait for a backoff.
    pub fn pending(&self, now: Timestamp, limit: usize) -> Vec<RunId> {
        self.pending
            .values()
            .flat_map(|queue| queue.iter().take_while(move |(not_before, _)| *not_before <= now))
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Up to `limit` PENDING Runs overdue at `now`, earliest deadline first.
    pub fn overdue(&self, now: Timestamp, limit: usize) -> Vec<RunId> {
        self.deadlines.iter().take_while(|(d, _)| *d <= now).take(limit).map(|(_, id)| id.clone()).collect()
    }

    pub fn of_worker(&self, worker: &WorkerId) -> Vec<RunId> {
        self.by_worker.get(worker).map(|set| set.iter().cloned().collect()).unwrap_or_default()
    }
}
