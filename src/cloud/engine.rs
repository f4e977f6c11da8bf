//! Plan and apply the cloud layer: refresh what exists, diff it against the
//! plan, and carry the changes out in dependency order, saving the state after
//! every step so a failure or a kill loses nothing.

use crate::cloud::diff::{self, delete_rank, Action, Change};
use rigger_events::Events;
use crate::cloud::graph::{self, Graph, Outcome};
use crate::project::Project;
use crate::cloud::providers::{Deps, Provider};
use crate::cloud::resource::{Address, Kind, LiveResource, ResourceSpec};
use crate::state::{State, StateStore};
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

/// The resources the plan asks for, with the dependency graph checked.
pub fn specs(provider: &dyn Provider, project: &Project) -> Result<Vec<ResourceSpec>> {
    let specs = provider.specs(&project.plan)?;
    let mut g = Graph::new();
    for s in &specs {
        g.add(s.address.clone(), s.depends_on.iter().cloned());
    }
    g.check()?;
    Ok(specs)
}

/// What exists now. With `refresh = false`, what the state remembers.
pub async fn refresh(provider: &dyn Provider, state: &State, refresh: bool, events: &Events) -> Result<Vec<LiveResource>> {
    let known: Vec<LiveResource> = state.resources.values().cloned().collect();
    if !refresh {
        return Ok(known.into_iter().map(status_as_attribute).collect());
    }
    let started = Instant::now();
    events.started("refresh", "reading what exists");
    let live = provider.refresh(&known, events).await?;
    events.finished("refresh", &format!("{} resources found", live.len()), started);
    Ok(live)
}

/// States saved before a machine's `status` was an attribute (Yandex) hold
/// it only among the outputs: without a refresh, read it from there, or
/// every machine would show a status change.
fn status_as_attribute(mut r: LiveResource) -> LiveResource {
    if r.address.kind == Kind::Machine && !r.attrs.contains_key("status") {
        if let Some(status) = r.outputs.get("status").cloned() {
            r.attrs.insert("status".into(), status);
        }
    }
    r
}

/// `refresh`, for a plan: what the provider cannot plan against (one machine
/// found twice) is refused here; a destroy refreshes without this check.
pub async fn refresh_to_plan(provider: &dyn Provider, state: &State, refresh: bool, events: &Events) -> Result<Vec<LiveResource>> {
    let live = self::refresh(provider, state, refresh, events).await?;
    let known: Vec<LiveResource> = state.resources.values().cloned().collect();
    provider.refuse_to_plan(&live, &known)?;
    Ok(live)
}

/// The changes from what exists to what the plan wants, each marked with
/// the provider's reason when it will not carry it out (`Change::blocked`).
pub fn changes(provider: &dyn Provider, specs: &[ResourceSpec], live: &[LiveResource]) -> Vec<Change> {
    let mut changes = diff::compute(specs, live);
    for c in changes.iter_mut().filter(|c| c.action != Action::NoOp) {
        c.blocked = provider.blocks(c);
    }
    changes
}

/// The changes the provider will not make (`Change::blocked`), by address.
pub fn blocked(changes: &[Change]) -> Vec<String> {
    changes.iter().filter(|c| c.is_blocked()).map(|c| c.address.to_string()).collect()
}

/// Restrict changes to the given hosts' machines and what they depend on.
pub fn restrict_to_targets(changes: Vec<Change>, specs: &[ResourceSpec], targets: &[String]) -> Result<Vec<Change>> {
    if targets.is_empty() {
        return Ok(changes);
    }
    let mut wanted: BTreeSet<Address> = BTreeSet::new();
    let mut stack: Vec<Address> = Vec::new();
    for t in targets {
        let addr = Address::new(Kind::Machine, t.as_str());
        if !specs.iter().any(|s| s.address == addr) && !changes.iter().any(|c| c.address == addr) {
            let names: Vec<&str> = specs.iter().filter(|s| s.address.kind == Kind::Machine).map(|s| s.address.name.as_str()).collect();
            bail!("--target {t}: no such host in the plan — {}", crate::plan::diag::suggestion(t, &names));
        }
        stack.push(addr);
    }
    while let Some(a) = stack.pop() {
        if wanted.insert(a.clone()) {
            if let Some(s) = specs.iter().find(|s| s.address == a) {
                stack.extend(s.depends_on.iter().cloned());
            }
        }
    }
    Ok(changes.into_iter().filter(|c| wanted.contains(&c.address)).collect())
}

