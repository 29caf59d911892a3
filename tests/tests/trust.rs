//! Trust through the real daemons, run as production runs them: mutual TLS from the
//! deployment's own CA, bearer tokens with roles, agents known by their certificates.

use std::time::Duration;

use ferry_core::config::TlsConfig;
use ferry_e2e::{Cluster, step};
use ferry_proto::v1::{self, agent_message, agent_service_client::AgentServiceClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const T: Duration = Duration::from_secs(60);

const SLOW: &str = r#"name: slow
steps:
  - name: work
    kind: exec
    placement: {agent: train-1}
    params: {program: sleep, args: ["4"]}
"#;

async fn token(c: &Cluster, name: &str, roles: &str) -> (i64, String) {
    let created = c
        .client()
        .await
        .create_token(v1::CreateTokenRequest {
            name: name.into(),
            roles: roles.split(',').map(str::to_owned).collect(),
        })
        .await
        .expect("admin creates a token")
        .into_inner();
    (
        created.info.map(|i| i.id).unwrap_or_default(),
        created.token,
    )
}

async fn task_count(c: &Cluster) -> usize {
    c.client()
        .await
        .list_tasks(v1::ListTasksRequest::default())
        .await
        .expect("list")
        .into_inner()
        .tasks
        .len()
}

fn create(workflow: &str) -> v1::CreateTaskRequest {
    v1::CreateTaskRequest {
        workflow: workflow.into(),
        name: String::new(),
        params: Default::default(),
        priority: None,
    }
}

/// An agent stream under a certificate the test chooses: the messages sent, and the
/// coordinator's answer (its stream, or the refusal).
async fn raw_agent(
    c: &Cluster,
    tls: &TlsConfig,
    messages: Vec<agent_message::Msg>,
) -> Result<
    (
        tonic::Streaming<v1::CoordinatorMessage>,
        mpsc::Sender<v1::AgentMessage>,
    ),
    tonic::Status,
> {
    let channel = ferry_proto::tls::endpoint(&c.url(), tls)
        .expect("endpoint")
        .connect()
        .await
        .expect("TLS connects (the CA is the deployment's)");
    let (tx, rx) = mpsc::channel(16);
    for m in messages {
        tx.send(v1::AgentMessage {
            msg: Some(m),
            seq: 0,
        })
        .await
        .expect("queue");
    }
    let answer = AgentServiceClient::new(channel)
        .attach(ReceiverStream::new(rx))
        .await?;
    Ok((answer.into_inner(), tx))
}

fn register(name: &str) -> agent_message::Msg {
    agent_message::Msg::Register(v1::Register {
        agent_name: name.into(),
        role: "training".into(),
        kinds: vec!["exec".into()],
        instance: 7,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_a_token_with_the_role_their_call_needs() {
    let mut c = Cluster::secure("");
    c.start_coordinator().await;
    c.start_agent("train", "train-1");
    c.wait_for_agents(1).await;
    c.apply(SLOW).await.expect("admin applies");

    // No token, an unknown one, a viewer's, a revoked one: refused, nothing created.
    let before = task_count(&c).await;
    let err = c
        .anonymous_client()
        .await
        .create_task(create("slow"))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = c
        .try_client(Some("ferry_not_a_real_token_0000000000000000"))
        .await
        .expect("connect")
        .create_task(create("slow"))
        .await
        .expect_err("unknown token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let (_, viewer) = token(&c, "vera", "viewer").await;
    let mut as_viewer = c.try_client(Some(&viewer)).await.expect("connect");
    let err = as_viewer
        .create_task(create("slow"))
        .await
        .expect_err("a viewer cannot create tasks");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("`vera` lacks the `operator` role"),
        "{err:?}"
    );
    as_viewer
        .list_tasks(v1::ListTasksRequest::default())
        .await
        .expect("a viewer reads");
    let (op_id, operator) = token(&c, "olga", "operator").await;
    let err = c
        .try_client(Some(&operator))
        .await
        .expect("connect")
        .apply_workflow(v1::ApplyWorkflowRequest::default())
        .await
        .expect_err("an operator does not author workflows");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    c.client()
        .await
        .revoke_token(v1::TokenRef { id: op_id })
        .await
        .expect("revoke");
    let err = c
        .try_client(Some(&operator))
        .await
        .expect("connect")
        .create_task(create("slow"))
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert_eq!(
        task_count(&c).await,
        before,
        "refused calls changed nothing"
    );

    // The CLI: its token from FERRY_TOKEN; the audit log names identities, not typed names.
    let (_, otto) = token(&c, "otto", "operator").await;
    let out = c.cli_with_env(&["task", "create", "-w", "slow"], &[("FERRY_TOKEN", &otto)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.cli_with_env(&["whoami"], &[("FERRY_TOKEN", &otto)]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "otto (operator)"
    );
    let out = c.cli_with_env(&["audit"], &[("FERRY_TOKEN", &otto)]);
    assert!(!out.status.success(), "only admins read the audit log");
    let out = c.cli(&["audit"]);
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "bootstrap        workflow.apply",
        "bootstrap        token.create",
        "bootstrap        token.revoke",
        "otto             task.create",
    ] {
        assert!(audit.contains(line), "`{line}` missing from:\n{audit}");
    }
    // Tokens are stored hashed: the database never holds the secret.
    let db = std::fs::read(c.path("ferry.db")).expect("read db");
    assert!(
        !db.windows(otto.len()).any(|w| w == otto.as_bytes()),
        "the token is in the database in clear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_known_by_their_certificates() {
    let mut c = Cluster::secure("");
    c.start_coordinator().await;
    c.start_agent("train", "train-1");
    c.wait_for_agents(1).await;
    c.apply(SLOW).await.expect("apply");
    let task = c.create_task("slow").await;
    let running = c
        .wait_until(task.id, T, "running", |d| {
            step(d, "work").status == "running"
        })
        .await;
    let job = step(&running, "work").job_id.clone();
    let secure = c.secure.as_ref().expect("secure cluster");

    // Agents check the coordinator too: a CA that did not sign its certificate fails the
    // handshake.
    let other_ca = c.path("other-ca");
    ferry_proto::pki::init(&other_ca, 1).expect("another CA");
    let (cert, key) = secure.agent_cert("train-1");
    let wrong_ca = TlsConfig {
        ca: other_ca.join("ca.pem"),
        cert,
        key,
    };
    let refused = ferry_proto::tls::endpoint(&c.url(), &wrong_ca)
        .expect("endpoint")
        .connect()
        .await;
    assert!(
        refused.is_err(),
        "a coordinator certificate from another CA was accepted"
    );

    // No certificate: refused.
    let ca_only = secure.client_tls();
    let err = raw_agent(&c, &ca_only, vec![register("train-1")])
        .await
        .expect_err("no certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // A certificate for another name: refused.
    let (cert, key) = secure.agent_cert("train-2");
    let train2 = TlsConfig {
        cert,
        key,
        ..secure.client_tls()
    };
    // An agent's certificate reads the client API (the monitor stage reports on its
    // task) and does nothing else.
    let channel = ferry_proto::tls::endpoint(&c.url(), &train2)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut as_agent = v1::workflow_service_client::WorkflowServiceClient::new(channel);
    as_agent
        .get_task(v1::TaskRef { task_id: task.id })
        .await
        .expect("an agent reads");
    let err = as_agent
        .create_task(create("slow"))
        .await
        .expect_err("an agent creates nothing");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = raw_agent(&c, &train2, vec![register("train-1")])
        .await
        .expect_err("certificate for another name");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("names agent `train-2`"), "{err:?}");

    // The right certificate while the real agent is live: refused, it keeps its job.
    let (cert, key) = secure.agent_cert("train-1");
    let stolen = TlsConfig {
        cert,
        key,
        ..secure.client_tls()
    };
    let err = raw_agent(&c, &stolen, vec![register("train-1")])
        .await
        .expect_err("second live connection");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    // A real agent of its own reports another agent's job COMPLETED: ignored.
    let (evil_cert, evil_key) = secure.agent_cert("evil");
    let evil = TlsConfig {
        cert: evil_cert,
        key: evil_key,
        ..secure.client_tls()
    };
    let forged = agent_message::Msg::JobEvent(v1::JobEvent {
        job_id: job.clone(),
        event: Some(v1::job_event::Event::State(v1::JobStateChange {
            state: v1::JobState::Completed as i32,
            error: String::new(),
            error_class: 0,
        })),
    });
    let (_stream, _keep_open) = raw_agent(&c, &evil, vec![register("evil"), forged])
        .await
        .expect("evil registers under its own name");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let detail = c.task(task.id).await;
    let work = step(&detail, "work");
    assert_eq!(work.status, "running", "a forged report completed the step");
    assert_eq!(
        (work.agent.as_str(), work.job_id.as_str()),
        ("train-1", job.as_str())
    );

    // The real agent finishes its own job.
    let done = c.wait_status(task.id, "completed", T).await;
    assert_eq!(
        step(&done, "work").attempt,
        1,
        "the job was never taken away"
    );
    let log = c.read_log("coordinator");
    for event in [
        "security: agent call without a certificate refused",
        "security: registration as `train-1` refused: the certificate names `train-2`",
        "security: a second connection under a live agent's name refused",
        "security: event for job",
    ] {
        assert!(log.contains(event), "`{event}` is not logged: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_env_values_reach_the_job_but_never_the_read_api() {
    let mut c = Cluster::secure("");
    c.start_coordinator().await;
    c.start_agent("train", "train-1");
    c.wait_for_agents(1).await;
    let out = c.path("work/secret-seen");
    c.apply(&format!(
        "name: secretive\nsteps:\n  - name: use\n    kind: exec\n    placement: {{agent: train-1}}\n    params:\n      program: sh\n      args: [\"-c\", \"printf %s \\\"$API_KEY\\\" > {}\"]\n      env: {{API_KEY: hunter2-secret, MODE: fast}}\n      secret_env: [API_KEY]\n",
        out.display()
    ))
    .await
    .expect("apply");
    let task = c.create_task("secretive").await;
    c.wait_status(task.id, "completed", T).await;
    assert_eq!(
        std::fs::read_to_string(&out).expect("the job ran"),
        "hunter2-secret"
    );
    let wf = c
        .client()
        .await
        .get_workflow(v1::GetWorkflowRequest {
            name: "secretive".into(),
        })
        .await
        .expect("get")
        .into_inner();
    let shown = format!("{wf:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("********") && shown.contains("fast"),
        "{shown}"
    );
    let cli = c.cli(&["workflow", "show", "secretive"]);
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        !printed.contains("hunter2") && printed.contains("********"),
        "{printed}"
    );
}

#[test]
fn a_coordinator_beyond_loopback_without_tls_and_tokens_refuses_to_start() {
    let c = Cluster::new();
    let out = std::process::Command::new(ferry_e2e::bin("ferry-coordinatord"))
        .arg("--config")
        .arg(&c.config)
        .arg("--listen")
        .arg("0.0.0.0:0")
        .output()
        .expect("run the coordinator");
    assert!(!out.status.success(), "it started on 0.0.0.0 without TLS");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0")
            && err.contains("tls.ca")
            && err.contains("insecure: true"),
        "{err}"
    );
}
