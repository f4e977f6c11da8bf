//! The Saleor dashboard in source mode: a static single-page app, built on
//! the control host with `vite build` by rigger's own Node toolchain
//! (node_toolchain.rs: only the npm registry is needed there, never a Node
//! install, and nothing on the hosts), its API URL baked in at build time,
//! cached by content hash (source + API URL + Node version) under the
//! artifacts folder, pushed to each
//! Saleor host only when missing and served there by a dedicated nginx
//! (`saleor-dashboard`, its own config, on `dashboard_port`); HAProxy's :9000
//! frontend balances over them.
//! Gate: the index through the load balancer's :9000 names the API URL.

use super::saleor_source::artifacts_dir;
use crate::hosts::run::{indent, wait_for, RoleRun};
use rigger_events::Events;
use crate::plan::load::resolve_path;
use crate::plan::model::Plan;
use crate::hosts::remote::session::{HostSession, UPLOAD_LIMIT};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use super::saleor;

pub const NGINX_CONF: &str = "/etc/saleor/dashboard-nginx.conf";
pub const HOST_DIR: &str = "/opt/saleor/dashboard";

/// The dashboard's source and the build it makes.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub source: PathBuf,
    pub api_url: String,
    /// The Node release that builds it (`services.saleor.node_version`).
    pub node_version: String,
    /// 12 hex digits of the hash of the source, the API URL and the Node version.
    pub build: String,
}

impl Dashboard {
    /// Where this build's files live on a host.
    pub fn root(&self) -> String {
        format!("{HOST_DIR}/{}", self.build)
    }
}

/// `services.saleor.dashboard_source` (a tarball of saleor-dashboard), or `None`.
pub fn dashboard(plan: &Plan, api_url: &str) -> Result<Option<Dashboard>> {
    let Some(given) = plan.setting(saleor::NAME, "dashboard_source").and_then(Value::as_str) else { return Ok(None) };
    let source = resolve_path(&plan.dir, given);
    if !source.is_file() {
        bail!("services.saleor.dashboard_source: {} is not a file — point it at the saleor-dashboard source tarball (.tar.gz), relative to the plan file", source.display());
    }
    let node_version = plan.str_setting(saleor::NAME, "node_version");
    let mut h = Sha256::new();
    h.update(super::saleor_source::file_hash(&source)?.as_bytes());
    h.update(api_url.as_bytes());
    h.update(format!("node-{node_version}").as_bytes());
    Ok(Some(Dashboard { source, api_url: api_url.to_string(), node_version, build: hex::encode(h.finalize())[..12].to_string() }))
}

pub async fn run_step(what: &str, cmd: &mut tokio::process::Command) -> Result<()> {
    let out = cmd.stdin(std::process::Stdio::null()).output().await.with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("{what} failed on the control host:\n{}", indent(&tail.join("\n")));
    }
    Ok(())
}

/// Build (or find in the cache) the dashboard's static files on the control host.
pub async fn build(d: &Dashboard, events: &Events) -> Result<PathBuf> {
    let dir = artifacts_dir().join("saleor-dashboard").join(&d.build);
    let subject = "saleor dashboard";
    if dir.join("index.html").is_file() {
        super::artifact_cache::used_and_pruned(&dir, subject, events);
        return Ok(dir);
    }
    let node = super::node_toolchain::ensure(&d.node_version, events).await?;
    let started = Instant::now();
    events.started(subject, &format!("building on the control host: npm ci + vite build (Node {}) with API_URL={} (cached in {})", d.node_version, d.api_url, dir.display()));
    let work = dir.with_extension(format!("work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    run_step("unpacking the dashboard", tokio::process::Command::new("tar").arg("-xzf").arg(&d.source).arg("-C").arg(&work).arg("--strip-components=1")).await?;
    // Its vite config loads the Sentry plugin, which reports telemetry to
    // Sentry during every build: switched off, nothing leaves but npm's fetches.
    let config = work.join("vite.config.js");
    if let Ok(text) = std::fs::read_to_string(&config) {
        std::fs::write(&config, text.replace("sentryVitePlugin({", "sentryVitePlugin({ telemetry: false,"))?;
    }
    run_step("npm ci", node.command("npm").args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"]).current_dir(&work)).await?;
    run_step(
        "vite build",
        node.command("node")
            .args(["--max-old-space-size=4096", "node_modules/vite/bin/vite.js", "build"])
            .current_dir(&work)
            .env("API_URL", &d.api_url)
            .env("APP_MOUNT_URI", "/")
            .env("STATIC_URL", "/")
            .env("SKIP_SOURCEMAPS", "1"),
    )
    .await?;
    let built = work.join("build/dashboard");
    if !built.join("index.html").is_file() {
        bail!("vite build left no build/dashboard/index.html in {}", work.display());
    }
    if std::fs::rename(&built, &dir).is_err() && !dir.join("index.html").is_file() {
        bail!("cannot move the dashboard build to {}", dir.display());
    }
    let _ = std::fs::remove_dir_all(&work);
    events.finished(subject, &format!("built {}", dir.display()), started);
    super::artifact_cache::used_and_pruned(&dir, subject, events);
    Ok(dir)
}

/// Put the build on a host unless it is there already.
pub async fn push(s: &HostSession, d: &Dashboard, built: &PathBuf, events: &Events) -> Result<()> {
    let root = d.root();
    if s.sudo(&format!("test -f {root}/index.html"), None).await?.ok() {
        return Ok(());
    }
    events.progress(&format!("saleor {}", s.name), format!("uploading dashboard build {}", d.build));
    let mut tar = tokio::process::Command::new("tar").arg("-C").arg(built).args(["-cf", "-", "."]).stdout(std::process::Stdio::piped()).spawn().context("running tar")?;
    let stdout = tar.stdout.take().expect("tar stdout");
    let out = s.within(UPLOAD_LIMIT).sudo_stream(&format!("rm -rf {root}.partial && mkdir -p {root}.partial && tar -xf - -C {root}.partial && chmod -R a+rX {root}.partial && mv {root}.partial {root}"), stdout).await?;
    tar.wait().await?;
    if !out.ok() {
        bail!("{}: unpacking the dashboard failed: {}", s.name, out.stderr.trim());
    }
    Ok(())
}

/// The index through the load balancer's dashboard port names the API URL.
pub async fn gate(run: &RoleRun<'_>, s: &HostSession, d: &Dashboard) -> Result<()> {
    let port = run.plan.int_setting(saleor::NAME, "dashboard_port");
    let Some(lb) = super::endpoints::lb_address(run.plan) else { return Ok(()) };
    let url = format!("http://{lb}:{port}/");
    wait_for(&format!("the dashboard's index through HAProxy at {url} names {}", d.api_url), Duration::from_secs(60), || async {
        let out = s.sudo(&format!("curl -s -m 10 -w '\\n%{{http_code}}' {url}"), None).await?;
        let (body, code) = out.stdout.trim().rsplit_once('\n').unwrap_or(("", out.stdout.trim()));
        Ok(if code == "200" && body.contains(&d.api_url) { Ok(()) } else { Err(format!("HTTP {code}, API URL {}found", if body.contains(&d.api_url) { "" } else { "not " })) })
    })
    .await
}
