//! What a `HostSession` runs its scripts through. The roles and the config
//! phase only see `HostSession`; beneath it, the real transport is an openssh
//! ControlMaster (`SshTransport`), and tests put a scripted host
//! (remote::scripted) in its place, so the phase's own code runs unchanged
//! without machines.

use super::session::RunOutput;
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use openssh::{Session, Stdio};
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
    async fn run(&self, who: As, script: &str, stdin: Option<&[u8]>) -> Result<RunOutput>;

    /// Run a shell script as root with `input` streamed to its stdin.
    async fn run_streamed(&self, script: &str, input: &mut (dyn AsyncRead + Unpin + Send)) -> Result<RunOutput>;

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
    fn command(&self, who: As, script: &str) -> openssh::OwningCommand<&Session> {
        let mut cmd = match who {
            As::Root => {
                let mut c = self.session.command("sudo");
                c.args(["-n", "sh", "-c", script]);
                c
            }
            As::User => {
                let mut c = self.session.command("sh");
                c.args(["-c", script]);
                c
            }
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }
}

fn output(out: std::process::Output) -> RunOutput {
    RunOutput { code: out.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

#[async_trait]
impl Transport for SshTransport {
    async fn run(&self, who: As, script: &str, stdin: Option<&[u8]>) -> Result<RunOutput> {
        let mut cmd = self.command(who, script);
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

    async fn run_streamed(&self, script: &str, input: &mut (dyn AsyncRead + Unpin + Send)) -> Result<RunOutput> {
        let mut cmd = self.command(As::Root, script);
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().await.with_context(|| format!("{}: cannot start a remote command", self.name))?;
        let mut pipe = child.stdin().take().ok_or_else(|| anyhow!("{}: no stdin", self.name))?;
        let copied = tokio::io::copy(input, &mut pipe).await;
        let _ = pipe.shutdown().await;
        drop(pipe);
        let out = output(child.wait_with_output().await.with_context(|| format!("{}: the remote command failed to finish", self.name))?);
        if let Err(e) = copied {
            bail!("{}: streaming to the remote command broke off: {e} ({})", self.name, out.stderr.trim());
        }
        Ok(out)
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
