"""`postback`: a transform that turns an internal event into an outbound GET
postback whose URL is built from the event's own fields, the way ad networks
and payment partners expect conversions and balance changes.

Config (values are strings):
- `query.<name>` = `<field>`: a query parameter `<name>` carrying the event's
  top-level `<field>` (strings as they are, numbers as the event wrote them,
  e.g. `25.50`, booleans as `true` / `false`), form-encoded; parameters come
  in name order;
- `path_field`: a top-level field whose value is appended to the destination's
  URL as a path segment (e.g. `event` -> `/credit`); the destination must set
  `allow_path = true`.

The postback is a `GET` with no body and no forwarded headers; the gateway adds
its own (`webhook-id`, signatures). An event without a field the config names,
or with a non-scalar one there, is an `err`: the route's `on_plugin_error`
policy dead-letters it, since a postback with a hole in it would be wrong, not
late.

Build by hand (see examples/postback/README.md):
`componentize-py -d ../../wit -w transformer componentize app -o postback.wasm`;
`cargo test` at the repository root builds it with the other plugins.
"""

# world: transformer

import json
from typing import Dict, Iterable, List, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import Outgoing, Webhook

# Bytes a query value keeps as they are (application/x-www-form-urlencoded):
# ASCII letters and digits and `*-._`; a space becomes `+`, the rest `%XX`.
_UNRESERVED = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._"
)

# What a path segment may hold: nothing that could lead the postback to
# another path on the partner's server.
_SEGMENT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
)


class _Number(str):
    """A JSON number, kept as the text the event wrote it in: a partner gets
    `25.50` as sent, never a float's reprint of it."""


class Transform(exports.Transform):
    # Raising componentize_py_types.Err(reason) answers `err(reason)`.
    def transform(self, hook: Webhook) -> List[Outgoing]:
        event = parse_event(hook.body)
        params = (
            (key[len("query."):], field)
            for key, field in sorted(host.config_entries())
            if key.startswith("query.")
        )
        query = build_query(event, params)
        path_field = host.config("path_field")
        path = None if path_field is None else path_segment(scalar(event, path_field))
        return [Outgoing(None, "GET", path, query, [], b"", None, None)]


def parse_event(body: bytes) -> Dict[str, object]:
    """The event, a JSON object in UTF-8; anything else is an error."""

    def refuse_constant(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    try:
        event = json.loads(
            body.decode("utf-8"),
            parse_int=_Number,
            parse_float=_Number,
            parse_constant=refuse_constant,
        )
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        event = None
    if not isinstance(event, dict):
        raise Err("the event is not a JSON object")
    return event


def build_query(event: Dict[str, object], params: Iterable[Tuple[str, str]]) -> str:
    """`name=value&...` for each `(name, field)`, values from `event`."""
    return "&".join(
        f"{form_encode(name)}={form_encode(scalar(event, field))}" for name, field in params
    )


def form_encode(text: str) -> str:
    """`text` as application/x-www-form-urlencoded, byte by byte in UTF-8."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in _UNRESERVED:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def scalar(event: Dict[str, object], field: str) -> str:
    """The event's `field` as text: a string as it is, a number as written, a
    boolean as `true` / `false`; anything else (missing, null, array, object)
    is an error."""
    if field not in event:
        raise Err(f"the event has no field {json.dumps(field)}")
    value = event[field]
    if isinstance(value, str):  # a `_Number` too
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    raise Err(f"field {json.dumps(field)} is not a string, number or boolean")


def path_segment(value: str) -> str:
    """A value used as one path segment: letters, digits, `-`, `_` and `.`
    only (and not `.` or `..`)."""
    if value in ("", ".", "..") or not set(value) <= _SEGMENT:
        raise Err(f"{json.dumps(value)} cannot be a path segment")
    return value
