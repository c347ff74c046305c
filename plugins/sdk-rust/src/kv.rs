//! The app's key-value store (`host.kv-*`): shared by the app's plugins,
//! persisted with the journal, entries optionally expiring.

use std::time::Duration;

use crate::host;

/// The value stored under `key`, or `None` (absent or expired).
pub fn get(key: &str) -> Option<Vec<u8>> {
    host::kv_get(key)
}

/// The value under `key` as UTF-8 text; `None` also when it is not UTF-8.
pub fn get_str(key: &str) -> Option<String> {
    get(key).and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Stores `value` under `key`, expiring after `ttl` (`None`: kept until
/// deleted). Keys over 512 bytes and values over 64 KiB are refused, and so
/// is a write that would take the app past its quota (`kv_quota`, 64 MiB
/// unless the operator set another): handle the `Err`, e.g. by carrying on
/// without the cache.
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<(), String> {
    let ttl = ttl.map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    host::kv_set(key, value.as_ref(), ttl)
}

/// Removes `key`; an absent key is not an error.
pub fn delete(key: &str) {
    host::kv_delete(key);
}
