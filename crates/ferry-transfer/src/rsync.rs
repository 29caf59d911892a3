//! rsync over an SSH session's control socket: push or pull a directory with `--partial`
//! (an interrupted file resumes from what arrived), optional compression and bandwidth
//! limit, progress as it goes, and the byte counts rsync reports.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::TransferError;
use crate::ssh::{SshSession, shell_quote};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local directory → remote directory.
    Push,
    /// Remote directory → local directory.
    Pull,
}

#[derive(Debug, Clone, Default)]
pub struct RsyncOptions {
    pub compress: bool,
    /// `--bwlimit` value (e.g. `100M`); empty for none.
    pub bandwidth_limit: String,
    /// Further rsync options.
    pub extra: Vec<String>,
}

/// What rsync reported (`--stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RsyncStats {
    /// Bytes of file data actually sent (not matched from the destination's copy).
    pub literal_bytes: u64,
    /// Bytes on the wire in the sending direction.
    pub bytes_sent: u64,
    pub files_transferred: u64,
}

/// A progress line of `--info=progress2`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub bytes: u64,
    pub percent: u32,
    pub rate: String,
    pub eta: String,
}

/// Copies the *contents* of `local` to/from the remote directory `remote`.
pub async fn transfer(
    session: &SshSession,
    direction: Direction,
    local: &Path,
    remote: &str,
    opts: &RsyncOptions,
    on_progress: impl FnMut(Progress),
) -> Result<RsyncStats, TransferError> {
    Ok(
        transfer_heard(session, direction, local, remote, opts, None, on_progress)
            .await?
            .0,
    )
}

/// A line rsync's remote command prints on its standard error once it is up (before rsync
/// itself runs there), and how long to wait for it: rsync alone never gives up on a
/// connection that died before its first word.
#[derive(Debug, Clone)]
pub struct Greeting {
    pub line: String,
    pub within: std::time::Duration,
}

