//! Sleeping inside a WASI call, where epoch interruption cannot reach.
//!
//! An agent that sleeps (`std::thread::sleep`, `poll` on a timer) blocks in
//! the host. The stock `wasi:clocks/monotonic-clock` timers would let it
//! sleep past its deadline and ignore cancellation, so the Worker shadows
//! `subscribe-duration` and `subscribe-instant` with timers that also wake
//! at the Run's deadline and on cancellation; the next epoch check then
//! stops the agent.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::HostMonotonicClock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::host::RunState;
use crate::CancelToken;

/// The `wasi:clocks/monotonic-clock` interface wasmtime-wasi 48 links (the
/// linker serves older 0.2.x imports from it too).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// How often a sleeping Run looks at its cancellation flag.
const CANCEL_POLL: Duration = Duration::from_millis(5);

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The monotonic clock agents see: nanoseconds since the Worker's first
/// Run, so the host can turn a `subscribe-instant` into an [`Instant`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunClock;

impl RunClock {
    fn instant_of(nanos: u64) -> Option<Instant> {
        ORIGIN.checked_add(Duration::from_nanos(nanos))
    }
}

impl HostMonotonicClock for RunClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(ORIGIN.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

struct RunTimer {
    /// When the agent asked to wake (`None`: too far to represent).
    until: Option<Instant>,
    deadline: Instant,
    cancel: CancelToken,
}

#[async_trait::async_trait]
impl Pollable for RunTimer {
    async fn ready(&mut self) {
        let end = self.until.map_or(self.deadline, |u| u.min(self.deadline));
        loop {
            let now = Instant::now();
            if now >= end || self.cancel.is_cancelled() {
                return;
            }
            tokio::time::sleep((end - now).min(CANCEL_POLL)).await;
        }
    }
}

fn timer(
    mut store: StoreContextMut<'_, RunState>,
    until: Option<Instant>,
) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let state = store.data_mut();
    let timer = RunTimer { until, deadline: state.deadline, cancel: state.cancel.clone() };
    let timer = state.table.push(timer)?;
    Ok((subscribe(&mut state.table, timer)?,))
}

/// Replaces the two timer constructors of `wasi:clocks/monotonic-clock`.
pub(crate) fn shadow_timers(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |store: StoreContextMut<'_, RunState>, (nanos,): (u64,)| {
        timer(store, Instant::now().checked_add(Duration::from_nanos(nanos)))
    })?;
    clock.func_wrap("subscribe-instant", |store: StoreContextMut<'_, RunState>, (when,): (u64,)| {
        timer(store, RunClock::instant_of(when))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}
