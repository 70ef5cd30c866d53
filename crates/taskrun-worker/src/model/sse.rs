//! Server-sent events, as OpenAI-compatible servers stream completions:
//! `data: {json}` lines, events ended by a blank line, `data: [DONE]` last.
//! Sans-IO: fed one line at a time.

use serde::Deserialize;

use super::ModelError;

/// Collects the `data:` lines of one event.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds one line (its `\n` or `\r\n` may still be attached). Returns an
    /// event's data when the line ends one.
    pub(crate) fn line(&mut self, line: &str) -> Option<String> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return self.finish();
        }
        if line.starts_with(':') {
            return None; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        None // `event:`, `id:`, `retry:` carry nothing we use
    }

    /// Ends the stream: returns a last event not followed by a blank line.
    pub(crate) fn finish(&mut self) -> Option<String> {
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(std::mem::take(&mut self.data))
    }
}

/// What one event of a streamed chat completion says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StreamEvent {
    /// A piece of the answer.
    Token(String),
    /// Nothing to pass on (role announcement, usage, finish reason).
    Nothing,
    /// `[DONE]`: the answer is complete.
    Done,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) message: Option<String>,
}

/// Interprets the data of one event.
pub(crate) fn stream_event(data: &str) -> Result<StreamEvent, ModelError> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(StreamEvent::Done);
    }
    let chunk: Chunk =
        serde_json::from_str(data).map_err(|e| ModelError::Provider(format!("malformed stream event: {e}")))?;
    if let Some(error) = chunk.error {
        return Err(ModelError::Provider(error.message.unwrap_or_else(|| "error event without message".into())));
    }
    let content = chunk.choices.into_iter().next().and_then(|c| c.delta).and_then(|d| d.content).unwrap_or_default();
    if content.is_empty() { Ok(StreamEvent::Nothing) } else { Ok(StreamEvent::Token(content)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<String> {
        let mut parser = SseParser::default();
        let mut out: Vec<String> = text.split_inclusive('\n').filter_map(|l| parser.line(l)).collect();
        out.extend(parser.finish());
        out
    }

    #[test]
    fn splits_events_on_blank_lines() {
        let text = "data: {\"a\":1}\n\n: keep-alive\n\ndata: [DONE]\n\n";
        assert_eq!(events(text), vec!["{\"a\":1}", "[DONE]"]);
    }

    #[test]
    fn joins_multi_line_data_and_handles_crlf_and_no_space() {
        let text = "event: message\r\ndata:one\r\ndata: two\r\n\r\ndata: last";
        assert_eq!(events(text), vec!["one\ntwo", "last"]);
    }

    #[test]
    fn interprets_chunks() {
        let cases = [
            (r#"{"choices":[{"delta":{"role":"assistant"}}]}"#, Ok(StreamEvent::Nothing)),
            (r#"{"choices":[{"delta":{"content":"Hel"}}]}"#, Ok(StreamEvent::Token("Hel".into()))),
            (r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#, Ok(StreamEvent::Nothing)),
            (r#"{"choices":[],"usage":{"total_tokens":3}}"#, Ok(StreamEvent::Nothing)),
            (" [DONE] ", Ok(StreamEvent::Done)),
            (r#"{"error":{"message":"overloaded"}}"#, Err(ModelError::Provider("overloaded".into()))),
        ];
        for (data, expected) in cases {
            assert_eq!(stream_event(data), expected, "{data}");
        }
        assert!(matches!(stream_event("{not json"), Err(ModelError::Provider(m)) if m.contains("malformed")));
    }
}
