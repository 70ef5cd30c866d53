//! The state-change logic every backend shares. Pure: no I/O, no clock.
//!
//! A backend keeps, per Task, a [`TaskAggregate`]: the [`Task`], its
//! [`TaskMeta`] (event counter, Run ids, output cap) and its Runs as
//! [`RunRecord`]s. To change anything it loads the aggregate, calls one of the
//! methods here and — if that returned `Ok` — writes back what the returned
//! [`Touched`] names, all in one atomic step. On `Err` it writes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskrun_core::{
    AgentManifest, Run, RunId, RunOutcome, RunStatus, Task, TaskEvent, TaskEventKind, TaskStatus, Timestamp, WorkerId,
    counted_attempts, derive_task_status,
};

use crate::{CancelOutcome, CreateOutcome, Error, Result, RunChange, StoreConfig};

/// A store's bookkeeping about a Task that is not part of the domain Task.
/// Small on purpose: it changes with every event, the Task rarely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// The `seq` the Task's next TaskEvent gets (events count from 1).
    pub next_event_seq: u64,
    /// The Task's own cap on one Run's output (`limits.output_limit_bytes`).
    pub output_limit_bytes: Option<u64>,
}

/// A Run with the store's accounting of its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run: Run,
    /// Bytes of output stored for the Run.
    pub output_bytes: u64,
    /// Set once a chunk was refused for the cap: no later chunk is stored.
    pub output_closed: bool,
    /// The seqs of the chunks stored: the (run, seq) de-duplication set.
    pub output_seqs: SeqSet,
}

impl RunRecord {
    pub fn new(run: Run) -> RunRecord {
        RunRecord { run, output_bytes: 0, output_closed: false, output_seqs: SeqSet::default() }
    }
}

/// A set of output chunk seqs, as sorted, disjoint, non-adjacent inclusive
/// ranges. A Worker numbers a Run's chunks 1, 2, 3, …, so the set is one
/// range unless chunks were lost or empty (an empty chunk is not stored);
/// a few bytes in the Run's record however much output it has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqSet(Vec<(u64, u64)>);

impl SeqSet {
    /// The most ranges a set holds. A Run whose chunks would leave more
    /// gaps than this has its chunk refused: its record stays small.
    pub const MAX_RANGES: usize = 256;

    pub fn contains(&self, seq: u64) -> bool {
        // The first range that does not end before `seq`.
        let i = self.0.partition_point(|&(_, end)| end < seq);
        self.0.get(i).is_some_and(|&(start, _)| start <= seq)
    }

    /// Whether `seq` can be added without passing [`SeqSet::MAX_RANGES`]:
    /// only a seq that neither is in the set nor touches a range in it
    /// adds a range.
    pub fn has_room_for(&self, seq: u64) -> bool {
        let touches = |s: Option<u64>| s.is_some_and(|s| self.contains(s));
        self.0.len() < SeqSet::MAX_RANGES
            || touches(Some(seq))
            || touches(seq.checked_sub(1))
            || touches(seq.checked_add(1))
    }

    pub fn insert(&mut self, seq: u64) {
        let i = self.0.partition_point(|&(_, end)| end.saturating_add(1) < seq);
        match self.0.get(i).copied() {
            Some((start, end)) if start <= seq && seq <= end => {}
            Some((start, end)) if end.saturating_add(1) == seq => {
                // Joins the range it follows, and perhaps the next one.
                match self.0.get(i + 1).copied() {
                    Some((next_start, next_end)) if seq.checked_add(1) == Some(next_start) => {
                        self.0[i] = (start, next_end);
                        self.0.remove(i + 1);
                    }
                    _ => self.0[i] = (start, seq),
                }
            }
            Some((start, end)) if seq.checked_add(1) == Some(start) => self.0[i] = (seq, end),
            _ => self.0.insert(i, (seq, seq)),
        }
    }

    /// How many ranges the set holds.
    pub fn ranges(&self) -> usize {
        self.0.len()
    }
}

