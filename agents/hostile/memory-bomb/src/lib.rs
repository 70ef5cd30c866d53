//! Allocates (and touches) memory 1 MiB at a time.
//!
//! Input `{"mib": n}` stops after n MiB and returns `{"allocated_mib": n}`;
//! any other input never stops on its own, so only the memory cap ends it.

use taskrun_agent_sdk::{Agent, Error, export_agent};

struct MemoryBomb;

impl Agent for MemoryBomb {
    fn run(input: String) -> Result<String, Error> {
        let limit = serde_json::from_str::<serde_json::Value>(&input)
            .ok()
            .and_then(|v| v.get("mib").and_then(serde_json::Value::as_u64));
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            if limit.is_some_and(|n| blocks.len() as u64 >= n) {
                return Ok(format!("{{\"allocated_mib\":{}}}", blocks.len()));
            }
            blocks.push(vec![0xA5; 1 << 20]);
            core::hint::black_box(&blocks);
        }
    }
}

export_agent!(MemoryBomb);
