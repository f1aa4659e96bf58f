//! What tests cost: the on-demand hourly price of an instance type in a region and the
//! GB-month price of its root volume, from a price file (`--prices`) or the AWS Price List API
//! (instance prices through a local cache), with what only EC2 tells (the image's root volume,
//! the spot price now) asked through [`Ec2`] ([`look_up`]); the
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

use crate::plan::{AwsSettings, Connect, MachineSettings, Market, Settings, Text};
pub use cache::Cache;
pub use price_file::{PriceFile, PriceFileError};
pub use price_list::PriceListApi;

/// What is priced: an instance type in a region. Shares the text of the settings it is taken
/// from, as every test of a large plan asks for its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Key {
    pub region: Text,
    pub instance_type: Text,
}

impl Key {
    /// The key of a test's machine; none for machines that are the user's own (ssh, local).
    pub fn of(settings: &Settings) -> Option<Key> {
        match &settings.machine {
            MachineSettings::Aws(a) => Some(key_of(a)),
            MachineSettings::Ssh(_) | MachineSettings::Local => None,
        }
    }

    /// The keys of every machine a test launches: its own (its load drivers') and its
    /// cluster's nodes'.
    fn all_of(settings: &Settings) -> impl Iterator<Item = Key> {
        Key::of(settings)
            .into_iter()
            .chain(settings.node_aws().map(|a| key_of(&a)))
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

/// AWS prices storage per GB-month of 730 hours, prorated by the hour (and by the second).
pub const HOURS_PER_MONTH: f64 = 730.0;

/// The volume type a root volume is priced as when its image's mapping names none: EC2's
/// default for a new EBS volume.
pub const DEFAULT_VOLUME_TYPE: &str = "gp3";

/// An image's root volume, as its root device's block device mapping describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RootVolume {
    pub gib: u32,
    pub volume_type: String,
}

/// A root volume with its price.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Storage {
    #[serde(flatten)]
    pub volume: RootVolume,
    pub usd_per_gb_month: f64,
    #[serde(flatten)]
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<Date>,
}

impl Storage {
    pub fn usd_per_hour(&self) -> f64 {
        f64::from(self.volume.gib) * self.usd_per_gb_month / HOURS_PER_MONTH
    }
}

/// What a test's machine is charged an hour: its instance, its public IPv4 address when the
/// test connects by one, and its root volume.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hourly {
    /// The on-demand price, or for a spot test the most it pays: its `max_price`, else the
    /// on-demand price (EC2's cap).
    pub instance_usd: f64,
    pub spot: bool,
    /// A spot test's latest spot price (DescribeSpotPriceHistory), what it is expected to pay;
    /// none when EC2 was not asked or named none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spot_now_usd: Option<f64>,
    /// [`PUBLIC_IPV4_USD_PER_HOUR`] with `connect = "public_ip"`, else 0.
    pub public_ipv4_usd: f64,
    /// The root volume's GB-months by the hour; none when its size or price is not known.
    pub root_volume_usd: Option<f64>,
}

impl Hourly {
    /// What `n` such machines are charged together.
    fn times(self, n: u32) -> Hourly {
        let n = f64::from(n);
        Hourly {
            instance_usd: self.instance_usd * n,
            spot: self.spot,
            spot_now_usd: self.spot_now_usd.map(|usd| usd * n),
            public_ipv4_usd: self.public_ipv4_usd * n,
            root_volume_usd: self.root_volume_usd.map(|usd| usd * n),
        }
    }

    /// What these machines and `other` are charged together; a root volume not known of
    /// either is not known of both (it is never counted as 0).
    fn plus(self, other: Hourly) -> Hourly {
        let now = |h: &Hourly| h.spot_now_usd.unwrap_or(h.instance_usd);
        Hourly {
            instance_usd: self.instance_usd + other.instance_usd,
            spot: self.spot || other.spot,
            spot_now_usd: (self.spot_now_usd.is_some() || other.spot_now_usd.is_some())
                .then(|| now(&self) + now(&other)),
            public_ipv4_usd: self.public_ipv4_usd + other.public_ipv4_usd,
            root_volume_usd: self
                .root_volume_usd
                .zip(other.root_volume_usd)
                .map(|(a, b)| a + b),
        }
    }

