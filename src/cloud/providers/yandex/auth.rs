//! Credentials: a service-account authorized key (signed into a JWT and
//! exchanged for an IAM token) or a ready IAM token from `YC_TOKEN`.

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const IAM_TOKENS_AUDIENCE: &str = "https://iam.api.cloud.yandex.net/iam/v1/tokens";
/// A JWT may live an hour at most; use a bit less so clock skew cannot push it over.
const JWT_LIFETIME_SECS: i64 = 3500;

/// The file `yc iam key create` writes.
#[derive(Clone, Deserialize)]
pub struct AuthorizedKey {
    pub id: String,
    pub service_account_id: String,
    private_key: String,
}

impl std::fmt::Debug for AuthorizedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizedKey").field("id", &self.id).field("service_account_id", &self.service_account_id).finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

impl AuthorizedKey {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading service account key file {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!("{} is not a service account authorized key file (expected id, service_account_id, private_key)", path.display())
        })
    }

    /// The PEM without the `PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID …`
    /// marker that `yc` puts before it.
    fn private_pem(&self) -> &str {
        match self.private_key.find("-----BEGIN") {
            Some(start) => &self.private_key[start..],
            None => &self.private_key,
        }
    }

    /// A PS256 JWT for `POST /iam/v1/tokens`, issued at `now` (unix seconds).
    pub fn jwt(&self, now: i64) -> Result<String> {
        let key = EncodingKey::from_rsa_pem(self.private_pem().as_bytes())
            .with_context(|| format!("the private key of service account key {} is not an RSA key in PEM", self.id))?;
        let mut header = Header::new(Algorithm::PS256);
        header.kid = Some(self.id.clone());
        let claims = Claims { iss: &self.service_account_id, aud: IAM_TOKENS_AUDIENCE, iat: now, exp: now + JWT_LIFETIME_SECS };
        jsonwebtoken::encode(&header, &claims, &key).context("signing the IAM JWT")
    }
}

#[derive(Clone)]
pub enum Credentials {
    /// An IAM token used as is (env `YC_TOKEN`); it cannot be refreshed.
    IamToken(String),
    ServiceAccount(AuthorizedKey),
}

/// The token never shows, whatever prints the credentials (`{:?}` in an
/// error or a trace).
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::IamToken(_) => f.write_str("IamToken(..)"),
            Credentials::ServiceAccount(key) => f.debug_tuple("ServiceAccount").field(key).finish(),
        }
    }
}

impl Credentials {
    /// The key file from the plan, else env `YC_SERVICE_ACCOUNT_KEY_FILE`, else env `YC_TOKEN`.
    pub fn resolve(key_file: Option<&Path>) -> Result<Credentials> {
        if let Some(path) = key_file {
            return Ok(Credentials::ServiceAccount(AuthorizedKey::load(path)?));
        }
        if let Some(path) = std::env::var_os("YC_SERVICE_ACCOUNT_KEY_FILE").filter(|p| !p.is_empty()) {
            return Ok(Credentials::ServiceAccount(AuthorizedKey::load(Path::new(&path))?));
        }
        if let Some(token) = std::env::var("YC_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
            return Ok(Credentials::IamToken(token.trim().to_string()));
        }
        anyhow::bail!(
            "no Yandex Cloud credentials: set provider.service_account_key_file in the plan, \
             or env YC_SERVICE_ACCOUNT_KEY_FILE (a key from `yc iam key create`), or env YC_TOKEN (an IAM token)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_token_or_key() {
        let token = Credentials::IamToken("t1.9euelZqSecretTokenValue".into());
        assert_eq!(format!("{token:?}"), "IamToken(..)");
        let key = Credentials::ServiceAccount(AuthorizedKey { id: "aje1".into(), service_account_id: "ajes".into(), private_key: "-----BEGIN PRIVATE KEY-----\nsecret".into() });
        let shown = format!("{key:?}");
        assert!(shown.contains("aje1") && !shown.contains("secret"), "{shown}");
    }

    #[test]
    fn marker_line_is_stripped() {
        let key = AuthorizedKey {
            id: "k".into(),
            service_account_id: "s".into(),
            private_key: "PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID k\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
        };
        assert!(key.private_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    }
}
