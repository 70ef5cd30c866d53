//! Write TaskRun agents in Rust.
//!
//! An agent is a WebAssembly component built for `wasm32-wasip2` against the
//! `taskrun:agent@0.1.0` WIT world (`wit/agent.wit` at the repository root).
//! This crate hides the generated bindings: implement [`Agent`], export it
//! with [`export_agent!`], and talk to the Worker through [`emit`], [`log`]
//! and [`model`].
//!
//! # A complete agent
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "shout"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! taskrun-agent-sdk = { path = "../taskrun-agent-sdk" }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```ignore
//! use taskrun_agent_sdk::{Agent, Error, emit, export_agent, log, model};
//!
//! struct Shout;
//!
//! impl Agent for Shout {
//!     fn run(input: String) -> Result<String, Error> {
//!         log::info(&format!("got {} bytes", input.len()));
//!         let mut text = String::new();
//!         for token in model::stream(&model::Request::user(&input))? {
//!             let token = token?.to_uppercase();
//!             emit(&token); // reaches the client now
//!             text.push_str(&token);
//!         }
//!         Ok(format!("{text:?}")) // the result is JSON text: here a JSON string
//!     }
//! }
//!
//! export_agent!(Shout);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the
//! `.wasm` file in `target/wasm32-wasip2/release/` is the component to sign
//! and publish.
//!
//! # What an agent can and cannot do
//!
//! The Worker runs each Run in a fresh sandbox with a wall-clock deadline, a
//! memory cap, an output cap and a cap on model calls. The agent sees WASI
//! 0.2 with no files, no sockets and (unless the operator grants them) no
//! environment variables or arguments; what it prints to stdout or stderr
//! lands in the Run's log, bounded. Its only ways out are the imports
//! wrapped here.
//!
//! # Lean agents
//!
//! An agent that needs nothing of the Rust standard library beyond `alloc`
//! (`String`, `Vec`, `format!`, collections) can be built `#![no_std]`:
//!
//! ```toml
//! [dependencies]
//! taskrun-agent-sdk = { path = "../taskrun-agent-sdk", default-features = false, features = ["lean"] }
//! ```
//!
//! ```ignore
//! #![no_std]
//! extern crate alloc;
//!
//! use alloc::string::String;
//! use taskrun_agent_sdk::{Agent, Error, emit, export_agent};
//!
//! struct Echo;
//!
//! impl Agent for Echo {
//!     fn run(input: String) -> Result<String, Error> {
//!         emit(&input);
//!         Ok(input)
//!     }
//! }
//!
//! export_agent!(Echo);
//! ```
//!
//! With `lean`, the SDK supplies the global allocator (dlmalloc, whose first
//! region is a 256 KiB arena inside the component's initial memory, so a
//! Run that stays within it never grows its memory) and the panic handler
//! (the message goes to the Run's log at error level, then the agent traps).
//! The component imports only the `taskrun:agent` interfaces it uses: no
//! WASI at all, so there is no file, clock, random or environment call for
//! it to even attempt. It is smaller (18 KB against 42 KB for `echo`) and a warm Run
//! costs the Worker less (docs/benchmarks.md). Crates that need `std`
//! need the default build (`serde_json` does not: take it with
//! `default-features = false, features = ["alloc"]`); the `std` and
//! `lean` features exclude each other. The SDK also supplies
//! `cabi_realloc`, `memcmp` and `bcmp`, which a `std` agent gets from
//! wasi-libc.
//! Because features unify across a cargo build, build a lean agent in its
//! own `cargo build -p` invocation when its workspace also holds std agents.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(all(feature = "std", feature = "lean"))]
compile_error!(
    "taskrun-agent-sdk: the `std` and `lean` features exclude each other; a lean agent sets `default-features = false, features = [\"lean\"]`"
);

#[cfg(all(feature = "lean", target_arch = "wasm32"))]
mod lean;

/// The generated bindings. Not part of the SDK's stable surface: use the
/// wrappers below.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "agent",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_agent_world",
        default_bindings_module: "::taskrun_agent_sdk::bindings",
    });
}

use alloc::format;
use alloc::string::String;
use core::fmt;

use bindings::taskrun::agent::model_backend::ModelError;

/// An agent: what runs when a Task is handed to a Worker.
///
/// There is one call per Run, in a fresh instance: nothing survives from one
/// Run to the next.
pub trait Agent {
    /// Handles one Run. `input` is the Task's input as JSON text; the `Ok`
    /// value must be JSON text as well (the Worker fails the Run otherwise).
    fn run(input: String) -> Result<String, Error>;
}

/// Why an agent gave up; the message reaches the person who asked.
///
/// A Run that fails is retried as its Task's retry policy says (a model
/// that timed out may answer next time). When retrying cannot help — the
/// input is malformed, or asks for what the agent refuses — return
/// [`Error::permanent`] instead, and the Task fails at once:
///
/// ```ignore
/// let text = input_field(&input, "text")
///     .ok_or_else(|| Error::permanent("the input has no \"text\" field"))?;
/// ```
#[derive(Debug, Clone)]
pub struct Error {
    message: String,
    /// Set by [`Error::permanent`]: tells the Worker, when the error is
    /// returned. A function rather than a flag, so that only an agent that
    /// makes permanent errors imports `failure` (see [`Error::permanent`]).
    mark_permanent: Option<fn()>,
}

impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.message == other.message && self.is_permanent() == other.is_permanent()
    }
}

