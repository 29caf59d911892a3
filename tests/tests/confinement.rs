//! Least privilege on the agents, through the real daemons: a step that names a path outside
//! the agent's roots (an upload of `/etc`, a mount or output directory elsewhere) is refused
//! before anything there is cleared or read; a dataset id filled in by a task parameter is
//! checked as rendered; a host runs only the kinds and programs of its `agent.allow`.

use std::time::Duration;

use ferry_e2e::{Cluster, step};
use ferry_proto::v1;

const T: Duration = Duration::from_secs(60);

/// A directory outside every root of the cluster's agents, holding a file that must survive.
fn outside_with_sentinel() -> (tempfile::TempDir, std::path::PathBuf) {
    let outside = tempfile::tempdir().expect("tmp");
    let sentinel = outside.path().join("sentinel");
    std::fs::write(&sentinel, "keep me").expect("write sentinel");
    (outside, sentinel)
}

/// A one-step workflow of `kind` on agent `agent`, `params` given as YAML flow mapping.
fn one_step(name: &str, kind: &str, agent: &str, params: &str) -> String {
    format!(
        "name: {name}\nsteps:\n  - name: only\n    kind: {kind}\n    placement: {{agent: {agent}}}\n    params: {params}\n"
    )
}

/// Runs `workflow` (one step) and returns the reason the task paused with.
async fn paused_reason(c: &Cluster, workflow: &str, yaml: &str) -> String {
    c.apply(yaml).await.expect("valid workflow");
    let task = c.create_task(workflow).await;
    let paused = c.wait_status(task.id, "paused", T).await;
    assert_eq!(step(&paused, "only").status, "failed");
    assert_eq!(
        step(&paused, "only").retry_count,
        0,
        "refusals are permanent"
    );
    paused.task.map(|t| t.status_reason).unwrap_or_default()
}

