//! `rigger sim proxmox`: an HTTPS server that answers like a Proxmox VE node
//! (api2/json), built from the API facts in `shared/reference/proxmox-api.md`:
//! `{"data":…}` envelopes, errors in the status line, UPID tasks with logs,
//! config locks, parameter verification, normalised stored config, tickets +
//! CSRF and API tokens, seeded faults.

pub mod definitions;
mod guests;
mod handlers;
pub mod local_machines;
mod reply;
mod server;
mod state;
mod tasks;
mod tls;
pub mod validation;

pub use state::GuestKind;

use anyhow::{Context, Result};
use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use state::{FileLocks, State};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The LXC template every simulated node has in `local` storage.
pub const DEFAULT_LXC_TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
/// The cloud-init QEMU template VM present at start.
pub const QEMU_TEMPLATE_VMID: u32 = 9000;
pub const QEMU_TEMPLATE_NAME: &str = "debian-12-cloudinit";

#[derive(Clone, Debug)]
pub struct ProxmoxSimOptions {
    pub listen: SocketAddr,
    pub node: String,
    /// `root@pam!rigger`
    pub token_id: String,
    pub token_secret: String,
    /// Password of `root@pam` for `POST /access/ticket`.
    pub password: String,
    /// Plain HTTP instead of HTTPS.
    pub http: bool,
    /// Added to every request.
    pub latency_ms: u64,
    /// How long a task (create, clone, start, …) runs.
    pub op_time_ms: u64,
    /// Probability per request of an injected failure (500 `got timeout`, lock
    /// timeouts, a lost answer, a task ending in an error).
    pub faults: f64,
    pub seed: u64,
    /// Delay before a failed login answers 401 (Proxmox waits 3 s).
    pub auth_fail_delay_ms: u64,
    /// How long after a VM starts its guest agent answers.
    pub agent_delay_ms: u64,
    /// Idle keep-alive connections are closed after this long.
    pub keepalive_timeout: Duration,
    /// The published API schema (`apidata.js`) every request is verified
    /// against; without it the simulator's built-in tables verify.
    pub api_definitions: Option<std::path::PathBuf>,
    /// Keep every request and its answer (for the definition tests).
    pub record_requests: bool,
    /// The node's limits (`--quota`).
    pub limits: NodeLimits,
}

/// What one node holds (`rigger sim proxmox --quota NAME=N`). PVE itself has
/// no quotas; these are the node's size, so a plan's fit can be tried offline.
#[derive(Clone, Debug)]
pub struct NodeLimits {
    /// `node.cores`: the node's CPUs; a guest asking more does not start
    /// (qemu-server's "MAX N vcpus allowed per VM on this node").
    pub cores: u64,
    /// `node.memory`, MiB: a guest whose start would take the running guests'
    /// memory past it does not start ("Cannot allocate memory").
    pub memory_mib: u64,
    /// `guests`: at most this many guests (templates aside); unlimited by default.
    pub guests: Option<u64>,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits { cores: 8, memory_mib: 32768, guests: None }
    }
}

impl NodeLimits {
    pub const NAMES: &'static [&'static str] = &["node.cores", "node.memory", "guests"];

    /// `NAME=N` (node.memory in MiB).
    pub fn set(&mut self, assignment: &str) -> anyhow::Result<()> {
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--quota {assignment:?}: expected NAME=N, e.g. node.memory=65536"))?;
        let n: u64 = value.trim().parse().map_err(|_| anyhow::anyhow!("--quota {name}={value}: {value:?} is not a whole number"))?;
        if n == 0 {
            anyhow::bail!("--quota {name}=0: a node needs at least 1");
        }
        match name.trim() {
            "node.cores" => self.cores = n,
            "node.memory" => self.memory_mib = n,
            "guests" => self.guests = Some(n),
            other => anyhow::bail!("--quota {other}: no such limit of a Proxmox node — use one of {}", Self::NAMES.join(", ")),
        }
        Ok(())
    }
}

