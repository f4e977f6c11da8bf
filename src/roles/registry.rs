//! Which roles a role needs healthy before its services start. Its staging
//! (packages, uploads) does not wait for them. A new role adds one line here;
//! a role without a line waits for every role before it in `ORDER` (the old,
//! sequential behaviour — slow but safe).

/// role → the roles it needs (roles absent from a plan are ignored).
pub const NEEDS: &[(&str, &[&str])] = &[
    // The host firewall (nftables from the plan's groups) needs no other role.
    ("firewall", &[]),
    ("etcd", &[]),
    ("patroni", &["etcd"]),
    ("haproxy", &["patroni"]),
    ("keepalived", &["haproxy"]),
    ("redis", &[]),
    // The write port (HAProxy). When apps reach it through keepalived's VIP,
    // their own health gate waits for the VIP: they start meanwhile.
    ("app", &["haproxy", "redis"]),
    ("saleor", &["haproxy", "redis"]),
    ("nginx", &["app", "saleor"]),
    ("storefront", &["saleor"]),
];

/// The roles `role` needs, among `present` (the plan's roles).
pub fn needs<'a>(role: &str, present: &[&'a str]) -> Vec<&'a str> {
    match NEEDS.iter().find(|(r, _)| *r == role) {
        Some((_, needed)) => present.iter().copied().filter(|p| needed.contains(p)).collect(),
        None => {
            let before: Vec<&str> = super::ORDER.iter().copied().take_while(|r| *r != role).collect();
            present.iter().copied().filter(|p| before.contains(p)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_roles_are_ignored_and_every_listed_need_is_a_known_role() {
        assert_eq!(needs("app", &["etcd", "patroni", "haproxy", "redis", "app"]), vec!["haproxy", "redis"]);
        assert!(needs("redis", &["etcd", "patroni", "redis"]).is_empty());
        for (role, needed) in NEEDS {
            // The host firewall is no plan role (every host in a group gets it), so not in ORDER.
            assert!(super::super::ORDER.contains(role) || *role == "firewall", "{role} is not in ORDER");
            for n in *needed {
                assert!(NEEDS.iter().any(|(r, _)| r == n), "{role} needs {n}, which has no line");
            }
        }
    }

    #[test]
    fn a_role_without_a_line_waits_for_everything_before_it() {
        assert_eq!(needs("no-such-role", &["etcd", "redis"]), vec!["etcd", "redis"]);
    }

    #[test]
    fn the_needs_have_no_cycle() {
        let mut g = crate::graph::Graph::<String>::new();
        for (role, needed) in NEEDS {
            g.add(role.to_string(), needed.iter().map(|n| n.to_string()));
        }
        g.check().unwrap();
    }
}
