//! The `transfer` step kind through the whole system: an agent moves data to another host
//! over a real sshd, every chunk is verified and recorded, and failures land in the right
//! error class.

use std::time::Duration;

use ferry_e2e::sshd::{Sshd, keygen, whoami};
use ferry_e2e::{Cluster, bin, step};
use ferry_proto::v1;

const T: Duration = Duration::from_secs(90);

/// A cluster whose agents know `training_server` (the private sshd), `broken_server`
/// (same host, a key the server does not accept) and `rotated_server` (same host, the
/// refused key first and the accepted one after it, as in the middle of a key rotation),
/// with roots under the cluster's `area/`. The sshd's host key is pinned in known_hosts.
async fn cluster(sshd: &Sshd) -> Cluster {
    keygen(&sshd.path("unauthorized_key"));
    let area = sshd.path("area");
    std::fs::create_dir_all(&area).expect("area");
    let agent_lines = format!(
        "  roots: [\"{}\"]\n  known_hosts: \"{}\"\n",
        area.display(),
        sshd.path("known_hosts").display()
    );
    let server = |name: &str, key: &str| {
        format!(
            "  {name}:\n    host: 127.0.0.1\n    port: {}\n    username: {}\n    key_path: \"{}\"\n    role: training\n",
            sshd.port,
            whoami(),
            sshd.path(key).display()
        )
    };
    let rotated = format!(
        "{}    key_paths: [\"{}\"]\n",
        server("rotated_server", "unauthorized_key"),
        sshd.path("user_key").display()
    );
    let extra = format!(
        "servers:\n{}{}{rotated}transfer:\n  chunk_size: 1048576\n  max_retries: 3\n  remote_ferry: \"{}\"\n",
        server("training_server", "user_key"),
        server("broken_server", "unauthorized_key"),
        bin("ferry").display()
    );
    let mut c = Cluster::with_agent_config(&agent_lines, &extra);
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.start_agent("train", "train-1");
    c.wait_for_agents(2).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_step_moves_verified_data_and_records_every_chunk() {
    let sshd = Sshd::start();
    let c = cluster(&sshd).await;
    let area = sshd.path("area");
    let staging = area.join("staging/sample_data");
    let dest = area.join("train_host/data/campaign/train");
    let wf = format!(
        r#"name: ship
steps:
  - name: export
    kind: exec
    placement: {{role: data_source}}
    params:
      program: sh
      args: ["-c", "mkdir -p {staging} && dd if=/dev/urandom of={staging}/part-0.bin bs=1M count=3 status=none && head -c 500000 /dev/urandom > {staging}/part-1.bin && : > {staging}/_SUCCESS"]
  - name: ship
    kind: transfer
    placement: {{role: data_source}}
    inputs: [export]
    params: {{direction: push, server: training_server, local_path: "{staging}", remote_path: "{dest}"}}
  - name: check
    kind: exec
    placement: {{role: training}}
    inputs: [ship]
    params:
      program: sh
      args: ["-c", "cmp {staging}/part-0.bin {dest}/part-0.bin && cmp {staging}/part-1.bin {dest}/part-1.bin && test -f {dest}/_SUCCESS"]
"#,
        staging = staging.display(),
        dest = dest.display()
    );
    c.apply(&wf).await.expect("valid workflow");
    let task = c.create_task("ship").await;
    c.wait_status(task.id, "completed", T).await;

    let progress = c
        .client()
        .await
        .get_progress(v1::TaskRef { task_id: task.id })
        .await
        .expect("progress")
        .into_inner();
    let ship = progress
        .steps
        .iter()
        .find(|s| s.step == "ship")
        .expect("ship step");
    // 3 MiB in 1 MiB chunks + 1 chunk for part-1; the empty _SUCCESS has none.
    assert_eq!(
        (ship.chunks_total, ship.chunks_completed, ship.chunks_failed),
        (4, 4, 0)
    );
    let p: serde_json::Value = serde_json::from_str(&ship.progress_json).expect("progress JSON");
    assert_eq!(p["phase"], "verified");
    assert_eq!(p["bytes_done"], 3 * 1024 * 1024 + 500_000);
    let metrics = c.metrics(task.id).await;
    assert!(
        metrics
            .metrics
            .iter()
            .any(|m| m.name == "transfer_bytes" && m.value == (3 * 1024 * 1024 + 500_000) as f64)
    );
    let logs = c.logs_text(task.id).await;
    assert!(
        logs.contains("[ship] agent: connecting to training_server"),
        "{logs}"
    );
    assert!(
        logs.contains("transfer complete: 3.5 MiB in 3 files, 4 chunks verified (0 re-sent)"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_retired_key_first_connects_with_the_next_one() {
    let sshd = Sshd::start();
    let c = cluster(&sshd).await;
    let area = sshd.path("area");
    let staging = area.join("staging/rotation");
    std::fs::create_dir_all(&staging).expect("staging");
    std::fs::write(staging.join("part-0.bin"), vec![7u8; 300_000]).expect("file");
    let dest = area.join("train_host/data/rotation");
    let wf = format!(
        r#"name: rotation
steps:
  - name: ship
    kind: transfer
    placement: {{role: data_source}}
    params: {{direction: push, server: rotated_server, local_path: "{staging}", remote_path: "{dest}"}}
  - name: check
    kind: exec
    placement: {{role: training}}
    inputs: [ship]
    params:
      program: cmp
      args: ["{staging}/part-0.bin", "{dest}/part-0.bin"]
"#,
        staging = staging.display(),
        dest = dest.display()
    );
    c.apply(&wf).await.expect("valid workflow");
    let task = c.create_task("rotation").await;
    let done = c.wait_status(task.id, "completed", T).await;
    assert_eq!(step(&done, "ship").retry_count, 0, "no failed attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_paths_outside_the_roots_pause_the_task_with_the_reason() {
    let sshd = Sshd::start();
    let c = cluster(&sshd).await;
    let staging = sshd.path("area/staging/x");
    std::fs::create_dir_all(&staging).expect("staging");
    std::fs::write(staging.join("f"), b"data").expect("file");
    let wf = format!(
        "name: bad_key\nsteps:\n  - {{name: ship, kind: transfer, placement: {{role: data_source}}, params: {{direction: push, server: broken_server, local_path: \"{}\", remote_path: /tmp/ferry-never}}}}\n",
        staging.display()
    );
    c.apply(&wf).await.expect("valid");
    let task = c.create_task("bad_key").await;
    let paused = c.wait_status(task.id, "paused", T).await;
    let ship = step(&paused, "ship");
    assert_eq!(
        ship.retry_count, 0,
        "authentication failures are not retried"
    );
    assert!(
        ship.error_message.contains("SSH authentication to"),
        "{}",
        ship.error_message
    );
    assert!(
        ship.error_message.contains("unauthorized_key"),
        "the key is named: {}",
        ship.error_message
    );

    let wf = "name: escape\nsteps:\n  - {name: ship, kind: transfer, placement: {role: data_source}, params: {direction: push, server: training_server, local_path: /etc, remote_path: /tmp/ferry-never}}\n";
    c.apply(wf).await.expect("valid");
    let task = c.create_task("escape").await;
    let paused = c.wait_status(task.id, "paused", T).await;
    let reason = paused.task.map(|t| t.status_reason).unwrap_or_default();
    assert!(
        reason.contains("`/etc` is outside the allowed root")
            && reason.contains("not under any of this agent's roots"),
        "{reason}"
    );
}

/// Every SSH control socket (`ssh -S`) under `dir`.
fn control_sockets(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_socket() => found.push(e.path()),
                _ => {}
            }
        }
    }
    found
}

/// An agent keeps one SSH master per server between steps. When that master dies (a link
/// down past the keepalive, a restarted sshd), the next step must open a new one rather
/// than fail every attempt through the dead one (found by `cargo xtask chaos`: after a link
/// fault every retry of `ship_results` failed with "the remote process has terminated").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_ssh_master_is_replaced_before_the_next_step_uses_it() {
    let sshd = Sshd::start();
    let c = cluster(&sshd).await;
    let area = sshd.path("area");
    let staging = area.join("staging/sample_data");
    std::fs::create_dir_all(&staging).expect("staging");
    std::fs::write(staging.join("part-0.bin"), vec![7u8; 300_000]).expect("part");
    let wf = |name: &str, dest: &str| {
        format!(
            "name: {name}\nsteps:\n  - name: ship\n    kind: transfer\n    placement: {{role: data_source}}\n    params: {{direction: push, server: training_server, local_path: \"{}\", remote_path: \"{}\"}}\n",
            staging.display(),
            area.join(dest).display()
        )
    };
    c.apply(&wf("first", "first"))
        .await
        .expect("valid workflow");
    let first = c.create_task("first").await;
    c.wait_status(first.id, "completed", T).await;

    // The master the first step left behind dies.
    let sockets = control_sockets(&c.path("work"));
    assert!(
        !sockets.is_empty(),
        "no SSH master under the agents' work dir"
    );
    for s in &sockets {
        let exited = std::process::Command::new("ssh")
            .arg("-S")
            .arg(s)
            .args(["-O", "exit", "ignored"])
            .output()
            .expect("ssh -O exit");
        assert!(exited.status.success(), "{exited:?}");
    }

    c.apply(&wf("second", "second"))
        .await
        .expect("valid workflow");
    let second = c.create_task("second").await;
    let detail = c.wait_status(second.id, "completed", T).await;
    assert_eq!(
        step(&detail, "ship").retry_count,
        0,
        "the first attempt went through the dead master:\n{}",
        c.logs_text(second.id).await
    );

    // Stopped agents leave no master (nor its sshd session) behind.
    let mut c = c;
    let work = c.path("work");
    let masters_before = ferry_transfer::ssh::ssh_processes_under(&work);
    assert!(!masters_before.is_empty(), "the second step's master runs");
    c.stop_agents(Duration::from_secs(15));
    let left = ferry_transfer::ssh::ssh_processes_under(&work);
    assert!(
        left.is_empty(),
        "ssh processes left after the agents stopped: {left:?}"
    );
}
