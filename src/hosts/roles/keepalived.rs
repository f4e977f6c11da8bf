//! keepalived: the VIP over the HAProxy hosts (unicast VRRP, follows a live
//! HAProxy). Config checked with `keepalived -t`. Gate: exactly one host holds the VIP.

use super::{file, service};
use crate::hosts::ops::{HostDesired, OnChange};
use crate::hosts::run::{wait_for, RoleRun};
use crate::hosts::remote::session::HostSession;
use crate::render::Renderer;
use anyhow::Result;
use serde_json::Value;
use std::time::Duration;
use crate::plan::services::{Setting, SettingType};
use serde_json::json;
use crate::flows::{FlowSink, Service, Transport};
use super::role::Outputs;
use serde_json::Map;
use super::role::PlanCheck;
use crate::plan::diag::Diags;
use std::net::Ipv4Addr;

pub fn desired(r: &Renderer, ctx: &Value) -> Result<HostDesired> {
    Ok(HostDesired {
        packages: vec!["keepalived".into()],
        files: vec![file(
            "keepalived",
            "/etc/keepalived/keepalived.conf",
            r.render("keepalived.conf.j2", ctx)?,
            0o640,
            "root",
            "root",
            Some(("keepalived -t", "keepalived -t -f {}")),
            &["keepalived"],
        )],
        // Reload (SIGHUP): the holder keeps the VIP while peers or priorities change.
        services: vec![service(NAME, "keepalived", OnChange::Reload)],
        ..Default::default()
    })
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    run.each(|h, s| async move { run.plain_service_changes(h, s).await }).await?;
    gate(run).await
}

/// Whether this host has the VIP on one of its interfaces.
const ADDRESSES: &str = "ip -4 -o addr show";

pub async fn holds_vip(s: &HostSession, vip: &str) -> Result<bool> {
    Ok(s.sh(ADDRESSES).await?.stdout.contains(&format!(" {vip}/")))
}

/// The gate's commands on `host`, asked ahead in the facts round trip: its
/// addresses, and on the first keepalived host the logins through the VIP.
pub fn gate_asks(plan: &crate::plan::model::Plan, host: &crate::plan::model::Host, secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
    let mut asks = vec![crate::hosts::remote::ahead::Ask::sh(ADDRESSES)];
    if plan.hosts_with_role(NAME).next().is_some_and(|first| first.name == host.name) {
        let superuser = secrets.get("postgres_superuser_password").cloned().unwrap_or_default();
        asks.extend(crate::client_path::vip_paths(plan).iter().map(|p| crate::client_path::probe_ask(p, &superuser)));
    }
    asks
}

/// Who holds the VIP now.
pub async fn holders(run: &RoleRun<'_>, vip: &str) -> Result<Vec<String>> {
    let checks = run.hosts.iter().map(|h| async move { Ok::<_, anyhow::Error>((h.name.clone(), holds_vip(run.session(&h.name)?, vip).await?)) });
    let mut names = Vec::new();
    for r in futures::future::join_all(checks).await {
        let (name, holds) = r?;
        if holds {
            names.push(name);
        }
    }
    Ok(names)
}

pub async fn gate(run: &RoleRun<'_>) -> Result<()> {
    let vip = run.plan.setting(NAME, "vip").and_then(Value::as_str).unwrap_or_default().to_string();
    wait_for(&format!("the VIP {vip} on exactly one HAProxy host"), Duration::from_secs(60), || async {
        let h = holders(run, &vip).await?;
        if h.len() == 1 {
            Ok(Ok(()))
        } else {
            Ok(Err(format!("held by {h:?}")))
        }
    })
    .await?;
    // Clients use the VIP: log in through its write and read ports.
    let superuser = run.secrets.get("postgres_superuser_password").cloned().unwrap_or_default();
    let paths = crate::client_path::vip_paths(run.plan);
    match run.hosts.first() {
        Some(h) if !paths.is_empty() => crate::client_path::gate(run.session(&h.name)?, &paths, &superuser, Duration::from_secs(30)).await,
        _ => Ok(()),
    }
}

/// The keepalived role, as the registry lists it.
pub struct Keepalived;

