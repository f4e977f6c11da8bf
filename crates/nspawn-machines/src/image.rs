//! The machine image: a Debian root filesystem built once with mmdebstrap and
//! shared read-only by every machine (it is the lower layer of their overlays).
//!
//! mmdebstrap rather than debootstrap: it resolves dependencies with apt and
//! downloads in one batch, and with its eatmydata hook dpkg skips the fsyncs
//! that nothing needs while the image is being built (a crash restarts the
//! build anyway). Measured on this project's 2-core host: about 60 s against
//! 290 s for debootstrap with the same package list.
//!
//! Layout under `<root>/images/<name>/`:
//! - `rootfs/`         the finished image; never modified once in place
//! - `manifest.json`   what it was built from; a different package list rebuilds
//! - `.lock`           held while checking/building, so two rigger runs never build twice
//! - `.build-<pid>/`   a build in progress, renamed to `rootfs` when complete
//! - `rootfs.old-<t>/` a replaced image kept while machines still use it as their lower layer

use crate::{cmd, mounts};
use rigger_events::Events;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

pub const DEFAULT_ROOT: &str = "/var/lib/rigger";

/// Everything the roles need is baked in: machines have no internet at run time.
pub const PACKAGES: &[&str] = &[
    "systemd", "systemd-sysv", "dbus", "openssh-server", "sudo", "iproute2", "iputils-ping", "procps",
    "ca-certificates", "curl", "python3", "nftables", "postgresql-15", "postgresql", "patroni",
    "python3-psycopg2", "etcd-server", "etcd-client", "haproxy", "keepalived", "redis-server", "nginx",
    "python3-fastapi", "uvicorn", "python3-redis", "python3-venv", "less",
    // Backups (pgBackRest repository and archiving on every Patroni member).
    "pgbackrest",
];

/// Services the packages enable by default; roles start them when configured.
/// Disabled, not masked: roles must be able to enable them.
const ROLE_SERVICES: &[&str] = &[
    "etcd.service", "patroni.service", "postgresql.service", "haproxy.service", "keepalived.service",
    "redis-server.service", "nginx.service",
];

/// Nothing inside a machine may reconfigure eth0: its address is set from the host.
const NETWORK_CONFIGURERS: &[&str] = &[
    "systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service",
];

/// Timers that only make sense with internet access (machines have none).
const NEEDLESS_TIMERS: &[&str] = &["apt-daily.timer", "apt-daily-upgrade.timer"];

/// Bump when the build recipe (`mmdebstrap`'s hooks, `prepare_for_machines`)
/// changes, so existing images are rebuilt.
const RECIPE_VERSION: u32 = 3;

/// mmdebstrap's own hook that runs dpkg under eatmydata while building, and
/// removes it from the image at the end. It needs `dpkg-architecture` (dpkg-dev).
const EATMYDATA_HOOKS: &str = "/usr/share/mmdebstrap/hooks/eatmydata";

/// Run after the essential packages, before the rest: Patroni creates and owns
/// every PostgreSQL cluster, so postgresql-common must not create `main`
/// (whose data directory would collide with a Patroni scope named `main`).
const NO_MAIN_CLUSTER_HOOK: &str = r#"mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.d/rigger.conf""#;

const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Manifest {
    #[serde(default)]
    recipe: u32,
    image: String,
    suite: String,
    variant: String,
    packages: Vec<String>,
    mirror: String,
    built_at: String,
    build_seconds: u64,
}

impl Manifest {
    /// Same recipe (the mirror and the date do not matter).
    fn same_recipe(&self, other: &Manifest) -> bool {
        self.recipe == other.recipe && self.image == other.image && self.suite == other.suite && self.variant == other.variant && self.packages == other.packages
    }
}

/// The one image rigger builds for local machines: the local provider's
/// default and only image, and what every simulated instance boots.
pub const DEBIAN_12: &str = "debian-12";

/// Debian suite for an image name the local provider knows how to build.
fn suite_for(image: &str) -> Result<&'static str> {
    match image {
        DEBIAN_12 => Ok("bookworm"),
        other => bail!("unknown local image {other:?}: the local provider builds \"debian-12\"; set provider.image to it"),
    }
}

pub fn images_dir(root: &Path) -> PathBuf {
    root.join("images")
}

