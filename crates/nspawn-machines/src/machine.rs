//! One local machine: a `systemd-nspawn --boot` container of the shared image.
//!
//! Its directory `<root>/machines/<project>/<host>/` holds
//! - `upper/`, `work/`  its own overlay layer (the image is the read-only lower layer)
//! - `rootfs/`          the overlay, mounted by rigger
//! - `meta.json`        what rigger knows about it (address, names, host keys, spec)
//! - `nspawn.log`       the container's console
//!
//! systemd-nspawn runs detached (own session, no stdin), so machines outlive rigger.
//! Whether a machine runs is read from `/proc`, never from a remembered pid alone.

use crate::{cgroup, cmd, image, mounts, net};
use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How long an orderly shutdown may take before the container is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Upper bound for a machine to boot until sshd answers.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Host key types generated for each machine (ed25519 first: clients prefer it).
const HOST_KEY_TYPES: &[&str] = &["ed25519", "ecdsa"];

#[derive(Debug, Clone)]
pub struct MachinePaths {
    pub dir: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub rootfs: PathBuf,
    pub meta: PathBuf,
    pub log: PathBuf,
}

impl MachinePaths {
    pub fn new(project_dir: &Path, host: &str) -> Self {
        let dir = project_dir.join(host);
        MachinePaths {
            upper: dir.join("upper"),
            work: dir.join("work"),
            rootfs: dir.join("rootfs"),
            meta: dir.join("meta.json"),
            log: dir.join("nspawn.log"),
            dir,
        }
    }
}

/// `meta.json`: everything needed to find, restart and remove the machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// nspawn machine name and network namespace name.
    pub name: String,
    pub project: String,
    pub host: String,
    /// Last nspawn pid seen (informational: liveness is read from /proc).
    pub pid: Option<u32>,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub netns: String,
    pub bridge: String,
    pub veth: String,
    pub image: String,
    pub lower: PathBuf,
    pub created: String,
    /// Public host keys, "type base64".
    pub host_keys: Vec<String>,
    /// The spec attributes last applied (the local provider's; the simulators leave it empty).
    pub attrs: BTreeMap<String, serde_json::Value>,
}

impl Meta {
    pub fn address(&self) -> Result<Ipv4Net> {
        Ipv4Net::new(self.ip, self.prefix).with_context(|| format!("bad prefix /{} for {}", self.prefix, self.ip))
    }

    /// The machine's veth into its namespace, as its record describes it.
    pub fn link(&self) -> Result<net::MachineLink<'_>> {
        Ok(net::MachineLink { netns: &self.netns, veth_host: &self.veth, bridge: &self.bridge, address: self.address()?, gateway: self.gateway })
    }

    pub fn read(path: &Path) -> Result<Option<Meta>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        image::write_atomically(path, &serde_json::to_vec_pretty(self)?)
    }
}

/// What the machine's first boot needs, written the way cloud-init would.
pub struct Seed<'a> {
    pub hostname: &'a str,
    pub ip: Ipv4Addr,
    pub ssh_user: &'a str,
    pub ssh_public_key: &'a str,
}

/// Mounts the machine's overlay (image below, its own layer above) if not mounted.
pub async fn ensure_overlay(paths: &MachinePaths, lower: &Path) -> Result<()> {
    for dir in [&paths.upper, &paths.work, &paths.rootfs] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if mounts::is_mount_point(&paths.rootfs)? {
        return Ok(());
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), paths.upper.display(), paths.work.display());
    let target = paths.rootfs.to_string_lossy().into_owned();
    cmd::run_hinted("mount", &["-t", "overlay", "rigger-overlay", "-o", &options, &target], "the kernel needs overlayfs (modprobe overlay)").await?;
    Ok(())
}

/// A new machine's root: its overlay on the image, then what `seed` writes.
/// Returns the public host keys.
pub async fn lay_down(paths: &MachinePaths, lower: &Path, what: &Seed<'_>) -> Result<Vec<String>> {
    ensure_overlay(paths, lower).await?;
    seed(&paths.rootfs, what).await
}

