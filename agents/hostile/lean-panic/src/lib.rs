//! A lean agent (`#![no_std]`, the SDK's allocator and panic handler) that
//! fills a heap block of as many KiB as its input says (a JSON number),
//! more than the allocator's arena holds, then panics. It exercises the
//! lean runtime's paths: growing memory, refused growth, the panic handler.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec;

use taskrun_agent_sdk::{Agent, Error, export_agent};

struct LeanPanic;

impl Agent for LeanPanic {
    fn run(input: String) -> Result<String, Error> {
        let kib: usize = input.trim().parse().map_err(|_| Error::new("input must be a number of KiB"))?;
        let block = vec![0x5au8; kib * 1024];
        let sum: usize = block.iter().map(|b| usize::from(*b)).sum();
        panic!("lean agent panicked on purpose after filling {kib} KiB (sum {sum})");
    }
}

export_agent!(LeanPanic);
