//! `hookgate-sdk`: write a hookgate plugin in Rust in a few lines.
//!
//! A plugin implements one or more of [`Validate`], [`Transform`],
//! [`Fallback`] and [`Success`] on a type and names its roles in
//! [`export!`]:
//!
//! ```ignore
//! use hookgate_sdk::{Validate, Verdict, Webhook};
//!
//! struct Plugin;
//!
//! impl Validate for Plugin {
//!     fn validate(hook: Webhook) -> Result<Verdict, String> {
//!         match hook.header("x-event-type") {
//!             Some(_) => Ok(Verdict::Accept),
//!             None => Ok(Verdict::reject(422, "missing header \"x-event-type\"")),
//!         }
//!     }
//! }
//!
//! hookgate_sdk::export!(Plugin: validate);
//! ```
//!
//! What the SDK adds to the bindings `wit_bindgen` generates from `wit/`:
//! - the WIT types ([`Webhook`], [`Verdict`], [`Outgoing`], ...) generated
//!   once, here, with helpers for headers, the body and JSON ([`Webhook`]'s
//!   methods, `Verdict::reject`, `Outgoing::json`, ...);
//! - the `host` imports as plain functions ([`log`], [`config`], [`kv`],
//!   [`now`]);
//! - [`export!`], which generates the world for the chosen roles in the
//!   plugin's crate (so the component exports exactly those roles) and wires
//!   it to the traits.
//!
//! Nothing else: no allocator, no runtime, no hidden state. Whether globals
//! survive from one call to the next depends on the route's `instances`
//! (a fresh instance per call, or a warm one reused): rely on neither.

mod bindings {
    // Only the imports (types and host) are generated here; the exports are
    // generated in the plugin's crate by `export!`, so that a component
    // exports exactly the roles its author chose.
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "
            package hookgate:sdk;
            world imports {
                import hookgate:plugin/types@0.1.0;
                import hookgate:plugin/host@0.1.0;
            }
        ",
        world: "hookgate:sdk/imports",
        generate_all,
    });
}

mod helpers;
pub mod kv;

pub use bindings::hookgate::plugin::{host, types};
pub use host::{Level, config_entries, now};
pub use types::{
    Decision, Failure, FailureKind, NextStep, Outgoing, Rejection, Response, UpstreamResponse,
    Verdict, Webhook,
};

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

// `__generate!`, written by build.rs: it knows where `wit/` is.
include!(concat!(env!("OUT_DIR"), "/generate.rs"));

/// The `validate` role: accept or reject an inbound webhook before it is
/// stored. See `wit/roles.wit` for when it is called and what each answer does.
pub trait Validate {
    fn validate(hook: Webhook) -> Result<Verdict, String>;
}

/// The `transform` role: the requests to send onward for one accepted
/// webhook (none drops it, several fan it out).
pub trait Transform {
    fn transform(hook: Webhook) -> Result<Vec<Outgoing>, String>;
}

/// The `fallback` role: what happens to a message whose delivery failed.
pub trait Fallback {
    fn fallback(hook: Webhook, failure: Failure) -> Result<Decision, String>;
}

/// The `success` companion of [`Fallback`]: sees each good (2xx) upstream
/// answer on a sync route, typically to remember it with [`kv::set`] and
/// answer with it from `fallback` when the upstream is down.
pub trait Success {
    fn success(hook: Webhook, response: UpstreamResponse) -> Result<(), String>;
}

/// A plugin's configuration value (the route's `config` table), if set.
pub fn config(key: &str) -> Option<String> {
    host::config(key)
}

/// A configuration value, or `default` when the route does not set it.
pub fn config_or(key: &str, default: &str) -> String {
    host::config(key).unwrap_or_else(|| default.to_string())
}

/// Writes one line to the gateway's log, tagged with app, route, plugin and
/// message id; `fields` become key=value pairs.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    host::log(level, message, &fields);
}

/// Exports a type as a plugin playing the named roles.
///
/// The roles are those of a world in `wit/worlds.wit`: `validate`,
/// `transform`, `fallback`, `validate, transform`, `fallback, success`, or
/// all three (`validate, transform, fallback`).
/// The type implements the matching traits. Use it once, at the crate root.
#[macro_export]
macro_rules! export {
    ($ty:ident: validate) => {
        $crate::__export!($ty, "validator", validate);
    };
    ($ty:ident: transform) => {
        $crate::__export!($ty, "transformer", transform);
    };
    ($ty:ident: fallback) => {
        $crate::__export!($ty, "fallback-handler", fallback);
    };
    ($ty:ident: validate, transform) => {
        $crate::__export!($ty, "validator-transformer", validate, transform);
    };
    ($ty:ident: fallback, success) => {
        $crate::__export!($ty, "caching-fallback", fallback, success);
    };
    ($ty:ident: validate, transform, fallback) => {
        $crate::__export!($ty, "plugin", validate, transform, fallback);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export {
    ($ty:ident, $world:tt, $($role:ident),+) => {
        #[doc(hidden)]
        #[allow(clippy::all, unsafe_code)]
        mod __hookgate_bindings {
            $crate::__generate!($world);
        }
        $($crate::__role!($ty, $role);)+
        __hookgate_bindings::export!($ty with_types_in __hookgate_bindings);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __role {
    ($ty:ident, validate) => {
        impl __hookgate_bindings::exports::hookgate::plugin::validate::Guest for $ty {
            fn validate(hook: $crate::Webhook) -> Result<$crate::Verdict, String> {
                <$ty as $crate::Validate>::validate(hook)
            }
        }
    };
    ($ty:ident, transform) => {
        impl __hookgate_bindings::exports::hookgate::plugin::transform::Guest for $ty {
            fn transform(hook: $crate::Webhook) -> Result<Vec<$crate::Outgoing>, String> {
                <$ty as $crate::Transform>::transform(hook)
            }
        }
    };
    ($ty:ident, fallback) => {
        impl __hookgate_bindings::exports::hookgate::plugin::fallback::Guest for $ty {
            fn fallback(
                hook: $crate::Webhook,
                failure: $crate::Failure,
            ) -> Result<$crate::Decision, String> {
                <$ty as $crate::Fallback>::fallback(hook, failure)
            }
        }
    };
    ($ty:ident, success) => {
        impl __hookgate_bindings::exports::hookgate::plugin::success::Guest for $ty {
            fn success(
                hook: $crate::Webhook,
                response: $crate::UpstreamResponse,
            ) -> Result<(), String> {
                <$ty as $crate::Success>::success(hook, response)
            }
        }
    };
}
