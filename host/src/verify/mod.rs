//! Inbound webhook signature verification and outbound Standard Webhooks
//! signing.
//!
//! This module owns the signature schemes hookgate understands: GitHub,
//! Stripe, Standard Webhooks and a generic HMAC-SHA256 of the body. Ingress
//! builds one [`Verifier`] per route when the config loads and calls
//! [`Verifier::verify`] right after reading a request's headers and body,
//! before any plugin or the store sees it. The delivery side calls
//! [`sign_standard_webhooks`] when a destination has a secret.
//!
//! Invariants:
//! - Secrets never come from the config file: [`VerifyConfig`] names an
//!   environment variable and [`Verifier::from_config`] resolves it once.
//! - Keys live only inside keyed HMAC states; no `Debug` output and no error
//!   carries a secret or an expected signature. [`VerifyError`]'s text is safe
//!   to send back to the sender.
//! - Signatures are compared with [`subtle::ConstantTimeEq`], and when a
//!   header carries several signatures (or several secrets are configured)
//!   every pair is compared, so timing never says which one came close.
//! - One function, `HmacKey::mac`, computes every HMAC, inbound and outbound.

mod outbound;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Deserializer};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

pub use self::outbound::{BodySignatureConfig, BodySigner};

/// How far a signed timestamp may be from our clock when the config does not
/// say: the Stripe and Standard Webhooks reference libraries both use 5 min,
/// which absorbs clock skew and a few sender retries while still bounding
/// replays.
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const GITHUB_HEADER: &str = "x-hub-signature-256";
const GITHUB_PREFIX: &str = "sha256=";
const STRIPE_HEADER: &str = "stripe-signature";
const WEBHOOK_ID: &str = "webhook-id";
const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
const WEBHOOK_SIGNATURE: &str = "webhook-signature";
const WHSEC_PREFIX: &str = "whsec_";

