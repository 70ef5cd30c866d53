//! TaskRun's wire contract.
//!
//! [`pb`] holds the tonic/prost code generated from `proto/taskrun/v1` (built
//! by build.rs with protox; no system `protoc`). Other crates use it only at
//! their gRPC edge, for service traits and clients; everywhere else they
//! speak taskrun-core types, converted here:
//!
//! - `From<core type> for pb::X` never fails;
//! - `TryFrom<pb::X> for core type` checks every field and fails with an
//!   [`InvalidMessage`] that names the field by its path in the message
//!   (e.g. `spec.retry.max_attempts`), which becomes a
//!   `tonic::Status::invalid_argument` through `From`;
//! - a Run in a GetTask reply converts to [`RunReply`]: the Run, and the
//!   size of its result if the reply left the result out;
//! - the Worker's RunStatusUpdate and RunOutputChunk convert to
//!   [`RunStatusReport`] and [`RunOutputReport`]: core values plus the lease
//!   they echo; its WorkerDraining converts to [`DrainNotice`];
//! - enum numbers inside messages convert with `*_from_wire(field, n)`.
//!
//! Generated clients have no `connect(url)` constructor (it would clash with
//! `RunService.Connect`'s client method): build a `tonic::transport::Channel`
//! and use `XClient::new(channel)`.

mod convert;
mod error;
mod status;

pub use convert::{
    DrainNotice, RunOutputReport, RunProgress, RunReply, RunStatusReport, modality_from_wire, run_status_from_wire,
    task_status_from_wire, worker_state_from_wire,
};
pub use error::{FieldPath, InvalidMessage};
pub use status::core_error_status;

/// Bytes `message` takes encoded (protobuf, without gRPC's framing), for
/// callers that size replies without naming prost.
pub fn encoded_len(message: &impl prost::Message) -> usize {
    message.encoded_len()
}

/// Code generated from `proto/taskrun/v1/*.proto`.
#[allow(missing_docs, unused_qualifications, rust_2018_idioms, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("taskrun.v1");
}

/// The largest message either end of RunService.Connect sends or accepts,
/// in bytes, encoded. The control plane's RunService server and the
/// Worker's client both set their decoding and encoding limits to it: a
/// message over it would end the whole stream, and with it every Run of
/// that Worker. So the Worker sizes what it sends to fit (results, output
/// pieces, error text), and the control plane takes no Task input too
/// large for an assignment.
pub const MAX_RUN_MESSAGE_BYTES: usize = 16 << 20;

/// The encoded `FileDescriptorSet` of `proto/taskrun/v1` (imports included),
/// for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("taskrun_v1_descriptor");
