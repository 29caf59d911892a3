//! Least privilege on the agent: which step kinds this host runs and which programs an `exec`
//! step may start (`agent.allow`), whether containers get a network, and where a step may
//! reach (`agent.roots`). Every check runs on the agent, on the parameters as the job received
//! them (placeholders filled in), at the moment of use: before anything is cleared or read.
//! Paths go through the one confinement rule, `ferry_fs::confine` (symlinks resolved).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use ferry_core::config::{AllowConfig, FerryConfig};
use ferry_core::kinds;

use crate::executor::{Executor, JobContext, JobError, JobFuture};

/// Step environment variables that would let an allowed program load code it was not given
/// (refused when `agent.allow.programs` is set).
const LOADER_VARS: &[&str] = &["LD_", "DYLD_"];

/// What this host lets its steps do.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roots: Vec<PathBuf>,
    allow: AllowConfig,
}

impl Policy {
    pub fn new(roots: Vec<PathBuf>, allow: AllowConfig) -> Policy {
        Policy { roots, allow }
    }

    /// From the config executors work with (`daemon::effective_config`: roots absolute).
    pub fn from_config(config: &FerryConfig) -> Policy {
        Policy::new(
            config.agent.effective_roots(config),
            config.agent.allow.clone(),
        )
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Refuses a kind missing from a non-empty `agent.allow.kinds`.
    pub fn check_kind(&self, kind: &str) -> Result<(), JobError> {
        if self.allow.kinds.is_empty() || self.allow.kinds.iter().any(|k| k == kind) {
            Ok(())
        } else {
            Err(JobError::permanent(format!(
                "this host does not run `{kind}` steps (agent.allow.kinds)"
            )))
        }
    }

    /// The program an `exec` step may start, checked against `agent.allow.programs` (when
    /// set) and resolved: a bare name is looked up on the agent's own `PATH` (never the
    /// step's), an absolute path must be listed as it is. With no list, the program as given.
    pub fn program(
        &self,
        program: &str,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<PathBuf, JobError> {
        if self.allow.programs.is_empty() {
            return Ok(PathBuf::from(program));
        }
        let listed = |p: &str| self.allow.programs.iter().any(|a| a == p);
        let refused = || {
            JobError::permanent(format!(
                "program `{program}` is not allowed on this host (agent.allow.programs: {})",
                self.allow.programs.join(", ")
            ))
        };
        if let Some(var) = env
            .keys()
            .find(|k| LOADER_VARS.iter().any(|prefix| k.starts_with(prefix)))
        {
            return Err(JobError::permanent(format!(
                "`{var}` may not be set for a program on this host (agent.allow.programs)"
            )));
        }
        if program.contains('/') {
            return if Path::new(program).is_absolute() && listed(program) {
                Ok(PathBuf::from(program))
            } else {
                Err(refused())
            };
        }
        let found = find_on_path(program);
        match found {
            Some(path) if listed(program) || path.to_str().is_some_and(listed) => Ok(path),
            None if listed(program) => Err(JobError::permanent(format!(
                "cannot start `{program}`: not found on this agent's PATH"
            ))),
            _ => Err(refused()),
        }
    }

    /// The container's network: `none` unless `agent.allow.docker_network`; a step that asks
    /// for another one on a host that does not allow it is refused.
    pub fn docker_network(&self, requested: Option<&str>) -> Result<String, JobError> {
        match requested {
            None | Some("none") => Ok("none".to_owned()),
            Some(n) if self.allow.docker_network => Ok(n.to_owned()),
            Some(n) => Err(JobError::permanent(format!(
                "containers on this host get no network, not `{n}` (agent.allow.docker_network)"
            ))),
        }
    }

    /// `path` (absolute) if it lies under one of the roots, symlinks resolved now: something
    /// a step reads.
    pub fn confine(&self, what: &str, path: &str) -> Result<PathBuf, JobError> {
        ferry_fs::confine::under_roots(&self.roots, path, false).map_err(|e| refused(what, e))
    }

    /// Like `confine`, for something a step writes: the matching root is created when
    /// missing.
    pub fn confine_dest(&self, what: &str, path: &str) -> Result<PathBuf, JobError> {
        ferry_fs::confine::under_roots(&self.roots, path, true).map_err(|e| refused(what, e))
    }

    /// Like `confine_dest`, for a directory that is emptied or replaced: never a root
    /// itself.
    pub fn confine_replaced(&self, what: &str, path: &str) -> Result<PathBuf, JobError> {
        let dir = self.confine_dest(what, path)?;
        let resolved = dir.canonicalize().ok();
        let is_root = self
            .roots
            .iter()
            .any(|r| r == &dir || (resolved.is_some() && r.canonicalize().ok() == resolved));
        if is_root {
            return Err(JobError::permanent(format!(
                "{what} `{path}` is refused: it is one of this agent's roots, and it would be emptied"
            )));
        }
        Ok(dir)
    }
}

/// `path` (absolute) if it lies strictly inside `dir` (a job's own directory), symlinks
/// resolved now.
pub fn confine_within(dir: &Path, what: &str, path: &str) -> Result<PathBuf, JobError> {
    let outside = || {
        JobError::permanent(format!(
            "{what} `{path}` is refused: it must lie inside {}",
            dir.display()
        ))
    };
    // Named the way the rule below would not word it: outside the job, not the roots.
    let named = Path::new(path);
    let forms: Vec<PathBuf> = std::iter::once(dir.to_owned())
        .chain(dir.canonicalize().ok())
        .collect();
    // `Path` equality ignores a trailing `/` and inner `.`: the directory itself is refused.
    if !forms.iter().any(|f| named.starts_with(f)) || forms.iter().any(|f| named == f) {
        return Err(outside());
    }
    ferry_fs::confine::under_roots(&[dir.to_owned()], path, false).map_err(|e| refused(what, e))
}

/// `dir/rel` for a relative path the agent builds itself, kept under `dir`.
pub fn join_within(dir: &Path, what: &str, rel: &str) -> Result<PathBuf, JobError> {
    ferry_fs::confine::join(dir, rel).map_err(|e| refused(what, e))
}

/// An identifier that becomes one directory or file name (`dataset_id`, `model_id`,
/// `expid`): a single relative component, checked after rendering.
pub fn check_identifier(key: &str, value: &str) -> Result<(), JobError> {
    let single = !value.contains('/')
        && matches!(
            Path::new(value).components().collect::<Vec<_>>().as_slice(),
            [Component::Normal(_)]
        );
    if single {
        Ok(())
    } else {
        Err(JobError::permanent(format!(
            "`{key}` must be a single directory name, not `{value}`"
        )))
    }
}

/// `root/id` for an identifier (see `check_identifier`), kept under `root` through symlinks.
pub fn join_identifier(root: &Path, key: &str, id: &str) -> Result<PathBuf, JobError> {
    check_identifier(key, id)?;
    join_within(root, key, id)
}

fn refused(what: &str, e: ferry_fs::confine::Refused) -> JobError {
    JobError::permanent(format!("{what} `{}` is refused: {}", e.path, e.reason))
}

/// The first executable regular file named `name` on the agent's own `PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Puts every executor behind the host's policy: a kind this host does not run fails with
/// the reason, and parameters are checked again as the job received them (rendered), with
/// the coordinator's own rules and words, before the executor sees them.
pub fn guard(executors: Vec<Arc<dyn Executor>>, policy: &Policy) -> Vec<Arc<dyn Executor>> {
    let policy = Arc::new(policy.clone());
    executors
        .into_iter()
        .map(|inner| {
            Arc::new(Guarded {
                inner,
                policy: policy.clone(),
            }) as Arc<dyn Executor>
        })
        .collect()
}

struct Guarded {
    inner: Arc<dyn Executor>,
    policy: Arc<Policy>,
}

impl Executor for Guarded {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let kind = self.inner.kind();
        if let Err(e) = self.policy.check_kind(kind) {
            return Box::pin(async move { Err(e) });
        }
        if let Err(message) = kinds::validate_rendered(kind, &ctx.params) {
            return Box::pin(async move { Err(JobError::permanent(message)) });
        }
        self.inner.run(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn allow(kinds: &[&str], programs: &[&str], network: bool) -> AllowConfig {
        AllowConfig {
            kinds: kinds.iter().map(|s| (*s).to_owned()).collect(),
            programs: programs.iter().map(|s| (*s).to_owned()).collect(),
            docker_network: network,
        }
    }

    #[test]
    fn kinds_and_programs_outside_the_allow_lists_are_refused() {
        let open = Policy::new(Vec::new(), AllowConfig::default());
        assert!(open.check_kind("exec").is_ok());
        let sql_only = Policy::new(Vec::new(), allow(&["sql_export", "hive_load"], &[], false));
        assert!(sql_only.check_kind("hive_load").is_ok());
        let e = sql_only.check_kind("exec").expect_err("refused");
        assert_eq!(
            e.message,
            "this host does not run `exec` steps (agent.allow.kinds)"
        );
        assert_eq!(e.class, ferry_core::ErrorClass::Permanent);

        let env = BTreeMap::new();
        assert_eq!(
            open.program("anything", &env).expect("no list"),
            PathBuf::from("anything")
        );
        let sh = Policy::new(Vec::new(), allow(&[], &["sh", "/bin/true"], false));
        assert!(sh.program("sh", &env).expect("listed").is_absolute());
        assert_eq!(
            sh.program("/bin/true", &env).expect("listed"),
            PathBuf::from("/bin/true")
        );
        for bad in ["curl", "/bin/sh", "./sh", "bin/sh"] {
            let e = sh.program(bad, &env).expect_err(bad);
            assert!(
                e.message
                    .contains("is not allowed on this host (agent.allow.programs"),
                "{e}"
            );
        }
        let preload = BTreeMap::from([("LD_PRELOAD".to_owned(), "/tmp/x.so".to_owned())]);
        assert!(sh.program("sh", &preload).is_err());
    }

    struct Succeeds(&'static str);

    impl Executor for Succeeds {
        fn kind(&self) -> &'static str {
            self.0
        }

        fn run(&self, _ctx: JobContext) -> JobFuture {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn guarded_executors_refuse_kinds_off_the_list_and_unrendered_values() {
        let tmp = tempfile::tempdir().expect("tmp");
        let policy = Policy::new(
            Vec::new(),
            allow(&["sql_export", "noop", "infer"], &[], false),
        );
        let guarded = guard(
            vec![
                Arc::new(Succeeds("exec")),
                Arc::new(Succeeds("noop")),
                Arc::new(Succeeds("infer")),
            ],
            &policy,
        );
        let ctx = |params| crate::executor::test_context(params, tmp.path());
        let e = guarded[0]
            .run(ctx(serde_json::json!({"program": "true"})))
            .await
            .expect_err("exec is not on the list");
        assert_eq!(
            e.message,
            "this host does not run `exec` steps (agent.allow.kinds)"
        );
        assert_eq!(e.class, ferry_core::ErrorClass::Permanent);
        assert!(guarded[1].run(ctx(serde_json::json!({}))).await.is_ok());
        // The coordinator's own rule, on the value the job received.
        let e = guarded[2]
            .run(ctx(
                serde_json::json!({"dataset_id": "/tmp/escape", "model_id": "m",
                "input_dir": "/i", "expid": "e"}),
            ))
            .await
            .expect_err("rendered to a path");
        assert!(e.message.contains("`dataset_id` must be a name"), "{e}");
    }

    #[test]
    fn containers_get_no_network_unless_allowed() {
        let closed = Policy::new(Vec::new(), AllowConfig::default());
        assert_eq!(closed.docker_network(None).expect("default"), "none");
        assert_eq!(closed.docker_network(Some("none")).expect("none"), "none");
        let e = closed.docker_network(Some("host")).expect_err("refused");
        assert!(e.message.contains("agent.allow.docker_network"), "{e}");
        let open = Policy::new(Vec::new(), allow(&[], &[], true));
        assert_eq!(
            open.docker_network(Some("bridge")).expect("allowed"),
            "bridge"
        );
        assert_eq!(open.docker_network(None).expect("default"), "none");
    }

    #[test]
    fn identifiers_are_one_relative_component() {
        for ok in ["campaign", "c_7", "a.b"] {
            assert!(check_identifier("dataset_id", ok).is_ok(), "{ok}");
        }
        for bad in ["/tmp/escape", "..", ".", "a/b", "", "../x", "a/"] {
            let e = check_identifier("dataset_id", bad).expect_err(bad);
            assert!(e.message.contains("single directory name"), "{e}");
        }
        let root = tempfile::tempdir().expect("tmp");
        let e = join_identifier(root.path(), "dataset_id", "/tmp/escape").expect_err("absolute");
        assert!(e.message.contains("/tmp/escape"), "{e}");
        assert_eq!(
            join_identifier(root.path(), "dataset_id", "campaign").expect("inside"),
            root.path().join("campaign")
        );
    }

    #[test]
    fn replaced_directories_stay_inside_and_are_never_a_root() {
        let root = tempfile::tempdir().expect("tmp");
        let policy = Policy::new(vec![root.path().to_owned()], AllowConfig::default());
        let inside = format!("{}/out", root.path().display());
        assert!(policy.confine_replaced("output", &inside).is_ok());
        let whole = root.path().display().to_string();
        let e = policy
            .confine_replaced("output", &whole)
            .expect_err("a root");
        assert!(e.message.contains("one of this agent's roots"), "{e}");
        let e = policy
            .confine("upload source", "/etc")
            .expect_err("outside");
        assert!(
            e.message.starts_with(
                "upload source `/etc` is refused: not under any of this agent's roots"
            ),
            "{e}"
        );
        let job = root.path().join("job");
        std::fs::create_dir_all(&job).expect("mkdir");
        assert!(confine_within(&job, "mount", &format!("{}/mounts/in", job.display())).is_ok());
        assert!(confine_within(&job, "mount", &job.display().to_string()).is_err());
        assert!(confine_within(&job, "mount", "/etc").is_err());
    }
}
