//! Wall-clock time as the journal, the WIT `host.now` import and the attempt
//! log record it: milliseconds since the Unix epoch. A clock before 1970
//! reads as 0 rather than failing.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where [`mono_ms`] counts from: far enough from 0 that subtracting any
/// duration this process could see never reaches it (0 means "none" where
/// it is stored in an atomic).
const MONO_BASE: u64 = 1 << 40;

/// Milliseconds on a monotonic clock (an NTP step or a VM pause does not
/// move it backwards or forwards), for measuring how long something has
/// been going on; only differences mean anything.
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + MONO_BASE
}
