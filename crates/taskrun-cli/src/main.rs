//! `taskrun`: the TaskRun command line. Parses, runs, and turns a failure
//! into one line on stderr and an exit code (documented in docs/cli.md and
//! in `taskrun --help`).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use taskrun_cli::error::{self, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = match taskrun_cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version come here too, and are not errors.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the async runtime: {e}");
            return ExitCode::from(error::EXIT_ERROR);
        }
    };
    match runtime.block_on(taskrun_cli::run(cli)) {
        Ok(code) => code,
        Err(e) if error::is_broken_pipe(&e) => error::exit_code(&e),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", error::message(&e));
            error::exit_code(&e)
        }
    }
}
