//! taskrun-proto's integration tests: one binary, one module per concern.

mod descriptor;
mod invalid;
mod roundtrip;
mod samples;
mod status;