/// One request the simulator answered (`record_requests`).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Under `/api2/json`.
    pub path: String,
    pub params: validation::Params,
    pub status: u16,
    /// The envelope's `data` (success) or the `errors` map (400).
    pub answer: serde_json::Value,
}

impl ProxmoxSimOptions {
    /// Defaults as `rigger sim proxmox` starts with: a random token secret and password.
    pub fn new(listen: SocketAddr) -> ProxmoxSimOptions {
        let mut rng = rand::thread_rng();
        ProxmoxSimOptions {
            listen,
            node: "pve".into(),
            token_id: "root@pam!rigger".into(),
            token_secret: uuid::Uuid::from_bytes(rng.gen()).to_string(),
            password: format!("{:016x}", rng.gen::<u64>()),
            http: false,
            latency_ms: 0,
            op_time_ms: 1500,
            faults: 0.0,
            seed: rng.gen(),
            auth_fail_delay_ms: 3000,
            agent_delay_ms: 3000,
            keepalive_timeout: Duration::from_secs(5),
            api_definitions: definitions::default_path(),
            record_requests: false,
            limits: NodeLimits::default(),
        }
    }
}

/// What a guest looks like to the machine backend when it starts.
#[derive(Clone, Debug)]
pub struct GuestBoot {
    pub vmid: u32,
    pub kind: GuestKind,
    pub hostname: String,
    /// The Proxmox bridge of `net0` (`vmbr0`).
    pub bridge: String,
    /// `192.168.50.21/24`
    pub ip_cidr: Option<String>,
    pub gateway: Option<String>,
    /// One key per line (LXC `ssh-public-keys`, QEMU cloud-init `sshkeys`).
    pub ssh_public_keys: String,
    /// QEMU cloud-init `ciuser` (LXC: root).
    pub user: String,
}

/// The seam for `--machines local`: guests may be real machines. Errors fail
/// the task that asked (creation, start, stop, destroy).
#[async_trait]
pub trait MachineBackend: Send + Sync {
    /// `pct create`: lay down the container's root filesystem with root's
    /// `ssh-public-keys` and fresh SSH host keys; returns the public host keys
    /// ("type base64"), whose fingerprints the creation task logs.
    async fn create_container(&self, guest: &GuestBoot) -> std::result::Result<Vec<String>, String>;
    /// Boot the guest. A VM's boot runs cloud-init (`ciuser`, `sshkeys`, host
    /// keys on the first boot); returns the public host keys the guest has.
    async fn start(&self, guest: &GuestBoot) -> std::result::Result<Vec<String>, String>;
    async fn stop(&self, vmid: u32) -> std::result::Result<(), String>;
    async fn destroy(&self, vmid: u32) -> std::result::Result<(), String>;
    /// The simulator ends: stop and remove every machine it booted.
    async fn shutdown(&self) {}
    /// The host-side name of the guest's machine, if it has one.
    fn machine_name(&self, _vmid: u32) -> Option<String> {
        None
    }
}

/// Guests exist only as API state; their host keys are made up (well-formed
/// public keys without a private half: nothing ever connects to them).
pub struct NoMachines;

