//! HAProxy: the write port follows Patroni's primary (`GET /primary`, 200 and
//! PostgreSQL running; a refused connection takes a server out at once), the
//! read port round-robins healthy replicas. The config passes `haproxy -c`
//! before it replaces the live one; changes reload without dropping traffic.
//! Gate: the write backend has exactly one server up.

use super::{file, service};
use crate::hosts::ops::{HostDesired, OnChange};
use crate::hosts::run::{wait_for, RoleRun};
use crate::hosts::remote::session::HostSession;
use crate::render::Renderer;
use anyhow::Result;
use serde_json::Value;
use std::time::Duration;
use crate::plan::services::{Setting, PATRONI_SIZE, PORT};
use serde_json::json;
use crate::plan::model::Plan;
use crate::flows::{FlowSink, Service};
use super::role::Outputs;
use serde_json::Map;

/// Saves the servers' check states before a reload (the drop-in runs it).
const SAVE_STATE: &str = "/usr/local/lib/rigger/haproxy-save-state";
const STATE_DROP_IN: &str = "/etc/systemd/system/haproxy.service.d/rigger-server-state.conf";

pub fn desired(r: &Renderer, ctx: &Value) -> Result<HostDesired> {
    Ok(HostDesired {
        packages: vec!["haproxy".into()],
        files: vec![
            file(NAME, SAVE_STATE, r.render("haproxy-save-state.py.j2", ctx)?, 0o755, "root", "root", None, &[]),
            file(NAME, STATE_DROP_IN, r.render("haproxy-state.conf.j2", ctx)?, 0o644, "root", "root", None, &["haproxy"]),
            file(NAME, "/etc/haproxy/haproxy.cfg", r.render("haproxy.cfg.j2", ctx)?, 0o640, "root", "haproxy", Some(("haproxy -c", "haproxy -c -f {}")), &["haproxy"]),
        ],
        services: vec![service(NAME, "haproxy", OnChange::Reload)],
        ..Default::default()
    })
}

/// One backend server as the stats page reports it.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    pub backend: String,
    pub server: String,
    pub status: String,
}

/// Read the stats CSV on the host (the password goes through stdin, not argv).
/// The stats CSV, with the password on stdin (curl's config from `-K -`).
fn servers_ask(stats_port: u64, password: &str) -> crate::hosts::remote::ahead::Ask {
    crate::hosts::remote::ahead::Ask::sudo(format!("curl -s -m 3 -K - 'http://127.0.0.1:{stats_port}/stats;csv'"), Some(format!("user = \"admin:{password}\"\n").as_bytes()))
}

fn stats_port(plan: &crate::plan::model::Plan) -> u64 {
    plan.int_setting(NAME, "stats_port")
}

/// The gate's commands on `host`, asked ahead in the facts round trip.
pub fn gate_asks(plan: &crate::plan::model::Plan, host: &crate::plan::model::Host, secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
    if plan.hosts_with_role(super::patroni::NAME).next().is_none() {
        return vec![];
    }
    let password = secrets.get("haproxy_stats_password").cloned().unwrap_or_default();
    let superuser = secrets.get("postgres_superuser_password").cloned().unwrap_or_default();
    let mut asks = vec![servers_ask(stats_port(plan), &password)];
    asks.extend(crate::client_path::haproxy_paths(plan, &[host]).iter().map(|p| crate::client_path::probe_ask(p, &superuser)));
    asks
}

pub async fn servers(s: &HostSession, stats_port: u64, password: &str) -> Result<Vec<ServerStatus>> {
    let ask = servers_ask(stats_port, password);
    let out = s.sudo(&ask.script, ask.stdin.as_deref()).await?;
    let mut list = Vec::new();
    for line in out.stdout.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() > 17 && f[1] != "FRONTEND" && f[1] != "BACKEND" {
            list.push(ServerStatus { backend: f[0].to_string(), server: f[1].to_string(), status: f[17].to_string() });
        }
    }
    Ok(list)
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    run.each(|h, s| async move { run.plain_service_changes(h, s).await }).await?;
    gate(run).await
}

pub async fn gate(run: &RoleRun<'_>) -> Result<()> {
    let port = stats_port(run.plan);
    let password = run.secrets.get("haproxy_stats_password").cloned().unwrap_or_default();
    let members = run.plan.hosts_with_role(super::patroni::NAME).count();
    if members == 0 {
        // Only HTTP frontends (Saleor, Storefront): their backends come up in later roles.
        return Ok(());
    }
    let replicas = members.saturating_sub(1);
    run.each(|h, s| {
        let password = password.clone();
        async move {
            wait_for(&format!("{}: HAProxy sees the primary (and the replicas)", h.name), Duration::from_secs(90), || async {
                let list = servers(s, port, &password).await?;
                let up = |b: &str| list.iter().filter(|x| x.backend == b && x.status.starts_with("UP")).count();
                match (up("primary"), up("replicas")) {
                    (1, r) if r >= replicas => Ok(Ok(())),
                    (p, r) => Ok(Err(format!("write backend {p} up (want 1), read backend {r} up (want {replicas})"))),
                }
            })
            .await
        }
    })
    .await?;
    // The daemon's opinion is not the client's path: log in through each host's ports.
    let superuser = run.secrets.get("postgres_superuser_password").cloned().unwrap_or_default();
    run.each(|h, s| {
        let superuser = superuser.clone();
        async move { crate::client_path::gate(s, &crate::client_path::haproxy_paths(run.plan, &[h]), &superuser, Duration::from_secs(30)).await }
    })
    .await
}

