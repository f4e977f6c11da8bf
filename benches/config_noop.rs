//! `cargo bench --bench config_noop` (root; the local provider's machines):
//! the config phase of a no-change `rigger apply` against the floor and the
//! tools users pick today, all in one run on the same 13 local machines.
//!
//! The bench builds its OWN project — a copy of plans/local-ha.yaml with another
//! `project:` name and a free subnet, in a temp folder — applies it once (full
//! config), then measures, interleaved, each `RIGGER_BENCH_REPS` times (default 5)
//! and reports medians:
//!
//! - rigger: `rigger apply <plan> --auto-approve` with nothing to change (refresh,
//!   facts, health gates of every role), checked to change nothing;
//! - `rigger plan`: the same facts round trip with no gate asked (the facts' share);
//! - the floor: `ssh -F <rigger's ssh_config> HOST true` to every host at once,
//!   fresh connections (no ControlMaster) — to all 13 hosts, and to the 9 hosts
//!   rigger configures (app and nginx have no role rigger configures yet);
//! - Ansible (`ansible-core`, PyPI) running benches/config_noop/playbook.yml
//!   against `rigger inventory`'s hosts.ini: the same files (rendered by rigger's
//!   own renderer, same owners and modes) with `template`, restarts only on
//!   change, `systemd` for started+enabled / stopped+disabled; checked `changed=0`;
//! - pyinfra (PyPI) running benches/config_noop/deploy.py (`files.template`,
//!   `systemd.service`) with an inventory built from rigger's; checked to change nothing.
//!
//! Each row also records every machine's CPU time (its cgroup, net of the idle
//! load measured for 2 s before each round), printed per machine at the end:
//! what the facts and the gates cost on each kind of host.
//!
//! Then `rigger drill` once (kills the Patroni leader's machine) and its RTO against
//! the 30–60 s of the architecture documents. The project is destroyed at the end,
//! whatever happened (a guard; Ctrl-C stops the running step, then destroys).
//! Ansible and pyinfra go into a venv (`RIGGER_BENCH_VENV`, default target/bench-venv);
//! if they cannot be installed or run, the output says why instead of a number.
//! Prints; never fails on timing.

#[path = "../tests/common/mod.rs"]
mod common;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

const RIGGER: &str = env!("CARGO_BIN_EXE_rigger");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const PLAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plans/local-ha.yaml");
const HELPERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/config_noop");

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM: the running child (which gets the default action back on
/// exec) ends, the bench notices between steps and the guard destroys the project.
fn catch_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(s, &action) };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn timed(cmd: &mut Command) -> Result<(Output, f64)> {
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {cmd:?}"))?;
    let secs = started.elapsed().as_secs_f64();
    check_interrupted()?;
    Ok((out, secs))
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 { s[m] } else { (s[m - 1] + s[m]) / 2.0 })
}

/// The bench's own stack; dropping it destroys it, however the bench ends.
struct Stack {
    dir: tempfile::TempDir,
    project: String,
    net: String,
    plan: PathBuf,
}

impl Stack {
    fn new() -> Result<Stack> {
        let project = format!("bench-{:04x}", rand::random::<u16>());
        let (cidr, net) = common::free_subnet();
        let dir = tempfile::Builder::new().prefix(&format!("rigger-{project}-")).tempdir()?;
        let src = std::fs::read_to_string(PLAN)?;
        let mut plan_text = src.clone();
        for (from, to) in [
            ("project: local-ha".to_string(), format!("project: {project}")),
            ("scope: local-ha".to_string(), format!("scope: {project}")),
            ("10.20.0.0/24".to_string(), cidr.clone()),
            ("10.20.0.".to_string(), format!("{net}.")),
            ("path: ../examples/".to_string(), format!("path: {ROOT}/examples/")),
        ] {
            anyhow::ensure!(plan_text.contains(&from), "plans/local-ha.yaml no longer contains `{from}` — update the bench's copy of it");
            plan_text = plan_text.replace(&from, &to);
        }
        let plan = dir.path().join("plan.yaml");
        std::fs::write(&plan, plan_text)?;
        Ok(Stack { dir, project, net, plan })
    }

