//! Reshaping a running stack under load (issue 11, item 5): writes through the
//! VIP every 100 ms and HTTP through nginx all along, while etcd goes 3 → 5 → 3,
//! Patroni 3 → 4 → 3 (the leaving member leads when it leaves) and the apps
//! 3 → 4 → 2, HAProxy 2 → 3 → 2 (the VIP holder leaving), then Redis moves off
//! a host that stays and back (the old machine leaving). Checks: no failed HTTP
//! request (the apps' /health, which pings Redis, during the Redis moves), no acknowledged row lost, the
//! leaving members gone from etcd, Patroni's DCS and the leader's slots,
//! running etcd members not restarted by a grow, `status` healthy at the end.
//! Reports (prints, never asserts) the longest write gap of each phase.
//! Own project (t-rs-…) and subnet; the guard destroys everything it built.

mod common;

use common::{rigger, LocalPlan, OutputText};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shape at one stage: extra etcd hosts, the extra Patroni host, app count.
struct Shape {
    /// Hosts with etcd and Patroni (pg-1..).
    pg: u32,
    etcd_extra: bool,
    patroni_extra: bool,
    apps: u32,
    /// HAProxy + keepalived hosts (lb-1..).
    lbs: u32,
    /// Redis on its own host `cache` instead of beside nginx on `web`.
    cache: bool,
}

fn plan_text(project: &str, cidr: &str, net: &str, app_dir: &Path, shape: &Shape) -> String {
    let mut hosts = format!("  # etcd and Patroni share three hosts; growing etcd adds etcd-only hosts, growing Patroni a Patroni-only one.\n  - {{ name: pg, count: {}, roles: [etcd, patroni], ip: {net}.21, firewall: [inside] }}\n", shape.pg);
    if shape.patroni_extra {
        hosts.push_str(&format!("  - {{ name: pgx, roles: [patroni], ip: {net}.24, firewall: [inside] }}\n"));
    }
    if shape.etcd_extra {
        hosts.push_str(&format!("  - {{ name: ex, count: 2, roles: [etcd], ip: {net}.51, firewall: [inside] }}\n"));
    }
    hosts.push_str(&format!(
        "  - {{ name: lb, count: {}, roles: [haproxy, keepalived], ip: {net}.11, firewall: [inside] }}\n  - {{ name: web, roles: [{}], ip: {net}.5, firewall: [inside] }}\n  - {{ name: app, count: {}, roles: [app], ip: {net}.41, firewall: [inside] }}\n",
        shape.lbs,
        if shape.cache { "nginx" } else { "nginx, redis" },
        shape.apps
    ));
    if shape.cache {
        hosts.push_str(&format!("  - {{ name: cache, roles: [redis], ip: {net}.31, firewall: [inside] }}\n"));
    }
    format!(
        "version: 1
project: {project}
provider: {{ kind: local }}
ssh: {{ user: rigger, private_key_file: ./id_ed25519 }}
network:
  name: main
  subnets:
    - {{ name: app, cidr: {cidr} }}
firewall:
  - name: inside
    rules:
      - {{ direction: ingress, protocol: any, from: {cidr} }}
defaults: {{ cores: 1, memory: 1GiB, disk: 3GiB }}
hosts:
{hosts}services:
  patroni: {{ synchronous_mode: false }}
  keepalived: {{ vip: {net}.10 }}
  app: {{ path: {}, packages: [python3-fastapi, uvicorn, python3-psycopg2, python3-redis] }}
",
        app_dir.display()
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// `curl` to a machine of this test; the HTTP status (0 when no answer).
fn http_status(url: &str) -> u16 {
    let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}", url]).output().expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[derive(Default)]
struct WriteLog {
    /// Acknowledged row ids, with when.
    committed: Vec<(i64, Instant)>,
    /// When an attempt failed (retried on a new connection 100 ms later).
    failures: Vec<Instant>,
}

/// Insert a numbered row through the VIP's write port every 100 ms until `stop`.
fn writer(conninfo: String, password: String, log: Arc<Mutex<WriteLog>>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut id: i64 = 0;
            while !stop.load(Ordering::SeqCst) {
                let tick = Instant::now();
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = connect(&conninfo, &password).await;
                }
                if let Some(c) = &client {
                    id += 1;
                    let r = tokio::time::timeout(Duration::from_secs(3), c.execute("INSERT INTO reshape_load (id) VALUES ($1)", &[&id])).await;
                    match r {
                        Ok(Ok(_)) => log.lock().unwrap().committed.push((id, Instant::now())),
                        _ => {
                            log.lock().unwrap().failures.push(Instant::now());
                            client = None;
                        }
                    }
                } else {
                    log.lock().unwrap().failures.push(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed())).await;
            }
        });
    })
}

