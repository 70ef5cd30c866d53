//! The deterministic `echo` provider: answers with the last user message,
//! cut to `max_tokens` words and streamed word by word.

use std::collections::VecDeque;
use std::time::Duration;

use taskrun_core::ModelBackend;

use super::{CallContext, Completion, CompletionRequest, ModelError, Provider, TokenStream, last_user_text};

#[derive(Debug)]
pub struct EchoProvider {
    info: ModelBackend,
    token_delay: Duration,
}

impl EchoProvider {
    /// `token_delay` is a pause before each streamed token (zero: none).
    pub fn new(info: ModelBackend, token_delay: Duration) -> EchoProvider {
        EchoProvider { info, token_delay }
    }

    /// The answer's tokens: words with their trailing space, so that the
    /// tokens concatenate back to the text.
    fn tokens(request: &CompletionRequest) -> Result<VecDeque<String>, ModelError> {
        if request.max_tokens == 0 {
            return Err(ModelError::InvalidRequest("max-tokens must be greater than zero".into()));
        }
        Ok(last_user_text(request).split_inclusive(' ').take(request.max_tokens as usize).map(str::to_owned).collect())
    }
}

impl Provider for EchoProvider {
    fn info(&self) -> &ModelBackend {
        &self.info
    }

    fn complete(&self, request: &CompletionRequest, ctx: &CallContext) -> Result<Completion, ModelError> {
        ctx.check()?;
        let tokens = Self::tokens(request)?;
        let cut = tokens.len() as u64 == u64::from(request.max_tokens)
            && tokens.iter().map(String::len).sum::<usize>() < last_user_text(request).len();
        Ok(Completion {
            text: tokens.into_iter().collect(),
            finish_reason: Some(if cut { "length" } else { "stop" }.to_owned()),
        })
    }

    fn stream(&self, request: &CompletionRequest, ctx: &CallContext) -> Result<Box<dyn TokenStream>, ModelError> {
        ctx.check()?;
        Ok(Box::new(EchoStream { tokens: Self::tokens(request)?, delay: self.token_delay }))
    }
}

struct EchoStream {
    tokens: VecDeque<String>,
    delay: Duration,
}

impl TokenStream for EchoStream {
    fn next_token(&mut self, ctx: &CallContext) -> Result<Option<String>, ModelError> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        if !self.delay.is_zero() {
            ctx.sleep(self.delay)?;
        }
        ctx.check()?;
        Ok(self.tokens.pop_front())
    }
}
