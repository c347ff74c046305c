use super::*;
use http::HeaderValue;

// Known answer from the Standard Webhooks reference libraries' tests.
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: u64 = 1614265330;
const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

// GitHub's documented example ("Validating webhook deliveries").
const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
const GH_HEX: &str = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
// The same MAC in base64, computed with `openssl dgst -sha256 -hmac`.
const GH_BASE64: &str = "dXEH6g6yUJ/CESIczphLijdXC211hsIsRvQ3nIsEPhc=";

// Computed independently: printf '%s' '1614265330.{"id":"evt_1","object":"event"}'
//   | openssl dgst -sha256 -hmac 'whsec_stripe_test_secret'
const STRIPE_SECRET: &str = "whsec_stripe_test_secret";
const STRIPE_BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
const STRIPE_V1: &str = "80ff47076776f0f31cb006ffd0765e4ab2fc377adf15967c1d42bef59dbf9a23";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

fn verifier(cfg: VerifyConfig, env: &[(&str, &str)]) -> Verifier {
    Verifier::from_config(&cfg, env_of(env)).expect("test secret resolves")
}

fn standard_with(secrets: &str) -> Verifier {
    let cfg = VerifyConfig::StandardWebhooks {
        secret_env: "SW".into(),
        tolerance: DEFAULT_TOLERANCE,
    };
    verifier(cfg, &[("SW", secrets)])
}

fn sw_headers(signature: &str) -> HeaderMap {
    headers(&[
        ("webhook-id", SW_ID),
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", signature),
    ])
}

fn github() -> Verifier {
    let cfg = VerifyConfig::Github {
        secret_env: "GH".into(),
    };
    verifier(cfg, &[("GH", GH_SECRET)])
}

fn stripe(tolerance: Duration) -> Verifier {
    let cfg = VerifyConfig::Stripe {
        secret_env: "STRIPE".into(),
        tolerance,
    };
    verifier(cfg, &[("STRIPE", STRIPE_SECRET)])
}

fn generic(prefix: &str, encoding: Encoding) -> Verifier {
    let cfg = VerifyConfig::HmacSha256 {
        secret_env: "HOOK".into(),
        header: HeaderName::from_static("x-signature"),
        prefix: prefix.into(),
        encoding,
    };
    verifier(cfg, &[("HOOK", GH_SECRET)])
}

fn malformed_reason(result: Result<(), VerifyError>) -> (String, &'static str) {
    match result {
        Err(VerifyError::MalformedHeader { header, reason }) => (header, reason),
        other => panic!("expected a malformed header, got {other:?}"),
    }
}

#[test]
fn signs_the_standard_webhooks_reference_vector() {
    let secret = StandardSecret::parse(SW_SECRET).expect("reference secret parses");
    let ts = i64::try_from(SW_TS).expect("fits");
    assert_eq!(sign_standard_webhooks(&secret, SW_ID, ts, SW_BODY), SW_SIG);
}

#[test]
fn verifies_the_standard_webhooks_reference_vector() {
    let result = standard_with(SW_SECRET).verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS));
    assert_eq!(result, Ok(()));
}

#[test]
fn accepts_when_only_the_second_of_several_signatures_matches() {
    let v = standard_with(SW_SECRET);
    let wrong = format!("v1,{}", STANDARD.encode([7u8; 32]));
    let only_wrong = v.verify(&sw_headers(&wrong), SW_BODY, at(SW_TS));
    assert_eq!(only_wrong, Err(VerifyError::SignatureMismatch));
    let both = format!("{wrong} {SW_SIG}");
    assert_eq!(v.verify(&sw_headers(&both), SW_BODY, at(SW_TS)), Ok(()));
}

