//! TaskService: clients create, read, list, cancel and watch Tasks.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use taskrun_core::{AgentManifest, AgentSelector, Run, RunId, Task, TaskEventKind, TaskId, TaskSpec};
use taskrun_proto::{pb, task_status_from_wire};
use taskrun_store::{CreateOutcome, OnApplied, PageRequest, StoredAgent, TaskFilter, encode_page_token};
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::placement::Reservation;
use crate::state::ControlPlane;
use crate::status::{parse_field, store_status};

/// The longest reason CancelTask accepts: it is copied into the Task, each
/// of its unfinished Runs and their events.
pub const MAX_CANCEL_REASON_BYTES: usize = 1024;

/// The most bytes of Tasks one ListTasks page carries (at least one Task
/// always): under gRPC's usual 4 MiB message limit, so that any client can
/// read a page however large its Tasks are. A shorter page still has a
/// `next_page_token`.
pub const LIST_PAGE_BYTES: usize = 3 << 20;

/// The most bytes a GetTask reply fills with its Task and Runs before it
/// leaves Run results out (the Task, its result and every Run are always
/// sent): under gRPC's usual 4 MiB message limit, like [`LIST_PAGE_BYTES`].
/// A Run sent without its result says so, and GetTask with its id fetches
/// that result.
pub const GET_TASK_BYTES: usize = 3 << 20;

/// Events WatchTask reads from the store at a time.
const WATCH_PAGE: usize = 500;

/// The TaskService handlers.
#[derive(Debug, Clone)]
pub struct TaskApi(pub Arc<ControlPlane>);

impl ControlPlane {
    /// The published agent build a Task's agent reference names.
    pub(crate) async fn resolve_agent(&self, spec: &TaskSpec) -> Result<StoredAgent, Status> {
        let agent = &spec.agent;
        let found = match &agent.selector {
            AgentSelector::Latest => self.store.get_agent(&agent.name, None).await,
            AgentSelector::Version(v) => self.store.get_agent(&agent.name, Some(*v)).await,
            AgentSelector::Digest(d) => self.store.get_agent_by_digest(d).await,
        };
        match found {
            Ok(stored) if stored.manifest.name == agent.name => Ok(stored),
            Ok(stored) => Err(Status::invalid_argument(format!(
                "agent {agent}: that digest is agent {}, not {}",
                stored.manifest.name, agent.name
            ))),
            Err(e) if e.is_not_found() => Err(Status::not_found(format!(
                "agent {agent} is not published (publish it with `taskrun agent publish`)"
            ))),
            Err(e) => Err(store_status(e)),
        }
    }
}

impl ControlPlane {
    /// Creates `task` with its Run held by the reserved Worker and sends the
    /// assignment. Returns the Task and whether it existed already (an
    /// idempotent repeat: nothing assigned, the slot goes back).
    async fn create_placed(
        self: Arc<Self>,
        task: Task,
        manifest: AgentManifest,
        reservation: Reservation,
    ) -> Result<(Task, bool), Status> {
        let worker = reservation.worker.clone();
        // The assignment goes out once the change is applied, while it is
        // flushed: a Run whose creation a crash then loses is unknown to
        // the restarted control plane, which tells its Worker to stop and
        // refuses its reports — and the client was never told of it.
        let delivered = std::sync::Mutex::new(None);
        let on_applied: OnApplied<'_> = Box::new(|change| {
            let sent = self.deliver(reservation, &change.run, &change.task, &manifest);
            *delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sent);
        });
        let outcome = self.store.create_task_assigned(task, &worker, on_applied).await.map_err(store_status)?;
        let delivered = delivered.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        match outcome {
            CreateOutcome::Created((task, Some(_))) => {
                info!(task_id = %task.id, agent = %task.spec.agent, worker_id = %worker, "task created and placed");
                self.placed_at_creation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if delivered == Some(false) {
                    self.worker_vanished(&worker).await;
                }
                Ok((task, false))
            }
            CreateOutcome::Created((task, None)) => Ok((task, false)),
            CreateOutcome::Existing((task, _)) => Ok((task, true)),
        }
    }
}