    fn rigger(&self, args: &[&str]) -> Command {
        let mut c = Command::new(RIGGER);
        c.args(args).current_dir(self.dir.path()).env("NO_COLOR", "1");
        c
    }

    fn plan_arg(&self) -> String {
        self.plan.display().to_string()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let started = Instant::now();
        let out = self.rigger(&["destroy", &self.plan_arg(), "--auto-approve"]).stdin(Stdio::null()).output();
        match out {
            Ok(o) if o.status.success() => println!("\ncleanup: project {} destroyed ({:.1}s)", self.project, started.elapsed().as_secs_f64()),
            Ok(o) => println!("\ncleanup: destroying project {} FAILED:\n{}\n{}", self.project, tail(&text(&o.stdout), 10), tail(&text(&o.stderr), 10)),
            Err(e) => println!("\ncleanup: cannot run rigger destroy: {e}"),
        }
        let left = common::leftovers(&self.project, &self.net);
        if !left.is_empty() {
            println!("cleanup: still left: {left:?} — run: {RIGGER} destroy {} --auto-approve", self.plan_arg());
        }
    }
}

/// What rigger manages on each host, as its own renderer renders it, for the other tools.
struct Manifest {
    hosts: Vec<String>,
    files: usize,
    services: usize,
}

fn write_manifest(plan: &Path, work: &Path) -> Result<Manifest> {
    let project = rigger::project::Project::load(plan, None)?;
    let state = rigger::state::read_state(&project.state_path)?.ok_or_else(|| anyhow!("no state for {}", plan.display()))?;
    let renderer = rigger::render::Renderer::new()?;
    let mut hosts = serde_json::Map::new();
    let (mut nfiles, mut nservices) = (0, 0);
    for h in &project.plan.hosts {
        let d = rigger::hosts::roles::desired(&project.plan, h, &state.secrets, &renderer)?;
        if d.files.is_empty() && d.services.is_empty() {
            continue;
        }
        let dir = work.join("files").join(&h.name);
        std::fs::create_dir_all(&dir)?;
        let mut files = Vec::new();
        let mut notify: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, f) in d.files.iter().enumerate() {
            let base = Path::new(&f.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let src = dir.join(format!("{i}-{base}"));
            std::fs::write(&src, &f.content)?;
            // Jinja would render markers in an already rendered file: such a file is copied as is.
            let raw = ["{{", "{%", "{#"].iter().any(|m| f.content.contains(m));
            files.push(json!({ "src": src, "dest": f.path, "owner": f.owner, "group": f.group, "mode": format!("{:04o}", f.mode), "raw": raw }));
            for s in &f.notify {
                notify.entry(s.clone()).or_default().push(f.path.clone());
            }
        }
        let notify: Vec<Value> = notify
            .into_iter()
            .map(|(service, files)| {
                let reload = d.services.iter().any(|s| s.name == service && s.on_change == rigger::hosts::ops::OnChange::Reload);
                json!({ "service": service, "on_change": if reload { "reloaded" } else { "restarted" }, "files": files })
            })
            .collect();
        let services: Vec<&String> = d.services.iter().map(|s| &s.name).collect();
        nfiles += files.len();
        nservices += services.len() + d.stop_disable.len();
        hosts.insert(h.name.clone(), json!({ "files": files, "notify": notify, "services": services, "stop_disable": d.stop_disable.iter().map(|s| &s.name).collect::<Vec<_>>() }));
    }
    let names = hosts.keys().cloned().collect();
    std::fs::write(work.join("manifest.json"), serde_json::to_string_pretty(&json!({ "bench_hosts": hosts }))?)?;
    Ok(Manifest { hosts: names, files: nfiles, services: nservices })
}

