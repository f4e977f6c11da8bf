//! `rigger sim yandex`: a Yandex Cloud simulator speaking the real REST API
//! (IAM token exchange, VPC, Compute, Operations) on one base URL, with
//! configurable latency, operation time, faults and quotas.

pub mod console;
pub mod definitions;
mod handlers;
pub mod keys;
pub mod knobs;
pub mod local;
pub mod local_machines;
pub mod state;
mod validation;
mod wire;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use state::{Created, World};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;

pub use keys::AuthorizedKeyFile;
pub use state::Instance;

/// Shown as `createdBy` of operations.
pub const SIM_SERVICE_ACCOUNT_PRINCIPAL: &str = "rigger-sim";

/// Cloud quotas (the defaults are Yandex Cloud's defaults for a new cloud).
#[derive(Clone, Debug)]
pub struct Quotas {
    pub networks: u64,
    pub subnets: u64,
    pub security_groups: u64,
    pub rules_per_security_group: u64,
    pub instances: u64,
    pub cores: u64,
    pub memory_bytes: u64,
    /// Concurrently running operations per folder.
    pub active_operations: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            networks: 2,
            subnets: 6,
            security_groups: 10,
            rules_per_security_group: 50,
            instances: 12,
            cores: 32,
            memory_bytes: 128 << 30,
            active_operations: 15,
        }
    }
}

impl Quotas {
    /// The names `--quota NAME=N` takes: the cloud's quota metric names (as
    /// its QuotaFailure details and the console's quota page name them), plus
    /// `operations.active` for the folder's concurrent-operation limit.
    pub const NAMES: &'static [&'static str] = &[
        "vpc.networks.count",
        "vpc.subnets.count",
        "vpc.securityGroups.count",
        "vpc.securityGroupRules.count",
        "compute.instances.count",
        "compute.instanceCores.count",
        "compute.instanceMemory.size",
        "operations.active",
    ];

    /// Set one quota from `NAME=N` (`compute.instanceMemory.size` also takes
    /// `512GiB`-style sizes); an unknown name lists the known ones.
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--quota {assignment:?}: expected NAME=N, e.g. compute.instances.count=300"))?;
        let (name, value) = (name.trim(), value.trim());
        let number = || -> Result<u64> {
            if name == "compute.instanceMemory.size" {
                if let Some(bytes) = parse_bytes(value) {
                    return Ok(bytes);
                }
            }
            value.parse::<u64>().map_err(|_| anyhow::anyhow!("--quota {name}={value}: {value:?} is not a whole number"))
        };
        let slot = match name {
            "vpc.networks.count" => &mut self.networks,
            "vpc.subnets.count" => &mut self.subnets,
            "vpc.securityGroups.count" => &mut self.security_groups,
            "vpc.securityGroupRules.count" => &mut self.rules_per_security_group,
            "compute.instances.count" => &mut self.instances,
            "compute.instanceCores.count" => &mut self.cores,
            "compute.instanceMemory.size" => &mut self.memory_bytes,
            "operations.active" => &mut self.active_operations,
            other => anyhow::bail!("--quota {other}: unknown quota; known: {}", Quotas::NAMES.join(", ")),
        };
        *slot = number()?;
        Ok(())
    }
}

/// `512GiB`, `64G`, or bytes.
fn parse_bytes(text: &str) -> Option<u64> {
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: u64 = text[..digits_end].parse().ok()?;
    let unit = match &text[digits_end..] {
        "" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(unit)
}

#[derive(Clone, Debug)]
pub struct YandexSimOptions {
    /// Where the CLI binds (`serve` itself takes a bound listener).
    pub listen: SocketAddr,
    /// Trust this authorized key file; without it a new one is generated and written to `key_out`.
    pub sa_key: Option<PathBuf>,
    pub key_out: PathBuf,
    /// Added to every answer.
    pub latency_ms: u64,
    /// How long an operation runs before it is `done`.
    pub op_time_ms: u64,
    /// Share of requests that fail (503/429 before doing the work, or doing it and losing the answer).
    pub faults: f64,
    pub seed: u64,
    pub quotas: Quotas,
    /// Keep every API request and its answer (for the definition tests).
    pub record_requests: bool,
    /// The published protos every request is verified against (the cloudapi
    /// folder); without them only the simulator's own checks apply.
    pub api_definitions: Option<PathBuf>,
}

/// One API request the simulator answered (`record_requests`).
#[derive(Clone, Debug)]
pub struct RecordedCall {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The JSON body (Null when there was none).
    pub body: serde_json::Value,
    pub status: u16,
    pub answer: serde_json::Value,
}

impl Default for YandexSimOptions {
    fn default() -> Self {
        YandexSimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8930)),
            sa_key: None,
            key_out: PathBuf::from("sim-sa-key.json"),
            latency_ms: 0,
            op_time_ms: 0,
            faults: 0.0,
            seed: 1,
            quotas: Quotas::default(),
            record_requests: false,
            api_definitions: definitions::default_root(),
        }
    }
}

