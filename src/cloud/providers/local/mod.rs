//! The local provider, rigger's embedded default: each machine is a
//! `systemd-nspawn --boot` container of a Debian 12 image (built once with
//! mmdebstrap), with its own overlay and its own network namespace on a bridge
//! per plan network, at the plan's IP. Needs root, systemd-container and
//! mmdebstrap; no account, no internet at run time.
//!
//! Resources and what they are here:
//! - `network.<name>`:  a Linux bridge (attrs: `bridge`)
//! - `subnet.<name>`:   the gateway address on that bridge (attrs: `cidr`, `gateway`, `network`)
//! - `firewall.<name>`: recorded only, not enforced yet (attrs: `rules`);
//!   enforcement with nftables inside the machines comes later
//! - `machine.<host>`:  a container (see `nspawn_machines::machine`)
//!
//! Everything lives under `<root>/machines/<project>/` (root: `/var/lib/rigger`);
//! host-wide names come from `nspawn_machines::names`, so a run finds what an earlier one made.

pub mod records;
pub mod rules;

use rigger_events::Events;
use crate::plan::model::{Plan, ProviderConfig};
use crate::cloud::providers::{Deps, Provider};
use crate::cloud::resource::{Address, Attrs, Kind, LiveResource, ResourceSpec};
use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use ipnet::Ipv4Net;
use nspawn_machines::machine::{self, MachinePaths, Meta, Seed};
use nspawn_machines::{image, names, net, preflight};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::OnceCell;

pub struct LocalProvider {
    project: String,
    /// `/var/lib/rigger` unless given: holds `images/` and `machines/`.
    root: PathBuf,
    host_checked: OnceCell<()>,
}

impl LocalProvider {
    /// The provider for one project, keeping its machines under `/var/lib/rigger`.
    pub fn new(project: &str) -> Result<Self> {
        Self::with_root(project, image::DEFAULT_ROOT)
    }

    /// Same, with another root folder for images and machines.
    pub fn with_root(project: &str, root: impl Into<PathBuf>) -> Result<Self> {
        names::check_component("project", project)?;
        Ok(LocalProvider { project: project.into(), root: root.into(), host_checked: OnceCell::new() })
    }

    fn project_dir(&self) -> PathBuf {
        self.root.join("machines").join(&self.project)
    }

    fn machine_paths(&self, host: &str) -> MachinePaths {
        MachinePaths::new(&self.project_dir(), host)
    }

    /// Host requirements, checked once before the first change.
    async fn check_host(&self) -> Result<()> {
        self.host_checked.get_or_try_init(|| async { preflight::check_host() }).await?;
        Ok(())
    }
}

// ---------------------------------------------------------------- specs

fn spec(address: Address, depends_on: Vec<Address>, attrs: Attrs, replace_on: &[&str]) -> ResourceSpec {
    ResourceSpec {
        address,
        depends_on,
        attrs,
        replace_on: replace_on.iter().map(|s| s.to_string()).collect(),
        sensitive: BTreeSet::new(),
    }
}

fn attrs(value: Value) -> Attrs {
    match value {
        Value::Object(map) => map.into_iter().collect(),
        _ => Attrs::new(),
    }
}

/// The first key line of the plan's public key file.
fn read_public_key(plan: &Plan) -> Result<String> {
    // Plan paths are already resolved against the plan's folder by the loader.
    let path = plan.ssh.public_key_file.clone();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading ssh.public_key_file {}: create it with ssh-keygen or point the plan at an existing key", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("ssh.public_key_file {} holds no key", path.display()))
}