/// Boots a laid-down machine: its veth into its namespace, its overlay, then
/// the container (see `start`). Every step keeps what is already up, so this
/// also brings back a machine that was stopped or lost its mounts. Returns
/// nspawn's pid; sshd is not waited for (see `wait_for_ssh`).
pub async fn bring_up(paths: &MachinePaths, meta: &Meta) -> Result<u32> {
    net::ensure_machine_link(&meta.link()?).await?;
    ensure_overlay(paths, &meta.lower).await?;
    start(paths, meta).await
}

/// Writes hostname, /etc/hosts, the SSH user with its key and sudo, and fresh
/// SSH host keys into the machine's root. Returns the public host keys.
/// Safe to repeat: what exists is kept (host keys are never regenerated).
pub async fn seed(rootfs: &Path, seed: &Seed<'_>) -> Result<Vec<String>> {
    write_file(&rootfs.join("etc/hostname"), &format!("{}\n", seed.hostname), 0o644)?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n{}\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
        seed.ip, seed.hostname
    );
    write_file(&rootfs.join("etc/hosts"), &hosts, 0o644)?;
    ensure_user(rootfs, seed.ssh_user).await?;
    write_authorized_key(rootfs, seed.ssh_user, seed.ssh_public_key)?;
    if seed.ssh_user != "root" {
        let sudoers = rootfs.join(format!("etc/sudoers.d/90-rigger-{}", seed.ssh_user));
        write_file(&sudoers, &format!("{} ALL=(ALL) NOPASSWD:ALL\n", seed.ssh_user), 0o440)?;
    }
    // systemd-user-sessions removes /run/nologin at the end of boot; until it
    // has, sshd refuses every user but root. Under heavy load it was seen to
    // fail once and never run again, locking the plan's user out for good:
    // let it try again (Restart= is allowed for oneshot units since systemd 244).
    write_file(
        &rootfs.join("etc/systemd/system/systemd-user-sessions.service.d/rigger-retry.conf"),
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestart=on-failure\nRestartSec=2\n",
        0o644,
    )?;
    ensure_host_keys(rootfs, seed.hostname).await
}

fn write_file(path: &Path, content: &str, mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", path.display()))
}

/// Uid, gid and home of a user from the machine's own /etc/passwd.
fn passwd_entry(rootfs: &Path, user: &str) -> Result<Option<(u32, u32, String)>> {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).context("reading the machine's /etc/passwd")?;
    Ok(passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 6 && fields[0] == user {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?, fields[5].to_string()))
        } else {
            None
        }
    }))
}

async fn ensure_user(rootfs: &Path, user: &str) -> Result<()> {
    if passwd_entry(rootfs, user)?.is_some() {
        return Ok(());
    }
    let root = rootfs.to_string_lossy().into_owned();
    cmd::run("chroot", &[&root, "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", user]).await?;
    Ok(())
}

