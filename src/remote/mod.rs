//! Reaching machines over SSH: always with the project's known_hosts and
//! strict host-key checking, through the bastion when the plan names one.

use crate::events::Events;
use crate::project::Project;
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::process::Command;

#[derive(Debug, Clone)]
pub struct SshTarget {
    pub name: String,
    pub host: String,
    pub user: String,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    /// (user@host) of the jump host, when there is one.
    pub jump: Option<String>,
}

impl SshTarget {
    /// Options every ssh rigger runs gets: no prompts, no trust-on-first-use.
    pub fn options(&self) -> Vec<String> {
        let mut o: Vec<String> = [
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
            "IdentitiesOnly=yes",
            "ConnectTimeout=5",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        o.push(format!("UserKnownHostsFile={}", self.known_hosts.display()));
        o.push(format!("IdentityFile={}", self.key.display()));
        if let Some(j) = &self.jump {
            // ProxyJump would not pass our options to the jump's own ssh; say them again.
            let inner: Vec<String> = self.options_without_jump().iter().map(|x| format!("-o {x}")).collect();
            o.push(format!("ProxyCommand=ssh {} -W %h:%p {j}", inner.join(" ")));
        }
        o
    }

    fn options_without_jump(&self) -> Vec<String> {
        SshTarget { jump: None, ..self.clone() }.options()
    }

    pub fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        for o in self.options() {
            c.arg("-o").arg(o);
        }
        c.arg(format!("{}@{}", self.user, self.host)).arg(remote);
        c.stdin(std::process::Stdio::null());
        c
    }
}

/// Every machine of the state as an SSH target.
pub fn targets(project: &Project, state: &crate::state::State) -> Vec<SshTarget> {
    let plan = &project.plan;
    let host_of = |name: &str| state.machines().find(|m| m.address.name == name).and_then(|m| m.output_str("ssh_host").map(str::to_string));
    let jump = plan.ssh.bastion.as_ref().and_then(|b| host_of(b)).map(|h| format!("{}@{h}", plan.ssh.user));
    state
        .machines()
        .filter_map(|m| {
            let host = m.output_str("ssh_host")?.to_string();
            let is_bastion = plan.ssh.bastion.as_deref() == Some(m.address.name.as_str());
            // The bastion is reached directly; other hosts by their private address through it.
            let host = match (&jump, is_bastion) {
                (Some(_), false) => m.output_str("private_ip").unwrap_or(&host).to_string(),
                _ => host,
            };
            Some(SshTarget {
                name: m.address.name.clone(),
                host,
                user: plan.ssh.user.clone(),
                key: plan.ssh.private_key_file.clone(),
                known_hosts: project.known_hosts_path(),
                jump: if is_bastion { None } else { jump.clone() },
            })
        })
        .collect()
}

/// Wait until `ssh target true` works, with strict host keys; give up after `limit`.
pub async fn wait_for_ssh(target: &SshTarget, limit: Duration, events: &Events) -> Result<()> {
    let subject = format!("ssh {}", target.name);
    let started = Instant::now();
    events.started(&subject, &format!("waiting for SSH on {}", target.host));
    let mut last_error = String::new();
    let mut pause = Duration::from_millis(200);
    while started.elapsed() < limit {
        let out = target.command("true").output().await?;
        if out.status.success() {
            events.finished(&subject, "SSH ready", started);
            return Ok(());
        }
        last_error = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if last_error.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") || last_error.contains("Host key verification failed") {
            events.failed(&subject, "ssh", &last_error);
            bail!("{}: the host key does not match the one rigger recorded when it built the machine — refusing to connect ({last_error})", target.name);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    events.failed(&subject, "ssh", &last_error);
    bail!("{}: no SSH on {} after {}s — last error: {last_error}", target.name, target.host, limit.as_secs())
}
