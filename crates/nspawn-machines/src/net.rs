//! Host networking for local machines, all made with `ip`:
//! - a Linux bridge per plan network, holding each subnet's gateway address, so
//!   the host reaches every machine and subnets route through the host;
//! - per machine a network namespace with `eth0` (one end of a veth pair whose
//!   other end is on the bridge), the plan's address and a default route.
//!
//! Traffic stays on this host: policy rules let packets that arrive on a bridge
//! be routed only to that network's own subnets (everything else is
//! unreachable), and forwarding is switched on for the bridge alone, only when
//! the network has more than one subnet. No NAT, no global `ip_forward`.
//! Every function is idempotent.

use crate::cmd::{self, CommandError};
use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

/// Policy rule priorities: subnet routes first, then the catch-all that keeps
/// machines' traffic from leaving the host.
const RULE_PRIORITY_SUBNETS: &str = "10000";
const RULE_PRIORITY_UNREACHABLE: &str = "10001";

/// What exists on the host, from one `ip -j -d addr show`.
#[derive(Debug, Default)]
pub struct HostLinks {
    pub bridges: BTreeSet<String>,
    pub links: BTreeSet<String>,
    pub ipv4: BTreeMap<String, Vec<Ipv4Net>>,
}

impl HostLinks {
    pub fn has_address(&self, link: &str, address: Ipv4Net) -> bool {
        self.ipv4.get(link).is_some_and(|addrs| addrs.contains(&address))
    }
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: Option<String>,
    prefixlen: Option<u8>,
}

pub async fn host_links() -> Result<HostLinks> {
    parse_links(&cmd::run("ip", &["-j", "-d", "addr", "show"]).await?)
}

async fn links_in(namespace: Option<&str>) -> Result<HostLinks> {
    match namespace {
        None => host_links().await,
        Some(ns) => parse_links(&cmd::run("ip", &["-n", ns, "-j", "-d", "addr", "show"]).await?),
    }
}

