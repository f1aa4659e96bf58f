//! What tests cost: the on-demand hourly price of an instance type in a region, from a price
//! file (`--prices`) or the AWS Price List API through a local cache ([`look_up`]); the
//! estimate `plan` ends with ([`estimate`]); what a run cost, from the machine time state
//! records ([`bill`]).
//!
//! It never launches or touches a machine: the lifecycle only records the price it is given.
//! A price that cannot be known is said to be unknown, with the reason, and never guessed.

pub mod bill;
pub mod cache;
pub mod estimate;
pub mod price_file;
pub mod price_list;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use jiff::civil::Date;
use serde::Serialize;

use crate::plan::{Connect, MachineSettings, Market, Settings};
pub use cache::Cache;
pub use price_file::{PriceFile, PriceFileError};
pub use price_list::PriceListApi;

/// What is priced: an instance type in a region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Key {
    pub region: String,
    pub instance_type: String,
}

impl Key {
    /// The key of a test's machine; none for machines that are the user's own (ssh, local).
    pub fn of(settings: &Settings) -> Option<Key> {
        match &settings.machine {
            MachineSettings::Aws(a) => Some(Key {
                region: a.region.to_string(),
                instance_type: a.instance_type.to_string(),
            }),
            MachineSettings::Ssh(_) | MachineSettings::Local => None,
        }
    }
}

/// A known price and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Price {
    pub usd_per_hour: f64,
    #[serde(flatten)]
    pub source: Source,
    /// When the price was read: the price file's `as_of`, the day it was fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<Date>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Source {
    /// Shared: a plan's every test priced from one file names it.
    File {
        file: Arc<Path>,
    },
    PriceListApi {
        cached: bool,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File { file } => write!(f, "{}", file.display()),
            Source::PriceListApi { cached: false } => f.write_str("Price List API"),
            Source::PriceListApi { cached: true } => f.write_str("Price List API, cached"),
        }
    }
}

/// What a public IPv4 address costs an hour, in every commercial region (Amazon VPC pricing,
/// since February 2024), whether the instance is running or not.
pub const PUBLIC_IPV4_USD_PER_HOUR: f64 = 0.005;

/// Linux instances, on-demand and spot, bill per second with this minimum per launch.
pub const MINIMUM_BILLED: std::time::Duration = std::time::Duration::from_secs(60);

/// What a test's machine is charged an hour: its instance, and its public IPv4 address when
/// the test connects by one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hourly {
    /// The on-demand price, or for a spot test the most it pays: its `max_price`, else the
    /// on-demand price (EC2's cap).
    pub instance_usd: f64,
    pub spot: bool,
    /// [`PUBLIC_IPV4_USD_PER_HOUR`] with `connect = "public_ip"`, else 0.
    pub public_ipv4_usd: f64,
}

impl Hourly {
    pub fn total(&self) -> f64 {
        self.instance_usd + self.public_ipv4_usd
    }
}

/// The prices of an apply or a plan, looked up once for every instance type it names.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    known: HashMap<Key, Result<Price, String>>,
}

/// What a test's machine costs per hour, as far as it can be told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Priced<'a> {
    Known(&'a Price),
    /// No price: why (the API failed, the price file lists none).
    Unknown(&'a str),
    /// A host of the user's pool or this machine: nothing is billed by the hour here.
    OwnMachine,
}

impl Prices {
    pub fn of(&self, settings: &Settings) -> Priced<'_> {
        self.at(Key::of(settings).as_ref())
    }

    /// The price of `key`, the key of a test's machine (none: the user's own).
    pub fn at(&self, key: Option<&Key>) -> Priced<'_> {
        let Some(key) = key else {
            return Priced::OwnMachine;
        };
        match self.known.get(key) {
            Some(Ok(price)) => Priced::Known(price),
            Some(Err(why)) => Priced::Unknown(why),
            None => Priced::Unknown("it was not looked up"),
        }
    }

    /// The prices `file` lists for the aws machines among `settings`.
    pub fn from_file<'a>(
        settings: impl IntoIterator<Item = &'a Settings>,
        file: &PriceFile,
    ) -> Prices {
        from_file(settings.into_iter().filter_map(Key::of).collect(), file)
    }

    /// What a machine for `settings` is charged an hour; none for the user's own machines,
    /// or when its instance has no known price.
    pub fn hourly(&self, settings: &Settings) -> Option<Hourly> {
        let MachineSettings::Aws(aws) = &settings.machine else {
            return None;
        };
        let on_demand = match self.of(settings) {
            Priced::Known(p) => Some(p.usd_per_hour),
            Priced::Unknown(_) | Priced::OwnMachine => None,
        };
        let (instance_usd, spot) = match &aws.market {
            Market::OnDemand => (on_demand?, false),
            Market::Spot(options) => {
                let max = (options.max_price.as_deref()).and_then(|m| m.parse::<f64>().ok());
                (max.or(on_demand)?, true)
            }
        };
        let public_ipv4_usd = match aws.connect {
            Connect::PublicIp => PUBLIC_IPV4_USD_PER_HOUR,
            Connect::PrivateIp => 0.0,
        };
        Some(Hourly {
            instance_usd,
            spot,
            public_ipv4_usd,
        })
    }

    /// The hourly price a machine for `settings` is recorded with: all it is charged an hour.
    pub fn usd_per_hour(&self, settings: &Settings) -> Option<f64> {
        self.hourly(settings).map(|h| h.total())
    }
}

