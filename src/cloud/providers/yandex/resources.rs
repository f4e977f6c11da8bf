//! The plan in Yandex Cloud's terms, and live resources read back into exactly
//! the same shape, so a re-plan right after apply shows no change.
//!
//! Attribute shapes follow what the server stores: upper-case protocol names,
//! ports as `{fromPort,toPort}` strings, CIDRs in canonical form. Cross-resource
//! references are kept as plan *names* (not ids) so they stay stable across
//! replacements; ids are resolved at create time.

use crate::plan::model::{FirewallGroup, Host, Peer, Plan, Protocol, Rule, YandexConfig};
use crate::cloud::resource::{Address, Attrs, Kind, LiveResource, ResourceSpec};
use super::lifecycle;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub const PROJECT_LABEL: &str = "rigger-project";
/// The image family an instance was made from (the API only keeps the image id, on the disk).
pub const IMAGE_LABEL: &str = "rigger-image";
/// Digest of the metadata we set: List answers omit metadata, so refresh compares this instead.
pub const METADATA_LABEL: &str = "rigger-metadata";
pub const IMAGE_FOLDER: &str = "standard-images";
pub const DISK_TYPE: &str = "network-ssd";

/// Cloud names are `<project>-<plan name>`, unique per folder.
#[derive(Clone, Debug)]
pub struct Naming {
    pub project: String,
}

impl Naming {
    pub fn cloud_name(&self, name: &str) -> String {
        format!("{}-{}", self.project, name)
    }
    pub fn plan_name<'a>(&self, cloud_name: &'a str) -> Option<&'a str> {
        cloud_name.strip_prefix(&self.project)?.strip_prefix('-')
    }
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(PROJECT_LABEL.to_string(), self.project.clone())])
    }
    pub fn owns(&self, resource: &Value) -> bool {
        resource.pointer(&format!("/labels/{PROJECT_LABEL}")).and_then(Value::as_str) == Some(self.project.as_str())
    }
}

fn check_cloud_name(addr: &Address, name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    if !ok {
        bail!("{addr}: the cloud name {name:?} (project + name) must match [a-z]([-a-z0-9]{{0,61}}[a-z0-9])?: use lower-case letters, digits and dashes, at most 63 characters");
    }
    Ok(())
}

