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

/// The older reflection protocol (v1alpha, still all that some grpcurl builds and Python's
/// grpcio-reflection speak) lists the same services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1alpha_is_served() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let mut c = Cluster::new();
    c.start_coordinator().await;
    let channel = tonic::transport::Channel::from_shared(c.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("v1alpha reflection is served")
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

/// Seed 000 §8.2's request through `ferry task create`: a bad field is named before anything
/// runs, a plan needs the three roles connected, and both leave no task behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_request_is_checked_field_by_field_and_against_the_agents() {
    let mut c = Cluster::new();
    c.start_coordinator().await;
    c.start_agent("source", "server_21");
    c.wait_for_agents(1).await;
    let request = c.path("request.yaml");
    let write = |table: &str| {
        std::fs::write(
            &request,
            format!(
                "name: campaign_x\nexperiment_id: DeepFM_x\nsample_sql: \"SELECT * FROM campaign_sample\"\ninfer_sql: \"SELECT * FROM campaign_infer\"\nhive_table: \"{table}\"\n"
            ),
        )
        .expect("write request");
    };
    let path = request.display().to_string();

    write("prod.scores; DROP TABLE x");
    let out = ferry(&c, &["task", "create", "--request", &path]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`hive_table`: invalid identifier"), "{err}");

    // Flags override the file; an unknown model is named too.
    write("prod.scores");
    let out = ferry(
        &c,
        &["task", "create", "--request", &path, "--model", "GPT"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`model`: `GPT` is not one of"), "{err}");

    // Valid, but only the data source is connected: the coordinator says which role is missing.
    let out = ferry(&c, &["task", "create", "--request", &path]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no connected training agent; start one or name one with `training_server`"),
        "{err}"
    );
    let out = ferry(
        &c,
        &[
            "task",
            "create",
            "--request",
            &path,
            "--training-server",
            "gpu-7",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`training_server`: no connected agent named `gpu-7`"),
        "{err}"
    );
    let out = ok_stdout(ferry(&c, &["--json", "task", "list"]));
    assert!(
        !out.contains("campaign_x"),
        "a refused request created a task: {out}"
    );
}

/// Seed 000 §7.3 "on training failure, adjust hyperparameters": a failed step's parameters are
/// changed through `ferry task retry --set`, recorded in the log, and the retry uses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_is_retried_with_changed_parameters() {
    let mut c = Cluster::secure("");
    c.start_coordinator().await;
    c.start_agent("train", "train-1");
    c.wait_for_agents(1).await;
    let ana = c
        .client()
        .await
        .create_token(ferry_proto::v1::CreateTokenRequest {
            name: "ana".into(),
            roles: vec!["operator".into()],
        })
        .await
        .expect("token for ana")
        .into_inner()
        .token;
    let marker = c.path("ran-with");
    c.apply(&format!(
        "name: tune\nsteps:\n  - name: fit\n    kind: exec\n    placement: {{role: training}}\n    params:\n      program: sh\n      args: [\"-c\", \"echo $0 > {m}; test $0 = good\", \"bad\"]\n      permanent_exit_codes: [1]\n",
        m = marker.display()
    ))
    .await
    .expect("valid workflow");
    let task = c.create_task("tune").await;
    let failed = c
        .wait_until(task.id, Duration::from_secs(60), "stopped", |d| {
            d.task
                .as_ref()
                .is_some_and(|t| t.status == "paused" || t.status == "failed")
        })
        .await;
    assert_eq!(ferry_e2e::step(&failed, "fit").status, "failed");
    let id = task.id.to_string();

    // Not a parameter the kind knows: refused, nothing changed.
    let out = ferry(&c, &["task", "retry", &id, "--set", "fit.argz=[]"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("argz"), "{err}");

    let args = format!(
        "[\"-c\", \"echo $0 > {}; test $0 = good\", \"good\"]",
        marker.display()
    );
    let set = format!("fit.args={args}");
    // Recorded under the token's identity.
    let out = ok_stdout(c.cli_with_env(
        &["task", "retry", &id, "--set", &set],
        &[("FERRY_TOKEN", &ana)],
    ));
    assert!(out.contains("task") && out.contains("retried"), "{out}");
    c.wait_status(task.id, "completed", Duration::from_secs(60))
        .await;
    assert_eq!(
        std::fs::read_to_string(&marker).expect("marker").trim(),
        "good"
    );
    let logs = c.logs_text(task.id).await;
    assert!(logs.contains("parameters changed by ana"), "{logs}");
}