/// A source of prices that asks someone else (the Price List API); tests stand in for it.
pub trait Fetch {
    type Error: std::fmt::Display;

    /// The on-demand hourly USD price of `key`; none when the source lists none.
    fn fetch(&self, key: &Key) -> impl Future<Output = Result<Option<f64>, Self::Error>>;
}

/// The prices of the aws machines among `settings`: from `file` when given (and only from it),
/// else from the cache and, for what it lacks or holds stale, the Price List API.
pub async fn look_up<'a>(
    settings: impl IntoIterator<Item = &'a Settings>,
    file: Option<&PriceFile>,
    cache: &mut Cache,
) -> Prices {
    let keys: BTreeSet<Key> = settings.into_iter().filter_map(Key::of).collect();
    match file {
        Some(file) => from_file(keys, file),
        None => resolve(keys, cache, today(), &PriceListApi::default()).await,
    }
}

fn from_file(keys: BTreeSet<Key>, file: &PriceFile) -> Prices {
    let known = keys
        .into_iter()
        .map(|key| {
            let price = match file.get(&key) {
                Some(listed) => Ok(Price {
                    usd_per_hour: listed.usd_per_hour,
                    source: Source::File {
                        file: file.path.as_path().into(),
                    },
                    as_of: listed.as_of,
                }),
                None => Err(format!("not in the price file {}", file.path.display())),
            };
            (key, price)
        })
        .collect();
    Prices { known }
}

/// Today in UTC, the calendar prices are dated by.
pub fn today() -> Date {
    jiff::tz::TimeZone::UTC
        .to_datetime(jiff::Timestamp::now())
        .date()
}

/// Prices from the cache where it holds them fresh, else from `api`; what the API tells is
/// cached, a failure never is. After one failure the API is not asked again: a machine
/// without internet would wait out the timeout once per instance type.
pub async fn resolve(
    keys: BTreeSet<Key>,
    cache: &mut Cache,
    today: Date,
    api: &impl Fetch,
) -> Prices {
    let mut known = HashMap::new();
    let mut failed: Option<String> = None;
    let mut fetched = false;
    for key in keys {
        if let Some(price) = cache.fresh(&key, today) {
            known.insert(key, Ok(price));
            continue;
        }
        let price = match &failed {
            Some(why) => Err(why.clone()),
            None => match api.fetch(&key).await {
                Ok(Some(usd)) => {
                    cache.store(&key, usd, today);
                    fetched = true;
                    Ok(Price {
                        usd_per_hour: usd,
                        source: Source::PriceListApi { cached: false },
                        as_of: Some(today),
                    })
                }
                Ok(None) => Err("the Price List API lists no on-demand Linux price for it".into()),
                Err(e) => {
                    let why = e.to_string();
                    failed = Some(why.clone());
                    Err(why)
                }
            },
        };
        known.insert(key, price);
    }
    if fetched {
        cache.save();
    }
    Prices { known }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} in {}", self.instance_type, self.region)
    }
}