impl Eq for Error {}

impl Error {
    /// An error with `message`, retried like any failure.
    pub fn new(message: impl Into<String>) -> Error {
        Error { message: message.into(), mark_permanent: None }
    }

    /// An error with `message` that would repeat on every attempt, so the
    /// Task is not retried. Returned from `run`, it tells the Worker so
    /// through the `failure` import; an agent that never makes one does
    /// not import `failure`, and so runs on Workers older than it as well.
    pub fn permanent(message: impl Into<String>) -> Error {
        Error { message: message.into(), mark_permanent: Some(bindings::taskrun::agent::failure::mark_permanent) }
    }

    /// Whether the error was made with [`Error::permanent`].
    pub fn is_permanent(&self) -> bool {
        self.mark_permanent.is_some()
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> bindings::AgentError {
        if let Some(mark) = self.mark_permanent {
            mark();
        }
        bindings::AgentError { message: self.message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl core::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::new(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error::new(message)
    }
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Error {
        Error::new(format!("model call failed: {}", model::describe(&e)))
    }
}

/// Exports `$agent` (a type implementing [`Agent`]) as the component's
/// `run` function. Use it once per agent crate.
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        const _: () = {
            struct TaskrunAgentExport;

            impl $crate::bindings::Guest for TaskrunAgentExport {
                fn run(
                    input: $crate::__private::String,
                ) -> ::core::result::Result<$crate::__private::String, $crate::bindings::AgentError> {
                    <$agent as $crate::Agent>::run(input).map_err($crate::Error::into_wit)
                }
            }

            $crate::bindings::__export_agent_world!(
                TaskrunAgentExport with_types_in $crate::bindings
            );
        };
    };
}

#[doc(hidden)]
pub mod __private {
    pub use alloc::string::String;
}

/// Sends `chunk` to the client now, while the Run goes on.
///
/// A Run that emits more than its output limit is stopped by the Worker.
pub fn emit(chunk: &str) {
    bindings::taskrun::agent::output::emit(chunk);
}

/// Records in the Run's log (never sent as output).
pub mod log {
    pub use crate::bindings::taskrun::agent::log::Level;

    /// Records `message` at `level`.
    pub fn log(level: Level, message: &str) {
        crate::bindings::taskrun::agent::log::log(level, message);
    }

    /// Records `message` at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }

    /// Records `message` at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Records `message` at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Records `message` at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Records `message` at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// The ModelBackends the Worker configured.
pub mod model {
    use alloc::borrow::ToOwned;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;

    use crate::bindings::taskrun::agent::model_backend as wit;

    pub use wit::{BackendInfo, Completion, Message, Modality, ModelError, Role};

    /// A completion request; build it with [`Request::user`] and the
    /// setters.
    pub type Request = wit::CompletionRequest;

    impl Request {
        /// A request whose conversation is one user message, answered by
        /// the Worker's default ModelBackend in at most 256 tokens.
        pub fn user(content: &str) -> Request {
            Request {
                messages: vec![Message { role: Role::User, content: content.to_owned() }],
                max_tokens: 256,
                temperature: None,
                backend: None,
            }
        }

        /// Puts a system message first.
        pub fn system(mut self, content: &str) -> Request {
            self.messages.insert(0, Message { role: Role::System, content: content.to_owned() });
            self
        }

        /// Caps the answer at `max_tokens` tokens.
        pub fn max_tokens(mut self, max_tokens: u32) -> Request {
            self.max_tokens = max_tokens;
            self
        }

        /// Sets the sampling temperature.
        pub fn temperature(mut self, temperature: f32) -> Request {
            self.temperature = Some(temperature);
            self
        }

        /// Asks the ModelBackend named `name` instead of the default one.
        pub fn backend(mut self, name: &str) -> Request {
            self.backend = Some(name.to_owned());
            self
        }
    }

    /// The ModelBackends this Worker offers.
    pub fn backends() -> Vec<BackendInfo> {
        wit::list_backends()
    }

    /// Asks for a whole completion.
    pub fn complete(request: &Request) -> Result<Completion, ModelError> {
        wit::complete(request)
    }

    /// Asks for a completion delivered as the provider produces it.
    pub fn stream(request: &Request) -> Result<Stream, ModelError> {
        wit::stream_complete(request).map(|inner| Stream { inner, done: false })
    }

    /// Pieces of a completion, in order. Ends after the last piece or the
    /// first error.
    #[derive(Debug)]
    pub struct Stream {
        inner: wit::CompletionStream,
        done: bool,
    }

    impl Iterator for Stream {
        type Item = Result<String, ModelError>;

        fn next(&mut self) -> Option<Self::Item> {
            if self.done {
                return None;
            }
            match self.inner.next() {
                Ok(Some(piece)) => Some(Ok(piece)),
                Ok(None) => {
                    self.done = true;
                    None
                }
                Err(e) => {
                    self.done = true;
                    Some(Err(e))
                }
            }
        }
    }

    /// A one-line description of `error`.
    pub fn describe(error: &ModelError) -> String {
        match error {
            ModelError::UnknownBackend(name) => format!("unknown model backend {name:?}"),
            ModelError::LimitExceeded => "model call limit exceeded".to_owned(),
            ModelError::Provider(message) => format!("provider: {message}"),
            ModelError::InvalidRequest(message) => format!("invalid request: {message}"),
        }
    }
}