/// A Task with everything a change to it or to its Runs needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskAggregate {
    pub task: Task,
    pub meta: TaskMeta,
    /// In creation order.
    pub runs: Vec<RunRecord>,
}

/// A Run that a change wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TouchedRun {
    /// Index into [`TaskAggregate::runs`].
    pub index: usize,
    /// The Run as it was before, None for a new Run (for index upkeep).
    pub before: Option<Run>,
}

/// What a change wrote: the backend stores exactly this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// The Task record changed. (The meta changes with every change.)
    pub task: bool,
    pub runs: Vec<TouchedRun>,
    /// New TaskEvents, in order, numbered from the meta's old counter.
    pub events: Vec<TaskEvent>,
}

/// A change in progress on an aggregate.
struct Change<'a> {
    agg: &'a mut TaskAggregate,
    touched: Touched,
    now: Timestamp,
}

impl Change<'_> {
    fn run_mut(&mut self, i: usize) -> &mut Run {
        if !self.touched.runs.iter().any(|t| t.index == i) {
            self.touched.runs.push(TouchedRun { index: i, before: Some(self.agg.runs[i].run.clone()) });
        }
        &mut self.agg.runs[i].run
    }

    fn add_run(&mut self, run: Run) -> usize {
        self.agg.runs.push(RunRecord::new(run));
        let index = self.agg.runs.len() - 1;
        self.touched.runs.push(TouchedRun { index, before: None });
        index
    }

    fn event(&mut self, kind: TaskEventKind) {
        let event =
            TaskEvent { task_id: self.agg.task.id.clone(), seq: self.agg.meta.next_event_seq, at: self.now, kind };
        self.agg.meta.next_event_seq += 1;
        self.touched.events.push(event);
    }

    fn run_event(&mut self, i: usize, task_status: TaskStatus, message: Option<String>) {
        let run = &self.agg.runs[i].run;
        let kind =
            TaskEventKind::Status { task_status, run_id: Some(run.id.clone()), run_status: Some(run.status), message };
        self.event(kind);
    }

    fn task_event(&mut self, message: Option<String>) {
        let kind = TaskEventKind::Status { task_status: self.agg.task.status, run_id: None, run_status: None, message };
        self.event(kind);
    }

    /// After Run `i` changed: derives the Task's status, creates the retry
    /// Run, ends the Task's other Runs if the Task ended, records events.
    /// A Run that failed permanently gets no retry: its Task fails now. One
    /// that was interrupted is retried without using up an attempt, and at
    /// once: backoff is for failures.
    fn settle(&mut self, i: usize, message: Option<String>) -> Result<Settled> {
        let prev = self.agg.task.status;
        let retry_policy = self.agg.task.spec.retry.clone();
        let fan_out = self.agg.task.spec.fan_out;
        let derive = |agg: &TaskAggregate| {
            let runs: Vec<Run> = agg.runs.iter().map(|r| r.run.clone()).collect();
            derive_task_status(prev, fan_out, &retry_policy, &runs)
        };
        let mut status = derive(self.agg);

        let run = self.agg.runs[i].run.clone();
        let mut retry = None;
        let runs: Vec<Run> = self.agg.runs.iter().map(|r| r.run.clone()).collect();
        let counted = counted_attempts(&runs, run.shard, run.attempt);
        if !status.is_terminal()
            && matches!(run.status, RunStatus::Failed | RunStatus::Cancelled)
            && !run.failed_permanently
            && retry_policy.allows_another(counted)
            && !self.agg.runs.iter().any(|r| {
                r.run.shard == run.shard && (r.run.attempt > run.attempt || r.run.status == RunStatus::Completed)
            })
        {
            let attempt = run.attempt + 1;
            let backoff = if run.interrupted { Duration::ZERO } else { retry_policy.backoff(counted + 1) };
            let not_before = self.now.saturating_add(backoff);
            let next = Run::new(run.task_id.clone(), run.shard, attempt, self.now, not_before);
            retry = Some(self.add_run(next));
            status = derive(self.agg);
        }

        self.run_event(i, status, message);
        if let Some(r) = retry {
            let next = &self.agg.runs[r].run;
            let message =
                format!("shard {} retries: attempt {} not before {}", next.shard, next.attempt, next.not_before);
            self.run_event(r, status, Some(message));
        }

        let mut cancelled = Vec::new();
        if status != prev {
            let now = self.now;
            let task_id = self.agg.task.id.clone();
            self.agg.task.set_status(status, now).map_err(|e| Error::precondition("task", &task_id, e.to_string()))?;
            self.touched.task = true;
            let message = match status {
                TaskStatus::Completed => {
                    self.agg.task.result = result_run(&self.agg.runs).and_then(|i| self.agg.runs[i].run.result.clone());
                    None
                }
                TaskStatus::Failed => {
                    let error = match &run.error {
                        Some(e) if fan_out > 1 => format!("shard {}: {e}", run.shard),
                        Some(e) => e.clone(),
                        None => format!("shard {} ran out of attempts", run.shard),
                    };
                    let error =
                        if run.failed_permanently { format!("{error} (permanent: not retried)") } else { error };
                    self.agg.task.error = Some(error.clone());
                    Some(error)
                }
                _ => None,
            };
            if status.is_terminal() {
                let reason = format!("task {}", status.as_str().to_ascii_lowercase());
                for j in 0..self.agg.runs.len() {
                    if self.agg.runs[j].run.status.is_terminal() {
                        continue;
                    }
                    let run = self.run_mut(j);
                    let was_active = run.status.is_active();
                    run.finish(RunOutcome::Cancelled { reason: reason.clone() }, now)
                        .map_err(|e| Error::precondition("run", &run.id, e.to_string()))?;
                    self.run_event(j, status, Some(reason.clone()));
                    cancelled.push((j, was_active));
                }
            }
            self.task_event(message);
        }
        Ok(Settled { retry, cancelled })
    }

    fn into_run_change(self, i: usize, prev: TaskStatus, settled: Settled) -> (Touched, RunChange) {
        let change = RunChange {
            run: self.agg.runs[i].run.clone(),
            task: self.agg.task.clone(),
            previous_task_status: prev,
            retry: settled.retry.map(|r| self.agg.runs[r].run.clone()),
            cancelled_runs: settled.cancelled.iter().map(|&(j, _)| self.agg.runs[j].run.clone()).collect(),
            events: self.touched.events.clone(),
        };
        (self.touched, change)
    }
}

