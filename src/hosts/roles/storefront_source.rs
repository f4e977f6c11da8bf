//! storefront in source mode: the plan names the Storefront's source
//! (`services.storefront.source`, a tarball or a folder) and rigger builds it
//! on the control host with its own Node toolchain (node_toolchain.rs), after
//! the Saleor API answers — codegen reads the API's schema and `next build`
//! pre-renders pages by querying it. The hosts need no Node, no registry and
//! no network: they get the `standalone` build and the `node` binary.
//!
//! - `next/font/google` would download Inter from Google Fonts during the
//!   build. rigger replaces it with `next/font/local` and the same font (Inter,
//!   variable weight, latin) from the npm registry's `@fontsource-variable/inter`
//!   (sha512-checked like the toolchain): a real font served by the Storefront
//!   itself, unlike Next's font mocking (a test hook that serves placeholder bytes).
//! - A build is named by the hash of (source, API URL, public URL, Node
//!   version, font): `/opt/storefront/builds/<build>`, cached on the control
//!   host under `artifacts/storefront/<build>`. The unit names the build, so a
//!   new build restarts exactly the hosts running another one; a host that has
//!   the build gets nothing.
//! - The Storefront's routes start at the channel `default-channel` (its `/`
//!   redirects there, and pre-rendering lists its products): a fresh Saleor has
//!   no channel, so the role creates that one (USD, US, active) if it is missing.

use super::node_toolchain::{self, Toolchain};
use super::saleor_source::{self, artifacts_dir};
use crate::hosts::run::{indent, wait_for, RoleRun};
use rigger_events::Events;
use crate::plan::load::resolve_path;
use crate::plan::model::Plan;
use crate::hosts::remote::session::{sh_quote, HostSession, UPLOAD_LIMIT};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use super::{haproxy, saleor, storefront};

pub const HOME: &str = "/opt/storefront";
/// The channel the Storefront's code redirects to and pre-renders.
pub const CHANNEL: &str = "default-channel";
/// The page the gates render: the channel's product listing.
pub fn listing_path() -> String {
    format!("/{CHANNEL}/products")
}
/// Inter, the font the Storefront's layout asks Google for, as an npm package.
const FONT_PACKAGE: (&str, &str) = ("@fontsource-variable/inter", "5.3.0");
const FONT_FILE: &str = "files/inter-latin-wght-normal.woff2";
/// Any one build step on the control host ends within this.
const STEP_LIMIT: Duration = Duration::from_secs(45 * 60);

/// The Storefront's source and the build it makes.
#[derive(Debug, Clone)]
pub struct Build {
    pub source: PathBuf,
    pub api_url: String,
    pub public_url: String,
    pub node_version: String,
    /// 12 hex digits of the hash of everything the build depends on.
    pub build: String,
}

impl Build {
    pub fn dir(&self) -> String {
        format!("{HOME}/builds/{}", self.build)
    }
    /// The Node runtime on the hosts, one per version.
    pub fn node(&self) -> String {
        format!("{HOME}/node/{}/node", self.node_version)
    }
}

/// `services.storefront.source`, resolved and hashed; `None` in the host-build mode.
pub fn build_of(plan: &Plan) -> Result<Option<Build>> {
    let Some(given) = plan.setting(storefront::NAME, "source").and_then(Value::as_str) else { return Ok(None) };
    let source = resolve_path(&plan.dir, given);
    if !source.exists() {
        bail!("services.storefront.source: {} does not exist — point it at the Storefront's source (a .tar.gz or a folder), relative to the plan file", source.display());
    }
    let ctx = super::storefront::context(plan)?;
    let api_url = ctx["api_url"].as_str().unwrap_or_default().to_string();
    let public_url = ctx["public_url"].as_str().unwrap_or_default().to_string();
    let node_version = plan.str_setting(storefront::NAME, "node_version");
    let mut h = Sha256::new();
    for part in [saleor_source::file_hash(&source)?.as_str(), &api_url, &public_url, &node_version, FONT_PACKAGE.0, FONT_PACKAGE.1, CHANNEL] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    Ok(Some(Build { source, api_url, public_url, node_version, build: hex::encode(h.finalize())[..12].to_string() }))
}

