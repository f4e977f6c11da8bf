//! etcd: three (or five…) members on the v3 API, started together; a changed
//! config restarts one member at a time so the quorum holds; the gate is
//! `etcdctl endpoint health` on every member. A member that is new to a
//! running cluster joins it (`member add`, `existing`), one at a time
//! (`reshape::etcd_members`). The initial-cluster settings live in their own
//! file that notifies nothing: etcd reads them only at bootstrap.

use super::{file, service};
use crate::hosts::ops::{HostDesired, OnChange};
use crate::hosts::run::{start, wait_for, RoleRun};
use crate::hosts::remote::session::HostSession;
use crate::reshape::etcd_members;
use crate::render::Renderer;
use anyhow::Result;
use serde_json::Value;
use std::time::Duration;
use crate::plan::services::{Setting, SettingType, PORT};
use serde_json::json;
use crate::plan::model::Plan;
use crate::flows::{FlowSink, Service};
use super::role::Outputs;
use serde_json::Map;
use super::role::PlanCheck;
use crate::plan::diag::Diags;

pub fn desired(r: &Renderer, ctx: &Value) -> Result<HostDesired> {
    Ok(HostDesired {
        packages: vec!["etcd-server".into(), "etcd-client".into()],
        files: vec![
            file(NAME, "/etc/default/etcd", r.render("etcd.env.j2", ctx)?, 0o644, "root", "root", None, &["etcd"]),
            file(NAME, BOOTSTRAP_FILE, r.render("etcd-bootstrap.env.j2", ctx)?, 0o644, "root", "root", None, &[]),
            file(NAME, DROP_IN, DROP_IN_TEXT.to_string(), 0o644, "root", "root", None, &[]),
        ],
        services: vec![service(NAME, "etcd", OnChange::Custom)],
        ..Default::default()
    })
}

/// Bootstrap-only settings (templates/etcd-bootstrap.env.j2).
const BOOTSTRAP_FILE: &str = "/etc/default/etcd-bootstrap";
/// Makes Debian's etcd.service read the bootstrap file and, on a joining
/// member, the join file after /etc/default/etcd (later files win).
const DROP_IN: &str = "/etc/systemd/system/etcd.service.d/rigger-bootstrap.conf";
const DROP_IN_TEXT: &str = "# Managed by rigger: settings etcd reads only when it bootstraps its data directory.\n[Service]\nEnvironmentFile=-/etc/default/etcd-bootstrap\nEnvironmentFile=-/etc/default/etcd-join\n";

fn peer_port(run: &RoleRun) -> u64 {
    run.plan.int_setting(NAME, "peer_port")
}

fn client_port(run: &RoleRun) -> u64 {
    run.plan.int_setting(NAME, "client_port")
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    let down: Vec<String> = run.hosts.iter().filter(|h| run.changes_of(&h.name).start.iter().any(|x| x == "etcd")).map(|h| h.name.clone()).collect();
    let running: Vec<String> = run.hosts.iter().map(|h| h.name.clone()).filter(|n| !down.contains(n)).collect();
    // A member without data in a cluster that runs is new to it: it joins, one at a time.
    let mut joiners = Vec::new();
    if !running.is_empty() {
        for name in &down {
            if !etcd_members::has_data(run.session(name)?).await? {
                joiners.push(name.clone());
            }
        }
    }
    // Members that are down (and not joining) start together (a lone member waits for its peers).
    run.each(|h, s| {
        let joining = joiners.contains(&h.name);
        async move {
            let ch = run.changes_of(&h.name);
            if ch.start.iter().any(|x| x == "etcd") && !joining {
                run.events.progress(&format!("etcd {}", h.name), "starting etcd");
                s.sudo_ok("starting etcd", "systemctl start --no-block etcd").await?;
            }
            Ok(())
        }
    })
    .await?;
    if let Some(existing) = running.first() {
        let existing = run.session(existing)?;
        for name in &joiners {
            let host = run.plan.host(name).ok_or_else(|| anyhow::anyhow!("{name}: not in the plan"))?;
            run.events.progress(&format!("etcd {name}"), "joining the running cluster (member add, then start with `existing`)");
            etcd_members::join(existing, run.session(name)?, name, &host.ip.to_string(), client_port(run), peer_port(run)).await?;
        }
    }
    gate(run).await?;
    // Running members whose config changed: one at a time, healthy in between.
    for h in &run.hosts {
        if run.changes_of(&h.name).custom.iter().any(|x| x == "etcd") {
            let s = run.session(&h.name)?;
            run.events.progress(&format!("etcd {}", h.name), "restarting etcd (one member at a time)");
            s.sudo_ok("restarting etcd", "systemctl stop etcd").await?;
            start(s, "etcd").await?;
            gate(run).await?;
        }
    }
    Ok(())
}

