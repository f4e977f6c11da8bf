//! Stack 3 end to end on local machines: nginx → three app servers (the demo
//! FastAPI app) → HAProxy write/read ports → Patroni, with Redis. Built by the
//! rigger binary from a plan of its own (own project and subnet); the guard
//! destroys it whatever happens. Requests go only to machines this test built.

mod common;

use common::{rigger, LocalPlan, OutputText};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn plan_text(project: &str, cidr: &str, net: &str, app_dir: &Path) -> String {
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
  # etcd and Patroni share three hosts (a quorum of 3 either way); Redis sits beside HAProxy.
  - {{ name: pg, count: 3, roles: [etcd, patroni], ip: {net}.21, firewall: [inside] }}
  - {{ name: lb, roles: [haproxy, redis], ip: {net}.11, firewall: [inside] }}
  - {{ name: app, count: 3, roles: [app], ip: {net}.41, firewall: [inside] }}
  - {{ name: web, roles: [nginx], ip: {net}.5, firewall: [inside] }}
services:
  patroni: {{ synchronous_mode: false }}
  app: {{ path: {}, packages: [python3-fastapi, uvicorn, python3-psycopg2, python3-redis] }}
",
        app_dir.display()
    )
}

/// `curl` from this host to a machine of the test; (status, body).
fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "10", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
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

/// The app's main PID on each app host (changes when it restarts).
fn app_pids(plan: &LocalPlan, apps: &[String]) -> Vec<String> {
    apps.iter().map(|ip| plan.ssh(ip, "systemctl show -p MainPID --value app").trim().to_string()).collect()
}

