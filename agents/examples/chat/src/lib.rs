//! Asks a ModelBackend and streams its answer: every token is emitted as the
//! provider produces it, and the whole text is returned as
//! `{"text": ..., "tokens": n}`.
//!
//! Input: `{"prompt": "...", "system": "...", "backend": "...", "max_tokens": n}`
//! (only `prompt` is required).

use serde::Deserialize;
use taskrun_agent_sdk::{Agent, Error, emit, export_agent, log, model};

#[derive(Deserialize)]
struct Input {
    prompt: String,
    system: Option<String>,
    backend: Option<String>,
    max_tokens: Option<u32>,
}

struct Chat;

impl Agent for Chat {
    fn run(input: String) -> Result<String, Error> {
        let input: Input = serde_json::from_str(&input).map_err(|e| Error::permanent(format!("bad input: {e}")))?;
        let mut request = model::Request::user(&input.prompt);
        if let Some(system) = &input.system {
            request = request.system(system);
        }
        if let Some(backend) = &input.backend {
            request = request.backend(backend);
        }
        if let Some(max_tokens) = input.max_tokens {
            request = request.max_tokens(max_tokens);
        }
        let mut text = String::new();
        let mut tokens = 0u32;
        for token in model::stream(&request)? {
            let token = token?;
            emit(&token);
            text.push_str(&token);
            tokens += 1;
        }
        log::info(&format!("streamed {tokens} tokens"));
        Ok(serde_json::json!({ "text": text, "tokens": tokens }).to_string())
    }
}

export_agent!(Chat);
