//! Service-account authorized keys (the `yc iam key create` file format) and the
//! IAM side of the JWT exchange: the simulator trusts exactly one key.

use super::wire::{ApiError, ApiResult, Code};
use anyhow::{anyhow, Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const IAM_AUDIENCE: &str = "https://iam.api.cloud.yandex.net/iam/v1/tokens";
/// The marker line `yc` writes before the PEM of the private key.
pub const KEY_MARKER_PREFIX: &str = "PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthorizedKeyFile {
    pub id: String,
    pub service_account_id: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub key_algorithm: String,
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

/// The key the IAM simulator verifies JWTs against.
pub struct TrustedKey {
    pub key_id: String,
    pub service_account_id: String,
    decoding: DecodingKey,
}

impl TrustedKey {
    pub fn from_file(file: &AuthorizedKeyFile) -> Result<Self> {
        let decoding = DecodingKey::from_rsa_pem(file.public_key.as_bytes())
            .with_context(|| format!("authorized key {}: public_key is not an RSA public key in PEM", file.id))?;
        Ok(TrustedKey { key_id: file.id.clone(), service_account_id: file.service_account_id.clone(), decoding })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading authorized key file {}", path.display()))?;
        let file: AuthorizedKeyFile =
            serde_json::from_str(&text).with_context(|| format!("{} is not an authorized key file", path.display()))?;
        Self::from_file(&file)
    }

    /// Check a JWT the way IAM does: PS256, our key id, issuer, audience, a lifetime of at most an hour.
    pub fn verify(&self, jwt: &str) -> ApiResult<()> {
        let refuse = |why: String| ApiError::new(Code::Unauthenticated, format!("JWT validation failed: {why}"));
        let header = jsonwebtoken::decode_header(jwt).map_err(|e| refuse(format!("malformed token: {e}")))?;
        if header.alg != Algorithm::PS256 {
            return Err(refuse(format!("algorithm {:?} is not supported; use PS256", header.alg)));
        }
        if header.kid.as_deref() != Some(self.key_id.as_str()) {
            return Err(refuse(format!("unknown key id {:?}", header.kid.unwrap_or_default())));
        }
        let mut validation = Validation::new(Algorithm::PS256);
        validation.set_audience(&[IAM_AUDIENCE]);
        validation.set_issuer(&[self.service_account_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        validation.leeway = 30;
        #[derive(Deserialize)]
        struct Claims {
            iat: i64,
            exp: i64,
        }
        let data = jsonwebtoken::decode::<Claims>(jwt, &self.decoding, &validation).map_err(|e| refuse(e.to_string()))?;
        if data.claims.exp - data.claims.iat > 3600 {
            return Err(refuse("exp - iat must not exceed 3600 seconds".into()));
        }
        Ok(())
    }
}

/// A new service account key pair (RSA 2048) in the authorized key file format.
pub fn generate_key_file() -> Result<AuthorizedKeyFile> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).map_err(|e| anyhow!("generating an RSA key: {e}"))?;
    let mut rng = rand::thread_rng();
    let mut id = |prefix: &str| {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
        let tail: String = (0..17).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
        format!("{prefix}{tail}")
    };
    let key_id = id("ajc");
    let service_account_id = id("aje");
    Ok(AuthorizedKeyFile {
        private_key: Some(format!("{KEY_MARKER_PREFIX} {key_id}\n{}", key.serialize_pem())),
        id: key_id,
        service_account_id,
        created_at: super::wire::now_rfc3339(),
        key_algorithm: "RSA_2048".into(),
        public_key: key.public_key_pem(),
    })
}

/// Write a key file readable by its owner only (it holds a private key).
pub fn write_key_file(path: &Path, file: &AuthorizedKeyFile) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_string_pretty(file)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing authorized key file {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
