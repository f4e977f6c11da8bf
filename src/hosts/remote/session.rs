//! One session per host: what the config phase and the roles run their
//! scripts through. Beneath it sits a `Transport` (remote::transport): one
//! multiplexed SSH master per host in real runs, a scripted host in tests.

use super::ahead::{Ask, FRESH};
use super::transport::{As, SshTransport, Transport};
use anyhow::{anyhow, bail, Result};
use openssh::{KnownHosts, SessionBuilder};
use std::path::Path;
use std::time::Duration;

pub struct HostSession {
    pub name: String,
    transport: Box<dyn Transport>,
    /// Answers asked ahead in the facts round trip (see remote::ahead), with
    /// when they were handed over; each is used once.
    ahead: std::sync::Mutex<Option<(std::time::Instant, Vec<(Ask, RunOutput)>)>>,
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
                return Ok(HostSession::over(name, Box::new(SshTransport { name: name.to_string(), session, keep_as, handoff_dir: None })));
            }
        }
        // The master `wait_for_ssh` just opened (same config, host key verified).
        if let Some((session, dir)) = super::persist::take_handoff(&super::persist::handoff_record(config, name)).await {
            tracing::debug!(host = name, "ssh master taken over from the SSH wait");
            return Ok(HostSession::over(name, Box::new(SshTransport { name: name.to_string(), session, keep_as, handoff_dir: Some(dir) })));
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
        let session = b.connect_mux(name).await.map_err(|e| anyhow!("{name}: cannot open SSH: {e}"))?;
        tracing::debug!(host = name, ms = started.elapsed().as_millis() as u64, "ssh master up");
        Ok(HostSession::over(name, Box::new(SshTransport { name: name.to_string(), session, keep_as, handoff_dir: None })))
    }

    /// A session for host `name` over any transport (tests: a scripted host).
    pub fn over(name: &str, transport: Box<dyn Transport>) -> HostSession {
        HostSession { name: name.to_string(), transport, ahead: Default::default() }
    }

    /// Hand over answers asked ahead: the next run of each of those commands
    /// (same script, user and stdin) within `FRESH` reads its answer.
    pub fn answer_ahead(&self, answers: Vec<(Ask, RunOutput)>) {
        if let Ok(mut a) = self.ahead.lock() {
            *a = Some((std::time::Instant::now(), answers));
        }
    }

    /// Whether `ask` has a fresh answer waiting (its next run costs no round trip).
    pub fn has_answer_ahead(&self, ask: &Ask) -> bool {
        let Ok(guard) = self.ahead.lock() else { return false };
        guard.as_ref().is_some_and(|(at, answers)| at.elapsed() <= FRESH && answers.iter().any(|(a, _)| a.root == ask.root && a.script == ask.script && a.stdin == ask.stdin))
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
        self.run(As::Root, script, stdin).await
    }

    /// Run a shell script as root with `input` streamed to its stdin (large
    /// uploads: nothing is held in memory).
    pub async fn sudo_stream(&self, script: &str, mut input: impl tokio::io::AsyncRead + Unpin + Send) -> Result<RunOutput> {
        self.transport.run_streamed(script, &mut input).await
    }

    /// Run a shell script as the SSH user.
    pub async fn sh(&self, script: &str) -> Result<RunOutput> {
        if let Some(out) = self.answered(false, script, None) {
            return Ok(out);
        }
        self.run(As::User, script, None).await
    }

    async fn run(&self, who: As, script: &str, stdin: Option<&[u8]>) -> Result<RunOutput> {
        let started = std::time::Instant::now();
        let out = self.transport.run(who, script, stdin).await;
        // RUST_LOG=rigger::hosts::remote=debug: every live round trip with its host
        // and duration (where a run's time goes).
        tracing::debug!(host = self.name.as_str(), ms = started.elapsed().as_millis() as u64, code = out.as_ref().map(|o| o.code).unwrap_or(-1), command = trace_label(script), "round trip");
        out
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
        self.transport.close().await
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