impl LocalProvider {
    fn plan_specs(&self, plan: &Plan) -> Result<Vec<ResourceSpec>> {
        anyhow::ensure!(
            plan.project == self.project,
            "the local provider was made for project {:?} but the plan is for {:?}",
            self.project,
            plan.project
        );
        let network = Address::new(Kind::Network, &plan.network.name);
        let mut specs = vec![spec(
            network.clone(),
            vec![],
            attrs(json!({ "bridge": names::bridge(&plan.project, &plan.network.name) })),
            &["bridge"],
        )];
        for subnet in &plan.network.subnets {
            specs.push(spec(
                Address::new(Kind::Subnet, &subnet.name),
                vec![network.clone()],
                attrs(json!({
                    "cidr": subnet.cidr.trunc().to_string(),
                    "gateway": subnet.gateway.to_string(),
                    "network": plan.network.name,
                })),
                &["cidr", "gateway", "network"],
            ));
        }
        for group in &plan.firewall {
            specs.push(spec(
                Address::new(Kind::Firewall, &group.name),
                vec![network.clone()],
                attrs(json!({ "rules": serde_json::to_value(&group.rules)? })),
                &[],
            ));
        }
        let local_image = match &plan.provider {
            ProviderConfig::Local(config) => Some(config.image.clone()),
            _ => None,
        };
        let ssh_public_key = if plan.hosts.is_empty() { String::new() } else { read_public_key(plan)? };
        for host in &plan.hosts {
            names::check_component("host name", &host.name)?;
            let subnet = plan
                .subnet(&host.subnet)
                .ok_or_else(|| anyhow!("host {} is in subnet {:?}, which the plan does not define", host.name, host.subnet))?;
            let mut depends_on = vec![Address::new(Kind::Subnet, &subnet.name)];
            depends_on.extend(host.firewall.iter().map(|g| Address::new(Kind::Firewall, g)));
            specs.push(spec(
                Address::new(Kind::Machine, &host.name),
                depends_on,
                attrs(json!({
                    "image": local_image.clone().unwrap_or_else(|| host.image.clone()),
                    "subnet": subnet.name,
                    "ip": host.ip.to_string(),
                    "prefix": subnet.cidr.prefix_len(),
                    "gateway": subnet.gateway.to_string(),
                    "ssh_user": plan.ssh.user,
                    "ssh_public_key": ssh_public_key,
                    // Recorded, not enforced: nspawn machines share the host's CPUs,
                    // memory and disk (no cgroup limits without a systemd host).
                    "cores": host.cores,
                    "memory_bytes": host.memory_bytes,
                    "disk_bytes": host.disk_bytes,
                    "firewall": host.firewall,
                    "status": "running",
                })),
                // A machine's address and identity are set at first boot.
                &["image", "subnet", "ip", "prefix", "gateway", "ssh_user"],
            ));
        }
        Ok(specs)
    }
}

// ---------------------------------------------------------------- reading attrs

fn attr_str<'a>(attrs: &'a Attrs, key: &str) -> Result<&'a str> {
    attrs.get(key).and_then(Value::as_str).ok_or_else(|| anyhow!("attribute {key:?} missing or not a string"))
}

fn attr_parsed<T: std::str::FromStr>(attrs: &Attrs, key: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let raw = attr_str(attrs, key)?;
    raw.parse().map_err(|e| anyhow!("attribute {key:?} = {raw:?}: {e}"))
}

// ---------------------------------------------------------------- live resources

fn live_from_record(record: records::Record) -> LiveResource {
    LiveResource { address: record.address, id: record.id, attrs: record.attrs, outputs: Attrs::new() }
}

fn live_machine(meta: &Meta, pid: Option<u32>) -> LiveResource {
    let mut attrs = meta.attrs.clone();
    attrs.insert("status".into(), json!(if pid.is_some() { "running" } else { "stopped" }));
    let mut outputs = attrs_of([
        ("ssh_host", json!(meta.ip.to_string())),
        ("private_ip", json!(meta.ip.to_string())),
        ("host_keys", json!(meta.host_keys)),
        ("netns", json!(meta.netns)),
    ]);
    if let Some(pid) = pid {
        outputs.insert("pid".into(), json!(pid));
    }
    LiveResource { address: Address::new(Kind::Machine, &meta.host), id: meta.name.clone(), attrs, outputs }
}

