//! Patroni's side of failover: bringing a running cluster's DCS timing to the
//! plan's `rto` preset (Patroni reads bootstrap.dcs only once), and a planned
//! switchover through Patroni's API, gated on the new leader serving writes
//! behind every HAProxy. All REST calls go through patroni::rest.

use super::patroni::{cluster, rest};
use crate::hosts::run::{wait_for, RoleRun};
use crate::hosts::remote::session::HostSession;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// PATCH ttl/loop_wait/retry_timeout into the DCS when they differ from the plan.
pub async fn sync_dcs_timing(
    run: &RoleRun<'_>,
    probe: &HostSession,
    port: u64,
    live_config: &str,
) -> Result<()> {
    let changes = crate::plan::rto::dcs_changes(run.plan, live_config);
    if changes.is_empty() {
        return Ok(());
    }
    run.events.progress(
        "patroni timing",
        format!(
            "setting {}",
            changes
                .iter()
                .map(|(k, _, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let patch: serde_json::Map<String, Value> = changes
        .iter()
        .map(|(k, _, v)| (k.clone(), json!(v.parse::<i64>().unwrap_or_default())))
        .collect();
    let (code, body) = rest(probe, port, "PATCH", "/config", Some(&Value::Object(patch))).await?;
    if code != 200 {
        bail!(
            "{}: PATCH /config (ttl, loop_wait, retry_timeout) answered {code}: {body}",
            probe.name
        );
    }
    Ok(())
}

/// The member to hand the leadership to: `wanted`, or the first running replica.
pub fn pick_candidate(
    members: &BTreeMap<String, (String, String)>,
    leader: &str,
    wanted: Option<&str>,
) -> Result<String> {
    let replicas: Vec<&String> = members
        .iter()
        .filter(|(n, (role, state))| {
            *n != leader && role != "leader" && (state == "streaming" || state == "running")
        })
        .map(|(n, _)| n)
        .collect();
    match wanted {
        Some(w) if w == leader => bail!(
            "{w} leads already — name one of the replicas: {}",
            join(&replicas)
        ),
        Some(w) if !members.contains_key(w) => bail!(
            "{w} is not a Patroni member — the members are {}",
            join(&members.keys().collect::<Vec<_>>())
        ),
        Some(w) if !replicas.iter().any(|r| *r == w) => bail!(
            "{w} is not a running replica ({:?}) — wait until it streams, or name another: {}",
            members[w],
            join(&replicas)
        ),
        Some(w) => Ok(w.to_string()),
        None => replicas
            .first()
            .map(|r| r.to_string())
            .ok_or_else(|| anyhow!("no running replica to switch over to")),
    }
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// POST /switchover on the leader, then wait until the candidate leads.
pub async fn switchover(
    sessions: &BTreeMap<String, HostSession>,
    port: u64,
    leader: &str,
    candidate: &str,
) -> Result<()> {
    let on = |n: &str| {
        sessions
            .get(n)
            .ok_or_else(|| anyhow!("{n}: no SSH session"))
    };
    let (code, body) = rest(
        on(leader)?,
        port,
        "POST",
        "/switchover",
        Some(&json!({ "leader": leader, "candidate": candidate })),
    )
    .await?;
    if code != 200 {
        bail!(
            "switchover {leader} → {candidate}: Patroni answered {code}: {}",
            body.trim()
        );
    }
    wait_for(
        &format!("{candidate} leads"),
        Duration::from_secs(60),
        || async {
            let m = cluster(on(candidate)?, port).await?;
            Ok(
                if m.get(candidate).map(|(r, _)| r.as_str()) == Some("leader") {
                    Ok(())
                } else {
                    Err(format!("{m:?}"))
                },
            )
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> BTreeMap<String, (String, String)> {
        [
            ("pg-1", "leader", "running"),
            ("pg-2", "replica", "streaming"),
            ("pg-3", "replica", "starting"),
        ]
        .iter()
        .map(|(n, r, s)| (n.to_string(), (r.to_string(), s.to_string())))
        .collect()
    }

    #[test]
    fn the_candidate_must_be_a_running_replica() {
        let m = members();
        assert_eq!(pick_candidate(&m, "pg-1", None).unwrap(), "pg-2");
        assert_eq!(pick_candidate(&m, "pg-1", Some("pg-2")).unwrap(), "pg-2");
        assert!(pick_candidate(&m, "pg-1", Some("pg-1"))
            .unwrap_err()
            .to_string()
            .contains("leads already"));
        assert!(pick_candidate(&m, "pg-1", Some("pg-3"))
            .unwrap_err()
            .to_string()
            .contains("not a running replica"));
        assert!(pick_candidate(&m, "pg-1", Some("pg-9"))
            .unwrap_err()
            .to_string()
            .contains("not a Patroni member"));
    }
}