/// Run a build step on the control host, bounded; its last lines on failure.
async fn step(what: &str, cmd: &mut tokio::process::Command) -> Result<()> {
    let out = tokio::time::timeout(STEP_LIMIT, cmd.stdin(std::process::Stdio::null()).kill_on_drop(true).output())
        .await
        .map_err(|_| anyhow!("{what} did not finish within {} min on the control host", STEP_LIMIT.as_secs() / 60))?
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = text.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("{what} failed on the control host:\n{}", indent(&tail.join("\n")));
    }
    Ok(())
}

/// Swap the layout's Google font for the same font as a local file.
pub fn use_local_font(work: &Path, font: &Path) -> Result<()> {
    let layout = work.join("src/app/layout.tsx");
    let text = std::fs::read_to_string(&layout).with_context(|| format!("reading {}", layout.display()))?;
    let (google_import, google_call) = ("import { Inter } from \"next/font/google\";", "Inter({ subsets: [\"latin\"] })");
    if text.contains(google_import) && text.contains(google_call) {
        let local = text
            .replace(google_import, "import localFont from \"next/font/local\";")
            .replace(google_call, "localFont({ src: \"./inter-latin-wght-normal.woff2\", display: \"swap\" })");
        std::fs::write(&layout, local)?;
        std::fs::copy(font, work.join("src/app/inter-latin-wght-normal.woff2")).context("copying the font")?;
    }
    // Whatever else asks Google would make the build go outside: say where.
    let out = std::process::Command::new("grep").args(["-rl", "next/font/google", "src"]).current_dir(work).output().context("running grep")?;
    let left = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !left.is_empty() {
        bail!("the Storefront's source loads fonts from Google in {left} — rigger replaces only the stock layout's Inter; use next/font/local there");
    }
    Ok(())
}

