//! Yandex Cloud's plan rules: the `provider:` block, the default image, the
//! subnet sizes VPC accepts and the standard-v3 platform's CPU shapes.

use crate::plan::diag::Diags;
use crate::plan::model::ProviderConfig;
use crate::plan::read::{At, HostDefaults, HostEntry, Reader};
use crate::plan::yaml::Node;
use crate::cloud::providers::rules::PlanRules;
use ipnet::Ipv4Net;
use serde::Serialize;
use std::path::PathBuf;

/// The plan's `provider:` block for Yandex Cloud, as `read_block` reads it.
#[derive(Debug, Clone, Serialize)]
pub struct YandexConfig {
    pub folder_id: String,
    pub zone: String,
    pub service_account_key_file: Option<PathBuf>,
    pub endpoint: Option<String>,
    pub platform: String,
}

const BLOCK_KEYS: &[&str] = &["kind", "folder_id", "zone", "service_account_key_file", "endpoint", "platform"];

pub struct YandexRules;

impl PlanRules for YandexRules {
    fn kind(&self) -> &'static str {
        "yandex"
    }

    fn read_block(&self, node: &Node, r: &mut Reader) -> Option<ProviderConfig> {
        r.map(node, "provider (yandex)", BLOCK_KEYS)?;
        let folder_id = r.required(node, "folder_id", "provider", "b1gexample").and_then(|n| r.string(n, "provider.folder_id"));
        let zone = r.required(node, "zone", "provider", "ru-central1-a").and_then(|n| r.string(n, "provider.zone"));
        let key_file = r.optional(node, "service_account_key_file").and_then(|n| r.path(n, "provider.service_account_key_file"));
        let endpoint = r.provider_string(node, "endpoint");
        if let (Some(e), Some(n)) = (&endpoint, node.get("endpoint")) {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                r.d.at(n, format!("provider.endpoint `{e}` is not a URL — write it like http://127.0.0.1:8930"));
            }
        }
        let platform = r.provider_string(node, "platform").unwrap_or_else(|| "standard-v3".into());
        Some(ProviderConfig::Yandex(YandexConfig { folder_id: folder_id?.v, zone: zone?.v, service_account_key_file: key_file, endpoint, platform }))
    }

    fn default_image(&self, _config: &ProviderConfig) -> String {
        "ubuntu-2204-lts".into()
    }

    /// A subnet lives in one zone; the provider's is the default.
    fn default_zone(&self, config: &ProviderConfig) -> Option<String> {
        match config {
            ProviderConfig::Yandex(y) => Some(y.zone.clone()),
            _ => None,
        }
    }

    fn check_subnet(&self, cidr: &At<Ipv4Net>, d: &mut Diags) {
        if !(16..=28).contains(&cidr.v.prefix_len()) {
            d.error(cidr.pos, format!("Yandex Cloud subnets must be between /16 and /28, {} is not — change the prefix length", cidr.v));
        }
    }

    /// standard-v3 sells even core counts up to 80 at 20, 50 or 100 % of a core.
    fn check_hosts(&self, hosts: &[HostEntry], defaults: &HostDefaults, in_use: bool, d: &mut Diags) {
        if !in_use {
            return;
        }
        for h in hosts {
            let cores = h.cores(defaults);
            if cores % 2 != 0 || cores > 80 {
                let pos = h.cores.as_ref().map(|c| c.pos).unwrap_or(h.name.pos);
                d.error(pos, format!("host `{}`: {cores} cores is not available on standard-v3 — use an even number from 2 to 80", h.name.v));
            }
            let core_fraction = h.core_fraction(defaults);
            if ![20, 50, 100].contains(&core_fraction) {
                let pos = h.core_fraction.as_ref().map(|c| c.pos).unwrap_or(h.name.pos);
                d.error(pos, format!("host `{}`: core_fraction {core_fraction} is not available on standard-v3 — allowed: 20, 50, 100", h.name.v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::model::ProviderConfig;

    const HEAD: &str = "version: 1\nproject: t\nprovider: { kind: yandex, folder_id: f, zone: ru-central1-b }\n";

    fn errors(rest: &str) -> String {
        crate::plan::load_str(std::path::Path::new("p.yaml"), &format!("{HEAD}{rest}")).map(|_| String::new()).unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn a_subnet_outside_16_to_28_is_refused_at_its_cidr() {
        let e = errors("network:\n  name: main\n  subnets:\n    - { name: a, cidr: 10.20.0.0/29 }\nhosts:\n  - { name: pg }\n");
        assert_eq!(e, "p.yaml:7:24: Yandex Cloud subnets must be between /16 and /28, 10.20.0.0/29 is not — change the prefix length");
    }

    #[test]
    fn odd_cores_and_a_foreign_core_fraction_are_refused_at_their_values() {
        let e = errors("network:\n  name: main\n  subnets:\n    - { name: a, cidr: 10.20.0.0/24 }\nhosts:\n  - { name: pg, cores: 3, core_fraction: 30 }\n");
        assert_eq!(
            e,
            "p.yaml:9:24: host `pg`: 3 cores is not available on standard-v3 — use an even number from 2 to 80\n\
             p.yaml:9:42: host `pg`: core_fraction 30 is not available on standard-v3 — allowed: 20, 50, 100"
        );
    }

    #[test]
    fn the_block_reads_into_the_yandex_config_with_its_defaults() {
        let plan = crate::plan::load_str(
            std::path::Path::new("p.yaml"),
            &format!("{HEAD}network:\n  name: main\n  subnets:\n    - {{ name: a, cidr: 10.20.0.0/24 }}\nhosts:\n  - {{ name: pg }}\n"),
        )
        .expect("valid");
        let ProviderConfig::Yandex(y) = &plan.provider else { panic!("a yandex config") };
        assert_eq!((y.folder_id.as_str(), y.zone.as_str(), y.platform.as_str()), ("f", "ru-central1-b", "standard-v3"));
        assert_eq!(plan.hosts[0].image, "ubuntu-2204-lts");
        assert_eq!(plan.network.subnets[0].zone.as_deref(), Some("ru-central1-b"));
    }

    #[test]
    fn an_endpoint_that_is_no_url_is_refused_at_its_value() {
        let e = crate::plan::load_str(
            std::path::Path::new("p.yaml"),
            "version: 1\nproject: t\nprovider:\n  kind: yandex\n  folder_id: f\n  zone: z\n  endpoint: localhost:8930\nnetwork: { name: main, subnets: [{ name: a, cidr: 10.20.0.0/24 }] }\nhosts: [{ name: pg }]\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "p.yaml:7:13: provider.endpoint `localhost:8930` is not a URL — write it like http://127.0.0.1:8930");
    }
}
