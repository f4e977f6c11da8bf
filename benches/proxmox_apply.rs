//! `cargo bench --bench proxmox_apply`: a generated 250-container plan against
//! the Proxmox simulator without machines (`--infra-only --no-ssh-wait`).
//!
//! Reports (prints, never fails on timing): apply wall time against a lower
//! bound — each container costs a creation task and a start task (the
//! simulator's `--op-time` × 1.0 and × 0.5), `--parallelism` (default 15) at
//! a time — and the API calls and time of a no-change plan (one
//! `/cluster/resources` list plus one config read per guest).
//!
//! Env: RIGGER_BENCH_OP_TIME_MS (default 400), RIGGER_BENCH_LATENCY_MS (default 5).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const RIGGER: &str = env!("CARGO_BIN_EXE_rigger");
const GUESTS: usize = 250;
const PARALLELISM: usize = 15;

fn env_ms(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Kills the simulator by its pid however the bench ends.
struct Sim(Child);
impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The simulator's request counter (`/_sim/stats`, not part of the API). curl
/// cannot pin a certificate's SHA-256 fingerprint; this read goes to loopback
/// only, so it skips the check (rigger itself pins the fingerprint).
fn requests(endpoint: &str, token: &str) -> anyhow::Result<u64> {
    let out = Command::new("curl")
        .args(["-sk", "-H"])
        .arg(format!("Authorization: PVEAPIToken={token}"))
        .arg(format!("{endpoint}/_sim/stats"))
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["data"]["requests"].as_u64().unwrap_or(0))
}

fn run(dir: &Path, args: &[&str], secret: &str) -> anyhow::Result<(std::process::Output, f64)> {
    let started = Instant::now();
    let out = Command::new(RIGGER).args(args).env("PROXMOX_TOKEN_SECRET", secret).env("NO_COLOR", "1").current_dir(dir).output()?;
    Ok((out, started.elapsed().as_secs_f64()))
}

fn main() -> anyhow::Result<()> {
    let op_time = env_ms("RIGGER_BENCH_OP_TIME_MS", 400);
    let latency = env_ms("RIGGER_BENCH_LATENCY_MS", 5);
    let dir = tempfile::Builder::new().prefix("rigger-bench-pve-").tempdir()?;
    let keygen = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.path().join("id_ed25519")).output()?;
    anyhow::ensure!(keygen.status.success(), "ssh-keygen failed");

    let mut child = Command::new(RIGGER)
        .args(["sim", "proxmox", "--listen", "127.0.0.1:0", "--op-time", &op_time.to_string(), "--latency", &latency.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let sim = Sim(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = String::new();
    let field = |banner: &str, key: &str| banner.lines().find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().trim_matches('"').to_string()));
    while field(&banner, "export PROXMOX_TOKEN_SECRET=").is_none() {
        let line = lines.next().ok_or_else(|| anyhow::anyhow!("the simulator exited early:\n{banner}"))??;
        banner.push_str(&line);
        banner.push('\n');
    }
    std::thread::spawn(move || for _ in lines {});
    let endpoint = field(&banner, "endpoint:").ok_or_else(|| anyhow::anyhow!("no endpoint in:\n{banner}"))?;
    let fingerprint = field(&banner, "tls_fingerprint:").unwrap_or_default();
    let token_id = field(&banner, "token_id:").unwrap_or_default();
    let secret = field(&banner, "export PROXMOX_TOKEN_SECRET=").unwrap_or_default();
    let token = format!("{token_id}={secret}");

    let plan = dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nproject: bench-pve-250\nprovider:\n  kind: proxmox\n  endpoint: {endpoint}\n  node: pve\n  token_id: \"{token_id}\"\n  tls_fingerprint: \"{fingerprint}\"\n\
             ssh: {{ user: rigger, private_key_file: ./id_ed25519 }}\n\
             network:\n  name: main\n  subnets:\n    - {{ name: app, cidr: 10.40.0.0/22 }}\n\
             defaults: {{ cores: 1, memory: 512MiB, disk: 2GiB }}\n\
             hosts:\n  - {{ name: web, count: 100, ip: 10.40.0.10, vmid: 1000 }}\n  - {{ name: worker, count: 100, ip: 10.40.1.10, vmid: 2000 }}\n  - {{ name: db, count: 50, ip: 10.40.2.10, vmid: 3000 }}\n"
        ),
    )?;
    let plan_s = plan.display().to_string();

    let before = requests(&endpoint, &token)?;
    let (out, apply_secs) = run(dir.path(), &["apply", &plan_s, "--infra-only", "--no-ssh-wait", "--auto-approve"], &secret)?;
    anyhow::ensure!(out.status.success(), "apply failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let apply_calls = requests(&endpoint, &token)? - before;

    let before = requests(&endpoint, &token)?;
    let (out, plan_secs) = run(dir.path(), &["plan", &plan_s, "--infra-only", "--detailed-exitcode"], &secret)?;
    let plan_calls = requests(&endpoint, &token)? - before;
    let no_change = out.status.code() == Some(0);

    let (out, destroy_secs) = run(dir.path(), &["destroy", &plan_s, "--auto-approve"], &secret)?;
    anyhow::ensure!(out.status.success(), "destroy failed:\n{}", String::from_utf8_lossy(&out.stderr));
    drop(sim);

    let per_guest = (1.5 * op_time as f64 + 2.0 * latency as f64) / 1000.0;
    let bound = GUESTS.div_ceil(PARALLELISM) as f64 * per_guest;
    println!("proxmox_apply: {GUESTS} containers against the simulator (op-time {op_time} ms, latency {latency} ms, default --parallelism {PARALLELISM})");
    println!("  lower bound         {} waves × {per_guest:.2} s (create + start task) = {bound:.1} s", GUESTS.div_ceil(PARALLELISM));
    println!("  apply --infra-only  {apply_secs:.1} s wall, {apply_calls} API calls → ratio {:.2} to the lower bound", apply_secs / bound);
    println!("  plan (no change)    {plan_calls} API calls, {plan_secs:.2} s{}", if no_change { "" } else { "  (NOT a no-change plan!)" });
    println!("  destroy             {destroy_secs:.1} s");
    Ok(())
}
