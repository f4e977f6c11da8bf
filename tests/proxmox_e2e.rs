//! Proxmox end to end with real processes: `rigger sim proxmox` as its own
//! process, the rigger binary applying a plan against it.
//!
//! - With faults and seeds, no machines: apply (API only, `--no-ssh-wait`),
//!   re-plan to no changes, destroy; the simulator's store never holds a
//!   duplicate name and ends empty.
//! - With `--machines local`: two containers become real local machines; the
//!   apply waits for strict-host-key SSH as the plan's user (which Proxmox does
//!   not create: rigger's first login as root does), then destroy and stop
//!   leave nothing behind.
//!
//! Traffic goes to loopback only, and with `--machines local` to the machines
//! in the namespaces this test's simulator made.

mod common;

use common::{key_pair, rigger_until_not_error, sim_leftovers, OutputText, ProxmoxSim};
use std::collections::BTreeSet;
use std::path::Path;

const TEMPLATE_VMID: u64 = 9000;

fn write_plan(dir: &Path, project: &str, sim: &ProxmoxSim, cidr: &str, hosts: &str) -> String {
    key_pair(dir);
    let path = dir.join("plan.yaml");
    let text = format!(
        "version: 1\nproject: {project}\n{}\
         ssh: {{ user: rigger, private_key_file: ./id_ed25519 }}\n\
         network:\n  name: main\n  subnets:\n    - {{ name: app, cidr: {cidr} }}\n\
         defaults: {{ cores: 1, memory: 512MiB, disk: 2GiB }}\n\
         hosts:\n{hosts}",
        sim.provider_block()
    );
    std::fs::write(&path, text).expect("write plan");
    path.display().to_string()
}

/// Store entries other than the template VM.
fn guests_other_than_the_template(sim: &ProxmoxSim) -> Vec<common::SimGuest> {
    sim.guests().into_iter().filter(|g| !(g.template && g.vmid == TEMPLATE_VMID)).collect()
}

