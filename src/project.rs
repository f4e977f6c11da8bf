//! One plan file and everything that belongs to it: its state, its known_hosts,
//! its SSH key pair, and the provider that builds it.

use crate::plan::model::{Plan, ProviderConfig};
use crate::cloud::providers::{self, Provider};
use crate::state;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone)]
pub struct Project {
    pub plan: Plan,
    pub state_path: PathBuf,
}

impl Project {
    /// Load and validate the plan (errors are the plan's own, with positions).
    pub fn load(plan_path: &Path, state_override: Option<&Path>) -> Result<Project> {
        let plan = crate::plan::load(plan_path)?;
        let state_path = match state_override {
            Some(p) => p.to_path_buf(),
            None => state::default_path(&plan.dir, &plan.project),
        };
        Ok(Project { plan, state_path })
    }

    /// This project with what only the cloud knows filled into its plan: the
    /// public addresses the machines got. Used for the host-side steps.
    pub fn with_cloud_addresses(&self, state: &state::State) -> Project {
        let mut p = self.clone();
        p.plan.public_addresses = state
            .machines()
            .filter_map(|m| Some((m.address.name.clone(), m.output_str("public_ip").filter(|a| !a.is_empty())?.to_string())))
            .collect();
        p
    }

    pub fn rigger_dir(&self) -> PathBuf {
        self.state_path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".rigger"))
    }

    /// Host keys of the project's machines, as rigger recorded them when it
    /// built them: ssh checks hosts against this file, strictly.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.rigger_dir().join(format!("{}.known_hosts", self.plan.project))
    }

    pub fn provider(&self) -> Result<Arc<dyn Provider>> {
        providers::for_plan(&self.plan, &self.rigger_dir())
    }

    /// Make sure the SSH key pair exists. The local provider may generate a
    /// project key pair; for a cloud, a missing key is the user's to fix.
    pub fn ensure_ssh_key(&self) -> Result<()> {
        let ssh = &self.plan.ssh;
        if ssh.private_key_file.exists() && ssh.public_key_file.exists() {
            return Ok(());
        }
        if !matches!(self.plan.provider, ProviderConfig::Local(_)) || ssh.private_key_file.exists() {
            bail!(
                "{}: the SSH key {} does not exist — create it with `ssh-keygen -t ed25519 -f {}` or fix ssh.private_key_file / ssh.public_key_file",
                self.plan.file.display(),
                if ssh.private_key_file.exists() { ssh.public_key_file.display() } else { ssh.private_key_file.display() },
                ssh.private_key_file.display()
            );
        }
        if let Some(dir) = ssh.private_key_file.parent() {
            crate::state::private_dir(dir)?;
        }
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("rigger-{}", self.plan.project))
            .arg("-f")
            .arg(&ssh.private_key_file)
            .output()
            .context("cannot run ssh-keygen — install openssh-client")?;
        if !out.status.success() {
            bail!("ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        if ssh.public_key_file != with_pub(&ssh.private_key_file) {
            std::fs::copy(with_pub(&ssh.private_key_file), &ssh.public_key_file)?;
        }
        Ok(())
    }

    /// The local provider needs a few host tools; on a Debian host where rigger
    /// runs as root, install the missing ones (the README's one command does it all).
    pub fn ensure_host_tools(&self, events: &rigger_events::Events) -> Result<()> {
        if !matches!(self.plan.provider, ProviderConfig::Local(_)) {
            return Ok(());
        }
        raise_inotify_limit(events);
        let wanted = [("systemd-nspawn", "systemd-container"), ("mmdebstrap", "mmdebstrap"), ("dpkg-architecture", "dpkg-dev"), ("ssh-keygen", "openssh-client"), ("ip", "iproute2")];
        let missing: Vec<&str> = wanted.iter().filter(|(cmd, _)| !on_path(cmd)).map(|(_, pkg)| *pkg).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !nix::unistd::geteuid().is_root() || !on_path("apt-get") {
            bail!("the local provider needs {} — install them (apt-get install {}) and run rigger as root", missing.join(", "), missing.join(" "));
        }
        let started = std::time::Instant::now();
        events.started("host", &format!("installing {}", missing.join(" ")));
        for args in [vec!["update"], [vec!["install", "-y"], missing.clone()].concat()] {
            let out = std::process::Command::new("apt-get").args(&args).env("DEBIAN_FRONTEND", "noninteractive").output().context("cannot run apt-get")?;
            if !out.status.success() {
                bail!("apt-get {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        events.finished("host", "host tools installed", started);
        Ok(())
    }

    pub fn public_key(&self) -> Result<String> {
        let text = std::fs::read_to_string(&self.plan.ssh.public_key_file)
            .with_context(|| format!("cannot read ssh.public_key_file {}", self.plan.ssh.public_key_file.display()))?;
        Ok(text.trim().to_string())
    }
}

/// Every booted systemd in a machine holds several inotify instances, all
/// counted against root's limit (128 by default): a dozen machines exhaust it
/// and the next one dies at boot with "Too many open files". Raise it (as LXD
/// and Incus advise for hosts of many containers).
fn raise_inotify_limit(events: &rigger_events::Events) {
    const PATH: &str = "/proc/sys/fs/inotify/max_user_instances";
    const WANTED: u64 = 1024;
    let now = std::fs::read_to_string(PATH).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(WANTED);
    if now < WANTED && std::fs::write(PATH, WANTED.to_string()).is_ok() {
        events.note("host", format!("raised fs.inotify.max_user_instances from {now} to {WANTED} (one systemd per machine)"));
    }
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

fn with_pub(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The local provider's project key pair is made in a folder closed to
    /// others from the start (it is where the state goes too).
    #[test]
    fn a_generated_key_pairs_folder_is_closed_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let text = "version: 1\nproject: keydir\nprovider: { kind: local }\nnetwork: { name: main, subnets: [ { name: app, cidr: 10.9.7.0/24 } ] }\nhosts:\n  - { name: cache, roles: [redis], ip: 10.9.7.31 }\n";
        let plan = crate::plan::load_str(&dir.path().join("plan.yaml"), text).unwrap_or_else(|e| panic!("{e:#}"));
        let project = Project { state_path: dir.path().join(".rigger/keydir.state.json"), plan };
        project.ensure_ssh_key().unwrap();
        let folder = project.plan.ssh.private_key_file.parent().unwrap().to_path_buf();
        assert_eq!(std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777, 0o700, "{}", folder.display());
    }
}
