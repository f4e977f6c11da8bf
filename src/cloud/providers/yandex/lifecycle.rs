//! Where an instance is in its life, and waiting for the point rigger needs:
//! settled (no operation is changing it), running (the plan wants every
//! instance RUNNING, so a stopped one is started), and — before a create — no
//! same-named resource still being deleted, which must not be adopted.

use super::{api, YandexProvider};
use crate::cloud::diff::{Action, Change};
use crate::cloud::resource::Kind;
use anyhow::{bail, Context, Result};
use reqwest::Method;
use rigger_events::Events;
use serde_json::{json, Value};
use crate::cloud::providers::poll::{Check, Waiting};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::client::Service;

/// The status the plan asks of every instance (Instance.Status in the protos).
pub const RUNNING: &str = "RUNNING";
const STOPPED: &str = "STOPPED";
const DELETING: &str = "DELETING";

/// What an instance's status means for a change.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// RUNNING or STOPPED: nothing is changing it.
    Settled,
    /// An operation is moving it, or (CRASHED: "will be restarted
    /// automatically") the platform is: wait.
    Moving,
    /// Nothing to wait for (ERROR, DELETING, a status rigger does not know).
    Stuck,
}

fn phase(status: &str) -> Phase {
    match status {
        RUNNING | STOPPED => Phase::Settled,
        "PROVISIONING" | "STARTING" | "STOPPING" | "RESTARTING" | "UPDATING" | "CRASHED" => Phase::Moving,
        _ => Phase::Stuck,
    }
}

/// Why a stuck instance gets no change. ERROR ("encountered a problem and
/// cannot operate") is an error rather than a replacement: replacing it would
/// delete its boot disk (autoDelete) and whatever PostgreSQL or etcd kept
/// there, because of a fault rigger cannot see into; the person who can,
/// decides — fix it, or delete it and let the next apply create it anew.
fn stuck(id: &str, status: &str) -> String {
    match status {
        "ERROR" => format!(
            "instance {id} is ERROR (Yandex Cloud: it encountered a problem and cannot operate); rigger neither starts nor \
             replaces it, since a replacement deletes its boot disk: look at it (yc compute instance get {id}, its serial \
             console), then re-run once it runs or is STOPPED, or delete it (yc compute instance delete {id}) and re-run to \
             create it anew"
        ),
        DELETING => format!("instance {id} is being deleted; re-run once it is gone and it is created anew"),
        other => format!("instance {id} has status {other:?}, which rigger does not know how to change"),
    }
}

/// Why an update of this instance will not be made: its status is one no
/// wait ends (ERROR, or one rigger does not know), so `settle` would refuse
/// it. Said at plan time, in the same words. A replacement or a delete is not
/// blocked: the plan asks for that instance to go.
pub(super) fn blocked_update(change: &Change) -> Option<String> {
    if change.address.kind != Kind::Machine || change.action != Action::Update {
        return None;
    }
    let live = change.live.as_ref()?;
    let status = live.attrs.get("status").and_then(Value::as_str)?;
    (phase(status) == Phase::Stuck).then(|| stuck(&live.id, status))
}

impl YandexProvider {
    pub(super) async fn instance_status(&self, id: &str) -> Result<String> {
        let v = self.client.get(Service::Compute, &format!("/compute/v1/instances/{id}"), &[]).await?;
        Ok(v.get("status").and_then(Value::as_str).unwrap_or("").to_string())
    }

    /// Wait (bounded by the poll timeout) until nothing is changing the
    /// instance — an adopted create's operation may still run, a CRASHED one
    /// comes back by itself — and return its status then.
    pub(super) async fn settle(&self, id: &str, subject: &str, events: &Events) -> Result<String> {
        // The last status shown, so each one is said once.
        let shown = std::sync::Mutex::new(String::new());
        let waiting = Waiting { for_what: "it to be RUNNING or STOPPED", advice: Some("re-run once it is") };
        let poll = &self.client.poll;
        poll.backoff(Duration::from_millis(100), poll.timeout)
            .until(waiting, || async {
                let status = self.instance_status(id).await?;
                match phase(&status) {
                    Phase::Settled => return Ok(Check::Done(status)),
                    Phase::Stuck => bail!(stuck(id, &status)),
                    Phase::Moving => {}
                }
                if let Ok(mut shown) = shown.lock() {
                    if *shown != status {
                        events.progress(subject, format!("instance {id} is {status}; waiting"));
                        shown.clone_from(&status);
                    }
                }
                Ok(Check::NotYet(format!("instance {id} is still {status}")))
            })
            .await
    }

    /// Settle the instance and start it if it is stopped: afterwards it runs.
    /// A start that fails leaves it STOPPED, which the next plan shows again.
    pub(super) async fn ensure_running(&self, id: &str, subject: &str, events: &Events) -> Result<()> {
        if self.settle(id, subject, events).await? == STOPPED {
            events.progress(subject, format!("starting instance {id}"));
            let path = format!("/compute/v1/instances/{id}:start");
            self.client.run(Method::POST, Service::Compute, &path, Some(&json!({}))).await.with_context(|| format!("starting instance {id}"))?;
        }
        match self.settle(id, subject, events).await?.as_str() {
            RUNNING => Ok(()),
            other => bail!("instance {id} is {other} after its start"),
        }
    }

    /// What a create may adopt: the resource with this cloud name, once a
    /// same-named one being deleted is gone. Adopting a dying one would save an
    /// id about to vanish (a replacement killed while its delete ran, then
    /// re-run: the refresh skips the dying instance, the plan says create).
    pub(super) async fn find_to_adopt(&self, kind: Kind, cloud_name: &str, subject: &str, events: &Events) -> Result<Option<Value>> {
        let shown = AtomicBool::new(false);
        let waiting = Waiting { for_what: "it to be gone, to create it anew", advice: Some("re-run once it is gone") };
        let poll = &self.client.poll;
        poll.backoff(Duration::from_millis(200), poll.timeout)
            .until(waiting, || async {
                let found = self.find_by_name(kind, cloud_name).await?;
                let Some(dying) = found.as_ref().filter(|r| r.get("status").and_then(Value::as_str) == Some(DELETING)) else {
                    return Ok(Check::Done(found));
                };
                let (what, id) = (api(kind).what, dying.get("id").and_then(Value::as_str).unwrap_or_default());
                if !shown.swap(true, Ordering::Relaxed) {
                    events.progress(subject, format!("{what} {cloud_name} ({id}) is still being deleted; waiting until it is gone to create it anew"));
                }
                Ok(Check::NotYet(format!("{what} {cloud_name} ({id}) is still being deleted")))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_of_the_protos_has_a_phase() {
        // Instance.Status in yandex/cloud/compute/v1/instance.proto.
        for s in ["RUNNING", "STOPPED"] {
            assert_eq!(phase(s), Phase::Settled, "{s}");
        }
        for s in ["PROVISIONING", "STOPPING", "STARTING", "RESTARTING", "UPDATING", "CRASHED"] {
            assert_eq!(phase(s), Phase::Moving, "{s}");
        }
        for s in ["ERROR", "DELETING", "STATUS_UNSPECIFIED", ""] {
            assert_eq!(phase(s), Phase::Stuck, "{s}");
        }
        assert!(stuck("fhm1", "ERROR").contains("yc compute instance delete fhm1"));
    }
}