fn attrs_of<const N: usize>(pairs: [(&str, Value); N]) -> Attrs {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

// ---------------------------------------------------------------- network, subnet, firewall

impl LocalProvider {
    async fn ensure_network(&self, spec: &ResourceSpec) -> Result<LiveResource> {
        let bridge = attr_str(&spec.attrs, "bridge")?;
        net::ensure_bridge(bridge).await?;
        self.record(spec, bridge)
    }

    async fn ensure_subnet(&self, spec: &ResourceSpec) -> Result<LiveResource> {
        let cidr: Ipv4Net = attr_parsed(&spec.attrs, "cidr")?;
        let gateway: Ipv4Addr = attr_parsed(&spec.attrs, "gateway")?;
        let bridge = names::bridge(&self.project, attr_str(&spec.attrs, "network")?);
        net::ensure_subnet(&bridge, cidr, gateway).await?;
        self.record(spec, &format!("{bridge}/{cidr}"))
    }

    fn record(&self, spec: &ResourceSpec, id: &str) -> Result<LiveResource> {
        let record = records::Record { address: spec.address.clone(), id: id.into(), attrs: spec.attrs.clone() };
        records::write(&self.project_dir(), &record)?;
        Ok(live_from_record(record))
    }

    async fn delete_subnet(&self, live: &LiveResource) -> Result<()> {
        let cidr: Ipv4Net = attr_parsed(&live.attrs, "cidr")?;
        let gateway: Ipv4Addr = attr_parsed(&live.attrs, "gateway")?;
        let bridge = names::bridge(&self.project, attr_str(&live.attrs, "network")?);
        net::remove_subnet(&bridge, cidr, gateway).await
    }
}

// ---------------------------------------------------------------- machines

impl LocalProvider {
    /// The bridge a machine's subnet lives on: from the subnet handed over as a
    /// dependency, else from the subnet's record.
    fn bridge_for_subnet(&self, subnet: &str, deps: &Deps) -> Result<String> {
        let address = Address::new(Kind::Subnet, subnet);
        let attrs = match deps.get(&address) {
            Some(live) => live.attrs.clone(),
            None => records::read(&self.project_dir(), &address)?
                .ok_or_else(|| anyhow!("subnet {subnet} does not exist yet: create it before its machines"))?
                .attrs,
        };
        Ok(names::bridge(&self.project, attr_str(&attrs, "network")?))
    }

    async fn create_machine(&self, spec: &ResourceSpec, deps: &Deps, events: &Events) -> Result<LiveResource> {
        let host = &spec.address.name;
        let paths = self.machine_paths(host);
        // Adopt a machine an earlier, interrupted run already made.
        if let Some(meta) = Meta::read(&paths.meta)? {
            events.note(&spec.address.to_string(), "machine exists; adopting it");
            return self.run_machine(&paths, meta, events, &spec.address.to_string()).await;
        }
        let subject = spec.address.to_string();
        let image_name = attr_str(&spec.attrs, "image")?;
        let lower = image::ensure_image_in(&self.root, image_name, events).await?;
        let ip: Ipv4Addr = attr_parsed(&spec.attrs, "ip")?;
        let prefix = spec.attrs.get("prefix").and_then(Value::as_u64).and_then(|p| u8::try_from(p).ok()).context("attribute \"prefix\"")?;
        let meta = Meta {
            name: names::machine(&self.project, host),
            project: self.project.clone(),
            host: host.clone(),
            pid: None,
            ip,
            prefix,
            gateway: attr_parsed(&spec.attrs, "gateway")?,
            netns: names::machine(&self.project, host),
            bridge: self.bridge_for_subnet(attr_str(&spec.attrs, "subnet")?, deps)?,
            veth: names::veth_host(&self.project, host),
            image: image_name.into(),
            lower,
            created: chrono::Utc::now().to_rfc3339(),
            host_keys: Vec::new(),
            attrs: spec.attrs.clone(),
        };
        meta.address()?;
        events.progress(&subject, "writing hostname, user, keys");
        let host_keys = machine::lay_down(
            &paths,
            &meta.lower,
            &Seed {
                hostname: host,
                ip,
                ssh_user: attr_str(&spec.attrs, "ssh_user")?,
                ssh_public_key: attr_str(&spec.attrs, "ssh_public_key")?,
            },
        )
        .await?;
        let meta = Meta { host_keys, ..meta };
        // Written before the boot, so refresh and delete find even a machine that fails to boot.
        meta.write(&paths.meta)?;
        self.run_machine(&paths, meta, events, &subject).await
    }

    /// Makes sure the machine's network, overlay and container are up and sshd answers.
    async fn run_machine(&self, paths: &MachinePaths, mut meta: Meta, events: &Events, subject: &str) -> Result<LiveResource> {
        events.progress(subject, "booting");
        let pid = machine::bring_up(paths, &meta).await?;
        meta.pid = Some(pid);
        meta.write(&paths.meta)?;
        events.progress(subject, "waiting for sshd");
        machine::wait_for_ssh(paths, &meta).await?;
        Ok(live_machine(&meta, Some(pid)))
    }

    async fn update_machine(&self, spec: &ResourceSpec, live: &LiveResource, events: &Events) -> Result<LiveResource> {
        let subject = spec.address.to_string();
        let paths = self.machine_paths(&spec.address.name);
        let mut meta = Meta::read(&paths.meta)?.ok_or_else(|| anyhow!("machine {} is gone; it has to be created again", spec.address.name))?;
        let changed = |key: &str| spec.attrs.get(key) != live.attrs.get(key);
        if changed("ssh_public_key") {
            events.progress(&subject, "rewriting authorized_keys");
            machine::ensure_overlay(&paths, &meta.lower).await?;
            machine::write_authorized_key(&paths.rootfs, attr_str(&meta.attrs, "ssh_user")?, attr_str(&spec.attrs, "ssh_public_key")?)?;
        }
        // cores, memory_bytes, disk_bytes, firewall: recorded only (see specs).
        meta.attrs = spec.attrs.clone();
        meta.write(&paths.meta)?;
        match spec.attrs.get("status").and_then(Value::as_str) {
            Some("stopped") => {
                events.progress(&subject, "stopping");
                machine::stop(&meta.name, &meta.netns).await?;
                Ok(live_machine(&meta, None))
            }
            _ => self.run_machine(&paths, meta, events, &subject).await,
        }
    }

    async fn delete_machine(&self, live: &LiveResource) -> Result<()> {
        let host = &live.address.name;
        let paths = self.machine_paths(host);
        // Names are derived, so even a machine whose meta.json is lost is cleaned up.
        let (name, netns, veth) = match Meta::read(&paths.meta)? {
            Some(meta) => (meta.name, meta.netns, meta.veth),
            None => (names::machine(&self.project, host), names::machine(&self.project, host), names::veth_host(&self.project, host)),
        };
        machine::destroy(&paths, &name, &netns, &veth).await
    }

    /// Every machine directory of the project with its meta.json.
    fn list_machines(&self) -> Result<Vec<Meta>> {
        let dir = self.project_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut metas = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') || !entry.file_type()?.is_dir() {
                continue;
            }
            if let Some(meta) = Meta::read(&entry.path().join("meta.json"))? {
                metas.push(meta);
            }
        }
        metas.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(metas)
    }
}

