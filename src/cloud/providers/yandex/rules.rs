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
        crate::cloud::providers::rules::read_block_keys(r, node, self.kind(), BLOCK_KEYS)?;
        let folder_id = r.required(node, "folder_id", "provider", "b1gexample").and_then(|n| r.string(n, "provider.folder_id"));
        let zone = r.required(node, "zone", "provider", "ru-central1-a").and_then(|n| r.string(n, "provider.zone"));
        let key_file = r.optional(node, "service_account_key_file").and_then(|n| r.path(n, "provider.service_account_key_file"));
        let endpoint = r.provider_string(node, "endpoint");
        if let (Some(e), Some(n)) = (&endpoint, node.get("endpoint")) {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                r.d.at(n, format!("provider.endpoint `{e}` is not a URL — write it like http://127.0.0.1:8930"));
            } else if let Some(why) = crate::cloud::providers::endpoint::refuses_credentials(e) {
                r.d.at(n, format!("provider.endpoint {why}"));
            }
        }
        let platform = r.provider_string(node, "platform").unwrap_or_else(|| "standard-v3".into());
        Some(ProviderConfig::Yandex(YandexConfig { folder_id: folder_id?.v, zone: zone?.v, service_account_key_file: key_file, endpoint, platform }))
    }

    fn block_keys(&self) -> &'static [&'static str] {
        BLOCK_KEYS
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

    /// VPC takes no gateway: a subnet's is always its first host address
    /// (`reserved_addresses`). Another one would be read by nothing.
    fn check_gateway(&self, cidr: &Ipv4Net, gateway: &At<std::net::Ipv4Addr>, d: &mut Diags) {
        let first = crate::plan::load::first_host(cidr);
        if gateway.v != first {
            d.error(gateway.pos, format!("Yandex Cloud gives subnet {cidr} the gateway {first}, and takes no other — remove `gateway`, or write {first}"));
        }
    }

    /// VPC keeps a subnet's first two host addresses: .1 its gateway, .2 its DNS server.
    fn reserved_addresses(&self, cidr: &Ipv4Net) -> Vec<(std::net::Ipv4Addr, &'static str)> {
        let gateway = crate::plan::load::first_host(cidr);
        vec![(gateway, "Yandex Cloud's gateway"), (std::net::Ipv4Addr::from(u32::from(gateway) + 1), "Yandex Cloud's DNS server")]
    }

    /// A resource's `name`: `|[a-z]([-a-z0-9]{0,61}[a-z0-9])?` (compute and vpc protos).
    fn cloud_name_limit(&self) -> Option<usize> {
        Some(63)
    }

    /// What standard-v3 sells and the Compute API takes (compute/v1
    /// instance_service.proto: ResourcesSpec, AttachedDiskSpec.DiskSpec;
    /// image_service.proto: GetImageLatestByFamilyRequest.family), so a plan
    /// the cloud would refuse is refused here, before anything is created.
    fn check_hosts(&self, hosts: &[HostEntry], defaults: &HostDefaults, in_use: bool, d: &mut Diags) {
        if !in_use {
            return;
        }
        for h in hosts {
            let name = &h.name.v;
            let at = |pos: Option<crate::plan::yaml::Pos>| pos.unwrap_or(h.name.pos);
            let cores = h.cores(defaults);
            if !cores_sold(cores) {
                d.error(at(h.cores.as_ref().map(|c| c.pos)), format!("host `{name}`: {cores} cores is not available on standard-v3 — use 2 to 36 in steps of 2, or 40 to 80 in steps of 4"));
            }
            let core_fraction = h.core_fraction(defaults);
            if ![20, 50, 100].contains(&core_fraction) {
                d.error(at(h.core_fraction.as_ref().map(|c| c.pos)), format!("host `{name}`: core_fraction {core_fraction} is not available on standard-v3 — allowed: 20, 50, 100"));
            }
            // Memory per core is judged only for a core count that is sold.
            if let Some(why) = memory_refused(h.memory(defaults), cores_sold(cores).then_some(cores)) {
                d.error(at(h.memory.as_ref().map(|m| m.pos)), format!("host `{name}`: {why}"));
            }
            let disk = h.disk(defaults);
            if !(MIN_DISK..=MAX_DISK).contains(&disk) {
                d.error(at(h.disk.as_ref().map(|m| m.pos)), format!("host `{name}`: a boot disk of {} is not available — Yandex Cloud disks are 4MiB to 4TiB", crate::plan::size::format_size(disk)));
            }
            let image = h.image(defaults);
            if !family_name(image) {
                d.error(
                    at(h.image.as_ref().map(|i| i.pos)),
                    format!("host `{name}`: image `{image}` is not an image family name (3 to 63 of a-z, 0-9 and -, starting with a letter, not ending with -) — e.g. ubuntu-2204-lts"),
                );
            }
        }
    }
}