/// The image's root filesystem under the default root, built if needed.
pub async fn ensure_image(name: &str, events: &Events) -> Result<PathBuf> {
    ensure_image_in(Path::new(DEFAULT_ROOT), name, events).await
}

/// Returns `<root>/images/<name>/rootfs`, building it first when it is missing or
/// was built from a different package list. Safe to call from many tasks and
/// processes at once: one builds, the others wait on the lock and find it done.
pub async fn ensure_image_in(root: &Path, name: &str, events: &Events) -> Result<PathBuf> {
    let suite = suite_for(name)?;
    let dir = images_dir(root).join(name);
    let rootfs = dir.join("rootfs");
    let wanted = Manifest {
        recipe: RECIPE_VERSION,
        image: name.into(),
        suite: suite.into(),
        variant: "minbase".into(),
        packages: sorted_packages(),
        mirror: String::new(),
        built_at: String::new(),
        build_seconds: 0,
    };
    // Fast path without the lock: a complete image never changes in place.
    if is_complete(&dir, &wanted) {
        return Ok(rootfs);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The run's own parallel creates wait for its one build here, quietly;
    // the file lock below is for other processes, and says so.
    let builds = build_in_this_process(&dir);
    let _one_build = builds.lock().await;
    let lock = lock_exclusive(dir.join(".lock"), &format!("image {name}"), IMAGE_LOCK_WAIT, events).await?;
    let result = async {
        if is_complete(&dir, &wanted) {
            return Ok(rootfs.clone());
        }
        build(&dir, wanted, events).await?;
        Ok(rootfs.clone())
    }
    .await;
    drop(lock);
    result
}

fn sorted_packages() -> Vec<String> {
    let mut packages: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    packages.sort();
    packages.dedup();
    packages
}

fn is_complete(dir: &Path, wanted: &Manifest) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) else { return false };
    let Ok(found) = serde_json::from_str::<Manifest>(&text) else { return false };
    found.same_recipe(wanted) && dir.join("rootfs/usr/lib/systemd/systemd").exists()
}

/// One mutex per image folder for this process's builds.
fn build_in_this_process(dir: &Path) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    type Builds = std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<tokio::sync::Mutex<()>>>>;
    static BUILDS: std::sync::LazyLock<Builds> = std::sync::LazyLock::new(Default::default);
    let mut builds = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    builds.entry(dir.to_path_buf()).or_default().clone()
}

/// How long a run waits for another process building the same image (a
/// build from Debian's mirror takes minutes; a fresh machine's, a few).
const IMAGE_LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

/// An exclusive `flock` on `path`. When another process holds it (a
/// parallel run building the same image), say so and wait, bounded by
/// `limit`; the kernel releases a dead holder's lock, so only a live one
/// is waited for.
async fn lock_exclusive(path: PathBuf, subject: &str, limit: Duration, events: &Events) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    let started = Instant::now();
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
        if started.elapsed() >= limit {
            bail!("{subject}: another process has been building it for {}s (it holds {}); wait for it to finish or stop it, then run again", limit.as_secs(), path.display());
        }
        if !said {
            events.progress(subject, format!("another process is building this image (it holds {}); waiting for it, at most {}s", path.display(), limit.as_secs()));
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn build(dir: &Path, mut manifest: Manifest, events: &Events) -> Result<()> {
    let subject = format!("image {}", manifest.image);
    let started = Instant::now();
    events.started(&subject, "building with mmdebstrap (once; cached afterwards)");
    let result = async {
        crate::preflight::require_program("mmdebstrap")?;
        remove_stale_builds(dir).await?;
        let build_dir = dir.join(format!(".build-{}", std::process::id()));
        manifest.mirror = apt_mirror();
        mmdebstrap(&build_dir, &manifest, &subject, events).await?;
        events.progress(&subject, "preparing the image for machines");
        prepare_for_machines(&build_dir).await?;
        replace_rootfs(dir, &build_dir, events, &subject).await?;
        manifest.built_at = chrono::Utc::now().to_rfc3339();
        manifest.build_seconds = started.elapsed().as_secs();
        write_atomically(&dir.join("manifest.json"), &serde_json::to_vec_pretty(&manifest)?)?;
        Ok(())
    }
    .await;
    match &result {
        Ok(()) => events.finished(&subject, "built", started),
        Err(e) => events.failed(&subject, "build", &format!("{e:#}")),
    }
    result
}

/// Builds left behind by a run that died. We hold the lock, so none is in progress.
async fn remove_stale_builds(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stale_build = name.starts_with(".build-");
        let unused_old = name.starts_with("rootfs.old-") && !mounts::used_as_lower(&path)?;
        if stale_build || unused_old {
            // The bootstrap mounts /proc and /sys inside its target; never delete through a mount.
            mounts::unmount_all_under(&path).await?;
            remove_dir_all_blocking(path).await?;
        }
    }
    Ok(())
}

