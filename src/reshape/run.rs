//! Carry the drain plan out, step by step, before the cloud deletes the
//! machines. Each step re-checks the live facts it depends on (who leads, who
//! holds the VIP) and waits, bounded, for its effect; a failing step stops
//! the apply before anything is deleted.

use super::drain::{etcd_client_port, patroni_members, rest_port, DrainPlan, Step};
use crate::hosts::run::wait_for;
use crate::hosts::roles::patroni::rest;
use rigger_events::Events;
use crate::plan::model::Plan;
use crate::project::Project;
use crate::hosts::remote::session::{sh_quote, HostSession};
use crate::render::Renderer;
use crate::state::State;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use crate::hosts::roles::{etcd, haproxy, nginx, patroni};

const VIP_WAIT: Duration = Duration::from_secs(30);
const SWITCHOVER_WAIT: Duration = Duration::from_secs(90);
const HAPROXY_WAIT: Duration = Duration::from_secs(60);
/// Patroni's leader drops a gone member's slot within a loop_wait or two.
const SLOT_WAIT: Duration = Duration::from_secs(60);

/// SSH sessions opened on demand, closed at the end.
struct Sessions {
    config: std::path::PathBuf,
    open: BTreeMap<String, Option<HostSession>>,
}

impl Sessions {
    async fn get(&mut self, name: &str) -> Option<&HostSession> {
        if !self.open.contains_key(name) {
            let s = HostSession::connect(&self.config, name).await.ok();
            self.open.insert(name.to_string(), s);
        }
        self.open.get(name).and_then(Option::as_ref)
    }

    async fn must(&mut self, name: &str) -> Result<&HostSession> {
        self.get(name).await.ok_or_else(|| anyhow!("{name}: cannot open SSH"))
    }

    async fn close(self) {
        for s in self.open.into_values().flatten() {
            s.close().await;
        }
    }
}

/// The steps that run before the cloud step (and before the config phase).
pub async fn execute(project: &Project, state: &State, drain: &DrainPlan, events: &Events) -> Result<()> {
    run_steps(project, state, drain, &drain.steps, "drain", events).await
}

/// The steps that wait until the config phase has pointed the clients at
/// the plan's hosts (a departing Redis stops).
pub async fn execute_after_config(project: &Project, state: &State, drain: &DrainPlan, events: &Events) -> Result<()> {
    run_steps(project, state, drain, &drain.after_config, "drain (after the config phase)", events).await
}

async fn run_steps(project: &Project, state: &State, drain: &DrainPlan, steps: &[Step], label: &str, events: &Events) -> Result<()> {
    let mut sessions = Sessions { config: crate::hosts::remote::ssh_config_path(project), open: BTreeMap::new() };
    let r = each_step(project, state, drain, steps, label, &mut sessions, events).await;
    sessions.close().await;
    r
}

async fn each_step(project: &Project, state: &State, drain: &DrainPlan, steps: &[Step], label: &str, sessions: &mut Sessions, events: &Events) -> Result<()> {
    let plan = &project.plan;
    let remaining = |role: &str| plan.hosts_with_role(role).map(|h| h.name.clone()).filter(|n| !drain.leaving.contains(n) && state.machines().any(|m| &m.address.name == n)).collect::<Vec<_>>();
    for (i, step) in steps.iter().enumerate() {
        let subject = format!("{label} {}/{}", i + 1, steps.len());
        let started = Instant::now();
        events.started(&subject, &super::describe(step));
        let r = match step {
            Step::MoveVip { holder, vip, to } => move_vip(sessions, holder, vip, to).await,
            Step::Switchover { leader } => switchover(plan, sessions, &remaining(patroni::NAME), leader, events, &subject).await,
            Step::Reload { role, hosts, .. } => reload(plan, state, sessions, role, hosts, events, &subject).await,
            Step::Stop { host, services } => stop(sessions, host, services).await,
            Step::PatroniLeave { member } => patroni_leave(plan, sessions, &remaining(patroni::NAME), &remaining(etcd::NAME), member, events, &subject).await,
            Step::EtcdRemove { member } => {
                let Some(keeper) = first(sessions, &remaining(etcd::NAME)).await else { bail!("no remaining etcd member answers SSH") };
                sessions.get(member).await;
                let keeper_session = sessions.open.get(&keeper).and_then(Option::as_ref).ok_or_else(|| anyhow!("{keeper}: no session"))?;
                let leaving = sessions.open.get(member.as_str()).and_then(Option::as_ref);
                super::etcd_members::remove(keeper_session, leaving, member, etcd_client_port(plan)).await
            }
        };
        match r {
            Ok(()) => events.finished(&subject, "done", started),
            Err(e) => {
                events.failed(&subject, "drain", &format!("{e:#}"));
                return Err(e.context(format!("{}: the drain stopped here, before any machine was deleted — fix it and apply again", super::describe(step))));
            }
        }
    }
    Ok(())
}

