//! `cargo xtask chaos`: the e2e pipeline (three hosts, each with its sshd and agent) run again
//! and again while faults fire at seeded random points, every trial compared with a clean run.
//!
//! A trial injects one or more of the fault kinds ([`Kind`]): daemons SIGKILLed, a host's
//! sshd killed, a host's link down for 20 s, a slow lossy link for a whole transfer, the
//! destination disk full, bytes flipped at a transfer's destination between two attempts, the
//! database restarted (with the coordinator started while it is down), the coordinator's clock
//! jumping forward. Each trial must end with the loaded Hive partition equal row for row and
//! score for score to the clean run's, no duplicate rows, every chunk verified, no step run
//! again after it completed, and every kind of log line the clean run wrote. A failed trial
//! keeps its directory (logs, database) and prints its seed for replay; at the end a table
//! shows trials, faults by kind, completed, identical, re-sent bytes and extra time.
//!
//! `--soak MINUTES` runs the load mode instead ([`crate::soak`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};

use crate::e2e::{self, BUSY, HOSTS, Injector, Rng, RunOutcome, Setup, World, sh};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Seed of the first trial; trial i uses SEED + i (replay one with `--seed S --trials 1`).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Trials after the clean run.
    #[arg(long, default_value_t = 3)]
    pub trials: u64,
    /// Fault kinds to draw from (comma-separated): kill, sshd, link, slow, disk, corrupt, db,
    /// clock; `all` is every kind this machine can inject.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub faults: Vec<String>,
    /// At most this many faults per trial (at least one).
    #[arg(long, default_value_t = 3)]
    pub max_faults: u64,
    /// Training rows of the sample data (inference rows: a quarter).
    #[arg(long, default_value_t = 40_000)]
    pub rows: usize,
    /// The coordinator's database: `postgres` (a private server, the default when
    /// PostgreSQL is installed and this runs as root) or `sqlite`.
    #[arg(long)]
    pub database: Option<String>,
    /// Loopback addresses instead of network namespaces (no link faults then).
    #[arg(long)]
    pub loopback: bool,
    /// Release builds of the daemons.
    #[arg(long)]
    pub release: bool,
    /// Load mode instead of trials: 20 tasks on 50 light agents for MINUTES while faults fire.
    #[arg(long)]
    pub soak: Option<u64>,
}

/// The kinds of fault a trial draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL of the coordinator or an agent, restarted after 1-5 s.
    Kill,
    /// SIGKILL of the sshd a transfer talks to, restarted after 1-8 s.
    Sshd,
    /// A transfer end's link down for 20 s (`ip link set … down` in its namespace).
    Link,
    /// Both ends of a transfer rate-limited (tbf, 8 Mbit/s) with 3% packet loss (iptables
    /// `statistic`) for the whole transfer.
    Slow,
    /// The training host's data disk (a tmpfs) filled, freed 5-15 s later.
    Disk,
    /// The transfer's sender SIGKILLed, bytes flipped in a file at the destination, sender
    /// restarted: the next attempt must not trust the damaged file.
    Corrupt,
    /// PostgreSQL stopped (immediate) for 3-8 s; or the coordinator killed and started while
    /// PostgreSQL is down.
    Db,
    /// The coordinator's wall clock jumps forward an hour (libfaketime).
    Clock,
}

const KINDS: [Kind; 8] = [
    Kind::Kill,
    Kind::Sshd,
    Kind::Link,
    Kind::Slow,
    Kind::Disk,
    Kind::Corrupt,
    Kind::Db,
    Kind::Clock,
];

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kill => "kill",
            Kind::Sshd => "sshd",
            Kind::Link => "link",
            Kind::Slow => "slow",
            Kind::Disk => "disk",
            Kind::Corrupt => "corrupt",
            Kind::Db => "db",
            Kind::Clock => "clock",
        })
    }
}

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The pipeline's transfer steps: (step, host whose sshd is contacted, host the files land
/// on). Hosts index [`HOSTS`].
const TRANSFERS: [(&str, usize, usize); 4] = [
    ("ship_sample", 1, 1),
    ("ship_infer_data", 2, 2),
    ("ship_model", 2, 2),
    ("ship_results", 2, 0),
];

const ALL_STEPS: [&str; 8] = [
    "export_sample",
    "ship_sample",
    "ship_infer_data",
    "train",
    "ship_model",
    "infer",
    "ship_results",
    "load",
];

