//! Guests still being created, and never creating a machine twice.
//!
//! PVE's `POST /nodes/{node}/lxc` writes a config holding only `lock: create`
//! (pve-guest-common `create_and_lock_config`) and forks `vzcreate`; the
//! hostname, tags and description are written only once the template is
//! extracted, tens of seconds later (pve-container `create_vm`). A clone is
//! the same with `lock: clone` until `qmclone` ends. Meanwhile nothing shows
//! the guest is the plan's machine, and `/cluster/resources` names a guest
//! only after pvestatd's next pass. So:
//!
//! - the VMID each create POSTed is remembered: when the answer is lost (the
//!   client sends the POST again, PVE answers `CT N already exists`), the
//!   next attempt adopts that guest instead of allocating another VMID;
//! - VMIDs are allocated one at a time, skipping those this process POSTed,
//!   so parallel creates are not all offered the same one;
//! - before a VMID is allocated, creations this process did not start are
//!   waited for (bounded), then their configs read: one may be this machine,
//!   started by a run that was interrupted or whose answer was lost;
//! - a planned VMID held by a creation is waited for too, not taken for
//!   someone else's guest;
//! - a plan refuses two guests of the project with one name (a destroy
//!   removes both).

use super::client::as_u64;
use super::resources::{owned_by, Meta};
use super::{locks, ProxmoxProvider, Settled};
use crate::cloud::resource::LiveResource;
use anyhow::{bail, Context, Result};
use rigger_events::Events;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

impl ProxmoxProvider {
    /// Record the VMID about to be POSTed for `subject` (before the POST:
    /// its answer may never come).
    pub(super) fn remember_post(&self, subject: &str, vmid: u64) {
        if let Ok(mut posted) = self.posted.lock() {
            posted.insert(subject.to_string(), vmid);
        }
    }

    pub(super) fn forget_post(&self, subject: &str) {
        if let Ok(mut posted) = self.posted.lock() {
            posted.remove(subject);
        }
    }

    fn posted_for(&self, subject: &str) -> Option<u64> {
        self.posted.lock().ok().and_then(|p| p.get(subject).copied())
    }

    /// VMIDs this process POSTed for other machines: their creations are not
    /// this machine, so a create does not wait for its neighbours.
    fn posted_for_others(&self, subject: &str) -> BTreeSet<u64> {
        self.posted.lock().map(|p| p.iter().filter(|(s, _)| s.as_str() != subject).map(|(_, v)| *v).collect()).unwrap_or_default()
    }

    /// A VMID for `subject` from `/cluster/nextid`, recorded as POSTed for
    /// it. nextid offers the lowest VMID without a config, and a clone's
    /// config appears only once its worker runs: parallel creates would be
    /// offered the same VMID, so allocations take turns and skip the VMIDs
    /// this process has POSTed (`/cluster/nextid?vmid=N` refuses a taken one).
    pub(super) async fn allocate_vmid(&self, subject: &str) -> Result<u64> {
        let _turn = self.allocating.lock().await;
        let ours: BTreeSet<u64> = self.posted.lock().map(|p| p.values().copied().collect()).unwrap_or_default();
        let mut vmid = as_u64(&self.client.get("/cluster/nextid", &[]).await?).context("cluster/nextid answered no number")?;
        while ours.contains(&vmid) {
            vmid = self.next_free_from(vmid + 1).await?;
        }
        self.remember_post(subject, vmid);
        Ok(vmid)
    }

