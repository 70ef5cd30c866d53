//! Group commit: a change is acknowledged only after a flush that started
//! after it committed, and one flush carries every change committed while
//! the previous flush ran.
//!
//! Whoever committed something hands the committer thread an
//! acknowledgement to deliver (the applier hands over a whole batch at once).
//! The committer loops: it takes every acknowledgement waiting, flushes the
//! database once (sled's log: the buffers not yet written are written,
//! then one `sync_file_range` over the log file waits for the disk), then
//! delivers them.
//!
//! Once a flush has failed, the committer acknowledges nothing more, and
//! the applier asks [`CommitHandle::failed`] before each batch and applies
//! none: a change would be acknowledged with an error, so it must change
//! nothing. (The changes applied before the failure was known get the
//! error too; whether they reached the disk is unknown.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use taskrun_store::{Error, Result};
use tokio::sync::oneshot;

/// Delivered after the flush: `Ok` if it succeeded, else why not.
pub(crate) type Ack = Box<dyn FnOnce(std::result::Result<(), &str>) + Send>;

#[derive(Default)]
struct State {
    acks: Vec<Ack>,
    /// Counted like the acks they stand for, for the stats.
    writes: u64,
    shutdown: bool,
    /// Set for good once a flush failed (nothing is acknowledged after it)
    /// or a batch could not be written (nothing is applied after it).
    failed: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    flushes: AtomicU64,
    acks: AtomicU64,
    /// Tests: every flush from now on fails.
    #[cfg(test)]
    fail_flushes: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes and syncs sled's log.
    fn flush(&self, db: &sled::Db) -> std::result::Result<(), String> {
        #[cfg(test)]
        if self.fail_flushes.load(Ordering::SeqCst) {
            return Err("injected flush failure".to_owned());
        }
        db.flush().map(drop).map_err(|e| e.to_string())
    }
}

/// Hands acknowledgements to the committer thread.
#[derive(Clone)]
pub(crate) struct CommitHandle {
    shared: Arc<Shared>,
}

/// The committer thread.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("flushes", &self.shared.flushes)
            .field("acks", &self.shared.acks)
            .finish_non_exhaustive()
    }
}

impl Committer {
    pub(crate) fn start(db: sled::Db) -> Result<Committer> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            wake: Condvar::new(),
            flushes: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            #[cfg(test)]
            fail_flushes: std::sync::atomic::AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("taskrun-store-commit".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, &db)
            })
            .map_err(|e| Error::Storage(Box::new(e)))?;
        Ok(Committer { shared, thread: Mutex::new(Some(thread)) })
    }

    pub(crate) fn handle(&self) -> CommitHandle {
        CommitHandle { shared: self.shared.clone() }
    }

    /// Waits until everything committed before this call is on disk.
    pub(crate) async fn durable(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.handle().after_flush(
            1,
            Box::new(move |result| {
                let _ = tx.send(result.map_err(str::to_owned));
            }),
        );
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::storage(format!("flush failed: {e}"))),
            Err(_) => Err(Error::storage("store closed before the flush")),
        }
    }

    /// (flushes, writes acknowledged) so far.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (self.shared.flushes.load(Ordering::Relaxed), self.shared.acks.load(Ordering::Relaxed))
    }

    /// Tests: makes every flush from now on fail, as a failing disk would.
    #[cfg(test)]
    pub(crate) fn fail_flushes(&self) {
        self.shared.fail_flushes.store(true, Ordering::SeqCst);
    }
}

impl CommitHandle {
    /// Why the store takes no more changes, once it does not: a flush
    /// failed (from then on nothing is acknowledged, so nothing may be
    /// applied) or a batch could not be written.
    pub(crate) fn failed(&self) -> Option<String> {
        self.shared.lock().failed.clone()
    }

    /// Stops the store taking changes, as a failed flush does. What was
    /// applied before still gets its flush.
    pub(crate) fn stop_changes(&self, error: &str) {
        self.shared.lock().failed.get_or_insert_with(|| error.to_owned());
    }

    /// Delivers `ack` after the next flush; `writes` is how many writes it
    /// acknowledges.
    pub(crate) fn after_flush(&self, writes: u64, ack: Ack) {
        let mut state = self.shared.lock();
        if let Some(failed) = &state.failed {
            let failed = failed.clone();
            drop(state);
            ack(Err(&failed));
            return;
        }
        state.acks.push(ack);
        state.writes += writes;
        drop(state);
        self.shared.wake.notify_one();
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            // The thread only panics if sled does; nothing is left to do then.
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, db: &sled::Db) {
    loop {
        let (acks, writes) = {
            let mut state = shared.lock();
            while state.acks.is_empty() && !state.shutdown {
                state = shared.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.acks.is_empty() {
                break;
            }
            let writes = std::mem::take(&mut state.writes);
            (std::mem::take(&mut state.acks), writes)
        };
        match shared.flush(db) {
            Ok(()) => {
                shared.flushes.fetch_add(1, Ordering::Relaxed);
                shared.acks.fetch_add(writes, Ordering::Relaxed);
                for ack in acks {
                    ack(Ok(()));
                }
            }
            Err(error) => {
                tracing::error!(error = %error, "sled flush failed; the store acknowledges no write from now on");
                shared.lock().failed.get_or_insert_with(|| format!("a flush failed: {error}"));
                for ack in acks {
                    ack(Err(&error));
                }
            }
        }
    }
    // Whatever is committed but not yet flushed goes to disk too.
    if let Err(e) = shared.flush(db) {
        tracing::error!(error = %e, "final sled flush failed");
    }
}
