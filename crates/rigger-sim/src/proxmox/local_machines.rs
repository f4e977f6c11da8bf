//! `--machines local`: the simulator's guests as real machines on this host,
//! made with nspawn_machines, as the local provider's are (its Debian image, an overlay per
//! machine, a network namespace per machine on a bridge, `systemd-nspawn --boot`).
//!
//! Per simulator instance (named after its port, unique while it listens):
//! - machine and namespace `pvesim-<port>-<vmid>`, files under
//!   `/var/lib/rigger/machines/pvesim-<port>/<vmid>/`;
//! - one host bridge per Proxmox bridge (`pve<port><bridge>`, e.g.
//!   `pve8006vmbr0`), holding each guest subnet's gateway address, so this
//!   host reaches the guests and the guests each other, and nothing beyond
//!   (the local provider's policy rules).
//!
//! Faithful to Proxmox: a container's root filesystem, root's
//! `ssh-public-keys` and SSH host keys are made at creation (`pct create`);
//! a VM gets `ciuser` (with sudo), `sshkeys` and, on its first boot, host keys
//! the way cloud-init does; stop stops the machine, destroy removes it.
//! Not simulated: CPU/memory/disk limits, DHCP, VLAN tags.

use super::{GuestBoot, GuestKind, MachineBackend};
use rigger_events::Events;
use nspawn_machines::{image, machine, names, net, preflight};
use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use ipnet::Ipv4Net;
use machine::{MachinePaths, Meta, Seed};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

/// The local image every guest boots, whatever its template.
const IMAGE: &str = image::DEBIAN_12;

pub struct LocalMachines {
    /// `pvesim-<port>`
    instance: String,
    port: u16,
    root: PathBuf,
    lower: PathBuf,
    /// (host bridge, subnet, gateway) made for guests, removed at shutdown.
    networks: Mutex<BTreeSet<(String, Ipv4Net, Ipv4Addr)>>,
}

impl LocalMachines {
    /// Checks the host, builds the image if needed (once, several minutes), and
    /// removes what an earlier simulator on the same port left behind.
    pub async fn new(port: u16, events: &Events) -> Result<LocalMachines> {
        preflight::check_host()?;
        let root = PathBuf::from(image::DEFAULT_ROOT);
        let lower = image::ensure_image_in(&root, IMAGE, events).await?;
        let machines = LocalMachines { instance: format!("pvesim-{port}"), port, root, lower, networks: Mutex::new(BTreeSet::new()) };
        for vmid in machines.vmids_on_disk() {
            machines.remove(vmid).await?;
        }
        Ok(machines)
    }

    fn instance_dir(&self) -> PathBuf {
        self.root.join("machines").join(&self.instance)
    }

    fn paths(&self, vmid: u32) -> MachinePaths {
        MachinePaths::new(&self.instance_dir(), &vmid.to_string())
    }

    pub fn name(&self, vmid: u32) -> String {
        format!("{}-{vmid}", self.instance)
    }

    fn veth(&self, vmid: u32) -> String {
        names::veth_host(&self.instance, &vmid.to_string())
    }

    /// The host bridge standing for a Proxmox bridge (at most 15 characters).
    pub fn host_bridge(&self, bridge: &str) -> String {
        let readable = format!("pve{}{bridge}", self.port);
        if readable.len() <= 15 {
            readable
        } else {
            names::bridge(&self.instance, bridge)
        }
    }

