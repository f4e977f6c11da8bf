//! LXC containers and QEMU VMs: creation and cloning, stored config (normalised
//! like pve-container / qemu-server write it), config locks, start/stop,
//! resize, destroy, and the addresses a running guest reports.

use super::handlers::{lock_state, Caller, LXC_TEMPLATES, STORAGES};
use super::reply::{HandlerResult, Reply};
use super::state::{normalise_tags, Guest, GuestKind, State};
use super::tasks::{self, TaskCtx};
use super::validation::*;
use super::{GuestBoot, Sim, QEMU_TEMPLATE_NAME, QEMU_TEMPLATE_VMID};
use futures::FutureExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---- schemas ---------------------------------------------------------------

const CORES: Ty = Ty::Int { min: 1, max: 8192 };
const MEMORY: Ty = Ty::Int { min: 16, max: 1 << 40 };

/// Keys an LXC config may hold (PUT) and creation may set.
const LXC_CONFIG_KEYS: &[Param] = &[
    opt("hostname", DNS_NAME),
    opt("cores", CORES),
    opt("cpulimit", Ty::Int { min: 0, max: 8192 }),
    opt("cpuunits", Ty::Int { min: 0, max: 500000 }),
    opt("memory", MEMORY),
    opt("swap", Ty::Int { min: 0, max: 1 << 40 }),
    opt("net[n]", Ty::Format(lxc_net)),
    opt("nameserver", TEXT),
    opt("searchdomain", TEXT),
    opt("onboot", BOOL),
    opt("protection", BOOL),
    opt("tags", TAGS),
    opt("description", TEXT),
    opt("features", TEXT),
    opt("arch", Ty::Enum(&["amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"])),
    opt("ostype", Ty::Enum(&["debian", "devuan", "ubuntu", "centos", "fedora", "opensuse", "archlinux", "alpine", "gentoo", "nixos", "unmanaged"])),
    opt("timezone", TEXT),
    opt("startup", TEXT),
    opt("console", BOOL),
    opt("tty", Ty::Int { min: 0, max: 6 }),
    opt("cmode", Ty::Enum(&["shell", "console", "tty"])),
    opt("hookscript", TEXT),
    opt("rootfs", Ty::Format(lxc_rootfs)),
    opt("mp[n]", TEXT),
];

const LXC_CREATE_ONLY: &[Param] = &[
    req("vmid", VMID),
    req("ostemplate", Ty::Str { max_len: 255 }),
    opt("ssh-public-keys", Ty::Format(ssh_keys)),
    opt("password", Ty::Str { max_len: 256 }),
    opt("unprivileged", BOOL),
    opt("start", BOOL),
    opt("storage", STORAGE_ID),
    opt("pool", TEXT),
    opt("force", BOOL),
    opt("unique", BOOL),
    opt("restore", BOOL),
    opt("ignore-unpack-errors", BOOL),
];

const UPDATE_ONLY: &[Param] = &[
    opt("delete", TEXT),
    opt("digest", Ty::Str { max_len: 64 }),
    opt("revert", TEXT),
    opt("skiplock", BOOL),
];

const QEMU_CONFIG_KEYS: &[Param] = &[
    opt("name", DNS_NAME),
    opt("cores", CORES),
    opt("sockets", Ty::Int { min: 1, max: 16 }),
    opt("memory", MEMORY),
    opt("balloon", Ty::Int { min: 0, max: 1 << 40 }),
    opt("cpu", TEXT),
    opt("ciuser", Ty::Str { max_len: 64 }),
    opt("cipassword", Ty::Str { max_len: 256 }),
    opt("citype", Ty::Enum(&["configdrive2", "nocloud", "opennebula"])),
    opt("ciupgrade", BOOL),
    opt("sshkeys", Ty::Format(urlencoded_ssh_keys)),
    opt("ipconfig[n]", Ty::Format(ipconfig)),
    opt("nameserver", TEXT),
    opt("searchdomain", TEXT),
    opt("onboot", BOOL),
    opt("protection", BOOL),
    opt("tags", TAGS),
    opt("description", TEXT),
    opt("agent", TEXT),
    opt("net[n]", TEXT),
    opt("scsi[n]", TEXT),
    opt("virtio[n]", TEXT),
    opt("ide[n]", TEXT),
    opt("sata[n]", TEXT),
    opt("serial[n]", TEXT),
    opt("scsihw", TEXT),
    opt("boot", TEXT),
    opt("vga", TEXT),
    opt("ostype", TEXT),
    opt("startup", TEXT),
];

fn schema(parts: &[&'static [Param]]) -> Vec<Param> {
    parts.iter().flat_map(|p| p.iter()).map(|p| Param { name: p.name, ty: p.ty, required: p.required }).collect()
}

// ---- lookups and rendering --------------------------------------------------

fn missing(sim: &Sim, kind: GuestKind, vmid: u32) -> Reply {
    missing_on(&sim.opts.node, kind, vmid)
}

/// What `node` answers for a guest whose config it does not hold.
pub fn missing_on(node: &str, kind: GuestKind, vmid: u32) -> Reply {
    Reply::fail(format!("Configuration file 'nodes/{node}/{}/{vmid}.conf' does not exist", kind.config_dir()))
}

fn guest_mut<'a>(sim: &Sim, state: &'a mut State, kind: GuestKind, vmid: u32) -> Result<&'a mut Guest, Reply> {
    match state.guests.get_mut(&vmid) {
        Some(guest) if guest.kind == kind => Ok(guest),
        _ => Err(missing(sim, kind, vmid)),
    }
}

