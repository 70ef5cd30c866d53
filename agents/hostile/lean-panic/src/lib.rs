//! A lean agent (`#![no_std]`, the SDK's allocator and panic handler) that
//! reads `{"fill_kib": n}` with `serde_json` (without `std`), fills a heap
//! block of n KiB, more than the allocator's arena holds, then panics. It
//! exercises the lean runtime's paths: JSON and string comparison without
//! libc, growing memory, refused growth, the panic handler.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec;

use taskrun_agent_sdk::{Agent, Error, export_agent};

struct LeanPanic;

impl Agent for LeanPanic {
    fn run(input: String) -> Result<String, Error> {
        let input: serde_json::Value =
            serde_json::from_str(&input).map_err(|e| Error::new(alloc::format!("input is not JSON: {e}")))?;
        let kib = input
            .get("fill_kib")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::new("input must be {\"fill_kib\": n}"))?;
        let kib = usize::try_from(kib).map_err(|_| Error::new("fill_kib is too large"))?;
        let block = vec![0x5au8; kib * 1024];
        let sum: usize = block.iter().map(|b| usize::from(*b)).sum();
        panic!("lean agent panicked on purpose after filling {kib} KiB (sum {sum})");
    }
}

export_agent!(LeanPanic);
