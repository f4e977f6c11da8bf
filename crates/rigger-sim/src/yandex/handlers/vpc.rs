//! VPC: networks, subnets, security groups (`/vpc/v1/...`).

use super::{ListQuery, Reply, Shared};
use crate::yandex::state::{CidrBlocks, Completion, Kind, Labels, Network, Ports, Rule, SecurityGroup, Subnet, World};
use crate::yandex::validation as check;
use crate::yandex::wire::{now_rfc3339, ApiError, ApiResult, Body};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::collections::HashMap;

fn meta(kind: &str, field: &str, id: &str) -> Value {
    json!({"@type": format!("type.googleapis.com/yandex.cloud.vpc.v1.{kind}"), field: id})
}

/// Fields every create request has: folder, name, description, labels.
pub struct Common {
    pub folder_id: String,
    pub name: String,
    pub description: String,
    pub labels: Labels,
}

pub fn common(body: &Body) -> ApiResult<Common> {
    let folder_id = body.required_str("folderId")?.to_string();
    let name = body.str_or_empty("name")?.to_string();
    check::name("name", &name)?;
    let description = body.str_or_empty("description")?.to_string();
    if description.len() > 256 {
        return Err(ApiError::field("description", "The length must be less than or equal to 256"));
    }
    let labels = body.str_map("labels")?;
    check::labels(&labels)?;
    Ok(Common { folder_id, name, description, labels })
}

/// Apply the masked fields of an update that every resource shares.
fn apply_common_update(body: &Body, mask: &[String], name: &mut String, description: &mut String, labels: &mut Labels) -> ApiResult<()> {
    for field in mask {
        match field.as_str() {
            "name" => {
                let n = body.str_or_empty("name")?;
                check::name("name", n)?;
                *name = n.to_string();
            }
            "description" => *description = body.str_or_empty("description")?.to_string(),
            "labels" => {
                let l = body.str_map("labels")?;
                check::labels(&l)?;
                *labels = l;
            }
            _ => {}
        }
    }
    Ok(())
}

fn reject_unknown_mask(mask: &[String], allowed: &[&str]) -> ApiResult<()> {
    if mask.is_empty() {
        return Err(ApiError::field("update_mask", "Field is required"));
    }
    match mask.iter().find(|f| !allowed.contains(&f.as_str())) {
        Some(f) => Err(ApiError::field("update_mask", format!("field {f:?} cannot be updated; updatable fields: {}", allowed.join(", ")))),
        None => Ok(()),
    }
}

fn quota(count: usize, limit: u64, metric: &str) -> ApiResult<()> {
    if count as u64 >= limit {
        Err(ApiError::quota(metric, limit))
    } else {
        Ok(())
    }
}

// ---------- networks ----------

pub async fn list_networks(State(sim): Shared, Query(q): Query<HashMap<String, String>>) -> Reply {
    let q = ListQuery::parse(&q, &["name", "id"])?;
    Ok(Json(sim.with_world(|w| {
        q.page(
            w.networks.iter().filter(|(_, n)| n.folder_id == q.folder_id),
            |n, f| if f == "id" { n.id.clone() } else { n.name.clone() },
            |n| serde_json::to_value(n).unwrap_or_default(),
            "networks",
        )
    })))
}

pub async fn get_network(State(sim): Shared, Path(id): Path<String>) -> Reply {
    sim.with_world(|w| w.networks.get(&id).map(|n| json!(n)).ok_or_else(|| ApiError::not_found("Network", &id))).map(Json)
}

pub async fn create_network(State(sim): Shared, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let c = common(&Body(&v))?;
    sim.with_world(|w| {
        w.check_active_operations(&c.folder_id)?;
        w.check_unique_name(Kind::Network, &c.folder_id, &c.name)?;
        quota(w.networks.len(), w.quotas.networks, "vpc.networks.count")?;
        let id = w.id("enp");
        // Every network comes with a default security group, as in the real cloud.
        let sg_id = w.id("enp");
        w.security_groups.insert(
            sg_id.clone(),
            SecurityGroup {
                id: sg_id.clone(),
                folder_id: c.folder_id.clone(),
                created_at: now_rfc3339(),
                name: format!("default-sg-{id}"),
                description: format!("Default security group for network {id}"),
                labels: Labels::new(),
                network_id: id.clone(),
                status: "ACTIVE".into(),
                rules: Vec::new(),
                default_for_network: true,
            },
        );
        w.networks.insert(
            id.clone(),
            Network {
                id: id.clone(),
                folder_id: c.folder_id.clone(),
                created_at: now_rfc3339(),
                name: c.name.clone(),
                description: c.description,
                labels: c.labels,
                default_security_group_id: sg_id,
            },
        );
        w.record(Kind::Network, &c.folder_id, &c.name, &id);
        Ok(w.start_operation(&c.folder_id, "Create network", meta("CreateNetworkMetadata", "networkId", &id), Completion::Respond(Kind::Network, id)))
    })
    .map(Json)
}

