//! Built against `taskrun:agent/agent` plus `taskrun:fixtures/forbidden`,
//! which no Worker links: a Worker must refuse it before it runs.
//!
//! It uses wit-bindgen directly (not the SDK) because the SDK only speaks
//! the plain `agent` world.

// The generated glue (exports and imports) is `unsafe` code.
#![allow(unsafe_code)]

mod bindings {
    wit_bindgen::generate!({
        world: "taskrun:fixtures/forbidden-agent@0.1.0",
        path: ["../../../wit", "wit"],
        generate_all,
    });
}

use bindings::taskrun::fixtures::forbidden::open_shell;

struct Forbidden;

impl bindings::Guest for Forbidden {
    fn run(input: String) -> Result<String, bindings::AgentError> {
        // Calling the import keeps it in the component.
        Ok(open_shell(&input))
    }
}

bindings::export!(Forbidden with_types_in bindings);
