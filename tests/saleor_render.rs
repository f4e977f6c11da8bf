//! Saleor and the Storefront, verified as far as this machine allows: their
//! images cannot be pulled here (no Docker Engine, no registry), so this test
//! checks what rigger produces, with real tools, on real local machines:
//!
//! - the units rendered for plans/yandex-saleor-ha.yaml pass `systemd-analyze
//!   verify` (with a STAND-IN `docker`/`node` binary and docker.service, since
//!   verify insists the executables exist);
//! - the env files carry every variable Saleor requires, secrets only there;
//! - the rendered haproxy.cfg with the HTTP frontends passes `haproxy -c`;
//! - behind a real HAProxy with that config, `standin_graphql.py` (a stand-in
//!   HTTP server, not Saleor) proves the routing (:80 /graphql/ → API,
//!   :80 / → Storefront, :9000 → dashboard) and the `POST /graphql/` health checks.

mod common;

use common::{rigger, LocalPlan, OutputText};
use rigger::hosts::ops::HostDesired;
use rigger::plan::model::Plan;
use rigger::render::Renderer;
use std::collections::BTreeMap;
use std::path::Path;

/// Every secret the plan's roles use, made up for the render.
fn secrets(plan: &Plan) -> BTreeMap<String, String> {
    let mut state = rigger::state::State::new(&plan.project, "local");
    rigger::commands::ensure_generated(&mut state, plan).expect("generated secrets");
    state.secrets
}

fn render(plan: &Plan, secrets: &BTreeMap<String, String>) -> BTreeMap<String, HostDesired> {
    let r = Renderer::new().expect("templates");
    plan.hosts.iter().map(|h| (h.name.clone(), rigger::hosts::roles::desired(plan, h, secrets, &r).unwrap_or_else(|e| panic!("{}: {e:#}", h.name)))).collect()
}

fn content<'a>(d: &'a HostDesired, path: &str) -> &'a str {
    &d.files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("{} renders no {path}", d.host)).content
}

fn env_vars(text: &str) -> BTreeMap<String, String> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A source folder where the plan expects the Storefront checkout: a minimal
/// package.json, enough to render (the real checkout is not needed for that).
fn stand_in_storefront(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("package.json"), "{ \"name\": \"storefront-stand-in\", \"private\": true }\n").expect("write");
}

/// The Yandex plan with Saleor from its published images and the Storefront
/// built on its host (the plan itself ships both from source).
fn image_mode(text: &str) -> String {
    let swaps = [
        ("    source: ../../shared/apps/saleor-3.21.69.tar.gz\n    dashboard_source: ../../shared/apps/saleor-dashboard-3.21.21.tar.gz\n",
         "    image: \"ghcr.io/saleor/saleor:3.20\"\n    dashboard_image: \"ghcr.io/saleor/saleor-dashboard:3.20\"\n"),
        ("    source: ../../shared/apps/saleor-storefront-3481bbb0.tar.gz\n", "    path: ./storefront\n    packages: [nodejs]\n"),
    ];
    let mut out = text.to_string();
    for (from, to) in swaps {
        assert!(out.contains(from), "plans/yandex-saleor-ha.yaml no longer has {from:?}");
        out = out.replace(from, to);
    }
    out
}

/// Put `text` at `path` on a machine (as root).
fn put(plan: &LocalPlan, ip: &str, path: &str, text: &str) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
    plan.ssh(ip, &format!("echo {b64} | base64 -d | sudo tee {path} >/dev/null"));
}

fn run_on(plan: &LocalPlan, ip: &str, cmd: &str) -> (bool, String) {
    let out = plan.ssh_with_known_hosts(ip, &plan.known_hosts(), cmd);
    (out.status.success(), out.text())
}

