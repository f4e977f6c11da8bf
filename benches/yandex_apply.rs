//! `cargo bench --bench yandex_apply`: the reference plan against the Yandex
//! simulator with realistic operation times.
//!
//! Reports (prints, never fails on timing):
//! - apply wall time against the critical-path lower bound: the longest
//!   dependency chain of the plan's resources, each costing one operation time
//!   (network → security groups → instance); ratio 1.0 is a perfect parallel walk;
//! - how many API calls a no-change `plan` makes (counted by the simulator).
//!
//! Env: RIGGER_BENCH_OP_TIME_MS (default 2000), RIGGER_BENCH_LATENCY_MS (default 20).

use rigger::plan::model::ProviderConfig;
use rigger::resource::Address;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const RIGGER: &str = env!("CARGO_BIN_EXE_rigger");
const PLAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plans/yandex-saleor-ha.yaml");

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

fn requests(endpoint: &str) -> u64 {
    let addr = endpoint.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return 0 };
    let _ = write!(stream, "GET /_sim/inventory HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["requests"].as_u64()).unwrap_or(0)
}

/// Resources on the longest dependency chain of the plan.
fn critical_path_length(plan_path: &Path) -> anyhow::Result<usize> {
    let plan = rigger::plan::load::load(plan_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ProviderConfig::Yandex(cfg) = &plan.provider else { anyhow::bail!("not a Yandex plan") };
    let specs = rigger::providers::yandex::resources::specs(&plan, cfg)?;
    let deps: BTreeMap<&Address, &Vec<Address>> = specs.iter().map(|s| (&s.address, &s.depends_on)).collect();
    fn depth<'a>(a: &'a Address, deps: &BTreeMap<&'a Address, &'a Vec<Address>>, memo: &mut BTreeMap<&'a Address, usize>) -> usize {
        if let Some(d) = memo.get(a) {
            return *d;
        }
        let d = 1 + deps.get(a).map(|ds| ds.iter().map(|x| depth(x, deps, memo)).max().unwrap_or(0)).unwrap_or(0);
        memo.insert(a, d);
        d
    }
    let mut memo = BTreeMap::new();
    Ok(specs.iter().map(|s| depth(&s.address, &deps, &mut memo)).max().unwrap_or(0))
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(std::process::Output, f64)> {
    let started = Instant::now();
    let out = Command::new(RIGGER).args(args).envs(env.iter().copied()).env("NO_COLOR", "1").current_dir(dir).output()?;
    Ok((out, started.elapsed().as_secs_f64()))
}

fn main() -> anyhow::Result<()> {
    let op_time = env_ms("RIGGER_BENCH_OP_TIME_MS", 2000);
    let latency = env_ms("RIGGER_BENCH_LATENCY_MS", 20);
    let dir = tempfile::Builder::new().prefix("rigger-bench-yc-").tempdir()?;
    std::fs::create_dir_all(dir.path().join("keys"))?;
    let keygen = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.path().join("keys/rigger_ed25519")).output()?;
    anyhow::ensure!(keygen.status.success(), "ssh-keygen failed");
    let plan = dir.path().join("plan.yaml");
    std::fs::copy(PLAN, &plan)?;
    let chain = critical_path_length(&plan)?;

    let mut child = Command::new(RIGGER)
        .args(["sim", "yandex", "--listen", "127.0.0.1:0", "--op-time", &op_time.to_string(), "--latency", &latency.to_string(), "--key-out"])
        .arg(dir.path().join("sim-sa-key.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take();
    let sim = Sim(child);
    let mut lines = BufReader::new(stdout.ok_or_else(|| anyhow::anyhow!("no stdout"))?).lines();
    let (mut endpoint, mut key) = (String::new(), String::new());
    while endpoint.is_empty() || key.is_empty() {
        let line = lines.next().ok_or_else(|| anyhow::anyhow!("the simulator exited early"))??;
        if let Some(e) = line.strip_prefix("endpoint: ") {
            endpoint = e.to_string();
        } else if let Some(k) = line.strip_prefix("key file: ") {
            key = k.to_string();
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let env = [("RIGGER_YANDEX_ENDPOINT", endpoint.as_str()), ("YC_SERVICE_ACCOUNT_KEY_FILE", key.as_str())];

    let plan_s = plan.display().to_string();
    let before = requests(&endpoint);
    let (out, apply_secs) = run(dir.path(), &["apply", &plan_s, "--infra-only", "--no-ssh-wait", "--auto-approve"], &env)?;
    anyhow::ensure!(out.status.success(), "apply failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let apply_calls = requests(&endpoint) - before;

    let before = requests(&endpoint);
    let (out, plan_secs) = run(dir.path(), &["plan", &plan_s, "--infra-only", "--detailed-exitcode"], &env)?;
    let plan_calls = requests(&endpoint) - before;
    let no_change = out.status.code() == Some(0);

    let (out, destroy_secs) = run(dir.path(), &["destroy", &plan_s, "--auto-approve"], &env)?;
    anyhow::ensure!(out.status.success(), "destroy failed:\n{}", String::from_utf8_lossy(&out.stderr));
    drop(sim);

    let bound = chain as f64 * (op_time + latency) as f64 / 1000.0;
    println!("yandex_apply: plans/yandex-saleor-ha.yaml against the simulator (op-time {op_time} ms, latency {latency} ms)");
    println!("  critical path       {chain} resources deep → lower bound {bound:.1} s");
    println!("  apply --infra-only  {apply_secs:.1} s wall, {apply_calls} API calls → ratio {:.2} to the lower bound", apply_secs / bound);
    println!("  plan (no change)    {plan_calls} API calls, {plan_secs:.2} s{}", if no_change { "" } else { "  (NOT a no-change plan!)" });
    println!("  destroy             {destroy_secs:.1} s");
    Ok(())
}
