//! The one place where errors become gRPC statuses.

use crate::InvalidMessage;

/// A refused message is the caller's fault: INVALID_ARGUMENT, with the
/// field and what is wrong with it as the message.
impl From<InvalidMessage> for tonic::Status {
    fn from(error: InvalidMessage) -> tonic::Status {
        tonic::Status::invalid_argument(error.to_string())
    }
}

/// The status for a domain error met while serving a request: a bad value
/// is INVALID_ARGUMENT; a state change the state machine refuses (a stale
/// lease, a Run already finished) is FAILED_PRECONDITION.
pub fn core_error_status(error: &taskrun_core::Error) -> tonic::Status {
    match error {
        taskrun_core::Error::Transition(_) => tonic::Status::failed_precondition(error.to_string()),
        taskrun_core::Error::Invalid { field: "lease", .. } => tonic::Status::failed_precondition(error.to_string()),
        _ => tonic::Status::invalid_argument(error.to_string()),
    }
}