/// ansible-core and pyinfra in a venv: (ansible-playbook, pyinfra) paths, or why not.
fn tools() -> (Result<PathBuf, String>, Result<PathBuf, String>) {
    let venv = std::env::var_os("RIGGER_BENCH_VENV").map(PathBuf::from).unwrap_or_else(|| Path::new(ROOT).join("target/bench-venv"));
    let bin = venv.join("bin");
    let (ansible, pyinfra) = (bin.join("ansible-playbook"), bin.join("pyinfra"));
    if !bin.join("pip").exists() {
        match Command::new("python3").arg("-m").arg("venv").arg(&venv).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let why = format!("python3 -m venv {} failed: {}", venv.display(), tail(&text(&o.stderr), 3));
                return (Err(why.clone()), Err(why));
            }
            Err(e) => {
                let why = format!("cannot run python3: {e}");
                return (Err(why.clone()), Err(why));
            }
        }
    }
    let install = |pkg: &str, exe: &Path| -> Result<PathBuf, String> {
        if exe.exists() {
            return Ok(exe.to_path_buf());
        }
        println!("installing {pkg} into {} (pip)…", venv.display());
        match Command::new(bin.join("pip")).args(["install", "-q", pkg]).output() {
            Ok(o) if o.status.success() && exe.exists() => Ok(exe.to_path_buf()),
            Ok(o) => Err(format!("`pip install {pkg}` failed: {}", tail(&text(&o.stderr), 3))),
            Err(e) => Err(format!("cannot run pip: {e}")),
        }
    };
    (install("ansible-core", &ansible), install("pyinfra", &pyinfra))
}

fn version(exe: &Path) -> String {
    Command::new(exe).arg("--version").output().map(|o| text(&o.stdout).lines().next().unwrap_or_default().trim().to_string()).unwrap_or_default()
}

/// Where a no-op apply's time went, from rigger's own step lines on stderr
/// ("facts: facts gathered (1.1s)", "role etcd: healthy (0.2s)"): (facts, gates).
fn rigger_steps(stderr: &str) -> (f64, f64) {
    let secs = |l: &str| l.rsplit_once('(').and_then(|(_, r)| r.strip_suffix("s)")).and_then(|n| n.parse::<f64>().ok()).unwrap_or(0.0);
    let facts = stderr.lines().filter(|l| l.contains("] facts: facts gathered (")).map(secs).sum();
    let gates = stderr.lines().filter(|l| l.contains("] role ") && l.contains(": healthy (")).map(secs).sum();
    (facts, gates)
}

/// A no-change `rigger apply`: wall time and where it went, after checking it changed nothing.
/// `persist`: with RIGGER_SSH_PERSIST (the masters of the previous run reused).
fn rigger_noop(stack: &Stack, persist: bool) -> Result<(f64, String)> {
    let mut cmd = stack.rigger(&["apply", &stack.plan_arg(), "--auto-approve"]);
    if persist {
        // Longer than a whole round (Ansible alone takes about a minute): with
        // 60 s the masters had gone idle-expired by the next round's run, which
        // then measured fresh handshakes under the "masters kept" label.
        cmd.env(rigger::hosts::remote::persist::ENV, "300");
    }
    let (out, secs) = timed(&mut cmd)?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if !out.status.success() {
        bail!("rigger apply failed:\n{}\n{}", tail(&stdout, 15), tail(&stderr, 15));
    }
    let noop = stdout.contains("No host changes") && stdout.contains("0 added, 0 changed, 0 destroyed") && !stderr.contains("writing ") && !stdout.contains("writing ");
    if !noop {
        bail!("rigger apply was not a no-op — the comparison would be wrong:\n{}\n{}", tail(&stdout, 15), tail(&stderr, 15));
    }
    let (facts, gates) = rigger_steps(&stderr);
    let note = format!("(connect + facts {facts:.2} s, health gates {gates:.2} s, the rest {:.2} s)", (secs - facts - gates).max(0.0));
    Ok((secs, note))
}

