//! `ferry`: the command-line client of the coordinator's gRPC API.
//!
//! Readable tables by default, `--json` for scripts. Exit codes: 0 success, 1 the request
//! failed, 2 the coordinator could not be reached or the command line was wrong.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

mod access;
mod graph;
mod schedule;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ferry_core::pipeline::{CTR_PIPELINE, CtrTaskRequest};
use ferry_core::workflow::WorkflowDef;
use ferry_proto::v1;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Drive Ferry workflows from the command line"
)]
struct Cli {
    /// Coordinator gRPC URL.
    #[arg(
        long,
        global = true,
        env = "FERRY_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// A config file whose `tls` (ca; cert and key for a client certificate) and
    /// `auth.token_file` the CLI uses.
    #[arg(long, global = true, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// A file holding the token to send (`FERRY_TOKEN` wins).
    #[arg(long, global = true, env = "FERRY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Workflow definitions.
    #[command(subcommand)]
    Workflow(WorkflowCmd),
    /// Tasks (executions of workflows).
    #[command(subcommand)]
    Task(TaskCmd),
    /// Show a task's log; `--follow` streams it until the task ends.
    Logs {
        task: i64,
        #[arg(long, short)]
        follow: bool,
    },
    /// Agents known to the coordinator, with their slots and GPUs in use.
    Agents,
    /// Ready steps waiting for capacity (slots, GPUs, a pool, max_active_tasks), in the
    /// order they get it, with what each waits for.
    Queue,
    /// Schedules: runs on a cron with logical dates.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCmd),
    /// Backfills: a schedule's runs over a range of dates.
    #[command(subcommand)]
    Backfill(schedule::BackfillCmd),
    /// Approve a step that awaits approval (e.g. a load into a production table); the task
    /// continues. Recorded under your token's identity, bound to the step's parameters.
    Approve {
        task: i64,
        step: String,
        #[arg(long, short, default_value = "")]
        comment: String,
    },
    /// Reject a step that awaits approval; the task stays paused with the reason.
    Reject {
        task: i64,
        step: String,
        #[arg(long, short, default_value = "")]
        comment: String,
    },
    /// The deployment's CA and certificates (mutual TLS); needs no coordinator.
    #[command(subcommand)]
    Pki(access::PkiCmd),
    /// Bearer tokens and their roles (role `admin`).
    #[command(subcommand)]
    Token(access::TokenCmd),
    /// Who did what through the API, newest last (role `admin`).
    Audit {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only this identity's entries.
        #[arg(long)]
        actor: Option<String>,
        /// Entries older than this id (paging).
        #[arg(long, default_value_t = 0)]
        before: i64,
    },
    /// The identity and roles the coordinator sees for your token.
    Whoami,
    /// Chunk manifests on this host (what transfers run on the other end over SSH).
    #[command(subcommand)]
    Manifest(ManifestCmd),
}

