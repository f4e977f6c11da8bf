//! Compute: images, disks and instances (`/compute/v1/...`).

use super::vpc::common;
use super::{ListQuery, Reply, Shared};
use crate::yandex::state::{AttachedDisk, Completion, Disk, Instance, Kind, NetworkInterface, OneToOneNat, PrimaryAddress, Resources, World};
use crate::yandex::validation as check;
use crate::yandex::{console, ConsoleKeys, Sim};
use crate::yandex::wire::{now_rfc3339, ApiError, ApiResult, Body, Code};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use ipnet::Ipv4Net;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

fn meta(kind: &str, id: &str) -> Value {
    json!({"@type": format!("type.googleapis.com/yandex.cloud.compute.v1.{kind}"), "instanceId": id})
}

fn instance_not_found(id: &str) -> ApiError {
    ApiError::not_found("Instance", id)
}

// ---------- images and disks ----------

pub async fn latest_image_by_family(State(sim): Shared, Query(q): Query<HashMap<String, String>>) -> Reply {
    let folder = q.get("folderId").filter(|s| !s.is_empty()).ok_or_else(|| ApiError::field("folder_id", "Field is required"))?;
    let family = q.get("family").filter(|s| !s.is_empty()).ok_or_else(|| ApiError::field("family", "Field is required"))?;
    sim.with_world(|w| {
        w.images
            .values()
            .filter(|i| &i.folder_id == folder && &i.family == family && i.status == "READY")
            .max_by(|a, b| a.created_at.cmp(&b.created_at))
            .map(|i| json!(i))
            .ok_or_else(|| ApiError::new(Code::NotFound, format!("Image family {family} not found in folder {folder}")))
    })
    .map(Json)
}

pub async fn get_image(State(sim): Shared, Path(id): Path<String>) -> Reply {
    sim.with_world(|w| w.images.get(&id).map(|i| json!(i)).ok_or_else(|| ApiError::not_found("Image", &id))).map(Json)
}

pub async fn list_disks(State(sim): Shared, Query(q): Query<HashMap<String, String>>) -> Reply {
    let q = ListQuery::parse(&q, &["name", "id", "zone_id"])?;
    Ok(Json(sim.with_world(|w| {
        q.page(
            w.disks.iter().filter(|(_, d)| d.folder_id == q.folder_id),
            |d, f| match f {
                "id" => d.id.clone(),
                "zone_id" => d.zone_id.clone(),
                _ => d.name.clone(),
            },
            |d| serde_json::to_value(d).unwrap_or_default(),
            "disks",
        )
    })))
}

pub async fn get_disk(State(sim): Shared, Path(id): Path<String>) -> Reply {
    sim.with_world(|w| w.disks.get(&id).map(|d| json!(d)).ok_or_else(|| ApiError::not_found("Disk", &id))).map(Json)
}

// ---------- instances: reads ----------

pub async fn list_instances(State(sim): Shared, Query(q): Query<HashMap<String, String>>) -> Reply {
    let q = ListQuery::parse(&q, &["name", "id", "status", "zone_id", "platform_id"])?;
    Ok(Json(sim.with_world(|w| {
        q.page(
            w.instances.iter().filter(|(_, i)| i.folder_id == q.folder_id),
            |i, f| match f {
                "id" => i.id.clone(),
                "status" => i.status.clone(),
                "zone_id" => i.zone_id.clone(),
                "platform_id" => i.platform_id.clone(),
                _ => i.name.clone(),
            },
            // List answers never carry metadata (like the BASIC view).
            |i| i.to_json(false),
            "instances",
        )
    })))
}