/// The state and its store, shared by the workers of one apply.
/// A run's state and the one way it is written: `commit` saves the state
/// (atomically, 0600) and rewrites what is derived from it — known_hosts and
/// ssh_config — so every layer (engine, config phase, apply) commits alike.
pub struct Shared {
    pub store: StateStore,
    pub state: State,
    pub project: Arc<Project>,
}

impl Shared {
    pub fn new(store: StateStore, state: State, project: Arc<Project>) -> Shared {
        Shared { store, state, project }
    }

    pub fn commit(&mut self) -> Result<()> {
        self.store.save(&mut self.state)?;
        crate::hosts::remote::access::write(&self.project, &self.state)
    }
}

pub struct Applier {
    pub provider: Arc<dyn Provider>,
    pub project: Arc<Project>,
    pub shared: Arc<Mutex<Shared>>,
    pub events: Events,
    pub parallelism: usize,
}

impl Applier {
    /// Record what refresh found as the truth (adopting what exists, forgetting what is gone).
    pub async fn record_refresh(&self, live: &[LiveResource]) -> Result<()> {
        let mut sh = self.shared.lock().await;
        let fresh: std::collections::BTreeMap<Address, LiveResource> = live.iter().map(|l| (l.address.clone(), l.clone())).collect();
        if sh.state.resources != fresh {
            sh.state.resources = fresh;
            sh.commit()?;
        }
        Ok(())
    }

