//! The local provider's plan rules: its `provider:` block names the one image
//! it builds (src/cloud/providers/local/image.rs), which is every host's image.

use crate::plan::diag::Diags;
use crate::plan::model::ProviderConfig;
use crate::plan::read::{At, HostDefaults, HostEntry, Reader};
use ipnet::Ipv4Net;
use crate::plan::yaml::Node;
use crate::cloud::providers::rules::PlanRules;
use serde::Serialize;

/// The plan's `provider:` block for local machines, as `read_block` reads it.
#[derive(Debug, Clone, Serialize)]
pub struct LocalConfig {
    pub image: String,
}

const BLOCK_KEYS: &[&str] = &["kind", "image"];
const IMAGE: &str = nspawn_machines::image::DEBIAN_12;

pub struct LocalRules;

impl PlanRules for LocalRules {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn read_block(&self, node: &Node, r: &mut Reader) -> Option<ProviderConfig> {
        crate::cloud::providers::rules::read_block_keys(r, node, self.kind(), BLOCK_KEYS)?;
        let image = r.provider_string(node, "image").unwrap_or_else(|| IMAGE.into());
        if image != IMAGE {
            let pos = node.get("image").map(|n| n.pos).unwrap_or(node.pos);
            r.d.error(pos, format!("the local provider has no image `{image}` — use `{IMAGE}`"));
        }
        // Reported once, here: the hosts that would inherit it are not refused again.
        Some(ProviderConfig::Local(LocalConfig { image: IMAGE.into() }))
    }

    fn block_keys(&self) -> &'static [&'static str] {
        BLOCK_KEYS
    }

    fn default_image(&self, config: &ProviderConfig) -> String {
        match config {
            ProviderConfig::Local(l) => l.image.clone(),
            _ => IMAGE.into(),
        }
    }

    /// The subnet becomes a bridge on the control host with the gateway's
    /// address: a range the host itself routes elsewhere would break it.
    fn check_subnet(&self, cidr: &At<Ipv4Net>, d: &mut Diags) {
        let net = cidr.v;
        if net.prefix_len() == 0 {
            d.error(cidr.pos, format!("subnet {net} is every address, which cannot be a bridge on the control host — use a private range such as 10.20.0.0/24"));
            return;
        }
        let special = [
            ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
            ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
            ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
            ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
            ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
        ];
        for (range, what) in special {
            let range: Ipv4Net = range.parse().expect("a CIDR");
            if range.contains(&net.network()) || net.contains(&range.network()) {
                d.error(cidr.pos, format!("subnet {net} overlaps {what}, which cannot be a bridge on the control host — use a private range such as 10.20.0.0/24"));
                return;
            }
        }
    }

    fn unused_keys(&self) -> &'static [(&'static str, &'static str)] {
        // Cores, memory and disk are recorded (not enforced); nothing reads a core fraction.
        &[("host", "zone"), ("host", "public_ip"), ("host", "core_fraction"), ("subnet", "zone"), ("defaults", "core_fraction")]
    }

    /// Every machine boots the one image the provider builds.
    fn check_hosts(&self, hosts: &[HostEntry], defaults: &HostDefaults, in_use: bool, d: &mut Diags) {
        if !in_use {
            return;
        }
        for h in hosts.iter().filter(|h| h.image(defaults) != IMAGE) {
            match &h.image {
                Some(i) => d.error(i.pos, format!("the local provider does not use `image: {}` — every machine boots its `{IMAGE}` image; remove `image` from host `{}`", i.v, h.name.v)),
                None => d.error(h.name.pos, format!("host `{}` gets image `{}` from defaults.image, but the local provider does not use it — every machine boots its `{IMAGE}` image; remove defaults.image", h.name.v, h.image(defaults))),
            }
        }
    }

    /// The machines sit on a bridge whose gateway address is the control host.
    fn ssh_from_subnet_gateway(&self) -> bool {
        true
    }

    /// The machines are containers off a Debian image with the distro
    /// mirror only: no Docker Engine, no Node.js 20, no npm registry.
    fn machines_reach_registries(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    fn load(provider: &str) -> Result<crate::plan::model::Plan, String> {
        let text = format!("version: 1\nproject: t\nprovider: {provider}\nnetwork: {{ name: main, subnets: [{{ name: a, cidr: 10.20.0.0/24 }}] }}\nhosts: [{{ name: pg }}]\n");
        crate::plan::load_str(std::path::Path::new("p.yaml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn an_image_it_does_not_build_is_refused_at_the_image() {
        assert_eq!(load("{ kind: local, image: ubuntu-2204 }").unwrap_err(), "p.yaml:3:33: the local provider has no image `ubuntu-2204` — use `debian-12`");
    }

    #[test]
    fn a_key_of_another_provider_is_refused_with_what_the_block_takes() {
        assert_eq!(load("{ kind: local, zone: a }").unwrap_err(), "p.yaml:3:26: the local provider does not use `zone` in its block (the yandex provider does) — remove it; provider (kind: local) takes kind, image");
        assert_eq!(load("{ kind: local, imag: a }").unwrap_err(), "p.yaml:3:26: unknown key `imag` in provider (local) — did you mean `image`?");
    }

    #[test]
    fn the_whole_address_space_is_no_subnet_for_a_bridge() {
        let text = "version: 1\nproject: t\nprovider: { kind: local }\nnetwork: { name: main, subnets: [{ name: a, cidr: 0.0.0.0/0 }] }\nhosts: [{ name: pg }]\n";
        let e = crate::plan::load_str(std::path::Path::new("p.yaml"), text).unwrap_err().to_string();
        assert_eq!(e, "p.yaml:4:51: subnet 0.0.0.0/0 is every address, which cannot be a bridge on the control host — use a private range such as 10.20.0.0/24");
    }

    #[test]
    fn hosts_get_the_local_image() {
        assert_eq!(load("{ kind: local }").expect("valid").hosts[0].image, "debian-12");
    }

    #[test]
    fn rigger_reaches_local_machines_from_their_subnets_gateway() {
        let plan = load("{ kind: local }").expect("valid");
        assert_eq!(crate::plan::security::ssh_source(&plan, &plan.hosts[0]), Some(std::net::Ipv4Addr::new(10, 20, 0, 1)));
    }
}
