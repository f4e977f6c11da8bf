//! Who talks to whom: the network flows the roles of an expanded plan need,
//! host to host. Everything that grants access is rendered from this one
//! model (pg_hba, the listen addresses of Redis and etcd), and `validate`
//! checks the plan's own firewall rules against it, so a plan cannot block a
//! flow its roles need without being told where and which rule to add.
//!
//! A plain public API: `flows(plan)` lists every flow; the helpers answer the
//! questions the renderers and the firewall check ask.

use crate::plan::model::{Direction, FirewallGroup, Host, Peer, Plan, Protocol};
use crate::hosts::roles::registry;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The transport a flow uses. VRRP is IP protocol 112 (no ports): only a
/// firewall rule with `protocol: any` lets it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Vrrp,
}

/// What a flow is for (also how PostgreSQL access is granted: `Postgres` clients
/// get `host all all`, `Replication` peers `host replication replicator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// SQL sessions (HAProxy relaying clients, pg_rewind between members).
    Postgres,
    /// Streaming replication and base backups between Patroni members.
    Replication,
    PatroniRest,
    EtcdClient,
    EtcdPeer,
    HaproxyWrite,
    HaproxyRead,
    HaproxyHttp,
    Redis,
    App,
    SaleorApi,
    SaleorDashboard,
    Storefront,
    Vrrp,
    /// pgBackRest over SSH: members push WAL to the repository host, the
    /// repository host backs the members up.
    PgBackRestSsh,
}

impl Service {
    pub fn label(self) -> &'static str {
        match self {
            Service::Postgres => "PostgreSQL",
            Service::Replication => "PostgreSQL replication",
            Service::PatroniRest => "Patroni REST",
            Service::EtcdClient => "etcd client",
            Service::EtcdPeer => "etcd peer",
            Service::HaproxyWrite => "HAProxy write port",
            Service::HaproxyRead => "HAProxy read port",
            Service::HaproxyHttp => "HAProxy HTTP",
            Service::Redis => "Redis",
            Service::App => "app",
            Service::SaleorApi => "Saleor API",
            Service::SaleorDashboard => "Saleor dashboard",
            Service::Storefront => "Storefront",
            Service::Vrrp => "VRRP",
            Service::PgBackRestSsh => "pgBackRest over SSH",
        }
    }
}

/// One flow: `from` opens a connection (or sends VRRP adverts) to `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Flow {
    pub from: String,
    pub from_ip: Ipv4Addr,
    pub to: String,
    pub to_ip: Ipv4Addr,
    pub transport: Transport,
    /// `None` for VRRP.
    pub port: Option<u16>,
    pub service: Service,
}

/// A port setting (validation keeps it within 1–65535).
fn port(plan: &Plan, role: &str, key: &str) -> u16 {
    u16::try_from(plan.int_setting(role, key)).unwrap_or_else(|_| panic!("services.{role}.{key} is no port"))
}

/// Every flow the plan's roles need, host to host, sorted and without
/// duplicates: each role says the flows it needs (`Role::flows`). A host
/// talking to itself is left out (loopback needs no grant).
pub fn flows(plan: &Plan) -> Vec<Flow> {
    let mut net = FlowSink { plan, out: BTreeSet::new() };
    for role in registry::ROLES {
        role.flows(&mut net);
    }
    net.out.into_iter().collect()
}

/// What a role adds its flows to (`Role::flows`), by role names.
pub struct FlowSink<'a> {
    pub plan: &'a Plan,
    out: BTreeSet<Flow>,
}

impl FlowSink<'_> {
    /// Whether some host has `role`.
    pub fn has(&self, role: &str) -> bool {
        self.plan.hosts_with_role(role).next().is_some()
    }

    /// A port setting of `role` (its declared default when the plan lacks the role).
    pub fn port(&self, role: &str, key: &str) -> u16 {
        port(self.plan, role, key)
    }

    /// Every host of `from` opens `service` connections to every host of `to`.
    pub fn add(&mut self, from: &str, to: &str, transport: Transport, port: Option<u16>, service: Service) {
        for f in self.plan.hosts_with_role(from) {
            for t in self.plan.hosts_with_role(to) {
                if f.name != t.name {
                    self.out.insert(Flow { from: f.name.clone(), from_ip: f.ip, to: t.name.clone(), to_ip: t.ip, transport, port, service });
                }
            }
        }
    }

    /// A TCP flow to the port setting `to`.`key`.
    pub fn tcp(&mut self, from: &str, to: &str, key: &str, service: Service) {
        let p = self.port(to, key);
        self.add(from, to, Transport::Tcp, Some(p), service);
    }
}

