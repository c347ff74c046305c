//! The embedded sled backend: one data directory, no server to run.
//!
//! Layout (one tree per kind of record):
//! - `kv`: key = namespace, 0x00, key; value = expiry (u64 big-endian ms since
//!   the epoch, 0 = never) followed by the value bytes. Expired entries read
//!   as absent and are removed when read.

use std::path::Path;

use super::{KeyValue, StoreError};

/// A sled database holding every tree the gateway uses.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    kv: sled::Tree,
}

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        StoreError::Backend(err.to_string())
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::from_db(sled::Config::new().path(dir).open()?)
    }

    /// A store that lives in memory and a temporary file removed on drop; for
    /// `hookgate plugin run` and tests.
    pub fn temporary() -> Result<Self, StoreError> {
        Self::from_db(sled::Config::new().temporary(true).open()?)
    }

    fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        let kv = db.open_tree("kv")?;
        Ok(Self { db, kv })
    }

    /// Flushes every pending write to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn kv_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 1 + key.len());
    k.extend_from_slice(namespace.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

impl KeyValue for SledStore {
    fn get(&self, namespace: &str, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let k = kv_key(namespace, key);
        let Some(raw) = self.kv.get(&k)? else {
            return Ok(None);
        };
        let (expiry, value) = raw
            .split_first_chunk::<8>()
            .ok_or_else(|| StoreError::Corrupt(format!("kv entry {key:?} is too short")))?;
        let expiry = u64::from_be_bytes(*expiry);
        if expiry != 0 && expiry <= now_ms {
            // Remove only if nobody replaced it meanwhile.
            let _ = self
                .kv
                .compare_and_swap(&k, Some(raw.clone()), None::<&[u8]>)?;
            return Ok(None);
        }
        Ok(Some(value.to_vec()))
    }

    fn set(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        expires_at: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut raw = Vec::with_capacity(8 + value.len());
        raw.extend_from_slice(&expires_at.unwrap_or(0).to_be_bytes());
        raw.extend_from_slice(value);
        self.kv.insert(kv_key(namespace, key), raw)?;
        Ok(())
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.kv.remove(kv_key(namespace, key))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_do_not_see_each_other() -> Result<(), StoreError> {
        let store = SledStore::temporary()?;
        store.set("app-a", "k", b"a", None)?;
        assert_eq!(store.get("app-a", "k", 0)?, Some(b"a".to_vec()));
        assert_eq!(store.get("app-b", "k", 0)?, None);
        // A namespace that is a prefix of another cannot reach into it.
        store.set("app", "-a\0k", b"x", None)?;
        assert_eq!(store.get("app-a", "k", 0)?, Some(b"a".to_vec()));
        Ok(())
    }

    #[test]
    fn entries_expire_at_their_deadline() -> Result<(), StoreError> {
        let store = SledStore::temporary()?;
        store.set("app", "k", b"v", Some(1_000))?;
        assert_eq!(store.get("app", "k", 999)?, Some(b"v".to_vec()));
        assert_eq!(store.get("app", "k", 1_000)?, None);
        // Expired entries are gone for good, even if the clock went back.
        assert_eq!(store.get("app", "k", 0)?, None);
        Ok(())
    }
}