/// Dollars as users read them: cents, and a tenth of a cent below a dollar.
pub fn usd(v: f64) -> String {
    if v < 1.0 {
        format!("${v:.3}")
    } else {
        format!("${v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Answers from a table, counting what it is asked.
    struct Table {
        answers: HashMap<String, Result<Option<f64>, String>>,
        asked: RefCell<Vec<String>>,
    }

    impl Fetch for Table {
        type Error = String;

        async fn fetch(&self, key: &Key) -> Result<Option<f64>, String> {
            self.asked.borrow_mut().push(key.instance_type.clone());
            self.answers[&key.instance_type].clone()
        }
    }

    fn key(instance_type: &str) -> Key {
        Key {
            region: "us-east-1".into(),
            instance_type: instance_type.into(),
        }
    }

    fn table(answers: &[(&str, Result<Option<f64>, String>)]) -> Table {
        Table {
            answers: answers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            asked: RefCell::default(),
        }
    }

    #[tokio::test]
    async fn fetched_prices_are_cached_until_stale_and_failures_never() {
        let dir = tempfile::tempdir().unwrap();
        let day = jiff::civil::date(2026, 12, 1);
        let api = table(&[
            ("m5.large", Ok(Some(0.096))),
            ("m5.metal", Ok(None)),
            ("c5.large", Err("timed out".into())),
        ]);
        let keys: BTreeSet<Key> = ["m5.large", "m5.metal"].map(key).into();
        let mut cache = Cache::at(dir.path());
        let prices = resolve(keys.clone(), &mut cache, day, &api).await;
        assert_eq!(
            prices.known[&key("m5.large")]
                .as_ref()
                .unwrap()
                .usd_per_hour,
            0.096
        );
        assert_eq!(
            prices.known[&key("m5.metal")],
            Err("the Price List API lists no on-demand Linux price for it".into())
        );
        // Read back from disk, a week less a day later: from the cache, not the API.
        let mut cache = Cache::at(dir.path());
        let later = day.checked_add(jiff::Span::new().days(6)).unwrap();
        let prices = resolve([key("m5.large")].into(), &mut cache, later, &api).await;
        let price = prices.known[&key("m5.large")].as_ref().unwrap();
        assert_eq!(price.source, Source::PriceListApi { cached: true });
        assert_eq!(price.as_of, Some(day));
        assert_eq!(*api.asked.borrow(), ["m5.large", "m5.metal"]);
        // A week later it is stale and asked again.
        let stale = day.checked_add(jiff::Span::new().days(7)).unwrap();
        resolve([key("m5.large")].into(), &mut cache, stale, &api).await;
        assert_eq!(api.asked.borrow().len(), 3);
        // A failure is reported, not cached, and not asked again in the same lookup.
        let keys: BTreeSet<Key> = ["c5.large", "m5.metal"].map(key).into();
        let prices = resolve(keys, &mut cache, stale, &api).await;
        assert_eq!(prices.known[&key("c5.large")], Err("timed out".into()));
        assert_eq!(prices.known[&key("m5.metal")], Err("timed out".into()));
        assert_eq!(api.asked.borrow().len(), 4);
        assert!(
            Cache::at(dir.path())
                .fresh(&key("c5.large"), stale)
                .is_none()
        );
    }

    #[test]
    fn a_price_file_is_the_only_source_when_given() {
        let file = PriceFile::parse(
            std::path::Path::new("p.toml"),
            "[[price]]\nregion = \"us-east-1\"\ninstance_type = \"m5.large\"\nusd_per_hour = 0.1\n",
        )
        .unwrap();
        let prices = from_file(["m5.large", "m5.xlarge"].map(key).into(), &file);
        assert_eq!(
            prices.known[&key("m5.large")]
                .as_ref()
                .unwrap()
                .usd_per_hour,
            0.1
        );
        assert_eq!(
            prices.known[&key("m5.xlarge")],
            Err("not in the price file p.toml".into())
        );
    }

    #[test]
    fn a_machine_not_looked_up_or_of_ones_own_has_no_price() {
        let plan = crate::plan::Plan::parse(
            std::path::Path::new("p.toml"),
            "version = 1\nname = \"p\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-12345678\"\n\
             instance_type = \"m5.large\"\ntrack = \"geonames\"\n[[suite]]\nname = \"s\"\n\
             [[suite.test]]\nname = \"aws\"\n[[suite.test]]\nname = \"here\"\nprovider = \"local\"\n",
        )
        .unwrap();
        let mut tests = plan.tests();
        let (aws, here) = (
            &tests.next().unwrap().settings,
            &tests.next().unwrap().settings,
        );
        let none = Prices::default();
        assert_eq!(none.of(aws), Priced::Unknown("it was not looked up"));
        assert_eq!(none.of(here), Priced::OwnMachine);
        assert_eq!(none.usd_per_hour(aws), None);
    }

    #[test]
    fn dollars_read_to_the_cent_or_a_tenth_of_one() {
        assert_eq!(usd(0.0961), "$0.096");
        assert_eq!(usd(12.345), "$12.35");
        assert_eq!(usd(0.0), "$0.000");
    }
}
