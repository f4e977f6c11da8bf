//! What a `HostSession` runs its scripts through. The roles and the config
//! phase only see `HostSession`; beneath it, the real transport is an openssh
//! ControlMaster (`SshTransport`), and tests put a scripted host
//! (remote::scripted) in its place, so the phase's own code runs unchanged
//! without machines.

use super::session::{sh_quote, RunOutput, KILL_AFTER};
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use openssh::{Session, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt};

/// Who a script runs as on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    /// `sudo -n sh -c`.
    Root,
    /// `sh -c` as the SSH user.
    User,
}

#[async_trait]
pub trait Transport: Send + Sync {
    /// Run a shell script, feeding it `stdin` (or nothing), and wait for it.
    /// The host ends it after `limit` (exit 124, or 137 when it needed KILL);
    /// `HostSession` bounds the wait on this side.
    async fn run(&self, who: As, script: &str, stdin: Option<&[u8]>, limit: Duration) -> Result<RunOutput>;

    /// Run a shell script as root with `input` streamed to its stdin, ended
    /// by the host after `limit` as `run`'s are.
    async fn run_streamed(&self, script: &str, input: &mut (dyn AsyncRead + Unpin + Send), limit: Duration) -> Result<RunOutput>;

    /// End the connection (or, for SSH with RIGGER_SSH_PERSIST, leave it for the next run).
    async fn close(self: Box<Self>);
}

/// One multiplexed SSH master (the `openssh` crate drives the system ssh with
/// ControlMaster): every command is a cheap channel on it.
pub struct SshTransport {
    pub(super) name: String,
    pub(super) session: Session,
    /// With RIGGER_SSH_PERSIST: where to note the master's control socket so
    /// the next run reuses it instead of connecting again.
    pub(super) keep_as: Option<std::path::PathBuf>,
    /// The private folder of a master taken over from `wait_for_ssh`
    /// (persist::take_handoff), removed when the session closes.
    pub(super) handoff_dir: Option<std::path::PathBuf>,
}

impl SshTransport {
    fn command(&self, who: As, script: &str, limit: Duration) -> openssh::OwningCommand<&Session> {
        let mut cmd = self.session.raw_command(remote_command_line(who, script, limit, KILL_AFTER));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }
}

/// The command line the host's login shell runs for a script: `sh -c
/// <script>` (after `sudo -n` for root) under GNU `timeout`, which ends it
/// after `limit` — TERM to its whole process group, KILL `kill_after`
/// later — so a command rigger gave up on is not left running. `timeout`
/// is one more exec per command, none per ask (the facts script's asks
/// run inside it), and the script's text is unchanged (answers asked ahead
/// still match it). The trailing `exit` keeps the login shell from
/// exec'ing the command (a fork, no exec): a KILL reaches `timeout`
/// itself, and the shell then reports exit 137 where ssh would otherwise
/// report no exit status at all.
pub fn remote_command_line(who: As, script: &str, limit: Duration, kill_after: Duration) -> String {
    // Whole seconds, rounded up: the host never ends a command before its limit.
    let secs = |d: Duration| (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1);
    let sudo = match who {
        As::Root => "sudo -n ",
        As::User => "",
    };
    format!("{sudo}timeout -k {} {} sh -c {}; exit", secs(kill_after), secs(limit), sh_quote(script))
}