#[async_trait]
impl MachineBackend for NoMachines {
    async fn create_container(&self, _guest: &GuestBoot) -> std::result::Result<Vec<String>, String> {
        Ok(vec![made_up_host_key()])
    }
    async fn start(&self, _guest: &GuestBoot) -> std::result::Result<Vec<String>, String> {
        Ok(vec![made_up_host_key()])
    }
    async fn stop(&self, _vmid: u32) -> std::result::Result<(), String> {
        Ok(())
    }
    async fn destroy(&self, _vmid: u32) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// `ssh-ed25519 <base64>` with random key bytes, in the SSH wire format.
fn made_up_host_key() -> String {
    use base64::Engine;
    let mut blob = Vec::with_capacity(51);
    for part in [b"ssh-ed25519".as_slice(), &rand::thread_rng().gen::<[u8; 32]>()] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    format!("ssh-ed25519 {}", base64::engine::general_purpose::STANDARD.encode(blob))
}

/// The simulated node, shared by every connection and task.
pub(crate) struct Sim {
    pub opts: ProxmoxSimOptions,
    pub fingerprint: String,
    pub state: Mutex<State>,
    pub file_locks: Arc<FileLocks>,
    pub machines: Arc<dyn MachineBackend>,
    /// Faults injected so far (requests and tasks).
    pub faults_injected: std::sync::atomic::AtomicU64,
    /// api2/json requests answered (the `/_sim/` views not counted).
    pub requests: std::sync::atomic::AtomicU64,
    pub definitions: Option<Arc<definitions::ApiSchema>>,
    pub recorded: Mutex<Vec<RecordedRequest>>,
    /// Requests (method, path) whose next answer is lost (`/_sim/lose-answer`).
    pub lose_answers: Mutex<Vec<(String, String)>>,
}

/// A guest as the store holds it (for tests and the CLI's summary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSummary {
    pub vmid: u32,
    pub kind: GuestKind,
    pub name: String,
    pub running: bool,
    pub template: bool,
    pub lock: Option<String>,
    /// The local machine behind it (`--machines local`).
    pub machine: Option<String>,
}

/// The guests in the store, by VMID.
pub(crate) fn summaries(sim: &Sim) -> Vec<GuestSummary> {
    let state = match sim.state.lock() {
        Ok(state) => state,
        Err(poisoned) => poisoned.into_inner(),
    };
    state
        .guests
        .values()
        .map(|g| GuestSummary {
            vmid: g.vmid,
            kind: g.kind,
            name: g.name(),
            running: g.running,
            template: g.is_template(),
            lock: g.lock().map(str::to_string),
            machine: sim.machines.machine_name(g.vmid),
        })
        .collect()
}

