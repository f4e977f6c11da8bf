//! Typed changes: what the plan wants against what exists, field by field.
//! Computing a change is kept apart from showing it (see `ui::plan`).

use crate::cloud::resource::{Address, Attrs, Kind, LiveResource, ResourceSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    NoOp,
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::NoOp => " ",
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Change {
    pub address: Address,
    pub action: Action,
    /// What the plan wants (absent for a delete).
    pub spec: Option<ResourceSpec>,
    /// What exists (absent for a create).
    pub live: Option<LiveResource>,
    /// Fields whose value differs.
    pub changed: Vec<String>,
    /// The subset of `changed` that cannot be changed in place.
    pub replace_because: Vec<String>,
    /// Why rigger will not carry this change out, and what the user can do
    /// (the provider's words, e.g. an instance in ERROR): the plan shows it
    /// apart from the changes rigger makes, and cannot be applied as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

impl Change {
    pub fn before(&self) -> Option<&Attrs> {
        self.live.as_ref().map(|l| &l.attrs)
    }
    pub fn after(&self) -> Option<&Attrs> {
        self.spec.as_ref().map(|s| &s.attrs)
    }
    /// Something differs from the plan, and rigger will not change it.
    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some() && self.action != Action::NoOp
    }
}

/// Compare every spec with the live resource of the same address; live
/// resources no spec asks for are deleted. Only fields the spec names are
/// compared (a provider may report more).
pub fn compute(specs: &[ResourceSpec], live: &[LiveResource]) -> Vec<Change> {
    let live_by_addr: BTreeMap<&Address, &LiveResource> = live.iter().map(|l| (&l.address, l)).collect();
    let mut changes = Vec::new();
    for spec in specs {
        let change = match live_by_addr.get(&spec.address) {
            None => Change { address: spec.address.clone(), action: Action::Create, spec: Some(spec.clone()), live: None, changed: spec.attrs.keys().cloned().collect(), replace_because: vec![], blocked: None },
            Some(l) => {
                let changed: Vec<String> = spec.attrs.iter().filter(|(k, v)| l.attrs.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
                let replace_because: Vec<String> = changed.iter().filter(|k| spec.replace_on.contains(*k)).cloned().collect();
                let action = if changed.is_empty() {
                    Action::NoOp
                } else if !replace_because.is_empty() {
                    Action::Replace
                } else {
                    Action::Update
                };
                Change { address: spec.address.clone(), action, spec: Some(spec.clone()), live: Some((*l).clone()), changed, replace_because, blocked: None }
            }
        };
        changes.push(change);
    }
    for l in live {
        if !specs.iter().any(|s| s.address == l.address) {
            changes.push(Change { address: l.address.clone(), action: Action::Delete, spec: None, live: Some(l.clone()), changed: vec![], replace_because: vec![], blocked: None });
        }
    }
    changes.sort_by(|a, b| (a.address.kind, &a.address.name).cmp(&(b.address.kind, &b.address.name)));
    changes
}

/// Terraform's counting: a replacement is one add and one destroy. A blocked
/// change is counted apart: rigger does not make it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    /// Resources that differ from the plan but that rigger will not change.
    #[serde(default)]
    pub blocked: usize,
}

impl Summary {
    pub fn of(changes: &[Change]) -> Summary {
        let mut s = Summary::default();
        for c in changes {
            if c.is_blocked() {
                s.blocked += 1;
                continue;
            }
            match c.action {
                Action::Create => s.add += 1,
                Action::Update => s.change += 1,
                Action::Replace => {
                    s.add += 1;
                    s.destroy += 1
                }
                Action::Delete => s.destroy += 1,
                Action::NoOp => {}
            }
        }
        s
    }
    /// Nothing rigger would do (blocked changes are not done either).
    pub fn is_empty(&self) -> bool {
        self.add == 0 && self.change == 0 && self.destroy == 0
    }
}

/// Delete order without a stored graph: machines before the firewall groups,
/// subnets and networks they sit in.
pub fn delete_rank(kind: Kind) -> u8 {
    match kind {
        Kind::Machine => 0,
        Kind::Firewall => 1,
        Kind::Subnet => 2,
        Kind::Network => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(name: &str, attrs: serde_json::Value, replace_on: &[&str]) -> ResourceSpec {
        ResourceSpec {
            address: Address::new(Kind::Machine, name),
            depends_on: vec![],
            attrs: serde_json::from_value(attrs).unwrap(),
            replace_on: replace_on.iter().map(|s| s.to_string()).collect(),
            sensitive: Default::default(),
        }
    }
    fn live(name: &str, attrs: serde_json::Value) -> LiveResource {
        LiveResource { address: Address::new(Kind::Machine, name), id: name.into(), attrs: serde_json::from_value(attrs).unwrap(), outputs: Default::default() }
    }

    #[test]
    fn actions() {
        let specs = vec![
            spec("same", json!({"cores": 1}), &["image"]),
            spec("more-cores", json!({"cores": 2, "image": "a"}), &["image"]),
            spec("new-image", json!({"cores": 1, "image": "b"}), &["image"]),
            spec("new", json!({"cores": 1}), &[]),
        ];
        let lives = vec![
            live("same", json!({"cores": 1, "extra": "reported only"})),
            live("more-cores", json!({"cores": 1, "image": "a"})),
            live("new-image", json!({"cores": 1, "image": "a"})),
            live("gone", json!({})),
        ];
        let changes = compute(&specs, &lives);
        let action = |n: &str| changes.iter().find(|c| c.address.name == n).unwrap().action;
        assert_eq!(action("same"), Action::NoOp);
        assert_eq!(action("more-cores"), Action::Update);
        assert_eq!(action("new-image"), Action::Replace);
        assert_eq!(action("new"), Action::Create);
        assert_eq!(action("gone"), Action::Delete);
        let r = changes.iter().find(|c| c.address.name == "new-image").unwrap();
        assert_eq!(r.replace_because, vec!["image".to_string()]);
        assert_eq!(Summary::of(&changes), Summary { add: 2, change: 1, destroy: 2, blocked: 0 });

        // A blocked change is counted apart, not as a change rigger makes.
        let mut blocked = changes.clone();
        blocked.iter_mut().find(|c| c.address.name == "more-cores").unwrap().blocked = Some("instance is ERROR".into());
        assert_eq!(Summary::of(&blocked), Summary { add: 2, change: 0, destroy: 2, blocked: 1 });
    }
}
