//! What a host should look like (files, services, packages), what differs
//! from its facts, and the operations that close the gap: only what changed.

use super::facts::HostFacts;
use crate::hosts::remote::session::{sh_quote, HostSession};
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

#[derive(Clone)]
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

/// A file's content often holds secrets: `{:?}` gives its size only.
impl std::fmt::Debug for ManagedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedFile")
            .field("role", &self.role)
            .field("path", &self.path)
            .field("content", &format!("({} bytes)", self.content.len()))
            .field("mode", &format!("{:04o}", self.mode))
            .field("owner", &self.owner)
            .field("group", &self.group)
            .field("validate", &self.validate)
            .field("notify", &self.notify)
            .finish()
    }
}

impl ManagedFile {
    /// A file others may not read holds, or may hold, secrets: the lines of
    /// its live copy are never shown (ui::hosts). They may hold secrets the
    /// state no longer knows (a TLS key being replaced, a password being
    /// rotated, a state made anew), so masking the state's values cannot
    /// cover them.
    pub fn content_is_private(&self) -> bool {
        self.mode & 0o004 == 0
    }
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
    upload_all(session, &[f]).await
}

/// Put several files in place in ONE round trip, in order, each exactly as
/// `upload` does it (a busy host pays seconds per extra `sudo`). The contents
/// follow each other on stdin; `dd` reads exactly each one's length. The
/// first file that fails stops the rest; the files before it stay written,
/// as they would one upload at a time.
pub async fn upload_all(session: &HostSession, files: &[&ManagedFile]) -> Result<()> {
    // Batches of bounded size: the contents pass through one remote stdin.
    const BATCH_BYTES: usize = 4 << 20;
    let mut start = 0;
    while start < files.len() {
        let mut end = start + 1;
        let mut bytes = files[start].content.len();
        while end < files.len() && bytes + files[end].content.len() <= BATCH_BYTES {
            bytes += files[end].content.len();
            end += 1;
        }
        upload_batch(session, &files[start..end]).await?;
        start = end;
    }
    Ok(())
}

/// The script writing `files` from stdin; a failing file prints `F <index>` on
/// stdout and exits (42 when its checker rejected it).
fn upload_script(files: &[&ManagedFile]) -> String {
    let mut script = String::from("set -e\n");
    for (i, f) in files.iter().enumerate() {
        let path = sh_quote(&f.path);
        let check = match &f.validate {
            Some(v) => format!("if ! out=$({} 2>&1); then echo \"$out\" >&2; rm -f \"$t\"; exit 42; fi\n", v.command.replace("{}", "\"$t\"")),
            None => String::new(),
        };
        script.push_str(&format!(
            "echo \"F {i}\"\nmkdir -p \"$(dirname {path})\"\nt=$(mktemp {path}.rigger-XXXXXX)\n\
             dd of=\"$t\" bs=64K count={len} iflag=count_bytes,fullblock status=none\n\
             chown {}:{} \"$t\"\nchmod {:o} \"$t\"\n{check}mv -f \"$t\" {path}\n",
            sh_quote(&f.owner),
            sh_quote(&f.group),
            f.mode,
            len = f.content.len(),
        ));
    }
    script.push_str("echo \"F done\"\n");
    script
}

async fn upload_batch(session: &HostSession, files: &[&ManagedFile]) -> Result<()> {
    let input: Vec<u8> = files.iter().flat_map(|f| f.content.as_bytes().iter().copied()).collect();
    let out = session.sudo(&upload_script(files), Some(&input)).await?;
    // The last `F` line names the file the script was at when it stopped.
    let at = out.stdout.lines().filter_map(|l| l.strip_prefix("F ")).next_back().and_then(|i| i.trim().parse::<usize>().ok());
    let f = at.and_then(|i| files.get(i)).copied().unwrap_or(files[0]);
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

    #[test]
    fn debug_output_gives_a_files_size_not_its_content() {
        let f = crate::hosts::roles::file("redis", "/etc/redis/redis.conf", "requirepass hunter2-secret\n".into(), 0o640, "redis", "redis", None, &[]);
        let shown = format!("{f:?}");
        assert!(shown.contains("(27 bytes)") && shown.contains("0640") && !shown.contains("hunter2"), "{shown}");
    }

    /// The batch script as the host's sh runs it (here the local sh): each
    /// content lands in its own file, byte for byte, the empty one too; a
    /// rejected file stops the batch with its index, the files before it written.
    #[test]
    fn a_batch_writes_each_file_exactly_and_stops_at_a_rejected_one() {
        let dir = tempfile::tempdir().unwrap();
        let id = |flag: &str| String::from_utf8(std::process::Command::new("id").arg(flag).output().unwrap().stdout).unwrap().trim().to_string();
        let (owner, group) = (id("-un"), id("-gn"));
        let file = |name: &str, content: &str, validate: Option<&str>| ManagedFile {
            role: "t",
            path: dir.path().join(name).display().to_string(),
            content: content.into(),
            mode: 0o640,
            owner: owner.clone(),
            group: group.clone(),
            validate: validate.map(|c| Checker { name: "check".into(), command: c.into() }),
            notify: vec![],
        };
        let files = [
            file("sub/a.conf", "first\nline two, no newline at the end", Some("grep -q first {}")),
            file("empty", "", None),
            file("c.conf", &"x".repeat(200_000), None),
            file("rejected.conf", "bad", Some("grep -q good {}")),
            file("never.conf", "not reached", None),
        ];
        let refs: Vec<&ManagedFile> = files.iter().collect();
        let input: Vec<u8> = files.iter().flat_map(|f| f.content.as_bytes().to_vec()).collect();
        let mut child = std::process::Command::new("sh")
            .args(["-c", &upload_script(&refs)])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(42));
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().last(), Some("F 3"));
        for f in &files[..3] {
            assert_eq!(std::fs::read_to_string(&f.path).unwrap(), f.content, "{}", f.path);
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777, 0o640);
        }
        assert!(!std::path::Path::new(&files[3].path).exists() && !std::path::Path::new(&files[4].path).exists());
        // No candidate left behind.
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".rigger-")));
    }

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
