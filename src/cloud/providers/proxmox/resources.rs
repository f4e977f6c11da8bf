//! The plan in Proxmox's terms, and live guest config back into the same
//! attributes, both normalised the way the node stores config (net0 keys in any
//! order, `hwaddr`/`type` ignored, tags lower-cased/sorted/`;`-joined, disks as
//! sizes) so a re-plan after apply shows no change.
//!
//! Proxmox keeps no record of an LXC container's `ostemplate` or
//! `ssh-public-keys`, nor of the template a VM was cloned from: rigger writes
//! them into the guest's `description` (a `rigger-…:` line each) so refresh can
//! compare them even without a state file.

use crate::plan::model::{GuestKind, Host, Plan, ProxmoxConfig};
use crate::cloud::resource::{Address, Attrs, Kind, LiveResource, ResourceSpec};
use anyhow::{bail, Context, Result};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub const RIGGER_TAG: &str = "rigger";
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A project name as a Proxmox tag (`[a-z0-9_][a-z0-9_+.-]*`).
pub fn project_tag(project: &str) -> String {
    let mut tag: String = project
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.') { c } else { '-' })
        .collect();
    if !tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        tag.insert(0, '_');
    }
    tag
}

/// Tags the way the node stores them.
pub fn normalise_tags(raw: &str) -> String {
    let tags: BTreeSet<String> = raw.split([';', ',', ' ']).filter(|t| !t.is_empty()).map(str::to_ascii_lowercase).collect();
    tags.into_iter().collect::<Vec<_>>().join(";")
}

pub fn project_tags(project: &str) -> String {
    normalise_tags(&format!("{RIGGER_TAG};{}", project_tag(project)))
}

/// Both `rigger` and the project's tag are present.
pub fn owned_by(tags: Option<&str>, project: &str) -> bool {
    let tags = normalise_tags(tags.unwrap_or(""));
    let set: BTreeSet<&str> = tags.split(';').collect();
    set.contains(RIGGER_TAG) && set.contains(project_tag(project).as_str())
}

/// Public keys: trimmed lines, blank lines dropped.
pub fn normalise_keys(keys: &str) -> String {
    keys.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

/// Cloud-init `sshkeys` must be URL-encoded with `%20`, not `+`.
const SSHKEYS_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

pub fn encode_sshkeys(keys: &str) -> String {
    utf8_percent_encode(keys, SSHKEYS_ENCODE).to_string()
}

pub fn decode_sshkeys(encoded: &str) -> String {
    normalise_keys(&percent_decode_str(encoded).decode_utf8_lossy())
}

// ---- description metadata ------------------------------------------------------

/// Create-only inputs Proxmox does not keep, recorded in the description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub project: Option<String>,
    /// LXC `ostemplate` or the QEMU template VM (as the plan named it).
    pub template: Option<String>,
    pub ssh_public_keys: Option<String>,
}

impl Meta {
    pub fn render(&self) -> String {
        let mut out = String::from("Managed by rigger; do not edit the rigger- lines.\n");
        if let Some(p) = &self.project {
            out.push_str(&format!("rigger-project: {p}\n"));
        }
        if let Some(t) = &self.template {
            out.push_str(&format!("rigger-template: {t}\n"));
        }
        if let Some(k) = &self.ssh_public_keys {
            out.push_str(&format!("rigger-ssh-public-keys: {}\n", encode_sshkeys(k)));
        }
        out
    }

    pub fn parse(description: &str) -> Meta {
        let mut meta = Meta::default();
        for line in description.lines() {
            if let Some(v) = line.strip_prefix("rigger-project: ") {
                meta.project = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("rigger-template: ") {
                meta.template = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("rigger-ssh-public-keys: ") {
                meta.ssh_public_keys = Some(decode_sshkeys(v.trim()));
            }
        }
        meta
    }
}

// ---- specs -------------------------------------------------------------------------

pub fn size_text(bytes: u64) -> String {
    format!("{}G", bytes.div_ceil(GIB).max(1))
}

/// `8G`, `2560M`, `+2G` → bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().trim_start_matches('+');
    let (number, unit) = match text.chars().last()? {
        'K' => (&text[..text.len() - 1], 1u64 << 10),
        'M' => (&text[..text.len() - 1], MIB),
        'G' => (&text[..text.len() - 1], GIB),
        'T' => (&text[..text.len() - 1], 1 << 40),
        _ => (text, 1),
    };
    number.parse::<f64>().ok().map(|n| (n * unit as f64) as u64)
}

/// A volume's size normalised to whole GiB where possible (`8G`).
fn volume_size_text(volume: &str) -> Option<String> {
    let bytes = volume.split(',').find_map(|p| p.strip_prefix("size=")).and_then(parse_size)?;
    Some(if bytes % GIB == 0 { format!("{}G", bytes / GIB) } else { format!("{}M", bytes.div_ceil(MIB)) })
}

fn volume_storage(volume: &str) -> Option<String> {
    volume.split(',').next()?.split_once(':').map(|(s, _)| s.to_string())
}

pub fn guest_kind_str(kind: GuestKind) -> &'static str {
    match kind {
        GuestKind::Lxc => "lxc",
        GuestKind::Qemu => "qemu",
    }
}