    fn vmids_on_disk(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.instance_dir()) else { return Vec::new() };
        entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
    }

    fn meta(&self, guest: &GuestBoot) -> Result<Meta> {
        let cidr: Ipv4Net = guest
            .ip_cidr
            .as_deref()
            .ok_or_else(|| anyhow!("the simulator's local machines need a static ip in net0/ipconfig0 (no DHCP here)"))?
            .parse()
            .context("net0 ip")?;
        let gateway: Ipv4Addr = guest
            .gateway
            .as_deref()
            .ok_or_else(|| anyhow!("the simulator's local machines need gw= in net0/ipconfig0: the host bridge takes that address"))?
            .parse()
            .context("net0 gw")?;
        Ok(Meta {
            name: self.name(guest.vmid),
            project: self.instance.clone(),
            host: guest.vmid.to_string(),
            pid: None,
            ip: cidr.addr(),
            prefix: cidr.prefix_len(),
            gateway,
            netns: self.name(guest.vmid),
            bridge: self.host_bridge(&guest.bridge),
            veth: self.veth(guest.vmid),
            image: IMAGE.into(),
            lower: self.lower.clone(),
            created: chrono::Utc::now().to_rfc3339(),
            host_keys: Vec::new(),
            attrs: Default::default(),
        })
    }

    /// Root filesystem with hostname, the login user and its keys, host keys.
    async fn lay_down(&self, guest: &GuestBoot, meta: &Meta) -> Result<Vec<String>> {
        let seed = Seed { hostname: &guest.hostname, ip: meta.ip, ssh_user: &guest.user, ssh_public_key: &guest.ssh_public_keys };
        machine::lay_down(&self.paths(guest.vmid), &self.lower, &seed).await
    }

    async fn boot(&self, guest: &GuestBoot) -> Result<Vec<String>> {
        let meta = self.meta(guest)?;
        let paths = self.paths(guest.vmid);
        let host_keys = match guest.kind {
            // cloud-init runs at every boot: user and keys follow the config.
            GuestKind::Qemu => self.lay_down(guest, &meta).await?,
            GuestKind::Lxc => {
                anyhow::ensure!(paths.upper.exists(), "CT {} has no root filesystem on this host", guest.vmid);
                machine::ensure_overlay(&paths, &self.lower).await?;
                machine::host_keys(&paths.rootfs)?
            }
        };
        let cidr = meta.address()?.trunc();
        net::ensure_bridge(&meta.bridge).await?;
        net::ensure_subnet(&meta.bridge, cidr, meta.gateway).await?;
        if let Ok(mut networks) = self.networks.lock() {
            networks.insert((meta.bridge.clone(), cidr, meta.gateway));
        }
        let pid = machine::bring_up(&paths, &meta).await?;
        Meta { pid: Some(pid), host_keys: host_keys.clone(), ..meta }.write(&paths.meta)?;
        Ok(host_keys)
    }

    async fn remove(&self, vmid: u32) -> Result<()> {
        machine::destroy(&self.paths(vmid), &self.name(vmid), &self.name(vmid), &self.veth(vmid)).await?;
        let _ = std::fs::remove_dir(self.instance_dir());
        Ok(())
    }
}

fn text(error: anyhow::Error) -> String {
    format!("{error:#}")
}

#[async_trait]
impl MachineBackend for LocalMachines {
    async fn create_container(&self, guest: &GuestBoot) -> Result<Vec<String>, String> {
        let meta = self.meta(guest).map_err(text)?;
        self.lay_down(guest, &meta).await.map_err(text)
    }

    async fn start(&self, guest: &GuestBoot) -> Result<Vec<String>, String> {
        self.boot(guest).await.map_err(text)
    }

    async fn stop(&self, vmid: u32) -> Result<(), String> {
        machine::stop(&self.name(vmid), &self.name(vmid)).await.map_err(text)
    }

    async fn destroy(&self, vmid: u32) -> Result<(), String> {
        self.remove(vmid).await.map_err(text)
    }

    async fn shutdown(&self) {
        for vmid in self.vmids_on_disk() {
            if let Err(e) = self.remove(vmid).await {
                tracing::warn!("removing machine {}: {e:#}", self.name(vmid));
            }
        }
        let networks = self.networks.lock().map(|n| n.clone()).unwrap_or_default();
        for (bridge, cidr, gateway) in &networks {
            if let Err(e) = net::remove_subnet(bridge, *cidr, *gateway).await {
                tracing::warn!("removing {gateway} from {bridge}: {e:#}");
            }
        }
        let bridges: BTreeSet<&String> = networks.iter().map(|(bridge, _, _)| bridge).collect();
        for bridge in bridges {
            if let Err(e) = net::delete_bridge(bridge).await {
                tracing::warn!("removing bridge {bridge}: {e:#}");
            }
        }
    }

    fn machine_name(&self, vmid: u32) -> Option<String> {
        self.paths(vmid).dir.exists().then(|| self.name(vmid))
    }
}
