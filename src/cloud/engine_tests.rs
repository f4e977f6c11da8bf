//! The cloud engine (engine.rs) against the in-memory provider
//! (providers::mock): order, idempotence, partial failure and recovery,
//! destroy order, update against replace. No cloud, no root, milliseconds.

use crate::cloud::diff::{self, Action, Change};
use crate::cloud::engine::{self, Applier, Shared};
use rigger_events::Events;
use crate::project::Project;
use crate::cloud::providers::mock::{spec, Call, MockProvider};
use crate::cloud::resource::{Address, ResourceSpec};
use crate::state::{State, StateStore};
use anyhow::Result;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Mutex;

const PLAN: &str = "version: 1\nproject: hf-engine\nprovider: { kind: local }\nssh: { user: rigger, private_key_file: ./k }\n\
    network: { name: main, subnets: [ { name: app, cidr: 10.9.0.0/24 } ] }\nhosts:\n  - { name: a, ip: 10.9.0.11 }\n";

fn wanted() -> Vec<ResourceSpec> {
    let machine = |cores: u64| json!({ "cores": cores, "image": "debian-12" });
    vec![
        spec("machine.b", &["subnet.app", "firewall.inside"], machine(1), &["image"]),
        spec("network.main", &[], json!({ "name": "main" }), &[]),
        spec("firewall.inside", &["network.main"], json!({ "rules": ["tcp/22"] }), &[]),
        spec("subnet.app", &["network.main"], json!({ "cidr": "10.9.0.0/24" }), &["cidr"]),
        spec("machine.a", &["subnet.app", "firewall.inside"], machine(2), &["image"]),
    ]
}

struct Cloud {
    _dir: tempfile::TempDir,
    provider: Arc<MockProvider>,
    applier: Applier,
}

impl Cloud {
    fn new() -> Cloud {
        let dir = tempfile::tempdir().expect("temp dir");
        let plan = crate::plan::load_str(&dir.path().join("plan.yaml"), PLAN).unwrap_or_else(|e| panic!("{e:#}"));
        let project = Arc::new(Project { state_path: dir.path().join(".rigger/hf-engine.state.json"), plan });
        let store = StateStore::open(&project.state_path, "test").expect("state store");
        let shared = Arc::new(Mutex::new(Shared::new(store, State::new("hf-engine", "mock"), project.clone())));
        let provider = Arc::new(MockProvider::new(wanted()));
        let applier = Applier { provider: provider.clone(), project, shared, events: Events::silent(), parallelism: 4 };
        Cloud { _dir: dir, provider, applier }
    }

    /// What `apply` does with the cloud: refresh, diff, carry out what changes.
    async fn changes(&self) -> Result<Vec<Change>> {
        let specs = engine::specs(self.applier.provider.as_ref(), &self.applier.project)?;
        let state = self.applier.shared.lock().await.state.clone();
        let live = engine::refresh(self.applier.provider.as_ref(), &state, true, &Events::silent()).await?;
        self.applier.record_refresh(&live).await?;
        Ok(engine::effective(&diff::compute(&specs, &live)))
    }

    async fn apply(&self) -> Result<Vec<Change>> {
        let changes = self.changes().await?;
        self.applier.apply(&changes).await?;
        Ok(changes)
    }

    /// What `destroy` does: delete everything that exists.
    async fn destroy(&self) -> Result<()> {
        let state = self.applier.shared.lock().await.state.clone();
        let live = engine::refresh(self.applier.provider.as_ref(), &state, true, &Events::silent()).await?;
        let changes: Vec<Change> = live.into_iter().map(|l| Change { address: l.address.clone(), action: Action::Delete, spec: None, live: Some(l), changed: vec![], replace_because: vec![], blocked: None }).collect();
        self.applier.apply(&changes).await
    }

    async fn saved(&self) -> Vec<Address> {
        self.applier.shared.lock().await.state.resources.keys().cloned().collect()
    }

    /// The state as saved on disk (not the copy in memory).
    fn on_disk(&self) -> State {
        crate::state::read_state(&self.applier.project.state_path).expect("state readable").expect("state saved")
    }
}

fn a(s: &str) -> Address {
    Address::parse(s).unwrap()
}

fn position(calls: &[Call], call: Call) -> usize {
    calls.iter().position(|c| *c == call).unwrap_or_else(|| panic!("{call:?} was not made: {calls:?}"))
}

#[tokio::test]
async fn what_is_missing_is_created_in_dependency_order_and_a_second_run_changes_nothing() {
    let cloud = Cloud::new();
    let changes = cloud.apply().await.unwrap();
    assert_eq!(changes.len(), 5);
    let calls = cloud.provider.calls();
    assert_eq!(calls.len(), 5, "{calls:?}");
    let at = |s: &str| position(&calls, Call::Create(a(s)));
    assert!(at("network.main") < at("subnet.app") && at("network.main") < at("firewall.inside"), "{calls:?}");
    for m in ["machine.a", "machine.b"] {
        assert!(at("subnet.app") < at(m) && at("firewall.inside") < at(m), "{calls:?}");
    }
    // The state on disk knows every resource by its cloud id.
    let state = cloud.on_disk();
    assert_eq!(state.resources.len(), 5);
    assert_eq!(state.resources[&a("machine.a")].id, cloud.provider.cloud()[&a("machine.a")].id);

    let again = cloud.apply().await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(cloud.provider.calls().len(), 5, "a second run calls nothing");
}