#[test]
fn ignores_v1a_and_unknown_signature_versions() {
    let v = standard_with(SW_SECRET);
    let good_bytes = SW_SIG.trim_start_matches("v1,");
    let mixed = format!("v1a,{good_bytes} v2,whatever {SW_SIG}");
    assert_eq!(v.verify(&sw_headers(&mixed), SW_BODY, at(SW_TS)), Ok(()));
    // The right bytes under another version label do not count.
    let only_v1a = format!("v1a,{good_bytes} v2,{good_bytes}");
    let err = v.verify(&sw_headers(&only_v1a), SW_BODY, at(SW_TS));
    assert_eq!(
        err.map_err(|e| e.to_string()),
        Err("no v1 signature in header \"webhook-signature\"".into())
    );
}

#[test]
fn rejects_a_tampered_standard_webhooks_body() {
    let result =
        standard_with(SW_SECRET).verify(&sw_headers(SW_SIG), br#"{"test": 2432232315}"#, at(SW_TS));
    assert_eq!(result, Err(VerifyError::SignatureMismatch));
}

#[test]
fn rejects_a_timestamp_six_minutes_off_and_accepts_five() {
    let v = standard_with(SW_SECRET);
    let h = sw_headers(SW_SIG);
    for now in [SW_TS - 360, SW_TS + 360] {
        let err = v.verify(&h, SW_BODY, at(now)).expect_err("stale");
        assert_eq!(
            err.to_string(),
            "timestamp 1614265330 is outside the tolerance of 5m"
        );
    }
    for now in [SW_TS - 300, SW_TS + 300] {
        assert_eq!(v.verify(&h, SW_BODY, at(now)), Ok(()));
    }
}

#[test]
fn names_each_missing_standard_webhooks_header() {
    let v = standard_with(SW_SECRET);
    for name in [WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE] {
        let mut h = sw_headers(SW_SIG);
        h.remove(name);
        let err = v.verify(&h, SW_BODY, at(SW_TS)).expect_err("missing");
        assert_eq!(err.to_string(), format!("missing header \"{name}\""));
    }
}

#[test]
fn any_rotated_standard_secret_verifies() {
    let other = format!("whsec_{}", STANDARD.encode(b"a different 24-byte key!"));
    let rotated = standard_with(&format!("{other}  {SW_SECRET}\n"));
    assert_eq!(
        rotated.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS)),
        Ok(())
    );
    let retired = standard_with(&other);
    let result = retired.verify(&sw_headers(SW_SIG), SW_BODY, at(SW_TS));
    assert_eq!(result, Err(VerifyError::SignatureMismatch));
}

#[test]
fn refuses_malformed_standard_webhooks_headers() {
    let v = standard_with(SW_SECRET);
    for ts in ["-1614265330", "+1614265330", "1614265330.5", ""] {
        let mut h = sw_headers(SW_SIG);
        h.insert(WEBHOOK_TIMESTAMP, HeaderValue::from_str(ts).expect("value"));
        let (header, _) = malformed_reason(v.verify(&h, SW_BODY, at(SW_TS)));
        assert_eq!(header, WEBHOOK_TIMESTAMP, "timestamp {ts:?}");
    }
    for sig in ["v1,not*base64", "g0hM9SsE+OTPJTGt"] {
        let (header, _) = malformed_reason(v.verify(&sw_headers(sig), SW_BODY, at(SW_TS)));
        assert_eq!(header, WEBHOOK_SIGNATURE, "signature {sig:?}");
    }
    let mut twice = sw_headers(SW_SIG);
    twice.append(WEBHOOK_SIGNATURE, HeaderValue::from_static(SW_SIG));
    let (header, reason) = malformed_reason(v.verify(&twice, SW_BODY, at(SW_TS)));
    assert_eq!(
        (header.as_str(), reason),
        (WEBHOOK_SIGNATURE, "header appears more than once")
    );
}

#[test]
fn verifies_githubs_documented_example() {
    let h = headers(&[("X-Hub-Signature-256", &format!("sha256={GH_HEX}"))]);
    assert_eq!(github().verify(&h, GH_BODY, at(0)), Ok(()));
}

