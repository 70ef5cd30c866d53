//! Spins forever without calling the host: only the Worker's wall-clock
//! deadline (epoch interruption) or a cancellation stops it.

use taskrun_agent_sdk::{Agent, Error, export_agent, log};

struct BusyLoop;

impl Agent for BusyLoop {
    fn run(_input: String) -> Result<String, Error> {
        log::info("spinning");
        let mut x: u64 = 0;
        loop {
            x = core::hint::black_box(x.wrapping_add(1));
        }
    }
}

export_agent!(BusyLoop);
