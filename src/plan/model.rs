//! The validated, expanded plan: `count` turned into pg-1..pg-3, IPs assigned,
//! defaults merged, paths resolved. Everything downstream reads this.

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The plan file as given and its folder, absolute. Every path in the plan
    /// (keys, app folders) is already resolved against it.
    pub file: PathBuf,
    pub dir: PathBuf,
    pub version: u32,
    pub project: String,
    pub provider: ProviderConfig,
    pub ssh: SshConfig,
    pub network: Network,
    pub firewall: Vec<FirewallGroup>,
    pub hosts: Vec<Host>,
    /// Per role settings, defaults already filled in (see `services.rs`).
    pub services: BTreeMap<String, BTreeMap<String, Value>>,
    /// `security:` — which protections are on (all by default).
    pub security: Security,
    /// Host name → the public address the cloud gave it. Empty in a plan as
    /// loaded; filled from the state before the hosts are configured
    /// (`Project::with_cloud_addresses`), so the shop's URLs can name it.
    pub public_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderConfig {
    Yandex(YandexConfig),
    Proxmox(ProxmoxConfig),
    Local(LocalConfig),
}

// Each provider's block is its own type, read and checked by its plan rules.
pub use crate::cloud::providers::local::rules::LocalConfig;
pub use crate::cloud::providers::proxmox::rules::ProxmoxConfig;
pub use crate::cloud::providers::yandex::rules::YandexConfig;

impl ProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Yandex(_) => "yandex",
            ProviderConfig::Proxmox(_) => "proxmox",
            ProviderConfig::Local(_) => "local",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SshConfig {
    pub user: String,
    pub private_key_file: PathBuf,
    pub public_key_file: PathBuf,
    pub bastion: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub name: String,
    pub subnets: Vec<Subnet>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subnet {
    pub name: String,
    pub cidr: Ipv4Net,
    pub zone: Option<String>,
    pub gateway: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

/// Where the other end of a rule is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Cidrs(Vec<Ipv4Net>),
    Group(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub direction: Direction,
    pub protocol: Protocol,
    /// Empty = every port.
    pub ports: Vec<PortRange>,
    pub peer: Peer,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FirewallGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GuestKind {
    Lxc,
    Qemu,
}

/// One machine after `count` expansion.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// `pg-2`
    pub name: String,
    /// `pg` (the plan's host entry) and the 1-based index inside it.
    pub group: String,
    pub index: u32,
    pub roles: Vec<String>,
    pub subnet: String,
    pub ip: Ipv4Addr,
    pub image: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub core_fraction: u32,
    pub firewall: Vec<String>,
    pub public_ip: bool,
    pub vmid: Option<u32>,
    pub guest_kind: GuestKind,
    pub zone: Option<String>,
}

impl Host {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

impl Plan {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
    pub fn hosts_with_role<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a Host> + 'a {
        self.hosts.iter().filter(move |h| h.roles.iter().any(|r| r == role))
    }
    pub fn subnet(&self, name: &str) -> Option<&Subnet> {
        self.network.subnets.iter().find(|s| s.name == name)
    }
    /// A service setting with its default already applied by validation.
    pub fn setting(&self, role: &str, key: &str) -> Option<&Value> {
        self.services.get(role).and_then(|m| m.get(key))
    }
}

impl Plan {
    /// Every role some host has.
    pub fn roles(&self) -> std::collections::BTreeSet<&str> {
        self.hosts.iter().flat_map(|h| h.roles.iter().map(String::as_str)).collect()
    }
}

/// The plan's `security:` switches: every part is on unless the plan turns it off.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Security {
    /// nftables on every host that has firewall groups (ingress default drop).
    pub firewall: bool,
    /// HTTP basic auth on Patroni's unsafe REST endpoints.
    pub rest_auth: bool,
    /// The project CA, host certificates, and TLS on PostgreSQL.
    pub tls: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security { firewall: true, rest_auth: true, tls: true }
    }
}

impl Security {
    /// The parts a plan turned off, for `plan`'s warning.
    pub fn turned_off(&self) -> Vec<&'static str> {
        let mut off = Vec::new();
        if !self.firewall {
            off.push("firewall");
        }
        if !self.rest_auth {
            off.push("rest_auth");
        }
        if !self.tls {
            off.push("tls");
        }
        off
    }
}