/// (Re)writes `~user/.ssh/authorized_keys` with exactly this key.
pub fn write_authorized_key(rootfs: &Path, user: &str, public_key: &str) -> Result<()> {
    let (uid, gid, home) = passwd_entry(rootfs, user)?.with_context(|| format!("user {user} missing in the machine"))?;
    let ssh_dir = rootfs.join(home.trim_start_matches('/')).join(".ssh");
    std::fs::create_dir_all(&ssh_dir).with_context(|| format!("creating {}", ssh_dir.display()))?;
    std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700))?;
    let keys = ssh_dir.join("authorized_keys");
    write_file(&keys, &format!("{}\n", public_key.trim()), 0o600)?;
    for path in [&ssh_dir, &keys] {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

async fn ensure_host_keys(rootfs: &Path, hostname: &str) -> Result<Vec<String>> {
    let mut public_keys = Vec::new();
    for key_type in HOST_KEY_TYPES {
        let private = rootfs.join(format!("etc/ssh/ssh_host_{key_type}_key"));
        let public = private.with_extension("pub");
        if !private.exists() || !public.exists() {
            let _ = std::fs::remove_file(&private);
            let _ = std::fs::remove_file(&public);
            let private_s = private.to_string_lossy().into_owned();
            let comment = format!("root@{hostname}");
            cmd::run("ssh-keygen", &["-q", "-t", key_type, "-N", "", "-C", &comment, "-f", &private_s]).await?;
        }
        public_keys.push(read_public_key(&public)?);
    }
    Ok(public_keys)
}

/// The public host keys already in a machine's root ("type base64").
pub fn host_keys(rootfs: &Path) -> Result<Vec<String>> {
    HOST_KEY_TYPES.iter().map(|t| read_public_key(&rootfs.join(format!("etc/ssh/ssh_host_{t}_key.pub")))).collect()
}

/// "type base64" of a .pub file (the comment dropped).
fn read_public_key(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut fields = text.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(key)) => Ok(format!("{kind} {key}")),
        _ => bail!("{} is not an SSH public key", path.display()),
    }
}