pub async fn remove_dir_all_blocking(path: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    })
    .await
    .context("remove task panicked")?
}

/// The Debian mirror apt is configured with (the only one this host may reach).
fn apt_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| mirror_in(&text))
        .unwrap_or_else(|| FALLBACK_MIRROR.to_string())
}

/// First `…/debian` URI of a one-line (`deb URI suite …`) or deb822 (`URIs: …`) source.
fn mirror_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|line| {
            let uris = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect::<Vec<_>>()
            } else if line.starts_with("deb ") {
                line.split_whitespace().filter(|w| w.contains("://")).take(1).collect()
            } else {
                Vec::new()
            };
            uris.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect::<Vec<_>>()
        })
        .find(|uri| uri.ends_with("/debian") && uri.contains("debian.org"))
}

async fn mmdebstrap(target: &Path, manifest: &Manifest, subject: &str, events: &Events) -> Result<()> {
    let target_s = target.to_string_lossy().into_owned();
    let include = format!("--include={}", manifest.packages.join(","));
    let variant = format!("--variant={}", manifest.variant);
    let essential_hook = format!("--essential-hook={NO_MAIN_CLUSTER_HOOK}");
    let mut args = vec!["--components=main", variant.as_str(), include.as_str(), essential_hook.as_str()];
    let eatmydata = format!("--hook-dir={EATMYDATA_HOOKS}");
    if Path::new(EATMYDATA_HOOKS).is_dir() && crate::preflight::require_program("dpkg-architecture").is_ok() {
        args.push(eatmydata.as_str());
    } else {
        events.note(subject, format!("building without eatmydata (slower): needs {EATMYDATA_HOOKS} (mmdebstrap) and dpkg-architecture ({})", crate::cmd::install_hint("dpkg-architecture")));
    }
    args.extend(["--format=directory", manifest.suite.as_str(), target_s.as_str(), manifest.mirror.as_str()]);
    events.note(subject, cmd::render("mmdebstrap", &args));
    let mut child = tokio::process::Command::new("mmdebstrap")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| cmd::spawn_error("mmdebstrap", &args, e))?;
    let stdout = child.stdout.take().context("mmdebstrap stdout")?;
    let stderr = child.stderr.take().context("mmdebstrap stderr")?;
    let mut out_lines = BufReader::new(stdout).lines();
    let mut err_lines = BufReader::new(stderr).lines();
    // The last lines, for the error message if it fails.
    let mut tail: VecDeque<String> = VecDeque::new();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let line = tokio::select! {
            l = out_lines.next_line(), if out_open => l.context("reading mmdebstrap output")?.or_else(|| { out_open = false; None }),
            l = err_lines.next_line(), if err_open => l.context("reading mmdebstrap output")?.or_else(|| { err_open = false; None }),
        };
        let Some(line) = line else { continue };
        if let Some(message) = line.strip_prefix("I: ") {
            events.progress(subject, format!("mmdebstrap: {message}"));
        } else {
            events.note(subject, format!("mmdebstrap: {line}"));
        }
        tail.push_back(line);
        if tail.len() > 30 {
            tail.pop_front();
        }
    }
    let status = child.wait().await.context("waiting for mmdebstrap")?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); last output:\n{}\ncheck that {} is reachable and lists these packages",
            cmd::render("mmdebstrap", &args),
            Vec::from(tail).join("\n"),
            manifest.mirror
        );
    }
    Ok(())
}

