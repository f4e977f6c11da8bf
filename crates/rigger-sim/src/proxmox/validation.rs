//! Parameter verification the way pve-common's JSONSchema reports it: every bad
//! field gets its own message, and the request fails with
//! 400 `Parameter verification failed.` and an `errors` object.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub type Params = BTreeMap<String, String>;
pub type FieldErrors = BTreeMap<String, String>;

#[derive(Clone, Copy)]
pub enum Ty {
    Int { min: i64, max: i64 },
    Bool,
    Str { max_len: usize },
    Enum(&'static [&'static str]),
    /// A format check returning the text after `invalid format - ` or a full message.
    Format(fn(&str) -> Result<(), String>),
}

pub struct Param {
    /// `net[n]` matches net0, net1, …
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
}

pub const fn opt(name: &'static str, ty: Ty) -> Param {
    Param { name, ty, required: false }
}
pub const fn req(name: &'static str, ty: Ty) -> Param {
    Param { name, ty, required: true }
}

pub const VMID: Ty = Ty::Int { min: 100, max: 999_999_999 };
pub const BOOL: Ty = Ty::Bool;
pub const TEXT: Ty = Ty::Str { max_len: 8192 };
pub const STORAGE_ID: Ty = Ty::Format(pve_storage_id);
pub const NODE: Ty = Ty::Format(pve_node);
pub const DNS_NAME: Ty = Ty::Format(dns_name);
pub const TAGS: Ty = Ty::Format(tag_list);

fn matches(schema_name: &str, name: &str) -> bool {
    match schema_name.strip_suffix("[n]") {
        Some(prefix) => name
            .strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit())),
        None => schema_name == name,
    }
}

tokio::task_local! {
    /// Set while a request that the published definitions already verified is
    /// handled: the built-in tables below then step aside, so the definitions
    /// alone decide what is refused.
    pub static VERIFIED_BY_DEFINITIONS: bool;
}

/// Check `params` against `schema`; unknown parameters are errors too.
pub fn check(schema: &[Param], params: &Params) -> Result<(), FieldErrors> {
    if VERIFIED_BY_DEFINITIONS.try_with(|v| *v).unwrap_or(false) {
        return Ok(());
    }
    let mut errors = FieldErrors::new();
    for p in schema.iter().filter(|p| p.required) {
        if !params.contains_key(p.name) {
            errors.insert(p.name.to_string(), "property is missing and it is not optional".into());
        }
    }
    for (name, value) in params {
        let Some(p) = schema.iter().find(|p| matches(p.name, name)) else {
            errors.insert(name.clone(), "property is not defined in schema and the schema does not allow additional properties".into());
            continue;
        };
        if let Err(e) = check_value(p.ty, value) {
            errors.insert(name.clone(), e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check_value(ty: Ty, v: &str) -> Result<(), String> {
    match ty {
        Ty::Int { min, max } => {
            let n: i64 = v.trim().parse().map_err(|_| format!("type check ('integer') failed - got '{v}'"))?;
            if n < min {
                return Err(format!("value must have a minimum value of {min}"));
            }
            if n > max {
                return Err(format!("value must have a maximum value of {max}"));
            }
            Ok(())
        }
        Ty::Bool => match v.to_ascii_lowercase().as_str() {
            "0" | "1" | "true" | "false" | "yes" | "no" | "on" | "off" => Ok(()),
            _ => Err(format!("type check ('boolean') failed - got '{v}'")),
        },
        Ty::Str { max_len } => {
            if v.len() > max_len {
                Err(format!("value may only be {max_len} characters long"))
            } else {
                Ok(())
            }
        }
        Ty::Enum(values) => {
            if values.contains(&v) {
                Ok(())
            } else {
                Err(format!("value '{v}' does not have a value in the enumeration '{}'", values.join(", ")))
            }
        }
        Ty::Format(f) => f(v).map_err(|e| format!("invalid format - {e}")),
    }
}

pub fn parse_bool(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

// ---- formats -------------------------------------------------------------

fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

pub fn dns_name(v: &str) -> Result<(), String> {
    if v.len() <= 255 && v.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("value does not look like a valid DNS name: '{v}'"))
    }
}

pub fn pve_node(v: &str) -> Result<(), String> {
    if label_ok(v) {
        Ok(())
    } else {
        Err(format!("value does not look like a valid node name: '{v}'"))
    }
}

pub fn pve_storage_id(v: &str) -> Result<(), String> {
    let ok = v.len() >= 2
        && v.as_bytes()[0].is_ascii_alphabetic()
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!("storage ID '{v}' contains illegal characters"))
    }
}

fn tag_ok(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'.'))
}