    /// At most, of what is known: a spot test at its cap.
    pub fn total(&self) -> f64 {
        self.instance_usd + self.public_ipv4_usd + self.root_volume_usd.unwrap_or(0.0)
    }

    /// As expected, of what is known: a spot test at its spot price now where known.
    pub fn expected(&self) -> f64 {
        self.spot_now_usd.unwrap_or(self.instance_usd)
            + self.public_ipv4_usd
            + self.root_volume_usd.unwrap_or(0.0)
    }
}

/// The prices of an apply or a plan, looked up once for every instance type it names.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    known: HashMap<Key, Result<Price, String>>,
    /// By region and image: the root volume and its price, or why either is not known.
    storage: HashMap<(String, String), Result<Storage, String>>,
    /// By the instance type of a spot test: its spot price now, or why it is not known.
    spot_now: HashMap<Key, Result<f64, String>>,
}

/// The image whose root volume a test's machine gets: the one it launches from, or for a
/// baked image not resolved yet its base, whose root volume the bake keeps.
fn image_of(aws: &AwsSettings) -> &str {
    aws.launch_ami().unwrap_or(aws.named_ami())
}

fn storage_key(aws: &AwsSettings) -> (String, String) {
    (aws.region.to_string(), image_of(aws).to_owned())
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

    /// The prices `file` lists for the aws machines among `settings`, without what only EC2
    /// tells (root volumes, spot prices now).
    pub fn from_file<'a>(
        settings: impl IntoIterator<Item = &'a Settings>,
        file: &PriceFile,
    ) -> Prices {
        from_file(settings.into_iter().flat_map(Key::all_of).collect(), file)
    }

    /// The root volume of a machine for `settings` with its price; none for the user's own.
    pub fn storage(&self, settings: &Settings) -> Option<Result<&Storage, &str>> {
        let MachineSettings::Aws(aws) = &settings.machine else {
            return None;
        };
        Some(match self.storage.get(&storage_key(aws)) {
            Some(Ok(s)) => Ok(s),
            Some(Err(why)) => Err(why),
            None => Err("it was not looked up"),
        })
    }

    /// Why a spot test's price now is not known; none when it is, or for other tests.
    pub fn no_spot_now(&self, settings: &Settings) -> Option<&str> {
        // Asked of every test a plan runs: most ask no spot price, and making the key allocates.
        if self.spot_now.is_empty() {
            return None;
        }
        let key = Key::of(settings)?;
        match self.spot_now.get(&key) {
            Some(Err(why)) => Some(why),
            _ => None,
        }
    }

    /// What a machine for `settings` is charged an hour; none for the user's own machines,
    /// or when its instance has no known price.
    pub fn hourly(&self, settings: &Settings) -> Option<Hourly> {
        let MachineSettings::Aws(aws) = &settings.machine else {
            return None;
        };
        self.hourly_of(aws)
    }

    /// What every machine of a test is charged an hour together: its load drivers and its
    /// cluster's nodes; none when one of them has no known price.
    pub fn hourly_all(&self, settings: &Settings) -> Option<Hourly> {
        let one = self.hourly(settings)?;
        match (&settings.cluster, settings.node_aws()) {
            (Some(cluster), Some(nodes)) => {
                let nodes = self.hourly_of(&nodes)?.times(cluster.nodes.get());
                Some(one.times(settings.load_drivers.get()).plus(nodes))
            }
            _ => Some(one),
        }
    }

    fn hourly_of(&self, aws: &AwsSettings) -> Option<Hourly> {
        let key = key_of(aws);
        let on_demand = match self.at(Some(&key)) {
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
        // EC2 never charges a spot instance more than its cap.
        let spot_now_usd = (spot.then_some(&key))
            .and_then(|k| self.spot_now.get(k))
            .and_then(|p| p.as_ref().ok())
            .map(|&now| now.min(instance_usd));
        let public_ipv4_usd = match aws.connect {
            Connect::PublicIp => PUBLIC_IPV4_USD_PER_HOUR,
            Connect::PrivateIp => 0.0,
        };
        let root_volume_usd = match self.storage.get(&storage_key(aws)) {
            Some(Ok(s)) => Some(s.usd_per_hour()),
            _ => None,
        };
        Some(Hourly {
            instance_usd,
            spot,
            spot_now_usd,
            public_ipv4_usd,
            root_volume_usd,
        })
    }

    /// The hourly price a machine for `settings` is recorded with, as it came up: all it is
    /// charged an hour; on spot capacity (`spot`) at the spot price now where EC2 named one,
    /// else at its cap; a spot test's machine that came up on demand (EC2 refused spot
    /// capacity, or reclaimed it before) at the on-demand price. Unknown when a part of it is
    /// (its root volume).
    pub fn usd_per_hour(&self, settings: &Settings, spot: bool) -> Option<f64> {
        let hourly = self.hourly(settings)?;
        let rest = hourly.public_ipv4_usd + hourly.root_volume_usd?;
        match (hourly.spot, spot) {
            (true, true) => Some(hourly.expected()),
            (true, false) => match self.of(settings) {
                Priced::Known(p) => Some(p.usd_per_hour + rest),
                Priced::Unknown(_) | Priced::OwnMachine => None,
            },
            (false, _) => Some(hourly.total()),
        }
    }
}