/// The spec of one machine.
pub fn machine_spec(plan: &Plan, cfg: &ProxmoxConfig, host: &Host, ssh_keys: &str) -> Result<ResourceSpec> {
    let subnet = plan
        .subnet(&host.subnet)
        .with_context(|| format!("host {} names subnet {:?}, which the plan does not define", host.name, host.subnet))?;
    let mut attrs = Attrs::new();
    let kind = guest_kind_str(host.guest_kind);
    attrs.insert("kind".into(), json!(kind));
    if let Some(vmid) = host.vmid {
        if !(100..=999_999_999).contains(&vmid) {
            bail!("host {}: vmid {vmid} is outside Proxmox's range 100–999999999", host.name);
        }
        attrs.insert("vmid".into(), json!(vmid));
    }
    attrs.insert("hostname".into(), json!(host.name));
    attrs.insert("cores".into(), json!(host.cores.max(1)));
    // The loader refuses less than PVE's minimum: a plan's size is never raised quietly.
    let memory = host.memory_bytes.div_ceil(MIB);
    if memory < super::rules::MIN_MEMORY_MIB {
        bail!("host {}: memory {memory} MiB is below Proxmox's minimum of {} MiB", host.name, super::rules::MIN_MEMORY_MIB);
    }
    attrs.insert("memory".into(), json!(memory));
    attrs.insert("storage".into(), json!(cfg.storage));
    attrs.insert("disk".into(), json!(size_text(host.disk_bytes)));
    attrs.insert("bridge".into(), json!(cfg.bridge));
    attrs.insert("ip".into(), json!(format!("{}/{}", host.ip, subnet.cidr.prefix_len())));
    attrs.insert("gateway".into(), json!(subnet.gateway.to_string()));
    attrs.insert("tags".into(), json!(project_tags(&plan.project)));
    attrs.insert("onboot".into(), json!(1));
    attrs.insert("ssh_public_keys".into(), json!(normalise_keys(ssh_keys)));
    // What the GUI shows: a stopped guest is started in place; a guest whose
    // creation was interrupted (its `create`/`clone` lock held by no task) is
    // replaced, and the plan shows that lock as the reason.
    attrs.insert("status".into(), json!("running"));
    attrs.insert("lock".into(), Value::Null);
    let mut replace_on: BTreeSet<String> = ["kind", "vmid", "storage", "ip", "lock"].into_iter().map(String::from).collect();
    match host.guest_kind {
        GuestKind::Lxc => {
            attrs.insert("template".into(), json!(cfg.template));
            attrs.insert("unprivileged".into(), json!(1));
            // systemd inside an unprivileged container needs nesting.
            attrs.insert("features".into(), json!("nesting=1"));
            // LXC keys are written once, at creation.
            replace_on.extend(["template", "unprivileged", "ssh_public_keys"].map(String::from));
        }
        GuestKind::Qemu => {
            attrs.insert("template".into(), json!(host.image));
            attrs.insert("ciuser".into(), json!(plan.ssh.user));
            replace_on.insert("template".into());
        }
    }
    Ok(ResourceSpec { address: Address::new(Kind::Machine, &host.name), depends_on: vec![], attrs, replace_on, sensitive: BTreeSet::new() })
}

// ---- live --------------------------------------------------------------------------

