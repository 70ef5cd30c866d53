//! Tries to reach the host's file system and reports what happened:
//! `{"attempts": [{"what": ..., "ok": bool, "detail": ...}]}`.
//! In a Worker's sandbox every attempt must fail.

use serde_json::json;
use taskrun_agent_sdk::{Agent, Error, export_agent};

fn attempt<T: std::fmt::Debug>(what: &str, result: std::io::Result<T>) -> serde_json::Value {
    match result {
        Ok(value) => json!({ "what": what, "ok": true, "detail": format!("{value:?}") }),
        Err(e) => json!({ "what": what, "ok": false, "detail": e.to_string() }),
    }
}

struct ReadFile;

impl Agent for ReadFile {
    fn run(_input: String) -> Result<String, Error> {
        let attempts = vec![
            attempt("read /etc/passwd", std::fs::read_to_string("/etc/passwd")),
            attempt("read /etc/hostname", std::fs::read("/etc/hostname")),
            attempt("read Cargo.toml", std::fs::read("Cargo.toml")),
            attempt("list /", std::fs::read_dir("/").map(|d| d.count())),
            attempt("list .", std::fs::read_dir(".").map(|d| d.count())),
            attempt("create /tmp/taskrun-hostile", std::fs::write("/tmp/taskrun-hostile", b"pwned")),
        ];
        Ok(json!({ "attempts": attempts }).to_string())
    }
}

export_agent!(ReadFile);