#[derive(Debug, Subcommand)]
enum ManifestCmd {
    /// Hash every file under DIR and write DIR/.ferry-manifest.json.
    Build {
        dir: PathBuf,
        #[arg(long, default_value_t = 100 * 1024 * 1024)]
        chunk_size: u64,
        /// blake3 or sha256.
        #[arg(long, default_value = "blake3")]
        algorithm: String,
        /// Hashing threads (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Hash every file again, even those unchanged (size, mtime, ctime, inode) since
        /// the manifest already in DIR was written.
        #[arg(long)]
        no_reuse: bool,
        /// Print the plan (files and sizes, JSON, one line) before hashing and the manifest
        /// (one line) after, for the transfer on the other host.
        #[arg(long)]
        stream: bool,
    },
    /// The destination's side of a push (run by the sending agent through SSH): reads the
    /// plan, hashes files as they land, reads the manifest and word that the data has
    /// gone, verifies, answers with the summary (JSON lines) and saves the manifest in DIR.
    Receive { dir: PathBuf },
    /// The destination's side of a push in rsync's own remote command (run by rsync as
    /// `--rsync-path`): checks that NEED bytes fit in DIR, runs `rsync --server …` given
    /// after `--`, hashes files as they land, saves DIR's manifest and prints the digest of
    /// the whole tree on standard error for the sender. Exits with rsync's code.
    Land {
        dir: PathBuf,
        #[arg(long)]
        need: u64,
        #[arg(long)]
        chunk_size: u64,
        /// blake3 or sha256.
        #[arg(long, default_value = "blake3")]
        algorithm: String,
        /// `rsync --server …` (what rsync appends to its `--rsync-path`).
        #[arg(last = true, required = true)]
        rsync: Vec<String>,
    },
    /// Create DIR and check that NEED bytes fit there (what is already under DIR counts);
    /// exit 1 with the figures when they do not. Run before rsync on a push's destination.
    Space {
        dir: PathBuf,
        #[arg(long)]
        need: u64,
    },
    /// Check every chunk under DIR against DIR/.ferry-manifest.json; exit 1 if any differs.
    Verify {
        dir: PathBuf,
        /// Print the summary as JSON (always exit 0 when the check itself ran).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WorkflowCmd {
    /// Create or replace a workflow from a YAML or JSON file.
    Apply {
        file: PathBuf,
    },
    List,
    Show {
        name: String,
    },
    /// Seed 003's graph workflows: nodes, interfaces, connections, canvas.
    #[command(flatten)]
    Graph(Box<graph::GraphCmd>),
}

#[derive(Debug, Subcommand)]
enum TaskCmd {
    /// Start a task of a stored workflow, or of the built-in CTR pipeline (`-w ctr_pipeline`,
    /// or any of the pipeline's options) from seed 000's task request.
    Create {
        /// Workflow name.
        #[arg(long, short)]
        workflow: Option<String>,
        /// Task name (default: workflow name and a timestamp).
        #[arg(long)]
        name: Option<String>,
        /// `KEY=VALUE` for `${param.KEY}` placeholders; repeatable.
        #[arg(long = "param", short = 'p', value_parser = parse_kv)]
        params: Vec<(String, String)>,
        /// Priority when steps wait for capacity (higher first; the workflow's by default).
        #[arg(long)]
        priority: Option<i32>,
        #[command(flatten)]
        ctr: Box<CtrArgs>,
    },
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    Show {
        task: i64,
    },
    Pause {
        task: i64,
    },
    Resume {
        task: i64,
    },
    Cancel {
        task: i64,
    },
    /// Run a failed, paused or cancelled task again from its failed steps.
    Retry {
        task: i64,
        /// `STEP.KEY=VALUE`: change a step's parameter first (e.g.
        /// `train.model.learning_rate=0.0005`); the value is read as YAML; repeatable.
        #[arg(long = "set", value_parser = parse_kv)]
        set: Vec<(String, String)>,
    },
}

/// The task request of the built-in CTR pipeline (seed 000 §8.2). Flags override the file.
#[derive(Debug, Default, clap::Args)]
struct CtrArgs {
    /// A YAML or JSON task request (name, experiment_id, sample_sql, infer_sql, hdfs_path,
    /// hive_table, and the optional fields below).
    #[arg(long)]
    request: Option<PathBuf>,
    #[arg(long)]
    experiment_id: Option<String>,
    #[arg(long)]
    sample_sql: Option<String>,
    #[arg(long)]
    infer_sql: Option<String>,
    #[arg(long)]
    hdfs_path: Option<String>,
    #[arg(long)]
    hive_table: Option<String>,
    /// `dt=2026-01-22` (default: the day the task is created).
    #[arg(long)]
    partition: Option<String>,
    #[arg(long)]
    training_server: Option<String>,
    #[arg(long)]
    inference_server: Option<String>,
    #[arg(long)]
    source_server: Option<String>,
    #[arg(long)]
    gpu_count: Option<u32>,
    #[arg(long)]
    batch_size: Option<u32>,
    #[arg(long)]
    epochs: Option<u32>,
    /// LR, FM, DNN, WideDeep, DeepFM, PNN, DCN(v2), xDeepFM, AutoInt, FiBiNET, FinalMLP, MMoE, ShareBottom or PLE (default: from the experiment id's prefix, else DeepFM).
    #[arg(long)]
    model: Option<String>,
    /// `KEY=VALUE` model setting (embedding_dim, learning_rate, ...); repeatable.
    #[arg(long = "model-param", value_parser = parse_kv)]
    model_params: Vec<(String, String)>,
    /// A FuxiCTR configuration folder on the training host (model_config.yaml and
    /// dataset_config.yaml): the experiment `--experiment-id` there brings the model,
    /// settings, features and labels.
    #[arg(long)]
    fuxictr_config: Option<String>,
}

impl CtrArgs {
    fn given(&self) -> bool {
        self.request.is_some()
            || self.experiment_id.is_some()
            || self.sample_sql.is_some()
            || self.infer_sql.is_some()
            || self.hive_table.is_some()
    }

