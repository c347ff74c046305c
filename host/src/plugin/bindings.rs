//! The one place the WIT package is turned into Rust (spin `crates/world`).
//!
//! Generated from the `gateway` world, which has every export a plugin may
//! have; a component that plays only some of them is still driven through these types,
//! one exported interface at a time (see `component.rs`). Exports are async so
//! a long-running guest yields to tokio at each epoch tick instead of pinning a
//! worker thread; host imports are plain functions because none of them waits
//! on the network.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "gateway",
    exports: { default: async },
    additional_derives: [PartialEq, Eq],
});

pub use exports::hookgate::plugin::{fallback, success, transform, validate};
pub use hookgate::plugin::host;
pub use hookgate::plugin::types;

/// The WIT package version this gateway speaks. A component whose imports or
/// exports name another version is refused at load time.
pub const WIT_VERSION: &str = "0.1.0";

/// The package part of every interface name in our contract.
pub const WIT_PACKAGE: &str = "hookgate:plugin";
