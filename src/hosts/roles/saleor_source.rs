//! saleor in source mode: the plan names Saleor's source (`services.saleor.source`,
//! a tarball or a folder) and its pinned requirements; nothing on the hosts
//! needs network access.
//!
//! - On the control host rigger builds a wheelhouse (`pip wheel --prefer-binary`
//!   with a Python 3.11, the hosts' Python) once per requirements file, cached by
//!   content hash under `$RIGGER_ARTIFACTS_DIR` (default /var/lib/rigger/artifacts).
//! - A release is the pair (source, requirements), named by their content
//!   hash: `/opt/saleor/releases/<release>/{src,venv}`. The units name the
//!   release's paths, so a new release changes the units and the ordinary
//!   change machinery restarts exactly the hosts it must.
//! - Each host keeps a wheel store (/var/lib/rigger/wheels): only wheels it
//!   lacks are sent; a release already installed sends nothing at all.
//!   `pip install --no-index --find-links` installs the venv.
//! - `manage.py migrate` runs once per release on the first Saleor host, in a
//!   transient systemd unit (it survives a lost SSH connection), under a host
//!   `flock` and a PostgreSQL advisory lock, before any API restarts; when it
//!   fails the rollout stops with Django's last words and the old release keeps
//!   serving (its units were never reloaded).

use super::database;
use crate::hosts::run::{indent, wait_for, RoleRun};
use rigger_events::Events;
use crate::plan::load::resolve_path;
use crate::plan::model::{Host, Plan};
use crate::hosts::remote::session::{effective, sh_quote, HostSession, COMMAND_LIMIT, INSTALL_LIMIT, UPLOAD_LIMIT};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use super::{haproxy, saleor};

pub const HOME: &str = "/opt/saleor";
/// The wheel store on each host, shared by its releases.
pub const HOST_WHEELS: &str = "/var/lib/rigger/wheels";
pub const ENV: &str = "/etc/saleor/saleor.env";
/// The RSA key's own env file: a multi-line value, which systemd reads (quoted) but docker's --env-file cannot.
pub const RSA_ENV: &str = "/etc/saleor/rsa.env";
/// The query every gate asks: cheap, needs the database, answers without a token.
pub const SHOP_QUERY: &str = r#"{"query":"{ shop { name } }"}"#;

/// Saleor's source and requirements as the plan names them, and the release they make.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub requirements: PathBuf,
    /// 12 hex digits of the content hash of both.
    pub release: String,
}

impl Source {
    pub fn dir(&self) -> String {
        format!("{HOME}/releases/{}", self.release)
    }
}

/// `services.saleor.source`, resolved and hashed; `None` in image mode.
pub fn source(plan: &Plan) -> Result<Option<Source>> {
    let Some(given) = plan.setting(saleor::NAME, "source").and_then(Value::as_str) else { return Ok(None) };
    let path = resolve_path(&plan.dir, given);
    if !path.exists() {
        bail!("services.saleor.source: {} does not exist — point it at Saleor's source (a .tar.gz or a folder), relative to the plan file", path.display());
    }
    let requirements = match plan.setting(saleor::NAME, "requirements").and_then(Value::as_str) {
        Some(r) => resolve_path(&plan.dir, r),
        None => default_requirements(&path),
    };
    if !requirements.is_file() {
        bail!(
            "services.saleor.requirements: {} does not exist — give the pinned requirements of this Saleor release (e.g. exported from its poetry.lock)",
            requirements.display()
        );
    }
    let mut h = Sha256::new();
    h.update(file_hash(&path)?.as_bytes());
    h.update(hex::encode(Sha256::digest(std::fs::read(&requirements)?)).as_bytes());
    Ok(Some(Source { path, requirements, release: hex::encode(h.finalize())[..12].to_string() }))
}

/// `saleor-3.21.69.tar.gz` → `saleor-3.21.69-requirements.txt` beside it.
pub fn default_requirements(source: &Path) -> PathBuf {
    let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = [".tar.gz", ".tgz", ".tar"].iter().find_map(|ext| name.strip_suffix(ext)).unwrap_or(&name).to_string();
    source.with_file_name(format!("{stem}-requirements.txt"))
}