pub async fn update_network(State(sim): Shared, Path(id): Path<String>, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let body = Body(&v);
    let mask = body.update_mask()?;
    reject_unknown_mask(&mask, &["name", "description", "labels"])?;
    sim.with_world(|w| {
        let folder = w.networks.get(&id).ok_or_else(|| ApiError::not_found("Network", &id))?.folder_id.clone();
        w.check_active_operations(&folder)?;
        if mask.iter().any(|f| f == "name") {
            let name = body.str_or_empty("name")?;
            if w.networks.values().any(|n| n.id != id && n.folder_id == folder && n.name == name && !name.is_empty()) {
                w.check_unique_name(Kind::Network, &folder, name)?;
            }
        }
        let n = w.networks.get_mut(&id).ok_or_else(|| ApiError::not_found("Network", &id))?;
        apply_common_update(&body, &mask, &mut n.name, &mut n.description, &mut n.labels)?;
        Ok(w.start_operation(&folder, "Update network", meta("UpdateNetworkMetadata", "networkId", &id), Completion::Respond(Kind::Network, id.clone())))
    })
    .map(Json)
}

pub async fn delete_network(State(sim): Shared, Path(id): Path<String>) -> Reply {
    sim.with_world(|w| {
        let folder = w.networks.get(&id).ok_or_else(|| ApiError::not_found("Network", &id))?.folder_id.clone();
        w.check_active_operations(&folder)?;
        let subnets = w.subnets.values().filter(|s| s.network_id == id).count();
        let groups = w.security_groups.values().filter(|g| g.network_id == id && !g.default_for_network).count();
        if subnets + groups > 0 {
            return Err(ApiError::precondition(format!(
                "Network {id} is not empty: it still has {subnets} subnet(s) and {groups} security group(s); delete them first"
            )));
        }
        Ok(w.start_operation(&folder, "Delete network", meta("DeleteNetworkMetadata", "networkId", &id), Completion::Remove(Kind::Network, id.clone())))
    })
    .map(Json)
}

// ---------- subnets ----------

pub async fn list_subnets(State(sim): Shared, Query(q): Query<HashMap<String, String>>) -> Reply {
    let q = ListQuery::parse(&q, &["name", "id", "network_id", "zone_id"])?;
    Ok(Json(sim.with_world(|w| {
        q.page(
            w.subnets.iter().filter(|(_, s)| s.folder_id == q.folder_id),
            |s, f| match f {
                "id" => s.id.clone(),
                "network_id" => s.network_id.clone(),
                "zone_id" => s.zone_id.clone(),
                _ => s.name.clone(),
            },
            |s| serde_json::to_value(s).unwrap_or_default(),
            "subnets",
        )
    })))
}

pub async fn get_subnet(State(sim): Shared, Path(id): Path<String>) -> Reply {
    sim.with_world(|w| w.subnets.get(&id).map(|s| json!(s)).ok_or_else(|| ApiError::not_found("Subnet", &id))).map(Json)
}

