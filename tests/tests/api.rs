//! The client surface: the `ferry` CLI as a user runs it, and the standard gRPC health and
//! reflection services that tools like grpcurl rely on.

use std::process::Command;
use std::time::Duration;

use ferry_e2e::{Cluster, bin};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

fn ferry(c: &Cluster, args: &[&str]) -> std::process::Output {
    c.cli(args)
}

fn ok_stdout(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "ferry failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_applies_runs_follows_and_shows_a_task() {
    let mut c = Cluster::new();
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.start_agent("train", "train-1");
    c.wait_for_agents(2).await;
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/produce-transform-check.yaml"
    );

    let out = ok_stdout(ferry(&c, &["workflow", "apply", example]));
    assert_eq!(
        out.trim(),
        "workflow produce_transform_check applied (id 1, 3 steps)"
    );
    let out = ok_stdout(ferry(&c, &["workflow", "list"]));
    assert!(out.contains("produce_transform_check"), "{out}");

    let dir = c.path("out");
    let param = format!("out={}", dir.display());
    let out = ok_stdout(ferry(
        &c,
        &[
            "--json",
            "task",
            "create",
            "-w",
            "produce_transform_check",
            "-p",
            &param,
        ],
    ));
    let task: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    let id = task["id"].as_i64().expect("task id");
    assert_eq!(task["status"], "running");

    // `logs --follow` returns by itself when the task ends, having printed the whole story.
    let out = ok_stdout(ferry(&c, &["logs", &id.to_string(), "--follow"]));
    assert!(out.contains("[produce] wrote 1000 numbers"), "{out}");
    assert!(out.contains("[transform] sum=500500"), "{out}");
    assert!(out.contains("[check] sum verified"), "{out}");
    assert!(
        out.trim_end()
            .ends_with(&format!("-- task {id} is completed")),
        "{out}"
    );

    let out = ok_stdout(ferry(&c, &["--json", "task", "show", &id.to_string()]));
    let shown: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["steps"].as_array().map(Vec::len), Some(3));
    let out = ok_stdout(ferry(&c, &["task", "list"]));
    assert!(
        out.lines()
            .any(|l| l.contains("completed") && l.contains("3/3")),
        "{out}"
    );

    // Asking for something impossible is a clear error, exit code 1.
    let out = ferry(&c, &["task", "pause", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("ferry: task {id} is completed; only a running task can be paused")
    );
}

#[test]
fn the_cli_says_clearly_when_the_coordinator_is_unreachable() {
    let out = Command::new(bin("ferry"))
        .args(["--coordinator", "http://127.0.0.1:9", "task", "list"])
        .output()
        .expect("run ferry");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("ferry: cannot reach the coordinator at http://127.0.0.1:9"),
        "{err}"
    );
    assert!(err.contains("is ferry-coordinatord running?"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    let mut c = Cluster::new();
    c.start_coordinator().await;
    let channel = tonic::transport::Channel::from_shared(c.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "ferry.v1.WorkflowService", "ferry.v1.AgentService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service `{service}`");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection")
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("answer in time")
        .expect("stream ok")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "ferry.v1.WorkflowService",
        "ferry.v1.AgentService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}
