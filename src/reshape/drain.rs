//! The drain plan: what must happen on the hosts before the cloud deletes
//! machines, in the order it runs. Computed from the cloud changes and what
//! the running clusters say (who leads, who holds the VIP, which members
//! etcd and Patroni know); shown by `plan` (ui::drain) and carried out by
//! `reshape::run` before any deletion. Requests that would cost the quorum
//! or the data are refused here, with why and what to do.

use crate::cloud::diff::{Action, Change};
use rigger_events::Events;
use crate::plan::model::Plan;
use crate::project::Project;
use crate::hosts::remote::session::HostSession;
use crate::cloud::resource::Kind;
use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use crate::hosts::roles::{backup, etcd, haproxy, keepalived, nginx, patroni};

/// Services stopped by a Stop step (the others leave through their own steps).
const OWN_STEP_SERVICES: &[&str] = &[patroni::SERVICE, etcd::SERVICE, "redis-server"];
/// Services HAProxy balances HTTP over: a departing host running one leaves
/// HAProxy's backends (reload) before it stops.
const HAPROXY_HTTP_BACKENDS: &[&str] = &["saleor-api", "saleor-dashboard", "storefront"];
/// The most etcd members one apply may remove (see README "Reshaping").
pub const MAX_ETCD_REMOVALS: usize = 2;
/// One host-side step, in the order the drain runs them.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// keepalived stops on the leaving holder; a remaining HAProxy host takes the VIP.
    MoveVip { holder: String, vip: String, to: Vec<String> },
    /// The leaving member leads: Patroni switches over to a remaining streaming replica.
    Switchover { leader: String },
    /// The remaining hosts of `role` get the plan's config (without the leaving
    /// `without`) and reload; HAProxy is then checked to route writes.
    Reload { role: String, hosts: Vec<String>, without: Vec<String> },
    /// Services stopped and disabled on a leaving host.
    Stop { host: String, services: Vec<String> },
    /// Patroni stops on the member (PostgreSQL shuts down cleanly); its DCS
    /// member key and its replication slot on the leader are gone afterwards.
    PatroniLeave { member: String },
    /// `etcdctl member remove`, then etcd stops on it; the rest healthy before the next.
    EtcdRemove { member: String },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainPlan {
    /// Machines the cloud step deletes.
    pub leaving: Vec<String>,
    /// Hosts that stay but lose roles (the state's roles last applied, minus the plan's).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub retiring: BTreeMap<String, Vec<String>>,
    pub steps: Vec<Step>,
    /// Steps that wait until the config phase has pointed the clients
    /// elsewhere (a Redis that leaves); the deletions wait for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after_config: Vec<Step>,
    /// What the drain could not look at (an unreachable leaving host, …).
    pub notes: Vec<String>,
}

impl DrainPlan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.after_config.is_empty()
    }

    /// The cloud's deletions must wait until after the config phase.
    pub fn defers_deletions(&self) -> bool {
        !self.after_config.is_empty() && !self.leaving.is_empty()
    }
}

/// Hosts that keep their machine but lose roles: the roles the state says
/// were last applied there, minus the plan's (only hosts built and planned).
pub fn retiring(plan: &Plan, state: &crate::state::State) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for h in &plan.hosts {
        if !state.machines().any(|m| m.address.name == h.name) {
            continue;
        }
        let lost: Vec<String> = crate::state::applied_roles(state, &h.name).into_iter().filter(|r| !h.roles.contains(r)).collect();
        if !lost.is_empty() {
            out.insert(h.name.clone(), lost);
        }
    }
    out
}


/// What one leaving host runs now.
#[derive(Debug, Default)]
struct HostProbe {
    active: Vec<String>,
    holds_vip: bool,
}

async fn probe(s: &HostSession, services: &[&str], vip: Option<&str>) -> Result<HostProbe> {
    let list = services.join(" ");
    let out = s.sudo(&format!("for u in {list}; do printf '%s %s\\n' $u $(systemctl is-active $u); done"), None).await?;
    let active = out.stdout.lines().filter_map(|l| l.split_once(' ')).filter(|(_, st)| st.trim() == "active").map(|(u, _)| u.to_string()).collect();
    let holds_vip = match vip {
        Some(v) => crate::hosts::roles::keepalived::holds_vip(s, v).await.unwrap_or(false),
        None => false,
    };
    Ok(HostProbe { active, holds_vip })
}

