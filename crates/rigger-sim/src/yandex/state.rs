//! The simulated cloud: resources, operations, idempotency keys and IAM tokens.
//! Everything lives behind one lock; operations finish lazily (`advance`) when
//! their time has come, so no background task is needed.

use super::wire::{int64, now_rfc3339, ApiError, ApiResult, Code};
use super::knobs::Knobs;
use super::{MachineEvent, Quotas};
use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub id: String,
    pub folder_id: String,
    pub created_at: String,
    pub name: String,
    pub description: String,
    pub labels: Labels,
    pub default_security_group_id: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subnet {
    pub id: String,
    pub folder_id: String,
    pub created_at: String,
    pub name: String,
    pub description: String,
    pub labels: Labels,
    pub network_id: String,
    pub zone_id: String,
    pub v4_cidr_blocks: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ports {
    #[serde(serialize_with = "int64")]
    pub from_port: i64,
    #[serde(serialize_with = "int64")]
    pub to_port: i64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CidrBlocks {
    pub v4_cidr_blocks: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub direction: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Ports>,
    pub protocol_name: String,
    #[serde(serialize_with = "int64")]
    pub protocol_number: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr_blocks: Option<CidrBlocks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predefined_target: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroup {
    pub id: String,
    pub folder_id: String,
    pub created_at: String,
    pub name: String,
    pub description: String,
    pub labels: Labels,
    pub network_id: String,
    pub status: String,
    pub rules: Vec<Rule>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub default_for_network: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(serialize_with = "int64")]
    pub memory: i64,
    #[serde(serialize_with = "int64")]
    pub cores: i64,
    #[serde(serialize_with = "int64")]
    pub core_fraction: i64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OneToOneNat {
    pub address: String,
    pub ip_version: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryAddress {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_to_one_nat: Option<OneToOneNat>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    #[serde(serialize_with = "int64")]
    pub index: i64,
    pub mac_address: String,
    pub subnet_id: String,
    pub primary_v4_address: PrimaryAddress,
    pub security_group_ids: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedDisk {
    pub mode: String,
    pub device_name: String,
    pub auto_delete: bool,
    pub disk_id: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    pub folder_id: String,
    pub created_at: String,
    pub name: String,
    pub description: String,
    pub labels: Labels,
    pub zone_id: String,
    pub platform_id: String,
    pub resources: Resources,
    pub status: String,
    /// Only shown with `view=FULL` (see `Instance::to_json`).
    #[serde(skip)]
    pub metadata: Labels,
    /// The SSH host keys its (simulated) cloud-init prints to the serial console,
    /// "type base64"; not a field of the API's Instance.
    #[serde(skip)]
    pub host_keys: Vec<String>,
    pub boot_disk: AttachedDisk,
    pub network_interfaces: Vec<NetworkInterface>,
    pub fqdn: String,
    pub scheduling_policy: Value,
    pub network_settings: Value,
}

impl Instance {
    pub fn to_json(&self, full: bool) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if full {
            v["metadata"] = json!(self.metadata);
        }
        v
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub id: String,
    pub folder_id: String,
    pub created_at: String,
    pub name: String,
    pub labels: Labels,
    pub type_id: String,
    pub zone_id: String,
    #[serde(serialize_with = "int64")]
    pub size: i64,
    #[serde(serialize_with = "int64")]
    pub block_size: i64,
    pub status: String,
    pub source_image_id: String,
    pub instance_ids: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub id: String,
    pub folder_id: String,
    pub created_at: String,
    pub name: String,
    pub family: String,
    #[serde(serialize_with = "int64")]
    pub min_disk_size: i64,
    #[serde(serialize_with = "int64")]
    pub storage_size: i64,
    pub status: String,
    pub os: Value,
}

/// What happens to the world when an operation finishes.
#[derive(Clone, Debug)]
pub enum Completion {
    /// The resource is already in place; the response is its current state.
    Respond(Kind, String),
    /// An instance reaches a status (RUNNING after create/start, STOPPED after stop).
    InstanceStatus { id: String, status: &'static str, respond: bool },
    /// The resource (and what goes with it) is removed; the response is Empty.
    Remove(Kind, String),
    /// The operation fails: the instance is back at `status` and the
    /// operation carries `error` (a google.rpc.Status) instead of a response.
    InstanceFailed { id: String, status: &'static str, error: Value },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Network,
    Subnet,
    SecurityGroup,
    Instance,
}

impl Kind {
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Network => "yandex.cloud.vpc.v1.Network",
            Kind::Subnet => "yandex.cloud.vpc.v1.Subnet",
            Kind::SecurityGroup => "yandex.cloud.vpc.v1.SecurityGroup",
            Kind::Instance => "yandex.cloud.compute.v1.Instance",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Subnet => "subnet",
            Kind::SecurityGroup => "security_group",
            Kind::Instance => "instance",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub id: String,
    pub folder_id: String,
    pub description: String,
    pub created_at: String,
    pub modified_at: String,
    pub metadata: Value,
    pub done: bool,
    pub response: Option<Value>,
    pub error: Option<Value>,
    pub finish_at: Instant,
    pub completion: Completion,
}

impl Operation {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "description": self.description,
            "createdAt": self.created_at,
            "createdBy": super::SIM_SERVICE_ACCOUNT_PRINCIPAL,
            "modifiedAt": self.modified_at,
            "done": self.done,
            "metadata": self.metadata,
        });
        if let Some(r) = &self.response {
            v["response"] = r.clone();
        }
        if let Some(e) = &self.error {
            v["error"] = e.clone();
        }
        v
    }
}

/// One creation as the store saw it (for tests: no duplicates were ever made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Created {
    pub kind: &'static str,
    pub folder_id: String,
    pub name: String,
    pub id: String,
}

pub struct World {
    pub quotas: Quotas,
    pub op_time: Duration,
    pub rng: StdRng,
    pub networks: BTreeMap<String, Network>,
    pub subnets: BTreeMap<String, Subnet>,
    pub security_groups: BTreeMap<String, SecurityGroup>,
    pub instances: BTreeMap<String, Instance>,
    pub disks: BTreeMap<String, Disk>,
    pub images: BTreeMap<String, Image>,
    pub operations: HashMap<String, Operation>,
    /// Idempotency-Key → (fingerprint of the request, operation id).
    pub idempotency: HashMap<String, (String, String)>,
    /// IAM token → expiry.
    pub tokens: HashMap<String, chrono::DateTime<chrono::Utc>>,
    pub history: Vec<Created>,
    pub next_public: u32,
    /// Addresses outside this world that are taken too (see MachineBackend).
    pub public_address_taken: Option<fn(&str) -> bool>,
    /// Seam for `--machines local`: events handed to the MachineBackend after the lock is released.
    pub machine_events: Vec<MachineEvent>,
    /// What tests make happen that the API alone cannot (`/_sim/instances/…`).
    pub knobs: Knobs,
}

/// Yandex ids are 20 characters: a 3-letter service prefix and 17 of [a-v0-9].
pub fn new_id(rng: &mut StdRng, prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
    let tail: String = (0..17).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
    format!("{prefix}{tail}")
}

impl World {
    pub fn new(quotas: Quotas, op_time: Duration, rng: StdRng) -> Self {
        let mut w = World {
            quotas,
            op_time,
            rng,
            networks: BTreeMap::new(),
            subnets: BTreeMap::new(),
            security_groups: BTreeMap::new(),
            instances: BTreeMap::new(),
            disks: BTreeMap::new(),
            images: BTreeMap::new(),
            operations: HashMap::new(),
            idempotency: HashMap::new(),
            tokens: HashMap::new(),
            history: Vec::new(),
            next_public: 10,
            public_address_taken: None,
            machine_events: Vec::new(),
            knobs: Knobs::default(),
        };
        w.seed_images();
        w
    }

    /// The public catalogue in folder `standard-images`.
    fn seed_images(&mut self) {
        for (family, name) in [
            ("ubuntu-2204-lts", "ubuntu-22-04-lts-v20240101"),
            ("ubuntu-2404-lts", "ubuntu-24-04-lts-v20240101"),
            ("debian-12", "debian-12-v20240101"),
            ("debian-11", "debian-11-v20240101"),
            ("centos-stream-9", "centos-stream-9-v20240101"),
        ] {
            let id = new_id(&mut self.rng, "fd8");
            self.images.insert(
                id.clone(),
                Image {
                    id,
                    folder_id: "standard-images".into(),
                    created_at: now_rfc3339(),
                    name: name.into(),
                    family: family.into(),
                    min_disk_size: 5 << 30,
                    storage_size: 3 << 30,
                    status: "READY".into(),
                    os: json!({"type": "LINUX"}),
                },
            );
        }
    }

    pub fn id(&mut self, prefix: &str) -> String {
        new_id(&mut self.rng, prefix)
    }

    pub fn record(&mut self, kind: Kind, folder_id: &str, name: &str, id: &str) {
        self.history.push(Created { kind: kind.label(), folder_id: folder_id.into(), name: name.into(), id: id.into() });
    }

    /// The folder's limit of concurrently running operations.
    pub fn check_active_operations(&self, folder_id: &str) -> ApiResult<()> {
        let active = self.operations.values().filter(|o| !o.done && o.folder_id == folder_id).count();
        if active as u64 >= self.quotas.active_operations {
            return Err(ApiError::new(Code::ResourceExhausted, "The limit on maximum number of active operations has exceeded."));
        }
        Ok(())
    }

    /// Start an operation that finishes after `op_time` with `completion`.
    pub fn start_operation(&mut self, folder_id: &str, description: &str, metadata: Value, completion: Completion) -> Value {
        self.start_operation_taking(self.op_time, folder_id, description, metadata, completion)
    }

    /// The same, running for `duration` instead of `op_time`.
    pub fn start_operation_taking(&mut self, duration: Duration, folder_id: &str, description: &str, metadata: Value, completion: Completion) -> Value {
        let id = self.id(operation_prefix(&completion));
        let now = now_rfc3339();
        let op = Operation {
            id: id.clone(),
            folder_id: folder_id.into(),
            description: description.into(),
            created_at: now.clone(),
            modified_at: now,
            metadata,
            done: false,
            response: None,
            error: None,
            finish_at: Instant::now() + duration,
            completion,
        };
        self.operations.insert(id.clone(), op);
        self.advance();
        self.operations[&id].to_json()
    }

    /// Finish every operation whose time has come.
    pub fn advance(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self.operations.values().filter(|o| !o.done && o.finish_at <= now).map(|o| o.id.clone()).collect();
        for id in due {
            let completion = self.operations[&id].completion.clone();
            let outcome = self.complete(&completion);
            if let Some(op) = self.operations.get_mut(&id) {
                op.done = true;
                op.modified_at = now_rfc3339();
                // `result` is a oneof: a response or an error, never both.
                match outcome {
                    Ok(response) => op.response = Some(response),
                    Err(error) => op.error = Some(error),
                }
            }
        }
    }

    /// The operation's response, or the error it fails with.
    fn complete(&mut self, completion: &Completion) -> Result<Value, Value> {
        let empty = json!({"@type": "type.googleapis.com/google.protobuf.Empty"});
        match completion {
            Completion::Respond(kind, id) => Ok(self.resource_json(*kind, id).unwrap_or(empty)),
            Completion::InstanceStatus { id, status, respond } => {
                self.set_instance_status(id, status);
                if *respond {
                    Ok(self.resource_json(Kind::Instance, id).unwrap_or(empty))
                } else {
                    Ok(empty)
                }
            }
            Completion::InstanceFailed { id, status, error } => {
                self.set_instance_status(id, status);
                Err(error.clone())
            }
            Completion::Remove(kind, id) => {
                self.remove(*kind, id);
                Ok(empty)
            }
        }
    }

    /// An instance reaches `status`; a backend boots its machine for RUNNING
    /// and stops it for any status in which the guest does not run.
    pub fn set_instance_status(&mut self, id: &str, status: &str) {
        let Some(inst) = self.instances.get_mut(id) else { return };
        inst.status = status.to_string();
        let inst = inst.clone();
        let event = match status {
            "RUNNING" => self.running_event(inst),
            "STOPPED" | "ERROR" | "CRASHED" => Some(MachineEvent::Stopped(inst.id)),
            _ => None,
        };
        self.machine_events.extend(event);
    }

    /// What a backend needs to boot a machine for a running instance: the
    /// instance and where its first interface sits.
    fn running_event(&self, instance: Instance) -> Option<MachineEvent> {
        let subnet = self.subnets.get(&instance.network_interfaces.first()?.subnet_id)?;
        let cidr = subnet.v4_cidr_blocks.first()?.parse().ok()?;
        Some(MachineEvent::Running { network_id: subnet.network_id.clone(), subnet_cidr: cidr, instance: Box::new(instance) })
    }

    fn remove(&mut self, kind: Kind, id: &str) {
        match kind {
            Kind::Network => {
                self.networks.remove(id);
                // The default security group goes with its network.
                self.security_groups.retain(|_, sg| !(sg.network_id == id && sg.default_for_network));
            }
            Kind::Subnet => {
                self.subnets.remove(id);
            }
            Kind::SecurityGroup => {
                self.security_groups.remove(id);
            }
            Kind::Instance => {
                if let Some(inst) = self.instances.remove(id) {
                    self.knobs.forget(id);
                    if inst.boot_disk.auto_delete {
                        self.disks.remove(&inst.boot_disk.disk_id);
                    }
                    self.machine_events.push(MachineEvent::Deleted(inst.id));
                }
            }
        }
    }

    /// The resource as the API answers it, with `@type` (for Operation.response).
    pub fn resource_json(&self, kind: Kind, id: &str) -> Option<Value> {
        let mut v = match kind {
            Kind::Network => serde_json::to_value(self.networks.get(id)?).ok()?,
            Kind::Subnet => serde_json::to_value(self.subnets.get(id)?).ok()?,
            Kind::SecurityGroup => serde_json::to_value(self.security_groups.get(id)?).ok()?,
            Kind::Instance => self.instances.get(id)?.to_json(false),
        };
        v["@type"] = json!(format!("type.googleapis.com/{}", kind.type_name()));
        Some(v)
    }

    pub fn operation(&self, id: &str) -> ApiResult<Value> {
        self.operations.get(id).map(Operation::to_json).ok_or_else(|| ApiError::not_found("Operation", id))
    }

    /// Names are unique per folder and resource type.
    pub fn check_unique_name(&self, kind: Kind, folder_id: &str, name: &str) -> ApiResult<()> {
        if name.is_empty() {
            return Ok(());
        }
        let taken = match kind {
            Kind::Network => self.networks.values().any(|r| r.folder_id == folder_id && r.name == name),
            Kind::Subnet => self.subnets.values().any(|r| r.folder_id == folder_id && r.name == name),
            Kind::SecurityGroup => self.security_groups.values().any(|r| r.folder_id == folder_id && r.name == name),
            Kind::Instance => self.instances.values().any(|r| r.folder_id == folder_id && r.name == name),
        };
        if taken {
            let what = match kind {
                Kind::Network => "Network",
                Kind::Subnet => "Subnet",
                Kind::SecurityGroup => "Security group",
                Kind::Instance => "Instance",
            };
            return Err(ApiError::new(Code::AlreadyExists, format!("{what} with name {name} already exists")));
        }
        Ok(())
    }

    /// A public address from TEST-NET-3 (203.0.113.0/24), then TEST-NET-2:
    /// documentation ranges that exist nowhere, so nothing can ever dial them by mistake.
    pub fn allocate_public_address(&mut self) -> ApiResult<String> {
        let used: Vec<String> = self
            .instances
            .values()
            .flat_map(|i| i.network_interfaces.iter())
            .filter_map(|n| n.primary_v4_address.one_to_one_nat.as_ref().map(|n| n.address.clone()))
            .collect();
        for _ in 0..508 {
            let n = self.next_public;
            self.next_public = if n >= 507 { 10 } else { n + 1 };
            let addr = if n < 254 { Ipv4Addr::new(203, 0, 113, n as u8) } else { Ipv4Addr::new(198, 51, 100, (n - 254) as u8) };
            let taken_elsewhere = self.public_address_taken.is_some_and(|taken| taken(&addr.to_string()));
            if !used.contains(&addr.to_string()) && !matches!(n % 254, 0..=9) && !taken_elsewhere {
                return Ok(addr.to_string());
            }
        }
        Err(ApiError::quota("vpc.externalAddresses.count", 490))
    }
}

fn operation_prefix(c: &Completion) -> &'static str {
    match c {
        Completion::Respond(Kind::Instance, _) | Completion::InstanceStatus { .. } | Completion::InstanceFailed { .. } | Completion::Remove(Kind::Instance, _) => "fhm",
        _ => "enp",
    }
}