/// Config keys whose values the API returns as JSON numbers.
fn is_integer_key(kind: GuestKind, key: &str) -> bool {
    let common = ["cores", "onboot", "template", "protection", "sockets", "cpuunits", "balloon"];
    common.contains(&key) || (kind == GuestKind::Lxc && ["memory", "swap", "unprivileged", "tty", "console"].contains(&key))
}

fn digest(config: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in config {
        hasher.update(format!("{k}: {v}\n"));
    }
    hex::encode(hasher.finalize())[..40].to_string()
}

fn render_config(guest: &Guest) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in &guest.config {
        let value = match v.parse::<i64>() {
            Ok(n) if is_integer_key(guest.kind, k) => json!(n),
            _ => json!(v),
        };
        out.insert(k.clone(), value);
    }
    out.insert("digest".into(), json!(digest(&guest.config)));
    Value::Object(out)
}

/// `size=8G` of a volume string, in bytes.
pub fn volume_size(volume: &str) -> Option<u64> {
    volume.split(',').find_map(|part| part.strip_prefix("size=")).and_then(size_bytes)
}

fn with_volume_size(volume: &str, bytes: u64) -> String {
    let mut parts: Vec<String> = volume.split(',').filter(|p| !p.starts_with("size=")).map(str::to_string).collect();
    parts.push(format!("size={}", format_size(bytes)));
    parts.join(",")
}

fn root_disk_key(guest: &Guest) -> &'static str {
    if guest.kind == GuestKind::Lxc {
        "rootfs"
    } else {
        "scsi0"
    }
}

/// The guest as `/cluster/resources` lists it (`simulated`: the simulated node's name).
pub fn resource_entry(simulated: &str, guest: &Guest) -> Value {
    let node = guest.node(simulated);
    let maxdisk = guest.config.get(root_disk_key(guest)).and_then(|v| volume_size(v)).unwrap_or(0);
    let mut entry = json!({
        "id": format!("{}/{}", guest.kind.as_str(), guest.vmid),
        "type": guest.kind.as_str(),
        "vmid": guest.vmid,
        "node": node,
        "name": guest.name(),
        "status": if guest.running { "running" } else { "stopped" },
        "template": if guest.is_template() { 1 } else { 0 },
        "maxcpu": guest.config.get("cores").and_then(|c| c.parse::<u64>().ok()).unwrap_or(1),
        "maxmem": guest.memory_mb() << 20,
        "maxdisk": maxdisk,
        "mem": 0, "disk": 0, "cpu": 0, "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
        "uptime": guest.started_at.filter(|_| guest.running).map(|t| t.elapsed().as_secs()).unwrap_or(0),
    });
    if let Some(tags) = guest.config.get("tags") {
        entry["tags"] = json!(tags);
    }
    if let Some(lock) = guest.lock() {
        entry["lock"] = json!(lock);
    }
    entry
}

pub fn list(sim: &Sim, kind: GuestKind) -> Value {
    let state = lock_state(sim);
    let guests: Vec<Value> = state
        .guests
        .values()
        .filter(|g| g.kind == kind)
        .map(|g| {
            let mut entry = resource_entry(&sim.opts.node, g);
            if let Some(map) = entry.as_object_mut() {
                map.remove("id");
                map.remove("node");
            }
            entry
        })
        .collect();
    Value::Array(guests)
}

// ---- normalisation -----------------------------------------------------------

/// LXC `net[n]` as stored: `name` first, then the other keys sorted, with a
/// generated `hwaddr` and `type=veth`.
fn normalise_lxc_net(value: &str, state: &mut State) -> String {
    let mut kv: BTreeMap<String, String> = property_string(value, None).unwrap_or_default().into_iter().collect();
    if !kv.contains_key("hwaddr") {
        kv.insert("hwaddr".into(), state.new_mac());
    }
    kv.insert("type".into(), "veth".into());
    let name = kv.remove("name").unwrap_or_else(|| "eth0".into());
    std::iter::once(format!("name={name}")).chain(kv.into_iter().map(|(k, v)| format!("{k}={v}"))).collect::<Vec<_>>().join(",")
}

/// QEMU `net[n]`: `virtio,bridge=vmbr0` gets a MAC: `virtio=BC:24:11:…,bridge=vmbr0`.
fn normalise_qemu_net(value: &str, state: &mut State) -> String {
    let models = ["virtio", "e1000", "e1000e", "rtl8139", "vmxnet3"];
    value
        .split(',')
        .map(|part| if models.contains(&part) { format!("{part}={}", state.new_mac()) } else { part.to_string() })
        .collect::<Vec<_>>()
        .join(",")
}

