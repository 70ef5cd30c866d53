//! A Run's log: what the agent printed to stdout/stderr and what it logged
//! through the WIT `log` import, bounded by one byte budget.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How much a log record matters (the WIT `log.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Where a log record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogSource {
    Stdout,
    Stderr,
    /// The agent's `log` call.
    Agent(LogLevel),
}

/// One record: a `log` call, or a run of consecutive stdout/stderr writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub source: LogSource,
    pub text: String,
}

/// A finished Run's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunLogs {
    pub records: Vec<LogRecord>,
    /// Bytes left out because the log budget was used up.
    pub dropped_bytes: u64,
}

impl RunLogs {
    /// Everything the agent wrote to stdout that was kept.
    pub fn stdout(&self) -> String {
        self.text_of(LogSource::Stdout)
    }

    /// Everything the agent wrote to stderr that was kept (a Rust agent's
    /// panic message lands here).
    pub fn stderr(&self) -> String {
        self.text_of(LogSource::Stderr)
    }

    /// The agent's `log` calls, in order.
    pub fn agent_records(&self) -> impl Iterator<Item = (LogLevel, &str)> {
        self.records.iter().filter_map(|r| match r.source {
            LogSource::Agent(level) => Some((level, r.text.as_str())),
            _ => None,
        })
    }

    /// The end of what the agent wrote to stderr and logged at level
    /// error, in order, at most `max` bytes (cut between characters), with
    /// surrounding whitespace trimmed; `None` if there is none.
    pub fn last_words(&self, max: usize) -> Option<String> {
        let said: String = self
            .records
            .iter()
            .filter(|r| matches!(r.source, LogSource::Stderr | LogSource::Agent(LogLevel::Error)))
            .map(|r| r.text.trim())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        let mut start = said.len().saturating_sub(max);
        while !said.is_char_boundary(start) {
            start += 1;
        }
        let words = said[start..].trim();
        (!words.is_empty()).then(|| words.to_owned())
    }

    fn text_of(&self, source: LogSource) -> String {
        self.records.iter().filter(|r| r.source == source).map(|r| r.text.as_str()).collect()
    }
}

/// The log being written during a Run.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    budget: usize,
    used: usize,
    dropped: u64,
    records: Vec<(LogSource, Vec<u8>)>,
}

impl LogBuffer {
    pub(crate) fn new(budget: usize) -> LogBuffer {
        LogBuffer { budget, used: 0, dropped: 0, records: Vec::new() }
    }

    /// Appends what fits of `bytes`; a stdout/stderr write continues the
    /// previous record when that came from the same stream.
    pub(crate) fn push(&mut self, source: LogSource, bytes: &[u8]) {
        let take = bytes.len().min(self.budget - self.used);
        self.dropped += (bytes.len() - take) as u64;
        if take == 0 {
            return;
        }
        self.used += take;
        let kept = &bytes[..take];
        match self.records.last_mut() {
            Some((last, text)) if *last == source && !matches!(source, LogSource::Agent(_)) => {
                text.extend_from_slice(kept);
            }
            _ => self.records.push((source, kept.to_vec())),
        }
    }

    pub(crate) fn finish(&mut self) -> RunLogs {
        RunLogs {
            records: std::mem::take(&mut self.records)
                .into_iter()
                .map(|(source, text)| LogRecord { source, text: String::from_utf8_lossy(&text).into_owned() })
                .collect(),
            dropped_bytes: self.dropped,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SharedLogs(Arc<Mutex<LogBuffer>>);

impl SharedLogs {
    pub(crate) fn new(budget: usize) -> SharedLogs {
        SharedLogs(Arc::new(Mutex::new(LogBuffer::new(budget))))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LogBuffer> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent's stdout or stderr: takes every write (what does not fit
    /// in the budget is counted and dropped), so printing never fails or
    /// blocks the agent.
    pub(crate) fn pipe(&self, source: LogSource) -> LogPipe {
        LogPipe { logs: self.clone(), source }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LogPipe {
    logs: SharedLogs,
    source: LogSource,
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.logs.lock().push(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.logs.lock().push(self.source, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_stream_writes_and_drops_past_the_budget() {
        let mut logs = LogBuffer::new(10);
        logs.push(LogSource::Stdout, b"abc");
        logs.push(LogSource::Stdout, b"de");
        logs.push(LogSource::Agent(LogLevel::Info), b"hi");
        logs.push(LogSource::Stderr, b"0123456789");
        let logs = logs.finish();
        assert_eq!(logs.stdout(), "abcde");
        assert_eq!(logs.stderr(), "012");
        assert_eq!(logs.agent_records().collect::<Vec<_>>(), vec![(LogLevel::Info, "hi")]);
        assert_eq!(logs.dropped_bytes, 7);
    }
}
