//! Read a plan file into a validated, expanded `Plan`. Reading collects every
//! error it finds (shape, then meaning) and returns them all at once.

use super::diag::{suggestion, Diags, PlanErrors};
use super::model::*;
use super::services::{self, SettingType};
use crate::hosts::roles::registry::NAMES as ROLES;
use super::read::{At, HostDefaults, HostEntry, Reader};
pub use super::read::{resolve_path, valid_name};
use super::yaml::{self, Node, Pos, Value as Y};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use crate::cloud::providers::rules::{self, rules_of};
use std::path::{Path, PathBuf};
use crate::hosts::roles::{haproxy, keepalived, patroni};
use crate::hosts::roles::role::PlanCheck;

/// Load and validate a plan file. No network access.
pub fn load(path: &Path) -> Result<Plan, PlanErrors> {
    let error = |pos: Pos, message: String| PlanErrors { file: path.to_path_buf(), diagnostics: vec![super::diag::Diagnostic { pos, message }] };
    let bytes = std::fs::read(path).map_err(|e| error(Pos::default(), format!("cannot read the plan file: {e} — check the path (PLAN defaults to rigger.yaml)")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let (pos, byte) = first_bad_byte(e.as_bytes(), e.utf8_error().valid_up_to());
        error(pos, format!("the plan file is not UTF-8 text (byte 0x{byte:02X} here) — save the file as UTF-8"))
    })?;
    load_str(path, &text)
}

/// Where the byte at `at` is, as an editor shows it (columns count characters).
fn first_bad_byte(bytes: &[u8], at: usize) -> (Pos, u8) {
    let before = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    (Pos { line, col }, bytes[at])
}

pub fn load_str(path: &Path, text: &str) -> Result<Plan, PlanErrors> {
    let mut d = Diags::default();
    let root = match yaml::parse(text) {
        Ok(n) => n,
        Err(e) => {
            d.error(e.pos, e.message);
            return Err(d.into_errors(path.to_path_buf()));
        }
    };
    // Absolute, so every path in the plan means the same whatever the working folder.
    let dir = path.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| PathBuf::from("."));
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let plan = Reader { d: &mut d, dir: &dir }.plan(&root, path);
    match plan {
        Some(p) if d.is_empty() => Ok(p),
        _ => {
            if d.is_empty() {
                d.error(root.pos, "the plan is incomplete — see the documentation of the plan file in the README");
            }
            Err(d.into_errors(path.to_path_buf()))
        }
    }
}

const TOP_KEYS: &[&str] = &["version", "project", "provider", "ssh", "network", "firewall", "defaults", "hosts", "services", "security"];
const SSH_KEYS: &[&str] = &["user", "private_key_file", "public_key_file", "bastion"];
const NETWORK_KEYS: &[&str] = &["name", "subnets"];
const SUBNET_KEYS: &[&str] = &["name", "cidr", "zone", "gateway"];
const FIREWALL_KEYS: &[&str] = &["name", "rules"];
/// The longest firewall rule description a cloud takes (Yandex Cloud's limit).
const MAX_RULE_DESCRIPTION: usize = 256;
const RULE_KEYS: &[&str] = &["direction", "protocol", "ports", "from", "to", "from_group", "to_group", "description"];
const DEFAULTS_KEYS: &[&str] = &["image", "cores", "memory", "disk", "core_fraction"];
const HOST_KEYS: &[&str] = &["name", "count", "roles", "subnet", "ip", "image", "cores", "memory", "disk", "core_fraction", "firewall", "public_ip"];
/// Where in the zone list of the cloud a host goes; after the providers' own host keys.
const HOST_PLACEMENT_KEYS: &[&str] = &["zone"];

/// The keys a host entry takes: the generic ones and every provider's own
/// (a key of another provider is read, then refused by that provider's rules).
fn host_keys() -> Vec<&'static str> {
    let providers = rules::all().iter().flat_map(|r| r.host_keys().iter().copied());
    HOST_KEYS.iter().copied().chain(providers).chain(HOST_PLACEMENT_KEYS.iter().copied()).collect()
}

