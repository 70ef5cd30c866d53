//! `taskrun-control-plane`: serves the TaskRun API.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use taskrun_control_plane::config::StoreKind;
use taskrun_control_plane::{Config, Error, Server};
use tracing::info;

/// mimalloc: fewer cycles in malloc/free than glibc under many small,
/// short-lived allocations across threads (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The TaskRun control plane: keeps Tasks and places their Runs on Workers.
///
/// Settings come from the TOML file given with --config, then from the
/// environment (TASKRUN_*), then from flags; later ones win. Relative paths
/// in the file are read from the file's directory; those given as flags or
/// variables, from the working directory.
#[derive(Debug, Parser)]
#[command(name = "taskrun-control-plane", version)]
struct Args {
    /// TOML config file.
    #[arg(long, env = "TASKRUN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:7070.
    #[arg(long, env = "TASKRUN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the sled store.
    #[arg(long, env = "TASKRUN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep state in memory only (lost at exit): for tests and demos.
    #[arg(long)]
    memory: bool,
    /// Serve plaintext gRPC (loopback addresses only).
    #[arg(long, env = "TASKRUN_INSECURE")]
    insecure: bool,
    /// Trust policy (TOML) that published agents must verify against.
    #[arg(long, env = "TASKRUN_TRUST_POLICY")]
    trust_policy: Option<PathBuf>,
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
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| config_error(path, e))?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.memory {
        config.store = StoreKind::Memory;
    }
    if args.insecure {
        config.transport.insecure = true;
    }
    if let Some(policy) = args.trust_policy {
        config.trust_policy = Some(policy);
    }
    let server = Server::start(config).await.map_err(start_error)?;
    // The one line scripts wait for.
    info!(addr = %server.addr(), "ready");
    shutdown_signal().await;
    info!("shutting down");
    server.shutdown().await.context("shutting down")?;
    Ok(())
}

/// A config file that did not load, saying which and what to do.
fn config_error(path: &Path, error: Error) -> anyhow::Error {
    match &error {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "config file {}: no such file (give --config or TASKRUN_CONFIG an existing TOML file, or leave it out \
             for the defaults)",
            path.display()
        ),
        _ => anyhow::Error::new(error),
    }
}

/// Why the control plane did not start, with what to do where we know.
fn start_error(error: Error) -> anyhow::Error {
    match &error {
        Error::Bind { addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "cannot listen on {addr}: the address is in use (is another control plane running? stop it, or \
             choose another address with --listen, TASKRUN_LISTEN or listen in the config)"
        ),
        _ => anyhow::Error::new(error).context("cannot start the control plane"),
    }
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

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line_that_say_each_cause_once_and_what_to_do() {
        let path = Path::new("/nonexistent/taskrun.toml");
        let missing = Config::from_file(path).expect_err("no such file");
        assert_eq!(
            error_line(&config_error(path, missing)),
            "config file /nonexistent/taskrun.toml: no such file (give --config or TASKRUN_CONFIG an existing TOML \
             file, or leave it out for the defaults)"
        );

        // `Error::Io` says its source and also names it as its cause.
        let io = Error::Io { path: "x.toml".into(), source: std::io::Error::other("disk on fire") };
        assert_eq!(error_line(&start_error(io)), "cannot start the control plane: x.toml: disk on fire");

        let addr: SocketAddr = "127.0.0.1:7070".parse().expect("addr");
        let in_use = Error::Bind { addr, source: std::io::ErrorKind::AddrInUse.into() };
        assert_eq!(
            error_line(&start_error(in_use)),
            "cannot listen on 127.0.0.1:7070: the address is in use (is another control plane running? stop it, or \
             choose another address with --listen, TASKRUN_LISTEN or listen in the config)"
        );
        let refused = Error::Bind { addr, source: std::io::ErrorKind::PermissionDenied.into() };
        let line = error_line(&start_error(refused));
        assert_eq!(line.matches("permission denied").count(), 1, "{line}");
    }
}