/// The addresses that open `service` connections to `host` (sorted, unique).
pub fn clients_of(flows: &[Flow], host: &str, service: Service) -> Vec<Ipv4Addr> {
    let set: BTreeSet<Ipv4Addr> = flows.iter().filter(|f| f.to == host && f.service == service).map(|f| f.from_ip).collect();
    set.into_iter().collect()
}

/// One pg_hba line's worth: `host <database> <user> <address>/32 scram-sha-256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HbaEntry {
    pub database: &'static str,
    pub user: &'static str,
    pub address: String,
}

/// The pg_hba entries of a Patroni member: exactly the hosts that connect, by
/// address (whatever subnet they are in); replication for the members only.
/// Loopback entries stay in the template.
pub fn pg_hba(flows: &[Flow], host: &Host) -> Vec<HbaEntry> {
    let mut out = Vec::new();
    // The member itself: Patroni's own checks and pg_rewind may use its address.
    let own = std::iter::once(host.ip);
    let replication: BTreeSet<Ipv4Addr> = own.clone().chain(clients_of(flows, &host.name, Service::Replication)).collect();
    for ip in &replication {
        out.push(HbaEntry { database: "replication", user: "replicator", address: format!("{ip}/32") });
    }
    let sessions: BTreeSet<Ipv4Addr> = own.chain(clients_of(flows, &host.name, Service::Postgres)).collect();
    for ip in &sessions {
        out.push(HbaEntry { database: "all", user: "all", address: format!("{ip}/32") });
    }
    out
}

/// A flow the plan's own firewall rules would block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The group that must get the rule (the receiver's for ingress, the sender's for egress).
    pub group: String,
    pub direction: Direction,
    /// The other side as a rule names it: a firewall group of the peer host, else its address.
    pub peer: RulePeer,
    pub transport: Transport,
    /// Ports blocked between the two (empty for VRRP).
    pub ports: BTreeSet<u16>,
    pub services: BTreeSet<Service>,
    pub from_hosts: BTreeSet<String>,
    pub to_hosts: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RulePeer {
    Group(String),
    Address(Ipv4Addr),
}

impl Blocked {
    /// The firewall rule that would let these flows through, in plan syntax.
    pub fn rule_to_add(&self) -> String {
        let (dir, cidr_key, group_key) = match self.direction {
            Direction::Ingress => ("ingress", "from", "from_group"),
            Direction::Egress => ("egress", "to", "to_group"),
        };
        let peer = match &self.peer {
            RulePeer::Group(g) => format!("{group_key}: {g}"),
            RulePeer::Address(a) => format!("{cidr_key}: {a}/32"),
        };
        match self.transport {
            Transport::Vrrp => format!("{{ direction: {dir}, protocol: any, {peer} }}"),
            Transport::Tcp => format!("{{ direction: {dir}, protocol: tcp, ports: \"{}\", {peer} }}", join_ports(&self.ports)),
        }
    }
}

fn join_ports(ports: &BTreeSet<u16>) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn rule_allows(group: &FirewallGroup, direction: &Direction, flow: &Flow, peer_ip: Ipv4Addr, peer_groups: &[String]) -> bool {
    group.rules.iter().filter(|r| &r.direction == direction).any(|r| {
        let proto = match (flow.transport, &r.protocol) {
            (_, Protocol::Any) => true,
            (Transport::Tcp, Protocol::Tcp) => true,
            _ => false,
        };
        let port = match flow.port {
            Some(p) => r.ports.is_empty() || r.ports.iter().any(|range| (range.from..=range.to).contains(&p)),
            None => r.ports.is_empty(),
        };
        let peer = match &r.peer {
            Peer::Cidrs(nets) => nets.iter().any(|n| n.contains(&peer_ip)),
            Peer::Group(g) => peer_groups.contains(g),
        };
        proto && port && peer
    })
}

/// Whether a host's groups let `flow` out (`Egress`, the host is the sender) or
/// in (`Ingress`, the receiver). A host with no groups is not filtered; a
/// host's egress is filtered only when one of its groups has egress rules.
fn side_allows(plan: &Plan, host: &Host, direction: &Direction, flow: &Flow, peer: &Host) -> bool {
    let groups: Vec<&FirewallGroup> = host.firewall.iter().filter_map(|g| plan.firewall.iter().find(|x| &x.name == g)).collect();
    if groups.is_empty() {
        return true;
    }
    if *direction == Direction::Egress && !groups.iter().any(|g| g.rules.iter().any(|r| r.direction == Direction::Egress)) {
        return true;
    }
    groups.iter().any(|g| rule_allows(g, direction, flow, peer.ip, &peer.firewall))
}