/// Turns a fresh bootstrap into a template for many machines: no identity of
/// its own, sshd on, role services off, nothing that would touch eth0.
async fn prepare_for_machines(rootfs: &Path) -> Result<()> {
    let r = rootfs.to_string_lossy().into_owned();
    // Each machine gets its own host keys and machine-id (an empty file makes
    // systemd generate one at first boot).
    for entry in std::fs::read_dir(rootfs.join("etc/ssh")).context("listing the image's /etc/ssh")? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ssh_host_")) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    std::fs::write(rootfs.join("etc/machine-id"), "").context("emptying /etc/machine-id")?;
    let _ = std::fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));
    let _ = std::fs::remove_file(rootfs.join("etc/hostname"));

    cmd::run("chroot", &[&r, "systemctl", "enable", "ssh.service"]).await?;
    let mut disable = vec![r.as_str(), "systemctl", "disable"];
    disable.extend(ROLE_SERVICES);
    disable.extend(NETWORK_CONFIGURERS);
    disable.extend(NEEDLESS_TIMERS);
    cmd::run("chroot", &disable).await?;

    // Patroni creates and owns every PostgreSQL cluster; the essential hook told
    // postgresql-common not to make one (see NO_MAIN_CLUSTER_HOOK).
    let clusters: Vec<String> = std::fs::read_dir(rootfs.join("etc/postgresql"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|version| std::fs::read_dir(version.path()).into_iter().flatten().flatten())
        .map(|cluster| cluster.path().display().to_string())
        .collect();
    if !clusters.is_empty() {
        bail!("the image has PostgreSQL clusters of its own ({}); Patroni must own every cluster — the build's essential hook did not take", clusters.join(", "));
    }
    // Downloaded .debs are not needed once installed; they are half the image.
    if let Ok(debs) = std::fs::read_dir(rootfs.join("var/cache/apt/archives")) {
        for deb in debs.flatten() {
            if deb.path().extension().is_some_and(|e| e == "deb") {
                let _ = std::fs::remove_file(deb.path());
            }
        }
    }
    if rootfs.join("etc/network/interfaces").exists() || rootfs.join("sbin/dhclient").exists() {
        bail!("the image has ifupdown or a DHCP client, which would reconfigure eth0; expected a minbase bootstrap without them");
    }
    Ok(())
}

/// Puts the finished build in place. A previous image is moved aside, not deleted:
/// running machines still use it as their lower layer; a later build removes it
/// once no overlay uses it.
async fn replace_rootfs(dir: &Path, build_dir: &Path, events: &Events, subject: &str) -> Result<()> {
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        let old = dir.join(format!("rootfs.old-{}", chrono::Utc::now().timestamp()));
        std::fs::rename(&rootfs, &old).with_context(|| format!("moving the previous image aside to {}", old.display()))?;
        if mounts::used_as_lower(&old)? {
            events.note(subject, format!("previous image kept at {} while machines use it", old.display()));
        } else {
            remove_dir_all_blocking(old).await?;
        }
    }
    std::fs::rename(build_dir, &rootfs).with_context(|| format!("renaming {} to {}", build_dir.display(), rootfs.display()))?;
    Ok(())
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another holder of the image lock is waited for, bounded, and named;
    /// once it lets go the lock is taken.
    #[tokio::test]
    async fn a_held_image_lock_is_waited_for_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let holder = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).unwrap();
        holder.lock().unwrap();
        let err = lock_exclusive(path.clone(), "image t", Duration::from_millis(600), &Events::silent()).await.unwrap_err().to_string();
        assert!(err.contains("another process has been building it") && err.contains(&path.display().to_string()), "{err}");
        let waiter = tokio::spawn(async move { lock_exclusive(path, "image t", Duration::from_secs(30), &Events::silent()).await });
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(holder);
        waiter.await.unwrap().expect("taken once the holder let go");
    }

    #[test]
    fn finds_mirror_in_deb822() {
        let text = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n";
        assert_eq!(mirror_in(text).as_deref(), Some("http://deb.debian.org/debian"));
    }

    #[test]
    fn finds_mirror_in_one_line_format_and_skips_security() {
        let text = "deb http://deb.debian.org/debian-security bookworm-security main\ndeb [arch=amd64] http://deb.debian.org/debian/ bookworm main\n";
        assert_eq!(mirror_in(text).as_deref(), Some("http://deb.debian.org/debian"));
    }

    #[test]
    fn unknown_image_is_refused() {
        assert!(suite_for("ubuntu-2204-lts").is_err());
    }
}
