//! Builds the `agents/` workspace for wasm32-wasip2 and writes
//! `$OUT_DIR/artifacts.rs` with one path constant per component.
//!
//! Modeled on wasmtime's `crates/test-programs/artifacts/build.rs`: the inner
//! cargo gets its own target dir and none of the environment the outer build
//! leaks into build scripts (flags, wrappers, profile and target settings).

// A build script talks to cargo through stdout.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().and_then(Path::parent).expect("crate lives at <root>/crates/<name>").to_path_buf();
    let agents = root.join("agents");
    let target_dir = agents.join("target");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    watch(&agents, &target_dir);
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let artifacts = build(&agents, &target_dir);
    let mut code = String::new();
    for (name, (path, _)) in &artifacts {
        let ident = name.to_uppercase().replace('-', "_");
        writeln!(code, "/// The `{name}` agent's component.").unwrap();
        writeln!(code, "pub const {ident}: &str = {:?};", path.display().to_string()).unwrap();
    }
    writeln!(code, "/// Every agent under `agents/`, by crate name.").unwrap();
    writeln!(code, "pub const ALL: &[Artifact] = &[").unwrap();
    for (name, (path, manifest)) in &artifacts {
        writeln!(
            code,
            "    Artifact {{ name: {name:?}, path: {:?}, manifest: {:?} }},",
            path.display().to_string(),
            manifest.display().to_string()
        )
        .unwrap();
    }
    writeln!(code, "];").unwrap();
    writeln!(
        code,
        "/// Calls `$mac!(name)` once per agent (crate name in snake case), so a\n\
         /// test suite can require a test for every agent at compile time."
    )
    .unwrap();
    writeln!(code, "#[macro_export]\nmacro_rules! foreach_agent {{\n    ($mac:ident) => {{").unwrap();
    for name in artifacts.keys() {
        writeln!(code, "        $mac!({});", name.replace('-', "_")).unwrap();
    }
    writeln!(code, "    }};\n}}").unwrap();
    fs::write(out_dir.join("artifacts.rs"), code).expect("write artifacts.rs");
}

/// Builds every agent and returns crate name → (component path, manifest).
///
/// Lean agents (those that take the SDK with its `lean` feature, i.e.
/// `#![no_std]`) build in their own cargo invocation: features unify
/// across one build, and the SDK's `std` and `lean` exclude each other.
fn build(agents: &Path, target_dir: &Path) -> BTreeMap<String, (PathBuf, PathBuf)> {
    let lean = lean_agents(agents);
    let mut everything_else = vec!["--workspace".to_owned()];
    for name in &lean {
        everything_else.extend(["--exclude".to_owned(), name.clone()]);
    }
    let mut artifacts = build_packages(agents, target_dir, &everything_else);
    if !lean.is_empty() {
        let packages: Vec<String> = lean.iter().flat_map(|name| ["-p".to_owned(), name.clone()]).collect();
        artifacts.extend(build_packages(agents, target_dir, &packages));
    }
    artifacts
}

/// The agents whose dependency on `taskrun-agent-sdk` enables `lean`.
fn lean_agents(agents: &Path) -> Vec<String> {
    let mut cmd = inner_cargo(agents);
    cmd.args(["metadata", "--format-version=1", "--no-deps"]).stderr(Stdio::inherit());
    let output = cmd.output().expect("spawn cargo metadata for agents/");
    if !output.status.success() {
        panic!("cargo metadata in agents/ failed ({})", output.status);
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata output is JSON");
    let mut lean = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let takes_lean_sdk = package["dependencies"].as_array().into_iter().flatten().any(|d| {
            d["name"] == "taskrun-agent-sdk"
                && d["features"].as_array().is_some_and(|features| features.iter().any(|f| f == "lean"))
        });
        if takes_lean_sdk && let Some(name) = package["name"].as_str() {
            lean.push(name.to_owned());
        }
    }
    lean
}

/// Runs the inner cargo on `packages` and returns what it built.
fn build_packages(agents: &Path, target_dir: &Path, packages: &[String]) -> BTreeMap<String, (PathBuf, PathBuf)> {
    let mut cmd = inner_cargo(agents);
    cmd.arg("build")
        .arg("--release")
        .args(packages)
        .arg(format!("--target={TARGET}"))
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());

    let output = cmd.output().expect("spawn cargo for agents/");
    if !output.status.success() {
        panic!(
            "building agents/ for {TARGET} failed ({}); if the target is missing, run \
             `rustup target add {TARGET}`",
            output.status
        );
    }

    let mut artifacts = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = msg["target"]["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if !is_cdylib {
            continue;
        }
        let Some(name) = msg["target"]["name"].as_str() else {
            continue;
        };
        let manifest = PathBuf::from(msg["manifest_path"].as_str().unwrap_or_default());
        let wasm = msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"))
            .map(PathBuf::from);
        let Some(wasm) = wasm else {
            panic!("agent {name} produced no .wasm file");
        };
        artifacts.insert(name.replace('_', "-"), (wasm, manifest));
    }
    if artifacts.is_empty() {
        panic!("building agents/ produced no components");
    }
    artifacts
}

/// The cargo that runs this build, in `agents/`, with a scrubbed
/// environment.
fn inner_cargo(agents: &Path) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(agents);
    scrub_env(&mut cmd);
    cmd
}

/// Leaves the inner cargo only the environment a plain shell would give it
/// (plus registry/network settings and the jobserver, which keeps the two
/// builds within one machine's share of parallel work).
fn scrub_env(cmd: &mut Command) {
    const KEEP: &[&str] = &["CARGO_HOME", "CARGO_MAKEFLAGS"];
    const KEEP_PREFIXES: &[&str] = &["CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTRIES_", "CARGO_REGISTRY_"];
    const REMOVE: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
        "NUM_JOBS",
    ];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let cargo_var =
            key.starts_with("CARGO_") && !KEEP.contains(&key) && !KEEP_PREFIXES.iter().any(|p| key.starts_with(p));
        if cargo_var || key.starts_with("__CARGO") || REMOVE.contains(&key) {
            cmd.env_remove(key);
        }
    }
}

/// Asks cargo to rerun this script when a file of the agents workspace
/// changes, leaving out its target dir (which the build itself changes).
/// Directories are not watched as such: cargo would scan them whole,
/// target dir included. A new agent crate changes `agents/Cargo.toml`.
fn watch(dir: &Path, skip: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == skip || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            watch(&path, skip);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