struct Settled {
    retry: Option<usize>,
    /// (index, was active)
    cancelled: Vec<(usize, bool)>,
}

fn lease_conflict(run: &Run, expected: u64) -> Error {
    Error::LeaseConflict { run_id: run.id.clone(), expected, actual: run.lease }
}

fn check_lease(run: &Run, lease: u64) -> Result<()> {
    if run.lease == lease { Ok(()) } else { Err(lease_conflict(run, lease)) }
}

impl TaskAggregate {
    /// A new Task with its first Run per shard and its first TaskEvent.
    pub fn create(task: Task) -> Result<(TaskAggregate, Touched)> {
        if task.status != TaskStatus::Pending || task.result.is_some() || task.error.is_some() {
            return Err(Error::invalid("task", "a new task must be PENDING, without result or error"));
        }
        task.spec.validate(usize::MAX).map_err(|e| Error::invalid("task.spec", e.to_string()))?;
        let now = task.created_at;
        let runs: Vec<RunRecord> = (0..task.spec.fan_out.max(1))
            .map(|shard| RunRecord::new(Run::new(task.id.clone(), shard, 1, now, now)))
            .collect();
        let meta = TaskMeta { next_event_seq: 1, output_limit_bytes: task.spec.limits.output_limit_bytes };
        let n = runs.len();
        let mut agg = TaskAggregate { task, meta, runs };
        let mut change = Change {
            agg: &mut agg,
            touched: Touched {
                task: true,
                runs: (0..n).map(|index| TouchedRun { index, before: None }).collect(),
                events: Vec::new(),
            },
            now,
        };
        change.task_event(Some(format!("task created with {n} run(s)")));
        let touched = change.touched;
        Ok((agg, touched))
    }

