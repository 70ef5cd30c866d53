//! The `taskrun` command's implementation. The binary (`src/main.rs`)
//! parses the command line with [`Cli`], calls [`run`] and turns its error
//! into one line on stderr and an exit code ([`error::exit_code`]).
//!
//! This library exists for the binary and its tests; it is not an API for
//! other crates, so it uses anyhow like a binary does. Errors meant for the
//! user are [`error::RemoteError`] (the control plane said no) and
//! [`error::UsageError`] (the command line is wrong).
//!
//! - [`cli`]: every command and flag (clap derive);
//! - [`client`]: the connection to the control plane;
//! - `task`, `watch`, `keys`, `agent`: one module per command group;
//! - [`output`], [`parse`]: formatting for people, parsing flag values.

mod agent;
pub mod cli;
pub mod client;
pub mod error;
mod keys;
pub mod output;
pub mod parse;
mod task;
mod watch;

use std::process::ExitCode;

pub use cli::Cli;

use crate::cli::Command;
use crate::client::{ConnectOptions, Connection};

/// Runs one command. `Ok` carries the exit code for commands whose outcome
/// is not only success (`task watch`); every failure is an `Err`.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let options = ConnectOptions { server: cli.server };
    let connect = || Connection::open(&options);
    match cli.command {
        Command::Task(command) => task::run(connect()?, command).await,
        Command::Keys(command) => keys::run(command),
        Command::Agent(command) => agent::run(connect, command).await,
    }
}
