//! The Yandex Cloud provider: VPC network, subnets, security groups and
//! Compute instances over the REST API.

pub mod auth;
pub mod client;
pub mod console;
pub mod error;
mod lifecycle;
pub mod operations;
pub mod resources;
pub mod rules;

use rigger_events::Events;
use crate::plan::model::{Plan, YandexConfig};
use crate::cloud::diff::Change;
use crate::cloud::providers::{Deps, Provider};
use crate::cloud::resource::{Address, Kind, LiveResource, ResourceSpec};
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use auth::Credentials;
use client::{Service, YandexClient};
use error::YandexError;
use reqwest::Method;
use resources::{Names, Naming, IMAGE_LABEL, METADATA_LABEL};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use crate::cloud::providers::poll::{Check, Waiting};
use std::time::Duration;

/// How long an instance may take from RUNNING until cloud-init has printed its
/// SSH host keys to the serial console.
const HOST_KEYS_TIMEOUT: Duration = Duration::from_secs(600);

pub struct YandexProvider {
    client: YandexClient,
    cfg: YandexConfig,
    naming: Naming,
    /// Image family → image id, looked up once per run.
    images: tokio::sync::Mutex<HashMap<String, String>>,
}

/// What a resource type is called in paths, lists and operation metadata.
struct Api {
    service: Service,
    collection: &'static str,
    plural: &'static str,
    id_field: &'static str,
    what: &'static str,
}

fn api(kind: Kind) -> Api {
    match kind {
        Kind::Network => Api { service: Service::Vpc, collection: "/vpc/v1/networks", plural: "networks", id_field: "networkId", what: "network" },
        Kind::Subnet => Api { service: Service::Vpc, collection: "/vpc/v1/subnets", plural: "subnets", id_field: "subnetId", what: "subnet" },
        Kind::Firewall => Api {
            service: Service::Vpc,
            collection: "/vpc/v1/securityGroups",
            plural: "securityGroups",
            id_field: "securityGroupId",
            what: "security group",
        },
        Kind::Machine => Api { service: Service::Compute, collection: "/compute/v1/instances", plural: "instances", id_field: "instanceId", what: "instance" },
    }
}

impl YandexProvider {
    /// Credentials from the plan's key file, else env `YC_SERVICE_ACCOUNT_KEY_FILE`,
    /// else env `YC_TOKEN`; endpoint from the plan, else env `RIGGER_YANDEX_ENDPOINT`.
    pub fn new(cfg: &YandexConfig, project: &str) -> Result<YandexProvider> {
        let credentials = Credentials::resolve(cfg.service_account_key_file.as_deref())?;
        let endpoint = cfg.endpoint.clone().or_else(|| std::env::var("RIGGER_YANDEX_ENDPOINT").ok().filter(|e| !e.is_empty()));
        if let Some(why) = endpoint.as_deref().and_then(super::endpoint::refuses_credentials) {
            anyhow::bail!("the Yandex Cloud endpoint (provider.endpoint or RIGGER_YANDEX_ENDPOINT) {why}");
        }
        Ok(Self::with_client(YandexClient::new(credentials, endpoint)?, cfg, project))
    }