    /// A new Task whose single Run is handed to `worker` in the same step
    /// (placement at creation, when a Worker is free and nothing waits).
    /// Fan-out Tasks are placed by the scheduler, not here.
    pub fn create_assigned(task: Task, worker: &WorkerId) -> Result<(TaskAggregate, Touched, RunChange)> {
        if task.spec.fan_out > 1 {
            return Err(Error::invalid("task.spec.fan_out", "a fan-out task cannot be assigned at creation"));
        }
        let (mut agg, mut touched) = TaskAggregate::create(task)?;
        let (id, lease, now) = (agg.runs[0].run.id.clone(), agg.runs[0].run.lease, agg.task.created_at);
        let (assigned, change) = agg.assign(&id, worker, lease, now)?;
        // The Run is new: it stays recorded as such (no `before`).
        touched.events.extend(assigned.events);
        Ok((agg, touched, change))
    }

    pub fn run_index(&self, id: &RunId) -> Result<usize> {
        self.runs.iter().position(|r| &r.run.id == id).ok_or_else(|| Error::not_found("run", id))
    }

    fn change(&mut self, now: Timestamp) -> Change<'_> {
        Change { agg: self, touched: Touched::default(), now }
    }

    /// Hands a PENDING Run to `worker` (compare-and-set on the lease).
    pub fn assign(
        &mut self,
        id: &RunId,
        worker: &WorkerId,
        expected_lease: u64,
        now: Timestamp,
    ) -> Result<(Touched, RunChange)> {
        let i = self.run_index(id)?;
        let run = &self.runs[i].run;
        check_lease(run, expected_lease)?;
        if self.task.status.is_terminal() {
            return Err(Error::precondition("task", &self.task.id, format!("is {}", self.task.status)));
        }
        if run.status != RunStatus::Pending {
            return Err(Error::precondition("run", id, format!("is {}, not PENDING", run.status)));
        }
        if run.not_before > now {
            return Err(Error::precondition("run", id, format!("must not be assigned before {}", run.not_before)));
        }
        let prev = self.task.status;
        let mut change = self.change(now);
        let run = change.run_mut(i);
        let lease = run
            .assign(worker.clone(), expected_lease, now)
            .map_err(|e| Error::precondition("run", id, e.to_string()))?;
        let settled = change.settle(i, Some(format!("assigned to worker {worker} with lease {lease}")))?;
        Ok(change.into_run_change(i, prev, settled))
    }

    /// The Worker holding `lease` started the Run.
    pub fn start(&mut self, id: &RunId, lease: u64, now: Timestamp) -> Result<(Touched, RunChange)> {
        let i = self.run_index(id)?;
        check_lease(&self.runs[i].run, lease)?;
        let prev = self.task.status;
        let mut change = self.change(now);
        change.run_mut(i).start(now).map_err(|e| Error::precondition("run", id, e.to_string()))?;
        let settled = change.settle(i, None)?;
        Ok(change.into_run_change(i, prev, settled))
    }

    /// Ends the Run; see [`crate::RunStore::finish_run`].
    pub fn finish(
        &mut self,
        id: &RunId,
        lease: u64,
        outcome: RunOutcome,
        now: Timestamp,
    ) -> Result<(Touched, RunChange)> {
        let i = self.run_index(id)?;
        check_lease(&self.runs[i].run, lease)?;
        let prev = self.task.status;
        let message = match &outcome {
            RunOutcome::Completed { .. } => None,
            RunOutcome::Failed { error }
            | RunOutcome::FailedPermanently { error }
            | RunOutcome::Interrupted { error } => Some(error.clone()),
            RunOutcome::Cancelled { reason } => Some(reason.clone()),
        };
        let mut change = self.change(now);
        change.run_mut(i).finish(outcome, now).map_err(|e| Error::precondition("run", id, e.to_string()))?;
        let settled = change.settle(i, message)?;
        Ok(change.into_run_change(i, prev, settled))
    }

    /// Stores the Run's trailing output (chunks as [`append_output`] takes
    /// them: a (run, seq) stored already is skipped, and nothing from the
    /// chunk that passes the cap on) and ends the Run, as one change; see
    /// [`crate::RunStore::finish_run_with_output`]. A chunk that would leave
    /// more than [`SeqSet::MAX_RANGES`] gaps is treated like one past the
    /// cap: it and the chunks after it are dropped, and the Run still ends
    /// (refusing the whole report would leave the Run running for good,
    /// since its Worker resends the same report).
    pub fn finish_with_output(
        &mut self,
        id: &RunId,
        lease: u64,
        output: Vec<(u64, String)>,
        config: &StoreConfig,
        outcome: RunOutcome,
        now: Timestamp,
    ) -> Result<(Touched, RunChange)> {
        let i = self.run_index(id)?;
        check_lease(&self.runs[i].run, lease)?;
        let mut events = Vec::new();
        for (seq, data) in output {
            let run = &mut self.runs[i];
            if !data.is_empty() && !run.output_seqs.has_room_for(seq) {
                break;
            }
            match append_output(&mut self.meta, run, lease, seq, data, config, now)? {
                OutputStep::Append(event) => events.push(event),
                OutputStep::Duplicate => {}
                OutputStep::OverLimit { .. } => break,
            }
        }
        let (mut touched, mut change) = self.finish(id, lease, outcome, now)?;
        events.append(&mut touched.events);
        touched.events = events;
        change.events.clone_from(&touched.events);
        Ok((touched, change))
    }

    /// Fails the Run of a lost Worker, bumping its lease first so the Worker
    /// is fenced off. None when the Run is no longer active on `worker`.
    pub fn fail_lost_run(
        &mut self,
        id: &RunId,
        worker: &WorkerId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Option<(Touched, RunChange)>> {
        let i = self.run_index(id)?;
        let run = &self.runs[i].run;
        if !run.status.is_active() || run.worker_id.as_ref() != Some(worker) {
            return Ok(None);
        }
        let prev = self.task.status;
        let mut change = self.change(now);
        let run = change.run_mut(i);
        run.lease += 1;
        run.updated_at = now;
        run.finish(RunOutcome::Failed { error: reason.to_owned() }, now)
            .map_err(|e| Error::precondition("run", id, e.to_string()))?;
        let settled = change.settle(i, Some(reason.to_owned()))?;
        Ok(Some(change.into_run_change(i, prev, settled)))
    }

    /// Cancels the Task and its Runs that have not ended.
    pub fn cancel(&mut self, reason: &str, now: Timestamp) -> Result<(Touched, CancelOutcome)> {
        self.end(TaskStatus::Cancelled, reason, now)
    }

    /// Fails the Task without a Run having failed (e.g. no Worker started
    /// it within its schedule-to-start timeout); its Runs that have not
    /// ended are cancelled. No retry follows.
    pub fn fail(&mut self, reason: &str, now: Timestamp) -> Result<(Touched, CancelOutcome)> {
        self.end(TaskStatus::Failed, reason, now)
    }

    /// Ends the Task as `status` (CANCELLED or FAILED) with `reason`, and
    /// cancels its Runs that have not ended.
    fn end(&mut self, status: TaskStatus, reason: &str, now: Timestamp) -> Result<(Touched, CancelOutcome)> {
        if self.task.status.is_terminal() {
            let verb = if status == TaskStatus::Cancelled { "cancelled" } else { "failed" };
            return Err(Error::precondition(
                "task",
                &self.task.id,
                format!("is {}, it cannot be {verb}", self.task.status),
            ));
        }
        let mut change = self.change(now);
        let task_id = change.agg.task.id.clone();
        change.agg.task.set_status(status, now).map_err(|e| Error::precondition("task", &task_id, e.to_string()))?;
        change.agg.task.error = Some(reason.to_owned());
        change.touched.task = true;
        let mut active = Vec::new();
        for j in 0..change.agg.runs.len() {
            if change.agg.runs[j].run.status.is_terminal() {
                continue;
            }
            let run = change.run_mut(j);
            let was_active = run.status.is_active();
            run.finish(RunOutcome::Cancelled { reason: reason.to_owned() }, now)
                .map_err(|e| Error::precondition("run", &run.id, e.to_string()))?;
            change.run_event(j, status, Some(reason.to_owned()));
            if was_active {
                active.push(j);
            }
        }
        change.task_event(Some(reason.to_owned()));
        let outcome = CancelOutcome {
            task: change.agg.task.clone(),
            active_runs: active.iter().map(|&j| change.agg.runs[j].run.clone()).collect(),
            events: change.touched.events.clone(),
        };
        Ok((change.touched, outcome))
    }
}