/// `etcdctl endpoint health` on this member: healthy, and what it said.
fn health_script(port: u64) -> String {
    format!("{} 2>&1", super::tls::etcdctl(port, "--command-timeout=3s endpoint health"))
}

fn member_list_script(port: u64) -> String {
    format!("{} 2>&1", super::tls::etcdctl(port, "member list"))
}

/// The gate's commands on `host`, asked ahead in the facts round trip.
pub fn gate_asks(plan: &crate::plan::model::Plan) -> Vec<crate::hosts::remote::ahead::Ask> {
    let port = plan.int_setting(NAME, "client_port");
    vec![crate::hosts::remote::ahead::Ask::sudo(health_script(port), None), crate::hosts::remote::ahead::Ask::sudo(member_list_script(port), None)]
}

pub async fn member_health(s: &HostSession, port: u64) -> Result<(bool, String)> {
    let out = s.sudo(&health_script(port), None).await?;
    Ok((out.ok() && out.stdout.contains("is healthy"), out.stdout.trim().to_string()))
}

/// Every member answers healthy and the cluster has all members.
pub async fn gate(run: &RoleRun<'_>) -> Result<()> {
    let port = client_port(run);
    let expected = run.plan.hosts_with_role(NAME).count();
    run.each(|h, s| async move {
        wait_for(&format!("{}: etcd healthy with {expected} members", h.name), Duration::from_secs(120), || async {
            let (healthy, said) = member_health(s, port).await?;
            if !healthy {
                return Ok(Err(said));
            }
            let members = s.sudo(&member_list_script(port), None).await?;
            let started = members.stdout.lines().filter(|l| l.contains(", started,")).count();
            if started == expected {
                Ok(Ok(()))
            } else {
                Ok(Err(format!("{started} of {expected} members started: {}", members.stdout.trim())))
            }
        })
        .await
    })
    .await
}

/// The etcd role, as the registry lists it.
pub struct Etcd;

/// The plan's `roles:` value.
pub const NAME: &str = "etcd";

/// The systemd unit the role runs (what the reshape and restore stop and start).
pub const SERVICE: &str = "etcd";

/// The settings under `services: etcd:` — each default is written here only.
static SETTINGS: &[Setting] = &[
    Setting::new("client_port", PORT, |_| json!(2379), "etcd client port"),
    Setting::new("peer_port", PORT, |_| json!(2380), "etcd peer port"),
    Setting::new("election_timeout", SettingType::Int { min: 100, max: 50000 }, |_| json!(5000), "ms"),
    Setting::new("heartbeat_interval", SettingType::Int { min: 10, max: 10000 }, |_| json!(1000), "ms"),
    Setting::new("cluster_token", SettingType::Name, |p| json!(format!("{p}-etcd")), "initial cluster token"),
];

#[async_trait::async_trait]
impl super::role::Role for Etcd {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, at: &PlanCheck<'_>, d: &mut Diags) {
        let etcd = at.with(NAME).len();
        if etcd > 0 && (etcd < 3 || etcd % 2 == 0) {
            d.error(at.role_pos(NAME), format!("etcd needs an odd number of members, at least 3, for a quorum — the plan has {etcd}"));
        }
    }

    fn outputs(&self, at: &Outputs<'_>, o: &mut Map<String, Value>) {
        let etcd = at.ips(NAME);
        if !etcd.is_empty() {
            o.insert("etcd_endpoints".into(), json!(etcd.iter().map(|ip| format!("{}://{ip}:{}", super::tls::scheme(at.plan), at.setting(NAME, "client_port"))).collect::<Vec<_>>().join(",")));
        }
    }

    fn inventory_vars(&self) -> &'static [(&'static str, &'static str)] {
        &[("etcd_client_port", "client_port"), ("etcd_peer_port", "peer_port")]
    }

    fn flows(&self, net: &mut FlowSink<'_>) {
        net.tcp(super::patroni::NAME, NAME, "client_port", Service::EtcdClient);
        net.tcp(NAME, NAME, "peer_port", Service::EtcdPeer);
    }

    fn listens(&self, _plan: &Plan) -> Vec<(&'static str, &'static str)> {
        vec![(NAME, "client_port"), (NAME, "peer_port")]
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn services(&self) -> &'static [&'static str] {
        &[SERVICE]
    }
    fn desired(&self, at: &super::role::HostInput<'_>) -> anyhow::Result<crate::hosts::ops::HostDesired> {
        desired(at.renderer, at.ctx)
    }
    fn gate_asks(&self, plan: &crate::plan::model::Plan, host: &crate::plan::model::Host, secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
        let _ = (host, secrets);
        gate_asks(plan)
    }
    async fn converge(&self, run: &RoleRun<'_>) -> anyhow::Result<()> {
        converge(run).await
    }
}