    fn into_request(self, name: Option<String>) -> anyhow::Result<CtrTaskRequest> {
        let mut r = match &self.request {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                serde_yaml::from_str::<CtrTaskRequest>(&text)
                    .with_context(|| format!("{} is not a valid task request", path.display()))?
            }
            None => CtrTaskRequest::default(),
        };
        let set = |field: &mut String, v: Option<String>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut r.name, name);
        set(&mut r.experiment_id, self.experiment_id);
        set(&mut r.sample_sql, self.sample_sql);
        set(&mut r.infer_sql, self.infer_sql);
        set(&mut r.hdfs_path, self.hdfs_path);
        set(&mut r.hive_table, self.hive_table);
        r.partition = self.partition.or(r.partition);
        r.training_server = self.training_server.or(r.training_server);
        r.inference_server = self.inference_server.or(r.inference_server);
        r.source_server = self.source_server.or(r.source_server);
        r.gpu_count = self.gpu_count.or(r.gpu_count);
        r.batch_size = self.batch_size.or(r.batch_size);
        r.epochs = self.epochs.or(r.epochs);
        r.model = self.model.or(r.model);
        r.fuxictr_config = self.fuxictr_config.or(r.fuxictr_config);
        for (k, v) in self.model_params {
            r.model_params.insert(k, yaml_value(&v));
        }
        // Checked here too, so a mistake is reported before anything is sent.
        r.validate()?;
        Ok(r)
    }
}

/// A command-line value as YAML reads it (numbers, booleans, lists), else as text.
fn yaml_value(v: &str) -> serde_json::Value {
    serde_yaml::from_str::<serde_json::Value>(v)
        .ok()
        .filter(|x| !x.is_null())
        .unwrap_or_else(|| serde_json::Value::String(v.to_owned()))
}