/// How a route's inbound requests prove they come from the sender; embedded
/// in the route's TOML config as a table with a `scheme` key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(
    tag = "scheme",
    rename_all = "kebab-case",
    deny_unknown_fields,
    expecting = "a table such as { scheme = \"github\", secret_env = \"GITHUB_SECRET\" }"
)]
pub enum VerifyConfig {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex hmac-sha256(body)>`.
    Github {
        /// Environment variable holding the webhook secret, used verbatim.
        secret_env: String,
    },
    /// Stripe: `Stripe-Signature: t=<unix>,v1=<hex hmac(t "." body)>[,v1=...]`.
    Stripe {
        /// Environment variable holding the endpoint secret (`whsec_...`);
        /// Stripe uses the whole string, prefix included, as the key.
        secret_env: String,
        /// How far `t=` may be from our clock, either way (default `"5m"`).
        #[serde(
            default = "default_tolerance",
            deserialize_with = "crate::config::duration"
        )]
        tolerance: Duration,
    },
    /// Standard Webhooks (standardwebhooks.com): `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature` (`v1,<base64>` entries
    /// separated by spaces) over `{id}.{timestamp}.{body}`.
    StandardWebhooks {
        /// Environment variable holding one or more `whsec_<base64>` secrets
        /// separated by spaces, so a secret can be rotated: any one verifies.
        secret_env: String,
        /// How far `webhook-timestamp` may be from our clock, either way
        /// (default `"5m"`).
        #[serde(
            default = "default_tolerance",
            deserialize_with = "crate::config::duration"
        )]
        tolerance: Duration,
    },
    /// Any sender that puts an HMAC-SHA256 of the raw body in one header.
    HmacSha256 {
        /// Environment variable holding the secret, used verbatim as the key.
        secret_env: String,
        /// The header carrying the signature (case-insensitive).
        #[serde(deserialize_with = "header_name")]
        header: HeaderName,
        /// Text before the signature in the header, such as `sha256=`.
        #[serde(default)]
        prefix: String,
        /// How the signature bytes are written: `hex` (default) or `base64`.
        #[serde(default)]
        encoding: Encoding,
    },
}

impl VerifyConfig {
    /// The environment variable this scheme reads its secret from, so config
    /// validation can name it without matching on every scheme.
    pub fn secret_env(&self) -> &str {
        match self {
            Self::Github { secret_env }
            | Self::Stripe { secret_env, .. }
            | Self::StandardWebhooks { secret_env, .. }
            | Self::HmacSha256 { secret_env, .. } => secret_env,
        }
    }
}

/// How the generic scheme writes signature bytes in its header; senders differ
/// and both are common.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Hexadecimal, either case.
    #[default]
    Hex,
    /// Standard base64 alphabet, padding optional.
    Base64,
}

impl Encoding {
    fn decode(self, text: &str) -> Option<Vec<u8>> {
        match self {
            Self::Hex => hex::decode(text).ok(),
            Self::Base64 => STANDARD_PAD_INDIFFERENT.decode(text).ok(),
        }
    }

    fn invalid(self) -> &'static str {
        match self {
            Self::Hex => "signature is not valid hex",
            Self::Base64 => "signature is not valid base64",
        }
    }
}

fn default_tolerance() -> Duration {
    DEFAULT_TOLERANCE
}

/// Rejects a bad header name when the config loads, not on every request.
fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
    let text = String::deserialize(d)?;
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("invalid header name {text:?}")))
}

/// Why a route's secret could not be resolved; the config layer prefixes the
/// key path. Never contains any part of the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The named variable is absent (or not Unicode).
    #[error("environment variable {var:?} is not set")]
    NotSet { var: String },
    /// The variable exists but holds nothing; an empty key is always a mistake.
    #[error("environment variable {var:?} is empty")]
    Empty { var: String },
    /// A trailing newline (`echo secret | base64` in a Kubernetes secret) would
    /// otherwise make every signature mismatch with no hint why.
    #[error("environment variable {var:?} has leading or trailing whitespace")]
    Whitespace { var: String },
    /// One of the Standard Webhooks secrets is not `whsec_<base64>`.
    #[error("environment variable {var:?} does not hold a valid whsec_ secret: {reason}")]
    InvalidStandardSecret {
        var: String,
        reason: StandardSecretError,
    },
}

/// Why text is not a Standard Webhooks secret. Deliberately vague about where
/// the base64 breaks, so no byte of the secret reaches a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StandardSecretError {
    /// Standard Webhooks secrets are written `whsec_<base64>`.
    #[error("it does not start with \"whsec_\"")]
    MissingPrefix,
    /// The part after the prefix must decode to the key bytes.
    #[error("the part after \"whsec_\" is not valid base64")]
    NotBase64,
    /// An empty key would verify anything an attacker can compute.
    #[error("the key is empty")]
    EmptyKey,
}

/// Why an inbound request was refused. Its text is short, lowercase and safe
/// to put in the 401 body: it names headers and the sender's own values, never
/// a secret or the signature we expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header the scheme needs is absent.
    #[error("missing header {header:?}")]
    MissingHeader { header: String },
    /// A header is present but cannot be read as the scheme defines it.
    #[error("malformed header {header:?}: {reason}")]
    MalformedHeader {
        header: String,
        reason: &'static str,
    },
    /// The signature header lacks the configured prefix (e.g. `sha256=`).
    #[error("header {header:?} does not start with {prefix:?}")]
    MissingPrefix { header: String, prefix: String },
    /// The signed timestamp is too far from our clock: a replay or bad clock.
    #[error("timestamp {timestamp} is outside the tolerance of {}", human(.tolerance))]
    StaleTimestamp { timestamp: i64, tolerance: Duration },
    /// The header only has signature versions we do not check (e.g. `v1a`).
    #[error("no v1 signature in header {header:?}")]
    NoSupportedSignature { header: String },
    /// Every signature was well formed and none matched.
    #[error("signature mismatch")]
    SignatureMismatch,
}

fn human(d: &Duration) -> humantime::FormattedDuration {
    humantime::format_duration(*d)
}

fn malformed(header: &str, reason: &'static str) -> VerifyError {
    VerifyError::MalformedHeader {
        header: header.to_owned(),
        reason,
    }
}

/// An HMAC-SHA256 state already keyed: cloning it per request skips the key
/// schedule, and it keeps the raw key out of reach of `Debug`.
#[derive(Clone)]
struct HmacKey(Hmac<Sha256>);

impl HmacKey {
    fn new(key: &[u8]) -> Self {
        // HMAC is defined for keys of every length (long ones are hashed), so
        // `new_from_slice` has no failing case for HMAC; the hmac crate's own
        // `KeyInit::new` relies on the same fact.
        let mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac accepts keys of any length");
        Self(mac)
    }

    /// The one HMAC computation in hookgate: the MAC of `parts` concatenated.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether any candidate equals the MAC of `parts`, without early exit.
    fn matches_any(&self, parts: &[&[u8]], candidates: &[Vec<u8>]) -> Choice {
        let expected = self.mac(parts);
        candidates
            .iter()
            .fold(Choice::from(0), |found, c| found | expected[..].ct_eq(c))
    }
}

/// A Standard Webhooks secret, parsed from `whsec_<base64>`; the delivery side
/// signs with it and [`Verifier`] verifies with it, through the same code.
#[derive(Clone)]
pub struct StandardSecret {
    key: HmacKey,
}

impl StandardSecret {
    /// Parses `whsec_<base64>` (padding optional).
    pub fn parse(text: &str) -> Result<Self, StandardSecretError> {
        let encoded = text
            .strip_prefix(WHSEC_PREFIX)
            .ok_or(StandardSecretError::MissingPrefix)?;
        let key = STANDARD_PAD_INDIFFERENT
            .decode(encoded)
            .map_err(|_| StandardSecretError::NotBase64)?;
        if key.is_empty() {
            return Err(StandardSecretError::EmptyKey);
        }
        Ok(Self {
            key: HmacKey::new(&key),
        })
    }

    /// The spec's signed content is `{msg_id}.{timestamp}.{body}`.
    fn mac_parts<'a>(msg_id: &'a str, timestamp: &'a str, body: &'a [u8]) -> [&'a [u8]; 5] {
        [msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body]
    }
}

impl fmt::Debug for StandardSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StandardSecret(<redacted>)")
    }
}

/// Signs an outbound message the Standard Webhooks way, returning the whole
/// `webhook-signature` value (`v1,<base64>`) so receivers can use any of the
/// spec's reference libraries. `timestamp` is Unix seconds and goes in
/// `webhook-timestamp` unchanged.
pub fn sign_standard_webhooks(
    secret: &StandardSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let timestamp = timestamp.to_string();
    let mac = secret
        .key
        .mac(&StandardSecret::mac_parts(msg_id, &timestamp, body));
    format!("v1,{}", STANDARD.encode(mac))
}

/// A route's signature check, with its secrets resolved; built once per
/// config load so a request never touches the environment.
#[derive(Clone)]
pub struct Verifier {
    scheme: Scheme,
}

#[derive(Clone)]
enum Scheme {
    /// GitHub and the generic scheme: a MAC of the body alone in one header.
    Body {
        key: HmacKey,
        header: HeaderName,
        prefix: String,
        encoding: Encoding,
    },
    Stripe {
        key: HmacKey,
        tolerance: Duration,
    },
    Standard {
        secrets: Vec<StandardSecret>,
        tolerance: Duration,
    },
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scheme {
            Scheme::Body { header, .. } => f
                .debug_struct("Verifier::Body")
                .field("header", header)
                .finish_non_exhaustive(),
            Scheme::Stripe { tolerance, .. } => f
                .debug_struct("Verifier::Stripe")
                .field("tolerance", tolerance)
                .finish_non_exhaustive(),
            Scheme::Standard { secrets, tolerance } => f
                .debug_struct("Verifier::StandardWebhooks")
                .field("secrets", &secrets.len())
                .field("tolerance", tolerance)
                .finish_non_exhaustive(),
        }
    }
}

impl Verifier {
    /// Resolves the secret named by `cfg` through `env` (in production
    /// `|k| std::env::var(k).ok()`; tests pass a closure), so a missing or
    /// malformed secret fails the config load instead of every request.
    pub fn from_config(
        cfg: &VerifyConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SecretError> {
        let scheme = match cfg {
            VerifyConfig::Github { secret_env } => Scheme::Body {
                key: HmacKey::new(resolve(secret_env, &env)?.as_bytes()),
                header: HeaderName::from_static(GITHUB_HEADER),
                prefix: GITHUB_PREFIX.to_owned(),
                encoding: Encoding::Hex,
            },
            VerifyConfig::Stripe {
                secret_env,
                tolerance,
            } => Scheme::Stripe {
                key: HmacKey::new(resolve(secret_env, &env)?.as_bytes()),
                tolerance: *tolerance,
            },
            VerifyConfig::StandardWebhooks {
                secret_env,
                tolerance,
            } => {
                let value = env(secret_env).ok_or_else(|| SecretError::NotSet {
                    var: secret_env.clone(),
                })?;
                let secrets = value
                    .split_whitespace()
                    .map(StandardSecret::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| SecretError::InvalidStandardSecret {
                        var: secret_env.clone(),
                        reason,
                    })?;
                if secrets.is_empty() {
                    return Err(SecretError::Empty {
                        var: secret_env.clone(),
                    });
                }
                Scheme::Standard {
                    secrets,
                    tolerance: *tolerance,
                }
            }
            VerifyConfig::HmacSha256 {
                secret_env,
                header,
                prefix,
                encoding,
            } => Scheme::Body {
                key: HmacKey::new(resolve(secret_env, &env)?.as_bytes()),
                header: header.clone(),
                prefix: prefix.clone(),
                encoding: *encoding,
            },
        };
        Ok(Self { scheme })
    }

    /// Checks that `headers` carry a valid signature of `body`; `now` is a
    /// parameter so tests (and replays of stored requests) control the clock.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let found = match &self.scheme {
            Scheme::Body {
                key,
                header,
                prefix,
                encoding,
            } => verify_body(key, header.as_str(), prefix, *encoding, headers, body)?,
            Scheme::Stripe { key, tolerance } => {
                verify_stripe(key, *tolerance, headers, body, now)?
            }
            Scheme::Standard { secrets, tolerance } => {
                verify_standard(secrets, *tolerance, headers, body, now)?
            }
        };
        if bool::from(found) {
            Ok(())
        } else {
            Err(VerifyError::SignatureMismatch)
        }
    }
}

/// Reads a single-key secret, used verbatim as the HMAC key.
fn resolve(var: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, SecretError> {
    let value = env(var).ok_or_else(|| SecretError::NotSet {
        var: var.to_owned(),
    })?;
    if value.is_empty() {
        Err(SecretError::Empty {
            var: var.to_owned(),
        })
    } else if value.trim() != value {
        Err(SecretError::Whitespace {
            var: var.to_owned(),
        })
    } else {
        Ok(value)
    }
}

/// The value of a header that must appear exactly once: a repeated signature
/// or timestamp header is ambiguous, so it is refused rather than guessed.
fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or_else(|| VerifyError::MissingHeader {
        header: name.to_owned(),
    })?;
    if values.next().is_some() {
        return Err(malformed(name, "header appears more than once"));
    }
    value
        .to_str()
        .map_err(|_| malformed(name, "value is not visible ascii"))
}

/// Parses Unix seconds written as plain digits; signs and spaces are refused
/// because the signed text is rebuilt from the number.
fn parse_timestamp(header: &str, text: &str) -> Result<i64, VerifyError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(header, "timestamp is not unix seconds"));
    }
    text.parse()
        .map_err(|_| malformed(header, "timestamp is out of range"))
}

fn check_tolerance(
    timestamp: i64,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    // `abs_diff` cannot overflow, whatever timestamp the sender claims.
    if timestamp.abs_diff(now) > tolerance.as_secs() {
        return Err(VerifyError::StaleTimestamp {
            timestamp,
            tolerance,
        });
    }
    Ok(())
}

fn verify_body(
    key: &HmacKey,
    header: &str,
    prefix: &str,
    encoding: Encoding,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Choice, VerifyError> {
    let value = single_header(headers, header)?;
    let encoded = value
        .strip_prefix(prefix)
        .ok_or_else(|| VerifyError::MissingPrefix {
            header: header.to_owned(),
            prefix: prefix.to_owned(),
        })?;
    let signature = encoding
        .decode(encoded)
        .ok_or_else(|| malformed(header, encoding.invalid()))?;
    Ok(key.matches_any(&[body], &[signature]))
}

fn verify_stripe(
    key: &HmacKey,
    tolerance: Duration,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<Choice, VerifyError> {
    let value = single_header(headers, STRIPE_HEADER)?;
    let mut timestamps = Vec::new();
    let mut signatures = Vec::new();
    for entry in value.split(',') {
        let (name, text) = entry
            .trim()
            .split_once('=')
            .ok_or_else(|| malformed(STRIPE_HEADER, "entry without \"=\""))?;
        match name {
            "t" => timestamps.push(text),
            "v1" => signatures.push(
                hex::decode(text)
                    .map_err(|_| malformed(STRIPE_HEADER, "v1 signature is not valid hex"))?,
            ),
            // `v0` (test mode) and future schemes are not ours to check.
            _ => {}
        }
    }
    let text = match timestamps[..] {
        [text] => text,
        [] => return Err(malformed(STRIPE_HEADER, "missing \"t=\" entry")),
        _ => return Err(malformed(STRIPE_HEADER, "more than one \"t=\" entry")),
    };
    let timestamp = parse_timestamp(STRIPE_HEADER, text)?;
    check_tolerance(timestamp, now, tolerance)?;
    if signatures.is_empty() {
        return Err(VerifyError::NoSupportedSignature {
            header: STRIPE_HEADER.to_owned(),
        });
    }
    let timestamp = timestamp.to_string();
    Ok(key.matches_any(&[timestamp.as_bytes(), b".", body], &signatures))
}

fn verify_standard(
    secrets: &[StandardSecret],
    tolerance: Duration,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<Choice, VerifyError> {
    let msg_id = single_header(headers, WEBHOOK_ID)?;
    let timestamp = single_header(headers, WEBHOOK_TIMESTAMP)?;
    let value = single_header(headers, WEBHOOK_SIGNATURE)?;
    let timestamp = parse_timestamp(WEBHOOK_TIMESTAMP, timestamp)?;
    check_tolerance(timestamp, now, tolerance)?;

    let mut signatures = Vec::new();
    for entry in value.split_whitespace() {
        let (version, text) = entry
            .split_once(',')
            .ok_or_else(|| malformed(WEBHOOK_SIGNATURE, "entry without a version"))?;
        // `v1a` (asymmetric) and future versions are skipped, as the spec's
        // reference libraries do.
        if version == "v1" {
            signatures.push(
                STANDARD_PAD_INDIFFERENT.decode(text).map_err(|_| {
                    malformed(WEBHOOK_SIGNATURE, "v1 signature is not valid base64")
                })?,
            );
        }
    }
    if signatures.is_empty() {
        return Err(VerifyError::NoSupportedSignature {
            header: WEBHOOK_SIGNATURE.to_owned(),
        });
    }
    let timestamp = timestamp.to_string();
    let parts = StandardSecret::mac_parts(msg_id, &timestamp, body);
    // Every secret is tried even after a match, so timing does not reveal
    // which secret of a rotation is in use.
    Ok(secrets.iter().fold(Choice::from(0), |found, secret| {
        found | secret.key.matches_any(&parts, &signatures)
    }))
}

#[cfg(test)]
mod tests;
