//! Shared helpers: one sandbox for most tests, agent loading, output capture.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use taskrun_core::AgentDigest;
use taskrun_worker::model::{BackendConfig, ModelBackendsConfig, ProviderKind};
use taskrun_worker::{ModelBackends, OutputSink, Prepared, RunLimits, Sandbox, SandboxConfig};

/// One sandbox shared by the tests that don't count compiles. Its cache
/// lives in the target dir, so a rerun of the suite compiles nothing.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sandbox-cache");
        Sandbox::new(SandboxConfig { cache_dir: Some(cache), max_concurrent_runs: 32, ..SandboxConfig::default() })
            .expect("sandbox")
    })
}

pub fn bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Prepares the agent at `path` in the shared sandbox.
pub fn prepare(path: &str) -> Prepared {
    prepare_in(sandbox(), path)
}

pub fn prepare_in(sandbox: &Sandbox, path: &str) -> Prepared {
    let bytes = bytes(path);
    sandbox.prepare(&AgentDigest::of(&bytes), &bytes).unwrap_or_else(|e| panic!("preparing {path}: {e}"))
}

/// Limits for tests: short deadline, modest memory.
pub fn limits() -> RunLimits {
    RunLimits {
        deadline: Duration::from_secs(20),
        memory_bytes: 32 << 20,
        output_bytes: 1 << 20,
        model_calls: 8,
        result_bytes: 1 << 20,
    }
}

/// Collects emitted chunks.
#[derive(Debug, Clone, Default)]
pub struct Chunks(Arc<Mutex<Vec<String>>>);

impl Chunks {
    pub fn sink(&self) -> OutputSink {
        let chunks = self.0.clone();
        OutputSink::new(move |chunk| chunks.lock().unwrap().push(chunk))
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// One `echo` ModelBackend named `default`.
pub fn echo_backends() -> Arc<ModelBackends> {
    let config = ModelBackendsConfig { model_backends: vec![BackendConfig::new("default", ProviderKind::Echo)] };
    Arc::new(ModelBackends::from_config(&config).expect("echo backend"))
}

/// `Outcome::Completed` with `json`.
pub fn completed(json: &str) -> taskrun_worker::Outcome {
    taskrun_worker::Outcome::Completed(taskrun_core::Json::parse("result", json).expect("json"))
}

/// Runs the hostile agent at `path` while an echo Run goes on beside it,
/// and checks the echo Run was unaffected. Returns the hostile Run's
/// report and how long `run` took, as its caller saw it.
pub fn contained(path: &str, request: taskrun_worker::RunRequest) -> (taskrun_worker::RunReport, Duration) {
    let hostile = prepare(path);
    let echo = prepare(taskrun_agent_artifacts::ECHO);
    std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            let started = std::time::Instant::now();
            let report = sandbox().run(&hostile, request).expect("hostile run");
            (report, started.elapsed())
        });
        // Give the hostile Run time to get going, then run beside it.
        std::thread::sleep(Duration::from_millis(20));
        let input = r#"{"neighbour":"still fine"}"#;
        let report = sandbox().run(&echo, taskrun_worker::RunRequest::new(input).limits(limits())).expect("echo run");
        assert_eq!(report.outcome, completed(input), "the neighbouring Run");
        run.join().expect("hostile run thread")
    })
}

/// Awaits `run` while a ticker on the same runtime counts 10 ms sleeps:
/// how many ticks got through shows whether `run` let the runtime's other
/// tasks in. Returns `run`'s output and the ticks.
pub async fn ticks_while<F: Future>(run: F) -> (F::Output, u32) {
    let mut ticks = 0u32;
    let counting = async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks += 1;
        }
    };
    let output = tokio::select! {
        output = run => output,
        () = counting => unreachable!("the ticker never ends"),
    };
    (output, ticks)
}
