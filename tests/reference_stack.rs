//! The reference stack, end to end on real local machines: plans/local-ha.yaml
//! (13 machines: 3 etcd, 3 Patroni, 2 HAProxy + keepalived VIP, Redis, apps,
//! nginx) under a project name and subnet of its own, so it never touches a
//! stack someone is running. One build, then every check in order:
//! the DB layer's health, the write/read ports through the VIP, a no-change
//! second apply, the hand-off to Ansible and ssh, configs the daemon rejects,
//! a rolling Patroni parameter change, and a clean destroy.

mod common;

use common::{free_subnet, leftovers, require_machines, rigger, rigger_env, OutputText};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Stack {
    project: String,
    net: String,
    dir: tempfile::TempDir,
    plan: String,
}

impl Stack {
    fn new() -> Stack {
        require_machines();
        let project = format!("t-ref-{:04x}", rand::random::<u16>());
        let (_, net) = free_subnet();
        let dir = tempfile::Builder::new().prefix(&format!("rigger-{project}-")).tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(repo.join("plans/local-ha.yaml"))
            .unwrap()
            .replace("project: local-ha", &format!("project: {project}"))
            .replace("scope: local-ha", &format!("scope: {project}"))
            .replace("10.20.0.", &format!("{net}."))
            .replace("../examples/", &format!("{}/examples/", repo.display()));
        let plan = dir.path().join("local-ha.yaml");
        std::fs::write(&plan, text).unwrap();
        Stack { project, net, plan: plan.display().to_string(), dir }
    }

    fn ip(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }

    fn rigger_dir(&self) -> PathBuf {
        self.dir.path().join(".rigger")
    }

    fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.rigger_dir().join(format!("{}.state.json", self.project))).unwrap()).unwrap()
    }

    fn secret(&self, name: &str) -> String {
        self.state()["secrets"][name].as_str().unwrap().to_string()
    }

    fn ssh_config(&self) -> PathBuf {
        self.rigger_dir().join(format!("{}.ssh_config", self.project))
    }

    /// Run on a machine over SSH with the project's strict host keys.
    fn on(&self, host: &str, cmd: &str) -> String {
        let out = Command::new("ssh").arg("-F").arg(self.ssh_config()).args(["-o", "BatchMode=yes", host, cmd]).output().unwrap();
        assert!(out.status.success(), "ssh {host} {cmd}: {}", out.stderr_text());
        out.stdout_text()
    }

    /// psql from this host as the superuser (password through the environment).
    fn psql(&self, host: &str, port: u16, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-h", host, "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-Atc", sql])
            .env("PGPASSWORD", self.secret("postgres_superuser_password"))
            .env("PGCONNECT_TIMEOUT", "3")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(out.stdout_text().trim().to_string())
        } else {
            Err(out.stderr_text())
        }
    }

    /// SQL on a Patroni member itself (its local socket, as postgres): pg_hba lets
    /// only the hosts that need it reach a member across the network, not this host.
    fn member_sql(&self, member: &str, sql: &str) -> String {
        self.on(member, &format!("sudo -u postgres psql -Atc \"{sql}\"")).trim().to_string()
    }

    fn status(&self) -> Value {
        let out = rigger(&["status", &self.plan, "--json"]);
        serde_json::from_str(&out.stdout_text()).unwrap_or_else(|e| panic!("status --json: {e}\n{}", out.text()))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = rigger(&["destroy", &self.plan, "--auto-approve"]);
    }
}

fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > limit => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

