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
        // ConnectTimeout bounds the TCP connect and the banner; a host that
        // stalls later in the handshake or the login would hold the probe
        // forever: it gets what is left of the limit (at least 5 s), then is killed.
        let left = limit.saturating_sub(started.elapsed()).max(Duration::from_secs(5));
        let mut probe = ssh_command_with(config, name, "true", &options);
        probe.kill_on_drop(true);
        let out = match tokio::time::timeout(left, probe.output()).await {
            Ok(out) => out?,
            Err(_) => {
                last_error = format!("ssh did not finish logging in within {}s: the host takes connections but does not complete the SSH handshake or the login", left.as_secs());
                continue;
            }
        };
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
    verbose.args(["-o", "LogLevel=VERBOSE"]).kill_on_drop(true);
    if let Ok(Ok(out)) = tokio::time::timeout(Duration::from_secs(10), verbose.output()).await {
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        last_error.push_str(&format!("\n  ssh -v says:\n    {}", lines[lines.len().saturating_sub(6)..].join("\n    ")));
    }
    events.failed(&subject, "ssh", &last_error);
    bail!("{name}: no SSH after {}s — last error: {last_error}", limit.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that takes the connection and sends its banner, then never
    /// goes on with the handshake (ssh's ConnectTimeout is over by then):
    /// the wait still ends at its limit and says what it saw.
    #[tokio::test]
    async fn a_host_that_stalls_in_the_handshake_ends_the_wait_at_its_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((mut c, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = c.write_all(b"SSH-2.0-stalls\r\n").await;
                conns.push(c);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ssh_config");
        std::fs::write(&config, format!("Host stall\n  HostName 127.0.0.1\n  Port {port}\n  User nobody\n  StrictHostKeyChecking yes\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n")).unwrap();
        let started = Instant::now();
        let err = wait_for_ssh(&config, "stall", Duration::from_secs(3), &Events::silent()).await.unwrap_err().to_string();
        held.abort();
        assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
        assert!(err.starts_with("stall: no SSH after 3s") && err.contains("does not complete the SSH handshake"), "{err}");
    }
}