/// The first of `names` that answers SSH.
async fn first(sessions: &mut Sessions, names: &[String]) -> Option<String> {
    for n in names {
        if sessions.get(n).await.is_some() {
            return Some(n.clone());
        }
    }
    None
}

async fn move_vip(sessions: &mut Sessions, holder: &str, vip: &str, to: &[String]) -> Result<()> {
    if let Some(s) = sessions.get(holder).await {
        s.sudo_ok("stopping keepalived", "systemctl disable --now keepalived 2>&1").await?;
    }
    let mut others = Vec::new();
    for n in to {
        if sessions.get(n).await.is_some() {
            others.push(n.clone());
        }
    }
    let sessions = &*sessions;
    wait_for(&format!("the VIP {vip} on a remaining HAProxy host ({})", to.join(", ")), VIP_WAIT, || async {
        for n in &others {
            if let Some(s) = sessions.open.get(n).and_then(Option::as_ref) {
                if crate::hosts::roles::keepalived::holds_vip(s, vip).await? {
                    return Ok(Ok(()));
                }
            }
        }
        Ok(Err("no remaining host holds it yet".to_string()))
    })
    .await
}

/// If `leader` still leads, switch over to a remaining streaming replica and
/// wait until that one leads.
async fn switchover(plan: &Plan, sessions: &mut Sessions, remaining: &[String], leader: &str, events: &Events, subject: &str) -> Result<()> {
    let port = rest_port(plan);
    let probe_name = first(sessions, remaining).await.ok_or_else(|| anyhow!("no remaining Patroni member answers SSH"))?;
    let s = sessions.must(&probe_name).await?;
    let (code, body) = rest(s, port, "GET", "/cluster", None).await?;
    if code != 200 {
        bail!("{probe_name}: GET /cluster answered {code}");
    }
    let v: Value = serde_json::from_str(&body).context("GET /cluster")?;
    let members = v["members"].as_array().cloned().unwrap_or_default();
    if !members.iter().any(|m| m["name"] == leader && m["role"] == "leader") {
        return Ok(()); // no longer the leader: nothing to move
    }
    // The candidate: a remaining member that streams, least lag first.
    let mut candidates: Vec<(u64, String)> = members
        .iter()
        // Patroni 3.0 reports a healthy replica as `running`, later versions as `streaming`.
        .filter(|m| (m["role"] == "replica" || m["role"] == "sync_standby") && (m["state"] == "streaming" || m["state"] == "running"))
        .filter(|m| m["name"].as_str().is_some_and(|n| remaining.iter().any(|r| r == n)))
        .map(|m| (m["lag"].as_u64().unwrap_or(u64::MAX), m["name"].as_str().unwrap_or_default().to_string()))
        .collect();
    candidates.sort();
    let Some((_, candidate)) = candidates.first().cloned() else {
        bail!("no remaining Patroni member streams from {leader} — it cannot hand over safely; wait until `rigger status` shows the replicas streaming");
    };
    events.progress(subject, format!("switching over from {leader} to {candidate}"));
    let (code, body) = rest(s, port, "POST", "/switchover", Some(&json!({ "leader": leader, "candidate": candidate }))).await?;
    if code != 200 {
        bail!("POST /switchover from {leader} to {candidate} answered {code}: {}", body.trim());
    }
    wait_for(&format!("{candidate} leading after the switchover"), SWITCHOVER_WAIT, || async {
        let members = patroni_members(s, port).await?;
        if members.get(&candidate).is_some_and(|r| r == "leader") && !members.get(leader).is_some_and(|r| r == "leader") {
            Ok(Ok(()))
        } else {
            Ok(Err(format!("{members:?}")))
        }
    })
    .await
}

