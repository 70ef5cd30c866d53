//! Project automation. `cargo xtask test` is the project's one test command:
//! it installs what a fresh machine lacks, then runs the format check,
//! clippy with warnings denied, and every test, slow suites included.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod demo;
pub mod tidy;

pub use demo::demo;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The toolchain pinned in rust-toolchain.toml.
fn pinned_toolchain(root: &Path) -> Result<String> {
    let text = std::fs::read_to_string(root.join("rust-toolchain.toml")).context("reading rust-toolchain.toml")?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("channel")
                .map(|r| r.trim_start_matches([' ', '=']).trim().trim_matches('"').to_owned())
        })
        .context("rust-toolchain.toml has no channel")
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {}", format_command(cmd));
    let status = cmd.status().with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("`{}` failed with {status}", format_command(cmd));
    }
    Ok(())
}

fn format_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Installs the wasm32-wasip2 target for the pinned toolchain (idempotent).
pub fn setup() -> Result<()> {
    let root = project_root();
    let toolchain = pinned_toolchain(&root)?;
    run(Command::new("rustup").args(["target", "add", "wasm32-wasip2", "--toolchain", &toolchain]))
}

/// setup, fmt check, clippy, tidy and every test.
pub fn test(extra: &[String]) -> Result<()> {
    let root = project_root();
    setup()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let in_root = |args: &[&str]| {
        let mut c = Command::new(&cargo);
        c.current_dir(&root).args(args);
        c
    };
    run(&mut in_root(&["fmt", "--all", "--", "--check"]))?;
    run(&mut in_root(&["fmt", "--all", "--manifest-path", "agents/Cargo.toml", "--", "--check"]))?;
    tidy::check_all(&root)?;
    println!("tidy: ok");
    run(&mut in_root(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // Every test target; benchmarks are built by clippy above and run
    // (in release) by `cargo bench`, not here.
    let mut test = in_root(&["test", "--workspace"]);
    test.args(extra);
    // Slow suites (crash rounds, end-to-end fault tests) run when this is set.
    test.env("TASKRUN_SLOW_TESTS", "1");
    run(&mut test)
}