/// What happens to instances, for a backend that runs real machines for them.
#[derive(Clone, Debug)]
pub enum MachineEvent {
    /// The instance reached RUNNING (created or started): boot a machine at its
    /// primary address, with the `ssh-keys` user from its metadata.
    Running { instance: Box<Instance>, network_id: String, subnet_cidr: ipnet::Ipv4Net },
    Stopped(String),
    Deleted(String),
}

/// What the serial console shows of an instance's host keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleKeys {
    /// No real machine behind the instance: show the keys the simulator made up.
    Simulated,
    /// A machine is booting; cloud-init has not printed its keys yet.
    NotYet,
    /// The real machine's public host keys, "type base64".
    Booted(Vec<String>),
}

/// The seam for `--machines local`. Called outside the simulator's lock, from a
/// request task: an implementation must return at once and do slow work elsewhere.
pub trait MachineBackend: Send + Sync {
    fn handle(&self, _event: MachineEvent) {}
    fn console_keys(&self, _instance_id: &str) -> ConsoleKeys {
        ConsoleKeys::Simulated
    }
    /// Public addresses this backend must not hand out (already routed on the
    /// host, e.g. by another simulator's machines).
    fn public_address_taken(&self) -> Option<fn(&str) -> bool> {
        None
    }
}

/// The default: instances exist only as API objects.
pub struct NoMachines;
impl MachineBackend for NoMachines {}

/// The shared simulator state behind every handler.
pub struct Sim {
    world: Mutex<World>,
    fault_rng: Mutex<StdRng>,
    trusted: keys::TrustedKey,
    latency: Duration,
    faults: f64,
    /// How many faults were injected: before the work, and after it with the answer lost.
    faults_before: std::sync::atomic::AtomicU64,
    answers_lost: std::sync::atomic::AtomicU64,
    /// API requests answered (the `/_sim/` debug routes not counted).
    requests: std::sync::atomic::AtomicU64,
    machines: Arc<dyn MachineBackend>,
    recorded: Option<Mutex<Vec<RecordedCall>>>,
    definitions: Option<Arc<definitions::Definitions>>,
}

impl Sim {
    /// Lock the world with finished operations applied, run `f`, then hand any
    /// machine events to the backend after the lock is released.
    fn with_world<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        let (out, events) = {
            let mut w = self.lock();
            w.advance();
            let out = f(&mut w);
            (out, std::mem::take(&mut w.machine_events))
        };
        for e in events {
            self.machines.handle(e);
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        // A panic in one handler must not take the whole simulator down.
        self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn inventory(&self) -> Inventory {
        use std::sync::atomic::Ordering::Relaxed;
        self.with_world(|w| Inventory {
            networks: w.networks.values().map(|n| n.name.clone()).collect(),
            subnets: w.subnets.values().map(|n| n.name.clone()).collect(),
            security_groups: w.security_groups.values().filter(|g| !g.default_for_network).map(|g| g.name.clone()).collect(),
            instances: w.instances.values().map(|n| n.name.clone()).collect(),
            disks: w.disks.len(),
            history: w.history.clone(),
            faults_before: self.faults_before.load(Relaxed),
            answers_lost: self.answers_lost.load(Relaxed),
            requests: self.requests.load(Relaxed),
        })
    }
}

/// A read-only summary of the store, for tests and diagnostics
/// (also served as JSON at `GET /_sim/inventory`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Inventory {
    pub networks: Vec<String>,
    pub subnets: Vec<String>,
    /// Without the default groups the cloud creates for each network.
    pub security_groups: Vec<String>,
    pub instances: Vec<String>,
    pub disks: usize,
    /// Every creation ever made, in order.
    pub history: Vec<Created>,
    /// Injected faults so far: refused before doing the work / work done, answer lost.
    pub faults_before: u64,
    pub answers_lost: u64,
    /// API requests answered so far, token exchanges included.
    pub requests: u64,
}

impl Inventory {
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty() && self.subnets.is_empty() && self.security_groups.is_empty() && self.instances.is_empty() && self.disks == 0
    }
}

