//! What every role answers: the `Role` trait. Each role module implements it
//! on a unit struct, and the registry (`registry.rs`) lists those objects, so
//! the config phase asks the registry instead of matching on role names.

use crate::hosts::ops::HostDesired;
use crate::hosts::run::RoleRun;
use crate::flows::FlowSink;
use crate::plan::diag::Diags;
use crate::plan::model::{Host, Network, Plan};
use crate::plan::yaml::{Node, Pos};
use crate::plan::services::Setting;
use crate::hosts::remote::ahead::Ask;
use crate::render::Renderer;
use anyhow::Result;
use async_trait::async_trait;
use serde_json::Value;
use std::collections::BTreeMap;

/// What a role reads to say what one host should look like.
pub struct HostInput<'a> {
    pub plan: &'a Plan,
    pub host: &'a Host,
    pub secrets: &'a BTreeMap<String, String>,
    pub renderer: &'a Renderer,
    /// The template context (`roles::template_context`) for this host.
    pub ctx: &'a Value,
}

/// What a role's cluster owes beyond its files and services, read from its
/// probes (shown by `plan`, carried out by the role's bring-up).
#[derive(Default)]
pub struct ClusterChanges {
    /// Settings to change in the cluster's own store: (name, now, wanted).
    pub parameters: Vec<(String, Option<String>, String)>,
    /// Hosts whose daemon owes a restart.
    pub pending_restarts: Vec<String>,
    /// What could not be read although the daemon runs (its API did not
    /// answer): the plan cannot say whether it owes a change there.
    pub unread: Vec<String>,
}

/// What `rigger output` knows of a built stack, for the roles to describe
/// where they answer (`Role::outputs`).
pub struct Outputs<'a> {
    pub plan: &'a Plan,
    pub state: &'a crate::state::State,
    pub show_secrets: bool,
}

impl Outputs<'_> {
    /// The addresses of the built hosts (machines in the state) that have `role`.
    pub fn ips(&self, role: &str) -> Vec<String> {
        let exists = |name: &str| self.state.machines().any(|m| m.address.name == name);
        self.plan.hosts_with_role(role).filter(|h| exists(&h.name)).map(|h| h.ip.to_string()).collect()
    }

    /// A setting as the plan has it (null when the plan lacks it).
    pub fn setting(&self, role: &str, key: &str) -> Value {
        self.plan.setting(role, key).cloned().unwrap_or(Value::Null)
    }

    /// A secret of the state, masked unless --show-secrets.
    pub fn secret(&self, name: &str) -> Value {
        match self.state.secrets.get(name) {
            Some(v) if self.show_secrets => Value::String(v.clone()),
            Some(_) => Value::String(crate::commands::output::MASK.into()),
            None => Value::Null,
        }
    }
}

/// What a role's plan check reads (`Role::check`): the expanded hosts, the
/// services with their defaults applied, the network, and the file's nodes
/// for positions.
pub struct PlanCheck<'a> {
    pub hosts: &'a [Host],
    pub services: &'a BTreeMap<String, BTreeMap<String, Value>>,
    pub network: &'a Network,
    pub root: &'a Node,
    pub role_pos: &'a dyn Fn(&str) -> Pos,
}

impl PlanCheck<'_> {
    /// The hosts that have `role`.
    pub fn with(&self, role: &str) -> Vec<&Host> {
        self.hosts.iter().filter(|h| h.has_role(role)).collect()
    }

    /// When the plan uses `role`, each of `needed` (a role, and what `role`
    /// uses it for) must be on some host: found here, before any machine
    /// exists, not when the config phase renders `role`'s files.
    pub fn require(&self, role: &str, needed: &[(&str, &str)], d: &mut Diags) {
        if self.with(role).is_empty() {
            return;
        }
        for (other, why) in needed.iter().filter(|(other, _)| self.with(other).is_empty()) {
            d.error(self.role_pos(role), format!("the role `{role}` needs a host with the role `{other}` ({why}) — add `{other}` to a host, or remove `{role}`"));
        }
    }

    /// Where the plan first gives a host `role` (the position of its errors).
    pub fn role_pos(&self, role: &str) -> Pos {
        (self.role_pos)(role)
    }

    /// A setting after validation (defaults applied).
    pub fn setting(&self, role: &str, key: &str) -> Option<&Value> {
        self.services.get(role).and_then(|s| s.get(key))
    }

    /// The file's node of `services.<role>.<key>`, when the plan writes it.
    pub fn setting_node(&self, role: &str, key: &str) -> Option<&Node> {
        self.root.get("services").and_then(|s| s.get(role)).and_then(|k| k.get(key))
    }
}

