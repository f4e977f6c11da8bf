//! Closed by default, probed like an attacker on the network: a stack of its
//! own (3 × etcd+Patroni, 2 × HAProxy+keepalived, Redis, one app) whose plan
//! lets each port in only from the groups that need it, plus an `intruder`
//! machine in no group that any service admits. From the intruder and from
//! this host the service ports are closed; the same ports answer where the
//! plan allows them (so a probe that always fails would be caught); Patroni's
//! unsafe REST endpoints want rigger's password; a firewall rule change shows
//! in `plan` on the one host it concerns and takes effect on apply.
//! Traffic goes only to machines this test built; the guard destroys them.

mod common;

use common::{rigger, LocalPlan, OutputText};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

fn plan_text(project: &str, cidr: &str, net: &str, extra_cache_rule: &str, security: &str) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
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
  - name: ssh
    rules:
      - {{ direction: ingress, protocol: tcp, ports: 22, from: {cidr} }}
  - name: db
    rules:
      - {{ direction: ingress, protocol: tcp, ports: \"2379-2380,5432,8008\", from_group: db, description: \"etcd peers and clients, replication, the leader race\" }}
      - {{ direction: ingress, protocol: tcp, ports: \"5432,8008\", from_group: lb, description: HAProxy passthrough and health checks }}
  - name: lb
    rules:
      - {{ direction: ingress, protocol: tcp, ports: \"5000-5001\", from_group: app }}
      - {{ direction: ingress, protocol: tcp, ports: \"5000-5001\", from: {net}.1/32, description: the control host }}
      - {{ direction: ingress, protocol: any, from_group: lb, description: VRRP between the HAProxy hosts }}
  - name: cache
    rules:
      - {{ direction: ingress, protocol: tcp, ports: 6379, from_group: app }}
{extra_cache_rule}  - name: app
    rules:
      - {{ direction: ingress, protocol: tcp, ports: 9001, from_group: lb }}
  - name: outside
    rules: []
defaults: {{ cores: 1, memory: 1GiB, disk: 3GiB }}
hosts:
  - {{ name: pg, count: 3, roles: [etcd, patroni], ip: {net}.21, firewall: [ssh, db] }}
  - {{ name: lb, count: 2, roles: [haproxy, keepalived], ip: {net}.11, firewall: [ssh, lb] }}
  - {{ name: cache, roles: [redis], ip: {net}.31, firewall: [ssh, cache] }}
  - {{ name: app, roles: [app], ip: {net}.41, firewall: [ssh, app] }}
  - {{ name: intruder, ip: {net}.99, firewall: [ssh, outside] }}
services:
  patroni: {{ synchronous_mode: false }}
  keepalived: {{ vip: {net}.10 }}
  app: {{ path: {}/examples/demo-app, port: 9001, packages: [python3-fastapi, uvicorn, python3-psycopg2, python3-redis] }}
{security}",
        repo.display()
    )
}

/// From a machine: which of `targets` (ip:port) accept a TCP connection, probed at once.
fn probe_from(plan: &LocalPlan, from_ip: &str, targets: &[String]) -> BTreeMap<String, bool> {
    let list = targets.join(" ");
    let script = format!(
        "for t in {list}; do (if timeout 3 bash -c \"</dev/tcp/${{t%:*}}/${{t#*:}}\" 2>/dev/null; then echo \"$t open\"; else echo \"$t closed\"; fi) & done; wait"
    );
    let out = plan.ssh(from_ip, &script);
    let seen: BTreeMap<String, bool> = out.lines().filter_map(|l| l.split_once(' ')).map(|(t, s)| (t.to_string(), s == "open")).collect();
    assert_eq!(seen.len(), targets.len(), "every probe answered: {out}");
    seen
}

/// From this host (the bridge's gateway), at once.
fn probe_from_host(targets: &[String]) -> BTreeMap<String, bool> {
    let handles: Vec<_> = targets
        .iter()
        .map(|t| {
            let t = t.clone();
            std::thread::spawn(move || {
                let addr: SocketAddr = t.parse().unwrap();
                (t, TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn all(seen: &BTreeMap<String, bool>, open: bool) -> Vec<&String> {
    seen.iter().filter(|(_, o)| **o != open).map(|(t, _)| t).collect()
}

/// psql from this host: what `select ssl` says for this connection, or psql's error.
fn psql(conninfo: &str, password: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .arg(conninfo)
        .args(["-Atc", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(out.stdout_text().trim().to_string())
    } else {
        Err(out.stderr_text())
    }
}

/// `rigger output ca`, then psql through the VIP: verify-full with the project
/// CA works, plaintext is refused by pg_hba, another CA fails verification.
fn tls_to_postgresql(plan: &LocalPlan, net: &str, state: &serde_json::Value) {
    let out = rigger(&["output", plan.path(), "ca"]);
    assert!(out.status.success(), "{}", out.text());
    let ca_path = out.stdout_text().trim().to_string();
    let ca = std::fs::read_to_string(&ca_path).unwrap_or_else(|e| panic!("{ca_path}: {e}"));
    assert!(ca.contains("BEGIN CERTIFICATE") && !ca.contains("PRIVATE"), "{ca}");
    let key = state["secrets"]["tls_ca_key"].as_str().expect("the CA key is in the state");
    assert!(!out.stdout_text().contains(key));

    let su = state["secrets"]["postgres_superuser_password"].as_str().unwrap();
    let base = format!("host={net}.10 port=5000 user=postgres dbname=postgres");
    assert_eq!(psql(&format!("{base} sslmode=verify-full sslrootcert={ca_path}"), su), Ok("t".to_string()), "verify-full through the VIP with the project CA");
    let plain = psql(&format!("{base} sslmode=disable"), su).expect_err("a plaintext login across the network must be refused");
    assert!(plain.contains("no pg_hba.conf entry") && plain.contains("no encryption"), "{plain}");
    let other = rcgen::generate_simple_self_signed(vec!["not-the-project".to_string()]).unwrap();
    let wrong_ca = plan.dir().join("wrong-ca.crt");
    std::fs::write(&wrong_ca, other.cert.pem()).unwrap();
    let wrong = psql(&format!("{base} sslmode=verify-full sslrootcert={}", wrong_ca.display()), su).expect_err("another CA must not verify the server");
    assert!(wrong.contains("certificate verify failed"), "{wrong}");
    // The replicas stream over TLS too (pg_hba has hostssl for replication).
    let mut over_tls = 0;
    for i in 21..=23 {
        let n = plan.ssh(&format!("{net}.{i}"), "sudo -u postgres psql -h /var/run/postgresql -Atc 'select count(*) from pg_stat_replication r join pg_stat_ssl s using (pid) where s.ssl'");
        over_tls += n.trim().parse::<u32>().unwrap_or(0);
    }
    assert_eq!(over_tls, 2, "both replicas stream over TLS");
}

/// Redis from the app host (the firewall lets it in): TLS verified against
/// the project CA and the password answer; plaintext, another CA or no
/// password get nothing. The app itself reaches Redis (its /health says so).
fn redis_over_tls(plan: &LocalPlan, net: &str, state: &serde_json::Value) {
    let password = state["secrets"]["redis_password"].as_str().expect("a generated Redis password");
    let app = format!("{net}.41");
    let ping = |args: &str, auth: bool| {
        let auth = if auth { format!("REDISCLI_AUTH='{password}' ") } else { String::new() };
        plan.ssh(&app, &format!("{auth}timeout 10 redis-cli -h {net}.31 -p 6379 {args} ping 2>&1 || true")).trim().to_string()
    };
    assert_eq!(ping("--tls --cacert /etc/rigger/ca.crt", true), "PONG", "Redis over TLS with the project CA");
    assert_ne!(ping("", true), "PONG", "Redis still answers plaintext");
    assert_ne!(ping("--tls --cacert /etc/ssl/certs/ca-certificates.crt", true), "PONG", "Redis's certificate verified without the project CA");
    let anonymous = ping("--tls --cacert /etc/rigger/ca.crt", false);
    assert!(anonymous.contains("NOAUTH"), "Redis over TLS without the password: {anonymous}");
    let health = plan.ssh(&app, "curl -s -m 5 http://127.0.0.1:9001/health");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap_or_else(|e| panic!("app /health is not JSON ({e}): {health}"));
    assert_eq!(health["checks"]["redis"]["ok"], true, "the app reaches Redis over TLS: {health}");
}

/// etcd from a Patroni peer (the firewall lets it in): a client certificate of
/// the project CA gets an answer, no certificate or plaintext gets none.
fn etcd_wants_a_client_certificate(plan: &LocalPlan, net: &str) {
    let from = format!("{net}.22");
    let url = format!("https://{net}.21:2379/version");
    let curl = |args: &str| plan.ssh(&from, &format!("sudo curl -s -m 5 -o /dev/null -w '%{{http_code}}' {args}; echo \" exit $?\""));
    let with_cert = curl(&format!("--cacert /etc/rigger/ca.crt --cert /etc/patroni/tls/server.crt --key /etc/patroni/tls/server.key {url}"));
    assert!(with_cert.starts_with("200"), "etcd with Patroni's client certificate: {with_cert}");
    let without = curl(&format!("--cacert /etc/rigger/ca.crt {url}"));
    assert!(!without.starts_with("200") && !without.ends_with("exit 0"), "etcd answered a client without a certificate: {without}");
    let plaintext = curl(&format!("http://{net}.21:2379/version"));
    assert!(!plaintext.starts_with("200"), "etcd answered plaintext HTTP: {plaintext}");
    let v3 = curl(&format!("-X POST -d '{{\"key\":\"Lw==\"}}' http://{net}.21:2379/v3/kv/range"));
    assert!(!v3.starts_with("200"), "the DCS keys were read over plaintext: {v3}");
}

fn targets(net: &str, list: &[(u8, u16)]) -> Vec<String> {
    list.iter().map(|(h, p)| format!("{net}.{h}:{p}")).collect()
}

#[test]
fn closed_by_default_probed_like_an_attacker() {
    if !common::machines() {
        return;
    }
    let plan = LocalPlan::from_text("t-sec", |p, c, n| plan_text(p, c, n, "", ""));
    let net = plan.net_prefix.clone();
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "apply failed:\n{}", out.text());
    assert!(!out.stderr_text().contains("Warning: security."), "nothing is turned off: {}", out.stderr_text());

    // Every service port of the stack: pg-1 (etcd client/peer, PostgreSQL,
    // Patroni REST), Redis, the app, the HAProxy write port.
    let db_ports = targets(&net, &[(21, 2379), (21, 2380), (21, 5432), (21, 8008)]);
    let services: Vec<String> = db_ports.iter().cloned().chain(targets(&net, &[(31, 6379), (41, 9001), (11, 5000)])).collect();

    // The attacker inside the network: nothing answers.
    let from_intruder = probe_from(&plan, &format!("{net}.99"), &services);
    assert!(all(&from_intruder, false).is_empty(), "ports open to a machine in no allowed group: {:?}", all(&from_intruder, false));

    // The control host is let in on the write port only (the plan says so).
    let host_closed: Vec<String> = services.iter().filter(|t| !t.ends_with(":5000")).cloned().collect();
    let from_host = probe_from_host(&host_closed);
    assert!(all(&from_host, false).is_empty(), "ports open to this host: {:?}", all(&from_host, false));

    // The same ports answer where the plan allows them: the probes can see an open port.
    let from_peer = probe_from(&plan, &format!("{net}.22"), &db_ports);
    assert!(all(&from_peer, true).is_empty(), "a Patroni peer cannot reach {:?}", all(&from_peer, true));
    let from_lb = probe_from(&plan, &format!("{net}.11"), &targets(&net, &[(21, 5432), (21, 8008), (41, 9001)]));
    assert!(all(&from_lb, true).is_empty(), "HAProxy cannot reach {:?}", all(&from_lb, true));
    let from_app = probe_from(&plan, &format!("{net}.41"), &targets(&net, &[(31, 6379), (10, 5000), (11, 5001)]));
    assert!(all(&from_app, true).is_empty(), "the app cannot reach {:?}", all(&from_app, true));
    let vip = probe_from_host(&targets(&net, &[(10, 5000)]));
    assert!(all(&vip, true).is_empty(), "this host cannot reach the write port on the VIP");

    // Patroni REST: HTTPS with the host certificate of the project CA; health
    // checks open (to whoever the firewall lets in), unsafe endpoints want the password.
    let curl = |args: &str| plan.ssh(&format!("{net}.11"), &format!("curl -s -m 5 -o /dev/null -w '%{{http_code}}' {args} || true"));
    let rest = format!("https://{net}.21:8008");
    let health = curl(&format!("--cacert /etc/rigger/ca.crt {rest}/health"));
    assert_eq!(health, "200", "GET /health over HTTPS, verified with the project CA, from HAProxy");
    assert_ne!(curl(&format!("http://{net}.21:8008/health")), "200", "Patroni REST still answers plain HTTP");
    assert_eq!(curl(&format!("--cacert /etc/ssl/certs/ca-certificates.crt {rest}/health")), "000", "Patroni's certificate verified without the project CA");
    let haproxy_cfg = plan.ssh(&format!("{net}.11"), "sudo -n cat /etc/haproxy/haproxy.cfg");
    assert!(haproxy_cfg.contains("check-ssl verify required ca-file /etc/haproxy/ca.crt"), "HAProxy's checks do not verify Patroni's certificate:\n{haproxy_cfg}");
    for (what, args) in [("no credentials", String::new()), ("a wrong password", "-u rigger:wrong".to_string())] {
        for endpoint in ["restart", "reload", "switchover"] {
            let code = curl(&format!("--cacert /etc/rigger/ca.crt {args} -X POST -d '{{}}' {rest}/{endpoint}"));
            assert_eq!(code, "401", "POST /{endpoint} with {what} must be refused");
        }
    }
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(plan.state_path()).unwrap()).unwrap();
    let rest_pw = state["secrets"]["patroni_rest_password"].as_str().expect("a generated REST password in the state").to_string();
    assert!(!out.stdout_text().contains(&rest_pw) && !out.stderr_text().contains(&rest_pw), "the REST password was printed");
    tls_to_postgresql(&plan, &net, &state);
    redis_over_tls(&plan, &net, &state);
    etcd_wants_a_client_certificate(&plan, &net);

    // rigger's own unsafe call (PATCH /config) carries it: a parameter change lands.
    let with_param = std::fs::read_to_string(plan.path()).unwrap().replace("synchronous_mode: false }", "synchronous_mode: false, parameters: { work_mem: 7MB } }");
    std::fs::write(plan.path(), &with_param).unwrap();
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "a parameter change through the authenticated REST API:\n{}", out.text());
    let work_mem = plan.ssh(&format!("{net}.21"), "sudo -u postgres psql -h /var/run/postgresql -Atc 'show work_mem'");
    assert_eq!(work_mem.trim(), "7MB", "PATCH /config took effect");

    // A no-change apply touches no host.
    let out = rigger(&["apply", plan.path(), "--auto-approve", "-v"]);
    assert!(out.status.success(), "{}", out.text());
    for word in ["writing ", "restarting", "reloading", "starting "] {
        assert!(!out.stderr_text().contains(word), "a no-change apply must not be {word}:\n{}", out.stderr_text());
    }

    // A rule change shows in `plan` for the one host it concerns, then opens the port.
    let opened = with_param.replace(
        "  - name: app\n    rules:",
        "      - { direction: ingress, protocol: tcp, ports: 6379, from_group: outside }\n  - name: app\n    rules:",
    );
    assert_ne!(opened, with_param);
    std::fs::write(plan.path(), &opened).unwrap();
    let out = rigger(&["plan", plan.path(), "--detailed-exitcode"]);
    assert_eq!(out.code(), 2, "{}", out.text());
    let text = out.stdout_text();
    assert!(text.contains("host cache") && text.contains("/etc/nftables.conf"), "{text}");
    assert!(text.contains(&format!("ip saddr {net}.99 tcp dport 6379 accept")), "{text}");
    assert_eq!(text.matches("/etc/nftables.conf").count(), 1, "only the cache host's firewall changes:\n{text}");
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "{}", out.text());
    let now = probe_from(&plan, &format!("{net}.99"), &targets(&net, &[(31, 6379), (21, 5432)]));
    assert_eq!(now.values().filter(|o| **o).count(), 1, "only the newly allowed port opened: {now:?}");
    assert!(now[&format!("{net}.31:6379")], "{now:?}");

    // The failover drill writes through the VIP over TLS verified against the project CA.
    // (Its exit status also reports commits lost by asynchronous replication, which a
    // crash may cause; what is checked here is that it wrote, measured and recovered.)
    let out = rigger(&["drill", plan.path()]);
    let text = out.stdout_text();
    assert!(text.contains("RTO (write port unavailable)") && text.contains("back as a streaming replica"), "drill with TLS on:\n{}", out.text());

    // Turning the firewall off is a warned, planned change on every firewalled host.
    std::fs::write(plan.path(), format!("{opened}security: {{ firewall: false }}\n")).unwrap();
    let out = rigger(&["plan", plan.path()]);
    assert!(out.status.success(), "{}", out.text());
    assert!(out.stderr_text().contains("Warning: security.firewall is false"), "{}", out.stderr_text());
    assert_eq!(out.stdout_text().matches("/etc/nftables.conf").count(), 8, "{}", out.stdout_text());

    let out = rigger(&["destroy", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "{}", out.text());
    plan.assert_nothing_left();
}
