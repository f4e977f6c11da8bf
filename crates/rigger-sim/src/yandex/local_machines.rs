//! Real machines behind simulated instances (`rigger sim … --machines local`),
//! made with nspawn_machines (the local provider's pieces too): the shared Debian image, a bridge
//! per cloud network holding each subnet's gateway (its first address, as a
//! cloud gateway), a network namespace per machine at the instance's address,
//! a `systemd-nspawn --boot` container seeded the way cloud-init seeds a VM.
//!
//! A machine is named by the simulator (e.g. `ycsim-<instance id>`): that name is
//! its nspawn machine, its network namespace and its folder under
//! `<root>/machines/<owner>/`, so whoever started the simulator can clean up by
//! exact name. Work runs in background tasks, in order per machine; what
//! happens is reported as events, never printed.

use rigger_events::Events;
use nspawn_machines::machine::{self, MachinePaths, Meta, Seed};
use nspawn_machines::{cmd, image, names, net};
use anyhow::{anyhow, Context, Result};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

/// The image every simulated instance boots, whatever image the API was asked for.
pub const IMAGE: &str = image::DEBIAN_12;

/// Whether this host already routes `address` (another simulator's machine
/// owns it): two simulators with machines must not hand out the same one.
pub fn routed_on_host(address: &str) -> bool {
    std::process::Command::new("ip")
        .args(["-4", "route", "show", "exact", &format!("{address}/32")])
        .output()
        .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
}

/// One machine to boot.
#[derive(Clone, Debug)]
pub struct MachineRequest {
    /// nspawn machine, namespace and folder name; unique on the host.
    pub name: String,
    pub hostname: String,
    /// The cloud network it is on (one bridge per network).
    pub network: String,
    pub subnet: Ipv4Net,
    pub ip: Ipv4Addr,
    /// A one-to-one NAT address: reachable from the host, routed to the machine.
    pub public_ip: Option<Ipv4Addr>,
    pub ssh_user: String,
    pub ssh_public_key: String,
}

/// What is known of a machine this backend made.
#[derive(Clone, Debug, Default)]
struct Known {
    bridge: String,
    subnet: Option<Ipv4Net>,
    public_ip: Option<Ipv4Addr>,
    /// Set once the machine has booted (what cloud-init would print).
    host_keys: Option<Vec<String>>,
}

pub struct LocalMachines {
    root: PathBuf,
    owner: String,
    events: Events,
    known: Mutex<BTreeMap<String, Known>>,
    /// Per machine, a queue worked off in order by one task: a delete that
    /// arrives while the machine boots waits for the boot, never overtakes it.
    queues: Mutex<BTreeMap<String, mpsc::UnboundedSender<Op>>>,
    /// Bridges and gateway addresses are shared by machines booting at once: one change at a time.
    network: tokio::sync::Mutex<()>,
}

enum Op {
    Boot(MachineRequest),
    Stop,
    Remove(Option<oneshot::Sender<Result<()>>>),
}

impl LocalMachines {
    /// Machines kept under `<root>/machines/<owner>/` (root: `/var/lib/rigger`).
    pub fn new(owner: &str, events: Events) -> Result<Arc<LocalMachines>> {
        names::check_component("simulator name", owner)?;
        nspawn_machines::preflight::check_host()?;
        Ok(Arc::new(LocalMachines {
            root: PathBuf::from(image::DEFAULT_ROOT),
            owner: owner.to_string(),
            events,
            known: Mutex::new(BTreeMap::new()),
            queues: Mutex::new(BTreeMap::new()),
            network: tokio::sync::Mutex::new(()),
        }))
    }

