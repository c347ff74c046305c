// A hookgate plugin in JavaScript that plays all three roles.
//
// world: plugin
//
// Every template (Rust, JavaScript, Python, C) behaves exactly the same, so
// the integration test can send one webhook through each and expect one
// result:
//
// - validate: the header named by config `required_header` (default
//   `x-event-type`) must be present (else 422) and the body must be a JSON
//   object (else 400);
// - transform: one delivery to the route's first destination with the body
//   `{"event":<header>,"tag":<config tag>,"data":<inbound body>}`;
// - fallback: counts failures per destination in the key-value store
//   (`failures:<destination>`), then reroutes to the destination named by
//   config `backup`, or dead-letters the message.
//
// Build: see README.md (`npm run build`).

import { log, config, kvGet, kvSet } from 'hookgate:plugin/host@0.1.0';

const DEFAULT_HEADER = 'x-event-type';
const utf8 = new TextDecoder();
const encoder = new TextEncoder();

// The name of the header validate requires. A plugin's config never changes
// during an instance's life (a config reload starts new instances), so it is
// read once per instance: a host call costs ~10 µs in JavaScript, a tenth of
// a validation. With a fresh instance per call it is simply read every call.
let requiredHeader;
function requiredHeaderName() {
  requiredHeader ??= config('required_header') ?? DEFAULT_HEADER;
  return requiredHeader;
}

// Header names arrive lowercase; values are bytes.
function header(hook, name) {
  const found = hook.headers.find(([key]) => key === name);
  return found === undefined ? undefined : utf8.decode(found[1]);
}

// A rejection, logged: the sender only sees the status and reason, the
// operator sees why in the gateway's log. (Acceptances are not logged here:
// the gateway logs each message's delivery attempts with its id, and in
// JavaScript a `log` call costs about as much as the rest of the
// validation; see README.md.)
function reject(status, reason) {
  log('info', 'rejected', [['reason', reason], ['lang', 'javascript']]);
  return { tag: 'reject', val: { status, reason } };
}

// A role with its bugs reported: a thrown Error (a TypeError, a
// SyntaxError...) answers `err("TypeError: ... (at FUNCTION@plugin.js:LINE:COL)")`
// instead of trapping with nothing but `unreachable` in the gateway's log.
// A thrown string, or an object with a `payload`, is the role's own
// `err(reason)` and passes through. Either way the route's `on_plugin_error`
// decides, and a warm instance is kept (a trap throws it away). The engine's
// own failures (too much recursion, out of memory) still trap, so that an
// instance left in an unknown state is not reused.
function guarded(role) {
  return (...args) => {
    try {
      return role(...args);
    } catch (error) {
      if (typeof error === 'string' || error?.payload !== undefined
        || (typeof InternalError === 'function' && error instanceof InternalError)) {
        throw error;
      }
      const where = error?.stack?.split('\n')[0];
      throw where ? `${error} (at ${where})` : `${error}`;
    }
  };
}

export const validate = {
  // Return a verdict; throw a string for `err(reason)`.
  validate: guarded((hook) => {
    const name = requiredHeaderName();
    const event = header(hook, name);
    if (event === undefined) {
      return reject(422, `missing header "${name}"`);
    }
    let body;
    try {
      body = JSON.parse(utf8.decode(hook.body));
    } catch {
      body = undefined;
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      return reject(400, 'body is not a JSON object');
    }
    return { tag: 'accept' };
  }),
};

export const transform = {
  transform: guarded((hook) => {
    const event = header(hook, requiredHeaderName()) ?? 'unknown';
    const tag = config('tag') ?? 'template';
    // The inbound body is spliced in as it came: no re-serialization.
    const body = `{"event":${JSON.stringify(event)},"tag":${JSON.stringify(tag)},"data":${utf8.decode(hook.body)}}`;
    return [{
      headers: [
        ['content-type', encoder.encode('application/json')],
        ['x-event-type', encoder.encode(event)],
      ],
      body: encoder.encode(body),
    }];
  }),
};

export const fallback = {
  fallback: guarded((hook, failure) => {
    const key = `failures:${failure.destination}`;
    const stored = kvGet(key);
    const failures = (stored === undefined ? 0 : Number(utf8.decode(stored))) + 1;
    // No TTL: the count stays until deleted.
    kvSet(key, encoder.encode(String(failures)), undefined);
    log('warn', 'delivery failed', [['destination', failure.destination], ['failures', String(failures)]]);
    const backup = config('backup');
    const next = backup !== undefined && backup !== failure.destination
      ? { tag: 'reroute', val: backup }
      : { tag: 'dead-letter', val: `${failure.destination} failed ${failures} time(s)` };
    return { respond: undefined, next };
  }),
};
