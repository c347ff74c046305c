// `random-winner`: a fallback that answers a waiting caller on its own when
// the upstream cannot: it picks one entry of a list in the payload at random
// and answers with it. The "default behaviour" strategy of a sync route: e.g.
// a winner selection that must produce a winner even when the app that
// normally chooses is down.
//
// world: fallback-handler
//
// Config (values are strings):
// - `list_field`: top-level field of the inbound JSON body holding the
//   candidates, an array (default `entries`).
//
// Decision: respond `200` with `{"winner":<entry>,"picked_by":"fallback"}`
// and `x-hookgate-fallback: random-winner`; the message is `done` (nothing is
// journaled). The entry is copied as the sender wrote it, without the
// whitespace between its tokens. A body that is not a JSON object, or has no
// non-empty list in that field, is an `err`: the route's safe answer is used
// and the message is dead-lettered for an operator.
//
// The randomness comes from the WASI random source the host gives every
// plugin (`getentropy`).
//
// Build by hand: see examples/quiz-platform/README.md; `cargo test` at the
// repository root builds it with the other plugins. `fallback_handler.h` is
// generated from `wit/` for the `fallback-handler` world. Memory rules of the
// generated bindings: an exported function owns its arguments and must free
// them; what it returns must be heap-allocated (the bindings free it after
// the host has copied it); what an import returns is ours to free.

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fallback_handler.h"

#define DEFAULT_LIST_FIELD "entries"

// serde_json's nesting limit: deeper input is refused, and the scanner's
// recursion stays bounded whatever a sender posts.
#define MAX_DEPTH 128

typedef fallback_handler_string_t string_t;

// ---- JSON: a validating scanner over the body, no tree built ------------

// The unread rest of the body.
typedef struct {
  const uint8_t *at;
  const uint8_t *end;
} cursor_t;

// A span of the body: a value's text, or a string's contents without quotes.
typedef struct {
  const uint8_t *ptr;
  size_t len;
} span_t;

static bool is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static void skip_space(cursor_t *c) {
  while (c->at < c->end && is_space(*c->at)) c->at++;
}

static bool eat(cursor_t *c, uint8_t expected) {
  if (c->at < c->end && *c->at == expected) {
    c->at++;
    return true;
  }
  return false;
}

