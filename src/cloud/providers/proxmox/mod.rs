//! The Proxmox VE provider: machines become LXC containers (default) or QEMU
//! VMs cloned from a cloud-init template, on one node, over api2/json.
//!
//! Proxmox has no VPC objects: the plan's `network`, `subnet` and `firewall`
//! resources produce no specs. The bridge named in the provider config is taken
//! as pre-existing, and subnets only supply each guest's prefix and gateway.
//! Firewall groups are not enforced on Proxmox yet (neither as PVE security
//! groups nor host rules); the config phase may add host firewall rules later.
//!
//! Ownership: every guest carries the tags `rigger` and the project's tag;
//! refresh lists `/cluster/resources?type=vm` once and reads configs only for
//! the guests so tagged (a plan refuses two of them with one name:
//! `refuse_to_plan`; a destroy removes both). A create
//! adopts an existing guest with the same VMID (or, without one, the same
//! name), the same kind and the project's tags, and refuses a VMID that
//! belongs to anything else; a guest still being created has no name or tags
//! yet, so creations are waited for first and the VMID a create POSTed is
//! remembered (`creating.rs`). Delete removes only a guest tagged as the
//! project's and named as the machine.
//!
//! First login (`prepare_login`, before rigger waits for SSH as `ssh.user`):
//! LXC containers get the plan's user from root over SSH (`first_login.rs`);
//! host keys come from the API — verified fingerprints for LXC, whole keys
//! through the guest agent for QEMU (`host_keys.rs`). Both are kept as outputs
//! across refreshes, since the API cannot report them again.

pub mod client;
mod creating;
pub mod first_login;
pub mod host_keys;
pub mod locks;
pub mod resources;
pub mod rules;
pub mod tasks;
pub mod tls;

use rigger_events::Events;
use crate::plan::model::{Plan, ProviderConfig, ProxmoxConfig};
use crate::cloud::providers::{Deps, Provider};
use crate::cloud::resource::{Kind, LiveResource, ResourceSpec};
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use client::{as_u64, backoff, ApiError, Auth, ClientOptions, ProxmoxClient};
use reqwest::Method;
use resources::{encode_sshkeys, live_machine, owned_by, parse_size, Meta};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tls::TlsMode;

pub const ENV_ENDPOINT: &str = "RIGGER_PROXMOX_ENDPOINT";
pub const ENV_TOKEN_SECRET: &str = "PROXMOX_TOKEN_SECRET";

#[derive(Clone, Debug)]
pub struct ProviderTimeouts {
    /// Until a started guest reports `running` (and is unlocked).
    pub running: Duration,
    /// Until a VM's guest agent reports its planned address.
    pub agent: Duration,
    /// Create/delete attempts on transient failures (the core may retry again).
    pub attempts: u32,
    /// Until a config lock held by a running task is released.
    pub lock: Duration,
}

impl Default for ProviderTimeouts {
    fn default() -> Self {
        ProviderTimeouts { running: Duration::from_secs(300), agent: Duration::from_secs(600), attempts: 5, lock: Duration::from_secs(120) }
    }
}

/// A guest's lock after a bounded wait.
enum Settled {
    Gone,
    Unlocked(Value),
    /// `create`/`clone` with no task holding it: it will never be released.
    Stale { name: String, lock: String },
}

pub struct ProxmoxProvider {
    client: Arc<ProxmoxClient>,
    config: ProxmoxConfig,
    project: String,
    timeouts: ProviderTimeouts,
    /// Where each guest lives, from the newest cluster-wide listing: a guest
    /// is addressed on its own node (HA or an admin may have migrated it);
    /// one not listed yet is on `config.node`, where rigger creates guests.
    nodes: std::sync::Mutex<BTreeMap<u64, String>>,
    /// The VMID each create POSTed, by machine address: a retry after a lost
    /// answer adopts that guest rather than allocating another VMID.
    posted: std::sync::Mutex<BTreeMap<String, u64>>,
    /// One VMID allocation at a time (see `allocate_vmid`).
    allocating: tokio::sync::Mutex<()>,
}

impl ProxmoxProvider {
    pub fn new(client: ProxmoxClient, config: ProxmoxConfig, project: impl Into<String>) -> ProxmoxProvider {
        ProxmoxProvider {
            client: Arc::new(client),
            config,
            project: project.into(),
            timeouts: ProviderTimeouts::default(),
            nodes: Default::default(),
            posted: Default::default(),
            allocating: Default::default(),
        }
    }

