//! What a host should look like (files, services, packages), what differs
//! from its facts, and the operations that close the gap: only what changed.

use super::facts::HostFacts;
use crate::remote::session::{sh_quote, HostSession};
use anyhow::{bail, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    Restart,
    Reload,
    /// The role decides (e.g. Patroni restarts roll across the cluster).
    Custom,
}

#[derive(Debug, Clone)]
pub struct ManagedFile {
    pub role: &'static str,
    pub path: String,
    pub content: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// The daemon's own checker, run on the host before the live file is replaced.
    pub validate: Option<Checker>,
    /// Services whose behaviour depends on this file.
    pub notify: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Checker {
    /// What the user knows it as, e.g. `haproxy -c`.
    pub name: String,
    /// The shell command, `{}` standing for the candidate file.
    pub command: String,
}

#[derive(Debug, Clone)]
pub struct ManagedService {
    pub role: &'static str,
    pub name: String,
    pub on_change: OnChange,
}

#[derive(Debug, Clone, Default)]
pub struct HostDesired {
    pub host: String,
    pub packages: Vec<String>,
    pub files: Vec<ManagedFile>,
    pub services: Vec<ManagedService>,
    /// Services that must be stopped and disabled (e.g. the distro's own PostgreSQL).
    pub stop_disable: Vec<StoppedService>,
}

/// A service a role wants stopped and disabled, and the role that wants it
/// (whose staging stops it).
#[derive(Debug, Clone)]
pub struct StoppedService {
    pub role: &'static str,
    pub name: String,
}

impl HostDesired {
    pub fn query(&self, probes: Vec<(String, String)>) -> super::facts::FactQuery {
        let mut services: Vec<String> = self.services.iter().map(|s| s.name.clone()).collect();
        services.extend(self.stop_disable.iter().map(|s| s.name.clone()));
        super::facts::FactQuery { files: self.files.iter().map(|f| f.path.clone()).collect(), services, packages: self.packages.clone(), probes, asks: vec![] }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[derive(Debug, Clone)]
pub struct FileChange {
    pub file: ManagedFile,
    /// Why: "new", "content", "mode", "owner".
    pub reasons: Vec<&'static str>,
    pub content_changed: bool,
}

/// Everything that must happen on one host, derived from its facts.
#[derive(Debug, Clone, Default)]
pub struct HostChanges {
    pub host: String,
    pub install: Vec<String>,
    pub files: Vec<FileChange>,
    /// Services to start because they are not running.
    pub start: Vec<String>,
    /// Services to enable at boot.
    pub enable: Vec<String>,
    /// Services to restart or reload because their files changed (or a
    /// restart was left pending by an interrupted run).
    pub restart: Vec<String>,
    pub reload: Vec<String>,
    /// Services with custom handling whose files changed.
    pub custom: Vec<String>,
    pub stop_disable: Vec<String>,
    /// Services whose unit files systemd has not re-read (a run interrupted
    /// after an upload, a hand edit): reloaded with the next staging, not a
    /// change of their own.
    pub stale_units: Vec<String>,
}

impl HostChanges {
    pub fn is_empty(&self) -> bool {
        self.install.is_empty()
            && self.files.is_empty()
            && self.start.is_empty()
            && self.enable.is_empty()
            && self.restart.is_empty()
            && self.reload.is_empty()
            && self.custom.is_empty()
            && self.stop_disable.is_empty()
    }

    /// systemd must re-read its unit files before a service is touched: a
    /// file under /etc/systemd/ changed, or a unit is stale already.
    pub fn needs_daemon_reload(&self) -> bool {
        !self.stale_units.is_empty() || self.files.iter().any(|f| f.content_changed && f.file.path.starts_with("/etc/systemd/"))
    }

    pub fn for_role(&self, desired: &HostDesired, role: &str) -> HostChanges {
        let services: BTreeSet<&str> = desired.services.iter().filter(|s| s.role == role).map(|s| s.name.as_str()).collect();
        let keep = |v: &Vec<String>| v.iter().filter(|s| services.contains(s.as_str())).cloned().collect::<Vec<_>>();
        let stopped: BTreeSet<&str> = desired.stop_disable.iter().filter(|s| s.role == role).map(|s| s.name.as_str()).collect();
        HostChanges {
            host: self.host.clone(),
            install: if role_first(desired, role) { self.install.clone() } else { vec![] },
            files: self.files.iter().filter(|f| f.file.role == role).cloned().collect(),
            start: keep(&self.start),
            enable: keep(&self.enable),
            restart: keep(&self.restart),
            reload: keep(&self.reload),
            custom: keep(&self.custom),
            stop_disable: self.stop_disable.iter().filter(|s| stopped.contains(s.as_str())).cloned().collect(),
            stale_units: keep(&self.stale_units),
        }
    }
}

/// Packages are installed with the first role of the host.
fn role_first(desired: &HostDesired, role: &str) -> bool {
    desired.services.first().map(|s| s.role) == Some(role) || desired.files.first().map(|f| f.role) == Some(role)
}

/// Compare the desired host with its facts. `pending` are services an
/// interrupted run changed files for but did not restart yet.
pub fn compute(desired: &HostDesired, facts: &HostFacts, pending: &BTreeSet<String>) -> HostChanges {
    let mut ch = HostChanges { host: desired.host.clone(), install: facts.missing_packages.clone(), ..Default::default() };
    let mut touched: BTreeSet<String> = pending.clone();
    for f in &desired.files {
        let mut reasons = Vec::new();
        let mut content_changed = false;
        match facts.files.get(&f.path).cloned().flatten() {
            None => {
                reasons.push("new");
                content_changed = true;
            }
            Some(have) => {
                if have.sha256 != sha256_hex(f.content.as_bytes()) {
                    reasons.push("content");
                    content_changed = true;
                }
                if have.mode != f.mode {
                    reasons.push("mode");
                }
                if have.owner != f.owner || have.group != f.group {
                    reasons.push("owner");
                }
            }
        }
        if !reasons.is_empty() {
            if content_changed {
                touched.extend(f.notify.iter().cloned());
            }
            ch.files.push(FileChange { file: f.clone(), reasons, content_changed });
        }
    }
    for s in &desired.services {
        let fact = facts.services.get(&s.name).cloned().unwrap_or_default();
        if fact.stale {
            ch.stale_units.push(s.name.clone());
        }
        if fact.enabled != "enabled" {
            ch.enable.push(s.name.clone());
        }
        if !fact.running() {
            ch.start.push(s.name.clone());
        } else if touched.contains(&s.name) {
            match s.on_change {
                OnChange::Restart => ch.restart.push(s.name.clone()),
                OnChange::Reload => ch.reload.push(s.name.clone()),
                OnChange::Custom => ch.custom.push(s.name.clone()),
            }
        }
    }
    for s in &desired.stop_disable {
        let fact = facts.services.get(&s.name).cloned().unwrap_or_default();
        if fact.running() || fact.enabled == "enabled" {
            ch.stop_disable.push(s.name.clone());
        }
    }
    ch
}

/// Put one file in place: candidate next to the live one, owner and mode set,
/// the daemon's checker run on it, then renamed over. A failing check leaves
/// the live file (and the running service) untouched.
pub async fn upload(session: &HostSession, f: &ManagedFile) -> Result<()> {
    let path = sh_quote(&f.path);
    let check = match &f.validate {
        Some(v) => format!("if ! out=$({} 2>&1); then echo \"$out\" >&2; rm -f \"$t\"; exit 42; fi\n", v.command.replace("{}", "\"$t\"")),
        None => String::new(),
    };
    let script = format!(
        "set -e\nmkdir -p \"$(dirname {path})\"\nt=$(mktemp {path}.rigger-XXXXXX)\ncat > \"$t\"\nchown {}:{} \"$t\"\nchmod {:o} \"$t\"\n{check}mv -f \"$t\" {path}\n",
        sh_quote(&f.owner),
        sh_quote(&f.group),
        f.mode
    );
    let out = session.sudo(&script, Some(f.content.as_bytes())).await?;
    match out.code {
        0 => Ok(()),
        42 => bail!(
            "{}: {} was rejected by `{}` — the running service keeps its old config:\n{}",
            session.name,
            f.path,
            f.validate.as_ref().map(|v| v.name.as_str()).unwrap_or_default(),
            indent(out.stderr.trim())
        ),
        code => bail!("{}: writing {} failed (exit {code}): {}", session.name, f.path, out.stderr.trim()),
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::super::facts::{FileFact, ServiceFact};
    use super::*;

    fn desired() -> HostDesired {
        HostDesired {
            host: "lb-1".into(),
            packages: vec![],
            files: vec![ManagedFile {
                role: "haproxy",
                path: "/etc/haproxy/haproxy.cfg".into(),
                content: "x".into(),
                mode: 0o640,
                owner: "root".into(),
                group: "haproxy".into(),
                validate: Some(Checker { name: "haproxy -c".into(), command: "haproxy -c -f {}".into() }),
                notify: vec!["haproxy".into()],
            }],
            services: vec![ManagedService { role: "haproxy", name: "haproxy".into(), on_change: OnChange::Reload }],
            stop_disable: vec![],
        }
    }

    fn facts(sha: &str, active: &str) -> HostFacts {
        let mut f = HostFacts::default();
        f.files.insert("/etc/haproxy/haproxy.cfg".into(), Some(FileFact { sha256: sha.into(), mode: 0o640, owner: "root".into(), group: "haproxy".into() }));
        f.services.insert("haproxy".into(), ServiceFact { active: active.into(), enabled: "enabled".into(), stale: false });
        f
    }

    #[test]
    fn nothing_changes_when_facts_match() {
        let ch = compute(&desired(), &facts(&sha256_hex(b"x"), "active"), &BTreeSet::new());
        assert!(ch.is_empty(), "{ch:?}");
    }

    #[test]
    fn changed_content_reloads_its_service_only() {
        let ch = compute(&desired(), &facts("other", "active"), &BTreeSet::new());
        assert_eq!(ch.files.len(), 1);
        assert_eq!(ch.reload, vec!["haproxy"]);
        assert!(ch.restart.is_empty() && ch.start.is_empty());
    }

    #[test]
    fn a_stopped_service_is_started_not_reloaded() {
        let ch = compute(&desired(), &facts("other", "inactive"), &BTreeSet::new());
        assert_eq!(ch.start, vec!["haproxy"]);
        assert!(ch.reload.is_empty());
    }

    #[test]
    fn a_pending_restart_survives_an_interrupted_run() {
        let pending: BTreeSet<String> = ["haproxy".to_string()].into();
        let ch = compute(&desired(), &facts(&sha256_hex(b"x"), "active"), &pending);
        assert_eq!(ch.reload, vec!["haproxy"]);
    }

    #[test]
    fn systemd_rereads_units_when_one_changed_or_is_stale() {
        let mut d = desired();
        let unit = ManagedFile { path: "/etc/systemd/system/haproxy.service.d/x.conf".into(), content: "[Service]\n".into(), mode: 0o644, group: "root".into(), validate: None, ..d.files[0].clone() };
        d.files.push(unit);
        let mut f = facts(&sha256_hex(b"x"), "active");
        assert!(!compute(&desired(), &f, &BTreeSet::new()).needs_daemon_reload(), "no unit changed");
        let ch = compute(&d, &f, &BTreeSet::new());
        assert!(ch.needs_daemon_reload(), "a new drop-in: {ch:?}");
        assert!(!compute(&desired(), &facts("other", "active"), &BTreeSet::new()).needs_daemon_reload(), "a config file is not a unit");

        // A unit systemd has not re-read (a run interrupted after the upload) is reloaded with the
        // next staging of its role, and alone is no change to show.
        f.services.get_mut("haproxy").unwrap().stale = true;
        let ch = compute(&desired(), &f, &BTreeSet::new());
        assert!(ch.needs_daemon_reload() && ch.is_empty(), "{ch:?}");
        assert!(ch.for_role(&desired(), "haproxy").needs_daemon_reload());
        assert!(!ch.for_role(&desired(), "redis").needs_daemon_reload());
    }

    #[test]
    fn a_service_to_stop_goes_to_the_role_that_wants_it_stopped() {
        let mut d = desired();
        d.stop_disable.push(StoppedService { role: "haproxy", name: "nginx".into() });
        let mut f = facts(&sha256_hex(b"x"), "active");
        f.services.insert("nginx".into(), ServiceFact { active: "active".into(), enabled: "enabled".into(), stale: false });
        let ch = compute(&d, &f, &BTreeSet::new());
        assert_eq!(ch.stop_disable, vec!["nginx"]);
        assert_eq!(ch.for_role(&d, "haproxy").stop_disable, vec!["nginx"], "the role that asked stops it");
        assert!(ch.for_role(&d, "redis").stop_disable.is_empty(), "no other role does");
    }
}
