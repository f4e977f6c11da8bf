//! `rigger status`: live health of the stack, read from the hosts themselves —
//! etcd members, Patroni members (role, state, lag, streaming), HAProxy
//! backends up/down, who holds the VIP, Redis.

use crate::cli::StatusCmd;
use crate::project::Project;
use crate::hosts::remote::session::HostSession;
use crate::ui::{self, Paint};
use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use crate::hosts::roles::{etcd, haproxy, keepalived, nginx, patroni, redis};

#[derive(Serialize, Default)]
pub struct Status {
    pub etcd: Vec<EtcdMember>,
    pub patroni: Vec<PatroniMember>,
    pub haproxy: Vec<HaproxyView>,
    pub vip: Option<VipView>,
    pub redis: Vec<RedisView>,
    /// The backup role: newest backup, WAL archiving (None without a backup host).
    pub backup: Option<crate::hosts::roles::backup::BackupStatus>,
    /// The client's paths: logins through every HAProxy port and the VIP, HTTP through nginx to every app.
    pub paths: Vec<PathView>,
    /// Hosts that could not be reached, with why.
    pub unreachable: BTreeMap<String, String>,
}

#[derive(Serialize)]
pub struct EtcdMember {
    pub host: String,
    pub healthy: bool,
    pub detail: String,
}

#[derive(Serialize)]
pub struct PatroniMember {
    pub name: String,
    pub role: String,
    pub state: String,
    /// Bytes behind the leader, as Patroni reports it.
    pub lag: Value,
    /// Seen streaming in the leader's pg_stat_replication.
    pub streaming: bool,
    pub pending_restart: bool,
}

#[derive(Serialize)]
pub struct HaproxyView {
    pub host: String,
    pub servers: Vec<(String, String, String)>,
}

#[derive(Serialize)]
pub struct VipView {
    pub address: String,
    pub holders: Vec<String>,
}

#[derive(Serialize)]
pub struct PathView {
    pub path: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Serialize)]
pub struct RedisView {
    pub host: String,
    pub ok: bool,
}

impl Status {
    /// Healthy: every etcd member healthy, one Patroni leader with the others
    /// streaming, one write server up per HAProxy, the VIP on exactly one host.
    pub fn healthy(&self) -> bool {
        self.unreachable.is_empty()
            && self.etcd.iter().all(|m| m.healthy)
            && (self.patroni.is_empty()
                || (self.patroni.iter().filter(|m| m.role == "leader").count() == 1
                    && self.patroni.iter().filter(|m| m.role != "leader").all(|m| m.streaming)))
            && self.haproxy.iter().all(|h| h.servers.iter().filter(|(b, _, s)| b == "primary" && s.starts_with("UP")).count() == 1)
            && self.vip.as_ref().is_none_or(|v| v.holders.len() == 1)
            && self.redis.iter().all(|r| r.ok)
            && self.backup.as_ref().is_none_or(|b| b.ok())
            && self.paths.iter().all(|p| p.ok)
    }
}

pub async fn run(args: &StatusCmd, state_override: Option<&Path>) -> Result<i32> {
    let project = Project::load(&args.plan, state_override)?;
    let Some(state) = crate::state::read_state(&project.state_path)? else {
        bail!("nothing was applied for project {} yet — run `rigger apply {}` first", project.plan.project, args.plan.display());
    };
    let status = gather(&project, &state).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status, &Paint { on: ui::color_enabled() }));
    }
    Ok(if status.healthy() { 0 } else { 1 })
}

