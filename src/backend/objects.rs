//! An object store as the S3 backend needs it: whole objects, written only under a condition
//! on what is there (nothing, or the version last seen), each tagged with its sha256. The real
//! one is S3 ([`super::s3`]); [`Memory`] keeps the same rules in memory for fast tests of the
//! lock and compare-and-swap logic above it.

#[cfg(test)]
use crate::state::sha256_hex;

/// What a write requires of the object already at its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// Write whatever is there.
    Any,
    /// Only when nothing is (`If-None-Match: *`).
    Absent,
    /// Only when the object is still this version (`If-Match: <etag>`).
    Matches(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The condition did not hold (HTTP 412): the object is there, or is another version.
    #[error("precondition failed")]
    PreconditionFailed,
    /// Another conditional write to the key was under way (HTTP 409).
    #[error("another conditional write to the object was under way")]
    Conflict,
    /// The store does not implement the request as made (HTTP 501): e.g. a conditional
    /// delete on a store that keeps S3's older API.
    #[error("the store does not implement it: {0}")]
    NotImplemented(String),
    #[error("{0}")]
    Other(String),
}

/// An object as read: its bytes, its version, and the sha256 rallyctl wrote with it (none on
/// an object something else wrote).
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: String,
    pub sha256: Option<String>,
}

/// A key found by [`Objects::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub etag: String,
}

/// Keys are full object keys; the store's prefix is the caller's business.
pub trait Objects: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Object>, ObjectError>;
    /// Writes `bytes` under `cond` with its sha256 (hex), which the store checks on receipt
    /// where it can; returns the new version's etag.
    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        sha256: &str,
        cond: Cond,
    ) -> Result<String, ObjectError>;
    /// The sha256 the store holds for the object, read back after a write: the store's own
    /// checksum where it keeps one, else the hash of the bytes it serves.
    fn stored_sha256(&self, key: &str) -> Result<Option<String>, ObjectError>;
    /// Copies the object at `from`, only while it is version `if_match`, to `to` (inside the
    /// store: nothing is uploaded).
    fn copy(&self, from: &str, to: &str, if_match: &str) -> Result<(), ObjectError>;
    /// Deletes the object; with `if_match`, only while it is that version (a missing object
    /// then is [`ObjectError::PreconditionFailed`] too: it is not that version).
    fn delete(&self, key: &str, if_match: Option<&str>) -> Result<(), ObjectError>;
    /// Every key below `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, ObjectError>;
    /// The object's address for messages: `s3://bucket/key`.
    fn url(&self, key: &str) -> String;
}

/// S3's conditional-write rules over a map, for tests of what is built on them.
#[cfg(test)]
#[derive(Default)]
pub struct Memory {
    objects: std::sync::Mutex<std::collections::BTreeMap<String, Object>>,
    versions: std::sync::atomic::AtomicU64,
    /// The next this many writes answer 409, as S3 does while another conditional write to
    /// the key is under way.
    pub conflicts: std::sync::atomic::AtomicUsize,
    /// The next write stores other bytes than it was given, as a faulty store or network would.
    pub damage_next: std::sync::atomic::AtomicBool,
    /// Copies fail, as on a store that does not implement CopyObject.
    pub no_copies: std::sync::atomic::AtomicBool,
    /// Conditional deletes answer 501, as on a store that keeps S3's older API.
    pub no_conditional_deletes: std::sync::atomic::AtomicBool,
    /// Just before the next delete of this key, another writer puts these bytes there.
    pub before_delete: std::sync::Mutex<Option<(String, Vec<u8>)>>,
}

#[cfg(test)]
impl Memory {
    /// Puts `bytes` at `key` as something other than rallyctl would: no sha256 recorded.
    pub fn plant(&self, key: &str, bytes: &[u8]) {
        let etag = self.next_etag();
        self.objects.lock().unwrap().insert(
            key.to_owned(),
            Object {
                bytes: bytes.to_vec(),
                etag,
                sha256: None,
            },
        );
    }

    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }

    fn next_etag(&self) -> String {
        let n = self
            .versions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("\"v{n}\"")
    }
}

#[cfg(test)]
impl Objects for Memory {
    fn get(&self, key: &str) -> Result<Option<Object>, ObjectError> {
        Ok(self.objects.lock().unwrap().get(key).cloned())
    }

    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        sha256: &str,
        cond: Cond,
    ) -> Result<String, ObjectError> {
        use std::sync::atomic::Ordering::Relaxed;
        let conflicts = self.conflicts.load(Relaxed);
        if conflicts > 0 {
            self.conflicts.store(conflicts - 1, Relaxed);
            return Err(ObjectError::Conflict);
        }
        let mut bytes = bytes;
        if self.damage_next.swap(false, Relaxed) {
            bytes.push(b'!');
        }
        let mut objects = self.objects.lock().unwrap();
        let held = objects.get(key).map(|o| o.etag.as_str());
        let allowed = match (&cond, held) {
            (Cond::Any, _) | (Cond::Absent, None) => true,
            (Cond::Matches(want), Some(etag)) => want == etag,
            _ => false,
        };
        if !allowed {
            return Err(ObjectError::PreconditionFailed);
        }
        let etag = self.next_etag();
        objects.insert(
            key.to_owned(),
            Object {
                bytes,
                etag: etag.clone(),
                sha256: Some(sha256.to_owned()),
            },
        );
        Ok(etag)
    }

    fn stored_sha256(&self, key: &str) -> Result<Option<String>, ObjectError> {
        Ok(self.get(key)?.map(|o| sha256_hex(&o.bytes)))
    }

    fn copy(&self, from: &str, to: &str, if_match: &str) -> Result<(), ObjectError> {
        if self.no_copies.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ObjectError::Other("NotImplemented".into()));
        }
        let source = self.get(from)?.filter(|o| o.etag == if_match);
        let Some(source) = source else {
            return Err(ObjectError::PreconditionFailed);
        };
        let etag = self.next_etag();
        self.objects
            .lock()
            .unwrap()
            .insert(to.to_owned(), Object { etag, ..source });
        Ok(())
    }

    fn delete(&self, key: &str, if_match: Option<&str>) -> Result<(), ObjectError> {
        let planted = self
            .before_delete
            .lock()
            .unwrap()
            .take_if(|(k, _)| k == key);
        if let Some((key, bytes)) = planted {
            self.plant(&key, &bytes);
        }
        let mut objects = self.objects.lock().unwrap();
        if let Some(want) = if_match {
            if self
                .no_conditional_deletes
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return Err(ObjectError::NotImplemented("If-Match".into()));
            }
            if objects.get(key).is_none_or(|o| o.etag != want) {
                return Err(ObjectError::PreconditionFailed);
            }
        }
        objects.remove(key);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, ObjectError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| Listed {
                key: k.clone(),
                etag: o.etag.clone(),
            })
            .collect())
    }

    fn url(&self, key: &str) -> String {
        format!("s3://test-bucket/{key}")
    }
}
