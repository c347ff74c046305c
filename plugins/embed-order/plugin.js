// `embed-order`: a transform that turns a store's order notification,
// written for humans as a Discord-style embed, into the order record an
// order system can use.
//
// world: transformer
//
// In (the parts it reads):
//
//   {"embeds": [{"title": "New order #1042", "timestamp": "2026-11-23T10:00:00Z",
//     "fields": [{"name": "Customer", "value": "Ada Lovelace"},
//                {"name": "Total", "value": "€42.50"},
//                {"name": "Items", "value": "2x Tea\n1x Scone"}]}]}
//
// Out: {"order_id":"1042","customer":"Ada Lovelace","total":{"amount":"42.50",
// "currency":"EUR"},"items":[{"quantity":2,"name":"Tea"},{"quantity":1,"name":"Scone"}],
// "placed_at":"2026-11-23T10:00:00Z"} with `content-type: application/json`,
// to the route's first destination.
//
// Field names are matched without regard to (ASCII) case. The amount is kept
// as the text the store wrote (no float rounding on money). A notification
// this cannot read (not JSON, no embed, no `#<number>` in the title, a
// missing field, an item line that is not `<n>x <name>`) is an `err` naming
// what is wrong: the route dead-letters it, and a fixed plugin can replay it.
// No config.
//
// Build by hand: `npm install && npm run build` (-> embed-order.wasm);
// `cargo test` at the repository root builds it with the other plugins.

const utf8 = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();

export const transform = {
  // What `refuse` builds, thrown, answers `err(reason)`; anything else
  // thrown (a bug) traps. Either way the route's `on_plugin_error` decides.
  transform(hook) {
    const order = parse(hook.body);
    return [{
      method: 'POST',
      headers: [['content-type', encoder.encode('application/json')]],
      body: encoder.encode(JSON.stringify(order)),
    }];
  },
};

function parse(body) {
  let notification;
  try {
    notification = JSON.parse(utf8.decode(body));
  } catch (error) {
    throw notAnEmbed(error.message);
  }
  const embed = embedsOf(notification)[0];
  if (embed === undefined) {
    throw refuse('the notification has no embed');
  }
  const field = (name) => {
    const found = embed.fields.find((f) => asciiLowercase(f.name.trim()) === name);
    if (found === undefined) {
      throw refuse(`the embed has no ${JSON.stringify(name)} field`);
    }
    return found.value.trim();
  };
  // Built in this order, so the first problem found is the one reported.
  return {
    order_id: orderId(embed.title),
    customer: field('customer'),
    total: money(field('total')),
    items: field('items')
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map(item),
    placed_at: embed.timestamp,
  };
}

// An error that componentize-js answers as `err(reason)`: it hands a thrown
// object's `payload` to the host, while a plain thrown Error traps.
function refuse(reason) {
  return Object.assign(new Error(reason), { payload: reason });
}

function notAnEmbed(why) {
  return refuse(`not an embed notification: ${why}`);
}

// The embeds with the fields this reads, each checked for its type: a
// missing `embeds`, `title` or `fields` counts as empty and a missing or
// null `timestamp` as none, but a value of the wrong type is refused rather
// than guessed at. Other fields are ignored.
function embedsOf(notification) {
  if (!isObject(notification)) {
    throw notAnEmbed('it is not a JSON object');
  }
  const embeds = member(notification, 'embeds', Array.isArray, [], '"embeds" is not a list');
  return embeds.map((embed, i) => {
    const at = `embeds[${i}]`;
    if (!isObject(embed)) {
      throw notAnEmbed(`${at} is not an object`);
    }
    const fields = member(embed, 'fields', Array.isArray, [], `${at}.fields is not a list`);
    return {
      title: member(embed, 'title', isString, '', `${at}.title is not a string`),
      timestamp: member(embed, 'timestamp', (v) => v === null || isString(v), null,
        `${at}.timestamp is not a string`),
      fields: fields.map((f, j) => {
        if (!isObject(f) || !isString(f.name) || !isString(f.value)) {
          throw notAnEmbed(`${at}.fields[${j}] needs a string "name" and "value"`);
        }
        return f;
      }),
    };
  });
}

// `object[key]` if present (and then it must pass `check`), else `absent`.
function member(object, key, check, absent, wrongType) {
  if (!Object.hasOwn(object, key)) {
    return absent;
  }
  if (!check(object[key])) {
    throw notAnEmbed(wrongType);
  }
  return object[key];
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function isString(value) {
  return typeof value === 'string';
}

// Only A-Z: field names are matched the way a person reading them would,
// without locale-dependent case rules.
function asciiLowercase(text) {
  return text.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

// The digits after the first `#` in the title.
function orderId(title) {
  const hash = title.indexOf('#');
  const digits = hash < 0 ? '' : /^[0-9]*/.exec(title.slice(hash + 1))[0];
  if (digits === '') {
    throw refuse(`no order number (#<digits>) in the title ${JSON.stringify(title)}`);
  }
  return digits;
}

const SYMBOLS = [['€', 'EUR'], ['$', 'USD'], ['£', 'GBP']];

// `€42.50`, `$3`, `£1.20`, `42.50 EUR`, `EUR 42.50`.
function money(text) {
  const unreadable = () => refuse(`cannot read the total ${JSON.stringify(text)}`);
  let amount;
  let currency;
  const symbol = SYMBOLS.find(([sign]) => text.startsWith(sign));
  if (symbol !== undefined) {
    amount = text.slice(symbol[0].length).trim();
    currency = symbol[1];
  } else {
    const parts = text.split(/\s+/).filter((part) => part !== '');
    if (parts.length === 2 && isCurrencyCode(parts[1])) {
      [amount, currency] = parts;
    } else if (parts.length === 2 && isCurrencyCode(parts[0])) {
      [currency, amount] = parts;
    } else {
      throw unreadable();
    }
  }
  // Digits with at most one dot; kept as text.
  if (amount === '' || !/^[0-9]*\.?[0-9]*$/.test(amount)) {
    throw unreadable();
  }
  return { amount, currency };
}

function isCurrencyCode(text) {
  return /^[A-Z]{3}$/.test(text);
}

// `2x Tea` -> 2 of "Tea": a whole number above 0, an `x` (or `X`), a name.
function item(line) {
  const text = line.trim();
  const x = text.search(/[xX]/);
  const count = x < 0 ? '' : text.slice(0, x).trim();
  const name = x < 0 ? '' : text.slice(x + 1).trim();
  const quantity = /^\+?[0-9]+$/.test(count) ? Number(count) : 0;
  if (quantity < 1 || quantity > 0xffffffff || name === '') {
    throw refuse(`cannot read the item line ${JSON.stringify(text)} (expected "<n>x <name>")`);
  }
  return { quantity, name };
}
