//! What each provider kind says about a plan: how its `provider:` block reads
//! into its typed config, the image a host gets by default, which subnets and
//! hosts its cloud can make, and the host keys only it uses. The plan loader
//! (src/plan/load.rs) asks `rules_for`/`rules_of` and knows no cloud itself.
//! Every error goes into the plan reader's collector with its position.

use super::{local, proxmox, yandex};
use crate::plan::diag::Diags;
use crate::plan::model::ProviderConfig;
use crate::plan::read::{At, HostDefaults, HostEntry, Reader};
use crate::plan::yaml::Node;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

pub trait PlanRules: Sync {
    /// The word in `provider: { kind: … }`.
    fn kind(&self) -> &'static str;

    /// Read the `provider:` block (its `kind` already read and found to be
    /// this one) into this provider's typed config.
    fn read_block(&self, node: &Node, r: &mut Reader) -> Option<ProviderConfig>;

    /// The keys its `provider:` block takes (`kind` among them).
    fn block_keys(&self) -> &'static [&'static str];

    /// The image of a host when neither the host nor `defaults:` names one.
    fn default_image(&self, config: &ProviderConfig) -> String;

    /// The zone of a subnet that names none.
    fn default_zone(&self, _config: &ProviderConfig) -> Option<String> {
        None
    }

    /// A subnet's CIDR against what this cloud can make (the generic checks
    /// have run). Only when the plan uses this provider.
    fn check_subnet(&self, _cidr: &At<Ipv4Net>, _d: &mut Diags) {}

    /// A subnet's `gateway:` (written in the plan) against what this cloud
    /// gives the subnet. Only when the plan uses this provider.
    fn check_gateway(&self, _cidr: &Ipv4Net, _gateway: &At<Ipv4Addr>, _d: &mut Diags) {}

    /// Generic plan keys this provider has no use for, as (where, key) with
    /// where `host`, `subnet` or `defaults`: refused where the plan writes
    /// them, since a key read by nothing would look like it took effect.
    fn unused_keys(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// The keys of a host entry only this provider reads.
    fn host_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// Read this provider's `host_keys` of one entry into it. Runs for every
    /// provider whatever the plan's, so a key misplaced in another cloud's
    /// plan is still read (and refused by `check_hosts`).
    fn read_host_keys(&self, _node: &Node, _host: &mut HostEntry, _r: &mut Reader) {}

    /// Every host entry against this cloud, sizes after `defaults:`. Runs for
    /// every provider; `in_use` says whether the plan uses this one (if not,
    /// the provider refuses the keys only it reads).
    fn check_hosts(&self, _hosts: &[HostEntry], _defaults: &HostDefaults, _in_use: bool, _d: &mut Diags) {}

    /// Addresses of a subnet the cloud keeps for itself (beyond the network,
    /// broadcast and gateway addresses every subnet has), with what they are.
    fn reserved_addresses(&self, _cidr: &Ipv4Net) -> Vec<(std::net::Ipv4Addr, &'static str)> {
        Vec::new()
    }

    /// The longest name the cloud gives a resource (`<project>-<name>`), if
    /// it limits it.
    fn cloud_name_limit(&self) -> Option<usize> {
        None
    }

    /// Whether rigger's SSH reaches these machines from the gateway of their
    /// subnet (the control host on the bridge), which the host firewall always
    /// lets in (roles::firewall). Elsewhere it comes from where the plan cannot say.
    fn ssh_from_subnet_gateway(&self) -> bool {
        false
    }

    /// Whether the machines reach the internet's registries (Docker images,
    /// Node.js and npm packages), so roles may install from them on the hosts.
    fn machines_reach_registries(&self) -> bool {
        true
    }
}

/// Every provider kind, in the order `unknown provider kind` lists them.
static RULES: &[&dyn PlanRules] = &[&yandex::rules::YandexRules, &proxmox::rules::ProxmoxRules, &local::rules::LocalRules];

/// The rules of a provider kind as the plan spells it.
pub fn rules_for(kind: &str) -> Option<&'static dyn PlanRules> {
    RULES.iter().copied().find(|r| r.kind() == kind)
}

/// The rules of the provider a loaded block belongs to.
pub fn rules_of(config: &ProviderConfig) -> &'static dyn PlanRules {
    rules_for(config.kind()).expect("every ProviderConfig kind has rules")
}

/// Every provider's rules.
pub fn all() -> &'static [&'static dyn PlanRules] {
    RULES
}

/// Every provider kind a plan may name.
pub fn kinds() -> Vec<&'static str> {
    RULES.iter().map(|r| r.kind()).collect()
}

/// The providers that use the generic key `key` in `place` (`host`,
/// `subnet`, `defaults`): those that do not list it as unused.
pub fn users_of(place: &str, key: &str) -> Vec<&'static str> {
    RULES.iter().filter(|r| !r.unused_keys().contains(&(place, key))).map(|r| r.kind()).collect()
}

/// `the yandex provider does` / `the yandex and proxmox providers do`.
pub fn who_uses(kinds: &[&str]) -> String {
    match kinds {
        [one] => format!("the {one} provider does"),
        many => format!("the {} providers do", many.join(" and ")),
    }
}

/// A `provider:` block's keys, `allowed` the ones its kind takes: a key of
/// another provider's block is refused naming the provider that takes it,
/// any other unknown key with a "did you mean".
pub fn read_block_keys<'n>(r: &mut Reader, node: &'n Node, kind: &str, allowed: &[&str]) -> Option<&'n [(Node, Node)]> {
    let mut known: Vec<&str> = allowed.to_vec();
    for (k, _) in node.as_map().unwrap_or_default() {
        let Some(key) = k.as_scalar().filter(|key| !allowed.contains(key)) else { continue };
        let takers: Vec<&str> = RULES.iter().filter(|o| o.block_keys().contains(&key)).map(|o| o.kind()).collect();
        if !takers.is_empty() {
            r.d.at(k, format!("the {kind} provider does not use `{key}` in its block ({}) — remove it; provider (kind: {kind}) takes {}", who_uses(&takers), allowed.join(", ")));
            known.push(key);
        }
    }
    r.map(node, &format!("provider ({kind})"), &known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_rules() {
        assert_eq!(kinds(), ["yandex", "proxmox", "local"]);
        for kind in kinds() {
            assert_eq!(rules_for(kind).map(|r| r.kind()), Some(kind));
        }
        assert!(rules_for("yandx").is_none());
    }

    #[test]
    fn every_unused_key_is_used_by_some_provider() {
        for r in all() {
            for (place, key) in r.unused_keys() {
                assert!(["host", "subnet", "defaults"].contains(place), "{}: unknown place {place}", r.kind());
                assert!(!users_of(place, key).is_empty(), "`{key}` in {place} is used by no provider: drop it from the plan file instead");
            }
        }
        assert_eq!(users_of("host", "zone"), ["yandex"]);
        assert_eq!(users_of("host", "cores"), ["yandex", "proxmox", "local"]);
    }
}