    pub fn with_client(client: YandexClient, cfg: &YandexConfig, project: &str) -> YandexProvider {
        YandexProvider {
            client,
            cfg: cfg.clone(),
            naming: Naming { project: project.to_string() },
            images: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &YandexClient {
        &self.client
    }

    fn folder(&self) -> &str {
        &self.cfg.folder_id
    }

    async fn list(&self, kind: Kind, filter: Option<&str>) -> Result<Vec<Value>, YandexError> {
        let a = api(kind);
        self.client.list(a.service, a.collection, a.plural, self.folder(), filter).await
    }

    /// The resource of this kind with this cloud name in the folder, if any.
    async fn find_by_name(&self, kind: Kind, cloud_name: &str) -> Result<Option<Value>> {
        let filter = format!("name=\"{cloud_name}\"");
        let found = self.list(kind, Some(&filter)).await?.into_iter().find(|r| r.get("name").and_then(Value::as_str) == Some(cloud_name));
        match found {
            Some(r) if !self.naming.owns(&r) => bail!(
                "a {} named {cloud_name} already exists in folder {} but is not labelled {}={}: rename or remove it, or change the project name",
                api(kind).what,
                self.folder(),
                resources::PROJECT_LABEL,
                self.naming.project
            ),
            other => Ok(other),
        }
    }

    /// Image id of the newest image of a public family.
    async fn image_id(&self, family: &str) -> Result<String> {
        if let Some(id) = self.images.lock().await.get(family) {
            return Ok(id.clone());
        }
        let image = self
            .client
            .get(Service::Compute, "/compute/v1/images:latestByFamily", &[("folderId", resources::IMAGE_FOLDER.into()), ("family", family.into())])
            .await
            .with_context(|| format!("finding the latest image of family {family} in {}", resources::IMAGE_FOLDER))?;
        let id = image.get("id").and_then(Value::as_str).ok_or_else(|| anyhow!("image family {family}: the answer has no id"))?.to_string();
        self.images.lock().await.insert(family.to_string(), id.clone());
        Ok(id)
    }

    /// The live id of a dependency, or (for a reference the graph could not
    /// order, like two groups naming each other) the id found by name.
    async fn dep_id(&self, deps: &Deps, kind: Kind, name: &str) -> Result<String> {
        if let Some(d) = deps.get(&Address::new(kind, name)) {
            return Ok(d.id.clone());
        }
        let cloud_name = self.naming.cloud_name(name);
        match self.find_by_name(kind, &cloud_name).await? {
            Some(r) => Ok(r.get("id").and_then(Value::as_str).unwrap_or_default().to_string()),
            None => bail!("{} {name} ({cloud_name}) does not exist yet", api(kind).what),
        }
    }

    /// Resolve every group a rule set names: from deps, else by name, else (a
    /// group not made yet, when two groups name each other) an empty group made
    /// now under its final name, which the group's own create adopts and fills.
    async fn group_ids(&self, rules: &Value, deps: &Deps, network_id: &str) -> Result<HashMap<String, String>> {
        let mut ids = HashMap::new();
        for rule in rules.as_array().into_iter().flatten() {
            let Some(name) = rule.get("securityGroup").and_then(Value::as_str) else { continue };
            if ids.contains_key(name) {
                continue;
            }
            let id = match deps.get(&Address::new(Kind::Firewall, name)) {
                Some(d) => d.id.clone(),
                None => self.group_id_or_placeholder(name, network_id).await?,
            };
            ids.insert(name.to_string(), id);
        }
        Ok(ids)
    }

    async fn group_id_or_placeholder(&self, name: &str, network_id: &str) -> Result<String> {
        let cloud_name = self.naming.cloud_name(name);
        let id_of = |v: &Value| v.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        if let Some(existing) = self.find_by_name(Kind::Firewall, &cloud_name).await? {
            return Ok(id_of(&existing));
        }
        let body = json!({
            "folderId": self.folder(), "name": cloud_name, "labels": self.naming.labels(), "networkId": network_id,
            "description": "made empty by rigger for a group that names it; its own rules follow",
        });
        let a = api(Kind::Firewall);
        match self.client.run(Method::POST, a.service, a.collection, Some(&body)).await {
            Ok(op) => op.resource_id(a.id_field).ok_or_else(|| anyhow!("creating security group {cloud_name}: the operation names no {}", a.id_field)),
            Err(e) if e.is_already_exists() => {
                let existing = self.find_by_name(Kind::Firewall, &cloud_name).await?.ok_or_else(|| anyhow!("{e}; yet no security group {cloud_name} can be found"))?;
                Ok(id_of(&existing))
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("creating security group {cloud_name}"))),
        }
    }

    fn labels_for(&self, spec: &ResourceSpec) -> Value {
        let mut labels = spec.attrs.get("labels").cloned().unwrap_or_else(|| json!(self.naming.labels()));
        if spec.address.kind == Kind::Machine {
            labels[IMAGE_LABEL] = spec.attrs.get("image").cloned().unwrap_or(Value::Null);
            labels[METADATA_LABEL] = json!(resources::metadata_digest(spec.attrs.get("metadata").unwrap_or(&Value::Null)));
        }
        labels
    }

    fn create_body(&self, spec: &ResourceSpec, deps_ids: &CreateRefs) -> Result<Value> {
        let a = &spec.attrs;
        let name = self.naming.cloud_name(&spec.address.name);
        let labels = self.labels_for(spec);
        let folder = self.folder();
        Ok(match spec.address.kind {
            Kind::Network => json!({"folderId": folder, "name": name, "labels": labels}),
            Kind::Subnet => json!({
                "folderId": folder, "name": name, "labels": labels,
                "networkId": deps_ids.network, "zoneId": a["zone"], "v4CidrBlocks": a["v4_cidr_blocks"],
            }),
            Kind::Firewall => {
                let specs = resources::rule_specs(&a["rules"], |g| deps_ids.groups.get(g).cloned().ok_or_else(|| anyhow!("unresolved group {g}")))?;
                json!({"folderId": folder, "name": name, "labels": labels, "networkId": deps_ids.network, "ruleSpecs": specs})
            }
            Kind::Machine => {
                let mut primary = json!({"address": a["ip"]});
                if a["public_ip"].as_bool() == Some(true) {
                    primary["oneToOneNatSpec"] = json!({"ipVersion": "IPV4"});
                }
                let groups: Vec<&String> = a["security_groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(|g| deps_ids.groups.get(g))
                    .collect();
                json!({
                    "folderId": folder, "name": name, "labels": labels,
                    "hostname": a["hostname"], "zoneId": a["zone"], "platformId": a["platform"],
                    "resourcesSpec": {
                        "memory": int_str(&a["memory"]), "cores": int_str(&a["cores"]), "coreFraction": int_str(&a["core_fraction"]),
                    },
                    "bootDiskSpec": {"autoDelete": true, "diskSpec": {
                        "size": int_str(&a["disk_size"]), "typeId": a["disk_type"], "imageId": deps_ids.image,
                    }},
                    "networkInterfaceSpecs": [{"subnetId": deps_ids.subnet, "primaryV4AddressSpec": primary, "securityGroupIds": groups}],
                    "metadata": a["metadata"],
                    "schedulingPolicy": {"preemptible": false},
                })
            }
        })
    }

    /// Ids a create request needs, resolved from deps (or by name).
    async fn create_refs(&self, spec: &ResourceSpec, deps: &Deps) -> Result<CreateRefs> {
        let a = &spec.attrs;
        let mut refs = CreateRefs::default();
        match spec.address.kind {
            Kind::Network => {}
            Kind::Subnet => refs.network = self.dep_id(deps, Kind::Network, str_attr(a, "network")).await?,
            Kind::Firewall => {
                refs.network = self.dep_id(deps, Kind::Network, str_attr(a, "network")).await?;
                refs.groups = self.group_ids(&a["rules"], deps, &refs.network).await?;
            }
            Kind::Machine => {
                refs.subnet = self.dep_id(deps, Kind::Subnet, str_attr(a, "subnet")).await?;
                for g in a["security_groups"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    refs.groups.insert(g.to_string(), self.dep_id(deps, Kind::Firewall, g).await?);
                }
                refs.image = self.image_id(str_attr(a, "image")).await?;
            }
        }
        Ok(refs)
    }

    /// Read one resource back (after create/update) in the normalised shape.
    async fn read(&self, kind: Kind, id: &str, deps: &Deps, known_metadata: Option<&Value>) -> Result<LiveResource> {
        let a = api(kind);
        let path = format!("{}/{id}", a.collection);
        let mut names = Names::from_deps(deps.values());
        let v = self.client.get(a.service, &path, &[]).await?;
        let live = match kind {
            Kind::Network => resources::live_network(&v, &self.naming),
            Kind::Subnet => resources::live_subnet(&v, &self.naming, &names),
            Kind::Firewall => {
                // A rule naming its own group by id (not via self_security_group) still maps back.
                if let Some(name) = v.get("name").and_then(Value::as_str).and_then(|n| self.naming.plan_name(n)) {
                    names.groups.insert(id.to_string(), name.to_string());
                }
                // Groups named by rules but not handed over as deps (two groups naming each other).
                let others: Vec<String> = v
                    .get("rules")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.get("securityGroupId").and_then(Value::as_str))
                    .filter(|g| !names.groups.contains_key(*g))
                    .map(str::to_string)
                    .collect();
                for other in others {
                    let g = self.client.get(a.service, &format!("{}/{other}", a.collection), &[]).await?;
                    if let Some(name) = g.get("name").and_then(Value::as_str).and_then(|n| self.naming.plan_name(n)) {
                        names.groups.insert(other, name.to_string());
                    }
                }
                resources::live_security_group(&v, &self.naming, &names)
            }
            Kind::Machine => {
                // The network's default group, to tell it from the groups the plan asked for.
                let subnet_id = v.pointer("/networkInterfaces/0/subnetId").and_then(Value::as_str).unwrap_or_default();
                let subnet = self.client.get(Service::Vpc, &format!("/vpc/v1/subnets/{subnet_id}"), &[]).await?;
                let network_id = subnet.get("networkId").and_then(Value::as_str).unwrap_or_default();
                let network = self.client.get(Service::Vpc, &format!("/vpc/v1/networks/{network_id}"), &[]).await?;
                names.default_groups.extend(network.get("defaultSecurityGroupId").and_then(Value::as_str).map(str::to_string));
                let disk_id = v.pointer("/bootDisk/diskId").and_then(Value::as_str).unwrap_or_default();
                let disk = self
                    .client
                    .get(Service::Compute, &format!("/compute/v1/disks/{disk_id}"), &[])
                    .await
                    .with_context(|| format!("reading boot disk {disk_id} of instance {id}"))?;
                resources::live_instance(&v, Some(&disk), &self.naming, &names, known_metadata)
            }
        };
        live.ok_or_else(|| anyhow!("{} {id} has a name outside project {}", a.what, self.naming.project))
    }

    /// The host keys on the instance's serial console, if printed yet.
    async fn console_host_keys(&self, id: &str) -> Result<Option<Vec<String>>> {
        let path = format!("/compute/v1/instances/{id}:serialPortOutput");
        let v = self.client.get(Service::Compute, &path, &[("port", "1".to_string())]).await?;
        Ok(console::host_keys(v.get("contents").and_then(Value::as_str).unwrap_or("")))
    }

    /// Wait until the instance's console shows its host keys: rigger checks
    /// hosts strictly, so a machine whose keys cannot be read is an error.
    async fn wait_host_keys(&self, id: &str, subject: &str, events: &Events) -> Result<Vec<String>> {
        events.progress(subject, "reading SSH host keys from the serial console");
        let waiting = Waiting {
            for_what: "cloud-init to print them between -----BEGIN SSH HOST KEY KEYS----- and -----END SSH HOST KEY KEYS-----",
            advice: Some("rigger does not trust unknown host keys"),
        };
        self.client
            .poll
            .backoff(Duration::from_millis(200), HOST_KEYS_TIMEOUT)
            .until(waiting, || async {
                Ok(match self.console_host_keys(id).await? {
                    Some(keys) => Check::Done(keys),
                    None => Check::NotYet(format!("instance {id} shows no SSH host keys on its serial console")),
                })
            })
            .await
    }

    /// A machine read back, with the host keys its console showed.
    async fn read_machine_with_keys(&self, id: &str, deps: &Deps, known_metadata: Option<&Value>, keys: Vec<String>) -> Result<LiveResource> {
        let mut live = self.read(Kind::Machine, id, deps, known_metadata).await?;
        live.outputs.insert("host_keys".into(), json!(keys));
        Ok(live)
    }

    /// Read a network, subnet or group after create or adoption. A group may be
    /// the empty one another group's create made for it: then it gets its rules now.
    async fn read_adopted(&self, spec: &ResourceSpec, id: &str, deps: &Deps, events: &Events) -> Result<LiveResource> {
        let live = self.read(spec.address.kind, id, deps, None).await?;
        if spec.address.kind == Kind::Firewall && live.attrs != spec.attrs {
            events.progress(&spec.address.to_string(), "setting the rules of the adopted group");
            return self.update(spec, &live, deps, events).await;
        }
        Ok(live)
    }

    async fn update_machine(&self, spec: &ResourceSpec, live: &LiveResource, deps: &Deps, events: &Events) -> Result<()> {
        let subject = spec.address.to_string();
        let want = &spec.attrs;
        let have = &live.attrs;
        let differs = |k: &str| want.get(k) != have.get(k);
        let path = format!("/compute/v1/instances/{}", live.id);
        // Nothing else may be changing it meanwhile; an instance that cannot run
        // (ERROR, being deleted) fails here, before any change.
        let status = self.settle(&live.id, &subject, events).await?;

        if differs("metadata") {
            events.progress(&subject, "updating metadata");
            let upsert = want.get("metadata").cloned().unwrap_or_else(|| json!({}));
            // Keys we set earlier and no longer want are deleted; our digest marker is not a real key.
            let delete: Vec<String> = have
                .get("metadata")
                .and_then(Value::as_object)
                .map(|m| m.keys().filter(|k| upsert.get(k.as_str()).is_none() && *k != METADATA_LABEL).cloned().collect())
                .unwrap_or_default();
            self.client.run(Method::POST, Service::Compute, &format!("{path}/updateMetadata"), Some(&json!({"delete": delete, "upsert": upsert}))).await?;
        }
        if differs("labels") || differs("metadata") || differs("image") {
            events.progress(&subject, "updating labels");
            let body = json!({"updateMask": "labels", "labels": self.labels_for(spec)});
            self.client.run(Method::PATCH, Service::Compute, &path, Some(&body)).await?;
        }
        if differs("security_groups") {
            events.progress(&subject, "updating security groups");
            let mut ids = Vec::new();
            for g in want["security_groups"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                ids.push(self.dep_id(deps, Kind::Firewall, g).await?);
            }
            let body = json!({"networkInterfaceIndex": "0", "updateMask": "securityGroupIds", "securityGroupIds": ids});
            self.client.run(Method::PATCH, Service::Compute, &format!("{path}/updateNetworkInterface"), Some(&body)).await?;
        }
        let mut patched = Ok(());
        if ["cores", "memory", "core_fraction", "platform"].iter().any(|k| differs(k)) {
            // Resources change only while the instance is stopped.
            if status != "STOPPED" {
                events.progress(&subject, "stopping to change cores/memory");
                self.client.run(Method::POST, Service::Compute, &format!("{path}:stop"), Some(&json!({}))).await?;
            }
            let body = json!({
                "updateMask": "resourcesSpec,platformId",
                "platformId": want["platform"],
                "resourcesSpec": {"memory": int_str(&want["memory"]), "cores": int_str(&want["cores"]), "coreFraction": int_str(&want["core_fraction"])},
            });
            events.progress(&subject, "changing cores/memory");
            patched = self.client.run(Method::PATCH, Service::Compute, &path, Some(&body)).await.map(drop);
        }
        // Started even when the change failed: the plan wants it running. One
        // left stopped anyway (a failed start, a run killed here, a stop behind
        // rigger's back) shows as status STOPPED in the next plan, which starts it.
        let started = if want.get("status").and_then(Value::as_str) == Some(lifecycle::RUNNING) {
            self.ensure_running(&live.id, &subject, events).await
        } else {
            Ok(())
        };
        patched?;
        started
    }
}

#[derive(Default)]
struct CreateRefs {
    network: String,
    subnet: String,
    image: String,
    groups: HashMap<String, String>,
}

fn str_attr<'a>(a: &'a BTreeMap<String, Value>, key: &str) -> &'a str {
    a.get(key).and_then(Value::as_str).unwrap_or("")
}

