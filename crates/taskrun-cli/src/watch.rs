//! Following a Task: `task watch` and `task create --watch`.
//!
//! Output chunks go to stdout raw, as they arrive; status changes go to
//! stderr as `[RUNNING] run task_….0.1 attempt 1 on worker …`. A stream that
//! drops is opened again after the last cursor seen, with backoff, a bounded
//! number of times in a row. When the Task ends, its result JSON goes to
//! stdout (or its error to stderr) and the exit code tells how it ended.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use taskrun_core::{RunId, RunStatus, TaskEvent, TaskEventKind, TaskId, TaskStatus, WorkerId};
use taskrun_proto::pb;

use crate::client::Connection;
use crate::error::{EXIT_CANCELLED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, is_transient};
use crate::output::note;

/// Reconnections in a row (without an event in between) before giving up.
const MAX_RECONNECTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What we know of a Run, for status lines.
#[derive(Debug, Clone)]
struct RunInfo {
    shard: u32,
    attempt: u32,
    worker: Option<WorkerId>,
}

#[derive(Debug)]
struct Watcher<'a> {
    conn: &'a Connection,
    task_id: &'a TaskId,
    /// The cursor of the last event handled.
    cursor: u64,
    fan_out: u32,
    runs: HashMap<RunId, RunInfo>,
    /// Whether what we wrote to stdout so far ends a line.
    at_line_start: bool,
}

/// Follows `task_id` from after `cursor` until it ends; the exit code says
/// how it ended: 0 COMPLETED, 1 FAILED, 2 CANCELLED.
pub async fn watch(conn: &Connection, task_id: &TaskId, cursor: u64) -> anyhow::Result<ExitCode> {
    let mut watcher = Watcher { conn, task_id, cursor, fan_out: 1, runs: HashMap::new(), at_line_start: true };
    // Also says NOT_FOUND before anything else is printed.
    watcher.refresh_runs().await?;
    let followed = tokio::select! {
        status = watcher.follow() => Some(status),
        _ = tokio::signal::ctrl_c() => None,
    };
    let Some(status) = followed else {
        watcher.end_line()?;
        note(format!("interrupted; resume with: taskrun task watch {} --cursor {}", watcher.task_id, watcher.cursor));
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    };
    let status = status?;
    watcher.finish(status).await
}

