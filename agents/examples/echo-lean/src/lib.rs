//! The `echo` agent built lean: `#![no_std]`, the SDK's allocator and panic
//! handler. Emits its input back in chunks of up to 16 characters, then
//! returns it. Its component imports `taskrun:agent/output` and nothing else.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use taskrun_agent_sdk::{Agent, Error, emit, export_agent};

struct Echo;

impl Agent for Echo {
    fn run(input: String) -> Result<String, Error> {
        let chars: Vec<char> = input.chars().collect();
        for chunk in chars.chunks(16) {
            emit(&chunk.iter().collect::<String>());
        }
        Ok(input)
    }
}

export_agent!(Echo);
