//! Panics (a Rust panic aborts the instance with a wasm trap).

use taskrun_agent_sdk::{Agent, Error, export_agent};

struct Panic;

impl Agent for Panic {
    fn run(input: String) -> Result<String, Error> {
        panic!("hostile agent panicked on purpose (input was {} bytes)", input.len());
    }
}

export_agent!(Panic);
