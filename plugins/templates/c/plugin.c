// A hookgate plugin in C that plays all three roles.
//
// world: plugin
//
// Every template (Rust, JavaScript, Python, C) behaves exactly the same, so
// the integration test can send one webhook through each and expect one
// result:
//
// - validate: the header named by config `required_header` (default
//   `x-event-type`) must be present (else 422) and the body must be a JSON
//   object (else 400; C has no JSON parser at hand, so this template only
//   checks that the body starts with `{` and ends with `}`);
// - transform: one delivery to the route's first destination with the body
//   `{"event":<header>,"tag":<config tag>,"data":<inbound body>}`;
// - fallback: counts failures per destination in the key-value store
//   (`failures:<destination>`), then reroutes to the destination named by
//   config `backup`, or dead-letters the message.
//
// `plugin.h` is generated from `wit/` (see README.md). Memory rules of the
// generated bindings: an exported function owns its arguments and must free
// them; what it returns must be heap-allocated (the bindings free it after
// the host has copied it); what an import returns is ours to free.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

#define DEFAULT_HEADER "x-event-type"

// A borrowed, length-delimited view of a WIT string, for calling imports.
static plugin_string_t borrow(const char *text) {
  plugin_string_t s = {(uint8_t *)text, strlen(text)};
  return s;
}

// A config value as a NUL-terminated heap string, or NULL when not set.
static char *config_value(const char *key) {
  plugin_string_t name = borrow(key), value;
  if (!hookgate_plugin_host_config(&name, &value)) {
    return NULL;
  }
  char *text = strndup((const char *)value.ptr, value.len);
  plugin_string_free(&value);
  return text;
}

// A config value as a NUL-terminated heap string, or `fallback` copied.
static char *config_or(const char *key, const char *fallback) {
  char *value = config_value(key);
  return value != NULL ? value : strdup(fallback);
}

// `n` bytes as a NUL-terminated heap string of valid UTF-8: each ill-formed
// sequence becomes U+FFFD, one per maximal subpart, as JavaScript's
// TextDecoder, Python's errors="replace" and Rust's from_utf8_lossy do.
static char *utf8_lossy(const uint8_t *p, size_t n) {
  static const char replacement[] = "\xEF\xBF\xBD";
  char *out = malloc(3 * n + 1), *o = out;
  size_t i = 0;
  while (i < n) {
    uint8_t b = p[i], lo = 0x80, hi = 0xBF;
    size_t need;
    if (b < 0x80) {
      *o++ = (char)b;
      i++;
      continue;
    } else if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2;
      if (b == 0xE0) lo = 0xA0;  // no overlong forms
      if (b == 0xED) hi = 0x9F;  // no surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3;
      if (b == 0xF0) lo = 0x90;  // no overlong forms
      if (b == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
    } else {
      need = 0;  // never a lead byte
    }
    size_t len = 1;
    while (len <= need && i + len < n && p[i + len] >= lo && p[i + len] <= hi) {
      lo = 0x80, hi = 0xBF;
      len++;
    }
    if (need > 0 && len > need) {
      memcpy(o, p + i, len);
      o += len;
    } else {
      memcpy(o, replacement, 3);
      o += 3;
    }
    i += len;
  }
  *o = '\0';
  return out;
}

// The first value of a header as a heap string, or NULL. Names arrive
// lowercase; values are bytes, decoded here as the other templates do.
static char *header(const hookgate_plugin_types_webhook_t *hook, const char *name) {
  for (size_t i = 0; i < hook->headers.len; i++) {
    const plugin_tuple2_string_list_u8_t *h = &hook->headers.ptr[i];
    if (h->f0.len == strlen(name) && memcmp(h->f0.ptr, name, h->f0.len) == 0) {
      return utf8_lossy(h->f1.ptr, h->f1.len);
    }
  }
  return NULL;
}

static void log_line(hookgate_plugin_host_level_t level, const char *message,
                     const char *k1, const char *v1, const char *k2, const char *v2) {
  plugin_tuple2_string_string_t fields[2] = {{borrow(k1), borrow(v1)}, {borrow(k2), borrow(v2)}};
  plugin_list_tuple2_string_string_t list = {fields, 2};
  plugin_string_t text = borrow(message);
  hookgate_plugin_host_log(level, &text, &list);
}

// Whether the body looks like a JSON object: `{ ... }` around whitespace.
static int looks_like_object(const plugin_list_u8_t *body) {
  size_t start = 0, end = body->len;
  // (strchr would also find a NUL byte: the string's own terminator.)
  while (start < end && body->ptr[start] && strchr(" \t\r\n", body->ptr[start])) start++;
  while (end > start && body->ptr[end - 1] && strchr(" \t\r\n", body->ptr[end - 1])) end--;
  return end - start >= 2 && body->ptr[start] == '{' && body->ptr[end - 1] == '}';
}

// A rejection, logged: the sender only sees the status and reason, the
// operator sees why in the gateway's log. (Acceptances are not logged here:
// the gateway logs each message's delivery attempts with its id.)
static void reject(exports_hookgate_plugin_validate_verdict_t *ret, uint16_t status,
                   const char *reason) {
  log_line(HOOKGATE_PLUGIN_HOST_LEVEL_INFO, "rejected", "reason", reason, "lang", "c");
  ret->tag = HOOKGATE_PLUGIN_TYPES_VERDICT_REJECT;
  ret->val.reject.status = status;
  plugin_string_dup(&ret->val.reject.reason, reason);
}

