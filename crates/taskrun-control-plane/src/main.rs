//! `taskrun-control-plane`: serves the TaskRun API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use taskrun_control_plane::config::StoreKind;
use taskrun_control_plane::{Config, Server};
use tracing::info;

/// mimalloc: fewer cycles in malloc/free than glibc under many small,
/// short-lived allocations across threads (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The TaskRun control plane: keeps Tasks and places their Runs on Workers.
///
/// Settings come from the TOML file given with --config, then from the
/// environment (TASKRUN_*), then from flags; later ones win.
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
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
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
    let server = Server::start(config).await.context("starting the control plane")?;
    // The one line scripts wait for.
    info!(addr = %server.addr(), "ready");
    shutdown_signal().await;
    info!("shutting down");
    server.shutdown().await.context("shutting down")?;
    Ok(())
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