/// Folders of a source folder that are never part of a release.
const SKIP: &[&str] = &[".git", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache"];

/// The hash of a file, or of a folder's paths and contents. Remembered per
/// (path, size, mtime): the roles render once per host.
pub fn file_hash(path: &Path) -> Result<String> {
    static SEEN: Mutex<BTreeMap<(PathBuf, u64, i64), String>> = Mutex::new(BTreeMap::new());
    let meta = std::fs::metadata(path)?;
    let key = (path.to_path_buf(), meta.len(), std::os::unix::fs::MetadataExt::mtime(&meta));
    if let Some(h) = SEEN.lock().expect("hash cache").get(&key) {
        return Ok(h.clone());
    }
    let mut h = Sha256::new();
    if meta.is_dir() {
        let mut files = Vec::new();
        walk(path, path, &mut files)?;
        files.sort();
        for rel in files {
            h.update(rel.as_bytes());
            h.update([0]);
            h.update(Sha256::digest(std::fs::read(path.join(&rel))?));
        }
    } else {
        let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        std::io::copy(&mut f, &mut h)?;
    }
    let hash = hex::encode(h.finalize());
    SEEN.lock().expect("hash cache").insert(key, hash.clone());
    Ok(hash)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_dir() {
            if !SKIP.contains(&name.as_str()) {
                walk(root, &e.path(), out)?;
            }
        } else if !name.ends_with(".pyc") {
            out.push(e.path().strip_prefix(root).unwrap_or(&e.path()).to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Where the control host keeps built artifacts.
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("RIGGER_ARTIFACTS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib/rigger/artifacts"))
}

/// A wheelhouse on the control host: its folder and the wheel files in it.
#[derive(Debug, Clone)]
pub struct Wheelhouse {
    pub dir: PathBuf,
    pub wheels: Vec<String>,
}

/// The Python the wheels are built with: exactly the hosts' version (Debian
/// 12: 3.11.2) — requirement markers such as `python_full_version < "3.11.3"`
/// pick different packages on different patch releases.
async fn python_like(host_version: &str) -> Result<String> {
    let mut seen = Vec::new();
    for candidate in ["/usr/bin/python3.11", "python3.11", "python3"] {
        let out = tokio::process::Command::new(candidate).args(["-c", "import platform; print(platform.python_version())"]).output().await;
        match out {
            Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == host_version => return Ok(candidate.to_string()),
            Ok(o) => seen.push(format!("{candidate} is {}", String::from_utf8_lossy(&o.stdout).trim())),
            Err(e) => seen.push(format!("{candidate}: {e}")),
        }
    }
    bail!(
        "building Saleor's wheelhouse needs Python {host_version} with pip on the control host — the hosts run {host_version}, and wheels resolved for another version may not install there; found: {}",
        seen.join(", ")
    )
}

/// Build (or find in the cache) the wheelhouse for `requirements`.
pub async fn wheelhouse(requirements: &Path, host_python: &str, events: &Events) -> Result<Wheelhouse> {
    let text = std::fs::read(requirements).with_context(|| format!("reading {}", requirements.display()))?;
    let mut h = Sha256::new();
    h.update(&text);
    h.update(format!("cpython-{host_python}-{}", std::env::consts::ARCH).as_bytes());
    let key = hex::encode(h.finalize())[..16].to_string();
    let dir = artifacts_dir().join("saleor-wheels").join(&key);
    let subject = "saleor wheelhouse";
    if !dir.join(".complete").is_file() {
        let python = python_like(host_python).await?;
        let parent = dir.parent().expect("a parent");
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let partial = parent.join(format!("{key}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        let started = Instant::now();
        events.started(subject, &format!("building on the control host: {python} -m pip wheel --prefer-binary -r {} (cached in {})", requirements.display(), dir.display()));
        let out = tokio::process::Command::new(&python)
            .args(["-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "--prefer-binary", "--wheel-dir"])
            .arg(&partial)
            .arg("-r")
            .arg(requirements)
            // Only the index decides what is in the wheelhouse, not a local wheel folder.
            .env_remove("PIP_FIND_LINKS")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("running pip wheel")?;
        if !out.status.success() {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let tail: Vec<&str> = text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            let _ = std::fs::remove_dir_all(&partial);
            bail!("pip wheel failed for {} (does the control host reach the package index?):\n{}", requirements.display(), indent(&tail.join("\n")));
        }
        std::fs::write(partial.join(".complete"), format!("built in {:.0}s\n", started.elapsed().as_secs_f64()))?;
        // Another run may have finished the same build meanwhile: theirs is as good.
        if std::fs::rename(&partial, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        events.finished(subject, &format!("built {}", dir.display()), started);
    }
    super::artifact_cache::used_and_pruned(&dir, subject, events);
    let mut wheels: Vec<String> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".whl")).collect();
    wheels.sort();
    if wheels.is_empty() {
        bail!("{} holds no wheels — remove it and run again", dir.display());
    }
    Ok(Wheelhouse { dir, wheels })
}

/// Distro libraries Saleor loads that a minimal Debian lacks (python-magic
/// needs libmagic). Every host gets the .debs fetched on the control host
/// (the wheelhouse needs a Debian 12 control host already: the same Python).
pub const HOST_LIBRARIES: &[&str] = &["libmagic1", "libmagic-mgc"];

/// `apt-get download` of HOST_LIBRARIES on the control host (Debian 12 like
/// the hosts), cached beside the wheelhouses.
pub async fn library_debs(events: &Events) -> Result<(PathBuf, Vec<String>)> {
    let dir = artifacts_dir().join("debs").join("saleor-libraries");
    if !dir.join(".complete").is_file() {
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        if !(os.contains("ID=debian") && os.contains("VERSION_ID=\"12\"")) {
            bail!("Saleor's hosts need {} — rigger fetches them with apt-get download on a Debian 12 control host (like the hosts); this one is not (/etc/os-release)", HOST_LIBRARIES.join(", "));
        }
        events.progress("saleor libraries", format!("apt-get download {} on the control host", HOST_LIBRARIES.join(" ")));
        let partial = dir.with_extension(format!("partial-{}", std::process::id()));
        std::fs::create_dir_all(&partial)?;
        let out = tokio::process::Command::new("apt-get").arg("download").args(HOST_LIBRARIES).current_dir(&partial).output().await.context("running apt-get download")?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&partial);
            bail!("apt-get download {} failed on the control host:\n{}", HOST_LIBRARIES.join(" "), indent(String::from_utf8_lossy(&out.stderr).trim()));
        }
        let got = std::fs::read_dir(&partial)?.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".deb")).count();
        if got != HOST_LIBRARIES.len() {
            let _ = std::fs::remove_dir_all(&partial);
            bail!("apt-get download {} gave {got} .deb files, not {}", HOST_LIBRARIES.join(" "), HOST_LIBRARIES.len());
        }
        std::fs::write(partial.join(".complete"), "")?;
        if std::fs::rename(&partial, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
    }
    let mut debs: Vec<String> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".deb")).collect();
    debs.sort();
    Ok((dir, debs))
}