    /// Carry the changes out: deletions first (dependents before what they sit
    /// in), then creations and updates along the graph. Every finished step is
    /// saved at once. All failures are reported together at the end.
    pub async fn apply(&self, changes: &[Change]) -> Result<()> {
        let mut failures: Vec<String> = Vec::new();

        // 1. Deletions (and the delete half of replacements), by rank.
        let mut doomed: Vec<&Change> = changes.iter().filter(|c| matches!(c.action, Action::Delete | Action::Replace)).collect();
        doomed.sort_by_key(|c| delete_rank(c.address.kind));
        for rank in 0..=3u8 {
            let batch: Vec<&Change> = doomed.iter().copied().filter(|c| delete_rank(c.address.kind) == rank).collect();
            let mut set = tokio::task::JoinSet::new();
            let sem = Arc::new(tokio::sync::Semaphore::new(self.parallelism.max(1)));
            for c in batch {
                let live = c.live.clone().ok_or_else(|| anyhow!("{}: nothing to delete", c.address))?;
                let (provider, events, shared, sem) = (self.provider.clone(), self.events.clone(), self.shared.clone(), sem.clone());
                set.spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    let subject = live.address.to_string();
                    let started = Instant::now();
                    events.started(&subject, "deleting");
                    match provider.delete(&live, &events).await {
                        Ok(()) => {
                            let mut sh = shared.lock().await;
                            sh.state.resources.remove(&live.address);
                            if live.address.kind == Kind::Machine {
                                // What the config phase knew of the host goes with it.
                                sh.state.hosts.remove(&live.address.name);
                            }
                            sh.commit()?;
                            events.finished(&subject, "deleted", started);
                            Ok(())
                        }
                        Err(e) => {
                            events.failed(&subject, "delete", &format!("{e:#}"));
                            Err(anyhow!("{subject}: {e:#}"))
                        }
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                if let Err(e) = r.map_err(|e| anyhow!("a worker crashed: {e}")).and_then(|r| r) {
                    failures.push(format!("{e:#}"));
                }
            }
            if !failures.is_empty() {
                bail!("{} deletion(s) failed, nothing else was changed:\n  {}", failures.len(), failures.join("\n  "));
            }
        }

        // 2. Creations and updates, in parallel along the dependency graph.
        let work: Vec<&Change> = changes.iter().filter(|c| matches!(c.action, Action::Create | Action::Update | Action::Replace)).collect();
        let in_work: BTreeSet<Address> = work.iter().map(|c| c.address.clone()).collect();
        let mut g = Graph::new();
        for c in &work {
            let spec = c.spec.as_ref().ok_or_else(|| anyhow!("{}: no spec", c.address))?;
            g.add(c.address.clone(), spec.depends_on.iter().filter(|d| in_work.contains(*d)).cloned());
        }
        let by_addr: std::collections::BTreeMap<Address, Change> = work.iter().map(|c| (c.address.clone(), (*c).clone())).collect();
        let by_addr = Arc::new(by_addr);
        let outcomes = graph::walk(&g, self.parallelism, |addr: Address| {
            let change = by_addr[&addr].clone();
            let (provider, events, shared) = (self.provider.clone(), self.events.clone(), self.shared.clone());
            async move {
                let spec = change.spec.clone().expect("work items have specs");
                let subject = addr.to_string();
                let started = Instant::now();
                let deps: Deps = {
                    let sh = shared.lock().await;
                    let mut deps = Deps::new();
                    for d in &spec.depends_on {
                        let live = sh.state.resources.get(d).ok_or_else(|| anyhow!("{subject}: {d} does not exist"))?;
                        deps.insert(d.clone(), live.clone());
                    }
                    deps
                };
                let result = match (change.action, &change.live) {
                    (Action::Update, Some(live)) => {
                        events.started(&subject, &format!("updating {}", change.changed.join(", ")));
                        provider.update(&spec, live, &deps, &events).await
                    }
                    _ => {
                        events.started(&subject, "creating");
                        provider.create(&spec, &deps, &events).await
                    }
                };
                match result {
                    Ok(live) => {
                        let mut sh = shared.lock().await;
                        sh.state.resources.insert(addr.clone(), live);
                        sh.commit()?;
                        events.finished(&subject, if change.action == Action::Update { "updated" } else { "created" }, started);
                        Ok(())
                    }
                    Err(e) => {
                        events.failed(&subject, "apply", &format!("{e:#}"));
                        Err(anyhow!("{subject}: {e:#}"))
                    }
                }
            }
        })
        .await;
        let mut skipped = Vec::new();
        for (addr, outcome) in outcomes {
            match outcome {
                Outcome::Done => {}
                Outcome::Failed(e) => failures.push(format!("{e:#}")),
                Outcome::Skipped => skipped.push(addr.to_string()),
            }
        }
        if !failures.is_empty() {
            let mut msg = format!("{} change(s) failed (everything that succeeded is saved; run apply again to continue):\n  {}", failures.len(), failures.join("\n  "));
            if !skipped.is_empty() {
                msg.push_str(&format!("\nnot attempted because something they need failed: {}", skipped.join(", ")));
            }
            bail!(msg);
        }
        Ok(())
    }
}

/// Before the first SSH wait: let the provider make each machine reachable as
/// the plan's user and learn its host keys (`Provider::prepare_login`); what
/// it learns is saved, and known_hosts rewritten, machine by machine.
pub async fn prepare_logins(provider: &dyn Provider, project: &Project, shared: &Arc<Mutex<Shared>>, events: &Events, parallelism: usize) -> Result<()> {
    use futures::StreamExt;
    let machines: Vec<LiveResource> = shared.lock().await.state.machines().cloned().collect();
    let plan = &project.plan;
    let results: Vec<Result<()>> = futures::stream::iter(machines)
        .map(|machine| async move {
            let Some(ready) = provider.prepare_login(&machine, plan, events).await.map_err(|e| anyhow!("{}: {e:#}", machine.address))? else {
                return Ok(());
            };
            let mut sh = shared.lock().await;
            sh.state.resources.insert(ready.address.clone(), ready);
            sh.commit()
        })
        .buffer_unordered(parallelism.max(1))
        .collect()
        .await;
    let failures: Vec<String> = results.into_iter().filter_map(|r| r.err()).map(|e| format!("{e:#}")).collect();
    if !failures.is_empty() {
        bail!("{} machine(s) could not be prepared for login:\n  {}", failures.len(), failures.join("\n  "));
    }
    Ok(())
}

/// Changes that actually do something.
pub fn effective(changes: &[Change]) -> Vec<Change> {
    changes.iter().filter(|c| c.action != Action::NoOp).cloned().collect()
}

pub use diff::Summary;

#[cfg(test)]
mod status_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_machine_saved_without_a_status_attribute_takes_it_from_its_outputs() {
        let old = LiveResource {
            address: Address::new(Kind::Machine, "pg-1"),
            id: "fhm1".into(),
            attrs: [("cores".to_string(), json!(2))].into_iter().collect(),
            outputs: [("status".to_string(), json!("RUNNING"))].into_iter().collect(),
        };
        assert_eq!(status_as_attribute(old.clone()).attrs.get("status"), Some(&json!("RUNNING")));
        let mut newer = old;
        newer.attrs.insert("status".into(), json!("STOPPED"));
        assert_eq!(status_as_attribute(newer).attrs.get("status"), Some(&json!("STOPPED")), "an attribute already there stands");
    }
}
