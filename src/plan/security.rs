//! The plan's `security:` switches, and the check that the firewall the plan
//! asks for would not cut rigger's own SSH path to a host.

use super::diag::{suggestion, Diags};
use super::model::{Direction, Host, Peer, Plan, Protocol, Rule, Security};
use crate::cloud::providers::rules::rules_of;
use super::yaml::Node;
use std::net::Ipv4Addr;

const SECURITY_KEYS: &[&str] = &["firewall", "rest_auth", "tls"];

/// `security: { firewall: false, … }` — typed switches, unknown keys refused.
pub fn read(node: Option<&Node>, d: &mut Diags) -> Security {
    let mut s = Security::default();
    let Some(node) = node.filter(|n| !n.is_null()) else { return s };
    let Some(entries) = node.as_map() else {
        d.at(node, format!("security must be a mapping, found {} — write it as `security: {{ firewall: true }}`", node.kind_name()));
        return s;
    };
    for (k, v) in entries {
        let Some(key) = k.as_scalar() else {
            d.at(k, "keys in security must be plain words");
            continue;
        };
        let slot = match key {
            "firewall" => &mut s.firewall,
            "rest_auth" => &mut s.rest_auth,
            "tls" => &mut s.tls,
            other => {
                d.at(k, format!("unknown key `{other}` in security — {}", suggestion(other, SECURITY_KEYS)));
                continue;
            }
        };
        match v.as_scalar() {
            Some("true") => *slot = true,
            Some("false") => *slot = false,
            _ => d.at(v, format!("security.{key} must be true or false — e.g. `{key}: false` to turn it off")),
        }
    }
    s
}

/// Whether rigger writes a host firewall on this host: the switch is on and the
/// plan puts the host in at least one group (a host in no group is not firewalled,
/// as a cloud instance without security groups is not).
pub fn firewalled(plan: &Plan, host: &Host) -> bool {
    plan.security.firewall && !host.firewall.is_empty()
}

/// The address rigger's SSH arrives from when the provider fixes it: the
/// bastion for the hosts behind it; where the provider says so (local
/// machines) the control host, the gateway of the host's subnet.
pub fn ssh_source(plan: &Plan, host: &Host) -> Option<Ipv4Addr> {
    if let Some(b) = plan.ssh.bastion.as_ref().filter(|b| **b != host.name) {
        return plan.host(b).map(|b| b.ip);
    }
    if rules_of(&plan.provider).ssh_from_subnet_gateway() {
        return plan.subnet(&host.subnet).map(|s| s.gateway);
    }
    None
}

/// The ingress rules of every group the host is in.
pub fn ingress_rules<'a>(plan: &'a Plan, host: &'a Host) -> impl Iterator<Item = (&'a str, &'a Rule)> + 'a {
    host.firewall.iter().filter_map(move |g| plan.firewall.iter().find(|fg| &fg.name == g)).flat_map(|g| {
        g.rules.iter().filter(|r| r.direction == Direction::Ingress).map(move |r| (g.name.as_str(), r))
    })
}

/// The hosts a `from_group` names: those the plan puts in that group.
pub fn group_members<'a>(plan: &'a Plan, group: &'a str) -> impl Iterator<Item = &'a Host> + 'a {
    plan.hosts.iter().filter(move |h| h.firewall.iter().any(|g| g == group))
}

pub fn admits_port(rule: &Rule, protocol: Protocol, port: u16) -> bool {
    let proto_ok = rule.protocol == Protocol::Any || rule.protocol == protocol;
    proto_ok && (rule.ports.is_empty() || rule.ports.iter().any(|p| (p.from..=p.to).contains(&port)))
}

/// Whether the rule lets `source` in (`None`: from somewhere the plan cannot name).
fn admits_from(plan: &Plan, rule: &Rule, source: Option<Ipv4Addr>) -> bool {
    match (&rule.peer, source) {
        (_, None) => true,
        (Peer::Cidrs(nets), Some(ip)) => nets.iter().any(|n| n.contains(&ip)),
        (Peer::Group(g), Some(ip)) => group_members(plan, g).any(|h| h.ip == ip),
    }
}