fn parse_links(json: &str) -> Result<HostLinks> {
    let parsed: Vec<IpLink> = serde_json::from_str(json).context("parsing `ip -j addr show` output")?;
    let mut links = HostLinks::default();
    for link in parsed {
        if link.linkinfo.as_ref().and_then(|i| i.info_kind.as_deref()) == Some("bridge") {
            links.bridges.insert(link.ifname.clone());
        }
        let addrs = link
            .addr_info
            .iter()
            .filter(|a| a.family == "inet")
            .filter_map(|a| Ipv4Net::new(a.local.as_deref()?.parse().ok()?, a.prefixlen?).ok())
            .collect();
        links.ipv4.insert(link.ifname.clone(), addrs);
        links.links.insert(link.ifname);
    }
    Ok(links)
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Runs an `ip` change where "already there" / "already gone" is success.
async fn ip_tolerant(args: &[&str]) -> Result<()> {
    match cmd::run("ip", args).await {
        Ok(_) => Ok(()),
        Err(CommandError::Failed { stderr, .. })
            if ["File exists", "No such file or directory", "Cannot find device", "Cannot assign requested address"]
                .iter()
                .any(|benign| stderr.contains(benign)) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn ensure_bridge(bridge: &str) -> Result<()> {
    if !host_links().await?.links.contains(bridge) {
        ip_tolerant(&["link", "add", bridge, "type", "bridge"]).await?;
    }
    cmd::run("ip", &["link", "set", bridge, "up"]).await?;
    ip_tolerant(&["rule", "add", "iif", bridge, "unreachable", "pref", RULE_PRIORITY_UNREACHABLE]).await
}

pub async fn delete_bridge(bridge: &str) -> Result<()> {
    ip_tolerant(&["rule", "del", "iif", bridge, "unreachable", "pref", RULE_PRIORITY_UNREACHABLE]).await?;
    if host_links().await?.links.contains(bridge) {
        ip_tolerant(&["link", "del", bridge, "type", "bridge"]).await?;
    }
    Ok(())
}

/// The subnet's gateway address on the bridge, and a rule letting machines on
/// the bridge reach it; forwarding on the bridge once it carries two subnets.
pub async fn ensure_subnet(bridge: &str, cidr: Ipv4Net, gateway: Ipv4Addr) -> Result<()> {
    let gateway_net = Ipv4Net::new(gateway, cidr.prefix_len()).context("gateway prefix")?;
    let links = host_links().await?;
    anyhow::ensure!(links.links.contains(bridge), "bridge {bridge} does not exist: create the network first");
    if !links.has_address(bridge, gateway_net) {
        ip_tolerant(&["addr", "add", &gateway_net.to_string(), "dev", bridge]).await?;
    }
    let cidr_s = cidr.trunc().to_string();
    ip_tolerant(&["rule", "add", "iif", bridge, "to", &cidr_s, "lookup", "main", "pref", RULE_PRIORITY_SUBNETS]).await?;
    let subnets_on_bridge = host_links().await?.ipv4.get(bridge).map_or(0, Vec::len);
    if subnets_on_bridge > 1 {
        set_bridge_forwarding(bridge, true)?;
    }
    Ok(())
}

pub async fn remove_subnet(bridge: &str, cidr: Ipv4Net, gateway: Ipv4Addr) -> Result<()> {
    let gateway_net = Ipv4Net::new(gateway, cidr.prefix_len()).context("gateway prefix")?;
    let cidr_s = cidr.trunc().to_string();
    ip_tolerant(&["rule", "del", "iif", bridge, "to", &cidr_s, "lookup", "main", "pref", RULE_PRIORITY_SUBNETS]).await?;
    let links = host_links().await?;
    if links.has_address(bridge, gateway_net) {
        ip_tolerant(&["addr", "del", &gateway_net.to_string(), "dev", bridge]).await?;
    }
    if links.links.contains(bridge) && host_links().await?.ipv4.get(bridge).map_or(0, Vec::len) <= 1 {
        set_bridge_forwarding(bridge, false)?;
    }
    Ok(())
}

/// IPv4 forwarding for packets arriving on this bridge only (the host-wide
/// `net.ipv4.ip_forward` stays as it is).
fn set_bridge_forwarding(bridge: &str, on: bool) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/forwarding");
    std::fs::write(&path, if on { "1" } else { "0" }).with_context(|| format!("writing {path}"))
}

/// Where a machine sits on the network.
#[derive(Debug, Clone)]
pub struct MachineLink<'a> {
    pub netns: &'a str,
    pub veth_host: &'a str,
    pub bridge: &'a str,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// The machine's namespace with `eth0` at its address, default route via the gateway.
pub async fn ensure_machine_link(link: &MachineLink<'_>) -> Result<()> {
    let ns = link.netns;
    if !netns_exists(ns) {
        ip_tolerant(&["netns", "add", ns]).await?;
    }
    if !host_links().await?.links.contains(link.veth_host) {
        // A namespace left without its pair may still hold an old eth0.
        if links_in(Some(ns)).await?.links.contains("eth0") {
            ip_tolerant(&["-n", ns, "link", "del", "eth0"]).await?;
        }
        cmd::run("ip", &["link", "add", link.veth_host, "type", "veth", "peer", "name", "eth0", "netns", ns]).await?;
    }
    cmd::run("ip", &["link", "set", link.veth_host, "master", link.bridge, "up"]).await?;
    let address = link.address.to_string();
    let gateway = link.gateway.to_string();
    cmd::run("ip", &["-n", ns, "link", "set", "lo", "up"]).await?;
    cmd::run("ip", &["-n", ns, "addr", "replace", &address, "dev", "eth0"]).await?;
    cmd::run("ip", &["-n", ns, "link", "set", "eth0", "up"]).await?;
    cmd::run("ip", &["-n", ns, "route", "replace", "default", "via", &gateway, "dev", "eth0"]).await?;
    Ok(())
}

/// Removes the veth pair (deleting one end removes both) and the namespace.
/// The pair is deleted explicitly: the kernel tears a namespace down lazily.
pub async fn delete_machine_link(netns: &str, veth_host: &str) -> Result<()> {
    if host_links().await?.links.contains(veth_host) {
        ip_tolerant(&["link", "del", veth_host]).await?;
    }
    if netns_exists(netns) {
        ip_tolerant(&["netns", "del", netns]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bridges_and_addresses() {
        let json = r#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifname":"rgabc","linkinfo":{"info_kind":"bridge"},"addr_info":[{"family":"inet","local":"10.9.0.1","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        let links = parse_links(json).expect("parses");
        assert!(links.bridges.contains("rgabc"));
        assert!(!links.bridges.contains("lo"));
        assert!(links.has_address("rgabc", "10.9.0.1/24".parse().expect("net")));
        assert_eq!(links.ipv4["rgabc"].len(), 1);
    }
}
