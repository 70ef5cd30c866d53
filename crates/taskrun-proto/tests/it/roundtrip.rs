//! Every core value with a wire counterpart survives core -> pb -> bytes ->
//! pb -> core unchanged; unset wire fields take the core defaults.

use std::fmt::Debug;

use prost::Message;
use taskrun_core::{Modality, ModelRequirement, RetryPolicy, RunStatus, TaskLimits, TaskSpec, TaskStatus, WorkerState};
use taskrun_proto::{InvalidMessage, pb};

use crate::samples;

/// core -> pb -> bytes -> pb -> core.
fn roundtrip<P, C>(values: impl IntoIterator<Item = C>)
where
    P: Message + Default,
    C: Clone + PartialEq + Debug + Into<P> + TryFrom<P, Error = InvalidMessage>,
{
    let mut count = 0;
    for value in values {
        let wire: P = value.clone().into();
        let decoded = P::decode(wire.encode_to_vec().as_slice()).expect("wire bytes decode");
        let back = match C::try_from(decoded) {
            Ok(back) => back,
            Err(e) => panic!("{value:?} does not convert back: {e}"),
        };
        assert_eq!(back, value);
        count += 1;
    }
    assert!(count > 0, "no samples");
}

#[test]
fn agents() {
    roundtrip::<pb::AgentRef, _>(samples::agent_refs());
    roundtrip::<pb::AgentManifest, _>([samples::manifest()]);
}

#[test]
fn model_backends_and_requirements() {
    roundtrip::<pb::ModelBackend, _>([samples::model_backend(), samples::echo_backend()]);
    roundtrip::<pb::ModelRequirement, _>(samples::model_requirements());
}

#[test]
fn retry_policies_and_limits() {
    roundtrip::<pb::RetryPolicy, _>(samples::retry_policies());
    roundtrip::<pb::TaskLimits, _>(samples::task_limits());
}

#[test]
fn task_specs_and_create_requests() {
    roundtrip::<pb::TaskSpec, _>(samples::specs());
    roundtrip::<pb::CreateTaskRequest, _>(samples::specs());
}

#[test]
fn tasks_runs_and_events() {
    roundtrip::<pb::Task, _>(samples::tasks());
    roundtrip::<pb::Run, _>(samples::runs());
    roundtrip::<pb::Run, _>(samples::run_replies());
    roundtrip::<pb::OutputChunk, _>([samples::output_chunk()]);
    roundtrip::<pb::TaskEvent, _>(samples::task_events());
    roundtrip::<pb::WatchTaskResponse, _>(samples::task_events());
}

#[test]
fn worker_reports() {
    roundtrip::<pb::RunStatusUpdate, _>(samples::status_reports());
    roundtrip::<pb::RunOutputChunk, _>([samples::output_report()]);
    roundtrip::<pb::WorkerDraining, _>(samples::drain_notices());
}

#[test]
fn workers() {
    roundtrip::<pb::WorkerInfo, _>(samples::worker_infos());
    roundtrip::<pb::Worker, _>(samples::workers());
}

#[test]
fn enums() {
    fn check<C, P>(values: &[C], from_wire: fn(&'static str, i32) -> Result<C, InvalidMessage>)
    where
        C: Copy + PartialEq + Debug + Into<P> + TryFrom<P, Error = InvalidMessage>,
        P: Into<i32>,
    {
        for &value in values {
            let wire: P = value.into();
            let number: i32 = wire.into();
            assert_ne!(number, 0, "{value:?} maps to UNSPECIFIED");
            assert_eq!(from_wire("field", number), Ok(value));
            let wire: P = value.into();
            assert_eq!(C::try_from(wire), Ok(value));
        }
    }
    check::<TaskStatus, pb::TaskStatus>(TaskStatus::ALL, taskrun_proto::task_status_from_wire);
    check::<RunStatus, pb::RunStatus>(RunStatus::ALL, taskrun_proto::run_status_from_wire);
    check::<Modality, pb::Modality>(&Modality::ALL, taskrun_proto::modality_from_wire);
    check::<WorkerState, pb::WorkerState>(
        &[WorkerState::Connected, WorkerState::Draining, WorkerState::Lost, WorkerState::Revoked],
        taskrun_proto::worker_state_from_wire,
    );
}

/// A request that sets only what it must gets the same spec as
/// `TaskSpec::new`: every unset field takes the domain's default.
#[test]
fn unset_fields_take_core_defaults() {
    let request = pb::CreateTaskRequest {
        spec: Some(pb::TaskSpec {
            agent: Some(pb::AgentRef { name: "echo".to_owned(), selector: None }),
            input_json: "null".to_owned(),
            ..Default::default()
        }),
    };
    assert_eq!(TaskSpec::try_from(request), Ok(samples::minimal_spec()));

    assert_eq!(RetryPolicy::try_from(pb::RetryPolicy::default()), Ok(RetryPolicy::default()));
    assert_eq!(TaskLimits::try_from(pb::TaskLimits::default()), Ok(TaskLimits::default()));
    assert_eq!(ModelRequirement::try_from(pb::ModelRequirement::default()), Ok(ModelRequirement::default()));
    // Fields set one by one keep the defaults of the others.
    let retry = pb::RetryPolicy { max_attempts: Some(5), ..Default::default() };
    assert_eq!(RetryPolicy::try_from(retry), Ok(RetryPolicy { max_attempts: 5, ..RetryPolicy::default() }));
}

/// An empty ModelRequirement is left off the wire, and an empty one on the
/// wire is the same as none.
#[test]
fn empty_model_requirement_is_unset() {
    let wire = pb::TaskSpec::from(samples::minimal_spec());
    assert_eq!(wire.model, None);
}