    fn known(&self) -> MutexGuard<'_, BTreeMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn paths(&self, name: &str) -> MachinePaths {
        MachinePaths::new(&self.root.join("machines").join(&self.owner), name)
    }

    /// The host keys of a booted machine; `None` while it boots (or never did).
    pub fn host_keys(&self, name: &str) -> Option<Vec<String>> {
        self.known().get(name).and_then(|k| k.host_keys.clone())
    }

    /// Names of the machines this backend made and has not removed.
    pub fn names(&self) -> Vec<String> {
        self.known().keys().cloned().collect()
    }

    /// Boot (or start again) in the background.
    pub fn boot(self: &Arc<Self>, request: MachineRequest) {
        let bridge = names::bridge(&self.owner, &request.network);
        self.known().insert(
            request.name.clone(),
            Known { bridge, subnet: Some(request.subnet), public_ip: request.public_ip, host_keys: None },
        );
        self.enqueue(&request.name.clone(), Op::Boot(request));
    }

    /// Stop in the background (the machine keeps its disk).
    pub fn stop(self: &Arc<Self>, name: &str) {
        if let Some(k) = self.known().get_mut(name) {
            k.host_keys = None;
        }
        self.enqueue(name, Op::Stop);
    }

    /// Remove in the background: machine, namespace, folder, and the bridge once unused.
    pub fn remove(self: &Arc<Self>, name: &str) {
        self.enqueue(name, Op::Remove(None));
    }

    /// Remove every machine this backend made, and their bridges; waits until done.
    pub async fn remove_all(self: &Arc<Self>) -> Result<()> {
        let mut waiting = Vec::new();
        for name in self.names() {
            let (tx, rx) = oneshot::channel();
            self.enqueue(&name, Op::Remove(Some(tx)));
            waiting.push((name, rx));
        }
        let mut errors = Vec::new();
        for (name, rx) in waiting {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{name}: {e:#}")),
                Err(_) => errors.push(format!("{name}: its worker stopped")),
            }
        }
        anyhow::ensure!(errors.is_empty(), "could not remove every machine:\n  {}", errors.join("\n  "));
        // The workers hold this struct and it holds their queues: close the queues
        // so the workers end (and with them the event senders the printer waits for).
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // The owner's folder goes too once empty (another simulator may still use it).
        let _ = std::fs::remove_dir(self.root.join("machines").join(&self.owner));
        Ok(())
    }

    fn enqueue(self: &Arc<Self>, name: &str, op: Op) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let tx = queues.entry(name.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(self.clone().work(name.to_string(), rx));
            tx
        });
        // The worker lives as long as this struct holds its sender.
        let _ = tx.send(op);
    }

    async fn work(self: Arc<Self>, name: String, mut ops: mpsc::UnboundedReceiver<Op>) {
        while let Some(op) = ops.recv().await {
            match op {
                Op::Boot(request) => {
                    let started = std::time::Instant::now();
                    self.events.started(&name, "booting");
                    match self.boot_now(&request).await {
                        Ok(()) => self.events.finished(&name, &format!("running at {} ({})", request.ip, request.hostname), started),
                        Err(e) => self.events.failed(&name, "boot", &format!("{e:#}")),
                    }
                }
                Op::Stop => {
                    // The sim names each machine's network namespace after the machine.
                    if let Err(e) = machine::stop(&name, &name).await {
                        self.events.failed(&name, "stop", &format!("{e:#}"));
                    }
                }
                Op::Remove(done) => {
                    let result = self.remove_now(&name).await;
                    if let Err(e) = &result {
                        self.events.failed(&name, "remove", &format!("{e:#}"));
                    }
                    if let Some(done) = done {
                        let _ = done.send(result);
                    }
                }
            }
        }
    }

    async fn boot_now(&self, r: &MachineRequest) -> Result<()> {
        let lower = image::ensure_image_in(&self.root, IMAGE, &self.events).await?;
        let bridge = names::bridge(&self.owner, &r.network);
        // The subnet's first address is its gateway, as in the cloud.
        let gateway = r.subnet.hosts().next().ok_or_else(|| anyhow!("subnet {} has no host addresses", r.subnet))?;
        {
            let _network = self.network.lock().await;
            net::ensure_bridge(&bridge).await?;
            net::ensure_subnet(&bridge, r.subnet, gateway).await?;
        }

        let paths = self.paths(&r.name);
        let meta = match Meta::read(&paths.meta)? {
            // Started again after a stop: same disk, same keys.
            Some(meta) => meta,
            None => {
                let meta = Meta {
                    name: r.name.clone(),
                    project: self.owner.clone(),
                    host: r.name.clone(),
                    pid: None,
                    ip: r.ip,
                    prefix: r.subnet.prefix_len(),
                    gateway,
                    netns: r.name.clone(),
                    bridge: bridge.clone(),
                    veth: names::veth_host(&self.owner, &r.name),
                    image: IMAGE.into(),
                    lower,
                    created: chrono::Utc::now().to_rfc3339(),
                    host_keys: Vec::new(),
                    attrs: Default::default(),
                };
                let seed = Seed { hostname: &r.hostname, ip: r.ip, ssh_user: &r.ssh_user, ssh_public_key: &r.ssh_public_key };
                let host_keys = machine::lay_down(&paths, &meta.lower, &seed).await?;
                let meta = Meta { host_keys, ..meta };
                meta.write(&paths.meta)?;
                meta
            }
        };
        if let Some(public) = r.public_ip {
            // The link first: the public address goes onto its eth0 before the machine boots.
            net::ensure_machine_link(&meta.link()?).await?;
            // One-to-one NAT, the short way: the machine also owns its public address,
            // and the host routes that one address onto the bridge.
            let address = format!("{public}/32");
            cmd::run("ip", &["-n", &meta.netns, "addr", "replace", &address, "dev", "eth0"]).await?;
            cmd::run("ip", &["route", "replace", &address, "dev", &bridge]).await?;
        }
        machine::bring_up(&paths, &meta).await?;
        machine::wait_for_ssh(&paths, &meta).await?;
        if let Some(k) = self.known().get_mut(&r.name) {
            k.host_keys = Some(meta.host_keys.clone());
        }
        Ok(())
    }

    async fn remove_now(&self, name: &str) -> Result<()> {
        let Some(known) = self.known().get(name).cloned() else { return Ok(()) };
        let paths = self.paths(name);
        machine::destroy(&paths, name, name, &names::veth_host(&self.owner, name)).await.with_context(|| format!("removing machine {name}"))?;
        if let Some(public) = known.public_ip {
            // Gone with the bridge anyway; removed now so a reused address routes right.
            let _ = cmd::run("ip", &["route", "del", &format!("{public}/32"), "dev", &known.bridge]).await;
        }
        let bridge_in_use = {
            let mut all = self.known();
            all.remove(name);
            all.values().any(|k| k.bridge == known.bridge)
        };
        if !bridge_in_use && !known.bridge.is_empty() {
            self.remove_bridge(&known.bridge, known.subnet).await?;
        }
        self.events.note(name, "removed");
        Ok(())
    }

    async fn remove_bridge(&self, bridge: &str, subnet: Option<Ipv4Net>) -> Result<()> {
        let _network = self.network.lock().await;
        let links = net::host_links().await?;
        let mut subnets: BTreeSet<Ipv4Net> = links.ipv4.get(bridge).into_iter().flatten().map(|a| a.trunc()).collect();
        subnets.extend(subnet);
        for cidr in subnets {
            if let Some(gateway) = cidr.hosts().next() {
                net::remove_subnet(bridge, cidr, gateway).await?;
            }
        }
        net::delete_bridge(bridge).await
    }
}