#[tonic::async_trait]
impl pb::task_service_server::TaskService for TaskApi {
    #[instrument(skip_all)]
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::CreateTaskResponse>, Status> {
        let cp = &self.0;
        let spec = TaskSpec::try_from(request.into_inner())?;
        let max = cp.config.limits.max_input_bytes;
        // Task::new validates the whole spec (input cap included) before the
        // agent lookup touches the store.
        let task = Task::new(TaskId::generate(), spec, cp.clock.now(), max)
            .map_err(|e| Status::invalid_argument(format!("spec: {e}")))?;
        let manifest = cp.resolve_agent(&task.spec).await?.manifest;
        let (task, existing) = match cp.reserve_at_creation(&task, &manifest) {
            // Created and placed in one write. Spawned, so that a client
            // that goes away cannot stop it between the write and the send.
            Some(reservation) => tokio::spawn(Arc::clone(cp).create_placed(task, manifest, reservation))
                .await
                .map_err(|e| Status::internal(format!("create task: {e}")))??,
            None => {
                let outcome = cp.store.create_task(task).await.map_err(store_status)?;
                let existing = !outcome.is_created();
                let task = outcome.into_inner();
                if !existing {
                    info!(task_id = %task.id, agent = %task.spec.agent, "task created");
                    cp.kick.notify_one();
                }
                (task, existing)
            }
        };
        Ok(Response::new(pb::CreateTaskResponse { task: Some(task.into()), existing }))
    }

    #[instrument(skip_all)]
    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Result<Response<pb::GetTaskResponse>, Status> {
        let req = request.into_inner();
        let id: TaskId = parse_field("task_id", &req.task_id)?;
        let run_id: Option<RunId> = match req.run_id.as_deref() {
            None | Some("") => None,
            Some(run_id) => Some(parse_field("run_id", run_id)?),
        };
        let task = pb::Task::from(self.0.store.get_task(&id).await.map_err(store_status)?);
        let runs = match run_id {
            Some(run_id) => {
                // A Run id names its Task: one of another Task is not this
                // Task's, even if it exists.
                if run_id.task_id().as_ref() != Some(&id) {
                    return Err(Status::not_found(format!("run {run_id} is not a Run of task {id}")));
                }
                vec![self.0.store.get_run(&run_id).await.map_err(store_status)?.into()]
            }
            None => {
                let runs = self.0.store.list_runs(&id).await.map_err(store_status)?;
                runs_within(GET_TASK_BYTES.saturating_sub(taskrun_proto::encoded_len(&task)), runs)
            }
        };
        Ok(Response::new(pb::GetTaskResponse { task: Some(task), runs }))
    }

    #[instrument(skip_all)]
    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let req = request.into_inner();
        let mut statuses = Vec::with_capacity(req.statuses.len());
        for &wire in &req.statuses {
            let status = task_status_from_wire("statuses", wire)?;
            if !statuses.contains(&status) {
                statuses.push(status);
            }
        }
        let agent = match req.agent_name.as_deref() {
            None | Some("") => None,
            Some(name) => Some(parse_field("agent_name", name)?),
        };
        taskrun_core::validate_labels("label_selector", &req.label_selector)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if req.page_size < 0 {
            return Err(Status::invalid_argument(format!("page_size out of range: {}", req.page_size)));
        }
        let filter = TaskFilter { statuses, agent, labels: req.label_selector };
        let page = PageRequest {
            page_size: req.page_size.unsigned_abs(),
            page_token: (!req.page_token.is_empty()).then_some(req.page_token),
        };
        let page = self.0.store.list_tasks(&filter, &page).await.map_err(store_status)?;
        let mut next_page_token = page.next_page_token.unwrap_or_default();
        let mut tasks = Vec::with_capacity(page.items.len());
        let (mut bytes, mut last) = (0, None);
        for task in page.items {
            let id = task.id.clone();
            let task = pb::Task::from(task);
            let size = taskrun_proto::encoded_len(&task);
            if let Some(last) = &last
                && bytes + size > LIST_PAGE_BYTES
            {
                // The page is full: the next one starts with this Task.
                next_page_token = encode_page_token(last);
                break;
            }
            bytes += size;
            last = Some(id);
            tasks.push(task);
        }
        Ok(Response::new(pb::ListTasksResponse { tasks, next_page_token }))
    }

    #[instrument(skip_all)]
    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let req = request.into_inner();
        let id: TaskId = parse_field("task_id", &req.task_id)?;
        if req.reason.len() > MAX_CANCEL_REASON_BYTES {
            return Err(Status::invalid_argument(format!(
                "reason is {} bytes; at most {MAX_CANCEL_REASON_BYTES} are accepted",
                req.reason.len()
            )));
        }
        let reason = if req.reason.is_empty() { "cancelled by a client".to_owned() } else { req.reason };
        let task = self.0.cancel_task(&id, &reason).await?;
        Ok(Response::new(pb::CancelTaskResponse { task: Some(task.into()) }))
    }

    type WatchTaskStream = Pin<Box<dyn Stream<Item = Result<pb::WatchTaskResponse, Status>> + Send>>;

    #[instrument(skip_all)]
    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let req = request.into_inner();
        let id: TaskId = parse_field("task_id", &req.task_id)?;
        if req.after_cursor < 0 {
            return Err(Status::invalid_argument(format!("after_cursor out of range: {}", req.after_cursor)));
        }
        // NOT_FOUND now rather than as the stream's first item.
        self.0.store.get_task(&id).await.map_err(store_status)?;
        let cp = Arc::clone(&self.0);
        let cursor = req.after_cursor.unsigned_abs();
        Ok(Response::new(Box::pin(watch_stream(cp, id, cursor))))
    }
}

