//! Proxmox VE's plan rules: the `provider:` block, the default template, and
//! the host keys only Proxmox reads — `vmid` (the guest's number) and `kind`
//! (an LXC container or a QEMU VM).

use crate::plan::diag::{suggestion, Diags};
use crate::plan::model::{GuestKind, ProviderConfig};
use crate::plan::read::{At, HostDefaults, HostEntry, Reader};
use crate::plan::yaml::Node;
use crate::cloud::providers::rules::PlanRules;
use serde::Serialize;

/// The plan's `provider:` block for Proxmox VE, as `read_block` reads it.
#[derive(Debug, Clone, Serialize)]
pub struct ProxmoxConfig {
    pub endpoint: Option<String>,
    pub node: String,
    pub token_id: Option<String>,
    pub tls_fingerprint: Option<String>,
    pub insecure: bool,
    pub storage: String,
    pub bridge: String,
    pub template: String,
}

const BLOCK_KEYS: &[&str] = &["kind", "endpoint", "node", "token_id", "tls_fingerprint", "insecure", "storage", "bridge", "template"];

pub struct ProxmoxRules;

/// PVE's VMID range (apidata: pve-vmid, 100 - 999999999).
pub const MIN_VMID: i64 = 100;
pub const MAX_VMID: u32 = 999_999_999;
/// The least memory PVE gives a container or a VM (apidata: memory, minimum 16 MiB).
pub const MIN_MEMORY_MIB: u64 = 16;

/// A new guest volume's size unit: PVE allocates `STORAGE_ID:SIZE_IN_GiB`
/// (apidata: rootfs, scsi[n]), and a disk is resized in whole G too.
const GIB: u64 = 1 << 30;

/// What one entry's guests must be for PVE to create them as the plan says.
fn check_guest(h: &HostEntry, defaults: &HostDefaults, d: &mut Diags) {
    let memory = h.memory(defaults);
    if memory < MIN_MEMORY_MIB << 20 {
        let pos = h.memory.as_ref().map_or(h.name.pos, |m| m.pos);
        d.error(pos, format!("host `{}` asks for {memory} bytes of memory, below Proxmox's minimum of {MIN_MEMORY_MIB}MiB — give it at least 512MiB", h.name.v));
    }
    // Anything else would be rounded up to the next GiB (at least 1) without a word.
    let disk = h.disk(defaults);
    if disk % GIB != 0 {
        let (pos, from) = match &h.disk {
            Some(at) => (at.pos, String::new()),
            None => (h.name.pos, " (from defaults.disk)".to_string()),
        };
        let whole = disk.div_ceil(GIB).max(1);
        d.error(
            pos,
            format!("host `{}`: a disk of {}{from} is not a whole number of GiB, and Proxmox makes a guest's disk in whole GiB (STORAGE_ID:SIZE_IN_GiB), so it would become {whole}GiB — write `disk: {whole}GiB` (or another whole GiB)", h.name.v, crate::plan::size::format_size(disk)),
        );
    }
    match h.guest_kind() {
        // A VM is cloned from a template VM (its name or VMID); a container
        // template (a storage volume, `local:vztmpl/…`) cannot be cloned.
        GuestKind::Qemu if h.image(defaults).contains(':') => {
            let pos = h.image.as_ref().map(|i| i.pos).or(h.kind.as_ref().map(|k| k.pos)).unwrap_or(h.name.pos);
            d.error(pos, format!("host `{}` is a QEMU VM, but its image `{}` is a container template — set `image:` to a QEMU template VM's name or VMID, e.g. debian-12-cloudinit", h.name.v, h.image(defaults)));
        }
        // Containers are created from provider.template; a host's image would be ignored.
        GuestKind::Lxc => {
            if let Some(i) = &h.image {
                d.error(i.pos, format!("host `{}` is an LXC container, which is created from provider.template — remove `image` here (or set `kind: qemu` to clone a VM template)", h.name.v));
            }
        }
        GuestKind::Qemu => {}
    }
}

