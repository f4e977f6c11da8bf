//! `rigger sim proxmox`: an HTTPS server that answers like a Proxmox VE node
//! (api2/json), built from the API facts in `shared/reference/proxmox-api.md`:
//! `{"data":…}` envelopes, errors in the status line, UPID tasks with logs,
//! config locks, parameter verification, normalised stored config, tickets +
//! CSRF and API tokens, seeded faults.

mod guests;
mod handlers;
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
        }
    }
}

/// What a guest looks like to the machine backend when it starts.
#[derive(Clone, Debug)]
pub struct GuestBoot {
    pub vmid: u32,
    pub kind: GuestKind,
    pub hostname: String,
    /// `192.168.50.21/24`
    pub ip_cidr: Option<String>,
    pub gateway: Option<String>,
    /// One key per line (LXC `ssh-public-keys`, QEMU cloud-init `sshkeys`).
    pub ssh_public_keys: String,
    /// QEMU cloud-init `ciuser` (LXC: root).
    pub user: String,
}

/// The seam for `--machines local`: each started guest may boot a real machine
/// at its IP. The default does nothing; errors fail the start task.
#[async_trait]
pub trait MachineBackend: Send + Sync {
    async fn start(&self, guest: &GuestBoot) -> std::result::Result<(), String>;
    async fn stop(&self, vmid: u32) -> std::result::Result<(), String>;
    async fn destroy(&self, vmid: u32) -> std::result::Result<(), String>;
}

/// Guests exist only as API state.
pub struct NoMachines;

#[async_trait]
impl MachineBackend for NoMachines {
    async fn start(&self, _guest: &GuestBoot) -> std::result::Result<(), String> {
        Ok(())
    }
    async fn stop(&self, _vmid: u32) -> std::result::Result<(), String> {
        Ok(())
    }
    async fn destroy(&self, _vmid: u32) -> std::result::Result<(), String> {
        Ok(())
    }
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

    /// The guests in the store, by VMID.
    pub fn guests(&self) -> Vec<GuestSummary> {
        let state = match self.sim.state.lock() {
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
            })
            .collect()
    }

    /// How many faults were injected (so tests can tell they ran under faults).
    pub fn faults_injected(&self) -> u64 {
        self.sim.faults_injected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What `rigger sim proxmox` prints at start.
    pub fn banner(&self) -> String {
        let mut out = format!(
            "Proxmox VE simulator (node '{}') listening on {}/api2/json\n  token:    PVEAPIToken={}={}\n  export PROXMOX_TOKEN_SECRET={}\n  login:    root@pam / {}\n",
            self.options.node,
            self.base_url(),
            self.options.token_id,
            self.options.token_secret,
            self.options.token_secret,
            self.options.password,
        );
        if let Some(fp) = &self.fingerprint {
            out.push_str(&format!("  tls_fingerprint: \"{fp}\"\n"));
        }
        out.push_str(&format!(
            "  op-time {} ms, latency {} ms, faults {}, seed {}\n",
            self.options.op_time_ms, self.options.latency_ms, self.options.faults, self.options.seed
        ));
        out
    }

    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.server).await;
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
    let sim = Arc::new(Sim {
        fingerprint: cert.fingerprint.clone(),
        state: Mutex::new(State::new(StdRng::seed_from_u64(opts.seed))),
        file_locks: Arc::new(FileLocks::default()),
        machines,
        faults_injected: Default::default(),
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

/// `rigger sim proxmox`: serve on `listener` until the process ends, after
/// printing the banner (token, password, fingerprint).
pub async fn serve(listener: TcpListener, opts: ProxmoxSimOptions) -> Result<()> {
    serve_with_machines(listener, opts, Arc::new(NoMachines)).await
}

pub async fn serve_with_machines(listener: TcpListener, opts: ProxmoxSimOptions, machines: Arc<dyn MachineBackend>) -> Result<()> {
    let mut handle = start_on(listener, opts, machines).await?;
    println!("{}", handle.banner());
    (&mut handle.server).await.context("simulator server task")?;
    Ok(())
}
