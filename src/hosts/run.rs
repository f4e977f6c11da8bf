//! What a role's bring-up gets to work with, and the helpers every role uses:
//! run on all of the role's hosts at once, apply the plain service changes,
//! and wait for a health condition with a deadline.

use super::facts::HostFacts;
use super::ops::HostChanges;
use rigger_events::Events;
use crate::plan::model::{Host, Plan};
use crate::hosts::remote::session::HostSession;
use anyhow::{anyhow, bail, Result};
use futures::future::join_all;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
// tokio's clock: the same as std's in a run, and one that tests can pause.
use tokio::time::Instant;

pub struct RoleRun<'a> {
    pub role: &'static str,
    pub plan: &'a Plan,
    pub secrets: &'a BTreeMap<String, String>,
    /// The role's hosts whose files are in place (a host whose config was
    /// rejected is left out, its service untouched).
    pub hosts: Vec<&'a Host>,
    pub sessions: &'a BTreeMap<String, HostSession>,
    /// The role's part of each host's changes.
    pub changes: BTreeMap<String, HostChanges>,
    pub facts: &'a BTreeMap<String, HostFacts>,
    pub events: &'a Events,
}

impl<'a> RoleRun<'a> {
    pub fn session(&self, host: &str) -> Result<&'a HostSession> {
        self.sessions.get(host).ok_or_else(|| anyhow!("{host}: no SSH session"))
    }

    pub fn changes_of(&self, host: &str) -> HostChanges {
        self.changes.get(host).cloned().unwrap_or_default()
    }

    /// Run `f` for every host of the role at once; all errors are reported together.
    pub async fn each<F, Fut>(&self, f: F) -> Result<()>
    where
        F: Fn(&'a Host, &'a HostSession) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut futures = Vec::new();
        for h in &self.hosts {
            let s = self.session(&h.name)?;
            futures.push(f(h, s));
        }
        let errors: Vec<String> = join_all(futures).await.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(())
    }

    /// Start, restart and reload on one host exactly as its changes say
    /// (the staging enabled them at boot already) (custom-handled services are left to the role).
    pub async fn plain_service_changes(&self, host: &Host, session: &HostSession) -> Result<()> {
        let ch = self.changes_of(&host.name);
        let subject = format!("{} {}", self.role, host.name);
        for s in &ch.start {
            self.events.progress(&subject, format!("starting {s}"));
            start(session, s).await?;
        }
        for s in &ch.restart {
            self.events.progress(&subject, format!("restarting {s}"));
            session.sudo_ok(&format!("restarting {s}"), &format!("systemctl restart {s}")).await.map_err(|e| with_journal_hint(e, s))?;
        }
        for s in &ch.reload {
            self.events.progress(&subject, format!("reloading {s}"));
            session.sudo_ok(&format!("reloading {s}"), &format!("systemctl reload {s}")).await.map_err(|e| with_journal_hint(e, s))?;
        }
        Ok(())
    }
}

pub async fn start(session: &HostSession, service: &str) -> Result<()> {
    let out = session.sudo(&format!("systemctl start {service}"), None).await?;
    if !out.ok() {
        let journal = session.sudo(&format!("journalctl -u {service} -n 15 --no-pager 2>&1 | tail -n 15"), None).await.map(|o| o.stdout).unwrap_or_default();
        bail!("{}: {service} did not start: {}\n  last log lines:\n{}", session.name, out.stderr.trim(), indent(&journal));
    }
    Ok(())
}

fn with_journal_hint(e: anyhow::Error, service: &str) -> anyhow::Error {
    anyhow!("{e:#} (see `journalctl -u {service}` on the host)")
}

pub fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// Poll `check` until it yields a value or `limit` passes. `check` returns
/// `Ok(None)` (not yet, with the reason kept for the error) or `Ok(Some(v))`.
/// A check that hangs (a command on a host that never returns) is bounded
/// too: it gets what is left of `limit`, at least `LAST_CHECK_GRACE`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, String>>>,
{
    wait_for_within(what, limit, LAST_CHECK_GRACE, check).await
}

/// The least time a check started near the end of a wait gets to answer.
const LAST_CHECK_GRACE: Duration = Duration::from_secs(10);

async fn wait_for_within<T, F, Fut>(what: &str, limit: Duration, grace: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, String>>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(300);
    let mut last = String::new();
    loop {
        let allowed = limit.saturating_sub(started.elapsed()).max(grace);
        match tokio::time::timeout(allowed, check()).await {
            Ok(Ok(Ok(v))) => return Ok(v),
            Ok(Ok(Err(reason))) => last = reason,
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => {
                let before = if last.is_empty() { String::new() } else { format!("; before it: {last}") };
                bail!("{what}: not reached after {}s — the last check gave no answer within {}s{before}", started.elapsed().as_secs(), allowed.as_secs_f32().ceil());
            }
        }
        if started.elapsed() >= limit {
            bail!("{what}: not reached after {}s — last seen: {last}", limit.as_secs());
        }
        tokio::time::sleep(pause).await;
        // At most 1 s between checks: a gate on the critical path (a
        // bootstrap, replicas joining) would otherwise find its condition up
        // to 2 s late; a check is one cheap channel on the SSH master.
        pause = (pause * 3 / 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A check that never returns (a command hung on a host) does not hold
    /// the wait past its limit: the error says so, and what was seen before.
    #[tokio::test]
    async fn a_check_that_never_answers_is_cut_off_by_the_wait() {
        let started = Instant::now();
        let mut calls = 0;
        let waited = wait_for_within("a daemon answering", Duration::from_millis(500), Duration::from_millis(200), || {
            calls += 1;
            let first = calls == 1;
            async move {
                if first {
                    return Ok(Err("still starting".to_string()));
                }
                std::future::pending::<Result<Result<(), String>>>().await
            }
        })
        .await;
        let err = waited.unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(err.starts_with("a daemon answering: not reached after") && err.contains("gave no answer within") && err.ends_with("before it: still starting"), "{err}");
    }
}
