//! Delivery: retry policy, and (later) the dispatcher and HTTP client.

pub mod retry;
