//! Outbound body signatures for receivers that check an HMAC-SHA256 of the
//! raw body in one header, e.g. `X-Platform-Signature: sha256=<hex>`: the
//! mirror of the inbound `hmac-sha256` scheme, through the same MAC code.
//! (Standard Webhooks signing, with an id and a timestamp in the signed
//! content, is [`super::sign_standard_webhooks`].)

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderName;
use serde::Deserialize;

use super::{Encoding, HmacKey, header_name};

/// A destination's body signature as written in TOML:
/// `signature = { header = "x-platform-signature", prefix = "sha256=", secret_env = "PLATFORM_SECRET" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodySignatureConfig {
    /// Environment variable holding the secret, used verbatim as the key.
    pub secret_env: String,
    /// The header that carries the signature.
    #[serde(deserialize_with = "header_name")]
    pub header: HeaderName,
    /// Text before the signature, such as `sha256=`.
    #[serde(default)]
    pub prefix: String,
    /// How the signature bytes are written: `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: Encoding,
}

/// Signs outbound bodies for one destination; built once per config load.
#[derive(Clone)]
pub struct BodySigner {
    key: HmacKey,
    header: HeaderName,
    prefix: String,
    encoding: Encoding,
}

impl BodySigner {
    /// `Err` names the variable when it is not set.
    pub fn from_config(
        config: &BodySignatureConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let secret = env(&config.secret_env)
            .ok_or_else(|| format!("environment variable {:?} is not set", config.secret_env))?;
        Ok(Self {
            key: HmacKey::new(secret.as_bytes()),
            header: config.header.clone(),
            prefix: config.prefix.clone(),
            encoding: config.encoding,
        })
    }

    /// The header and its value for `body`.
    pub fn sign(&self, body: &[u8]) -> (&HeaderName, String) {
        let mac = self.key.mac(&[body]);
        let encoded = match self.encoding {
            Encoding::Hex => hex::encode(mac),
            Encoding::Base64 => STANDARD.encode(mac),
        };
        (&self.header, format!("{}{encoded}", self.prefix))
    }
}

impl fmt::Debug for BodySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySigner")
            .field("header", &self.header)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use http::HeaderMap;

    use super::*;
    use crate::verify::{Verifier, VerifyConfig};

    #[test]
    fn what_the_gateway_signs_the_inbound_scheme_verifies() {
        for encoding in [Encoding::Hex, Encoding::Base64] {
            let config = BodySignatureConfig {
                secret_env: "S".into(),
                header: HeaderName::from_static("x-platform-signature"),
                prefix: "sha256=".into(),
                encoding,
            };
            let secret = |_: &str| Some("platform-secret".to_string());
            let signer = BodySigner::from_config(&config, secret).expect("secret set");
            let (name, value) = signer.sign(br#"{"quiz":1}"#);
            assert!(value.starts_with("sha256="), "{value}");
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), value.parse().expect("header value"));
            let inbound = VerifyConfig::HmacSha256 {
                secret_env: "S".into(),
                header: config.header.clone(),
                prefix: config.prefix.clone(),
                encoding,
            };
            let verifier = Verifier::from_config(&inbound, secret).expect("verifier");
            assert!(
                verifier
                    .verify(&headers, br#"{"quiz":1}"#, SystemTime::now())
                    .is_ok()
            );
            assert!(
                verifier
                    .verify(&headers, br#"{"quiz":2}"#, SystemTime::now())
                    .is_err()
            );
        }
    }

    #[test]
    fn a_missing_secret_names_its_variable() {
        let config = BodySignatureConfig {
            secret_env: "PLATFORM_SECRET".into(),
            header: HeaderName::from_static("x-sig"),
            prefix: String::new(),
            encoding: Encoding::Hex,
        };
        let err = BodySigner::from_config(&config, |_| None).expect_err("unset");
        assert_eq!(err, "environment variable \"PLATFORM_SECRET\" is not set");
    }
}