bool exports_hookgate_plugin_validate_validate(exports_hookgate_plugin_validate_webhook_t *hook,
                                               exports_hookgate_plugin_validate_verdict_t *ret,
                                               plugin_string_t *err) {
  (void)err;  // set it and return false to answer `err(reason)`
  char *name = config_or("required_header", DEFAULT_HEADER);
  char *event = header(hook, name);
  if (event == NULL) {
    char reason[600];
    snprintf(reason, sizeof reason, "missing header \"%s\"", name);
    reject(ret, 422, reason);
  } else if (!looks_like_object(&hook->body)) {
    reject(ret, 400, "body is not a JSON object");
  } else {
    ret->tag = HOOKGATE_PLUGIN_TYPES_VERDICT_ACCEPT;
  }
  free(event);
  free(name);
  exports_hookgate_plugin_validate_webhook_free(hook);
  return true;
}

// Appends `text` as a JSON string literal (quotes, escapes) at `out`,
// escaped as JavaScript, Python and Rust's serde_json escape it; returns the
// new end. `out` must have room for 6 bytes per input byte + 2.
static char *json_string(char *out, const char *text) {
  static const char short_escapes[] = "\bb\ff\nn\rr\tt";
  *out++ = '"';
  for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
    const char *short_escape = *c < 0x20 ? strchr(short_escapes, *c) : NULL;
    if (*c == '"' || *c == '\\') {
      *out++ = '\\';
      *out++ = (char)*c;
    } else if (short_escape != NULL) {
      *out++ = '\\';
      *out++ = short_escape[1];
    } else if (*c < 0x20) {
      out += sprintf(out, "\\u%04x", *c);
    } else {
      *out++ = (char)*c;
    }
  }
  *out++ = '"';
  return out;
}

static plugin_tuple2_string_list_u8_t header_entry(const char *name, const char *value) {
  plugin_tuple2_string_list_u8_t h;
  plugin_string_dup(&h.f0, name);
  h.f1.len = strlen(value);
  h.f1.ptr = (uint8_t *)strdup(value);
  return h;
}

bool exports_hookgate_plugin_transform_transform(exports_hookgate_plugin_transform_webhook_t *hook,
                                                 exports_hookgate_plugin_transform_list_outgoing_t *ret,
                                                 plugin_string_t *err) {
  (void)err;
  char *name = config_or("required_header", DEFAULT_HEADER);
  char *event = header(hook, name);
  if (event == NULL) event = strdup("unknown");
  char *tag = config_or("tag", "template");

  // The inbound body is spliced in as it came: no re-serialization.
  size_t room = 32 + 6 * (strlen(event) + strlen(tag)) + hook->body.len;
  char *body = malloc(room), *end = body;
  end += sprintf(end, "{\"event\":");
  end = json_string(end, event);
  end += sprintf(end, ",\"tag\":");
  end = json_string(end, tag);
  end += sprintf(end, ",\"data\":");
  memcpy(end, hook->body.ptr, hook->body.len);
  end += hook->body.len;
  *end++ = '}';

  hookgate_plugin_types_outgoing_t *out = calloc(1, sizeof *out);
  out->headers.is_some = true;
  out->headers.val.len = 2;
  out->headers.val.ptr = malloc(2 * sizeof *out->headers.val.ptr);
  out->headers.val.ptr[0] = header_entry("content-type", "application/json");
  out->headers.val.ptr[1] = header_entry("x-event-type", event);
  out->body.is_some = true;
  out->body.val.ptr = (uint8_t *)body;
  out->body.val.len = (size_t)(end - body);
  ret->ptr = out;
  ret->len = 1;

  free(tag);
  free(event);
  free(name);
  exports_hookgate_plugin_transform_webhook_free(hook);
  return true;
}

bool exports_hookgate_plugin_fallback_fallback(exports_hookgate_plugin_fallback_webhook_t *hook,
                                               exports_hookgate_plugin_fallback_failure_t *failure,
                                               exports_hookgate_plugin_fallback_decision_t *ret,
                                               plugin_string_t *err) {
  char *destination = strndup((const char *)failure->destination.ptr, failure->destination.len);
  char key[600];
  snprintf(key, sizeof key, "failures:%s", destination);

  plugin_string_t kv_key = borrow(key);
  plugin_list_u8_t stored;
  unsigned long failures = 1;
  if (hookgate_plugin_host_kv_get(&kv_key, &stored)) {
    char *text = strndup((const char *)stored.ptr, stored.len);
    failures += strtoul(text, NULL, 10);
    free(text);
    plugin_list_u8_free(&stored);
  }
  char count[24];
  snprintf(count, sizeof count, "%lu", failures);
  plugin_list_u8_t value = {(uint8_t *)count, strlen(count)};
  plugin_string_t kv_error;
  // No TTL (NULL): the count stays until deleted.
  bool stored_ok = hookgate_plugin_host_kv_set(&kv_key, &value, NULL, &kv_error);
  if (stored_ok) {
    log_line(HOOKGATE_PLUGIN_HOST_LEVEL_WARN, "delivery failed", "destination", destination,
             "failures", count);
    char *backup = config_value("backup");
    ret->respond.is_some = false;
    if (backup != NULL && strcmp(backup, destination) != 0) {
      ret->next.tag = HOOKGATE_PLUGIN_TYPES_NEXT_STEP_REROUTE;
      plugin_string_dup(&ret->next.val.reroute, backup);
    } else {
      char reason[700];
      snprintf(reason, sizeof reason, "%s failed %lu time(s)", destination, failures);
      ret->next.tag = HOOKGATE_PLUGIN_TYPES_NEXT_STEP_DEAD_LETTER;
      plugin_string_dup(&ret->next.val.dead_letter, reason);
    }
    free(backup);
  } else {
    *err = kv_error;  // hand the store's reason on as `err(reason)`
  }
  free(destination);
  exports_hookgate_plugin_fallback_failure_free(failure);
  exports_hookgate_plugin_fallback_webhook_free(hook);
  return stored_ok;
}