/// `runs` for a reply with `budget` bytes left: every Run, in order, each
/// with its result if the reply still fits in the budget with it, and
/// without it (the result's size said) otherwise.
fn runs_within(budget: usize, runs: Vec<Run>) -> Vec<pb::Run> {
    let mut used = 0;
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let mut wire = pb::Run::from(run);
        let mut size = taskrun_proto::encoded_len(&wire);
        if used + size > budget {
            wire.omit_result();
            size = taskrun_proto::encoded_len(&wire);
        }
        used += size;
        out.push(wire);
    }
    out
}

/// Stored events after `cursor`, then live ones, until the Task is terminal
/// (at once if it is and the client has seen its last event).
fn watch_stream(
    cp: Arc<ControlPlane>,
    id: TaskId,
    mut cursor: u64,
) -> impl Stream<Item = Result<pb::WatchTaskResponse, Status>> + Send {
    async_stream::try_stream! {
        // Declared before `changes`, so dropped after it: the Task's
        // subscription goes when its last watcher does.
        let _unsubscribe = Unsubscribe(Arc::clone(&cp), id.clone());
        let mut changes = cp.subscribe(&id);
        loop {
            // Mark what we have seen before reading, so an event stored
            // between the read and the wait still wakes us.
            changes.borrow_and_update();
            let events = cp.store.events_since(&id, cursor, WATCH_PAGE).await.map_err(store_status)?;
            if events.is_empty() && cp.store.get_task(&id).await.map_err(store_status)?.status.is_terminal() {
                // Nothing after the cursor, and nothing more will come.
                break;
            }
            // A full page may have more stored behind it: read on at once.
            let full = events.len() == WATCH_PAGE;
            let mut ended = false;
            for event in events {
                cursor = event.seq;
                let terminal = matches!(
                    &event.kind,
                    TaskEventKind::Status { task_status, run_id: None, .. } if task_status.is_terminal()
                );
                yield pb::WatchTaskResponse::from(event);
                if terminal {
                    ended = true;
                    break;
                }
            }
            if ended {
                break;
            }
            if full {
                continue;
            }
            let shutting_down = tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The sender went away: subscribe again.
                        changes = cp.subscribe(&id);
                    }
                    false
                }
                () = cp.shutdown.cancelled() => true,
            };
            if shutting_down {
                Err(Status::unavailable("control plane shutting down; watch again from the last cursor"))?;
            }
        }
    }
}

/// Drops a WatchTask stream's subscription when the stream goes.
struct Unsubscribe(Arc<ControlPlane>, TaskId);

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.0.unsubscribe(&self.1);
    }
}