/// Install the library .debs on a host that lacks them (no network needed).
async fn ship_libraries(s: &HostSession, debs: &(PathBuf, Vec<String>), events: &Events) -> Result<()> {
    let check = format!("dpkg-query -W -f='${{Status}}\\n' {} 2>/dev/null | grep -c 'ok installed'", HOST_LIBRARIES.join(" "));
    if s.sudo(&check, None).await?.stdout.trim() == HOST_LIBRARIES.len().to_string() {
        return Ok(());
    }
    let (dir, debs) = debs;
    events.progress(&format!("saleor {}", s.name), format!("installing {} from .debs fetched on the control host", HOST_LIBRARIES.join(", ")));
    let mut tar = tokio::process::Command::new("tar").arg("-C").arg(&dir).args(["-cf", "-", "--"]).args(debs.iter()).stdout(std::process::Stdio::piped()).spawn().context("running tar")?;
    let stdout = tar.stdout.take().expect("tar stdout");
    let out = s.within(UPLOAD_LIMIT).sudo_stream("d=$(mktemp -d) && tar -xf - -C \"$d\" && dpkg -i \"$d\"/*.deb 2>&1; rc=$?; rm -rf \"$d\"; exit $rc", stdout).await?;
    tar.wait().await?;
    if !out.ok() {
        bail!("{}: dpkg -i {} failed:\n{}", s.name, HOST_LIBRARIES.join(" "), indent(out.stdout.trim()));
    }
    Ok(())
}

fn is_safe_name(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
}