/// Where clients reach the built stack's load balancers: the VIP, else
/// the first built HAProxy host (`rigger output`).
pub fn front(at: &Outputs<'_>) -> Option<String> {
    at.plan.setting(super::keepalived::NAME, "vip").and_then(Value::as_str).map(str::to_string).or_else(|| at.ips(NAME).first().cloned())
}

/// The haproxy role, as the registry lists it.
pub struct Haproxy;

/// The plan's `roles:` value.
pub const NAME: &str = "haproxy";

/// The settings under `services: haproxy:` — each default is written here only.
static SETTINGS: &[Setting] = &[
    Setting::new("write_port", PORT, |_| json!(5000), "port that reaches the Patroni leader"),
    Setting::new("read_port", PORT, |_| json!(5001), "port that round-robins the replicas"),
    Setting::new("stats_port", PORT, |_| json!(8404), "stats page (password protected)"),
    Setting::new("http_port", PORT, |_| json!(80), "HTTP frontend for Saleor and the Storefront (when the plan has them)"),
    Setting::new("max_replica_lag", PATRONI_SIZE, |_| json!("100MB"), "replicas lagging more are taken out of the read port"),
];

/// The secrets the role needs (generated once, kept in the state).
const SECRETS: &[&str] = &["haproxy_stats_password"];

#[async_trait::async_trait]
impl super::role::Role for Haproxy {
    fn name(&self) -> &'static str {
        NAME
    }

    fn outputs(&self, at: &Outputs<'_>, o: &mut Map<String, Value>) {
        let lb_ips = at.ips(NAME);
        if let Some(front) = front(at) {
            o.insert("postgres_write".into(), json!(format!("postgres://postgres@{front}:{}/postgres", at.setting(NAME, "write_port"))));
            o.insert("postgres_read".into(), json!(format!("postgres://postgres@{front}:{}/postgres", at.setting(NAME, "read_port"))));
        }
        if !lb_ips.is_empty() {
            o.insert("haproxy_stats".into(), json!(lb_ips.iter().map(|ip| format!("http://{ip}:{}/stats", at.setting(NAME, "stats_port"))).collect::<Vec<_>>()));
            o.insert("haproxy_stats_user".into(), json!("admin"));
            o.insert("haproxy_stats_password".into(), at.secret("haproxy_stats_password"));
        }
    }

    fn inventory_vars(&self) -> &'static [(&'static str, &'static str)] {
        &[("haproxy_write_port", "write_port"), ("haproxy_read_port", "read_port"), ("haproxy_stats_port", "stats_port")]
    }

    fn flows(&self, net: &mut FlowSink<'_>) {
        // Database clients go through HAProxy (every HAProxy host: the VIP lands on any of them).
        if net.has(super::patroni::NAME) {
            for clients in [super::app::NAME, super::saleor::NAME] {
                net.tcp(clients, NAME, "write_port", Service::HaproxyWrite);
                net.tcp(clients, NAME, "read_port", Service::HaproxyRead);
            }
        }
        // The Storefront's server-side rendering calls the API through the load balancer.
        net.tcp(super::storefront::NAME, NAME, "http_port", Service::HaproxyHttp);
    }

    fn listens(&self, plan: &Plan) -> Vec<(&'static str, &'static str)> {
        let mut ports = vec![(NAME, "write_port"), (NAME, "read_port"), (NAME, "stats_port")];
        if plan.hosts_with_role(super::saleor::NAME).next().is_some() {
            // The shop's HTTP frontend and the dashboard's (haproxy.cfg.j2).
            ports.extend([(NAME, "http_port"), (super::saleor::NAME, "dashboard_port")]);
        }
        ports
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn secrets(&self) -> &'static [&'static str] {
        SECRETS
    }

    fn needs(&self) -> &'static [&'static str] {
        &[super::patroni::NAME]
    }
    fn services(&self) -> &'static [&'static str] {
        &["haproxy"]
    }
    fn desired(&self, at: &super::role::HostInput<'_>) -> anyhow::Result<crate::hosts::ops::HostDesired> {
        desired(at.renderer, at.ctx)
    }
    fn gate_asks(&self, plan: &crate::plan::model::Plan, host: &crate::plan::model::Host, secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
        gate_asks(plan, host, secrets)
    }
    async fn converge(&self, run: &RoleRun<'_>) -> anyhow::Result<()> {
        converge(run).await
    }
}