#[cfg(test)]
impl Prices {
    /// `storage` as the root volume of every aws machine among `settings`, as if EC2 said so.
    pub(crate) fn with_root_volume<'a>(
        mut self,
        settings: impl IntoIterator<Item = &'a Settings>,
        storage: &Storage,
    ) -> Prices {
        for s in settings {
            if let MachineSettings::Aws(a) = &s.machine {
                self.storage.insert(storage_key(a), Ok(storage.clone()));
            }
        }
        self
    }
}

/// A source of prices that asks someone else (the Price List API); tests stand in for it.
pub trait Fetch {
    type Error: std::fmt::Display;

    /// The on-demand hourly USD price of `key`; none when the source lists none.
    fn fetch(&self, key: &Key) -> impl Future<Output = Result<Option<f64>, Self::Error>>;

    /// The USD price per GB-month of an EBS volume of `volume_type` in `region`; none when
    /// the source lists none.
    fn fetch_storage(
        &self,
        region: &str,
        volume_type: &str,
    ) -> impl Future<Output = Result<Option<f64>, Self::Error>>;
}

/// What only EC2 tells of a test's machine; the aws provider answers, tests stand in.
pub trait Ec2 {
    type Error: std::fmt::Display;

    /// The root volume of `image` in `region`; none when its mappings name no EBS root.
    fn root_volume(
        &self,
        region: &str,
        image: &str,
    ) -> impl Future<Output = Result<Option<RootVolume>, Self::Error>>;

    /// The latest Linux/UNIX spot price of `key`'s instance type in its region's cheapest
    /// zone; none when EC2 has no history of it.
    fn spot_price(&self, key: &Key) -> impl Future<Output = Result<Option<f64>, Self::Error>>;
}

/// The prices of the aws machines among `settings`: from `file` when given (and only from it),
/// else from the cache and, for what it lacks or holds stale, the Price List API; root volumes
/// and spot prices now from `ec2`, or unknown with `why_not` when EC2 is not asked.
pub async fn look_up<'a>(
    settings: impl IntoIterator<Item = &'a Settings>,
    file: Option<&PriceFile>,
    cache: &mut Cache,
    ec2: Result<&impl Ec2, &str>,
) -> Prices {
    let settings: Vec<&Settings> = settings.into_iter().collect();
    let nodes: Vec<AwsSettings> = settings.iter().filter_map(|s| s.node_aws()).collect();
    let aws: Vec<&AwsSettings> = (settings.iter())
        .filter_map(|s| match &s.machine {
            MachineSettings::Aws(a) => Some(a),
            MachineSettings::Ssh(_) | MachineSettings::Local => None,
        })
        .chain(&nodes)
        .collect();
    let keys: BTreeSet<Key> = aws.iter().map(|a| key_of(a)).collect();
    let api = PriceListApi::default();
    let mut prices = match file {
        Some(file) => from_file(keys, file),
        None => resolve(keys, cache, today(), &api).await,
    };
    let storage_price = |region: String, volume_type: String| {
        let api = &api;
        async move {
            match file {
                Some(file) => file_storage(file, &region, &volume_type),
                None => api_storage(api, &region, &volume_type, today()).await,
            }
        }
    };
    asked_of_ec2(&mut prices, &aws, ec2, storage_price).await;
    prices
}