#[test]
fn nginx_apps_haproxy_patroni_redis_end_to_end() {
    if !common::machines() {
        return;
    }
    let app_src = tempfile::tempdir().expect("temp dir");
    let app_dir = app_src.path().join("demo-app");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-app"), &app_dir);
    let plan = LocalPlan::from_text("t-apps", |project, cidr, net| plan_text(project, cidr, net, &app_dir));
    let net = plan.net_prefix.clone();
    let nginx = format!("http://{net}.5");
    let apps: Vec<String> = (41..=43).map(|i| format!("{net}.{i}")).collect();

    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "apply failed:\n{}", out.text());

    // status proves the client paths too: the HAProxy ports and HTTP through nginx to every app.
    let status = rigger(&["status", plan.path()]);
    assert_eq!(status.code(), 0, "status:\n{}", status.text());
    for path in ["path lb write port", "path lb read port", "path HTTP through nginx web to every app"] {
        assert!(status.stdout_text().lines().any(|l| l.starts_with("ok") && l.contains(path)), "status shows `{path}` ok:\n{}", status.text());
    }

    // nginx spreads requests over all three app servers.
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let (code, body) = http("GET", &format!("{nginx}/"), None);
        assert_eq!(code, 200, "{body}");
        seen.insert(json(&body)["host"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(seen, ["app-1", "app-2", "app-3"].into_iter().map(String::from).collect(), "requests through nginx reached {seen:?}");

    // /health through nginx checks the database (both ports) and Redis.
    let (code, body) = http("GET", &format!("{nginx}/health"), None);
    assert_eq!(code, 200, "{body}");

    // A write lands on the Patroni leader...
    let cluster = json(&plan.patroni_rest(&format!("{net}.21"), "-m 5", "/cluster"));
    let leader = cluster["members"].as_array().expect("members").iter().find(|m| m["role"] == "leader").expect("a leader")["host"].as_str().expect("host").to_string();
    let (code, body) = http("POST", &format!("{nginx}/items"), Some(r#"{"text":"written through nginx"}"#));
    assert_eq!(code, 201, "{body}");
    let written = json(&body);
    assert_eq!(written["db_replica"], false, "{written}");
    assert_eq!(written["db_server"].as_str().unwrap_or_default(), format!("{leader}/32"), "the write went to {written} but the leader is {leader}");
    let id = written["id"].as_i64().expect("id");

    // ...and is read back from a replica (asynchronous replication: retry until it arrives).
    let mut read = Value::Null;
    for _ in 0..50 {
        let (code, body) = http("GET", &format!("{nginx}/items/{id}"), None);
        if code == 200 {
            read = json(&body);
            break;
        }
        assert_eq!(code, 404, "{body}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(read["text"], "written through nginx", "never read back: {read}");
    assert_eq!(read["db_replica"], true, "{read}");
    assert_eq!(read["cache"], "miss", "{read}");
    assert_ne!(read["db_server"].as_str().unwrap_or_default(), format!("{leader}/32"), "{read}");

    // The next read comes from Redis, and Redis counts the hit.
    let (_, body) = http("GET", &format!("{nginx}/items/{id}"), None);
    assert_eq!(json(&body)["cache"], "hit", "{body}");
    let state: Value = json(&std::fs::read_to_string(plan.state_path()).expect("state"));
    let redis_password = state["secrets"]["redis_password"].as_str().expect("redis password").to_string();
    let stats = plan.ssh(&format!("{net}.11"), &format!("REDISCLI_AUTH={redis_password} redis-cli --tls --cacert /etc/rigger/ca.crt info stats"));
    let hits: u64 = stats.lines().find_map(|l| l.strip_prefix("keyspace_hits:")).and_then(|v| v.trim().parse().ok()).expect("keyspace_hits");
    assert!(hits >= 1, "redis reports no cache hits:\n{stats}");

    // Secrets stay in the 0600 env file, never in the unit.
    let env_mode = plan.ssh(&apps[0], "sudo stat -c '%a %U' /etc/app/app.env");
    assert_eq!(env_mode.trim(), "600 root");
    let unit = plan.ssh(&apps[0], "cat /etc/systemd/system/app.service");
    let app_password = state["secrets"]["app_db_password"].as_str().expect("app password");
    assert!(!unit.contains(app_password) && !unit.contains(&redis_password), "a secret in the unit file");
    let out = rigger(&["plan", plan.path()]);
    assert!(!out.stdout_text().contains(app_password), "the plan output shows a secret");

    // Nothing changed: nothing restarts.
    let pids = app_pids(&plan, &apps);
    let out = rigger(&["plan", plan.path(), "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "re-plan must be empty:\n{}", out.text());
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "{}", out.text());
    assert_eq!(app_pids(&plan, &apps), pids, "a no-change apply restarted an app");

    // A code change restarts every app host, one at a time behind nginx:
    // requests through nginx keep succeeding during the rollout.
    let mut code = std::fs::read_to_string(app_dir.join("app.py")).expect("app.py");
    code.push_str("\n# a new release\n");
    std::fs::write(app_dir.join("app.py"), code).expect("write app.py");
    let out = rigger(&["plan", plan.path()]);
    assert_eq!(out.stdout_text().matches("restart app").count(), 3, "{}", out.stdout_text());
    let web = format!("{net}.5");
    let conf_before = plan.ssh(&web, "sudo sha256sum /etc/nginx/nginx.conf");
    let errors_before: usize = plan.ssh(&web, "sudo cat /var/log/nginx/error.log | wc -l").trim().parse().expect("line count");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let (stop, url) = (stop.clone(), format!("{nginx}/"));
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match http("GET", &url, None) {
                    (200, _) => ok += 1,
                    other => failed.push(other),
                }
            }
            (ok, failed)
        })
    };
    let rollout = std::time::Instant::now();
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    let rollout = rollout.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = probe.join().expect("probe thread");
    println!("rolling restart of 3 apps behind nginx: apply {:.1}s, {ok} requests through nginx meanwhile, {} failed", rollout.as_secs_f64(), failed.len());
    assert!(out.status.success(), "{}", out.text());
    assert!(failed.is_empty() && ok > 0, "{} requests failed during the rolling restart ({ok} ok), the first: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    // Each host was held out of nginx's upstream while it restarted: nginx
    // never met a server going down (its passive check would log the
    // refused or cut connection), and the config is back as it was.
    let errors = plan.ssh(&web, &format!("sudo tail -n +{} /var/log/nginx/error.log", errors_before + 1));
    assert!(!errors.contains("upstream"), "nginx sent requests to a restarting app:\n{errors}");
    assert_eq!(plan.ssh(&web, "sudo sha256sum /etc/nginx/nginx.conf"), conf_before, "nginx.conf is not back as it was");
    assert_eq!(out.stderr_text().matches("back in nginx's upstream on web").count(), 3, "{}", out.stderr_text());
    let after = app_pids(&plan, &apps);
    for (i, (a, b)) in pids.iter().zip(&after).enumerate() {
        assert_ne!(a, b, "app-{} did not restart for the new code", i + 1);
    }

    // One app server down: requests through nginx still succeed, on the others.
    plan.ssh(&apps[1], "sudo systemctl stop app");
    for _ in 0..9 {
        let (code, body) = http("GET", &format!("{nginx}/"), None);
        assert_eq!(code, 200, "with app-2 stopped: {body}");
        assert_ne!(json(&body)["host"], "app-2");
    }
    let (code, body) = http("GET", &format!("{nginx}/health"), None);
    assert_eq!(code, 200, "{body}");

    // A config nginx rejects is never put in place: the running nginx keeps serving.
    let bad = tempfile::tempdir().expect("temp dir");
    let template = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/nginx.conf.j2")).expect("template");
    std::fs::write(bad.path().join("nginx.conf.j2"), template.replace("least_conn;", "least_conn;\n        no_such_directive on;")).expect("write");
    let out = Command::new(common::RIGGER)
        .args(["apply", plan.path(), "--auto-approve"])
        .env("RIGGER_TEMPLATES_DIR", bad.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run rigger");
    assert!(!out.status.success(), "a broken nginx config was accepted:\n{}", out.text());
    assert!(out.text().contains("rejected by `nginx -t`"), "{}", out.text());
    let live = plan.ssh(&format!("{net}.5"), "cat /etc/nginx/nginx.conf");
    assert!(!live.contains("no_such_directive"), "the rejected config replaced the live one");
    let (code, _) = http("GET", &format!("{nginx}/"), None);
    assert_eq!(code, 200, "nginx stopped serving after a rejected config");

    // The next apply brings the stopped app back.
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "{}", out.text());
    assert_eq!(plan.ssh(&apps[1], "systemctl is-active app").trim(), "active");

    let out = rigger(&["destroy", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "destroy failed:\n{}", out.text());
    plan.assert_nothing_left();
}
