//! `cargo xtask e2e [--faults]`: the built-in CTR pipeline across three hosts.
//!
//! As root the hosts are network namespaces on a private bridge, each with its own address,
//! sshd and agent; the coordinator listens on the bridge. Otherwise they are loopback
//! addresses (127.0.0.21-23) with their own sshd ports. Each host has its own directories and
//! SSH keys; the data source holds keys for both compute hosts, the training host one for the
//! inference host, and the inference host none, so results are pulled by the data source.
//!
//! The task goes through the real `ferry` CLI (request from a YAML file, approvals of the
//! confirmation points), then the run is checked: Hive rows = inference rows, every score in
//! [0, 1], the report with an AUC, every transfer verified, the Prometheus endpoint and the
//! webhook. `--faults` runs a clean task, then one where each daemon is SIGKILLed once at a
//! seeded random point and restarted, and asserts the same Hive rows and scores.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ferry_core::config::TlsConfig;
use ferry_e2e::sshd::{keygen, whoami};
use ferry_e2e::{Bearer, Client};
use ferry_proto::pki::{self, Subject};
use ferry_proto::v1;
use ferry_proto::v1::workflow_service_client::WorkflowServiceClient;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Also run the pipeline with each daemon killed once (seeded) and compare with a clean run.
    #[arg(long)]
    pub faults: bool,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Training rows generated for the data source (inference rows: a quarter).
    #[arg(long, default_value_t = 60_000)]
    pub rows: usize,
    /// Use loopback addresses even when network namespaces are available.
    #[arg(long)]
    pub loopback: bool,
    /// Use release builds of the daemons (and of the raw tools, for `bench pipeline`).
    #[arg(long)]
    pub release: bool,
    /// Keep the run's directory (printed) instead of removing it.
    #[arg(long)]
    pub keep: bool,
    /// The model the pipeline trains (FuxiCTR's name: DeepFM, xDeepFM, PLE, ...); the
    /// experiment is `<model>_e2e`, and a multi-task model scores click and conversion.
    #[arg(long, default_value = "DeepFM")]
    pub model: String,
    /// Name the model through a FuxiCTR configuration on the training host (a
    /// `model_config.yaml` with the experiment `<model>_e2e` and a `dataset_config.yaml`
    /// with the campaign's columns), as a FuxiCTR team would, instead of the request's own
    /// model settings.
    #[arg(long)]
    pub fuxictr: bool,
}

