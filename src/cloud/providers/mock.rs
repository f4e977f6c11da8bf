//! An in-memory cloud behind the `Provider` trait, for the engine's unit
//! tests. It keeps the provider contract strictly and refuses what a real
//! cloud would refuse: a create whose dependencies do not exist (in the cloud
//! and in `deps`), an update that touches a field only a replacement may
//! change, a delete of something another resource still sits in. Creating
//! what exists adopts it (the contract's retry after a lost answer). Every
//! call is logged; a test can make chosen creates fail.

use super::{Deps, Provider};
use rigger_events::Events;
use crate::plan::model::Plan;
use crate::cloud::resource::{Address, Attrs, Kind, LiveResource, ResourceSpec};
use anyhow::{bail, Result};
use async_trait::async_trait;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Create(Address),
    Update(Address, Vec<String>),
    Delete(Address),
}

#[derive(Default)]
pub struct MockProvider {
    /// What `specs` returns: the plan in the provider's terms.
    pub wanted: Mutex<Vec<ResourceSpec>>,
    /// What exists.
    pub cloud: Mutex<BTreeMap<Address, LiveResource>>,
    pub calls: Mutex<Vec<Call>>,
    /// Creates of these fail (an API error), until removed.
    pub failing: Mutex<BTreeSet<Address>>,
    next_id: Mutex<u64>,
}

impl MockProvider {
    pub fn new(wanted: Vec<ResourceSpec>) -> MockProvider {
        MockProvider { wanted: Mutex::new(wanted), ..Default::default() }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    pub fn cloud(&self) -> BTreeMap<Address, LiveResource> {
        self.cloud.lock().expect("cloud").clone()
    }

    fn log(&self, call: Call) {
        self.calls.lock().expect("calls").push(call);
    }

    fn depends_on(live: &LiveResource) -> Vec<Address> {
        live.outputs.get("depends_on").and_then(|v| v.as_array()).into_iter().flatten().filter_map(|v| v.as_str()).filter_map(Address::parse).collect()
    }
}

/// A spec for tests: `kind.name` depending on `deps`, with `attrs`, replaced when a field of `replace_on` changes.
pub fn spec(address: &str, deps: &[&str], attrs: serde_json::Value, replace_on: &[&str]) -> ResourceSpec {
    let attrs: Attrs = attrs.as_object().cloned().unwrap_or_default().into_iter().collect();
    ResourceSpec {
        address: Address::parse(address).expect("address"),
        depends_on: deps.iter().map(|d| Address::parse(d).expect("address")).collect(),
        attrs,
        replace_on: replace_on.iter().map(|s| s.to_string()).collect(),
        sensitive: BTreeSet::new(),
    }
}

#[async_trait]
impl Provider for MockProvider {
    fn kind(&self) -> &'static str {
        "mock"
    }

    fn specs(&self, _plan: &Plan) -> Result<Vec<ResourceSpec>> {
        Ok(self.wanted.lock().expect("wanted").clone())
    }

    async fn refresh(&self, _known: &[LiveResource], _events: &Events) -> Result<Vec<LiveResource>> {
        Ok(self.cloud().into_values().collect())
    }

    async fn create(&self, spec: &ResourceSpec, deps: &Deps, _events: &Events) -> Result<LiveResource> {
        // Let other workers run in between, as over the network.
        tokio::task::yield_now().await;
        self.log(Call::Create(spec.address.clone()));
        if self.failing.lock().expect("failing").contains(&spec.address) {
            bail!("{}: the API answered 500 Internal Server Error", spec.address);
        }
        let mut cloud = self.cloud.lock().expect("cloud");
        if let Some(existing) = cloud.get(&spec.address) {
            return Ok(existing.clone());
        }
        for d in &spec.depends_on {
            let Some(there) = cloud.get(d) else { bail!("{}: {d} does not exist yet", spec.address) };
            if deps.get(d).map(|l| &l.id) != Some(&there.id) {
                bail!("{}: was handed no live id (or a stale one) for {d}", spec.address);
            }
        }
        let mut id = self.next_id.lock().expect("ids");
        *id += 1;
        let mut outputs = Attrs::new();
        outputs.insert("depends_on".into(), json!(spec.depends_on.iter().map(|a| a.to_string()).collect::<Vec<_>>()));
        if spec.address.kind == Kind::Machine {
            outputs.insert("ssh_host".into(), json!(format!("192.0.2.{}", *id)));
        }
        let live = LiveResource { address: spec.address.clone(), id: format!("mock-{}", *id), attrs: spec.attrs.clone(), outputs };
        cloud.insert(spec.address.clone(), live.clone());
        Ok(live)
    }

    async fn update(&self, spec: &ResourceSpec, live: &LiveResource, _deps: &Deps, _events: &Events) -> Result<LiveResource> {
        tokio::task::yield_now().await;
        let changed: Vec<String> = spec.attrs.iter().filter(|(k, v)| live.attrs.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
        self.log(Call::Update(spec.address.clone(), changed.clone()));
        if let Some(field) = changed.iter().find(|f| spec.replace_on.contains(*f)) {
            bail!("{}: {field} cannot be changed in place", spec.address);
        }
        let mut cloud = self.cloud.lock().expect("cloud");
        let Some(there) = cloud.get_mut(&spec.address) else { bail!("{}: not found", spec.address) };
        there.attrs.extend(spec.attrs.clone());
        Ok(there.clone())
    }

    async fn delete(&self, live: &LiveResource, _events: &Events) -> Result<()> {
        tokio::task::yield_now().await;
        self.log(Call::Delete(live.address.clone()));
        let mut cloud = self.cloud.lock().expect("cloud");
        if let Some(user) = cloud.values().find(|other| Self::depends_on(other).contains(&live.address)) {
            bail!("{}: {} still uses it", live.address, user.address);
        }
        cloud.remove(&live.address);
        Ok(())
    }
}
