//! Shared by the integration tests: run the rigger binary, and a small local
//! plan in a temp folder whose guard destroys everything it built.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const RIGGER: &str = env!("CARGO_BIN_EXE_rigger");

pub trait OutputText {
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
    fn text(&self) -> String;
    fn code(&self) -> i32;
}

impl OutputText for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    fn text(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout_text(), self.stderr_text())
    }
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

pub fn rigger(args: &[&str]) -> Output {
    Command::new(RIGGER).args(args).env("NO_COLOR", "1").output().expect("run rigger")
}

pub fn rigger_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(RIGGER).args(args).current_dir(dir).env("NO_COLOR", "1").output().expect("run rigger")
}

/// Tests that boot machines need root and systemd-nspawn: fail loudly, never skip quietly.
pub fn require_machines() {
    assert!(nix::unistd::geteuid().is_root(), "this test boots systemd-nspawn machines and must run as root (scripts/test does)");
    assert!(Command::new("systemd-nspawn").arg("--version").output().is_ok(), "systemd-nspawn missing — scripts/test installs systemd-container");
}

fn random_u32() -> u32 {
    use rand::Rng;
    rand::thread_rng().gen()
}

/// A subnet no route on this host uses yet.
pub fn free_subnet() -> (String, String) {
    let routes = String::from_utf8_lossy(&Command::new("ip").args(["-4", "route"]).output().expect("ip route").stdout).into_owned();
    loop {
        let r = random_u32();
        let net = format!("10.{}.{}", 200 + (r % 50), (r >> 8) % 250 + 1);
        if !routes.contains(&format!("{net}.")) {
            return (format!("{net}.0/24"), net);
        }
    }
}

/// A small local plan: `n` machines `m-1..m-n` in one subnet, in a temp folder.
pub struct LocalPlan {
    pub project: String,
    pub net_prefix: String,
    dir: tempfile::TempDir,
    path: String,
    n: usize,
}

impl LocalPlan {
    pub fn new(prefix: &str, n: usize) -> LocalPlan {
        require_machines();
        let project = format!("{prefix}-{:04x}", random_u32() & 0xffff);
        let (cidr, net) = free_subnet();
        let dir = tempfile::Builder::new().prefix(&format!("rigger-{project}-")).tempdir().expect("temp dir");
        let path = dir.path().join("plan.yaml");
        let text = format!(
            "version: 1\nproject: {project}\nprovider: {{ kind: local }}\n\
             ssh: {{ user: rigger, private_key_file: ./id_ed25519 }}\n\
             network:\n  name: main\n  subnets:\n    - {{ name: app, cidr: {cidr} }}\n\
             firewall:\n  - name: ssh\n    rules:\n      - {{ direction: ingress, protocol: tcp, ports: 22, from: {cidr} }}\n\
             defaults: {{ cores: 1, memory: 512MiB, disk: 2GiB }}\n\
             hosts:\n  - {{ name: m, count: {n}, ip: {net}.11, firewall: [ssh] }}\n"
        );
        std::fs::write(&path, text).expect("write plan");
        LocalPlan { project, net_prefix: net, path: path.display().to_string(), dir, n }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir().join(".rigger").join(format!("{}.state.json", self.project))
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir().join(".rigger").join(format!("{}.known_hosts", self.project))
    }

    pub fn hosts(&self) -> Vec<(String, String)> {
        (1..=self.n).map(|i| (format!("m-{i}"), format!("{}.{}", self.net_prefix, 10 + i))).collect()
    }

    pub fn ssh_with_known_hosts(&self, ip: &str, known_hosts: &Path, cmd: &str) -> Output {
        Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg("-i")
            .arg(self.dir().join("id_ed25519"))
            .arg(format!("rigger@{ip}"))
            .arg(cmd)
            .output()
            .expect("run ssh")
    }

    /// Run a command on a machine with strict host keys; panics with ssh's words on failure.
    pub fn ssh(&self, ip: &str, cmd: &str) -> String {
        let out = self.ssh_with_known_hosts(ip, &self.known_hosts(), cmd);
        assert!(out.status.success(), "ssh {ip}: {}", out.stderr_text());
        out.stdout_text()
    }

    /// No machine, namespace, address, overlay or folder of this project is left.
    pub fn assert_nothing_left(&self) {
        let leftovers = leftovers(&self.project, &self.net_prefix);
        assert!(leftovers.is_empty(), "left behind after destroy: {leftovers:?}");
    }
}

/// What of a project still exists on this host.
pub fn leftovers(project: &str, net_prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let run = |args: &[&str]| String::from_utf8_lossy(&Command::new(args[0]).args(&args[1..]).output().map(|o| o.stdout).unwrap_or_default()).into_owned();
    for line in run(&["ip", "netns", "list"]).lines() {
        if line.contains(project) {
            found.push(format!("netns {line}"));
        }
    }
    for line in run(&["ip", "-4", "-o", "addr"]).lines() {
        if line.contains(&format!(" {net_prefix}.")) {
            found.push(format!("address {line}"));
        }
    }
    for line in run(&["ps", "-eo", "pid,args"]).lines() {
        if line.contains("systemd-nspawn") && line.contains(project) {
            found.push(format!("process {line}"));
        }
    }
    for line in run(&["cat", "/proc/mounts"]).lines() {
        if line.contains(project) {
            found.push(format!("mount {line}"));
        }
    }
    let dir = Path::new("/var/lib/rigger/machines").join(project);
    if dir.exists() {
        found.push(format!("folder {}", dir.display()));
    }
    found
}

impl Drop for LocalPlan {
    fn drop(&mut self) {
        // Whatever happened in the test, tear down what it built.
        let _ = rigger(&["destroy", &self.path, "--auto-approve"]);
        let left = leftovers(&self.project, &self.net_prefix);
        if !left.is_empty() {
            eprintln!("cleanup after destroy still found: {left:?}");
        }
    }
}