/// A GB-month price with where it came from and when it was read, or why there is none.
type GbMonth = Result<(f64, Source, Option<Date>), String>;

fn key_of(aws: &AwsSettings) -> Key {
    Key {
        region: aws.region.clone(),
        instance_type: aws.instance_type.clone(),
    }
}

/// Root volumes with their prices (from `storage_price`), and spot tests' prices now, into
/// `prices`; each asked once, and nothing more of EC2 after one failure (as of the API).
async fn asked_of_ec2<F, Fut>(
    prices: &mut Prices,
    aws: &[&AwsSettings],
    ec2: Result<&impl Ec2, &str>,
    storage_price: F,
) where
    F: Fn(String, String) -> Fut,
    Fut: Future<Output = GbMonth>,
{
    let ec2 = match ec2 {
        Ok(ec2) => ec2,
        Err(why) => {
            for a in aws {
                prices.storage.insert(storage_key(a), Err(why.to_owned()));
                if matches!(a.market, Market::Spot(_)) {
                    prices.spot_now.insert(key_of(a), Err(why.to_owned()));
                }
            }
            return;
        }
    };
    let mut failed: Option<String> = None;
    let mut priced: HashMap<(String, String), GbMonth> = HashMap::new();
    for a in aws {
        let (region, image) = storage_key(a);
        if prices
            .storage
            .contains_key(&(region.clone(), image.clone()))
        {
            continue;
        }
        let volume = match &failed {
            Some(why) => Err(why.clone()),
            None => ec2.root_volume(&region, &image).await.map_err(|e| {
                let why = format!("EC2 did not say its size: {e}");
                failed = Some(why.clone());
                why
            }),
        };
        let storage = match volume {
            Err(why) => Err(why),
            Ok(None) => Err(format!("{image} names no EBS root volume")),
            Ok(Some(volume)) => {
                let at = (region.clone(), volume.volume_type.clone());
                if !priced.contains_key(&at) {
                    let price = storage_price(at.0.clone(), at.1.clone()).await;
                    priced.insert(at.clone(), price);
                }
                match &priced[&at] {
                    Ok((usd, source, as_of)) => Ok(Storage {
                        volume,
                        usd_per_gb_month: *usd,
                        source: source.clone(),
                        as_of: *as_of,
                    }),
                    Err(why) => Err(why.clone()),
                }
            }
        };
        prices.storage.insert((region, image), storage);
    }
    for a in aws.iter().filter(|a| matches!(a.market, Market::Spot(_))) {
        let key = key_of(a);
        if prices.spot_now.contains_key(&key) {
            continue;
        }
        let now = match &failed {
            Some(why) => Err(why.clone()),
            None => match ec2.spot_price(&key).await {
                Ok(Some(usd)) => Ok(usd),
                Ok(None) => Err("EC2 has no spot price history of it".into()),
                Err(e) => {
                    let why = format!("EC2 did not say its spot price: {e}");
                    failed = Some(why.clone());
                    Err(why)
                }
            },
        };
        prices.spot_now.insert(key, now);
    }
}

/// The GB-month price of `volume_type` in `region` that `file` lists.
fn file_storage(file: &PriceFile, region: &str, volume_type: &str) -> GbMonth {
    match file.storage(region, volume_type) {
        Some(listed) => Ok((
            listed.usd,
            Source::File {
                file: file.path.as_path().into(),
            },
            listed.as_of,
        )),
        None => Err(format!(
            "{volume_type} in {region} is not in the price file {}",
            file.path.display()
        )),
    }
}