/// etcdctl the way rigger runs it (TLS with the host's client certificate when the
/// cluster has it), as root: the key is readable by etcd and root only.
fn etcdctl_as_root(args: &str) -> String {
    format!("sudo -n sh -c {}", rigger::hosts::remote::session::sh_quote(&rigger::hosts::roles::tls::etcdctl(2379, args)))
}

/// TLS verified against the project CA (the plan keeps rigger's default `security.tls`:
/// pg_hba takes only TLS across the network). Set once the first apply made the CA.
static PG_TLS: std::sync::OnceLock<tokio_postgres_rustls::MakeRustlsConnect> = std::sync::OnceLock::new();

async fn connect(conninfo: &str, password: &str) -> Option<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = conninfo.parse().ok()?;
    config.password(password);
    let tls = PG_TLS.get().expect("the project CA is loaded before the first connection").clone();
    let (client, conn) = tokio::time::timeout(Duration::from_secs(3), config.connect(tls)).await.ok()?.ok()?;
    tokio::spawn(conn);
    Some(client)
}

/// The longest time without an acknowledged write inside [from, to].
fn longest_gap(log: &WriteLog, from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for (_, at) in log.committed.iter().filter(|(_, at)| *at >= from && *at <= to) {
        longest = longest.max(at.duration_since(last));
        last = *at;
    }
    longest.max(to.duration_since(last))
}

/// Every etcd member line as (name, started).
fn etcd_members(plan: &LocalPlan, ip: &str) -> Vec<(String, bool)> {
    plan.ssh(ip, &etcdctl_as_root("member list"))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f.len() > 3).then(|| (f[2].to_string(), f[1] == "started"))
        })
        .collect()
}

fn patroni_cluster(plan: &LocalPlan, ip: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&plan.patroni_rest(ip, "-m 5", "/cluster")).expect("cluster JSON");
    v["members"].as_array().expect("members").iter().map(|m| (m["name"].as_str().unwrap_or_default().to_string(), m["role"].as_str().unwrap_or_default().to_string())).collect()
}

fn etcd_pids(plan: &LocalPlan, net: &str) -> Vec<String> {
    (21..=23).map(|i| plan.ssh(&format!("{net}.{i}"), "systemctl show -p MainPID --value etcd").trim().to_string()).collect()
}