fn normalise_features(value: &str) -> String {
    let kv: BTreeMap<String, String> = property_string(value, None).unwrap_or_default().into_iter().collect();
    kv.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn normalise_value(kind: GuestKind, key: &str, value: &str, state: &mut State) -> String {
    match key {
        "tags" => normalise_tags(value),
        "features" => normalise_features(value),
        "onboot" | "protection" | "unprivileged" | "console" => if parse_bool(value) { "1" } else { "0" }.into(),
        k if k.starts_with("net") && kind == GuestKind::Lxc => normalise_lxc_net(value, state),
        k if k.starts_with("net") => normalise_qemu_net(value, state),
        _ => value.to_string(),
    }
}

// ---- LXC creation --------------------------------------------------------------

/// `STORAGE:SIZE_GiB` → (storage, bytes).
fn parse_new_rootfs(rootfs: &str) -> Result<(String, u64, Vec<String>), Reply> {
    let mut parts = rootfs.split(',');
    let volume = parts.next().unwrap_or_default();
    let options: Vec<String> = parts.filter(|p| !p.starts_with("size=")).map(str::to_string).collect();
    let (storage, size) = volume.split_once(':').unwrap_or((volume, ""));
    let Some((id, _, content)) = STORAGES.iter().find(|(id, _, _)| *id == storage) else {
        return Err(Reply::fail(format!("storage '{storage}' does not exist")));
    };
    if !content.contains("rootdir") {
        return Err(Reply::fail(format!("storage '{id}' does not support container directories")));
    }
    let gib: f64 = size.parse().map_err(|_| Reply::fail(format!("volume '{volume}' does not exist")))?;
    if gib <= 0.0 {
        return Err(Reply::param("rootfs", "invalid format - format error\nsize: value must have a minimum value of 0.1"));
    }
    Ok((storage.to_string(), (gib * (1u64 << 30) as f64) as u64, options))
}

pub fn lxc_create(sim: &Arc<Sim>, params: &Params, caller: &Caller) -> HandlerResult {
    check(&schema(&[LXC_CONFIG_KEYS, LXC_CREATE_ONLY]), params).map_err(Reply::params)?;
    let vmid: u32 = params["vmid"].parse().map_err(|_| Reply::param("vmid", "type check ('integer') failed"))?;
    let ostemplate = &params["ostemplate"];
    if !LXC_TEMPLATES.contains(&ostemplate.as_str()) {
        return Err(Reply::fail(format!("volume '{ostemplate}' does not exist")));
    }
    let storage = params.get("storage").map(String::as_str).unwrap_or("local");
    let rootfs = params.get("rootfs").cloned().unwrap_or_else(|| format!("{storage}:4"));
    let (rootfs_storage, rootfs_bytes, rootfs_options) = parse_new_rootfs(&rootfs)?;
    let start_after = params.get("start").is_some_and(|v| parse_bool(v));

    let mut state = lock_state(sim);
    room_for_a_guest(sim, &state)?;
    // pve-container's create_vm calls pve-cluster's check_vmid_unused before
    // it forks the worker: a plain `die`, so 500 with the text as the reason.
    if let Some(taken) = state.guests.get(&vmid) {
        return Err(Reply::fail(format!("{} {vmid} already exists on node '{}'", taken.kind.noun(), taken.node(&sim.opts.node))));
    }
    let mut config = BTreeMap::new();
    let ostype = ["debian", "ubuntu", "alpine", "centos", "fedora", "archlinux"]
        .into_iter()
        .find(|os| ostemplate.contains(os))
        .unwrap_or("unmanaged");
    config.insert("arch".to_string(), "amd64".to_string());
    config.insert("ostype".into(), ostype.into());
    config.insert("hostname".into(), format!("CT{vmid}"));
    config.insert("memory".into(), "512".into());
    config.insert("swap".into(), "512".into());
    let disk = std::iter::once(format!("{rootfs_storage}:vm-{vmid}-disk-0"))
        .chain(rootfs_options)
        .chain(std::iter::once(format!("size={}", format_size(rootfs_bytes))))
        .collect::<Vec<_>>()
        .join(",");
    config.insert("rootfs".into(), disk);
    // Unprivileged is the default since PVE 9.
    if params.get("unprivileged").is_none_or(|v| parse_bool(v)) {
        config.insert("unprivileged".into(), "1".into());
    }
    for (key, value) in params {
        if LXC_CONFIG_KEYS.iter().any(|p| p.name == key || p.name.strip_suffix("[n]").is_some_and(|pre| key.starts_with(pre)))
            && key != "rootfs"
        {
            let value = normalise_value(GuestKind::Lxc, key, value, &mut state);
            config.insert(key.clone(), value);
        }
    }
    let planned = Guest {
        vmid,
        kind: GuestKind::Lxc,
        elsewhere: None,
        config,
        running: false,
        started_at: None,
        ssh_public_keys: params.get("ssh-public-keys").cloned().unwrap_or_default(),
        host_keys: Vec::new(),
    };
    // pve-guest-common's create_and_lock_config writes a config holding only
    // `lock: create` before the worker forks; the worker writes hostname,
    // tags, description and the rest only once the template is extracted.
    // Until then the guest is listed with no name and no tags.
    let locked = Guest { config: [("lock".to_string(), "create".to_string())].into(), ..planned.clone() };
    state.guests.insert(vmid, locked);
    drop(state);

    let user = caller.user.clone();
    let template = ostemplate.clone();
    let upid = tasks::spawn(sim, "vzcreate", &vmid.to_string(), &caller.user, move |ctx: TaskCtx| {
        async move {
            ctx.log(format!("extracting archive '/var/lib/vz/template/cache/{}'", template.rsplit('/').next().unwrap_or("")));
            ctx.work(1.0).await;
            let sim = Arc::clone(&ctx.sim);
            ctx.injected_failure(|| {
                lock_state(&sim).guests.remove(&vmid);
            })
            .map_err(|fault| format!("unable to create CT {vmid} - {fault}"))?;
            ctx.log("Total bytes read: 524288000 (500MiB, 213MiB/s)");
            ctx.log("Detected container architecture: amd64");
            if !lock_state(&sim).guests.contains_key(&vmid) {
                return Err(format!("CT {vmid} vanished during creation"));
            }
            let boot = boot_of(&planned);
            let host_keys = match sim.machines.create_container(&boot).await {
                Ok(keys) => keys,
                Err(error) => {
                    let _ = sim.machines.destroy(vmid).await;
                    lock_state(&sim).guests.remove(&vmid);
                    return Err(format!("unable to create CT {vmid} - {error}"));
                }
            };
            // As pve-container's rewrite_ssh_host_keys prints them.
            let short_host = boot.hostname.split('.').next().unwrap_or(&boot.hostname).to_string();
            for key in &host_keys {
                ctx.log(format!("Creating SSH host key '{}' - this may take some time ...", host_key_file(key)));
                if let Some(fingerprint) = ssh_fingerprint(key) {
                    ctx.log(format!("done: {fingerprint} root@{short_host}"));
                }
            }
            {
                // The whole config at once, without the lock (PVE writes it
                // after extraction, then again after the host keys; one write
                // here keeps a start from racing the keys).
                let mut state = lock_state(&sim);
                let guest = state.guests.get_mut(&vmid).ok_or_else(|| format!("CT {vmid} vanished during creation"))?;
                guest.host_keys = host_keys;
                guest.config = planned.config;
            }
            if start_after {
                match start(&sim, GuestKind::Lxc, vmid, &user) {
                    Ok(start_upid) => ctx.log(format!("starting container: {start_upid}")),
                    Err(reply) => ctx.log(format!("unable to start container: {}", reply.message.unwrap_or_default())),
                }
            }
            Ok(())
        }
        .boxed()
    });
    Ok(json!(upid))
}

/// What the machine backend needs to create or boot the guest.
fn boot_of(guest: &Guest) -> GuestBoot {
    let keys = match guest.kind {
        GuestKind::Lxc => guest.ssh_public_keys.clone(),
        GuestKind::Qemu => guest
            .config
            .get("sshkeys")
            .map(|k| percent_encoding::percent_decode_str(k).decode_utf8_lossy().into_owned())
            .unwrap_or_default(),
    };
    GuestBoot {
        vmid: guest.vmid,
        kind: guest.kind,
        hostname: guest.name(),
        bridge: guest.bridge().unwrap_or_else(|| "vmbr0".into()),
        ip_cidr: guest.ipv4_cidr(),
        gateway: guest.gateway(),
        ssh_public_keys: keys,
        // Containers: Proxmox installs the keys for root only.
        user: match guest.kind {
            GuestKind::Lxc => "root".into(),
            GuestKind::Qemu => guest.config.get("ciuser").cloned().unwrap_or_else(|| "root".into()),
        },
    }
}

/// `ssh_host_ed25519_key` for an `ssh-ed25519 …` key.
fn host_key_file(key: &str) -> String {
    format!("ssh_host_{}_key", host_key_type(key))
}

fn host_key_type(key: &str) -> &'static str {
    match key.split_whitespace().next().unwrap_or("") {
        "ssh-ed25519" => "ed25519",
        "ssh-rsa" => "rsa",
        "ssh-dss" => "dsa",
        _ => "ecdsa",
    }
}