#[test]
fn rejects_github_signatures_with_a_wrong_prefix_bad_hex_or_other_body() {
    let v = github();
    let wrong_prefix = headers(&[(GITHUB_HEADER, &format!("sha1={GH_HEX}"))]);
    assert_eq!(
        v.verify(&wrong_prefix, GH_BODY, at(0))
            .map_err(|e| e.to_string()),
        Err("header \"x-hub-signature-256\" does not start with \"sha256=\"".into())
    );
    let bad_hex = headers(&[(GITHUB_HEADER, &format!("sha256=zz{}", &GH_HEX[2..]))]);
    let (header, reason) = malformed_reason(v.verify(&bad_hex, GH_BODY, at(0)));
    assert_eq!(
        (header.as_str(), reason),
        (GITHUB_HEADER, "signature is not valid hex")
    );
    let good = headers(&[(GITHUB_HEADER, &format!("sha256={GH_HEX}"))]);
    let other_body = v.verify(&good, b"Hello, World?", at(0));
    assert_eq!(other_body, Err(VerifyError::SignatureMismatch));
    let truncated = headers(&[(GITHUB_HEADER, &format!("sha256={}", &GH_HEX[..62]))]);
    assert_eq!(
        v.verify(&truncated, GH_BODY, at(0)),
        Err(VerifyError::SignatureMismatch)
    );
    let missing = v
        .verify(&HeaderMap::new(), GH_BODY, at(0))
        .expect_err("missing");
    assert_eq!(
        missing.to_string(),
        "missing header \"x-hub-signature-256\""
    );
}

#[test]
fn verifies_a_stripe_signature_computed_with_openssl() {
    let h = headers(&[(STRIPE_HEADER, &format!("t=1614265330,v1={STRIPE_V1}"))]);
    assert_eq!(
        stripe(DEFAULT_TOLERANCE).verify(&h, STRIPE_BODY, at(SW_TS)),
        Ok(())
    );
}

#[test]
fn accepts_a_stripe_header_where_one_of_several_v1_matches() {
    let v = stripe(DEFAULT_TOLERANCE);
    let zeros = "0".repeat(64);
    let several = format!("t=1614265330,v1={zeros},v1={STRIPE_V1},v0={zeros}");
    let h = headers(&[(STRIPE_HEADER, &several)]);
    assert_eq!(v.verify(&h, STRIPE_BODY, at(SW_TS)), Ok(()));
    let none = headers(&[(STRIPE_HEADER, &format!("t=1614265330,v1={zeros}"))]);
    assert_eq!(
        v.verify(&none, STRIPE_BODY, at(SW_TS)),
        Err(VerifyError::SignatureMismatch)
    );
}

#[test]
fn enforces_the_stripe_tolerance_both_ways() {
    let v = stripe(Duration::from_secs(600));
    let h = headers(&[(STRIPE_HEADER, &format!("t=1614265330,v1={STRIPE_V1}"))]);
    for now in [SW_TS - 601, SW_TS + 601] {
        let err = v.verify(&h, STRIPE_BODY, at(now)).expect_err("stale");
        assert_eq!(
            err,
            VerifyError::StaleTimestamp {
                timestamp: 1614265330,
                tolerance: Duration::from_secs(600)
            }
        );
    }
    assert_eq!(v.verify(&h, STRIPE_BODY, at(SW_TS + 599)), Ok(()));
    assert_eq!(v.verify(&h, STRIPE_BODY, at(SW_TS - 599)), Ok(()));
}

#[test]
fn rejects_stripe_headers_without_t_or_v1() {
    let v = stripe(DEFAULT_TOLERANCE);
    let no_t = headers(&[(STRIPE_HEADER, &format!("v1={STRIPE_V1}"))]);
    let err = v.verify(&no_t, STRIPE_BODY, at(SW_TS)).expect_err("no t");
    assert_eq!(
        err.to_string(),
        "malformed header \"stripe-signature\": missing \"t=\" entry"
    );
    let only_v0 = headers(&[(STRIPE_HEADER, &format!("t=1614265330,v0={STRIPE_V1}"))]);
    let err = v
        .verify(&only_v0, STRIPE_BODY, at(SW_TS))
        .expect_err("no v1");
    assert_eq!(
        err,
        VerifyError::NoSupportedSignature {
            header: STRIPE_HEADER.into()
        }
    );
    let two_t = headers(&[(STRIPE_HEADER, &format!("t=1,t=1614265330,v1={STRIPE_V1}"))]);
    malformed_reason(v.verify(&two_t, STRIPE_BODY, at(SW_TS)));
}

