//! Where the application roles find the shared services: the HAProxy write
//! and read ports (on the VIP when keepalived holds one), Redis, and the
//! public address of the load balancer. Computed once so every app, Saleor
//! and the Storefront agree.

use crate::plan::model::Plan;
use serde_json::Value;
use super::{haproxy, keepalived, redis};

/// The address clients use for HAProxy: the keepalived VIP, else the first HAProxy host.
pub fn lb_address(plan: &Plan) -> Option<String> {
    if plan.hosts_with_role(keepalived::NAME).next().is_some() {
        if let Some(vip) = plan.setting(keepalived::NAME, "vip").and_then(Value::as_str) {
            return Some(vip.to_string());
        }
    }
    plan.hosts_with_role(haproxy::NAME).next().map(|h| h.ip.to_string())
}

/// The load balancer's public address, when there is no VIP and the cloud
/// gave the first HAProxy host one (known once the machine exists).
pub fn public_lb_address(plan: &Plan) -> Option<String> {
    let first = plan.hosts_with_role(haproxy::NAME).next()?;
    // lb_address names the VIP when there is one, else this host.
    if lb_address(plan)? != first.ip.to_string() {
        return None;
    }
    plan.public_addresses.get(&first.name).cloned()
}


/// Percent-encode for the user-info part of a URL (generated secrets are
/// letters and digits; a password given through the environment may not be).
pub fn userinfo(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// `postgresql://user:pass@LB:PORT/db` through the write (or read) port.
pub fn database_url(plan: &Plan, user: &str, password: &str, database: &str, read: bool) -> Option<String> {
    let lb = lb_address(plan)?;
    let p = if read { plan.int_setting(haproxy::NAME, "read_port") } else { plan.int_setting(haproxy::NAME, "write_port") };
    // With TLS on, clients verify the server against the project CA and its
    // name (the VIP or HAProxy address is in every PostgreSQL certificate).
    let tls = if plan.security.tls { format!("?sslmode=verify-full&sslrootcert={}", super::tls::CLIENT_CA) } else { String::new() };
    Some(format!("postgresql://{}:{}@{lb}:{p}/{database}{tls}", userinfo(user), userinfo(password)))
}

/// `redis://:pass@REDIS:6379/DB` on the first Redis host; with TLS on,
/// `rediss://` verified against the project CA (redis-py, Celery and kombu
/// read `ssl_cert_reqs` and `ssl_ca_certs` from the query).
pub fn redis_url(plan: &Plan, password: &str, db: u32) -> Option<String> {
    let h = plan.hosts_with_role(redis::NAME).next()?;
    let (scheme, tls) = if plan.security.tls { ("rediss", format!("?ssl_cert_reqs=required&ssl_ca_certs={}", super::tls::CLIENT_CA)) } else { ("redis", String::new()) };
    Some(format!("{scheme}://:{}@{}:{}/{db}{tls}", userinfo(password), h.ip, plan.int_setting(redis::NAME, "port")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_escaped_in_urls() {
        assert_eq!(userinfo("abc123"), "abc123");
        assert_eq!(userinfo("a@b:c/d"), "a%40b%3Ac%2Fd");
    }

    fn plan(hosts: &str, services: &str) -> Plan {
        let d = tempfile::tempdir().unwrap();
        let text = format!("version: 1\nproject: t\nprovider: {{ kind: local }}\nnetwork:\n  name: main\n  subnets:\n    - {{ name: app, cidr: 10.9.0.0/24 }}\nhosts:\n{hosts}services:\n{services}");
        crate::plan::load_str(&d.path().join("plan.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_shop_is_named_by_the_load_balancers_public_address_once_known() {
        let mut p = plan("  - { name: lb, roles: [haproxy], ip: 10.9.0.10 }\n", "  haproxy: {}\n");
        assert_eq!(crate::hosts::roles::saleor::public_url(&p).as_deref(), Some("http://10.9.0.10"), "before the cloud step: the private address");
        p.public_addresses.insert("lb".into(), "198.51.100.7".into());
        assert_eq!(crate::hosts::roles::saleor::public_url(&p).as_deref(), Some("http://198.51.100.7"));
        p.services.entry("saleor".into()).or_default().insert("public_url".into(), serde_json::json!("http://shop.example.com/"));
        assert_eq!(crate::hosts::roles::saleor::public_url(&p).as_deref(), Some("http://shop.example.com"), "the plan's own URL wins");

        // A keepalived VIP is where clients go, whatever public address a member has.
        let mut p = plan("  - { name: lb, count: 2, roles: [haproxy, keepalived], ip: 10.9.0.11 }\n", "  keepalived: { vip: 10.9.0.10 }\n");
        p.public_addresses.insert("lb-1".into(), "198.51.100.7".into());
        assert_eq!(crate::hosts::roles::saleor::public_url(&p).as_deref(), Some("http://10.9.0.10"));
    }
}
