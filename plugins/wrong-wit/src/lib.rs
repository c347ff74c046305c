//! `wrong-wit`: a test-only validator built against a version of the plugin
//! package the gateway does not speak (`hookgate:plugin@0.9.0`, with a
//! different `validate` signature), so tests can check that loading it fails
//! with a clear error instead of at call time.
//!
//! The WIT is inline on purpose: it must not follow `wit/` when the real
//! package changes. It imports nothing from the host and accepts everything.

wit_bindgen::generate!({
    inline: r#"
        package hookgate:plugin@0.9.0;

        interface validate {
            validate: func(body: list<u8>) -> bool;
        }

        world validator {
            export validate;
        }
    "#,
    world: "validator",
});

use exports::hookgate::plugin::validate::Guest;

struct WrongWit;

impl Guest for WrongWit {
    fn validate(_body: Vec<u8>) -> bool {
        true
    }
}

export!(WrongWit);
