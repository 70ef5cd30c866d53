//! Recurses without bound until the wasm stack overflows.

use taskrun_agent_sdk::{Agent, Error, export_agent};

#[inline(never)]
#[allow(unconditional_recursion)]
fn descend(depth: u64) -> u64 {
    // Small frames and no locals in linear memory: the native wasm stack
    // overflows (a trap), not the shadow stack.
    core::hint::black_box(descend(core::hint::black_box(depth + 1))) + 1
}

struct Recursion;

impl Agent for Recursion {
    fn run(_input: String) -> Result<String, Error> {
        Ok(descend(0).to_string())
    }
}

export_agent!(Recursion);