/// Inserts `lines` (indented two spaces) into the cluster config's `agent` section.
fn agent_config(c: &Cluster, lines: &str) {
    let text = std::fs::read_to_string(&c.config).expect("read config");
    std::fs::write(
        &c.config,
        text.replacen("agent:\n", &format!("agent:\n{lines}"), 1),
    )
    .expect("write config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_roots_are_refused_before_anything_is_cleared_or_read() {
    let mut c = Cluster::new();
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.wait_for_agents(1).await;
    let (outside, sentinel) = outside_with_sentinel();

    // An upload of `/etc` to the coordinator.
    let reason = paused_reason(
        &c,
        "leak",
        &one_step(
            "leak",
            "upload",
            "src-1",
            "{local_path: /etc, node: secrets}",
        ),
    )
    .await;
    assert!(
        reason.starts_with(
            "step `only` failed permanently: upload source `/etc` is refused: not under any of this agent's roots"
        ),
        "{reason}"
    );

    // A graph job's mount directory outside its job directory: it would be emptied first.
    let job_dir = c.path("work/jobs/wipe");
    let reason = paused_reason(
        &c,
        "wipe",
        &one_step(
            "wipe",
            "exec",
            "src-1",
            &format!(
                "{{program: \"true\", io: {{job_dir: \"{}\", mounts: [{{path: /in/, dir: \"{}\"}}]}}}}",
                job_dir.display(),
                outside.path().display()
            ),
        ),
    )
    .await;
    assert!(
        reason.contains(&format!(
            "mount directory `{}` is refused: it must lie inside {}",
            outside.path().display(),
            job_dir.display()
        )),
        "{reason}"
    );
    assert!(sentinel.exists(), "the outside mount was not cleared");

    // A DATA step publishing into a directory outside the roots.
    let offered = c.path("work/offered.csv");
    std::fs::create_dir_all(c.path("work")).expect("mkdir");
    std::fs::write(&offered, "1\n").expect("write");
    let reason = paused_reason(
        &c,
        "publish",
        &one_step(
            "publish",
            "data",
            "src-1",
            &format!(
                "{{paths: [\"{}\"], output_dir: \"{}\"}}",
                offered.display(),
                outside.path().display()
            ),
        ),
    )
    .await;
    assert!(
        reason.contains(&format!(
            "output directory `{}` is refused: not under any of this agent's roots",
            outside.path().display()
        )),
        "{reason}"
    );
    assert!(
        sentinel.exists(),
        "the outside output directory was not cleared"
    );
    assert_eq!(
        std::fs::read_to_string(&sentinel).ok().as_deref(),
        Some("keep me")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_id_rendered_to_an_absolute_path_is_refused() {
    let fuxictr = tempfile::tempdir().expect("tmp");
    let extra = format!(
        "fuxictr_paths:\n  data_root: \"{d}/data\"\n  model_root: \"{d}/models\"\n",
        d = fuxictr.path().display()
    );
    let mut c = Cluster::with_config(&extra);
    c.start_coordinator().await;
    c.start_agent("train", "train-1");
    c.wait_for_agents(1).await;
    let escape = tempfile::tempdir().expect("tmp");
    let target = escape.path().join("escape");
    c.apply(&one_step(
        "escape",
        "train",
        "train-1",
        &format!(
            "{{dataset_id: \"${{param.x}}\", sample_dir: \"{}\", model: {{model: DeepFM, model_id: m1}}}}",
            c.path("work/sample").display()
        ),
    ))
    .await
    .expect("a placeholder is checked once it is filled in");
    let created = c
        .client()
        .await
        .create_task(v1::CreateTaskRequest {
            workflow: "escape".into(),
            name: String::new(),
            params: [("x".to_owned(), target.display().to_string())]
                .into_iter()
                .collect(),
            priority: None,
        })
        .await;
    match created {
        // Checked where the task is created, when the coordinator renders the parameters.
        Err(status) => assert!(
            status.message().contains("`dataset_id` must be a name"),
            "{status:?}"
        ),
        // Checked on the agent, as the job received it.
        Ok(task) => {
            let id = task.into_inner().id;
            let paused = c.wait_status(id, "paused", T).await;
            let reason = paused.task.map(|t| t.status_reason).unwrap_or_default();
            assert!(
                reason.starts_with("step `only` failed permanently: ")
                    && reason.contains("`dataset_id` must be a name"),
                "{reason}"
            );
        }
    }
    assert!(!target.exists(), "nothing was written at the rendered path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_runs_only_the_kinds_and_programs_it_allows() {
    // A data-source host that runs SQL steps only.
    let mut sql_only = Cluster::new();
    agent_config(&sql_only, "  allow:\n    kinds: [sql_export, hive_load]\n");
    sql_only.start_coordinator().await;
    sql_only.start_agent("source", "src-1");
    sql_only.wait_for_agents(1).await;
    let marker = sql_only.path("ran");
    let reason = paused_reason(
        &sql_only,
        "shell",
        &one_step(
            "shell",
            "exec",
            "src-1",
            &format!(
                "{{program: sh, args: [\"-c\", \"touch {}\"]}}",
                marker.display()
            ),
        ),
    )
    .await;
    assert_eq!(
        reason,
        "step `only` failed permanently: this host does not run `exec` steps (agent.allow.kinds)"
    );
    assert!(!marker.exists(), "the program never ran");
    drop(sql_only);

    // A host that starts `true` only.
    let mut c = Cluster::new();
    agent_config(&c, "  allow:\n    programs: [\"true\"]\n");
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.wait_for_agents(1).await;
    let marker = c.path("ran");
    let reason = paused_reason(
        &c,
        "shell",
        &one_step(
            "shell",
            "exec",
            "src-1",
            &format!(
                "{{program: sh, args: [\"-c\", \"touch {}\"]}}",
                marker.display()
            ),
        ),
    )
    .await;
    assert_eq!(
        reason,
        "step `only` failed permanently: program `sh` is not allowed on this host (agent.allow.programs: true)"
    );
    assert!(!marker.exists(), "the program never ran");
    c.apply(&one_step("fine", "exec", "src-1", "{program: \"true\"}"))
        .await
        .expect("valid");
    let task = c.create_task("fine").await;
    c.wait_status(task.id, "completed", T).await;
}
