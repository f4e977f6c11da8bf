//! The client's path through two subnets (issue 11, items 1 and 2): HAProxy
//! and its VIP in a front subnet, Patroni and etcd in a data subnet. First with
//! the old pg_hba (the Patroni subnet only, put back through
//! RIGGER_TEMPLATES_DIR): apply must fail at the client-path gate with the
//! server's own pg_hba message. Then with rigger's own templates: pg_hba comes
//! from the flow model, apply converges, `status` proves every path.
//! Needs root and local machines (5 of them); a few minutes.

mod common;
use common::{LocalPlan, OutputText, RIGGER};
use std::process::Command;

fn plan_text(project: &str, cidr: &str, net: &str, data_cidr: &str, data_net: &str) -> String {
    format!(
        "version: 1\nproject: {project}\nprovider: {{ kind: local }}\n\
ssh: {{ user: rigger, private_key_file: ./id_ed25519 }}\n\
network:\n  name: main\n  subnets:\n    - {{ name: front, cidr: {cidr} }}\n    - {{ name: data, cidr: {data_cidr} }}\n\
defaults: {{ cores: 1, memory: 1GiB, disk: 3GiB }}\n\
hosts:\n\
  - {{ name: pg, count: 3, roles: [etcd, patroni], subnet: data, ip: {data_net}.21 }}\n\
  - {{ name: lb, count: 2, roles: [haproxy, keepalived], subnet: front, ip: {net}.11 }}\n\
services:\n  patroni: {{ scope: two-nets, synchronous_mode: false }}\n  haproxy: {{ write_port: 6432, read_port: 6433 }}\n  keepalived: {{ vip: {net}.100 }}\n"
    )
}

/// The pg_hba rigger rendered before the flow model: the Patroni hosts' own subnet only.
fn old_subnet_only_template() -> String {
    let ours = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/patroni.yml.j2")).expect("template");
    let grants = "{%- for e in access.pg_hba %}\n    - {{ \"hostssl\" if security.tls else \"host\" }} {{ e.database }} {{ e.user }} {{ e.address }} scram-sha-256\n{%- endfor %}";
    assert_eq!(ours.matches(grants).count(), 2, "the template's pg_hba loops changed; update this test");
    ours.replace(
        grants,
        "\n    - {{ \"hostssl\" if security.tls else \"host\" }} replication replicator {{ subnet.cidr }} scram-sha-256\n    - {{ \"hostssl\" if security.tls else \"host\" }} all all {{ subnet.cidr }} scram-sha-256",
    )
}

fn apply(plan: &LocalPlan, templates: Option<&std::path::Path>) -> std::process::Output {
    let mut c = Command::new(RIGGER);
    c.args(["apply", plan.path(), "--auto-approve"]).env("NO_COLOR", "1");
    if let Some(t) = templates {
        c.env("RIGGER_TEMPLATES_DIR", t);
    }
    c.output().expect("run rigger")
}