/// Which of the owner's groups should get the rule: one that already has a rule
/// for this port in this direction (from other peers), else the last one listed
/// (role groups tend to follow shared ones like `ssh`).
fn group_for(plan: &Plan, owner: &Host, direction: &Direction, flow: &Flow) -> String {
    let groups: Vec<&FirewallGroup> = owner.firewall.iter().filter_map(|g| plan.firewall.iter().find(|x| &x.name == g)).collect();
    let for_port = groups.iter().find(|g| {
        g.rules.iter().any(|r| &r.direction == direction && flow.port.is_some_and(|p| r.ports.iter().any(|range| (range.from..=range.to).contains(&p))))
    });
    for_port.or(groups.last()).map(|g| g.name.clone()).unwrap_or_default()
}

/// The flows the plan's firewall rules block, gathered per (group, direction,
/// peer, transport) so one rule to add covers each.
pub fn check_firewall(plan: &Plan, flows: &[Flow]) -> Vec<Blocked> {
    let mut found: BTreeMap<(String, u8, RulePeer, Transport), Blocked> = BTreeMap::new();
    for f in flows {
        let (Some(from), Some(to)) = (plan.host(&f.from), plan.host(&f.to)) else { continue };
        for (direction, owner, peer) in [(Direction::Egress, from, to), (Direction::Ingress, to, from)] {
            if side_allows(plan, owner, &direction, f, peer) {
                continue;
            }
            let group = group_for(plan, owner, &direction, f);
            // Role groups tend to follow the shared ones (`[ssh, db]`): name the peer by its last.
            let rule_peer = match peer.firewall.last() {
                Some(g) => RulePeer::Group(g.clone()),
                None => RulePeer::Address(peer.ip),
            };
            let key = (group.clone(), if direction == Direction::Ingress { 0 } else { 1 }, rule_peer.clone(), f.transport);
            let b = found.entry(key).or_insert_with(|| Blocked {
                group,
                direction: direction.clone(),
                peer: rule_peer,
                transport: f.transport,
                ports: BTreeSet::new(),
                services: BTreeSet::new(),
                from_hosts: BTreeSet::new(),
                to_hosts: BTreeSet::new(),
            });
            b.ports.extend(f.port);
            b.services.insert(f.service);
            b.from_hosts.insert(f.from.clone());
            b.to_hosts.insert(f.to.clone());
        }
    }
    found.into_values().collect()
}

/// `a, b` — a short list of names for a message.
pub fn names(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// The user-facing text of a blocked flow: what is blocked — the rule to add.
pub fn describe(b: &Blocked) -> String {
    let what: Vec<&str> = b.services.iter().map(|s| s.label()).collect();
    let ports = match b.transport {
        Transport::Vrrp => "VRRP (IP protocol 112)".to_string(),
        Transport::Tcp => format!("tcp {}", join_ports(&b.ports)),
    };
    let peer = match &b.peer {
        RulePeer::Group(g) => format!("group `{g}`"),
        RulePeer::Address(a) => format!("{a} (in no firewall group)"),
    };
    let (verb, side) = match b.direction {
        Direction::Ingress => ("lets in", "from"),
        Direction::Egress => ("lets out", "to"),
    };
    format!(
        "firewall group `{}` {verb} no {} ({ports}) {side} {peer}, needed by {} → {} — add to group `{}`: {}",
        b.group,
        what.join(", "),
        names(&b.from_hosts),
        names(&b.to_hosts),
        b.group,
        b.rule_to_add()
    )
}

/// A port a role listens on, and the setting that chooses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub role: &'static str,
    /// `services.<role>.<key>` (`ssh` for the SSH daemon every machine runs).
    pub setting: String,
    pub port: u16,
}

/// Every TCP port the host's roles listen on (sshd's 22 included: every
/// machine has it), in the registry's order; each role says its own
/// (`Role::listens`: the settings that choose them).
pub fn listeners(plan: &Plan, host: &Host) -> Vec<Listener> {
    let mut out = vec![Listener { role: "ssh", setting: "ssh".into(), port: 22 }];
    for role in registry::ROLES.iter().filter(|r| host.roles.iter().any(|x| x == r.name())) {
        for (owner, key) in role.listens(plan) {
            out.push(Listener { role: role.name(), setting: format!("services.{owner}.{key}"), port: port(plan, owner, key) });
        }
    }
    out
}