fn property_map(value: &str) -> BTreeMap<String, String> {
    value.split(',').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn config_str(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn config_u64(config: &Value, key: &str) -> Option<u64> {
    config_str(config, key).and_then(|s| s.split(',').next().and_then(|n| n.trim().parse().ok()))
}

/// A guest's config (from `GET …/config`) as attributes and outputs;
/// `stale_lock` is a lock an interrupted creation left (see `locks.rs`).
pub fn live_machine(kind: &str, vmid: u64, node: &str, status: &str, stale_lock: Option<&str>, config: &Value) -> Option<LiveResource> {
    let name_key = if kind == "lxc" { "hostname" } else { "name" };
    let hostname = config_str(config, name_key)?;
    let meta = Meta::parse(&config_str(config, "description").unwrap_or_default());
    let mut attrs = Attrs::new();
    attrs.insert("kind".into(), json!(kind));
    attrs.insert("vmid".into(), json!(vmid));
    attrs.insert("hostname".into(), json!(hostname));
    if let Some(cores) = config_u64(config, "cores") {
        attrs.insert("cores".into(), json!(cores));
    }
    attrs.insert("memory".into(), json!(config_u64(config, "memory").unwrap_or(512)));
    let disk_key = if kind == "lxc" { "rootfs" } else { "scsi0" };
    if let Some(volume) = config_str(config, disk_key) {
        if let Some(storage) = volume_storage(&volume) {
            attrs.insert("storage".into(), json!(storage));
        }
        if let Some(size) = volume_size_text(&volume) {
            attrs.insert("disk".into(), json!(size));
        }
    }
    let net = config_str(config, "net0").map(|n| property_map(&n)).unwrap_or_default();
    if let Some(bridge) = net.get("bridge") {
        attrs.insert("bridge".into(), json!(bridge));
    }
    let addressing = if kind == "lxc" { net.clone() } else { config_str(config, "ipconfig0").map(|v| property_map(&v)).unwrap_or_default() };
    if let Some(ip) = addressing.get("ip") {
        attrs.insert("ip".into(), json!(ip));
    }
    if let Some(gw) = addressing.get("gw") {
        attrs.insert("gateway".into(), json!(gw));
    }
    attrs.insert("tags".into(), json!(normalise_tags(&config_str(config, "tags").unwrap_or_default())));
    attrs.insert("onboot".into(), json!(config_u64(config, "onboot").unwrap_or(0)));
    attrs.insert("status".into(), json!(status));
    attrs.insert("lock".into(), stale_lock.map_or(Value::Null, |l| json!(l)));
    if let Some(template) = &meta.template {
        attrs.insert("template".into(), json!(template));
    }
    if kind == "lxc" {
        attrs.insert("unprivileged".into(), json!(config_u64(config, "unprivileged").unwrap_or(0)));
        let features = config_str(config, "features").map(|f| {
            let map = property_map(&f);
            map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
        });
        attrs.insert("features".into(), json!(features.unwrap_or_default()));
        if let Some(keys) = &meta.ssh_public_keys {
            attrs.insert("ssh_public_keys".into(), json!(keys));
        }
    } else {
        if let Some(user) = config_str(config, "ciuser") {
            attrs.insert("ciuser".into(), json!(user));
        }
        attrs.insert("ssh_public_keys".into(), json!(config_str(config, "sshkeys").map(|k| decode_sshkeys(&k)).unwrap_or_default()));
    }
    let mut outputs = Attrs::new();
    let ip = addressing.get("ip").and_then(|cidr| cidr.split_once('/')).map(|(ip, _)| ip.to_string());
    if let Some(ip) = ip {
        outputs.insert("ssh_host".into(), json!(ip));
        outputs.insert("private_ip".into(), json!(ip));
    }
    outputs.insert("vmid".into(), json!(vmid));
    outputs.insert("node".into(), json!(node));
    outputs.insert("status".into(), json!(status));
    Some(LiveResource { address: Address::new(Kind::Machine, hostname), id: vmid.to_string(), attrs, outputs })
}

/// `name=eth0,bridge=…,ip=…,gw=…` for a new container.
pub fn lxc_net0(bridge: &str, ip: &str, gateway: &str) -> String {
    format!("name=eth0,bridge={bridge},ip={ip},gw={gateway}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_lxc_config_reads_back_as_planned_attrs() {
        let meta = Meta { project: Some("Pg HA".into()), template: Some("local:vztmpl/x.tar.zst".into()), ssh_public_keys: Some("ssh-ed25519 AAAA me@host".into()) };
        let config = json!({
            "hostname": "pg-1", "cores": 2, "memory": 2048, "onboot": 1, "unprivileged": 1,
            "features": "nesting=1", "tags": "pg-ha;rigger",
            "rootfs": "local-lvm:vm-101-disk-0,size=8G",
            "net0": "name=eth0,bridge=vmbr0,gw=192.168.50.1,hwaddr=BC:24:11:00:00:01,ip=192.168.50.21/24,type=veth",
            "description": meta.render(),
        });
        let live = live_machine("lxc", 101, "pve", "running", None, &config).unwrap();
        assert_eq!(live.attrs["ip"], json!("192.168.50.21/24"));
        assert_eq!(live.attrs["gateway"], json!("192.168.50.1"));
        assert_eq!(live.attrs["disk"], json!("8G"));
        assert_eq!(live.attrs["tags"], json!(project_tags("Pg HA")));
        assert_eq!(live.attrs["ssh_public_keys"], json!("ssh-ed25519 AAAA me@host"));
        assert_eq!(live.output_str("ssh_host"), Some("192.168.50.21"));
        assert!(owned_by(Some("RIGGER;pg-ha"), "Pg HA"));
        assert!(!owned_by(Some("pg-ha"), "Pg HA"));
    }

    #[test]
    fn sshkeys_use_percent_twenty() {
        let encoded = encode_sshkeys("ssh-ed25519 AAAA+b/c= me@host");
        assert!(encoded.contains("%20") && !encoded.contains('+'));
        assert_eq!(decode_sshkeys(&encoded), "ssh-ed25519 AAAA+b/c= me@host");
    }
}
