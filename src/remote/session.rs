//! One multiplexed SSH master per host (the `openssh` crate drives the system
//! ssh with ControlMaster): every later command is a cheap channel on it.

use anyhow::{anyhow, bail, Context, Result};
use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use std::path::Path;
use std::time::Duration;
use super::ahead::{Ask, FRESH};
use tokio::io::AsyncWriteExt;

pub struct HostSession {
    pub name: String,
    session: Session,
    /// With RIGGER_SSH_PERSIST: where to note the master's control socket so
    /// the next run reuses it instead of connecting again.
    keep_as: Option<std::path::PathBuf>,
    /// Answers asked ahead in the facts round trip (see remote::ahead), with
    /// when they were handed over; each is used once.
    ahead: std::sync::Mutex<Option<(std::time::Instant, Vec<(Ask, RunOutput)>)>>,
    /// The private folder of a master taken over from `wait_for_ssh`
    /// (persist::take_handoff), removed when the session closes.
    handoff_dir: Option<std::path::PathBuf>,
}

/// What a remote command did.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

impl HostSession {
    /// Open the master connection to `name` as the project ssh_config describes it.
    pub async fn connect(config: &Path, name: &str) -> Result<HostSession> {
        let persist = super::persist::idle_seconds();
        let keep_as = persist.map(|_| super::persist::record_path(config, name));
        if let Some(record) = &keep_as {
            if let Some(session) = super::persist::resume(record).await {
                return Ok(HostSession { name: name.to_string(), session, keep_as, ahead: Default::default(), handoff_dir: None });
            }
        }
        // The master `wait_for_ssh` just opened (same config, host key verified).
        if let Some((session, dir)) = super::persist::take_handoff(&super::persist::handoff_record(config, name)).await {
            tracing::debug!(host = name, "ssh master taken over from the SSH wait");
            return Ok(HostSession { name: name.to_string(), session, keep_as, ahead: Default::default(), handoff_dir: Some(dir) });
        }
        let mut b = SessionBuilder::default();
        b.config_file(config)
            .known_hosts_check(KnownHosts::Strict)
            .connect_timeout(Duration::from_secs(10))
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(std::env::temp_dir());
        if let Some(idle) = persist {
            b.control_persist(openssh::ControlPersist::IdleFor(idle));
        }
        let started = std::time::Instant::now();
        let session = b.connect(name).await.map_err(|e| anyhow!("{name}: cannot open SSH: {e}"))?;
        tracing::debug!(host = name, ms = started.elapsed().as_millis() as u64, "ssh master up");
        Ok(HostSession { name: name.to_string(), session, keep_as, ahead: Default::default(), handoff_dir: None })
    }

    /// Hand over answers asked ahead: the next run of each of those commands
    /// (same script, user and stdin) within `FRESH` reads its answer.
    pub fn answer_ahead(&self, answers: Vec<(Ask, RunOutput)>) {
        if let Ok(mut a) = self.ahead.lock() {
            *a = Some((std::time::Instant::now(), answers));
        }
    }

    fn answered(&self, root: bool, script: &str, stdin: Option<&[u8]>) -> Option<RunOutput> {
        let mut guard = self.ahead.lock().ok()?;
        let (at, answers) = guard.as_mut()?;
        if at.elapsed() > FRESH {
            *guard = None;
            return None;
        }
        let i = answers.iter().position(|(a, _)| a.root == root && a.script == script && a.stdin.as_deref() == stdin)?;
        tracing::debug!(host = self.name.as_str(), command = trace_label(script), "answered ahead");
        Some(answers.swap_remove(i).1)
    }

    /// Run a shell script as root (sudo -n), optionally feeding `stdin`.
    pub async fn sudo(&self, script: &str, stdin: Option<&[u8]>) -> Result<RunOutput> {
        if let Some(out) = self.answered(true, script, stdin) {
            return Ok(out);
        }
        let mut cmd = self.session.command("sudo");
        cmd.args(["-n", "sh", "-c", script]);
        self.run(cmd, stdin, script).await
    }

    /// Run a shell script as root with `input` streamed to its stdin (large
    /// uploads: nothing is held in memory).
    pub async fn sudo_stream(&self, script: &str, mut input: impl tokio::io::AsyncRead + Unpin) -> Result<RunOutput> {
        let mut cmd = self.session.command("sudo");
        cmd.args(["-n", "sh", "-c", script]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::piped());
        let mut child = cmd.spawn().await.with_context(|| format!("{}: cannot start a remote command", self.name))?;
        let mut pipe = child.stdin().take().ok_or_else(|| anyhow!("{}: no stdin", self.name))?;
        let copied = tokio::io::copy(&mut input, &mut pipe).await;
        let _ = pipe.shutdown().await;
        drop(pipe);
        let out = child.wait_with_output().await.with_context(|| format!("{}: the remote command failed to finish", self.name))?;
        let out = RunOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if let Err(e) = copied {
            bail!("{}: streaming to the remote command broke off: {e} ({})", self.name, out.stderr.trim());
        }
        Ok(out)
    }

    /// Run a shell script as the SSH user.
    pub async fn sh(&self, script: &str) -> Result<RunOutput> {
        if let Some(out) = self.answered(false, script, None) {
            return Ok(out);
        }
        let mut cmd = self.session.command("sh");
        cmd.args(["-c", script]);
        self.run(cmd, None, script).await
    }

    async fn run(&self, cmd: openssh::OwningCommand<&Session>, stdin: Option<&[u8]>, label: &str) -> Result<RunOutput> {
        let started = std::time::Instant::now();
        let out = self.run_untimed(cmd, stdin).await;
        // RUST_LOG=rigger::remote=debug: every live round trip with its host
        // and duration (where a run's time goes).
        tracing::debug!(host = self.name.as_str(), ms = started.elapsed().as_millis() as u64, code = out.as_ref().map(|o| o.code).unwrap_or(-1), command = trace_label(label), "round trip");
        out
    }

    async fn run_untimed(&self, mut cmd: openssh::OwningCommand<&Session>, stdin: Option<&[u8]>) -> Result<RunOutput> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().await.with_context(|| format!("{}: cannot start a remote command", self.name))?;
        if let Some(data) = stdin {
            let mut pipe = child.stdin().take().ok_or_else(|| anyhow!("{}: no stdin", self.name))?;
            pipe.write_all(data).await?;
            pipe.shutdown().await?;
            drop(pipe);
        }
        let out = child.wait_with_output().await.with_context(|| format!("{}: the remote command failed to finish", self.name))?;
        Ok(RunOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Like `sudo`, but a non-zero exit is an error carrying the remote stderr.
    pub async fn sudo_ok(&self, what: &str, script: &str) -> Result<String> {
        let out = self.sudo(script, None).await?;
        if !out.ok() {
            bail!("{}: {what} failed (exit {}): {}", self.name, out.code, out.stderr.trim());
        }
        Ok(out.stdout)
    }

    pub async fn close(self) {
        match &self.keep_as {
            Some(record) => super::persist::keep(self.session, record),
            None => {
                let _ = self.session.close().await;
                if let Some(dir) = &self.handoff_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
    }
}

/// A command as a trace line names it: its first line, cut short (secrets
/// travel on stdin, never in a script's text).
fn trace_label(script: &str) -> String {
    let first = script.trim_start().lines().next().unwrap_or("");
    first.chars().take(60).collect()
}

/// Quote a string for sh.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}