fn output(out: std::process::Output) -> RunOutput {
    RunOutput { code: out.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

#[async_trait]
impl Transport for SshTransport {
    async fn run(&self, who: As, script: &str, stdin: Option<&[u8]>, limit: Duration) -> Result<RunOutput> {
        let mut cmd = self.command(who, script, limit);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().await.with_context(|| format!("{}: cannot start a remote command", self.name))?;
        if let Some(data) = stdin {
            let mut pipe = child.stdin().take().ok_or_else(|| anyhow!("{}: no stdin", self.name))?;
            pipe.write_all(data).await?;
            pipe.shutdown().await?;
            drop(pipe);
        }
        let out = child.wait_with_output().await.with_context(|| format!("{}: the remote command failed to finish", self.name))?;
        Ok(output(out))
    }

    async fn run_streamed(&self, script: &str, input: &mut (dyn AsyncRead + Unpin + Send), limit: Duration) -> Result<RunOutput> {
        let mut cmd = self.command(As::Root, script, limit);
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().await.with_context(|| format!("{}: cannot start a remote command", self.name))?;
        let mut pipe = child.stdin().take().ok_or_else(|| anyhow!("{}: no stdin", self.name))?;
        let copied = tokio::io::copy(input, &mut pipe).await;
        let _ = pipe.shutdown().await;
        drop(pipe);
        let out = output(child.wait_with_output().await.with_context(|| format!("{}: the remote command failed to finish", self.name))?);
        match copied {
            // The host's `timeout` ended the command mid-upload (a slow link):
            // its exit says so, and HostSession names the limit.
            Err(_) if matches!(out.code, 124 | 137) => Ok(out),
            Err(e) => bail!("{}: streaming to the remote command broke off: {e} ({})", self.name, out.stderr.trim()),
            Ok(_) => Ok(out),
        }
    }

    async fn close(self: Box<Self>) {
        let SshTransport { session, keep_as, handoff_dir, .. } = *self;
        match keep_as {
            Some(record) => super::persist::keep(session, &record),
            None => {
                let _ = session.close().await;
                if let Some(dir) = &handoff_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_runs_the_script_unchanged_under_timeout() {
        let script = "echo 'a b' && sleep 1";
        assert_eq!(remote_command_line(As::Root, script, Duration::from_secs(300), KILL_AFTER), "sudo -n timeout -k 10 300 sh -c 'echo '\\''a b'\\'' && sleep 1'; exit");
        assert_eq!(remote_command_line(As::User, "true", Duration::from_millis(1500), KILL_AFTER), "timeout -k 10 2 sh -c true; exit");
        // What the host's shell makes of it: the script's own words, exit code and output.
        let line = remote_command_line(As::User, "printf '%s|' \"$0\" 'it'\\''s'; echo; exit 3", Duration::from_secs(60), KILL_AFTER);
        let out = std::process::Command::new("sh").args(["-c", &line]).output().unwrap();
        assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(3), "sh|it's|\n"));
    }

    /// The command line a host runs, run here by sh as the host's login
    /// shell would (the SSH user's form; root's only puts `sudo -n` before
    /// it): past its limit the script and everything it started are gone —
    /// children that ignore TERM too (KILL follows) — and the shell exits
    /// 124 or 137, which the session reports as a deadline.
    #[test]
    fn past_its_limit_the_command_and_its_children_are_gone() {
        use std::os::unix::process::CommandExt;
        // Children inherit the ignored TERM: only KILL ends them.
        let script = "trap '' TERM; sleep 4711 & sleep 4712 & sleep 4713; wait";
        let line = remote_command_line(As::User, script, Duration::from_secs(1), Duration::from_secs(1));
        // In a process group of its own, so that whatever this test started can be ended by it.
        let mut child = std::process::Command::new("sh").args(["-c", &line]).stdin(std::process::Stdio::null()).process_group(0).spawn().unwrap();
        let group = child.id() as i32;
        let left = || std::process::Command::new("pgrep").args(["-f", "sleep 471[123]"]).output().unwrap().stdout;
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            match child.try_wait().unwrap() {
                Some(status) if left().is_empty() => break Some(status),
                _ if std::time::Instant::now() > until => break None,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        if status.is_none() {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
            let _ = child.wait();
        }
        let status = status.expect("the command and its children were still running 20 s past a 1 s limit");
        assert!(matches!(status.code(), Some(124 | 137)), "{status:?}");
    }
}