/// What to do with an output chunk; see [`append_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputStep {
    /// Store the Run record (its seq set has the chunk's seq now), the meta
    /// and this event.
    Append(TaskEvent),
    /// A chunk with this (run, seq) is stored: change nothing.
    Duplicate,
    /// Over the cap: store the Run record (now closed for output) and
    /// nothing else, then answer [`Error::OutputLimit`].
    OverLimit { limit_bytes: u64 },
}

/// The Run whose result a COMPLETED Task takes as its own: the Run of shard
/// 0 that completed (a shard completes at most once). A backend that keeps
/// Run results apart from the Task may derive the Task's result from it.
pub fn result_run(runs: &[RunRecord]) -> Option<usize> {
    runs.iter().position(|r| r.run.shard == 0 && r.run.status == RunStatus::Completed)
}

/// When a PENDING Run of `task` is overdue: its schedule-to-start timeout
/// counted from the Task's creation (first attempt) or from when the retry
/// became due. None without a timeout.
pub fn start_deadline(task: &Task, run: &Run) -> Option<Timestamp> {
    let timeout = task.spec.limits.schedule_to_start_timeout_ms?;
    let since = if run.attempt <= 1 { task.created_at } else { run.not_before };
    Some(since.saturating_add(Duration::from_millis(timeout)))
}