// ---- QEMU template and clone ----------------------------------------------------

pub fn insert_qemu_template(state: &mut State) {
    let mac = state.new_mac();
    let config: BTreeMap<String, String> = [
        ("name", QEMU_TEMPLATE_NAME.to_string()),
        ("template", "1".into()),
        ("cores", "1".into()),
        ("sockets", "1".into()),
        ("memory", "1024".into()),
        ("ostype", "l26".into()),
        ("agent", "1".into()),
        ("scsihw", "virtio-scsi-pci".into()),
        ("scsi0", format!("local-lvm:base-{QEMU_TEMPLATE_VMID}-disk-0,size=2G")),
        ("ide2", format!("local-lvm:vm-{QEMU_TEMPLATE_VMID}-cloudinit,media=cdrom")),
        ("net0", format!("virtio={mac},bridge=vmbr0")),
        ("boot", "order=scsi0".into()),
        ("serial0", "socket".into()),
        ("vga", "serial0".into()),
        ("ciuser", "debian".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    state.guests.insert(
        QEMU_TEMPLATE_VMID,
        Guest { vmid: QEMU_TEMPLATE_VMID, kind: GuestKind::Qemu, elsewhere: None, config, running: false, started_at: None, ssh_public_keys: String::new(), host_keys: Vec::new() },
    );
}

pub fn qemu_clone(sim: &Arc<Sim>, source: u32, params: &Params, caller: &Caller) -> HandlerResult {
    let clone_schema = [
        req("newid", VMID),
        opt("name", DNS_NAME),
        opt("full", BOOL),
        opt("storage", STORAGE_ID),
        opt("target", NODE),
        opt("pool", TEXT),
        opt("description", TEXT),
        opt("snapname", TEXT),
        opt("format", Ty::Enum(&["raw", "qcow2", "vmdk"])),
        opt("bwlimit", Ty::Int { min: 0, max: i64::MAX }),
    ];
    check(&clone_schema, params).map_err(Reply::params)?;
    let newid: u32 = params["newid"].parse().map_err(|_| Reply::param("newid", "type check ('integer') failed"))?;
    if let Some(target) = params.get("target").filter(|t| **t != sim.opts.node) {
        return Err(Reply::fail(format!("no such cluster node '{target}'")));
    }
    if let Some(storage) = params.get("storage").filter(|s| **s != "local-lvm") {
        return Err(Reply::fail(format!("storage '{storage}' does not exist or does not support images")));
    }
    {
        let mut state = lock_state(sim);
        let source_guest = guest_mut(sim, &mut state, GuestKind::Qemu, source)?;
        let full = params.get("full").is_some_and(|f| parse_bool(f));
        if !source_guest.is_template() && !full {
            return Err(Reply::fail("Linked clone feature is not supported for drive 'scsi0'"));
        }
        if state.guests.contains_key(&newid) {
            return Err(Reply::fail(format!("unable to create VM {newid}: config file already exists")));
        }
        room_for_a_guest(sim, &state)?;
    }
    let name = params.get("name").cloned();
    let description = params.get("description").cloned();
    let upid = tasks::spawn(sim, "qmclone", &source.to_string(), &caller.user, move |ctx: TaskCtx| {
        async move {
            let sim = Arc::clone(&ctx.sim);
            // The source config stays locked for the whole copy (qemu-server's
            // 1 s flock timeout): parallel clones of one template time out here.
            let _source_lock = sim.file_locks.lock(GuestKind::Qemu, source, Duration::from_secs(1)).await?;
            {
                let mut state = lock_state(&sim);
                if state.guests.contains_key(&newid) {
                    return Err(format!("unable to create VM {newid}: config file already exists"));
                }
                let placeholder: BTreeMap<String, String> = [("lock".to_string(), "clone".to_string())].into();
                state.guests.insert(
                    newid,
                    Guest { vmid: newid, kind: GuestKind::Qemu, elsewhere: None, config: placeholder, running: false, started_at: None, ssh_public_keys: String::new(), host_keys: Vec::new() },
                );
            }
            ctx.log(format!("create full clone of drive scsi0 (local-lvm:base-{source}-disk-0)"));
            ctx.work(1.0).await;
            ctx.injected_failure(|| {
                lock_state(&sim).guests.remove(&newid);
            })
            .map_err(|fault| format!("clone failed: {fault}"))?;
            let mut state = lock_state(&sim);
            let Some(source_config) = state.guests.get(&source).map(|g| g.config.clone()) else {
                state.guests.remove(&newid);
                return Err(format!("clone failed: VM {source} vanished"));
            };
            let mut config = BTreeMap::new();
            for (key, value) in source_config {
                let value = match key.as_str() {
                    "template" | "lock" => continue,
                    "name" => name.clone().unwrap_or_else(|| format!("Copy-of-VM-{value}")),
                    k if k.starts_with("net") => {
                        let model_mac = value.split(',').next().unwrap_or("virtio");
                        let model = model_mac.split('=').next().unwrap_or("virtio");
                        let rest: Vec<&str> = value.split(',').skip(1).collect();
                        std::iter::once(format!("{model}={}", state.new_mac())).chain(rest.into_iter().map(str::to_string)).collect::<Vec<_>>().join(",")
                    }
                    _ if value.contains("-cloudinit") => {
                        format!("local-lvm:vm-{newid}-cloudinit,media=cdrom")
                    }
                    k if (k.starts_with("scsi") || k.starts_with("virtio") || k.starts_with("sata")) && value.contains("-disk-") => {
                        let size = volume_size(&value).unwrap_or(2 << 30);
                        format!("local-lvm:vm-{newid}-disk-0,size={}", format_size(size))
                    }
                    _ => value,
                };
                config.insert(key, value);
            }
            if let Some(description) = &description {
                config.insert("description".into(), description.clone());
            }
            match state.guests.get_mut(&newid) {
                Some(guest) => guest.config = config,
                None => return Err(format!("clone failed: VM {newid} vanished")),
            }
            Ok(())
        }
        .boxed()
    });
    Ok(json!(upid))
}

// ---- config ------------------------------------------------------------------------

pub fn get_config(sim: &Sim, kind: GuestKind, vmid: u32, params: &Params) -> HandlerResult {
    let schema = [opt("current", BOOL), opt("snapshot", TEXT)];
    check(&schema, params).map_err(Reply::params)?;
    let mut state = lock_state(sim);
    let guest = guest_mut(sim, &mut state, kind, vmid)?;
    Ok(render_config(guest))
}

/// PUT (synchronous) or, for QEMU, POST (a `qmconfig` task).
pub fn update_config(sim: &Arc<Sim>, kind: GuestKind, vmid: u32, params: &Params, caller: &Caller, as_task: bool) -> HandlerResult {
    let keys = if kind == GuestKind::Lxc { LXC_CONFIG_KEYS } else { QEMU_CONFIG_KEYS };
    check(&schema(&[keys, UPDATE_ONLY]), params).map_err(Reply::params)?;
    let mut state = lock_state(sim);
    let guest = match state.guests.get(&vmid) {
        Some(g) if g.kind == kind => g.clone(),
        _ => return Err(missing(sim, kind, vmid)),
    };
    if !params.get("skiplock").is_some_and(|s| parse_bool(s)) {
        guest.check_unlocked().map_err(Reply::fail)?;
    }
    if params.get("digest").is_some_and(|d| *d != digest(&guest.config)) {
        return Err(Reply::fail("detected modified configuration - file changed by other user? Try again."));
    }
    if params.contains_key("rootfs") {
        return Err(Reply::fail("unable to modify read-only option: 'rootfs'"));
    }
    let mut config = guest.config.clone();
    for (key, value) in params {
        if matches!(key.as_str(), "delete" | "digest" | "revert" | "skiplock") {
            continue;
        }
        let value = normalise_value(kind, key, value, &mut state);
        config.insert(key.clone(), value);
    }
    if let Some(delete) = params.get("delete") {
        for key in split_tags(delete) {
            if !keys.iter().any(|p| p.name == key || p.name.strip_suffix("[n]").is_some_and(|pre| key.starts_with(pre))) {
                return Err(Reply::param("delete", format!("invalid format - unable to delete '{key}' - unknown option")));
            }
            config.remove(key);
        }
    }
    if let Some(guest) = state.guests.get_mut(&vmid) {
        guest.config = config;
    }
    drop(state);
    if as_task {
        let upid = tasks::spawn(sim, "qmconfig", &vmid.to_string(), &caller.user, |_ctx| async { Ok(()) }.boxed());
        Ok(json!(upid))
    } else {
        Ok(Value::Null)
    }
}

pub fn resize(sim: &Arc<Sim>, kind: GuestKind, vmid: u32, params: &Params, caller: &Caller) -> HandlerResult {
    let schema = [req("disk", TEXT), req("size", Ty::Format(disk_size)), opt("digest", TEXT), opt("skiplock", BOOL)];
    check(&schema, params).map_err(Reply::params)?;
    let disk = params["disk"].clone();
    let size = params["size"].clone();
    let new_bytes = {
        let mut state = lock_state(sim);
        let guest = guest_mut(sim, &mut state, kind, vmid)?;
        guest.check_unlocked().map_err(Reply::fail)?;
        let Some(volume) = guest.config.get(&disk) else {
            return Err(Reply::param("disk", format!("invalid format - disk '{disk}' does not exist")));
        };
        let current = volume_size(volume).unwrap_or(0);
        let requested = size_bytes(&size).unwrap_or(0);
        let new_bytes = if size.starts_with('+') { current + requested } else { requested };
        if new_bytes < current {
            let message = if kind == GuestKind::Lxc { "unable to shrink disk size" } else { "shrinking disks is not supported" };
            return Err(Reply::fail(message));
        }
        new_bytes
    };
    let upid = tasks::spawn(sim, "resize", &vmid.to_string(), &caller.user, move |ctx: TaskCtx| {
        async move {
            ctx.work(0.3).await;
            ctx.injected_failure(|| {})?;
            let mut state = lock_state(&ctx.sim);
            let guest = state.guests.get_mut(&vmid).ok_or_else(|| format!("VM {vmid} vanished"))?;
            let volume = guest.config.get(&disk).cloned().ok_or_else(|| format!("disk '{disk}' vanished"))?;
            guest.config.insert(disk.clone(), with_volume_size(&volume, new_bytes));
            Ok(())
        }
        .boxed()
    });
    Ok(json!(upid))
}

// ---- status -----------------------------------------------------------------------------

pub fn status_current(sim: &Sim, kind: GuestKind, vmid: u32) -> HandlerResult {
    let mut state = lock_state(sim);
    let guest = guest_mut(sim, &mut state, kind, vmid)?;
    let mut status = resource_entry(&sim.opts.node, guest);
    if let Some(map) = status.as_object_mut() {
        map.remove("id");
        map.remove("node");
        map.insert("cpus".into(), map.get("maxcpu").cloned().unwrap_or(json!(1)));
        map.insert("ha".into(), json!({ "managed": 0 }));
        if kind == GuestKind::Qemu {
            map.insert("qmpstatus".into(), json!(if guest.running { "running" } else { "stopped" }));
            map.insert("agent".into(), json!(1));
        } else {
            map.insert("maxswap".into(), json!(512u64 << 20));
        }
    }
    Ok(status)
}

/// `--quota guests=N`: the node holds at most N guests (templates aside).
fn room_for_a_guest(sim: &Sim, state: &State) -> Result<(), Reply> {
    let Some(limit) = sim.opts.limits.guests else { return Ok(()) };
    let held = state.guests.values().filter(|g| !g.is_template()).count() as u64;
    if held >= limit {
        return Err(Reply::fail(format!("node '{}' holds {held} guests, its limit (simulator quota guests={limit}) — raise it with --quota guests=N", sim.opts.node)));
    }
    Ok(())
}

/// Whether the node can run `vmid` next to the guests already running
/// (`--quota node.cores`, `node.memory`); the task's error when not.
fn fits_the_node(sim: &Sim, state: &State, vmid: u32) -> Result<(), String> {
    let limits = &sim.opts.limits;
    let Some(guest) = state.guests.get(&vmid) else { return Ok(()) };
    let cores: u64 = guest.config.get("cores").and_then(|c| c.parse().ok()).unwrap_or(1);
    if cores > limits.cores {
        return Err(format!("MAX {} vcpus allowed per VM on this node", limits.cores));
    }
    let others: u64 = state.guests.values().filter(|g| g.running && g.vmid != vmid).map(Guest::memory_mb).sum();
    if others + guest.memory_mb() > limits.memory_mib {
        return Err(format!(
            "Cannot allocate memory: {} MiB asked, {} MiB of the node's {} MiB free (simulator quota node.memory)",
            guest.memory_mb(),
            limits.memory_mib.saturating_sub(others),
            limits.memory_mib
        ));
    }
    Ok(())
}

/// Start a guest: synchronous checks, then a `vzstart`/`qmstart` task.
fn start(sim: &Arc<Sim>, kind: GuestKind, vmid: u32, user: &str) -> Result<String, Reply> {
    {
        let mut state = lock_state(sim);
        let guest = guest_mut(sim, &mut state, kind, vmid)?;
        guest.check_unlocked().map_err(Reply::fail)?;
        if guest.is_template() {
            return Err(Reply::fail("you can't start a vm if it's a template"));
        }
        if guest.running {
            return Err(Reply::fail(format!("{} {vmid} already running", kind.noun())));
        }
    }
    let worker = if kind == GuestKind::Lxc { "vzstart" } else { "qmstart" };
    Ok(tasks::spawn(sim, worker, &vmid.to_string(), user, move |ctx: TaskCtx| {
        async move {
            ctx.work(0.5).await;
            ctx.injected_failure(|| {}).map_err(|fault| match kind {
                GuestKind::Lxc => format!("startup for container '{vmid}' failed: {fault}"),
                GuestKind::Qemu => format!("start failed: {fault}"),
            })?;
            let boot = {
                let state = lock_state(&ctx.sim);
                let guest = state.guests.get(&vmid).ok_or_else(|| format!("{} {vmid} does not exist", kind.noun()))?;
                if guest.running {
                    return Err(format!("{} {vmid} already running", kind.noun()));
                }
                fits_the_node(&ctx.sim, &state, vmid).map_err(|why| match kind {
                    GuestKind::Lxc => format!("startup for container '{vmid}' failed: {why}"),
                    GuestKind::Qemu => format!("start failed: {why}"),
                })?;
                boot_of(guest)
            };
            let host_keys = ctx.sim.machines.start(&boot).await?;
            let mut state = lock_state(&ctx.sim);
            let guest = state.guests.get_mut(&vmid).ok_or_else(|| format!("{} {vmid} vanished", kind.noun()))?;
            // Host keys are made once (at creation, or a VM's first boot).
            if guest.host_keys.is_empty() {
                guest.host_keys = host_keys;
            }
            guest.running = true;
            guest.started_at = Some(Instant::now());
            Ok(())
        }
        .boxed()
    }))
}

fn stop(sim: &Arc<Sim>, kind: GuestKind, vmid: u32, user: &str, graceful: bool) -> Result<String, Reply> {
    {
        let mut state = lock_state(sim);
        let guest = guest_mut(sim, &mut state, kind, vmid)?;
        guest.check_unlocked().map_err(Reply::fail)?;
        if !guest.running {
            return Err(Reply::fail(format!("{} {vmid} not running", kind.noun())));
        }
    }
    let worker = match (kind, graceful) {
        (GuestKind::Lxc, false) => "vzstop",
        (GuestKind::Lxc, true) => "vzshutdown",
        (GuestKind::Qemu, false) => "qmstop",
        (GuestKind::Qemu, true) => "qmshutdown",
    };
    Ok(tasks::spawn(sim, worker, &vmid.to_string(), user, move |ctx: TaskCtx| {
        async move {
            ctx.work(if graceful { 0.5 } else { 0.2 }).await;
            ctx.injected_failure(|| {})?;
            ctx.sim.machines.stop(vmid).await?;
            if let Some(guest) = lock_state(&ctx.sim).guests.get_mut(&vmid) {
                guest.running = false;
                guest.started_at = None;
            }
            Ok(())
        }
        .boxed()
    }))
}

pub fn status_action(sim: &Arc<Sim>, kind: GuestKind, vmid: u32, action: &str, params: &Params, caller: &Caller) -> HandlerResult {
    let schema = [opt("skiplock", BOOL), opt("timeout", Ty::Int { min: 0, max: 86400 }), opt("forceStop", BOOL), opt("overrule-shutdown", BOOL)];
    check(&schema, params).map_err(Reply::params)?;
    let upid = match action {
        "start" => start(sim, kind, vmid, &caller.user)?,
        "stop" => stop(sim, kind, vmid, &caller.user, false)?,
        "shutdown" => stop(sim, kind, vmid, &caller.user, true)?,
        other => return Err(Reply::error(501, format!("Method 'POST /nodes/{}/{}/{vmid}/status/{other}' not implemented", sim.opts.node, kind.as_str()))),
    };
    Ok(json!(upid))
}

pub fn destroy(sim: &Arc<Sim>, kind: GuestKind, vmid: u32, params: &Params, caller: &Caller) -> HandlerResult {
    let schema = [opt("purge", BOOL), opt("destroy-unreferenced-disks", BOOL), opt("force", BOOL), opt("skiplock", BOOL)];
    check(&schema, params).map_err(Reply::params)?;
    {
        let mut state = lock_state(sim);
        let guest = guest_mut(sim, &mut state, kind, vmid)?;
        guest.check_unlocked().map_err(Reply::fail)?;
        if guest.running {
            return Err(Reply::fail(match kind {
                GuestKind::Lxc => format!("unable to destroy CT {vmid} - container is running"),
                GuestKind::Qemu => format!("VM {vmid} is running - destroy failed"),
            }));
        }
        guest.config.insert("lock".into(), "destroyed".into());
    }
    let worker = if kind == GuestKind::Lxc { "vzdestroy" } else { "qmdestroy" };
    let upid = tasks::spawn(sim, worker, &vmid.to_string(), &caller.user, move |ctx: TaskCtx| {
        async move {
            ctx.work(0.5).await;
            let sim = Arc::clone(&ctx.sim);
            ctx.injected_failure(|| {
                if let Some(guest) = lock_state(&sim).guests.get_mut(&vmid) {
                    guest.config.remove("lock");
                }
            })?;
            ctx.sim.machines.destroy(vmid).await?;
            ctx.log(format!("Logical volume \"vm-{vmid}-disk-0\" successfully removed."));
            lock_state(&ctx.sim).guests.remove(&vmid);
            Ok(())
        }
        .boxed()
    });
    Ok(json!(upid))
}

// ---- addresses ------------------------------------------------------------------------------

pub fn lxc_interfaces(sim: &Sim, vmid: u32) -> HandlerResult {
    let mut state = lock_state(sim);
    let guest = guest_mut(sim, &mut state, GuestKind::Lxc, vmid)?;
    if !guest.running {
        return Ok(Value::Null);
    }
    let mut interfaces = vec![json!({ "name": "lo", "hwaddr": "00:00:00:00:00:00", "inet": "127.0.0.1/8", "inet6": "::1/128" })];
    let mut eth0 = json!({ "name": "eth0", "hwaddr": guest.hwaddr().unwrap_or_default() });
    if let Some(cidr) = guest.ipv4_cidr() {
        eth0["inet"] = json!(cidr);
    }
    interfaces.push(eth0);
    Ok(Value::Array(interfaces))
}

/// The guest agent answers only in a running VM that has it enabled, a while after boot.
fn check_agent(sim: &Sim, guest: &Guest) -> Result<(), Reply> {
    if !guest.running {
        return Err(Reply::fail(format!("VM {} is not running", guest.vmid)));
    }
    let agent_enabled = guest.config.get("agent").is_some_and(|a| a.starts_with('1') || a.contains("enabled=1"));
    if !agent_enabled {
        return Err(Reply::fail("No QEMU guest agent configured"));
    }
    let agent_up = guest.started_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(sim.opts.agent_delay_ms));
    if !agent_up {
        return Err(Reply::fail("QEMU guest agent is not running"));
    }
    Ok(())
}

/// `GET …/agent/file-read?file=…`: the simulated guest's files are its SSH
/// host public keys; anything else does not exist.
pub fn agent_file_read(sim: &Sim, vmid: u32, params: &Params) -> HandlerResult {
    check(&[req("file", Ty::Str { max_len: 4096 })], params).map_err(Reply::params)?;
    let file = &params["file"];
    let mut state = lock_state(sim);
    let guest = guest_mut(sim, &mut state, GuestKind::Qemu, vmid)?;
    check_agent(sim, guest)?;
    let short_host = guest.name().split('.').next().unwrap_or_default().to_string();
    let content = guest
        .host_keys
        .iter()
        .find(|key| *file == format!("/etc/ssh/{}.pub", host_key_file(key)))
        .map(|key| format!("{key} root@{short_host}\n"));
    match content {
        Some(content) => Ok(json!({ "content": content })),
        None => Err(Reply::fail(format!("Agent error: Failed to open file '{file}': No such file or directory"))),
    }
}

pub fn agent_interfaces(sim: &Sim, vmid: u32) -> HandlerResult {
    let mut state = lock_state(sim);
    let guest = guest_mut(sim, &mut state, GuestKind::Qemu, vmid)?;
    check_agent(sim, guest)?;
    let mut result = vec![json!({
        "name": "lo", "hardware-address": "00:00:00:00:00:00",
        "ip-addresses": [{ "ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8 }],
    })];
    let mut addresses = Vec::new();
    if let Some((ip, prefix)) = guest.ipv4_cidr().and_then(|c| cidr_v4(&c).ok()) {
        addresses.push(json!({ "ip-address": ip.to_string(), "ip-address-type": "ipv4", "prefix": prefix }));
    }
    result.push(json!({ "name": "eth0", "hardware-address": guest.hwaddr().unwrap_or_default().to_lowercase(), "ip-addresses": addresses }));
    Ok(json!({ "result": result }))
}

/// `SHA256:<base64, no padding>` of a public key line, as `ssh-keygen -l -E sha256`
/// prints it. The simulator writes its own rather than borrow the provider's
/// reader: a mistake shared by both sides would pass unseen.
fn ssh_fingerprint(key_line: &str) -> Option<String> {
    use base64::Engine;
    let blob = key_line.split_whitespace().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(blob).ok()?;
    Some(format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(bytes))))
}
