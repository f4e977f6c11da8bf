//! The local provider's plan rules: its `provider:` block names the one image
//! it builds (src/cloud/providers/local/image.rs), which is every host's image.

use crate::plan::model::ProviderConfig;
use crate::plan::read::Reader;
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
        r.map(node, "provider (local)", BLOCK_KEYS)?;
        let image = r.provider_string(node, "image").unwrap_or_else(|| IMAGE.into());
        if image != IMAGE {
            let pos = node.get("image").map(|n| n.pos).unwrap_or(node.pos);
            r.d.error(pos, format!("the local provider has no image `{image}` — use `{IMAGE}`"));
        }
        Some(ProviderConfig::Local(LocalConfig { image }))
    }

    fn default_image(&self, config: &ProviderConfig) -> String {
        match config {
            ProviderConfig::Local(l) => l.image.clone(),
            _ => IMAGE.into(),
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
        assert_eq!(load("{ kind: local, zone: a }").unwrap_err(), "p.yaml:3:26: unknown key `zone` in provider (local) — allowed: kind, image");
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
