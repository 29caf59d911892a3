//! Seed 003's graph workflows through the real daemons and the `ferry` CLI: building a graph
//! node by node, validation failures naming what is wrong, a STDOUT→STDIN connection that
//! streams a file far larger than the agent may hold in memory, DOCKER jobs through a
//! Docker-API engine, and downloads verified at both ends.
//!
//! The three-host version (agents on separate network namespaces with their own sshd) is
//! `cargo xtask e2e`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_e2e::{Cluster, podman, step};

fn cli_ok(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ferry {args:?} failed: {text}");
    text
}

fn cli_err(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(!out.status.success(), "ferry {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ferry workflow execute` prints `task N started ...`.
fn task_id(out: &str) -> i64 {
    out.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no task id in {out}"))
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A file of `mib` MiB of varied bytes, written in pieces.
fn big_file(path: &Path, mib: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut block = vec![0u8; 1024 * 1024];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..mib {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        f.write_all(&block).expect("write");
    }
    f.flush().expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_built_node_by_node_streams_a_large_stdin_and_is_downloaded_verified() {
    let mut c = Cluster::new();
    c.start_coordinator().await;
    c.start_agent("source", "agent-a");
    c.wait_for_agents(1).await;
    let data_dir = c.path("work/datasets");
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    let big = data_dir.join("big.bin");
    // Far more than the agent may hold: the assertion below allows a fifth of it.
    const MIB: usize = 640;
    big_file(&big, MIB);
    let offered = format!("STDOUT:{}", big.display());

    cli_ok(
        &c,
        &[
            "workflow",
            "create",
            "digest",
            "--description",
            "hash a big file",
        ],
    );
    cli_ok(
        &c,
        &[
            "workflow",
            "add-node",
            "digest",
            "--name",
            "raw",
            "--type",
            "DATA",
            "--agent",
            "agent-a",
            "--interface",
            &offered,
            "--at",
            "40,80",
        ],
    );
    // The designer's first try wires DATA into DATA: building names the connection and rule.
    cli_ok(
        &c,
        &[
            "workflow",
            "add-node",
            "digest",
            "--name",
            "copy",
            "--type",
            "DATA",
            "--agent",
            "agent-a",
            "--interface",
            &offered,
        ],
    );
    let shown = cli_ok(
        &c,
        &["workflow", "connect", "digest", "raw.STDOUT", "copy.STDOUT"],
    );
    assert!(shown.contains("not valid yet"), "{shown}");
    let err = cli_err(&c, &["workflow", "build", "digest"]);
    assert!(
        err.contains("connection #0 raw.STDOUT → copy.STDOUT: STDOUT → STDOUT is not allowed")
            && err.contains("cannot download from DATA service `raw` to DATA service `copy`"),
        "{err}"
    );
    cli_ok(&c, &["workflow", "remove-node", "digest", "copy"]);
    cli_ok(
        &c,
        &[
            "workflow",
            "add-node",
            "digest",
            "--name",
            "hash",
            "--type",
            "STANDALONE",
            "--agent",
            "agent-a",
            "--entrypoint",
            "sh",
            "--entrypoint",
            "-c",
            "--cmd",
            "sha256sum | cut -d' ' -f1",
            "--interface",
            "STDIN",
            "--interface",
            "STDOUT",
            "--at",
            "240,80",
        ],
    );
    cli_ok(
        &c,
        &["workflow", "connect", "digest", "raw.STDOUT", "hash.STDIN"],
    );
    cli_ok(
        &c,
        &[
            "workflow",
            "connect",
            "digest",
            "hash.STDOUT",
            "coordinator",
            "--file-name",
            "digest.txt",
        ],
    );
    cli_ok(
        &c,
        &[
            "workflow",
            "canvas",
            "digest",
            "--zoom",
            "1.5",
            "--pan-x",
            "-20",
            "--snap-to-grid",
        ],
    );
    let shown = cli_ok(&c, &["workflow", "graph", "digest"]);
    assert!(shown.contains("valid: ready to build"), "{shown}");
    let json = cli_ok(&c, &["--json", "workflow", "graph", "digest"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["graph"]["canvas"]["zoom"], 1.5);
    assert_eq!(v["graph"]["nodes"][1]["gui_x"], 240);

    let built = cli_ok(&c, &["workflow", "build", "digest"]);
    assert!(
        built.contains("raw-to-hash") && built.contains("hash-to-coordinator"),
        "{built}"
    );
    let id = task_id(&cli_ok(&c, &["workflow", "execute", "digest"]));
    let detail = c
        .wait_status(id, "completed", Duration::from_secs(300))
        .await;
    // The delivery ran before the consumer and verified what it moved.
    let delivery = step(&detail, "raw-to-hash");
    assert!(
        delivery.completed_at <= step(&detail, "hash").started_at,
        "{detail:#?}"
    );
    let logs = c.logs_text(id).await;
    assert!(logs.contains("chunks verified"), "{logs}");

    let out = c.path("downloaded");
    let got = cli_ok(
        &c,
        &[
            "workflow",
            "download",
            &id.to_string(),
            "--node",
            "hash",
            "--to",
            out.to_str().expect("utf-8"),
        ],
    );
    assert!(got.contains("verified"), "{got}");
    let digest = std::fs::read_to_string(out.join("digest.txt")).expect("downloaded digest");
    assert_eq!(digest.trim(), sha256_of(&big));

    // The agent streamed 640 MiB through its pipes without holding it.
    let pid = c.agent_pid("agent-a").expect("agent running");
    let peak = peak_rss(pid);
    eprintln!(
        "agent peak RSS {} MiB after streaming {MIB} MiB",
        peak / (1024 * 1024)
    );
    assert!(
        peak < (MIB as u64 * 1024 * 1024) / 5,
        "agent peak RSS {} MiB for a {MIB} MiB input",
        peak / (1024 * 1024)
    );
}

/// None when podman is not installed, unless the run demands it (`FERRY_TEST_PODMAN=1`,
/// which CI sets after installing it).
fn podman(dir: &Path) -> Option<podman::Podman> {
    if !podman::installed() {
        assert!(
            std::env::var("FERRY_TEST_PODMAN").is_err(),
            "FERRY_TEST_PODMAN is set but podman is not installed"
        );
        eprintln!("podman is not installed: skipping the DOCKER test");
        return None;
    }
    Some(podman::start(dir).unwrap_or_else(|e| panic!("{e}")))
}

/// A coordinator and one agent (`agent-a`) that runs DOCKER nodes on `engine`.
async fn docker_cluster(engine: &podman::Podman) -> Cluster {
    let mut c = Cluster::with_agent_config(
        &format!("  docker_host: \"{}\"\n", engine.docker_host()),
        "",
    );
    c.start_coordinator().await;
    c.start_agent("source", "agent-a");
    c.wait_for_agents(1).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_node_reads_its_mount_and_stdin_and_its_output_is_downloaded() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some(engine) = podman(scratch.path()) else {
        return;
    };
    let c = docker_cluster(&engine).await;
    let data = c.path("work/datasets");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("words.txt"), "pear\napple\nfig\n").expect("write");
    std::fs::write(data.join("extra.txt"), "kiwi\n").expect("write");
    let graph = format!(
        r#"
name: shout
nodes:
  - {{name: words, service_type: DATA, agent: agent-a, interfaces: [{{type: STDOUT, path: "{words}"}}]}}
  - {{name: extra, service_type: DATA, agent: agent-a, interfaces: [{{type: STDOUT, path: "{extra}"}}]}}
  - name: upper
    service_type: DOCKER
    agent: agent-a
    image: {image}
    entrypoint: [/bin/sh, -c]
    cmd: ["(cat /input/list.txt; cat) | sort | tr a-z A-Z > /output/result.txt && echo done sorting"]
    interfaces:
      - {{type: MOUNT, path: /input/, mount_function: OUTPUT}}
      - {{type: MOUNT, path: /output/, mount_function: INPUT}}
      - {{type: STDIN}}
connections:
  - {{from: {{node: words, interface: STDOUT}}, to: {{node: upper, interface: MOUNT, path: /input/}}, destination_file_name: list.txt}}
  - {{from: {{node: extra, interface: STDOUT}}, to: {{node: upper, interface: STDIN}}}}
  - {{from: {{node: upper, interface: MOUNT, path: /output/}}, to: {{interface: MOUNT}}}}
"#,
        words = data.join("words.txt").display(),
        extra = data.join("extra.txt").display(),
        image = podman::TEST_IMAGE,
    );
    let file = c.path("shout.yaml");
    std::fs::write(&file, graph).expect("write graph");
    cli_ok(
        &c,
        &[
            "workflow",
            "create",
            "shout",
            "--from",
            file.to_str().expect("utf-8"),
        ],
    );
    let id = task_id(&cli_ok(&c, &["workflow", "execute", "shout"]));
    let detail = c
        .wait_status(id, "completed", Duration::from_secs(180))
        .await;
    let logs = c.logs_text(id).await;
    assert!(logs.contains("started container ferry-"), "{logs}");
    assert!(
        logs.contains("done sorting"),
        "the container's stdout is logged: {logs}"
    );
    assert!(step(&detail, "upper").started_at >= step(&detail, "words-to-upper").completed_at);
    let out = c.path("downloaded");
    cli_ok(
        &c,
        &[
            "workflow",
            "download",
            &id.to_string(),
            "--to",
            out.to_str().expect("utf-8"),
        ],
    );
    let result = std::fs::read_to_string(out.join("upper/result.txt")).expect("result");
    assert_eq!(result, "APPLE\nFIG\nKIWI\nPEAR\n");
    // The container was removed afterwards.
    let ps = engine
        .command(&["ps", "-a", "--format", "{{.Names}}"])
        .expect("podman ps");
    let job = &step(&detail, "upper").job_id;
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(&format!("ferry-{job}")),
        "container left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_task_stops_and_removes_its_container() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some(engine) = podman(scratch.path()) else {
        return;
    };
    let c = docker_cluster(&engine).await;
    cli_ok(&c, &["workflow", "create", "nap"]);
    cli_ok(
        &c,
        &[
            "workflow",
            "add-node",
            "nap",
            "--name",
            "sleeper",
            "--type",
            "DOCKER",
            "--agent",
            "agent-a",
            "--image",
            podman::TEST_IMAGE,
            "--cmd",
            "sleep",
            "--cmd",
            "600",
        ],
    );
    let id = task_id(&cli_ok(&c, &["workflow", "execute", "nap"]));
    let detail = c
        .wait_until(id, Duration::from_secs(60), "running", |d| {
            d.steps
                .iter()
                .any(|s| s.status == "running" && !s.job_id.is_empty())
        })
        .await;
    let running = format!("ferry-{}", step(&detail, "sleeper").job_id);
    let listed = || {
        let ps = engine
            .command(&["ps", "-a", "--format", "{{.Names}}"])
            .expect("podman ps");
        String::from_utf8_lossy(&ps.stdout).contains(&running)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !listed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never started"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cli_ok(&c, &["task", "cancel", &id.to_string()]);
    c.wait_status(id, "cancelled", Duration::from_secs(60))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while listed() {
        assert!(
            std::time::Instant::now() < deadline,
            "container {running} still exists after the cancel; agent log:\n{}",
            c.read_log("agent-a")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
