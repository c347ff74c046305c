// `empty-js`: the `empty` baseline in JavaScript, a validator that accepts
// every webhook without looking at it.
//
// world: validator
//
// Whatever a call of this plugin costs is the fixed price of a JavaScript
// plugin: the engine lifting the webhook record into JavaScript values and
// lowering the verdict back, with no work of its own on top. The benchmark
// (`plugin_call`) measures it next to the Rust `empty`, so the two show how
// much of a JavaScript plugin's time is the engine's floor rather than its
// own code. Keep it doing nothing.

export const validate = {
  validate(_hook) {
    return { tag: 'accept' };
  },
};
