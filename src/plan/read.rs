//! Reading plan YAML with positions: the shape helpers every part of the plan
//! reader uses — the generic plan loader and each provider's own rules
//! (src/cloud/providers/*/rules.rs) — reporting into one diagnostics collector.

use super::diag::{suggestion, Diags};
use super::size::parse_size;
use super::yaml::{Node, Pos, Value as Y};
use ipnet::Ipv4Net;
use super::model::GuestKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// A value together with where it was written.
#[derive(Clone, Debug)]
pub struct At<T> {
    pub v: T,
    pub pos: Pos,
}

/// Reads nodes of one plan file, collecting every error into `d`.
pub struct Reader<'a> {
    pub d: &'a mut Diags,
    /// The plan's folder, absolute: relative paths are relative to it.
    pub dir: &'a Path,
}

/// One entry of `hosts:` as written, before `count` expands it.
pub struct HostEntry {
    pub name: At<String>,
    pub count: Option<At<u32>>,
    pub roles: Vec<At<String>>,
    pub subnet: Option<At<String>>,
    pub ip: Option<At<Ipv4Addr>>,
    pub image: Option<At<String>>,
    pub cores: Option<At<u32>>,
    pub memory: Option<At<u64>>,
    pub disk: Option<At<u64>>,
    pub core_fraction: Option<At<u32>>,
    pub firewall: Vec<At<String>>,
    pub public_ip: bool,
    pub vmid: Option<At<u32>>,
    pub kind: Option<At<GuestKind>>,
    pub zone: Option<String>,
}

/// Image and size defaults before the plan's `defaults:` apply.
pub struct HostDefaults {
    pub image: String,
    pub cores: u32,
    pub memory: u64,
    pub disk: u64,
    pub core_fraction: u32,
}

impl HostDefaults {
    pub fn base(image: &str) -> Self {
        HostDefaults { image: image.to_string(), cores: 2, memory: 2 << 30, disk: 20 << 30, core_fraction: 100 }
    }
}

impl HostEntry {
    /// Cores after `defaults:`.
    pub fn cores(&self, defaults: &HostDefaults) -> u32 {
        self.cores.as_ref().map(|c| c.v).unwrap_or(defaults.cores)
    }
    /// Core fraction (percent of a core guaranteed) after `defaults:`.
    pub fn core_fraction(&self, defaults: &HostDefaults) -> u32 {
        self.core_fraction.as_ref().map(|c| c.v).unwrap_or(defaults.core_fraction)
    }
    /// Memory in bytes after `defaults:`.
    pub fn memory(&self, defaults: &HostDefaults) -> u64 {
        self.memory.as_ref().map(|m| m.v).unwrap_or(defaults.memory)
    }
    /// Boot disk size in bytes after `defaults:`.
    pub fn disk(&self, defaults: &HostDefaults) -> u64 {
        self.disk.as_ref().map(|d| d.v).unwrap_or(defaults.disk)
    }
    /// Image after `defaults:`.
    pub fn image<'a>(&'a self, defaults: &'a HostDefaults) -> &'a str {
        self.image.as_ref().map(|i| i.v.as_str()).unwrap_or(&defaults.image)
    }
    /// The guest number of the entry's `i`-th machine (1-based), where the provider numbers them.
    pub fn vmid_of(&self, i: u32) -> Option<u32> {
        self.vmid.as_ref().map(|v| v.v + i - 1)
    }
    /// The kind of guest (where the provider has kinds); a container unless the entry says.
    pub fn guest_kind(&self) -> GuestKind {
        self.kind.as_ref().map(|k| k.v).unwrap_or(GuestKind::Lxc)
    }
    /// How many machines the entry makes.
    pub fn count(&self) -> u32 {
        self.count.as_ref().map(|c| c.v).unwrap_or(1)
    }
}

