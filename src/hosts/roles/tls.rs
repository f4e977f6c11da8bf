//! TLS files on the hosts, from the project CA in the state: the CA for
//! clients on every host (`/etc/rigger/ca.crt`) and for HAProxy's checks, and
//! on PostgreSQL hosts the server certificate and key PostgreSQL and Patroni's
//! REST API serve (`ssl = on`, `restapi.certfile`, see patroni.yml).

use super::file;
use crate::hosts::ops::ManagedFile;
use crate::pki::{host_cert_name, host_key_name, CA_CERT};
use crate::plan::model::{Host, Plan};
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use super::{etcd, haproxy, patroni, redis, saleor};

/// The project CA on every host, for clients that verify servers with it.
pub const CLIENT_CA: &str = "/etc/rigger/ca.crt";
pub const PG_DIR: &str = "/etc/patroni/tls";
pub const ETCD_DIR: &str = "/etc/etcd/tls";
pub const HAPROXY_CA: &str = "/etc/haproxy/ca.crt";
pub const REDIS_DIR: &str = "/etc/redis/tls";
/// A hashed CA directory added to OpenSSL's default trust (SSL_CERT_DIR) of
/// clients that take no CA file of their own.
pub const TRUST_DIR: &str = "/etc/rigger/certs";

/// `http` or `https` for the APIs the plan's TLS switch covers: etcd's client
/// and peer URLs, Patroni's REST API.
pub fn scheme(plan: &Plan) -> &'static str {
    if plan.security.tls {
        "https"
    } else {
        "http"
    }
}

/// A shell command running `etcdctl ARGS` against the local member (as root).
/// Whether it speaks TLS is read from the member's live config, so the command
/// is right before, during and after TLS is turned on: with TLS it presents
/// the member's own certificate as client certificate.
pub fn etcdctl(port: u64, args: &str) -> String {
    format!(
        "if grep -qs '^ETCD_CLIENT_CERT_AUTH=\"true\"' /etc/default/etcd; then export ETCDCTL_CACERT={ETCD_DIR}/ca.crt ETCDCTL_CERT={ETCD_DIR}/server.crt ETCDCTL_KEY={ETCD_DIR}/server.key; s=https; else s=http; fi; ETCDCTL_API=3 etcdctl --endpoints=$s://127.0.0.1:{port} {args}"
    )
}

pub fn files(plan: &Plan, host: &Host, secrets: &BTreeMap<String, String>) -> Result<Vec<ManagedFile>> {
    if !plan.security.tls {
        return Ok(vec![]);
    }
    let get = |name: &str| secrets.get(name).cloned().ok_or_else(|| anyhow!("the state has no {name} — run `rigger apply` to issue it"));
    let ca = get(CA_CERT)?;
    let role: &'static str = host.roles.first().and_then(|r| super::registry::get(r)).unwrap_or(super::registry::FIREWALL).name();
    let mut out = vec![file(role, CLIENT_CA, ca.clone(), 0o644, "root", "root", None, &[])];
    let host_pair = || Ok::<_, anyhow::Error>((get(&host_cert_name(&host.name))?, get(&host_key_name(&host.name))?));
    if host.roles.iter().any(|r| r == etcd::NAME) {
        // etcd reads its certificate and key on every TLS handshake: a reissued
        // one (a renewal, or an HAProxy host added to a Patroni host's names)
        // needs no restart — which would restart every member at once.
        out.extend(daemon_files(super::etcd::NAME, ETCD_DIR, "etcd", &ca, host_pair()?, &["etcd"], &[]));
    }
    if host.roles.iter().any(|r| r == redis::NAME) {
        out.extend(daemon_files(super::redis::NAME, REDIS_DIR, "redis", &ca, host_pair()?, &["redis-server"], &["redis-server"]));
    }
    if host.roles.iter().any(|r| r == saleor::NAME) {
        // Saleor's cache client (Django's) takes no CA from its URL: it trusts
        // the project CA through SSL_CERT_DIR (its units `openssl rehash` it).
        out.push(file(super::saleor::NAME, &format!("{TRUST_DIR}/rigger-ca.pem"), ca.clone(), 0o644, "root", "root", None, &[]));
    }
    if host.roles.iter().any(|r| r == haproxy::NAME) {
        // HAProxy's checks verify Patroni's REST certificates with it (check-ssl).
        out.push(file(super::haproxy::NAME, HAPROXY_CA, ca.clone(), 0o644, "root", "root", None, &["haproxy"]));
    }
    if host.roles.iter().any(|r| r == patroni::NAME) {
        out.extend(daemon_files(super::patroni::NAME, PG_DIR, "postgres", &ca, host_pair()?, &["patroni"], &["patroni"]));
    }
    Ok(out)
}

/// A daemon's own copy of the CA and the host's certificate and key in `dir`,
/// owned by `owner` (the key 0600); `on_ca` / `on_cert` name the services a
/// change of the CA / of the certificate or key restarts.
fn daemon_files(role: &'static str, dir: &str, owner: &str, ca: &str, (cert, key): (String, String), on_ca: &[&str], on_cert: &[&str]) -> [ManagedFile; 3] {
    [
        file(role, &format!("{dir}/ca.crt"), ca.to_string(), 0o644, owner, owner, None, on_ca),
        file(role, &format!("{dir}/server.crt"), cert, 0o644, owner, owner, None, on_cert),
        file(role, &format!("{dir}/server.key"), key, 0o600, owner, owner, None, on_cert),
    ]
}