#[test]
fn haproxy_in_a_front_subnet_reaches_patroni_in_a_data_subnet() {
    if !common::machines() {
        return;
    }
    let chosen = std::cell::RefCell::new((String::new(), String::new()));
    let plan = LocalPlan::from_text("t-fl-nets", |project, cidr, net| {
        let mut data = common::free_subnet();
        while data.0 == cidr {
            data = common::free_subnet();
        }
        *chosen.borrow_mut() = data.clone();
        plan_text(project, cidr, net, &data.0, &data.1)
    });
    let data = chosen.into_inner();
    let old = tempfile::tempdir().expect("temp dir");
    std::fs::write(old.path().join("patroni.yml.j2"), old_subnet_only_template()).unwrap();

    // The layout that used to end in "Apply complete!" with every login refused.
    let out = apply(&plan, Some(old.path()));
    let text = out.text();
    assert!(!out.status.success(), "the subnet-only pg_hba must fail the client-path gate:\n{text}");
    assert!(text.contains("no pg_hba.conf entry for host"), "the gate shows the server's pg_hba message:\n{text}");
    assert!(text.contains("write port"), "the gate names the port it logged in through:\n{text}");
    println!("with the subnet-only pg_hba, apply failed as it must:\n{}", text.lines().filter(|l| l.contains("pg_hba")).take(3).collect::<Vec<_>>().join("\n"));

    // rigger's own pg_hba, from the flow model: the same stack converges.
    let out = apply(&plan, None);
    assert!(out.status.success(), "apply with the flow model's pg_hba:\n{}", out.text());

    let status = common::rigger(&["status", plan.path()]);
    let s = status.stdout_text();
    println!("{s}");
    assert_eq!(status.code(), 0, "status must be healthy:\n{}", status.text());
    for path in ["lb-1 write port", "lb-1 read port", "lb-2 write port", "lb-2 read port", "VIP write port", "VIP read port"] {
        assert!(s.lines().any(|l| l.starts_with("ok") && l.contains(&format!("path {path}"))), "status proves the {path}:\n{s}");
    }

    // Exactly the hosts that connect: the LB hosts and the members by /32, no subnet.
    let pg1 = format!("{}.21", data.1);
    let hba = plan.ssh(&pg1, "sudo -n sh -c 'cat /var/lib/postgresql/15/two-nets/pg_hba.conf'");
    for ip in [format!("{}.11", plan.net_prefix), format!("{}.12", plan.net_prefix), format!("{}.22", data.1)] {
        assert!(hba.contains(&format!("hostssl all all {ip}/32 scram-sha-256")), "pg_hba lets in {ip} (over TLS only):\n{hba}");
    }
    assert!(hba.contains(&format!("hostssl replication replicator {}.23/32", data.1)), "{hba}");
    assert!(!hba.contains(&format!("{}.11/32 scram-sha-256\nhostssl replication", plan.net_prefix)) && !hba.contains(&format!("replicator {}.11/32", plan.net_prefix)), "no replication for HAProxy hosts:\n{hba}");
    assert!(!hba.contains("/24"), "nothing wider than a host:\n{hba}");

    // A reload keeps what the checks know: the write port never balances over
    // the replicas, not even in the new process's first moments (HAProxy 2.6
    // starts every server UP unless the state is saved and loaded).
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(plan.state_path()).expect("state")).expect("state JSON");
    let stats_password = state["secrets"]["haproxy_stats_password"].as_str().expect("stats password").to_string();
    let samples = write_servers_up_after_reload(&plan, &format!("{}.12", plan.net_prefix), &stats_password);
    println!("write servers UP in the 3 s after a reload, every 100 ms: {samples:?}");
    assert!(samples.len() >= 10 && samples.iter().all(|n| *n == 1), "the write port had other than one server UP right after a reload: {samples:?}");

    // A client path that breaks later is seen by status too.
    plan.ssh(&format!("{}.11", plan.net_prefix), "sudo -n systemctl stop haproxy");
    let status = common::rigger(&["status", plan.path()]);
    assert_eq!(status.code(), 1, "status sees the broken path:\n{}", status.text());
    assert!(status.stdout_text().lines().any(|l| l.starts_with("FAIL") && l.contains("path lb-1 write port")), "{}", status.text());
}

/// Reload HAProxy on `ip`, then count the write backend's servers that are UP
/// every 100 ms for 3 s (the stats password goes over stdin, never in argv).
fn write_servers_up_after_reload(plan: &LocalPlan, ip: &str, password: &str) -> Vec<usize> {
    use std::io::Write;
    let script = "read -r P; sudo -n systemctl reload haproxy || exit 1; i=0; while [ $i -lt 30 ]; do \
        printf 'user = \"admin:%s\"\\n' \"$P\" | curl -s -m 2 -K - 'http://127.0.0.1:8404/stats;csv' | awk -F, '$1 == \"primary\" && $2 != \"FRONTEND\" && $2 != \"BACKEND\" && $18 ~ /^UP/' | wc -l; \
        sleep 0.1; i=$((i + 1)); done";
    let mut child = Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", plan.known_hosts().display()))
        .arg("-i")
        .arg(plan.dir().join("id_ed25519"))
        .arg(format!("rigger@{ip}"))
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ssh");
    child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("password to ssh");
    let out = child.wait_with_output().expect("ssh output");
    assert!(out.status.success(), "reload and sampling on {ip} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}