#[test]
fn verifies_generic_hex_with_a_prefix_and_base64_without() {
    let hex_h = headers(&[("x-signature", &format!("sha256={GH_HEX}"))]);
    assert_eq!(
        generic("sha256=", Encoding::Hex).verify(&hex_h, GH_BODY, at(0)),
        Ok(())
    );
    let b64 = generic("", Encoding::Base64);
    for value in [GH_BASE64, GH_BASE64.trim_end_matches('=')] {
        let h = headers(&[("X-Signature", value)]);
        assert_eq!(b64.verify(&h, GH_BODY, at(0)), Ok(()), "{value}");
    }
    let h = headers(&[("x-signature", GH_BASE64)]);
    assert_eq!(
        b64.verify(&h, b"tampered", at(0)),
        Err(VerifyError::SignatureMismatch)
    );
}

#[test]
fn wrong_generic_encoding_fails_cleanly() {
    let base64_to_hex = headers(&[("x-signature", GH_BASE64)]);
    let (_, reason) =
        malformed_reason(generic("", Encoding::Hex).verify(&base64_to_hex, GH_BODY, at(0)));
    assert_eq!(reason, "signature is not valid hex");
    // Hex digits are also base64 characters: it decodes, to the wrong bytes.
    let hex_to_base64 = headers(&[("x-signature", GH_HEX)]);
    let result = generic("", Encoding::Base64).verify(&hex_to_base64, GH_BODY, at(0));
    assert_eq!(result, Err(VerifyError::SignatureMismatch));
    let not_base64 = headers(&[("x-signature", "%%%")]);
    let (_, reason) =
        malformed_reason(generic("", Encoding::Base64).verify(&not_base64, GH_BODY, at(0)));
    assert_eq!(reason, "signature is not valid base64");
}

#[test]
fn reports_unset_empty_and_padded_secret_variables() {
    let github = VerifyConfig::Github {
        secret_env: "ORDERS_SECRET".into(),
    };
    let message = |env: &[(&str, &str)]| {
        Verifier::from_config(&github, env_of(env))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        message(&[]),
        Err("environment variable \"ORDERS_SECRET\" is not set".into())
    );
    assert_eq!(
        message(&[("ORDERS_SECRET", "")]),
        Err("environment variable \"ORDERS_SECRET\" is empty".into())
    );
    assert_eq!(
        message(&[("ORDERS_SECRET", "s3cret\n")]),
        Err("environment variable \"ORDERS_SECRET\" has leading or trailing whitespace".into())
    );
    let sw = VerifyConfig::StandardWebhooks {
        secret_env: "SW".into(),
        tolerance: DEFAULT_TOLERANCE,
    };
    let err = Verifier::from_config(&sw, env_of(&[("SW", " \n")])).expect_err("blank");
    assert_eq!(err, SecretError::Empty { var: "SW".into() });
    let err = Verifier::from_config(&sw, env_of(&[])).expect_err("unset");
    assert_eq!(err, SecretError::NotSet { var: "SW".into() });
}

#[test]
fn reports_invalid_whsec_secrets_without_echoing_them() {
    let sw = VerifyConfig::StandardWebhooks {
        secret_env: "SW".into(),
        tolerance: DEFAULT_TOLERANCE,
    };
    let cases = [
        (
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "it does not start with \"whsec_\"",
        ),
        (
            "whsec_MfKQ9r8G*YqrTwjU",
            "the part after \"whsec_\" is not valid base64",
        ),
        ("whsec_", "the key is empty"),
        (
            &format!("{SW_SECRET} whsec_!"),
            "the part after \"whsec_\" is not valid base64",
        ),
    ];
    for (value, why) in cases {
        let err = Verifier::from_config(&sw, env_of(&[("SW", value)])).expect_err(value);
        assert_eq!(
            err.to_string(),
            format!("environment variable \"SW\" does not hold a valid whsec_ secret: {why}")
        );
    }
    assert_eq!(
        StandardSecret::parse("whsec_").map(|_| ()),
        Err(StandardSecretError::EmptyKey)
    );
}

