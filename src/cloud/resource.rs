//! Provider-neutral description of cloud resources: what the plan wants
//! (`ResourceSpec`) and what exists (`LiveResource`). The diff compares the two.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Network,
    Subnet,
    Firewall,
    Machine,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Subnet => "subnet",
            Kind::Firewall => "firewall",
            Kind::Machine => "machine",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "network" => Kind::Network,
            "subnet" => Kind::Subnet,
            "firewall" => Kind::Firewall,
            "machine" => Kind::Machine,
            _ => return None,
        })
    }
}

/// `machine.pg-1`, `subnet.app`: stable name of a resource in plans and state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub kind: Kind,
    pub name: String,
}

impl Address {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Address { kind, name: name.into() }
    }
    pub fn parse(s: &str) -> Option<Address> {
        let (k, n) = s.split_once('.')?;
        Some(Address::new(Kind::parse(k)?, n))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind.as_str(), self.name)
    }
}

impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Address::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("bad resource address {s:?}")))
    }
}

pub type Attrs = BTreeMap<String, Value>;

/// What the plan wants, already in the provider's own terms (normalised the way
/// the provider's API stores it, so a re-plan after apply shows no change).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResourceSpec {
    pub address: Address,
    /// Resources that must exist before this one (their live ids are handed to create).
    pub depends_on: Vec<Address>,
    /// Compared field by field against the live resource.
    pub attrs: Attrs,
    /// Changing any of these fields cannot be done in place: the resource is replaced.
    pub replace_on: BTreeSet<String>,
    /// Attributes that are secret: shown masked in plans.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub sensitive: BTreeSet<String>,
}

/// What exists, as the provider reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LiveResource {
    pub address: Address,
    /// The provider's id (Yandex id, Proxmox VMID, local machine name).
    pub id: String,
    pub attrs: Attrs,
    /// Facts that are not compared but used later: `ssh_host`, `private_ip`,
    /// `public_ip`, `host_keys` (list of "type base64" lines), `zone`, `node`, `vmid`.
    #[serde(default)]
    pub outputs: Attrs,
}

impl LiveResource {
    pub fn output_str(&self, key: &str) -> Option<&str> {
        self.outputs.get(key).and_then(Value::as_str)
    }
}