#[async_trait]
pub trait Role: Sync {
    /// The plan's `roles:` value.
    fn name(&self) -> &'static str;

    /// Roles healthy before this one starts (roles absent from a plan are
    /// ignored; its staging — packages, uploads — does not wait for them).
    fn needs(&self) -> &'static [&'static str] {
        &[]
    }

    /// The settings the role takes under `services: NAME:`, with their
    /// types and defaults (the only place a default is written).
    fn settings(&self) -> &'static [Setting] {
        &[]
    }

    /// The secrets the role needs, generated once and kept in the state.
    fn secrets(&self) -> &'static [&'static str] {
        &[]
    }

    /// The flows the role needs between hosts (`flows::flows`: rendered into
    /// pg_hba and listen addresses, checked against the plan's firewall).
    fn flows(&self, _net: &mut FlowSink<'_>) {}

    /// The ports the role listens on, as the settings that choose them:
    /// (role owning the setting, key).
    fn listens(&self, _plan: &Plan) -> Vec<(&'static str, &'static str)> {
        vec![]
    }

    /// The Ansible inventory variables of the role's group: (variable, the
    /// setting it carries).
    fn inventory_vars(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// What `rigger output` shows for the role: where it answers, how to log in.
    fn outputs(&self, _at: &Outputs<'_>, _out: &mut serde_json::Map<String, Value>) {}

    /// What the role needs of the plan beyond its settings' types (a quorum,
    /// the roles it relies on), as errors at the plan's positions.
    fn check(&self, _at: &PlanCheck<'_>, _d: &mut Diags) {}

    /// Services a host departing from this role stops (reshape::drain).
    fn services(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether the role runs on `host`: the plan gave the host this role.
    fn applies_to(&self, host: &Host) -> bool {
        host.roles.iter().any(|r| r == self.name())
    }

    /// The packages, files and services the role wants on one host.
    fn desired(&self, at: &HostInput<'_>) -> Result<HostDesired>;

    /// The health gate's commands on `host`, asked ahead in the facts round
    /// trip (remote::ahead). None: the gate asks live.
    fn gate_asks(&self, _plan: &Plan, _host: &Host, _secrets: &BTreeMap<String, String>) -> Vec<Ask> {
        vec![]
    }

    /// The gate's commands this role runs on hosts of OTHER roles (the app's
    /// database checks on the Patroni members), asked ahead there. Called for
    /// every host of a plan that has this role.
    fn gate_asks_elsewhere(&self, _plan: &Plan, _host: &Host, _secrets: &BTreeMap<String, String>) -> Vec<Ask> {
        vec![]
    }

    /// Extra facts gathered on the role's hosts: (name, command).
    fn probes(&self, _plan: &Plan) -> Vec<(String, String)> {
        vec![]
    }

    /// The cluster changes the facts' probes show (`facts`: every
    /// configured host's).
    fn cluster_changes(&self, _plan: &Plan, _facts: &BTreeMap<&str, &crate::hosts::facts::HostFacts>) -> ClusterChanges {
        ClusterChanges::default()
    }

    /// Work done with the staging, before the roles it needs are up (the
    /// app's user and virtualenv).
    async fn prepare(&self, _run: &RoleRun<'_>) -> Result<()> {
        Ok(())
    }

    /// Start, restart or reload what changed and wait at the health gate.
    async fn converge(&self, run: &RoleRun<'_>) -> Result<()>;
}