pub async fn create_subnet(State(sim): Shared, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let body = Body(&v);
    let c = common(&body)?;
    let network_id = body.required_str("networkId")?.to_string();
    let zone = body.required_str("zoneId")?.to_string();
    check::zone("zone_id", &zone)?;
    let blocks = body.str_list("v4CidrBlocks")?;
    if blocks.is_empty() {
        return Err(ApiError::field("v4_cidr_blocks", "at least one IPv4 CIDR block is required"));
    }
    let nets = blocks.iter().map(|b| check::subnet_cidr("v4_cidr_blocks", b)).collect::<ApiResult<Vec<Ipv4Net>>>()?;
    sim.with_world(|w| {
        if !w.networks.contains_key(&network_id) {
            return Err(ApiError::not_found("Network", &network_id));
        }
        w.check_active_operations(&c.folder_id)?;
        w.check_unique_name(Kind::Subnet, &c.folder_id, &c.name)?;
        quota(w.subnets.len(), w.quotas.subnets, "vpc.subnets.count")?;
        for other in w.subnets.values().filter(|s| s.network_id == network_id) {
            for theirs in other.v4_cidr_blocks.iter().filter_map(|b| b.parse::<Ipv4Net>().ok()) {
                if let Some(mine) = nets.iter().find(|n| check::overlaps(n, &theirs)) {
                    return Err(ApiError::field(
                        "v4_cidr_blocks",
                        format!("CIDR {mine} overlaps with CIDR {theirs} of subnet {} ({}) in network {network_id}", other.id, other.name),
                    ));
                }
            }
        }
        let prefix = match zone.as_str() {
            "ru-central1-b" => "e2l",
            "ru-central1-d" => "fl8",
            _ => "e9b",
        };
        let id = w.id(prefix);
        w.subnets.insert(
            id.clone(),
            Subnet {
                id: id.clone(),
                folder_id: c.folder_id.clone(),
                created_at: now_rfc3339(),
                name: c.name.clone(),
                description: c.description,
                labels: c.labels,
                network_id,
                zone_id: zone,
                v4_cidr_blocks: nets.iter().map(Ipv4Net::to_string).collect(),
            },
        );
        w.record(Kind::Subnet, &c.folder_id, &c.name, &id);
        Ok(w.start_operation(&c.folder_id, "Create subnet", meta("CreateSubnetMetadata", "subnetId", &id), Completion::Respond(Kind::Subnet, id)))
    })
    .map(Json)
}

pub async fn update_subnet(State(sim): Shared, Path(id): Path<String>, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let body = Body(&v);
    let mask = body.update_mask()?;
    reject_unknown_mask(&mask, &["name", "description", "labels"])?;
    sim.with_world(|w| {
        let folder = w.subnets.get(&id).ok_or_else(|| ApiError::not_found("Subnet", &id))?.folder_id.clone();
        w.check_active_operations(&folder)?;
        let s = w.subnets.get_mut(&id).ok_or_else(|| ApiError::not_found("Subnet", &id))?;
        apply_common_update(&body, &mask, &mut s.name, &mut s.description, &mut s.labels)?;
        Ok(w.start_operation(&folder, "Update subnet", meta("UpdateSubnetMetadata", "subnetId", &id), Completion::Respond(Kind::Subnet, id.clone())))
    })
    .map(Json)
}

pub async fn delete_subnet(State(sim): Shared, Path(id): Path<String>) -> Reply {
    sim.with_world(|w| {
        let folder = w.subnets.get(&id).ok_or_else(|| ApiError::not_found("Subnet", &id))?.folder_id.clone();
        w.check_active_operations(&folder)?;
        let users: Vec<&str> = w
            .instances
            .values()
            .filter(|i| i.network_interfaces.iter().any(|n| n.subnet_id == id))
            .map(|i| i.id.as_str())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::precondition(format!("Subnet {id} is in use by instance(s) {}", users.join(", "))));
        }
        Ok(w.start_operation(&folder, "Delete subnet", meta("DeleteSubnetMetadata", "subnetId", &id), Completion::Remove(Kind::Subnet, id.clone())))
    })
    .map(Json)
}

// ---------- security groups ----------

pub async fn list_security_groups(State(sim): Shared, Query(q): Query<HashMap<String, String>>) -> Reply {
    let q = ListQuery::parse(&q, &["name", "id", "network_id"])?;
    Ok(Json(sim.with_world(|w| {
        q.page(
            w.security_groups.iter().filter(|(_, g)| g.folder_id == q.folder_id),
            |g, f| match f {
                "id" => g.id.clone(),
                "network_id" => g.network_id.clone(),
                _ => g.name.clone(),
            },
            |g| serde_json::to_value(g).unwrap_or_default(),
            "securityGroups",
        )
    })))
}

pub async fn get_security_group(State(sim): Shared, Path(id): Path<String>) -> Reply {
    sim.with_world(|w| w.security_groups.get(&id).map(|g| json!(g)).ok_or_else(|| ApiError::not_found("Security group", &id)))
        .map(Json)
}

