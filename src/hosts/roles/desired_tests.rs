//! What the etcd, Patroni and HAProxy roles want on each host of a small
//! plan: pure (plan + secrets → files, packages, services), no host needed.

use crate::hosts::ops::{HostDesired, ManagedFile, OnChange};
use crate::plan::model::Plan;
use crate::render::Renderer;
use std::collections::BTreeMap;

const PLAN: &str = "version: 1\nproject: hf-roles\nprovider: { kind: local }\nssh: { user: rigger, private_key_file: ./k }\n\
    network: { name: main, subnets: [ { name: db, cidr: 10.9.0.0/24 } ] }\n\
    hosts:\n  - { name: pg, count: 3, roles: [etcd, patroni], ip: 10.9.0.21 }\n  - { name: lb, roles: [haproxy], ip: 10.9.0.11 }\n\
    services:\n  patroni: { scope: shop }\n  haproxy: { write_port: 5000, read_port: 5001 }\n";

fn plan(text: &str) -> Plan {
    crate::plan::load_str(std::path::Path::new("/tmp/hf-roles.yaml"), text).unwrap_or_else(|e| panic!("{e:#}"))
}

fn secrets(plan: &Plan) -> BTreeMap<String, String> {
    let mut state = crate::state::State::new(&plan.project, "local");
    crate::commands::ensure_generated(&mut state, plan).expect("secrets");
    state.secrets
}

fn desired(plan: &Plan, host: &str) -> HostDesired {
    desired_with(plan, host, &secrets(plan))
}

fn desired_with(plan: &Plan, host: &str, secrets: &BTreeMap<String, String>) -> HostDesired {
    crate::hosts::roles::desired(plan, plan.host(host).expect("host"), secrets, &Renderer::new().unwrap()).unwrap_or_else(|e| panic!("{e:#}"))
}

fn file<'a>(d: &'a HostDesired, path: &str) -> &'a ManagedFile {
    d.files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("{} has no {path}: {:?}", d.host, d.files.iter().map(|f| &f.path).collect::<Vec<_>>()))
}

#[test]
fn etcd_names_each_member_and_keeps_the_member_list_out_of_the_restart_path() {
    let p = plan(PLAN);
    let d = desired(&p, "pg-2");
    assert!(d.packages.contains(&"etcd-server".to_string()));
    let env = file(&d, "/etc/default/etcd");
    assert!(env.content.contains("ETCD_NAME=\"pg-2\""), "{}", env.content);
    // security.tls is on by default: peers and clients talk TLS with client certificates.
    assert!(env.content.contains("ETCD_LISTEN_PEER_URLS=\"https://10.9.0.22:2380\""), "{}", env.content);
    assert!(env.content.contains("ETCD_PEER_CLIENT_CERT_AUTH=\"true\""), "{}", env.content);
    assert_eq!(env.notify, vec!["etcd"]);
    // The initial cluster lists every member, in a file that restarts nothing when it changes.
    let boot = file(&d, "/etc/default/etcd-bootstrap");
    assert!(boot.content.contains("ETCD_INITIAL_CLUSTER=\"pg-1=https://10.9.0.21:2380,pg-2=https://10.9.0.22:2380,pg-3=https://10.9.0.23:2380\""), "{}", boot.content);
    assert!(boot.notify.is_empty() && !env.content.contains("ETCD_INITIAL_CLUSTER="));
    assert!(d.services.iter().any(|s| s.name == "etcd" && s.on_change == OnChange::Custom));
    assert!(desired(&p, "lb").files.iter().all(|f| !f.path.contains("etcd")), "the lb runs no etcd");
}

#[test]
fn patroni_points_at_every_etcd_member_and_lets_in_exactly_the_hosts_that_connect() {
    let p = plan(PLAN);
    let s = secrets(&p);
    let d = desired_with(&p, "pg-1", &s);
    let cfg = file(&d, "/etc/patroni/config.yml");
    assert_eq!((cfg.mode, cfg.owner.as_str()), (0o600, "postgres"), "it holds passwords");
    assert_eq!(cfg.validate.as_ref().map(|v| v.name.as_str()), Some("patroni --validate-config"));
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&cfg.content).unwrap_or_else(|e| panic!("{e}\n{}", cfg.content));
    assert_eq!(yaml["scope"], "shop");
    assert_eq!(yaml["name"], "pg-1");
    assert_eq!(yaml["etcd3"]["hosts"], "10.9.0.21:2379,10.9.0.22:2379,10.9.0.23:2379");
    assert_eq!(yaml["postgresql"]["authentication"]["superuser"]["password"].as_str(), s.get("postgres_superuser_password").map(String::as_str));
    let hba: Vec<&str> = yaml["postgresql"]["pg_hba"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(hba.iter().any(|l| l.contains("10.9.0.11/32") && !l.contains("replication")), "the lb connects: {hba:?}");
    assert!(hba.iter().any(|l| l.contains("replication") && l.contains("10.9.0.22/32")), "members replicate: {hba:?}");
    assert!(!hba.iter().any(|l| l.contains("0.0.0.0/0")), "{hba:?}");
    // The distro's own PostgreSQL must not run beside Patroni's.
    assert!(d.stop_disable.iter().any(|s| s.name == "postgresql" && s.role == "patroni"), "patroni stops it");
    // The password is in the Patroni config only, never in another file.
    let superuser = &s["postgres_superuser_password"];
    for f in d.files.iter().filter(|f| f.path != cfg.path) {
        assert!(!f.content.contains(superuser.as_str()), "{} holds the superuser password", f.path);
    }
}

#[test]
fn haproxy_sends_writes_to_the_primary_and_reads_to_replicas_checked_through_patroni() {
    let p = plan(PLAN);
    let d = desired(&p, "lb");
    let cfg = file(&d, "/etc/haproxy/haproxy.cfg");
    assert_eq!(cfg.validate.as_ref().map(|v| v.command.as_str()), Some("haproxy -c -f {}"));
    assert!(cfg.content.contains("bind *:5000") && cfg.content.contains("bind *:5001"), "{}", cfg.content);
    for (i, ip) in ["10.9.0.21", "10.9.0.22", "10.9.0.23"].iter().enumerate() {
        let line = format!("server pg-{} {ip}:5432 check port 8008", i + 1);
        assert_eq!(cfg.content.matches(&line).count(), 2, "{line} in both backends:\n{}", cfg.content);
    }
    assert!(d.services.iter().any(|s| s.name == "haproxy" && s.on_change == OnChange::Reload), "changes reload, not restart");
    // Two more members are two more servers.
    let five = plan(&PLAN.replace("count: 3", "count: 5"));
    assert!(file(&desired(&five, "lb"), "/etc/haproxy/haproxy.cfg").content.contains("server pg-5 10.9.0.25:5432"));
}
