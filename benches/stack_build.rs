//! `cargo bench --bench stack_build` (root; the local provider's machines):
//! the full 13-machine plans/local-ha.yaml stack from nothing, with the machine
//! image already cached (a warm-up machine makes sure of that, untimed).
//!
//! Each round builds its OWN project (a copy of the plan with another
//! `project:` name and a free subnet), times `rigger apply --auto-approve`, and
//! prints rigger's own account of the config phase: the critical path of role
//! bring-ups (`roles: critical path …`) against the wall time; then destroys it
//! (a guard — also on failure or Ctrl-C). `RIGGER_BENCH_REPS` rounds (default 2).
//!
//! `RIGGER_BENCH_FRESH_IMAGE=1`: no warm-up; the cached image's manifest is
//! removed first, so round 1 is the stack from nothing *including* the image
//! build, as on a fresh machine (mmdebstrap downloads from the mirror; nothing
//! of the old image is reused), and the image's own build time is printed.
//! Prints; never fails on timing.

#[path = "../tests/common/mod.rs"]
mod common;

use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

const RIGGER: &str = env!("CARGO_BIN_EXE_rigger");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const PLAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plans/local-ha.yaml");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One project of the bench; dropping it destroys it.
struct Stack {
    dir: tempfile::TempDir,
    project: String,
    net: String,
    plan: PathBuf,
}

impl Stack {
    /// `only`: keep just these host lines of the plan (None = all of it).
    fn new(only: Option<&str>) -> Result<Stack> {
        let project = format!("t-sp-{:04x}", rand::random::<u16>());
        let (cidr, net) = common::free_subnet();
        let dir = tempfile::Builder::new().prefix(&format!("rigger-{project}-")).tempdir()?;
        let mut plan_text = std::fs::read_to_string(PLAN)?;
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
        if let Some(keep) = only {
            // A machine with no roles: enough to have the image built. The
            // services' settings go too (settings of roles no host has are an error).
            let start = plan_text.find("\nhosts:\n").expect("hosts:") + 1;
            plan_text.replace_range(start.., &format!("hosts:\n  - {keep}\n"));
        }
        let plan = dir.path().join("plan.yaml");
        std::fs::write(&plan, plan_text)?;
        Ok(Stack { dir, project, net, plan })
    }

    fn rigger(&self, args: &[&str]) -> Command {
        let mut c = Command::new(RIGGER);
        c.args(args).current_dir(self.dir.path()).env("NO_COLOR", "1").stdin(Stdio::null());
        c
    }

    fn plan_arg(&self) -> String {
        self.plan.display().to_string()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let out = self.rigger(&["destroy", &self.plan_arg(), "--auto-approve"]).output();
        match out {
            Ok(o) if o.status.success() => println!("  cleanup: project {} destroyed", self.project),
            Ok(o) => println!("  cleanup: destroying project {} FAILED:\n{}", self.project, tail(&text(&o.stderr), 10)),
            Err(e) => println!("  cleanup: cannot run rigger destroy: {e}"),
        }
        let left = common::leftovers(&self.project, &self.net);
        if !left.is_empty() {
            println!("  cleanup: still left: {left:?} — run: {RIGGER} destroy {} --auto-approve", self.plan_arg());
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores ({cpu})")
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("stack_build boots systemd-nspawn machines and must run as root");
    }
    let reps: usize = std::env::var("RIGGER_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(2).max(1);
    println!("machine: {}", machine());
    let fresh_image = std::env::var("RIGGER_BENCH_FRESH_IMAGE").is_ok_and(|v| v == "1");
    if fresh_image {
        // A missing manifest is an incomplete image: the next apply rebuilds it
        // (the old root filesystem is moved aside while machines still use it).
        use nspawn_machines::image::{images_dir, DEBIAN_12, DEFAULT_ROOT};
        let manifest = images_dir(std::path::Path::new(DEFAULT_ROOT)).join(DEBIAN_12).join("manifest.json");
        match std::fs::remove_file(&manifest) {
            Ok(()) => println!("fresh image: removed {}; round 1 builds the image", manifest.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("fresh image: no cached image; round 1 builds it"),
            Err(e) => bail!("cannot remove {}: {e}", manifest.display()),
        }
    } else {
        let warm = Stack::new(Some("{ name: warm, roles: [] }"))?;
        let started = Instant::now();
        let out = warm.rigger(&["apply", &warm.plan_arg(), "--auto-approve"]).output()?;
        if !out.status.success() {
            bail!("warm-up (image) failed:\n{}", tail(&text(&out.stderr), 20));
        }
        println!("warm-up: image cached, one machine up ({:.1} s, untimed)", started.elapsed().as_secs_f64());
    }
    let mut walls = Vec::new();
    for rep in 1..=reps {
        println!("round {rep}/{reps} (load {})", load());
        let stack = Stack::new(None)?;
        let started = Instant::now();
        let out = stack.rigger(&["apply", &stack.plan_arg(), "--auto-approve"]).output()?;
        let wall = started.elapsed().as_secs_f64();
        let stderr = text(&out.stderr);
        if !out.status.success() {
            println!("  apply FAILED after {wall:.1} s:\n{}", tail(&stderr, 25));
            continue;
        }
        for l in stderr.lines().filter(|l| l.contains("] role ") || l.contains("] roles: ") || l.contains("] facts: ") || l.contains("] image ")) {
            println!("  {l}");
        }
        let what = if fresh_image && rep == 1 { "image + 13 machines + config" } else { "13 machines + config" };
        println!("  full stack from nothing ({what}): {wall:.1} s");
        walls.push(wall);
    }
    walls.sort_by(|a, b| a.total_cmp(b));
    println!("\nwall times: {}", walls.iter().map(|w| format!("{w:.1} s")).collect::<Vec<_>>().join(", "));
    Ok(())
}
