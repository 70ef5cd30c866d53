//! The one place where store and domain errors become gRPC statuses.

use tonic::Status;

/// The status a client sees for a store error.
pub fn store_status(error: taskrun_store::Error) -> Status {
    use taskrun_store::Error as E;
    match &error {
        E::NotFound { .. } => Status::not_found(error.to_string()),
        E::AlreadyExists { .. } | E::IdempotencyConflict { .. } | E::AgentVersionConflict { .. } => {
            Status::already_exists(error.to_string())
        }
        E::AgentDigestConflict { .. } => Status::already_exists(error.to_string()),
        E::LeaseConflict { .. } | E::FailedPrecondition { .. } => Status::failed_precondition(error.to_string()),
        E::OutputLimit { .. } => Status::resource_exhausted(error.to_string()),
        E::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
        E::Corrupt { .. } | E::Storage(_) => {
            tracing::error!(error = %error, "store failure");
            Status::internal(format!("store failure: {error}"))
        }
    }
}

/// Parses a required text field of a request into a domain value.
pub(crate) fn parse_field<T>(field: &'static str, text: &str) -> Result<T, Status>
where
    T: std::str::FromStr<Err = taskrun_core::Error>,
{
    if text.is_empty() {
        return Err(taskrun_proto::InvalidMessage::Missing(field.into()).into());
    }
    text.parse().map_err(|e: taskrun_core::Error| Status::invalid_argument(format!("invalid {field}: {e}")))
}
