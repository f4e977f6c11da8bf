//! What the simulated node holds: guests with their stored (normalised) config,
//! tasks with UPIDs and logs, login tickets, config file locks, and the seeded
//! random source behind MAC addresses and faults.

use super::validation::{property_string, split_tags};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestKind {
    Lxc,
    Qemu,
}

impl GuestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestKind::Lxc => "lxc",
            GuestKind::Qemu => "qemu",
        }
    }
    /// `CT` / `VM`, as messages name them.
    pub fn noun(self) -> &'static str {
        match self {
            GuestKind::Lxc => "CT",
            GuestKind::Qemu => "VM",
        }
    }
    pub fn config_dir(self) -> &'static str {
        match self {
            GuestKind::Lxc => "lxc",
            GuestKind::Qemu => "qemu-server",
        }
    }
    pub fn lock_file(self, vmid: u32) -> String {
        match self {
            GuestKind::Lxc => format!("/run/lock/lxc/pve-config-{vmid}.lock"),
            GuestKind::Qemu => format!("/var/lock/qemu-server/lock-{vmid}.conf"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Guest {
    pub vmid: u32,
    pub kind: GuestKind,
    /// The cluster node it lives on when not the simulated one (moved there
    /// as an HA migration would: `/_sim/guests/{vmid}/node`).
    pub elsewhere: Option<String>,
    /// The config file as the node stores it (normalised values).
    pub config: BTreeMap<String, String>,
    pub running: bool,
    pub started_at: Option<Instant>,
    /// LXC `ssh-public-keys` are written into the container at creation, not kept in its config.
    pub ssh_public_keys: String,
    /// Public SSH host keys inside the guest ("type base64"): made by `pct
    /// create` for a container, by cloud-init on a VM's first boot.
    pub host_keys: Vec<String>,
}

impl Guest {
    /// The node that holds its config file.
    pub fn node<'a>(&'a self, simulated: &'a str) -> &'a str {
        self.elsewhere.as_deref().unwrap_or(simulated)
    }
    pub fn name(&self) -> String {
        let key = if self.kind == GuestKind::Lxc { "hostname" } else { "name" };
        self.config.get(key).cloned().unwrap_or_else(|| format!("{}{}", self.kind.noun(), self.vmid))
    }
    pub fn lock(&self) -> Option<&str> {
        self.config.get("lock").map(String::as_str)
    }
    pub fn is_template(&self) -> bool {
        self.config.get("template").is_some_and(|t| t == "1")
    }
    /// `CT is locked (create)` while a task holds the guest.
    pub fn check_unlocked(&self) -> Result<(), String> {
        match self.lock() {
            Some(lock) => Err(format!("{} is locked ({lock})", self.kind.noun())),
            None => Ok(()),
        }
    }
    pub fn memory_mb(&self) -> u64 {
        self.config.get("memory").and_then(|m| m.parse().ok()).unwrap_or(512)
    }
    /// The first network address the guest would come up with (`ip/prefix`).
    pub fn ipv4_cidr(&self) -> Option<String> {
        let (key, value_key) = match self.kind {
            GuestKind::Lxc => ("net0", "ip"),
            GuestKind::Qemu => ("ipconfig0", "ip"),
        };
        let kv = property_string(self.config.get(key)?, None).ok()?;
        kv.into_iter().find(|(k, v)| k == value_key && v.contains('/')).map(|(_, v)| v)
    }
    pub fn gateway(&self) -> Option<String> {
        let key = if self.kind == GuestKind::Lxc { "net0" } else { "ipconfig0" };
        let kv = property_string(self.config.get(key)?, None).ok()?;
        kv.into_iter().find(|(k, _)| k == "gw").map(|(_, v)| v)
    }
    /// The bridge `net0` is on.
    pub fn bridge(&self) -> Option<String> {
        let kv = property_string(self.config.get("net0")?, None).ok()?;
        kv.into_iter().find(|(k, _)| k == "bridge").map(|(_, v)| v)
    }
    pub fn hwaddr(&self) -> Option<String> {
        let kv = property_string(self.config.get("net0")?, None).ok()?;
        kv.into_iter()
            .find(|(k, _)| k == "hwaddr" || k == "virtio" || k == "e1000")
            .map(|(_, v)| v)
    }
}

/// Tags as the node stores them: lower-cased, de-duplicated, sorted, `;`-joined.
pub fn normalise_tags(raw: &str) -> String {
    let tags: BTreeSet<String> = split_tags(raw).map(str::to_ascii_lowercase).collect();
    tags.into_iter().collect::<Vec<_>>().join(";")
}

#[derive(Clone, Debug)]
pub struct Task {
    pub upid: String,
    pub pid: u32,
    pub pstart: u32,
    pub starttime: u64,
    pub worker_type: String,
    pub id: String,
    pub user: String,
    /// `None` while running; `OK`, `WARNINGS: N` or the error once stopped.
    pub exitstatus: Option<String>,
    pub log: Vec<String>,
    /// Status queries answered `no such task` before the task becomes visible.
    pub invisible_polls: u32,
}

pub struct Ticket {
    pub user: String,
    pub csrf: String,
    pub expires: Instant,
}

pub struct State {
    pub guests: BTreeMap<u32, Guest>,
    pub tasks: HashMap<String, Task>,
    pub tickets: HashMap<String, Ticket>,
    pub rng: StdRng,
    next_pid: u32,
}

impl State {
    pub fn new(rng: StdRng) -> State {
        State { guests: BTreeMap::new(), tasks: HashMap::new(), tickets: HashMap::new(), rng, next_pid: 0x1000 }
    }

    /// A MAC in Proxmox's own OUI, as new interfaces get.
    pub fn new_mac(&mut self) -> String {
        let b: [u8; 3] = self.rng.gen();
        format!("BC:24:11:{:02X}:{:02X}:{:02X}", b[0], b[1], b[2])
    }

    pub fn random_hex(&mut self, bytes: usize) -> String {
        (0..bytes).map(|_| format!("{:02X}", self.rng.gen::<u8>())).collect()
    }

    /// Roll the fault dice.
    pub fn chance(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.gen::<f64>() < rate
    }

    pub fn new_task(&mut self, node: &str, worker_type: &str, id: &str, user: &str, invisible_polls: u32) -> Task {
        self.next_pid += 1 + self.rng.gen_range(0..16);
        let pid = self.next_pid;
        let pstart = self.rng.gen_range(1_000_000..90_000_000u32);
        let starttime = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let upid = format!("UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{worker_type}:{id}:{user}:");
        Task {
            upid,
            pid,
            pstart,
            starttime,
            worker_type: worker_type.into(),
            id: id.into(),
            user: user.into(),
            exitstatus: None,
            log: Vec::new(),
            invisible_polls,
        }
    }

    pub fn next_free_vmid(&self) -> u32 {
        (100..).find(|id| !self.guests.contains_key(id)).unwrap_or(100)
    }
}

/// Config file locks (`flock`), each taken with a timeout like `lock_config_full`.
#[derive(Default)]
pub struct FileLocks {
    held: Mutex<BTreeSet<u32>>,
}

pub struct FileLockGuard {
    locks: Arc<FileLocks>,
    vmid: u32,
}

impl Drop for FileLockGuard {
    fn drop(&mut self) {
        if let Ok(mut held) = self.locks.held.lock() {
            held.remove(&self.vmid);
        }
    }
}

impl FileLocks {
    /// Fails with `can't lock file '…' - got timeout` when held longer than `timeout`.
    pub async fn lock(self: &Arc<Self>, kind: GuestKind, vmid: u32, timeout: Duration) -> Result<FileLockGuard, String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut held = self.held.lock().map_err(|_| "lock table poisoned".to_string())?;
                if held.insert(vmid) {
                    return Ok(FileLockGuard { locks: Arc::clone(self), vmid });
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("can't lock file '{}' - got timeout", kind.lock_file(vmid)));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
