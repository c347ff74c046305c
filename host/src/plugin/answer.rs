//! What the host does with a guest's answer before anyone uses it: holds a
//! rejection to what senders may see, and refuses a transform answer that
//! could never become a valid HTTP request, whatever the route.
//!
//! A refused answer is a [`PluginError::Malformed`]: counted as `malformed`,
//! logged with the plugin's name, and handled by the route's
//! `on_plugin_error` policy, like any other transform failure. Without the
//! check, an invalid method was found only when the request was built, at
//! every attempt, and counted against the destination's breaker.

use http::{HeaderName, HeaderValue, Method};

use super::PluginError;
use super::bindings::types::{Outgoing, Rejection, Response, Verdict};
use super::host::truncate;

/// Headers that describe one connection, and `content-length`, which the
/// body decides: never taken from a plugin's answer, nor relayed to a sync
/// caller from an upstream's.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Whether header `name` of a transform's answer is left out of the
/// request: the connection's headers (a wrong `content-length` would cut
/// the body short and still count as delivered), and `host`, which would
/// pick another virtual host at the destination's address, whose URL is the
/// operator's to choose. Left out rather than refused: a transform that
/// forwards the inbound headers (which hold `host` and `content-length`)
/// with a new body is right to expect the gateway to frame it.
pub(crate) fn gateway_owned(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || hop_by_hop(name)
}

/// Whether header `name` (any case) is one of [`HOP_BY_HOP`].
pub(crate) fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Most bytes (bodies and headers) one plugin answer may carry on a
/// route, in units of its `max_body`: a transform's outgoing messages
/// together, a fallback's response to a sync caller. Room to enrich a
/// message and fan it out, not to turn a small webhook into megabytes on
/// disk and in memory.
pub const ANSWER_CAP_FACTOR: u64 = 8;

/// Most messages one transform answer may fan out to.
const MAX_OUTGOING: usize = 64;

/// Longest rejection reason passed on to a sender (WIT `rejection.reason`).
const REASON_MAX: usize = 1 << 10;

/// Holds a rejection to what the WIT promises senders: a 4xx status (others
/// become 400, with a warning naming the plugin) and a reason of at most
/// 1 KiB.
pub(super) fn normalize_verdict(verdict: Verdict, plugin: &str) -> Verdict {
    match verdict {
        Verdict::Accept => Verdict::Accept,
        Verdict::Reject(Rejection { status, reason }) => {
            let status = if (400..500).contains(&status) {
                status
            } else {
                tracing::warn!(
                    plugin,
                    status,
                    "validate rejected with a status outside 400-499: the sender gets 400"
                );
                400
            };
            Verdict::Reject(Rejection {
                status,
                reason: truncate(&reason, REASON_MAX).to_string(),
            })
        }
    }
}

/// The bytes of an answer's headers and body.
fn answer_size<'a>(headers: impl IntoIterator<Item = &'a (String, Vec<u8>)>, body: &[u8]) -> u64 {
    let heads: usize = headers.into_iter().map(|(n, v)| n.len() + v.len()).sum();
    (heads + body.len()) as u64
}

/// Refuses a transform answer that no route could send: more than
/// [`MAX_OUTGOING`] messages, `max-attempts` 0, or a method, header, path or
/// query that is not valid HTTP; and one whose bodies and headers together
/// exceed `cap` (the route's answer cap, 8 x `max_body`), where a body that
/// is the webhook's own (`inbound`) counts nothing: it is not stored again.
/// Destinations and paths are checked against the route when the message
/// is planned.
pub(super) fn check_outgoing(
    outgoing: &[Outgoing],
    inbound: &[u8],
    cap: u64,
) -> Result<(), PluginError> {
    if outgoing.len() > MAX_OUTGOING {
        return Err(malformed(format!(
            "{} outgoing messages; the limit is {MAX_OUTGOING}",
            outgoing.len()
        )));
    }
    let size: u64 = outgoing
        .iter()
        .map(|out| {
            let body = out.body.as_deref().filter(|b| *b != inbound);
            answer_size(out.headers.iter().flatten(), body.unwrap_or_default())
        })
        .sum();
    if size > cap {
        return Err(malformed(format!(
            "the answer carries {size} bytes of bodies and headers; the route allows {cap} \
             ({ANSWER_CAP_FACTOR} x max_body)"
        )));
    }
    outgoing.iter().enumerate().try_for_each(|(n, out)| {
        check_one(out).map_err(|problem| malformed(format!("outgoing {n}: {problem}")))
    })
}

/// Refuses a fallback's response to a waiting caller that HTTP cannot end
/// an exchange with (a status outside 200-599: 1xx are interim), or whose
/// headers and body exceed `cap`; the caller then gets the route's
/// `fallback_response`.
pub(super) fn check_respond(respond: Option<&Response>, cap: u64) -> Result<(), PluginError> {
    let Some(response) = respond else {
        return Ok(());
    };
    if !(200..=599).contains(&response.status) {
        return Err(malformed(format!(
            "respond status {} is not 200-599",
            response.status
        )));
    }
    let size = answer_size(&response.headers, &response.body);
    if size > cap {
        return Err(malformed(format!(
            "respond carries {size} bytes; the route allows {cap} ({ANSWER_CAP_FACTOR} x max_body)"
        )));
    }
    Ok(())
}