impl Watcher<'_> {
    /// Reads events until the Task is terminal, reconnecting as needed.
    async fn follow(&mut self) -> anyhow::Result<TaskStatus> {
        let mut client = self.conn.tasks();
        let mut failures = 0u32;
        loop {
            let request = pb::WatchTaskRequest {
                task_id: self.task_id.to_string(),
                after_cursor: i64::try_from(self.cursor).unwrap_or(i64::MAX),
            };
            let dropped = match client.watch_task(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(message)) => {
                                failures = 0;
                                let event = TaskEvent::try_from(message)
                                    .context("the control plane sent an invalid TaskEvent")?;
                                if let Some(status) = self.handle(event).await? {
                                    return Ok(status);
                                }
                            }
                            // Ended without the Task's end: the Task ended
                            // before the cursor (nothing left to send), or
                            // a control plane going away; then ask again.
                            Ok(None) => {
                                let (task, _) = crate::task::fetch(self.conn, self.task_id).await?;
                                if task.status.is_terminal() {
                                    return Ok(task.status);
                                }
                                break "the stream ended early".to_owned();
                            }
                            Err(status) if is_transient(&status) => break self.conn.remote(&status).to_string(),
                            Err(status) => return Err(self.conn.error(status)),
                        }
                    }
                }
                Err(status) if is_transient(&status) => self.conn.remote(&status).to_string(),
                Err(status) => return Err(self.conn.error(status)),
            };
            failures += 1;
            if failures > MAX_RECONNECTS {
                self.end_line()?;
                anyhow::bail!(
                    "lost the watch of {} after {MAX_RECONNECTS} reconnection attempts: {dropped}; \
                     resume with: taskrun task watch {} --cursor {}",
                    self.task_id,
                    self.task_id,
                    self.cursor
                );
            }
            let backoff = FIRST_BACKOFF.saturating_mul(1 << (failures - 1).min(8)).min(MAX_BACKOFF);
            self.end_line()?;
            note(format!(
                "watch interrupted ({dropped}); reconnecting in {} ms from cursor {} (attempt {failures} of {MAX_RECONNECTS})",
                backoff.as_millis(),
                self.cursor
            ));
            tokio::time::sleep(backoff).await;
        }
    }

    /// Shows one event; returns the Task's final status once it is terminal.
    async fn handle(&mut self, event: TaskEvent) -> anyhow::Result<Option<TaskStatus>> {
        if event.seq <= self.cursor {
            // Already shown (a replay after a reconnect).
            return Ok(None);
        }
        self.cursor = event.seq;
        match event.kind {
            TaskEventKind::Output(chunk) => {
                let mut out = std::io::stdout().lock();
                out.write_all(chunk.data.as_bytes())?;
                out.flush()?;
                if !chunk.data.is_empty() {
                    self.at_line_start = chunk.data.ends_with('\n');
                }
                Ok(None)
            }
            TaskEventKind::Status { run_id: Some(run_id), run_status: Some(run_status), message, .. } => {
                let known = self.runs.get(&run_id);
                let stale = match known {
                    None => true,
                    Some(info) => {
                        run_status == RunStatus::Assigned || (run_status.is_active() && info.worker.is_none())
                    }
                };
                if stale {
                    // Best effort: the line is still useful without details.
                    let _ = self.refresh_runs().await;
                }
                let mut text = format!("[{run_status}] run {run_id}");
                if let Some(info) = self.runs.get(&run_id) {
                    if self.fan_out > 1 {
                        text.push_str(&format!(" shard {}", info.shard));
                    }
                    text.push_str(&format!(" attempt {}", info.attempt));
                    if let Some(worker) = &info.worker {
                        text.push_str(&format!(" on worker {worker}"));
                    }
                }
                self.status_line(text, message.as_deref())?;
                Ok(None)
            }
            TaskEventKind::Status { task_status, message, .. } => {
                self.status_line(format!("[{task_status}] task {}", self.task_id), message.as_deref())?;
                Ok(task_status.is_terminal().then_some(task_status))
            }
        }
    }

    fn status_line(&mut self, mut text: String, message: Option<&str>) -> anyhow::Result<()> {
        if let Some(message) = message.filter(|m| !m.is_empty()) {
            text.push_str(": ");
            text.push_str(&crate::error::one_line(message));
        }
        self.end_line()?;
        note(text);
        Ok(())
    }

    /// Ends a partial line of output on stdout, so what follows starts on
    /// a line of its own.
    fn end_line(&mut self) -> std::io::Result<()> {
        if !self.at_line_start {
            let mut out = std::io::stdout().lock();
            out.write_all(b"\n")?;
            out.flush()?;
            self.at_line_start = true;
        }
        Ok(())
    }

    /// Learns the Task's fan-out and its Runs' shards, attempts and Workers.
    async fn refresh_runs(&mut self) -> anyhow::Result<()> {
        let (task, runs) = crate::task::fetch(self.conn, self.task_id).await?;
        self.fan_out = task.spec.fan_out;
        for taskrun_proto::RunReply { run, .. } in runs {
            self.runs.insert(run.id, RunInfo { shard: run.shard, attempt: run.attempt, worker: run.worker_id });
        }
        Ok(())
    }

    /// Prints the result (or the error) and picks the exit code.
    async fn finish(&mut self, status: TaskStatus) -> anyhow::Result<ExitCode> {
        self.end_line()?;
        let (task, _) = crate::task::fetch(self.conn, self.task_id).await?;
        match status {
            TaskStatus::Completed => {
                if let Some(result) = &task.result {
                    crate::output::line(result.as_str())?;
                }
                Ok(ExitCode::from(EXIT_OK))
            }
            TaskStatus::Failed => {
                note(format!("task {} failed: {}", task.id, task.error.as_deref().unwrap_or("no reason given")));
                Ok(ExitCode::from(EXIT_ERROR))
            }
            TaskStatus::Cancelled => {
                note(format!("task {} was cancelled: {}", task.id, task.error.as_deref().unwrap_or("no reason given")));
                Ok(ExitCode::from(EXIT_CANCELLED))
            }
            // Not terminal: `follow` returns only terminal statuses.
            other => anyhow::bail!("task {} ended the watch while {other}", task.id),
        }
    }
}
