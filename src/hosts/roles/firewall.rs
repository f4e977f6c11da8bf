//! The host firewall: nftables rules rendered from the plan's firewall groups
//! (ingress dropped unless a rule lets it in). rigger owns `/etc/nftables.conf`
//! and, inside it, only its own table `inet rigger`, replaced in one
//! transaction (`nft -f` is atomic) after `nft -c` has checked the candidate.
//! Other tables (Docker's) are left alone. Egress is not filtered.
//! Gate: the live table is there with its drop policy.

use super::{file, service};
use crate::hosts::ops::{HostDesired, OnChange};
use crate::hosts::run::{wait_for, RoleRun};
use crate::plan::model::{Host, Peer, Plan, Protocol, Rule};
use crate::plan::security::{firewalled, group_members, ingress_rules, ssh_source};
use anyhow::Result;
use std::time::Duration;

pub const CONFIG: &str = "/etc/nftables.conf";
const HEADER: &str = "#!/usr/sbin/nft -f\n# Managed by rigger — changes here are overwritten by the next apply.\n";
/// Creating the table first makes the delete succeed on a host that never had it.
const REPLACE: &str = "table inet rigger\ndelete table inet rigger\n";

/// The hosts the firewall role touches: every host the plan firewalls, and
/// (to take rigger's table away again) every configured host when it does not.
pub fn applies_to(host: &Host) -> bool {
    !host.firewall.is_empty() || host.roles.iter().any(|r| super::registry::is_role(r))
}

/// The whole `/etc/nftables.conf` for one host.
pub fn ruleset(plan: &Plan, host: &Host) -> String {
    let mut out = String::from(HEADER);
    if !firewalled(plan, host) {
        let why = if plan.security.firewall { "the plan puts this host in no firewall group" } else { "security.firewall is false in the plan" };
        out.push_str(&format!("# No host firewall: {why}. Only rigger's own table is removed.\n{REPLACE}"));
        return out;
    }
    out.push_str(&format!("# {}: the plan's firewall groups [{}]; ingress not let in below is dropped.\n", host.name, host.firewall.join(", ")));
    out.push_str(REPLACE);
    out.push_str("table inet rigger {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n");
    out.push_str("\t\tiif \"lo\" accept\n\t\tct state established,related accept\n\t\tct state invalid drop\n");
    // IPv6 neighbour discovery keeps the link usable; nothing else of IPv6 comes in.
    out.push_str("\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept\n");
    if let Some(src) = ssh_source(plan, host) {
        let who = if plan.ssh.bastion.as_ref().is_some_and(|b| *b != host.name) { "the bastion" } else { "the control host" };
        out.push_str(&format!("\t\t# rigger's own SSH path, from {who}\n\t\tip saddr {src} tcp dport 22 accept\n"));
    }
    if let Some(behind) = jump_targets(plan, host) {
        // The bastion's own connections to the hosts behind it (the SSH jumps)
        // were made before this ruleset; conntrack starts with it, so their
        // replies would come in as "new" and be dropped, cutting every jump
        // until it reconnects. Only replies of that path are let in: from
        // those hosts' SSH port, never a SYN (nothing can open a connection).
        out.push_str(&format!("\t\t# replies on rigger's SSH path through this bastion (jumps made before this ruleset)\n\t\tip saddr {behind} tcp sport 22 tcp flags & syn == 0 accept\n"));
    }
    for (group, rule) in ingress_rules(plan, host) {
        out.push_str(&format!("\t\t# group {group}{}\n", rule.description.as_ref().map(|d| format!(": {}", d.replace('\n', " "))).unwrap_or_default()));
        match render_rule(plan, rule) {
            Some(line) => out.push_str(&format!("\t\t{line}\n")),
            None => out.push_str("\t\t# (no host is in that group yet: nothing to let in)\n"),
        }
    }
    out.push_str("\t}\n}\n");
    out
}

/// On the plan's bastion: the addresses of the hosts rigger reaches through
/// it, as an nftables set (or one address); `None` on any other host.
fn jump_targets(plan: &Plan, host: &Host) -> Option<String> {
    if plan.ssh.bastion.as_deref() != Some(host.name.as_str()) {
        return None;
    }
    let mut ips: Vec<String> = plan.hosts.iter().filter(|h| h.name != host.name).map(|h| h.ip.to_string()).collect();
    ips.sort();
    ips.dedup();
    match ips.len() {
        0 => None,
        1 => ips.pop(),
        _ => Some(format!("{{ {} }}", ips.join(", "))),
    }
}