/// Running nspawn machines on this host, by machine name, from one scan of /proc.
pub fn running_machines() -> Result<BTreeMap<String, u32>> {
    let mut found: Vec<(String, u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // Gone or a zombie (empty cmdline): not running.
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
        if !args.next().is_some_and(|argv0| argv0.ends_with("systemd-nspawn")) {
            continue;
        }
        let Some(name) = args.find_map(|a| a.strip_prefix("--machine=").map(str::to_string)) else { continue };
        found.push((name, pid, parent_pid(pid).unwrap_or(0)));
    }
    // While nspawn starts, a forked helper briefly carries the same command line:
    // the machine's pid is the one whose parent is not another match.
    let pids: std::collections::BTreeSet<u32> = found.iter().map(|(_, pid, _)| *pid).collect();
    Ok(found.into_iter().filter(|(_, _, parent)| !pids.contains(parent)).map(|(name, pid, _)| (name, pid)).collect())
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …"; comm may contain spaces, so split after the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

pub fn machine_pid(name: &str) -> Result<Option<u32>> {
    Ok(running_machines()?.remove(name))
}

/// Boots the machine detached from rigger and returns nspawn's pid.
pub async fn start(paths: &MachinePaths, meta: &Meta) -> Result<u32> {
    if let Some(pid) = machine_pid(&meta.name)? {
        return Ok(pid);
    }
    // Never two systems on one root: a container whose nspawn died goes first.
    kill_container(&meta.netns);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .with_context(|| format!("opening {}", paths.log.display()))?;
    let log_err = log.try_clone().context("duplicating the log file handle")?;
    let directory = format!("--directory={}", paths.rootfs.display());
    let machine = format!("--machine={}", meta.name);
    let netns = format!("--network-namespace-path=/run/netns/{}", meta.netns);
    // Each machine in a cgroup of its own (see cgroup.rs): a shell enters it,
    // then becomes nspawn.
    let enter = cgroup::enter_then_exec(&cgroup::prepare(&meta.name)?);
    let args = [
        "--fork",
        "sh",
        "-c",
        enter.as_str(),
        "sh",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--quiet",
        "--link-journal=no",
        "--console=read-only",
        // The machine owns its network namespace: let it manage its addresses
        // (keepalived moves a VIP, like on a real VM).
        "--capability=CAP_NET_ADMIN",
        directory.as_str(),
        machine.as_str(),
        netns.as_str(),
    ];
    // `setsid --fork`: nspawn gets its own session and is not rigger's child, so it
    // survives rigger and never lingers as rigger's zombie.
    let status = tokio::process::Command::new("setsid")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .status()
        .await
        .map_err(|e| cmd::spawn_error("setsid", &args, e))?;
    if !status.success() {
        bail!("`{}` failed ({status}); see {}", cmd::render("setsid", &args), paths.log.display());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = machine_pid(&meta.name)? {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!(
                "systemd-nspawn for {} exited right after starting; its output:\n{}\n(is systemd-container installed and the overlay mounted?)",
                meta.name,
                log_tail(&paths.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until sshd on the machine answers with its banner.
pub async fn wait_for_ssh(paths: &MachinePaths, meta: &Meta) -> Result<()> {
    let address = SocketAddr::from((meta.ip, 22));
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if ssh_banner(address).await {
            return Ok(());
        }
        if machine_pid(&meta.name)?.is_none() {
            bail!("machine {} stopped while booting; its console:\n{}", meta.name, log_tail(&paths.log));
        }
        if Instant::now() > deadline {
            bail!(
                "machine {} did not answer SSH on {address} within {}s; its console:\n{}",
                meta.name,
                BOOT_TIMEOUT.as_secs(),
                log_tail(&paths.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn ssh_banner(address: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"SSH-")
    };
    matches!(tokio::time::timeout(Duration::from_secs(3), attempt).await, Ok(Some(true)))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Orderly shutdown: nspawn turns SIGTERM into a container poweroff. Killed
/// after the grace period.
pub async fn stop(name: &str, netns: &str) -> Result<()> {
    let Some(pid) = machine_pid(name)? else {
        // No nspawn, but maybe an orphaned container in its namespace: take it down.
        kill_container(netns);
        return Ok(());
    };
    let target = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
    let _ = kill(target, Signal::SIGTERM);
    if wait_gone(name, STOP_GRACE).await? && processes_in(netns).is_empty() {
        return Ok(());
    }
    kill_now(name, netns).await
}

/// Pull the plug (a crash, for failure drills): SIGKILL to the container's
/// init takes its whole PID namespace down at once, nothing inside gets to
/// shut down cleanly; nspawn then exits by itself. (SIGKILL to nspawn alone
/// would orphan the container, still running.)
pub async fn kill_now(name: &str, netns: &str) -> Result<()> {
    kill_container(netns);
    if let Some(pid) = machine_pid(name)? {
        if !wait_gone(name, Duration::from_secs(10)).await? {
            let _ = kill(Pid::from_raw(i32::try_from(pid).context("pid out of range")?), Signal::SIGKILL);
        }
    }
    if wait_gone(name, Duration::from_secs(10)).await? && processes_in(netns).is_empty() {
        return Ok(());
    }
    bail!("machine {name} does not stop after SIGKILL")
}

/// Processes of the container: everything in the machine's own network
/// namespace (a process's root reads as `/` from inside its mount namespace,
/// so the namespace is the reliable mark).
pub fn processes_in(netns: &str) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(format!("/run/netns/{netns}")) else { return Vec::new() };
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let ns = std::fs::metadata(e.path().join("ns/net")).ok()?;
            (ns.ino() == target.ino() && ns.dev() == target.dev()).then_some(pid)
        })
        .collect()
}

/// SIGKILL every process of the container (killing a PID namespace's init
/// kills the whole namespace; the rest go too).
fn kill_container(netns: &str) {
    for pid in processes_in(netns) {
        if let Ok(p) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

async fn wait_gone(name: &str, within: Duration) -> Result<bool> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if machine_pid(name)?.is_none() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(machine_pid(name)?.is_none())
}

/// Stops the machine and removes everything of it: process, veth, namespace,
/// overlay mount, directory. Nothing is deleted through a mount.
pub async fn destroy(paths: &MachinePaths, name: &str, netns: &str, veth: &str) -> Result<()> {
    stop(name, netns).await?;
    net::delete_machine_link(netns, veth).await?;
    if paths.dir.exists() {
        mounts::unmount_all_under(&paths.dir).await?;
        image::remove_dir_all_blocking(paths.dir.clone()).await?;
    }
    cgroup::remove_when_empty(name).await;
    Ok(())
}