/// A running simulator; dropping it (or `stop`) shuts the server down.
pub struct ProxmoxSimHandle {
    pub addr: SocketAddr,
    /// SHA-256 of the node certificate (`AB:CD:…`); `None` with `--http`.
    pub fingerprint: Option<String>,
    /// The cluster CA, for clients that verify the chain instead of pinning.
    pub ca_pem: Option<String>,
    pub options: ProxmoxSimOptions,
    sim: Arc<Sim>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl ProxmoxSimHandle {
    /// `https://127.0.0.1:PORT` (no `/api2/json`).
    pub fn base_url(&self) -> String {
        let scheme = if self.options.http { "http" } else { "https" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every request answered so far (with `record_requests`).
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.sim.recorded.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Whether requests are verified against the published schema, and which.
    pub fn definitions(&self) -> Option<&std::path::Path> {
        self.sim.definitions.as_ref().and(self.options.api_definitions.as_deref())
    }

    /// The guests in the store, by VMID.
    pub fn guests(&self) -> Vec<GuestSummary> {
        summaries(&self.sim)
    }

    /// How many faults were injected (so tests can tell they ran under faults).
    pub fn faults_injected(&self) -> u64 {
        self.sim.faults_injected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What `rigger sim proxmox` prints at start: where it listens, the
    /// credentials, the fingerprint to pin, and a plan `provider:` block.
    pub fn banner(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "Proxmox VE simulator (node '{}') listening on {}/api2/json\n  listen: {}\n  token_id: {}\n  token_secret: {}\n  login: root@pam / {}\n",
            o.node,
            self.base_url(),
            self.addr,
            o.token_id,
            o.token_secret,
            o.password,
        );
        match self.definitions() {
            Some(path) => out.push_str(&format!("  parameters verified against: {}\n", path.display())),
            None => out.push_str(&format!(
                "  parameters verified by the built-in tables (no apidata.js found: --api-definitions FILE or {})\n",
                definitions::ENV_APIDATA
            )),
        }
        if let Some(fp) = &self.fingerprint {
            out.push_str(&format!("  tls_fingerprint: {fp}\n"));
        }
        let l = &o.limits;
        let guests = l.guests.map(|g| g.to_string()).unwrap_or_else(|| "no limit".into());
        out.push_str(&format!("  node: {} cores, {} MiB, guests {guests} (--quota node.cores|node.memory|guests=N)\n", l.cores, l.memory_mib));
        out.push_str(&format!(
            "  op-time {} ms, latency {} ms, faults {}, seed {}\n  store: GET {}{} (same token)\n\n",
            o.op_time_ms,
            o.latency_ms,
            o.faults,
            o.seed,
            self.base_url(),
            handlers::SIM_GUESTS_PATH
        ));
        out.push_str("Paste into the plan:\n\nprovider:\n  kind: proxmox\n");
        out.push_str(&format!("  endpoint: {}\n  node: {}\n  token_id: \"{}\"\n", self.base_url(), o.node, o.token_id));
        match &self.fingerprint {
            Some(fp) => out.push_str(&format!("  tls_fingerprint: \"{fp}\"\n")),
            None => out.push_str("  # plain HTTP (--http): no fingerprint to pin\n"),
        }
        out.push_str(&format!("\nand in the shell:\n\nexport PROXMOX_TOKEN_SECRET={}\n", o.token_secret));
        out
    }

    /// Stop serving, then take down every machine the guests booted.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.server).await;
        self.sim.machines.shutdown().await;
    }
}

impl Drop for ProxmoxSimHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Start on `opts.listen` with no machine backend.
pub async fn start(opts: ProxmoxSimOptions) -> Result<ProxmoxSimHandle> {
    start_with_machines(opts, Arc::new(NoMachines)).await
}

pub async fn start_with_machines(opts: ProxmoxSimOptions, machines: Arc<dyn MachineBackend>) -> Result<ProxmoxSimHandle> {
    let listener = TcpListener::bind(opts.listen).await.with_context(|| format!("binding {}", opts.listen))?;
    start_on(listener, opts, machines).await
}

async fn start_on(listener: TcpListener, mut opts: ProxmoxSimOptions, machines: Arc<dyn MachineBackend>) -> Result<ProxmoxSimHandle> {
    let addr = listener.local_addr().context("listener address")?;
    opts.listen = addr;
    let cert = tls::generate(&opts.node)?;
    let tls_config = if opts.http { None } else { Some(tls::server_config(&cert)?) };
    let definitions = match &opts.api_definitions {
        Some(path) => Some(definitions::shared(path)?),
        None => None,
    };
    let sim = Arc::new(Sim {
        definitions,
        recorded: Mutex::new(Vec::new()),
        lose_answers: Mutex::new(Vec::new()),
        fingerprint: cert.fingerprint.clone(),
        state: Mutex::new(State::new(StdRng::seed_from_u64(opts.seed))),
        file_locks: Arc::new(FileLocks::default()),
        machines,
        faults_injected: Default::default(),
        requests: Default::default(),
        opts: opts.clone(),
    });
    handlers::seed_node(&sim);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let server = tokio::spawn(server::run(listener, Arc::clone(&sim), tls_config, shutdown_rx));
    Ok(ProxmoxSimHandle {
        addr,
        fingerprint: (!opts.http).then(|| cert.fingerprint.clone()),
        ca_pem: (!opts.http).then(|| cert.ca_pem.clone()),
        options: opts,
        sim,
        shutdown,
        server,
    })
}

/// Start on an already bound listener (the CLI binds first to report the address).
pub async fn start_on_listener(listener: TcpListener, opts: ProxmoxSimOptions, machines: Arc<dyn MachineBackend>) -> Result<ProxmoxSimHandle> {
    start_on(listener, opts, machines).await
}
