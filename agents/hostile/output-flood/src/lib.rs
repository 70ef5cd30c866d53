//! Floods its output.
//!
//! - `{"via": "emit"}` (or anything else): emits 64 KiB chunks forever, so
//!   only the Run's output limit stops it.
//! - `{"via": "stdout", "bytes": n}` / `{"via": "stderr", "bytes": n}`:
//!   prints n bytes, then returns `{"printed": n}` (the Run's log keeps
//!   what fits).

use std::io::Write;

use taskrun_agent_sdk::{Agent, Error, emit, export_agent};

struct OutputFlood;

impl Agent for OutputFlood {
    fn run(input: String) -> Result<String, Error> {
        let input: serde_json::Value = serde_json::from_str(&input).unwrap_or_default();
        let bytes = input.get("bytes").and_then(|b| b.as_u64()).unwrap_or(0) as usize;
        let line = "flood ".repeat(10) + "\n";
        match input.get("via").and_then(|v| v.as_str()) {
            Some(via @ ("stdout" | "stderr")) => {
                let mut printed = 0;
                while printed < bytes {
                    let n = line.len().min(bytes - printed);
                    let piece = &line.as_bytes()[..n];
                    let written = if via == "stdout" {
                        std::io::stdout().write_all(piece)
                    } else {
                        std::io::stderr().write_all(piece)
                    };
                    written.map_err(|e| Error::new(format!("{via}: {e}")))?;
                    printed += n;
                }
                // std's stdout is line-buffered: push out a last partial line.
                std::io::stdout().flush().map_err(|e| Error::new(format!("{via}: {e}")))?;
                Ok(format!("{{\"printed\":{printed}}}"))
            }
            _ => {
                let chunk = "x".repeat(64 * 1024);
                loop {
                    emit(&chunk);
                }
            }
        }
    }
}

export_agent!(OutputFlood);
