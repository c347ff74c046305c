//! Helpers on the generated WIT types: the few things every plugin does with
//! a webhook and its answers, so plugin code reads as what it decides.

use serde::de::DeserializeOwned;

use crate::{Decision, NextStep, Outgoing, Rejection, Verdict, Webhook};

impl Webhook {
    /// The first value of header `name` (give it lowercase, as hookgate
    /// stores names), as raw bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }

    /// The first value of header `name` as text; `None` when absent or not
    /// UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The body as text, if it is UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The body parsed as JSON into `T` (a `serde_json::Value`, a map, or
    /// your own `#[derive(Deserialize)]` type).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

impl Verdict {
    /// A rejection the sender receives as `status` (400-499) with `reason`
    /// as the body.
    pub fn reject(status: u16, reason: impl Into<String>) -> Verdict {
        Verdict::Reject(Rejection {
            status,
            reason: reason.into(),
        })
    }
}

/// Every field `None`: deliver the inbound webhook unchanged to the route's
/// first destination.
impl Default for Outgoing {
    fn default() -> Self {
        Outgoing {
            destination: None,
            method: None,
            path: None,
            query: None,
            headers: None,
            body: None,
            deliver_at: None,
            max_attempts: None,
        }
    }
}

impl Outgoing {
    /// A delivery of `body` with `content-type: application/json`.
    pub fn json(body: impl Into<Vec<u8>>) -> Outgoing {
        Outgoing {
            headers: Some(vec![(
                "content-type".to_string(),
                b"application/json".to_vec(),
            )]),
            body: Some(body.into()),
            ..Outgoing::default()
        }
    }

    /// Adds a header to send (on top of the ones the host always sets).
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Outgoing {
        self.headers
            .get_or_insert_with(Vec::new)
            .push((name.to_string(), value.into()));
        self
    }

    /// Sends to the route's destination named `name` instead of its first.
    pub fn to(mut self, destination: &str) -> Outgoing {
        self.destination = Some(destination.to_string());
        self
    }
}

impl Decision {
    /// A decision for the message only; a waiting caller gets the default
    /// answer (see `decision` in `wit/types.wit`).
    pub fn next(next: NextStep) -> Decision {
        Decision {
            respond: None,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(headers: &[(&str, &[u8])], body: &str) -> Webhook {
        Webhook {
            id: "msg".into(),
            app: "app".into(),
            route: "route".into(),
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            body: body.as_bytes().to_vec(),
            received_at: 0,
            attempt: 0,
        }
    }

    #[test]
    fn headers_are_found_by_name_first_value_wins() {
        let hook = hook(&[("x-a", b"1"), ("x-a", b"2"), ("x-bin", &[0xff])], "");
        assert_eq!(hook.header("x-a"), Some("1"));
        assert_eq!(hook.header("x-missing"), None);
        assert_eq!(hook.header("x-bin"), None, "not UTF-8");
        assert_eq!(hook.header_bytes("x-bin"), Some(&[0xff][..]));
    }

    #[test]
    fn json_bodies_parse_into_the_type_asked_for() {
        let hook = hook(&[], r#"{"id":7}"#);
        let value: serde_json::Value = hook.json().expect("valid JSON");
        assert_eq!(value["id"], 7);
        assert!(hook.json::<Vec<u8>>().is_err());
    }

    #[test]
    fn outgoing_json_sets_the_content_type_and_extra_headers() {
        let out = Outgoing::json("{}").with_header("x-k", "v").to("backup");
        assert_eq!(out.body.as_deref(), Some(&b"{}"[..]));
        assert_eq!(out.destination.as_deref(), Some("backup"));
        let headers = out.headers.expect("headers");
        assert_eq!(headers[0].0, "content-type");
        assert_eq!(headers[1], ("x-k".to_string(), b"v".to_vec()));
    }
}
