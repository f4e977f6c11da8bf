//! etcd membership changes on a running cluster, one member at a time so the
//! quorum never drops: a new member is announced with `member add` and starts
//! with `initial-cluster-state existing` and the cluster's exact membership
//! (what etcd checks when it joins); a leaving member is removed with
//! `member remove` and then stopped.

use crate::hosts::run::wait_for;
use crate::hosts::remote::session::{sh_quote, HostSession};
use anyhow::{anyhow, bail, Result};
use std::time::Duration;

/// Written on a joining member only, read after /etc/default/etcd-bootstrap
/// (see templates/etcd-bootstrap.env.j2); removed once the member runs.
pub const JOIN_FILE: &str = "/etc/default/etcd-join";
/// How long a joining member may take to start and report healthy.
const JOIN_WAIT: Duration = Duration::from_secs(90);
/// How long etcd may refuse a member add while the last change settles.
const ADD_WAIT: Duration = Duration::from_secs(45);
/// How long the cluster may take to settle after a member leaves.
const LEAVE_WAIT: Duration = Duration::from_secs(60);

/// One line of `etcdctl member list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub started: bool,
    /// Empty while a member is added but not started.
    pub name: String,
    pub peer_url: String,
}

fn etcdctl(port: u64, args: &str) -> String {
    // TLS-aware (security.tls): the member's live config decides the scheme and certificate.
    format!("{} 2>&1", crate::hosts::roles::tls::etcdctl(port, &format!("--command-timeout=5s {args}")))
}

/// Parse `etcdctl member list` (simple format: `id, status, name, peers, clients, learner`).
pub fn parse_members(text: &str) -> Vec<Member> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(Member { id: f[0].to_string(), started: f[1] == "started", name: f[2].to_string(), peer_url: f[3].to_string() })
        })
        .collect()
}

/// The members as the etcd on `s` sees them.
pub async fn list(s: &HostSession, port: u64) -> Result<Vec<Member>> {
    let out = s.sudo(&etcdctl(port, "member list"), None).await?;
    if !out.ok() {
        bail!("{}: etcdctl member list failed: {}", s.name, out.stdout.trim());
    }
    Ok(parse_members(&out.stdout))
}

/// `ETCD_INITIAL_CLUSTER` for a member joining now: every member etcd knows,
/// the joining one (added, not started, so nameless) under its own name.
pub fn initial_cluster(members: &[Member], joiner: &str, joiner_peer: &str) -> Result<String> {
    let mut parts = Vec::new();
    for m in members {
        let name = if m.peer_url == joiner_peer {
            joiner.to_string()
        } else if !m.started {
            bail!(
                "etcd lists another member that was added but never started ({}, id {}) — a half-finished join; remove it with `etcdctl member remove {}` on a running member, then apply again",
                m.peer_url,
                m.id,
                m.id
            );
        } else {
            m.name.clone()
        };
        parts.push(format!("{name}={}", m.peer_url));
    }
    Ok(parts.join(","))
}

/// Add `joiner` (whose session is `j`) to the cluster that `existing` is a
/// running member of, start it with `existing`, wait until it is healthy and
/// started, then remove the join file (it is only read at bootstrap).
pub async fn join(existing: &HostSession, j: &HostSession, joiner: &str, joiner_ip: &str, client_port: u64, peer_port: u64) -> Result<()> {
    let members = list(existing, client_port).await?;
    // The cluster's own scheme: https when it runs with TLS (security.tls).
    let scheme = if members.iter().any(|m| m.peer_url.starts_with("https://")) { "https" } else { "http" };
    let peer = format!("{scheme}://{joiner_ip}:{peer_port}");
    if !members.iter().any(|m| m.peer_url == peer) {
        // A leftover half-join of someone else must be cleared before adding:
        // two unstarted members would leave the quorum at the mercy of both.
        initial_cluster(&members, joiner, &peer)?;
        // etcd refuses a reconfiguration ("unhealthy cluster") until every
        // member has been connected for a few seconds — e.g. right after the
        // previous join: ask again until it accepts, bounded.
        let add = etcdctl(client_port, &format!("member add {} --peer-urls={}", sh_quote(joiner), sh_quote(&peer)));
        wait_for(&format!("etcd accepting {joiner} as a new member"), ADD_WAIT, || async {
            if list(existing, client_port).await?.iter().any(|m| m.peer_url == peer) {
                return Ok(Ok(()));
            }
            let out = existing.sudo(&add, None).await?;
            Ok(if out.ok() { Ok(()) } else { Err(format!("etcdctl member add: {}", out.stdout.trim())) })
        })
        .await?;
    }
    let members = list(existing, client_port).await?;
    let cluster = initial_cluster(&members, joiner, &peer)?;
    let text = format!("# Written by rigger for this member's first start in a running cluster; removed once it runs.\nETCD_INITIAL_CLUSTER=\"{cluster}\"\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n");
    let out = j.sudo(&format!("cat > {JOIN_FILE} && chmod 644 {JOIN_FILE} && systemctl daemon-reload"), Some(text.as_bytes())).await?;
    if !out.ok() {
        bail!("{joiner}: writing {JOIN_FILE} failed: {}", out.stderr.trim());
    }
    // `systemctl start` returns once etcd reports ready (Type=notify), bounded by the unit's start timeout.
    crate::hosts::run::start(j, crate::hosts::roles::etcd::SERVICE).await?;
    wait_for(&format!("{joiner}: etcd joined and healthy"), JOIN_WAIT, || async {
        let (healthy, said) = crate::hosts::roles::etcd::member_health(j, client_port).await?;
        if !healthy {
            return Ok(Err(said));
        }
        let members = list(existing, client_port).await?;
        match members.iter().find(|m| m.peer_url == peer) {
            Some(m) if m.started && m.name == joiner => Ok(Ok(())),
            other => Ok(Err(format!("member entry {other:?}"))),
        }
    })
    .await?;
    j.sudo_ok("removing the etcd join settings", &format!("rm -f {JOIN_FILE}")).await?;
    Ok(())
}