pub async fn gather(project: &Project, state: &crate::state::State) -> Result<Status> {
    let plan = &project.plan;
    let config = crate::hosts::remote::ssh_config_path(project);
    let built: Vec<String> = state.machines().map(|m| m.address.name.clone()).collect();
    let wanted: Vec<&crate::plan::model::Host> = plan.hosts.iter().filter(|h| built.contains(&h.name) && !h.roles.is_empty()).collect();
    let connected = futures::future::join_all(wanted.iter().map(|h| {
        let config = config.clone();
        async move { (h.name.clone(), HostSession::connect(&config, &h.name).await) }
    }))
    .await;
    let mut status = Status::default();
    let mut sessions: BTreeMap<String, HostSession> = BTreeMap::new();
    for (name, r) in connected {
        match r {
            Ok(s) => {
                sessions.insert(name, s);
            }
            Err(e) => {
                status.unreachable.insert(name, format!("{e:#}"));
            }
        }
    }

    for h in plan.hosts_with_role(etcd::NAME) {
        let Some(s) = sessions.get(&h.name) else { continue };
        let (healthy, detail) = crate::hosts::roles::etcd::member_health(s, plan.int_setting(etcd::NAME, "client_port")).await?;
        status.etcd.push(EtcdMember { host: h.name.clone(), healthy, detail });
    }

    let rest = plan.int_setting(patroni::NAME, "rest_port");
    if let Some(s) = plan.hosts_with_role(patroni::NAME).find_map(|h| sessions.get(&h.name)) {
        let out = s.sudo(&crate::hosts::roles::rest_auth::local_curl(rest, "-m 3", "/cluster"), None).await?;
        let cluster: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        let members: Vec<Value> = cluster["members"].as_array().cloned().unwrap_or_default();
        let leader = members.iter().find(|m| m["role"] == "leader").and_then(|m| m["name"].as_str()).map(str::to_string);
        let streaming: Vec<String> = match leader.as_ref().and_then(|l| sessions.get(l)) {
            Some(ls) => crate::hosts::roles::patroni::streaming_replicas(ls, plan).await?,
            None => vec![],
        };
        for m in members {
            let name = m["name"].as_str().unwrap_or("").to_string();
            // /cluster carries what members last wrote to the DCS (up to a
            // loop_wait old); ask the member itself whether it owes a restart.
            let pending_restart = match sessions.get(&name) {
                Some(ms) => {
                    let live = ms.sudo(&crate::hosts::roles::rest_auth::local_curl(rest, "-m 3", "/patroni"), None).await?;
                    crate::hosts::roles::patroni::restart_pending(&live.stdout)
                }
                None => m["pending_restart"].as_bool().unwrap_or(false),
            };
            status.patroni.push(PatroniMember {
                streaming: streaming.contains(&name),
                role: m["role"].as_str().unwrap_or("").to_string(),
                state: m["state"].as_str().unwrap_or("").to_string(),
                lag: m.get("lag").cloned().unwrap_or(Value::Null),
                pending_restart,
                name,
            });
        }
    }

    let stats_port = plan.int_setting(haproxy::NAME, "stats_port");
    let password = state.secrets.get("haproxy_stats_password").cloned().unwrap_or_default();
    for h in plan.hosts_with_role(haproxy::NAME) {
        let Some(s) = sessions.get(&h.name) else { continue };
        let servers = crate::hosts::roles::haproxy::servers(s, stats_port, &password).await?;
        status.haproxy.push(HaproxyView { host: h.name.clone(), servers: servers.into_iter().map(|x| (x.backend, x.server, x.status)).collect() });
    }

    if let Some(vip) = plan.setting(keepalived::NAME, "vip").and_then(Value::as_str) {
        let mut holders = Vec::new();
        for h in plan.hosts_with_role(keepalived::NAME) {
            let Some(s) = sessions.get(&h.name) else { continue };
            if crate::hosts::roles::keepalived::holds_vip(s, vip).await? {
                holders.push(h.name.clone());
            }
        }
        status.vip = Some(VipView { address: vip.to_string(), holders });
    }

    let redis_port = plan.int_setting(redis::NAME, "port");
    let redis_password = state.secrets.get("redis_password").cloned().unwrap_or_default();
    for h in plan.hosts_with_role(redis::NAME) {
        let Some(s) = sessions.get(&h.name) else { continue };
        let ok = crate::hosts::roles::redis::ping(s, redis_port, &redis_password).await? == "PONG";
        status.redis.push(RedisView { host: h.name.clone(), ok });
    }
    let leader = status.patroni.iter().find(|m| m.role == "leader").map(|m| m.name.clone());
    status.backup = crate::hosts::roles::backup::status(plan, &sessions, leader.as_deref()).await;
    status.paths = client_paths(plan, state, &sessions).await?;
    for (_, s) in sessions {
        s.close().await;
    }
    Ok(status)
}

