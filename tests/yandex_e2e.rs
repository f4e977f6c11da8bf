//! The Yandex provider end to end, with real processes: `rigger sim yandex` as
//! a child process on loopback, and the rigger binary applying, re-planning and
//! destroying plans against it. The simulator's `/_sim/inventory` says what
//! exists and everything it ever created, so duplicates and leftovers show.
//!
//! Without `--machines local` the instances exist only as API objects and their
//! addresses are never dialled (`--no-ssh-wait`). With it (last test, as root)
//! the machines are real local containers in namespaces this test made.

mod common;

use common::ysim::{MachineCleanup, SimProcess};
use common::{OutputText, RIGGER};
use serde_json::Value;
use std::collections::BTreeMap;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;


/// A plan in a temp folder pointing at the simulator, with its own SSH key.
struct SimPlan {
    dir: tempfile::TempDir,
    path: String,
    project: String,
}

impl SimPlan {
    /// `hosts` and `cidr` as plan YAML. Two groups name each other, as the reference plan's do.
    fn new(project: &str, sim: &SimProcess, dir: tempfile::TempDir, cidr: &str, net: &str, hosts: &str, bastion: Option<&str>) -> SimPlan {
        let key = dir.path().join("id_ed25519");
        let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().expect("ssh-keygen");
        assert!(out.status.success(), "ssh-keygen: {}", out.stderr_text());
        let bastion = bastion.map(|b| format!(", bastion: {b}")).unwrap_or_default();
        let text = format!(
            "version: 1\nproject: {project}\n\
             provider:\n  kind: yandex\n  folder_id: b1gtest\n  zone: ru-central1-a\n  endpoint: {endpoint}\n  service_account_key_file: {key_file}\n\
             ssh: {{ user: rigger, private_key_file: ./id_ed25519{bastion} }}\n\
             network:\n  name: main\n  subnets:\n    - {{ name: app, cidr: {cidr}, gateway: {net}.1 }}\n\
             firewall:\n\
             \x20 - name: front\n    rules:\n\
             \x20     - {{ direction: ingress, protocol: tcp, ports: 22, from: 0.0.0.0/0 }}\n\
             \x20     - {{ direction: ingress, protocol: tcp, ports: 5000, from_group: back }}\n\
             \x20     - {{ direction: egress, protocol: any, to: 0.0.0.0/0 }}\n\
             \x20 - name: back\n    rules:\n\
             \x20     - {{ direction: ingress, protocol: tcp, ports: \"22,5432\", from_group: front }}\n\
             \x20     - {{ direction: egress, protocol: any, to: 0.0.0.0/0 }}\n\
             defaults: {{ cores: 2, memory: 2GiB, disk: 10GiB, core_fraction: 20 }}\n\
             hosts:\n{hosts}",
            endpoint = sim.endpoint,
            key_file = sim.key_file.display(),
        );
        let path = dir.path().join("plan.yaml");
        std::fs::write(&path, text).expect("write plan");
        SimPlan { path: path.display().to_string(), dir, project: project.to_string() }
    }

    fn rigger(&self, args: &[&str]) -> std::process::Output {
        Command::new(RIGGER).args(args).arg(&self.path).env("NO_COLOR", "1").output().expect("run rigger")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join(".rigger").join(format!("{}.state.json", self.project))
    }
}

const API_ONLY_HOSTS: &str = "  - { name: lb, ip: 10.20.0.10, public_ip: true, firewall: [front] }\n\
                              \x20 - { name: pg, count: 3, ip: 10.20.0.21, firewall: [back] }\n";

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("temp dir")
}

/// No (kind, name) was created twice: nothing in these runs deletes before destroy.
fn assert_no_duplicates(inventory: &Value) {
    let mut created: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for c in inventory["history"].as_array().expect("history") {
        let key = (c["kind"].as_str().unwrap_or_default().to_string(), c["name"].as_str().unwrap_or_default().to_string());
        created.entry(key).or_default().push(c["id"].as_str().unwrap_or_default().to_string());
    }
    let twice: Vec<_> = created.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "created more than once: {twice:?}");
    for kind in ["networks", "subnets", "security_groups", "instances"] {
        let names: Vec<&str> = inventory[kind].as_array().expect("list").iter().filter_map(Value::as_str).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "two live {kind} share a name: {names:?}");
    }
}

