//! Sleeps (inside a WASI host call, where epoch interruption cannot reach
//! it), then returns `{"slept_ms": n}`.
//!
//! Input `{"ms": n}`; default one hour.

use std::time::{Duration, Instant};

use taskrun_agent_sdk::{Agent, Error, export_agent};

struct Sleep;

impl Agent for Sleep {
    fn run(input: String) -> Result<String, Error> {
        let ms = serde_json::from_str::<serde_json::Value>(&input)
            .ok()
            .and_then(|v| v.get("ms").and_then(serde_json::Value::as_u64))
            .unwrap_or(3_600_000);
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(ms));
        Ok(format!("{{\"slept_ms\":{}}}", start.elapsed().as_millis()))
    }
}

export_agent!(Sleep);
