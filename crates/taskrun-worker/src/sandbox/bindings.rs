//! The host's one WIT binding site: everything else imports from here.

wasmtime::component::bindgen!({
    world: "agent",
    path: "../../wit",
    // Host functions return `wasmtime::Result`: `emit` traps a Run that
    // goes over its output limit.
    imports: { default: trappable },
    with: {
        "taskrun:agent/model-backend.completion-stream": super::host::CompletionStreamHandle,
    },
});

pub(crate) use taskrun::agent::{log, model_backend, output};
