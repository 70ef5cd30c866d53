//! `taskrun task ...`: create, get, list, cancel and watch Tasks.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::value::RawValue;
use taskrun_core::{Json, Run, RunId, Task, TaskId, TaskSpec};
use taskrun_proto::{RunReply, pb};

use crate::cli::{CreateArgs, ListArgs, TaskCommand};
use crate::client::{Connection, MAX_REQUEST_BYTES};
use crate::error::{EXIT_OK, usage};
use crate::output::{self, line, note};
use crate::parse;
use crate::watch;

/// Tasks `task list` shows without --all or --limit (the control plane's
/// default page size).
const DEFAULT_PAGE_SIZE: u32 = 100;

pub async fn run(conn: Connection, command: TaskCommand) -> anyhow::Result<ExitCode> {
    match command {
        TaskCommand::Create(args) => create(conn, args).await,
        TaskCommand::Get { task_id, json, run } => get(conn, &task_id, run.as_ref(), json).await,
        TaskCommand::List(args) => list(conn, args).await,
        TaskCommand::Cancel { task_id, reason } => cancel(conn, &task_id, reason).await,
        TaskCommand::Watch { task_id, cursor } => watch::watch(&conn, &task_id, cursor).await,
    }
}

/// Builds the spec from the flags and checks it as the control plane
/// would, so that mistakes are reported before anything is sent.
pub fn spec_from_args(args: &CreateArgs) -> anyhow::Result<TaskSpec> {
    let (source, text) = match (&args.input, &args.input_file) {
        (Some(text), _) if text == "-" => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading the input from stdin")?;
            ("the input read from stdin (--input -)".to_owned(), text)
        }
        (Some(text), _) => ("--input".to_owned(), text.clone()),
        (None, Some(path)) => {
            // Refuse a file no request could carry before reading it all.
            if let Ok(meta) = std::fs::metadata(path) {
                check_input_size(&format!("--input-file {}", path.display()), meta.len())?;
            }
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading the input file {}", path.display()))?;
            (format!("--input-file {}", path.display()), text)
        }
        (None, None) => ("the input".to_owned(), "null".to_owned()),
    };
    check_input_size(&source, text.len() as u64)?;
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        return Err(usage(format!("{source} is not valid JSON: {e}")));
    }
    let input = Json::parse("input", text).map_err(|e| usage(format!("{source}: {e}")))?;
    let mut spec = TaskSpec::new(args.agent.clone(), input);
    spec.labels = parse::labels("--label", &args.labels).map_err(usage)?;
    spec.worker_labels = parse::labels("--worker-label", &args.worker_labels).map_err(usage)?;
    if let Some(priority) = args.priority {
        spec.priority = priority;
    }
    if let Some(n) = args.max_attempts {
        spec.retry.max_attempts = n;
    }
    if let Some(timeout) = args.timeout {
        spec.limits.run_timeout_ms = duration_ms(timeout);
    }
    if let Some(timeout) = args.schedule_timeout {
        spec.limits.schedule_to_start_timeout_ms = Some(duration_ms(timeout));
    }
    spec.idempotency_key = args.idempotency_key.clone();
    if let Some(n) = args.fan_out {
        spec.fan_out = n;
    }
    // The input's size cap is the control plane's to decide.
    spec.validate(usize::MAX).map_err(|e| usage(spec_error(&e)))?;
    Ok(spec)
}

/// Refuses an input larger than one request can carry. The control
/// plane's `limits.max_input_bytes` (1 MiB by default, at most a little
/// under 16 MiB) is the real cap; only it knows its value, so smaller
/// inputs are left for it to judge.
fn check_input_size(source: &str, len: u64) -> anyhow::Result<()> {
    if len > MAX_REQUEST_BYTES as u64 {
        return Err(too_large(source, len));
    }
    Ok(())
}

