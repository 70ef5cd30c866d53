//! Paths of the guest agents under `agents/`, compiled to WebAssembly
//! components by this crate's build script.
//!
//! The build script runs `cargo build --release --target wasm32-wasip2` over
//! the `agents/` workspace (its own target dir, `agents/target`, so it never
//! waits on the outer build's lock) and generates one constant per agent:
//! the crate name in upper snake case (`echo` → [`ECHO`],
//! `hostile-busy-loop` → [`HOSTILE_BUSY_LOOP`]), holding the absolute path
//! of its `.wasm` component. [`ALL`] lists them all, so a test can check
//! that every agent is used.
//!
//! Tests and benchmarks depend on this crate; nothing shipped does.

/// One compiled guest agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Artifact {
    /// The agent crate's name, e.g. `echo`.
    pub name: &'static str,
    /// Absolute path of the component (`.wasm`).
    pub path: &'static str,
    /// Absolute path of the agent crate's `Cargo.toml`.
    pub manifest: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// The artifact of the agent crate named `name`.
pub fn find(name: &str) -> Option<&'static Artifact> {
    ALL.iter().find(|a| a.name == name)
}
