//! `empty`: a validator that accepts every webhook without looking at it.
//!
//! It is the baseline for benchmarks: whatever a call of this plugin costs is
//! the fixed price of running any plugin (instantiation, passing the webhook
//! into the component, one export call), with no work of its own on top. It
//! reads no config and calls no host function, so keep it that way.

wit_bindgen::generate!({ path: "../../wit", world: "validator" });

use exports::hookgate::plugin::validate::{Guest, Verdict, Webhook};

struct Empty;

impl Guest for Empty {
    fn validate(_hook: Webhook) -> Result<Verdict, String> {
        Ok(Verdict::Accept)
    }
}

export!(Empty);