fn too_large(source: &str, len: u64) -> anyhow::Error {
    usage(format!(
        "{source} is {} ({len} bytes), more than a request to the control plane can carry ({}); the control \
         plane's limits.max_input_bytes (1 MiB by default) decides how large an input may be: pass a smaller input",
        output::bytes(len),
        output::bytes(MAX_REQUEST_BYTES as u64),
    ))
}

/// A spec error in terms of the flag that set the field.
fn spec_error(e: &taskrun_core::Error) -> String {
    let flag = match e.field() {
        Some("priority") => "--priority",
        Some("retry.max_attempts") => "--max-attempts",
        Some("limits.run_timeout_ms") => "--timeout",
        Some("limits.schedule_to_start_timeout_ms") => "--schedule-timeout",
        Some("idempotency_key") => "--idempotency-key",
        Some("fan_out") => "--fan-out",
        Some("labels") => "--label",
        Some("worker_labels") => "--worker-label",
        _ => return e.to_string(),
    };
    match e {
        _ if flag == "--timeout" => format!(
            "--timeout must be 1ms to {}",
            parse::format_duration_ms(taskrun_core::TaskLimits::MAX_RUN_TIMEOUT_MS)
        ),
        _ if flag == "--schedule-timeout" => "--schedule-timeout must be greater than zero".to_owned(),
        taskrun_core::Error::Invalid { value, reason, .. } => format!("{flag} {value}: {reason}"),
        other => format!("{flag}: {other}"),
    }
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn create(conn: Connection, args: CreateArgs) -> anyhow::Result<ExitCode> {
    let spec = spec_from_args(&args)?;
    let input_len = spec.input.as_str().len() as u64;
    let request = pb::CreateTaskRequest::from(spec);
    // The input alone fits (checked above); with the rest of the request
    // it may not.
    if taskrun_proto::encoded_len(&request) > MAX_REQUEST_BYTES {
        return Err(too_large("the input", input_len));
    }
    let response = conn.tasks().create_task(request).await.map_err(|s| conn.error(s))?.into_inner();
    let task = Task::try_from(response.task.context("the control plane answered without the Task")?)
        .context("the control plane sent an invalid Task")?;
    if response.existing {
        note(format!("{}: an earlier request with the same idempotency key created it", task.id));
    }
    if args.watch {
        note(format!("created {}", task.id));
        return watch::watch(&conn, &task.id, 0).await;
    }
    line(task.id.as_str())?;
    Ok(ExitCode::from(EXIT_OK))
}

async fn get(conn: Connection, id: &TaskId, run: Option<&RunId>, json: bool) -> anyhow::Result<ExitCode> {
    if let Some(run) = run
        && run.task_id().as_ref() != Some(id)
    {
        return Err(usage(format!("--run {run} is not a Run of task {id}: a Run's id starts with its Task's")));
    }
    let (task, runs) = fetch_runs(&conn, id, run).await?;
    if json {
        output::print_json(&TaskWithRuns {
            task: TaskView::of(&task)?,
            runs: runs.iter().map(RunView::of).collect::<anyhow::Result<_>>()?,
        })?;
        return Ok(ExitCode::from(EXIT_OK));
    }
    if run.is_some() {
        let Some(reply) = runs.first() else {
            anyhow::bail!("the control plane answered without the Run");
        };
        write_stdout(&run_fields(&task, &reply.run))?;
        return Ok(ExitCode::from(EXIT_OK));
    }
    let spec = &task.spec;
    let mut pairs = vec![
        ("Task", task.id.to_string()),
        ("Agent", spec.agent.to_string()),
        ("Status", task.status.to_string()),
        ("Created", output::time(task.created_at)),
        ("Updated", output::time(task.updated_at)),
        ("Input", output::truncate(spec.input.as_str(), 200)),
        ("Labels", output::labels(&spec.labels)),
        ("Worker labels", output::labels(&spec.worker_labels)),
        ("Priority", spec.priority.to_string()),
        ("Fan-out", spec.fan_out.to_string()),
        ("Max attempts", spec.retry.max_attempts.to_string()),
        ("Run timeout", parse::format_duration_ms(spec.limits.run_timeout_ms)),
    ];
    if let Some(ms) = spec.limits.schedule_to_start_timeout_ms {
        pairs.push(("Schedule timeout", parse::format_duration_ms(ms)));
    }
    if let Some(key) = &spec.idempotency_key {
        pairs.push(("Idempotency key", key.clone()));
    }
    if let Some(result) = &task.result {
        pairs.push(("Result", output::truncate(result.as_str(), 200)));
    }
    if let Some(error) = &task.error {
        pairs.push(("Error", error.clone()));
    }
    let mut text = output::fields(&pairs);
    text.push('\n');
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|RunReply { run: r, result_omitted_bytes }| {
            let result = match (&r.result, result_omitted_bytes) {
                (Some(result), _) => output::bytes(result.len() as u64),
                (None, Some(n)) => format!("left out ({})", output::bytes(*n)),
                (None, None) => "-".to_owned(),
            };
            // Why a FAILED Run was or was not retried, where it is not the rule.
            let status = match (r.failed_permanently, r.interrupted) {
                (true, _) => format!("{} (permanent)", r.status),
                (_, true) => format!("{} (interrupted)", r.status),
                _ => r.status.to_string(),
            };
            vec![
                r.id.to_string(),
                r.shard.to_string(),
                r.attempt.to_string(),
                status,
                r.worker_id.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
                output::time_opt(r.started_at),
                output::time_opt(r.finished_at),
                result,
                r.error.as_deref().map_or_else(|| "-".to_owned(), |e| output::truncate(e, 60)),
            ]
        })
        .collect();
    text.push_str(&output::table(
        &["RUN", "SHARD", "ATTEMPT", "STATUS", "WORKER", "STARTED", "FINISHED", "RESULT", "ERROR"],
        &rows,
    ));
    write_stdout(&text)?;
    if let Some(left_out) = runs.iter().find(|r| r.result_omitted_bytes.is_some()) {
        note(format!(
            "results marked \"left out\" did not fit in one reply; show one with `taskrun task get {id} --run {}`",
            left_out.run.id
        ));
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `task get --run` as text: the Run's fields, its result cut like a
/// Task's (`--json` prints it whole).
fn run_fields(task: &Task, r: &Run) -> String {
    let mut pairs = vec![
        ("Run", r.id.to_string()),
        ("Task", task.id.to_string()),
        ("Task status", task.status.to_string()),
        ("Shard", r.shard.to_string()),
        ("Attempt", r.attempt.to_string()),
        ("Lease", r.lease.to_string()),
        ("Status", r.status.to_string()),
        ("Worker", r.worker_id.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string)),
        ("Created", output::time(r.created_at)),
        ("Started", output::time_opt(r.started_at)),
        ("Finished", output::time_opt(r.finished_at)),
    ];
    if let Some(result) = &r.result {
        pairs.push(("Result", output::truncate(result.as_str(), 200)));
        pairs.push(("Result size", output::bytes(result.len() as u64)));
    }
    if let Some(error) = &r.error {
        pairs.push(("Error", error.clone()));
    }
    output::fields(&pairs)
}

/// A Task and its Runs, converted and checked. A Run whose result did not
/// fit in the reply comes without it.
pub async fn fetch(conn: &Connection, id: &TaskId) -> anyhow::Result<(Task, Vec<RunReply>)> {
    fetch_runs(conn, id, None).await
}

/// A Task and its Runs, or only `run` (with its result), converted and
/// checked.
async fn fetch_runs(conn: &Connection, id: &TaskId, run: Option<&RunId>) -> anyhow::Result<(Task, Vec<RunReply>)> {
    let response = conn.get_task(id, run).await?;
    let task = Task::try_from(response.task.context("the control plane answered without the Task")?)
        .context("the control plane sent an invalid Task")?;
    let runs = response
        .runs
        .into_iter()
        .map(RunReply::try_from)
        .collect::<Result<Vec<_>, _>>()
        .context("the control plane sent an invalid Run")?;
    Ok((task, runs))
}

async fn list(conn: Connection, args: ListArgs) -> anyhow::Result<ExitCode> {
    let label_selector = parse::labels("--label", &args.labels).map_err(usage)?;
    let mut client = conn.tasks();
    let mut tasks = Vec::new();
    let mut page_token = String::new();
    // --page-size alone: one page of that size, like the default page.
    let following = args.all || args.limit.is_some();
    let page_size = args.page_size.unwrap_or(if following { 1000 } else { DEFAULT_PAGE_SIZE });
    // How many Tasks to show: --limit's, a page's worth, or (--all) every one.
    let wanted = args.limit.or((!args.all).then_some(page_size));
    let more = loop {
        let size = match wanted {
            Some(wanted) => (wanted - tasks.len() as u32).min(page_size),
            None => page_size,
        };
        let request = pb::ListTasksRequest {
            statuses: args.status.iter().map(|&s| pb::TaskStatus::from(s).into()).collect(),
            agent_name: args.agent.as_ref().map(ToString::to_string),
            label_selector: label_selector.clone(),
            page_size: i32::try_from(size).unwrap_or(i32::MAX),
            page_token: std::mem::take(&mut page_token),
        };
        let response = client.list_tasks(request).await.map_err(|s| conn.error(s))?.into_inner();
        for t in response.tasks {
            tasks.push(Task::try_from(t).context("the control plane sent an invalid Task")?);
        }
        if let Some(wanted) = wanted {
            tasks.truncate(wanted as usize);
        }
        page_token = response.next_page_token;
        if page_token.is_empty() {
            break false;
        }
        // A page can come back short, even empty, with a token: the control
        // plane looks at a bounded number of Tasks per call. Carry on until
        // there are as many as wanted; then a hint, unless --limit chose
        // the number.
        if let Some(wanted) = wanted
            && tasks.len() as u32 >= wanted
        {
            break args.limit.is_none();
        }
    };
    if args.json {
        output::print_json(&tasks.iter().map(TaskView::of).collect::<anyhow::Result<Vec<_>>>()?)?;
    } else if tasks.is_empty() {
        note("no Tasks match");
    } else {
        let rows: Vec<Vec<String>> = tasks
            .iter()
            .map(|t| {
                vec![
                    t.id.to_string(),
                    t.spec.agent.to_string(),
                    t.status.to_string(),
                    output::time(t.created_at),
                    output::labels(&t.spec.labels),
                ]
            })
            .collect();
        write_stdout(&output::table(&["TASK", "AGENT", "STATUS", "CREATED", "LABELS"], &rows))?;
    }
    if more {
        note("more Tasks match: use --all, or --limit N to see more");
    }
    Ok(ExitCode::from(EXIT_OK))
}

async fn cancel(conn: Connection, id: &TaskId, reason: Option<String>) -> anyhow::Result<ExitCode> {
    let request = pb::CancelTaskRequest { task_id: id.to_string(), reason: reason.unwrap_or_default() };
    let response = match conn.tasks().cancel_task(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            return Err(not_cancellable(&conn, id, status).await);
        }
        Err(status) => return Err(conn.error(status)),
    };
    let task = Task::try_from(response.task.context("the control plane answered without the Task")?)
        .context("the control plane sent an invalid Task")?;
    match &task.error {
        Some(reason) => line(format!("{} {}: {reason}", task.id, task.status))?,
        None => line(format!("{} {}", task.id, task.status))?,
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// Why a Task could not be cancelled: it has ended already (the usual
/// case, said in the Task's own terms), or the control plane's reason.
async fn not_cancellable(conn: &Connection, id: &TaskId, status: tonic::Status) -> anyhow::Error {
    match fetch(conn, id).await {
        Ok((task, _)) if task.status == taskrun_core::TaskStatus::Cancelled => {
            anyhow::anyhow!("task {id} is already CANCELLED")
        }
        Ok((task, _)) if task.status.is_terminal() => {
            anyhow::anyhow!("task {id} is already {}: a Task that has ended cannot be cancelled", task.status)
        }
        _ => conn.error(status),
    }
}

fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// `task get --json`.
#[derive(Serialize)]
struct TaskWithRuns {
    task: TaskView,
    runs: Vec<RunView>,
}

/// A Task in `--json` output: the wire contract's field names, JSON values
/// (input, result) embedded as they are.
#[derive(Serialize)]
struct TaskView {
    task_id: String,
    status: &'static str,
    agent: String,
    input: Box<RawValue>,
    labels: taskrun_core::Labels,
    worker_labels: taskrun_core::Labels,
    priority: i32,
    fan_out: u32,
    max_attempts: u32,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    run_timeout_ms: u64,
    schedule_to_start_timeout_ms: Option<u64>,
    idempotency_key: Option<String>,
    created_at: String,
    created_at_unix_ms: i64,
    updated_at_unix_ms: i64,
    result: Option<Box<RawValue>>,
    error: Option<String>,
}

impl TaskView {
    fn of(t: &Task) -> anyhow::Result<TaskView> {
        let spec = &t.spec;
        Ok(TaskView {
            task_id: t.id.to_string(),
            status: t.status.as_str(),
            agent: spec.agent.to_string(),
            input: output::raw_json(spec.input.as_str())?,
            labels: spec.labels.clone(),
            worker_labels: spec.worker_labels.clone(),
            priority: spec.priority,
            fan_out: spec.fan_out,
            max_attempts: spec.retry.max_attempts,
            initial_backoff_ms: spec.retry.initial_backoff_ms,
            max_backoff_ms: spec.retry.max_backoff_ms,
            run_timeout_ms: spec.limits.run_timeout_ms,
            schedule_to_start_timeout_ms: spec.limits.schedule_to_start_timeout_ms,
            idempotency_key: spec.idempotency_key.clone(),
            created_at: output::time(t.created_at),
            created_at_unix_ms: t.created_at.as_millis(),
            updated_at_unix_ms: t.updated_at.as_millis(),
            result: t.result.as_ref().map(|r| output::raw_json(r.as_str())).transpose()?,
            error: t.error.clone(),
        })
    }
}

/// A Run in `--json` output.
#[derive(Serialize)]
struct RunView {
    run_id: String,
    shard: u32,
    attempt: u32,
    lease: u64,
    status: &'static str,
    worker_id: Option<String>,
    created_at_unix_ms: i64,
    assigned_at_unix_ms: Option<i64>,
    started_at_unix_ms: Option<i64>,
    finished_at_unix_ms: Option<i64>,
    result: Option<Box<RawValue>>,
    /// Set when the reply left the result out: its size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    result_omitted_bytes: Option<u64>,
    error: Option<String>,
    /// FAILED in a way that would repeat (the agent said so): not retried.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    failed_permanently: bool,
    /// FAILED because its Worker shut down: retried, not counted as an attempt.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    interrupted: bool,
}

impl RunView {
    fn of(reply: &RunReply) -> anyhow::Result<RunView> {
        let r = &reply.run;
        Ok(RunView {
            run_id: r.id.to_string(),
            shard: r.shard,
            attempt: r.attempt,
            lease: r.lease,
            status: r.status.as_str(),
            worker_id: r.worker_id.as_ref().map(ToString::to_string),
            created_at_unix_ms: r.created_at.as_millis(),
            assigned_at_unix_ms: r.assigned_at.map(|t| t.as_millis()),
            started_at_unix_ms: r.started_at.map(|t| t.as_millis()),
            finished_at_unix_ms: r.finished_at.map(|t| t.as_millis()),
            result: r.result.as_ref().map(|j| output::raw_json(j.as_str())).transpose()?,
            result_omitted_bytes: reply.result_omitted_bytes,
            error: r.error.clone(),
            failed_permanently: r.failed_permanently,
            interrupted: r.interrupted,
        })
    }
}
