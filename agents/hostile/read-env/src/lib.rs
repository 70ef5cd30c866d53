//! Reports the environment it sees:
//! `{"vars": {name: value}, "args": [...], "home": ..., "path": ...}`.

use serde_json::json;
use taskrun_agent_sdk::{Agent, Error, export_agent};

struct ReadEnv;

impl Agent for ReadEnv {
    fn run(_input: String) -> Result<String, Error> {
        let vars: serde_json::Map<String, serde_json::Value> =
            std::env::vars().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
        let args: Vec<String> = std::env::args().collect();
        Ok(json!({
            "vars": vars,
            "args": args,
            "home": std::env::var("HOME").ok(),
            "path": std::env::var("PATH").ok(),
        })
        .to_string())
    }
}

export_agent!(ReadEnv);