/// Whether this member has bootstrapped its data directory (then the
/// initial-cluster settings no longer matter to it).
pub async fn has_data(s: &HostSession) -> Result<bool> {
    Ok(s.sudo("test -d /var/lib/etcd/default/member", None).await?.ok())
}

/// Remove member `name` through the running member `remaining`, stop etcd on
/// the leaving host if it can be reached, and wait until the remaining
/// members are all healthy without it.
pub async fn remove(remaining: &HostSession, leaving: Option<&HostSession>, name: &str, client_port: u64) -> Result<()> {
    let members = list(remaining, client_port).await?;
    let unhealthy: Vec<&Member> = members.iter().filter(|m| !m.started && m.name != name).collect();
    if !unhealthy.is_empty() {
        bail!("etcd has members that are not started ({unhealthy:?}) — removing {name} now could cost the quorum; fix them first (`rigger status`)");
    }
    // Every other member must answer before one goes: the quorum after the removal is counted on them.
    let health = remaining.sudo(&etcdctl(client_port, "endpoint health --cluster"), None).await?;
    let leaving_host = members.iter().find(|m| m.name == name).map(|m| url_host(&m.peer_url));
    let sick: Vec<&str> = health
        .stdout
        .lines()
        .filter(|l| l.contains("unhealthy"))
        .filter(|l| leaving_host.as_ref().is_none_or(|h| !l.contains(&format!("{h}:"))))
        .collect();
    if !sick.is_empty() {
        bail!("etcd members are unhealthy, not removing {name}: {}", sick.join("; "));
    }
    if let Some(m) = members.iter().find(|m| m.name == name) {
        let remove = etcdctl(client_port, &format!("member remove {}", m.id));
        wait_for(&format!("etcd accepting the removal of {name}"), ADD_WAIT, || async {
            if !list(remaining, client_port).await?.iter().any(|x| x.id == m.id) {
                return Ok(Ok(()));
            }
            let out = remaining.sudo(&remove, None).await?;
            Ok(if out.ok() { Ok(()) } else { Err(format!("etcdctl member remove: {}", out.stdout.trim())) })
        })
        .await?;
    }
    if let Some(l) = leaving {
        // A removed member stops by itself; make sure nothing starts it again.
        l.sudo_ok("stopping etcd", "systemctl disable --now etcd 2>&1").await?;
        // A host that keeps its machine may join again later: as a new member,
        // which needs an empty data directory (the cluster holds the data).
        l.sudo_ok(
            "setting the removed member's data aside",
            "if [ -d /var/lib/etcd/default ]; then mv /var/lib/etcd/default /var/lib/etcd/removed-$(date +%s); fi",
        )
        .await?;
    }
    wait_for(&format!("etcd healthy without {name}"), LEAVE_WAIT, || async {
        let (healthy, said) = crate::hosts::roles::etcd::member_health(remaining, client_port).await?;
        if !healthy {
            return Ok(Err(said));
        }
        let members = list(remaining, client_port).await?;
        if members.iter().any(|m| m.name == name) {
            return Ok(Err(format!("{name} still listed")));
        }
        Ok(Ok(()))
    })
    .await
    .map_err(|e| anyhow!("{e:#}"))
}

/// `http://10.1.0.51:2380` → `http://10.1.0.51`.
fn url_host(url: &str) -> String {
    url.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_else(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "8e9e05c52164694d, started, etcd-1, http://10.1.0.51:2380, http://10.1.0.51:2379, false
91bc3c398fb3c146, started, etcd-2, http://10.1.0.52:2380, http://10.1.0.52:2379, false
fd422379fda50e48, started, etcd-3, http://10.1.0.53:2380, http://10.1.0.53:2379, false
2f1e1b0d1e0a1c1d, unstarted, , http://10.1.0.54:2380, , false
";

    #[test]
    fn a_joining_member_gets_the_exact_membership_under_its_own_name() {
        let members = parse_members(LIST);
        assert_eq!(members.len(), 4);
        assert!(!members[3].started && members[3].name.is_empty());
        let c = initial_cluster(&members, "etcd-4", "http://10.1.0.54:2380").unwrap();
        assert_eq!(c, "etcd-1=http://10.1.0.51:2380,etcd-2=http://10.1.0.52:2380,etcd-3=http://10.1.0.53:2380,etcd-4=http://10.1.0.54:2380");
    }

    #[test]
    fn someone_elses_half_join_is_refused() {
        let members = parse_members(LIST);
        let e = initial_cluster(&members, "etcd-5", "http://10.1.0.55:2380").unwrap_err();
        assert!(format!("{e}").contains("member remove 2f1e1b0d1e0a1c1d"), "{e}");
    }
}
