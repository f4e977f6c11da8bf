//! Every role rigger knows, in one table: its name (the plan's `roles:`
//! value), the roles it needs healthy before its services start (its staging —
//! packages, uploads — does not wait for them) and the services a host that
//! departs from it stops (reshape::drain). Adding a role is one line here,
//! its module and its templates. The table's order is the order `plan`,
//! `graph` and the sequential fallback show and walk roles in.

use std::sync::LazyLock;

pub struct RoleSpec {
    pub name: &'static str,
    /// Roles healthy before this one starts (roles absent from a plan are ignored).
    pub needs: &'static [&'static str],
    /// Services a departing host stops for this role (patroni and etcd leave
    /// through their own steps; Redis only after the config phase).
    pub services: &'static [&'static str],
}

const fn role(name: &'static str, needs: &'static [&'static str], services: &'static [&'static str]) -> RoleSpec {
    RoleSpec { name, needs, services }
}

pub const ROLES: &[RoleSpec] = &[
    role("etcd", &[], &["etcd"]),
    role("patroni", &["etcd"], &["patroni"]),
    // The repository host and archiving: the cluster must be up to take a backup.
    role("backup", &["patroni"], &[]),
    role("haproxy", &["patroni"], &["haproxy"]),
    role("keepalived", &["haproxy"], &["keepalived"]),
    role("redis", &[], &["redis-server"]),
    // The write port (HAProxy). When apps reach it through keepalived's VIP,
    // their own health gate waits for the VIP: they start meanwhile.
    role("app", &["haproxy", "redis"], &["app"]),
    // Saleor's worker gets SIGTERM on a stop: Celery's warm shutdown finishes the task at hand.
    role("saleor", &["haproxy", "redis"], &["saleor-api", "saleor-dashboard", "saleor-worker"]),
    role("nginx", &["app", "saleor"], &["nginx"]),
    role("storefront", &["saleor"], &["storefront"]),
];

/// The host firewall (nftables from the plan's groups): no plan role — every
/// host in a firewall group gets it — and it needs nothing, so it runs first.
pub const FIREWALL: &str = "firewall";

/// The roles' names, in the table's order (for validation and suggestions).
pub static NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| ROLES.iter().map(|r| r.name).collect());

pub fn get(name: &str) -> Option<&'static RoleSpec> {
    ROLES.iter().find(|r| r.name == name)
}

pub fn is_role(name: &str) -> bool {
    get(name).is_some()
}

/// The roles `role` needs, among `present` (the plan's roles). A name the
/// table lacks waits for every role before it — slow but safe.
pub fn needs<'a>(role: &str, present: &[&'a str]) -> Vec<&'a str> {
    if role == FIREWALL {
        return vec![];
    }
    match get(role) {
        Some(spec) => present.iter().copied().filter(|p| spec.needs.contains(p)).collect(),
        None => present.to_vec(),
    }
}

/// The services a host departing from `role` stops.
pub fn services(role: &str) -> &'static [&'static str] {
    get(role).map_or(&[], |r| r.services)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_roles_are_ignored_and_every_need_is_a_role_before_it() {
        assert_eq!(needs("app", &["etcd", "patroni", "haproxy", "redis", "app"]), vec!["haproxy", "redis"]);
        assert!(needs("redis", &["etcd", "patroni", "redis"]).is_empty());
        assert!(needs(FIREWALL, &["etcd"]).is_empty());
        for (i, r) in ROLES.iter().enumerate() {
            for n in r.needs {
                let at = ROLES.iter().position(|x| x.name == *n).unwrap_or_else(|| panic!("{} needs {n}, which is no role", r.name));
                // Needing only earlier roles keeps the table an order the sequential walk can use, and acyclic.
                assert!(at < i, "{} needs {n}, which comes after it", r.name);
            }
        }
    }

    #[test]
    fn an_unknown_role_waits_for_everything() {
        assert_eq!(needs("no-such-role", &["etcd", "redis"]), vec!["etcd", "redis"]);
    }

    #[test]
    fn names_are_unique() {
        let mut names = NAMES.clone();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ROLES.len());
    }
}