fn assert_empty(inventory: &Value) {
    for kind in ["networks", "subnets", "security_groups", "instances"] {
        assert_eq!(inventory[kind].as_array().map(Vec::len), Some(0), "{kind} left after destroy: {}", inventory[kind]);
    }
    assert_eq!(inventory["disks"], 0, "boot disks left after destroy");
}

#[test]
fn faults_apply_replan_destroy_without_duplicates() {
    for seed in ["1", "2", "3"] {
        let dir = temp_dir("rigger-yc-faults-");
        let sim = SimProcess::start(dir.path(), &["--faults", "0.1", "--seed", seed]);
        let plan = SimPlan::new("yfaults", &sim, dir, "10.20.0.0/24", "10.20.0", API_ONLY_HOSTS, None);

        let out = plan.rigger(&["apply", "--infra-only", "--no-ssh-wait", "--auto-approve"]);
        assert!(out.status.success(), "seed {seed}: apply under faults:\n{}", out.text());
        let out = plan.rigger(&["plan", "--infra-only", "--detailed-exitcode"]);
        assert_eq!(out.code(), 0, "seed {seed}: re-plan must be empty:\n{}", out.text());

        // Host keys came from the serial console: every machine is in known_hosts.
        let known_hosts = std::fs::read_to_string(plan.dir.path().join(".rigger/yfaults.known_hosts")).expect("known_hosts");
        for ip in ["10.20.0.10", "10.20.0.21", "10.20.0.22", "10.20.0.23"] {
            assert!(known_hosts.lines().any(|l| l.split(' ').next().is_some_and(|names| names.split(',').any(|n| n == ip))), "seed {seed}: no host key for {ip}:\n{known_hosts}");
        }

        let inventory = sim.inventory();
        assert_no_duplicates(&inventory);
        assert!(inventory["faults_before"].as_u64().unwrap_or(0) + inventory["answers_lost"].as_u64().unwrap_or(0) > 0, "seed {seed}: no fault was injected");

        let out = plan.rigger(&["destroy", "--auto-approve"]);
        assert!(out.status.success(), "seed {seed}: destroy under faults:\n{}", out.text());
        assert_empty(&sim.inventory());
    }
}