/// `pve-tag-list`: tags separated by `;`, `,` or spaces.
pub fn tag_list(v: &str) -> Result<(), String> {
    for tag in split_tags(v) {
        if !tag_ok(tag) {
            return Err(format!("invalid tag '{tag}'"));
        }
    }
    Ok(())
}

pub fn split_tags(v: &str) -> impl Iterator<Item = &str> {
    v.split([';', ',', ' ']).filter(|t| !t.is_empty())
}

pub fn mac(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split(':').collect();
    if parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok()) {
        Ok(())
    } else {
        Err(format!("value does not look like a valid MAC address: '{v}'"))
    }
}

/// `a.b.c.d/nn`
pub fn cidr_v4(v: &str) -> Result<(Ipv4Addr, u8), String> {
    let err = || format!("value does not look like a valid CIDRv4 network: '{v}'");
    let (ip, prefix) = v.split_once('/').ok_or_else(err)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
    let prefix: u8 = prefix.parse().map_err(|_| err())?;
    if prefix > 32 {
        return Err(err());
    }
    Ok((ip, prefix))
}

/// Split a property string `k=v,k2=v2` (a bare first value belongs to `default_key`).
pub fn property_string(v: &str, default_key: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, part) in v.split(',').enumerate() {
        if part.is_empty() {
            continue;
        }
        match part.split_once('=') {
            Some((k, val)) => {
                if out.iter().any(|(key, _): &(String, String)| key == k) {
                    return Err(format!("duplicate key in comma-separated list property: {k}"));
                }
                out.push((k.to_string(), val.to_string()))
            }
            None => match (i, default_key) {
                (0, Some(d)) => out.push((d.to_string(), part.to_string())),
                _ => return Err(format!("value without key, but schema does not define a default key: '{part}'")),
            },
        }
    }
    Ok(out)
}

/// LXC `net[n]`: `name=eth0,bridge=vmbr0,ip=…/24,gw=…[,hwaddr=…][,firewall=1][,tag=N][,type=veth]`.
pub fn lxc_net(v: &str) -> Result<(), String> {
    let kv = property_string(v, None)?;
    if !kv.iter().any(|(k, _)| k == "name") {
        return Err("format error\nname: property is missing and it is not optional".into());
    }
    for (k, val) in &kv {
        match k.as_str() {
            "name" => {
                if val.is_empty() || val.len() > 15 {
                    return Err(format!("format error\nname: invalid interface name '{val}'"));
                }
            }
            "bridge" => pve_node(val).map_err(|e| format!("format error\nbridge: {e}"))?,
            "hwaddr" => mac(val).map_err(|e| format!("format error\nhwaddr: {e}"))?,
            "ip" => {
                if val != "dhcp" && val != "manual" {
                    cidr_v4(val).map_err(|e| format!("format error\nip: {e}"))?;
                }
            }
            "gw" => {
                val.parse::<Ipv4Addr>()
                    .map_err(|_| format!("format error\ngw: value does not look like a valid IPv4 address: '{val}'"))?;
            }
            "ip6" | "gw6" | "trunks" => {}
            "firewall" | "link_down" => check_value(Ty::Bool, val).map_err(|e| format!("format error\n{k}: {e}"))?,
            "tag" => check_value(Ty::Int { min: 1, max: 4094 }, val).map_err(|e| format!("format error\ntag: {e}"))?,
            "mtu" => check_value(Ty::Int { min: 64, max: 65535 }, val).map_err(|e| format!("format error\nmtu: {e}"))?,
            "rate" => {}
            "type" => {
                if val != "veth" {
                    return Err(format!("format error\ntype: value '{val}' does not have a value in the enumeration 'veth'"));
                }
            }
            other => return Err(format!("format error\n{other}: property is not defined in schema and the schema does not allow additional properties")),
        }
    }
    Ok(())
}

