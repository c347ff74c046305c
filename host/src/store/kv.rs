//! The per-app key-value store plugins reach through `host.kv-*`, on sled's
//! `kv` tree: key = namespace (the app), 0x00, key; value = expiry (u64
//! big-endian ms since the epoch, 0 = never) followed by the value bytes.
//!
//! Each app's entries count against its quota (`kv_quota`): plugins are
//! untrusted, and without one a single app's plugin could fill the disk the
//! journal shares, stopping every route of every app. The bytes each app
//! holds are counted in memory (rebuilt at open) and changed under one lock
//! with the write, so concurrent calls cannot overshoot together. Expired
//! entries read as absent, are removed when read, and are swept by the
//! prune task, so keys written with a TTL and never read again do not pile
//! up.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::sled::SledStore;
use super::{KeyValue, StoreError};
use crate::clock::now_ms;

/// What one entry costs against its app's quota beyond its key and value:
/// the index and the expiry. A flood of tiny entries fills the quota too.
pub const KV_ENTRY_OVERHEAD: u64 = 64;

/// Bytes held per app.
#[derive(Debug, Default)]
pub(super) struct KvUsage {
    by_app: Mutex<HashMap<Vec<u8>, u64>>,
}

impl KvUsage {
    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, u64>> {
        // Nothing under the lock can panic halfway: a poisoned map is whole.
        self.by_app.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What an entry of `key_len` key bytes and `raw_len` stored bytes (expiry
/// and value) costs.
fn cost(key_len: usize, raw_len: usize) -> u64 {
    (key_len + raw_len.saturating_sub(8)) as u64 + KV_ENTRY_OVERHEAD
}

fn kv_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 1 + key.len());
    k.extend_from_slice(namespace.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The namespace and key length of a `kv` tree key.
fn split(k: &[u8]) -> (&[u8], usize) {
    match k.iter().position(|&b| b == 0) {
        Some(at) => (&k[..at], k.len() - at - 1),
        None => (k, 0),
    }
}

fn expiry(raw: &[u8]) -> Option<u64> {
    raw.first_chunk::<8>().map(|e| u64::from_be_bytes(*e))
}

/// Whether an entry with `expiry` (0: never) has expired at `now`.
fn expired(expiry: u64, now: u64) -> bool {
    expiry != 0 && expiry <= now
}

fn charge(usage: &mut HashMap<Vec<u8>, u64>, namespace: &[u8], less: u64, more: u64) {
    let used = usage.entry(namespace.to_vec()).or_default();
    *used = used.saturating_sub(less).saturating_add(more);
}

impl SledStore {
    /// Counts what each app holds; run once at open.
    pub(super) fn with_kv_counted(self) -> Result<Self, StoreError> {
        {
            let mut usage = self.kv_usage.lock();
            for entry in self.kv.iter() {
                let (k, raw) = entry?;
                let (namespace, key_len) = split(&k);
                charge(&mut usage, namespace, 0, cost(key_len, raw.len()));
            }
        }
        Ok(self)
    }

    /// Bytes `namespace`'s entries hold against its quota.
    pub fn kv_used(&self, namespace: &str) -> u64 {
        self.kv_usage
            .lock()
            .get(namespace.as_bytes())
            .copied()
            .unwrap_or(0)
    }

    /// Bytes each app's entries hold, by app, for `/metrics`.
    pub fn kv_usage(&self) -> Vec<(String, u64)> {
        self.kv_usage
            .lock()
            .iter()
            .map(|(app, bytes)| (String::from_utf8_lossy(app).into_owned(), *bytes))
            .collect()
    }

    /// Removes entries expired at `now` (ms since the epoch); returns how
    /// many. An entry replaced meanwhile is left alone.
    pub fn prune_kv(&self, now: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in self.kv.iter() {
            let (k, raw) = entry?;
            if expiry(&raw).is_some_and(|e| expired(e, now)) && self.remove_if_same(&k, raw)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes `namespace`'s entries expired at `now`, under the lock
    /// `usage` is.
    fn sweep_app(
        &self,
        usage: &mut HashMap<Vec<u8>, u64>,
        namespace: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        for entry in self.kv.scan_prefix(kv_key(namespace, "")) {
            let (k, raw) = entry?;
            if expiry(&raw).is_some_and(|e| expired(e, now)) {
                self.remove_locked(usage, &k, raw)?;
            }
        }
        Ok(())
    }

    /// Removes `k` if it still holds `raw`; returns whether it did.
    fn remove_if_same(&self, k: &[u8], raw: sled::IVec) -> Result<bool, StoreError> {
        self.remove_locked(&mut self.kv_usage.lock(), k, raw)
    }

    /// [`SledStore::remove_if_same`], under the lock `usage` is.
    fn remove_locked(
        &self,
        usage: &mut HashMap<Vec<u8>, u64>,
        k: &[u8],
        raw: sled::IVec,
    ) -> Result<bool, StoreError> {
        let size = raw.len();
        let gone = self
            .kv
            .compare_and_swap(k, Some(raw), None::<&[u8]>)?
            .is_ok();
        if gone {
            let (namespace, key_len) = split(k);
            charge(usage, namespace, cost(key_len, size), 0);
        }
        Ok(gone)
    }
}

impl KeyValue for SledStore {
    fn get(&self, namespace: &str, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let k = kv_key(namespace, key);
        let Some(raw) = self.kv.get(&k)? else {
            return Ok(None);
        };
        let Some(expires) = expiry(&raw) else {
            return Err(StoreError::Corrupt(format!(
                "kv entry {key:?} is too short"
            )));
        };
        if expired(expires, now_ms) {
            self.remove_if_same(&k, raw)?;
            return Ok(None);
        }
        Ok(Some(raw[8..].to_vec()))
    }

    fn set(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        expires_at: Option<u64>,
        quota: u64,
    ) -> Result<(), StoreError> {
        let k = kv_key(namespace, key);
        let mut raw = Vec::with_capacity(8 + value.len());
        raw.extend_from_slice(&expires_at.unwrap_or(0).to_be_bytes());
        raw.extend_from_slice(value);
        let new = cost(key.len(), raw.len());
        let mut usage = self.kv_usage.lock();
        let old = self.kv.get(&k)?.map_or(0, |old| cost(key.len(), old.len()));
        let used =
            |usage: &HashMap<Vec<u8>, u64>| usage.get(namespace.as_bytes()).copied().unwrap_or(0);
        // A write that does not grow the entry always fits: an app over its
        // quota (lowered by a reload) can still overwrite and shrink.
        let fits = |used: u64| new <= old || used.saturating_sub(old).saturating_add(new) <= quota;
        if !fits(used(&usage)) {
            // Entries that expired still count until swept: sweep this
            // app's first, so a cache of short-lived entries is not full
            // of dead ones.
            self.sweep_app(&mut usage, namespace, now_ms())?;
        }
        let used = used(&usage);
        if !fits(used) {
            return Err(StoreError::Full(format!(
                "the app's key-value store is full: it holds {used} bytes of its {quota} \
                 (kv_quota); this entry needs {new}"
            )));
        }
        self.kv.insert(&k, raw)?;
        charge(&mut usage, namespace.as_bytes(), old, new);
        Ok(())
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        let k = kv_key(namespace, key);
        let mut usage = self.kv_usage.lock();
        if let Some(old) = self.kv.remove(&k)? {
            charge(
                &mut usage,
                namespace.as_bytes(),
                cost(key.len(), old.len()),
                0,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "shop";

    #[test]
    fn namespaces_do_not_see_each_other() -> Result<(), StoreError> {
        let store = SledStore::temporary()?;
        store.set("app-a", "k", b"a", None, u64::MAX)?;
        assert_eq!(store.get("app-a", "k", 0)?, Some(b"a".to_vec()));
        assert_eq!(store.get("app-b", "k", 0)?, None);
        // A namespace that is a prefix of another cannot reach into it.
        store.set("app", "-a\0k", b"x", None, u64::MAX)?;
        assert_eq!(store.get("app-a", "k", 0)?, Some(b"a".to_vec()));
        Ok(())
    }

    #[test]
    fn entries_expire_at_their_deadline() -> Result<(), StoreError> {
        let store = SledStore::temporary()?;
        store.set("app", "k", b"v", Some(1_000), u64::MAX)?;
        assert_eq!(store.get("app", "k", 999)?, Some(b"v".to_vec()));
        assert_eq!(store.get("app", "k", 1_000)?, None);
        // Expired entries are gone for good, even if the clock went back.
        assert_eq!(store.get("app", "k", 0)?, None);
        Ok(())
    }

    #[test]
    fn an_app_cannot_store_past_its_quota_but_can_shrink_and_delete() -> Result<(), StoreError> {
        let store = SledStore::temporary()?;
        let quota = 3 * (KV_ENTRY_OVERHEAD + 101);
        for n in 0..3 {
            store.set(APP, &format!("k{n}"), &[7; 99], None, quota)?;
        }
        assert_eq!(store.kv_used(APP), quota);
        let full = store.set(APP, "k3", b"x", None, quota);
        assert!(matches!(full, Err(StoreError::Full(_))), "{full:?}");
        // Another app has its own quota.
        store.set("crm", "k0", &[7; 99], None, quota)?;
        // Overwriting with a smaller value fits, and frees room; so does a
        // delete.
        store.set(APP, "k0", b"", None, quota)?;
        let full = store.set(APP, "k3", &[7; 50], None, quota);
        assert!(matches!(full, Err(StoreError::Full(_))), "{full:?}");
        store.delete(APP, "k1")?;
        store.delete(APP, "absent")?;
        store.set(APP, "k3", &[7; 50], None, quota)?;
        assert_eq!(
            store.kv_used(APP),
            (KV_ENTRY_OVERHEAD + 2) + (KV_ENTRY_OVERHEAD + 101) + (KV_ENTRY_OVERHEAD + 52)
        );
        Ok(())
    }

    #[test]
    fn expired_entries_are_swept_and_give_back_their_room() -> Result<(), StoreError> {
        let store = SledStore::temporary()?;
        store.set(APP, "old", b"value", Some(1_000), u64::MAX)?;
        store.set(APP, "later", b"value", Some(5_000), u64::MAX)?;
        store.set(APP, "kept", b"value", None, u64::MAX)?;
        assert_eq!(store.prune_kv(2_000)?, 1);
        assert_eq!(store.get(APP, "old", 0)?, None, "swept");
        assert_eq!(store.get(APP, "later", 6_000)?, None, "expired on read");
        assert_eq!(store.kv_used(APP), KV_ENTRY_OVERHEAD + 4 + 5);
        Ok(())
    }

    #[test]
    fn a_full_app_sweeps_its_own_expired_entries_before_refusing() -> Result<(), StoreError> {
        let store = SledStore::temporary()?;
        let quota = 2 * (KV_ENTRY_OVERHEAD + 101);
        store.set(APP, "k0", &[7; 99], Some(1), quota)?;
        store.set(APP, "k1", &[7; 99], None, quota)?;
        // k0 expired long ago but still counts: the sweep makes room.
        store.set(APP, "k2", &[7; 99], None, quota)?;
        assert_eq!(store.kv_used(APP), quota);
        let full = store.set(APP, "k3", &[7; 99], None, quota);
        assert!(matches!(full, Err(StoreError::Full(_))), "{full:?}");
        Ok(())
    }

    #[test]
    fn usage_is_recounted_at_open() -> Result<(), StoreError> {
        let store = SledStore::temporary()?;
        store.set(APP, "a", &[1; 10], None, u64::MAX)?;
        store.set(APP, "bb", &[1; 20], Some(u64::MAX), u64::MAX)?;
        let counted = store.kv_used(APP);
        assert_eq!(counted, 2 * KV_ENTRY_OVERHEAD + 1 + 10 + 2 + 20);
        // What an open does, from the tree alone.
        store.kv_usage.lock().clear();
        let store = store.with_kv_counted()?;
        assert_eq!(store.kv_used(APP), counted);
        Ok(())
    }
}
