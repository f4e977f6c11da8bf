//! Hand the built hosts to other tools: Ansible (INI, YAML, dynamic JSON) and
//! ssh_config. Built from the state (what exists), labelled by the plan (roles,
//! groups). Never carries a secret: passwords stay in the state.

use crate::plan::model::Plan;
use crate::project::Project;
use crate::state::State;
use anyhow::Result;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One machine as other tools see it.
#[derive(Debug, Clone)]
pub struct InvHost {
    pub name: String,
    /// The address to dial (public when there is one and no bastion in between).
    pub ansible_host: String,
    pub vars: BTreeMap<String, Value>,
}

#[derive(Debug, Clone)]
pub struct Inventory {
    pub project: String,
    pub hosts: Vec<InvHost>,
    /// Group name → member host names, in plan order.
    pub groups: BTreeMap<String, Vec<String>>,
    pub all_vars: BTreeMap<String, Value>,
    pub known_hosts: PathBuf,
    pub key_file: PathBuf,
    pub user: String,
    pub bastion: Option<String>,
}

/// Ansible group names may not contain dashes.
pub fn group_name(s: &str) -> String {
    s.replace('-', "_")
}

fn abs(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Ports and facts worth having per role, from the plan's service settings
/// (`Role::inventory_vars` names them).
fn role_vars(plan: &Plan, role: &str) -> Vec<(String, Value)> {
    let vars = crate::hosts::roles::registry::get(role).map_or(&[][..], |r| r.inventory_vars());
    vars.iter().map(|(var, key)| (var.to_string(), plan.setting(role, key).cloned().unwrap_or(Value::Null))).collect()
}

pub fn build(project: &Project, state: &State) -> Inventory {
    let plan = &project.plan;
    let targets = crate::hosts::remote::targets(project, state);
    let mut hosts = Vec::new();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Plan order, then anything the state has that the plan no longer names.
    let mut names: Vec<String> = plan.hosts.iter().map(|h| h.name.clone()).collect();
    for m in state.machines() {
        if !names.contains(&m.address.name) {
            names.push(m.address.name.clone());
        }
    }
    for name in names {
        let Some(live) = state.machines().find(|m| m.address.name == name) else { continue };
        let Some(target) = targets.iter().find(|t| t.name == name) else { continue };
        let mut vars: BTreeMap<String, Value> = BTreeMap::new();
        for (k, out) in [("private_ip", "private_ip"), ("public_ip", "public_ip"), ("zone", "zone"), ("node", "node"), ("vmid", "vmid")] {
            if let Some(v) = live.outputs.get(out).filter(|v| !v.is_null()) {
                vars.insert(k.to_string(), v.clone());
            }
        }
        vars.insert("rigger_id".into(), json!(live.id));
        if let Some(h) = plan.host(&name) {
            vars.insert("rigger_roles".into(), json!(h.roles));
            vars.insert("rigger_group".into(), json!(h.group));
            vars.insert("subnet".into(), json!(h.subnet));
            for role in &h.roles {
                for (k, v) in role_vars(plan, role) {
                    vars.insert(k, v);
                }
                groups.entry(group_name(role)).or_default().push(name.clone());
            }
            if h.name != h.group {
                groups.entry(group_name(&h.group)).or_default().push(name.clone());
            }
        }
        hosts.push(InvHost { name, ansible_host: target.host.clone(), vars });
    }
    for members in groups.values_mut() {
        members.dedup();
    }
    let mut all_vars = BTreeMap::new();
    let known_hosts = abs(&project.known_hosts_path());
    let key_file = abs(&plan.ssh.private_key_file);
    all_vars.insert("ansible_user".into(), json!(plan.ssh.user));
    all_vars.insert("ansible_ssh_private_key_file".into(), json!(key_file.display().to_string()));
    let mut common = strict_options(&known_hosts);
    let bastion = plan.ssh.bastion.clone().filter(|b| targets.iter().any(|t| &t.name == b));
    if let Some(jump) = targets.iter().find_map(|t| t.jump.clone()) {
        // The jump's own ssh needs the same strict options.
        common.push_str(&format!(
            " -o ProxyCommand=\"ssh {} -i {} -W %h:%p {jump}\"",
            strict_options(&known_hosts),
            key_file.display()
        ));
    }
    all_vars.insert("ansible_ssh_common_args".into(), json!(common));
    all_vars.insert("rigger_project".into(), json!(plan.project));
    Inventory { project: plan.project.clone(), hosts, groups, all_vars, known_hosts, key_file, user: plan.ssh.user.clone(), bastion }
}

/// ssh's options for the project's hosts: their keys are the project's
/// known_hosts and nothing else (not the system-wide /etc/ssh/ssh_known_hosts,
/// which rigger does not keep), checked strictly; only the project's key.
fn strict_options(known_hosts: &Path) -> String {
    format!("-o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes", known_hosts.display())
}

fn ini_value(v: &Value) -> String {
    match v {
        Value::String(s) if s.contains(' ') || s.contains('"') => format!("'{}'", s.replace('\'', "\\'")),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Inventory {
    /// Host vars for one host; the bastion itself is dialled directly.
    fn host_vars(&self, h: &InvHost) -> BTreeMap<String, Value> {
        let mut vars = h.vars.clone();
        vars.insert("ansible_host".into(), json!(h.ansible_host));
        if self.bastion.as_deref() == Some(h.name.as_str()) {
            vars.insert(
                "ansible_ssh_common_args".into(),
                json!(strict_options(&self.known_hosts)),
            );
        }
        vars
    }

    pub fn to_ini(&self) -> String {
        let mut out = format!("# rigger inventory of project {} — generated from the state; run `rigger inventory` again after changes.\n\n", self.project);
        out.push_str("[all]\n");
        for h in &self.hosts {
            let vars: Vec<String> = self.host_vars(h).iter().map(|(k, v)| format!("{k}={}", ini_value(v))).collect();
            out.push_str(&format!("{} {}\n", h.name, vars.join(" ")));
        }
        out.push_str("\n[all:vars]\n");
        for (k, v) in &self.all_vars {
            out.push_str(&format!("{k}={}\n", ini_value(v)));
        }
        for (g, members) in &self.groups {
            out.push_str(&format!("\n[{g}]\n"));
            for m in members {
                out.push_str(&format!("{m}\n"));
            }
        }
        out
    }

    /// The YAML inventory plugin's shape: all → hosts, vars, children.
    pub fn to_yaml_value(&self) -> Value {
        let hosts: Map<String, Value> = self.hosts.iter().map(|h| (h.name.clone(), json!(self.host_vars(h)))).collect();
        let children: Map<String, Value> = self
            .groups
            .iter()
            .map(|(g, members)| (g.clone(), json!({ "hosts": members.iter().map(|m| (m.clone(), Value::Null)).collect::<Map<String, Value>>() })))
            .collect();
        json!({ "all": { "hosts": hosts, "vars": self.all_vars, "children": children } })
    }

    pub fn to_yaml(&self) -> Result<String> {
        let header = format!("# rigger inventory of project {} — generated from the state.\n", self.project);
        Ok(header + &serde_yaml_ng::to_string(&self.to_yaml_value())?)
    }

    /// Ansible's dynamic inventory `--list` document (with `_meta.hostvars`).
    pub fn to_list_json(&self) -> Value {
        let mut doc = Map::new();
        let hostvars: Map<String, Value> = self.hosts.iter().map(|h| (h.name.clone(), json!(self.host_vars(h)))).collect();
        doc.insert("_meta".into(), json!({ "hostvars": hostvars }));
        let mut children: Vec<String> = self.groups.keys().cloned().collect();
        children.push("ungrouped".into());
        doc.insert("all".into(), json!({ "hosts": self.hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>(), "vars": self.all_vars, "children": children }));
        for (g, members) in &self.groups {
            doc.insert(g.clone(), json!({ "hosts": members }));
        }
        doc.insert("ungrouped".into(), json!({ "hosts": [] }));
        Value::Object(doc)
    }

    /// `--host NAME`: that host's variables (all:vars merged in, as the script protocol expects them to stand alone).
    pub fn host_json(&self, name: &str) -> Value {
        match self.hosts.iter().find(|h| h.name == name) {
            Some(h) => json!(self.host_vars(h)),
            None => json!({}),
        }
    }

    pub fn to_ssh_config(&self) -> String {
        let mut out = format!("# rigger ssh_config of project {} — use with `ssh -F <this file> <host>`.\n", self.project);
        for h in &self.hosts {
            out.push_str(&format!("\nHost {}\n", h.name));
            out.push_str(&format!("  HostName {}\n", h.ansible_host));
            out.push_str(&format!("  User {}\n", self.user));
            out.push_str(&format!("  IdentityFile {}\n", self.key_file.display()));
            out.push_str("  IdentitiesOnly yes\n");
            out.push_str(&format!("  UserKnownHostsFile {}\n", self.known_hosts.display()));
            out.push_str("  GlobalKnownHostsFile /dev/null\n");
            out.push_str("  StrictHostKeyChecking yes\n");
            if let Some(b) = &self.bastion {
                if b != &h.name {
                    // An alias of this same file, so the jump gets these strict options too.
                    out.push_str(&format!("  ProxyJump {b}\n"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::resource::{Address, Kind, LiveResource};
    use crate::state::State;

    fn project_with(bastion: bool) -> Project {
        let mut text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/plans/local-ha.yaml")).unwrap();
        if bastion {
            text = text.replace("ssh:\n  user: rigger\n", "ssh:\n  user: rigger\n  bastion: lb-1\n");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.yaml");
        std::fs::write(&path, text).unwrap();
        let p = Project::load(&path, None).unwrap();
        std::mem::forget(dir);
        p
    }

    fn machine(name: &str, ip: &str) -> LiveResource {
        LiveResource {
            address: Address::new(Kind::Machine, name),
            id: format!("m-{name}"),
            attrs: Default::default(),
            outputs: serde_json::from_value(json!({ "ssh_host": ip, "private_ip": ip })).unwrap(),
        }
    }

    fn state(machines: &[(&str, &str)]) -> State {
        let mut s = State::new("local-ha", "local");
        for (n, ip) in machines {
            let m = machine(n, ip);
            s.resources.insert(m.address.clone(), m);
        }
        s.secrets.insert("postgres_superuser_password".into(), "s3cretvalue".into());
        s
    }

    #[test]
    fn only_hosts_that_exist_are_listed() {
        let p = project_with(false);
        let inv = build(&p, &state(&[("pg-1", "10.20.0.21"), ("etcd-1", "10.20.0.51")]));
        let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, vec!["etcd-1", "pg-1"]);
        assert_eq!(inv.groups["patroni"], vec!["pg-1"]);
        assert_eq!(inv.groups["pg"], vec!["pg-1"]);
        assert!(!inv.groups.contains_key("haproxy"), "no group for roles of hosts that do not exist");
        let list = inv.to_list_json();
        assert_eq!(list["_meta"]["hostvars"]["pg-1"]["ansible_host"], "10.20.0.21");
        assert!(!inv.to_ini().contains("s3cretvalue"));
    }

    #[test]
    fn a_bastion_is_the_jump_for_everyone_else() {
        let p = project_with(true);
        let inv = build(&p, &state(&[("lb-1", "203.0.113.5"), ("pg-1", "10.20.0.21")]));
        let cfg = inv.to_ssh_config();
        let pg = cfg.split("\nHost ").find(|b| b.starts_with("pg-1")).unwrap();
        assert!(pg.contains("ProxyJump lb-1") && pg.contains("StrictHostKeyChecking yes"), "{pg}");
        let lb = cfg.split("\nHost ").find(|b| b.starts_with("lb-1")).unwrap();
        assert!(!lb.contains("ProxyJump"), "the bastion is dialled directly: {lb}");
        let vars = inv.host_json("pg-1");
        let args = vars["ansible_ssh_common_args"].as_str().unwrap_or_else(|| inv.all_vars["ansible_ssh_common_args"].as_str().unwrap());
        assert!(args.contains("ProxyCommand") && args.contains("rigger@203.0.113.5"), "{args}");
        assert!(inv.host_json("lb-1")["ansible_ssh_common_args"].as_str().is_some_and(|a| !a.contains("ProxyCommand")));
    }

    /// A key in the system-wide /etc/ssh/ssh_known_hosts vouches for none of
    /// the project's hosts: rigger's sessions, the ssh_config it hands out,
    /// Ansible's hosts, the bastion and the jump through it.
    #[test]
    fn only_the_projects_known_hosts_vouch_for_its_hosts() {
        let p = project_with(true);
        let inv = build(&p, &state(&[("lb-1", "203.0.113.5"), ("pg-1", "10.20.0.21")]));
        let cfg = inv.to_ssh_config();
        for block in cfg.split("\nHost ").skip(1) {
            assert!(block.contains("  GlobalKnownHostsFile /dev/null\n"), "{block}");
        }
        let pg = inv.host_json("pg-1");
        let args = pg["ansible_ssh_common_args"].as_str().unwrap_or_else(|| inv.all_vars["ansible_ssh_common_args"].as_str().unwrap());
        assert_eq!(args.matches("-o GlobalKnownHostsFile=/dev/null").count(), 2, "the host's ssh and the jump's: {args}");
        assert!(inv.host_json("lb-1")["ansible_ssh_common_args"].as_str().unwrap().contains("-o GlobalKnownHostsFile=/dev/null"));
    }
}
