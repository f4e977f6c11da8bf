//! The client's path, proved the way a client walks it: a real PostgreSQL
//! client (psql, run over SSH on an HAProxy host — where the stack's clients
//! sit) logs in through the write and the read port of every HAProxy host and
//! of the VIP and asks `pg_is_in_recovery()` (write → false, read → true);
//! HTTP through nginx must reach every app. The daemons' own opinion (HAProxy's
//! backends UP, Patroni's /cluster) says nothing about pg_hba or a firewall on
//! the way; this does. Used by the haproxy/keepalived/nginx gates and `status`.

use crate::hosts::run::wait_for;
use crate::plan::model::{Host, Plan};
use crate::hosts::remote::session::{sh_quote, HostSession};
use anyhow::{anyhow, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use crate::hosts::roles::{app, haproxy, keepalived, nginx, patroni};

/// One way in: `addr:port`, expected to reach the primary (write) or a replica (read).
#[derive(Debug, Clone, Serialize)]
pub struct PgPath {
    /// `lb-1 write port` / `VIP read port`
    pub label: String,
    pub addr: String,
    pub port: u64,
    pub primary: bool,
}

/// The write and read ports of `hosts` (HAProxy hosts). The read port only
/// when there is a replica to reach.
pub fn haproxy_paths(plan: &Plan, hosts: &[&Host]) -> Vec<PgPath> {
    if plan.hosts_with_role(patroni::NAME).next().is_none() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for h in hosts {
        out.extend(ports(plan, &h.name, &h.ip.to_string()));
    }
    out
}

/// The write and read ports on the keepalived VIP, when the plan has one.
pub fn vip_paths(plan: &Plan) -> Vec<PgPath> {
    let vip = plan.setting(keepalived::NAME, "vip").and_then(Value::as_str);
    match vip {
        Some(v) if plan.hosts_with_role(keepalived::NAME).next().is_some() && plan.hosts_with_role(patroni::NAME).next().is_some() => ports(plan, "VIP", v),
        _ => Vec::new(),
    }
}

fn ports(plan: &Plan, who: &str, addr: &str) -> Vec<PgPath> {
    let mut out = vec![PgPath { label: format!("{who} write port"), addr: addr.to_string(), port: plan.int_setting(haproxy::NAME, "write_port"), primary: true }];
    if plan.hosts_with_role(patroni::NAME).count() >= 2 {
        out.push(PgPath { label: format!("{who} read port"), addr: addr.to_string(), port: plan.int_setting(haproxy::NAME, "read_port"), primary: false });
    }
    out
}

/// Errors no retry can fix: the server refused who we are.
fn is_refusal(message: &str) -> bool {
    message.contains("no pg_hba.conf entry") || message.contains("password authentication failed") || message.contains("is not permitted to log in")
}

/// Sets `$psql` to the newest installed client binary itself, not Debian's
/// `/usr/bin/psql` wrapper: the wrapper is a Perl program that reads every
/// cluster's configuration first, about 40 ms of CPU per call against 13 ms
/// for the login itself. The loop is a shell glob, no extra process; with no
/// versioned client installed it falls back to `psql` on the PATH.
pub const CLIENT_PSQL: &str = "psql=psql; for c in /usr/lib/postgresql/*/bin/psql; do [ -x \"$c\" ] && psql=$c; done";

/// One login through `path`, psql running on `client` (its own 8 s bound).
/// `Ok(Err(why))`: the path does not work, with the server's own message.
/// The login through `path` as a command (the password on stdin).
pub fn probe_ask(path: &PgPath, password: &str) -> crate::hosts::remote::ahead::Ask {
    let conninfo = format!("host={} port={} user=postgres dbname=postgres connect_timeout=4", path.addr, path.port);
    let script = format!(
        "{CLIENT_PSQL}\n\
         command -v \"$psql\" >/dev/null || {{ echo 'psql is not installed on this host (package postgresql-client)'; exit 3; }}\n\
         read -r PGPASSWORD; export PGPASSWORD\n\
         timeout 8 \"$psql\" {} -XAtc 'select pg_is_in_recovery()' 2>&1",
        sh_quote(&conninfo)
    );
    crate::hosts::remote::ahead::Ask::sudo(script, Some(format!("{password}\n").as_bytes()))
}

pub async fn probe(client: &HostSession, path: &PgPath, password: &str) -> Result<Result<(), String>> {
    let ask = probe_ask(path, password);
    let out = client.sudo(&ask.script, ask.stdin.as_deref()).await?;
    let text = out.stdout.trim();
    Ok(match (text, path.primary) {
        ("f", true) | ("t", false) => Ok(()),
        ("t", true) => Err("reached a replica (pg_is_in_recovery() = true), not the primary".into()),
        ("f", false) => Err("reached the primary (pg_is_in_recovery() = false), not a replica".into()),
        (other, _) if out.code == 124 => Err(format!("no answer within 8 s {other}")),
        (other, _) => Err(other.lines().last().unwrap_or("psql failed without a message").trim().to_string()),
    })
}

/// How long a refusal by the server (pg_hba, password) is retried: a Patroni
/// reload rewrites pg_hba.conf in Patroni's own loop, a moment after rigger's
/// `reload` returned. Past that, waiting cannot change pg_hba or a password.
const REFUSAL_GRACE: Duration = Duration::from_secs(15);

/// Log in through every path from `client`, retrying for up to `limit`
/// (HAProxy's checks may still settle); a refusal by the server fails after
/// `REFUSAL_GRACE` with the server's message.
pub async fn gate(client: &HostSession, paths: &[PgPath], password: &str, limit: Duration) -> Result<()> {
    let checks = paths.iter().map(|p| async move {
        let what = format!("login through the {} ({}:{}) from {}, pg_is_in_recovery() = {}", p.label, p.addr, p.port, client.name, !p.primary);
        // tokio's clock: std's in a run, pausable in tests.
        let started = tokio::time::Instant::now();
        loop {
            let why = match probe(client, p, password).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(why)) if is_refusal(&why) && started.elapsed() >= REFUSAL_GRACE.min(limit) => return Err(anyhow!("{what}: refused by the server: {why}")),
                Ok(Err(why)) => why,
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() >= limit {
                return Err(anyhow!("{what}: not reached after {}s — last seen: {why}", limit.as_secs()));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let errors: Vec<String> = futures::future::join_all(checks).await.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("the client path does not work:\n  {}", errors.join("\n  ")))
    }
}

/// The app servers nginx on `session` answered through, over `rounds` requests
/// to `UPSTREAM_PROBE_PATH`: `ip:port` as nginx's X-Upstream names them. An
/// answer counts when the app made it (below 500: nginx's own failures are
/// 502/504, and an answer nginx makes itself names no upstream).
pub async fn nginx_upstreams(session: &HostSession, nginx_port: u64, rounds: usize) -> Result<BTreeSet<String>> {
    let out = session.sudo(&nginx_upstreams_ask(nginx_port, rounds).script, None).await?;
    let mut seen = BTreeSet::new();
    for line in out.stdout.lines() {
        let Some((status, upstreams)) = line.split_once(' ') else { continue };
        if status.parse::<u16>().is_ok_and(|s| (100..500).contains(&s)) {
            // After a retry nginx lists every server it tried; the last one answered.
            if let Some(last) = upstreams.split(',').next_back().map(str::trim).filter(|u| !u.is_empty()) {
                seen.insert(last.to_string());
            }
        }
    }
    Ok(seen)
}

/// A path no app is expected to serve. The spray only has to prove that nginx
/// forwards to every app and the app answers; an app answers an unknown path
/// (a 404) without touching its database, where each /health would open two
/// TLS, SCRAM-authenticated database logins and ping Redis. The whole client
/// path is proven by one /health through nginx (`nginx_health_ask`) and every
/// app's own /health gate on its host.
pub const UPSTREAM_PROBE_PATH: &str = "/.well-known/rigger-upstream-probe";

/// `nginx_upstreams`' requests as one command: one curl sending them all at
/// once (`--parallel`; least_conn spreads concurrent requests over the apps,
/// and one after another they would cost a request's latency each), each
/// answer printed as one line. One process, not one per request: curl's own
/// start costs about 11 ms of CPU. (`--no-progress-meter`: curl 7.88 prints
/// the parallel meter even with `-s`.)
pub fn nginx_upstreams_ask(nginx_port: u64, rounds: usize) -> crate::hosts::remote::ahead::Ask {
    let url = format!("http://127.0.0.1:{nginx_port}{UPSTREAM_PROBE_PATH}");
    let targets = vec![format!("-o /dev/null {url}"); rounds.max(1)].join(" ");
    crate::hosts::remote::ahead::Ask::sudo(
        format!("curl -s --no-progress-meter -m 5 --parallel --parallel-immediate --parallel-max {} -w '%{{http_code}} %header{{x-upstream}}\\n' {targets}", rounds.clamp(1, 50)),
        None,
    )
}

/// The nginx gate's commands on `session`'s host, asked ahead: /health, then
/// which apps answer through it.
pub fn nginx_gate_asks(plan: &Plan) -> Vec<crate::hosts::remote::ahead::Ask> {
    let port = plan.int_setting(nginx::NAME, "port");
    vec![nginx_health_ask(port), nginx_upstreams_ask(port, app_upstreams(plan).len() * 3)]
}

/// /health through nginx answers 200 (its status code on stdout).
pub fn nginx_health_ask(port: u64) -> crate::hosts::remote::ahead::Ask {
    crate::hosts::remote::ahead::Ask::sudo(format!("curl -s -m 5 -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/health"), None)
}

/// `ip:port` of every app server, as nginx names them.
pub fn app_upstreams(plan: &Plan) -> BTreeMap<String, String> {
    let port = plan.int_setting(app::NAME, "port");
    plan.hosts_with_role(app::NAME).map(|h| (format!("{}:{port}", h.ip), h.name.clone())).collect()
}

/// HTTP through nginx on `session` reaches every app (bounded by `limit`).
pub async fn nginx_gate(plan: &Plan, session: &HostSession, limit: Duration) -> Result<()> {
    let port = plan.int_setting(nginx::NAME, "port");
    let apps = app_upstreams(plan);
    let rounds = apps.len() * 3;
    let names = apps.values().cloned().collect::<Vec<_>>().join(", ");
    wait_for(&format!("{}: HTTP through nginx reaches every app ({names})", session.name), limit, || async {
        let seen = nginx_upstreams(session, port, rounds).await?;
        let missing: Vec<&str> = apps.iter().filter(|(u, _)| !seen.contains(*u)).map(|(_, n)| n.as_str()).collect();
        Ok(if missing.is_empty() { Ok(()) } else { Err(format!("no answer from {} through nginx in {rounds} requests to {UPSTREAM_PROBE_PATH}", missing.join(", "))) })
    })
    .await
}