/// The same client paths the gates prove (src/client_path.rs), one attempt each.
async fn client_paths(plan: &crate::plan::model::Plan, state: &crate::state::State, sessions: &BTreeMap<String, HostSession>) -> Result<Vec<PathView>> {
    use crate::client_path as cp;
    let superuser = state.secrets.get("postgres_superuser_password").cloned().unwrap_or_default();
    let mut jobs: Vec<(&HostSession, cp::PgPath)> = Vec::new();
    for h in plan.hosts_with_role(haproxy::NAME) {
        if let Some(s) = sessions.get(&h.name) {
            jobs.extend(cp::haproxy_paths(plan, &[h]).into_iter().map(|p| (s, p)));
        }
    }
    if let Some(s) = plan.hosts_with_role(keepalived::NAME).find_map(|h| sessions.get(&h.name)) {
        jobs.extend(cp::vip_paths(plan).into_iter().map(|p| (s, p)));
    }
    let probes = jobs.iter().map(|(s, p)| {
        let superuser = &superuser;
        async move { (format!("{} ({}:{})", p.label, p.addr, p.port), cp::probe(s, p, superuser).await) }
    });
    let mut out = Vec::new();
    for (path, r) in futures::future::join_all(probes).await {
        let r = r?;
        out.push(PathView { path, ok: r.is_ok(), detail: r.err().unwrap_or_default() });
    }
    let apps = cp::app_upstreams(plan);
    let nginx_port = plan.int_setting(nginx::NAME, "port");
    for h in plan.hosts_with_role(nginx::NAME) {
        let Some(s) = sessions.get(&h.name) else { continue };
        let seen = cp::nginx_upstreams(s, nginx_port, apps.len() * 3).await?;
        let missing: Vec<&str> = apps.iter().filter(|(u, _)| !seen.contains(*u)).map(|(_, n)| n.as_str()).collect();
        let detail = if missing.is_empty() { String::new() } else { format!("no answer from {} through nginx", missing.join(", ")) };
        out.push(PathView { path: format!("HTTP through nginx {} to every app", h.name), ok: missing.is_empty(), detail });
    }
    Ok(out)
}

fn mark(ok: bool, paint: &Paint) -> String {
    if ok {
        paint.green("ok  ")
    } else {
        paint.red("FAIL")
    }
}

pub fn render(s: &Status, paint: &Paint) -> String {
    let mut out = String::new();
    if !s.etcd.is_empty() {
        let healthy = s.etcd.iter().filter(|m| m.healthy).count();
        out.push_str(&format!("{} etcd: {healthy}/{} members healthy\n", mark(healthy == s.etcd.len(), paint), s.etcd.len()));
        for m in s.etcd.iter().filter(|m| !m.healthy) {
            out.push_str(&format!("       {}: {}\n", m.host, m.detail));
        }
    }
    if !s.patroni.is_empty() {
        let leaders = s.patroni.iter().filter(|m| m.role == "leader").count();
        let ok = leaders == 1 && s.patroni.iter().filter(|m| m.role != "leader").all(|m| m.streaming);
        out.push_str(&format!("{} patroni: {leaders} leader(s)\n", mark(ok, paint)));
        for m in &s.patroni {
            let repl = if m.role == "leader" { String::new() } else if m.streaming { " streaming".into() } else { " NOT streaming".into() };
            let lag = if m.lag.is_null() { String::new() } else { format!(", lag {}", m.lag) };
            let pending = if m.pending_restart { ", restart pending" } else { "" };
            out.push_str(&format!("       {:<10} {:<8} {}{repl}{lag}{pending}\n", m.name, m.role, m.state));
        }
    }
    for h in &s.haproxy {
        let up = |b: &str| h.servers.iter().filter(|(x, _, st)| x == b && st.starts_with("UP")).map(|(_, n, _)| n.clone()).collect::<Vec<_>>();
        let (w, r) = (up("primary"), up("replicas"));
        out.push_str(&format!("{} haproxy {}: write → {}, read → {}\n", mark(w.len() == 1, paint), h.host, w.join(","), r.join(",")));
    }
    if let Some(v) = &s.vip {
        out.push_str(&format!("{} vip {}: held by {}\n", mark(v.holders.len() == 1, paint), v.address, if v.holders.is_empty() { "nobody".into() } else { v.holders.join(", ") }));
    }
    for r in &s.redis {
        out.push_str(&format!("{} redis {}\n", mark(r.ok, paint), r.host));
    }
    if let Some(b) = &s.backup {
        out.push_str(&crate::hosts::roles::backup::render_status(b, &mark(b.backups > 0 && b.error.is_none(), paint), &mark(b.archive.as_ref().is_some_and(|a| !a.failing), paint)));
    }
    for p in &s.paths {
        let detail = if p.ok { String::new() } else { format!(": {}", p.detail) };
        out.push_str(&format!("{} path {}{detail}\n", mark(p.ok, paint), p.path));
    }
    for (h, why) in &s.unreachable {
        out.push_str(&format!("{} {h}: unreachable: {why}\n", mark(false, paint)));
    }
    out
}