    /// From the plan's provider block: endpoint from the plan or
    /// `RIGGER_PROXMOX_ENDPOINT`, token secret from `PROXMOX_TOKEN_SECRET`.
    pub fn from_plan(plan: &Plan) -> Result<ProxmoxProvider> {
        let ProviderConfig::Proxmox(config) = &plan.provider else {
            bail!("the plan's provider is {}, not proxmox", plan.provider.kind());
        };
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| std::env::var(ENV_ENDPOINT).ok())
            .ok_or_else(|| anyhow!("provider.endpoint is not set and {ENV_ENDPOINT} is empty: say where Proxmox listens (https://HOST:8006)"))?;
        if let Some(why) = super::endpoint::refuses_credentials(&endpoint) {
            bail!("the Proxmox endpoint (provider.endpoint or {ENV_ENDPOINT}) {why}");
        }
        let token_id = config
            .token_id
            .clone()
            .ok_or_else(|| anyhow!("provider.token_id is not set: name the API token (USER@REALM!TOKENID)"))?;
        let secret = std::env::var(ENV_TOKEN_SECRET)
            .map_err(|_| anyhow!("{ENV_TOKEN_SECRET} is not set: export the secret of API token {token_id}"))?;
        let tls = match (&config.tls_fingerprint, config.insecure) {
            (Some(fp), _) => TlsMode::Pinned(tls::parse_fingerprint(fp)?),
            (None, true) => TlsMode::Insecure,
            (None, false) => TlsMode::WebPki,
        };
        let client = ProxmoxClient::new(ClientOptions::new(endpoint, Auth::Token { id: token_id, secret }, tls))?;
        Ok(ProxmoxProvider::new(client, config.clone(), plan.project.clone()))
    }

    pub fn with_timeouts(mut self, timeouts: ProviderTimeouts) -> ProxmoxProvider {
        self.timeouts = timeouts;
        self
    }

    pub fn client(&self) -> &ProxmoxClient {
        &self.client
    }

    fn node(&self) -> &str {
        &self.config.node
    }

    /// The node that holds the guest's config (every call about the guest is
    /// made there: elsewhere PVE answers that its config file does not exist).
    fn node_of(&self, vmid: u64) -> String {
        self.nodes.lock().ok().and_then(|n| n.get(&vmid).cloned()).unwrap_or_else(|| self.node().to_string())
    }

    fn guest_path(&self, kind: &str, vmid: u64) -> String {
        format!("/nodes/{}/{kind}/{vmid}", self.node_of(vmid))
    }

    /// Every guest of the cluster (`/cluster/resources`), each on its node.
    async fn guests(&self) -> Result<Vec<Value>, ApiError> {
        let list = self.client.get("/cluster/resources", &[("type", "vm".into())]).await?;
        let list = list.as_array().cloned().unwrap_or_default();
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.clear();
            nodes.extend(list.iter().filter_map(|g| Some((g.get("vmid").and_then(as_u64)?, g.get("node").and_then(Value::as_str)?.to_string()))));
        }
        Ok(list)
    }

    async fn find_by_vmid(&self, vmid: u64) -> Result<Option<Value>, ApiError> {
        Ok(self.guests().await?.into_iter().find(|g| g.get("vmid").and_then(as_u64) == Some(vmid)))
    }

    /// Without a planned VMID: a guest of this kind and name that is ours
    /// (tagged, or — for a clone not yet configured — marked in its description).
    async fn find_by_name(&self, kind: &str, name: &str) -> Result<Option<u64>> {
        for guest in self.guests().await? {
            let same = guest.get("type").and_then(Value::as_str) == Some(kind)
                && guest.get("name").and_then(Value::as_str) == Some(name)
                && guest.get("template").and_then(as_u64).unwrap_or(0) == 0;
            let Some(vmid) = guest.get("vmid").and_then(as_u64).filter(|_| same) else { continue };
            if owned_by(guest.get("tags").and_then(Value::as_str), &self.project) {
                return Ok(Some(vmid));
            }
            match self.client.get(&format!("{}/config", self.guest_path(kind, vmid)), &[]).await {
                Ok(config) => {
                    let description = config.get("description").and_then(Value::as_str).unwrap_or("");
                    if Meta::parse(description).project.as_deref() == Some(self.project.as_str()) {
                        return Ok(Some(vmid));
                    }
                }
                Err(e) if e.is_missing_guest() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// An existing guest at `vmid` may be adopted only if it is this machine.
    /// Name and tags come from its config: the listing's name lags on PVE
    /// (pvestatd fills it in on its next pass).
    async fn check_adoptable(&self, entry: &Value, kind: &str, hostname: &str) -> Result<()> {
        let vmid = entry.get("vmid").and_then(as_u64).unwrap_or(0);
        let their_kind = entry.get("type").and_then(Value::as_str).unwrap_or("?");
        let mut their_name = entry.get("name").and_then(Value::as_str).unwrap_or("?").to_string();
        let mut tags = entry.get("tags").and_then(Value::as_str).map(str::to_string);
        if their_kind == kind {
            if let Some(guest) = self.guest_identity(kind, vmid).await? {
                their_name = guest.name.unwrap_or_else(|| "?".into());
                tags = guest.tags;
            }
        }
        let tags = tags.as_deref();
        if their_kind == kind && their_name == hostname && owned_by(tags, &self.project) {
            return Ok(());
        }
        bail!(
            "VMID {vmid} on node {} already belongs to {their_kind} '{their_name}' (tags: {}), not to {kind} '{hostname}' of project {}; pick a free vmid in the plan",
            entry.get("node").and_then(Value::as_str).unwrap_or(self.node()),
            tags.unwrap_or("none"),
            self.project
        )
    }

    /// Poll `status/current` until the guest has no config lock. `None` = gone.
    /// Bounded: a `create`/`clone` lock no task holds (seen twice, a moment
    /// apart, so a task just forked is not mistaken) fails at once, any other
    /// lock after `timeouts.lock`; both errors say what to do.
    async fn wait_unlocked(&self, kind: &str, vmid: u64) -> Result<Option<Value>> {
        match self.settle_lock(kind, vmid).await? {
            Settled::Gone => Ok(None),
            Settled::Unlocked(status) => Ok(Some(status)),
            Settled::Stale { name, lock } => Err(locks::stale(kind, vmid, &name, &lock, &self.node_of(vmid))),
        }
    }

    /// Wait (bounded: a creation as long as its task may run, another lock
    /// `timeouts.lock`) while a running task holds the guest's lock; report a
    /// lock left by an interrupted creation instead of waiting for it.
    async fn settle_lock(&self, kind: &str, vmid: u64) -> Result<Settled> {
        let started = Instant::now();
        let mut unheld = 0;
        loop {
            let status = match self.client.get(&format!("{}/status/current", self.guest_path(kind, vmid)), &[]).await {
                Ok(status) => status,
                Err(e) if e.is_missing_guest() => return Ok(Settled::Gone),
                Err(e) => return Err(e.into()),
            };
            let Some(lock) = status.get("lock").and_then(Value::as_str).map(str::to_string) else {
                return Ok(Settled::Unlocked(status));
            };
            let name = status.get("name").and_then(Value::as_str).unwrap_or("?").to_string();
            let holder = locks::holder(&self.client, &self.node_of(vmid), vmid, &lock).await?;
            if holder.is_none() && locks::set_by_creation(&lock) {
                unheld += 1;
                if unheld >= 2 {
                    return Ok(Settled::Stale { name, lock });
                }
            } else {
                unheld = 0;
            }
            // A creation (vzcreate, a full clone) runs as long as its task may:
            // copying a large disk takes minutes. Other locks (backup, migrate,
            // a config change) are waited for only as long as `timeouts.lock`.
            let bound = if holder.is_some() && locks::set_by_creation(&lock) { self.client.options().task_timeout.max(self.timeouts.lock) } else { self.timeouts.lock };
            if started.elapsed() > bound {
                return Err(locks::still_held(kind, vmid, &name, &lock, holder.as_deref(), started.elapsed().as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn ensure_running(&self, kind: &str, vmid: u64, subject: &str, events: &Events) -> Result<()> {
        let deadline = Instant::now() + self.timeouts.running;
        loop {
            let status = self.wait_unlocked(kind, vmid).await?.ok_or_else(|| anyhow!("{kind} {vmid} disappeared"))?;
            if status.get("status").and_then(Value::as_str) == Some("running") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{kind} {vmid} did not reach running");
            }
            events.progress(subject, "starting");
            match self.client.run_task(Method::POST, &format!("{}/status/start", self.guest_path(kind, vmid)), &[]).await {
                Ok(()) => {}
                // Started meanwhile (e.g. by `start=1` at creation).
                Err(e) if e.mentions("already running") => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn wait_agent_ip(&self, vmid: u64, ip_cidr: &str, subject: &str, events: &Events) -> Result<()> {
        let ip = ip_cidr.split('/').next().unwrap_or(ip_cidr);
        let path = format!("{}/agent/network-get-interfaces", self.guest_path("qemu", vmid));
        let deadline = Instant::now() + self.timeouts.agent;
        events.progress(subject, "waiting for the guest agent");
        loop {
            match self.client.get(&path, &[]).await {
                Ok(data) => {
                    let reported = data.get("result").and_then(Value::as_array).into_iter().flatten().any(|iface| {
                        iface.get("ip-addresses").and_then(Value::as_array).into_iter().flatten().any(|a| {
                            a.get("ip-address").and_then(Value::as_str) == Some(ip)
                        })
                    });
                    if reported {
                        return Ok(());
                    }
                }
                Err(e) if e.mentions("guest agent is not running") || e.is_retryable() => {}
                Err(e) => return Err(e.into()),
            }
            if Instant::now() > deadline {
                bail!("VM {vmid} runs but its guest agent has not reported {ip}; is qemu-guest-agent installed in the template and ipconfig0 right?");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn read_live(&self, kind: &str, vmid: u64) -> Result<LiveResource> {
        let base = self.guest_path(kind, vmid);
        let config = self.client.get(&format!("{base}/config"), &[]).await?;
        let status = self.client.get(&format!("{base}/status/current"), &[]).await?;
        let state = status.get("status").and_then(Value::as_str).unwrap_or("unknown");
        live_machine(kind, vmid, &self.node_of(vmid), state, None, &config).ok_or_else(|| anyhow!("{kind} {vmid} has no name in its config"))
    }

    fn meta(&self, spec: &ResourceSpec) -> Meta {
        Meta {
            project: Some(self.project.clone()),
            template: attr_str(spec, "template").map(str::to_string),
            ssh_public_keys: (attr_str(spec, "kind") == Some("lxc")).then(|| attr_str(spec, "ssh_public_keys").unwrap_or("").to_string()),
        }
    }

    async fn create_lxc(&self, spec: &ResourceSpec, events: &Events) -> Result<LiveResource> {
        let subject = spec.address.to_string();
        let hostname = attr_str(spec, "hostname").context("spec without hostname")?;
        let planned = spec.attrs.get("vmid").and_then(as_u64);
        let existing = match planned {
            Some(vmid) => match self.planned_guest("lxc", vmid, hostname, &subject, events).await? {
                Some(entry) => {
                    self.check_adoptable(&entry, "lxc", hostname).await?;
                    Some(vmid)
                }
                None => None,
            },
            None => self.find_own("lxc", hostname, &subject, events).await?,
        };
        let vmid = match existing {
            Some(vmid) => {
                events.note(&subject, format!("adopting existing container {vmid}"));
                vmid
            }
            None => {
                let vmid = match planned {
                    Some(vmid) => vmid,
                    None => self.allocate_vmid(&subject).await?,
                };
                let gib = attr_str(spec, "disk").and_then(parse_size).unwrap_or(8 << 30).div_ceil(1 << 30);
                let params = vec![
                    ("vmid", vmid.to_string()),
                    ("ostemplate", attr_str(spec, "template").unwrap_or(&self.config.template).to_string()),
                    ("hostname", hostname.to_string()),
                    ("cores", attr_num(spec, "cores").unwrap_or(1).to_string()),
                    ("memory", attr_num(spec, "memory").unwrap_or(512).to_string()),
                    ("rootfs", format!("{}:{gib}", attr_str(spec, "storage").unwrap_or(&self.config.storage))),
                    ("net0", resources::lxc_net0(attr_str(spec, "bridge").unwrap_or(&self.config.bridge), attr_str(spec, "ip").unwrap_or("dhcp"), attr_str(spec, "gateway").unwrap_or(""))),
                    ("ssh-public-keys", attr_str(spec, "ssh_public_keys").unwrap_or("").to_string()),
                    ("onboot", attr_num(spec, "onboot").unwrap_or(1).to_string()),
                    ("tags", attr_str(spec, "tags").unwrap_or("").to_string()),
                    ("unprivileged", "1".into()),
                    ("features", attr_str(spec, "features").unwrap_or("nesting=1").to_string()),
                    ("description", self.meta(spec).render()),
                    ("start", "1".into()),
                ];
                events.progress(&subject, format!("creating container {vmid}"));
                self.remember_post(&subject, vmid);
                self.client.run_task(Method::POST, &format!("/nodes/{}/lxc", self.node()), &params).await?;
                vmid
            }
        };
        self.ensure_running("lxc", vmid, &subject, events).await?;
        let live = self.read_live("lxc", vmid).await?;
        self.forget_post(&subject);
        Ok(live)
    }

    async fn resolve_template(&self, template: &str) -> Result<u64> {
        if let Ok(vmid) = template.parse::<u64>() {
            return Ok(vmid);
        }
        let guests = self.guests().await?;
        let templates: Vec<&Value> = guests
            .iter()
            .filter(|g| {
                g.get("type").and_then(Value::as_str) == Some("qemu")
                    && g.get("template").and_then(as_u64) == Some(1)
                    && g.get("name").and_then(Value::as_str) == Some(template)
            })
            .collect();
        // The node's own copy first (a template is often kept on every node).
        let here = |g: &&&Value| g.get("node").and_then(Value::as_str) == Some(self.node());
        templates
            .iter()
            .find(here)
            .or(templates.first())
            .and_then(|g| g.get("vmid").and_then(as_u64))
            .ok_or_else(|| anyhow!("no QEMU template VM named '{template}' on node {}; set the host's image to a template's name or VMID", self.node()))
    }

    async fn create_qemu(&self, spec: &ResourceSpec, events: &Events) -> Result<LiveResource> {
        let subject = spec.address.to_string();
        let hostname = attr_str(spec, "hostname").context("spec without hostname")?;
        let planned = spec.attrs.get("vmid").and_then(as_u64);
        let existing = match planned {
            Some(vmid) => match self.planned_guest("qemu", vmid, hostname, &subject, events).await? {
                Some(entry) if entry.get("type").and_then(Value::as_str) != Some("qemu") => {
                    self.check_adoptable(&entry, "qemu", hostname).await?;
                    None
                }
                Some(_) => Some(vmid),
                None => None,
            },
            // A clone in progress has no name yet (its config holds only
            // `lock: clone`): `find_own` lets running clones finish first.
            None => self.find_own("qemu", hostname, &subject, events).await?,
        };
        let vmid = match existing {
            Some(vmid) => {
                // A planned VMID may hold our clone before it got its tags.
                let config = self.client.get(&format!("{}/config", self.guest_path("qemu", vmid)), &[]).await?;
                let description = config.get("description").and_then(Value::as_str).unwrap_or("");
                let ours = Meta::parse(description).project.as_deref() == Some(self.project.as_str());
                if !ours {
                    if let Some(entry) = self.find_by_vmid(vmid).await? {
                        self.check_adoptable(&entry, "qemu", hostname).await?;
                    }
                }
                events.note(&subject, format!("adopting existing VM {vmid}"));
                vmid
            }
            None => {
                let template = self.resolve_template(attr_str(spec, "template").unwrap_or("")).await?;
                let vmid = match planned {
                    Some(vmid) => vmid,
                    None => self.allocate_vmid(&subject).await?,
                };
                let mut params = vec![
                    ("newid", vmid.to_string()),
                    ("name", hostname.to_string()),
                    ("full", "1".into()),
                    ("storage", attr_str(spec, "storage").unwrap_or(&self.config.storage).to_string()),
                    ("description", self.meta(spec).render()),
                ];
                // A template on another node clones from there onto ours
                // (PVE allows it when the template's disks are on shared storage).
                if self.node_of(template) != self.node() {
                    params.push(("target", self.node().to_string()));
                }
                events.progress(&subject, format!("cloning template {template} to VM {vmid}"));
                self.remember_post(&subject, vmid);
                self.client.run_task(Method::POST, &format!("{}/clone", self.guest_path("qemu", template)), &params).await?;
                vmid
            }
        };
        self.configure_qemu(spec, vmid, &subject, events).await?;
        self.ensure_running("qemu", vmid, &subject, events).await?;
        self.wait_agent_ip(vmid, attr_str(spec, "ip").unwrap_or(""), &subject, events).await?;
        let live = self.read_live("qemu", vmid).await?;
        self.forget_post(&subject);
        Ok(live)
    }

    /// Cloud-init and sizing for a clone; idempotent, so an adopted VM converges too.
    async fn configure_qemu(&self, spec: &ResourceSpec, vmid: u64, subject: &str, events: &Events) -> Result<()> {
        self.wait_unlocked("qemu", vmid).await?.ok_or_else(|| anyhow!("VM {vmid} disappeared"))?;
        let base = self.guest_path("qemu", vmid);
        let config = self.client.get(&format!("{base}/config"), &[]).await?;
        let mut params = vec![
            ("name", attr_str(spec, "hostname").unwrap_or("").to_string()),
            ("cores", attr_num(spec, "cores").unwrap_or(1).to_string()),
            ("memory", attr_num(spec, "memory").unwrap_or(1024).to_string()),
            ("ciuser", attr_str(spec, "ciuser").unwrap_or("root").to_string()),
            ("sshkeys", encode_sshkeys(attr_str(spec, "ssh_public_keys").unwrap_or(""))),
            ("ipconfig0", format!("ip={},gw={}", attr_str(spec, "ip").unwrap_or("dhcp"), attr_str(spec, "gateway").unwrap_or(""))),
            ("tags", attr_str(spec, "tags").unwrap_or("").to_string()),
            ("onboot", attr_num(spec, "onboot").unwrap_or(1).to_string()),
            ("agent", "1".into()),
            ("description", self.meta(spec).render()),
        ];
        if let Some(net0) = qemu_net0_with_bridge(&config, attr_str(spec, "bridge").unwrap_or(&self.config.bridge)) {
            params.push(("net0", net0));
        }
        events.progress(subject, "configuring cloud-init");
        self.client.put(&format!("{base}/config"), &params).await?;
        self.grow_disk("qemu", vmid, &config, spec).await
    }

    /// Resize the root disk up to the planned size; shrinking is refused.
    async fn grow_disk(&self, kind: &str, vmid: u64, config: &Value, spec: &ResourceSpec) -> Result<()> {
        let disk = if kind == "lxc" { "rootfs" } else { "scsi0" };
        let Some(wanted) = attr_str(spec, "disk").and_then(parse_size) else { return Ok(()) };
        let current = config
            .get(disk)
            .and_then(Value::as_str)
            .and_then(|v| v.split(',').find_map(|p| p.strip_prefix("size=")))
            .and_then(parse_size)
            .unwrap_or(0);
        if wanted < current {
            bail!("{kind} {vmid}: the plan asks for a {}-byte disk but {disk} is already {current} bytes; Proxmox cannot shrink disks (replace the machine instead)", wanted);
        }
        if wanted > current {
            let size = format!("{}G", wanted.div_ceil(1 << 30));
            self.client.run_task(Method::PUT, &format!("{}/resize", self.guest_path(kind, vmid)), &[("disk", disk.into()), ("size", size)]).await?;
        }
        Ok(())
    }

    async fn delete_once(&self, live: &LiveResource, kind: &str, vmid: u64) -> Result<()> {
        let Some(entry) = self.find_by_vmid(vmid).await? else { return Ok(()) };
        if entry.get("type").and_then(Value::as_str) != Some(kind) {
            // The machine is gone; its VMID now holds another kind of guest.
            return Ok(());
        }
        // Only a guest rigger can prove is this machine: tagged as the
        // project's and named as the machine (its config's name, since the
        // listing's lags), else a reused VMID could take another guest down.
        let Some(guest) = self.guest_identity(kind, vmid).await? else { return Ok(()) };
        let name = guest.name.as_deref().unwrap_or("");
        if !owned_by(guest.tags.as_deref(), &self.project) {
            bail!("refusing to delete VMID {vmid} ('{name}'): it is not tagged as project {}'s", self.project);
        }
        if name != live.address.name {
            bail!("refusing to delete VMID {vmid} ('{name}'): it is not {} any more (renamed, or the VMID reused)", live.address);
        }
        let Some(status) = self.wait_unlocked(kind, vmid).await? else { return Ok(()) };
        let base = self.guest_path(kind, vmid);
        if status.get("status").and_then(Value::as_str) == Some("running") {
            match self.client.run_task(Method::POST, &format!("{base}/status/stop"), &[]).await {
                Ok(()) => {}
                Err(e) if e.mentions("not running") => {}
                Err(e) => return Err(e.into()),
            }
        }
        let params = [("purge", "1".to_string()), ("destroy-unreferenced-disks", "1".to_string())];
        match self.client.run_task(Method::DELETE, &base, &params).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_missing_guest() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn update_guest(&self, spec: &ResourceSpec, live: &LiveResource, subject: &str, events: &Events) -> Result<LiveResource> {
        let kind = attr_str(spec, "kind").unwrap_or("lxc");
        let vmid: u64 = live.id.parse().with_context(|| format!("{subject}: live id {:?} is not a VMID", live.id))?;
        self.wait_unlocked(kind, vmid).await?.ok_or_else(|| anyhow!("{kind} {vmid} disappeared"))?;
        let base = self.guest_path(kind, vmid);
        let config = self.client.get(&format!("{base}/config"), &[]).await?;
        let changed: Vec<&str> =
            spec.attrs.iter().filter(|(k, v)| live.attrs.get(*k) != Some(*v)).map(|(k, _)| k.as_str()).collect();
        let mut params: Vec<(&str, String)> = Vec::new();
        let mut cloud_init_changed = false;
        let mut lxc_net_changed = false;
        for key in &changed {
            match *key {
                "hostname" => params.push((if kind == "lxc" { "hostname" } else { "name" }, attr_str(spec, "hostname").unwrap_or("").into())),
                "cores" | "memory" | "onboot" => params.push((key, attr_num(spec, key).unwrap_or(0).to_string())),
                "tags" | "features" => params.push((key, attr_str(spec, key).unwrap_or("").into())),
                "bridge" | "gateway" if kind == "lxc" => lxc_net_changed = true,
                "bridge" => {
                    if let Some(net0) = qemu_net0_with_bridge(&config, attr_str(spec, "bridge").unwrap_or(&self.config.bridge)) {
                        params.push(("net0", net0));
                    }
                }
                "gateway" => {
                    cloud_init_changed = true;
                    params.push(("ipconfig0", format!("ip={},gw={}", attr_str(spec, "ip").unwrap_or("dhcp"), attr_str(spec, "gateway").unwrap_or(""))));
                }
                "ciuser" => {
                    cloud_init_changed = true;
                    params.push(("ciuser", attr_str(spec, "ciuser").unwrap_or("root").into()));
                }
                "ssh_public_keys" if kind == "qemu" => {
                    cloud_init_changed = true;
                    params.push(("sshkeys", encode_sshkeys(attr_str(spec, "ssh_public_keys").unwrap_or(""))));
                }
                // A stopped guest is started below.
                "status" => {}
                _ => {}
            }
        }
        if lxc_net_changed {
            params.push(("net0", lxc_net0_updated(&config, attr_str(spec, "bridge"), attr_str(spec, "gateway"))));
        }
        if !params.is_empty() {
            params.push(("description", self.meta(spec).render()));
            events.progress(subject, format!("updating {}", changed.join(", ")));
            self.client.put(&format!("{base}/config"), &params).await?;
        }
        if changed.contains(&"disk") {
            self.grow_disk(kind, vmid, &config, spec).await?;
        }
        // Cloud-init applies at boot: restart a running VM.
        let status = self.client.get(&format!("{base}/status/current"), &[]).await?;
        let running = status.get("status").and_then(Value::as_str) == Some("running");
        if cloud_init_changed && running {
            events.progress(subject, "restarting for cloud-init");
            self.client.run_task(Method::POST, &format!("{base}/status/shutdown"), &[("timeout", "120".into()), ("forceStop", "1".into())]).await?;
        }
        if (cloud_init_changed && running) || (!running && attr_str(spec, "status") == Some("running")) {
            self.ensure_running(kind, vmid, subject, events).await?;
            if kind == "qemu" {
                self.wait_agent_ip(vmid, attr_str(spec, "ip").unwrap_or(""), subject, events).await?;
            }
        }
        let mut fresh = self.read_live(kind, vmid).await?;
        carry_login_outputs(live, &mut fresh);
        Ok(fresh)
    }

    /// Fingerprints of the host keys `pct create` generated, from the newest
    /// successful creation task's log.
    async fn creation_fingerprints(&self, vmid: u64) -> Result<Vec<String>> {
        let params = [("vmid", vmid.to_string()), ("typefilter", "vzcreate".to_string()), ("limit", "500".to_string())];
        let tasks = self.client.get(&format!("/nodes/{}/tasks", self.node()), &params).await?;
        let upid = host_keys::newest_successful_creation(&tasks, vmid)
            .ok_or_else(|| anyhow!("no successful creation task of CT {vmid} in the node's task list: cannot verify its SSH host keys"))?;
        let log = self.client.get(&format!("/nodes/{}/tasks/{upid}/log", self.node()), &[("start", "0".into()), ("limit", "10000".into())]).await?;
        let lines: Vec<String> = log.as_array().into_iter().flatten().filter_map(|l| l.get("t").and_then(Value::as_str)).map(str::to_string).collect();
        let fingerprints = host_keys::fingerprints_in_creation_log(&lines);
        if fingerprints.is_empty() {
            bail!("the creation log of CT {vmid} ({upid}) lists no SSH host key fingerprints: cannot verify its host keys");
        }
        Ok(fingerprints)
    }

    /// LXC: verify the container's host keys against its creation log, then
    /// create the plan's user as root. Returns the verified public host keys.
    async fn lxc_first_login(&self, machine: &LiveResource, vmid: u64, plan: &Plan, events: &Events) -> Result<Vec<String>> {
        let subject = machine.address.to_string();
        if plan.ssh.bastion.as_deref().is_some_and(|b| b != machine.address.name) {
            bail!("{subject}: the first login to a Proxmox container dials it directly as root; plans with ssh.bastion are not supported for LXC guests yet");
        }
        let ip = machine.output_str("ssh_host").ok_or_else(|| anyhow!("{subject}: no address to log in to (net0 has no static ip)"))?.to_string();
        let expected = self.creation_fingerprints(vmid).await?;
        events.progress(&subject, "verifying the SSH host key against the creation log");
        let deadline = Instant::now() + host_keys::SSHD_WAIT;
        let keys = loop {
            if let Some(keys) = host_keys::scan_verified(&ip, &expected).await? {
                break keys;
            }
            if Instant::now() > deadline {
                bail!("{subject}: sshd on {ip}:22 did not answer within {}s", host_keys::SSHD_WAIT.as_secs());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let dir = tempfile::tempdir().context("temporary folder for a one-off known_hosts")?;
        let known_hosts = dir.path().join("known_hosts");
        host_keys::write_known_hosts(&known_hosts, &ip, &keys).context("writing a one-off known_hosts")?;
        let public_keys = std::fs::read_to_string(&plan.ssh.public_key_file)
            .with_context(|| format!("reading ssh.public_key_file {}", plan.ssh.public_key_file.display()))?;
        events.progress(&subject, format!("creating user {} as root", plan.ssh.user));
        let mut attempt = 1;
        loop {
            match first_login::create_user(&ip, &known_hosts, &plan.ssh.private_key_file, &plan.ssh.user, &public_keys).await {
                Ok(()) => return Ok(keys),
                // A container still booting may refuse the first session.
                Err(e) if attempt < 5 => {
                    events.note(&subject, format!("first login attempt {attempt} failed, retrying: {e:#}"));
                    tokio::time::sleep(backoff(attempt + 1)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// QEMU: the public host keys, read through the guest agent.
    async fn qemu_host_keys(&self, vmid: u64, subject: &str, events: &Events) -> Result<Vec<String>> {
        let path = format!("{}/agent/file-read", self.guest_path("qemu", vmid));
        let deadline = Instant::now() + self.timeouts.agent;
        events.progress(subject, "reading SSH host keys through the guest agent");
        loop {
            let mut keys = Vec::new();
            let mut agent_down = false;
            for key_type in host_keys::KEY_TYPES {
                let file = format!("/etc/ssh/ssh_host_{key_type}_key.pub");
                match self.client.get(&path, &[("file", file)]).await {
                    Ok(data) => keys.extend(data.get("content").and_then(Value::as_str).and_then(host_keys::key_without_comment)),
                    Err(e) if e.mentions("no such file") => {}
                    Err(e) if e.mentions("guest agent is not running") || e.is_retryable() => agent_down = true,
                    Err(e) => return Err(e.into()),
                }
            }
            if !keys.is_empty() {
                return Ok(keys);
            }
            if Instant::now() > deadline {
                bail!("VM {vmid}: the guest agent reported no SSH host keys under /etc/ssh{}", if agent_down { " (the agent is not running)" } else { "" });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Retry `op` on transient failures, with backoff and a note per retry.
    async fn with_attempts<T, F, Fut>(&self, subject: &str, what: &str, events: &Events, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let started = Instant::now();
        events.started(subject, what);
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => {
                    events.finished(subject, what, started);
                    return Ok(value);
                }
                Err(e) if attempt < self.timeouts.attempts && is_transient(&e) => {
                    events.note(subject, format!("{what} attempt {attempt} failed, retrying: {e:#}"));
                    tokio::time::sleep(backoff(attempt + 1)).await;
                    attempt += 1;
                }
                Err(e) => {
                    events.failed(subject, what, &format!("{e:#}"));
                    return Err(e);
                }
            }
        }
    }
}

/// Outputs learned at first login, which the API cannot report again: kept
/// across refreshes and updates of the same guest (same VMID).
const LOGIN_OUTPUTS: &[&str] = &["host_keys", "login_user"];

fn carry_login_outputs(from: &LiveResource, to: &mut LiveResource) {
    if from.id != to.id {
        return;
    }
    for key in LOGIN_OUTPUTS {
        if let Some(value) = from.outputs.get(*key) {
            to.outputs.entry(key.to_string()).or_insert_with(|| value.clone());
        }
    }
}

/// Worth trying the whole operation again: the client's retryable errors, failed
/// tasks (locks, storage timeouts), and "already exists" (the next round adopts
/// the guest or finds its VMID taken).
fn is_transient(error: &anyhow::Error) -> bool {
    match error.downcast_ref::<ApiError>() {
        Some(e @ ApiError::Status { status, .. }) => e.is_retryable() || (*status != 400 && e.mentions("already exists")),
        Some(ApiError::TaskFailed { .. }) | Some(ApiError::Transport { .. }) => true,
        _ => false,
    }
}

fn attr_str<'a>(spec: &'a ResourceSpec, key: &str) -> Option<&'a str> {
    spec.attrs.get(key).and_then(Value::as_str)
}

fn attr_num(spec: &ResourceSpec, key: &str) -> Option<u64> {
    spec.attrs.get(key).and_then(as_u64)
}

/// The container's net0 with a new bridge/gateway, keeping its MAC and name.
fn lxc_net0_updated(config: &Value, bridge: Option<&str>, gateway: Option<&str>) -> String {
    let current = config.get("net0").and_then(Value::as_str).unwrap_or("name=eth0");
    current
        .split(',')
        .map(|part| match part.split_once('=') {
            Some(("bridge", _)) if bridge.is_some() => format!("bridge={}", bridge.unwrap_or_default()),
            Some(("gw", _)) if gateway.is_some() => format!("gw={}", gateway.unwrap_or_default()),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The VM's net0 on `bridge`, keeping model and MAC; `None` if already there.
fn qemu_net0_with_bridge(config: &Value, bridge: &str) -> Option<String> {
    let current = config.get("net0").and_then(Value::as_str)?;
    if current.split(',').any(|p| p == format!("bridge={bridge}")) {
        return None;
    }
    let mut parts: Vec<String> = current.split(',').filter(|p| !p.starts_with("bridge=")).map(str::to_string).collect();
    parts.insert(1.min(parts.len()), format!("bridge={bridge}"));
    Some(parts.join(","))
}

#[async_trait]
impl Provider for ProxmoxProvider {
    fn kind(&self) -> &'static str {
        "proxmox"
    }

    fn specs(&self, plan: &Plan) -> Result<Vec<ResourceSpec>> {
        let key_file = &plan.ssh.public_key_file;
        let keys = std::fs::read_to_string(key_file)
            .with_context(|| format!("reading ssh.public_key_file {}: guests get this key", key_file.display()))?;
        plan.hosts.iter().map(|host| resources::machine_spec(plan, &self.config, host, &keys)).collect()
    }

    fn refuse_to_plan(&self, live: &[LiveResource], known: &[LiveResource]) -> Result<()> {
        creating::one_guest_per_name(live, known, &self.project)
    }

    async fn refresh(&self, known: &[LiveResource], events: &Events) -> Result<Vec<LiveResource>> {
        events.progress("proxmox", "listing guests");
        let ours: Vec<(String, u64, String, Option<String>)> = self
            .guests()
            .await?
            .iter()
            .filter(|g| g.get("template").and_then(as_u64).unwrap_or(0) == 0)
            .filter(|g| owned_by(g.get("tags").and_then(Value::as_str), &self.project))
            .filter_map(|g| {
                let kind = g.get("type").and_then(Value::as_str)?.to_string();
                let status = g.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string();
                let lock = g.get("lock").and_then(Value::as_str).map(str::to_string);
                Some((kind, g.get("vmid").and_then(as_u64)?, status, lock))
            })
            .collect();
        let reads = ours.iter().map(|(kind, vmid, status, lock)| async move {
            // What the GUI shows: a guest still being created is waited for
            // (bounded); one whose creation was interrupted keeps its lock in
            // the live attributes, so the plan replaces it and says why.
            let (status, stale) = match lock.as_deref().filter(|l| locks::set_by_creation(l)) {
                None => (status.clone(), None),
                Some(_) => match self.settle_lock(kind, *vmid).await? {
                    Settled::Gone => return Ok(None),
                    Settled::Unlocked(now) => (now.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string(), None),
                    Settled::Stale { lock, .. } => (status.clone(), Some(lock)),
                },
            };
            match self.client.get(&format!("{}/config", self.guest_path(kind, *vmid)), &[]).await {
                Ok(config) => Ok(live_machine(kind, *vmid, &self.node_of(*vmid), &status, stale.as_deref(), &config)),
                // Deleted between the list and the read.
                Err(e) if e.is_missing_guest() => Ok(None),
                Err(e) => Err(anyhow::Error::from(e)),
            }
        });
        let remembered: BTreeMap<_, _> = known.iter().map(|k| (&k.address, k)).collect();
        let mut live = Vec::new();
        for result in futures::future::join_all(reads).await {
            let Some(mut guest) = result? else { continue };
            if let Some(before) = remembered.get(&guest.address) {
                carry_login_outputs(before, &mut guest);
            }
            live.push(guest);
        }
        Ok(live)
    }

    async fn create(&self, spec: &ResourceSpec, _deps: &Deps, events: &Events) -> Result<LiveResource> {
        let subject = spec.address.to_string();
        match attr_str(spec, "kind") {
            Some("lxc") => self.with_attempts(&subject, "create", events, || self.create_lxc(spec, events)).await,
            Some("qemu") => self.with_attempts(&subject, "create", events, || self.create_qemu(spec, events)).await,
            other => bail!("{subject}: Proxmox creates machines only (kind lxc or qemu), not {other:?}"),
        }
    }

    async fn update(&self, spec: &ResourceSpec, live: &LiveResource, _deps: &Deps, events: &Events) -> Result<LiveResource> {
        let subject = spec.address.to_string();
        self.with_attempts(&subject, "update", events, || self.update_guest(spec, live, &subject, events)).await
    }

    async fn delete(&self, live: &LiveResource, events: &Events) -> Result<()> {
        let subject = live.address.to_string();
        let kind = live.attrs.get("kind").and_then(Value::as_str).unwrap_or("lxc").to_string();
        let vmid: u64 = live.id.parse().with_context(|| format!("{subject}: live id {:?} is not a VMID", live.id))?;
        self.with_attempts(&subject, "delete", events, || self.delete_once(live, &kind, vmid)).await
    }

    async fn prepare_login(&self, machine: &LiveResource, plan: &Plan, events: &Events) -> Result<Option<LiveResource>> {
        if machine.address.kind != Kind::Machine {
            return Ok(None);
        }
        let kind = machine.attrs.get("kind").and_then(Value::as_str).unwrap_or("lxc");
        let user = match kind {
            "qemu" => machine.attrs.get("ciuser").and_then(Value::as_str).unwrap_or("root").to_string(),
            _ => plan.ssh.user.clone(),
        };
        let has_keys = machine.outputs.get("host_keys").and_then(Value::as_array).is_some_and(|k| !k.is_empty());
        if has_keys && machine.outputs.get("login_user").and_then(Value::as_str) == Some(user.as_str()) {
            return Ok(None);
        }
        let subject = machine.address.to_string();
        let vmid: u64 = machine.id.parse().with_context(|| format!("{subject}: live id {:?} is not a VMID", machine.id))?;
        let started = Instant::now();
        events.started(&subject, "first login");
        let keys = match kind {
            "qemu" => self.qemu_host_keys(vmid, &subject, events).await,
            _ => self.lxc_first_login(machine, vmid, plan, events).await,
        };
        let keys = match keys {
            Ok(keys) => keys,
            Err(e) => {
                events.failed(&subject, "first login", &format!("{e:#}"));
                return Err(e);
            }
        };
        events.finished(&subject, &format!("ready for {user}"), started);
        let mut ready = machine.clone();
        ready.outputs.insert("host_keys".into(), json!(keys));
        ready.outputs.insert("login_user".into(), json!(user));
        Ok(Some(ready))
    }
}