/// `GET /compute/v1/instances/{id}` and the custom verb `…/{id}:serialPortOutput`.
pub async fn get_instance(State(sim): Shared, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Reply {
    if let Some((id, verb)) = id.split_once(':') {
        return match verb {
            "serialPortOutput" => serial_port_output(&sim, id, &q).map(Json),
            _ => Err(ApiError::new(Code::NotFound, format!("Not Found: no method :{verb}"))),
        };
    }
    let full = q.get("view").is_some_and(|v| v == "FULL");
    sim.with_world(|w| w.instances.get(&id).map(|i| i.to_json(full)).ok_or_else(|| instance_not_found(&id))).map(Json)
}

/// `{"contents": …}` of serial port 1..4 (synchronous, not an Operation). Only
/// port 1 carries the console; the host keys appear once the guest has printed them.
fn serial_port_output(sim: &Sim, id: &str, q: &HashMap<String, String>) -> ApiResult<Value> {
    let port = match q.get("port").map(|p| p.parse::<i64>()) {
        None => 1,
        Some(Ok(p)) if (1..=4).contains(&p) => p,
        Some(_) => return Err(ApiError::field("port", "The value must be between 1 and 4")),
    };
    let (hostname, status, simulated_keys) = sim.with_world(|w| {
        let inst = w.instances.get(id).ok_or_else(|| instance_not_found(id))?;
        let hostname = inst.fqdn.split('.').next().unwrap_or_default().to_string();
        Ok::<_, ApiError>((hostname, inst.status.clone(), inst.host_keys.clone()))
    })?;
    if port != 1 {
        return Ok(json!({"contents": ""}));
    }
    // A guest that never ran has printed nothing; one that did keeps its console.
    let booted = !matches!(status.as_str(), "PROVISIONING");
    let keys = match sim.machines.console_keys(id) {
        _ if !booted => None,
        ConsoleKeys::Simulated => Some(simulated_keys),
        ConsoleKeys::NotYet => None,
        ConsoleKeys::Booted(keys) => Some(keys),
    };
    Ok(json!({"contents": console::serial_output(&hostname, keys.as_deref())}))
}

// ---------- instances: create ----------

struct NicSpec {
    subnet_id: String,
    address: Option<Ipv4Addr>,
    nat: bool,
    security_group_ids: Vec<String>,
}

struct CreateSpec {
    zone: String,
    platform: String,
    cores: i64,
    memory: i64,
    core_fraction: i64,
    disk_size: i64,
    disk_type: String,
    image_id: String,
    auto_delete: bool,
    nics: Vec<NicSpec>,
    metadata: BTreeMap<String, String>,
    hostname: String,
    preemptible: bool,
}

fn parse_create(body: &Body) -> ApiResult<CreateSpec> {
    let zone = body.required_str("zoneId")?.to_string();
    check::zone("zone_id", &zone)?;
    let platform = body.required_str("platformId")?.to_string();
    let res = body.child("resourcesSpec");
    let memory = res.int64("memory")?.ok_or_else(|| ApiError::field("resources_spec.memory", "Field is required"))?;
    let cores = res.int64("cores")?.ok_or_else(|| ApiError::field("resources_spec.cores", "Field is required"))?;
    let core_fraction = res.int64("coreFraction")?.filter(|f| *f != 0).unwrap_or(100);
    check::resources(&platform, cores, memory, core_fraction)?;

    let boot = body.child("bootDiskSpec");
    if boot.get("diskId").is_some() {
        return Err(ApiError::field("boot_disk_spec.disk_id", "attaching an existing disk is not supported by the simulator; use diskSpec"));
    }
    let disk = boot.child("diskSpec");
    let disk_size = disk.int64("size")?.ok_or_else(|| ApiError::field("boot_disk_spec.disk_spec.size", "Field is required"))?;
    let disk_type = disk.str("typeId")?.filter(|s| !s.is_empty()).unwrap_or("network-hdd").to_string();
    if !check::DISK_TYPES.contains(&disk_type.as_str()) {
        return Err(ApiError::field("boot_disk_spec.disk_spec.type_id", format!("unknown disk type {disk_type:?}")));
    }
    let image_id = disk.required_str("imageId").map_err(|_| ApiError::field("boot_disk_spec.disk_spec.image_id", "Field is required"))?.to_string();

    let nic_specs = body.list("networkInterfaceSpecs")?;
    if nic_specs.is_empty() {
        return Err(ApiError::field("network_interface_specs", "at least one network interface is required"));
    }
    let mut nics = Vec::new();
    for (i, n) in nic_specs.iter().enumerate() {
        let field = format!("network_interface_specs[{i}]");
        let primary = n.child("primaryV4AddressSpec");
        let address = match primary.str("address")?.filter(|s| !s.is_empty()) {
            Some(a) => Some(a.parse::<Ipv4Addr>().map_err(|_| ApiError::field(&format!("{field}.primary_v4_address_spec.address"), format!("{a:?} is not an IPv4 address")))?),
            None => None,
        };
        let nat = primary.get("oneToOneNatSpec").is_some();
        if nat {
            let v = primary.child("oneToOneNatSpec").str("ipVersion")?.unwrap_or("IPV4");
            if v != "IPV4" {
                return Err(ApiError::field(&format!("{field}.primary_v4_address_spec.one_to_one_nat_spec.ip_version"), "only IPV4 is supported"));
            }
        }
        nics.push(NicSpec {
            subnet_id: n.required_str("subnetId").map_err(|_| ApiError::field(&format!("{field}.subnet_id"), "Field is required"))?.to_string(),
            address,
            nat,
            security_group_ids: n.str_list("securityGroupIds")?,
        });
    }
    let metadata = body.str_map("metadata")?;
    check::metadata(&metadata)?;
    let hostname = body.str_or_empty("hostname")?.to_string();
    check::name("hostname", &hostname)?;
    Ok(CreateSpec {
        zone,
        platform,
        cores,
        memory,
        core_fraction,
        disk_size,
        disk_type,
        image_id,
        auto_delete: boot.bool("autoDelete")?,
        nics,
        metadata,
        hostname,
        preemptible: body.child("schedulingPolicy").bool("preemptible")?,
    })
}

fn check_instance_quotas(w: &World, extra_instances: u64, extra_cores: i64, extra_memory: i64) -> ApiResult<()> {
    let q = &w.quotas;
    if w.instances.len() as u64 + extra_instances > q.instances {
        return Err(ApiError::quota("compute.instances.count", q.instances));
    }
    let cores: i64 = w.instances.values().map(|i| i.resources.cores).sum();
    if (cores + extra_cores) as u64 > q.cores {
        return Err(ApiError::quota("compute.instanceCores.count", q.cores));
    }
    let memory: i64 = w.instances.values().map(|i| i.resources.memory).sum();
    if (memory + extra_memory) as u64 > q.memory_bytes {
        return Err(ApiError::quota("compute.instanceMemory.size", q.memory_bytes));
    }
    Ok(())
}

/// Addresses the cloud keeps for itself: the network address, the gateway (.1),
/// the DNS server (.2) and the broadcast address.
fn reserved(net: &Ipv4Net, addr: Ipv4Addr) -> bool {
    let n = u32::from(net.network());
    let a = u32::from(addr);
    a <= n + 2 || addr == net.broadcast()
}

fn used_addresses(w: &World, subnet_id: &str) -> Vec<Ipv4Addr> {
    w.instances
        .values()
        .flat_map(|i| i.network_interfaces.iter())
        .filter(|n| n.subnet_id == subnet_id)
        .filter_map(|n| n.primary_v4_address.address.parse().ok())
        .collect()
}

fn build_nic(w: &mut World, index: usize, zone: &str, spec: &NicSpec) -> ApiResult<NetworkInterface> {
    let field = format!("network_interface_specs[{index}]");
    let subnet = w.subnets.get(&spec.subnet_id).ok_or_else(|| ApiError::not_found("Subnet", &spec.subnet_id))?.clone();
    if subnet.zone_id != zone {
        return Err(ApiError::field(&format!("{field}.subnet_id"), format!("subnet {} is in zone {}, the instance in {zone}", subnet.id, subnet.zone_id)));
    }
    let nets: Vec<Ipv4Net> = subnet.v4_cidr_blocks.iter().filter_map(|b| b.parse().ok()).collect();
    let used = used_addresses(w, &subnet.id);
    let address = match spec.address {
        Some(a) => {
            let net = nets.iter().find(|n| n.contains(&a)).ok_or_else(|| {
                ApiError::field(&format!("{field}.primary_v4_address_spec.address"), format!("address {a} is not inside subnet {} ({})", subnet.id, subnet.v4_cidr_blocks.join(", ")))
            })?;
            if reserved(net, a) {
                return Err(ApiError::field(&format!("{field}.primary_v4_address_spec.address"), format!("address {a} is reserved in subnet {}", subnet.id)));
            }
            if used.contains(&a) {
                return Err(ApiError::precondition(format!("Address {a} is already in use in subnet {}", subnet.id)));
            }
            a
        }
        None => nets
            .iter()
            .flat_map(|n| n.hosts())
            .find(|a| nets.iter().all(|n| !n.contains(a) || !reserved(n, *a)) && !used.contains(a))
            .ok_or_else(|| ApiError::precondition(format!("No free addresses left in subnet {}", subnet.id)))?,
    };
    for g in &spec.security_group_ids {
        let group = w.security_groups.get(g).ok_or_else(|| ApiError::not_found("Security group", g))?;
        if group.network_id != subnet.network_id {
            return Err(ApiError::field(&format!("{field}.security_group_ids"), format!("security group {g} belongs to another network than subnet {}", subnet.id)));
        }
    }
    let nat = if spec.nat { Some(OneToOneNat { address: w.allocate_public_address()?, ip_version: "IPV4".into() }) } else { None };
    let mac: Vec<String> = (0..4).map(|_| format!("{:02x}", w.rng.gen::<u8>())).collect();
    // Without explicit groups an interface gets its network's default group.
    let groups = if spec.security_group_ids.is_empty() {
        w.networks.get(&subnet.network_id).map(|n| vec![n.default_security_group_id.clone()]).unwrap_or_default()
    } else {
        spec.security_group_ids.clone()
    };
    Ok(NetworkInterface {
        index: index as i64,
        mac_address: format!("d0:0d:{}", mac.join(":")),
        subnet_id: subnet.id.clone(),
        primary_v4_address: PrimaryAddress { address: address.to_string(), one_to_one_nat: nat },
        security_group_ids: groups,
    })
}

pub async fn create_instance(State(sim): Shared, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let body = Body(&v);
    let c = common(&body)?;
    let spec = parse_create(&body)?;
    sim.with_world(|w| {
        w.check_active_operations(&c.folder_id)?;
        w.check_unique_name(Kind::Instance, &c.folder_id, &c.name)?;
        check_instance_quotas(w, 1, spec.cores, spec.memory)?;
        let image = w.images.get(&spec.image_id).ok_or_else(|| ApiError::not_found("Image", &spec.image_id))?;
        check::disk_size("boot_disk_spec.disk_spec.size", spec.disk_size, image.min_disk_size)?;
        let mut nics = Vec::new();
        for (i, n) in spec.nics.iter().enumerate() {
            // Two interfaces of one request must not take the same address either.
            let nic = build_nic(w, i, &spec.zone, n)?;
            nics.push(nic);
        }
        let id = w.id("fhm");
        let disk_id = w.id("fhm");
        let host_keys = vec![console::generated_host_key(&mut w.rng)];
        w.disks.insert(
            disk_id.clone(),
            Disk {
                id: disk_id.clone(),
                folder_id: c.folder_id.clone(),
                created_at: now_rfc3339(),
                name: String::new(),
                labels: Default::default(),
                type_id: spec.disk_type.clone(),
                zone_id: spec.zone.clone(),
                size: spec.disk_size,
                block_size: 4096,
                status: "READY".into(),
                source_image_id: spec.image_id.clone(),
                instance_ids: vec![id.clone()],
            },
        );
        let fqdn = if spec.hostname.is_empty() { format!("{id}.auto.internal") } else { format!("{}.ru-central1.internal", spec.hostname) };
        w.instances.insert(
            id.clone(),
            Instance {
                id: id.clone(),
                folder_id: c.folder_id.clone(),
                created_at: now_rfc3339(),
                name: c.name.clone(),
                description: c.description,
                labels: c.labels,
                zone_id: spec.zone.clone(),
                platform_id: spec.platform.clone(),
                resources: Resources { memory: spec.memory, cores: spec.cores, core_fraction: spec.core_fraction },
                status: "PROVISIONING".into(),
                metadata: spec.metadata,
                host_keys,
                boot_disk: AttachedDisk { mode: "READ_WRITE".into(), device_name: disk_id.clone(), auto_delete: spec.auto_delete, disk_id },
                network_interfaces: nics,
                fqdn,
                scheduling_policy: if spec.preemptible { json!({"preemptible": true}) } else { json!({}) },
                network_settings: json!({"type": "STANDARD"}),
            },
        );
        w.record(Kind::Instance, &c.folder_id, &c.name, &id);
        Ok(w.start_operation(
            &c.folder_id,
            "Create instance",
            meta("CreateInstanceMetadata", &id),
            Completion::InstanceStatus { id: id.clone(), status: "RUNNING", respond: true },
        ))
    })
    .map(Json)
}

// ---------- instances: changes ----------

pub async fn update_instance(State(sim): Shared, Path(id): Path<String>, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let body = Body(&v);
    let mask = body.update_mask()?;
    const UPDATABLE: &[&str] = &["name", "description", "labels", "metadata", "resourcesSpec", "platformId"];
    if mask.is_empty() {
        return Err(ApiError::field("update_mask", "Field is required"));
    }
    if let Some(f) = mask.iter().find(|f| !UPDATABLE.contains(&f.as_str())) {
        return Err(ApiError::field("update_mask", format!("field {f:?} cannot be updated; updatable fields: {}", UPDATABLE.join(", "))));
    }
    let masked = |f: &str| mask.iter().any(|m| m == f);
    sim.with_world(|w| {
        let inst = w.instances.get(&id).ok_or_else(|| instance_not_found(&id))?.clone();
        w.check_active_operations(&inst.folder_id)?;
        let mut new = inst.clone();
        if masked("name") {
            let name = body.str_or_empty("name")?;
            check::name("name", name)?;
            if name != inst.name {
                w.check_unique_name(Kind::Instance, &inst.folder_id, name)?;
            }
            new.name = name.to_string();
        }
        if masked("description") {
            new.description = body.str_or_empty("description")?.to_string();
        }
        if masked("labels") {
            new.labels = body.str_map("labels")?;
            check::labels(&new.labels)?;
        }
        if masked("metadata") {
            new.metadata = body.str_map("metadata")?;
            check::metadata(&new.metadata)?;
        }
        if masked("resourcesSpec") || masked("platformId") {
            if inst.status != "STOPPED" {
                return Err(ApiError::precondition(format!(
                    "Instance {id} is {}; stop it before changing its resources or platform",
                    inst.status
                )));
            }
            if masked("platformId") {
                new.platform_id = body.required_str("platformId")?.to_string();
            }
            if masked("resourcesSpec") {
                let r = body.child("resourcesSpec");
                new.resources = Resources {
                    memory: r.int64("memory")?.unwrap_or(0),
                    cores: r.int64("cores")?.unwrap_or(0),
                    core_fraction: r.int64("coreFraction")?.filter(|f| *f != 0).unwrap_or(100),
                };
            }
            check::resources(&new.platform_id, new.resources.cores, new.resources.memory, new.resources.core_fraction)?;
            check_instance_quotas(w, 0, new.resources.cores - inst.resources.cores, new.resources.memory - inst.resources.memory)?;
        }
        let folder = inst.folder_id.clone();
        w.instances.insert(id.clone(), new);
        Ok(w.start_operation(&folder, "Update instance", meta("UpdateInstanceMetadata", &id), Completion::Respond(Kind::Instance, id.clone())))
    })
    .map(Json)
}

/// `POST /compute/v1/instances/{id}:stop|:start|:restart`.
pub async fn instance_action(State(sim): Shared, Path(id_and_verb): Path<String>) -> Reply {
    let (id, verb) = id_and_verb.split_once(':').ok_or_else(|| ApiError::new(Code::NotFound, "Not Found: no such method"))?;
    let (from, during, to, respond, kind): (&[&str], &str, &'static str, bool, &str) = match verb {
        "stop" => (&["RUNNING", "PROVISIONING", "STARTING"], "STOPPING", "STOPPED", false, "StopInstanceMetadata"),
        "start" => (&["STOPPED"], "STARTING", "RUNNING", true, "StartInstanceMetadata"),
        "restart" => (&["RUNNING"], "RESTARTING", "RUNNING", false, "RestartInstanceMetadata"),
        _ => return Err(ApiError::new(Code::NotFound, format!("Not Found: no method :{verb}"))),
    };
    sim.with_world(|w| {
        let inst = w.instances.get(id).ok_or_else(|| instance_not_found(id))?;
        if !from.contains(&inst.status.as_str()) {
            return Err(ApiError::precondition(format!("Instance {id} is {}; cannot {verb} it", inst.status)));
        }
        let folder = inst.folder_id.clone();
        w.check_active_operations(&folder)?;
        if let Some(inst) = w.instances.get_mut(id) {
            inst.status = during.into();
        }
        let description = format!("{}{} instance", verb[..1].to_uppercase(), &verb[1..]);
        // A start the platform fails (a test's knob): back to STOPPED, the operation carries the error.
        let completion = if verb == "start" && w.knobs.take_failing_start(id) {
            let zone = w.instances.get(id).map(|i| i.zone_id.clone()).unwrap_or_default();
            let error = ApiError::new(Code::ResourceExhausted, format!("Not enough resources in zone {zone} to start instance {id}; try again later"));
            Completion::InstanceFailed { id: id.to_string(), status: "STOPPED", error: json!({"code": error.code as i32, "message": error.message, "details": []}) }
        } else {
            Completion::InstanceStatus { id: id.to_string(), status: to, respond }
        };
        Ok(w.start_operation(&folder, &description, meta(kind, id), completion))
    })
    .map(Json)
}

pub async fn update_metadata(State(sim): Shared, Path(id): Path<String>, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let body = Body(&v);
    let delete = body.str_list("delete")?;
    let upsert = body.str_map("upsert")?;
    sim.with_world(|w| {
        let inst = w.instances.get(&id).ok_or_else(|| instance_not_found(&id))?;
        let folder = inst.folder_id.clone();
        let mut metadata = inst.metadata.clone();
        for k in &delete {
            metadata.remove(k);
        }
        metadata.extend(upsert);
        check::metadata(&metadata)?;
        w.check_active_operations(&folder)?;
        if let Some(inst) = w.instances.get_mut(&id) {
            inst.metadata = metadata;
        }
        Ok(w.start_operation(
            &folder,
            "Update instance metadata",
            meta("UpdateInstanceMetadataMetadata", &id),
            Completion::Respond(Kind::Instance, id.clone()),
        ))
    })
    .map(Json)
}

pub async fn update_network_interface(State(sim): Shared, Path(id): Path<String>, bytes: Bytes) -> Reply {
    let v = Body::parse(&bytes)?;
    let body = Body(&v);
    let index = body.int64("networkInterfaceIndex")?.unwrap_or(0);
    let mask = body.update_mask()?;
    if mask.iter().any(|m| m != "securityGroupIds") || mask.is_empty() {
        return Err(ApiError::field("update_mask", "the simulator updates only securityGroupIds of a network interface"));
    }
    let groups = body.str_list("securityGroupIds")?;
    sim.with_world(|w| {
        let inst = w.instances.get(&id).ok_or_else(|| instance_not_found(&id))?;
        let folder = inst.folder_id.clone();
        let nic = inst
            .network_interfaces
            .iter()
            .find(|n| n.index == index)
            .ok_or_else(|| ApiError::field("network_interface_index", format!("instance {id} has no interface {index}")))?;
        let network = w.subnets.get(&nic.subnet_id).map(|s| s.network_id.clone()).unwrap_or_default();
        for g in &groups {
            let group = w.security_groups.get(g).ok_or_else(|| ApiError::not_found("Security group", g))?;
            if group.network_id != network {
                return Err(ApiError::field("security_group_ids", format!("security group {g} belongs to another network")));
            }
        }
        w.check_active_operations(&folder)?;
        if let Some(nic) = w.instances.get_mut(&id).and_then(|i| i.network_interfaces.iter_mut().find(|n| n.index == index)) {
            nic.security_group_ids = groups;
        }
        Ok(w.start_operation(
            &folder,
            "Update instance network interface",
            meta("UpdateInstanceNetworkInterfaceMetadata", &id),
            Completion::Respond(Kind::Instance, id.clone()),
        ))
    })
    .map(Json)
}

pub async fn delete_instance(State(sim): Shared, Path(id): Path<String>) -> Reply {
    sim.with_world(|w| {
        let inst = w.instances.get(&id).ok_or_else(|| instance_not_found(&id))?;
        let folder = inst.folder_id.clone();
        w.check_active_operations(&folder)?;
        if let Some(inst) = w.instances.get_mut(&id) {
            inst.status = "DELETING".into();
        }
        // Held by a test's knob: the instance stays DELETING that long, as a real delete does for a while.
        let duration = w.knobs.delete_time(&id).unwrap_or(w.op_time);
        Ok(w.start_operation_taking(duration, &folder, "Delete instance", meta("DeleteInstanceMetadata", &id), Completion::Remove(Kind::Instance, id.clone())))
    })
    .map(Json)
}