/// One plan rule as an nftables statement; `None` when its group has no member.
fn render_rule(plan: &Plan, rule: &Rule) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let sources: Vec<String> = match &rule.peer {
        // No source at all must never widen to "anywhere" (the loader refuses it too).
        Peer::Cidrs(nets) if nets.is_empty() => return None,
        Peer::Cidrs(nets) if nets.iter().any(|n| n.prefix_len() == 0) => vec![],
        Peer::Cidrs(nets) => nets.iter().map(|n| if n.prefix_len() == 32 { n.addr().to_string() } else { n.trunc().to_string() }).collect(),
        Peer::Group(g) => {
            let mut ips: Vec<String> = group_members(plan, g).map(|h| h.ip.to_string()).collect();
            ips.dedup();
            if ips.is_empty() {
                return None;
            }
            ips
        }
    };
    if !sources.is_empty() {
        parts.push(format!("ip saddr {}", set(&sources)));
    }
    let ports: Vec<String> = rule.ports.iter().map(|p| if p.from == p.to { p.from.to_string() } else { format!("{}-{}", p.from, p.to) }).collect();
    match (&rule.protocol, ports.is_empty()) {
        (Protocol::Tcp, false) => parts.push(format!("tcp dport {}", set(&ports))),
        (Protocol::Udp, false) => parts.push(format!("udp dport {}", set(&ports))),
        (Protocol::Tcp, true) => parts.push("meta l4proto tcp".into()),
        (Protocol::Udp, true) => parts.push("meta l4proto udp".into()),
        (Protocol::Icmp, _) => parts.push("meta l4proto icmp".into()),
        (Protocol::Any, _) => {
            if sources.is_empty() {
                parts.push("meta nfproto ipv4".into());
            }
        }
    }
    parts.push("accept".into());
    Some(parts.join(" "))
}

fn set(items: &[String]) -> String {
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

pub fn desired(plan: &Plan, host: &Host) -> HostDesired {
    HostDesired {
        packages: vec!["nftables".into()],
        files: vec![file("firewall", CONFIG, ruleset(plan, host), 0o644, "root", "root", Some(("nft -c", "nft -c -f {}")), &["nftables"])],
        services: vec![service("firewall", "nftables", OnChange::Custom)],
        ..Default::default()
    }
}

const LIVE_TABLE: &str = "nft list table inet rigger 2>&1";

/// The gate's command, asked ahead in the facts round trip.
pub fn gate_asks() -> Vec<crate::hosts::remote::ahead::Ask> {
    vec![crate::hosts::remote::ahead::Ask::sudo(LIVE_TABLE, None)]
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    run.each(|h, s| async move { run.plain_service_changes(h, s).await }).await?;
    // A changed ruleset is loaded with nft itself (what `systemctl reload nftables`
    // runs), so a failure reports nft's own words; one failed load under heavy
    // load was seen here without them, so it is tried again before giving up.
    run.each(|h, s| async move {
        if !run.changes_of(&h.name).custom.iter().any(|x| x == "nftables") {
            return Ok(());
        }
        run.events.progress(&format!("firewall {}", h.name), "loading the nftables ruleset");
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let out = s.sudo(&format!("nft -f {CONFIG} 2>&1"), None).await?;
            if out.ok() {
                return Ok(());
            }
            last = out.stdout.trim().to_string();
        }
        anyhow::bail!("{}: nft -f {CONFIG} failed three times, the previous ruleset stays: {last}", h.name)
    })
    .await?;
    run.each(|h, s| async move {
        let want_table = firewalled(run.plan, h);
        wait_for(&format!("{}: the live nftables ruleset is rigger's", h.name), Duration::from_secs(10), || async {
            let out = s.sudo(LIVE_TABLE, None).await?;
            let has = out.ok() && out.stdout.contains("policy drop");
            Ok(if has == want_table { Ok(()) } else if want_table { Err(format!("no `inet rigger` table with a drop policy: {}", out.stdout.trim())) } else { Err("rigger's table is still loaded".into()) })
        })
        .await
    })
    .await
}


/// The host firewall, as the registry lists it: no plan role, see `applies_to`.
pub struct Firewall;

/// The plan's `roles:` value.
pub const NAME: &str = "firewall";

