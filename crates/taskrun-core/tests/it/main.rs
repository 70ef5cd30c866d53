//! taskrun-core's tests: one binary, one module per area.

mod ids;
mod status;
mod task;
