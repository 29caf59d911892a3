//! Seed 003's path hierarchy, built in this one place so that the side that sends a job's
//! output and the side that receives it compute the same directories:
//!
//! ```text
//! <root>/workflows/<coordinator>/<workflow_job>/jobs/<executor>/<job>/
//!     input/<sender>/<sender_job>/   what a connection delivered (verified)
//!     output/stdout/                 the job's captured standard output (or a DATA node's files)
//!     mounts/<mount>/                a MOUNT interface's directory (`/input/` → `mounts/input`)
//! ```
//!
//! `<root>` is an agent's work dir (or the coordinator's data dir for downloads);
//! `<workflow_job>` is the task id (`${task_id}` in a plan, filled in at task creation).

/// The directories of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPaths {
    base: String,
}

impl JobPaths {
    pub fn new(
        root: &str,
        coordinator: &str,
        workflow_job: &str,
        executor: &str,
        job: &str,
    ) -> JobPaths {
        JobPaths {
            base: format!(
                "{}/workflows/{coordinator}/{workflow_job}/jobs/{executor}/{job}",
                root.trim_end_matches('/')
            ),
        }
    }

    /// The job's own directory.
    pub fn dir(&self) -> &str {
        &self.base
    }

    /// Where `sender_job` (run by agent `sender`) delivers to this job.
    pub fn input(&self, sender: &str, sender_job: &str) -> String {
        format!("{}/input/{sender}/{sender_job}", self.base)
    }

    pub fn output(&self) -> String {
        format!("{}/output", self.base)
    }

    /// The captured standard output (or a DATA node's published files).
    pub fn stdout_dir(&self) -> String {
        format!("{}/output/stdout", self.base)
    }

    /// The directory behind the MOUNT interface at `mount_path` inside the job.
    pub fn mount(&self, mount_path: &str) -> String {
        format!("{}/mounts/{}", self.base, mount_dir_name(mount_path))
    }

    /// The STANDALONE job's working directory: mounts appear as relative paths in it.
    pub fn mounts_root(&self) -> String {
        format!("{}/mounts", self.base)
    }
}

/// `/input/` → `input`, `/data/out` → `data/out`: a mount keeps its shape under `mounts/`.
pub fn mount_dir_name(mount_path: &str) -> String {
    mount_path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The file a job's standard output is captured to, inside `stdout_dir`.
pub const STDOUT_FILE: &str = "stdout";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_and_receiver_agree_on_the_input_directory() {
        let receiver = JobPaths::new("/srv/b/work/", "coord", "42", "agent-b", "convert");
        assert_eq!(
            receiver.dir(),
            "/srv/b/work/workflows/coord/42/jobs/agent-b/convert"
        );
        assert_eq!(
            receiver.input("agent-a", "raw"),
            "/srv/b/work/workflows/coord/42/jobs/agent-b/convert/input/agent-a/raw"
        );
        assert_eq!(
            receiver.mount("/input/"),
            "/srv/b/work/workflows/coord/42/jobs/agent-b/convert/mounts/input"
        );
        assert_eq!(mount_dir_name("/data//out/"), "data/out");
    }
}