fn curl(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl").args(["-s", "-m", "10", "-w", "\n%{http_code}", url]).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Poll (no timing asserted: only whether it happens at all within a generous bound).
fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let mut last = String::new();
    for _ in 0..120 {
        match f() {
            Ok(()) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("{what}: never happened; last: {last}");
}

#[test]
fn saleor_and_storefront_render_verify_and_route_through_haproxy() {
    // 1. Render the real Yandex plan in its image mode, the alternative its
    //    comments give (in a temp folder, beside a stand-in storefront checkout).
    let work = tempfile::tempdir().expect("temp dir");
    let yandex_text = image_mode(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/yandex-saleor-ha.yaml")).expect("plan"));
    std::fs::write(work.path().join("yandex.yaml"), &yandex_text).expect("write");
    stand_in_storefront(&work.path().join("storefront"));
    let yandex = rigger::plan::load(&work.path().join("yandex.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let ysecrets = secrets(&yandex);
    let ydesired = render(&yandex, &ysecrets);
    let lb_ip = yandex.host("lb").expect("lb").ip.to_string();

    // Every variable Saleor requires, through the write port and to Redis with its password.
    let saleor = &ydesired["saleor"];
    let env_file = saleor.files.iter().find(|f| f.path == "/etc/saleor/saleor.env").expect("saleor env");
    assert_eq!((env_file.mode, env_file.owner.as_str()), (0o600, "root"), "the env file holds secrets");
    let env = env_vars(&env_file.content);
    for var in rigger::hosts::roles::saleor::REQUIRED_ENV {
        assert!(env.get(*var).is_some_and(|v| !v.is_empty()), "saleor.env lacks {var}:\n{}", env_file.content);
    }
    assert_eq!(env["DEBUG"], "False");
    assert_eq!(env["SECRET_KEY"], ysecrets["saleor_secret_key"]);
    let tls = "?sslmode=verify-full&sslrootcert=/etc/rigger/ca.crt";
    assert_eq!(env["DATABASE_URL"], format!("postgresql://saleor:{}@{lb_ip}:5000/saleor{tls}", ysecrets["saleor_db_password"]));
    assert_eq!(env["DATABASE_URL_REPLICA"], format!("postgresql://saleor:{}@{lb_ip}:5001/saleor{tls}", ysecrets["saleor_db_password"]));
    // TLS-only Redis: verified against the project CA (Django's cache trusts it through SSL_CERT_DIR).
    let rediss = "?ssl_cert_reqs=required&ssl_ca_certs=/etc/rigger/ca.crt";
    assert_eq!(env["CACHE_URL"], format!("rediss://:{}@10.20.0.30:6379/0{rediss}", ysecrets["redis_password"]));
    assert_eq!(env["CELERY_BROKER_URL"], format!("rediss://:{}@10.20.0.30:6379/1{rediss}", ysecrets["redis_password"]));
    assert!(env["ALLOWED_HOSTS"].split(',').any(|h| h == lb_ip), "{}", env["ALLOWED_HOSTS"]);
    assert_eq!(env["DASHBOARD_URL"], format!("http://{lb_ip}:9000/"));
    let dashboard_env = env_vars(content(saleor, "/etc/saleor/dashboard.env"));
    assert_eq!(dashboard_env["API_URL"], format!("http://{lb_ip}/graphql/"));
    let storefront_env = env_vars(content(&ydesired["storefront"], "/etc/storefront/storefront.env"));
    assert_eq!(storefront_env["NEXT_PUBLIC_SALEOR_API_URL"], format!("http://{lb_ip}/graphql/"));

    let units: Vec<(String, String)> = ["saleor-api", "saleor-worker", "saleor-dashboard"]
        .iter()
        .map(|u| (format!("{u}.service"), content(saleor, &format!("/etc/systemd/system/{u}.service")).to_string()))
        .chain([("storefront.service".to_string(), content(&ydesired["storefront"], "/etc/systemd/system/storefront.service").to_string())])
        .collect();
    for (name, text) in &units {
        for (k, v) in &ysecrets {
            assert!(!text.contains(v.as_str()), "{name} contains the secret {k}");
        }
    }
    assert!(units[0].1.contains("--env-file /etc/saleor/saleor.env") && units[0].1.contains("--publish 8000:8000"), "{}", units[0].1);
    assert!(units[1].1.contains("celery --app saleor.celeryconf:app worker"), "{}", units[1].1);
    let yandex_haproxy = content(&ydesired["lb"], "/etc/haproxy/haproxy.cfg").to_string();
    // Its checks verify Patroni's REST certificates with the project CA rigger puts beside it.
    let yandex_haproxy_ca = content(&ydesired["lb"], "/etc/haproxy/ca.crt").to_string();
    assert!(yandex_haproxy.contains("http-check send meth POST uri /graphql/"), "{yandex_haproxy}");

    // 2. Machines of the test's own (local, own subnet) in the shape of stack 1's front:
    //    HAProxy, a Saleor host, a Storefront host. Only the machines: the
    //    containers cannot run here, stand-ins answer where they would.
    //    A valid plan gives Saleor its database layer: one Patroni member
    //    beside HAProxy, etcd's three members on the three machines.
    // (What follows boots machines; everything above runs anywhere.)
    if !common::machines() {
        return;
    }
    let local = LocalPlan::from_text("t-saleor", |project, cidr, net| {
        stand_in_storefront(&std::env::temp_dir().join(format!("rigger-{project}-storefront")));
        format!(
            "version: 1\nproject: {project}\nprovider: {{ kind: local }}\nssh: {{ user: rigger, private_key_file: ./id_ed25519 }}\n\
             network:\n  name: main\n  subnets:\n    - {{ name: app, cidr: {cidr} }}\n\
             firewall:\n  - name: inside\n    rules:\n      - {{ direction: ingress, protocol: any, from: {cidr} }}\n\
             defaults: {{ cores: 1, memory: 512MiB, disk: 2GiB }}\n\
             hosts:\n  - {{ name: lb, roles: [haproxy, etcd, patroni], ip: {net}.10, firewall: [inside] }}\n\
             \x20 - {{ name: saleor, roles: [saleor, redis, etcd], ip: {net}.30, firewall: [inside] }}\n\
             \x20 - {{ name: storefront, roles: [storefront, etcd], ip: {net}.40, firewall: [inside] }}\n\
             services:\n  storefront: {{ path: {} }}\n",
            std::env::temp_dir().join(format!("rigger-{project}-storefront")).display()
        )
    });
    let net = local.net_prefix.clone();
    let (lb, saleor_ip, storefront_ip) = (format!("{net}.10"), format!("{net}.30"), format!("{net}.40"));
    let out = rigger(&["apply", local.path(), "--infra-only", "--auto-approve"]);
    assert!(out.status.success(), "apply --infra-only failed:\n{}", out.text());

    // `systemd-analyze verify` on the units rendered for the Yandex plan. verify
    // also requires every executable to exist: a STAND-IN docker and node (shell
    // scripts that only say what they are) and a stand-in docker.service stand
    // where the distro packages would put theirs.
    put(&local, &saleor_ip, "/usr/bin/docker", "#!/bin/sh\necho 'stand-in docker: Docker Engine is not installed on local machines' >&2\nexit 1\n");
    put(&local, &saleor_ip, "/usr/bin/node", "#!/bin/sh\necho 'stand-in node: Node.js is not installed on local machines' >&2\nexit 1\n");
    put(&local, &saleor_ip, "/etc/systemd/system/docker.service", "[Unit]\nDescription=stand-in for the docker.io package's unit\n[Service]\nExecStart=/usr/bin/docker\n");
    local.ssh(&saleor_ip, "sudo chmod 755 /usr/bin/docker /usr/bin/node && sudo mkdir -p /tmp/verify");
    for (name, text) in &units {
        put(&local, &saleor_ip, &format!("/tmp/verify/{name}"), text);
    }
    let names: Vec<String> = units.iter().map(|(n, _)| format!("/tmp/verify/{n}")).collect();
    let (ok, text) = run_on(&local, &saleor_ip, &format!("sudo systemd-analyze verify {} 2>&1", names.join(" ")));
    assert!(ok && !text.contains("/tmp/verify/"), "systemd-analyze verify:\n{text}");

    // `haproxy -c` on the Yandex plan's haproxy.cfg (Saleor/Storefront frontends included).
    put(&local, &lb, "/tmp/yandex-haproxy.cfg", &yandex_haproxy);
    put(&local, &lb, "/etc/haproxy/ca.crt", &yandex_haproxy_ca);
    let (ok, text) = run_on(&local, &lb, "sudo haproxy -c -f /tmp/yandex-haproxy.cfg 2>&1");
    assert!(ok, "haproxy -c rejects the Yandex plan's config:\n{text}");

    // 3. The same frontends, rendered for the local machines, live in a real HAProxy.
    let lplan = rigger::plan::load(Path::new(local.path())).unwrap_or_else(|e| panic!("{e}"));
    let lsecrets = secrets(&lplan);
    let ldesired = render(&lplan, &lsecrets);
    let cfg = content(&ldesired["lb"], "/etc/haproxy/haproxy.cfg");
    put(&local, &lb, "/etc/haproxy/haproxy.cfg", cfg);
    put(&local, &lb, "/etc/haproxy/ca.crt", content(&ldesired["lb"], "/etc/haproxy/ca.crt"));
    let (ok, text) = run_on(&local, &lb, "sudo haproxy -c -f /etc/haproxy/haproxy.cfg 2>&1 && sudo systemctl restart haproxy 2>&1");
    assert!(ok, "haproxy with the rendered config:\n{text}");

    let standin = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standin_graphql.py")).expect("stand-in");
    for (ip, port, name) in [(&saleor_ip, 8000, "saleor-api"), (&saleor_ip, 9000, "saleor-dashboard"), (&storefront_ip, 3000, "storefront")] {
        put(&local, ip, "/tmp/standin_graphql.py", &standin);
        local.ssh(ip, &format!("sudo systemd-run --unit standin-{name} python3 /tmp/standin_graphql.py {port} {name} /tmp/standin-{name}.log"));
    }

    // Routing: /graphql/ on :80 → the API, anything else on :80 → the Storefront, :9000 → the dashboard.
    eventually("HAProxy routes :80/graphql/ to the Saleor API stand-in", || match curl(&format!("http://{lb}/graphql/")) {
        (200, b) if b.contains("stand-in saleor-api") => Ok(()),
        other => Err(format!("{other:?}")),
    });
    eventually("HAProxy routes :80/ to the Storefront stand-in", || match curl(&format!("http://{lb}/")) {
        (200, b) if b.contains("stand-in storefront") => Ok(()),
        other => Err(format!("{other:?}")),
    });
    eventually("HAProxy routes :9000 to the dashboard stand-in", || match curl(&format!("http://{lb}:9000/")) {
        (200, b) if b.contains("stand-in saleor-dashboard") => Ok(()),
        other => Err(format!("{other:?}")),
    });

    // The health checks POST to /graphql/ with the load balancer's name as Host.
    let log = local.ssh(&saleor_ip, "cat /tmp/standin-saleor-api.log");
    assert!(log.lines().any(|l| l == format!("POST /graphql/ host={lb}")), "no health check POST /graphql/ with Host {lb}:\n{log}");

    // The API stand-in stops: its health check fails, HAProxy takes it out (503), the others keep routing.
    local.ssh(&saleor_ip, "sudo systemctl stop standin-saleor-api");
    eventually("HAProxy marks the stopped API down", || match curl(&format!("http://{lb}/graphql/")) {
        (503, _) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let (code, body) = curl(&format!("http://{lb}/"));
    assert!(code == 200 && body.contains("stand-in storefront"), "{code} {body}");

    // On local machines the saleor role puts its files in place, then stops
    // before `docker pull` and says why.
    let out = rigger(&["apply", local.path(), "--auto-approve"]);
    assert_eq!(out.code(), 1, "{}", out.text());
    assert!(out.text().contains("stopping before `docker pull`"), "{}", out.text());
    assert_eq!(local.ssh(&saleor_ip, "sudo stat -c '%a %U' /etc/saleor/saleor.env").trim(), "600 root");
    assert!(local.ssh(&saleor_ip, "cat /etc/systemd/system/saleor-api.service").contains("ExecStart=/usr/bin/docker run"));

    let out = rigger(&["destroy", local.path(), "--auto-approve"]);
    assert!(out.status.success(), "destroy failed:\n{}", out.text());
    local.assert_nothing_left();
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("rigger-{}-storefront", local.project)));
}