/// QEMU `ipconfig[n]`: `ip=CIDR|dhcp,gw=IP[,ip6=…,gw6=…]`.
pub fn ipconfig(v: &str) -> Result<(), String> {
    for (k, val) in property_string(v, None)? {
        match k.as_str() {
            "ip" => {
                if val != "dhcp" {
                    cidr_v4(&val).map_err(|e| format!("format error\nip: {e}"))?;
                }
            }
            "gw" => {
                val.parse::<Ipv4Addr>()
                    .map_err(|_| format!("format error\ngw: value does not look like a valid IPv4 address: '{val}'"))?;
            }
            "ip6" | "gw6" => {}
            other => return Err(format!("format error\n{other}: property is not defined in schema and the schema does not allow additional properties")),
        }
    }
    Ok(())
}

/// LXC `rootfs` at creation: `STORAGE:SIZE_GiB[,opts]` or an existing volume.
pub fn lxc_rootfs(v: &str) -> Result<(), String> {
    let first = v.split(',').next().unwrap_or_default();
    let Some((storage, rest)) = first.split_once(':') else {
        return Err(format!("format error\nvolume: invalid volume '{first}'"));
    };
    pve_storage_id(storage).map_err(|e| format!("format error\nvolume: {e}"))?;
    if rest.is_empty() {
        return Err(format!("format error\nvolume: invalid volume '{first}'"));
    }
    Ok(())
}

fn is_ssh_key_line(line: &str) -> bool {
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(body)) = (parts.next(), parts.next()) else { return false };
    (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// One public key per line (comments and blank lines allowed).
pub fn ssh_keys(v: &str) -> Result<(), String> {
    for line in v.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if !is_ssh_key_line(line) {
            return Err(format!("unable to parse ssh key '{line}'"));
        }
    }
    Ok(())
}

/// QEMU `sshkeys` arrive URL-encoded (`%20` for spaces).
pub fn urlencoded_ssh_keys(v: &str) -> Result<(), String> {
    let decoded = percent_encoding::percent_decode_str(v)
        .decode_utf8()
        .map_err(|_| "invalid urlencoded string".to_string())?;
    ssh_keys(&decoded)
}

/// `+10G`, `20G`, `512M`, `1.5T`
pub fn disk_size(v: &str) -> Result<(), String> {
    let s = v.strip_prefix('+').unwrap_or(v);
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T']);
    if !digits.is_empty() && digits.parse::<f64>().is_ok() && s.len() - digits.len() <= 1 {
        Ok(())
    } else {
        Err(format!("value does not match the regex pattern: '{v}'"))
    }
}

/// Size string to bytes (`8G`, `+2G`, `512M`; a bare number is bytes).
pub fn size_bytes(v: &str) -> Option<u64> {
    let s = v.strip_prefix('+').unwrap_or(v);
    let (num, unit) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: f64 = num.parse().ok()?;
    Some((n * unit as f64) as u64)
}

/// Bytes as Proxmox writes a volume size: whole GiB as `8G`, else `M`/`K`.
pub fn format_size(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{}G", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}M", bytes >> 20)
    } else {
        format!("{}K", bytes.div_ceil(1 << 10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net0_formats() {
        assert!(lxc_net("name=eth0,bridge=vmbr0,ip=192.168.50.21/24,gw=192.168.50.1").is_ok());
        assert!(lxc_net("bridge=vmbr0").unwrap_err().contains("name: property is missing"));
        assert!(lxc_net("name=eth0,ip=300.1.1.1/24").is_err());
        assert!(lxc_net("name=eth0,colour=red").is_err());
    }

    #[test]
    fn unknown_and_missing_parameters() {
        let schema = [req("vmid", VMID), opt("memory", Ty::Int { min: 16, max: 1 << 40 })];
        let params: Params = [("memory".to_string(), "8".to_string()), ("bogus".to_string(), "1".to_string())].into();
        let errors = check(&schema, &params).unwrap_err();
        assert_eq!(errors.len(), 3);
        assert!(errors["vmid"].contains("missing"));
        assert!(errors["memory"].contains("minimum value of 16"));
        assert!(errors["bogus"].contains("not defined"));
    }

    #[test]
    fn sizes() {
        assert_eq!(size_bytes("8G"), Some(8 << 30));
        assert_eq!(format_size(8 << 30), "8G");
        assert_eq!(format_size(2560 << 20), "2560M");
        assert!(disk_size("+10G").is_ok());
        assert!(disk_size("ten").is_err());
    }
}