#[test]
fn reference_stack_end_to_end() {
    if !common::machines() {
        return;
    }
    let s = Stack::new();
    let out = rigger(&["apply", &s.plan, "--auto-approve"]);
    assert!(out.status.success(), "apply failed:\n{}", out.text());

    db_layer_is_healthy(&s);
    ports_behave_through_the_vip(&s);
    second_apply_changes_nothing(&s);
    hand_off_to_ansible_and_ssh(&s);
    rejected_configs_leave_services_running(&s);
    parameter_change_rolls(&s);

    let out = rigger(&["destroy", &s.plan, "--auto-approve"]);
    assert!(out.status.success(), "destroy failed:\n{}", out.text());
    let left = leftovers(&s.project, &s.net);
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn db_layer_is_healthy(s: &Stack) {
    // One status read may land in an etcd leader election (a loaded host); a healthy
    // cluster answers healthy again within a few election timeouts.
    let st = eventually("every etcd member healthy in status", Duration::from_secs(60), || {
        let st = s.status();
        let etcd = st["etcd"].as_array().unwrap();
        assert_eq!(etcd.len(), 3);
        if etcd.iter().all(|m| m["healthy"] == true) { Ok(st) } else { Err(format!("etcd: {etcd:?}")) }
    });
    let members = st["patroni"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    assert_eq!(members.iter().filter(|m| m["role"] == "leader").count(), 1, "{members:?}");
    assert_eq!(members.iter().filter(|m| m["role"] != "leader" && m["streaming"] == true).count(), 2, "{members:?}");
    let vip = &st["vip"];
    assert_eq!(vip["holders"].as_array().unwrap().len(), 1, "VIP: {vip:?}");
    for h in st["haproxy"].as_array().unwrap() {
        let up_primary = h["servers"].as_array().unwrap().iter().filter(|x| x[0] == "primary" && x[2].as_str().unwrap().starts_with("UP")).count();
        assert_eq!(up_primary, 1, "{h:?}");
    }
    assert!(rigger(&["status", &s.plan]).status.success());
}

fn ports_behave_through_the_vip(s: &Stack) {
    let vip = s.ip(10);
    assert_eq!(s.psql(&vip, 5000, "select pg_is_in_recovery()").unwrap(), "f", "the write port reaches the primary");
    assert_eq!(s.psql(&vip, 5001, "select pg_is_in_recovery()").unwrap(), "t", "the read port reaches a replica");
    let marker = format!("row-{}", rand::random::<u32>());
    s.psql(&vip, 5000, &format!("create table if not exists t_rw (v text); insert into t_rw values ('{marker}')")).unwrap();
    eventually("the row written through the write port is read back through the read port", Duration::from_secs(20), || {
        match s.psql(&vip, 5001, &format!("select count(*) from t_rw where v = '{marker}'")) {
            Ok(n) if n == "1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

fn second_apply_changes_nothing(s: &Stack) {
    let out = rigger(&["plan", &s.plan, "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "a re-plan after apply must be empty:\n{}", out.text());
    let started: Vec<String> = (1..=3).map(|i| s.member_sql(&format!("pg-{i}"), "select pg_postmaster_start_time()")).collect();
    let haproxy_pid = s.on("lb-1", "systemctl show -p MainPID --value haproxy");
    let out = rigger(&["apply", &s.plan, "--auto-approve", "-v"]);
    assert!(out.status.success(), "{}", out.text());
    assert!(out.stdout_text().contains("Resources: 0 added, 0 changed, 0 destroyed"), "{}", out.stdout_text());
    for word in ["writing ", "restarting", "reloading", "starting "] {
        assert!(!out.stderr_text().contains(word), "a no-change apply must not be {word}:\n{}", out.stderr_text());
    }
    let after: Vec<String> = (1..=3).map(|i| s.member_sql(&format!("pg-{i}"), "select pg_postmaster_start_time()")).collect();
    assert_eq!(started, after, "PostgreSQL restarted on a no-change apply");
    assert_eq!(haproxy_pid, s.on("lb-1", "systemctl show -p MainPID --value haproxy"), "HAProxy restarted on a no-change apply");
}

fn tool(name: &str) -> String {
    // scripts/test puts the test venv (ansible-core) first on PATH.
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin").join(name);
    if venv.exists() {
        venv.display().to_string()
    } else {
        name.to_string()
    }
}

fn hand_off_to_ansible_and_ssh(s: &Stack) {
    let out = common::rigger_in(s.dir.path(), &["inventory", &s.plan]);
    assert!(out.status.success(), "{}", out.text());
    let inv = s.dir.path().join("inventories").join(&s.project);
    let script = inv.join(format!("{}-inventory.sh", s.project));
    let hosts: Vec<String> = ["etcd-1", "etcd-2", "etcd-3", "pg-1", "pg-2", "pg-3", "lb-1", "lb-2", "redis", "app-1", "app-2", "app-3", "nginx"].iter().map(|h| h.to_string()).collect();
    for source in [inv.join("hosts.ini"), inv.join("hosts.yaml"), script.clone()] {
        let out = Command::new(tool("ansible-inventory")).arg("-i").arg(&source).arg("--list").output().expect("ansible-inventory (scripts/test installs ansible-core)");
        assert!(out.status.success(), "ansible-inventory -i {}: {}", source.display(), out.stderr_text());
        let doc: Value = serde_json::from_str(&out.stdout_text()).unwrap();
        let hv = &doc["_meta"]["hostvars"];
        for h in &hosts {
            assert!(hv.get(h).is_some(), "{}: host {h} missing", source.display());
        }
        assert_eq!(hv["pg-2"]["ansible_host"], s.ip(22), "{}", source.display());
        assert_eq!(hv["pg-2"]["ansible_user"], "rigger");
        assert_eq!(hv["pg-2"]["patroni_rest_port"].as_u64(), Some(8008), "{}: {}", source.display(), hv["pg-2"]);
        assert_eq!(hv["lb-1"]["haproxy_write_port"].as_u64(), Some(5000));
        assert!(hv["pg-2"]["ansible_ssh_common_args"].as_str().unwrap().contains("StrictHostKeyChecking=yes"));
        let members = |g: &str| doc[g]["hosts"].as_array().cloned().unwrap_or_default();
        assert_eq!(members("patroni").len(), 3, "{}: group patroni", source.display());
        assert_eq!(members("pg").len(), 3, "{}: group pg", source.display());
        assert_eq!(members("etcd").len(), 3);
        assert_eq!(members("haproxy").len(), 2);
    }
    let out = Command::new(tool("ansible"))
        .args(["all", "-m", "command", "-a", "hostname", "-o"])
        .arg("-i")
        .arg(inv.join("hosts.ini"))
        .env("ANSIBLE_PYTHON_INTERPRETER", "auto_silent")
        .output()
        .unwrap();
    assert!(out.status.success(), "ansible all -m command: {}", out.text());
    for h in &hosts {
        assert!(out.stdout_text().contains(&format!("{h} | CHANGED | rc=0 | (stdout) {h}")), "ansible on {h}:\n{}", out.stdout_text());
    }
    let out = Command::new("ssh").arg("-F").arg(inv.join("ssh_config")).args(["-o", "BatchMode=yes", "pg-1", "true"]).output().unwrap();
    assert!(out.status.success(), "ssh -F ssh_config pg-1: {}", out.stderr_text());
    // No secret of the state in any generated file.
    let state = s.state();
    for entry in std::fs::read_dir(&inv).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (name, v) in state["secrets"].as_object().unwrap() {
            assert!(!text.contains(v.as_str().unwrap()), "secret {name} leaked into an inventory file");
        }
    }
    let out = rigger(&["output", &s.plan, "--json"]);
    for (name, v) in state["secrets"].as_object().unwrap() {
        assert!(!out.stdout_text().contains(v.as_str().unwrap()), "secret {name} printed by `rigger output`");
    }
}

fn rejected_configs_leave_services_running(s: &Stack) {
    let templates = s.dir.path().join("bad-templates");
    std::fs::create_dir_all(&templates).unwrap();
    let good = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/haproxy.cfg.j2")).unwrap();

    // A config HAProxy itself rejects: the running HAProxy keeps serving.
    std::fs::write(templates.join("haproxy.cfg.j2"), good.replace("    retries 2", "    retries 2\n    this-is-not-a-directive 1")).unwrap();
    let out = rigger_env(&["apply", &s.plan, "--auto-approve"], &[("RIGGER_TEMPLATES_DIR", templates.to_str().unwrap())]);
    assert_eq!(out.code(), 1, "{}", out.text());
    let err = out.stderr_text();
    assert!(err.contains("lb-1") && err.contains("/etc/haproxy/haproxy.cfg") && err.contains("haproxy -c"), "{err}");
    assert!(err.contains("this-is-not-a-directive"), "the checker's own message is shown: {err}");
    assert_eq!(s.on("lb-1", "systemctl is-active haproxy").trim(), "active");
    assert_eq!(s.psql(&s.ip(10), 5000, "select 1").unwrap(), "1", "the write port still works");

    // A template that reads a setting that does not exist: named with its line, nothing touched.
    std::fs::write(templates.join("haproxy.cfg.j2"), good.replace("{{ svc.haproxy.write_port }}", "{{ svc.haproxy.no_such_port }}")).unwrap();
    let out = rigger_env(&["apply", &s.plan, "--auto-approve"], &[("RIGGER_TEMPLATES_DIR", templates.to_str().unwrap())]);
    assert_eq!(out.code(), 1);
    let err = out.stderr_text();
    assert!(err.contains("templates/haproxy.cfg.j2 line") && err.contains("lb-1"), "{err}");

    // And back to the real templates: nothing to do.
    let out = rigger(&["plan", &s.plan, "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "{}", out.text());
}

fn parameter_change_rolls(s: &Stack) {
    let leader_before = s.status()["patroni"].as_array().unwrap().iter().find(|m| m["role"] == "leader").unwrap()["name"].clone();
    let text = std::fs::read_to_string(&s.plan).unwrap();
    let changed = text.replace("synchronous_mode: false }", "synchronous_mode: false, parameters: { max_connections: 150 } }");
    assert_ne!(text, changed, "the plan's patroni line changed shape; update this test");
    std::fs::write(&s.plan, changed).unwrap();

    let out = rigger(&["plan", &s.plan, "--detailed-exitcode"]);
    assert_eq!(out.code(), 2, "{}", out.text());
    assert!(out.stdout_text().contains("max_connections = \"100\" -> \"150\""), "{}", out.stdout_text());
    let out = rigger(&["apply", &s.plan, "--auto-approve"]);
    assert!(out.status.success(), "{}", out.text());
    for i in 1..=3 {
        assert_eq!(s.member_sql(&format!("pg-{i}"), "show max_connections"), "150", "pg-{i}");
    }
    let st = s.status();
    let leader_after = st["patroni"].as_array().unwrap().iter().find(|m| m["role"] == "leader").unwrap()["name"].clone();
    assert_ne!(leader_before, leader_after, "a restart-needing change rolls through a switchover");
    assert!(st["patroni"].as_array().unwrap().iter().all(|m| m["pending_restart"] == false));
    let out = rigger(&["plan", &s.plan, "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "{}", out.text());
}