#[test]
fn apply_killed_at_random_points_converges() {
    use rand::Rng;
    let dir = temp_dir("rigger-yc-kill-");
    // Operations take a while, so kills land in the middle of them.
    let sim = SimProcess::start(dir.path(), &["--op-time", "400", "--faults", "0.05", "--seed", "7"]);
    let plan = SimPlan::new("ykill", &sim, dir, "10.20.0.0/24", "10.20.0", API_ONLY_HOSTS, None);
    let mut rng = rand::thread_rng();
    for trial in 0..5 {
        let mut apply = Command::new(RIGGER)
            .args(["apply", "--infra-only", "--no-ssh-wait", "--auto-approve", &plan.path])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn apply");
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..1500)));
        let _ = apply.kill(); // SIGKILL, by the pid we spawned
        let _ = apply.wait();
        if let Ok(text) = std::fs::read_to_string(plan.state_path()) {
            serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("trial {trial}: the state is corrupt after a kill ({e}):\n{text}"));
        }
        assert_no_duplicates(&sim.inventory());
    }
    let out = plan.rigger(&["apply", "--infra-only", "--no-ssh-wait", "--auto-approve"]);
    assert!(out.status.success(), "apply after the kills:\n{}", out.text());
    let out = plan.rigger(&["plan", "--infra-only", "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "re-plan after the kills must be empty:\n{}", out.text());
    let inventory = sim.inventory();
    assert_no_duplicates(&inventory);
    assert_eq!(inventory["instances"].as_array().map(Vec::len), Some(4), "{inventory}");

    let out = plan.rigger(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "destroy:\n{}", out.text());
    assert_empty(&sim.inventory());
}

/// The id of the live instance with this cloud name (the newest made under it).
fn instance_id(inventory: &Value, cloud_name: &str) -> String {
    let history = inventory["history"].as_array().expect("history");
    let made = history.iter().rev().find(|c| c["kind"] == "instance" && c["name"] == cloud_name);
    made.and_then(|c| c["id"].as_str()).unwrap_or_else(|| panic!("no instance {cloud_name}: {inventory}")).to_string()
}

/// An instance left STOPPED — its start failed after its cores changed, so
/// the failed apply's attributes all match — is started by the next apply,
/// and `rigger plan` shows that start before.
#[test]
fn an_instance_left_stopped_is_started_by_the_next_apply() {
    let dir = temp_dir("rigger-yc-stopped-");
    let sim = SimProcess::start(dir.path(), &["--op-time", "20", "--seed", "5"]);
    let plan = SimPlan::new("ystop", &sim, dir, "10.20.0.0/24", "10.20.0", API_ONLY_HOSTS, None);
    let out = plan.rigger(&["apply", "--infra-only", "--no-ssh-wait", "--auto-approve"]);
    assert!(out.status.success(), "first apply:\n{}", out.text());

    // Four cores and 4 GiB everywhere (stop, change, start); pg-1's start fails, as when the zone lacks capacity.
    let id = instance_id(&sim.inventory(), "ystop-pg-1");
    sim.post(&format!("/_sim/instances/{id}/fail-start?times=1"));
    let text = std::fs::read_to_string(&plan.path).expect("read plan");
    std::fs::write(&plan.path, text.replace("cores: 2, memory: 2GiB", "cores: 4, memory: 4GiB")).expect("write plan");
    let out = plan.rigger(&["apply", "--infra-only", "--no-ssh-wait", "--auto-approve"]);
    assert!(!out.status.success(), "the start was to fail:\n{}", out.text());
    assert!(out.text().contains("Start instance") && out.text().contains("RESOURCE_EXHAUSTED"), "{}", out.text());

    let out = plan.rigger(&["plan", "--infra-only", "--detailed-exitcode"]);
    assert_eq!(out.code(), 2, "the stopped instance must plan a start:\n{}", out.text());
    let shown = out.stdout_text();
    assert!(shown.contains("machine.pg-1 will be updated in place") && shown.contains(r#"status = "STOPPED" -> "RUNNING""#), "{shown}");
    assert!(shown.contains("0 to add, 1 to change, 0 to destroy"), "{shown}");

    let out = plan.rigger(&["apply", "--infra-only", "--no-ssh-wait", "--auto-approve"]);
    assert!(out.status.success(), "apply after the failed start:\n{}", out.text());
    let out = plan.rigger(&["plan", "--infra-only", "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "re-plan must be empty:\n{}", out.text());
    assert_eq!(instance_id(&sim.inventory(), "ystop-pg-1"), id, "started in place, not replaced");

    let out = plan.rigger(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "destroy:\n{}", out.text());
    assert_empty(&sim.inventory());
}

/// An instance in ERROR: `rigger plan` shows it apart from the changes, as
/// left as it is, with why and what to do, counts no change for it and exits
/// 1 (the plan cannot be applied as it is) — not "will be updated in place"
/// with exit 2. `--json` says the same. `apply` refuses it and keeps it; once
/// it runs again the plan is empty.
#[test]
fn an_instance_in_error_is_planned_as_blocked_not_as_an_update() {
    let dir = temp_dir("rigger-yc-error-");
    let sim = SimProcess::start(dir.path(), &["--op-time", "20", "--seed", "6"]);
    let plan = SimPlan::new("yerr", &sim, dir, "10.20.0.0/24", "10.20.0", API_ONLY_HOSTS, None);
    let out = plan.rigger(&["apply", "--infra-only", "--no-ssh-wait", "--auto-approve"]);
    assert!(out.status.success(), "first apply:\n{}", out.text());
    let id = instance_id(&sim.inventory(), "yerr-pg-2");
    sim.post(&format!("/_sim/instances/{id}/status?status=ERROR"));

    for args in [&["plan", "--infra-only", "--detailed-exitcode"][..], &["plan", "--infra-only"][..]] {
        let out = plan.rigger(args);
        assert_eq!(out.code(), 1, "{args:?}: a plan that cannot be applied as it is exits 1:\n{}", out.text());
        let shown = out.stdout_text();
        assert!(!shown.contains("will be updated in place") && !shown.contains("rigger will perform"), "{args:?}: {shown}");
        assert!(shown.contains("rigger will NOT change these") && shown.contains("machine.pg-2 is left as it is"), "{args:?}: {shown}");
        assert!(shown.contains(&format!("instance {id} is ERROR")) && shown.contains(&format!("yc compute instance delete {id}")), "{args:?}: {shown}");
        assert!(shown.contains("0 to add, 0 to change, 0 to destroy"), "{args:?}: {shown}");
        assert!(out.stderr_text().contains("rigger will not change machine.pg-2"), "{args:?}: {}", out.stderr_text());
    }

    let out = plan.rigger(&["plan", "--infra-only", "--json"]);
    assert_eq!(out.code(), 1, "--json:\n{}", out.text());
    let doc: Value = serde_json::from_str(&out.stdout_text()).unwrap_or_else(|e| panic!("--json is not JSON ({e}):\n{}", out.text()));
    let pg2 = doc["resource_changes"].as_array().expect("resource_changes").iter().find(|c| c["address"] == "machine.pg-2").expect("machine.pg-2");
    assert!(pg2["blocked"].as_str().is_some_and(|b| b.contains(&format!("instance {id} is ERROR"))), "{pg2}");
    assert_eq!((doc["summary"]["change"].as_u64(), doc["summary"]["blocked"].as_u64()), (Some(0), Some(1)), "{}", doc["summary"]);
    let others: Vec<&Value> = doc["resource_changes"].as_array().unwrap().iter().filter(|c| c["address"] != "machine.pg-2").collect();
    assert!(others.iter().all(|c| c["action"] == "no-op" && c["blocked"].is_null()), "{others:?}");

    // A saved plan is for applying exactly: this one is not saved.
    let saved = plan.dir.path().join("error.plan");
    let out = plan.rigger(&["plan", "--infra-only", "--out", saved.to_str().unwrap()]);
    assert_eq!(out.code(), 1, "--out:\n{}", out.text());
    assert!(!saved.exists(), "a plan that cannot be applied was saved");

    let out = plan.rigger(&["apply", "--infra-only", "--no-ssh-wait", "--auto-approve"]);
    assert!(!out.status.success(), "apply must refuse the instance in ERROR:\n{}", out.text());
    assert!(out.text().contains(&format!("instance {id} is ERROR")), "{}", out.text());
    assert!(out.stderr_text().contains("nothing was changed: rigger will not change machine.pg-2"), "refused before changing anything:\n{}", out.text());
    let inventory = sim.inventory();
    assert_eq!(instance_id(&inventory, "yerr-pg-2"), id, "kept, not replaced");
    assert_no_duplicates(&inventory);

    sim.post(&format!("/_sim/instances/{id}/status?status=RUNNING"));
    let out = plan.rigger(&["plan", "--infra-only", "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "running again, nothing to do:\n{}", out.text());

    let out = plan.rigger(&["destroy", "--auto-approve"]);
    assert!(out.status.success(), "destroy:\n{}", out.text());
    assert_empty(&sim.inventory());
}

#[test]
fn local_machines_answer_ssh_with_verified_host_keys() {
    if !common::machines() {
        return;
    }
    let dir = temp_dir("rigger-yc-machines-");
    let mut cleanup = MachineCleanup::default();
    let (cidr, net) = common::free_subnet();
    let sim = SimProcess::start(dir.path(), &["--machines", "local", "--seed", "11"]);
    let hosts = format!(
        "  - {{ name: gw, ip: {net}.11, public_ip: true, firewall: [front] }}\n\
         \x20 - {{ name: db, ip: {net}.12, firewall: [back] }}\n"
    );
    let plan = SimPlan::new("ymach", &sim, dir, &cidr, &net, &hosts, Some("gw"));

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // With the SSH wait: rigger dials gw by its public address and db through gw,
        // checking host keys it read from the serial console.
        let out = plan.rigger(&["apply", "--infra-only", "--auto-approve"]);
        cleanup.record(&sim.inventory());
        assert!(out.status.success(), "apply with the SSH wait:\n{}", out.text());

        let known_hosts = plan.dir.path().join(".rigger/ymach.known_hosts");
        let ssh = |ip: &str| {
            Command::new("ssh")
                .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .arg("-i")
                .arg(plan.dir.path().join("id_ed25519"))
                .arg(format!("rigger@{ip}"))
                .arg("hostname")
                .output()
                .expect("run ssh")
        };
        let out = ssh(&format!("{net}.12"));
        assert!(out.status.success(), "ssh db: {}", out.stderr_text());
        assert_eq!(out.stdout_text().trim(), "db");

        let out = plan.rigger(&["plan", "--infra-only", "--detailed-exitcode"]);
        assert_eq!(out.code(), 0, "re-plan must be empty:\n{}", out.text());

        let out = plan.rigger(&["destroy", "--auto-approve"]);
        assert!(out.status.success(), "destroy:\n{}", out.text());
        assert_empty(&sim.inventory());
        // Deleting an instance removes its machine in the background.
        assert_eq!(cleanup.leftovers_after(Duration::from_secs(90)), Vec::<String>::new(), "left behind after destroy");
    }));
    cleanup.finish(sim, || drop(plan.rigger(&["destroy", "--auto-approve"])), result);
}