#[test]
fn debug_output_never_shows_a_secret() {
    let shown = format!("{:?} {:?}", github(), standard_with(SW_SECRET));
    assert!(!shown.contains("Secret to Everybody"), "{shown}");
    assert!(!shown.contains("MfKQ9r8G"), "{shown}");
    let secret = StandardSecret::parse(SW_SECRET).expect("parses");
    assert_eq!(format!("{secret:?}"), "StandardSecret(<redacted>)");
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Route {
    verify: VerifyConfig,
}

fn from_toml(text: &str) -> Result<VerifyConfig, String> {
    toml::from_str::<Route>(text)
        .map(|route| route.verify)
        .map_err(|e| e.to_string())
}

#[test]
fn parses_each_scheme_from_toml() {
    let cases = [
        (
            "[verify]\nscheme = \"github\"\nsecret_env = \"GH\"\n",
            VerifyConfig::Github {
                secret_env: "GH".into(),
            },
        ),
        (
            "[verify]\nscheme = \"stripe\"\nsecret_env = \"ST\"\n",
            VerifyConfig::Stripe {
                secret_env: "ST".into(),
                tolerance: Duration::from_secs(300),
            },
        ),
        (
            "verify = { scheme = \"standard-webhooks\", secret_env = \"SW\", tolerance = \"90s\" }",
            VerifyConfig::StandardWebhooks {
                secret_env: "SW".into(),
                tolerance: Duration::from_secs(90),
            },
        ),
        (
            "[verify]\nscheme = \"hmac-sha256\"\nsecret_env = \"H\"\nheader = \"X-Signature\"\n",
            VerifyConfig::HmacSha256 {
                secret_env: "H".into(),
                header: HeaderName::from_static("x-signature"),
                prefix: String::new(),
                encoding: Encoding::Hex,
            },
        ),
        (
            "[verify]\nscheme = \"hmac-sha256\"\nsecret_env = \"H\"\nheader = \"x-sig\"\n\
             prefix = \"sha256=\"\nencoding = \"base64\"\n",
            VerifyConfig::HmacSha256 {
                secret_env: "H".into(),
                header: HeaderName::from_static("x-sig"),
                prefix: "sha256=".into(),
                encoding: Encoding::Base64,
            },
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(from_toml(text), Ok(expected), "{text}");
    }
}

#[test]
fn toml_rejects_unknown_fields_and_bad_values() {
    let cases = [
        (
            "scheme = \"github\"\nsecret_env = \"GH\"\nsecret = \"oops\"",
            "unknown field",
        ),
        (
            "scheme = \"stripe\"\nsecret_env = \"ST\"\nheader = \"x\"",
            "unknown field",
        ),
        (
            "scheme = \"gitlab\"\nsecret_env = \"GL\"",
            "unknown variant",
        ),
        (
            "scheme = \"stripe\"\nsecret_env = \"ST\"\ntolerance = \"soon\"",
            "soon",
        ),
        (
            "scheme = \"hmac-sha256\"\nsecret_env = \"H\"\nheader = \"x sig\"",
            "\"x sig\"",
        ),
        (
            "scheme = \"hmac-sha256\"\nsecret_env = \"H\"\nheader = \"x\"\nencoding = \"b32\"",
            "b32",
        ),
        ("secret_env = \"GH\"", "scheme"),
    ];
    for (body, needle) in cases {
        let err = from_toml(&format!("[verify]\n{body}\n")).expect_err(body);
        assert!(err.contains(needle), "{body}: {err}");
    }
}
