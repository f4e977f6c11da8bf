//! `cargo bench --bench yandex_apply`: the reference plan against the Yandex
//! simulator with realistic operation times.
//!
//! Reports (prints, never fails on timing):
//! - apply wall time against the critical-path lower bound: the longest
//!   dependency chain of the plan's resources, each costing one operation time
//!   (network → security groups → instance); ratio 1.0 is a perfect parallel walk;
//! - how many API calls a no-change `plan` makes (counted by the simulator).
//!
//! Two plans: `plans/yandex-saleor-ha.yaml` (8 machines), and a generated
//! 250-machine plan (three host groups over two subnets) run on a simulator
//! whose quotas are raised with `--quota` (the cloud's default is 12
//! instances). For 250 machines the folder's limit of 15 concurrent
//! operations is a second lower bound: ⌈operations / 15⌉ operation times.
//!
//! Env: RIGGER_BENCH_OP_TIME_MS (default 2000), RIGGER_BENCH_LATENCY_MS (default 20),
//! RIGGER_BENCH_ONLY=reference|250 to run one of the two.

use rigger::plan::model::ProviderConfig;
use rigger::cloud::resource::Address;
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
    let specs = rigger::cloud::providers::yandex::resources::specs(&plan, cfg)?;
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

/// A plan of 250 machines: 100 + 100 + 50 hosts in two subnets, one firewall group.
fn plan_250() -> String {
    r#"version: 1
project: bench-250
provider: { kind: yandex, folder_id: b1gsimulated, zone: ru-central1-a, platform: standard-v3 }
ssh: { user: rigger, private_key_file: ./keys/rigger_ed25519, public_key_file: ./keys/rigger_ed25519.pub }
network:
  name: main
  subnets:
    - { name: a, cidr: 10.30.0.0/24, zone: ru-central1-a, gateway: 10.30.0.1 }
    - { name: b, cidr: 10.31.0.0/24, zone: ru-central1-b, gateway: 10.31.0.1 }
firewall:
  - name: fleet
    rules:
      - { direction: ingress, protocol: tcp, ports: 22, from: 10.30.0.0/15 }
      - { direction: egress, protocol: any, to: 0.0.0.0/0 }
defaults: { image: ubuntu-2204-lts, cores: 2, memory: 2GiB, disk: 20GiB, core_fraction: 100 }
hosts:
  - { name: web, count: 100, subnet: a, ip: 10.30.0.10, firewall: [fleet] }
  - { name: worker, count: 100, subnet: b, ip: 10.31.0.10, firewall: [fleet] }
  - { name: db, count: 50, subnet: a, ip: 10.30.0.150, firewall: [fleet] }
"#
    .to_string()
}

const QUOTAS_250: &[&str] = &[
    "compute.instances.count=250",
    "compute.instanceCores.count=500",
    "compute.instanceMemory.size=500GiB",
];

/// How many resources the plan makes (each one operation).
fn resource_count(plan_path: &Path) -> anyhow::Result<usize> {
    let plan = rigger::plan::load::load(plan_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ProviderConfig::Yandex(cfg) = &plan.provider else { anyhow::bail!("not a Yandex plan") };
    Ok(rigger::cloud::providers::yandex::resources::specs(&plan, cfg)?.len())
}

fn main() -> anyhow::Result<()> {
    let only = std::env::var("RIGGER_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "reference" {
        scenario("plans/yandex-saleor-ha.yaml", &std::fs::read_to_string(PLAN)?, &[])?;
    }
    if only.is_empty() || only == "250" {
        scenario("a generated 250-machine plan", &plan_250(), QUOTAS_250)?;
    }
    Ok(())
}

fn scenario(title: &str, plan_text: &str, quotas: &[&str]) -> anyhow::Result<()> {
    let op_time = env_ms("RIGGER_BENCH_OP_TIME_MS", 2000);
    let latency = env_ms("RIGGER_BENCH_LATENCY_MS", 20);
    let dir = tempfile::Builder::new().prefix("rigger-bench-yc-").tempdir()?;
    std::fs::create_dir_all(dir.path().join("keys"))?;
    let keygen = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.path().join("keys/rigger_ed25519")).output()?;
    anyhow::ensure!(keygen.status.success(), "ssh-keygen failed");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, plan_text)?;
    let chain = critical_path_length(&plan)?;
    let resources = resource_count(&plan)?;

    let mut command = Command::new(RIGGER);
    command.args(["sim", "yandex", "--listen", "127.0.0.1:0", "--op-time", &op_time.to_string(), "--latency", &latency.to_string(), "--key-out"]);
    command.arg(dir.path().join("sim-sa-key.json"));
    for quota in quotas {
        command.args(["--quota", quota]);
    }
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
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

    let per_op = (op_time + latency) as f64 / 1000.0;
    let chain_bound = chain as f64 * per_op;
    // The folder runs at most 15 operations at once (the simulator's default, the cloud's too).
    let waves = resources.div_ceil(15);
    let bound = chain_bound.max(waves as f64 * per_op);
    println!("yandex_apply: {title} against the simulator (op-time {op_time} ms, latency {latency} ms, default --parallelism)");
    println!("  critical path       {chain} resources deep → {chain_bound:.1} s");
    println!("  operation limit     {resources} resources / 15 at once → {waves} waves → {:.1} s", waves as f64 * per_op);
    println!("  lower bound         {bound:.1} s");
    println!("  apply --infra-only  {apply_secs:.1} s wall, {apply_calls} API calls → ratio {:.2} to the lower bound", apply_secs / bound);
    println!("  plan (no change)    {plan_calls} API calls, {plan_secs:.2} s{}", if no_change { "" } else { "  (NOT a no-change plan!)" });
    println!("  destroy             {destroy_secs:.1} s");
    Ok(())
}
