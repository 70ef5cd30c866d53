//! The `taskrun-worker` binary: SIGTERM drains it (the Run in flight
//! completes) and it exits 0; a second signal stops it at once. Its config
//! file sits in a directory of its own and names its files relative to it,
//! while the binary runs from another directory.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use taskrun_agent_artifacts as artifacts;
use taskrun_control_plane::config::StoreKind;
use taskrun_core::{TaskStatus, WorkerId, WorkerState};
use taskrun_proto::pb;
use taskrun_testkit::{Cluster, spec, status_of, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// `conf/worker.toml` for Worker `id`, beside a copy of the cluster's trust
/// policy, with relative paths; returns the file.
fn write_config(cluster: &Cluster, id: &str, extra: &str) -> PathBuf {
    let conf = cluster.dir.path().join(format!("{id}-conf"));
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::copy(&cluster.policy_path, conf.join("trust.toml")).expect("copy the trust policy");
    let file = conf.join("worker.toml");
    let toml = format!(
        "id = \"{id}\"\ncontrol_plane = \"{}\"\ninsecure = true\ndata_dir = \"data\"\ntrust_policy = \"trust.toml\"\n{extra}",
        cluster.url()
    );
    std::fs::write(&file, toml).expect("write the config");
    file
}

/// The binary, started from a directory of its own with `config`, logging
/// to a file; once the control plane has it connected.
async fn start(cluster: &Cluster, id: &str, config: &Path) -> (tokio::process::Child, PathBuf) {
    let cwd = cluster.dir.path().join(format!("{id}-cwd"));
    std::fs::create_dir_all(&cwd).expect("mkdir");
    let log = cluster.dir.path().join(format!("{id}.log"));
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskrun-worker"))
        .arg("--config")
        .arg(config)
        .current_dir(&cwd)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("TASKRUN_WORKER_CONFIG")
        .env_remove("TASKRUN_CONTROL_PLANE")
        .env_remove("TASKRUN_INSECURE")
        .env_remove("TASKRUN_WORKER_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn taskrun-worker");
    let worker: WorkerId = id.parse().expect("worker id");
    let cp = cluster.server.as_ref().expect("control plane").control_plane();
    wait_for("the binary to connect", WAIT, || cp.connected_workers().contains(&worker)).await;
    (child, log)
}

fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("still running");
    let status = std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
    assert!(status.expect("kill").success(), "kill -{name} {pid}");
}

async fn exited(child: &mut tokio::process::Child) -> ExitStatus {
    tokio::time::timeout(WAIT, child.wait()).await.expect("the binary exits").expect("wait")
}

fn state(cluster: &Cluster, worker: &str) -> Option<WorkerState> {
    let id: WorkerId = worker.parse().expect("worker id");
    cluster.server.as_ref().expect("control plane").control_plane().worker_state(&id)
}

async fn wait_running(cluster: &Cluster, task_id: &str, worker: &str) {
    let deadline = Instant::now() + WAIT;
    let mut tasks = cluster.tasks().await;
    loop {
        let got = taskrun_testkit::get_task(&mut tasks, task_id).await;
        if got
            .runs
            .iter()
            .any(|r| r.status == i32::from(pb::RunStatus::Running) && r.worker_id.as_deref() == Some(worker))
        {
            return;
        }
        assert!(Instant::now() < deadline, "not running on {worker}: {:?}", got.runs);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sleep_spec(ms: u64) -> pb::TaskSpec {
    let mut spec = spec("sleep", &format!(r#"{{"ms": {ms}}}"#));
    spec.retry = Some(pb::RetryPolicy { max_attempts: Some(1), ..Default::default() });
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_binary_which_exits_0() {
    let cluster = Cluster::start(StoreKind::Memory).await;
    cluster.publish("sleep", "1.0.0", artifacts::HOSTILE_SLEEP).await;
    let config = write_config(&cluster, "bin-1", "");
    let (mut child, log) = start(&cluster, "bin-1", &config).await;
    let conf = config.parent().expect("conf dir");

    let task_id = cluster.create(sleep_spec(1500)).await;
    wait_running(&cluster, &task_id, "bin-1").await;
    signal(&child, "TERM");
    let status = exited(&mut child).await;
    let log = std::fs::read_to_string(log).expect("log");
    assert_eq!(status.code(), Some(0), "{log}");

    // It let the Run finish before it went.
    let got = cluster.wait_terminal(&task_id, WAIT).await;
    assert_eq!(status_of(&got), TaskStatus::Completed, "{:?}\n{log}", got.runs);
    assert_eq!(got.runs.len(), 1);
    assert_eq!(state(&cluster, "bin-1"), None);
    for line in ["shutting down gracefully", "draining: no new runs", "worker drained", "worker exiting"] {
        assert!(log.contains(line), "{line:?} missing from:\n{log}");
    }
    // No [[model_backends]]: one warning at start, naming what to configure.
    let warning = "no ModelBackends configured: agents that call a ModelBackend will get an error; configure one \
                   with a [[model_backends]] entry in worker.toml (see docs/worker.md)";
    assert_eq!(log.matches(warning).count(), 1, "{log}");
    assert!(log.lines().any(|l| l.contains(" WARN ") && l.contains(warning)), "{log}");
    // Its paths were read from the config file's directory.
    assert!(conf.join("data").join("compiled").is_dir(), "{log}");
    assert!(!cluster.dir.path().join("bin-1-cwd").join("data").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_the_binary_at_once() {
    let cluster = Cluster::start(StoreKind::Memory).await;
    cluster.publish("sleep", "1.0.0", artifacts::HOSTILE_SLEEP).await;
    let backends = "shutdown_grace_secs = 3600\n[[model_backends]]\nname = \"default\"\nprovider = \"echo\"\n";
    let config = write_config(&cluster, "bin-2", backends);
    let (mut child, log) = start(&cluster, "bin-2", &config).await;

    let task_id = cluster.create(sleep_spec(3_600_000)).await;
    wait_running(&cluster, &task_id, "bin-2").await;
    signal(&child, "TERM");
    wait_for("the drain", WAIT, || state(&cluster, "bin-2") == Some(WorkerState::Draining)).await;
    // Within the hour's grace period, the Run still going: it stops now.
    signal(&child, "INT");
    let status = exited(&mut child).await;
    let log = std::fs::read_to_string(log).expect("log");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains('\x1b'), "a log file gets no colour codes:\n{log}");
    assert!(log.contains("second signal: stopping at once"), "{log}");
    assert!(!log.contains("worker drained"), "{log}");
    assert!(!log.contains("no ModelBackends configured"), "a ModelBackend is configured:\n{log}");

    // The control plane fails the Run over, as for any Worker it lost.
    let got = cluster.wait_terminal(&task_id, WAIT).await;
    assert_eq!(status_of(&got), TaskStatus::Failed, "{:?}", got.runs);
    let error = got.runs[0].error.as_deref().unwrap_or_default();
    assert!(error.starts_with("worker bin-2 lost"), "{error}");
}