/// Load or generate the trusted key, build the shared state.
fn prepare(opts: &YandexSimOptions, machines: Arc<dyn MachineBackend>) -> Result<(Arc<Sim>, AuthorizedKeyFile, PathBuf)> {
    let (key_file, path) = match &opts.sa_key {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading authorized key file {}", path.display()))?;
            let file: AuthorizedKeyFile =
                serde_json::from_str(&text).with_context(|| format!("{} is not an authorized key file", path.display()))?;
            (file, path.clone())
        }
        None => {
            let file = keys::generate_key_file()?;
            keys::write_key_file(&opts.key_out, &file)?;
            (file, opts.key_out.clone())
        }
    };
    let trusted = keys::TrustedKey::from_file(&key_file)?;
    let mut world = World::new(opts.quotas.clone(), Duration::from_millis(opts.op_time_ms), StdRng::seed_from_u64(opts.seed));
    world.public_address_taken = machines.public_address_taken();
    let sim = Sim {
        world: Mutex::new(world),
        fault_rng: Mutex::new(StdRng::seed_from_u64(opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xFA01)),
        trusted,
        latency: Duration::from_millis(opts.latency_ms),
        faults: opts.faults.clamp(0.0, 1.0),
        faults_before: Default::default(),
        answers_lost: Default::default(),
        requests: Default::default(),
        machines,
        recorded: opts.record_requests.then(|| Mutex::new(Vec::new())),
        definitions: match &opts.api_definitions {
            Some(root) => Some(definitions::shared(root)?),
            None => None,
        },
    };
    Ok((Arc::new(sim), key_file, path))
}

/// Serve the simulator on `listener` until the process ends.
pub async fn serve(listener: TcpListener, opts: YandexSimOptions) -> Result<()> {
    serve_with_machines(listener, opts, Arc::new(NoMachines)).await
}

pub async fn serve_with_machines(listener: TcpListener, opts: YandexSimOptions, machines: Arc<dyn MachineBackend>) -> Result<()> {
    let (sim, key, path) = prepare(&opts, machines)?;
    tracing::info!(key_file = %path.display(), key_id = %key.id, "yandex simulator trusts this authorized key");
    axum::serve(listener, handlers::router(sim)).await.context("yandex simulator stopped")
}

/// A simulator running in the background (tests, embedding). Dropping it stops it.
pub struct SimHandle {
    pub addr: SocketAddr,
    /// The trusted key file (generated unless `sa_key` was given) and where it is.
    pub key: AuthorizedKeyFile,
    pub key_path: PathBuf,
    sim: Arc<Sim>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    pub async fn start(listener: TcpListener, opts: YandexSimOptions) -> Result<SimHandle> {
        Self::start_with_machines(listener, opts, Arc::new(NoMachines)).await
    }

    pub async fn start_with_machines(listener: TcpListener, opts: YandexSimOptions, machines: Arc<dyn MachineBackend>) -> Result<SimHandle> {
        let addr = listener.local_addr()?;
        let (sim, key, key_path) = prepare(&opts, machines)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = handlers::router(sim.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { let _ = rx.await; }).await;
        });
        Ok(SimHandle { addr, key, key_path, sim, shutdown: Some(tx), task: Some(task) })
    }

    /// The base URL for every service (`endpoint` in a plan).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn inventory(&self) -> Inventory {
        self.sim.inventory()
    }

    /// Whether requests are verified against the published protos.
    pub fn verifies_against_definitions(&self) -> bool {
        self.sim.definitions.is_some()
    }

    /// Every API request answered so far (with `record_requests`).
    pub fn recorded(&self) -> Vec<RecordedCall> {
        self.sim.recorded.as_ref().and_then(|r| r.lock().ok().map(|r| r.clone())).unwrap_or_default()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod quota_tests {
    use super::Quotas;

    #[test]
    fn quotas_are_set_by_their_metric_names_and_defaults_stay() {
        let mut q = Quotas::default();
        q.set("compute.instances.count=300").unwrap();
        q.set("compute.instanceMemory.size=2TiB").unwrap();
        q.set("operations.active = 30").unwrap();
        assert_eq!((q.instances, q.memory_bytes, q.active_operations), (300, 2 << 40, 30));
        assert_eq!(q.subnets, Quotas::default().subnets);
        assert!(q.set("compute.gpus.count=1").unwrap_err().to_string().contains("known: vpc.networks.count"));
        assert!(q.set("compute.instances.count=many").is_err());
        assert!(q.set("compute.instances.count").is_err());
    }
}
