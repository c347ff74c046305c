"""A hookgate plugin in Python that plays all three roles.

Every template (Rust, JavaScript, Python, C) behaves exactly the same, so the
integration test can send one webhook through each and expect one result:

- validate: the header named by config `required_header` (default
  `x-event-type`) must be present (else 422) and the body must be a JSON object
  (else 400);
- transform: one delivery to the route's first destination with the body
  `{"event":<header>,"tag":<config tag>,"data":<inbound body>}`;
- fallback: counts failures per destination in the key-value store
  (`failures:<destination>`), then reroutes to the destination named by config
  `backup`, or dead-letters the message.

Build: see README.md (`componentize-py ... componentize app -o plugin.wasm`).
"""

# world: plugin

import json
from typing import List, Optional

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Decision,
    Failure,
    NextStep_DeadLetter,
    NextStep_Reroute,
    Outgoing,
    Rejection,
    Verdict,
    Verdict_Accept,
    Verdict_Reject,
    Webhook,
)

DEFAULT_HEADER = "x-event-type"


def config_or(key: str, default: str) -> str:
    """A config value, or `default` when the key is not set (an empty value
    is kept, as in every template)."""
    value = host.config(key)
    return default if value is None else value


def header(hook: Webhook, name: str) -> Optional[str]:
    """The first value of a header (names arrive lowercase; values are bytes)."""
    for key, value in hook.headers:
        if key == name:
            return value.decode("utf-8", errors="replace")
    return None


def reject(status: int, reason: str) -> Verdict:
    """A rejection, logged: the sender only sees the status and reason, the
    operator sees why in the gateway's log. (Acceptances are not logged here:
    the gateway logs each message's delivery attempts with its id.)"""
    host.log(host.Level.INFO, "rejected", [("reason", reason), ("lang", "python")])
    return Verdict_Reject(Rejection(status, reason))


class Validate(exports.Validate):
    # Return a verdict. Raising componentize_py_types.Err(reason) becomes
    # `err(reason)`; any other exception traps (the route's on_plugin_error
    # policy decides either way).
    def validate(self, hook: Webhook) -> Verdict:
        name = config_or("required_header", DEFAULT_HEADER)
        if header(hook, name) is None:
            return reject(422, f'missing header "{name}"')
        try:
            body = json.loads(hook.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return reject(400, "body is not a JSON object")
        return Verdict_Accept()


class Transform(exports.Transform):
    def transform(self, hook: Webhook) -> List[Outgoing]:
        event = header(hook, config_or("required_header", DEFAULT_HEADER))
        if event is None:
            event = "unknown"
        tag = config_or("tag", "template")
        # The inbound body is spliced in as it came: no re-serialization.
        body = (
            b'{"event":' + json.dumps(event, ensure_ascii=False).encode()
            + b',"tag":' + json.dumps(tag, ensure_ascii=False).encode()
            + b',"data":' + hook.body + b"}"
        )
        headers = [("content-type", b"application/json"), ("x-event-type", event.encode())]
        return [Outgoing(None, None, None, None, headers, body, None, None)]


class Fallback(exports.Fallback):
    def fallback(self, hook: Webhook, failure: Failure) -> Decision:
        key = f"failures:{failure.destination}"
        stored = host.kv_get(key)
        failures = (int(stored) if stored is not None else 0) + 1
        # No TTL: the count stays until deleted.
        host.kv_set(key, str(failures).encode(), None)
        host.log(
            host.Level.WARN,
            "delivery failed",
            [("destination", failure.destination), ("failures", str(failures))],
        )
        backup = host.config("backup")
        if backup is not None and backup != failure.destination:
            return Decision(None, NextStep_Reroute(backup))
        return Decision(None, NextStep_DeadLetter(f"{failure.destination} failed {failures} time(s)"))