/// The cap on one Run's output.
pub fn output_cap(meta: &TaskMeta, config: &StoreConfig) -> u64 {
    meta.output_limit_bytes.unwrap_or(u64::MAX).min(config.max_output_bytes_per_run)
}

/// Decides about an output chunk of `run`, updating `meta` and `run` when
/// it is to be stored. `Err` changes nothing.
pub fn append_output(
    meta: &mut TaskMeta,
    run: &mut RunRecord,
    lease: u64,
    seq: u64,
    data: String,
    config: &StoreConfig,
    now: Timestamp,
) -> Result<OutputStep> {
    if seq == 0 {
        return Err(Error::invalid("seq", "output chunks are numbered from 1"));
    }
    check_lease(&run.run, lease)?;
    // An empty chunk carries nothing: it is not stored.
    if run.output_seqs.contains(seq) || data.is_empty() {
        return Ok(OutputStep::Duplicate);
    }
    if !run.run.status.is_active() {
        return Err(Error::precondition("run", &run.run.id, format!("is {}, it takes no more output", run.run.status)));
    }
    if !run.output_seqs.has_room_for(seq) {
        return Err(Error::invalid(
            "seq",
            format!(
                "chunk {seq} of run {} would leave more than {} gaps in its output; number chunks 1, 2, 3, …",
                run.run.id,
                SeqSet::MAX_RANGES
            ),
        ));
    }
    let limit_bytes = output_cap(meta, config);
    let len = data.len() as u64;
    if run.output_closed || run.output_bytes.saturating_add(len) > limit_bytes {
        run.output_closed = true;
        return Ok(OutputStep::OverLimit { limit_bytes });
    }
    run.output_bytes += len;
    run.output_seqs.insert(seq);
    let event = TaskEvent {
        task_id: run.run.task_id.clone(),
        seq: meta.next_event_seq,
        at: now,
        kind: TaskEventKind::Output(taskrun_core::OutputChunk { run_id: run.run.id.clone(), seq, data }),
    };
    meta.next_event_seq += 1;
    Ok(OutputStep::Append(event))
}