/// int64 fields go out as strings, as proto3 JSON writes them.
fn int_str(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.to_string()),
        other => other.clone(),
    }
}

#[async_trait]
impl Provider for YandexProvider {
    fn kind(&self) -> &'static str {
        "yandex"
    }

    fn specs(&self, plan: &Plan) -> Result<Vec<ResourceSpec>> {
        resources::specs(plan, &self.cfg)
    }

    async fn refresh(&self, known: &[LiveResource], events: &Events) -> Result<Vec<LiveResource>> {
        // List calls only filter by name, so list each type once and keep what carries our label.
        events.progress("yandex", "listing networks, subnets, security groups, instances, disks");
        let (networks, subnets, groups, instances, disks) = tokio::try_join!(
            self.list(Kind::Network, None),
            self.list(Kind::Subnet, None),
            self.list(Kind::Firewall, None),
            self.list(Kind::Machine, None),
            self.client.list(Service::Compute, "/compute/v1/disks", "disks", self.folder(), None),
        )
        .with_context(|| format!("listing resources of folder {}", self.folder()))?;
        let ours = |items: Vec<Value>| -> Vec<Value> { items.into_iter().filter(|r| self.naming.owns(r)).collect() };
        let (networks, subnets, groups, instances) = (ours(networks), ours(subnets), ours(groups), ours(instances));

        let mut names = Names::default();
        let id_and_name = |r: &Value| {
            let id = r.get("id").and_then(Value::as_str)?.to_string();
            let name = self.naming.plan_name(r.get("name").and_then(Value::as_str)?)?.to_string();
            Some((id, name))
        };
        names.networks.extend(networks.iter().filter_map(id_and_name));
        names.subnets.extend(subnets.iter().filter_map(id_and_name));
        names.groups.extend(groups.iter().filter_map(id_and_name));
        names.default_groups.extend(networks.iter().filter_map(|n| n.get("defaultSecurityGroupId")?.as_str().map(str::to_string)));
        let disks: HashMap<&str, &Value> = disks.iter().filter_map(|d| Some((d.get("id")?.as_str()?, d))).collect();
        let known_metadata: HashMap<&Address, &Value> =
            known.iter().filter(|k| k.address.kind == Kind::Machine).filter_map(|k| Some((&k.address, k.attrs.get("metadata")?))).collect();
        // Host keys were read from the console when the instance was made; an
        // instance id keeps its keys, so only instances rigger never saw cost a call.
        let known_host_keys: HashMap<&str, &Value> =
            known.iter().filter(|k| k.address.kind == Kind::Machine).filter_map(|k| Some((k.id.as_str(), k.outputs.get("host_keys")?))).collect();

        let mut out = Vec::new();
        out.extend(networks.iter().filter_map(|v| resources::live_network(v, &self.naming)));
        out.extend(subnets.iter().filter_map(|v| resources::live_subnet(v, &self.naming, &names)));
        out.extend(groups.iter().filter_map(|v| resources::live_security_group(v, &self.naming, &names)));
        for v in &instances {
            if v.get("status").and_then(Value::as_str) == Some("DELETING") {
                continue;
            }
            let disk = v.pointer("/bootDisk/diskId").and_then(Value::as_str).and_then(|id| disks.get(id)).copied();
            let name = v.get("name").and_then(Value::as_str).and_then(|n| self.naming.plan_name(n)).unwrap_or_default();
            let known = known_metadata.get(&Address::new(Kind::Machine, name)).copied();
            let full;
            let v = match known.filter(|m| resources::metadata_matches(v, m)) {
                Some(_) => v,
                // List answers carry no metadata, and the state remembers none that
                // matches (a create whose answer was lost, a state made anew): read
                // it whole, so the plan compares the real metadata, not a digest.
                None => {
                    let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
                    match self.client.get(Service::Compute, &format!("/compute/v1/instances/{id}"), &[("view", "FULL".into())]).await {
                        Ok(whole) => {
                            full = whole;
                            &full
                        }
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading instance {id} with its metadata"))),
                    }
                }
            };
            let Some(mut live) = resources::live_instance(v, disk, &self.naming, &names, known) else { continue };
            let keys = match known_host_keys.get(live.id.as_str()) {
                Some(keys) => Some((*keys).clone()),
                None if v.get("status").and_then(Value::as_str) == Some("RUNNING") => self.console_host_keys(&live.id).await?.map(|k| json!(k)),
                None => None,
            };
            live.outputs.extend(keys.map(|k| ("host_keys".to_string(), k)));
            out.push(live);
        }
        Ok(out)
    }

    fn blocks(&self, change: &Change) -> Option<String> {
        lifecycle::blocked_update(change)
    }

    async fn create(&self, spec: &ResourceSpec, deps: &Deps, events: &Events) -> Result<LiveResource> {
        let subject = spec.address.to_string();
        let kind = spec.address.kind;
        let a = api(kind);
        let cloud_name = self.naming.cloud_name(&spec.address.name);
        let known_metadata = spec.attrs.get("metadata");

        // A previous attempt may have created it and lost the answer: adopt it.
        if let Some(existing) = self.find_to_adopt(kind, &cloud_name, &subject, events).await? {
            let id = existing.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            events.note(&subject, format!("{} {cloud_name} already exists ({id}); adopting it", a.what));
            if kind == Kind::Machine {
                self.ensure_running(&id, &subject, events).await?;
                let keys = self.wait_host_keys(&id, &subject, events).await?;
                return self.read_machine_with_keys(&id, deps, known_metadata, keys).await;
            }
            return self.read_adopted(spec, &id, deps, events).await;
        }

        let refs = self.create_refs(spec, deps).await?;
        let body = self.create_body(spec, &refs)?;
        events.progress(&subject, format!("creating {} {cloud_name}", a.what));
        let id = match self.client.run(Method::POST, a.service, a.collection, Some(&body)).await {
            Ok(op) => op.resource_id(a.id_field).ok_or_else(|| anyhow!("creating {} {cloud_name}: the operation names no {}", a.what, a.id_field))?,
            Err(e) if e.is_already_exists() => {
                // Created meanwhile by a retry whose answer we never saw.
                events.note(&subject, format!("{} {cloud_name} appeared meanwhile; adopting it", a.what));
                let existing = self
                    .find_to_adopt(kind, &cloud_name, &subject, events)
                    .await?
                    .ok_or_else(|| anyhow!("{e}; yet no {} named {cloud_name} can be found", a.what))?;
                existing.get("id").and_then(Value::as_str).unwrap_or_default().to_string()
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("creating {} {cloud_name}", a.what))),
        };
        if kind == Kind::Machine {
            self.ensure_running(&id, &subject, events).await?;
            let keys = self.wait_host_keys(&id, &subject, events).await?;
            return self.read_machine_with_keys(&id, deps, known_metadata, keys).await;
        }
        self.read_adopted(spec, &id, deps, events).await
    }

    async fn update(&self, spec: &ResourceSpec, live: &LiveResource, deps: &Deps, events: &Events) -> Result<LiveResource> {
        let kind = spec.address.kind;
        let a = api(kind);
        let path = format!("{}/{}", a.collection, live.id);
        let what = format!("updating {} {}", a.what, self.naming.cloud_name(&spec.address.name));
        match kind {
            Kind::Network | Kind::Subnet => {
                let body = json!({"updateMask": "labels", "labels": self.labels_for(spec)});
                self.client.run(Method::PATCH, a.service, &path, Some(&body)).await.context(what.clone())?;
            }
            Kind::Firewall => {
                let network = self.dep_id(deps, Kind::Network, str_attr(&spec.attrs, "network")).await?;
                let ids = self.group_ids(&spec.attrs["rules"], deps, &network).await?;
                let specs = resources::rule_specs(&spec.attrs["rules"], |g| ids.get(g).cloned().ok_or_else(|| anyhow!("unresolved group {g}")))?;
                // Updating ruleSpecs replaces the whole rule set in one operation.
                let body = json!({"updateMask": "labels,ruleSpecs", "labels": self.labels_for(spec), "ruleSpecs": specs});
                self.client.run(Method::PATCH, a.service, &path, Some(&body)).await.context(what.clone())?;
            }
            Kind::Machine => {
                self.update_machine(spec, live, deps, events).await.context(what.clone())?;
                // The same instance keeps its disk, so its host keys.
                let keys = match live.outputs.get("host_keys").and_then(Value::as_array) {
                    Some(keys) => keys.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                    None => self.wait_host_keys(&live.id, &spec.address.to_string(), events).await?,
                };
                return self.read_machine_with_keys(&live.id, deps, spec.attrs.get("metadata"), keys).await;
            }
        }
        self.read(kind, &live.id, deps, spec.attrs.get("metadata")).await
    }

    async fn delete(&self, live: &LiveResource, events: &Events) -> Result<()> {
        let a = api(live.address.kind);
        let path = format!("{}/{}", a.collection, live.id);
        events.progress(&live.address.to_string(), format!("deleting {} {}", a.what, live.id));
        match self.client.run(Method::DELETE, a.service, &path, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("deleting {} {}", a.what, live.id))),
        }
    }
}
