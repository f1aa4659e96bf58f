//! Results downloaded from a remote backend, kept under `$XDG_CACHE_HOME/rallyctl/results`
//! (or `~/.cache/rallyctl/results`) by their sha256, with an index of which object version
//! (URL and ETag) holds which checksum: a second `results` downloads nothing, and a file
//! this machine uploaded is never downloaded.
//!
//! A cache is only a cache: one that cannot be read is as good as empty, one that cannot be
//! written costs a download next time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const INDEX: &str = "index.json";

pub struct Cache {
    dir: PathBuf,
    index: BTreeMap<String, Entry>,
    changed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    etag: String,
    sha256: String,
}

/// The user's cache, or one in the temporary directory when there is no home to keep it.
pub fn user_dir() -> PathBuf {
    crate::dirs::user_cache()
        .unwrap_or_else(std::env::temp_dir)
        .join("rallyctl")
        .join("results")
}

impl Cache {
    pub fn open(dir: &Path) -> Cache {
        let dir = dir.to_owned();
        let index = std::fs::read(dir.join(INDEX))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Cache {
            dir,
            index,
            changed: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob(&self, sha256: &str) -> PathBuf {
        self.dir.join("blobs").join(sha256)
    }

    /// The checksum of the object version `etag` at `url`, when its bytes are in the cache.
    pub fn lookup(&self, url: &str, etag: &str) -> Option<String> {
        let entry = self.index.get(url).filter(|e| e.etag == etag)?;
        self.blob(&entry.sha256)
            .is_file()
            .then(|| entry.sha256.clone())
    }

    /// Keeps `bytes` (checked by the caller to hash to `sha256`) as `url`'s version `etag`.
    pub fn keep(&mut self, url: &str, etag: &str, sha256: &str, bytes: &[u8]) {
        let blob = self.blob(sha256);
        let written = blob.is_file()
            || (|| {
                let dir = blob.parent().expect("blobs have a directory");
                std::fs::create_dir_all(dir)?;
                let mut temp = tempfile::NamedTempFile::new_in(dir)?;
                std::io::Write::write_all(&mut temp, bytes)?;
                temp.persist(&blob).map_err(|e| e.error)?;
                Ok::<_, std::io::Error>(())
            })()
            .is_ok();
        if written {
            self.remember(url, etag, sha256);
        }
    }

    /// Keeps the local file `path` (hashing to `sha256`) as `url`'s version `etag`.
    pub fn keep_file(&mut self, url: &str, etag: &str, sha256: &str, path: &Path) {
        if let Ok(bytes) = std::fs::read(path) {
            self.keep(url, etag, sha256, &bytes);
        }
    }

    fn remember(&mut self, url: &str, etag: &str, sha256: &str) {
        self.index.insert(
            url.to_owned(),
            Entry {
                etag: etag.to_owned(),
                sha256: sha256.to_owned(),
            },
        );
        self.changed = true;
    }

    /// A new directory to lay out one command's results in, removed when it is dropped.
    pub fn tree(&self) -> std::io::Result<tempfile::TempDir> {
        let trees = self.dir.join("trees");
        std::fs::create_dir_all(&trees)?;
        tempfile::tempdir_in(trees)
    }

    /// Puts the cached bytes of `sha256` at `to`: a hard link, or a copy where links fail.
    pub fn link(&self, sha256: &str, to: &Path) -> std::io::Result<()> {
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let blob = self.blob(sha256);
        std::fs::hard_link(&blob, to).or_else(|_| std::fs::copy(&blob, to).map(|_| ()))
    }

    pub fn save(&self) {
        if !self.changed {
            return;
        }
        let _ = (|| {
            std::fs::create_dir_all(&self.dir)?;
            let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
            serde_json::to_writer(&mut temp, &self.index)?;
            temp.persist(self.dir.join(INDEX)).map_err(|e| e.error)?;
            Ok::<_, std::io::Error>(())
        })();
    }
}
