//! Stack 1 on the Yandex provider, end to end: `plans/yandex-saleor-ha.yaml`
//! itself (only its project, subnet, endpoint, key file and the sources'
//! folder changed) applied against `rigger sim yandex --machines local`, where
//! every instance is a real local machine at its private address and the
//! load balancer also at its public one. rigger reaches the private hosts only
//! through the bastion (the lb), builds Saleor's wheelhouse, the dashboard and
//! the Storefront on this (control) host and pushes them; the hosts download
//! nothing. Then, through the lb's public address only:
//!
//! - the API answers `{ shop { name } }` on :80 `/graphql/`;
//! - the dashboard's index on :9000 names the public API URL (rigger took the
//!   address the cloud gave the lb: the plan sets no `public_url`);
//! - the Storefront renders the product listing on :80;
//! - a no-change plan is empty; destroy leaves nothing in the cloud or on the host.
//!
//! Needs root (machines), ../shared/apps/ and the package registries from the
//! control host, like saleor_stack. Runs the real migration (not a dump).

mod common;

use common::ysim::{MachineCleanup, SimProcess};
use common::{OutputText, RIGGER};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn apps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/apps")
}

/// The repository's plan, pointed at this test's simulator, subnet and sources.
fn plan_text(sim: &SimProcess, project: &str, net: &str) -> String {
    let original = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/yandex-saleor-ha.yaml")).expect("the plan");
    let swaps = [
        ("project: saleor-ha\n".to_string(), format!("project: {project}\n")),
        ("  # endpoint: http://127.0.0.1:8930 ".to_string(), format!("  endpoint: {} #", sim.endpoint)),
        ("  # service_account_key_file: ../sim-sa-key.json ".to_string(), format!("  service_account_key_file: {} #", sim.key_file.display())),
        ("../../shared/apps/".to_string(), format!("{}/", apps().display())),
        ("10.20.0.".to_string(), format!("{net}.")),
    ];
    let mut text = original;
    for (from, to) in swaps {
        assert!(text.contains(&from), "plans/yandex-saleor-ha.yaml no longer has {from:?}");
        text = text.replace(&from, &to);
    }
    text
}

fn rigger(plan: &Path, args: &[&str]) -> std::process::Output {
    Command::new(RIGGER).args(args).arg(plan).env("NO_COLOR", "1").output().expect("run rigger")
}

/// `curl` from this host: (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-m", "30", "-w", "\n%{http_code}"]).args(args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn yandex_saleor_plan_on_simulated_cloud_with_local_machines() {
    if !common::machines() {
        return;
    }
    assert!(apps().join("saleor-3.21.69.tar.gz").is_file(), "Saleor's source is expected in {} (shared/ beside the checkout)", apps().display());
    let dir = tempfile::Builder::new().prefix("rigger-ysaleor-").tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).expect("mkdir");
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(keys.join("rigger_ed25519")).output().expect("ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", out.stderr_text());
    let (_cidr, net) = common::free_subnet();
    let mut cleanup = MachineCleanup::default();
    // Its own seed: instance and network ids (machine and bridge names) differ from yandex_e2e's.
    let sim = SimProcess::start(dir.path(), &["--machines", "local", "--seed", "29"]);
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, plan_text(&sim, "t-ysaleor", &net)).expect("write the plan");

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let out = rigger(&plan, &["apply", "--auto-approve"]);
        cleanup.record(&sim.inventory());
        assert!(out.status.success(), "apply of the Yandex Saleor plan:\n{}", out.text());
        // What each step took, for the README (nothing is asserted about times).
        eprintln!("--- the first apply, as printed\n{}", out.text());

        let host = rigger(&plan, &["inventory", "--host", "lb"]);
        assert!(host.status.success(), "inventory --host lb:\n{}", host.text());
        let vars: Value = serde_json::from_slice(&host.stdout).unwrap_or_else(|e| panic!("inventory --host lb is not JSON ({e}):\n{}", host.text()));
        let public = vars["public_ip"].as_str().unwrap_or_else(|| panic!("the lb has no public address: {vars}")).to_string();
        assert!(!public.starts_with(&format!("{net}.")), "the lb's public address is its private one: {public}");

        // The API, through the lb's public address.
        let (code, body) = curl(&["-X", "POST", "-H", "Content-Type: application/json", "--data", r#"{"query":"{ shop { name } }"}"#, &format!("http://{public}/graphql/")]);
        let shop: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(code == 200 && shop["data"]["shop"]["name"].is_string(), "the shop through http://{public}/graphql/: {code} {body}");

        // The dashboard was built for the public API URL, which the plan never named.
        let (code, index) = curl(&[&format!("http://{public}:9000/")]);
        assert_eq!(code, 200, "the dashboard through :9000: {index}");
        assert!(index.contains(&format!("http://{public}/graphql/")), "the dashboard's index does not name the public API URL http://{public}/graphql/:\n{index}");

        // The Storefront's product listing, rendered through the lb.
        let (code, page) = curl(&["-L", &format!("http://{public}/default-channel/products")]);
        assert_eq!(code, 200, "the Storefront's listing through :80: {}", page.chars().take(2000).collect::<String>());
        assert!(page.contains("<html"), "the listing is not a page: {}", page.chars().take(2000).collect::<String>());

        let out = rigger(&plan, &["plan", "--detailed-exitcode"]);
        assert_eq!(out.code(), 0, "a no-change plan after the apply:\n{}", out.text());

        let out = rigger(&plan, &["destroy", "--auto-approve"]);
        assert!(out.status.success(), "destroy:\n{}", out.text());
        let inventory = sim.inventory();
        for kind in ["instances", "networks", "subnets", "security_groups"] {
            assert_eq!(inventory[kind].as_array().map(Vec::len), Some(0), "{kind} left in the cloud after destroy: {}", inventory[kind]);
        }
        assert_eq!(inventory["disks"], 0, "boot disks left after destroy");
        assert_eq!(cleanup.leftovers_after(std::time::Duration::from_secs(120)), Vec::<String>::new(), "left on the host after destroy");
    }));
    cleanup.finish(sim, || drop(rigger(&plan, &["destroy", "--auto-approve"])), result);
}