// ---------------------------------------------------------------- the contract

/// Reports a step's start and end (or failure) around `work`.
async fn step<T>(events: &Events, subject: &str, what: &str, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    events.started(subject, what);
    let result = work.await;
    match &result {
        Ok(_) => events.finished(subject, what, started),
        Err(e) => events.failed(subject, what, &format!("{e:#}")),
    }
    result
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn specs(&self, plan: &Plan) -> Result<Vec<ResourceSpec>> {
        self.plan_specs(plan)
    }

    /// Lists the project's records and machine directories, checks them against
    /// one listing of the host's links and one scan of running machines.
    /// `known` is not needed: everything of the project is found by listing.
    async fn refresh(&self, _known: &[LiveResource], _events: &Events) -> Result<Vec<LiveResource>> {
        let project_dir = self.project_dir();
        let records = records::list(&project_dir)?;
        let metas = self.list_machines()?;
        if records.is_empty() && metas.is_empty() {
            return Ok(Vec::new());
        }
        let links = net::host_links().await?;
        let running = machine::running_machines()?;
        let mut live = Vec::new();
        for record in records {
            let exists = match record.address.kind {
                Kind::Network => attr_str(&record.attrs, "bridge").is_ok_and(|b| links.bridges.contains(b)),
                Kind::Subnet => {
                    let bridge = attr_str(&record.attrs, "network").map(|n| names::bridge(&self.project, n));
                    let gateway = attr_parsed::<Ipv4Addr>(&record.attrs, "gateway");
                    let cidr = attr_parsed::<Ipv4Net>(&record.attrs, "cidr");
                    match (bridge, gateway, cidr) {
                        (Ok(bridge), Ok(gateway), Ok(cidr)) => {
                            Ipv4Net::new(gateway, cidr.prefix_len()).is_ok_and(|gw| links.has_address(&bridge, gw))
                        }
                        _ => false,
                    }
                }
                Kind::Firewall => true,
                Kind::Machine => false,
            };
            if exists {
                live.push(live_from_record(record));
            }
        }
        for meta in metas {
            live.push(live_machine(&meta, running.get(&meta.name).copied()));
        }
        Ok(live)
    }

    async fn create(&self, spec: &ResourceSpec, deps: &Deps, events: &Events) -> Result<LiveResource> {
        self.check_host().await?;
        let subject = spec.address.to_string();
        step(events, &subject, "create", async {
            match spec.address.kind {
                Kind::Network => self.ensure_network(spec).await,
                Kind::Subnet => self.ensure_subnet(spec).await,
                Kind::Firewall => self.record(spec, &format!("{}/{}", self.project, spec.address.name)),
                Kind::Machine => self.create_machine(spec, deps, events).await,
            }
        })
        .await
    }

    async fn update(&self, spec: &ResourceSpec, live: &LiveResource, _deps: &Deps, events: &Events) -> Result<LiveResource> {
        self.check_host().await?;
        let subject = spec.address.to_string();
        step(events, &subject, "update", async {
            match spec.address.kind {
                Kind::Network => self.ensure_network(spec).await,
                Kind::Subnet => self.ensure_subnet(spec).await,
                Kind::Firewall => self.record(spec, &live.id),
                Kind::Machine => self.update_machine(spec, live, events).await,
            }
        })
        .await
    }

    async fn console_tail(&self, machine: &LiveResource, lines: usize) -> Option<String> {
        let log = self.machine_paths(&machine.address.name).log;
        let text = std::fs::read_to_string(log).ok()?;
        let all: Vec<&str> = text.lines().collect();
        Some(all[all.len().saturating_sub(lines)..].join("\n"))
    }

    async fn power(&self, live: &LiveResource, action: crate::cloud::providers::Power, events: &Events) -> Result<LiveResource> {
        use crate::cloud::providers::Power;
        self.check_host().await?;
        anyhow::ensure!(live.address.kind == Kind::Machine, "{} is not a machine", live.address);
        let subject = live.address.to_string();
        let paths = self.machine_paths(&live.address.name);
        let meta = Meta::read(&paths.meta)?.ok_or_else(|| anyhow!("machine {} is gone", live.address.name))?;
        match action {
            Power::Kill => {
                machine::kill_now(&meta.name, &meta.netns).await?;
                Ok(live_machine(&meta, None))
            }
            Power::Shutdown => {
                machine::stop(&meta.name, &meta.netns).await?;
                Ok(live_machine(&meta, None))
            }
            Power::Start => self.run_machine(&paths, meta, events, &subject).await,
        }
    }

    async fn delete(&self, live: &LiveResource, events: &Events) -> Result<()> {
        self.check_host().await?;
        let subject = live.address.to_string();
        let project_dir = self.project_dir();
        step(events, &subject, "delete", async {
            match live.address.kind {
                Kind::Network => net::delete_bridge(&names::bridge(&self.project, &live.address.name)).await?,
                Kind::Subnet => self.delete_subnet(live).await?,
                Kind::Firewall => {}
                Kind::Machine => self.delete_machine(live).await?,
            }
            if live.address.kind != Kind::Machine {
                records::remove(&project_dir, &live.address)?;
            }
            records::tidy(&project_dir);
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_str_wants_a_string() {
        let a = attrs(json!({"ip": 5}));
        assert!(attr_str(&a, "ip").is_err());
    }
}
