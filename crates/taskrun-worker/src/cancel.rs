use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Stops a Run from outside. Clones share one flag: hand one clone to
/// [`RunRequest`](crate::RunRequest), keep another, and call
/// [`cancel`](CancelToken::cancel) to make the running agent stop (within
/// one epoch tick while it computes; within ~10 ms while it waits in a host
/// call, a ModelBackend call on a stalled server included).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Asks the Run to stop. Idempotent.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
