//! Prices fetched from the Price List API, kept with the day they were fetched under
//! `$XDG_CACHE_HOME/rallyctl/prices.json` (or `~/.cache/rallyctl/`), so a plan asks the API
//! once a week per instance type, and a plan of thousands of tests reads one small file.
//!
//! A cache is only a cache: one that cannot be read is as good as empty, one that cannot be
//! written costs a fetch next time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::{Key, Price, Source};

/// How long a fetched price is trusted: AWS changes on-demand prices rarely, and never
/// without notice.
pub const FRESH_DAYS: i64 = 7;

const FILE: &str = "prices.json";

#[derive(Debug, Default)]
pub struct Cache {
    /// None where no home or cache directory is known: nothing is kept.
    path: Option<PathBuf>,
    entries: BTreeMap<Key, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    usd_per_hour: f64,
    fetched: Date,
}

/// The file's form: a list, since JSON objects take only string keys.
#[derive(Serialize, Deserialize)]
struct Stored {
    prices: Vec<StoredEntry>,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    region: String,
    instance_type: String,
    #[serde(flatten)]
    entry: Entry,
}

impl Cache {
    /// The user's cache: `$XDG_CACHE_HOME/rallyctl`, else `$HOME/.cache/rallyctl`.
    pub fn for_user() -> Cache {
        let dir = crate::dirs::user_cache();
        match dir {
            Some(dir) => Cache::at(&dir.join("rallyctl")),
            None => Cache::default(),
        }
    }

    /// The cache kept in `dir`.
    pub fn at(dir: &Path) -> Cache {
        let path = dir.join(FILE);
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Stored>(&bytes).ok())
            .map(|s| {
                s.prices
                    .into_iter()
                    .map(|e| {
                        let key = Key {
                            region: e.region.into(),
                            instance_type: e.instance_type.into(),
                        };
                        (key, e.entry)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Cache {
            path: Some(path),
            entries,
        }
    }

    /// The cached price of `key` if it was fetched less than [`FRESH_DAYS`] before `today`.
    pub fn fresh(&self, key: &Key, today: Date) -> Option<Price> {
        let e = self.entries.get(key)?;
        let age = e.fetched.until(today).ok()?.get_days();
        (0..FRESH_DAYS).contains(&i64::from(age)).then_some(Price {
            usd_per_hour: e.usd_per_hour,
            source: Source::PriceListApi { cached: true },
            as_of: Some(e.fetched),
        })
    }

    pub fn store(&mut self, key: &Key, usd_per_hour: f64, today: Date) {
        self.entries.insert(
            key.clone(),
            Entry {
                usd_per_hour,
                fetched: today,
            },
        );
    }

    /// Writes the cache (whole, through a temporary file, so a reader never sees half).
    pub fn save(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let stored = Stored {
            prices: (self.entries.iter())
                .map(|(k, e)| StoredEntry {
                    region: k.region.to_string(),
                    instance_type: k.instance_type.to_string(),
                    entry: e.clone(),
                })
                .collect(),
        };
        let dir = path.parent().expect("the cache file is in a directory");
        let written = std::fs::create_dir_all(dir).and_then(|()| {
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            serde_json::to_writer_pretty(&mut tmp, &stored)?;
            tmp.persist(path).map(|_| ()).map_err(|e| e.error)
        });
        // Not kept: the next plan fetches again, which is all a cache saves.
        drop(written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            region: "us-east-1".into(),
            instance_type: "m5.large".into(),
        }
    }

    #[test]
    fn a_damaged_or_unwritable_cache_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let day = jiff::civil::date(2026, 12, 1);
        std::fs::write(dir.path().join(FILE), "{\"prices\": [{").unwrap();
        let mut cache = Cache::at(dir.path());
        assert!(cache.fresh(&key(), day).is_none());
        cache.store(&key(), 0.1, day);
        cache.save();
        assert_eq!(
            Cache::at(dir.path())
                .fresh(&key(), day)
                .unwrap()
                .usd_per_hour,
            0.1
        );
        // A file where the directory should be: nothing is kept, nothing fails.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, "").unwrap();
        let mut cache = Cache::at(&blocked);
        cache.store(&key(), 0.1, day);
        cache.save();
        assert!(Cache::at(&blocked).fresh(&key(), day).is_none());
    }

    #[test]
    fn a_price_fetched_in_the_future_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = Cache::at(dir.path());
        cache.store(&key(), 0.1, jiff::civil::date(2026, 12, 5));
        assert!(
            cache
                .fresh(&key(), jiff::civil::date(2026, 12, 1))
                .is_none()
        );
    }
}