/// The plan's `roles:` value.
pub const NAME: &str = "keepalived";

/// The settings under `services: keepalived:` — each default is written here only.
static SETTINGS: &[Setting] = &[
    Setting::required("vip", SettingType::Ip, "the virtual IP, inside a subnet"),
    Setting::optional("virtual_router_id", SettingType::Int { min: 1, max: 255 }, "defaults to the VIP's last octet"),
    Setting::new("interface", SettingType::Interface, |_| json!("eth0"), "interface that carries the VIP"),
];

#[async_trait::async_trait]
impl super::role::Role for Keepalived {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, at: &PlanCheck<'_>, d: &mut Diags) {
        if at.with(NAME).is_empty() {
            return;
        }
        if at.with(super::haproxy::NAME).len() < 2 {
            d.error(at.role_pos(NAME), "keepalived moves a VIP between HAProxy hosts — it needs at least 2 hosts with the role `haproxy`");
        }
        for h in at.with(NAME).into_iter().filter(|h| !h.has_role(super::haproxy::NAME)) {
            d.error(at.role_pos(NAME), format!("host `{}` has keepalived but not haproxy — keepalived guards HAProxy; give both roles to the same hosts", h.name));
        }
        // VRRP adverts and the VIP's gratuitous ARP stay inside one L2 segment.
        let mut subnets: Vec<&str> = at.with(NAME).iter().map(|h| h.subnet.as_str()).collect();
        subnets.sort();
        subnets.dedup();
        if subnets.len() > 1 {
            let where_: Vec<String> = at.with(NAME).iter().map(|h| format!("{} in `{}`", h.name, h.subnet)).collect();
            d.error(at.role_pos(NAME), format!("the keepalived hosts are in different subnets ({}) — VRRP moves the VIP within one subnet: put them all in one", where_.join(", ")));
        }
        let own = match subnets.as_slice() {
            [one] => at.network.subnets.iter().find(|s| s.name == *one),
            _ => None,
        };
        let vip = at.setting(NAME, "vip").and_then(Value::as_str).and_then(|s| s.parse::<Ipv4Addr>().ok());
        let vip_pos = at.setting_node(NAME, "vip").map(|n| n.pos).unwrap_or_default();
        if let Some(vip) = vip {
            match at.network.subnets.iter().find(|s| s.cidr.contains(&vip)) {
                None => d.error(vip_pos, format!("the VIP {vip} is outside every subnet — a VRRP VIP must be in the subnet of the HAProxy hosts")),
                Some(s) if own.is_some_and(|o| o.name != s.name) => {
                    let o = own.expect("checked");
                    d.error(vip_pos, format!("the VIP {vip} is in subnet `{}`, but the keepalived hosts are in `{}` ({}) — a VRRP VIP must be in the subnet of the HAProxy hosts: pick a free address in {}", s.name, o.name, o.cidr, o.cidr))
                }
                Some(s) if vip == s.gateway || vip == s.cidr.network() || vip == s.cidr.broadcast() => {
                    d.error(vip_pos, format!("the VIP {vip} is the gateway, network or broadcast address of `{}` — pick a free address", s.name))
                }
                Some(_) => {
                    if let Some(h) = at.hosts.iter().find(|h| h.ip == vip) {
                        d.error(vip_pos, format!("the VIP {vip} is already the address of `{}` — pick a free address", h.name));
                    }
                }
            }
        }
    }

    fn outputs(&self, at: &Outputs<'_>, o: &mut Map<String, Value>) {
        if let Some(vip) = at.plan.setting(NAME, "vip") {
            o.insert("vip".into(), vip.clone());
        }
    }

    fn inventory_vars(&self) -> &'static [(&'static str, &'static str)] {
        &[("keepalived_vip", "vip")]
    }

    fn flows(&self, net: &mut FlowSink<'_>) {
        net.add(NAME, NAME, Transport::Vrrp, None, Service::Vrrp);
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn needs(&self) -> &'static [&'static str] {
        &[super::haproxy::NAME]
    }
    fn services(&self) -> &'static [&'static str] {
        &["keepalived"]
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
