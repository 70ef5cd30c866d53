//! `cargo xtask <command>`; see `cargo xtask help`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => xtask::test(&args[1..]),
        Some("tidy") => xtask::tidy::check_all(&xtask::project_root()).map(|()| println!("tidy: ok")),
        Some("setup") => xtask::setup(),
        Some("demo") => xtask::demo(),
        _ => {
            println!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 setup   install what the build needs (the wasm32-wasip2 target)\n  \
                 demo    control plane (sled) + Worker on this machine; publish echo, run a Task, watch it\n  \
                 test    setup, then fmt check, clippy -D warnings and every test (slow suites included)\n  \
                 tidy    check the architecture invariants and vocabulary"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
