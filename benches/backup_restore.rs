//! `cargo bench --bench backup_restore` (root; the local provider's machines):
//! pgBackRest backup and restore throughput for a pgbench database of a few GB
//! against a plain `pg_basebackup` of the same data, in the same run.
//!
//! Builds its own project (the shape of tests/backup.rs: two Patroni members,
//! a repository host), fills the leader with `pgbench -i -s RIGGER_BENCH_SCALE`
//! (default 150, about 2.2 GiB), then measures once each:
//! - `rigger backup --type full` (lz4, aes-256-cbc, process-max 2, over SSH to the repository host);
//! - `pg_basebackup -X stream -c fast` of the same leader, run on the replica
//!   pg-2 into its own disk (plain format: no compression, no encryption; the
//!   flow model's pg_hba grants replication to the members only);
//! - the restore inside `rigger drill restore` (pgBackRest restore of the
//!   leader's data directory; then the whole drill's RTO).
//! Prints; never fails on timing. The project is destroyed at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{rigger, LocalPlan, OutputText};
use std::process::Command;
use std::time::Instant;

fn on(p: &LocalPlan, host: &str, cmd: &str) -> String {
    let config = p.dir().join(".rigger").join(format!("{}.ssh_config", p.project));
    let out = Command::new("ssh").arg("-F").arg(&config).args(["-o", "BatchMode=yes", host, cmd]).output().expect("ssh");
    assert!(out.status.success(), "ssh {host} {cmd}: {}", out.stderr_text());
    out.stdout_text()
}

fn mib_s(bytes: f64, secs: f64) -> String {
    format!("{:.1} MiB/s", bytes / 1048576.0 / secs.max(0.001))
}

fn main() {
    let scale: u32 = std::env::var("RIGGER_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    let p = LocalPlan::from_text("t-bk-bench", |project, cidr, net| {
        format!(
            "version: 1\nproject: {project}\nprovider: {{ kind: local }}\n\
             ssh: {{ user: rigger, private_key_file: ./id_ed25519 }}\n\
             network:\n  name: main\n  subnets: [ {{ name: app, cidr: {cidr} }} ]\n\
             defaults: {{ cores: 2, memory: 2GiB, disk: 20GiB }}\n\
             hosts:\n  - {{ name: pg, count: 2, roles: [etcd, patroni], ip: {net}.21 }}\n  - {{ name: bk, roles: [etcd, backup], ip: {net}.30 }}\n\
             services:\n  patroni: {{ scope: {project} }}\n"
        )
    });
    let apply = rigger(&["apply", p.path(), "--auto-approve"]);
    assert_eq!(apply.code(), 0, "apply:\n{}", apply.text());
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(p.state_path()).unwrap()).unwrap();
    let replication_password = state["secrets"]["replication_password"].as_str().unwrap().to_string();
    let leader_ip = format!("{}.21", p.net_prefix);

    let t = Instant::now();
    on(&p, "pg-1", &format!("cd /tmp && sudo -u postgres /usr/lib/postgresql/15/bin/pgbench -i -s {scale} -q postgres 2>&1 | tail -1"));
    let generate = t.elapsed().as_secs_f64();
    let db_bytes: f64 = on(&p, "pg-1", "cd /tmp && sudo -u postgres psql -XAtqc 'select sum(pg_database_size(oid)) from pg_database'").trim().parse().unwrap();
    println!("pgbench -i -s {scale}: {:.2} GiB in all databases, generated in {generate:.0}s", db_bytes / 1073741824.0);

    let t = Instant::now();
    let backup = rigger(&["backup", p.path(), "--type", "full"]);
    let backup_secs = t.elapsed().as_secs_f64();
    assert_eq!(backup.code(), 0, "backup:\n{}", backup.text());
    println!("rigger backup --type full: {backup_secs:.1}s, {} — {}", mib_s(db_bytes, backup_secs), backup.stdout_text().trim());

    let t = Instant::now();
    on(
        &p,
        "pg-2",
        &format!("sudo rm -rf /var/tmp/bench-bb && cd /tmp && sudo -u postgres env PGPASSWORD={replication_password} pg_basebackup -h {leader_ip} -U replicator -D /var/tmp/bench-bb -X stream -c fast 2>&1 | tail -2"),
    );
    let bb_secs = t.elapsed().as_secs_f64();
    let bb_bytes: f64 = on(&p, "pg-2", "sudo du -sb /var/tmp/bench-bb | cut -f1").trim().parse().unwrap();
    on(&p, "pg-2", "sudo rm -rf /var/tmp/bench-bb");
    println!("pg_basebackup (plain, same data, from the leader to the replica pg-2's disk): {bb_secs:.1}s, {} ({:.2} GiB written)", mib_s(bb_bytes, bb_secs), bb_bytes / 1073741824.0);

    let drill = rigger(&["drill", "restore", p.path()]);
    let out = drill.stdout_text();
    let line = out.lines().find(|l| l.starts_with("RTO:")).unwrap_or("(no RTO line)").to_string();
    println!("rigger drill restore (exit {}): {line}", drill.code());
    let host = Command::new("hostname").output().map(|o| o.stdout_text().trim().to_string()).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("machine: {host}, {cpus} CPU(s); machines of 2 cores / 2 GiB (not enforced by the local provider)");
    let destroy = rigger(&["destroy", p.path(), "--auto-approve"]);
    assert_eq!(destroy.code(), 0, "destroy:\n{}", destroy.text());
}