impl PlanRules for ProxmoxRules {
    fn kind(&self) -> &'static str {
        "proxmox"
    }

    fn read_block(&self, node: &Node, r: &mut Reader) -> Option<ProviderConfig> {
        crate::cloud::providers::rules::read_block_keys(r, node, self.kind(), BLOCK_KEYS)?;
        let endpoint = r.provider_string(node, "endpoint");
        if let (Some(e), Some(n)) = (&endpoint, node.get("endpoint")) {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                r.d.at(n, format!("provider.endpoint `{e}` is not a URL — write it like https://pve.example:8006"));
            } else if let Some(why) = crate::cloud::providers::endpoint::refuses_credentials(e) {
                r.d.at(n, format!("provider.endpoint {why}"));
            }
        }
        let fingerprint = r.provider_string(node, "tls_fingerprint");
        if let (Some(e), Some(n)) = (&endpoint, node.get("tls_fingerprint")) {
            if crate::cloud::providers::endpoint::is_plain_http(e) {
                r.d.at(n, format!("provider.tls_fingerprint pins a TLS certificate, but provider.endpoint `{e}` is plain http:// — use https:// or remove the fingerprint"));
            }
        }
        if let (Some(f), Some(n)) = (&fingerprint, node.get("tls_fingerprint")) {
            let hex: String = f.chars().filter(|c| *c != ':').collect();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                r.d.at(n, "provider.tls_fingerprint must be a SHA-256 fingerprint (32 bytes as AB:CD:…) — copy it from the node's certificate page");
            }
        }
        let insecure = match r.optional(node, "insecure") {
            Some(n) => r.boolean(n, "provider.insecure").unwrap_or(false),
            None => false,
        };
        Some(ProviderConfig::Proxmox(ProxmoxConfig {
            endpoint,
            node: r.provider_string(node, "node").unwrap_or_else(|| "pve".into()),
            token_id: r.provider_string(node, "token_id"),
            tls_fingerprint: fingerprint,
            insecure,
            storage: r.provider_string(node, "storage").unwrap_or_else(|| "local-lvm".into()),
            bridge: r.provider_string(node, "bridge").unwrap_or_else(|| "vmbr0".into()),
            template: r.provider_string(node, "template").unwrap_or_else(|| "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into()),
        }))
    }

    fn block_keys(&self) -> &'static [&'static str] {
        BLOCK_KEYS
    }

    /// A guest is placed on `provider.node` (no zones), its address is on the
    /// bridge (no public address of the cloud's), and a container or VM gets
    /// whole cores (no core fraction): these keys would be read by nothing.
    fn unused_keys(&self) -> &'static [(&'static str, &'static str)] {
        &[("host", "zone"), ("host", "public_ip"), ("host", "core_fraction"), ("subnet", "zone"), ("defaults", "core_fraction")]
    }

    /// A guest is cloned from the block's template.
    fn default_image(&self, config: &ProviderConfig) -> String {
        match config {
            ProviderConfig::Proxmox(p) => p.template.clone(),
            _ => String::new(),
        }
    }

    fn host_keys(&self) -> &'static [&'static str] {
        &["vmid", "kind"]
    }

    fn read_host_keys(&self, node: &Node, host: &mut HostEntry, r: &mut Reader) {
        let what = |k: &str| format!("{k} of host `{}`", host.name.v);
        host.vmid = r.optional(node, "vmid").and_then(|n| r.int(n, &what("vmid"), MIN_VMID, MAX_VMID as i64)).map(|a| At { v: a.v as u32, pos: a.pos });
        host.kind = match r.optional(node, "kind").and_then(|n| r.string(n, &what("kind"))) {
            Some(k) => match k.v.as_str() {
                "lxc" => Some(At { v: GuestKind::Lxc, pos: k.pos }),
                "qemu" => Some(At { v: GuestKind::Qemu, pos: k.pos }),
                other => {
                    r.d.error(k.pos, format!("unknown kind `{other}` — {}", suggestion(other, &["lxc", "qemu"])));
                    None
                }
            },
            None => None,
        };
    }

    /// VMIDs are node-wide: an entry's range (vmid .. vmid+count-1) must not
    /// overlap another's. Other providers' plans must not carry these keys.
    fn check_hosts(&self, hosts: &[HostEntry], defaults: &HostDefaults, in_use: bool, d: &mut Diags) {
        let mut ranges: Vec<(u32, u32, &str, usize)> = Vec::new();
        for h in hosts {
            if let (Some(v), false) = (&h.vmid, in_use) {
                d.error(v.pos, format!("`vmid` is only used by the proxmox provider — remove it from host `{}`", h.name.v));
            }
            if let (Some(k), false) = (&h.kind, in_use) {
                d.error(k.pos, format!("`kind` (lxc|qemu) is only used by the proxmox provider — remove it from host `{}`", h.name.v));
            }
            if in_use {
                check_guest(h, defaults, d);
            }
            if let Some(v) = &h.vmid {
                let (lo, hi) = (v.v, v.v + h.count() - 1);
                if hi > MAX_VMID {
                    d.error(v.pos, format!("VMIDs {lo}-{hi} of host `{}` run past Proxmox's last VMID {MAX_VMID} — start lower", h.name.v));
                }
                for (olo, ohi, other, line) in &ranges {
                    if lo <= *ohi && *olo <= hi {
                        d.error(v.pos, format!("VMIDs {lo}-{hi} of host `{}` overlap {olo}-{ohi} of host `{other}` (line {line}) — move one range", h.name.v));
                    }
                }
                ranges.push((lo, hi, &h.name.v, v.pos.line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::model::{GuestKind, ProviderConfig};

    fn load(provider: &str, hosts: &str) -> Result<crate::plan::model::Plan, String> {
        let text = format!("version: 1\nproject: t\nprovider: {provider}\nnetwork: {{ name: main, subnets: [{{ name: a, cidr: 10.20.0.0/24 }}] }}\nhosts:\n{hosts}");
        crate::plan::load_str(std::path::Path::new("p.yaml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn overlapping_vmid_ranges_are_refused_at_the_later_entry() {
        let e = load("{ kind: proxmox }", "  - { name: etcd, count: 3, vmid: 109, roles: [etcd] }\n  - { name: pg, count: 3, vmid: 107 }\n").unwrap_err();
        assert_eq!(e, "p.yaml:7:33: VMIDs 107-109 of host `pg` overlap 109-111 of host `etcd` (line 6) — move one range");
    }

    #[test]
    fn vmid_and_kind_on_another_providers_plan_are_refused_at_their_values() {
        let e = load("{ kind: local }", "  - { name: pg, vmid: 120, kind: qemu }\n").unwrap_err();
        assert_eq!(
            e,
            "p.yaml:6:23: `vmid` is only used by the proxmox provider — remove it from host `pg`\n\
             p.yaml:6:34: `kind` (lxc|qemu) is only used by the proxmox provider — remove it from host `pg`"
        );
    }

    #[test]
    fn a_disk_of_no_whole_gib_is_refused_not_rounded_up() {
        let e = load("{ kind: proxmox }", "  - { name: pg, disk: 100M }\n").unwrap_err();
        assert_eq!(e, "p.yaml:6:23: host `pg`: a disk of 100MiB is not a whole number of GiB, and Proxmox makes a guest's disk in whole GiB (STORAGE_ID:SIZE_IN_GiB), so it would become 1GiB — write `disk: 1GiB` (or another whole GiB)");
        assert!(load("{ kind: proxmox }", "  - { name: pg, disk: 2.5GiB }\n").unwrap_err().contains("so it would become 3GiB — write `disk: 3GiB`"));
        assert!(load("{ kind: proxmox }", "  - { name: pg, disk: 1B }\n").unwrap_err().contains("a disk of 1B is not a whole number of GiB"));
        let e = crate::plan::load_str(
            std::path::Path::new("p.yaml"),
            "version: 1\nproject: t\nprovider: { kind: proxmox }\ndefaults: { disk: 1536MiB }\nnetwork: { name: main, subnets: [{ name: a, cidr: 10.20.0.0/24 }] }\nhosts: [{ name: pg }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("p.yaml:6:17: host `pg`: a disk of 1536MiB (from defaults.disk) is not a whole number of GiB"), "{e}");
        assert!(load("{ kind: proxmox }", "  - { name: pg, disk: 2048MiB }\n").is_ok());
    }

    #[test]
    fn an_unknown_guest_kind_is_refused_with_a_suggestion() {
        let e = load("{ kind: proxmox }", "  - { name: pg, kind: qemm }\n").unwrap_err();
        assert_eq!(e, "p.yaml:6:23: unknown kind `qemm` — did you mean `qemu`?");
    }

    #[test]
    fn a_bad_fingerprint_is_refused_at_its_value() {
        let e = load("{ kind: proxmox, tls_fingerprint: AB:CD }", "  - { name: pg }\n").unwrap_err();
        assert_eq!(e, "p.yaml:3:45: provider.tls_fingerprint must be a SHA-256 fingerprint (32 bytes as AB:CD:…) — copy it from the node's certificate page");
    }

    #[test]
    fn the_block_reads_into_the_proxmox_config_and_guests_get_their_numbers() {
        let plan = load("{ kind: proxmox, node: pve2 }", "  - { name: pg, count: 2, vmid: 200, kind: qemu, image: debian-12-cloudinit }\n").expect("valid");
        let ProviderConfig::Proxmox(p) = &plan.provider else { panic!("a proxmox config") };
        assert_eq!((p.node.as_str(), p.storage.as_str(), p.bridge.as_str()), ("pve2", "local-lvm", "vmbr0"));
        // A VM clones its own template; a container would use p.template.
        assert_eq!(plan.hosts[1].image, "debian-12-cloudinit");
        assert_eq!((plan.hosts[1].vmid, plan.hosts[1].guest_kind), (Some(201), GuestKind::Qemu));
        // rigger's SSH comes from wherever it runs, not from a gateway the plan names.
        assert_eq!(crate::plan::security::ssh_source(&plan, &plan.hosts[0]), None);
    }
}
