//! Wall-clock time as the journal, the WIT `host.now` import and the attempt
//! log record it: milliseconds since the Unix epoch. A clock before 1970
//! reads as 0 rather than failing.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
