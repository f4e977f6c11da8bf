//! The drain plan: what must happen on the hosts before the cloud deletes
//! machines, in the order it runs. Computed from the cloud changes and what
//! the running clusters say (who leads, who holds the VIP, which members
//! etcd and Patroni know); shown by `plan` (ui::drain) and carried out by
//! `reshape::run` before any deletion. Requests that would cost the quorum
//! or the data are refused here, with why and what to do.

use crate::diff::{Action, Change};
use crate::events::Events;
use crate::plan::model::Plan;
use crate::project::Project;
use crate::remote::session::HostSession;
use crate::resource::Kind;
use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Services a leaving host may run that are stopped before its machine goes
/// (patroni and etcd leave through their own steps). Saleor's worker gets
/// SIGTERM: Celery's warm shutdown finishes the task at hand.
const STOPPED_SERVICES: &[&str] = &["keepalived", "haproxy", "nginx", "app", "saleor-api", "saleor-dashboard", "saleor-worker", "storefront"];
/// Services HAProxy balances HTTP over: a leaving host running one leaves
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
    pub steps: Vec<Step>,
    /// What the drain could not look at (an unreachable leaving host, …).
    pub notes: Vec<String>,
}

impl DrainPlan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// What one leaving host runs now.
#[derive(Debug, Default)]
struct HostProbe {
    active: Vec<String>,
    holds_vip: bool,
}

async fn probe(s: &HostSession, vip: Option<&str>) -> Result<HostProbe> {
    let list = STOPPED_SERVICES.iter().chain(["patroni", "etcd"].iter()).copied().collect::<Vec<_>>().join(" ");
    let out = s.sudo(&format!("for u in {list}; do printf '%s %s\\n' $u $(systemctl is-active $u); done"), None).await?;
    let active = out.stdout.lines().filter_map(|l| l.split_once(' ')).filter(|(_, st)| st.trim() == "active").map(|(u, _)| u.to_string()).collect();
    let holds_vip = match vip {
        Some(v) => crate::roles::keepalived::holds_vip(s, v).await.unwrap_or(false),
        None => false,
    };
    Ok(HostProbe { active, holds_vip })
}

/// The Patroni cluster as a remaining member reports it: name → role.
pub async fn patroni_members(s: &HostSession, rest_port: u64) -> Result<BTreeMap<String, String>> {
    let out = s.sudo(&crate::roles::rest_auth::local_curl(rest_port, "-m 5", "/cluster"), None).await?;
    let v: Value = serde_json::from_str(out.stdout.trim()).map_err(|e| anyhow::anyhow!("{}: GET /cluster is not JSON ({e}): {}", s.name, out.stdout.trim()))?;
    Ok(v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["name"].as_str().unwrap_or_default().to_string(), m["role"].as_str().unwrap_or_default().to_string()))
        .collect())
}

pub fn rest_port(plan: &Plan) -> u64 {
    plan.setting("patroni", "rest_port").and_then(Value::as_u64).unwrap_or(8008)
}

pub fn etcd_client_port(plan: &Plan) -> u64 {
    plan.setting("etcd", "client_port").and_then(Value::as_u64).unwrap_or(2379)
}

