//! Reaching machines over SSH: always through the project's ssh_config, which
//! pins the project known_hosts with strict host-key checking and routes
//! through the bastion when the plan names one.

pub mod access;
pub mod ahead;
pub mod persist;
pub mod session;
#[cfg(test)]
pub mod scripted;
pub mod transport;

use rigger_events::Events;
use crate::project::Project;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

#[derive(Debug, Clone)]
pub struct SshTarget {
    pub name: String,
    /// The address to dial (through the jump host when there is one).
    pub host: String,
    /// user@address of the jump host, when there is one.
    pub jump: Option<String>,
}

/// Every machine of the state, and how to reach it.
pub fn targets(project: &Project, state: &crate::state::State) -> Vec<SshTarget> {
    let plan = &project.plan;
    let host_of = |name: &str| state.machines().find(|m| m.address.name == name).and_then(|m| m.output_str("ssh_host").map(str::to_string));
    let jump = plan.ssh.bastion.as_ref().and_then(|b| host_of(b)).map(|h| format!("{}@{h}", plan.ssh.user));
    state
        .machines()
        .filter_map(|m| {
            let direct = m.output_str("ssh_host")?.to_string();
            let is_bastion = plan.ssh.bastion.as_deref() == Some(m.address.name.as_str());
            // The bastion is dialled directly; the others by their private address through it.
            let host = match (&jump, is_bastion) {
                (Some(_), false) => m.output_str("private_ip").unwrap_or(&direct).to_string(),
                _ => direct,
            };
            Some(SshTarget { name: m.address.name.clone(), host, jump: if is_bastion { None } else { jump.clone() } })
        })
        .collect()
}

/// `ssh -F <project ssh_config> <name> <command>`, never prompting.
pub fn ssh_command(config: &Path, name: &str, remote: &str) -> Command {
    ssh_command_with(config, name, remote, &[])
}

/// `ssh_command` with more `-o` options.
fn ssh_command_with(config: &Path, name: &str, remote: &str, options: &[String]) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-F").arg(config).args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]);
    for o in options {
        c.args(["-o", o]);
    }
    c.arg(name).arg(remote);
    c.stdin(std::process::Stdio::null());
    c
}

pub fn ssh_config_path(project: &Project) -> PathBuf {
    project.rigger_dir().join(format!("{}.ssh_config", project.plan.project))
}

/// Wait until `ssh <name> true` works, with strict host keys; give up after `limit`.
pub async fn wait_for_ssh(config: &Path, name: &str, limit: Duration, events: &Events) -> Result<()> {
    let subject = format!("ssh {name}");
    let started = Instant::now();
    events.started(&subject, "waiting for SSH");
    let mut last_error = String::new();
    let mut pause = Duration::from_millis(200);
    // The probe that gets in stays up as a master for the config phase
    // (persist::take_handoff): one handshake per host instead of two. Its
    // socket sits in a private (0700) folder of its own.
    use std::os::unix::fs::PermissionsExt;
    let handoff = tempfile::Builder::new().prefix("rigger-ssh-").permissions(std::fs::Permissions::from_mode(0o700)).tempdir()?;
    let ctl = handoff.path().join("m");
    while started.elapsed() < limit {
        // ControlPersist=yes: the master lives until the config phase closes
        // it (or persist::drop_handoffs at the end of the apply).
        // (Not with RIGGER_SSH_PERSIST: its masters idle out on their own.)
        let handing_off = persist::idle_seconds().is_none();
        let options = if handing_off { vec!["ControlMaster=yes".to_string(), "ControlPersist=yes".to_string(), format!("ControlPath={}", ctl.display())] } else { vec![] };
        let out = ssh_command_with(config, name, "true", &options).output().await?;
        if out.status.success() {
            if handing_off && ctl.exists() {
                persist::note_handoff(&persist::handoff_record(config, name), &ctl);
                let _ = handoff.keep();
            }
            events.finished(&subject, "SSH ready", started);
            return Ok(());
        }
        last_error = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if last_error.is_empty() {
            // ssh said nothing: at least say how it ended.
            last_error = format!("ssh exited with {} and printed nothing", out.status);
        }
        if last_error.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
            events.failed(&subject, "ssh", &last_error);
            bail!("{name}: the host key does not match the one rigger recorded when it built the machine — refusing to connect ({last_error})");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    // ssh's quiet mode hides why a session closes: ask once more, verbosely.
    let mut verbose = ssh_command(config, name, "true");
    verbose.args(["-o", "LogLevel=VERBOSE"]);
    if let Ok(out) = verbose.output().await {
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        last_error.push_str(&format!("\n  ssh -v says:\n    {}", lines[lines.len().saturating_sub(6)..].join("\n    ")));
    }
    events.failed(&subject, "ssh", &last_error);
    bail!("{name}: no SSH after {}s — last error: {last_error}", limit.as_secs())
}
