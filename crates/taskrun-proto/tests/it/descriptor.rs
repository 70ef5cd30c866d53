//! The contract as compiled: build.rs compiled proto/ with protox (no
//! system `protoc` is involved), the descriptor set is exposed for gRPC
//! reflection, and each service has the methods and streaming shapes the
//! design names.

use expect_test::expect;
use prost::Message;
use prost_types::FileDescriptorSet;
use taskrun_proto::{FILE_DESCRIPTOR_SET, pb};

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

#[test]
fn services_and_methods() {
    let mut out = String::new();
    for file in descriptor_set().file {
        out.push_str(&format!("{}\n", file.name()));
        assert_eq!(file.package(), "taskrun.v1");
        assert_eq!(file.syntax(), "proto3");
        for service in &file.service {
            for method in &service.method {
                let shape = match (method.client_streaming(), method.server_streaming()) {
                    (false, false) => "unary",
                    (false, true) => "server stream",
                    (true, false) => "client stream",
                    (true, true) => "bidi stream",
                };
                out.push_str(&format!(
                    "  {}.{}({}) -> {}: {shape}\n",
                    service.name(),
                    method.name(),
                    method.input_type().trim_start_matches(".taskrun.v1."),
                    method.output_type().trim_start_matches(".taskrun.v1."),
                ));
            }
        }
    }
    expect![[r#"
        taskrun/v1/common.proto
        taskrun/v1/admin.proto
          AdminService.CreateBootstrapToken(CreateBootstrapTokenRequest) -> CreateBootstrapTokenResponse: unary
          AdminService.ListWorkers(ListWorkersRequest) -> ListWorkersResponse: unary
          AdminService.DrainWorker(DrainWorkerRequest) -> DrainWorkerResponse: unary
          AdminService.RevokeWorker(RevokeWorkerRequest) -> RevokeWorkerResponse: unary
        taskrun/v1/agent.proto
          AgentService.PublishAgent(PublishAgentRequest) -> PublishAgentResponse: client stream
          AgentService.ListAgents(ListAgentsRequest) -> ListAgentsResponse: unary
          AgentService.GetAgent(GetAgentRequest) -> GetAgentResponse: unary
          AgentService.FetchAgent(FetchAgentRequest) -> FetchAgentResponse: server stream
        taskrun/v1/enrollment.proto
          EnrollmentService.Enroll(EnrollRequest) -> EnrollResponse: unary
          EnrollmentService.Renew(RenewRequest) -> RenewResponse: unary
        taskrun/v1/task.proto
          TaskService.CreateTask(CreateTaskRequest) -> CreateTaskResponse: unary
          TaskService.GetTask(GetTaskRequest) -> GetTaskResponse: unary
          TaskService.ListTasks(ListTasksRequest) -> ListTasksResponse: unary
          TaskService.CancelTask(CancelTaskRequest) -> CancelTaskResponse: unary
          TaskService.WatchTask(WatchTaskRequest) -> WatchTaskResponse: server stream
        taskrun/v1/run.proto
          RunService.Connect(RunClientMessage) -> RunServerMessage: bidi stream
    "#]]
    .assert_eq(&out);
}

/// The descriptor keeps the proto comments, so reflection clients show them.
#[test]
fn descriptor_keeps_comments() {
    let set = descriptor_set();
    let task = set.file.iter().find(|f| f.name() == "taskrun/v1/task.proto").expect("task.proto is in the set");
    let comments: Vec<&str> = task
        .source_code_info
        .iter()
        .flat_map(|info| &info.location)
        .filter_map(|l| l.leading_comments.as_deref())
        .collect();
    assert!(comments.iter().any(|c| c.contains("Streams a Task's events in order")), "WatchTask's comment is missing");
}

/// Every enum starts with its UNSPECIFIED zero value, prefixed by its name.
#[test]
fn enums_have_unspecified_zero() {
    for file in descriptor_set().file {
        let nested = file.message_type.iter().flat_map(|m| m.enum_type.iter());
        for e in file.enum_type.iter().chain(nested) {
            let zero = e.value.first().expect("enum has values");
            assert_eq!(zero.number(), 0, "{}", e.name());
            assert!(zero.name().ends_with("_UNSPECIFIED"), "{}: zero value is {}", e.name(), zero.name());
            let prefix = zero.name().trim_end_matches("UNSPECIFIED");
            for v in &e.value {
                assert!(v.name().starts_with(prefix), "{} in {}", v.name(), e.name());
            }
        }
    }
}

/// Service names as tonic routes them, and the generated clients and
/// servers other crates build on.
#[test]
fn generated_servers_and_clients() {
    let names = [
        pb::task_service_server::SERVICE_NAME,
        pb::run_service_server::SERVICE_NAME,
        pb::agent_service_server::SERVICE_NAME,
        pb::enrollment_service_server::SERVICE_NAME,
        pb::admin_service_server::SERVICE_NAME,
    ];
    expect![[r#"
        [
            "taskrun.v1.TaskService",
            "taskrun.v1.RunService",
            "taskrun.v1.AgentService",
            "taskrun.v1.EnrollmentService",
            "taskrun.v1.AdminService",
        ]
    "#]]
    .assert_debug_eq(&names);
    let _constructors = (
        pb::task_service_client::TaskServiceClient::<tonic::transport::Channel>::new,
        pb::run_service_client::RunServiceClient::<tonic::transport::Channel>::new,
        pb::agent_service_client::AgentServiceClient::<tonic::transport::Channel>::new,
        pb::enrollment_service_client::EnrollmentServiceClient::<tonic::transport::Channel>::new,
        pb::admin_service_client::AdminServiceClient::<tonic::transport::Channel>::new,
    );
}