/// Two roles of one host that want the same port: (first, second).
pub fn port_clashes(plan: &Plan, host: &Host) -> Vec<(Listener, Listener)> {
    let list = listeners(plan, host);
    let mut out = Vec::new();
    for (i, b) in list.iter().enumerate() {
        if let Some(a) = list[..i].iter().find(|a| a.port == b.port && (a.role != b.role || a.setting != b.setting)) {
            out.push((a.clone(), b.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const TWO_SUBNETS: &str = "version: 1\nproject: two\nprovider: { kind: local }\nnetwork:\n  name: main\n  subnets:\n    - { name: front, cidr: 10.30.1.0/24 }\n    - { name: data, cidr: 10.30.2.0/24 }\nhosts:\n  - { name: pg, count: 3, roles: [patroni, etcd], subnet: data }\n  - { name: lb, count: 2, roles: [haproxy, keepalived], subnet: front }\n  - { name: web, roles: [app, nginx, redis], subnet: front }\nservices:\n  keepalived: { vip: 10.30.1.100 }\n";

    fn plan(text: &str) -> Plan {
        crate::plan::load_str(Path::new("t.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn pg_hba_lists_exactly_the_hosts_that_connect_whatever_their_subnet() {
        let p = plan(TWO_SUBNETS);
        let f = flows(&p);
        let pg1 = p.host("pg-1").unwrap();
        let ip = |n: &str| format!("{}/32", p.host(n).unwrap().ip);
        let hba = pg_hba(&f, pg1);
        let of = |db: &str| hba.iter().filter(|e| e.database == db).map(|e| e.address.clone()).collect::<BTreeSet<_>>();
        let members: BTreeSet<String> = ["pg-1", "pg-2", "pg-3"].iter().map(|n| ip(n)).collect();
        assert_eq!(of("replication"), members, "replication: the members only");
        let mut sessions = members.clone();
        sessions.extend(["lb-1", "lb-2"].iter().map(|n| ip(n)));
        assert_eq!(of("all"), sessions, "SQL sessions: the members and the HAProxy hosts, nothing else");
        assert!(hba.iter().all(|e| e.address.ends_with("/32")));
    }

    #[test]
    fn the_flow_model_covers_every_role_pair() {
        let p = plan(TWO_SUBNETS);
        let f = flows(&p);
        let has = |from: &str, to: &str, s: Service| f.iter().any(|x| x.from == from && x.to == to && x.service == s);
        assert!(has("lb-1", "pg-2", Service::Postgres) && has("lb-2", "pg-1", Service::PatroniRest));
        assert!(has("pg-1", "pg-2", Service::Replication) && has("pg-3", "pg-1", Service::EtcdClient) && has("pg-1", "pg-3", Service::EtcdPeer));
        assert!(has("web", "lb-1", Service::HaproxyWrite) && has("web", "lb-2", Service::HaproxyRead));
        assert!(has("lb-1", "lb-2", Service::Vrrp) && has("lb-2", "lb-1", Service::Vrrp));
        assert!(!f.iter().any(|x| x.from == x.to), "a host needs no grant to talk to itself");
        assert!(!has("web", "pg-1", Service::Postgres), "apps reach PostgreSQL through HAProxy only");
    }

    #[test]
    fn a_firewall_that_allows_the_flows_passes_and_one_that_does_not_names_the_rule() {
        let fw = "firewall:\n  - name: db\n    rules:\n      - { direction: ingress, protocol: tcp, ports: \"5432,8008,2379-2380\", from_group: db }\n";
        let hosts_with_groups = TWO_SUBNETS.replace("subnet: data }", "subnet: data, firewall: [db] }");
        let text = hosts_with_groups.replace("hosts:\n", &format!("{fw}hosts:\n"));
        let err = crate::plan::load_str(Path::new("t.yaml"), &text).unwrap_err().to_string();
        assert!(err.contains("firewall group `db` lets in no PostgreSQL, Patroni REST (tcp 5432,8008)"), "{err}");
        assert!(err.contains("add to group `db`: { direction: ingress, protocol: tcp, ports: \"5432,8008\", from: "), "{err}");
        let fixed = text.replace("from_group: db }\n", "from_group: db }\n      - { direction: ingress, protocol: tcp, ports: \"5432,8008\", from: 10.30.1.0/24 }\n");
        plan(&fixed);
    }
}
