// `bug-js`: a validator with a bug, for the tests. Its role is wrapped in
// the JavaScript template's `guarded` (a copy: a component is built from one
// file), so the tests see what a template-based plugin's bug looks like.
//
// world: validator
//
// It reads `customer.name` from the body without checking that `customer`
// is there: `{"customer": {"name": "Ada"}}` is accepted, an empty name
// rejected with 422, and a body without `customer` throws a TypeError,
// which the guard turns into `err("TypeError: ... (at ...)")`.

const utf8 = new TextDecoder();

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
  validate: guarded((hook) => {
    const body = JSON.parse(utf8.decode(hook.body));
    return body.customer.name.length > 0
      ? { tag: 'accept' }
      : { tag: 'reject', val: { status: 422, reason: 'customer.name is empty' } };
  }),
};