/// The Patroni cluster as a remaining member reports it: name → role.
pub async fn patroni_members(s: &HostSession, rest_port: u64) -> Result<BTreeMap<String, String>> {
    let out = s.sudo(&crate::hosts::roles::rest_auth::local_curl(rest_port, "-m 5", "/cluster"), None).await?;
    let v: Value = serde_json::from_str(out.stdout.trim()).map_err(|e| anyhow::anyhow!("{}: GET /cluster is not JSON ({e}): {}", s.name, out.stdout.trim()))?;
    Ok(v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["name"].as_str().unwrap_or_default().to_string(), m["role"].as_str().unwrap_or_default().to_string()))
        .collect())
}

pub fn rest_port(plan: &Plan) -> u64 {
    plan.int_setting(patroni::NAME, "rest_port")
}

pub fn etcd_client_port(plan: &Plan) -> u64 {
    plan.int_setting(etcd::NAME, "client_port")
}

pub fn vip(plan: &Plan) -> Option<String> {
    plan.setting(keepalived::NAME, "vip").and_then(Value::as_str).map(str::to_string)
}

/// Machines the cloud changes delete.
pub fn leaving(changes: &[Change]) -> Vec<String> {
    changes.iter().filter(|c| c.action == Action::Delete && c.address.kind == Kind::Machine).map(|c| c.address.name.clone()).collect()
}

/// The first remaining plan host of `role` that answers SSH.
async fn first_reachable(config: &std::path::Path, plan: &Plan, role: &str, built: &[String]) -> Option<HostSession> {
    for h in plan.hosts_with_role(role).filter(|h| built.contains(&h.name)) {
        if let Ok(s) = HostSession::connect(config, &h.name).await {
            return Some(s);
        }
    }
    None
}