#[async_trait::async_trait]
impl super::role::Role for Firewall {
    fn name(&self) -> &'static str {
        NAME
    }

    fn applies_to(&self, host: &Host) -> bool {
        applies_to(host)
    }
    fn desired(&self, at: &super::role::HostInput<'_>) -> Result<HostDesired> {
        Ok(desired(at.plan, at.host))
    }
    fn gate_asks(&self, _plan: &Plan, _host: &Host, _secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
        gate_asks()
    }
    async fn converge(&self, run: &RoleRun<'_>) -> Result<()> {
        converge(run).await
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::load_str;
    use std::path::Path;

    const PLAN: &str = "version: 1\nproject: fw\nprovider: { kind: local }\nssh: { user: rigger, private_key_file: ./k }\n\
        network: { name: main, subnets: [ { name: app, cidr: 10.9.0.0/24, gateway: 10.9.0.1 } ] }\n\
        firewall:\n  - name: db\n    rules:\n      - { direction: ingress, protocol: tcp, ports: \"5432,8008\", from_group: db }\n\
        \x20     - { direction: ingress, protocol: tcp, ports: 5000-5001, from: 10.9.0.0/24, description: write and read }\n\
        \x20     - { direction: ingress, protocol: any, from_group: lb }\n\
        \x20     - { direction: egress, protocol: any, to: 0.0.0.0/0 }\n  - name: lb\n    rules: []\n\
        hosts:\n  - { name: pg, count: 2, ip: 10.9.0.21, roles: [], firewall: [db] }\n  - { name: lb, ip: 10.9.0.11, firewall: [lb] }\n  - { name: free, ip: 10.9.0.99 }\n";

    #[test]
    fn rules_resolve_groups_to_member_addresses() {
        let plan = load_str(Path::new("/tmp/fw.yaml"), PLAN).unwrap();
        let text = super::ruleset(&plan, plan.host("pg-1").unwrap());
        assert!(text.contains("policy drop;"), "{text}");
        assert!(text.contains("ip saddr { 10.9.0.21, 10.9.0.22 } tcp dport { 5432, 8008 } accept"), "{text}");
        assert!(text.contains("ip saddr 10.9.0.0/24 tcp dport 5000-5001 accept"), "{text}");
        assert!(text.contains("ip saddr 10.9.0.11 accept"), "{text}");
        assert!(text.contains("ip saddr 10.9.0.1 tcp dport 22 accept"), "the control host's SSH: {text}");
        assert!(!text.contains("0.0.0.0/0"), "egress is not rendered: {text}");
    }

    /// On the bastion, the replies of its jumps to the hosts behind it come
    /// in although its firewall loads after those connections were made
    /// (conntrack would call them new); never a SYN. Other hosts get no such rule.
    #[test]
    fn the_bastion_lets_in_the_replies_of_its_ssh_jumps() {
        let plan = load_str(Path::new("/tmp/fw.yaml"), &PLAN.replace("ssh: { user: rigger, private_key_file: ./k }", "ssh: { user: rigger, private_key_file: ./k, bastion: lb }")
            .replace("rules: []", "rules: [ { direction: ingress, protocol: tcp, ports: 22, from: 0.0.0.0/0 } ]")).unwrap();
        let text = super::ruleset(&plan, plan.host("lb").unwrap());
        assert!(text.contains("ip saddr { 10.9.0.21, 10.9.0.22, 10.9.0.99 } tcp sport 22 tcp flags & syn == 0 accept"), "{text}");
        let text = super::ruleset(&plan, plan.host("pg-1").unwrap());
        assert!(!text.contains("sport 22"), "{text}");
        assert!(text.contains("ip saddr 10.9.0.11 tcp dport 22 accept"), "SSH from the bastion: {text}");
    }

    #[test]
    fn a_rule_with_no_source_address_lets_nothing_in() {
        // A plan built by hand (the loader refuses `from: []`): no source is not "anywhere".
        let mut plan = load_str(Path::new("/tmp/fw.yaml"), PLAN).unwrap();
        plan.firewall[0].rules[1].peer = crate::plan::model::Peer::Cidrs(vec![]);
        assert_eq!(super::render_rule(&plan, &plan.firewall[0].rules[1]), None);
    }

    #[test]
    fn hosts_in_no_group_or_with_the_switch_off_only_lose_riggers_table() {
        let plan = load_str(Path::new("/tmp/fw.yaml"), PLAN).unwrap();
        let text = super::ruleset(&plan, plan.host("free").unwrap());
        assert!(text.contains("delete table inet rigger") && !text.contains("policy drop"), "{text}");
        let off = load_str(Path::new("/tmp/fw.yaml"), &format!("{PLAN}security: {{ firewall: false }}\n")).unwrap();
        let text = super::ruleset(&off, off.host("pg-1").unwrap());
        assert!(!text.contains("policy drop") && text.contains("security.firewall is false"), "{text}");
    }

    #[test]
    fn a_firewall_that_cuts_riggers_ssh_is_refused_with_its_position() {
        let plan = PLAN.replace("provider: { kind: local }", "provider: { kind: proxmox, node: pve, storage: s, bridge: vmbr0, template: t }");
        let err = load_str(Path::new("/tmp/fw.yaml"), &plan).unwrap_err().to_string();
        assert!(err.contains("/tmp/fw.yaml:17:42: host `lb`") && err.contains("no SSH (tcp/22) in at all"), "{err}");
        // pg reaches 22 through `protocol: any` from lb; lb needs a rule of its own.
        assert!(!err.contains("host `pg-1`"), "{err}");
        let with_ssh = plan.replace("rules: []", "rules: [ { direction: ingress, protocol: tcp, ports: 22, from: 192.0.2.0/24 } ]");
        load_str(Path::new("/tmp/fw.yaml"), &with_ssh).unwrap();
    }

    #[test]
    fn unknown_security_keys_get_a_hint() {
        let err = load_str(Path::new("/tmp/fw.yaml"), &format!("{PLAN}security: {{ firewal: false }}\n")).unwrap_err().to_string();
        assert!(err.contains("unknown key `firewal` in security — did you mean `firewall`?"), "{err}");
    }
}