/// Put the release on one host: missing wheels, the source, the venv. Returns
/// whether anything was done (nothing when the release is installed already).
pub async fn install(s: &HostSession, src: &Source, wh: &Wheelhouse, libraries: &(PathBuf, Vec<String>), events: &Events) -> Result<bool> {
    let rel = src.dir();
    ship_libraries(s, libraries, events).await?;
    let subject = format!("saleor {}", s.name);
    let out = s.sudo(&format!("test -f {rel}/.installed && echo INSTALLED; ls -1 {HOST_WHEELS} 2>/dev/null"), None).await?;
    if out.stdout.lines().next() == Some("INSTALLED") {
        return Ok(false);
    }
    let have: BTreeSet<&str> = out.stdout.lines().collect();
    let missing: Vec<&String> = wh.wheels.iter().filter(|w| !have.contains(w.as_str()) && is_safe_name(w)).collect();
    let started = Instant::now();
    events.started(&subject, &format!("installing release {}", src.release));
    if !missing.is_empty() {
        let bytes: u64 = missing.iter().filter_map(|w| std::fs::metadata(wh.dir.join(w)).ok()).map(|m| m.len()).sum();
        events.progress(&subject, format!("uploading {} of {} wheels ({:.0} MB)", missing.len(), wh.wheels.len(), bytes as f64 / 1e6));
        let mut tar = tokio::process::Command::new("tar")
            .arg("-C")
            .arg(&wh.dir)
            .args(["-cf", "-", "--"])
            .args(missing.iter().map(|w| w.as_str()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("running tar")?;
        let stdout = tar.stdout.take().expect("tar stdout");
        let up = s
            .within(UPLOAD_LIMIT)
            .sudo_stream(&format!("mkdir -p {HOST_WHEELS}.partial && tar -xf - -C {HOST_WHEELS}.partial && mkdir -p {HOST_WHEELS} && mv -f {HOST_WHEELS}.partial/* {HOST_WHEELS}/ && rmdir {HOST_WHEELS}.partial"), stdout)
            .await?;
        tar.wait().await?;
        if !up.ok() {
            bail!("{}: unpacking the wheels failed: {}", s.name, up.stderr.trim());
        }
    }
    events.progress(&subject, format!("uploading the source of release {}", src.release));
    // tar cannot detect compression on a pipe: say it.
    let name = src.path.to_string_lossy();
    let untar = if src.path.is_dir() || name.ends_with(".tar") {
        "tar -xf -"
    } else if name.ends_with(".tar.xz") {
        "tar -xJf -"
    } else if name.ends_with(".tar.bz2") {
        "tar -xjf -"
    } else {
        "tar -xzf -"
    };
    let prepare = format!(
        "set -e\nid -u saleor >/dev/null 2>&1 || useradd --system --home-dir {HOME} --no-create-home --shell /usr/sbin/nologin saleor\n\
         rm -rf {rel} && mkdir -p {rel}/unpack && {untar} -C {rel}/unpack\n\
         cd {rel}/unpack && set -- * && if [ $# -eq 1 ] && [ -d \"$1\" ]; then mv \"$1\" {rel}/src && cd {rel} && rmdir unpack; else mv {rel}/unpack {rel}/src; fi\n\
         install -d -o saleor -g saleor /var/lib/saleor /var/lib/saleor/media && rm -rf {rel}/src/media && ln -s /var/lib/saleor/media {rel}/src/media\n"
    );
    let up = if src.path.is_dir() {
        let mut tar = tokio::process::Command::new("tar")
            .arg("-C")
            .arg(&src.path)
            .args(SKIP.iter().map(|s| format!("--exclude=./{s}")))
            .args(["-cf", "-", "."])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("running tar")?;
        let stdout = tar.stdout.take().expect("tar stdout");
        let up = s.within(UPLOAD_LIMIT).sudo_stream(&prepare, stdout).await?;
        tar.wait().await?;
        up
    } else {
        let f = tokio::fs::File::open(&src.path).await.with_context(|| format!("reading {}", src.path.display()))?;
        s.within(UPLOAD_LIMIT).sudo_stream(&prepare, f).await?
    };
    if !up.ok() {
        bail!("{}: unpacking Saleor's source failed: {}", s.name, up.stderr.trim());
    }
    let requirements = std::fs::read(&src.requirements)?;
    s.sudo(&format!("cat > {rel}/requirements.txt"), Some(&requirements)).await?;
    events.progress(&subject, format!("installing the venv offline (pip install --no-index --find-links {HOST_WHEELS})"));
    let out = s
        .within(INSTALL_LIMIT)
        .sudo(
            &format!(
                "python3 -m venv {rel}/venv 2>&1 || exit 1\n\
                 {rel}/venv/bin/pip install --disable-pip-version-check --no-input --no-index --find-links {HOST_WHEELS} -r {rel}/requirements.txt > {rel}/pip.log 2>&1 || {{ tail -n 20 {rel}/pip.log; exit 1; }}\n\
                 {rel}/venv/bin/python -c 'import django, uvicorn, celery' 2>&1 && touch {rel}/.installed"
            ),
            None,
        )
        .await?;
    if !out.ok() {
        bail!("{}: installing release {} offline failed:\n{}", s.name, src.release, indent(out.stdout.trim()));
    }
    events.finished(&subject, &format!("release {} installed (upload + offline venv)", src.release), started);
    Ok(true)
}

/// Run a command of the release as the saleor user with the units' environment, as a transient unit.
/// OpenSSL's default CA directories for Saleor's processes: the system's, and
/// the project CA's (see tls::TRUST_DIR; a missing directory is skipped).
const SSL_CERT_DIR: &str = "/etc/ssl/certs:/etc/rigger/certs";

///
/// `limit` bounds the unit (`RuntimeMaxSec`: stopped when it runs longer):
/// the host's `timeout` ends `systemd-run`, but not the unit it started,
/// which systemd runs on by itself. Callers pass their command's limit as
/// the session applies it (`session::effective`), less any time the command
/// spends before the unit starts.
pub fn as_saleor(src: &Source, unit: &str, command: &str, limit: std::time::Duration) -> String {
    let rel = src.dir();
    let max = limit.as_secs().max(1);
    format!(
        "systemd-run --quiet --wait --collect --pipe --unit {unit} -p RuntimeMaxSec={max} -p User=saleor -p Group=saleor -p EnvironmentFile={ENV} -p EnvironmentFile={RSA_ENV} \
         -p WorkingDirectory={rel}/src -p Environment=PYTHONUNBUFFERED=1 -p Environment=SSL_CERT_DIR={SSL_CERT_DIR} {rel}/venv/bin/{command}"
    )
}

/// Django's migrate with a PostgreSQL advisory lock held on the same connection.
const MIGRATE_PY: &str = "import os, django; os.environ.setdefault(\"DJANGO_SETTINGS_MODULE\", \"saleor.settings\"); django.setup(); \
from django.db import connection; from django.core.management import call_command; \
connection.cursor().execute(\"SELECT pg_advisory_lock(5316801)\"); print(\"rigger: migration lock taken\", flush=True); \
call_command(\"migrate\", interactive=False)";

/// How long `manage.py migrate` may run: it waits up to 30 min for another
/// host's migration (the lock below), and a fresh database's migration took
/// ~13 min on a loaded machine here; a large shop's may take longer
/// (`RIGGER_COMMAND_TIMEOUT` raises it).
pub const MIGRATE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// How long a migrate waits for another host's (the lock file, before its unit starts).
const MIGRATE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// `manage.py migrate` once per release, on `s` (the first Saleor host).
pub async fn migrate_once(s: &HostSession, src: &Source, events: &Events) -> Result<()> {
    let rel = src.dir();
    let marker = format!("{rel}/.migrated");
    if s.sudo(&format!("test -f {marker}"), None).await?.ok() {
        return Ok(());
    }
    let subject = format!("saleor {}", s.name);
    let started = Instant::now();
    events.started(&subject, &format!("manage.py migrate for release {} (once, under a lock; minutes on a fresh database)", src.release));
    let log = format!("/var/log/saleor/migrate-{}.log", src.release);
    // The unit may run for what the session's limit leaves after the lock wait.
    let unit_limit = effective(MIGRATE_LIMIT).saturating_sub(MIGRATE_LOCK_WAIT);
    let script = format!(
        "mkdir -p /var/log/saleor\nflock -w {} /run/saleor-migrate.lock {} > {log} 2>&1\nrc=$?\nif [ $rc -ne 0 ]; then tail -n 25 {log}; exit $rc; fi\ntouch {marker}\n",
        MIGRATE_LOCK_WAIT.as_secs(),
        as_saleor(src, &format!("saleor-migrate-{}", src.release), &format!("python -c {}", sh_quote(MIGRATE_PY)), unit_limit)
    );
    let out = s.within(MIGRATE_LIMIT).sudo(&script, None).await?;
    if !out.ok() {
        bail!(
            "{}: manage.py migrate of release {} failed — the rollout stops here and the running release keeps serving (full log: {log}):\n{}",
            s.name,
            src.release,
            indent(out.stdout.trim())
        );
    }
    events.finished(&subject, &format!("release {} migrated", src.release), started);
    Ok(())
}

/// `curl` POSTing the shop query to `url`; prints the HTTP status then the body.
pub fn post_shop(url: &str) -> String {
    format!("curl -s -m 10 -X POST -H 'Content-Type: application/json' --data {} -w '\\n%{{http_code}}' {}", sh_quote(SHOP_QUERY), sh_quote(url))
}

/// Whether a `post_shop` output is a 200 with the shop in it.
pub fn shop_answered(out: &str) -> Result<(), String> {
    let (body, code) = out.trim().rsplit_once('\n').unwrap_or(("", out.trim()));
    if code == "200" && body.contains("\"shop\"") && !body.contains("\"errors\"") {
        Ok(())
    } else {
        Err(format!("HTTP {code}: {}", body.chars().take(200).collect::<String>()))
    }
}

/// The API on one host answers the shop query.
pub async fn api_gate(s: &HostSession, port: u64, limit: Duration) -> Result<()> {
    wait_for(&format!("{}: Saleor API answers POST {{ shop {{ name }} }} on :{port}/graphql/", s.name), limit, || async {
        let out = s.sudo(&post_shop(&format!("http://127.0.0.1:{port}/graphql/")), None).await?;
        Ok(shop_answered(&out.stdout))
    })
    .await
}

/// Django's cache (Redis, over TLS when it is on) stores and returns a value
/// in Saleor's own settings.
pub async fn cache_gate(s: &HostSession, src: &Source) -> Result<()> {
    let py = "import os, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'saleor.settings'); django.setup(); \
              from django.core.cache import cache; cache.set('rigger-gate', 'stored', 30); print('cache', cache.get('rigger-gate'))";
    let unit = format!("saleor-cache-gate-{}", std::process::id());
    let out = s.sudo(&format!("{} 2>&1", as_saleor(src, &unit, &format!("python -c {}", sh_quote(py)), effective(COMMAND_LIMIT))), None).await?;
    if !(out.ok() && out.stdout.contains("cache stored")) {
        bail!("{}: Saleor's cache does not store through Redis: {}", s.name, out.stdout.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
    }
    Ok(())
}

/// The worker takes a real Saleor task from the broker and completes it.
pub async fn worker_gate(s: &HostSession, src: &Source) -> Result<()> {
    let py = "import os; from celery import Celery; \
              app = Celery(broker=os.environ['CELERY_BROKER_URL'], backend=os.environ['CELERY_RESULT_BACKEND']); \
              r = app.send_task('saleor.core.tasks.delete_files_from_storage_task', args=[[]]); \
              r.get(timeout=20); print('completed', r.id)";
    let unit = format!("saleor-worker-gate-{}", std::process::id());
    wait_for(&format!("{}: the Celery worker completes a task", s.name), Duration::from_secs(120), || async {
        let out = s.sudo(&format!("{} 2>&1", as_saleor(src, &unit, &format!("python -c {}", sh_quote(py)), effective(COMMAND_LIMIT))), None).await?;
        Ok(if out.ok() && out.stdout.contains("completed") { Ok(()) } else { Err(out.stdout.lines().last().unwrap_or_default().to_string()) })
    })
    .await
}

/// Set `server`'s state in the `saleor_api` backend on every HAProxy host
/// through the admin socket: `drain` before its API restarts (no new requests
/// go there, running ones finish), `ready` once it answers again.
async fn lb_server_state(run: &RoleRun<'_>, server: &str, state: &str) -> Result<()> {
    let command = format!("set server saleor_api/{server} state {state}");
    let py = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock'); s.sendall(sys.argv[1].encode() + b'\\n'); print(s.recv(4096).decode().strip())";
    for lb in run.plan.hosts_with_role(haproxy::NAME) {
        let out = run.session(&lb.name)?.sudo(&format!("python3 -c {} {}", sh_quote(py), sh_quote(&command)), None).await?;
        if !out.ok() || !out.stdout.trim().is_empty() {
            bail!("{}: HAProxy refused `{command}`: {}{}", lb.name, out.stdout.trim(), out.stderr.trim());
        }
    }
    Ok(())
}

/// The HAProxy backend `saleor_api` reports `server` UP on every HAProxy host.
async fn lb_sees(run: &RoleRun<'_>, server: &str) -> Result<()> {
    let port = run.plan.int_setting(haproxy::NAME, "stats_port");
    let password = run.secrets.get("haproxy_stats_password").cloned().unwrap_or_default();
    for lb in run.plan.hosts_with_role(haproxy::NAME) {
        let s = run.session(&lb.name)?;
        wait_for(&format!("{}: HAProxy takes {server} back into saleor_api", lb.name), Duration::from_secs(60), || async {
            let list = super::haproxy::servers(s, port, &password).await?;
            Ok(match list.iter().find(|x| x.backend == "saleor_api" && x.server == server) {
                Some(x) if x.status.starts_with("UP") => Ok(()),
                Some(x) => Err(format!("status {}", x.status)),
                None => Err("not in the stats".to_string()),
            })
        })
        .await?;
    }
    Ok(())
}

fn api_port(plan: &Plan) -> u64 {
    plan.int_setting(saleor::NAME, "api_port")
}

/// The source-mode bring-up: database, wheelhouse, releases, migrate, rolling restarts, gates.
pub async fn converge(run: &RoleRun<'_>, src: &Source) -> Result<()> {
    let plan = run.plan;
    let db = plan.str_setting(saleor::NAME, "database");
    database::ensure(run, &db, &db, run.secrets.get("saleor_db_password").map(String::as_str).unwrap_or_default()).await?;
    let first: &Host = run.hosts.first().ok_or_else(|| anyhow!("no saleor host"))?;
    // Is the release on every host already? Then no wheelhouse is needed at all.
    let mut lacking = Vec::new();
    for h in &run.hosts {
        if !run.session(&h.name)?.sudo(&format!("test -f {}/.installed", src.dir()), None).await?.ok() {
            lacking.push(*h);
        }
    }
    if !lacking.is_empty() {
        let probe = run.session(&lacking[0].name)?.sudo("python3 -c 'import platform; print(platform.python_version())'", None).await?;
        let host_python = probe.stdout.trim().to_string();
        if !probe.ok() || host_python.is_empty() {
            bail!("{}: no python3 on the host ({})", lacking[0].name, probe.stderr.trim());
        }
        let wh = wheelhouse(&src.requirements, &host_python, run.events).await?;
        // Saleor's distro libraries come from the control host like its wheels:
        // the hosts need no package mirror (air-gapped clusters, simulated clouds).
        let debs = library_debs(run.events).await?;
        let results = futures::future::join_all(lacking.iter().map(|h| {
            let (wh, debs) = (&wh, &debs);
            async move { install(run.session(&h.name)?, src, wh, debs, run.events).await }
        }))
        .await;
        let errors: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
    }
    let dashboard = super::saleor_dashboard::dashboard(plan, &api_url(plan))?;
    if let Some(d) = &dashboard {
        let mut missing = Vec::new();
        for h in &run.hosts {
            if !run.session(&h.name)?.sudo(&format!("test -f {}/index.html", d.root()), None).await?.ok() {
                missing.push(*h);
            }
        }
        if !missing.is_empty() {
            let built = super::saleor_dashboard::build(d, run.events).await?;
            for h in missing {
                super::saleor_dashboard::push(run.session(&h.name)?, d, &built, run.events).await?;
            }
        }
    }
    migrate_once(run.session(&first.name)?, src, run.events).await?;
    // One host at a time, each answering (and back in HAProxy) before the next goes.
    let port = api_port(plan);
    let several = run.hosts.len() > 1;
    for h in &run.hosts {
        let s = run.session(&h.name)?;
        let ch = run.changes_of(&h.name);
        let bounced = ch.restart.iter().chain(&ch.start).any(|u| u == "saleor-api");
        // A running API leaves HAProxy's rotation before it restarts, so no request meets it going down.
        let drain = several && ch.restart.iter().any(|u| u == "saleor-api");
        if bounced {
            run.events.progress(&format!("saleor {}", h.name), format!("{} release {} (one host at a time)", if ch.start.is_empty() { "restarting into" } else { "starting" }, src.release));
        }
        if drain {
            lb_server_state(run, &h.name, "drain").await?;
        }
        run.plain_service_changes(h, s).await?;
        api_gate(s, port, Duration::from_secs(180)).await.map_err(|e| anyhow!("{e:#} (see `journalctl -u saleor-api` on {})", h.name))?;
        if drain {
            lb_server_state(run, &h.name, "ready").await?;
        }
        if bounced && several {
            lb_sees(run, &h.name).await?;
        }
    }
    gate(run, src).await
}

/// Every API host answers, the load balancer answers, the worker completes a task.
pub async fn gate(run: &RoleRun<'_>, src: &Source) -> Result<()> {
    let port = api_port(run.plan);
    run.each(|_, s| async move { api_gate(s, port, Duration::from_secs(120)).await }).await?;
    let first = run.session(&run.hosts.first().ok_or_else(|| anyhow!("no saleor host"))?.name)?;
    if let Some(lb) = super::endpoints::lb_address(run.plan) {
        let http = run.plan.int_setting(haproxy::NAME, "http_port");
        let url = format!("http://{lb}:{http}/graphql/");
        wait_for(&format!("Saleor answers POST {{ shop {{ name }} }} through HAProxy at {url}"), Duration::from_secs(60), || async {
            let out = first.sudo(&post_shop(&url), None).await?;
            Ok(shop_answered(&out.stdout))
        })
        .await?;
    }
    worker_gate(first, src).await?;
    cache_gate(first, src).await?;
    if let Some(d) = super::saleor_dashboard::dashboard(run.plan, &api_url(run.plan))? {
        super::saleor_dashboard::gate(run, first, &d).await?;
    }
    Ok(())
}

/// The API's public URL, as browsers (the dashboard, the Storefront) reach it.
pub fn api_url(plan: &Plan) -> String {
    format!("{}/graphql/", super::saleor::public_url(plan).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_default_beside_the_tarball() {
        assert_eq!(default_requirements(Path::new("/x/saleor-3.21.69.tar.gz")), PathBuf::from("/x/saleor-3.21.69-requirements.txt"));
        assert_eq!(default_requirements(Path::new("/x/saleor")), PathBuf::from("/x/saleor-requirements.txt"));
    }

    fn plan(dir: &Path, extra: &str) -> Plan {
        std::fs::write(dir.join("saleor-1.0.tar.gz"), b"not really a tarball").unwrap();
        std::fs::write(dir.join("saleor-1.0-requirements.txt"), "django==5.2\n").unwrap();
        let text = format!(
            "version: 1\nproject: t\nprovider: {{ kind: local }}\nnetwork:\n  name: main\n  subnets:\n    - {{ name: app, cidr: 10.9.0.0/24 }}\n\
             hosts:\n  - {{ name: pg, count: 3, roles: [etcd, patroni], ip: 10.9.0.21 }}\n  - {{ name: lb, roles: [haproxy, redis], ip: 10.9.0.11 }}\n\
             \x20 - {{ name: saleor, count: 2, roles: [saleor], ip: 10.9.0.31 }}\nservices:\n  saleor: {{ source: saleor-1.0.tar.gz{extra} }}\n"
        );
        crate::plan::load_str(&dir.join("plan.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn source_mode_units_name_the_release_and_beat_runs_once() {
        let d = tempfile::tempdir().unwrap();
        let p = plan(d.path(), "");
        let src = source(&p).unwrap().expect("source mode");
        assert_eq!(src.requirements, d.path().join("saleor-1.0-requirements.txt"));
        // What an apply generates (the CA and host certificates too), then known values to look for.
        let mut state = crate::state::State::new("t", "local");
        crate::commands::ensure_generated(&mut state, &p).unwrap();
        let mut secrets: BTreeMap<String, String> = state.secrets;
        for (k, v) in [("saleor_secret_key", "sk123456"), ("saleor_db_password", "db123456"), ("redis_password", "rp123456"), ("saleor_rsa_private_key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")] {
            secrets.insert(k.to_string(), v.to_string());
        }
        let r = crate::render::Renderer::new().unwrap();
        let one = crate::hosts::roles::desired(&p, p.host("saleor-1").unwrap(), &secrets, &r).unwrap();
        let two = crate::hosts::roles::desired(&p, p.host("saleor-2").unwrap(), &secrets, &r).unwrap();
        let get = |d: &crate::hosts::ops::HostDesired, path: &str| d.files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("no {path}")).clone();
        let api = get(&one, "/etc/systemd/system/saleor-api.service").content;
        assert!(api.contains(&format!("ExecStart={}/venv/bin/uvicorn saleor.asgi:application", src.dir())), "{api}");
        assert!(api.contains(&format!("WorkingDirectory={}/src", src.dir())) && api.contains("User=saleor"), "{api}");
        assert!(get(&one, "/etc/systemd/system/saleor-worker.service").content.contains("--beat"));
        assert!(!get(&two, "/etc/systemd/system/saleor-worker.service").content.contains("--beat"));
        let rsa = get(&one, RSA_ENV);
        assert_eq!(rsa.mode, 0o600);
        assert!(rsa.content.contains("RSA_PRIVATE_KEY=\"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n\""), "{}", rsa.content);
        let env = get(&one, ENV).content;
        assert!(env.contains("PLAYGROUND_ENABLED=False\n") && env.contains("CELERY_RESULT_BACKEND=rediss://:rp123456@10.9.0.11:6379/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/rigger/ca.crt\n"), "{env}");
        assert!(!api.contains("sk123456") && !api.contains("AAAA"));
        // Django's cache takes no CA from its URL: the units trust the project CA through OpenSSL's paths.
        assert!(api.contains("Environment=SSL_CERT_DIR=/etc/ssl/certs:/etc/rigger/certs") && api.contains("ExecStartPre=+/usr/bin/openssl rehash /etc/rigger/certs"), "{api}");
        assert_eq!(get(&one, "/etc/rigger/certs/rigger-ca.pem").content, secrets["tls_ca_cert"]);
        // Local machines have no mirror: libmagic comes as .debs, not from apt.
        // (Other roles' packages, such as the firewall's nftables, may sit beside it.)
        assert!(one.packages.iter().any(|p| p == "python3-venv") && !one.packages.iter().any(|p| p.starts_with("libmagic")), "{:?}", one.packages);
        assert!(one.services.iter().all(|s| s.name != "saleor-dashboard"));

        // A dashboard source adds its nginx (checked by nginx -t) and unit.
        std::fs::write(d.path().join("dashboard.tar.gz"), b"x").unwrap();
        let p = plan(d.path(), ", dashboard_source: dashboard.tar.gz");
        let one = crate::hosts::roles::desired(&p, p.host("saleor-1").unwrap(), &secrets, &r).unwrap();
        let conf = get(&one, super::super::saleor_dashboard::NGINX_CONF);
        assert_eq!(conf.validate.as_ref().unwrap().command, "nginx -t -q -c {}");
        assert!(conf.content.contains("listen 9000;") && conf.content.contains("root /opt/saleor/dashboard/"), "{}", conf.content);
        assert!(one.services.iter().any(|s| s.name == "saleor-dashboard"));
    }

    #[test]
    fn a_missing_source_says_which_setting() {
        let d = tempfile::tempdir().unwrap();
        let mut p = plan(d.path(), "");
        std::fs::remove_file(d.path().join("saleor-1.0-requirements.txt")).unwrap();
        let e = source(&p).unwrap_err().to_string();
        assert!(e.contains("services.saleor.requirements"), "{e}");
        p.dir = PathBuf::from("/nonexistent");
        let e = source(&p).unwrap_err().to_string();
        assert!(e.contains("services.saleor.source") && e.contains("does not exist"), "{e}");
    }

    #[test]
    fn shop_answers_are_recognised() {
        assert!(shop_answered("{\"data\":{\"shop\":{\"name\":\"Saleor e-commerce\"}}}\n200").is_ok());
        assert!(shop_answered("\n405").is_err());
        assert!(shop_answered("{\"errors\":[{\"message\":\"x\"}],\"data\":{\"shop\":null}}\n200").is_err());
    }
}