/// Build (or find in the cache) the standalone Storefront on the control host.
pub async fn build(b: &Build, node: &Toolchain, events: &Events) -> Result<PathBuf> {
    let dir = artifacts_dir().join("storefront").join(&b.build);
    let subject = "storefront build";
    if dir.join("server.js").is_file() {
        super::artifact_cache::used_and_pruned(&dir, subject, events);
        return Ok(dir);
    }
    let started = Instant::now();
    let font_dir = artifacts_dir().join("fonts").join(format!("{}-{}", FONT_PACKAGE.0.replace(['@', '/'], "_"), FONT_PACKAGE.1));
    if !font_dir.join(FONT_FILE).is_file() {
        node_toolchain::fetch_package(&node_toolchain::client()?, &node_toolchain::registry(), FONT_PACKAGE.0, FONT_PACKAGE.1, &font_dir).await?;
    }
    events.started(subject, &format!("building on the control host: pnpm install + codegen + next build (Node {}) against {} (cached in {})", b.node_version, b.api_url, dir.display()));
    let work = dir.with_extension(format!("work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    if b.source.is_dir() {
        step("copying the Storefront's source", tokio::process::Command::new("cp").arg("-a").arg(b.source.join(".")).arg(&work)).await?;
        for stale in ["node_modules", ".next"] {
            let _ = std::fs::remove_dir_all(work.join(stale));
        }
    } else {
        step("unpacking the Storefront's source", tokio::process::Command::new("tar").arg("-xzf").arg(&b.source).arg("-C").arg(&work).arg("--strip-components=1")).await?;
    }
    use_local_font(&work, &font_dir.join(FONT_FILE))?;
    // pnpm's store beside the other artifacts: later builds link from it.
    let store = artifacts_dir().join("pnpm-store");
    // --ignore-scripts: no lifecycle script (husky's git hooks, sharp's
    // checks) runs; sharp's and Next's native parts are prebuilt packages.
    step(
        "pnpm install",
        node.command("pnpm").args(["install", "--frozen-lockfile", "--ignore-scripts", "--reporter=append-only", "--store-dir"]).arg(&store).current_dir(&work).env("CI", "1"),
    )
    .await?;
    // `build` runs `generate` (GraphQL codegen from the live API's schema) first, then `next build`.
    step(
        "pnpm run build (codegen + next build)",
        node.command("pnpm")
            // ESLint is the Storefront's own development check, not a deploy step.
            .args(["run", "build", "--no-lint"])
            .current_dir(&work)
            .env("CI", "1")
            .env("NEXT_OUTPUT", "standalone")
            .env("NEXT_PUBLIC_SALEOR_API_URL", &b.api_url)
            .env("NEXT_PUBLIC_STOREFRONT_URL", &b.public_url)
            .env("NODE_OPTIONS", "--max-old-space-size=4096"),
    )
    .await?;
    let standalone = work.join(".next/standalone");
    if !standalone.join("server.js").is_file() {
        bail!("next build left no .next/standalone/server.js in {}", work.display());
    }
    // The standalone server serves these but next build leaves them outside it.
    step("copying the static files", tokio::process::Command::new("cp").arg("-a").arg(work.join(".next/static")).arg(standalone.join(".next/static"))).await?;
    if work.join("public").is_dir() {
        step("copying public/", tokio::process::Command::new("cp").arg("-a").arg(work.join("public")).arg(standalone.join("public"))).await?;
    }
    if std::fs::rename(&standalone, &dir).is_err() && !dir.join("server.js").is_file() {
        bail!("cannot move the Storefront build to {}", dir.display());
    }
    let _ = std::fs::remove_dir_all(&work);
    events.finished(subject, &format!("built {}", dir.display()), started);
    super::artifact_cache::used_and_pruned(&dir, subject, events);
    Ok(dir)
}

/// Whether a host has this build and its Node runtime.
pub async fn installed(s: &HostSession, b: &Build) -> Result<bool> {
    Ok(s.sudo(&format!("test -f {}/server.js -a -x {}", b.dir(), b.node()), None).await?.ok())
}

/// Put the Node runtime and the build on a host, each only when missing.
pub async fn push(s: &HostSession, b: &Build, built: &Path, node: &Toolchain, events: &Events) -> Result<()> {
    let subject = format!("storefront {}", s.name);
    let started = Instant::now();
    events.started(&subject, &format!("uploading build {} and Node {}", b.build, b.node_version));
    let user = format!("id -u storefront >/dev/null 2>&1 || useradd --system --home-dir {HOME} --no-create-home --shell /usr/sbin/nologin storefront");
    s.sudo_ok("creating the storefront user", &user).await?;
    let node_dir = Path::new(&b.node()).parent().expect("a folder").to_string_lossy().into_owned();
    if !s.sudo(&format!("test -x {}", b.node()), None).await?.ok() {
        // -h: the toolchain's bin/node is a link to the unpacked binary.
        let mut tar = tokio::process::Command::new("tar").arg("-chf").arg("-").arg("-C").arg(&node.bin).arg("node").stdout(std::process::Stdio::piped()).spawn().context("running tar")?;
        let stdout = tar.stdout.take().expect("tar stdout");
        let out = s.within(UPLOAD_LIMIT).sudo_stream(&format!("rm -rf {node_dir}.partial && mkdir -p {node_dir}.partial && tar -xf - -C {node_dir}.partial && {node_dir}.partial/node --version && rm -rf {node_dir} && mv {node_dir}.partial {node_dir}"), stdout).await?;
        tar.wait().await?;
        if !out.ok() {
            bail!("{}: installing Node {} failed: {}{}", s.name, b.node_version, out.stdout.trim(), out.stderr.trim());
        }
    }
    let dir = b.dir();
    if !s.sudo(&format!("test -f {dir}/server.js"), None).await?.ok() {
        let mut tar = tokio::process::Command::new("tar").arg("-C").arg(built).args(["-cf", "-", "."]).stdout(std::process::Stdio::piped()).spawn().context("running tar")?;
        let stdout = tar.stdout.take().expect("tar stdout");
        // The code stays root's; .next (its page and fetch cache, rewritten on
        // revalidation) belongs to the service user.
        let out = s
            .within(UPLOAD_LIMIT)
            .sudo_stream(
                &format!("rm -rf {dir}.partial && mkdir -p {dir}.partial && tar -xf - -C {dir}.partial && chown -R root:root {dir}.partial && chmod -R a+rX {dir}.partial && chown -R storefront:storefront {dir}.partial/.next && mv {dir}.partial {dir}"),
                stdout,
            )
            .await?;
        tar.wait().await?;
        if !out.ok() {
            bail!("{}: unpacking the Storefront build failed: {}", s.name, out.stderr.trim());
        }
    }
    events.finished(&subject, &format!("build {} in place", b.build), started);
    Ok(())
}

/// The Storefront's channel exists in Saleor (created on the first Saleor host if not).
async fn ensure_channel(run: &RoleRun<'_>) -> Result<()> {
    let Some(src) = saleor_source::source(run.plan)? else { return Ok(()) };
    let first = run.plan.hosts_with_role(saleor::NAME).next().ok_or_else(|| anyhow!("the storefront needs a saleor host"))?;
    let s = run.session(&first.name)?;
    let py = format!(
        "import os, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'saleor.settings'); django.setup(); \
         from saleor.channel.models import Channel; \
         c, made = Channel.objects.get_or_create(slug='{CHANNEL}', defaults=dict(name='Default channel', currency_code='USD', default_country='US', is_active=True)); \
         print('channel', 'created' if made else 'exists', c.slug)"
    );
    let unit = format!("storefront-channel-{}", std::process::id());
    let out = s.sudo(&format!("{} 2>&1", saleor_source::as_saleor(&src, &unit, &format!("python -c {}", sh_quote(&py)), crate::hosts::remote::session::effective(crate::hosts::remote::session::COMMAND_LIMIT))), None).await?;
    if !(out.ok() && out.stdout.contains("channel ")) {
        bail!("{}: making sure Saleor has the channel {CHANNEL}: {}", first.name, out.stdout.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
    }
    if out.stdout.contains("created") {
        run.events.progress(&format!("storefront {}", first.name), format!("created Saleor's channel {CHANNEL} (USD, US)"));
    }
    Ok(())
}

/// The product listing page answers 200 with the Storefront's markup at `url`, asked from `s`.
async fn page_gate(s: &HostSession, what: &str, url: &str, limit: Duration) -> Result<()> {
    wait_for(&format!("{what}: the Storefront renders {url}"), limit, || async {
        let out = s.sudo(&format!("curl -s -m 20 -w '\\n%{{http_code}}' {}", sh_quote(url)), None).await?;
        let (body, code) = out.stdout.trim().rsplit_once('\n').unwrap_or(("", out.stdout.trim()));
        Ok(if code == "200" && body.contains("Product list") { Ok(()) } else { Err(format!("HTTP {code}")) })
    })
    .await
}

pub async fn converge(run: &RoleRun<'_>, b: &Build) -> Result<()> {
    let plan = run.plan;
    let mut lacking = Vec::new();
    for h in &run.hosts {
        if !installed(run.session(&h.name)?, b).await? {
            lacking.push(*h);
        }
    }
    if !lacking.is_empty() {
        ensure_channel(run).await?;
        let node = node_toolchain::ensure(&b.node_version, run.events).await?;
        if !artifacts_dir().join("storefront").join(&b.build).join("server.js").is_file() {
            // The build queries the API from here: it must answer first.
            wait_for(&format!("the Saleor API answers the control host at {} (the Storefront's build queries it)", b.api_url), Duration::from_secs(60), || async {
                let out = tokio::process::Command::new("sh").arg("-c").arg(saleor_source::post_shop(&b.api_url)).output().await.context("running curl")?;
                Ok(saleor_source::shop_answered(&String::from_utf8_lossy(&out.stdout)))
            })
            .await?;
        }
        let built = build(b, &node, run.events).await?;
        for h in &lacking {
            push(run.session(&h.name)?, b, &built, &node, run.events).await?;
        }
    }
    let port = plan.int_setting(storefront::NAME, "port");
    // One host at a time, each rendering the listing before the next goes.
    for h in &run.hosts {
        let s = run.session(&h.name)?;
        run.plain_service_changes(h, s).await?;
        page_gate(s, &h.name, &format!("http://127.0.0.1:{port}{}", listing_path()), Duration::from_secs(120)).await.map_err(|e| anyhow!("{e:#} (see `journalctl -u storefront` on {})", h.name))?;
    }
    if let Some(lb) = super::endpoints::lb_address(plan) {
        let http = plan.int_setting(haproxy::NAME, "http_port");
        let first = run.session(&run.hosts.first().ok_or_else(|| anyhow!("no storefront host"))?.name)?;
        page_gate(first, "through HAProxy", &format!("http://{lb}:{http}{}", listing_path()), Duration::from_secs(60)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_google_font_becomes_a_local_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src/app")).unwrap();
        let layout = "import { Inter } from \"next/font/google\";\nconst inter = Inter({ subsets: [\"latin\"] });\n";
        std::fs::write(d.path().join("src/app/layout.tsx"), layout).unwrap();
        std::fs::write(d.path().join("font.woff2"), b"wOF2").unwrap();
        use_local_font(d.path(), &d.path().join("font.woff2")).unwrap();
        let text = std::fs::read_to_string(d.path().join("src/app/layout.tsx")).unwrap();
        assert!(text.contains("from \"next/font/local\"") && text.contains("localFont({ src: \"./inter-latin-wght-normal.woff2\"") && !text.contains("google"), "{text}");
        assert_eq!(std::fs::read(d.path().join("src/app/inter-latin-wght-normal.woff2")).unwrap(), b"wOF2");
        // Another Google font elsewhere is refused, naming the file.
        std::fs::write(d.path().join("src/app/other.tsx"), "import { Roboto } from \"next/font/google\";\n").unwrap();
        let e = use_local_font(d.path(), &d.path().join("font.woff2")).unwrap_err().to_string();
        assert!(e.contains("src/app/other.tsx"), "{e}");
    }

    #[test]
    fn source_mode_unit_runs_the_build_with_the_shipped_node() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("storefront.tar.gz"), b"not really a tarball").unwrap();
        let text = "version: 1\nproject: t\nprovider: { kind: local }\nnetwork:\n  name: main\n  subnets:\n    - { name: app, cidr: 10.9.0.0/24 }\n\
                    hosts:\n  - { name: lb, roles: [haproxy], ip: 10.9.0.11 }\n  - { name: pg, count: 3, roles: [etcd, patroni], ip: 10.9.0.21 }\n  - { name: api, roles: [saleor, redis], ip: 10.9.0.41 }\n  - { name: shop, roles: [storefront], ip: 10.9.0.31 }\n\
                    services:\n  storefront: { source: storefront.tar.gz }\n";
        let p = crate::plan::load_str(&d.path().join("plan.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
        let b = build_of(&p).unwrap().expect("source mode");
        assert_eq!(b.api_url, "http://10.9.0.11/graphql/");
        assert_eq!(b.node(), format!("/opt/storefront/node/{}/node", node_toolchain::DEFAULT_NODE_VERSION));
        let r = crate::render::Renderer::new().unwrap();
        let mut state = crate::state::State::new("t", "local");
        crate::commands::ensure_generated(&mut state, &p).unwrap();
        let desired = crate::hosts::roles::desired(&p, p.host("shop").unwrap(), &state.secrets, &r).unwrap();
        let unit = desired.files.iter().find(|f| f.path == "/etc/systemd/system/storefront.service").expect("a unit");
        assert!(unit.content.contains(&format!("ExecStart={} {}/server.js", b.node(), b.dir())) && unit.content.contains("User=storefront"), "{}", unit.content);
        let env = desired.files.iter().find(|f| f.path == "/etc/storefront/storefront.env").expect("an env file");
        assert!(env.content.contains("NEXT_PUBLIC_SALEOR_API_URL=http://10.9.0.11/graphql/\n") && env.content.contains("HOSTNAME=0.0.0.0\n"), "{}", env.content);
        // The hosts install nothing from a mirror: Node comes from rigger.
        assert!(!desired.packages.iter().any(|p| p == "nodejs" || p == "npm"), "{:?}", desired.packages);
        // Another API URL is another build.
        let other = crate::plan::load_str(&d.path().join("plan.yaml"), &text.replace("10.9.0.11", "10.9.0.12")).unwrap();
        assert_ne!(build_of(&other).unwrap().unwrap().build, b.build);
    }
}
