//! TLS for a Proxmox node's self-signed certificate: pin the node certificate's
//! SHA-256 fingerprint (`AB:CD:…`, as `GET /nodes` and the GUI show it). The
//! handshake signatures are still verified with the certificate's key; only the
//! chain-of-trust check is replaced by the fingerprint comparison.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Accept only the certificate with this SHA-256 fingerprint.
    Pinned([u8; 32]),
    /// Accept any certificate (`insecure: true`).
    Insecure,
    /// The usual web PKI (a node with a publicly trusted certificate).
    WebPki,
}

#[derive(Debug, thiserror::Error)]
#[error("TLS fingerprint {0:?} is not 32 colon-separated hex bytes (AB:CD:…)")]
pub struct BadFingerprint(pub String);

/// `AB:CD:…` (colons optional, any case) → 32 bytes.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], BadFingerprint> {
    let hex_digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hex_digits).map_err(|_| BadFingerprint(text.to_string()))?;
    bytes.try_into().map_err(|_| BadFingerprint(text.to_string()))
}

pub fn format_fingerprint(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[derive(Debug)]
struct FingerprintVerifier {
    /// `None` = insecure: any certificate.
    expected: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(expected) = self.expected else {
            return Ok(ServerCertVerified::assertion());
        };
        let actual: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if actual == expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {} does not match the pinned {}",
                format_fingerprint(&actual),
                format_fingerprint(&expected)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls client config for `mode`; `None` for `WebPki` (reqwest's default).
pub fn client_config(mode: &TlsMode) -> Result<Option<rustls::ClientConfig>, rustls::Error> {
    let expected = match mode {
        TlsMode::Pinned(fp) => Some(*fp),
        TlsMode::Insecure => None,
        TlsMode::WebPki => return Ok(None),
    };
    // Both ring and aws-lc-rs are compiled in; name the provider explicitly.
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = FingerprintVerifier { expected, algorithms: provider.signature_verification_algorithms };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let text = (0..32).map(|i| format!("{i:02x}")).collect::<Vec<_>>().join(":");
        let bytes = parse_fingerprint(&text).unwrap();
        assert_eq!(bytes[31], 31);
        assert_eq!(parse_fingerprint(&text.replace(':', "")).unwrap(), bytes);
        assert_eq!(format_fingerprint(&bytes), text.to_uppercase());
        assert!(parse_fingerprint("AB:CD").is_err());
    }
}