impl Reader<'_> {
    // ---- shape helpers -------------------------------------------------

    /// A mapping whose keys are all in `allowed`; unknown keys are reported with a hint.
    pub fn map<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<&'n [(Node, Node)]> {
        let Some(entries) = node.as_map() else {
            self.d.at(node, format!("{what} must be a mapping (key: value), found {} — write it as `key: value` lines", node.kind_name()));
            return None;
        };
        for (k, _) in entries {
            match k.as_scalar() {
                Some(key) if allowed.contains(&key) => {}
                // No "did you mean": the key is YAML's own, not a typo.
                Some("<<") => self.d.at(k, format!("YAML merge keys (`<<`) are not supported in {what} — write the keys out here (an alias `*name` may still repeat a whole value)")),
                Some(key) => self.d.at(k, format!("unknown key `{key}` in {what} — {}", suggestion(key, allowed))),
                None => self.d.at(k, format!("keys in {what} must be plain words")),
            }
        }
        Some(entries)
    }

    pub fn required<'n>(&mut self, parent: &'n Node, key: &str, what: &str, example: &str) -> Option<&'n Node> {
        match parent.get(key) {
            Some(n) if !n.is_null() => Some(n),
            Some(n) => {
                self.d.at(n, format!("`{key}` in {what} is empty — give it a value, e.g. `{key}: {example}`"));
                None
            }
            None => {
                self.d.at(parent, format!("{what} has no `{key}` — add `{key}: {example}`"));
                None
            }
        }
    }

    /// The value of `key` if the plan writes the key — an empty one too
    /// (`cores:` with nothing after it), which the typed readers below refuse
    /// at the key rather than take it for a left-out key.
    pub fn optional<'n>(&mut self, parent: &'n Node, key: &str) -> Option<&'n Node> {
        parent.get(key)
    }

    /// Whether `node` is empty (a key with nothing after it, `~`, `null`);
    /// if so, the error says what the key takes.
    pub fn empty(&mut self, node: &Node, what: &str, expected: &str) -> bool {
        if node.is_null() {
            self.d.at(node, format!("{what} is empty — give it {expected}, or remove it"));
        }
        node.is_null()
    }

    pub fn string(&mut self, node: &Node, what: &str) -> Option<At<String>> {
        if self.empty(node, what, "a value") {
            return None;
        }
        match &node.value {
            Y::Scalar(s, _) => Some(At { v: s.clone(), pos: node.pos }),
            _ => {
                self.d.at(node, format!("{what} must be a single value, found {}", node.kind_name()));
                None
            }
        }
    }

    pub fn int(&mut self, node: &Node, what: &str, min: i64, max: i64) -> Option<At<i64>> {
        if self.empty(node, what, &format!("a whole number from {min} to {max}")) {
            return None;
        }
        let s = self.string(node, what)?;
        match s.v.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Some(At { v: n, pos: s.pos }),
            Ok(n) => {
                self.d.error(s.pos, format!("{what} is {n}, outside {min}..{max} — use a value in that range"));
                None
            }
            Err(_) => {
                self.d.error(s.pos, format!("{what} must be a whole number, found `{}`", s.v));
                None
            }
        }
    }

    pub fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        if self.empty(node, what, "true or false") {
            return None;
        }
        let s = self.string(node, what)?;
        match s.v.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                self.d.error(s.pos, format!("{what} must be true or false, found `{other}`"));
                None
            }
        }
    }

    pub fn size(&mut self, node: &Node, what: &str) -> Option<At<u64>> {
        if self.empty(node, what, "a size such as 2GiB") {
            return None;
        }
        let s = self.string(node, what)?;
        match parse_size(&s.v) {
            Ok(b) => Some(At { v: b, pos: s.pos }),
            Err(e) => {
                self.d.error(s.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    pub fn ip(&mut self, node: &Node, what: &str) -> Option<At<Ipv4Addr>> {
        if self.empty(node, what, "an IPv4 address such as 10.20.0.21") {
            return None;
        }
        let s = self.string(node, what)?;
        match s.v.parse::<Ipv4Addr>() {
            Ok(ip) => Some(At { v: ip, pos: s.pos }),
            Err(_) => {
                self.d.error(s.pos, format!("{what} `{}` is not an IPv4 address — write it like 10.20.0.21", s.v));
                None
            }
        }
    }

    pub fn cidr(&mut self, node: &Node, what: &str) -> Option<At<Ipv4Net>> {
        if self.empty(node, what, "a CIDR block such as 10.20.0.0/24") {
            return None;
        }
        let s = self.string(node, what)?;
        match s.v.parse::<Ipv4Net>() {
            Ok(net) if net.network() != net.addr() => {
                self.d.error(s.pos, format!("{what} `{}` has host bits set — did you mean {}?", s.v, net.trunc()));
                None
            }
            Ok(net) => Some(At { v: net, pos: s.pos }),
            Err(_) => {
                self.d.error(s.pos, format!("{what} `{}` is not a CIDR block — write it like 10.20.0.0/24", s.v));
                None
            }
        }
    }

    pub fn list<'n>(&mut self, node: &'n Node, what: &str) -> &'n [Node] {
        if self.empty(node, what, "a list such as `[a, b]`") {
            return &[];
        }
        match &node.value {
            Y::Seq(items) => items,
            _ => {
                self.d.at(node, format!("{what} must be a list, found {} — write it as `[a, b]` or `- a` lines", node.kind_name()));
                &[]
            }
        }
    }

    pub fn string_list(&mut self, node: &Node, what: &str) -> Vec<At<String>> {
        let items = self.list(node, what);
        items.iter().filter_map(|n| self.string(n, what)).collect()
    }

    pub fn name(&mut self, node: &Node, what: &str) -> Option<At<String>> {
        if self.empty(node, what, "a name such as `main` (lower-case letters, digits and dashes)") {
            return None;
        }
        let s = self.string(node, what)?;
        if !valid_name(&s.v) {
            self.d.error(
                s.pos,
                format!("{what} `{}` is not a valid name — use lower-case letters, digits and dashes, starting with a letter (at most 40)", s.v),
            );
            return None;
        }
        Some(s)
    }

    pub fn path(&mut self, node: &Node, what: &str) -> Option<PathBuf> {
        if self.empty(node, what, "a file's path") {
            return None;
        }
        self.string(node, what).map(|s| resolve_path(self.dir, &s.v))
    }
}

pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `~` is the user's home; relative paths are relative to the plan's folder.
pub fn resolve_path(dir: &Path, p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        dir.join(path)
    }
}

impl Reader<'_> {
    /// `provider.<key>` of a provider block as text, if given.
    pub fn provider_string(&mut self, block: &Node, key: &str) -> Option<String> {
        self.optional(block, key).and_then(|n| self.string(n, &format!("provider.{key}"))).map(|s| s.v)
    }
}