/// A FuxiCTR model folder's `config/` in `dir`, as a FuxiCTR team keeps it: the campaign's
/// columns in `dataset_config.yaml` (dataset `campaign_e2e`), and `model_config.yaml` with a
/// `Base` section and the experiment `<model>_e2e` at the settings the request would carry.
fn write_fuxictr_config(dir: &Path, model: &str) -> anyhow::Result<PathBuf> {
    let config = dir.join("config");
    std::fs::create_dir_all(&config)?;
    let list = |prefix: &str, n: usize| {
        (1..=n)
            .map(|i| format!("{prefix}{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let multi_task = ["MMoE", "ShareBottom", "PLE"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(model));
    let din = model.eq_ignore_ascii_case("DIN");
    let mut dataset = format!(
        "campaign_e2e:\n  data_format: parquet\n  # Not read by the pipeline: its export of sample_sql is the data.\n  train_data: ../data/campaign/train.parquet\n  feature_cols:\n    - {{name: [sample_id, user_id], active: True, dtype: str, type: meta}}\n    - {{name: [{}], active: True, dtype: float, type: numeric, normalizer: MinMaxScaler}}\n    - {{name: [{}], active: True, dtype: str, type: categorical}}\n",
        list("I", 13),
        list("C", 26)
    );
    if din {
        dataset.push_str("    - {name: click_history, active: True, dtype: str, type: sequence, splitter: ^, share_embedding: C10, feature_encoder: null}\n");
    }
    dataset.push_str(if multi_task {
        "  label_col: [{name: click, dtype: float}, {name: conversion, dtype: float}]\n"
    } else {
        "  label_col: {name: click, dtype: float}\n"
    });
    std::fs::write(config.join("dataset_config.yaml"), dataset)?;
    let mut experiment = format!(
        "Base:\n  model_root: ./checkpoints/\n  verbose: 1\n  metrics: [logloss, AUC]\n  optimizer: adam\n  monitor: AUC\n  monitor_mode: max\n  seed: 2024\n\n{model}_e2e:\n  model: {model}\n  dataset_id: campaign_e2e\n  embedding_dim: 8\n  learning_rate: 0.002\n  batch_size: 2048\n  epochs: 2\n"
    );
    if din {
        experiment.push_str("  din_target_field: C10\n  din_sequence_field: click_history\n");
    }
    if multi_task {
        experiment.push_str("  num_tasks: 2\n");
    }
    std::fs::write(config.join("model_config.yaml"), experiment)?;
    Ok(config)
}

/// The three hosts: (agent name = server name, role, daemon).
pub(crate) const HOSTS: [(&str, &str, &str); 3] = [
    ("server_21", "data_source", "source"),
    ("training_server", "training", "train"),
    ("inference_server", "inference", "infer"),
];

/// Steps each daemon (0 = coordinator, 1..=3 = agents) is busy in.
pub(crate) const BUSY: [&[&str]; 4] = [
    &[
        "export_sample",
        "ship_sample",
        "train",
        "ship_model",
        "infer",
        "ship_results",
        "load",
    ],
    &[
        "export_sample",
        "ship_sample",
        "ship_infer_data",
        "ship_results",
        "load",
    ],
    &["train", "ship_model"],
    &["infer"],
];

/// Which hosts hold an SSH key for which (seed 000: "push or pull follows the keys").
fn ssh_keys_of(host: &str) -> &'static [&'static str] {
    match host {
        "server_21" => &["training_server", "inference_server"],
        "training_server" => &["inference_server"],
        _ => &[],
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::ensure_system_packages()?;
    let profile: &[&str] = if opts.release { &["--release"] } else { &[] };
    crate::cargo(&[&["build", "--workspace", "--bins"], profile].concat())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let clean = run_once(&opts, "clean", None, None).await?;
        if opts.faults {
            let mut kills = KillEach::new(opts.seed);
            let faulty = run_once(&opts, "faults", Some(&mut kills), None).await?;
            compare(&clean.rows, &faulty.rows)?;
            println!(
                "== faults: every daemon was killed once and restarted; the Hive table holds the same {} rows and scores as the clean run",
                clean.rows.len()
            );
        }
        println!("== e2e passed");
        Ok(())
    })
}

/// Rows of the loaded partition: sample_id → scores.
pub(crate) type TableRows = BTreeMap<i64, Vec<f64>>;

pub(crate) fn compare(clean: &TableRows, faulty: &TableRows) -> anyhow::Result<()> {
    ensure!(
        clean.len() == faulty.len(),
        "the fault run loaded {} rows, the clean run {}",
        faulty.len(),
        clean.len()
    );
    for (id, scores) in clean {
        let other = faulty
            .get(id)
            .with_context(|| format!("sample {id} is missing after the fault run"))?;
        for (a, b) in scores.iter().zip(other) {
            ensure!(
                (a - b).abs() <= 1e-6,
                "sample {id}: score {b} after the fault run, {a} in the clean run"
            );
        }
    }
    Ok(())
}

// ---- the network -------------------------------------------------------------------------

/// Where the hosts live: namespaces on a bridge, or loopback addresses.
pub(crate) struct Network {
    pub(crate) namespaces: Option<Namespaces>,
    pub(crate) coordinator_ip: String,
    pub(crate) host_ips: [String; 3],
}

pub(crate) struct Namespaces {
    bridge: String,
    pub(crate) names: [String; 3],
}

pub(crate) fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Network {
    fn create(loopback: bool) -> anyhow::Result<Network> {
        if !loopback && crate::is_root() {
            match Self::namespaces() {
                Ok(n) => return Ok(n),
                Err(e) => {
                    println!("== network namespaces unavailable ({e:#}); using loopback addresses")
                }
            }
        }
        Ok(Network {
            namespaces: None,
            coordinator_ip: "127.0.0.1".into(),
            host_ips: [
                "127.0.0.21".into(),
                "127.0.0.22".into(),
                "127.0.0.23".into(),
            ],
        })
    }

    fn namespaces() -> anyhow::Result<Network> {
        // Short, per-run names (interface names are limited to 15 bytes).
        // A run number too: the kernel may still be tearing down the previous run's links.
        static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = (std::process::id() % 10_000) * 10 + run % 10;
        let subnet = 20 + ((std::process::id() + run) % 200);
        remove_stale_namespaces();
        let bridge = format!("fe{tag}br");
        let names = ["src", "trn", "inf"].map(|h| format!("fe{tag}{h}"));
        let net = Network {
            namespaces: Some(Namespaces {
                bridge: bridge.clone(),
                names: names.clone(),
            }),
            coordinator_ip: format!("10.231.{subnet}.1"),
            host_ips: [21, 22, 23].map(|i| format!("10.231.{subnet}.{i}")),
        };
        sh(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.coordinator_ip),
            "dev",
            &bridge,
        ])?;
        sh(&["ip", "link", "set", &bridge, "up"])?;
        for (i, ns) in names.iter().enumerate() {
            let (outside, inside) = (format!("{ns}h"), format!("{ns}n"));
            sh(&["ip", "netns", "add", ns])?;
            sh(&[
                "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            sh(&["ip", "link", "set", &inside, "netns", ns])?;
            sh(&["ip", "link", "set", &outside, "master", &bridge])?;
            sh(&["ip", "link", "set", &outside, "up"])?;
            let addr = format!("{}/24", net.host_ips[i]);
            sh(&["ip", "-n", ns, "addr", "add", &addr, "dev", &inside])?;
            sh(&["ip", "-n", ns, "link", "set", &inside, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        println!(
            "== hosts are network namespaces {} on bridge {bridge} ({}/24)",
            names.join(", "),
            net.coordinator_ip
        );
        Ok(net)
    }
}

/// Namespaces and bridges an interrupted earlier run left behind (`fe<N>src` ...).
fn remove_stale_namespaces() {
    let is_ours = |name: &str, suffixes: &[&str]| {
        name.strip_prefix("fe").is_some_and(|rest| {
            suffixes.iter().any(|s| {
                rest.strip_suffix(s)
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            })
        })
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if is_ours(name, &["src", "trn", "inf"]) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    if let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            if is_ours(name, &["br"]) {
                let _ = Command::new("ip").args(["link", "del", name]).status();
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(ns) = &self.namespaces {
            for n in &ns.names {
                let _ = Command::new("ip").args(["netns", "del", n]).status();
                let _ = Command::new("ip")
                    .args(["link", "del", &format!("{n}h")])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = Command::new("ip")
                .args(["link", "del", &ns.bridge])
                .status();
        }
    }
}

// ---- the processes -----------------------------------------------------------------------

pub(crate) struct Daemon {
    pub(crate) name: String,
    child: Option<Child>,
    spawn: Box<dyn Fn() -> anyhow::Result<Child> + Send>,
}

impl Daemon {
    fn start(
        name: &str,
        spawn: Box<dyn Fn() -> anyhow::Result<Child> + Send>,
    ) -> anyhow::Result<Daemon> {
        let child = spawn()?;
        Ok(Daemon {
            name: name.to_owned(),
            child: Some(child),
            spawn,
        })
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as a service manager stops it (agents close their SSH masters), then
    /// SIGKILL after 10 s.
    pub(crate) fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            ferry_e2e::terminate(c, Duration::from_secs(10));
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = Some((self.spawn)()?);
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log_to(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

fn free_port(ip: &str) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// One host's sshd: its own host key and the keys it lets in.
fn start_sshd(
    net: &Network,
    i: usize,
    dir: &Path,
    port: u16,
    allowed: &[PathBuf],
) -> anyhow::Result<Daemon> {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("sshd is not installed (openssh-server)")?;
    let mut keys = String::new();
    for k in allowed {
        keys.push_str(&std::fs::read_to_string(k.with_extension("pub"))?);
    }
    std::fs::write(dir.join("authorized_keys"), keys)?;
    let config = format!(
        "Port {port}\nListenAddress {ip}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n",
        ip = net.host_ips[i],
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config)?;
    let _ = std::fs::create_dir_all("/run/sshd");
    let config_path = dir.join("sshd_config");
    let log = dir.join("sshd.log");
    let program = PathBuf::from(sshd);
    let cmd_net = NetCommand::of(net, i);
    Daemon::start(
        "sshd",
        Box::new(move || {
            let (out, err) = log_to(&log)?;
            Ok(cmd_net
                .command(&program)
                .args(["-D", "-e", "-f"])
                .arg(&config_path)
                .stdout(out)
                .stderr(err)
                .spawn()?)
        }),
    )
}

/// What is needed to start a command on a host, without borrowing the network.
#[derive(Clone)]
struct NetCommand {
    namespace: Option<String>,
}

impl NetCommand {
    fn of(net: &Network, i: usize) -> NetCommand {
        NetCommand {
            namespace: net.namespaces.as_ref().map(|n| n.names[i].clone()),
        }
    }

    fn command(&self, program: &Path) -> Command {
        match &self.namespace {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

fn wait_for_port(ip: &str, port: u16, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect((ip, port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "{what} did not start on {ip}:{port}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

// ---- a webhook receiver --------------------------------------------------------------------

/// Collects the bodies POSTed to it.
fn webhook_receiver(ip: &str) -> anyhow::Result<(String, Arc<Mutex<Vec<String>>>)> {
    let listener = TcpListener::bind((ip, 0))?;
    let url = format!("http://{}/ferry-hook", listener.local_addr()?);
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        if let Ok(mut b) = sink.lock() {
                            b.push(body.to_owned());
                        }
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        }
    });
    Ok((url, bodies))
}

// ---- one run -------------------------------------------------------------------------------

/// What a fault injector may change before the daemons start (`cargo xtask chaos`).
pub(crate) struct Setup<'a> {
    pub(crate) net: &'a Network,
    pub(crate) host_dirs: &'a [PathBuf],
    /// Extra environment of the coordinator process (its clock, for one).
    pub(crate) coordinator_env: Vec<(String, String)>,
    /// The coordinator's database; SQLite in the run's directory unless replaced.
    pub(crate) database_url: Option<String>,
}

/// What a fault injector sees and may act on while the task runs.
pub(crate) struct World<'a> {
    /// 0 = the coordinator, 1..=3 = the agents of [`HOSTS`].
    pub(crate) daemons: &'a mut [Daemon],
    /// One per host of [`HOSTS`].
    pub(crate) sshds: &'a mut [Daemon],
    pub(crate) host_dirs: &'a [PathBuf],
    pub(crate) detail: &'a v1::TaskDetail,
    /// When each step was first seen running (or completed).
    pub(crate) running_since: &'a BTreeMap<String, Instant>,
}

impl World<'_> {
    pub(crate) fn step(&self, name: &str) -> Option<&v1::Step> {
        self.detail.steps.iter().find(|s| s.name == name)
    }

    /// How long `step` has been running; `None` before it starts.
    pub(crate) fn running_for(&self, step: &str) -> Option<Duration> {
        self.running_since.get(step).map(Instant::elapsed)
    }

    pub(crate) fn completed(&self, step: &str) -> bool {
        self.step(step).is_some_and(|s| s.status == "completed")
    }
}

/// Injects faults into one run: prepares the hosts, acts as the task goes, and puts
/// everything back at the end.
pub(crate) trait Injector {
    fn setup(&mut self, _setup: &mut Setup<'_>) -> anyhow::Result<()> {
        Ok(())
    }
    /// Called about four times a second while the task runs.
    fn tick(&mut self, world: &mut World<'_>) -> anyhow::Result<()>;
    /// The task is over: restore what is still broken; an error if a planned fault never
    /// fired.
    fn finish(&mut self, world: &mut World<'_>) -> anyhow::Result<()>;
}

/// `e2e --faults`: each daemon SIGKILLed once, when a drawn step has been running for a
/// drawn time, and restarted a second later.
struct KillEach {
    faults: Vec<Kill>,
}

struct Kill {
    daemon: usize,
    step: &'static str,
    after: Duration,
    done: bool,
}

/// A small seeded generator (xorshift): the same seed draws the same faults.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            | 1)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.below(1 << 53) as f64 / (1u64 << 53) as f64) < p
    }
}

impl KillEach {
    /// Daemons: 0 = coordinator, 1..=3 = the agents of HOSTS.
    fn new(seed: u64) -> KillEach {
        let mut rng = Rng::new(seed);
        let faults: Vec<Kill> = BUSY
            .iter()
            .enumerate()
            .map(|(daemon, steps)| Kill {
                daemon,
                step: steps[rng.below(steps.len() as u64) as usize],
                after: Duration::from_millis(200 + rng.below(2_500)),
                done: false,
            })
            .collect();
        for f in &faults {
            println!(
                "== fault plan: kill {} {:.1}s after `{}` starts",
                daemon_name(f.daemon),
                f.after.as_secs_f64(),
                f.step
            );
        }
        KillEach { faults }
    }
}

impl Injector for KillEach {
    fn tick(&mut self, world: &mut World<'_>) -> anyhow::Result<()> {
        for f in self.faults.iter_mut().filter(|f| !f.done) {
            // At the drawn moment, or at the latest once the step is over (a short step may
            // start and finish between two looks), so every fault lands before the task ends.
            if world
                .running_for(f.step)
                .is_some_and(|t| t >= f.after || world.completed(f.step))
            {
                f.done = true;
                println!(
                    "== FAULT: SIGKILL {} (during or after `{}`)",
                    daemon_name(f.daemon),
                    f.step
                );
                world.daemons[f.daemon].kill();
                std::thread::sleep(Duration::from_secs(1));
                world.daemons[f.daemon].restart()?;
                println!("== {} restarted", world.daemons[f.daemon].name);
            }
        }
        Ok(())
    }

    fn finish(&mut self, _world: &mut World<'_>) -> anyhow::Result<()> {
        if let Some(f) = self.faults.iter().find(|f| !f.done) {
            bail!(
                "the fault for {} never fired (step `{}` never ran)",
                daemon_name(f.daemon),
                f.step
            );
        }
        Ok(())
    }
}

/// What a run leaves for comparison with another.
pub(crate) struct RunOutcome {
    pub(crate) rows: TableRows,
    /// From task creation to completion.
    pub(crate) elapsed: Duration,
    /// Bytes rsync sent as literal data, over the transfer steps' successful attempts.
    pub(crate) literal_bytes: f64,
    /// Chunks re-sent because they failed verification at the destination.
    pub(crate) chunk_retries: u64,
    /// Each step's log lines with the words holding numbers, and the run's paths, blanked out.
    pub(crate) line_kinds: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// The run's directory (logs, database), removed when dropped unless kept.
    pub(crate) dir: Option<tempfile::TempDir>,
}

/// Connects over TLS (the deployment's CA) with `token`, retrying while the coordinator
/// starts.
async fn connect(url: &str, tls: &TlsConfig, token: &str) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let endpoint = ferry_proto::tls::endpoint(url, tls)?;
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                let bearer = Bearer::new(Some(token)).map_err(anyhow::Error::msg)?;
                return Ok(WorkflowServiceClient::with_interceptor(channel, bearer));
            }
            Err(e) if Instant::now() > deadline => {
                bail!("coordinator at {url} does not answer: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The deployment's trust, as production sets it up: a CA, the coordinator's certificate
/// for the address agents reach it at, one certificate per agent, a bootstrap admin token.
struct Trust {
    dir: PathBuf,
    admin_token: String,
}

impl Trust {
    fn create(base: &Path, bin_dir: &Path, coordinator_ip: &str) -> anyhow::Result<Trust> {
        let dir = base.join("pki");
        pki::init(&dir, 30)?;
        pki::issue(
            &dir,
            &Subject::Coordinator(vec![coordinator_ip.to_owned(), "127.0.0.1".into()]),
            30,
            &dir,
        )?;
        for (name, _, _) in HOSTS {
            pki::issue(&dir, &Subject::Agent((*name).to_owned()), 30, &dir)?;
        }
        let out = Command::new(bin_dir.join("ferry"))
            .args(["token", "generate"])
            .output()?;
        ensure!(out.status.success(), "`ferry token generate` failed");
        let admin_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ferry_e2e::write_private(&dir.join("bootstrap.token"), &admin_token);
        Ok(Trust { dir, admin_token })
    }

    /// The coordinator's `tls` and `auth` sections.
    fn coordinator_yaml(&self) -> String {
        format!(
            "tls:\n  ca: \"{d}/ca.pem\"\n  cert: \"{d}/coordinator.pem\"\n  key: \"{d}/coordinator-key.pem\"\nauth:\n  bootstrap_token_file: \"{d}/bootstrap.token\"\n",
            d = self.dir.display()
        )
    }

    /// An agent's `tls` section: its own certificate.
    fn agent_yaml(&self, name: &str) -> String {
        format!(
            "tls:\n  ca: \"{d}/ca.pem\"\n  cert: \"{d}/agent-{name}.pem\"\n  key: \"{d}/agent-{name}-key.pem\"\n",
            d = self.dir.display()
        )
    }

    /// What clients use: the CA only (they authenticate with tokens).
    fn client_tls(&self) -> TlsConfig {
        TlsConfig {
            ca: self.dir.join("ca.pem"),
            ..TlsConfig::default()
        }
    }
}

/// Options of `cargo xtask bench pipeline`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Training rows; the default is the demo's size.
    #[arg(long, default_value_t = 200_000)]
    pub rows: usize,
    #[arg(long)]
    pub loopback: bool,
    /// Release builds of the daemons and of the raw tools.
    #[arg(long)]
    pub release: bool,
    /// Rounds, each a fresh set of hosts: the raw tools, Ferry, the raw tools again.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Wall times of one round of `cargo xtask bench pipeline`: the raw tools before and after
/// Ferry's run, with where each spent its time.
#[derive(Debug, Default)]
pub struct PipelineTimes {
    pub raw: Vec<Duration>,
    pub ferry: Duration,
    /// Each raw run's stages, `(what, seconds)` in the order they ended.
    pub raw_stages: Vec<Vec<(String, f64)>>,
    /// Ferry's steps, `(step, seconds from started to completed)`.
    pub ferry_steps: Vec<(String, f64)>,
}

/// One run of the pipeline in a fresh directory; a failed run keeps its directory (logs,
/// database) and says where.
pub(crate) async fn run_once(
    opts: &Options,
    label: &str,
    chaos: Option<&mut dyn Injector>,
    bench: Option<&mut PipelineTimes>,
) -> anyhow::Result<RunOutcome> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("ferry-e2e-{label}-"))
        .tempdir()?;
    let ran = run_in(dir.path(), opts, chaos, bench).await;
    // Every daemon has stopped: none may have left an SSH master (or its client) behind.
    let left = ferry_transfer::ssh::ssh_processes_under(dir.path());
    let ran = match ran {
        Ok(_) if !left.is_empty() => Err(anyhow::anyhow!(
            "ssh processes {left:?} outlived the run's daemons"
        )),
        other => other,
    };
    match ran {
        Ok(mut outcome) => {
            if opts.keep {
                println!("== kept {}", dir.keep().display());
            } else {
                outcome.dir = Some(dir);
            }
            Ok(outcome)
        }
        Err(e) => {
            let kept = dir.keep();
            Err(e.context(format!(
                "the run's logs and database are kept in {}",
                kept.display()
            )))
        }
    }
}

async fn run_in(
    base: &Path,
    opts: &Options,
    mut chaos: Option<&mut dyn Injector>,
    mut bench: Option<&mut PipelineTimes>,
) -> anyhow::Result<RunOutcome> {
    let base = base.to_owned();
    // The benchmark times the work, not people: no confirmation points.
    let (table, confirm_above) = if bench.is_some() {
        ("results.campaign_scores", 0)
    } else {
        ("prod.campaign_scores", 2 * 1024 * 1024)
    };
    let bin_dir = crate::target_dir().join(if opts.release { "release" } else { "debug" });
    println!("\n== e2e in {}", base.display());
    let net = Network::create(opts.loopback)?;
    let user = whoami();

    // Keys, host directories and sshd per host.
    let mut ssh_ports = [0u16; 3];
    let mut host_dirs = Vec::new();
    for (i, (name, _, _)) in HOSTS.iter().enumerate() {
        let h = base.join("hosts").join(name);
        for sub in ["ssh", "data", "models", "staging", "work", "warehouse"] {
            std::fs::create_dir_all(h.join(sub))?;
        }
        keygen(&h.join("ssh/host_key"));
        keygen(&h.join("ssh/user_key"));
        ssh_ports[i] = if net.namespaces.is_some() {
            22
        } else {
            free_port(&net.host_ips[i])?
        };
        host_dirs.push(h);
    }
    let mut setup = Setup {
        net: &net,
        host_dirs: &host_dirs,
        coordinator_env: Vec::new(),
        database_url: None,
    };
    if let Some(c) = chaos.as_deref_mut() {
        c.setup(&mut setup)?;
    }
    let (coordinator_env, database_url) = (setup.coordinator_env, setup.database_url);
    let mut sshds = Vec::new();
    for (i, (name, _, _)) in HOSTS.iter().enumerate() {
        let allowed: Vec<PathBuf> = HOSTS
            .iter()
            .enumerate()
            .filter(|(_, (other, _, _))| ssh_keys_of(other).contains(name))
            .map(|(j, _)| host_dirs[j].join("ssh/user_key"))
            .collect();
        sshds.push(start_sshd(
            &net,
            i,
            &host_dirs[i].join("ssh"),
            ssh_ports[i],
            &allowed,
        )?);
    }
    for (i, h) in host_dirs.iter().enumerate() {
        if net.namespaces.is_none() {
            wait_for_port(
                &net.host_ips[i],
                ssh_ports[i],
                "sshd",
                &h.join("ssh/sshd.log"),
            )?;
        }
    }

    // The data source's warehouse.
    let mut spec = ferry_sampledata::SampleSpec::new(opts.rows, 2024);
    spec.rows_per_part = (opts.rows / 3).max(1);
    ferry_sampledata::generate(&host_dirs[0].join("warehouse"), &spec).context("sample data")?;
    println!(
        "== server_21's warehouse: campaign_sample {} rows ({}), campaign_infer {} rows ({})",
        spec.rows, spec.sample_day, spec.infer_rows, spec.infer_day
    );

    // Coordinator.
    let coord_port = free_port(&net.coordinator_ip)?;
    let http_port = free_port(&net.coordinator_ip)?;
    let (hook_url, hook_bodies) = webhook_receiver(&net.coordinator_ip)?;
    let coord_dir = base.join("coordinator");
    std::fs::create_dir_all(&coord_dir)?;
    let coord_config = coord_dir.join("ferry.yaml");
    let trust = Trust::create(&base, &bin_dir, &net.coordinator_ip)?;
    std::fs::write(
        &coord_config,
        trust.coordinator_yaml()
            + &format!(
                "coordinator:\n  listen: \"{ip}:{coord_port}\"\n  database_url: \"{db}\"\n  http_listen: \"{ip}:{http_port}\"\n  data_dir: \"{data}\"\nworkflow:\n  heartbeat_interval: 1\n  agent_timeout: 4\n  cleanup_staging: true\n  keep_checkpoints: 2\n  notification:\n    on_complete: true\n    on_failure: true\n    webhook_url: \"{hook_url}\"\ntransfer:\n  confirm_above: {confirm_above}\n",
                ip = net.coordinator_ip,
                db = database_url.clone().unwrap_or_else(|| format!(
                    "sqlite://{}?mode=rwc",
                    coord_dir.join("ferry.db").display()
                )),
                data = coord_dir.join("data").display()
            ),
    )?;
    let coord_url = format!("https://{}:{coord_port}", net.coordinator_ip);
    let mut daemons = Vec::new();
    {
        let program = bin_dir.join("ferry-coordinatord");
        let config = coord_config.clone();
        let log = coord_dir.join("coordinator.log");
        daemons.push(Daemon::start(
            "coordinator",
            Box::new(move || {
                let (out, err) = log_to(&log)?;
                Ok(Command::new(&program)
                    .arg("--config")
                    .arg(&config)
                    .envs(coordinator_env.iter().map(|(k, v)| (k, v)))
                    .env("RUST_LOG", "info")
                    .stdout(out)
                    .stderr(err)
                    .spawn()?)
            }),
        )?);
    }
    let first_coordinator = daemons[0].pid();
    let mut client = connect(&coord_url, &trust.client_tls(), &trust.admin_token).await?;
    // The run acts as a person would: a token of its own, not the bootstrap one.
    let e2e_token = client
        .create_token(v1::CreateTokenRequest {
            name: "e2e".into(),
            roles: vec!["operator".into(), "approver".into(), "author".into()],
        })
        .await?
        .into_inner()
        .token;
    let token_file = coord_dir.join("e2e.token");
    ferry_e2e::write_private(&token_file, &e2e_token);
    let cli_config = coord_dir.join("cli.yaml");
    std::fs::write(
        &cli_config,
        format!(
            "tls:\n  ca: \"{}\"\nauth:\n  token_file: \"{}\"\n",
            trust.dir.join("ca.pem").display(),
            token_file.display()
        ),
    )?;
    let mut client = connect(&coord_url, &trust.client_tls(), &e2e_token).await?;

    // The clean run also runs seed 003's graph scenario; its DOCKER node runs on the
    // training host through Podman's Docker-compatible service.
    let podman = if bench.is_none() && chaos.is_none() {
        Some(ferry_e2e::podman::start(&base.join("podman")).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    // Agents, each with its own config: roots, keys for the hosts it may reach.
    for (i, (name, _, daemon)) in HOSTS.iter().enumerate() {
        let docker = match &podman {
            Some(p) if *name == "training_server" => {
                format!("  docker_host: \"{}\"\n", p.docker_host())
            }
            _ => String::new(),
        };
        let h = &host_dirs[i];
        let mut servers = String::new();
        let mut known = String::new();
        for (j, (other, other_role, _)) in HOSTS.iter().enumerate() {
            if !ssh_keys_of(name).contains(other) {
                continue;
            }
            servers.push_str(&format!(
                "  {other}:\n    host: \"{}\"\n    port: {}\n    username: \"{user}\"\n    key_path: \"{}\"\n    role: {other_role}\n",
                net.host_ips[j],
                ssh_ports[j],
                h.join("ssh/user_key").display()
            ));
            let host_key = std::fs::read_to_string(host_dirs[j].join("ssh/host_key.pub"))?;
            let host = if ssh_ports[j] == 22 {
                net.host_ips[j].clone()
            } else {
                format!("[{}]:{}", net.host_ips[j], ssh_ports[j])
            };
            known.push_str(&format!("{host} {host_key}"));
        }
        std::fs::write(h.join("ssh/known_hosts"), known)?;
        let config = h.join("agent.yaml");
        std::fs::write(
            &config,
            trust.agent_yaml(name) + &format!(
                "agent:\n  name: {name}\n  coordinator_url: \"{coord_url}\"\n  work_dir: \"{d}/work\"\n  reconnect_interval_ms: 200\n  roots: [\"{d}\"]\n  known_hosts: \"{d}/ssh/known_hosts\"\n{docker}servers:\n{servers}storage:\n  staging_dir: \"{d}/staging\"\nfuxictr_paths:\n  data_root: \"{d}/data\"\n  model_root: \"{d}/models\"\ntransfer:\n  chunk_size: 1048576\n  remote_ferry: \"{ferry}\"\nsql:\n  warehouse_dir: \"{d}/warehouse\"\n  rows_per_part: {part}\n  production_tables: [\"prod.*\"]\nworkflow:\n  heartbeat_interval: 1\n",
                d = h.display(),
                ferry = bin_dir.join("ferry").display(),
                part = spec.rows_per_part,
                servers = if servers.is_empty() { "  {}\n".to_owned() } else { servers },
            )
            .replace("servers:\n  {}\n", "servers: {}\n"),
        )?;
        let program = bin_dir.join(format!("ferry-{daemon}-agentd"));
        let log = h.join("agent.log");
        let cmd_net = NetCommand::of(&net, i);
        daemons.push(Daemon::start(
            name,
            Box::new(move || {
                let (out, err) = log_to(&log)?;
                Ok(cmd_net
                    .command(&program)
                    .arg("--config")
                    .arg(&config)
                    .env("RUST_LOG", "info")
                    .stdout(out)
                    .stderr(err)
                    .spawn()?)
            }),
        )?);
    }
    wait_for_agents(&mut client, 3).await?;
    let agents = client
        .list_agents(v1::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    for a in &agents {
        println!(
            "== agent {} ({}) on {}: SSH keys for [{}]",
            a.name,
            a.role,
            net.host_ips[HOSTS.iter().position(|h| h.0 == a.name).unwrap_or(0)],
            a.ssh_to.join(", ")
        );
    }

    // The task request, through the CLI: the model settings in the request, or in a FuxiCTR
    // configuration on the training host.
    let model = if opts.fuxictr {
        let config = write_fuxictr_config(&host_dirs[1].join("fuxictr"), &opts.model)?;
        println!(
            "== FuxiCTR configuration on the training host: {}",
            config.display()
        );
        format!("fuxictr_config: \"{}\"\n", config.display())
    } else {
        format!(
            "model: {}\nepochs: 2\nbatch_size: 2048\nmodel_params:\n  embedding_dim: 8\n  hidden_units: [64, 64]\n  learning_rate: 0.002\n  seed: 2024\n",
            opts.model
        )
    };
    let request = base.join("request.yaml");
    std::fs::write(
        &request,
        format!(
            "name: campaign_e2e\nexperiment_id: {}_e2e\nsample_sql: \"SELECT * FROM campaign_sample WHERE dt = '{}'\"\ninfer_sql: \"SELECT * FROM campaign_infer WHERE dt = '{}'\"\nhdfs_path: /hdfs/data/campaign\nhive_table: {table}\npartition: dt={}\n{model}",
            opts.model,
            spec.sample_day,
            spec.infer_day,
            spec.infer_day,
            table = table
        ),
    )?;
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(bin_dir.join("ferry"))
            .env_remove("FERRY_TOKEN")
            .arg("--config")
            .arg(&cli_config)
            .arg("--coordinator")
            .arg(&coord_url)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "`ferry {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let raw = RawRun {
        hosts: (0..3).map(|i| NetCommand::of(&net, i)).collect(),
        dirs: host_dirs.clone(),
        ips: net.host_ips.clone(),
        ports: ssh_ports,
        user: user.clone(),
        examples: bin_dir.join("examples"),
        sample_sql: format!(
            "SELECT * FROM campaign_sample WHERE dt = '{}'",
            spec.sample_day
        ),
        infer_sql: format!(
            "SELECT * FROM campaign_infer WHERE dt = '{}'",
            spec.infer_day
        ),
        partition: format!("dt={}", spec.infer_day),
        rows_per_part: spec.rows_per_part,
    };
    if let Some(b) = bench.as_deref_mut() {
        let (t, stages) = raw.run()?;
        println!("== raw tools by hand: {:.1}s", t.as_secs_f64());
        b.raw.push(t);
        b.raw_stages.push(stages);
    }
    let ferry_started = Instant::now();
    let created = cli(&[
        "--json",
        "task",
        "create",
        "--request",
        &request.display().to_string(),
    ])?;
    let task: serde_json::Value = serde_json::from_str(&created).context("ferry --json output")?;
    let task_id = task["id"].as_i64().context("task id in the CLI's answer")?;
    println!(
        "== task {task_id} created with `ferry task create --request {}`",
        request.display()
    );

    // Follow it: print the log, approve confirmation points, inject faults. The
    // coordinator may be down (a fault): then the client reconnects on a later look.
    let mut running_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut last_log = 0i64;
    let mut log: Vec<v1::LogEntry> = Vec::new();
    let mut live: Option<Client> = Some(client);
    let mut last_seen = v1::TaskDetail::default();
    let started = Instant::now();
    let detail = loop {
        if started.elapsed() > Duration::from_secs(1200) {
            bail!("task {task_id} did not finish in 20 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Faults go on (and are put back) while the coordinator does not answer.
        if let Some(c) = chaos.as_deref_mut()
            && live.is_none()
        {
            c.tick(&mut World {
                daemons: &mut daemons,
                sshds: &mut sshds,
                host_dirs: &host_dirs,
                detail: &last_seen,
                running_since: &running_since,
            })?;
        }
        let Some(client) = live.as_mut() else {
            live = tokio::time::timeout(
                Duration::from_secs(2),
                connect(&coord_url, &trust.client_tls(), &e2e_token),
            )
            .await
            .ok()
            .and_then(Result::ok);
            continue;
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_task(v1::TaskRef { task_id }),
        )
        .await;
        let d = match answer {
            Ok(Ok(d)) => d.into_inner(),
            failed => {
                if chaos.is_none() {
                    bail!("the coordinator failed to answer: {failed:?}");
                }
                live = None;
                continue;
            }
        };
        if let Ok(logs) = client
            .get_logs(v1::GetLogsRequest {
                task_id,
                after_id: last_log,
                limit: 0,
            })
            .await
        {
            for e in logs.into_inner().entries {
                last_log = last_log.max(e.id);
                let time = e.timestamp.get(11..19).unwrap_or(&e.timestamp);
                let stage = ferry_core::pipeline::log_label(&e.step);
                println!("[{time}] [{stage}] {}", e.message);
                log.push(e);
            }
        }
        for s in &d.steps {
            if s.status == "running" || s.status == "completed" {
                running_since
                    .entry(s.name.clone())
                    .or_insert_with(Instant::now);
            }
            if s.status == "awaiting_approval" {
                match cli(&[
                    "approve",
                    &task_id.to_string(),
                    &s.name,
                    "-c",
                    "checked by the e2e run",
                ]) {
                    Ok(out) => print!("== {out}"),
                    // The coordinator may be down; the next look approves.
                    Err(e) if chaos.is_some() => println!("== approval not given yet: {e:#}"),
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(c) = chaos.as_deref_mut() {
            c.tick(&mut World {
                daemons: &mut daemons,
                sshds: &mut sshds,
                host_dirs: &host_dirs,
                detail: &d,
                running_since: &running_since,
            })?;
        }
        let status = d
            .task
            .as_ref()
            .map(|t| t.status.clone())
            .unwrap_or_default();
        if status == "completed" {
            break d;
        }
        if status == "failed"
            || status == "cancelled"
            || (status == "paused" && !d.steps.iter().any(|s| s.status == "awaiting_approval"))
        {
            let reason = d
                .task
                .as_ref()
                .map(|t| t.status_reason.clone())
                .unwrap_or_default();
            bail!("task {task_id} ended {status}: {reason}");
        }
        last_seen = d;
    };
    let elapsed = started.elapsed();
    let ferry_time = ferry_started.elapsed();
    let faulted = chaos.is_some();
    if let Some(c) = chaos {
        c.finish(&mut World {
            daemons: &mut daemons,
            sshds: &mut sshds,
            host_dirs: &host_dirs,
            detail: &detail,
            running_since: &running_since,
        })?;
    }
    // A fault may have struck after the last look (the coordinator killed once the task was
    // done), and putting the faults back may have restarted it: a new connection then, which
    // waits for it to answer.
    let mut client = match live {
        Some(c) if !faulted => c,
        _ => connect(&coord_url, &trust.client_tls(), &e2e_token).await?,
    };
    // The rest of the log, then what it must show.
    let rest = client
        .get_logs(v1::GetLogsRequest {
            task_id,
            after_id: last_log,
            limit: 0,
        })
        .await?
        .into_inner()
        .entries;
    log.extend(rest);
    let line_kinds = check_log(&log, &detail, &base)?;
    println!(
        "== task {task_id} completed in {:.0}s",
        elapsed.as_secs_f64()
    );

    // ---- checks ----
    let metrics = client
        .get_metrics(v1::TaskRef { task_id })
        .await?
        .into_inner()
        .metrics;
    let metric = |step: &str, name: &str| {
        metrics
            .iter()
            .filter(|m| m.step == step && m.name == name)
            .map(|m| m.value)
            .next_back()
    };
    let infer_rows =
        metric("infer", "inference_rows").context("the infer step reported no row count")? as usize;
    ensure!(
        infer_rows == spec.infer_rows,
        "inference scored {infer_rows} rows, the data source exported {}",
        spec.infer_rows
    );
    let (db, table_name) = table.split_once('.').unwrap_or(("default", table));
    let partition = host_dirs[0]
        .join(format!("warehouse/{db}.db/{table_name}"))
        .join(format!("dt={}", spec.infer_day));
    let rows = read_scores(&partition)?;
    ensure!(
        rows.len() == infer_rows,
        "the Hive partition holds {} rows, inference produced {infer_rows}",
        rows.len()
    );
    let bad = rows
        .values()
        .flatten()
        .filter(|s| !(0.0..=1.0).contains(*s))
        .count();
    ensure!(bad == 0, "{bad} scores outside [0, 1]");
    println!(
        "== Hive table {table}/dt={}: {} rows = inference rows, every score in [0, 1]",
        spec.infer_day,
        rows.len()
    );

    let report_path = host_dirs[1].join(format!(
        "models/campaign_e2e/{}_e2e_report.json",
        opts.model
    ));
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path)
            .with_context(|| format!("no report at {}", report_path.display()))?,
    )?;
    let auc = report["training"]["best_val_auc"]
        .as_f64()
        .context("the report has no AUC")?;
    ensure!(auc > 0.6, "validation AUC {auc} is no better than chance");
    println!(
        "== report {}: best validation AUC {auc:.4}",
        report_path.display()
    );

    let chunk_retries = check_transfers_verified(&mut client, &detail).await?;
    ensure!(
        !host_dirs[0]
            .join(format!("staging/campaign_e2e_task{task_id}"))
            .exists(),
        "the monitor stage left the staging data behind"
    );

    // The HTTP face over the same TLS: the task as seed 000 §9 shows it, and the metrics.
    let http_base = format!("https://{}:{http_port}", net.coordinator_ip);
    let ca = trust.dir.join("ca.pem");
    let shown = https_get(
        &http_base,
        &ca,
        &e2e_token,
        &format!("/api/workflow/tasks/{task_id}/status"),
    )?;
    ensure!(
        shown.contains("\"status\":\"completed\""),
        "GET /api/workflow/tasks/{task_id}/status does not show the task completed: {shown}"
    );
    let prom = https_get(&http_base, &ca, &e2e_token, "/metrics")?;
    // Prometheus metrics live in the process: a coordinator restarted by a fault starts
    // them again from zero (scrapers see a counter reset), so only a coordinator that ran
    // the whole task must show them all.
    let restarted = daemons[0].pid() != first_coordinator;
    for name in [
        "workflow_duration_seconds",
        "stage_duration_seconds_bucket",
        "transfer_bytes_total",
        "transfer_duration_seconds",
        "training_loss",
        "inference_throughput",
        "retry_count_total",
    ] {
        ensure!(
            restarted || prom.contains(name),
            "the metrics endpoint lacks {name}"
        );
    }
    ensure!(
        restarted
            || prom.contains(
                "workflow_duration_seconds_count{workflow=\"ctr_pipeline\",status=\"completed\"} 1"
            ),
        "the metrics do not count the completed workflow:\n{prom}"
    );
    println!(
        "== HTTP API {http_base}/api/workflow/tasks/{task_id} shows the task completed; {http_base}/metrics serves the seed's metrics"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = hook_bodies.lock().map(|b| b.clone()).unwrap_or_default();
        if let Some(b) = got.iter().find(|b| b.contains("\"completed\"")) {
            println!("== webhook received: {b}");
            break;
        }
        ensure!(Instant::now() < deadline, "no completion webhook arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if podman.is_some() {
        let graph = crate::e2e_graph::GraphRun {
            base: &base,
            host_dirs: &host_dirs,
            cli: &cli,
        };
        crate::e2e_graph::run(&graph, &mut client).await?;
    }
    if let Some(b) = bench {
        b.ferry = ferry_time;
        b.ferry_steps = detail
            .steps
            .iter()
            .filter_map(|s| {
                let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
                let took = at(&s.completed_at)? - at(&s.started_at)?;
                Some((s.name.clone(), took.as_seconds_f64()))
            })
            .collect();
        let (t, stages) = raw.run()?;
        println!("== raw tools by hand: {:.1}s", t.as_secs_f64());
        b.raw.push(t);
        b.raw_stages.push(stages);
    }
    drop(daemons);
    drop(podman);
    drop(sshds);
    drop(net);
    let literal_bytes = detail
        .steps
        .iter()
        .filter(|s| s.kind == "transfer")
        .filter_map(|s| metric(&s.name, "transfer_literal_bytes"))
        .sum();
    Ok(RunOutcome {
        rows,
        elapsed,
        literal_bytes,
        chunk_retries,
        line_kinds,
        dir: None,
    })
}

/// Every transfer step of the task verified all its chunks at the destination. Returns the
/// chunks re-sent after failing verification.
pub(crate) async fn check_transfers_verified(
    client: &mut Client,
    detail: &v1::TaskDetail,
) -> anyhow::Result<u64> {
    let mut retries = 0;
    let task_id = detail.task.as_ref().map(|t| t.id).unwrap_or_default();
    let progress = client
        .get_progress(v1::TaskRef { task_id })
        .await?
        .into_inner()
        .steps;
    for s in detail.steps.iter().filter(|s| s.kind == "transfer") {
        let p = progress
            .iter()
            .find(|p| p.step == s.name)
            .with_context(|| format!("no progress for {}", s.name))?;
        ensure!(
            p.chunks_total > 0 && p.chunks_completed == p.chunks_total,
            "{}: {}/{} chunks verified",
            s.name,
            p.chunks_completed,
            p.chunks_total
        );
        println!(
            "== {} on {}: {}/{} chunks verified at the destination",
            s.name, s.agent, p.chunks_completed, p.chunks_total
        );
        retries += u64::from(p.chunk_retries);
    }
    Ok(retries)
}

/// The task's log is whole: every step's run ends in exactly one completion, nothing runs
/// a step again after it completed, ids only grow. Returns each step's kinds of lines
/// (numbers and the run's paths blanked) for comparison with another run.
fn check_log(
    log: &[v1::LogEntry],
    detail: &v1::TaskDetail,
    base: &Path,
) -> anyhow::Result<BTreeMap<String, std::collections::BTreeSet<String>>> {
    ensure!(
        log.windows(2).all(|w| w[0].id < w[1].id),
        "the task's log ids do not only grow"
    );
    let base = base.display().to_string();
    let mut kinds: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut completed: BTreeMap<&str, usize> = BTreeMap::new();
    for e in log {
        if e.message.starts_with("completed in ") {
            *completed.entry(e.step.as_str()).or_default() += 1;
        }
        if e.message.starts_with("running on agent ") && completed.contains_key(e.step.as_str()) {
            bail!(
                "step `{}` ran again after it completed (log line {}: {})",
                e.step,
                e.id,
                e.message
            );
        }
        // Numbers, and the units a size or a rate is printed in (a slowed link prints
        // `756.8 KiB/s` where a clean run printed `4.5 MiB/s`), are not what makes a kind.
        let kind: String = e
            .message
            .replace(&base, "<run>")
            .split_whitespace()
            .map(|w| {
                let unit = w.trim_end_matches([')', ',', ';']);
                if w.chars().any(|c| c.is_ascii_digit()) {
                    "#"
                } else if matches!(
                    unit,
                    "B" | "KiB" | "MiB" | "GiB" | "TiB" | "B/s" | "KiB/s" | "MiB/s" | "GiB/s"
                ) {
                    "<unit>"
                } else {
                    w
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        kinds.entry(e.step.clone()).or_default().insert(kind);
    }
    for s in detail.steps.iter().filter(|s| s.status == "completed") {
        let n = completed.get(s.name.as_str()).copied().unwrap_or(0);
        ensure!(
            n == 1,
            "step `{}` has {n} completion lines in the task's log (one expected)",
            s.name
        );
    }
    Ok(kinds)
}

fn daemon_name(i: usize) -> &'static str {
    match i {
        0 => "coordinator",
        n => HOSTS[n - 1].0,
    }
}

async fn wait_for_agents(client: &mut Client, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents = client
            .list_agents(v1::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        if agents.iter().filter(|a| a.connected).count() >= n {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {} of {n} agents connected",
            agents.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GETs `path` from the coordinator's HTTP face with curl, over TLS checked against `ca`,
/// with `token`; the body of a 200 answer.
fn https_get(base: &str, ca: &Path, token: &str, path: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--fail-with-body",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(ca)
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{base}{path}"))
        .output()
        .context("running curl")?;
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "GET {path}: {} {body}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(body)
}

/// sample_id → score columns of every Parquet file in the partition directory.
fn read_scores(partition: &Path) -> anyhow::Result<TableRows> {
    use arrow::array::{Array, Float32Array, Float64Array, Int64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut rows = TableRows::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(partition)
        .with_context(|| format!("no Hive partition at {}", partition.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    ensure!(
        !files.is_empty(),
        "no Parquet files in {}",
        partition.display()
    );
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            let ids = batch
                .column_by_name("sample_id")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .context("no Int64 sample_id column")?;
            let schema = batch.schema();
            let score_cols: Vec<usize> = schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name().ends_with("_score"))
                .map(|(i, _)| i)
                .collect();
            ensure!(
                !score_cols.is_empty(),
                "no score columns in {}",
                f.display()
            );
            for r in 0..batch.num_rows() {
                let mut scores = Vec::new();
                for &c in &score_cols {
                    let col = batch.column(c);
                    let v = if let Some(a) = col.as_any().downcast_ref::<Float32Array>() {
                        a.value(r) as f64
                    } else if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
                        a.value(r)
                    } else {
                        bail!("score column {} is not a float", schema.field(c).name());
                    };
                    scores.push(v);
                }
                ensure!(
                    rows.insert(ids.value(r), scores).is_none(),
                    "sample {} loaded twice",
                    ids.value(r)
                );
            }
        }
    }
    Ok(rows)
}

/// `cargo xtask bench pipeline`: the e2e pipeline run by Ferry, and in the same run the same
/// work done by hand with the raw tools (the same export, rsync, training, inference and load,
/// called directly with the DAG's parallelism), before and after; prints the overhead ratio.
pub fn bench(b: BenchOptions) -> anyhow::Result<()> {
    let opts = Options {
        faults: false,
        seed: 7,
        rows: b.rows,
        loopback: b.loopback,
        keep: false,
        release: b.release,
        model: "DeepFM".into(),
        fuxictr: false,
    };
    crate::ensure_system_packages()?;
    let profile: &[&str] = if opts.release { &["--release"] } else { &[] };
    // The daemons and the raw tools (examples) with the same profile, in one build: a build
    // of the examples' packages alone would resolve features apart and rebuild every
    // dependency a second time.
    crate::cargo(&[&["build", "--workspace", "--bins", "--examples"], profile].concat())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut ratios = Vec::new();
    let mut lines = Vec::new();
    for round in 1..=b.rounds.max(1) {
        let mut times = PipelineTimes::default();
        rt.block_on(run_once(&opts, "bench", None, Some(&mut times)))?;
        let raw: Vec<f64> = times.raw.iter().map(Duration::as_secs_f64).collect();
        let raw_mean = raw.iter().sum::<f64>() / raw.len().max(1) as f64;
        let ferry = times.ferry.as_secs_f64();
        let ratio = ferry / raw_mean;
        ratios.push(ratio);
        lines.push(format!(
            "   round {round}: raw tools {:.1}s and {:.1}s (mean {raw_mean:.1}s), Ferry {ferry:.1}s: {ratio:.3}",
            raw.first().copied().unwrap_or(0.0),
            raw.get(1).copied().unwrap_or(raw_mean),
        ));
        let stages = |list: &[(String, f64)]| {
            list.iter()
                .map(|(name, t)| format!("{name} {t:.1}s"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (k, raw_stages) in times.raw_stages.iter().enumerate() {
            lines.push(format!("     raw {}: {}", k + 1, stages(raw_stages)));
        }
        let mut steps = times.ferry_steps.clone();
        steps.sort_by(|a, b| b.1.total_cmp(&a.1));
        lines.push(format!("     Ferry's steps: {}", stages(&steps)));
    }
    println!(
        "\n== pipeline benchmark ({} training rows, {} builds on both sides, {} rounds)",
        opts.rows,
        if opts.release { "release" } else { "debug" },
        ratios.len()
    );
    for l in &lines {
        println!("{l}");
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = (sorted[(n - 1) / 2] + sorted[n / 2]) / 2.0;
    let worst = sorted[sorted.len() - 1];
    println!(
        "   orchestration overhead (Ferry ÷ the raw tools' mean, per round): median {median:.3}, \
         worst {worst:.3} (target: median <= 1.05)"
    );
    Ok(())
}

/// The pipeline's work by hand: what an engineer would type on each host.
struct RawRun {
    hosts: Vec<NetCommand>,
    dirs: Vec<PathBuf>,
    ips: [String; 3],
    ports: [u16; 3],
    user: String,
    examples: PathBuf,
    sample_sql: String,
    infer_sql: String,
    partition: String,
    rows_per_part: usize,
}

impl RawRun {
    fn sh(&self, host: usize, program: &Path, args: &[String]) -> anyhow::Result<()> {
        let out = self.hosts[host]
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", program.display()))?;
        ensure!(
            out.status.success(),
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `rsync -a` run on host `from_host`, between its `local` and `remote_host`'s `remote`.
    fn rsync(
        &self,
        on: usize,
        push: bool,
        local: &Path,
        remote_host: usize,
        remote: &Path,
    ) -> anyhow::Result<()> {
        let ssh = format!(
            "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -p {}",
            self.dirs[on].join("ssh/user_key").display(),
            self.dirs[on].join("ssh/known_hosts").display(),
            self.ports[remote_host]
        );
        let remote = format!(
            "{}@{}:{}/",
            self.user,
            self.ips[remote_host],
            remote.display()
        );
        let local = format!("{}/", local.display());
        let (src, dst) = if push {
            (local, remote)
        } else {
            (remote, local)
        };
        self.sh(
            on,
            Path::new("rsync"),
            &["-a".into(), "--mkpath".into(), "-e".into(), ssh, src, dst],
        )
    }

    fn run(&self) -> anyhow::Result<(Duration, Vec<(String, f64)>)> {
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d.join("raw"));
        }
        let raw = |host: usize, rel: &str| self.dirs[host].join("raw").join(rel);
        let sql_tool = self.examples.join("sql_tool");
        let ctr_tool = self.examples.join("ctr_tool");
        let s = |p: PathBuf| p.display().to_string();
        let warehouse = s(self.dirs[0].join("warehouse"));
        let model = r#"{"model":"DeepFM","model_id":"DeepFM_e2e","batch_size":2048,"epochs":2,"embedding_dim":8,"hidden_units":[64,64],"learning_rate":0.002,"seed":2024}"#;
        let export = |sql: &str, out: &str| {
            self.sh(
                0,
                &sql_tool,
                &[
                    "export".into(),
                    warehouse.clone(),
                    sql.to_owned(),
                    s(raw(0, out)),
                    self.rows_per_part.to_string(),
                ],
            )
        };
        let stages = Mutex::new(Vec::new());
        // Each stage's own time, kept in the order the stages end.
        let timed = |name: &str, f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<()> {
            let t = Instant::now();
            f()?;
            let took = t.elapsed().as_secs_f64();
            if let Ok(mut s) = stages.lock() {
                s.push((name.to_owned(), took));
            }
            Ok(())
        };
        let started = Instant::now();
        std::thread::scope(|scope| -> anyhow::Result<()> {
            // The DAG's two branches: sample → train → model, and infer data, side by side.
            let training = scope.spawn(|| -> anyhow::Result<()> {
                timed("export_sample", &|| {
                    export(&self.sample_sql, "staging/sample_data")
                })?;
                timed("ship_sample", &|| {
                    self.rsync(
                        0,
                        true,
                        &raw(0, "staging/sample_data"),
                        1,
                        &raw(1, "data/campaign_raw/sample_data"),
                    )
                })?;
                timed("train", &|| {
                    self.sh(
                        1,
                        &ctr_tool,
                        &[
                            "train".into(),
                            s(raw(1, "data/campaign_raw/sample_data")),
                            s(raw(1, "data/campaign_raw")),
                            s(raw(1, "models/campaign_raw")),
                            "campaign_raw".into(),
                            model.into(),
                        ],
                    )
                })?;
                timed("ship_model", &|| {
                    self.rsync(
                        1,
                        true,
                        &raw(1, "models/campaign_raw"),
                        2,
                        &raw(2, "models/campaign_raw"),
                    )
                })
            });
            let infer_data = scope.spawn(|| -> anyhow::Result<()> {
                timed("export_infer", &|| {
                    export(&self.infer_sql, "staging/infer_data")
                })?;
                timed("ship_infer", &|| {
                    self.rsync(
                        0,
                        true,
                        &raw(0, "staging/infer_data"),
                        2,
                        &raw(2, "data/campaign_raw/infer_data"),
                    )
                })
            });
            training
                .join()
                .map_err(|_| anyhow::anyhow!("training branch panicked"))??;
            infer_data
                .join()
                .map_err(|_| anyhow::anyhow!("inference-data branch panicked"))??;
            Ok(())
        })?;
        // The trained feature processor travels with the model in Ferry's plan too (the model
        // directory); the raw infer reads the processor from the model's dataset directory.
        timed("infer", &|| {
            self.sh(
                2,
                &ctr_tool,
                &[
                    "infer".into(),
                    s(raw(2, "data/campaign_raw/infer_data")),
                    s(raw(2, "data/campaign_raw")),
                    s(raw(2, "models/campaign_raw")),
                    "DeepFM_e2e".into(),
                    s(raw(2, "data/campaign_raw/DeepFM_e2e_inference_result")),
                ],
            )
        })?;
        timed("ship_results", &|| {
            self.rsync(
                0,
                false,
                &raw(0, "staging/results"),
                2,
                &raw(2, "data/campaign_raw/DeepFM_e2e_inference_result"),
            )
        })?;
        timed("load", &|| {
            self.sh(
                0,
                &sql_tool,
                &[
                    "load".into(),
                    warehouse.clone(),
                    "results.campaign_scores_raw".into(),
                    self.partition.clone(),
                    s(raw(0, "staging/results")),
                ],
            )
        })?;
        let took = started.elapsed();
        Ok((took, stages.into_inner().unwrap_or_default()))
    }
}