/// [`transfer`], also returning what the other side printed on its standard error (rsync
/// passes its remote command's standard error through); with a [`Greeting`], a connection
/// error when it is not heard in time.
pub async fn transfer_heard(
    session: &SshSession,
    direction: Direction,
    local: &Path,
    remote: &str,
    opts: &RsyncOptions,
    greeting: Option<Greeting>,
    mut on_progress: impl FnMut(Progress),
) -> Result<(RsyncStats, String), TransferError> {
    let remote_spec = format!(
        "{}:{}/",
        session.target.destination(),
        shell_quote(remote.trim_end_matches('/'))
    );
    let local_spec = format!("{}/", local.display().to_string().trim_end_matches('/'));
    let (src, dst) = match direction {
        Direction::Push => (local_spec, remote_spec),
        Direction::Pull => (remote_spec, local_spec),
    };
    let mut cmd = Command::new("rsync");
    cmd.arg("-a")
        .arg("--partial")
        .arg("--stats")
        .arg("--info=progress2")
        .arg("-e")
        .arg(session.ssh_command());
    if opts.compress {
        cmd.arg("-z");
    }
    if !opts.bandwidth_limit.is_empty() {
        cmd.arg(format!("--bwlimit={}", opts.bandwidth_limit));
    }
    cmd.args(&opts.extra);
    cmd.arg(&src)
        .arg(&dst)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so that its ssh goes with it (see `Group`).
        .process_group(0)
        .kill_on_drop(true);
    let what = format!("rsync {src} {dst}");
    let mut child = cmd.spawn().map_err(|e| TransferError::Command {
        what: what.clone(),
        detail: e.to_string(),
    })?;
    let mut group = Group(child.id());
    let stderr = child.stderr.take();
    let (greeted, heard) = tokio::sync::oneshot::channel();
    let expected = greeting.as_ref().map(|g| g.line.clone());
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let mut greeted = Some(greeted);
        if let Some(e) = stderr {
            // Read to the end whatever it holds (a name that is not UTF-8 included): rsync
            // must never block on a full pipe.
            let mut lines = BufReader::new(e);
            let mut line = Vec::new();
            while lines.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&line);
                if expected.as_deref() == Some(text.trim())
                    && let Some(g) = greeted.take()
                {
                    let _ = g.send(());
                }
                s.push_str(&text);
                line.clear();
            }
        }
        s
    });
    // No greeting in time: the connection is dead (an error the step retries on a new
    // master). A command that ended without one says why in its own error.
    let watchdog = async {
        match greeting {
            Some(g) => match tokio::time::timeout(g.within, heard).await {
                Err(_) => TransferError::Connect {
                    host: session.target.host.clone(),
                    port: session.target.port,
                    detail: format!(
                        "no word from rsync's remote command within {} s through the SSH connection (it may be dead)",
                        g.within.as_secs_f64()
                    ),
                },
                Ok(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };
    let stdout = child.stdout.take();
    let reading = async {
        let mut stats_text = String::new();
        let Some(out) = stdout else {
            return Ok(stats_text);
        };
        // progress2 separates updates with '\r'; --stats ends with '\n' lines.
        let mut reader = BufReader::new(out);
        let mut buf = Vec::new();
        let mut byte = [0u8; 4096];
        loop {
            let n = reader
                .read(&mut byte)
                .await
                .map_err(|e| TransferError::Command {
                    what: what.clone(),
                    detail: e.to_string(),
                })?;
            if n == 0 {
                break;
            }
            for &b in &byte[..n] {
                if b == b'\r' || b == b'\n' {
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(p) = parse_progress(&line) {
                        on_progress(p);
                    } else if !line.trim().is_empty() {
                        stats_text.push_str(&line);
                        stats_text.push('\n');
                    }
                    buf.clear();
                } else {
                    buf.push(b);
                }
            }
        }
        Ok(stats_text)
    };
    let stats_text = tokio::select! {
        read = reading => read?,
        dead = watchdog => return Err(dead),
    };
    let status = child.wait().await.map_err(|e| TransferError::Command {
        what: what.clone(),
        detail: e.to_string(),
    })?;
    group.0 = None;
    let stderr = err_task.await.unwrap_or_default();
    if !status.success() {
        return Err(TransferError::Command {
            what,
            detail: format!("{status}: {}", stderr.trim()),
        });
    }
    Ok((parse_stats(&stats_text), stderr))
}

/// rsync's process group while it runs: a transfer given up on (a timeout, a failed
/// partner, a cancelled step) ends rsync *and* the ssh it started, which would otherwise
/// live on, and connect afresh by itself once its master is gone.
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn number(s: &str) -> Option<u64> {
    s.replace(',', "").parse().ok()
}

/// `    1,234,567  45%   12.34MB/s    0:00:05 (xfr#3, to-chk=10/20)`
fn parse_progress(line: &str) -> Option<Progress> {
    let mut it = line.split_whitespace();
    let bytes = number(it.next()?)?;
    let percent = it.next()?.strip_suffix('%')?.parse().ok()?;
    let rate = it.next()?.to_owned();
    let eta = it.next()?.to_owned();
    Some(Progress {
        bytes,
        percent,
        rate,
        eta,
    })
}

fn parse_stats(text: &str) -> RsyncStats {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next().and_then(number))
            .unwrap_or(0)
    };
    RsyncStats {
        literal_bytes: field("Literal data:"),
        bytes_sent: field("Total bytes sent:"),
        files_transferred: field("Number of regular files transferred:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_stats_lines_parse() {
        let p = parse_progress("    1,234,567  45%   12.34MB/s    0:00:05 (xfr#3, to-chk=10/20)")
            .expect("progress");
        assert_eq!(
            p,
            Progress {
                bytes: 1_234_567,
                percent: 45,
                rate: "12.34MB/s".into(),
                eta: "0:00:05".into()
            }
        );
        assert!(parse_progress("Number of files: 3").is_none());
        let s = parse_stats(
            "Number of regular files transferred: 2\nLiteral data: 40,005 bytes\nTotal bytes sent: 40,512\n",
        );
        assert_eq!(
            s,
            RsyncStats {
                literal_bytes: 40_005,
                bytes_sent: 40_512,
                files_transferred: 2
            }
        );
    }
}
