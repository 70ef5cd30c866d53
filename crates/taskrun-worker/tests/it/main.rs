//! Integration tests of the worker runtime: the sandbox against every agent
//! under `agents/`, the compiled-component cache, cancellation, the
//! ModelBackend providers (the `openai` one against a local HTTP server),
//! the Worker's session with a real control plane (`session`), its
//! graceful drain (`drain`, and `signals` for the binary's SIGTERM), its
//! config file (`config`), and its side of the protocol against a scripted
//! control plane (`scripted`: `assignments`, `reconnect`).

mod assignments;
mod cache;
mod cancel;
mod config;
mod drain;
mod examples;
mod hostile;
mod model;
mod reconnect;
mod runtime;
mod scripted;
mod session;
#[cfg(unix)]
mod signals;
mod support;

/// Every agent under `agents/` has a test named after it (crate name in
/// snake case) in `examples` or `hostile`: adding an agent without a test
/// does not compile.
mod every_agent_has_a_test {
    #[allow(unused_imports)]
    use crate::{examples::*, hostile::*};

    macro_rules! has_test {
        ($agent:ident) => {
            const _: fn() = $agent;
        };
    }

    taskrun_agent_artifacts::foreach_agent!(has_test);
}
