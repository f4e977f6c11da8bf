//! Shared by the integration tests: run the rigger binary, and a small local
//! plan in a temp folder whose guard destroys everything it built.
#![allow(dead_code)]

pub mod ysim;

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

/// Set (to anything but 0) by scripts/test: a machine test that cannot boot
/// machines fails instead of skipping.
pub const REQUIRE_MACHINES: &str = "RIGGER_REQUIRE_MACHINES";

/// Whether this test may boot systemd-nspawn machines; a machine test starts
/// with `if !common::machines() { return; }`. A plain `cargo test` as
/// non-root skips it with one line (written past the harness's capture, so
/// it shows). As root, or under scripts/test (RIGGER_REQUIRE_MACHINES), a
/// missing capability fails loudly — never a quiet skip.
pub fn machines() -> bool {
    let required = std::env::var_os(REQUIRE_MACHINES).is_some_and(|v| v != "0");
    if !nix::unistd::geteuid().is_root() && !required {
        use std::io::Write;
        let test = std::thread::current().name().unwrap_or("a machine test").to_string();
        let _ = writeln!(std::io::stderr(), "{test}: skipped: boots systemd-nspawn machines, needs root — run scripts/test as root");
        return false;
    }
    require_machines();
    true
}

/// Tests that boot machines need root and systemd-nspawn: fail loudly, never skip quietly.
pub fn require_machines() {
    assert!(nix::unistd::geteuid().is_root(), "this test boots systemd-nspawn machines and must run as root — scripts/test runs it so, with RIGGER_REQUIRE_MACHINES set: fail, never skip");
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

    /// A plan of the test's own: `text(project, cidr, net_prefix)` returns the YAML.
    pub fn from_text(prefix: &str, text: impl Fn(&str, &str, &str) -> String) -> LocalPlan {
        require_machines();
        let project = format!("{prefix}-{:04x}", random_u32() & 0xffff);
        let (cidr, net) = free_subnet();
        let dir = tempfile::Builder::new().prefix(&format!("rigger-{project}-")).tempdir().expect("temp dir");
        let path = dir.path().join("plan.yaml");
        std::fs::write(&path, text(&project, &cidr, &net)).expect("write plan");
        LocalPlan { project, net_prefix: net, path: path.display().to_string(), dir, n: 0 }
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

    /// Patroni's REST API of the member at `ip`, called the way rigger calls it
    /// (as root on the member: HTTPS verified with the project CA when TLS is
    /// on, `-K` rigger's credentials for unsafe endpoints when ARGS ask).
    pub fn patroni_rest(&self, ip: &str, args: &str, path: &str) -> String {
        let cmd = rigger::hosts::roles::rest_auth::local_curl(8008, args, path);
        self.ssh(ip, &format!("sudo -n sh -c {}", rigger::hosts::remote::session::sh_quote(&cmd)))
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
    for hierarchy in ["/sys/fs/cgroup/systemd/rigger", "/sys/fs/cgroup/unified/rigger", "/sys/fs/cgroup/rigger"] {
        for entry in std::fs::read_dir(hierarchy).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().contains(project) {
                found.push(format!("cgroup {}", entry.path().display()));
            }
        }
    }
    found
}

impl Drop for LocalPlan {
    fn drop(&mut self) {
        // Whatever happened in the test, tear down what it built. A test may
        // have left its plan invalid (a refused shape): then destroy with a
        // minimal plan of the same project beside it (same state; destroy
        // deletes what the provider lists for the project).
        let out = rigger(&["destroy", &self.path, "--auto-approve"]);
        if !out.status.success() {
            let fallback = self.dir().join("cleanup.yaml");
            let text = format!(
                "version: 1\nproject: {}\nprovider: {{ kind: local }}\nssh: {{ user: rigger, private_key_file: ./id_ed25519 }}\n\
                 network:\n  name: main\n  subnets:\n    - {{ name: app, cidr: {}.0/24 }}\nhosts:\n  - {{ name: cleanup, ip: {}.250 }}\n",
                self.project, self.net_prefix, self.net_prefix
            );
            if std::fs::write(&fallback, text).is_ok() {
                let _ = rigger(&["destroy", &fallback.display().to_string(), "--auto-approve"]);
            }
        }
        let left = leftovers(&self.project, &self.net_prefix);
        if !left.is_empty() {
            eprintln!("cleanup after destroy still found: {left:?}");
        }
    }
}

/// A `rigger sim proxmox` process on a free loopback port. Dropping it sends
/// SIGTERM to that pid (the simulator then removes the machines it booted) and
/// waits; SIGKILL only if it does not end.
pub struct ProxmoxSim {
    child: std::process::Child,
    pub endpoint: String,
    pub port: u16,
    pub fingerprint: String,
    pub token_id: String,
    pub secret: String,
    pub banner: String,
}

impl ProxmoxSim {
    pub fn start(extra: &[&str]) -> ProxmoxSim {
        use std::io::BufRead;
        let mut child = Command::new(RIGGER)
            .args(["sim", "proxmox", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start rigger sim proxmox");
        let stdout = child.stdout.take().expect("sim stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut banner = String::new();
        let field = |banner: &str, key: &str| banner.lines().find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().trim_matches('"').to_string()));
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    banner.push_str(&line);
                    banner.push('\n');
                    if line.starts_with("export PROXMOX_TOKEN_SECRET=") {
                        break;
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("rigger sim proxmox ended before printing its banner:\n{banner}");
                }
            }
        }
        // Keep reading (and dropping) stdout so the simulator never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let endpoint = field(&banner, "endpoint:").expect("endpoint in the banner");
        let port = field(&banner, "listen:").and_then(|l| l.rsplit(':').next().and_then(|p| p.parse().ok())).expect("listen address in the banner");
        ProxmoxSim {
            endpoint,
            port,
            fingerprint: field(&banner, "tls_fingerprint:").expect("tls_fingerprint in the banner"),
            token_id: field(&banner, "token_id:").expect("token_id in the banner"),
            secret: field(&banner, "export PROXMOX_TOKEN_SECRET=").expect("secret in the banner"),
            banner,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The plan's `provider:` block for this simulator.
    pub fn provider_block(&self) -> String {
        format!(
            "provider:\n  kind: proxmox\n  endpoint: {}\n  node: pve\n  token_id: \"{}\"\n  tls_fingerprint: \"{}\"\n",
            self.endpoint, self.token_id, self.fingerprint
        )
    }

    /// `GET <endpoint><path>` (the simulator's own `/_sim/…` views), TLS pinned to the printed fingerprint.
    pub fn debug_get(&self, path: &str) -> serde_json::Value {
        use rigger::cloud::providers::proxmox::tls::{self, TlsMode};
        let fingerprint = tls::parse_fingerprint(&self.fingerprint).expect("fingerprint");
        let config = tls::client_config(&TlsMode::Pinned(fingerprint)).expect("tls config").expect("a TLS config");
        let url = format!("{}{path}", self.endpoint);
        let auth = format!("PVEAPIToken={}={}", self.token_id, self.secret);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let client = reqwest::Client::builder().use_preconfigured_tls(config).build().expect("http client");
            let response = client.get(&url).header("Authorization", auth).send().await.expect("GET the simulator");
            assert!(response.status().is_success(), "GET {url}: {}", response.status());
            let body: serde_json::Value = response.json().await.expect("JSON");
            body["data"].clone()
        })
    }

    /// The simulator's store: (vmid, type, name, template, machine).
    pub fn guests(&self) -> Vec<SimGuest> {
        self.debug_get("/_sim/guests")
            .as_array()
            .expect("a list of guests")
            .iter()
            .map(|g| SimGuest {
                vmid: g["vmid"].as_u64().expect("vmid"),
                kind: g["type"].as_str().unwrap_or_default().to_string(),
                name: g["name"].as_str().unwrap_or_default().to_string(),
                template: g["template"].as_bool().unwrap_or(false),
                machine: g["machine"].as_str().map(str::to_string),
            })
            .collect()
    }

    pub fn faults_injected(&self) -> u64 {
        self.debug_get("/_sim/stats")["faults_injected"].as_u64().unwrap_or(0)
    }

    /// SIGTERM, then wait for the process to end (it removes its machines first).
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProxmoxSim {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimGuest {
    pub vmid: u64,
    pub kind: String,
    pub name: String,
    pub template: bool,
    pub machine: Option<String>,
}

/// What a `--machines local` simulator on `port` left on this host, by exact
/// name: its machines' processes, namespaces, mounts and folder, its bridge.
pub fn sim_leftovers(port: u16, net_prefix: &str) -> Vec<String> {
    let machine_prefix = format!("pvesim-{port}-");
    let folder = Path::new("/var/lib/rigger/machines").join(format!("pvesim-{port}"));
    let mut found = Vec::new();
    let run = |args: &[&str]| String::from_utf8_lossy(&Command::new(args[0]).args(&args[1..]).output().map(|o| o.stdout).unwrap_or_default()).into_owned();
    for line in run(&["ip", "netns", "list"]).lines() {
        if line.starts_with(&machine_prefix) {
            found.push(format!("netns {line}"));
        }
    }
    for line in run(&["ps", "-eo", "pid,args"]).lines() {
        if line.contains("systemd-nspawn") && line.contains(&format!("--machine={machine_prefix}")) {
            found.push(format!("process {line}"));
        }
    }
    for line in run(&["cat", "/proc/mounts"]).lines() {
        if line.contains(&format!("{}/", folder.display())) {
            found.push(format!("mount {line}"));
        }
    }
    for line in run(&["ip", "-4", "-o", "addr"]).lines() {
        if line.contains(&format!(" {net_prefix}.")) {
            found.push(format!("address {line}"));
        }
    }
    if folder.exists() {
        found.push(format!("folder {}", folder.display()));
    }
    let bridge = format!("pve{port}vmbr0");
    if Path::new("/sys/class/net").join(&bridge).exists() {
        found.push(format!("bridge {bridge}"));
    }
    found
}

/// Runs `args` up to `tries` times while it exits 1 (an error, e.g. a fault
/// the retries did not absorb): a user runs apply/destroy again, and so does this.
pub fn rigger_until_not_error(tries: usize, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut last = None;
    for _ in 0..tries {
        let out = Command::new(RIGGER).args(args).envs(envs.iter().copied()).env("NO_COLOR", "1").output().expect("run rigger");
        if out.code() != 1 {
            return out;
        }
        last = Some(out);
    }
    last.expect("at least one try")
}

/// An ed25519 key pair at `dir/id_ed25519{,.pub}`.
pub fn key_pair(dir: &Path) {
    let key = dir.join("id_ed25519");
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "rigger-test", "-f"]).arg(&key).output().expect("ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", out.stderr_text());
}

pub fn rigger_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(RIGGER);
    c.args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run rigger")
}