fn apply_replan_destroy_with_faults(seed: u64) {
    let mut sim = ProxmoxSim::start(&["--faults", "0.08", "--seed", &seed.to_string(), "--op-time", "30"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts = concat!(
        "  - { name: pg, count: 3, ip: 192.168.50.21, vmid: 102, kind: lxc }\n",
        "  - { name: etcd, ip: 192.168.50.51, kind: lxc }\n",
        "  - { name: app, ip: 192.168.50.61, kind: qemu, image: debian-12-cloudinit }\n",
    );
    let plan = write_plan(dir.path(), "pve-faults", &sim, "192.168.50.0/24", hosts);
    let env = [("PROXMOX_TOKEN_SECRET", sim.secret.as_str())];

    let out = rigger_until_not_error(3, &["apply", &plan, "--infra-only", "--no-ssh-wait", "--auto-approve"], &env);
    assert!(out.status.success(), "seed {seed}: apply did not converge:\n{}", out.text());

    let guests = guests_other_than_the_template(&sim);
    let names: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "seed {seed}: duplicate hostnames in the store: {guests:?}");
    let vmids: BTreeSet<u64> = guests.iter().map(|g| g.vmid).collect();
    assert_eq!(vmids.len(), guests.len(), "seed {seed}: duplicate VMIDs: {guests:?}");
    assert_eq!(unique, BTreeSet::from(["pg-1", "pg-2", "pg-3", "etcd", "app"]), "seed {seed}: {guests:?}");
    for (name, vmid) in [("pg-1", 102), ("pg-2", 103), ("pg-3", 104)] {
        assert!(guests.iter().any(|g| g.name == name && g.vmid == vmid && g.kind == "lxc"), "seed {seed}: {name} is not CT {vmid}: {guests:?}");
    }
    assert!(guests.iter().any(|g| g.name == "app" && g.kind == "qemu"), "seed {seed}: {guests:?}");

    let out = rigger_until_not_error(3, &["plan", &plan, "--infra-only", "--detailed-exitcode"], &env);
    assert_eq!(out.code(), 0, "seed {seed}: re-plan after apply must show no changes:\n{}", out.text());

    let out = rigger_until_not_error(3, &["destroy", &plan, "--auto-approve"], &env);
    assert!(out.status.success(), "seed {seed}: destroy failed:\n{}", out.text());
    let left = guests_other_than_the_template(&sim);
    assert!(left.is_empty(), "seed {seed}: left in the store after destroy: {left:?}");
    assert!(sim.faults_injected() > 0, "seed {seed}: the run saw no injected faults");

    sim.stop();
}

#[test]
fn apply_replan_destroy_under_faults_seed_11() {
    apply_replan_destroy_with_faults(11);
}

#[test]
fn apply_replan_destroy_under_faults_seed_12() {
    apply_replan_destroy_with_faults(12);
}

#[test]
fn apply_replan_destroy_under_faults_seed_13() {
    apply_replan_destroy_with_faults(13);
}

#[test]
fn containers_on_local_machines_answer_strict_ssh_as_the_plan_user() {
    if !common::machines() {
        return;
    }
    let (cidr, net) = common::free_subnet();
    let mut sim = ProxmoxSim::start(&["--machines", "local", "--op-time", "200"]);
    let port = sim.port;
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts = format!("  - {{ name: m, count: 2, ip: {net}.11, vmid: 201, kind: lxc }}\n");
    let plan = write_plan(dir.path(), "pve-machines", &sim, &cidr, &hosts);
    let env = [("PROXMOX_TOKEN_SECRET", sim.secret.as_str())];

    // With the SSH wait: rigger logs in once as root (host key checked against
    // the creation log), creates `rigger`, then waits for strict SSH as rigger.
    let out = rigger_until_not_error(1, &["apply", &plan, "--infra-only", "--auto-approve"], &env);
    assert!(out.status.success(), "apply failed:\n{}", out.text());

    let guests = guests_other_than_the_template(&sim);
    for vmid in [201, 202] {
        let guest = guests.iter().find(|g| g.vmid == vmid).unwrap_or_else(|| panic!("CT {vmid} missing: {guests:?}"));
        assert_eq!(guest.machine.as_deref(), Some(format!("pvesim-{port}-{vmid}").as_str()));
    }

    let known_hosts = dir.path().join(".rigger").join("pve-machines.known_hosts");
    let ssh = |ip: &str, known_hosts: &Path, cmd: &str| {
        std::process::Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg("-i")
            .arg(dir.path().join("id_ed25519"))
            .arg(format!("rigger@{ip}"))
            .arg(cmd)
            .output()
            .expect("run ssh")
    };
    for (name, ip) in [("m-1", format!("{net}.11")), ("m-2", format!("{net}.12"))] {
        let out = ssh(&ip, &known_hosts, "hostname && sudo -n id -u");
        assert!(out.status.success(), "ssh rigger@{ip}: {}", out.stderr_text());
        assert_eq!(out.stdout_text(), format!("{name}\n0\n"), "{ip}");
    }
    // Only the recorded host key is accepted.
    let tampered = dir.path().join("tampered_known_hosts");
    std::fs::write(&tampered, format!("{net}.11 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqGLrfpnTV3nB0DfBgsmK0ZC5sLfqjlP7YZdEeNFYwF\n")).expect("write");
    assert!(!ssh(&format!("{net}.11"), &tampered, "true").status.success(), "ssh must refuse a host key rigger did not record");

    let out = rigger_until_not_error(1, &["plan", &plan, "--infra-only", "--detailed-exitcode"], &env);
    assert_eq!(out.code(), 0, "re-plan must show no changes:\n{}", out.text());

    let out = rigger_until_not_error(1, &["destroy", &plan, "--auto-approve"], &env);
    assert!(out.status.success(), "destroy failed:\n{}", out.text());
    assert!(guests_other_than_the_template(&sim).is_empty());
    let left: Vec<String> = sim_leftovers(port, &net).into_iter().filter(|l| !l.starts_with("bridge") && !l.starts_with("address")).collect();
    assert!(left.is_empty(), "destroy left machines behind: {left:?}");

    // Stopping the simulator takes its bridge and gateway address down too.
    sim.stop();
    let left = sim_leftovers(port, &net);
    assert!(left.is_empty(), "left behind after the simulator stopped: {left:?}");
}
