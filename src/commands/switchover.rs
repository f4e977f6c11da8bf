//! `rigger switchover [PLAN] [--to MEMBER]`: a planned leader change through
//! Patroni's API. Gated both ways: the stack must be healthy before, and the
//! command returns only when it is healthy again with the new leader behind
//! every HAProxy write port and the old leader streaming from it.

use crate::cli::SwitchoverCmd;
use crate::project::Project;
use crate::hosts::remote::session::HostSession;
use crate::hosts::roles::failover;
use crate::state::State;
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use crate::hosts::roles::patroni;

pub async fn run(args: &SwitchoverCmd, state_override: Option<&Path>) -> Result<i32> {
    let project = Project::load(&args.plan, state_override)?;
    let Some(state) = crate::state::read_state(&project.state_path)? else {
        bail!(
            "nothing was applied for project {} yet — run `rigger apply {}` first",
            project.plan.project,
            args.plan.display()
        );
    };
    let started = Instant::now();
    let (leader, candidate, _) = switch(&project, &state, args.to.as_deref()).await?;
    println!(
        "switchover {leader} → {candidate}: done, the stack is healthy again ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// Check health, move the leadership, wait for health with the new leader.
/// Returns (old leader, new leader, when the new leader was first seen leading).
pub async fn switch(
    project: &Project,
    state: &State,
    to: Option<&str>,
) -> Result<(String, String, Instant)> {
    let before = super::status::gather(project, state).await?;
    if !before.healthy() {
        bail!("the stack is not healthy — see `rigger status`; a switchover needs one leader and streaming replicas");
    }
    let port = crate::hosts::roles::patroni::rest_port(&project.plan);
    let sessions = connect_patroni(project).await?;
    let result = async {
        let leader = before
            .patroni
            .iter()
            .find(|m| m.role == "leader")
            .map(|m| m.name.clone())
            .ok_or_else(|| anyhow!("no Patroni leader"))?;
        let members = crate::hosts::roles::patroni::cluster(
            sessions
                .get(&leader)
                .ok_or_else(|| anyhow!("{leader}: no SSH session"))?,
            port,
        )
        .await?;
        let candidate = failover::pick_candidate(&members, &leader, to)?;
        println!("switchover: {leader} → {candidate}");
        failover::switchover(&sessions, port, &leader, &candidate).await?;
        let leads = Instant::now();
        healthy_with_leader(project, state, &candidate, Duration::from_secs(120)).await?;
        Ok((leader, candidate, leads))
    }
    .await;
    for (_, s) in sessions {
        s.close().await;
    }
    result
}

async fn connect_patroni(project: &Project) -> Result<BTreeMap<String, HostSession>> {
    let config = crate::hosts::remote::ssh_config_path(project);
    let mut sessions = BTreeMap::new();
    for h in project.plan.hosts_with_role(patroni::NAME) {
        sessions.insert(
            h.name.clone(),
            HostSession::connect(&config, &h.name).await?,
        );
    }
    Ok(sessions)
}

/// Wait until `rigger status` is healthy, `leader` leads, and every HAProxy
/// sends writes to it.
pub async fn healthy_with_leader(
    project: &Project,
    state: &State,
    leader: &str,
    limit: Duration,
) -> Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        match super::status::gather(project, state).await {
            Ok(s) => {
                let leads = s
                    .patroni
                    .iter()
                    .any(|m| m.name == leader && m.role == "leader");
                let behind_haproxy = s.haproxy.iter().all(|h| {
                    h.servers.iter().any(|(b, server, st)| {
                        b == "primary" && server == leader && st.starts_with("UP")
                    })
                });
                if s.healthy() && leads && behind_haproxy {
                    return Ok(());
                }
                last = format!(
                    "healthy {}, {leader} leads {leads}, every HAProxy writes to it {behind_haproxy}; members: {}",
                    s.healthy(),
                    s.patroni.iter().map(|m| format!("{} {} {}", m.name, m.role, m.state)).collect::<Vec<_>>().join(", ")
                );
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!(
        "the stack was not healthy with {leader} leading within {}s — last seen: {last}",
        limit.as_secs()
    )
}
