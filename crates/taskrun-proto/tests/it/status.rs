//! Errors become gRPC statuses in one place.

use expect_test::expect;
use taskrun_core::{Run, RunStatus, TaskSpec, Timestamp};
use taskrun_proto::{InvalidMessage, core_error_status, pb};

#[test]
fn invalid_message_is_invalid_argument() {
    let error = TaskSpec::try_from(pb::CreateTaskRequest { spec: None }).unwrap_err();
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    expect!["missing spec"].assert_eq(status.message());

    let status = tonic::Status::from(InvalidMessage::OutOfRange {
        field: "spec.priority".into(),
        value: 1001,
        min: -1000,
        max: Some(1000),
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    expect!["spec.priority out of range: 1001 (allowed -1000 to 1000)"].assert_eq(status.message());
}

#[test]
fn core_errors() {
    let mut run = Run::new("task-1".parse().unwrap(), 0, 1, Timestamp(0), Timestamp(0));
    let stale = run.check_lease(3).unwrap_err();
    let transition = run.start(Timestamp(1)).unwrap_err();
    let invalid = "Bad Name".parse::<taskrun_core::AgentName>().unwrap_err();
    let statuses: Vec<String> = [stale, transition, invalid]
        .iter()
        .map(|e| {
            let s = core_error_status(e);
            format!("{:?}: {}", s.code(), s.message())
        })
        .collect();
    expect![[r#"
        [
            "FailedPrecondition: invalid lease \"3\": stale: run task-1.0.1 holds lease 0",
            "FailedPrecondition: illegal run transition PENDING -> RUNNING",
            "InvalidArgument: invalid agent_name \"Bad Name\": must start with a lowercase letter",
        ]
    "#]]
    .assert_debug_eq(&statuses);
    assert_eq!(run.status, RunStatus::Pending);
}