/// `ssh HOST true` to every host at once, fresh connections.
fn floor(ssh_config: &Path, hosts: &[String]) -> Result<f64> {
    let started = Instant::now();
    let children: Vec<(String, std::process::Child)> = hosts
        .iter()
        .map(|h| {
            let child = Command::new("ssh")
                .arg("-F")
                .arg(ssh_config)
                .args(["-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ConnectTimeout=10", h, "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            Ok((h.clone(), child))
        })
        .collect::<Result<_>>()?;
    let mut failed = Vec::new();
    for (h, c) in children {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            failed.push(format!("{h}: {}", text(&out.stderr).trim()));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    check_interrupted()?;
    if !failed.is_empty() {
        bail!("ssh failed: {}", failed.join("; "));
    }
    Ok(secs)
}

/// Ansible's ControlPersist masters of one run outlive it by 60 s: end them
/// (by pid, only those using this run's control folder) so the next run starts fresh.
fn end_control_masters(control_dir: &Path) {
    let needle = control_dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(p.path().join("cmdline")).map(|b| text(&b)).unwrap_or_default();
        // A master renames itself "ssh: <control path> [mux]".
        if cmdline.starts_with("ssh") && cmdline.contains(&needle) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

fn ansible_run(exe: &Path, work: &Path, hosts: &[String], rep: usize) -> Result<f64> {
    let control_dir = work.join(format!("ansible-cp-{rep}"));
    std::fs::create_dir_all(&control_dir)?;
    let mut cmd = Command::new(exe);
    cmd.arg("-i")
        .arg(work.join("inventories/hosts.ini"))
        .arg(Path::new(HELPERS).join("playbook.yml"))
        .arg("-e")
        .arg(format!("bench_manifest={}", work.join("manifest.json").display()))
        .arg("--limit")
        .arg(hosts.join(","))
        .current_dir(work)
        .env("ANSIBLE_CONFIG", work.join("ansible.cfg"))
        .env("ANSIBLE_HOME", work.join("ansible-home"))
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &control_dir)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("PATH", format!("{}:{}", exe.parent().unwrap_or(Path::new("/")).display(), std::env::var("PATH").unwrap_or_default()));
    let result = timed(&mut cmd);
    end_control_masters(&control_dir);
    let (out, secs) = result?;
    let stdout = text(&out.stdout);
    // PLAY RECAP: "host : ok=5 changed=0 unreachable=0 failed=0 skipped=2 …"
    let recap: Vec<&str> = stdout.lines().filter(|l| l.contains(" changed=") && l.contains(" unreachable=")).collect();
    let clean = |l: &&str| l.contains(" changed=0 ") && l.contains(" unreachable=0 ") && l.contains(" failed=0 ");
    if !out.status.success() || recap.len() != hosts.len() || !recap.iter().all(clean) {
        bail!("ansible-playbook did not report a clean no-op (changed=0 on every host):\n{}\n{}", tail(&stdout, 20), tail(&text(&out.stderr), 10));
    }
    Ok(secs)
}

fn pyinfra_run(exe: &Path, work: &Path, hosts: &[String]) -> Result<f64> {
    let mut cmd = Command::new(exe);
    cmd.args(["-y", "--parallel", &hosts.len().to_string()])
        .arg(Path::new(HELPERS).join("inventory.py"))
        .arg(Path::new(HELPERS).join("deploy.py"))
        .current_dir(work)
        .env("BENCH_MANIFEST", work.join("manifest.json"))
        .env("BENCH_RIGGER_INVENTORY", work.join("inventories/inventory.json"))
        .env("NO_COLOR", "1")
        .env("TERM", "dumb");
    let (out, secs) = timed(&mut cmd)?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // pyinfra reports on stderr.
    let changed = pyinfra_changed(&format!("{stdout}\n{stderr}"));
    if !out.status.success() || changed != Some((0, 0)) {
        bail!("pyinfra did not report a clean no-op ((changed, errors): {changed:?}):\n{}\n{}", tail(&stdout, 25), tail(&stderr, 10));
    }
    Ok(secs)
}

/// pyinfra's results table ends with "Grand total  HOSTS SUCCESS ERROR NO-CHANGE"
/// ("-" for none); Success counts the operations that changed something.
/// Returns (changed, errors).
fn pyinfra_changed(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout.lines().find_map(|l| l.trim().strip_prefix("Grand total"))?;
    let n = |f: &str| if f == "-" { Some(0) } else { f.parse::<u64>().ok() };
    let f: Vec<&str> = line.split_whitespace().collect();
    Some((n(f.get(1)?)?, n(f.get(2)?)?))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok())).unwrap_or(0);
    format!("{cores} cores ({cpu}), {} GiB", mem / 1024 / 1024)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn machines_running() -> usize {
    Command::new("ps").args(["-eo", "args"]).output().map(|o| text(&o.stdout).lines().filter(|l| l.starts_with("systemd-nspawn")).count()).unwrap_or(0)
}

#[derive(Default)]
struct Series {
    times: Vec<f64>,
    /// CPU seconds the whole host spent while each timed run ran (all cores).
    cpus: Vec<f64>,
    /// Each run's CPU seconds per machine (host name), net of its idle load.
    machines: Vec<BTreeMap<String, f64>>,
    error: Option<String>,
}

impl Series {
    /// Times `run` and the host's CPU time meanwhile, and records both.
    fn measure(&mut self, label: &str, run: impl FnOnce() -> Result<f64>) {
        self.measure_machines(label, None, run)
    }

    /// `measure`, and each machine's CPU time meanwhile, less what it spends
    /// idle (`machines`: the machines and their idle rates this round).
    fn measure_machines(&mut self, label: &str, machines: Option<(&MachineCpu, &BTreeMap<String, f64>)>, run: impl FnOnce() -> Result<f64>) {
        let before = host_cpu_seconds();
        let machines_before = machines.and_then(|(m, _)| m.snapshot());
        let r = run();
        let cpu = host_cpu_seconds() - before;
        match r {
            Ok(t) => {
                println!("  {label:<24} {t:>7.2} s   cpu {cpu:>5.2} s");
                self.times.push(t);
                self.cpus.push(cpu);
                if let (Some((m, idle)), Some(b)) = (machines, machines_before) {
                    if let Some(a) = m.snapshot() {
                        self.machines.push(a.iter().map(|(h, used)| (h.clone(), used - b.get(h).copied().unwrap_or(*used) - idle.get(h).copied().unwrap_or(0.0) * t)).collect());
                    }
                }
            }
            Err(e) => {
                println!("  {label:<24} FAILED: {e:#}");
                self.error.get_or_insert(format!("{e:#}"));
            }
        }
    }
}

/// The stack's machines, by host name, and their cgroups' CPU time
/// (nspawn_machines::cgroup::cpu_used; none where a machine has no cgroup
/// of its own, e.g. on a host that runs systemd).
struct MachineCpu {
    machines: Vec<(String, String)>,
}

impl MachineCpu {
    fn new(project: &str, hosts: &[String]) -> MachineCpu {
        MachineCpu { machines: hosts.iter().map(|h| (h.clone(), nspawn_machines::names::machine(project, h))).collect() }
    }

    /// CPU seconds per host so far; None unless every machine has a cgroup of its own.
    fn snapshot(&self) -> Option<BTreeMap<String, f64>> {
        self.machines.iter().map(|(host, machine)| Some((host.clone(), nspawn_machines::cgroup::cpu_used(machine)?.as_secs_f64()))).collect()
    }

    /// Each machine's idle load, CPU seconds per second, over `secs`.
    fn idle_rates(&self, secs: f64) -> Option<BTreeMap<String, f64>> {
        let before = self.snapshot()?;
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
        let after = self.snapshot()?;
        Some(after.iter().map(|(h, a)| (h.clone(), (a - before[h]) / secs)).collect())
    }
}

/// The median of each machine's CPU over a series' runs, in milliseconds.
fn machine_medians(s: &Series) -> BTreeMap<String, f64> {
    let hosts: Vec<&String> = s.machines.first().map(|m| m.keys().collect()).unwrap_or_default();
    hosts.into_iter().filter_map(|h| Some((h.clone(), median(&s.machines.iter().filter_map(|m| m.get(h).copied()).collect::<Vec<_>>())? * 1000.0))).collect()
}

/// Per machine: what a no-change apply, a plan (facts, no gates) and the
/// floor cost, and so what the facts and the gates add on each host.
fn print_machine_table(apply: &Series, plan: &Series, floor: &Series) {
    let (a, p, f) = (machine_medians(apply), machine_medians(plan), machine_medians(floor));
    if a.is_empty() || p.is_empty() || f.is_empty() {
        println!("
CPU per machine: not measured (the machines have no cgroup of their own here)");
        return;
    }
    println!("
CPU per machine, ms, net of its idle load (medians): what the facts (plan - floor) and the gates (apply - plan) add");
    println!("  {:<10} {:>7} {:>7} {:>7} {:>7} {:>7}", "host", "apply", "plan", "floor", "facts", "gates");
    let mut total = [0.0; 3];
    for (h, av) in &a {
        let (pv, fv) = (p.get(h).copied().unwrap_or(0.0), f.get(h).copied().unwrap_or(0.0));
        println!("  {h:<10} {av:>7.0} {pv:>7.0} {fv:>7.0} {:>7.0} {:>7.0}", pv - fv, av - pv);
        for (t, v) in total.iter_mut().zip([*av, pv, fv]) {
            *t += v;
        }
    }
    println!("  {:<10} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>7.0}", "all", total[0], total[1], total[2], total[1] - total[2], total[0] - total[1]);
}

/// `rigger plan --detailed-exitcode`: the facts round trip, no gate; checked to find nothing to do.
fn rigger_plan(stack: &Stack) -> Result<f64> {
    let (out, secs) = timed(&mut stack.rigger(&["plan", &stack.plan_arg(), "--detailed-exitcode"]))?;
    if out.status.code() != Some(0) {
        bail!("rigger plan found changes (exit {:?}):\n{}", out.status.code(), tail(&text(&out.stdout), 15));
    }
    Ok(secs)
}

/// Busy CPU time of the whole host so far (every core; /proc/stat's user,
/// nice, system, irq, softirq and steal, in USER_HZ = 1/100 s). The machines
/// share the host's kernel, so their work counts too: on a host whose cores
/// are all busy, the wall time follows the CPU time, and this shows why.
fn host_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum::<f64>() / 100.0
}

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("config_noop boots systemd-nspawn machines and must run as root");
    }
    catch_signals();
    let reps: usize = std::env::var("RIGGER_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1);
    println!("config_noop: a no-change config apply on 13 local machines against the SSH floor, Ansible and pyinfra");
    println!("machine: {}; load {} at start; {} systemd-nspawn machines already running", machine(), load(), machines_running());

    let stack = Stack::new()?;
    println!("project {} in {} (subnet {}.0/24)", stack.project, stack.dir.path().display(), stack.net);
    let started = Instant::now();
    let (out, _) = timed(&mut stack.rigger(&["apply", &stack.plan_arg(), "--auto-approve"]))?;
    if !out.status.success() {
        bail!("the first apply failed:\n{}\n{}", tail(&text(&out.stdout), 20), tail(&text(&out.stderr), 20));
    }
    println!("first apply (13 machines + config): {:.1} s", started.elapsed().as_secs_f64());
    for l in text(&out.stderr).lines().filter(|l| l.contains("] roles: critical path") || l.contains("] facts: facts gathered")) {
        println!("  {l}");
    }

    let work = stack.dir.path().to_path_buf();
    let inv_dir = work.join("inventories");
    for (format, file) in [("ini", "hosts.ini"), ("json", "inventory.json"), ("ssh-config", "ssh_config")] {
        let out = stack.rigger(&["inventory", &stack.plan_arg(), "--format", format, "--output"]).arg(inv_dir.join(file)).output()?;
        anyhow::ensure!(out.status.success(), "rigger inventory --format {format} failed: {}", text(&out.stderr));
    }
    let ssh_config = inv_dir.join("ssh_config");
    let all_hosts: Vec<String> = rigger::project::Project::load(&stack.plan, None)?.plan.hosts.iter().map(|h| h.name.clone()).collect();
    let manifest = write_manifest(&stack.plan, &work)?;
    println!(
        "rigger manages {} files and {} services on {} of the {} hosts ({}); the others get no config yet",
        manifest.files,
        manifest.services,
        manifest.hosts.len(),
        all_hosts.len(),
        manifest.hosts.join(" ")
    );
    std::fs::write(
        work.join("ansible.cfg"),
        format!(
            "[defaults]\nforks = {}\ninterpreter_python = auto_silent\nretry_files_enabled = False\nhost_key_checking = True\n",
            manifest.hosts.len()
        ),
    )?;

    let (ansible, pyinfra) = tools();
    match &ansible {
        Ok(a) => println!("ansible: {}", version(a)),
        Err(why) => println!("ansible: NOT AVAILABLE — {why}"),
    }
    match &pyinfra {
        Ok(p) => println!("pyinfra: {}", version(p)),
        Err(why) => println!("pyinfra: NOT AVAILABLE — {why}"),
    }

    // Warm-up, untimed: the stack settled and a re-plan shows nothing to do.
    let (out, _) = timed(&mut stack.rigger(&["plan", &stack.plan_arg(), "--detailed-exitcode"]))?;
    if out.status.code() != Some(0) {
        println!("warning: `rigger plan --detailed-exitcode` after the first apply exited {:?}:\n{}", out.status.code(), tail(&text(&out.stdout), 15));
    }
    for (label, ok) in [("ansible", ansible.is_ok()), ("pyinfra", pyinfra.is_ok())] {
        if ok {
            // First runs compile Python bytecode and discover the interpreter: untimed.
            let r = match label {
                "ansible" => ansible_run(ansible.as_ref().expect("checked"), &work, &manifest.hosts, 99),
                _ => pyinfra_run(pyinfra.as_ref().expect("checked"), &work, &manifest.hosts),
            };
            if let Err(e) = r {
                println!("warm-up {label}: {e:#}");
            }
        }
    }

    let (mut r, mut f13, mut f9, mut a, mut p) = (Series::default(), Series::default(), Series::default(), Series::default(), Series::default());
    let (mut rp, mut plan) = (Series::default(), Series::default());
    let machine_cpu = MachineCpu::new(&stack.project, &all_hosts);
    // Untimed: leaves the SSH masters running for the persistent row's first round.
    let _ = rigger_noop(&stack, true);
    for rep in 1..=reps {
        println!("round {rep}/{reps} (load {})", load());
        let idle = machine_cpu.idle_rates(2.0);
        let machines = idle.as_ref().map(|i| (&machine_cpu, i));
        r.measure_machines("rigger apply (no-op)", machines, || {
            let (t, note) = rigger_noop(&stack, false)?;
            println!("  {:<24} {note}", "");
            Ok(t)
        });
        check_interrupted()?;
        plan.measure_machines("rigger plan (facts)", machines, || rigger_plan(&stack));
        check_interrupted()?;
        rp.measure("rigger, masters kept", || {
            let (t, note) = rigger_noop(&stack, true)?;
            println!("  {:<24} {note}", "");
            Ok(t)
        });
        check_interrupted()?;
        f13.measure_machines(&format!("ssh floor, {} hosts", all_hosts.len()), machines, || floor(&ssh_config, &all_hosts));
        check_interrupted()?;
        f9.measure(&format!("ssh floor, {} hosts", manifest.hosts.len()), || floor(&ssh_config, &manifest.hosts));
        check_interrupted()?;
        if let Ok(exe) = &ansible {
            a.measure("ansible-playbook", || ansible_run(exe, &work, &manifest.hosts, rep));
            check_interrupted()?;
        }
        if let Ok(exe) = &pyinfra {
            p.measure("pyinfra", || pyinfra_run(exe, &work, &manifest.hosts));
            check_interrupted()?;
        }
    }

    let rigger_median = median(&r.times);
    println!("\nmedians of {reps} runs (no-change config job; ratio = tool / rigger):");
    println!("  {:<40} {:>9} {:>12} {:>10}", "", "median", "vs rigger", "host cpu");
    let row = |label: &str, s: &Series, why: Option<&String>| match (median(&s.times), rigger_median) {
        (Some(m), Some(rm)) => println!("  {label:<40} {m:>7.2} s {:>11.2}x {:>8.2} s", m / rm, median(&s.cpus).unwrap_or(0.0)),
        (Some(m), None) => println!("  {label:<40} {m:>7.2} s {:>12} {:>8.2} s", "—", median(&s.cpus).unwrap_or(0.0)),
        (None, _) => println!("  {label:<40} not measured: {}", why.or(s.error.as_ref()).map(String::as_str).unwrap_or("no successful run")),
    };
    row("rigger apply (refresh+facts+gates)", &r, None);
    row("rigger, RIGGER_SSH_PERSIST (masters kept)", &rp, None);
    row("rigger plan (facts round trip, no gates)", &plan, None);
    row(&format!("floor: parallel ssh true, {} hosts", all_hosts.len()), &f13, None);
    row(&format!("floor: parallel ssh true, {} hosts", manifest.hosts.len()), &f9, None);
    row("ansible-playbook (template+systemd)", &a, ansible.as_ref().err());
    row("pyinfra (files.template+systemd)", &p, pyinfra.as_ref().err());
    if let (Some(rm), Some(fm)) = (rigger_median, median(&f13.times)) {
        println!("  rigger / floor ({} hosts): {:.2}x", all_hosts.len(), rm / fm);
    }
    if let (Some(rc), Some(fc)) = (median(&r.cpus), median(&f13.cpus)) {
        println!("  host CPU, rigger / floor ({} hosts): {rc:.2} s / {fc:.2} s = {:.2}x on {} cores", all_hosts.len(), rc / fc, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    }
    if let (Some(rm), Some(fm)) = (median(&rp.times), median(&f13.times)) {
        println!("  rigger with SSH masters kept / floor ({} hosts): {:.2}x", all_hosts.len(), rm / fm);
    }
    if let (Some(rm), Some(fm)) = (rigger_median, median(&f9.times)) {
        println!("  rigger / floor ({} hosts rigger dials): {:.2}x", manifest.hosts.len(), rm / fm);
    }
    if let (Some(pm), Some(fm)) = (median(&plan.times), median(&f13.times)) {
        println!("  rigger plan / floor ({} hosts): {:.2}x", all_hosts.len(), pm / fm);
    }
    print_machine_table(&r, &plan, &f13);

    check_interrupted()?;
    println!("\nrigger drill (kills the Patroni leader's machine)…");
    let (out, secs) = timed(&mut stack.rigger(&["drill", &stack.plan_arg()]))?;
    let stdout = text(&out.stdout);
    for line in stdout.lines() {
        println!("  {line}");
    }
    let rto = stdout.lines().find_map(|l| l.strip_prefix("RTO (write port unavailable): ")).and_then(|r| r.split('s').next()).and_then(|s| s.parse::<f64>().ok());
    match rto {
        Some(rto) => println!(
            "drill RTO {rto:.1} s against the 30–60 s the architecture documents expect: {} (drill {:.0} s in all, exit {:?})",
            if rto < 30.0 {
                "faster"
            } else if rto <= 60.0 {
                "within"
            } else {
                "SLOWER"
            },
            secs,
            out.status.code()
        ),
        None => println!("drill: no RTO measured (exit {:?}):\n{}", out.status.code(), tail(&text(&out.stderr), 15)),
    }
    drop(stack);
    Ok(())
}
