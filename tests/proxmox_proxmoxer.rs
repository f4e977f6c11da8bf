//! proxmoxer (a third-party Python client) drives the simulator: if it works
//! with rigger's sim, the sim speaks Proxmox and not just rigger's dialect.
//! Skipped only when python3 is missing; proxmoxer itself must be installed
//! (`pip install proxmoxer requests`, as `.ci/run` does).

use rigger_sim::proxmox::{self as sim, ProxmoxSimOptions};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxmoxer_creates_and_deletes_a_container() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 is not installed, so proxmoxer cannot drive the simulator");
        return;
    }
    let mut opts = ProxmoxSimOptions::new("127.0.0.1:0".parse().unwrap());
    opts.op_time_ms = 50;
    opts.auth_fail_delay_ms = 10;
    let handle = sim::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("pve-root-ca.pem");
    std::fs::write(&ca_file, handle.ca_pem.as_deref().unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proxmox_proxmoxer.py");
    let args = [
        script.to_string(),
        "127.0.0.1".to_string(),
        handle.addr.port().to_string(),
        handle.options.token_secret.clone(),
        handle.options.password.clone(),
        ca_file.display().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || Command::new("python3").args(args).output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "proxmoxer run failed (is it installed? pip install proxmoxer requests)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(handle.guests().iter().all(|g| g.template));
    handle.stop().await;
}