/// The answer to a create whose idempotency key names `existing`.
pub fn idempotent_repeat(existing: Task, new: &Task) -> Result<CreateOutcome<Task>> {
    if existing.spec == new.spec {
        Ok(CreateOutcome::Existing(existing))
    } else {
        Err(Error::IdempotencyConflict {
            key: new.spec.idempotency_key.clone().unwrap_or_default(),
            task_id: existing.id,
        })
    }
}

/// Checks that `component` is the build `manifest` describes.
pub fn check_component(manifest: &AgentManifest, component: &[u8]) -> Result<()> {
    let digest = taskrun_core::AgentDigest::of(component);
    if digest != manifest.digest {
        return Err(Error::invalid(
            "component",
            format!("its digest is {digest}, the manifest says {}", manifest.digest),
        ));
    }
    if manifest.size != component.len() as u64 {
        return Err(Error::invalid(
            "component",
            format!("it is {} bytes, the manifest says {}", component.len(), manifest.size),
        ));
    }
    Ok(())
}

/// Whether publishing `manifest` is new (`Ok(None)`), a repeat of what is
/// stored (`Ok(Some(stored))`) or a conflict, given what is stored under its
/// name and version and under its digest.
pub fn decide_put_agent<'a>(
    manifest: &AgentManifest,
    by_version: Option<&'a AgentManifest>,
    by_digest: Option<&'a AgentManifest>,
) -> Result<Option<&'a AgentManifest>> {
    if let Some(stored) = by_version {
        if stored.digest == manifest.digest {
            return Ok(Some(stored));
        }
        return Err(Error::AgentVersionConflict {
            name: manifest.name.clone(),
            version: manifest.version,
            existing: stored.digest,
            offered: manifest.digest,
        });
    }
    if let Some(stored) = by_digest {
        return Err(Error::AgentDigestConflict {
            digest: manifest.digest,
            existing: format!("{}@{}", stored.name, stored.version),
        });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::SeqSet;

    fn check(seqs: &[u64], expect: &[(u64, u64)]) {
        let mut set = SeqSet::default();
        for &seq in seqs {
            set.insert(seq);
            assert!(set.contains(seq), "{seqs:?}: {seq} inserted");
        }
        assert_eq!(set.0, expect, "{seqs:?}");
        for seq in 0..=seqs.iter().copied().max().unwrap_or(0) + 2 {
            assert_eq!(set.contains(seq), seqs.contains(&seq), "{seqs:?}: contains({seq})");
        }
    }

    #[test]
    fn seq_sets_keep_disjoint_ranges() {
        check(&[], &[]);
        check(&[1, 2, 3], &[(1, 3)]);
        check(&[3, 2, 1], &[(1, 3)]);
        check(&[1, 3], &[(1, 1), (3, 3)]);
        check(&[1, 3, 2], &[(1, 3)]);
        check(&[5, 1, 3, 2, 4], &[(1, 5)]);
        check(&[7, 1, 4, 1, 7], &[(1, 1), (4, 4), (7, 7)]);
        check(&[10, 20, 15, 11, 19, 12], &[(10, 12), (15, 15), (19, 20)]);
        let mut max = SeqSet::default();
        max.insert(u64::MAX);
        max.insert(u64::MAX - 1);
        assert_eq!(max.0, [(u64::MAX - 1, u64::MAX)]);
    }

    #[test]
    fn seq_sets_are_capped_in_ranges() {
        let mut set = SeqSet::default();
        for n in 0..SeqSet::MAX_RANGES as u64 {
            set.insert(2 * n + 1);
        }
        assert_eq!(set.ranges(), SeqSet::MAX_RANGES);
        let next_gap = 2 * SeqSet::MAX_RANGES as u64 + 1;
        assert!(!set.has_room_for(next_gap));
        assert!(set.has_room_for(2), "closing a gap");
        assert!(set.has_room_for(next_gap - 1), "extending the last range");
        assert!(set.has_room_for(1), "already there");
    }
}