    /// The lowest free VMID from `vmid` on: pve-manager's nextid answers a
    /// taken one with 400, `errors.vmid = "VM N already exists"`.
    async fn next_free_from(&self, mut vmid: u64) -> Result<u64> {
        loop {
            match self.client.get("/cluster/nextid", &[("vmid", vmid.to_string())]).await {
                Ok(_) => return Ok(vmid),
                Err(e) if e.status() == Some(400) && e.mentions("already exists") => vmid += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether guest `vmid` is this machine, by its config (the listing's
    /// name lags on PVE): named `hostname`, and the project's by its tags or,
    /// for a clone not configured yet, its description.
    pub(super) async fn is_this_machine(&self, kind: &str, vmid: u64, hostname: &str) -> Result<bool> {
        let Some(guest) = self.guest_identity(kind, vmid).await? else { return Ok(false) };
        let named = guest.name.as_deref() == Some(hostname);
        let ours = owned_by(guest.tags.as_deref(), &self.project) || Meta::parse(&guest.description).project.as_deref() == Some(self.project.as_str());
        Ok(named && ours)
    }

    /// A guest's name, tags and description as its config holds them (the
    /// listing's name lags on PVE: pvestatd fills it in on its next pass);
    /// None when the guest is gone.
    pub(super) async fn guest_identity(&self, kind: &str, vmid: u64) -> Result<Option<GuestIdentity>> {
        let config = match self.client.get(&format!("{}/config", self.guest_path(kind, vmid)), &[]).await {
            Ok(config) => config,
            Err(e) if e.is_missing_guest() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let text = |key: &str| config.get(key).and_then(Value::as_str).map(str::to_string);
        Ok(Some(GuestIdentity {
            name: text(if kind == "lxc" { "hostname" } else { "name" }),
            tags: text("tags"),
            description: text("description").unwrap_or_default(),
        }))
    }

    /// Without a planned VMID: the guest that is this machine, if one exists
    /// or is being created — the one an earlier attempt POSTed, one whose
    /// running creation turns out to be it, or one found by name.
    pub(super) async fn find_own(&self, kind: &str, hostname: &str, subject: &str, events: &Events) -> Result<Option<u64>> {
        if let Some(vmid) = self.adopt_posted(kind, hostname, subject, events).await? {
            return Ok(Some(vmid));
        }
        for vmid in self.wait_for_creations(kind, hostname, subject, events).await? {
            if self.is_this_machine(kind, vmid, hostname).await? {
                return Ok(Some(vmid));
            }
        }
        self.find_by_name(kind, hostname).await
    }

    /// The guest an earlier attempt POSTed for `subject`, once its creation
    /// has ended, if it is this machine; otherwise (gone, or someone else's:
    /// the VMID was taken between nextid and the POST) it is forgotten.
    async fn adopt_posted(&self, kind: &str, hostname: &str, subject: &str, events: &Events) -> Result<Option<u64>> {
        let Some(vmid) = self.posted_for(subject) else { return Ok(None) };
        events.progress(subject, format!("{} {vmid} was asked for by an earlier attempt: waiting for its creation to end, to adopt it", locks::noun(kind)));
        let settled = self
            .settle_lock(kind, vmid)
            .await
            .with_context(|| format!("waiting for the creation of {} {vmid}, asked for {hostname} by an earlier attempt", locks::noun(kind)))?;
        match settled {
            Settled::Stale { name, lock } => return Err(locks::stale(kind, vmid, &name, &lock, &self.node_of(vmid))),
            Settled::Unlocked(_) if self.is_this_machine(kind, vmid, hostname).await? => return Ok(Some(vmid)),
            Settled::Unlocked(_) | Settled::Gone => {}
        }
        self.forget_post(subject);
        Ok(None)
    }

    /// Wait (each as long as its task may run) for the running creations of
    /// `kind` guests that show no project tags yet, that rigger's own API
    /// identity started (another user's or team's creation is not this
    /// machine, however long it runs) and that this process did not start for
    /// another machine. Returns the VMIDs whose creation ended, to be checked
    /// by their configs. A creation no task runs any more is not waited for:
    /// nothing will name that guest.
    async fn wait_for_creations(&self, kind: &str, hostname: &str, subject: &str, events: &Events) -> Result<Vec<u64>> {
        let others = self.posted_for_others(subject);
        let creating: Vec<(u64, String)> = self
            .guests()
            .await?
            .iter()
            .filter(|g| g.get("type").and_then(Value::as_str) == Some(kind))
            .filter(|g| !owned_by(g.get("tags").and_then(Value::as_str), &self.project))
            .filter_map(|g| {
                let lock = g.get("lock").and_then(Value::as_str).filter(|l| locks::set_by_creation(l))?;
                Some((g.get("vmid").and_then(as_u64)?, lock.to_string()))
            })
            .filter(|(vmid, _)| !others.contains(vmid))
            .collect();
        let mut ended = Vec::new();
        for (vmid, lock) in creating {
            let noun = locks::noun(kind);
            let Some(task) = locks::holder(&self.client, &self.node_of(vmid), vmid, &lock).await? else { continue };
            if super::tasks::Upid::parse(&task).is_none_or(|upid| upid.user != self.client.identity()) {
                continue;
            }
            events.progress(
                subject,
                format!("waiting for the creation of {noun} {vmid} (task {task}) to end: it has no name yet and may be {hostname}, started by an interrupted run"),
            );
            let settled = self.settle_lock(kind, vmid).await.with_context(|| {
                format!("waiting for the creation of {noun} {vmid} to end before creating {hostname} (it may be {hostname}, started by an earlier run)")
            })?;
            if matches!(settled, Settled::Unlocked(_)) {
                ended.push(vmid);
            }
        }
        Ok(ended)
    }

    /// A planned VMID's guest, once any creation holding it has ended: a
    /// guest locked by a running creation shows no name or tags yet (it may
    /// be this machine, from an interrupted run); one locked by a creation no
    /// task runs is reported with the way out.
    pub(super) async fn planned_guest(&self, kind: &str, vmid: u64, hostname: &str, subject: &str, events: &Events) -> Result<Option<Value>> {
        let Some(entry) = self.find_by_vmid(vmid).await? else { return Ok(None) };
        let lock = entry.get("lock").and_then(Value::as_str).filter(|l| locks::set_by_creation(l));
        if lock.is_none() || owned_by(entry.get("tags").and_then(Value::as_str), &self.project) {
            return Ok(Some(entry));
        }
        let noun = locks::noun(entry.get("type").and_then(Value::as_str).unwrap_or(kind));
        let their_kind = entry.get("type").and_then(Value::as_str).unwrap_or(kind).to_string();
        events.progress(subject, format!("waiting for the creation of {noun} {vmid} to end: it has no name yet and may be {hostname}, started by an interrupted run"));
        let settled = self
            .settle_lock(&their_kind, vmid)
            .await
            .with_context(|| format!("waiting for the creation of {noun} {vmid} (the VMID planned for {hostname}) to end"))?;
        match settled {
            Settled::Gone => Ok(None),
            Settled::Stale { name, lock } => Err(locks::stale(&their_kind, vmid, &name, &lock, &self.node_of(vmid))),
            Settled::Unlocked(_) => Ok(self.find_by_vmid(vmid).await?),
        }
    }
}

/// What a guest's config says it is.
pub struct GuestIdentity {
    pub name: Option<String>,
    pub tags: Option<String>,
    pub description: String,
}

/// Before a plan: each machine is one guest. Two of the project's guests with one
/// name are a create made twice (or a copy made by hand): say which, and
/// which to remove — the one the state does not know, else the newer VMIDs.
pub fn one_guest_per_name(live: &[LiveResource], known: &[LiveResource], project: &str) -> Result<()> {
    let mut by_name: BTreeMap<&str, Vec<&LiveResource>> = BTreeMap::new();
    for guest in live {
        by_name.entry(guest.address.name.as_str()).or_default().push(guest);
    }
    let mut problems = Vec::new();
    for (name, mut guests) in by_name.into_iter().filter(|(_, g)| g.len() > 1) {
        guests.sort_by_key(|g| g.id.parse::<u64>().unwrap_or(u64::MAX));
        let remembered = known.iter().find(|k| k.address.name == name).map(|k| k.id.as_str());
        let keep = guests.iter().find(|g| Some(g.id.as_str()) == remembered).unwrap_or(&guests[0]).id.clone();
        let describe = |g: &LiveResource| {
            let kind = g.attrs.get("kind").and_then(Value::as_str).unwrap_or("lxc");
            format!("{} {} on node {} ({})", locks::noun(kind), g.id, g.output_str("node").unwrap_or("?"), g.output_str("ssh_host").unwrap_or("no address"))
        };
        let remove: Vec<String> = guests
            .iter()
            .filter(|g| g.id != keep)
            .map(|g| format!("`{} destroy {} --purge`", locks::tool(g.attrs.get("kind").and_then(Value::as_str).unwrap_or("lxc")), g.id))
            .collect();
        problems.push(format!(
            "{} guests named '{name}' carry project {project}'s tags: {}. One machine was created twice; keep {keep}{} and remove the rest on their node ({}), then run rigger again",
            guests.len(),
            guests.iter().map(|g| describe(g)).collect::<Vec<_>>().join(", "),
            if remembered == Some(keep.as_str()) { " (the state's)" } else { "" },
            remove.join(", "),
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::resource::{Address, Kind};
    use serde_json::json;

    fn guest(name: &str, vmid: u64) -> LiveResource {
        LiveResource {
            address: Address::new(Kind::Machine, name),
            id: vmid.to_string(),
            attrs: [("kind".to_string(), json!("lxc"))].into_iter().collect(),
            outputs: [("node".to_string(), json!("pve")), ("ssh_host".to_string(), json!("192.168.50.21"))].into_iter().collect(),
        }
    }

    #[test]
    fn two_guests_of_one_name_name_the_one_to_remove() {
        assert!(one_guest_per_name(&[guest("pg-1", 101), guest("pg-2", 102)], &[], "pg").is_ok());
        let live = [guest("pg-1", 101), guest("pg-1", 100)];
        let text = one_guest_per_name(&live, &[], "pg").unwrap_err().to_string();
        assert!(text.contains("2 guests named 'pg-1'") && text.contains("CT 100 on node pve") && text.contains("keep 100 and"), "{text}");
        assert!(text.contains("`pct destroy 101 --purge`"), "{text}");
        // The state's guest is kept.
        let text = one_guest_per_name(&live, &[guest("pg-1", 101)], "pg").unwrap_err().to_string();
        assert!(text.contains("keep 101 (the state's)") && text.contains("`pct destroy 100 --purge`"), "{text}");
    }
}