/// The GB-month price of `volume_type` in `region` from the Price List API.
async fn api_storage(api: &impl Fetch, region: &str, volume_type: &str, today: Date) -> GbMonth {
    match api.fetch_storage(region, volume_type).await {
        Ok(Some(usd)) => Ok((usd, Source::PriceListApi { cached: false }, Some(today))),
        Ok(None) => Err(format!(
            "the Price List API lists no {volume_type} price in {region}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn from_file(keys: BTreeSet<Key>, file: &PriceFile) -> Prices {
    let known = keys
        .into_iter()
        .map(|key| {
            let price = match file.get(&key) {
                Some(listed) => Ok(Price {
                    usd_per_hour: listed.usd,
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
    Prices {
        known,
        ..Prices::default()
    }
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
    Prices {
        known,
        ..Prices::default()
    }
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
            self.asked.borrow_mut().push(key.instance_type.to_string());
            self.answers[&*key.instance_type].clone()
        }

        async fn fetch_storage(
            &self,
            region: &str,
            volume_type: &str,
        ) -> Result<Option<f64>, String> {
            let asked = format!("{volume_type} in {region}");
            self.asked.borrow_mut().push(asked.clone());
            self.answers[&asked].clone()
        }
    }

    /// EC2 as the tests need it: root volumes by image, spot prices by instance type (a
    /// missing one is none), every question counted.
    pub(super) struct Answers {
        pub volumes: HashMap<&'static str, Result<Option<RootVolume>, String>>,
        pub spot: HashMap<&'static str, f64>,
        pub asked: RefCell<Vec<String>>,
    }

    impl Ec2 for Answers {
        type Error = String;

        async fn root_volume(&self, _: &str, image: &str) -> Result<Option<RootVolume>, String> {
            self.asked.borrow_mut().push(image.to_owned());
            self.volumes[image].clone()
        }

        async fn spot_price(&self, key: &Key) -> Result<Option<f64>, String> {
            self.asked.borrow_mut().push(key.instance_type.to_string());
            Ok(self.spot.get(&*key.instance_type).copied())
        }
    }

    pub(super) fn gib(gib: u32, volume_type: &str) -> Result<Option<RootVolume>, String> {
        Ok(Some(RootVolume {
            gib,
            volume_type: volume_type.into(),
        }))
    }

    /// A test with a cluster is priced as all its machines together: each node at the nodes'
    /// type, each load driver at the test's, every one with its public IPv4 address and root
    /// volume; a nodes' type without a price leaves the whole unknown, never partly counted.
    #[tokio::test]
    async fn a_cluster_is_priced_as_all_its_machines() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let plan =
            crate::plan::Plan::load(&root.join("tests/fixtures/plans/clusters.toml")).unwrap();
        let file = PriceFile::parse(
            Path::new("prices.toml"),
            &std::fs::read_to_string(root.join("tests/fixtures/prices/prices.toml")).unwrap(),
        )
        .unwrap();
        let ec2 = Answers {
            volumes: [("ami-0123456789abcdef0", gib(30, "gp3"))].into(),
            spot: HashMap::new(),
            asked: RefCell::default(),
        };
        let prices = priced(&plan, &file, &ec2).await;
        let tests: Vec<&Settings> = plan.tests().map(|t| &t.settings).collect();
        let volume = 30.0 * 0.08 / HOURS_PER_MONTH;
        let machine = |usd: f64| usd + PUBLIC_IPV4_USD_PER_HOUR + volume;
        let three = prices.hourly_all(tests[0]).unwrap();
        let all = 3.0 * machine(0.192) + 2.0 * machine(0.096);
        assert!((three.total() - all).abs() < 1e-9, "{three:?}");
        assert!((three.root_volume_usd.unwrap() - 5.0 * volume).abs() < 1e-9);
        // One machine's price, as acquire records it, is the load driver's alone.
        assert!((prices.hourly(tests[0]).unwrap().total() - machine(0.096)).abs() < 1e-9);
        let metal = tests[2];
        assert!(prices.hourly(metal).is_some());
        assert_eq!(prices.hourly_all(metal), None);
        // Without a cluster, all its machines are its one.
        assert_eq!(prices.hourly_all(tests[3]), prices.hourly(tests[3]));
    }

    /// The prices of `plan`'s tests: from `file`, and from `ec2` what only EC2 tells.
    pub(super) async fn priced(
        plan: &crate::plan::Plan,
        file: &PriceFile,
        ec2: &Answers,
    ) -> Prices {
        let settings: Vec<&Settings> = plan.tests().map(|t| &t.settings).collect();
        let mut prices = Prices::from_file(settings.iter().copied(), file);
        let aws: Vec<&AwsSettings> = (settings.iter())
            .filter_map(|s| match &s.machine {
                MachineSettings::Aws(a) => Some(a),
                _ => None,
            })
            .collect();
        asked_of_ec2(
            &mut prices,
            &aws,
            Ok(ec2),
            |region, volume_type| async move { file_storage(file, &region, &volume_type) },
        )
        .await;
        prices
    }

    fn plan_of(tests: &str) -> crate::plan::Plan {
        crate::plan::Plan::parse(
            std::path::Path::new("p.toml"),
            &format!(
                "version = 1\nname = \"p\"\n[defaults]\nregion = \"us-east-1\"\n\
                 ami = \"ami-12345678\"\ninstance_type = \"m5.large\"\ntrack = \"geonames\"\n\
                 connect = \"private_ip\"\n[[suite]]\nname = \"s\"\n{tests}"
            ),
        )
        .unwrap()
    }

    const FILE: &str = "[[price]]\nregion = \"us-east-1\"\ninstance_type = \"m5.large\"\n\
        usd_per_hour = 0.096\n[[ebs]]\nregion = \"us-east-1\"\nvolume_type = \"gp3\"\n\
        usd_per_gb_month = 0.08\n";

    #[tokio::test]
    async fn the_root_volume_is_its_gb_months_by_the_hour_and_unknown_is_never_zero() {
        let plan = plan_of(
            "[[suite.test]]\nname = \"gp3\"\n\
             [[suite.test]]\nname = \"io2\"\nami = \"ami-10021002\"\n\
             [[suite.test]]\nname = \"none\"\nami = \"ami-00000000\"\n",
        );
        let file = PriceFile::parse(std::path::Path::new("p.toml"), FILE).unwrap();
        let ec2 = Answers {
            volumes: [
                ("ami-12345678", gib(100, "gp3")),
                ("ami-10021002", gib(8, "io2")),
                ("ami-00000000", Ok(None)),
            ]
            .into(),
            spot: HashMap::new(),
            asked: RefCell::default(),
        };
        let prices = priced(&plan, &file, &ec2).await;
        let mut tests = plan.tests().map(|t| &t.settings);
        let (gp3, io2, none) = (
            tests.next().unwrap(),
            tests.next().unwrap(),
            tests.next().unwrap(),
        );
        // 100 GiB at $0.08 a GB-month of 730 hours: $0.010959 an hour, with the instance's.
        let hourly = prices.hourly(gp3).unwrap();
        assert_eq!(hourly.root_volume_usd, Some(100.0 * 0.08 / 730.0));
        assert!((prices.usd_per_hour(gp3, false).unwrap() - 0.106959).abs() < 1e-6);
        // A volume type or an image the sources do not price: not counted, and the price the
        // machine is recorded with is unknown, never the instance's alone.
        assert_eq!(
            prices.storage(io2),
            Some(Err("io2 in us-east-1 is not in the price file p.toml"))
        );
        assert_eq!(prices.hourly(io2).unwrap().root_volume_usd, None);
        assert_eq!(prices.usd_per_hour(io2, false), None);
        assert_eq!(
            prices.storage(none),
            Some(Err("ami-00000000 names no EBS root volume"))
        );
        assert_eq!(prices.usd_per_hour(none, false), None);
        // No spot test: no spot price asked.
        assert_eq!(
            *ec2.asked.borrow(),
            ["ami-12345678", "ami-10021002", "ami-00000000"]
        );
    }

    #[tokio::test]
    async fn a_spot_test_is_expected_at_its_price_now_and_at_worst_at_its_cap() {
        let plan = plan_of(
            "[[suite.test]]\nname = \"capped\"\nmarket = \"spot\"\nmax_price = \"0.05\"\n\
             [[suite.test]]\nname = \"uncapped\"\nmarket = \"spot\"\n\
             [[suite.test]]\nname = \"dear\"\nmarket = \"spot\"\nmax_price = \"0.02\"\n\
             instance_type = \"m5.xlarge\"\n\
             [[suite.test]]\nname = \"no-history\"\nmarket = \"spot\"\ninstance_type = \"c5.large\"\n\
             max_price = \"0.04\"\n",
        );
        let file = PriceFile::parse(std::path::Path::new("p.toml"), FILE).unwrap();
        let ec2 = Answers {
            volumes: [("ami-12345678", gib(10, "gp3"))].into(),
            spot: [("m5.large", 0.0391), ("m5.xlarge", 0.0712)].into(),
            asked: RefCell::default(),
        };
        let prices = priced(&plan, &file, &ec2).await;
        let settings: Vec<&Settings> = plan.tests().map(|t| &t.settings).collect();
        let root = 10.0 * 0.08 / 730.0;
        let capped = prices.hourly(settings[0]).unwrap();
        assert_eq!(
            (capped.spot_now_usd, capped.instance_usd),
            (Some(0.0391), 0.05)
        );
        assert_eq!(capped.expected(), 0.0391 + root);
        assert_eq!(capped.total(), 0.05 + root);
        // Without max_price the cap is the on-demand price.
        let uncapped = prices.hourly(settings[1]).unwrap();
        assert_eq!(
            (uncapped.spot_now_usd, uncapped.instance_usd),
            (Some(0.0391), 0.096)
        );
        // A spot price above the cap is not paid: the instance is not launched, or reclaimed.
        let dear = prices.hourly(settings[2]).unwrap();
        assert_eq!(dear.spot_now_usd, Some(0.02));
        // No history: expected at the cap, and said why.
        let none = prices.hourly(settings[3]).unwrap();
        assert_eq!((none.spot_now_usd, none.expected()), (None, 0.04 + root));
        assert_eq!(
            prices.no_spot_now(settings[3]),
            Some("EC2 has no spot price history of it")
        );
        // A machine is recorded as it came up: on spot at the price now, on demand (spot
        // refused or reclaimed) at the on-demand price, not at the spot cap.
        assert_eq!(prices.usd_per_hour(settings[0], true), Some(0.0391 + root));
        assert_eq!(prices.usd_per_hour(settings[0], false), Some(0.096 + root));
        assert_eq!(prices.usd_per_hour(settings[3], true), Some(0.04 + root));
        // One question per image and per instance type.
        assert_eq!(
            *ec2.asked.borrow(),
            ["ami-12345678", "m5.large", "m5.xlarge", "c5.large"]
        );
    }

    #[tokio::test]
    async fn ec2_failing_once_is_not_asked_again_and_not_asked_at_all_is_said() {
        let plan = plan_of(
            "[[suite.test]]\nname = \"a\"\nmarket = \"spot\"\n\
             [[suite.test]]\nname = \"b\"\nami = \"ami-87654321\"\n",
        );
        let file = PriceFile::parse(std::path::Path::new("p.toml"), FILE).unwrap();
        let ec2 = Answers {
            volumes: [("ami-12345678", Err("UnauthorizedOperation: no".to_owned()))].into(),
            spot: HashMap::new(),
            asked: RefCell::default(),
        };
        let prices = priced(&plan, &file, &ec2).await;
        let settings: Vec<&Settings> = plan.tests().map(|t| &t.settings).collect();
        let why = "EC2 did not say its size: UnauthorizedOperation: no";
        assert_eq!(prices.storage(settings[0]), Some(Err(why)));
        assert_eq!(prices.storage(settings[1]), Some(Err(why)));
        assert_eq!(prices.no_spot_now(settings[0]), Some(why));
        assert_eq!(*ec2.asked.borrow(), ["ami-12345678"]);
        // --refresh=false: nothing asked, each said why.
        let mut prices = Prices::from_file(settings.iter().copied(), &file);
        let aws: Vec<&AwsSettings> = (settings.iter())
            .filter_map(|s| match &s.machine {
                MachineSettings::Aws(a) => Some(a),
                _ => None,
            })
            .collect();
        let not_asked: Result<&Answers, &str> = Err("EC2 was not asked (--refresh=false)");
        let file = &file;
        asked_of_ec2(
            &mut prices,
            &aws,
            not_asked,
            |region, volume_type| async move { file_storage(file, &region, &volume_type) },
        )
        .await;
        assert_eq!(
            prices.storage(settings[1]),
            Some(Err("EC2 was not asked (--refresh=false)"))
        );
        assert_eq!(
            prices.no_spot_now(settings[0]),
            Some("EC2 was not asked (--refresh=false)")
        );
        assert_eq!(prices.usd_per_hour(settings[1], true), None);
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
        assert_eq!(none.usd_per_hour(aws, false), None);
    }

    #[test]
    fn dollars_read_to_the_cent_or_a_tenth_of_one() {
        assert_eq!(usd(0.0961), "$0.096");
        assert_eq!(usd(12.345), "$12.35");
        assert_eq!(usd(0.0), "$0.000");
    }
}
