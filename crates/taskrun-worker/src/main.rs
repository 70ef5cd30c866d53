//! `taskrun-worker`: runs agents for a TaskRun control plane.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use taskrun_worker::{Worker, WorkerConfig};
use tracing::{info, warn};

/// mimalloc: fewer cycles in malloc/free than glibc under many small,
/// short-lived allocations across threads (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A TaskRun Worker: holds a stream to the control plane, runs the Runs it
/// is given in a wasmtime sandbox, streams their output back.
///
/// Settings come from the TOML file given with --config; flags and
/// TASKRUN_* environment variables override it. Relative paths in the file
/// are read from the file's directory; those given as flags or variables,
/// from the working directory.
///
/// SIGTERM or Ctrl-C drains the Worker: it takes no new Runs, lets those in
/// flight finish for up to shutdown_grace_secs, then exits 0. A second
/// signal stops it at once.
#[derive(Debug, Parser)]
#[command(name = "taskrun-worker", version)]
struct Args {
    /// TOML config file (see docs/worker.md).
    #[arg(long, env = "TASKRUN_WORKER_CONFIG")]
    config: PathBuf,
    /// The control plane's URL, e.g. http://127.0.0.1:7070.
    #[arg(long, env = "TASKRUN_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// Plaintext gRPC to a control plane on this machine.
    #[arg(long, env = "TASKRUN_INSECURE")]
    insecure: bool,
    /// Runs at once.
    #[arg(long)]
    slots: Option<u32>,
    /// Directory for the compiled-agent cache.
    #[arg(long, env = "TASKRUN_WORKER_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file or journal
        // gets plain text (and NO_COLOR is honoured).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

async fn run(args: Args) -> Result<()> {
    let mut config = WorkerConfig::from_file(&args.config)?;
    if let Some(url) = args.control_plane {
        config.control_plane = url;
    }
    if args.insecure {
        config.insecure = true;
    }
    if let Some(slots) = args.slots {
        config.slots = slots;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    // Listening before the Worker starts: from here on a signal drains it.
    let mut signals = Signals::new();
    let worker = Worker::new(config).context("cannot start the Worker")?;
    let running = {
        let worker = worker.clone();
        tokio::spawn(async move { worker.run().await })
    };
    let signal = signals.next().await;
    info!(signal, "shutting down gracefully (a second SIGTERM or Ctrl-C stops at once)");
    tokio::select! {
        _ = worker.drain() => {}
        signal = signals.next() => {
            warn!(signal, "second signal: stopping at once; the runs in flight are failed over by the control plane");
            worker.shut_down();
        }
    }
    running.await.context("worker task")??;
    info!("worker exiting");
    Ok(())
}

/// Prints `error: <message>` on stderr as one line and returns a failing
/// exit code. No `Caused by:` list, no backtrace.
fn report(error: &anyhow::Error) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {}", error_line(error));
    ExitCode::FAILURE
}

/// `error` and its causes on one line, each said once
/// ([`taskrun_core::error_line`]).
fn error_line(error: &anyhow::Error) -> String {
    taskrun_core::error_line(&**error)
}

/// SIGTERM and Ctrl-C (SIGINT), listened to from creation on, so that a
/// second signal is seen however soon it follows the first.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        let signals = {
            use tokio::signal::unix::{SignalKind, signal};
            Signals { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
        };
        #[cfg(not(unix))]
        let signals = Signals {};
        signals
    }

    /// The next SIGTERM or Ctrl-C; its name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.term.is_some() || self.int.is_some() {
                return tokio::select! {
                    () = recv(self.term.as_mut()) => "SIGTERM",
                    () = recv(self.int.as_mut()) => "SIGINT",
                };
            }
        }
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line_that_say_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("{path}: {source}")]
        struct Doubled {
            path: &'static str,
            source: std::io::Error,
        }
        let error = anyhow::Error::new(Doubled { path: "w.toml", source: std::io::Error::other("disk on fire") })
            .context("cannot start the Worker");
        assert_eq!(error_line(&error), "cannot start the Worker: w.toml: disk on fire");
        let error = anyhow::anyhow!("line one\n  line two").context("outer");
        assert_eq!(error_line(&error), "outer: line one line two");
    }
}