#[test]
fn reshape_under_load_etcd_patroni_apps() {
    if !common::machines() {
        return;
    }
    let app_src = tempfile::tempdir().expect("temp dir");
    let app_dir = app_src.path().join("demo-app");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-app"), &app_dir);
    let base = Shape { pg: 3, etcd_extra: false, patroni_extra: false, apps: 3, lbs: 2, cache: false };
    let plan = LocalPlan::from_text("t-rs", |project, cidr, net| plan_text(project, cidr, net, &app_dir, &base));
    let net = plan.net_prefix.clone();
    let cidr = format!("{net}.0/24");
    let write_shape = |shape: &Shape| std::fs::write(plan.path(), plan_text(&plan.project, &cidr, &net, &app_dir, shape)).expect("write plan");
    let pg1 = format!("{net}.21");

    let t0 = Instant::now();
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "first apply failed:\n{}", out.text());
    println!("built 3 etcd/Patroni, 2 HAProxy + keepalived, nginx + Redis, 3 apps in {:.1}s", t0.elapsed().as_secs_f64());

    // Load: a row through the VIP every 100 ms, HTTP through nginx all along.
    let state: Value = serde_json::from_str(&std::fs::read_to_string(plan.state_path()).expect("state")).expect("state JSON");
    let password = state["secrets"]["postgres_superuser_password"].as_str().expect("superuser password").to_string();
    let ca = state["secrets"][rigger::pki::CA_CERT].as_str().expect("project CA in the state");
    let _ = PG_TLS.set(tokio_postgres_rustls::MakeRustlsConnect::new(rigger::pki::client_config(ca).expect("CA")));
    let conninfo = format!("host={net}.10 port=5000 user=postgres dbname=postgres connect_timeout=2 sslmode=require");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let c = connect(&conninfo, &password).await.expect("connect through the VIP");
        c.batch_execute("CREATE TABLE IF NOT EXISTS reshape_load (id bigint PRIMARY KEY, at timestamptz DEFAULT now())").await.expect("create table");
    });
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(WriteLog::default()));
    let writes = writer(conninfo.clone(), password.clone(), log.clone(), stop.clone());
    let http_failed = Arc::new(Mutex::new(Vec::<(u16, f64)>::new()));
    let http_ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let requests = {
        let (stop, failed, ok, url) = (stop.clone(), http_failed.clone(), http_ok.clone(), format!("http://{net}.5/"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match http_status(&url) {
                    200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    code => failed.lock().unwrap().push((code, t0.elapsed().as_secs_f64())),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    assert!(log.lock().unwrap().committed.len() >= 10, "writes through the VIP do not succeed before the reshape");

    // Grow: etcd 3 → 5, Patroni 3 → 4, apps 3 → 4.
    let pids_before = etcd_pids(&plan, &net);
    let leader_of = |ip: &str| patroni_cluster(&plan, ip).into_iter().find(|(_, r)| r == "leader").map(|(n, _)| n);
    let leader_before = leader_of(&pg1);
    let grown = Shape { pg: 3, etcd_extra: true, patroni_extra: true, apps: 4, lbs: 3, cache: false };
    write_shape(&grown);
    let grow_start = Instant::now();
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    let grow_end = Instant::now();
    assert!(out.status.success(), "grow failed:\n{}", out.text());
    let members = etcd_members(&plan, &pg1);
    assert_eq!(members.len(), 5, "{members:?}");
    assert!(members.iter().all(|(_, started)| *started), "{members:?}");
    assert_eq!(etcd_pids(&plan, &net), pids_before, "growing etcd restarted a running member");
    // The new HAProxy host is in the Patroni hosts' certificate names: reissued,
    // and etcd (not restarted) serves the new one — it reads it per handshake.
    let serving = plan.ssh(
        &pg1,
        "echo | sudo -n openssl s_client -connect 127.0.0.1:2379 -CAfile /etc/etcd/tls/ca.crt -cert /etc/etcd/tls/server.crt -key /etc/etcd/tls/server.key 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
    );
    let on_disk = plan.ssh(&pg1, "sudo -n openssl x509 -noout -fingerprint -sha256 -in /etc/etcd/tls/server.crt");
    assert_eq!(serving, on_disk, "etcd serves another certificate than the one on disk");
    assert!(plan.ssh(&pg1, "sudo -n openssl x509 -noout -ext subjectAltName -in /etc/etcd/tls/server.crt").contains(&format!("{net}.13")), "pg-1's certificate does not name the new HAProxy host");
    assert_eq!(leader_of(&pg1), leader_before, "the Patroni leader changed while etcd grew");
    for ip in [format!("{net}.51"), format!("{net}.52")] {
        let join = plan.ssh(&ip, "test -e /etc/default/etcd-join && echo left || echo gone");
        assert_eq!(join.trim(), "gone", "{ip}: the join settings stayed behind");
    }
    assert_eq!(patroni_cluster(&plan, &pg1).len(), 4);
    let out = rigger(&["plan", plan.path(), "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "re-plan after the grow must be empty:\n{}", out.text());

    // Unsafe: 3 of the 4 Patroni members in one apply (etcd stays 3 + 2 → odd, valid).
    // Refused by plan and by apply at the host entry, nothing changed.
    write_shape(&Shape { pg: 1, etcd_extra: true, patroni_extra: false, apps: 4, lbs: 3, cache: false });
    for args in [vec!["plan", plan.path()], vec!["apply", plan.path(), "--auto-approve"]] {
        let out = rigger(&args);
        assert_eq!(out.code(), 1, "{args:?} must refuse removing a Patroni majority:\n{}", out.text());
        let said = out.stderr_text();
        assert!(said.contains(&format!("{}:", plan.path())) && said.contains("would remove 3 of the 4 Patroni members (pg-2, pg-3, pgx)"), "{said}");
        assert!(said.contains("remove at most 2 per apply"), "{said}");
    }
    assert_eq!(patroni_cluster(&plan, &pg1).len(), 4, "a refused apply changed the cluster");
    assert_eq!(etcd_members(&plan, &pg1).len(), 5, "a refused apply changed etcd");
    write_shape(&grown);

    // The member that will leave leads: switch over to it (as an operator would have).
    let leader = patroni_cluster(&plan, &pg1).into_iter().find(|(_, r)| r == "leader").expect("a leader").0;
    let switch_start = Instant::now();
    if leader != "pgx" {
        let body = format!(r#"{{"leader":"{leader}","candidate":"pgx"}}"#);
        // As root with rigger's REST credentials (Patroni asks unsafe requests for them).
        let said = plan.patroni_rest(&pg1, &format!("-m 60 {} -X POST -H 'Content-Type: application/json' --data-binary '{body}'", rigger::hosts::roles::rest_auth::curl_args()), "/switchover");
        println!("switchover to pgx: {said}");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !patroni_cluster(&plan, &pg1).iter().any(|(n, r)| n == "pgx" && r == "leader") {
            assert!(Instant::now() < deadline, "pgx never became the leader");
            std::thread::sleep(Duration::from_millis(500));
        }
        // Let HAProxy and the replicas settle before the shrink.
        std::thread::sleep(Duration::from_secs(8));
    }
    let switch_end = Instant::now();

    // Shrink: etcd 5 → 3, Patroni 4 → 3 (the leader leaves), apps 4 → 2.
    let shrunk = Shape { pg: 3, etcd_extra: false, patroni_extra: false, apps: 2, lbs: 3, cache: false };
    write_shape(&shrunk);
    let out = rigger(&["plan", plan.path()]);
    assert!(out.status.success(), "{}", out.text());
    let text = out.stdout_text();
    println!("{text}");
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("the plan does not show {needle:?}:\n{text}"));
    assert!(at("switch the leader pgx over") < at("haproxy lb-1, lb-2, lb-3: reload without pgx"), "{text}");
    assert!(at("haproxy lb-1, lb-2, lb-3: reload without pgx") < at("nginx web: reload without app-3, app-4"), "{text}");
    assert!(at("nginx web: reload without app-3, app-4") < at("app-3: stop app"), "{text}");
    assert!(at("patroni pgx: stop") < at("etcd ex-1: member remove") && at("etcd ex-1: member remove") < at("etcd ex-2: member remove"), "{text}");
    assert!(at("etcd ex-2: member remove") < at("the cloud deletes"), "{text}");
    let shrink_start = Instant::now();
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    let shrink_end = Instant::now();
    assert!(out.status.success(), "shrink failed:\n{}", out.text());
    let progress = out.stderr_text();
    let drained = progress.find("drain ").unwrap_or_else(|| panic!("no drain steps in the apply:\n{progress}"));
    let deleted = progress.find("machine.pgx").unwrap_or_else(|| panic!("pgx not deleted:\n{progress}"));
    assert!(drained < deleted, "the machine was deleted before the drain:\n{progress}");
    for line in progress.lines().filter(|l| l.contains("drain ") || l.contains(" deleted") || l.contains("healthy (")) {
        println!("shrink: {line}");
    }

    // HAProxy 3 → 2 with the leaving host holding the VIP: put the VIP on lb-3
    // (keepalived stops on lb-1 and lb-2 and comes back; nopreempt leaves the VIP where it is).
    let vip = format!("{net}.10");
    let lbs: Vec<String> = (11..=13).map(|i| format!("{net}.{i}")).collect();
    let holds = |ip: &str| plan.ssh(ip, "ip -4 -o addr show").contains(&format!(" {vip}/"));
    for ip in &lbs[..2] {
        plan.ssh(ip, "sudo -n systemctl stop keepalived");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !holds(&lbs[2]) {
        assert!(Instant::now() < deadline, "lb-3 never took the VIP");
        std::thread::sleep(Duration::from_millis(300));
    }
    for ip in &lbs[..2] {
        plan.ssh(ip, "sudo -n systemctl start keepalived");
    }
    std::thread::sleep(Duration::from_secs(5));
    assert!(holds(&lbs[2]) && !holds(&lbs[0]) && !holds(&lbs[1]), "the VIP left lb-3 (nopreempt)");
    let two_lbs = Shape { lbs: 2, ..shrunk };
    write_shape(&two_lbs);
    let out = rigger(&["plan", plan.path()]);
    assert!(out.status.success(), "{}", out.text());
    let text = out.stdout_text();
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("the plan does not show {needle:?}:\n{text}"));
    assert!(at(&format!("keepalived lb-3: stop, the VIP {vip} moves to lb-1 or lb-2")) < at("the cloud deletes"), "{text}");
    let vip_start = Instant::now();
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    let vip_end = Instant::now();
    assert!(out.status.success(), "HAProxy 3 → 2 failed:\n{}", out.text());
    let progress = out.stderr_text();
    let moved = progress.find("drain ").unwrap_or_else(|| panic!("no drain step in the apply:\n{progress}"));
    let deleted = progress.find("machine.lb-3").unwrap_or_else(|| panic!("lb-3 not deleted:\n{progress}"));
    assert!(moved < deleted, "lb-3 was deleted before the VIP moved:\n{progress}");
    assert_eq!(lbs[..2].iter().filter(|ip| holds(ip)).count(), 1, "not exactly one of lb-1, lb-2 holds the VIP after lb-3 left");

    // Redis moves off `web` to a new host `cache` (web keeps its machine and
    // nginx, loses the role), then back (cache's machine leaves). Each time the
    // old Redis serves until the apps point at the new one: the apps' /health
    // (which pings Redis) through nginx answers 200 all along.
    let health_failed = Arc::new(Mutex::new(Vec::<(u16, f64)>::new()));
    let health_stop = Arc::new(AtomicBool::new(false));
    let health = {
        let (stop, failed, url) = (health_stop.clone(), health_failed.clone(), format!("http://{net}.5/health"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let code = http_status(&url);
                if code != 200 {
                    failed.lock().unwrap().push((code, t0.elapsed().as_secs_f64()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let web = format!("{net}.5");
    let app1 = format!("{net}.41");
    let redis_of_app = || plan.ssh(&app1, "sudo -n grep -o '^REDIS_URL=.*' /etc/app/app.env | sed 's/.*@//'");
    let active = |ip: &str| plan.ssh(ip, "systemctl is-active redis-server || true").trim().to_string();
    write_shape(&Shape { cache: true, ..two_lbs });
    let out = rigger(&["plan", plan.path()]);
    assert!(out.status.success(), "{}", out.text());
    let text = out.stdout_text();
    println!("{text}");
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("the plan does not show {needle:?}:\n{text}"));
    assert!(at("web loses redis") < at("the config phase points the clients at the plan's hosts"), "{text}");
    assert!(at("the config phase points the clients at the plan's hosts") < at("web: stop redis-server"), "{text}");
    let move_start = Instant::now();
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    let move_end = Instant::now();
    assert!(out.status.success(), "moving Redis to cache failed:\n{}", out.text());
    assert_eq!(active(&web), "inactive", "Redis still runs on web after losing the role");
    assert_eq!(active(&format!("{net}.31")), "active");
    assert!(redis_of_app().starts_with(&format!("{net}.31:")), "app-1 does not use cache's Redis: {}", redis_of_app());
    let out = rigger(&["plan", plan.path(), "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "re-plan after the Redis move must be empty:\n{}", out.text());

    write_shape(&two_lbs);
    let out = rigger(&["plan", plan.path()]);
    assert!(out.status.success(), "{}", out.text());
    let text = out.stdout_text();
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("the plan does not show {needle:?}:\n{text}"));
    assert!(at("the config phase points the clients at the plan's hosts") < at("cache: stop redis-server"), "{text}");
    assert!(at("cache: stop redis-server") < at("the cloud deletes cache"), "{text}");
    let back_start = Instant::now();
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    let back_end = Instant::now();
    assert!(out.status.success(), "moving Redis back to web failed:\n{}", out.text());
    let progress = out.stderr_text();
    let restarted = progress.find("role app: healthy").unwrap_or_else(|| panic!("the apps were not pointed at web's Redis:\n{progress}"));
    let stopped = progress.find("drain (after the config phase)").unwrap_or_else(|| panic!("no after-config drain step:\n{progress}"));
    let deleted = progress.find("machine.cache").unwrap_or_else(|| panic!("cache not deleted:\n{progress}"));
    assert!(restarted < stopped && stopped < deleted, "Redis on cache stopped or deleted before the apps moved:\n{progress}");
    assert_eq!(active(&web), "active");
    assert!(redis_of_app().starts_with(&format!("{web}:")), "app-1 does not use web's Redis: {}", redis_of_app());
    health_stop.store(true, Ordering::SeqCst);
    health.join().expect("health poller");
    let health_failed = health_failed.lock().unwrap().clone();
    println!("Redis moves: web → cache {:.1}s, cache → web {:.1}s; /health through nginx failed {} times", (move_end - move_start).as_secs_f64(), (back_end - back_start).as_secs_f64(), health_failed.len());
    assert!(health_failed.is_empty(), "the apps' /health (Redis) through nginx failed while Redis moved (code, seconds since start): {health_failed:?}");

    // `apply --infra-only` deletes machines too: it drains them first (apps 2 → 1).
    write_shape(&Shape { apps: 1, ..two_lbs });
    let out = rigger(&["apply", plan.path(), "--infra-only", "--auto-approve"]);
    assert!(out.status.success(), "apps 2 → 1 with --infra-only failed:\n{}", out.text());
    let progress = out.stderr_text();
    let reloaded = progress.find("nginx web: reload without app-2").unwrap_or_else(|| panic!("--infra-only did not drain app-2 from nginx:\n{progress}"));
    let deleted = progress.find("machine.app-2").unwrap_or_else(|| panic!("app-2 not deleted:\n{progress}"));
    assert!(reloaded < deleted, "app-2 was deleted before nginx dropped it:\n{progress}");
    // The config phase that --infra-only skipped (pg_hba and the firewall without app-2).
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "apply after --infra-only failed:\n{}", out.text());

    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    writes.join().expect("writer");
    requests.join().expect("requests");

    // The leaving members are gone everywhere.
    let members = etcd_members(&plan, &pg1);
    let mut names: Vec<String> = members.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(names, ["pg-1", "pg-2", "pg-3"], "{members:?}");
    let cluster = patroni_cluster(&plan, &pg1);
    assert_eq!(cluster.len(), 3, "{cluster:?}");
    assert!(!cluster.iter().any(|(n, _)| n == "pgx"), "{cluster:?}");
    let new_leader = cluster.iter().find(|(_, r)| r == "leader").expect("a leader").0.clone();
    let leader_ip = format!("{net}.{}", 20 + new_leader.trim_start_matches("pg-").parse::<u32>().expect("pg-N"));
    let slots = plan.ssh(&leader_ip, "sudo -u postgres psql -h /var/run/postgresql -Atc 'select slot_name from pg_replication_slots'");
    assert!(!slots.lines().any(|s| s.trim() == "pgx"), "the leader still keeps a slot for pgx: {slots}");
    let keys = plan.ssh(&pg1, &etcdctl_as_root("get --prefix --keys-only /service/"));
    assert!(!keys.lines().any(|k| k.ends_with("/members/pgx")), "pgx still in the DCS: {keys}");
    let upstreams = plan.ssh(&format!("{net}.5"), "grep -c ':9001' /etc/nginx/nginx.conf");
    assert_eq!(upstreams.trim(), "1", "nginx still lists leaving apps");

    // Acknowledged rows all there.
    let log = log.lock().unwrap();
    let acknowledged: Vec<i64> = log.committed.iter().map(|(id, _)| *id).collect();
    let present: std::collections::BTreeSet<i64> = rt.block_on(async {
        let c = connect(&conninfo, &password).await.expect("connect to count");
        c.query("SELECT id FROM reshape_load", &[]).await.expect("select").iter().map(|r| r.get::<_, i64>(0)).collect()
    });
    let lost: Vec<&i64> = acknowledged.iter().filter(|id| !present.contains(id)).collect();
    let failed = http_failed.lock().unwrap().clone();
    println!(
        "reshape under load: {} rows acknowledged, {} lost, {} write attempts failed; HTTP through nginx {} ok, {} failed",
        acknowledged.len(),
        lost.len(),
        log.failures.len(),
        http_ok.load(Ordering::SeqCst),
        failed.len()
    );
    let failed_in = |from: Instant, to: Instant| log.failures.iter().filter(|t| **t >= from && **t <= to).count();
    println!(
        "failed write attempts: grow {}, the test's switchover {}, shrink {}",
        failed_in(grow_start, grow_end),
        failed_in(switch_start, switch_end),
        failed_in(shrink_start, shrink_end)
    );
    println!("longest write gap: grow (etcd 3→5, Patroni 3→4, apps 3→4, HAProxy 2→3) {:.1}s in {:.1}s", longest_gap(&log, grow_start, grow_end).as_secs_f64(), (grow_end - grow_start).as_secs_f64());
    println!("longest write gap: the test's own switchover to pgx {:.1}s", longest_gap(&log, switch_start, switch_end).as_secs_f64());
    println!(
        "longest write gap: HAProxy 3→2 with the VIP holder leaving {:.1}s in {:.1}s ({} failed attempts)",
        longest_gap(&log, vip_start, vip_end).as_secs_f64(),
        (vip_end - vip_start).as_secs_f64(),
        failed_in(vip_start, vip_end)
    );
    println!(
        "longest write gap: shrink (etcd 5→3, Patroni 4→3 with the leader leaving, apps 4→2) {:.1}s in {:.1}s",
        longest_gap(&log, shrink_start, shrink_end).as_secs_f64(),
        (shrink_end - shrink_start).as_secs_f64()
    );
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    assert!(failed.is_empty(), "HTTP requests through nginx failed (code, seconds since start): {failed:?}");

    let out = rigger(&["status", plan.path()]);
    assert!(out.status.success(), "status is not healthy at the end:\n{}", out.text());
    let out = rigger(&["plan", plan.path(), "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "re-plan after the shrink must be empty:\n{}", out.text());

    let out = rigger(&["destroy", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "destroy failed:\n{}", out.text());
    plan.assert_nothing_left();
}