/// One `ruleSpecs` entry, stored the way the server keeps it (upper-case protocol, number added).
fn parse_rule(w: &mut World, spec: &Body, field: &str) -> ApiResult<Rule> {
    let f = |name: &str| format!("{field}.{name}");
    let direction = spec.required_str("direction").map_err(|_| ApiError::field(&f("direction"), "Field is required"))?;
    if direction != "INGRESS" && direction != "EGRESS" {
        return Err(ApiError::field(&f("direction"), format!("invalid value {direction:?}; expected INGRESS or EGRESS")));
    }
    let (protocol_name, protocol_number) = match (spec.str("protocolName")?, spec.int64("protocolNumber")?) {
        (Some(name), _) => match name.to_ascii_uppercase().as_str() {
            "TCP" => ("TCP", 6),
            "UDP" => ("UDP", 17),
            "ICMP" => ("ICMP", 1),
            "ANY" => ("ANY", -1),
            other => return Err(ApiError::field(&f("protocol_name"), format!("unknown protocol {other:?}; use TCP, UDP, ICMP or ANY"))),
        },
        (None, Some(6)) => ("TCP", 6),
        (None, Some(17)) => ("UDP", 17),
        (None, Some(1)) => ("ICMP", 1),
        (None, Some(n)) => return Err(ApiError::field(&f("protocol_number"), format!("unsupported protocol number {n}"))),
        (None, None) => ("ANY", -1),
    };
    let ports = match spec.get("ports") {
        None => None,
        Some(_) => {
            let p = spec.child("ports");
            let from = p.int64("fromPort")?.unwrap_or(0);
            let to = p.int64("toPort")?.unwrap_or(65535);
            if !(0..=65535).contains(&from) || !(0..=65535).contains(&to) || from > to {
                return Err(ApiError::field(&f("ports"), format!("invalid port range {from}-{to}: ports are 0..65535 and fromPort <= toPort")));
            }
            if protocol_name == "ICMP" {
                return Err(ApiError::field(&f("ports"), "ports cannot be set for ICMP"));
            }
            Some(Ports { from_port: from, to_port: to })
        }
    };
    let cidrs = spec.child("cidrBlocks").str_list("v4CidrBlocks")?;
    let group = spec.str("securityGroupId")?.filter(|s| !s.is_empty()).map(str::to_string);
    let predefined = spec.str("predefinedTarget")?.filter(|s| !s.is_empty()).map(str::to_string);
    let targets = usize::from(!cidrs.is_empty()) + usize::from(group.is_some()) + usize::from(predefined.is_some());
    if targets != 1 {
        return Err(ApiError::field(field, "exactly one of cidrBlocks, securityGroupId, predefinedTarget must be set"));
    }
    for c in &cidrs {
        let net: Ipv4Net = c.parse().map_err(|_| ApiError::field(&f("cidr_blocks.v4_cidr_blocks"), format!("{c:?} is not a valid IPv4 CIDR")))?;
        if net.network() != net.addr() {
            return Err(ApiError::field(&f("cidr_blocks.v4_cidr_blocks"), format!("{c} has host bits set; did you mean {}?", net.trunc())));
        }
    }
    if let Some(g) = &group {
        if !w.security_groups.contains_key(g) {
            return Err(ApiError::not_found("Security group", g));
        }
    }
    if let Some(p) = &predefined {
        if p != "self_security_group" && p != "loadbalancer_healthchecks" {
            return Err(ApiError::field(&f("predefined_target"), format!("unknown predefined target {p:?}")));
        }
    }
    let description = spec.str_or_empty("description")?.to_string();
    Ok(Rule {
        id: w.id("enp"),
        description,
        direction: direction.to_string(),
        ports,
        protocol_name: protocol_name.to_string(),
        protocol_number,
        cidr_blocks: (!cidrs.is_empty()).then_some(CidrBlocks { v4_cidr_blocks: cidrs }),
        security_group_id: group,
        predefined_target: predefined,
    })
}

fn parse_rules(w: &mut World, specs: &[Body], field: &str) -> ApiResult<Vec<Rule>> {
    let rules = specs.iter().enumerate().map(|(i, s)| parse_rule(w, s, &format!("{field}[{i}]"))).collect::<ApiResult<Vec<_>>>()?;
    if rules.len() as u64 > w.quotas.rules_per_security_group {
        return Err(ApiError::quota("vpc.securityGroupRules.count", w.quotas.rules_per_security_group));
    }
    Ok(rules)
}