const GIB: u64 = 1 << 30;
/// ResourcesSpec.memory: "less than or equal to 274877906944".
const MAX_MEMORY: u64 = 256 * GIB;
/// AttachedDiskSpec.DiskSpec.size: "between 4194304 and 4398046511104".
const MIN_DISK: u64 = 4 << 20;
const MAX_DISK: u64 = 4 << 40;

/// ResourcesSpec.cores: "2,4,6,…,34,36,40,44,…,76,80".
fn cores_sold(cores: u32) -> bool {
    matches!(cores, 2..=36 if cores % 2 == 0) || matches!(cores, 40..=80 if cores % 4 == 0)
}

/// Memory the API takes (at most 256 GiB) and standard-v3 sells (whole GiB,
/// 1 to 16 GiB per core — the simulator's platform rules); why not, if not.
fn memory_refused(memory: u64, cores: Option<u32>) -> Option<String> {
    let human = crate::plan::size::format_size(memory);
    if memory > MAX_MEMORY {
        return Some(format!("memory {human} is more than a Yandex Cloud machine can have — use at most 256GiB"));
    }
    if memory == 0 || memory % GIB != 0 {
        return Some(format!("memory {human} is not available on standard-v3 — use whole GiB (e.g. 4GiB)"));
    }
    let cores = cores?;
    let per_core = memory / u64::from(cores.max(1));
    if !(GIB..=16 * GIB).contains(&per_core) {
        return Some(format!("memory {human} for {cores} cores is not available on standard-v3 — it sells 1GiB to 16GiB per core ({}GiB to {}GiB here)", cores, 16 * cores));
    }
    None
}

/// GetImageLatestByFamilyRequest.family: `[a-z][-a-z0-9]{1,61}[a-z0-9]`.
fn family_name(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
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
            "p.yaml:9:24: host `pg`: 3 cores is not available on standard-v3 — use 2 to 36 in steps of 2, or 40 to 80 in steps of 4\n\
             p.yaml:9:42: host `pg`: core_fraction 30 is not available on standard-v3 — allowed: 20, 50, 100"
        );
    }

    /// The Compute API's own limits (instance_service.proto, image_service.proto),
    /// each refused at the value that breaks it.
    #[test]
    fn shapes_the_compute_api_refuses_are_refused_at_their_values() {
        let net = "network:\n  name: main\n  subnets:\n    - { name: a, cidr: 10.20.0.0/24 }\nhosts:\n";
        let host = |h: &str| errors(&format!("{net}  - {{ name: pg, {h} }}\n"));
        // Above 36 cores only multiples of 4 are sold.
        assert!(host("cores: 38, memory: 38GiB").contains("38 cores is not available on standard-v3 — use 2 to 36 in steps of 2, or 40 to 80 in steps of 4"));
        assert_eq!(host("cores: 40, memory: 40GiB"), "");
        assert_eq!(host("cores: 36, memory: 72GiB"), "");
        assert_eq!(host("memory: 512GiB, cores: 32"), "p.yaml:9:25: host `pg`: memory 512GiB is more than a Yandex Cloud machine can have — use at most 256GiB");
        assert!(host("memory: 1536MiB").contains("memory 1536MiB is not available on standard-v3 — use whole GiB"));
        assert!(host("memory: 64GiB").contains("memory 64GiB for 2 cores is not available on standard-v3 — it sells 1GiB to 16GiB per core (2GiB to 32GiB here)"));
        assert!(host("disk: 1MiB").contains("p.yaml:9:23: host `pg`: a boot disk of 1MiB is not available — Yandex Cloud disks are 4MiB to 4TiB"));
        assert!(host("disk: 5TiB").contains("a boot disk of 5TiB is not available"));
        assert!(host("image: Ubuntu_22").contains("p.yaml:9:24: host `pg`: image `Ubuntu_22` is not an image family name"));
        assert!(host("image: ab").contains("image `ab` is not an image family name"));
        assert_eq!(host("image: debian-12"), "");
        // From `defaults:`, the error names the host.
        let e = errors(&format!("defaults: {{ memory: 300GiB }}\n{net}  - {{ name: pg, cores: 32 }}\n"));
        assert!(e.contains("host `pg`: memory 300GiB is more than a Yandex Cloud machine can have"), "{e}");
    }

    #[test]
    fn a_rule_description_longer_than_a_cloud_takes_is_refused() {
        let long = "x".repeat(257);
        let e = errors(&format!(
            "network:\n  name: main\n  subnets:\n    - {{ name: a, cidr: 10.20.0.0/24 }}\nfirewall:\n  - name: ssh\n    rules:\n      - {{ direction: ingress, protocol: tcp, ports: 22, from: 10.20.0.0/24, description: {long} }}\nhosts:\n  - {{ name: pg, firewall: [ssh] }}\n"
        ));
        assert!(e.contains("the rule's description is 257 characters long, at most 256 fit — shorten it"), "{e}");
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