/// Put the plan's config of `role` on the remaining hosts (only if it differs)
/// and reload; for HAProxy, wait until the write backend has its one server up.
async fn reload(plan: &Plan, state: &State, sessions: &mut Sessions, role: &str, hosts: &[String], events: &Events, subject: &str) -> Result<()> {
    let renderer = Renderer::new()?;
    for name in hosts {
        let host = plan.host(name).ok_or_else(|| anyhow!("{name}: not in the plan"))?;
        let desired = crate::hosts::roles::desired(plan, host, &state.secrets, &renderer)?;
        let s = sessions.must(name).await?;
        let mut changed = Vec::new();
        for f in desired.files.iter().filter(|f| f.role == role) {
            let have = s.sudo(&format!("sha256sum {} 2>/dev/null | cut -d' ' -f1", sh_quote(&f.path)), None).await?.stdout.trim().to_string();
            if have != crate::hosts::ops::sha256_hex(f.content.as_bytes()) {
                crate::hosts::ops::upload(s, f).await?;
                changed.push(f.path.clone());
            }
        }
        if changed.iter().any(|p| p.starts_with("/etc/systemd/")) {
            s.sudo_ok("reloading systemd units", "systemctl daemon-reload").await?;
        }
        if !changed.is_empty() {
            for svc in desired.services.iter().filter(|x| x.role == role) {
                if role == nginx::NAME {
                    // Done once the workers that could still talk to the leaving apps are gone.
                    let said = s.sudo_ok("reloading nginx", &nginx::reload_script()).await?;
                    if let Some(busy) = nginx::still_busy(&said) {
                        events.progress(subject, format!("{name}: {busy}"));
                    }
                } else {
                    s.sudo_ok(&format!("reloading {}", svc.name), &format!("systemctl reload {}", svc.name)).await?;
                }
            }
        }
        if role == haproxy::NAME && plan.hosts_with_role(patroni::NAME).next().is_some() {
            let port = plan.int_setting(haproxy::NAME, "stats_port");
            let password = state.secrets.get("haproxy_stats_password").cloned().unwrap_or_default();
            wait_for(&format!("{name}: HAProxy routes writes to one primary"), HAPROXY_WAIT, || async {
                let list = crate::hosts::roles::haproxy::servers(s, port, &password).await?;
                let up = list.iter().filter(|x| x.backend == "primary" && x.status.starts_with("UP")).count();
                Ok(if up == 1 { Ok(()) } else { Err(format!("write backend has {up} servers up")) })
            })
            .await?;
        }
    }
    Ok(())
}

async fn stop(sessions: &mut Sessions, host: &str, services: &[String]) -> Result<()> {
    let Some(s) = sessions.get(host).await else { return Ok(()) };
    for svc in services {
        s.sudo_ok(&format!("stopping {svc}"), &format!("systemctl disable --now {svc} 2>&1")).await?;
    }
    Ok(())
}

/// The member leaves the Patroni cluster: (switched over first if it leads),
/// Patroni stopped on it, its DCS member key deleted, and its replication slot
/// gone from the leader (Patroni drops slots of members that left the DCS).
async fn patroni_leave(plan: &Plan, sessions: &mut Sessions, remaining: &[String], etcd: &[String], member: &str, events: &Events, subject: &str) -> Result<()> {
    switchover(plan, sessions, remaining, member, events, subject).await?;
    if let Some(s) = sessions.get(member).await {
        s.sudo_ok("stopping patroni", "systemctl disable --now patroni 2>&1").await?;
    }
    let scope = plan.str_setting(patroni::NAME, "scope");
    let key = format!("/service/{scope}/members/{member}");
    let keeper = first(sessions, etcd).await.ok_or_else(|| anyhow!("no remaining etcd member answers SSH"))?;
    let e = sessions.must(&keeper).await?;
    e.sudo_ok(
        "removing the Patroni member key",
        &format!("{} 2>&1", crate::hosts::roles::tls::etcdctl(u64::from(etcd_client_port(plan)), &format!("del {}", sh_quote(&key)))),
    )
    .await?;
    // The slot Patroni keeps for the member on the leader: its name with
    // anything but [a-z0-9_] turned into `_`.
    let slot: String = member.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    let port = rest_port(plan);
    let probe_name = first(sessions, remaining).await.ok_or_else(|| anyhow!("no remaining Patroni member answers SSH"))?;
    let members = patroni_members(sessions.must(&probe_name).await?, port).await?;
    let leader = members.iter().find(|(_, r)| *r == "leader").map(|(n, _)| n.clone()).ok_or_else(|| anyhow!("no Patroni leader after {member} left"))?;
    let l = sessions.must(&leader).await?;
    let query = format!("runuser -u postgres -- psql -h /var/run/postgresql -Atc \"select count(*) from pg_replication_slots where slot_name = '{slot}'\"");
    let gone = wait_for(&format!("{leader}: replication slot {slot} dropped by Patroni"), SLOT_WAIT, || async {
        let out = l.sudo(&query, None).await?;
        Ok(if out.stdout.trim() == "0" { Ok(()) } else { Err(format!("count {}", out.stdout.trim())) })
    })
    .await;
    if gone.is_err() {
        // Patroni did not drop it in time: an inactive slot for a member that is
        // gone only holds WAL back, so drop it here.
        events.progress(subject, format!("dropping the replication slot {slot} on {leader}"));
        l.sudo_ok(
            "dropping the replication slot",
            &format!("runuser -u postgres -- psql -h /var/run/postgresql -Atc \"select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '{slot}' and not active\""),
        )
        .await?;
    }
    Ok(())
}