impl Reader<'_> {
    // ---- the plan --------------------------------------------------------

    fn plan(&mut self, root: &Node, file: &Path) -> Option<Plan> {
        if root.is_null() {
            self.d.at(root, "the plan file is empty — start from plans/local-ha.yaml");
            return None;
        }
        self.map(root, "the plan", TOP_KEYS)?;
        let version = self.required(root, "version", "the plan", "1").and_then(|n| self.int(n, "version", 0, i64::MAX));
        if let Some(v) = &version {
            if v.v != 1 {
                self.d.error(v.pos, format!("plan version {} is not supported — this rigger reads `version: 1`", v.v));
            }
        }
        let project = self.required(root, "project", "the plan", "my-stack").and_then(|n| self.name(n, "project"));
        let provider = self.required(root, "provider", "the plan", "{ kind: local }").and_then(|n| self.provider(n));
        let network = self.required(root, "network", "the plan", "{ name: main, subnets: [...] }").and_then(|n| self.network(n, provider.as_ref()));
        let firewall = match self.optional(root, "firewall") {
            Some(n) => self.firewall(n),
            None => Vec::new(),
        };
        let defaults = self.defaults(root.get("defaults"), provider.as_ref());
        let raw_hosts = match self.required(root, "hosts", "the plan", "[...]") {
            Some(n) => self.list(n, "hosts").iter().filter_map(|h| self.host(h)).collect(),
            None => Vec::new(),
        };
        // A missing or bad project is reported with every other error: the
        // checks go on with a stand-in name, and the plan is refused at the end.
        let project_name = project.as_ref().map_or("rigger", |p| p.v.as_str()).to_string();
        let ssh = self.ssh(root.get("ssh"), &project_name);
        let services = self.services(root.get("services"), &project_name, &raw_hosts);

        let (network, firewall_groups) = (network?, firewall);
        let provider = provider?;
        self.refuse_unused_keys(root, &provider);
        let hosts = self.expand_hosts(&raw_hosts, &network, &firewall_groups, &defaults, &provider, root);
        if let Some(project) = &project {
            self.check_cloud_names(&project.v, &network, &firewall_groups, &hosts, &provider, root);
        }
        self.check_roles(&hosts, &raw_hosts, &services, &network, root);
        let ssh = ssh?;
        if let Some(b) = &ssh.bastion {
            if !hosts.iter().any(|h| &h.name == b) {
                let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                let pos = root.get("ssh").and_then(|s| s.get("bastion")).map(|n| n.pos).unwrap_or_default();
                self.d.error(pos, format!("ssh.bastion `{b}` is not a host of this plan — {}", suggestion(b, &names)));
            }
        }
        let services = services?;
        let security = super::security::read(root.get("security"), self.d);
        let plan = Plan {
            file: file.to_path_buf(),
            dir: self.dir.to_path_buf(),
            version: 1,
            project: project_name,
            provider,
            ssh,
            network,
            firewall: firewall_groups,
            hosts,
            services,
            security,
            public_addresses: Default::default(),
        };
        super::security::check_ssh_path(&plan, root, self.d);
        if self.d.is_empty() {
            self.check_flows(&plan, root);
        }
        project.map(|_| plan)
    }

    /// Keys the plan's provider has no use for (`PlanRules::unused_keys`), at the key.
    fn refuse_unused_keys(&mut self, root: &Node, provider: &ProviderConfig) {
        let rules = rules_of(provider);
        let entries = |list: Option<&Node>| list.and_then(|l| l.as_seq()).map(<[Node]>::to_vec).unwrap_or_default();
        let hosts = entries(root.get("hosts"));
        let subnets = entries(root.get("network").and_then(|n| n.get("subnets")));
        let defaults: Vec<Node> = root.get("defaults").into_iter().cloned().collect();
        for (place, key) in rules.unused_keys() {
            let (list, what) = match *place {
                "host" => (&hosts, "a host"),
                "subnet" => (&subnets, "a subnet"),
                _ => (&defaults, "defaults"),
            };
            let users = rules::who_uses(&rules::users_of(place, key));
            for entry in list {
                if let Some((k, _)) = entry.as_map().and_then(|m| m.iter().find(|(k, _)| k.as_scalar() == Some(key))) {
                    self.d.at(k, format!("the {} provider does not use `{key}` in {what} ({users}) — remove it", rules.kind()));
                }
            }
        }
    }

    /// The plan's firewall rules must let through every flow its roles need
    /// (src/flows.rs). Only on an otherwise valid plan: the model needs it whole.
    fn check_flows(&mut self, plan: &Plan, root: &Node) {
        let flows = crate::flows::flows(plan);
        for blocked in crate::flows::check_firewall(plan, &flows) {
            let pos = root
                .get("firewall")
                .and_then(|f| f.as_seq())
                .and_then(|groups| groups.iter().find(|g| g.get("name").and_then(|n| n.as_scalar()) == Some(blocked.group.as_str())))
                .map(|g| g.get("name").map(|n| n.pos).unwrap_or(g.pos))
                .unwrap_or_default();
            self.d.error(pos, crate::flows::describe(&blocked));
        }
        // Two roles of one host wanting one port: once per host entry.
        let mut seen: BTreeSet<(String, u16)> = BTreeSet::new();
        for host in &plan.hosts {
            for (a, b) in crate::flows::port_clashes(plan, host) {
                if !seen.insert((host.group.clone(), b.port)) {
                    continue;
                }
                let entry = root
                    .get("hosts")
                    .and_then(|h| h.as_seq())
                    .and_then(|list| list.iter().find(|e| e.get("name").and_then(|n| n.as_scalar()) == Some(host.group.as_str())));
                let role_node = entry.and_then(|e| e.get("roles")).and_then(|r| r.as_seq()).and_then(|rs| rs.iter().find(|r| r.as_scalar() == Some(b.role)));
                let pos = role_node.or(entry).map(|n| n.pos).unwrap_or_default();
                let side = |l: &crate::flows::Listener| if l.role == "ssh" { "sshd (every machine)".to_string() } else { format!("`{}` ({})", l.role, l.setting) };
                let fix = if b.role == "ssh" || a.role == "ssh" {
                    let l = if a.role == "ssh" { &b } else { &a };
                    format!("set {} to another port (22 is SSH's)", l.setting)
                } else {
                    format!("set {} (or {}) to a free port, or put the roles on different hosts", b.setting, a.setting)
                };
                self.d.error(pos, format!("host `{}`: {} and {} both listen on port {} — {fix}", host.group, side(&a), side(&b), b.port));
            }
        }
    }

    /// The `provider:` block, read by the rules of the kind it names.
    fn provider(&mut self, node: &Node) -> Option<ProviderConfig> {
        let kind = self.required(node, "kind", "provider", "local").and_then(|n| self.string(n, "provider.kind"))?;
        match rules::rules_for(&kind.v) {
            Some(rules) => rules.read_block(node, self),
            None => {
                self.d.error(kind.pos, format!("unknown provider kind `{}` — {}", kind.v, suggestion(&kind.v, &rules::kinds())));
                None
            }
        }
    }

    fn ssh(&mut self, node: Option<&Node>, project: &str) -> Option<SshConfig> {
        let default_key = format!(".rigger/{project}_ed25519");
        let Some(node) = node.filter(|n| !n.is_null()) else {
            let private = resolve_path(self.dir, &default_key);
            return Some(SshConfig { user: "rigger".into(), public_key_file: pub_path(&private), private_key_file: private, bastion: None });
        };
        self.map(node, "ssh", SSH_KEYS)?;
        let user = match self.optional(node, "user") {
            Some(n) => {
                let u = self.string(n, "ssh.user")?;
                let ok = u.v.len() <= 32
                    && u.v.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && u.v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
                if !ok || u.v == "root" {
                    self.d.error(u.pos, format!("ssh.user `{}` cannot be used — pick a plain lower-case user name other than root, e.g. rigger", u.v));
                }
                u.v
            }
            None => "rigger".into(),
        };
        let private = match self.optional(node, "private_key_file") {
            Some(n) => self.path(n, "ssh.private_key_file")?,
            None => resolve_path(self.dir, &default_key),
        };
        let public = match self.optional(node, "public_key_file") {
            Some(n) => self.path(n, "ssh.public_key_file")?,
            None => pub_path(&private),
        };
        let bastion = self.optional(node, "bastion").and_then(|n| self.string(n, "ssh.bastion")).map(|s| s.v);
        Some(SshConfig { user, private_key_file: private, public_key_file: public, bastion })
    }

    fn network(&mut self, node: &Node, provider: Option<&ProviderConfig>) -> Option<Network> {
        self.map(node, "network", NETWORK_KEYS)?;
        let name = self.required(node, "name", "network", "main").and_then(|n| self.name(n, "network.name"));
        let subnets_node = self.required(node, "subnets", "network", "[{ name: app, cidr: 10.20.0.0/24 }]")?;
        let items = self.list(subnets_node, "network.subnets");
        if items.is_empty() && subnets_node.as_seq().is_some() {
            self.d.at(subnets_node, "network.subnets is empty — add at least one subnet, e.g. `- { name: app, cidr: 10.20.0.0/24 }`");
        }
        let default_zone = provider.and_then(|p| rules_of(p).default_zone(p));
        let mut subnets: Vec<(Subnet, Pos, Pos)> = Vec::new();
        for item in items {
            if self.map(item, "a subnet", SUBNET_KEYS).is_none() {
                continue;
            }
            let name = self.required(item, "name", "a subnet", "app").and_then(|n| self.name(n, "subnet name"));
            let cidr = self.required(item, "cidr", "a subnet", "10.20.0.0/24").and_then(|n| self.cidr(n, "subnet cidr"));
            let zone = self.optional(item, "zone").and_then(|n| self.string(n, "subnet zone")).map(|s| s.v);
            let gateway = self.optional(item, "gateway").and_then(|n| self.ip(n, "subnet gateway"));
            let (Some(name), Some(cidr)) = (name, cidr) else { continue };
            if let Some((first, ..)) = subnets.iter().find(|(s, ..)| s.name == name.v) {
                self.d.error(name.pos, format!("subnet `{}` is defined twice — rename one (first: {})", name.v, first.cidr));
                continue;
            }
            if cidr.v.prefix_len() > 29 {
                self.d.error(cidr.pos, format!("subnet {} is too small for machines — use a prefix of /29 or shorter", cidr.v));
                continue;
            }
            if let Some(p) = provider {
                rules_of(p).check_subnet(&cidr, self.d);
                if let Some(g) = &gateway {
                    rules_of(p).check_gateway(&cidr.v, g, self.d);
                }
            }
            for (other, _, other_pos) in &subnets {
                if other.cidr.contains(&cidr.v.network()) || cidr.v.contains(&other.cidr.network()) {
                    self.d.error(cidr.pos, format!("subnet {} overlaps subnet `{}` ({}, line {}) — pick ranges that do not overlap", cidr.v, other.name, other.cidr, other_pos.line));
                }
            }
            let gw = match gateway {
                Some(g) => {
                    if !cidr.v.contains(&g.v) {
                        self.d.error(g.pos, format!("gateway {} is outside subnet {} — use an address inside it, e.g. {}", g.v, cidr.v, first_host(&cidr.v)));
                    } else if g.v == cidr.v.network() || g.v == cidr.v.broadcast() {
                        self.d.error(g.pos, format!("gateway {} is the network or broadcast address of {} — use e.g. {}", g.v, cidr.v, first_host(&cidr.v)));
                    }
                    g.v
                }
                None => first_host(&cidr.v),
            };
            let zone = zone.or_else(|| default_zone.clone());
            subnets.push((Subnet { name: name.v, cidr: cidr.v, zone, gateway: gw }, name.pos, cidr.pos));
        }
        Some(Network { name: name?.v, subnets: subnets.into_iter().map(|(s, ..)| s).collect() })
    }

    fn firewall(&mut self, node: &Node) -> Vec<FirewallGroup> {
        let mut groups: Vec<(FirewallGroup, Vec<Option<At<String>>>)> = Vec::new();
        for item in self.list(node, "firewall") {
            if self.map(item, "a firewall group", FIREWALL_KEYS).is_none() {
                continue;
            }
            let Some(name) = self.required(item, "name", "a firewall group", "db").and_then(|n| self.name(n, "firewall group name")) else { continue };
            if groups.iter().any(|(g, _)| g.name == name.v) {
                self.d.error(name.pos, format!("firewall group `{}` is defined twice — merge the rules into one group", name.v));
                continue;
            }
            let mut rules = Vec::new();
            let mut refs = Vec::new();
            if let Some(rn) = self.optional(item, "rules") {
                for r in self.list(rn, "firewall rules") {
                    if let Some((rule, group_ref)) = self.rule(r) {
                        rules.push(rule);
                        refs.push(group_ref);
                    }
                }
            }
            groups.push((FirewallGroup { name: name.v, rules }, refs));
        }
        // A rule may name a group; it must exist.
        let names: Vec<String> = groups.iter().map(|(g, _)| g.name.clone()).collect();
        let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
        for (_, refs) in &groups {
            for r in refs.iter().flatten() {
                if !names.contains(&r.v) {
                    self.d.error(r.pos, format!("firewall group `{}` does not exist — {}", r.v, suggestion(&r.v, &names_ref)));
                }
            }
        }
        groups.into_iter().map(|(g, _)| g).collect()
    }

    fn rule(&mut self, node: &Node) -> Option<(Rule, Option<At<String>>)> {
        self.map(node, "a firewall rule", RULE_KEYS)?;
        let dir = self.required(node, "direction", "a firewall rule", "ingress").and_then(|n| self.string(n, "direction"))?;
        let direction = match dir.v.as_str() {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            other => {
                self.d.error(dir.pos, format!("unknown direction `{other}` — {}", suggestion(other, &["ingress", "egress"])));
                return None;
            }
        };
        let protocol = match self.optional(node, "protocol").and_then(|n| self.string(n, "protocol")) {
            None => Protocol::Any,
            Some(p) => match p.v.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "icmp" => Protocol::Icmp,
                "any" => Protocol::Any,
                other => {
                    self.d.error(p.pos, format!("unknown protocol `{other}` — {}", suggestion(other, &["tcp", "udp", "icmp", "any"])));
                    return None;
                }
            },
        };
        let ports = match self.optional(node, "ports") {
            Some(n) => {
                let s = self.string(n, "ports")?;
                if matches!(protocol, Protocol::Icmp | Protocol::Any) {
                    self.d.error(s.pos, "ports only apply to tcp and udp rules — remove `ports` or set `protocol: tcp`");
                }
                match parse_ports(&s.v) {
                    Ok(p) => p,
                    Err(e) => {
                        self.d.error(s.pos, e);
                        return None;
                    }
                }
            }
            None => Vec::new(),
        };
        let (cidr_key, group_key) = match direction {
            Direction::Ingress => ("from", "from_group"),
            Direction::Egress => ("to", "to_group"),
        };
        let wrong: Vec<&str> = match direction {
            Direction::Ingress => vec!["to", "to_group"],
            Direction::Egress => vec!["from", "from_group"],
        };
        for w in wrong {
            if let Some(n) = node.get(w) {
                self.d.at(n, format!("`{w}` does not fit an {} rule — use `{cidr_key}` or `{group_key}`", if direction == Direction::Ingress { "ingress" } else { "egress" }));
            }
        }
        let cidrs = self.optional(node, cidr_key);
        let group = self.optional(node, group_key);
        let (peer, group_ref) = match (cidrs, group) {
            (Some(_), Some(g)) => {
                self.d.at(g, format!("a rule takes either `{cidr_key}` or `{group_key}`, not both — split it into two rules"));
                return None;
            }
            (None, Some(g)) => {
                let name = self.string(g, group_key)?;
                (Peer::Group(name.v.clone()), Some(name))
            }
            (Some(c), None) => {
                let list: Vec<Node> = match &c.value {
                    Y::Seq(items) => items.clone(),
                    _ => vec![c.clone()],
                };
                // An empty list would render as a rule with no source, which
                // a host firewall reads as "from anywhere".
                if list.is_empty() {
                    self.d.at(c, format!("`{cidr_key}: []` names no address — list at least one CIDR block, e.g. `{cidr_key}: [10.20.0.0/24]` (0.0.0.0/0 for anywhere), or remove the rule"));
                    return None;
                }
                let nets: Vec<Ipv4Net> = list.iter().filter_map(|n| self.cidr(n, cidr_key)).map(|a| a.v).collect();
                if nets.len() != list.len() {
                    return None;
                }
                (Peer::Cidrs(nets), None)
            }
            (None, None) => {
                self.d.at(node, format!("the rule says neither `{cidr_key}` nor `{group_key}` — add e.g. `{cidr_key}: 10.20.0.0/24` (0.0.0.0/0 for anywhere)"));
                return None;
            }
        };
        let description = self.optional(node, "description").and_then(|n| self.string(n, "description"));
        if let Some(d) = description.as_ref().filter(|d| d.v.chars().count() > MAX_RULE_DESCRIPTION) {
            // Yandex Cloud's SecurityGroupRuleSpec.description takes at most 256
            // characters; a plan that moves between providers keeps to that.
            self.d.error(d.pos, format!("the rule's description is {} characters long, at most {MAX_RULE_DESCRIPTION} fit — shorten it", d.v.chars().count()));
        }
        let description = description.map(|s| s.v);
        Some((Rule { direction, protocol, ports, peer, description }, group_ref))
    }

    fn defaults(&mut self, node: Option<&Node>, provider: Option<&ProviderConfig>) -> HostDefaults {
        // Without a valid provider the plan stops before hosts take the image.
        let image = provider.map(|p| rules_of(p).default_image(p)).unwrap_or_default();
        self.defaults_from(node, HostDefaults::base(&image))
    }

    fn defaults_from(&mut self, node: Option<&Node>, mut base: HostDefaults) -> HostDefaults {
        let Some(node) = node.filter(|n| !n.is_null()) else { return base };
        if self.map(node, "defaults", DEFAULTS_KEYS).is_none() {
            return base;
        }
        if let Some(s) = self.optional(node, "image").and_then(|n| self.string(n, "defaults.image")) {
            base.image = s.v;
        }
        if let Some(n) = self.optional(node, "cores").and_then(|n| self.int(n, "defaults.cores", 1, 256)) {
            base.cores = n.v as u32;
        }
        if let Some(b) = self.optional(node, "memory").and_then(|n| self.size(n, "defaults.memory")) {
            base.memory = b.v;
        }
        if let Some(b) = self.optional(node, "disk").and_then(|n| self.size(n, "defaults.disk")) {
            base.disk = b.v;
        }
        if let Some(n) = self.optional(node, "core_fraction").and_then(|n| self.int(n, "defaults.core_fraction", 1, 100)) {
            base.core_fraction = n.v as u32;
        }
        base
    }

    fn host(&mut self, node: &Node) -> Option<HostEntry> {
        self.map(node, "a host", &host_keys())?;
        let name = self.required(node, "name", "a host", "pg").and_then(|n| self.name(n, "host name"))?;
        let what = |k: &str| format!("{k} of host `{}`", name.v);
        let count = self.optional(node, "count").and_then(|n| self.int(n, &what("count"), 1, 100)).map(|a| At { v: a.v as u32, pos: a.pos });
        let roles = match self.optional(node, "roles") {
            Some(n) => self.string_list(n, &what("roles")),
            None => Vec::new(),
        };
        for (i, r) in roles.iter().enumerate() {
            if !ROLES.contains(&r.v.as_str()) {
                self.d.error(r.pos, format!("unknown role `{}` — {}", r.v, suggestion(&r.v, &ROLES)));
            } else if roles[..i].iter().any(|earlier| earlier.v == r.v) {
                self.d.error(r.pos, format!("role `{}` is listed twice for host `{}` — remove one", r.v, name.v));
            }
        }
        // A misspelt `roles` is reported as such, not as hosts lacking their role.
        let keys_known = node.as_map().unwrap_or_default().iter().all(|(k, _)| k.as_scalar().is_some_and(|k| host_keys().contains(&k)));
        if keys_known {
            self.check_inventory_group(&name, count.is_some(), &roles);
        }
        let subnet = self.optional(node, "subnet").and_then(|n| self.string(n, &what("subnet")));
        let ip = self.optional(node, "ip").and_then(|n| self.ip(n, &what("ip")));
        let image = self.optional(node, "image").and_then(|n| self.string(n, &what("image")));
        let cores = self.optional(node, "cores").and_then(|n| self.int(n, &what("cores"), 1, 256)).map(|a| At { v: a.v as u32, pos: a.pos });
        let memory = self.optional(node, "memory").and_then(|n| self.size(n, &what("memory")));
        let disk = self.optional(node, "disk").and_then(|n| self.size(n, &what("disk")));
        let core_fraction = self.optional(node, "core_fraction").and_then(|n| self.int(n, &what("core_fraction"), 1, 100)).map(|a| At { v: a.v as u32, pos: a.pos });
        let firewall = match self.optional(node, "firewall") {
            Some(n) => self.string_list(n, &what("firewall")),
            None => Vec::new(),
        };
        let public_ip = match self.optional(node, "public_ip") {
            Some(n) => self.boolean(n, &what("public_ip")).unwrap_or(false),
            None => false,
        };
        let zone = self.optional(node, "zone").and_then(|n| self.string(n, &what("zone"))).map(|s| s.v);
        let mut entry = HostEntry { name, count, roles, subnet, ip, image, cores, memory, disk, core_fraction, firewall, public_ip, vmid: None, kind: None, zone };
        for rules in rules::all() {
            rules.read_host_keys(node, &mut entry, self);
        }
        Some(entry)
    }

    /// The Ansible inventory (src/inventory.rs) has a group per role and per
    /// entry with `count`, beside Ansible's own `all` and `ungrouped`: an entry
    /// must not take one of those names, or its machines would join a group
    /// that means something else.
    fn check_inventory_group(&mut self, name: &At<String>, counted: bool, roles: &[At<String>]) {
        let group = crate::inventory::group_name(&name.v);
        if ["all", "ungrouped"].contains(&group.as_str()) {
            self.d.error(name.pos, format!("host entry `{}` takes the name of Ansible's own group `{group}` (every inventory has it) — rename the entry", name.v));
        } else if counted && ROLES.contains(&group.as_str()) && !roles.iter().any(|r| r.v == group) {
            self.d.error(name.pos, format!("host entry `{}` has `count`, so its machines form the inventory group `{group}` — which is the group of the role `{group}`, a role these hosts lack; rename the entry (e.g. `{}-hosts`) or give it the role", name.v, name.v));
        }
    }

    // ---- meaning ---------------------------------------------------------

    /// Where the cloud limits a resource's name (`<project>-<name>`), every
    /// name the plan makes fits, said at the name that makes it too long.
    fn check_cloud_names(&mut self, project: &str, network: &Network, firewall: &[FirewallGroup], hosts: &[Host], provider: &ProviderConfig, root: &Node) {
        let Some(limit) = rules_of(provider).cloud_name_limit() else { return };
        let named = |list: &str, name: &str| {
            let items = root.get(list).and_then(|n| if list == "network" { n.get("subnets") } else { Some(n) }).and_then(Node::as_seq);
            items.and_then(|items| items.iter().find(|i| i.get("name").and_then(Node::as_scalar) == Some(name))).and_then(|i| i.get("name")).map(|n| n.pos)
        };
        let mut names: Vec<(String, Pos)> = Vec::new();
        names.push((network.name.clone(), root.get("network").and_then(|n| n.get("name")).map_or(root.pos, |n| n.pos)));
        names.extend(network.subnets.iter().map(|s| (s.name.clone(), named("network", &s.name).unwrap_or(root.pos))));
        names.extend(firewall.iter().map(|g| (g.name.clone(), named("firewall", &g.name).unwrap_or(root.pos))));
        // One error per host entry: its longest name (the last of a count).
        let mut entries: Vec<&str> = Vec::new();
        for h in hosts.iter().rev() {
            if entries.contains(&h.group.as_str()) {
                continue;
            }
            entries.push(&h.group);
            names.push((h.name.clone(), named("hosts", &h.group).unwrap_or(root.pos)));
        }
        for (name, pos) in names {
            let cloud_name = format!("{project}-{name}");
            if cloud_name.len() > limit {
                self.d.error(pos, format!("`{cloud_name}` ({} characters) is longer than the {limit} the cloud allows a name (project `{project}` + `-` + `{name}`) — shorten the project or this name", cloud_name.len()));
            }
        }
    }

    fn expand_hosts(
        &mut self,
        raw: &[HostEntry],
        network: &Network,
        firewall: &[FirewallGroup],
        defaults: &HostDefaults,
        provider: &ProviderConfig,
        root: &Node,
    ) -> Vec<Host> {
        let rules = rules_of(provider);
        let subnet_names: Vec<&str> = network.subnets.iter().map(|s| s.name.as_str()).collect();
        let group_names: Vec<&str> = firewall.iter().map(|g| g.name.as_str()).collect();
        let mut hosts: Vec<Host> = Vec::new();
        let mut name_pos: HashMap<String, Pos> = HashMap::new();
        let mut ip_owner: HashMap<Ipv4Addr, (String, Pos)> = HashMap::new();
        let mut to_allocate: Vec<usize> = Vec::new();

        for rules in rules::all() {
            rules.check_hosts(raw, defaults, rules.kind() == provider.kind(), self.d);
        }
        let mut entry_pos: HashMap<&str, Pos> = HashMap::new();
        for h in raw {
            // Two entries with one name would share machine names, state and inventory groups.
            if let Some(first) = entry_pos.get(h.name.v.as_str()) {
                self.d.error(h.name.pos, format!("host entry `{}` is defined twice (also on line {}) — rename one, or merge them into one entry with `count`", h.name.v, first.line));
            } else {
                entry_pos.insert(h.name.v.as_str(), h.name.pos);
            }
            let subnet = match &h.subnet {
                Some(s) => match network.subnets.iter().find(|n| n.name == s.v) {
                    Some(sn) => Some(sn),
                    None => {
                        self.d.error(s.pos, format!("subnet `{}` does not exist — {}", s.v, suggestion(&s.v, &subnet_names)));
                        None
                    }
                },
                None if network.subnets.len() == 1 => network.subnets.first(),
                None => {
                    if !network.subnets.is_empty() {
                        self.d.error(h.name.pos, format!("host `{}` must say which subnet it is in — add `subnet: {}`", h.name.v, subnet_names.join("|")));
                    }
                    None
                }
            };
            for f in &h.firewall {
                if !group_names.contains(&f.v.as_str()) {
                    self.d.error(f.pos, format!("firewall group `{}` does not exist — {}", f.v, suggestion(&f.v, &group_names)));
                }
            }
            let cores = h.cores(defaults);
            let core_fraction = h.core_fraction(defaults);
            let count = h.count();
            let Some(subnet) = subnet else { continue };
            let reserved = rules.reserved_addresses(&subnet.cidr);
            // Where the cloud has zones (its rules give a default one).
            let zoned = rules.default_zone(provider).is_some();
            if let (Some(zone), Some(subnet_zone), true) = (&h.zone, &subnet.zone, zoned) {
                if zone != subnet_zone {
                    self.d.error(h.name.pos, format!("host `{}` is in zone {zone}, but its subnet `{}` is in zone {subnet_zone} — a machine is in its subnet's zone: drop `zone`, or put the host in a subnet of {zone}", h.name.v, subnet.name));
                }
            }
            let mut range_ok = true;
            if let Some(ip) = &h.ip {
                let last = u32::from(ip.v).checked_add(count - 1).map(Ipv4Addr::from);
                range_ok = false;
                if !subnet.cidr.contains(&ip.v) {
                    self.d.error(ip.pos, format!("ip {} of host `{}` is outside its subnet `{}` ({}) — pick an address inside it", ip.v, h.name.v, subnet.name, subnet.cidr));
                } else if last.map_or(true, |l| !subnet.cidr.contains(&l) || l == subnet.cidr.broadcast()) {
                    self.d.error(ip.pos, format!("{count} hosts from {} run past the end of subnet `{}` ({}) — start lower or use a larger subnet", ip.v, subnet.name, subnet.cidr));
                } else {
                    range_ok = true;
                }
            }
            for i in 1..=count {
                let name = if h.count.is_some() { format!("{}-{i}", h.name.v) } else { h.name.v.clone() };
                if let Some(first) = name_pos.get(&name) {
                    self.d.error(h.name.pos, format!("host name `{name}` is used twice (also from line {}) — rename one of the hosts", first.line));
                    continue;
                }
                name_pos.insert(name.clone(), h.name.pos);
                let ip = h.ip.as_ref().map(|ip| Ipv4Addr::from(u32::from(ip.v).wrapping_add(i - 1)));
                if let (Some(addr), Some(at)) = (ip, &h.ip) {
                    if range_ok {
                        if addr == subnet.cidr.network() || addr == subnet.cidr.broadcast() {
                            self.d.error(at.pos, format!("ip {addr} of `{name}` is the network or broadcast address of {} — use a host address", subnet.cidr));
                        } else if addr == subnet.gateway {
                            self.d.error(at.pos, format!("ip {addr} of `{name}` is the gateway of subnet `{}` — pick another address", subnet.name));
                        } else if let Some((_, what)) = reserved.iter().find(|(r, _)| *r == addr) {
                            self.d.error(at.pos, format!("ip {addr} of `{name}` is kept by the cloud in subnet `{}` ({what}) — start the hosts' addresses higher", subnet.name));
                        } else if let Some((other, _)) = ip_owner.get(&addr) {
                            self.d.error(at.pos, format!("ip {addr} of `{name}` is already `{other}`'s — move one of the ranges"));
                        }
                    }
                    ip_owner.insert(addr, (name.clone(), at.pos));
                }
                if ip.is_none() {
                    to_allocate.push(hosts.len());
                }
                hosts.push(Host {
                    name,
                    group: h.name.v.clone(),
                    index: i,
                    roles: h.roles.iter().map(|r| r.v.clone()).collect(),
                    subnet: subnet.name.clone(),
                    ip: ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    image: h.image(&defaults).to_string(),
                    cores,
                    memory_bytes: h.memory(&defaults),
                    disk_bytes: h.disk(&defaults),
                    core_fraction,
                    firewall: h.firewall.iter().map(|f| f.v.clone()).collect(),
                    public_ip: h.public_ip,
                    vmid: h.vmid_of(i),
                    guest_kind: h.guest_kind(),
                    zone: h.zone.clone().or_else(|| subnet.zone.clone()),
                });
            }
        }
        // Hosts without an explicit ip get the first free address from .10 up,
        // in plan order, so the result does not depend on anything but the plan.
        let vip = root.get("services").and_then(|s| s.get(keepalived::NAME)).and_then(|k| k.get("vip")).and_then(|n| n.as_scalar()).and_then(|s| s.parse::<Ipv4Addr>().ok());
        for idx in to_allocate {
            let subnet = network.subnets.iter().find(|s| s.name == hosts[idx].subnet).expect("checked above");
            let start = u32::from(subnet.cidr.network()) + 10.min(subnet.cidr.hosts().count() as u32 / 2);
            let reserved = rules.reserved_addresses(&subnet.cidr);
            let free = (start..u32::from(subnet.cidr.broadcast()))
                .map(Ipv4Addr::from)
                .find(|a| *a != subnet.gateway && Some(*a) != vip && !ip_owner.contains_key(a) && !reserved.iter().any(|(r, _)| r == a));
            match free {
                Some(a) => {
                    ip_owner.insert(a, (hosts[idx].name.clone(), Pos::default()));
                    hosts[idx].ip = a;
                }
                None => {
                    let pos = name_pos.get(&hosts[idx].name).copied().unwrap_or_default();
                    self.d.error(pos, format!("subnet `{}` has no free address left for `{}` — use a larger subnet", subnet.name, hosts[idx].name));
                }
            }
        }
        hosts
    }

    fn services(&mut self, node: Option<&Node>, project: &str, hosts: &[HostEntry]) -> Option<BTreeMap<String, BTreeMap<String, Value>>> {
        let used: BTreeSet<&str> = hosts.iter().flat_map(|h| h.roles.iter().map(|r| r.v.as_str())).collect();
        let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        let given = node.filter(|n| !n.is_null());
        if let Some(n) = given {
            self.map(n, "services", &ROLES)?;
            for (k, v) in n.as_map().unwrap_or_default() {
                if let Some(role) = k.as_scalar().filter(|r| ROLES.contains(r)) {
                    if !used.contains(role) {
                        self.d.at(k, format!("services.{role} is set but no host has the role `{role}` — add the role to a host or remove these settings"));
                    }
                    if !v.is_null() {
                        self.map(v, &format!("services.{role}"), &services::settings(role).iter().map(|s| s.key).collect::<Vec<_>>());
                    }
                }
            }
        }
        for role in ROLES.iter().filter(|r| used.contains(*r)) {
            let section = given.and_then(|n| n.get(role)).filter(|n| !n.is_null());
            let mut values = BTreeMap::new();
            for setting in services::settings(role) {
                let what = format!("services.{role}.{}", setting.key);
                // An empty value (`ttl:` alone) is refused by the typed readers, at the key.
                let value = match section.and_then(|s| s.get(setting.key)) {
                    Some(n) => self.setting_value(n, setting.ty, &what),
                    None => {
                        if setting.required {
                            let role_pos = hosts.iter().flat_map(|h| h.roles.iter()).find(|r| r.v == *role).map(|r| r.pos);
                            let pos = section.map(|s| s.pos).or(given.map(|g| g.pos)).or(role_pos).unwrap_or_default();
                            self.d.error(pos, format!("the role `{role}` needs {what} — add it under services: {role}: {{ {}: … }} ({})", setting.key, setting.help));
                        }
                        setting.default.map(|f| f(project))
                    }
                };
                if let Some(v) = value {
                    values.insert(setting.key.to_string(), v);
                }
            }
            out.insert(role.to_string(), values);
        }
        self.check_shared_logins(&out, given);
        if let Some(p) = out.get_mut(patroni::NAME) {
            let section = given.and_then(|n| n.get(patroni::NAME)).filter(|n| !n.is_null());
            super::rto::apply_preset(self.d, section, p);
        }
        if let Some(p) = out.get(patroni::NAME) {
            let g = |k: &str| p.get(k).and_then(Value::as_i64).unwrap_or(0);
            if g("loop_wait") + 2 * g("retry_timeout") > g("ttl") {
                let pos = given.and_then(|n| n.get(patroni::NAME)).map(|n| n.pos).unwrap_or_default();
                self.d.error(pos, format!("patroni: loop_wait + 2*retry_timeout ({}) must not exceed ttl ({}) — raise ttl or lower the others", g("loop_wait") + 2 * g("retry_timeout"), g("ttl")));
            }
        }
        if let Some(h) = out.get(haproxy::NAME) {
            let ports: Vec<i64> = ["write_port", "read_port", "stats_port"].iter().filter_map(|k| h.get(*k).and_then(Value::as_i64)).collect();
            if ports.iter().collect::<BTreeSet<_>>().len() != ports.len() {
                let pos = given.and_then(|n| n.get(haproxy::NAME)).map(|n| n.pos).unwrap_or_default();
                self.d.error(pos, "haproxy write_port, read_port and stats_port must be different — change one of them");
            }
        }
        Some(out)
    }

    /// A database setting (`SettingType::Identifier`) names the database and
    /// its owner's login role (`database::ensure`). Two roles naming one
    /// would each set that login's password to their own secret, and every
    /// apply would undo the other's: refused, naming both places.
    fn check_shared_logins(&mut self, out: &BTreeMap<String, BTreeMap<String, Value>>, given: Option<&Node>) {
        let mut seen: Vec<(String, String, Option<Pos>)> = Vec::new();
        for (role, values) in out {
            for setting in services::settings(role).iter().filter(|s| s.ty == SettingType::Identifier) {
                let Some(name) = values.get(setting.key).and_then(Value::as_str) else { continue };
                let what = format!("services.{role}.{}", setting.key);
                let pos = given.and_then(|n| n.get(role)).and_then(|s| s.get(setting.key)).map(|n| n.pos);
                match seen.iter().find(|(n, ..)| n == name) {
                    Some((_, other, other_pos)) => {
                        let place = |p: &Option<Pos>| p.map_or("its default".to_string(), |p| format!("line {}", p.line));
                        let message = format!(
                            "{what} `{name}` ({}) is also {other} ({}) — a database is its owner's login role too, and the two roles would each set that login's password to their own secret, undoing each other on every apply; give {} another name",
                            place(&pos),
                            place(other_pos),
                            if pos.is_some() { &what } else { other }
                        );
                        self.d.error(pos.or(*other_pos).unwrap_or_default(), message);
                    }
                    None => seen.push((name.to_string(), what, pos)),
                }
            }
        }
    }

    fn setting_value(&mut self, node: &Node, ty: SettingType, what: &str) -> Option<Value> {
        match ty {
            SettingType::Int { min, max } => self.int(node, what, min, max).map(|a| json!(a.v)),
            SettingType::Bool => self.boolean(node, what).map(Value::Bool),
            SettingType::Ip => self.ip(node, what).map(|a| Value::String(a.v.to_string())),
            SettingType::List => Some(Value::Array(self.string_list(node, what).into_iter().filter_map(|s| self.text(s, SettingType::Str, what)).map(Value::String).collect())),
            SettingType::Map => {
                if self.empty(node, what, "a mapping such as `{ max_connections: 200 }`") {
                    return None;
                }
                let entries = node.as_map();
                if entries.is_none() {
                    self.d.at(node, format!("{what} must be a mapping, e.g. `{{ max_connections: 200 }}`"));
                }
                let mut m = serde_json::Map::new();
                for (k, v) in entries.unwrap_or_default() {
                    let key = k.as_scalar().map(|key| At { v: key.to_string(), pos: k.pos });
                    let key = key.and_then(|key| self.text(key, SettingType::Str, what));
                    let value = self.string(v, what).and_then(|s| self.text(s, SettingType::Str, what));
                    if let (Some(k), Some(v)) = (key, value) {
                        m.insert(k, Value::String(v));
                    }
                }
                Some(Value::Object(m))
            }
            text_type => self.string(node, what).and_then(|s| self.text(s, text_type, what)).map(Value::String),
        }
    }

    /// A text setting checked against its type (`setting_text`), at its position.
    fn text(&mut self, s: At<String>, ty: SettingType, what: &str) -> Option<String> {
        match super::setting_text::check(ty, what, &s.v) {
            Ok(()) => Some(s.v),
            Err(e) => {
                self.d.error(s.pos, e);
                None
            }
        }
    }

    /// Each role checks what it needs of the plan (`Role::check`), in the
    /// registry's order.
    fn check_roles(
        &mut self,
        hosts: &[Host],
        raw: &[HostEntry],
        services: &Option<BTreeMap<String, BTreeMap<String, Value>>>,
        network: &Network,
        root: &Node,
    ) {
        let role_pos = |role: &str| raw.iter().flat_map(|h| h.roles.iter()).find(|r| r.v == role).map(|r| r.pos).unwrap_or_default();
        let empty = BTreeMap::new();
        let at = PlanCheck { hosts, services: services.as_ref().unwrap_or(&empty), network, root, role_pos: &role_pos };
        for role in crate::hosts::roles::registry::ROLES {
            role.check(&at, self.d);
        }
    }
}

/// A subnet's first host address (its usual gateway).
pub(crate) fn first_host(net: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

fn pub_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}


/// `22`, `5432,8008`, `5000-5001`, `any`.
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, String> {
    if s.trim() == "any" {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let bad = || format!("ports `{s}` — write them like `22`, `5432,8008` or `5000-5001`");
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u16>().map_err(|_| bad())?, b.trim().parse::<u16>().map_err(|_| bad())?),
            None => {
                let p = part.parse::<u16>().map_err(|_| bad())?;
                (p, p)
            }
        };
        if from == 0 || to < from {
            return Err(format!("port range `{part}` is empty or starts at 0 — write it low-high, e.g. 5000-5001"));
        }
        out.push(PortRange { from, to });
    }
    Ok(out)
}