/// Work out the drain for the machines `changes` delete and, unless
/// `infra_only` (no config phase follows), for the roles hosts lose.
pub async fn compute(project: &Project, state: &crate::state::State, changes: &[Change], infra_only: bool, events: &Events) -> Result<DrainPlan> {
    let plan = &project.plan;
    let leaving = leaving(changes);
    let retiring = if infra_only { BTreeMap::new() } else { retiring(plan, state) };
    let mut d = DrainPlan { leaving: leaving.clone(), retiring: retiring.clone(), ..Default::default() };
    if leaving.is_empty() && retiring.is_empty() {
        return Ok(d);
    }
    let started = std::time::Instant::now();
    let mut what = vec![];
    if !leaving.is_empty() {
        what.push(format!("the leaving machines {}", leaving.join(", ")));
    }
    if !retiring.is_empty() {
        what.push(format!("the hosts losing roles {}", retiring.keys().cloned().collect::<Vec<_>>().join(", ")));
    }
    events.started("drain", &format!("looking at {}", what.join(" and ")));
    let config = crate::hosts::remote::ssh_config_path(project);
    let built: Vec<String> = state.machines().map(|m| m.address.name.clone()).filter(|n| !leaving.contains(n)).collect();
    let vip = vip(plan);

    // Who departs from which role: a leaving machine from all of them.
    let all_roles: Vec<String> = crate::hosts::roles::registry::NAMES.iter().map(|r| r.to_string()).collect();
    let departing: BTreeMap<String, Vec<String>> = leaving.iter().map(|n| (n.clone(), all_roles.clone())).chain(retiring.clone()).collect();
    let departs = |name: &str, role: &str| departing.get(name).is_some_and(|roles| roles.iter().any(|r| r == role));

    let mut probes: BTreeMap<String, HostProbe> = BTreeMap::new();
    for (name, roles) in &departing {
        let services: Vec<&str> = roles.iter().flat_map(|r| crate::hosts::roles::registry::services(r).iter().copied()).collect();
        let vip = vip.as_deref().filter(|_| roles.iter().any(|r| r == keepalived::NAME));
        match HostSession::connect(&config, name).await {
            Ok(s) => {
                let p = probe(&s, &services, vip).await;
                s.close().await;
                match p {
                    Ok(p) => {
                        probes.insert(name.clone(), p);
                    }
                    Err(e) => d.notes.push(format!("{name}: cannot see what runs there ({e:#}); only its cluster memberships are removed")),
                }
            }
            Err(e) => d.notes.push(format!("{name}: not reachable ({e:#}); only its cluster memberships are removed")),
        }
    }
    let runs = |name: &str, svc: &str| probes.get(name).is_some_and(|p| p.active.iter().any(|a| a == svc));

    // 1. The VIP moves off a departing holder first.
    let remaining_lbs: Vec<String> = plan.hosts_with_role(keepalived::NAME).map(|h| h.name.clone()).filter(|n| built.contains(n)).collect();
    if let Some(v) = &vip {
        for name in departing.keys() {
            if probes.get(name).is_some_and(|p| p.holds_vip) {
                if remaining_lbs.is_empty() {
                    bail!("{}: {name} holds the VIP {v} and no remaining keepalived host could take it over — keep at least one HAProxy + keepalived host in the plan", plan.file.display());
                }
                d.steps.push(Step::MoveVip { holder: name.clone(), vip: v.clone(), to: remaining_lbs.clone() });
            }
        }
    }

    // 2. Patroni: who leaves, is the leader among them, is what stays a majority.
    let mut patroni_leaving = Vec::new();
    let patroni_departs = departing.keys().any(|n| departs(n, patroni::NAME));
    if patroni_departs && (plan.hosts_with_role(patroni::NAME).any(|h| built.contains(&h.name)) || departing.keys().any(|n| runs(n, patroni::SERVICE))) {
        if let Some(s) = first_reachable(&config, plan, patroni::NAME, &built).await {
            let members = patroni_members(&s, rest_port(plan)).await;
            s.close().await;
            let members = members?;
            patroni_leaving = members.keys().filter(|m| departs(m, patroni::NAME)).cloned().collect();
            if !patroni_leaving.is_empty() {
                super::safety::patroni_removal(plan, members.len(), &patroni_leaving)?;
            }
            for m in &patroni_leaving {
                if members.get(m).is_some_and(|r| r == "leader") {
                    d.steps.push(Step::Switchover { leader: m.clone() });
                }
            }
        } else if departing.keys().any(|n| runs(n, patroni::SERVICE)) {
            bail!(
                "Patroni members leave ({}) but no remaining Patroni host answers SSH — the leader cannot be switched over safely; fix the remaining hosts first",
                departing.keys().filter(|n| runs(n, patroni::SERVICE)).cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }

    // 3. Load balancers: the remaining ones drop the departing backends.
    let remaining = |role: &str| plan.hosts_with_role(role).map(|h| h.name.clone()).filter(|n| built.contains(n)).collect::<Vec<_>>();
    let http_leaving: Vec<String> = departing.keys().filter(|n| HAPROXY_HTTP_BACKENDS.iter().any(|s| runs(n, s))).cloned().collect();
    let haproxy_without: Vec<String> = patroni_leaving.iter().chain(&http_leaving).cloned().collect();
    if !haproxy_without.is_empty() && !remaining(haproxy::NAME).is_empty() {
        d.steps.push(Step::Reload { role: haproxy::NAME.into(), hosts: remaining(haproxy::NAME), without: haproxy_without });
    }
    let apps_leaving: Vec<String> = departing.keys().filter(|n| runs(n, "app")).cloned().collect();
    if !apps_leaving.is_empty() && !remaining(nginx::NAME).is_empty() {
        d.steps.push(Step::Reload { role: nginx::NAME.into(), hosts: remaining(nginx::NAME), without: apps_leaving });
    }

    // 4. The departing hosts stop serving.
    for (name, roles) in &departing {
        let services: Vec<String> = roles
            .iter()
            .flat_map(|r| crate::hosts::roles::registry::services(r).iter())
            .filter(|s| !OWN_STEP_SERVICES.contains(s) && runs(name, s))
            .map(|s| s.to_string())
            .collect();
        if !services.is_empty() {
            d.steps.push(Step::Stop { host: name.clone(), services });
        }
    }
    for m in &patroni_leaving {
        d.steps.push(Step::PatroniLeave { member: m.clone() });
    }

    // 5. etcd members leave one at a time.
    let etcd_departs = departing.keys().any(|n| departs(n, etcd::NAME));
    if etcd_departs && plan.hosts_with_role(etcd::NAME).any(|h| built.contains(&h.name)) {
        if let Some(s) = first_reachable(&config, plan, etcd::NAME, &built).await {
            let members = super::etcd_members::list(&s, etcd_client_port(plan)).await;
            s.close().await;
            let members = members?;
            // By name, so the order shown is the order run (etcd lists members by id).
            let mut etcd_leaving: Vec<String> = members.iter().filter(|m| departs(&m.name, etcd::NAME)).map(|m| m.name.clone()).collect();
            etcd_leaving.sort();
            if !etcd_leaving.is_empty() {
                super::safety::etcd_removal(plan, members.len(), &etcd_leaving)?;
            }
            d.steps.extend(etcd_leaving.into_iter().map(|member| Step::EtcdRemove { member }));
        } else if departing.keys().any(|n| runs(n, etcd::SERVICE)) {
            bail!("etcd members leave ({}) but no remaining etcd host answers SSH — fix the remaining members first", departing.keys().filter(|n| runs(n, etcd::SERVICE)).cloned().collect::<Vec<_>>().join(", "));
        }
    }

    // A repository on the host's disk goes with it (an S3 one stays in its bucket).
    if plan.setting(backup::NAME, "s3").is_none() {
        for name in departing.keys().filter(|n| departs(n, backup::NAME) && crate::state::applied_roles(state, n).iter().any(|r| r == backup::NAME)) {
            d.notes.push(format!(
                "{name} holds the pgBackRest repository (on its disk): the backups and archived WAL there are lost with {} — copy /var/lib/pgbackrest elsewhere first if you need them; a new backup host starts an empty repository",
                if leaving.contains(name) { "its machine" } else { "the role (the files stay on its disk, unused)" }
            ));
        }
    }

    // 6. A departing Redis serves until the config phase has pointed its
    // clients at the plan's Redis; only then it stops (and its machine goes).
    let redis_leaving: Vec<String> = departing.keys().filter(|n| runs(n, "redis-server")).cloned().collect();
    if !redis_leaving.is_empty() {
        if infra_only {
            bail!(
                "{}: {} run(s) Redis, which the apps use until the config phase points them elsewhere — --infra-only would delete it under them; apply without --infra-only",
                plan.file.display(),
                redis_leaving.join(", ")
            );
        }
        d.after_config.extend(redis_leaving.iter().map(|n| Step::Stop { host: n.clone(), services: vec!["redis-server".into()] }));
        if d.defers_deletions() {
            refuse_taken_addresses(plan, changes, &redis_leaving)?;
        }
    }
    events.finished("drain", &format!("{} step(s) before the machines are deleted", d.steps.len() + d.after_config.len()), started);
    Ok(d)
}

/// When deletions wait for the config phase, a new machine cannot take the
/// address of a machine that is still there.
fn refuse_taken_addresses(plan: &Plan, changes: &[Change], staying_longer: &[String]) -> Result<()> {
    for c in changes.iter().filter(|c| c.action == Action::Delete && c.address.kind == Kind::Machine && staying_longer.contains(&c.address.name)) {
        let Some(old_ip) = c.live.as_ref().and_then(|l| l.output_str("private_ip")) else { continue };
        if let Some(h) = plan.hosts.iter().find(|h| h.ip.to_string() == old_ip) {
            bail!(
                "{}: the new host {} takes the address {old_ip} of {}, which keeps serving Redis until the apps are pointed at the new one — give {} another address (or move Redis in one apply and reuse the address in the next)",
                super::safety::entry_position(plan, &h.name),
                h.name,
                c.address.name,
                h.name
            );
        }
    }
    Ok(())
}