#[tokio::test]
async fn a_failure_keeps_what_finished_and_a_rerun_converges_without_duplicates() {
    let cloud = Cloud::new();
    cloud.provider.failing.lock().unwrap().insert(a("firewall.inside"));
    let err = format!("{:#}", cloud.apply().await.unwrap_err());
    assert!(err.contains("firewall.inside: firewall.inside: the API answered 500"), "{err}");
    assert!(err.contains("not attempted because something they need failed: machine.a, machine.b"), "{err}");
    // What finished is saved (on disk, not only in memory); the machines were not tried.
    let saved: Vec<Address> = cloud.on_disk().resources.into_keys().collect();
    assert_eq!(saved, vec![a("network.main"), a("subnet.app")]);
    assert!(!cloud.provider.calls().contains(&Call::Create(a("machine.a"))));

    cloud.provider.failing.lock().unwrap().clear();
    let changes = cloud.apply().await.unwrap();
    let mut created: Vec<String> = changes.iter().map(|c| c.address.to_string()).collect();
    created.sort();
    assert_eq!(created, vec!["firewall.inside", "machine.a", "machine.b"], "only what is missing is created again");
    assert_eq!(cloud.provider.cloud().len(), 5, "no duplicates");
    assert_eq!(cloud.saved().await.len(), 5);
    assert!(cloud.apply().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_lost_answer_is_adopted_on_the_next_run() {
    // The cloud made the subnet, but the state never heard of it (a killed run).
    let cloud = Cloud::new();
    cloud.apply().await.unwrap();
    cloud.applier.shared.lock().await.state.resources.remove(&a("subnet.app"));
    let changes = cloud.apply().await.unwrap();
    assert!(changes.is_empty(), "refresh finds the subnet: {changes:?}");
    assert!(cloud.saved().await.contains(&a("subnet.app")));
    assert_eq!(cloud.provider.cloud().len(), 5);
}

#[tokio::test]
async fn destroy_deletes_dependents_before_what_they_sit_in() {
    let cloud = Cloud::new();
    cloud.apply().await.unwrap();
    cloud.destroy().await.unwrap();
    let calls = cloud.provider.calls();
    let at = |s: &str| position(&calls, Call::Delete(a(s)));
    for m in ["machine.a", "machine.b"] {
        assert!(at(m) < at("subnet.app") && at(m) < at("firewall.inside"), "{calls:?}");
    }
    assert!(at("subnet.app") < at("network.main") && at("firewall.inside") < at("network.main"), "{calls:?}");
    assert!(cloud.provider.cloud().is_empty());
    assert!(cloud.on_disk().resources.is_empty());
    // Nothing left: the plan is all creates again.
    assert_eq!(cloud.changes().await.unwrap().len(), 5);
}

#[tokio::test]
async fn a_changed_field_updates_in_place_or_replaces_as_the_diff_says() {
    let cloud = Cloud::new();
    cloud.apply().await.unwrap();
    let old_b = cloud.provider.cloud()[&a("machine.b")].id.clone();
    {
        let mut wanted = cloud.provider.wanted.lock().unwrap();
        for s in wanted.iter_mut() {
            match s.address.to_string().as_str() {
                "machine.a" => s.attrs.insert("cores".into(), json!(4)),
                "machine.b" => s.attrs.insert("image".into(), json!("debian-13")),
                _ => None,
            };
        }
    }
    let changes = cloud.changes().await.unwrap();
    let action = |s: &str| changes.iter().find(|c| c.address == a(s)).map(|c| c.action);
    assert_eq!((action("machine.a"), action("machine.b")), (Some(Action::Update), Some(Action::Replace)));
    assert_eq!(changes.len(), 2, "{changes:?}");
    let before = cloud.provider.calls().len();
    cloud.applier.apply(&changes).await.unwrap();
    let calls = cloud.provider.calls()[before..].to_vec();
    assert!(calls.contains(&Call::Update(a("machine.a"), vec!["cores".into()])), "{calls:?}");
    assert!(position(&calls, Call::Delete(a("machine.b"))) < position(&calls, Call::Create(a("machine.b"))), "{calls:?}");
    let now = cloud.provider.cloud();
    assert_eq!(now[&a("machine.a")].attrs["cores"], json!(4));
    assert_ne!(now[&a("machine.b")].id, old_b, "a replaced machine is a new one");
    assert_eq!(cloud.on_disk().resources[&a("machine.b")].id, now[&a("machine.b")].id);
    assert!(cloud.apply().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_target_brings_only_its_machine_and_what_it_needs() {
    let cloud = Cloud::new();
    let specs = cloud.provider.wanted.lock().unwrap().clone();
    let changes = cloud.changes().await.unwrap();
    let only_a = engine::restrict_to_targets(changes.clone(), &specs, &["a".into()]).unwrap();
    let mut names: Vec<String> = only_a.iter().map(|c| c.address.to_string()).collect();
    names.sort();
    assert_eq!(names, ["firewall.inside", "machine.a", "network.main", "subnet.app"]);
    cloud.applier.apply(&only_a).await.unwrap();
    assert!(!cloud.provider.cloud().contains_key(&a("machine.b")));
    // A name that is no host of the plan is refused.
    let err = engine::restrict_to_targets(changes, &specs, &["aa".into()]).unwrap_err().to_string();
    assert!(err.contains("--target aa: no such host in the plan"), "{err}");
}