pub async fn create_security_group(State(sim): Shared, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let body = Body(&v);
    let c = common(&body)?;
    let network_id = body.required_str("networkId")?.to_string();
    let specs = body.list("ruleSpecs")?;
    sim.with_world(|w| {
        if !w.networks.contains_key(&network_id) {
            return Err(ApiError::not_found("Network", &network_id));
        }
        w.check_active_operations(&c.folder_id)?;
        w.check_unique_name(Kind::SecurityGroup, &c.folder_id, &c.name)?;
        quota(w.security_groups.len(), w.quotas.security_groups, "vpc.securityGroups.count")?;
        let rules = parse_rules(w, &specs, "rule_specs")?;
        let id = w.id("enp");
        w.security_groups.insert(
            id.clone(),
            SecurityGroup {
                id: id.clone(),
                folder_id: c.folder_id.clone(),
                created_at: now_rfc3339(),
                name: c.name.clone(),
                description: c.description,
                labels: c.labels,
                network_id,
                status: "ACTIVE".into(),
                rules,
                default_for_network: false,
            },
        );
        w.record(Kind::SecurityGroup, &c.folder_id, &c.name, &id);
        Ok(w.start_operation(
            &c.folder_id,
            "Create security group",
            meta("CreateSecurityGroupMetadata", "securityGroupId", &id),
            Completion::Respond(Kind::SecurityGroup, id),
        ))
    })
    .map(Json)
}

pub async fn update_security_group(State(sim): Shared, Path(id): Path<String>, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let body = Body(&v);
    let mask = body.update_mask()?;
    reject_unknown_mask(&mask, &["name", "description", "labels", "ruleSpecs", "rule_specs"])?;
    let specs = body.list("ruleSpecs")?;
    sim.with_world(|w| {
        let folder = w.security_groups.get(&id).ok_or_else(|| ApiError::not_found("Security group", &id))?.folder_id.clone();
        w.check_active_operations(&folder)?;
        // Masked ruleSpecs replace every rule; a masked field missing from the body resets it.
        let new_rules = if mask.iter().any(|m| m == "ruleSpecs" || m == "rule_specs") { Some(parse_rules(w, &specs, "rule_specs")?) } else { None };
        let g = w.security_groups.get_mut(&id).ok_or_else(|| ApiError::not_found("Security group", &id))?;
        apply_common_update(&body, &mask, &mut g.name, &mut g.description, &mut g.labels)?;
        if let Some(rules) = new_rules {
            g.rules = rules;
        }
        Ok(w.start_operation(
            &folder,
            "Update security group",
            meta("UpdateSecurityGroupMetadata", "securityGroupId", &id),
            Completion::Respond(Kind::SecurityGroup, id.clone()),
        ))
    })
    .map(Json)
}

pub async fn update_security_group_rules(State(sim): Shared, Path(id): Path<String>, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let body = Body(&v);
    let deletions = body.str_list("deletionRuleIds")?;
    let additions = body.list("additionRuleSpecs")?;
    sim.with_world(|w| {
        let g = w.security_groups.get(&id).ok_or_else(|| ApiError::not_found("Security group", &id))?;
        let folder = g.folder_id.clone();
        if let Some(missing) = deletions.iter().find(|d| !g.rules.iter().any(|r| &r.id == *d)) {
            return Err(ApiError::not_found("Security group rule", missing));
        }
        let kept = g.rules.len() - deletions.len();
        w.check_active_operations(&folder)?;
        let added = parse_rules(w, &additions, "addition_rule_specs")?;
        if (kept + added.len()) as u64 > w.quotas.rules_per_security_group {
            return Err(ApiError::quota("vpc.securityGroupRules.count", w.quotas.rules_per_security_group));
        }
        let g = w.security_groups.get_mut(&id).ok_or_else(|| ApiError::not_found("Security group", &id))?;
        g.rules.retain(|r| !deletions.contains(&r.id));
        g.rules.extend(added);
        Ok(w.start_operation(
            &folder,
            "Update security group rules",
            meta("UpdateSecurityGroupMetadata", "securityGroupId", &id),
            Completion::Respond(Kind::SecurityGroup, id.clone()),
        ))
    })
    .map(Json)
}

pub async fn delete_security_group(State(sim): Shared, Path(id): Path<String>) -> Reply {
    sim.with_world(|w| {
        let g = w.security_groups.get(&id).ok_or_else(|| ApiError::not_found("Security group", &id))?;
        if g.default_for_network {
            return Err(ApiError::precondition(format!("Security group {id} is the default group of network {}", g.network_id)));
        }
        let folder = g.folder_id.clone();
        w.check_active_operations(&folder)?;
        let users: Vec<&str> = w
            .instances
            .values()
            .filter(|i| i.network_interfaces.iter().any(|n| n.security_group_ids.contains(&id)))
            .map(|i| i.id.as_str())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::precondition(format!("Security group {id} is in use by instance(s) {}", users.join(", "))));
        }
        Ok(w.start_operation(
            &folder,
            "Delete security group",
            meta("DeleteSecurityGroupMetadata", "securityGroupId", &id),
            Completion::Remove(Kind::SecurityGroup, id.clone()),
        ))
    })
    .map(Json)
}