fn attrs(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Attrs {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- specs

pub fn specs(plan: &Plan, cfg: &YandexConfig) -> Result<Vec<ResourceSpec>> {
    let naming = Naming { project: plan.project.clone() };
    let labels = json!(naming.labels());
    let network = Address::new(Kind::Network, &plan.network.name);
    let mut out = Vec::new();

    check_cloud_name(&network, &naming.cloud_name(&plan.network.name))?;
    out.push(ResourceSpec {
        address: network.clone(),
        depends_on: vec![],
        attrs: attrs([("labels", labels.clone())]),
        replace_on: BTreeSet::new(),
        sensitive: BTreeSet::new(),
    });

    for s in &plan.network.subnets {
        let addr = Address::new(Kind::Subnet, &s.name);
        check_cloud_name(&addr, &naming.cloud_name(&s.name))?;
        out.push(ResourceSpec {
            address: addr,
            depends_on: vec![network.clone()],
            attrs: attrs([
                ("network", json!(plan.network.name)),
                ("zone", json!(s.zone.as_deref().unwrap_or(&cfg.zone))),
                ("v4_cidr_blocks", json!([s.cidr.trunc().to_string()])),
                ("labels", labels.clone()),
            ]),
            replace_on: set(&["network", "zone", "v4_cidr_blocks"]),
            sensitive: BTreeSet::new(),
        });
    }

    // Groups depend on the network only, even when their rules name each other:
    // a group whose rules name another that does not exist yet makes it empty
    // under its final name (its own create adopts it and sets its rules), so
    // every group is made in the same step, whatever references they hold.
    for g in &plan.firewall {
        let addr = Address::new(Kind::Firewall, &g.name);
        check_cloud_name(&addr, &naming.cloud_name(&g.name))?;
        out.push(ResourceSpec {
            address: addr,
            depends_on: vec![network.clone()],
            attrs: attrs([("network", json!(plan.network.name)), ("rules", json!(group_rules(g))), ("labels", labels.clone())]),
            replace_on: set(&["network"]),
            sensitive: BTreeSet::new(),
        });
    }

    if !plan.hosts.is_empty() {
        let public_key = std::fs::read_to_string(&plan.ssh.public_key_file)
            .with_context(|| format!("reading the SSH public key {} (ssh.public_key_file)", plan.ssh.public_key_file.display()))?;
        let metadata = instance_metadata(&plan.ssh.user, public_key.trim());
        for h in &plan.hosts {
            out.push(machine_spec(plan, cfg, &naming, h, &metadata)?);
        }
    }
    Ok(out)
}

fn machine_spec(plan: &Plan, cfg: &YandexConfig, naming: &Naming, h: &Host, metadata: &BTreeMap<String, String>) -> Result<ResourceSpec> {
    let addr = Address::new(Kind::Machine, &h.name);
    check_cloud_name(&addr, &naming.cloud_name(&h.name))?;
    let subnet = plan.subnet(&h.subnet).with_context(|| format!("{addr}: unknown subnet {:?}", h.subnet))?;
    let zone = h.zone.as_deref().or(subnet.zone.as_deref()).unwrap_or(&cfg.zone);
    let mut groups: Vec<&str> = h.firewall.iter().map(String::as_str).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut depends_on = vec![Address::new(Kind::Subnet, &h.subnet)];
    depends_on.extend(groups.iter().map(|g| Address::new(Kind::Firewall, *g)));
    Ok(ResourceSpec {
        address: addr,
        depends_on,
        attrs: attrs([
            ("zone", json!(zone)),
            ("platform", json!(cfg.platform)),
            ("cores", json!(h.cores)),
            ("memory", json!(h.memory_bytes)),
            ("core_fraction", json!(h.core_fraction)),
            ("disk_size", json!(h.disk_bytes)),
            ("disk_type", json!(DISK_TYPE)),
            ("image", json!(h.image)),
            ("hostname", json!(h.name)),
            ("subnet", json!(h.subnet)),
            ("ip", json!(h.ip.to_string())),
            ("public_ip", json!(h.public_ip)),
            ("security_groups", json!(groups)),
            ("metadata", json!(metadata)),
            ("labels", json!(naming.labels())),
            // Status is desired too: a STOPPED instance (stopped behind rigger's
            // back, or left so by a failed start or a killed run) is started in
            // place; why an ERROR one is not replaced: lifecycle.rs.
            ("status", json!(lifecycle::RUNNING)),
        ]),
        replace_on: set(&["zone", "image", "subnet", "ip", "hostname", "disk_size", "disk_type", "public_ip"]),
        sensitive: BTreeSet::new(),
    })
}

/// `ssh-keys` for the images' own agent and `user-data` for cloud-init: both create
/// the SSH user with the key and password-less sudo.
pub fn instance_metadata(user: &str, public_key: &str) -> BTreeMap<String, String> {
    let user_data = format!(
        "#cloud-config\n\
         users:\n  \
           - name: {user}\n    \
             groups: sudo\n    \
             shell: /bin/bash\n    \
             sudo: 'ALL=(ALL) NOPASSWD:ALL'\n    \
             ssh_authorized_keys:\n      \
               - {public_key}\n"
    );
    BTreeMap::from([("ssh-keys".to_string(), format!("{user}:{public_key}")), ("user-data".to_string(), user_data)])
}

/// Whether `metadata` is what the instance's digest label says it was given.
pub fn metadata_matches(instance: &Value, metadata: &Value) -> bool {
    instance.pointer(&format!("/labels/{METADATA_LABEL}")).and_then(Value::as_str) == Some(metadata_digest(metadata).as_str())
}

/// A short digest that fits a label value.
pub fn metadata_digest(metadata: &Value) -> String {
    let mut h = Sha256::new();
    h.update(metadata.to_string().as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The group's rules as the server stores them: one rule per port range, sorted.
pub fn group_rules(g: &FirewallGroup) -> Vec<Value> {
    let mut rules: Vec<Value> = g.rules.iter().flat_map(|r| rule_attrs(&g.name, r)).collect();
    sort_rules(&mut rules);
    rules
}

fn rule_attrs(own_group: &str, r: &Rule) -> Vec<Value> {
    let direction = match r.direction {
        crate::plan::model::Direction::Ingress => "INGRESS",
        crate::plan::model::Direction::Egress => "EGRESS",
    };
    let protocol = match r.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Icmp => "ICMP",
        Protocol::Any => "ANY",
    };
    let mut base = serde_json::Map::new();
    base.insert("direction".into(), json!(direction));
    base.insert("protocolName".into(), json!(protocol));
    match &r.peer {
        Peer::Cidrs(cidrs) => {
            let blocks: Vec<String> = cidrs.iter().map(|c| c.trunc().to_string()).collect();
            base.insert("cidrBlocks".into(), json!({ "v4CidrBlocks": blocks }));
        }
        Peer::Group(g) if g == own_group => {
            base.insert("predefinedTarget".into(), json!("self_security_group"));
        }
        Peer::Group(g) => {
            base.insert("securityGroup".into(), json!(g));
        }
    }
    if let Some(d) = r.description.as_deref().filter(|d| !d.is_empty()) {
        base.insert("description".into(), json!(d));
    }
    // ICMP has no ports; an empty list means every port, which the server stores as no `ports`.
    if r.ports.is_empty() || r.protocol == Protocol::Icmp {
        return vec![Value::Object(base)];
    }
    r.ports
        .iter()
        .map(|p| {
            let mut rule = base.clone();
            rule.insert("ports".into(), json!({"fromPort": p.from.to_string(), "toPort": p.to.to_string()}));
            Value::Object(rule)
        })
        .collect()
}

fn sort_rules(rules: &mut [Value]) {
    rules.sort_by_key(|r| r.to_string());
}

/// Rule attrs → `ruleSpecs` of a request: group names become ids via `group_id`.
pub fn rule_specs(rules: &Value, mut group_id: impl FnMut(&str) -> Result<String>) -> Result<Vec<Value>> {
    let mut specs = Vec::new();
    for rule in rules.as_array().into_iter().flatten() {
        let mut spec = rule.as_object().cloned().unwrap_or_default();
        if let Some(name) = spec.remove("securityGroup") {
            let name = name.as_str().unwrap_or_default().to_string();
            spec.insert("securityGroupId".into(), json!(group_id(&name)?));
        }
        specs.push(Value::Object(spec));
    }
    Ok(specs)
}

// ---------------------------------------------------------------- live

/// Ids → plan names of this project's resources, to express references by name.
#[derive(Default, Debug)]
pub struct Names {
    pub networks: HashMap<String, String>,
    pub subnets: HashMap<String, String>,
    pub groups: HashMap<String, String>,
    /// The groups the cloud gives each network: an interface created without groups
    /// gets its network's one, which the plan does not ask for and should not see.
    pub default_groups: BTreeSet<String>,
}

impl Names {
    /// From the live resources handed to create/update as dependencies.
    pub fn from_deps<'a>(deps: impl IntoIterator<Item = &'a LiveResource>) -> Names {
        let mut n = Names::default();
        for d in deps {
            let map = match d.address.kind {
                Kind::Network => &mut n.networks,
                Kind::Subnet => &mut n.subnets,
                Kind::Firewall => &mut n.groups,
                Kind::Machine => continue,
            };
            map.insert(d.id.clone(), d.address.name.clone());
        }
        n
    }
    fn name(map: &HashMap<String, String>, id: &str) -> Value {
        json!(map.get(id).cloned().unwrap_or_else(|| id.to_string()))
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// int64 arrives as a string (or, leniently, a number).
fn int(v: &Value, pointer: &str) -> u64 {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn user_labels(v: &Value) -> Value {
    let mut labels: BTreeMap<String, Value> = v.get("labels").and_then(Value::as_object).map(|m| m.clone().into_iter().collect()).unwrap_or_default();
    labels.remove(IMAGE_LABEL);
    labels.remove(METADATA_LABEL);
    json!(labels)
}

fn live(kind: Kind, naming: &Naming, v: &Value, attrs: Attrs, outputs: Attrs) -> Option<LiveResource> {
    let name = naming.plan_name(s(v, "/name"))?;
    Some(LiveResource { address: Address::new(kind, name), id: s(v, "/id").to_string(), attrs, outputs })
}

pub fn live_network(v: &Value, naming: &Naming) -> Option<LiveResource> {
    live(
        Kind::Network,
        naming,
        v,
        attrs([("labels", user_labels(v))]),
        attrs([("id", json!(s(v, "/id"))), ("default_security_group_id", json!(s(v, "/defaultSecurityGroupId")))]),
    )
}

pub fn live_subnet(v: &Value, naming: &Naming, names: &Names) -> Option<LiveResource> {
    let blocks: Vec<String> = v
        .get("v4CidrBlocks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|b| b.parse::<ipnet::Ipv4Net>().map(|n| n.trunc().to_string()).unwrap_or_else(|_| b.to_string()))
        .collect();
    live(
        Kind::Subnet,
        naming,
        v,
        attrs([
            ("network", Names::name(&names.networks, s(v, "/networkId"))),
            ("zone", json!(s(v, "/zoneId"))),
            ("v4_cidr_blocks", json!(blocks)),
            ("labels", user_labels(v)),
        ]),
        attrs([("id", json!(s(v, "/id"))), ("zone", json!(s(v, "/zoneId")))]),
    )
}

/// A stored rule in the attribute shape of `group_rules`.
fn live_rule(r: &Value, names: &Names) -> Value {
    let mut rule = serde_json::Map::new();
    rule.insert("direction".into(), json!(s(r, "/direction")));
    rule.insert("protocolName".into(), json!(s(r, "/protocolName").to_ascii_uppercase()));
    if r.get("ports").is_some_and(|p| !p.is_null()) {
        rule.insert("ports".into(), json!({"fromPort": int(r, "/ports/fromPort").to_string(), "toPort": int(r, "/ports/toPort").to_string()}));
    }
    if let Some(blocks) = r.pointer("/cidrBlocks/v4CidrBlocks").and_then(Value::as_array).filter(|b| !b.is_empty()) {
        let blocks: Vec<String> = blocks
            .iter()
            .filter_map(Value::as_str)
            .map(|b| b.parse::<ipnet::Ipv4Net>().map(|n| n.trunc().to_string()).unwrap_or_else(|_| b.to_string()))
            .collect();
        rule.insert("cidrBlocks".into(), json!({ "v4CidrBlocks": blocks }));
    }
    let group = s(r, "/securityGroupId");
    if !group.is_empty() {
        rule.insert("securityGroup".into(), Names::name(&names.groups, group));
    }
    let target = s(r, "/predefinedTarget");
    if !target.is_empty() {
        rule.insert("predefinedTarget".into(), json!(target));
    }
    let description = s(r, "/description");
    if !description.is_empty() {
        rule.insert("description".into(), json!(description));
    }
    Value::Object(rule)
}

pub fn live_security_group(v: &Value, naming: &Naming, names: &Names) -> Option<LiveResource> {
    let mut rules: Vec<Value> = v.get("rules").and_then(Value::as_array).into_iter().flatten().map(|r| live_rule(r, names)).collect();
    sort_rules(&mut rules);
    live(
        Kind::Firewall,
        naming,
        v,
        attrs([("network", Names::name(&names.networks, s(v, "/networkId"))), ("rules", json!(rules)), ("labels", user_labels(v))]),
        attrs([("id", json!(s(v, "/id")))]),
    )
}

/// `metadata` is not in List answers: when the digest label still matches what the
/// state remembers, the remembered metadata is current; otherwise refresh reads the
/// instance with `view=FULL`. An answer with neither reports the digest alone,
/// which differs from any plan and so leads to an update.
pub fn live_instance(v: &Value, disk: Option<&Value>, naming: &Naming, names: &Names, known_metadata: Option<&Value>) -> Option<LiveResource> {
    let nic = v.pointer("/networkInterfaces/0").cloned().unwrap_or(Value::Null);
    let private_ip = s(&nic, "/primaryV4Address/address").to_string();
    let public_ip = s(&nic, "/primaryV4Address/oneToOneNat/address").to_string();
    let mut groups: Vec<Value> = nic
        .get("securityGroupIds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|id| !names.default_groups.contains(*id))
        .map(|id| Names::name(&names.groups, id))
        .collect();
    groups.sort_by_key(|g| g.to_string());
    let metadata = match (v.get("metadata"), known_metadata) {
        (Some(m), _) if m.is_object() => m.clone(),
        (_, Some(known)) if metadata_matches(v, known) => known.clone(),
        _ => json!({ METADATA_LABEL: s(v, &format!("/labels/{METADATA_LABEL}")) }),
    };
    let zone = s(v, "/zoneId");
    let hostname = s(v, "/fqdn").split('.').next().unwrap_or("").to_string();
    let image = v.pointer(&format!("/labels/{IMAGE_LABEL}")).cloned().unwrap_or(Value::Null);
    let (disk_size, disk_type) = match disk {
        Some(d) => (json!(int(d, "/size")), json!(s(d, "/typeId"))),
        None => (Value::Null, Value::Null),
    };
    let id = s(v, "/id");
    let ssh_host = if public_ip.is_empty() { private_ip.clone() } else { public_ip.clone() };
    let mut outputs = attrs([
        ("id", json!(id)),
        ("ssh_host", json!(ssh_host)),
        ("private_ip", json!(private_ip)),
        ("zone", json!(zone)),
        ("fqdn", json!(s(v, "/fqdn"))),
        ("status", json!(s(v, "/status"))),
    ]);
    if !public_ip.is_empty() {
        outputs.insert("public_ip".into(), json!(public_ip));
    }
    live(
        Kind::Machine,
        naming,
        v,
        attrs([
            ("zone", json!(zone)),
            ("platform", json!(s(v, "/platformId"))),
            ("cores", json!(int(v, "/resources/cores"))),
            ("memory", json!(int(v, "/resources/memory"))),
            ("core_fraction", json!(int(v, "/resources/coreFraction"))),
            ("disk_size", disk_size),
            ("disk_type", disk_type),
            ("image", image),
            ("hostname", json!(hostname)),
            ("subnet", Names::name(&names.subnets, s(&nic, "/subnetId"))),
            ("ip", json!(private_ip)),
            ("public_ip", json!(!public_ip.is_empty())),
            ("security_groups", json!(groups)),
            ("metadata", metadata),
            ("labels", user_labels(v)),
            ("status", json!(s(v, "/status"))),
        ]),
        outputs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::model::{Direction, PortRange};

    fn rule(protocol: Protocol, ports: Vec<(u16, u16)>, peer: Peer) -> Rule {
        Rule { direction: Direction::Ingress, protocol, ports: ports.into_iter().map(|(from, to)| PortRange { from, to }).collect(), peer, description: None }
    }

    #[test]
    fn plan_rules_and_stored_rules_normalise_alike() {
        let g = FirewallGroup {
            name: "db".into(),
            rules: vec![
                rule(Protocol::Tcp, vec![(5432, 5432), (8008, 8008)], Peer::Group("db".into())),
                rule(Protocol::Tcp, vec![(5000, 5001)], Peer::Group("app".into())),
                rule(Protocol::Any, vec![], Peer::Cidrs(vec!["10.20.0.5/24".parse().unwrap()])),
            ],
        };
        let planned = group_rules(&g);
        assert_eq!(planned.len(), 4);
        // What the server would store for them.
        let stored = json!({"name": "p-db", "id": "g1", "networkId": "n1", "labels": {"rigger-project": "p"}, "rules": [
            {"id": "r1", "direction": "INGRESS", "protocolName": "ANY", "protocolNumber": "-1", "cidrBlocks": {"v4CidrBlocks": ["10.20.0.0/24"]}},
            {"id": "r2", "direction": "INGRESS", "protocolName": "TCP", "protocolNumber": "6", "ports": {"fromPort": "8008", "toPort": "8008"}, "predefinedTarget": "self_security_group"},
            {"id": "r3", "direction": "INGRESS", "protocolName": "TCP", "protocolNumber": "6", "ports": {"fromPort": "5432", "toPort": "5432"}, "predefinedTarget": "self_security_group"},
            {"id": "r4", "direction": "INGRESS", "protocolName": "TCP", "protocolNumber": "6", "ports": {"fromPort": 5000, "toPort": 5001}, "securityGroupId": "g2"},
        ]});
        let names = Names { groups: HashMap::from([("g2".to_string(), "app".to_string())]), networks: HashMap::from([("n1".to_string(), "main".to_string())]), ..Default::default() };
        let live = live_security_group(&stored, &Naming { project: "p".into() }, &names).unwrap();
        assert_eq!(live.address, Address::new(Kind::Firewall, "db"));
        assert_eq!(live.attrs["rules"], json!(planned));
        let specs = rule_specs(&json!(planned), |n| Ok(format!("id-of-{n}"))).unwrap();
        assert!(specs.iter().any(|s| s["securityGroupId"] == "id-of-app"));
    }

    #[test]
    fn metadata_digest_fits_a_label() {
        let d = metadata_digest(&json!(instance_metadata("rigger", "ssh-ed25519 AAAA x@y")));
        assert_eq!(d.len(), 32);
        assert!(d.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
