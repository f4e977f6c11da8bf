//! Every role rigger knows, in one table of role objects (`role::Role`): each
//! says its name (the plan's `roles:` value), the roles it needs healthy
//! before its services start (its staging — packages, uploads — does not wait
//! for them), the services a host that departs from it stops
//! (reshape::drain), what it wants on a host and how it is brought up.
//! Adding a role is its module (a unit struct implementing `Role`), its
//! templates and one line here. The table's order is the order `plan`,
//! `graph` and the config phase show and walk roles in.

use super::role::Role;
use super::{app, backup, etcd, firewall, haproxy, keepalived, nginx, patroni, redis, saleor, storefront};
use std::sync::LazyLock;

/// The plan's roles. A role may only need roles above it (a test checks it).
pub const ROLES: &[&dyn Role] = &[
    &etcd::Etcd,
    &patroni::Patroni,
    &backup::Backup,
    &haproxy::Haproxy,
    &keepalived::Keepalived,
    &redis::Redis,
    &app::App,
    &saleor::Saleor,
    &nginx::Nginx,
    &storefront::Storefront,
];

/// The host firewall (nftables from the plan's groups): no plan role — every
/// host it applies to gets it — and it needs nothing, so it runs first.
pub const FIREWALL: &dyn Role = &firewall::Firewall;

/// Every role the config phase runs, the firewall first.
pub fn all() -> impl Iterator<Item = &'static dyn Role> {
    std::iter::once(FIREWALL).chain(ROLES.iter().copied())
}

/// The roles' names, in the table's order (for validation and suggestions).
pub static NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| ROLES.iter().map(|r| r.name()).collect());

/// A plan role by name.
pub fn get(name: &str) -> Option<&'static dyn Role> {
    ROLES.iter().copied().find(|r| r.name() == name)
}

/// Any role the config phase runs (the firewall too) by name.
pub fn runnable(name: &str) -> Option<&'static dyn Role> {
    all().find(|r| r.name() == name)
}

pub fn is_role(name: &str) -> bool {
    get(name).is_some()
}

/// The roles `role` needs, among `present` (the plan's roles). A name the
/// table lacks waits for every role before it — slow but safe.
pub fn needs<'a>(role: &str, present: &[&'a str]) -> Vec<&'a str> {
    match runnable(role) {
        Some(r) => present.iter().copied().filter(|p| r.needs().contains(p)).collect(),
        None => present.to_vec(),
    }
}

/// The services a host departing from `role` stops.
pub fn services(role: &str) -> &'static [&'static str] {
    get(role).map_or(&[], |r| r.services())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_roles_are_ignored_and_every_need_is_a_role_before_it() {
        assert_eq!(needs("app", &["etcd", "patroni", "haproxy", "redis", "app"]), vec!["haproxy", "redis"]);
        assert!(needs("redis", &["etcd", "patroni", "redis"]).is_empty());
        assert!(needs(FIREWALL.name(), &["etcd"]).is_empty());
        for (i, r) in ROLES.iter().enumerate() {
            for n in r.needs() {
                let at = ROLES.iter().position(|x| x.name() == *n).unwrap_or_else(|| panic!("{} needs {n}, which is no role", r.name()));
                // Needing only earlier roles keeps the table an order the sequential walk can use, and acyclic.
                assert!(at < i, "{} needs {n}, which comes after it", r.name());
            }
        }
    }

    #[test]
    fn an_unknown_role_waits_for_everything() {
        assert_eq!(needs("no-such-role", &["etcd", "redis"]), vec!["etcd", "redis"]);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = all().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ROLES.len() + 1, "every role, the firewall too, has a name of its own");
    }

    #[test]
    fn every_role_answers_to_its_name() {
        for r in all() {
            let found = runnable(r.name()).unwrap_or_else(|| panic!("{} is not found by its name", r.name()));
            // The very object of the table, not another role answering the same name.
            assert!(std::ptr::addr_eq(found, r), "{} finds another role", r.name());
            assert_eq!(is_role(r.name()), r.name() != FIREWALL.name(), "only the plan's roles are plan roles");
        }
        assert!(runnable("no-such-role").is_none());
    }

    #[test]
    fn every_setting_a_role_reads_by_name_is_declared() {
        // A plan with every role, so conditional ports (HAProxy's HTTP frontend with Saleor) are listed too.
        let text = concat!(
            "version: 1\nproject: t\nprovider: { kind: local }\nnetwork: { name: main, subnets: [{ name: a, cidr: 10.20.0.0/24 }] }\nhosts:\n",
            "  - { name: pg, count: 3, roles: [etcd, patroni] }\n  - { name: lb, count: 2, roles: [haproxy, keepalived] }\n",
            "  - { name: web, roles: [app, nginx, redis] }\n  - { name: shop, roles: [saleor, storefront] }\n  - { name: repo, roles: [backup] }\n",
            "services:\n  keepalived: { vip: 10.20.0.200 }\n",
        );
        let plan = crate::plan::load_str(std::path::Path::new("p.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
        let declared = |role: &str, key: &str| get(role).is_some_and(|r| r.settings().iter().any(|s| s.key == key));
        for r in ROLES {
            for (owner, key) in r.listens(&plan) {
                assert!(declared(owner, key), "{} listens on services.{owner}.{key}, which {owner} does not declare", r.name());
                assert!(plan.int_setting(owner, key) > 0);
            }
            for (var, key) in r.inventory_vars() {
                assert!(declared(r.name(), key), "inventory variable {var} carries services.{}.{key}, which is not declared", r.name());
            }
        }
        let ports: usize = plan.hosts.iter().map(|h| crate::flows::listeners(&plan, h).len()).sum();
        assert!(ports > plan.hosts.len(), "the roles listen somewhere");
    }
}
