//! rigger's own Node toolchain (roles::node_toolchain): node, npm and pnpm
//! from the npm registry, sha512-checked, cached under the artifacts folder,
//! and first on PATH for every build command — never the host's node.
//!
//! The first test needs the npm registry from this host the first time
//! (~45 MB, then cached in /var/lib/rigger/artifacts/node-toolchain); the
//! second needs nothing but loopback: a tampered download is refused.

use rigger_events::Events;
use rigger::hosts::roles::node_toolchain::{self, DEFAULT_NODE_VERSION, NPM_VERSION, PNPM_VERSION};

#[tokio::test]
async fn node_npm_and_pnpm_come_from_the_registry_and_shadow_the_hosts_node() {
    let t = node_toolchain::ensure(DEFAULT_NODE_VERSION, &Events::silent()).await.expect("the toolchain");
    for (tool, want) in [("node", format!("v{DEFAULT_NODE_VERSION}")), ("npm", NPM_VERSION.to_string()), ("pnpm", PNPM_VERSION.to_string())] {
        let out = t.command(tool).arg("--version").output().await.expect(tool);
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{tool} --version");
    }
    // Scripts that say `node` (shebangs, package scripts) get rigger's node.
    let out = t.command("sh").args(["-c", "command -v node; node -p process.version"]).output().await.expect("sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text, format!("{}\nv{DEFAULT_NODE_VERSION}\n", t.node().display()), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(t.node().starts_with(rigger::hosts::roles::saleor_source::artifacts_dir()), "{}", t.node().display());
    // A second call is served from the cache (same folder, nothing re-downloaded is observable as the same bin path).
    let again = node_toolchain::ensure(DEFAULT_NODE_VERSION, &Events::silent()).await.expect("the cached toolchain");
    assert_eq!(again.bin, t.bin);
}

#[tokio::test]
async fn a_download_that_does_not_match_the_registrys_integrity_is_not_unpacked() {
    use axum::{routing::get, Router};
    use base64::Engine;
    use sha2::Digest;
    // A real package tarball (made with tar) whose metadata claims another digest.
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("package")).unwrap();
    std::fs::write(src.path().join("package/package.json"), "{\"name\":\"x\"}").unwrap();
    let tgz = src.path().join("x.tgz");
    assert!(std::process::Command::new("tar").arg("-czf").arg(&tgz).arg("-C").arg(src.path()).arg("package").status().unwrap().success());
    let bytes = std::fs::read(&tgz).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let good = format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&bytes)));
    let bad = format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(b"something else")));
    let (b1, b2) = (base.clone(), base.clone());
    let body = bytes.clone();
    let app = Router::new()
        .route("/good/1.0.0", get(move || async move { axum::Json(serde_json::json!({ "dist": { "tarball": format!("{b1}/x.tgz"), "integrity": good } })) }))
        .route("/bad/1.0.0", get(move || async move { axum::Json(serde_json::json!({ "dist": { "tarball": format!("{b2}/x.tgz"), "integrity": bad } })) }))
        .route("/x.tgz", get(move || async move { body.clone() }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dest = tempfile::tempdir().unwrap();
    let http = node_toolchain::client().unwrap();
    let e = node_toolchain::fetch_package(&http, &base, "bad", "1.0.0", &dest.path().join("bad")).await.unwrap_err().to_string();
    assert!(e.contains("does not match the registry's sha512 integrity"), "{e}");
    assert!(!dest.path().join("bad").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dest.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "a refused download left {leftovers:?}");
    // The same bytes with their true digest are unpacked.
    let n = node_toolchain::fetch_package(&http, &base, "good", "1.0.0", &dest.path().join("good")).await.unwrap();
    assert_eq!(n, bytes.len() as u64);
    assert_eq!(std::fs::read_to_string(dest.path().join("good/package.json")).unwrap(), "{\"name\":\"x\"}");
}