pub fn run(opts: Options) -> anyhow::Result<()> {
    if let Some(minutes) = opts.soak {
        return crate::soak::run(minutes, opts.seed);
    }
    crate::ensure_system_packages()?;
    remove_stale_state();
    let namespaces = !opts.loopback && crate::is_root();
    let kinds = available_kinds(&opts, namespaces)?;
    let postgres = match opts.database.as_deref() {
        Some("sqlite") => false,
        Some("postgres") => true,
        None => crate::is_root() && pg_bin().is_some(),
        Some(other) => bail!("--database {other}: expected postgres or sqlite"),
    };
    let kinds: Vec<Kind> = if postgres {
        kinds
    } else {
        kinds.into_iter().filter(|k| *k != Kind::Db).collect()
    };
    ensure!(!kinds.is_empty(), "no fault kind can be injected here");
    let profile: &[&str] = if opts.release { &["--release"] } else { &[] };
    crate::cargo(&[&["build", "--workspace", "--bins"], profile].concat())?;
    let e2e_opts = e2e::Options {
        faults: false,
        seed: opts.seed,
        rows: opts.rows,
        loopback: opts.loopback,
        release: opts.release,
        keep: false,
        model: "DeepFM".into(),
        fuxictr: false,
    };
    let pg = if postgres {
        Some(Postgres::start()?)
    } else {
        None
    };
    println!(
        "== chaos: {} trials from seed {}, faults drawn from [{}], database {}",
        opts.trials,
        opts.seed,
        kinds
            .iter()
            .map(Kind::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        if postgres { "PostgreSQL" } else { "SQLite" }
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut clean_plan = Plan::clean(pg.as_ref().map(|p| p.new_database("clean")).transpose()?);
    let clean = rt
        .block_on(e2e::run_once(
            &e2e_opts,
            "chaos-clean",
            Some(&mut clean_plan),
            None,
        ))
        .context("the clean run failed")?;
    println!(
        "== clean run: {} rows in {:.0}s",
        clean.rows.len(),
        clean.elapsed.as_secs_f64()
    );
    let mut results = Vec::new();
    for i in 0..opts.trials {
        let seed = opts.seed.wrapping_add(i);
        let db = pg
            .as_ref()
            .map(|p| p.new_database(&format!("trial_{seed}")))
            .transpose()?;
        let mut plan = Plan::draw(seed, &kinds, opts.max_faults, db, pg.as_ref());
        println!("\n== trial {} of {} (seed {seed})", i + 1, opts.trials);
        for f in &plan.faults {
            println!("== fault plan: {f}");
        }
        let run = rt.block_on(e2e::run_once(
            &e2e_opts,
            &format!("chaos-{seed}"),
            Some(&mut plan),
            None,
        ));
        plan.restore_all();
        let result = Trial::judge(seed, &plan, &clean, run);
        match &result.error {
            None => println!("== trial seed {seed}: identical to the clean run"),
            // The plan is drawn from the seed, the kinds allowed and the fault limit: the
            // replay names all three (the kinds injected alone would draw another plan).
            Some(e) => println!(
                "== trial seed {seed} FAILED: {e}\n== replay: cargo xtask chaos --seed {seed} --trials 1 --faults {} --max-faults {}",
                kinds
                    .iter()
                    .map(Kind::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                opts.max_faults
            ),
        }
        results.push(result);
    }
    print_table(&results, &kinds);
    let failed: Vec<u64> = results
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.seed)
        .collect();
    ensure!(
        failed.is_empty(),
        "{} of {} trials failed (seeds {:?}); their directories are kept (see above)",
        failed.len(),
        results.len(),
        failed
    );
    println!("== chaos passed: every trial identical to the clean run");
    Ok(())
}

fn available_kinds(opts: &Options, namespaces: bool) -> anyhow::Result<Vec<Kind>> {
    let wanted: Vec<Kind> = if opts.faults.iter().any(|f| f == "all") {
        KINDS.to_vec()
    } else {
        opts.faults
            .iter()
            .map(|name| {
                KINDS
                    .iter()
                    .copied()
                    .find(|k| k.to_string() == *name)
                    .with_context(|| format!("unknown fault kind `{name}`"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let all = opts.faults.iter().any(|f| f == "all");
    let mut kinds = Vec::new();
    for k in wanted {
        let why_not = match k {
            Kind::Link | Kind::Slow | Kind::Disk | Kind::Corrupt if !namespaces => {
                Some("needs root and network namespaces")
            }
            Kind::Clock if !Path::new(FAKETIME).exists() && !install_faketime() => {
                Some("needs libfaketime (apt-get install faketime)")
            }
            _ => None,
        };
        match why_not {
            None => kinds.push(k),
            Some(why) if all => println!("== chaos: no `{k}` faults here: {why}"),
            Some(why) => bail!("fault kind `{k}` {why}"),
        }
    }
    Ok(kinds)
}

/// What an interrupted earlier run left behind: its disk-fault tmpfs mounts and its
/// PostgreSQL servers (namespaces are removed by the e2e setup).
fn remove_stale_state() {
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        for line in mounts.lines() {
            let mut f = line.split_whitespace();
            if let (Some("ferry-chaos"), Some(at)) = (f.next(), f.next()) {
                let _ = quiet(&["umount", "-l", at]);
            }
        }
    }
    if let (Some(bin), Ok(entries)) = (pg_bin(), std::fs::read_dir(std::env::temp_dir())) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with("ferry-chaos-pg-")
            {
                let data = e.path().join("data").display().to_string();
                let program = bin.join("pg_ctl").display().to_string();
                let _ = quiet(&[
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    &program,
                    "-D",
                    &data,
                    "-m",
                    "immediate",
                    "stop",
                ]);
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn install_faketime() -> bool {
    crate::is_root()
        && Command::new("apt-get")
            .args(["install", "-y", "-qq", "faketime"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
        && Path::new(FAKETIME).exists()
}

// ---- the faults of one trial -------------------------------------------------------------

#[derive(Debug)]
enum Action {
    Kill {
        daemon: usize,
        down: Duration,
    },
    Sshd {
        host: usize,
        down: Duration,
    },
    Link {
        host: usize,
    },
    Slow {
        hosts: [usize; 2],
    },
    Disk {
        free_after: Duration,
    },
    Corrupt {
        dest: usize,
    },
    Db {
        coordinator_too: bool,
        down: Duration,
    },
    Clock,
}

#[derive(Debug, PartialEq)]
enum State {
    Planned,
    /// Broken; put back at this time, or when `step` completes (`None`).
    Active(Option<Instant>),
    Done,
    /// Its moment passed before it could be injected (not counted).
    Missed,
}

#[derive(Debug)]
struct Fault {
    kind: Kind,
    step: &'static str,
    after: Duration,
    action: Action,
    state: State,
    /// What the injector did, for the log.
    note: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:.1}s after `{}` starts: {:?}",
            self.kind,
            self.after.as_secs_f64(),
            self.step,
            self.action
        )
    }
}

/// A trial's faults and what they need put back.
struct Plan {
    faults: Vec<Fault>,
    database_url: Option<String>,
    pg: Option<PgControl>,
    faketime: Option<PathBuf>,
    /// The training host's data directory, a small tmpfs (disk faults).
    tmpfs: Option<PathBuf>,
    namespaces: Option<[String; 3]>,
    /// Hosts whose link is slowed so that a corrupt fault lands mid-transfer: (step, host).
    slowed: Vec<(&'static str, usize)>,
    /// When each step was first seen running, by the wall clock (file times compare to it).
    step_started_wall: BTreeMap<String, SystemTime>,
}

impl Plan {
    fn clean(database_url: Option<String>) -> Plan {
        Plan::new(Vec::new(), database_url, None)
    }

    fn new(faults: Vec<Fault>, database_url: Option<String>, pg: Option<PgControl>) -> Plan {
        Plan {
            faults,
            database_url,
            pg,
            faketime: None,
            tmpfs: None,
            namespaces: None,
            slowed: Vec::new(),
            step_started_wall: BTreeMap::new(),
        }
    }

    fn draw(
        seed: u64,
        kinds: &[Kind],
        max_faults: u64,
        database_url: Option<String>,
        pg: Option<&Postgres>,
    ) -> Plan {
        let mut rng = Rng::new(seed);
        let n = 1 + rng.below(max_faults.max(1));
        let mut faults = Vec::new();
        for i in 0..n {
            // The first fault's kind goes round the kinds with the seed, so consecutive
            // seeds cover every kind.
            let kind = if i == 0 {
                kinds[(seed % kinds.len() as u64) as usize]
            } else {
                *rng.pick(kinds)
            };
            faults.push(Self::fault(kind, &mut rng));
        }
        Plan::new(faults, database_url, pg.map(Postgres::control))
    }

    fn fault(kind: Kind, rng: &mut Rng) -> Fault {
        let ms = |rng: &mut Rng, lo: u64, hi: u64| Duration::from_millis(lo + rng.below(hi - lo));
        let transfer = *rng.pick(&TRANSFERS);
        let (step, after, action) = match kind {
            Kind::Kill => {
                let daemon = rng.below(4) as usize;
                let step = *rng.pick(BUSY[daemon]);
                (
                    step,
                    ms(rng, 200, 4_000),
                    Action::Kill {
                        daemon,
                        down: ms(rng, 1_000, 5_000),
                    },
                )
            }
            Kind::Sshd => (
                transfer.0,
                ms(rng, 0, 2_000),
                Action::Sshd {
                    host: transfer.1,
                    down: ms(rng, 1_000, 8_000),
                },
            ),
            Kind::Link => {
                // Either end of a transfer, or the training host while it trains.
                let (step, host) = match rng.below(3) {
                    0 => ("train", 1),
                    1 => (transfer.0, transfer.1),
                    _ => (transfer.0, runner_host(transfer.0)),
                };
                (step, ms(rng, 200, 3_000), Action::Link { host })
            }
            Kind::Slow => (
                transfer.0,
                Duration::ZERO,
                Action::Slow {
                    hosts: [runner_host(transfer.0), transfer.1],
                },
            ),
            Kind::Disk => (
                *rng.pick(&["ship_sample", "train"]),
                ms(rng, 0, 2_000),
                Action::Disk {
                    free_after: ms(rng, 3_000, 10_000),
                },
            ),
            Kind::Corrupt => {
                // The transfers with several files (the sample's parts, the model's files).
                let t = *rng.pick(&[TRANSFERS[0], TRANSFERS[2]]);
                (t.0, ms(rng, 300, 2_000), Action::Corrupt { dest: t.2 })
            }
            Kind::Db => (
                *rng.pick(&ALL_STEPS),
                ms(rng, 200, 3_000),
                Action::Db {
                    coordinator_too: rng.below(2) == 0,
                    down: ms(rng, 3_000, 8_000),
                },
            ),
            Kind::Clock => (*rng.pick(&ALL_STEPS), ms(rng, 0, 3_000), Action::Clock),
        };
        Fault {
            kind,
            step,
            after,
            action,
            state: State::Planned,
            note: String::new(),
        }
    }

    fn has(&self, kind: Kind) -> bool {
        self.faults.iter().any(|f| f.kind == kind)
    }

    /// Puts back whatever a failed run left broken (links, disks, the database).
    fn restore_all(&mut self) {
        if let Some(ns) = &self.namespaces {
            for ns in ns {
                let dev = format!("{ns}n");
                let _ = quiet(&["ip", "-n", ns, "link", "set", &dev, "up"]);
                unlimit_rate(ns);
                let _ = quiet(&["ip", "netns", "exec", ns, "iptables", "-F"]);
            }
        }
        if let Some(pg) = &self.pg {
            let _ = pg.start();
        }
        if let Some(dir) = self.tmpfs.take() {
            let _ = quiet(&["umount", "-l", &dir.display().to_string()]);
        }
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        self.restore_all();
    }
}

/// The agent host that runs a transfer step (the data source pushes and pulls; the training
/// host pushes the model).
fn runner_host(step: &str) -> usize {
    if step == "ship_model" { 1 } else { 0 }
}

impl Injector for Plan {
    fn setup(&mut self, setup: &mut Setup<'_>) -> anyhow::Result<()> {
        setup.database_url = self.database_url.clone();
        self.namespaces = setup.net.namespaces.as_ref().map(|n| n.names.clone());
        if self.has(Kind::Clock) {
            let file = setup.host_dirs[0]
                .parent()
                .context("hosts directory")?
                .join("coordinator-faketime");
            std::fs::write(&file, "+0\n")?;
            setup.coordinator_env.extend(
                [
                    ("LD_PRELOAD", FAKETIME.to_owned()),
                    ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
                    ("FAKETIME_CACHE_DURATION", "1".to_owned()),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            );
            self.faketime = Some(file);
        }
        if self.has(Kind::Disk) {
            let data = setup.host_dirs[1].join("data");
            sh(&[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "size=768m",
                "ferry-chaos",
                &data.display().to_string(),
            ])?;
            self.tmpfs = Some(data);
        }
        Ok(())
    }

    fn tick(&mut self, world: &mut World<'_>) -> anyhow::Result<()> {
        for s in &world.detail.steps {
            if world.running_for(&s.name).is_some() {
                self.step_started_wall
                    .entry(s.name.clone())
                    .or_insert_with(|| SystemTime::now() - Duration::from_secs(1));
            }
        }
        self.slow_for_corruption(world)?;
        let now = Instant::now();
        for i in 0..self.faults.len() {
            let f = &self.faults[i];
            match f.state {
                State::Planned => {
                    let mut due = world
                        .running_for(f.step)
                        .is_some_and(|t| t >= f.after || world.completed(f.step));
                    // Bytes are flipped in a file the transfer finished; wait for one.
                    if let (true, Action::Corrupt { dest }) = (due, &f.action) {
                        let since = self.started_wall(f.step);
                        due = world.completed(f.step)
                            || victim(&world.host_dirs[*dest], since).is_some();
                    }
                    if due {
                        self.inject(i, world)?;
                    }
                }
                State::Active(until) => {
                    let over = match until {
                        Some(t) => now >= t,
                        None => world.completed(f.step),
                    };
                    if over {
                        self.restore(i, world)?;
                    }
                }
                State::Done | State::Missed => {}
            }
        }
        Ok(())
    }

    fn finish(&mut self, world: &mut World<'_>) -> anyhow::Result<()> {
        for i in 0..self.faults.len() {
            if matches!(self.faults[i].state, State::Active(_)) {
                self.restore(i, world)?;
            }
        }
        if let Some(f) = self.faults.iter().find(|f| f.state == State::Planned) {
            bail!("the fault `{f}` never fired (its step never ran)");
        }
        Ok(())
    }
}

impl Plan {
    /// A transfer of a few MiB takes a second or two here; the sender's link is held to
    /// 8 Mbit/s while a transfer with a planned `corrupt` fault runs, so that the fault
    /// lands between two attempts rather than after the transfer.
    fn slow_for_corruption(&mut self, world: &World<'_>) -> anyhow::Result<()> {
        let Some(ns) = self.namespaces.clone() else {
            return Ok(());
        };
        for f in &self.faults {
            if f.kind != Kind::Corrupt {
                continue;
            }
            let host = runner_host(f.step);
            let key = (f.step, host);
            if f.state == State::Planned
                && world.running_for(f.step).is_some()
                && !world.completed(f.step)
                && !self.slowed.contains(&key)
            {
                limit_rate(&ns[host])?;
                self.slowed.push(key);
            } else if self.slowed.contains(&key)
                && (f.state != State::Planned || world.completed(f.step))
            {
                unlimit_rate(&ns[host]);
                self.slowed.retain(|k| *k != key);
            }
        }
        Ok(())
    }

    fn started_wall(&self, step: &str) -> SystemTime {
        self.step_started_wall
            .get(step)
            .copied()
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn inject(&mut self, i: usize, world: &mut World<'_>) -> anyhow::Result<()> {
        let ns = self.namespaces.clone();
        let step = self.faults[i].step;
        let now = Instant::now();
        let (state, note) = match &self.faults[i].action {
            Action::Kill { daemon, down } => {
                world.daemons[*daemon].kill();
                (
                    State::Active(Some(now + *down)),
                    format!("SIGKILL {}", world.daemons[*daemon].name),
                )
            }
            Action::Sshd { host, down } => {
                world.sshds[*host].kill();
                (
                    State::Active(Some(now + *down)),
                    format!("SIGKILL the sshd of {}", HOSTS[*host].0),
                )
            }
            Action::Link { host } => {
                let ns = ns.context("link faults need namespaces")?;
                let n = &ns[*host];
                sh(&["ip", "-n", n, "link", "set", &format!("{n}n"), "down"])?;
                (
                    State::Active(Some(now + Duration::from_secs(20))),
                    format!("link of {} down for 20 s", HOSTS[*host].0),
                )
            }
            Action::Slow { hosts } => {
                let ns = ns.context("slow links need namespaces")?;
                for h in hosts {
                    let n = &ns[*h];
                    limit_rate(n)?;
                    for chain in ["INPUT", "OUTPUT"] {
                        sh(&[
                            "ip",
                            "netns",
                            "exec",
                            n,
                            "iptables",
                            "-A",
                            chain,
                            "-m",
                            "statistic",
                            "--mode",
                            "random",
                            "--probability",
                            "0.03",
                            "-j",
                            "DROP",
                        ])?;
                    }
                }
                (
                    State::Active(None),
                    format!(
                        "{} and {}: 8 Mbit/s, 3% loss until `{step}` completes",
                        HOSTS[hosts[0]].0, HOSTS[hosts[1]].0
                    ),
                )
            }
            Action::Disk { free_after } => {
                let dir = self.tmpfs.clone().context("no tmpfs for disk faults")?;
                // Fill what is free, again while the step writes beside us (or another
                // disk fault filled it already).
                let fillers = dir.join(format!(".chaos-filler-{i}"));
                std::fs::create_dir_all(&fillers)?;
                let mut taken = 0;
                for n in 0..8 {
                    let avail = free_bytes(&dir)?;
                    if avail == 0 {
                        break;
                    }
                    let file = fillers.join(n.to_string()).display().to_string();
                    if quiet(&["fallocate", "-l", &avail.to_string(), &file])
                        .is_ok_and(|s| s.success())
                    {
                        taken += avail;
                    }
                }
                let avail = taken;
                (
                    State::Active(Some(now + *free_after)),
                    format!("training host's data disk full ({} MiB taken)", avail >> 20),
                )
            }
            Action::Corrupt { dest } => {
                let runner = 1 + runner_host(step);
                if world.completed(step) {
                    // Too late to land between two attempts: count it as not injected.
                    self.faults[i].state = State::Missed;
                    self.faults[i].note =
                        format!("`{step}` completed before bytes could be flipped");
                    println!("== FAULT missed: {}", self.faults[i].note);
                    return Ok(());
                }
                let since = self.started_wall(step);
                world.daemons[runner].kill();
                let flipped = match victim(&world.host_dirs[*dest], since) {
                    Some(p) => Some(flip_bytes(p)?),
                    None => None,
                };
                world.daemons[runner].restart()?;
                let note = match flipped {
                    Some(p) => format!(
                        "SIGKILL {}, 16 bytes flipped in {}, restarted",
                        world.daemons[runner].name,
                        p.display()
                    ),
                    None => format!(
                        "SIGKILL {} (no file at the destination yet to flip), restarted",
                        world.daemons[runner].name
                    ),
                };
                (State::Done, note)
            }
            Action::Db {
                coordinator_too,
                down,
            } => {
                let pg = self
                    .pg
                    .as_ref()
                    .context("database faults need PostgreSQL")?;
                if *coordinator_too {
                    world.daemons[0].kill();
                    pg.stop()?;
                    world.daemons[0].restart()?;
                } else {
                    pg.stop()?;
                }
                (
                    State::Active(Some(now + *down)),
                    if *coordinator_too {
                        "coordinator killed, PostgreSQL stopped, coordinator started while it is down"
                            .to_owned()
                    } else {
                        "PostgreSQL stopped (immediate)".to_owned()
                    },
                )
            }
            Action::Clock => {
                let file = self.faketime.as_ref().context("no faketime file")?;
                std::fs::write(file, "+3600\n")?;
                (
                    State::Done,
                    "the coordinator's wall clock jumped forward 1 h".to_owned(),
                )
            }
        };
        println!(
            "== FAULT ({}, during `{step}`): {note}",
            self.faults[i].kind
        );
        self.faults[i].state = state;
        self.faults[i].note = note;
        Ok(())
    }

    fn restore(&mut self, i: usize, world: &mut World<'_>) -> anyhow::Result<()> {
        let ns = self.namespaces.clone();
        match &self.faults[i].action {
            Action::Kill { daemon, .. } => world.daemons[*daemon].restart()?,
            Action::Sshd { host, .. } => world.sshds[*host].restart()?,
            Action::Link { host } => {
                let ns = ns.context("namespaces")?;
                let n = &ns[*host];
                sh(&["ip", "-n", n, "link", "set", &format!("{n}n"), "up"])?;
            }
            Action::Slow { hosts } => {
                let ns = ns.context("namespaces")?;
                for h in hosts {
                    let n = &ns[*h];
                    // Another fault's limit on the same link may be gone already.
                    unlimit_rate(n);
                    sh(&["ip", "netns", "exec", n, "iptables", "-F"])?;
                }
            }
            Action::Disk { .. } => {
                if let Some(dir) = &self.tmpfs {
                    std::fs::remove_dir_all(dir.join(format!(".chaos-filler-{i}")))?;
                }
            }
            Action::Db { .. } => {
                if let Some(pg) = &self.pg {
                    pg.start()?;
                }
            }
            Action::Corrupt { .. } | Action::Clock => {}
        }
        println!(
            "== restored ({}): {}",
            self.faults[i].kind, self.faults[i].note
        );
        self.faults[i].state = State::Done;
        Ok(())
    }
}

/// Holds the link of the host in namespace `ns` to 8 Mbit/s (tbf; replaces a limit there).
fn limit_rate(ns: &str) -> anyhow::Result<()> {
    let dev = format!("{ns}n");
    sh(&[
        "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", &dev, "root", "tbf", "rate",
        "8mbit", "burst", "16kb", "latency", "300ms",
    ])
}

/// Lifts [`limit_rate`]; nothing when there is no limit.
fn unlimit_rate(ns: &str) {
    let dev = format!("{ns}n");
    let _ = quiet(&[
        "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", &dev, "root",
    ]);
}

/// Bytes free on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("cannot read the free space of {}", dir.display()))
}

/// The largest file under `host`'s data directories that a transfer finished since `since`
/// (not a temporary `.name` file of one in flight).
fn victim(host: &Path, since: SystemTime) -> Option<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack: Vec<PathBuf> = ["data", "staging", "models", "warehouse"]
        .iter()
        .map(|d| host.join(d))
        .collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            // Temporary files of a transfer in flight, and the disk faults' fillers.
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file()
                && meta.len() >= 64
                && meta.modified().is_ok_and(|m| m >= since)
                && best.as_ref().is_none_or(|(len, _)| meta.len() > *len)
            {
                best = Some((meta.len(), e.path()));
            }
        }
    }
    best.map(|(_, p)| p)
}

/// Flips 16 bytes in the middle of `path` and puts its modification time back, as a flaky
/// NIC or disk would leave it (size and time unchanged: rsync's quick check sees nothing);
/// returns it.
fn flip_bytes(path: PathBuf) -> anyhow::Result<PathBuf> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    let meta = f.metadata()?;
    let mtime = meta.modified()?;
    let at = meta.len() / 2;
    let mut buf = [0u8; 16];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut buf)?;
    for b in &mut buf {
        *b ^= 0xA5;
    }
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&buf)?;
    f.sync_all()?;
    f.set_modified(mtime)?;
    Ok(path)
}

fn quiet(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
}

// ---- a private PostgreSQL ------------------------------------------------------------------

fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// A PostgreSQL server of the chaos run's own (initdb in a temporary directory, run as the
/// `postgres` user), so that faults may stop and start it.
struct Postgres {
    _dir: tempfile::TempDir,
    control: PgControl,
}

#[derive(Clone)]
struct PgControl {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Postgres {
    fn start() -> anyhow::Result<Postgres> {
        let bin = pg_bin().context("PostgreSQL is not installed (apt-get install postgresql)")?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-chaos-pg-")
            .tempdir()?;
        sh(&["chown", "postgres", &dir.path().display().to_string()])?;
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port();
        let control = PgControl {
            data: dir.path().join("data"),
            log: dir.path().join("log"),
            bin,
            port,
        };
        control.as_postgres(
            "initdb",
            &[
                "-D",
                &control.data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "ferry",
            ],
        )?;
        control.start()?;
        println!("== PostgreSQL of the chaos run on 127.0.0.1:{port}");
        Ok(Postgres { _dir: dir, control })
    }

    fn control(&self) -> PgControl {
        self.control.clone()
    }

    /// A fresh database; its URL.
    fn new_database(&self, name: &str) -> anyhow::Result<String> {
        let c = &self.control;
        c.start()?;
        let port = c.port.to_string();
        c.as_postgres(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "ferry", name],
        )?;
        Ok(format!("postgres://ferry@127.0.0.1:{port}/{name}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.control.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.control.data.display().to_string(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

impl PgControl {
    fn as_postgres(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(tool).display().to_string();
        let mut all = vec!["runuser", "-u", "postgres", "--", program.as_str()];
        all.extend_from_slice(args);
        sh(&all)
    }

    fn running(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    fn start(&self) -> anyhow::Result<()> {
        if self.running() {
            return Ok(());
        }
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data.parent().unwrap_or(Path::new("/tmp")).display()
        );
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-l",
                &self.log.display().to_string(),
                "-w",
                "-o",
                &opts,
                "start",
            ],
        )
    }

    /// Stops the server at once; already stopped (two database faults overlapping) is fine,
    /// as `start` is when it runs.
    fn stop(&self) -> anyhow::Result<()> {
        if !self.running() && !self.data.join("postmaster.pid").exists() {
            return Ok(());
        }
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }
}

// ---- judging and the table ---------------------------------------------------------------

struct Trial {
    seed: u64,
    /// Faults that fired, by kind.
    injected: BTreeMap<Kind, usize>,
    completed: bool,
    identical: bool,
    resent_bytes: u64,
    extra: Duration,
    error: Option<String>,
}

impl Trial {
    fn judge(seed: u64, plan: &Plan, clean: &RunOutcome, run: anyhow::Result<RunOutcome>) -> Trial {
        let mut injected = BTreeMap::new();
        for f in plan.faults.iter().filter(|f| f.state == State::Done) {
            *injected.entry(f.kind).or_insert(0) += 1;
        }
        let mut t = Trial {
            seed,
            injected,
            completed: false,
            identical: false,
            resent_bytes: 0,
            extra: Duration::ZERO,
            error: None,
        };
        let run = match run {
            Ok(r) => r,
            Err(e) => {
                t.error = Some(format!("{e:#}"));
                return t;
            }
        };
        t.completed = true;
        t.extra = run.elapsed.saturating_sub(clean.elapsed);
        t.resent_bytes = run.chunk_retries * (1 << 20)
            + (run.literal_bytes - clean.literal_bytes).max(0.0) as u64;
        let same = e2e::compare(&clean.rows, &run.rows).and_then(|()| lines_kept(clean, &run));
        match same {
            Ok(()) => t.identical = true,
            Err(e) => {
                // Keep the run's directory for replay.
                let mut run = run;
                let kept = run.dir.take().map(tempfile::TempDir::keep);
                t.error = Some(match kept {
                    Some(dir) => format!("{e:#} (logs and database kept in {})", dir.display()),
                    None => format!("{e:#}"),
                });
            }
        }
        t
    }
}

/// Every kind of line each step wrote in the clean run is in the trial's log too.
fn lines_kept(clean: &RunOutcome, run: &RunOutcome) -> anyhow::Result<()> {
    for (step, kinds) in &clean.line_kinds {
        let Some(got) = run.line_kinds.get(step) else {
            bail!("the trial's log has no line of step `{step}`");
        };
        if let Some(missing) = kinds.iter().find(|k| !got.contains(*k)) {
            bail!("the trial's log lacks a line of step `{step}` the clean run wrote: {missing}");
        }
    }
    Ok(())
}

fn print_table(results: &[Trial], kinds: &[Kind]) {
    let by_kind = |t: &Trial| {
        t.injected
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("\n== chaos results");
    println!(
        "{:>6}  {:<34} {:>9} {:>9} {:>13} {:>9}",
        "seed", "faults injected", "completed", "identical", "re-sent bytes", "extra min"
    );
    for t in results {
        println!(
            "{:>6}  {:<34} {:>9} {:>9} {:>13} {:>9.1}",
            t.seed,
            by_kind(t),
            if t.completed { "yes" } else { "NO" },
            if t.identical { "yes" } else { "NO" },
            t.resent_bytes,
            t.extra.as_secs_f64() / 60.0
        );
    }
    let mut totals: BTreeMap<Kind, usize> = BTreeMap::new();
    for t in results {
        for (k, n) in &t.injected {
            *totals.entry(*k).or_insert(0) += n;
        }
    }
    let n = results.len().max(1) as f64;
    println!(
        "{:>6}  {:<34} {:>9} {:>9} {:>13} {:>9.1}",
        "all",
        format!("{} faults", totals.values().sum::<usize>()),
        results.iter().filter(|t| t.completed).count(),
        results.iter().filter(|t| t.identical).count(),
        results.iter().map(|t| t.resent_bytes).sum::<u64>(),
        results.iter().map(|t| t.extra.as_secs_f64()).sum::<f64>() / 60.0 / n
    );
    println!(
        "faults by kind: {}",
        kinds
            .iter()
            .map(|k| format!("{k} {}", totals.get(k).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("(extra min of the `all` row: the mean over trials)");
}
