//! The host's one WIT binding site: everything else imports from here.

wasmtime::component::bindgen!({
    world: "agent",
    path: "../../wit",
    // Host functions return `wasmtime::Result`: `emit` traps a Run that
    // goes over its output limit. Model calls are `async`: a Run waiting
    // for its ModelBackend holds none of the Worker's runtime threads.
    // Everything else answers at once.
    imports: {
        "taskrun:agent/model-backend.complete": async | trappable,
        "taskrun:agent/model-backend.stream-complete": async | trappable,
        "taskrun:agent/model-backend.[method]completion-stream.next": async | trappable,
        default: trappable,
    },
    // Runs execute on the Worker's tokio runtime, yielding to it at every
    // epoch tick (see `Sandbox::run_async`).
    exports: { default: async },
    with: {
        "taskrun:agent/model-backend.completion-stream": super::host::CompletionStreamHandle,
    },
});

pub(crate) use taskrun::agent::{failure, log, model_backend, output};