/// `model.learning_rate` = 0.1 → `{"model": {"learning_rate": 0.1}}`.
fn nested_patch(path: &str, value: serde_json::Value) -> serde_json::Value {
    path.rsplit('.')
        .fold(value, |inner, key| serde_json::json!({ key: inner }))
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// The coordinator could not be reached (exit code 2).
#[derive(Debug)]
pub(crate) struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            if e.downcast_ref::<Unreachable>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Turns a gRPC status into an error that shows only its message.
pub(crate) fn status(e: tonic::Status) -> anyhow::Error {
    match e.code() {
        tonic::Code::Unavailable => {
            Unreachable(format!("coordinator unavailable: {}", e.message())).into()
        }
        _ => anyhow::anyhow!("{}", e.message()),
    }
}

/// Local manifest commands need no coordinator.
fn parse_algorithm(name: &str) -> anyhow::Result<ferry_transfer::HashAlgorithm> {
    match name {
        "blake3" => Ok(ferry_transfer::HashAlgorithm::Blake3),
        "sha256" => Ok(ferry_transfer::HashAlgorithm::Sha256),
        other => bail!("unknown algorithm `{other}` (blake3 or sha256)"),
    }
}

fn manifest(cmd: ManifestCmd) -> anyhow::Result<()> {
    use ferry_transfer::landing::Plan;
    use ferry_transfer::manifest::{MANIFEST_NAME, Manifest};
    use ferry_transfer::transfer::VerifySummary;
    match cmd {
        ManifestCmd::Build {
            dir,
            chunk_size,
            algorithm,
            threads,
            no_reuse,
            stream,
        } => {
            let algorithm = parse_algorithm(&algorithm)?;
            let mut m = Manifest::scan(&dir, chunk_size, algorithm)?;
            if stream {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", serde_json::to_string(&Plan::of(&m))?)?;
                out.flush()?;
            }
            let reused = if no_reuse {
                0
            } else {
                m.reuse_from(&dir.join(MANIFEST_NAME), &dir)
            };
            m.hash_with_threads(&dir, threads)?;
            m.save(&dir.join(MANIFEST_NAME))?;
            if stream {
                println!("{}", serde_json::to_string(&m.without_stats())?);
            } else {
                println!(
                    "{} files ({reused} unchanged since the last manifest), {} chunks, {} bytes",
                    m.files.len(),
                    m.chunks().count(),
                    m.total_bytes()
                );
            }
        }
        ManifestCmd::Receive { dir } => {
            let stdin = std::io::stdin();
            ferry_transfer::landing::receive(
                &dir,
                &mut stdin.lock(),
                &mut std::io::stdout().lock(),
            )?;
        }
        ManifestCmd::Land {
            dir,
            need,
            chunk_size,
            algorithm,
            rsync,
        } => {
            let o = ferry_transfer::landing::LandOptions {
                need,
                chunk_size,
                algorithm: parse_algorithm(&algorithm)?,
            };
            match ferry_transfer::landing::land(&dir, &o, &rsync, &mut std::io::stderr().lock()) {
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    if let ferry_transfer::TransferError::DiskFull { needed, free, .. } = &e {
                        eprintln!("{}", ferry_transfer::landing::no_space_line(*needed, *free));
                    }
                    return Err(e.into());
                }
            }
        }
        ManifestCmd::Space { dir, need } => {
            if let Err(e) = ferry_transfer::landing::check_space(&dir, need) {
                if let ferry_transfer::TransferError::DiskFull { needed, free, .. } = &e {
                    eprintln!("{}", ferry_transfer::landing::no_space_line(*needed, *free));
                }
                return Err(e.into());
            }
        }
        ManifestCmd::Verify { dir, json } => {
            let m = Manifest::load(&dir.join(MANIFEST_NAME), &dir)?;
            let (report, stats) = m.verify_landed(&dir, &[])?;
            if report.is_complete() {
                // What verified here is remembered, so the next hop from here reuses it.
                m.with_stats(&stats).save(&dir.join(MANIFEST_NAME))?;
            }
            let summary = VerifySummary::from(&report);
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else if summary.complete {
                println!("all {} chunks verified", summary.verified);
            } else {
                bail!(
                    "{} chunks differ ({}), {} files missing, {} too long",
                    summary.bad.len(),
                    summary.bad.join(", "),
                    summary.missing_files.len(),
                    summary.too_long.len()
                );
            }
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::Manifest(cmd) => return manifest(cmd),
        Command::Pki(cmd) => return access::pki(cmd),
        other => other,
    };
    let creds = access::Credentials::load(cli.config.as_deref(), cli.token_file.as_deref())?;
    let command = match command {
        Command::Token(cmd) => {
            return access::token(cmd, &cli.coordinator, &creds, cli.json).await;
        }
        other => other,
    };
    let mut client = access::connect(&cli.coordinator, &creds).await?;
    let json = cli.json;
    let approve = matches!(command, Command::Approve { .. });
    match command {
        Command::Workflow(WorkflowCmd::Apply { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let def = WorkflowDef::from_yaml(&text)
                .with_context(|| format!("{} is not a valid workflow", file.display()))?;
            def.validate()?;
            let wf = client
                .apply_workflow(v1::ApplyWorkflowRequest {
                    definition: Some((&def).into()),
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&workflow_json(&wf))?;
            } else {
                println!(
                    "workflow {} applied (id {}, {} steps)",
                    def.name,
                    wf.id,
                    def.steps.len()
                );
            }
        }
        Command::Workflow(WorkflowCmd::Graph(cmd)) => graph::run(*cmd, &mut client, json).await?,
        Command::Workflow(WorkflowCmd::List) => {
            let list = client
                .list_workflows(v1::ListWorkflowsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&serde_json::Value::Array(
                    list.workflows.iter().map(workflow_json).collect(),
                ))?;
            } else {
                let rows = list
                    .workflows
                    .iter()
                    .map(|w| {
                        let d = w.definition.clone().unwrap_or_default();
                        vec![
                            w.id.to_string(),
                            d.name,
                            d.steps.len().to_string(),
                            w.updated_at.clone(),
                            d.description,
                        ]
                    })
                    .collect();
                print_table(&["ID", "NAME", "STEPS", "UPDATED", "DESCRIPTION"], rows);
            }
        }
        Command::Workflow(WorkflowCmd::Show { name }) => {
            let wf = client
                .get_workflow(v1::GetWorkflowRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&workflow_json(&wf))?;
            } else {
                let def = WorkflowDef::try_from(wf.definition.unwrap_or_default())?;
                print!("{}", serde_yaml::to_string(&def)?);
            }
        }
        Command::Task(TaskCmd::Create {
            workflow,
            name,
            params,
            ctr,
            priority: _,
        }) if ctr.given() || workflow.as_deref() == Some(CTR_PIPELINE) => {
            if !params.is_empty() {
                bail!("the built-in {CTR_PIPELINE} takes its request fields, not --param");
            }
            let request = (*ctr).into_request(name)?;
            let task = client
                .create_ctr_task(v1::CtrTaskRequest::from(&request))
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&task_json(&task))?;
            } else {
                println!(
                    "task {} created: {} ({}, {} steps)",
                    task.id, task.name, task.status, task.total_steps
                );
            }
        }
        Command::Task(TaskCmd::Create {
            workflow,
            name,
            params,
            ctr: _,
            priority,
        }) => {
            let Some(workflow) = workflow else {
                bail!(
                    "name a workflow with -w, or give the CTR pipeline's request (--request FILE or --experiment-id, --sample-sql, ...)"
                );
            };
            let task = client
                .create_task(v1::CreateTaskRequest {
                    workflow,
                    name: name.unwrap_or_default(),
                    params: params.into_iter().collect::<HashMap<_, _>>(),
                    priority,
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&task_json(&task))?;
            } else {
                println!("task {} created: {} ({})", task.id, task.name, task.status);
            }
        }
        Command::Task(TaskCmd::List { status: st, limit }) => {
            let list = client
                .list_tasks(v1::ListTasksRequest {
                    status: st.unwrap_or_default(),
                    limit,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                print_json(&serde_json::Value::Array(
                    list.tasks.iter().map(task_json).collect(),
                ))?;
            } else {
                // Why a task's next step waits, if it waits for capacity.
                let queue = client
                    .list_queue(v1::ListQueueRequest {})
                    .await
                    .map_err(status)?
                    .into_inner();
                let mut waits: std::collections::HashMap<i64, String> = Default::default();
                for q in &queue.steps {
                    waits
                        .entry(q.task_id)
                        .or_insert_with(|| format!("#{} {}: {}", q.position, q.step, q.waits_for));
                }
                let rows = list
                    .tasks
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.to_string(),
                            t.name.clone(),
                            t.workflow.clone(),
                            t.status.clone(),
                            format!("{}/{}", t.completed_steps, t.total_steps),
                            t.created_at.clone(),
                            waits.get(&t.id).cloned().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID", "NAME", "WORKFLOW", "STATUS", "STEPS", "CREATED", "QUEUED",
                    ],
                    rows,
                );
            }
        }
        Command::Task(TaskCmd::Show { task }) => {
            let detail = client
                .get_task(v1::TaskRef { task_id: task })
                .await
                .map_err(status)?
                .into_inner();
            let t = detail.task.clone().unwrap_or_default();
            if json {
                let mut v = task_json(&t);
                v["steps"] = serde_json::Value::Array(detail.steps.iter().map(step_json).collect());
                print_json(&v)?;
            } else {
                println!(
                    "task {}  {}  [{}]  workflow {}",
                    t.id, t.name, t.status, t.workflow
                );
                if !t.status_reason.is_empty() {
                    println!("reason: {}", t.status_reason);
                }
                println!(
                    "created {}  started {}  completed {}",
                    t.created_at,
                    dash(&t.started_at),
                    dash(&t.completed_at)
                );
                println!();
                let rows = detail
                    .steps
                    .iter()
                    .map(|s| {
                        vec![
                            s.step_order.to_string(),
                            s.name.clone(),
                            s.kind.clone(),
                            s.status.clone(),
                            dash(&s.agent).to_owned(),
                            format!("{}/{}", s.retry_count, s.max_retries),
                            s.inputs.join(","),
                            s.error_message.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "#", "STEP", "KIND", "STATUS", "AGENT", "RETRIES", "INPUTS", "ERROR",
                    ],
                    rows,
                );
            }
        }
        Command::Task(
            cmd @ (TaskCmd::Pause { .. }
            | TaskCmd::Resume { .. }
            | TaskCmd::Cancel { .. }
            | TaskCmd::Retry { .. }),
        ) => {
            let (verb, task_id) = match cmd {
                TaskCmd::Pause { task } => ("paused", task),
                TaskCmd::Resume { task } => ("resumed", task),
                TaskCmd::Cancel { task } => ("cancelled", task),
                TaskCmd::Retry { task, set } => {
                    for (path, value) in set {
                        let Some((step, key)) = path.split_once('.') else {
                            bail!(
                                "`--set {path}=...` needs STEP.KEY (e.g. train.model.learning_rate)"
                            );
                        };
                        let patch = nested_patch(key, yaml_value(&value));
                        client
                            .update_step_params(v1::StepParamsUpdate {
                                task_id: task,
                                step: step.to_owned(),
                                patch_json: patch.to_string(),
                                user: String::new(),
                            })
                            .await
                            .map_err(status)?;
                        if !json {
                            println!("step {step} of task {task}: {key} = {value}");
                        }
                    }
                    ("retried", task)
                }
                _ => bail!("unreachable task command"),
            };
            let r = v1::TaskRef { task_id };
            let t = match verb {
                "paused" => client.pause_task(r).await,
                "resumed" => client.resume_task(r).await,
                "cancelled" => client.cancel_task(r).await,
                _ => client.retry_task(r).await,
            }
            .map_err(status)?
            .into_inner();
            if json {
                print_json(&task_json(&t))?;
            } else {
                println!("task {} {verb}: now {}", t.id, t.status);
            }
        }
        Command::Audit {
            limit,
            actor,
            before,
        } => access::audit(&mut client, limit, actor, before, json).await?,
        Command::Whoami => access::whoami(&mut client, json).await?,
        Command::Schedule(cmd) => schedule::schedule(&mut client, cmd, json).await?,
        Command::Backfill(cmd) => schedule::backfill(&mut client, cmd, json).await?,
        Command::Approve {
            task,
            step,
            comment,
        }
        | Command::Reject {
            task,
            step,
            comment,
        } => {
            let d = v1::StepDecision {
                task_id: task,
                step: step.clone(),
                user: String::new(),
                comment,
            };
            let t = if approve {
                client.approve_step(d).await
            } else {
                client.reject_step(d).await
            }
            .map_err(status)?
            .into_inner();
            if json {
                print_json(&task_json(&t))?;
            } else {
                let verb = if approve { "approved" } else { "rejected" };
                println!("step {step} of task {} {verb}: task now {}", t.id, t.status);
            }
        }
        Command::Logs { task, follow } => {
            let req = v1::GetLogsRequest {
                task_id: task,
                after_id: 0,
                limit: 0,
            };
            if follow {
                let mut stream = client.follow_logs(req).await.map_err(status)?.into_inner();
                while let Some(entry) = stream.message().await.map_err(status)? {
                    print_log(&entry, json)?;
                }
                let t = client
                    .get_task_status(v1::TaskRef { task_id: task })
                    .await
                    .map_err(status)?
                    .into_inner();
                if !json {
                    println!(
                        "-- task {} is {}{}",
                        t.id,
                        t.status,
                        if t.status_reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", t.status_reason)
                        }
                    );
                }
            } else {
                let logs = client.get_logs(req).await.map_err(status)?.into_inner();
                for entry in &logs.entries {
                    print_log(entry, json)?;
                }
            }
        }
        Command::Agents => {
            let list = client
                .list_agents(v1::ListAgentsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json {
                let v: Vec<_> = list
                    .agents
                    .iter()
                    .map(|a| {
                        serde_json::json!({"name": a.name, "role": a.role, "kinds": a.kinds, "gpus": a.gpus,
                            "connected": a.connected, "last_seen": a.last_seen, "running_jobs": a.running_jobs,
                            "hostname": a.hostname, "slots": a.slots, "slots_in_use": a.slots_in_use,
                            "gpus_in_use": a.gpus_in_use})
                    })
                    .collect();
                print_json(&serde_json::Value::Array(v))?;
            } else {
                let rows = list
                    .agents
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.role.clone(),
                            if a.connected {
                                "connected".into()
                            } else {
                                "offline".into()
                            },
                            a.running_jobs.to_string(),
                            if a.slots == 0 {
                                format!("{}/-", a.slots_in_use)
                            } else {
                                format!("{}/{}", a.slots_in_use, a.slots)
                            },
                            a.kinds.join(","),
                            format!("{:?} (in use {:?})", a.gpus, a.gpus_in_use),
                            a.last_seen.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "NAME",
                        "ROLE",
                        "STATE",
                        "JOBS",
                        "SLOTS",
                        "KINDS",
                        "GPUS",
                        "LAST SEEN",
                    ],
                    rows,
                );
            }
        }
        Command::Queue => {
            let queue = client
                .list_queue(v1::ListQueueRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json {
                let v: Vec<_> = queue
                    .steps
                    .iter()
                    .map(|q| {
                        serde_json::json!({"position": q.position, "task_id": q.task_id,
                            "task_name": q.task_name, "workflow": q.workflow, "step": q.step,
                            "priority": q.priority, "needs": q.needs, "waits_for": q.waits_for})
                    })
                    .collect();
                print_json(&serde_json::Value::Array(v))?;
            } else if queue.steps.is_empty() {
                println!("no step waits for capacity");
            } else {
                let rows = queue
                    .steps
                    .iter()
                    .map(|q| {
                        vec![
                            q.position.to_string(),
                            q.task_id.to_string(),
                            q.step.clone(),
                            q.workflow.clone(),
                            q.priority.to_string(),
                            q.needs.clone(),
                            q.waits_for.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "#",
                        "TASK",
                        "STEP",
                        "WORKFLOW",
                        "PRIORITY",
                        "NEEDS",
                        "WAITS FOR",
                    ],
                    rows,
                );
            }
        }
        Command::Manifest(_) | Command::Pki(_) | Command::Token(_) => {
            bail!("this command was handled before connecting")
        }
    }
    Ok(())
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

pub(crate) fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_log(e: &v1::LogEntry, json: bool) -> anyhow::Result<()> {
    let level = v1::LogLevel::try_from(e.level)
        .map(|l| l.as_str_name().trim_start_matches("LOG_LEVEL_"))
        .unwrap_or("INFO");
    if json {
        println!(
            "{}",
            serde_json::json!({"id": e.id, "timestamp": e.timestamp, "task_id": e.task_id, "step": e.step,
                "level": level, "source": e.source, "message": e.message})
        );
    } else {
        // `[10:00:05] [data_fetch] Executing sample SQL...` as in seed 000 §14.
        let time = e.timestamp.get(11..19).unwrap_or(&e.timestamp);
        let step = ferry_core::pipeline::log_label(&e.step);
        let src = match e.source.as_str() {
            "stdout" | "engine" => String::new(),
            other => format!("{other}: "),
        };
        println!("[{time}] [{step}] {src}{}", e.message);
    }
    Ok(())
}

fn workflow_json(w: &v1::Workflow) -> serde_json::Value {
    let def = w
        .definition
        .clone()
        .and_then(|d| WorkflowDef::try_from(d).ok());
    serde_json::json!({"id": w.id, "created_at": w.created_at, "updated_at": w.updated_at,
        "definition": def.and_then(|d| serde_json::to_value(d).ok())})
}

fn task_json(t: &v1::Task) -> serde_json::Value {
    serde_json::json!({"id": t.id, "name": t.name, "workflow": t.workflow, "status": t.status,
        "status_reason": t.status_reason, "completed_steps": t.completed_steps, "total_steps": t.total_steps,
        "created_at": t.created_at, "started_at": t.started_at, "completed_at": t.completed_at, "params": t.params})
}

fn step_json(s: &v1::Step) -> serde_json::Value {
    serde_json::json!({"name": s.name, "order": s.step_order, "kind": s.kind, "status": s.status,
        "placement": s.placement, "inputs": s.inputs, "constraint": s.constraint, "agent": s.agent,
        "job_id": s.job_id, "attempt": s.attempt, "retry_count": s.retry_count, "max_retries": s.max_retries,
        "error": s.error_message, "started_at": s.started_at, "completed_at": s.completed_at,
        "checkpoint": s.checkpoint_json, "progress": s.progress_json})
}

pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}
