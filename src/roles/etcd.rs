//! etcd: three (or five…) members on the v3 API, started together; a changed
//! config restarts one member at a time so the quorum holds; the gate is
//! `etcdctl endpoint health` on every member.

use super::{file, service};
use crate::config::ops::{HostDesired, OnChange};
use crate::config::run::{start, wait_for, RoleRun};
use crate::remote::session::HostSession;
use crate::render::Renderer;
use anyhow::Result;
use serde_json::Value;
use std::time::Duration;

pub fn desired(r: &Renderer, ctx: &Value) -> Result<HostDesired> {
    Ok(HostDesired {
        packages: vec!["etcd-server".into(), "etcd-client".into()],
        files: vec![file("etcd", "/etc/default/etcd", r.render("etcd.env.j2", ctx)?, 0o644, "root", "root", None, &["etcd"])],
        services: vec![service("etcd", "etcd", OnChange::Custom)],
        ..Default::default()
    })
}

fn client_port(run: &RoleRun) -> u64 {
    run.plan.setting("etcd", "client_port").and_then(Value::as_u64).unwrap_or(2379)
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    // Members that are down start together (a lone member waits for its peers).
    run.each(|h, s| async move {
        let ch = run.changes_of(&h.name);
        for svc in &ch.enable {
            s.sudo_ok("enabling etcd", &format!("systemctl enable {svc} 2>&1")).await?;
        }
        if ch.start.iter().any(|x| x == "etcd") {
            run.events.progress(&format!("etcd {}", h.name), "starting etcd");
            s.sudo_ok("starting etcd", "systemctl start --no-block etcd").await?;
        }
        Ok(())
    })
    .await?;
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
pub async fn member_health(s: &HostSession, port: u64) -> Result<(bool, String)> {
    let out = s.sudo(&format!("{} 2>&1", super::tls::etcdctl(port, "--command-timeout=3s endpoint health")), None).await?;
    Ok((out.ok() && out.stdout.contains("is healthy"), out.stdout.trim().to_string()))
}

/// Every member answers healthy and the cluster has all members.
pub async fn gate(run: &RoleRun<'_>) -> Result<()> {
    let port = client_port(run);
    let expected = run.plan.hosts_with_role("etcd").count();
    run.each(|h, s| async move {
        wait_for(&format!("{}: etcd healthy with {expected} members", h.name), Duration::from_secs(120), || async {
            let (healthy, said) = member_health(s, port).await?;
            if !healthy {
                return Ok(Err(said));
            }
            let members = s.sudo(&format!("{} 2>&1", super::tls::etcdctl(port, "member list")), None).await?;
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
