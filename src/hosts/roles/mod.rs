//! The roles: per host, which packages, files and services each role wants,
//! and (in each role's module) how the role is brought up and proved healthy.

pub mod app;
pub mod artifact_cache;
pub mod backup;
pub mod pgbackrest;
pub mod database;
pub mod endpoints;
pub mod etcd;
pub mod firewall;
pub mod failover;
pub mod haproxy;
pub mod keepalived;
pub mod registry;
#[cfg(test)]
mod desired_tests;
pub mod role;
pub mod nginx;
pub mod node_toolchain;
pub mod patroni;
pub mod redis;
pub mod rest_auth;
pub mod saleor;
pub mod saleor_dashboard;
pub mod saleor_source;
pub mod source_dir;
pub mod storefront;
pub mod storefront_source;
pub mod tls;

use crate::hosts::ops::{Checker, HostDesired, ManagedFile, ManagedService, OnChange};
use crate::plan::model::{Host, Plan};
use crate::render::Renderer;
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// PostgreSQL parameters rigger sets unless the plan says otherwise.
pub fn pg_parameters(plan: &Plan) -> BTreeMap<String, Value> {
    let mut p: BTreeMap<String, Value> = [
        ("max_connections", json!("100")),
        ("wal_level", json!("replica")),
        ("hot_standby", json!("on")),
        ("max_wal_senders", json!("10")),
        ("max_replication_slots", json!("10")),
        ("wal_log_hints", json!("on")),
        ("wal_keep_size", json!("128MB")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // WAL archiving into the backup role's repository (every member, so a
    // promoted replica keeps archiving).
    p.extend(backup::archive_parameters(plan));
    if let Some(Value::Object(given)) = plan.setting(patroni::NAME, "parameters") {
        for (k, v) in given {
            p.insert(k.clone(), v.clone());
        }
    }
    p
}

/// Everything a template may read for one host.
pub fn template_context(plan: &Plan, host: &Host, secrets: &BTreeMap<String, String>) -> Value {
    let mut members: Map<String, Value> = Map::new();
    for role in registry::NAMES.iter() {
        let list: Vec<Value> = plan.hosts_with_role(role).map(|h| json!({ "name": h.name, "ip": h.ip.to_string(), "index": h.index })).collect();
        members.insert(role.to_string(), Value::Array(list));
    }
    let subnet = plan.subnet(&host.subnet).map(|s| {
        json!({ "name": s.name, "cidr": s.cidr.trunc().to_string(), "gateway": s.gateway.to_string(), "prefix": s.cidr.prefix_len() })
    });
    let vip = plan.setting(keepalived::NAME, "vip").and_then(Value::as_str).and_then(|v| v.parse::<std::net::Ipv4Addr>().ok());
    let vrid = plan
        .setting(keepalived::NAME, "virtual_router_id")
        .and_then(Value::as_u64)
        .or_else(|| vip.map(|v| u64::from(v.octets()[3]).max(1)))
        .unwrap_or(51);
    let lb_position = plan.hosts_with_role(keepalived::NAME).position(|h| h.name == host.name).unwrap_or(0) as u64;
    json!({
        "project": plan.project,
        "host": { "name": host.name, "ip": host.ip.to_string(), "roles": host.roles, "group": host.group, "index": host.index },
        "members": members,
        "svc": plan.services,
        "secret": secrets,
        "subnet": subnet,
        "pg_parameters": pg_parameters(plan),
        "vrid": vrid,
        "priority": 200 - lb_position.min(150),
        "lb_address": endpoints::lb_address(plan),
        "security": plan.security,
        "patroni_restapi": rest_auth::patroni_yaml(plan, secrets) + &rest_auth::patroni_tls_yaml(plan),
        "etcd_scheme": tls::scheme(plan),
        "failover": crate::plan::rto::template_values(plan),
        // Access grants, rendered from the flow model (src/flows.rs).
        "access": { "pg_hba": crate::flows::pg_hba(&crate::flows::flows(plan), host) },
    })
}

/// The hosts a role runs on; the host firewall is not a plan role but runs on
/// every host it applies to, before any role.
pub fn hosts_for<'a>(plan: &'a Plan, role: &'a str) -> Vec<&'a Host> {
    match registry::runnable(role) {
        Some(r) => plan.hosts.iter().filter(|h| r.applies_to(h)).collect(),
        None => plan.hosts_with_role(role).collect(),
    }
}

/// The health gates' commands on `host`, asked ahead in the facts round trip
/// (remote::ahead): a no-change apply's gates then need no round trip of
/// their own. Roles that ask none ask live.
pub fn gate_asks(plan: &Plan, host: &Host, secrets: &BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
    let own = registry::all().filter(|r| r.applies_to(host)).flat_map(|r| r.gate_asks(plan, host, secrets));
    let present = plan.roles();
    let others = registry::all().filter(|r| present.contains(r.name())).flat_map(|r| r.gate_asks_elsewhere(plan, host, secrets));
    own.chain(others).collect()
}

/// The extra facts `host`'s roles gather (Patroni's DCS config and state).
pub fn probes(plan: &Plan, host: &Host) -> Vec<(String, String)> {
    registry::all().filter(|r| r.applies_to(host)).flat_map(|r| r.probes(plan)).collect()
}

/// `validate`: (the checker's name as users know it, the command with `{}` for the file).
pub fn file(role: &'static str, path: &str, content: String, mode: u32, owner: &str, group: &str, validate: Option<(&str, &str)>, notify: &[&str]) -> ManagedFile {
    ManagedFile {
        role,
        path: path.to_string(),
        content,
        mode,
        owner: owner.to_string(),
        group: group.to_string(),
        validate: validate.map(|(name, command)| Checker { name: name.to_string(), command: command.to_string() }),
        notify: notify.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn service(role: &'static str, name: &str, on_change: OnChange) -> ManagedService {
    ManagedService { role, name: name.to_string(), on_change }
}

/// What one host should look like, over all of its roles.
pub fn desired(plan: &Plan, host: &Host, secrets: &BTreeMap<String, String>, renderer: &Renderer) -> Result<HostDesired> {
    let ctx = template_context(plan, host, secrets);
    let at = role::HostInput { plan, host, secrets, renderer, ctx: &ctx };
    let mut d = HostDesired { host: host.name.clone(), ..Default::default() };
    // The host firewall comes first (registry::all): every role after it runs behind it.
    for role in registry::all().filter(|r| r.applies_to(host)) {
        let add = role.desired(&at).with_context(|| format!("host {}: role {}", host.name, role.name()))?;
        d.packages.extend(add.packages);
        d.files.extend(add.files);
        d.services.extend(add.services);
        d.stop_disable.extend(add.stop_disable);
    }
    // Certificates first: the configs that name them are checked against them.
    d.files.splice(0..0, tls::files(plan, host, secrets)?);
    Ok(d)
}

#[cfg(test)]
mod tests {
    fn plan() -> crate::plan::model::Plan {
        let text = "version: 1\nproject: t\nprovider: { kind: local }\nnetwork:\n  name: main\n  subnets:\n    - { name: db, cidr: 10.9.0.0/24 }\n\
             hosts:\n  - { name: pg, count: 3, roles: [etcd, patroni], ip: 10.9.0.21 }\n  - { name: cache, roles: [redis], ip: 10.9.0.31 }\n";
        crate::plan::load_str(std::path::Path::new("plan.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_registry_hooks_reach_only_the_hosts_of_their_role() {
        let p = plan();
        let (pg, cache) = (p.host("pg-1").unwrap(), p.host("cache").unwrap());
        // Patroni's probes ride along on its members only.
        let names: Vec<String> = super::probes(&p, pg).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["patroni_config", "patroni_state"]);
        assert!(super::probes(&p, cache).is_empty());
        // The firewall is no plan role, but runs on every configured host.
        let fw: Vec<&str> = super::hosts_for(&p, super::registry::FIREWALL.name()).iter().map(|h| h.name.as_str()).collect();
        assert_eq!(fw, ["pg-1", "pg-2", "pg-3", "cache"]);
        let patroni: Vec<&str> = super::hosts_for(&p, "patroni").iter().map(|h| h.name.as_str()).collect();
        assert_eq!(patroni, ["pg-1", "pg-2", "pg-3"]);
        // A member asks more ahead (etcd's and Patroni's gates) than a host with no gate asks of its own.
        let secrets = Default::default();
        assert!(super::gate_asks(&p, pg, &secrets).len() > super::gate_asks(&p, cache, &secrets).len());
    }

    #[test]
    fn patroni_reads_its_cluster_changes_from_the_first_member_that_answered() {
        let p = plan();
        let probe = |config: &str, state: &str| crate::hosts::facts::HostFacts {
            probes: [("patroni_config", config), ("patroni_state", state)].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            services: [("patroni".to_string(), crate::hosts::facts::ServiceFact { active: "active".into(), ..Default::default() })].into(),
            ..Default::default()
        };
        // Answers as the gate's REST asks print them: the body, then the status.
        let (down, up, owing, none) = (
            probe("\n000", "\n000"),
            probe("{\"postgresql\":{\"parameters\":{\"max_connections\":\"50\"}}}\n200", "{\"pending_restart\":false}\n200"),
            probe("{}\n200", "{\"pending_restart\":true}\n200"),
            Default::default(),
        );
        let facts: std::collections::BTreeMap<&str, &crate::hosts::facts::HostFacts> = [("pg-1", &down), ("pg-2", &up), ("pg-3", &owing), ("cache", &none)].into_iter().collect();
        let patroni = super::registry::get("patroni").unwrap();
        let owed = patroni.cluster_changes(&p, &facts);
        // pg-1 answered nothing: pg-2's config is the one read.
        assert!(owed.parameters.contains(&("max_connections".into(), Some("50".into()), "100".into())), "{:?}", owed.parameters);
        assert_eq!(owed.pending_restarts, ["pg-3"]);
        // pg-1's Patroni runs but said nothing: whether it owes a restart is not known, and said so.
        assert_eq!(owed.unread, ["whether PostgreSQL owes a restart on pg-1: GET /patroni did not answer"]);
        // No member answered /config: the DCS settings are unknown, not unchanged.
        let facts: std::collections::BTreeMap<&str, &crate::hosts::facts::HostFacts> = [("pg-1", &down), ("cache", &none)].into_iter().collect();
        let owed = patroni.cluster_changes(&p, &facts);
        assert!(owed.parameters.is_empty() && owed.unread.len() == 2 && owed.unread[0].contains("GET /config"), "{:?}", owed.unread);
        // A member whose Patroni does not run (not installed yet) is no unknown: starting it is the change.
        let stopped = crate::hosts::facts::HostFacts { services: Default::default(), ..probe("\n000", "\n000") };
        let facts: std::collections::BTreeMap<&str, &crate::hosts::facts::HostFacts> = [("pg-1", &stopped)].into_iter().collect();
        assert!(patroni.cluster_changes(&p, &facts).unread.is_empty());
        // Roles with no cluster of their own owe nothing beyond files.
        let facts: std::collections::BTreeMap<&str, &crate::hosts::facts::HostFacts> = [("pg-1", &down), ("pg-2", &up), ("pg-3", &owing), ("cache", &none)].into_iter().collect();
        let redis = super::registry::get("redis").unwrap().cluster_changes(&p, &facts);
        assert!(redis.parameters.is_empty() && redis.pending_restarts.is_empty() && redis.unread.is_empty());
    }
}
