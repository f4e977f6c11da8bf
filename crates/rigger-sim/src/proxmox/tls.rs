//! The simulator's certificates, generated at start like a fresh Proxmox node:
//! a cluster CA (`pve-root-ca.pem`) and a node certificate signed by it
//! (`pve-ssl.pem`). Clients pin the node certificate's SHA-256 fingerprint, or
//! trust the CA file.

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub struct NodeCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// `AB:CD:…` of the node certificate, as `GET /nodes` reports it.
    pub fingerprint: String,
    pub ca_pem: String,
}

pub fn generate(node: &str) -> Result<NodeCertificate> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params.distinguished_name.push(DnType::CommonName, "Proxmox Virtual Environment (rigger sim)");
    ca_params.distinguished_name.push(DnType::OrganizationName, "PVE Cluster Manager CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().context("CA key")?)
        .context("self-signing the CA")?;

    let names = vec![node.to_string(), "localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let mut leaf_params = CertificateParams::new(names).context("node certificate parameters")?;
    leaf_params.distinguished_name.push(DnType::CommonName, format!("{node}.local"));
    leaf_params.distinguished_name.push(DnType::OrganizationName, "PVE Cluster Node");
    let leaf_key = KeyPair::generate().context("node key")?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca).context("signing the node certificate")?;

    Ok(NodeCertificate {
        fingerprint: fingerprint(leaf.der()),
        chain: vec![leaf.der().clone(), ca.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        ca_pem: ca.pem(),
    })
}

/// SHA-256 of the DER certificate as upper-case hex pairs joined by `:`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

pub fn server_config(cert: &NodeCertificate) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .context("TLS server certificate")?;
    // pveproxy speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