static int hex_digit(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Four hex digits after `\u`; -1 if they are not.
static long hex4(cursor_t *c) {
  if (c->end - c->at < 4) return -1;
  long value = 0;
  for (int i = 0; i < 4; i++) {
    int digit = hex_digit(c->at[i]);
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  c->at += 4;
  return value;
}

// One UTF-8 encoded character starting at `c->at` (not ASCII): well formed,
// shortest form, no surrogates, at most U+10FFFF.
static bool scan_utf8(cursor_t *c) {
  uint8_t lead = *c->at;
  size_t more;
  uint32_t min, code;
  if (lead >= 0xc2 && lead <= 0xdf) {
    more = 1, min = 0x80, code = lead & 0x1f;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    more = 2, min = 0x800, code = lead & 0x0f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    more = 3, min = 0x10000, code = lead & 0x07;
  } else {
    return false;
  }
  if ((size_t)(c->end - c->at) <= more) return false;
  for (size_t i = 1; i <= more; i++) {
    if ((c->at[i] & 0xc0) != 0x80) return false;
    code = (code << 6) | (c->at[i] & 0x3f);
  }
  if (code < min || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return false;
  c->at += more + 1;
  return true;
}

// A string, with `c->at` on its opening quote; `contents` gets the text
// between the quotes, escapes still in it.
static bool scan_string(cursor_t *c, span_t *contents) {
  if (!eat(c, '"')) return false;
  const uint8_t *start = c->at;
  while (c->at < c->end) {
    uint8_t ch = *c->at;
    if (ch == '"') {
      contents->ptr = start;
      contents->len = (size_t)(c->at - start);
      c->at++;
      return true;
    }
    if (ch < 0x20) return false;  // control characters must be escaped
    if (ch >= 0x80) {
      if (!scan_utf8(c)) return false;
      continue;
    }
    c->at++;
    if (ch != '\\') continue;
    if (c->at == c->end) return false;
    uint8_t escape = *c->at++;
    if (escape != '\0' && strchr("\"\\/bfnrt", escape) != NULL) continue;
    if (escape != 'u') return false;
    long unit = hex4(c);
    if (unit < 0 || (unit >= 0xdc00 && unit <= 0xdfff)) return false;
    if (unit >= 0xd800 && unit <= 0xdbff) {  // a surrogate pair's first half
      if (!eat(c, '\\') || !eat(c, 'u')) return false;
      long low = hex4(c);
      if (low < 0xdc00 || low > 0xdfff) return false;
    }
  }
  return false;
}

static bool scan_digits(cursor_t *c) {
  const uint8_t *start = c->at;
  while (c->at < c->end && *c->at >= '0' && *c->at <= '9') c->at++;
  return c->at > start;
}

// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
static bool scan_number(cursor_t *c) {
  eat(c, '-');
  if (!eat(c, '0') && !(c->at < c->end && *c->at >= '1' && *c->at <= '9' && scan_digits(c))) {
    return false;
  }
  if (eat(c, '.') && !scan_digits(c)) return false;
  if (eat(c, 'e') || eat(c, 'E')) {
    if (!eat(c, '+')) eat(c, '-');
    if (!scan_digits(c)) return false;
  }
  return true;
}

static bool scan_word(cursor_t *c, const char *word) {
  size_t len = strlen(word);
  if ((size_t)(c->end - c->at) < len || memcmp(c->at, word, len) != 0) return false;
  c->at += len;
  return true;
}

static bool scan_value(cursor_t *c, int depth);

// The members of an object or the items of an array, `c->at` just past its
// opening bracket. For an object, `on_member` (if set) sees each key and value.
typedef void (*member_fn)(void *state, span_t key, span_t value);

static bool scan_container(cursor_t *c, int depth, bool object, member_fn on_member,
                           void *state) {
  uint8_t close = object ? '}' : ']';
  skip_space(c);
  if (eat(c, close)) return true;
  for (;;) {
    span_t key = {0}, value;
    skip_space(c);
    if (object) {
      if (!scan_string(c, &key)) return false;
      skip_space(c);
      if (!eat(c, ':')) return false;
      skip_space(c);
    }
    value.ptr = c->at;
    if (!scan_value(c, depth + 1)) return false;
    value.len = (size_t)(c->at - value.ptr);
    if (on_member != NULL) on_member(state, key, value);
    skip_space(c);
    if (eat(c, close)) return true;
    if (!eat(c, ',')) return false;
  }
}

// One value of any kind, `c->at` on its first byte (no leading space).
static bool scan_value(cursor_t *c, int depth) {
  if (depth > MAX_DEPTH || c->at == c->end) return false;
  span_t ignored;
  switch (*c->at) {
    case '{':
      c->at++;
      return scan_container(c, depth, true, NULL, NULL);
    case '[':
      c->at++;
      return scan_container(c, depth, false, NULL, NULL);
    case '"':
      return scan_string(c, &ignored);
    case 't':
      return scan_word(c, "true");
    case 'f':
      return scan_word(c, "false");
    case 'n':
      return scan_word(c, "null");
    default:
      return scan_number(c);
  }
}

// Appends `code` as UTF-8 at `out`; returns the new end.
static char *put_utf8(char *out, uint32_t code) {
  if (code < 0x80) {
    *out++ = (char)code;
  } else if (code < 0x800) {
    *out++ = (char)(0xc0 | (code >> 6));
    *out++ = (char)(0x80 | (code & 0x3f));
  } else if (code < 0x10000) {
    *out++ = (char)(0xe0 | (code >> 12));
    *out++ = (char)(0x80 | ((code >> 6) & 0x3f));
    *out++ = (char)(0x80 | (code & 0x3f));
  } else {
    *out++ = (char)(0xf0 | (code >> 18));
    *out++ = (char)(0x80 | ((code >> 12) & 0x3f));
    *out++ = (char)(0x80 | ((code >> 6) & 0x3f));
    *out++ = (char)(0x80 | (code & 0x3f));
  }
  return out;
}

// Whether the contents of a scanned (so well-formed) string, escapes
// decoded, are exactly `name`.
static bool string_is(span_t contents, const string_t *name) {
  if (memchr(contents.ptr, '\\', contents.len) == NULL) {
    return contents.len == name->len && memcmp(contents.ptr, name->ptr, name->len) == 0;
  }
  // Decoding never makes a string longer than its escaped form.
  char *decoded = malloc(contents.len + 1), *out = decoded;
  if (decoded == NULL) return false;
  cursor_t c = {contents.ptr, contents.ptr + contents.len};
  while (c.at < c.end) {
    if (*c.at != '\\') {
      *out++ = (char)*c.at++;
      continue;
    }
    c.at++;
    uint8_t escape = *c.at++;
    const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
    const char *known = strchr(from, escape);
    if (escape != 'u' && known != NULL) {
      *out++ = to[known - from];
      continue;
    }
    uint32_t code = (uint32_t)hex4(&c);
    if (code >= 0xd800 && code <= 0xdbff) {
      c.at += 2;  // `\u` of the second half, checked by the scan
      code = 0x10000 + ((code - 0xd800) << 10) + ((uint32_t)hex4(&c) - 0xdc00);
    }
    out = put_utf8(out, code);
  }
  bool same = (size_t)(out - decoded) == name->len && memcmp(decoded, name->ptr, name->len) == 0;
  free(decoded);
  return same;
}

// ---- The plugin ----------------------------------------------------------

// What the scan of the body's members found about the list field.
typedef struct {
  const string_t *field;
  bool found;
  span_t value;  // the field's value; a later duplicate key wins, as in serde_json
} lookup_t;

static void find_field(void *state, span_t key, span_t value) {
  lookup_t *lookup = state;
  if (string_is(key, lookup->field)) {
    lookup->found = true;
    lookup->value = value;
  }
}

// Walks the items of the array `list` (already scanned, so well formed):
// returns how many there are, and puts item `wanted` (if there is one) in
// `*item`.
static size_t walk_items(span_t list, size_t wanted, span_t *item) {
  cursor_t c = {list.ptr + 1, list.ptr + list.len};  // past `[`
  skip_space(&c);
  if (eat(&c, ']')) return 0;
  for (size_t count = 0;; count++) {
    skip_space(&c);
    const uint8_t *start = c.at;
    scan_value(&c, 1);
    if (count == wanted) {
      item->ptr = start;
      item->len = (size_t)(c.at - start);
    }
    skip_space(&c);
    if (!eat(&c, ',')) return count + 1;
  }
}

// A random index below `len` (> 0). The modulo bias is below 2^-50 for any
// list a webhook can carry.
static bool pick(size_t len, size_t *index) {
  uint64_t random;
  if (getentropy(&random, sizeof random) != 0) return false;
  *index = (size_t)(random % len);
  return true;
}

// `{"winner":<item>,"picked_by":"fallback"}`, the item without the
// whitespace between its tokens (whitespace inside its strings stays).
static void answer_body(span_t item, fallback_handler_list_u8_t *body) {
  static const char head[] = "{\"winner\":", tail[] = ",\"picked_by\":\"fallback\"}";
  uint8_t *out = malloc(sizeof head + item.len + sizeof tail), *end = out;
  if (out == NULL) abort();  // traps: the route's safe answer is used
  memcpy(end, head, sizeof head - 1);
  end += sizeof head - 1;
  bool in_string = false;
  for (size_t i = 0; i < item.len; i++) {
    uint8_t ch = item.ptr[i];
    if (in_string) {
      if (ch == '\\') {
        *end++ = ch;
        ch = item.ptr[++i];  // the escaped byte; a scanned string has one
      } else if (ch == '"') {
        in_string = false;
      }
    } else if (ch == '"') {
      in_string = true;
    } else if (is_space(ch)) {
      continue;
    }
    *end++ = ch;
  }
  memcpy(end, tail, sizeof tail - 1);
  end += sizeof tail - 1;
  body->ptr = out;
  body->len = (size_t)(end - out);
}

static fallback_handler_tuple2_string_list_u8_t header(const char *name, const char *value) {
  fallback_handler_tuple2_string_list_u8_t h;
  fallback_handler_string_dup(&h.f0, name);
  h.f1.len = strlen(value);
  h.f1.ptr = (uint8_t *)strdup(value);
  return h;
}

// Sets `err` to `format` with the quoted field name in it.
static void fail(string_t *err, const char *format, const string_t *field) {
  char message[600], quoted[520];
  int len = field->len > 500 ? 500 : (int)field->len;
  snprintf(quoted, sizeof quoted, "\"%.*s\"", len, (const char *)field->ptr);
  snprintf(message, sizeof message, format, quoted);
  fallback_handler_string_dup(err, message);
}

// Finds the list, picks an item, fills `ret`; or sets `err` and returns false.
static bool decide(const fallback_handler_list_u8_t *body, const string_t *field,
                   exports_hookgate_plugin_fallback_decision_t *ret, string_t *err) {
  cursor_t c = {body->ptr, body->ptr + body->len};
  lookup_t lookup = {field, false, {0}};
  skip_space(&c);
  bool object = eat(&c, '{') && scan_container(&c, 1, true, find_field, &lookup);
  skip_space(&c);
  if (!object || c.at != c.end) {
    fallback_handler_string_dup(err, "body is not a JSON object");
    return false;
  }
  if (!lookup.found) {
    fail(err, "body has no %s to pick from", field);
    return false;
  }
  if (lookup.value.ptr[0] != '[') {
    fail(err, "%s is not an array", field);
    return false;
  }
  span_t winner;
  size_t count = walk_items(lookup.value, SIZE_MAX, &winner), index;
  if (count == 0) {
    fail(err, "%s is empty: no one to pick", field);
    return false;
  }
  if (!pick(count, &index)) {
    fallback_handler_string_dup(err, "no random source");
    return false;
  }
  walk_items(lookup.value, index, &winner);
  ret->respond.is_some = true;
  ret->respond.val.status = 200;
  ret->respond.val.headers.len = 2;
  ret->respond.val.headers.ptr = malloc(2 * sizeof *ret->respond.val.headers.ptr);
  if (ret->respond.val.headers.ptr == NULL) abort();
  ret->respond.val.headers.ptr[0] = header("content-type", "application/json");
  ret->respond.val.headers.ptr[1] = header("x-hookgate-fallback", "random-winner");
  answer_body(winner, &ret->respond.val.body);
  ret->next.tag = HOOKGATE_PLUGIN_TYPES_NEXT_STEP_DONE;
  return true;
}

bool exports_hookgate_plugin_fallback_fallback(exports_hookgate_plugin_fallback_webhook_t *hook,
                                               exports_hookgate_plugin_fallback_failure_t *failure,
                                               exports_hookgate_plugin_fallback_decision_t *ret,
                                               string_t *err) {
  string_t key, field;
  fallback_handler_string_dup(&key, "list_field");
  if (!hookgate_plugin_host_config(&key, &field)) {
    fallback_handler_string_dup(&field, DEFAULT_LIST_FIELD);
  }
  bool decided = decide(&hook->body, &field, ret, err);
  fallback_handler_string_free(&field);
  fallback_handler_string_free(&key);
  exports_hookgate_plugin_fallback_failure_free(failure);
  exports_hookgate_plugin_fallback_webhook_free(hook);
  return decided;
}