/// Every host the firewall would cut off from rigger's SSH, with the reason and
/// the fix. The rules rigger always adds itself (the local control host) count.
pub fn ssh_cut_off(plan: &Plan) -> Vec<(&Host, String)> {
    let mut cut = Vec::new();
    for h in plan.hosts.iter().filter(|h| firewalled(plan, h)) {
        let source = ssh_source(plan, h);
        let behind_bastion = plan.ssh.bastion.as_ref().is_some_and(|b| *b != h.name);
        if !behind_bastion && rules_of(&plan.provider).ssh_from_subnet_gateway() {
            continue; // the control host's SSH is always let in (see roles::firewall)
        }
        if ingress_rules(plan, h).any(|(_, r)| admits_port(r, Protocol::Tcp, 22) && admits_from(plan, r, source)) {
            continue;
        }
        let groups = h.firewall.join(", ");
        let why = match (behind_bastion, source) {
            (true, Some(ip)) => format!(
                "host `{}`: its firewall groups [{groups}] let no SSH (tcp/22) in from the bastion {} ({ip}), the way rigger reaches it — add `{{ direction: ingress, protocol: tcp, ports: 22, from: {ip}/32 }}` to one of them, or turn the host firewall off with `security: {{ firewall: false }}`",
                h.name,
                plan.ssh.bastion.as_deref().unwrap_or_default()
            ),
            _ => format!(
                "host `{}`: its firewall groups [{groups}] let no SSH (tcp/22) in at all, so the firewall would cut rigger off — add `{{ direction: ingress, protocol: tcp, ports: 22, from: <the network you run rigger from> }}` to one of them, or turn the host firewall off with `security: {{ firewall: false }}`",
                h.name
            ),
        };
        cut.push((h, why));
    }
    cut
}

/// Report `ssh_cut_off` at each host entry's `firewall:` list.
pub fn check_ssh_path(plan: &Plan, root: &Node, d: &mut Diags) {
    for (h, why) in ssh_cut_off(plan) {
        let entry = root.get("hosts").and_then(Node::as_seq).and_then(|hs| hs.iter().find(|n| n.get("name").and_then(Node::as_scalar) == Some(h.group.as_str())));
        let pos = entry.map(|e| e.get("firewall").unwrap_or(e).pos).unwrap_or(root.pos);
        d.error(pos, why);
    }
}

/// What `plan` and `apply` warn about: protections the plan turned off, and
/// hosts the firewall leaves open because they are in no group.
pub fn warnings(plan: &Plan) -> Vec<String> {
    let mut w = Vec::new();
    for part in plan.security.turned_off() {
        let what = match part {
            "firewall" => "no host firewall: every port of every host is open to anyone who can reach it",
            "rest_auth" => "Patroni's REST API takes restarts, switchovers and config changes from anyone who reaches its port",
            "tls" => "PostgreSQL takes plaintext connections across the network",
            _ => "",
        };
        w.push(format!("security.{part} is false in this plan — {what}"));
    }
    if let crate::plan::model::ProviderConfig::Proxmox(p) = &plan.provider {
        if p.insecure && p.tls_fingerprint.is_none() {
            w.push("provider.insecure is true — the Proxmox API's certificate is not checked, so the API token goes to whoever answers at the endpoint; pin the node's certificate with provider.tls_fingerprint instead".to_string());
        }
    }
    if plan.security.firewall {
        let open: Vec<&str> = plan.hosts.iter().filter(|h| h.firewall.is_empty()).map(|h| h.name.as_str()).collect();
        if !open.is_empty() {
            w.push(format!("hosts in no firewall group get no host firewall: {} — add `firewall: [group]` to close them", open.join(", ")));
        }
    }
    w
}