pub fn vip(plan: &Plan) -> Option<String> {
    plan.setting("keepalived", "vip").and_then(Value::as_str).map(str::to_string)
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

/// Work out the drain for the machines `changes` delete.
pub async fn compute(project: &Project, state: &crate::state::State, changes: &[Change], events: &Events) -> Result<DrainPlan> {
    let plan = &project.plan;
    let leaving = leaving(changes);
    let mut d = DrainPlan { leaving: leaving.clone(), ..Default::default() };
    if leaving.is_empty() {
        return Ok(d);
    }
    let started = std::time::Instant::now();
    events.started("drain", &format!("looking at the leaving machines {}", leaving.join(", ")));
    let config = crate::remote::ssh_config_path(project);
    let built: Vec<String> = state.machines().map(|m| m.address.name.clone()).filter(|n| !leaving.contains(n)).collect();
    let vip = vip(plan);

    let mut probes: BTreeMap<String, HostProbe> = BTreeMap::new();
    for name in &leaving {
        match HostSession::connect(&config, name).await {
            Ok(s) => {
                let p = probe(&s, vip.as_deref()).await;
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

    // 1. The VIP moves off a leaving holder first.
    let remaining_lbs: Vec<String> = plan.hosts_with_role("keepalived").map(|h| h.name.clone()).filter(|n| built.contains(n)).collect();
    if let Some(v) = &vip {
        for name in &leaving {
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
    if plan.hosts_with_role("patroni").any(|h| built.contains(&h.name)) || leaving.iter().any(|n| runs(n, "patroni")) {
        if let Some(s) = first_reachable(&config, plan, "patroni", &built).await {
            let members = patroni_members(&s, rest_port(plan)).await;
            s.close().await;
            let members = members?;
            patroni_leaving = members.keys().filter(|m| leaving.contains(m)).cloned().collect();
            if !patroni_leaving.is_empty() {
                super::safety::patroni_removal(plan, members.len(), &patroni_leaving)?;
            }
            for m in &patroni_leaving {
                if members.get(m).is_some_and(|r| r == "leader") {
                    d.steps.push(Step::Switchover { leader: m.clone() });
                }
            }
        } else if leaving.iter().any(|n| runs(n, "patroni")) {
            bail!("Patroni members leave ({}) but no remaining Patroni host answers SSH — the leader cannot be switched over safely; fix the remaining hosts first", leaving.join(", "));
        }
    }

    // 3. Load balancers: the remaining ones drop the leaving backends.
    let remaining = |role: &str| plan.hosts_with_role(role).map(|h| h.name.clone()).filter(|n| built.contains(n)).collect::<Vec<_>>();
    let http_leaving: Vec<String> = leaving.iter().filter(|n| HAPROXY_HTTP_BACKENDS.iter().any(|s| runs(n, s))).cloned().collect();
    let haproxy_without: Vec<String> = patroni_leaving.iter().chain(&http_leaving).cloned().collect();
    if !haproxy_without.is_empty() && !remaining("haproxy").is_empty() {
        d.steps.push(Step::Reload { role: "haproxy".into(), hosts: remaining("haproxy"), without: haproxy_without });
    }
    let apps_leaving: Vec<String> = leaving.iter().filter(|n| runs(n, "app")).cloned().collect();
    if !apps_leaving.is_empty() && !remaining("nginx").is_empty() {
        d.steps.push(Step::Reload { role: "nginx".into(), hosts: remaining("nginx"), without: apps_leaving });
    }

    // 4. The leaving hosts stop serving.
    for name in &leaving {
        let services: Vec<String> = STOPPED_SERVICES.iter().filter(|s| runs(name, s)).map(|s| s.to_string()).collect();
        if !services.is_empty() {
            d.steps.push(Step::Stop { host: name.clone(), services });
        }
    }
    for m in &patroni_leaving {
        d.steps.push(Step::PatroniLeave { member: m.clone() });
    }

    // 5. etcd members leave one at a time.
    if plan.hosts_with_role("etcd").any(|h| built.contains(&h.name)) {
        if let Some(s) = first_reachable(&config, plan, "etcd", &built).await {
            let members = super::etcd_members::list(&s, etcd_client_port(plan)).await;
            s.close().await;
            let members = members?;
            // By name, so the order shown is the order run (etcd lists members by id).
            let mut etcd_leaving: Vec<String> = members.iter().filter(|m| leaving.contains(&m.name)).map(|m| m.name.clone()).collect();
            etcd_leaving.sort();
            if !etcd_leaving.is_empty() {
                super::safety::etcd_removal(plan, members.len(), &etcd_leaving)?;
            }
            d.steps.extend(etcd_leaving.into_iter().map(|member| Step::EtcdRemove { member }));
        } else if leaving.iter().any(|n| runs(n, "etcd")) {
            bail!("etcd members leave ({}) but no remaining etcd host answers SSH — fix the remaining members first", leaving.join(", "));
        }
    }
    events.finished("drain", &format!("{} step(s) before the machines are deleted", d.steps.len()), started);
    Ok(d)
}