fn malformed(problem: String) -> PluginError {
    PluginError::Malformed(problem)
}

fn check_one(out: &Outgoing) -> Result<(), String> {
    if out.max_attempts == Some(0) {
        return Err("max-attempts is 0; it must be at least 1".into());
    }
    if let Some(method) = &out.method
        && Method::from_bytes(method.as_bytes()).is_err()
    {
        return Err(format!("invalid method {method:?}"));
    }
    for (name, value) in out.headers.iter().flatten() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("invalid header name {name:?}"));
        }
        if HeaderValue::from_bytes(value).is_err() {
            return Err(format!("header {name:?} has an invalid value"));
        }
    }
    if let Some(path) = &out.path {
        url_part("path", path, &['#', '?'])?;
    }
    if let Some(query) = &out.query {
        url_part("query", query, &['#'])?;
    }
    Ok(())
}

/// A path or query must reach the destination as written: URL parsing drops
/// tabs and line breaks without a word, and `#` (or `?` in a path) would
/// silently cut it short.
fn url_part(what: &str, text: &str, cut_by: &[char]) -> Result<(), String> {
    match text
        .chars()
        .find(|c| c.is_ascii_control() || *c == ' ' || cut_by.contains(c))
    {
        Some(c) => Err(format!("{what} {text:?} contains {c:?}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing() -> Outgoing {
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

    fn problem(out: Outgoing) -> String {
        match check_outgoing(&[out], b"", u64::MAX) {
            Err(PluginError::Malformed(problem)) => problem,
            other => panic!("expected a malformed answer, got {other:?}"),
        }
    }

    #[test]
    fn the_gateway_frames_the_request_itself() {
        for name in ["Host", "content-length", "Transfer-Encoding", "connection"] {
            assert!(gateway_owned(name), "{name}");
        }
        for name in ["content-type", "x-tag", "webhook-id", "hostname"] {
            assert!(!gateway_owned(name), "{name}");
        }
    }

    #[test]
    fn a_plain_answer_passes() {
        let out = Outgoing {
            method: Some("PATCH".into()),
            path: Some("/orders/42".into()),
            query: Some("a=1&b=%20".into()),
            headers: Some(vec![("x-tag".into(), b"a".to_vec())]),
            max_attempts: Some(1),
            ..outgoing()
        };
        assert!(check_outgoing(&[out], b"", u64::MAX).is_ok());
        assert!(
            check_outgoing(&[], b"", u64::MAX).is_ok(),
            "filtered: nothing to send"
        );
    }

    #[test]
    fn what_no_request_could_carry_is_refused() {
        let method = Outgoing {
            method: Some("GE T\r\n".into()),
            ..outgoing()
        };
        assert_eq!(problem(method), r#"outgoing 0: invalid method "GE T\r\n""#);
        let name = Outgoing {
            headers: Some(vec![("bad header".into(), b"1".to_vec())]),
            ..outgoing()
        };
        assert_eq!(
            problem(name),
            r#"outgoing 0: invalid header name "bad header""#
        );
        let value = Outgoing {
            headers: Some(vec![("x-a".into(), b"1\r\nx-b: 2".to_vec())]),
            ..outgoing()
        };
        assert!(problem(value).contains("invalid value"));
        let path = Outgoing {
            path: Some("/a\nb".into()),
            ..outgoing()
        };
        assert!(problem(path).contains("path"));
        let cut = Outgoing {
            path: Some("/a?b".into()),
            ..outgoing()
        };
        assert!(problem(cut).contains("'?'"));
        let query = Outgoing {
            query: Some("a=1#frag".into()),
            ..outgoing()
        };
        assert!(problem(query).contains("query"));
        let zero = Outgoing {
            max_attempts: Some(0),
            ..outgoing()
        };
        assert!(problem(zero).contains("max-attempts is 0"));
        let many = vec![outgoing(); MAX_OUTGOING + 1];
        assert!(matches!(
            check_outgoing(&many, b"", u64::MAX),
            Err(PluginError::Malformed(p)) if p == "65 outgoing messages; the limit is 64"
        ));
    }

    #[test]
    fn rejections_are_held_to_4xx_and_a_bounded_reason() {
        let reject = |status, reason: &str| {
            Verdict::Reject(Rejection {
                status,
                reason: reason.into(),
            })
        };
        let normalize = |verdict| normalize_verdict(verdict, "p");
        assert_eq!(normalize(reject(422, "bad")), reject(422, "bad"));
        assert_eq!(normalize(reject(200, "odd")), reject(400, "odd"));
        assert_eq!(normalize(reject(503, "odd")), reject(400, "odd"));
        // 1023 ASCII bytes then a 2-byte character: cut before it, never inside.
        let long = format!("{}é{}", "a".repeat(1023), "b".repeat(100));
        let Verdict::Reject(r) = normalize(reject(409, &long)) else {
            panic!("still a rejection");
        };
        assert_eq!(r.reason, "a".repeat(1023));
        assert_eq!(normalize(Verdict::Accept), Verdict::Accept);
    }
}
