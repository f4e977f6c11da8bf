//! The project CA and the hosts' certificates. The CA is generated once into
//! the state (its key among the secrets: mode 0600, masked in every output);
//! each host gets a certificate for its name and address (PostgreSQL hosts also
//! for the VIP and the HAProxy hosts, which clients reach them through by TCP
//! passthrough), issued again when its names change or within 30 days of expiry.

use crate::plan::model::{Host, Plan};
use crate::state::State;
use anyhow::{anyhow, Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};
use crate::hosts::roles::{haproxy, keepalived, patroni};

pub const CA_KEY: &str = "tls_ca_key";
/// Kept with the secrets too, so templates (which see the secrets) can write it.
pub const CA_CERT: &str = "tls_ca_cert";
const HOST_VALIDITY_DAYS: i64 = 365;
const RENEW_BEFORE_DAYS: i64 = 30;
const CA_VALIDITY_DAYS: i64 = 3650;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Pki {
    pub hosts: BTreeMap<String, HostCert>,
}

impl Pki {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostCert {
    pub sans: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
}

pub fn host_key_name(host: &str) -> String {
    format!("tls_key_{host}")
}

pub fn host_cert_name(host: &str) -> String {
    format!("tls_cert_{host}")
}

/// The CA's subject and key usages: fixed, so an issuer can be rebuilt from the key alone.
fn ca_params(project: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    p.distinguished_name.push(DnType::CommonName, format!("rigger {project} CA"));
    p.distinguished_name.push(DnType::OrganizationName, "rigger");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// Names a host's certificate must carry.
pub fn sans(plan: &Plan, host: &Host) -> Vec<String> {
    let mut names = vec![host.name.clone(), host.ip.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
    if host.roles.iter().any(|r| r == patroni::NAME) {
        if let Some(vip) = plan.setting(keepalived::NAME, "vip").and_then(|v| v.as_str()) {
            names.push(vip.to_string());
        }
        names.extend(plan.hosts_with_role(haproxy::NAME).map(|h| h.ip.to_string()));
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Make sure the CA and every host's certificate exist, carry the right
/// names and are not near expiry. Returns whether the state changed.
pub fn ensure(state: &mut State, plan: &Plan) -> Result<bool> {
    if !plan.security.tls {
        return Ok(false);
    }
    let now = OffsetDateTime::now_utc();
    let mut changed = false;
    if !state.secrets.contains_key(CA_CERT) || !state.secrets.contains_key(CA_KEY) {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = ca_params(&plan.project)?;
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key).context("self-signing the project CA")?;
        state.pki = Pki::default();
        state.secrets.insert(CA_CERT.into(), cert.pem());
        state.secrets.insert(CA_KEY.into(), key.serialize_pem());
        changed = true;
    }
    let ca_key = KeyPair::from_pem(&state.secrets[CA_KEY]).map_err(|e| anyhow!("the project CA key in the state is unreadable: {e}"))?;
    let issuer = Issuer::new(ca_params(&plan.project)?, ca_key);
    for host in &plan.hosts {
        let want = sans(plan, host);
        let fresh = state.pki.hosts.get(&host.name).is_some_and(|c| {
            c.sans == want && c.not_after - now.unix_timestamp() > RENEW_BEFORE_DAYS * 86_400 && state.secrets.contains_key(&host_key_name(&host.name)) && state.secrets.contains_key(&host_cert_name(&host.name))
        });
        if fresh {
            continue;
        }
        let key = KeyPair::generate().context("generating a host key")?;
        let mut params = CertificateParams::new(want.clone()).with_context(|| format!("certificate names of {}", host.name))?;
        params.distinguished_name.push(DnType::CommonName, host.name.clone());
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(HOST_VALIDITY_DAYS);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).with_context(|| format!("signing the certificate of {}", host.name))?;
        state.pki.hosts.insert(host.name.clone(), HostCert { sans: want, not_after: params.not_after.unix_timestamp() });
        state.secrets.insert(host_cert_name(&host.name), cert.pem());
        state.secrets.insert(host_key_name(&host.name), key.serialize_pem());
        changed = true;
    }
    Ok(changed)
}

/// The DER bytes of the first PEM block.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let body: String = pem.lines().skip_while(|l| !l.starts_with("-----BEGIN")).skip(1).take_while(|l| !l.starts_with("-----END")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).context("a PEM block that is not base64")
}

/// A TLS client that trusts the project CA only and checks the server's name
/// (PostgreSQL's `sslmode=verify-full`).
pub fn client_config(ca_pem: &str) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(pem_to_der(ca_pem)?)).context("the project CA certificate")?;
    Ok(rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Write a certificate (public) for clients, atomically, mode 0644.
pub fn write_public(path: &std::path::Path, pem: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("crt.tmp");
    std::fs::write(&tmp, pem).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Where `rigger output ca` puts the CA for clients: beside the state.
pub fn ca_file(project: &crate::project::Project) -> std::path::PathBuf {
    let dir = project.state_path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    dir.join(format!("{}.ca.crt", project.plan.project))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::load_str;
    use std::path::Path;

    const PLAN: &str = "version: 1\nproject: pki\nprovider: { kind: local }\nssh: { user: rigger, private_key_file: ./k }\n\
        network: { name: main, subnets: [ { name: app, cidr: 10.9.0.0/24 } ] }\n\
        hosts:\n  - { name: etcd, count: 3, ip: 10.9.0.51, roles: [etcd] }\n  - { name: pg, count: 2, ip: 10.9.0.21, roles: [patroni] }\n\
        \x20 - { name: lb, count: 2, ip: 10.9.0.11, roles: [haproxy, keepalived] }\nservices: { keepalived: { vip: 10.9.0.10 } }\n";

    #[test]
    fn the_ca_is_made_once_and_certificates_only_when_needed() {
        let plan = load_str(Path::new("/tmp/pki.yaml"), PLAN).unwrap();
        let mut state = State::new("pki", "local");
        assert!(ensure(&mut state, &plan).unwrap());
        let ca = state.secrets[CA_CERT].clone();
        assert!(ca.contains("BEGIN CERTIFICATE"));
        assert!(state.secrets[CA_KEY].contains("PRIVATE KEY"));
        assert_eq!(state.pki.hosts.len(), 7);
        assert_eq!(state.pki.hosts["pg-1"].sans, ["pg-1", "10.9.0.21", "localhost", "127.0.0.1", "10.9.0.10", "10.9.0.11", "10.9.0.12"]);
        assert_eq!(state.pki.hosts["etcd-1"].sans, ["etcd-1", "10.9.0.51", "localhost", "127.0.0.1"]);
        let before = state.clone();
        assert!(!ensure(&mut state, &plan).unwrap(), "nothing to do the second time");
        assert_eq!(state, before);
        // Near expiry: that one certificate is issued again, the CA stays.
        state.pki.hosts.get_mut("pg-2").unwrap().not_after = OffsetDateTime::now_utc().unix_timestamp() + 86_400;
        assert!(ensure(&mut state, &plan).unwrap());
        assert_eq!(state.secrets[CA_CERT], ca);
        assert_ne!(state.secrets["tls_cert_pg-2"], before.secrets["tls_cert_pg-2"]);
        assert_eq!(state.secrets["tls_cert_pg-1"], before.secrets["tls_cert_pg-1"]);
    }

    #[test]
    fn host_certificates_chain_to_the_project_ca() {
        use rustls::client::danger::ServerCertVerifier;
        let plan = load_str(Path::new("/tmp/pki.yaml"), PLAN).unwrap();
        let mut state = State::new("pki", "local");
        ensure(&mut state, &plan).unwrap();
        let ca = pem_to_der(&state.secrets[CA_CERT]).unwrap();
        let leaf = pem_to_der(&state.secrets["tls_cert_pg-1"]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.into()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(std::sync::Arc::new(roots), std::sync::Arc::new(rustls::crypto::ring::default_provider())).build().unwrap();
        let name = rustls::pki_types::ServerName::try_from("10.9.0.10").unwrap();
        verifier.verify_server_cert(&leaf.into(), &[], &name, &[], rustls::pki_types::UnixTime::now()).expect("pg-1's certificate is valid for the VIP under the project CA");
        let wrong = rustls::pki_types::ServerName::try_from("10.9.0.99").unwrap();
        assert!(verifier.verify_server_cert(&pem_to_der(&state.secrets["tls_cert_pg-1"]).unwrap().into(), &[], &wrong, &[], rustls::pki_types::UnixTime::now()).is_err());
    }
}
