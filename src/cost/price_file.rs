//! The price file a user points at with `--prices`: on-demand hourly prices by region and
//! instance type, and EBS prices per GB-month by region and volume type (what a machine's root
//! volume costs), read instead of asking the Price List API.
//!
//! ```toml
//! [[price]]
//! region = "us-east-1"
//! instance_type = "m5.large"
//! usd_per_hour = 0.096
//! as_of = 2026-11-30        # optional: when the price was read
//!
//! [[ebs]]
//! region = "us-east-1"
//! volume_type = "gp3"
//! usd_per_gb_month = 0.08
//! ```
//!
//! Read through the plan's TOML tree, so a mistake is reported at its line and column like
//! one in a plan.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

use jiff::civil::Date;

use super::Key;
use crate::plan::diag::{PlanErrors, Sink};
use crate::plan::source::{Kind, Node};
use crate::plan::toml_doc;

/// Larger than any price list of instance types a user would write by hand.
const MAX_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PriceFileError {
    #[error("cannot read the price file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the price file {} is larger than {} MiB", path.display(), MAX_BYTES >> 20)]
    TooLarge { path: PathBuf },
    #[error(transparent)]
    Invalid(#[from] PlanErrors),
}

/// One price of the file: dollars an hour (`[[price]]`) or per GB-month (`[[ebs]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub usd: f64,
    pub as_of: Option<Date>,
}

#[derive(Debug, Clone)]
pub struct PriceFile {
    pub path: PathBuf,
    prices: HashMap<Key, Listed>,
    /// By region and volume type.
    storage: HashMap<(String, String), Listed>,
}

/// What a kind of table of the file names its entries by and prices them in.
struct Shape {
    table: &'static str,
    names: [&'static str; 2],
    amount: &'static str,
}

const PRICE: Shape = Shape {
    table: "price",
    names: ["region", "instance_type"],
    amount: "usd_per_hour",
};

const EBS: Shape = Shape {
    table: "ebs",
    names: ["region", "volume_type"],
    amount: "usd_per_gb_month",
};

impl PriceFile {
    pub fn load(path: &Path) -> Result<PriceFile, PriceFileError> {
        let read = |source| PriceFileError::Read {
            path: path.to_owned(),
            source,
        };
        if std::fs::metadata(path).map_err(read)?.len() > MAX_BYTES {
            return Err(PriceFileError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        PriceFile::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<PriceFile, PriceFileError> {
        let mut sink = Sink::new(path, text);
        let mut read = HashMap::new();
        match toml_doc::parse(text) {
            Err(e) => sink.error(&e.span, "", e.message),
            Ok(root) => read_root(&root, text, &mut sink, &mut read),
        }
        // An empty file would leave every instance unpriced, which reads like a mistake in
        // each plan rather than in the file.
        if sink.diagnostics.is_empty() && read.is_empty() {
            sink.error_with_help(
                &(0..0),
                "",
                "the price file prices nothing",
                "write a `[[price]]` table per region and instance type (and `[[ebs]]` for root volumes)",
            );
        }
        if sink.diagnostics.is_empty() {
            let mut prices = HashMap::new();
            let mut storage = HashMap::new();
            for ((table, [region, name]), listed) in read {
                match table {
                    "price" => prices.insert(
                        Key {
                            region: region.into(),
                            instance_type: name.into(),
                        },
                        listed,
                    ),
                    _ => storage.insert((region, name), listed),
                };
            }
            Ok(PriceFile {
                path: path.to_owned(),
                prices,
                storage,
            })
        } else {
            Err(PlanErrors {
                file: path.to_owned(),
                diagnostics: sink.diagnostics,
            }
            .into())
        }
    }

    pub fn get(&self, key: &Key) -> Option<&Listed> {
        self.prices.get(key)
    }

    /// The GB-month price of an EBS volume of `volume_type` in `region`.
    pub fn storage(&self, region: &str, volume_type: &str) -> Option<&Listed> {
        self.storage
            .get(&(region.to_owned(), volume_type.to_owned()))
    }
}

/// An entry as read: its table and the two names it is keyed by.
type Read = HashMap<(&'static str, [String; 2]), Listed>;

fn read_root(root: &Node<'_>, text: &str, sink: &mut Sink<'_>, read: &mut Read) {
    let Kind::Table(entries) = &root.kind else {
        return;
    };
    for entry in entries {
        let Some(shape) = [&PRICE, &EBS].into_iter().find(|s| entry.key == s.table) else {
            sink.error_with_help(
                &entry.key_span,
                &*entry.key,
                "unknown key",
                "a price file holds only `[[price]]` and `[[ebs]]` tables",
            );
            continue;
        };
        let Kind::Array(items) = &entry.value.kind else {
            sink.error(
                &entry.value.span,
                shape.table,
                format!(
                    "expected an array of tables (`[[{}]]`), found {}",
                    shape.table,
                    entry.value.kind.describe()
                ),
            );
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let field = format!("{}[{i}]", shape.table);
            if let Some((names, listed)) = read_price(shape, item, text, &field, sink) {
                match read.entry((shape.table, names)) {
                    Entry::Occupied(e) => {
                        let [region, name] = &e.key().1;
                        sink.error(
                            &item.span,
                            &field,
                            format!("{name} in {region} is priced twice"),
                        )
                    }
                    Entry::Vacant(e) => {
                        e.insert(listed);
                    }
                }
            }
        }
    }
}

/// One `[[price]]` or `[[ebs]]` table, as `shape` says; none when it has a mistake, which is
/// reported.
fn read_price(
    shape: &Shape,
    item: &Node<'_>,
    text: &str,
    field: &str,
    sink: &mut Sink<'_>,
) -> Option<([String; 2], Listed)> {
    let entries = sink.table(item, field)?;
    let before = sink.diagnostics.len();
    let [first, second] = shape.names;
    let (mut names, mut usd, mut as_of): ([Option<String>; 2], _, _) = ([None, None], None, None);
    for e in entries {
        let at = format!("{field}.{}", e.key);
        let key = &*e.key;
        let named = shape.names.iter().position(|n| *n == key);
        let amount = key == shape.amount;
        match (key, &e.value.kind) {
            (_, Kind::String(s)) if named.is_some() => {
                if let Some((message, help)) = misnamed(key, s) {
                    sink.error_with_help(&e.value.span, &at, message, help);
                }
                names[named.expect("a name")] = Some(s.to_string())
            }
            (_, Kind::Float(v)) if amount && v.is_finite() && *v >= 0.0 => usd = Some(*v),
            // A whole number of dollars is a price too.
            (_, Kind::Integer(v)) if amount && *v >= 0 => usd = Some(*v as f64),
            (_, Kind::Float(_) | Kind::Integer(_)) if amount => sink.error(
                &e.value.span,
                &at,
                "a price is a number of dollars, 0 or more",
            ),
            // A TOML date or a quoted one: the file's own text is the date either way.
            ("as_of", Kind::String(_) | Kind::Other(_)) => {
                let written = text[e.value.span.clone()].trim_matches(['"', '\'']);
                match written.parse::<Date>() {
                    // Past tomorrow in UTC, a day not yet here anywhere on Earth: a typo,
                    // and the price's age would read as negative.
                    Ok(date) if Some(date) > super::today().tomorrow().ok() => sink.error(
                        &e.value.span,
                        &at,
                        format!("{date} is in the future: `as_of` is the day the price was read"),
                    ),
                    Ok(date) => as_of = Some(date),
                    Err(_) => sink.error(
                        &e.value.span,
                        &at,
                        format!("`{written}` is no date (YYYY-MM-DD)"),
                    ),
                }
            }
            (_, other) if named.is_some() => sink.error(
                &e.value.span,
                &at,
                format!("expected a string, found {}", other.describe()),
            ),
            (_, other) if amount => sink.error(
                &e.value.span,
                &at,
                format!("expected a number, found {}", other.describe()),
            ),
            ("as_of", other) => sink.error(
                &e.value.span,
                &at,
                format!("expected a date, found {}", other.describe()),
            ),
            _ => sink.error_with_help(
                &e.key_span,
                &at,
                "unknown key",
                format!(
                    "{} has `{first}`, `{second}`, `{}` and optionally `as_of`",
                    match shape.table {
                        "price" => "a price",
                        _ => "an EBS price",
                    },
                    shape.amount
                ),
            ),
        }
    }
    for (name, missing) in [
        (first, names[0].is_none()),
        (second, names[1].is_none()),
        (
            shape.amount,
            usd.is_none() && sink.diagnostics.len() == before,
        ),
    ] {
        if missing {
            sink.error(&item.span, field, format!("`{name}` is missing"));
        }
    }
    if sink.diagnostics.len() != before {
        return None;
    }
    let [region, name] = names;
    Some(([region?, name?], Listed { usd: usd?, as_of }))
}

/// What is wrong with `value` as the `key` an entry is named by, if anything.
fn misnamed(key: &str, value: &str) -> Option<(String, &'static str)> {
    match key {
        "region" if !is_region(value) => Some((
            format!("`{value}` is not an AWS region"),
            "write a region name, e.g. \"us-east-1\" or \"eu-west-1\"",
        )),
        "instance_type" if !is_instance_type(value) => Some((
            format!("`{value}` is not an instance type"),
            "write family.size, e.g. \"m5.large\" or \"c6gd.2xlarge\"",
        )),
        _ => None,
    }
}

/// An AWS region name as plans accept it: `us-east-1`, `us-gov-west-1`.
fn is_region(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let (last, words) = parts.split_last().expect("split yields one part at least");
    parts.len() >= 3
        && parts[0].len() == 2
        && words
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && !last.is_empty()
        && last.chars().all(|c| c.is_ascii_digit())
}

/// An EC2 instance type's shape, `family.size`: `m5.large`, `u-6tb1.metal`, `c7i.metal-48xl`.
fn is_instance_type(text: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    text.split_once('.')
        .is_some_and(|(family, size)| part(family) && part(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PriceFile, String> {
        PriceFile::parse(Path::new("prices.toml"), text).map_err(|e| e.to_string())
    }

    fn key(region: &str, instance_type: &str) -> Key {
        Key {
            region: region.into(),
            instance_type: instance_type.into(),
        }
    }

    #[test]
    fn prices_are_read_with_their_date() {
        let file = parse(
            r#"
[[price]]
region = "us-east-1"
instance_type = "m5.large"
usd_per_hour = 0.096
as_of = 2026-11-30

[[price]]
region = "eu-west-1"
instance_type = "m5.large"
usd_per_hour = 1
as_of = "2026-11-29"
"#,
        )
        .unwrap();
        assert_eq!(
            file.get(&key("us-east-1", "m5.large")),
            Some(&Listed {
                usd: 0.096,
                as_of: Some(jiff::civil::date(2026, 11, 30)),
            })
        );
        assert_eq!(
            file.get(&key("eu-west-1", "m5.large")).unwrap().as_of,
            Some(jiff::civil::date(2026, 11, 29))
        );
        assert_eq!(file.get(&key("us-east-1", "m5.xlarge")), None);
    }

    #[test]
    fn every_mistake_is_named_at_its_line() {
        let err = parse(
            r#"[[price]]
region = "us-east-1"
instance_type = "m5.large"
usd_per_hour = -0.5

[[price]]
region = "us-east-1"
usd_per_hour = "cheap"
as_of = "yesterday"
colour = "blue"

[[price]]
region = "us-east-1"
instance_type = "m5.large"
usd_per_hour = 0.1

[[price]]
region = "us-east-1"
instance_type = "m5.large"
usd_per_hour = 0.2

[other]
"#,
        )
        .unwrap_err();
        insta::assert_snapshot!(err, @r"
        prices.toml:4:16: price[0].usd_per_hour: a price is a number of dollars, 0 or more
        prices.toml:8:16: price[1].usd_per_hour: expected a number, found a string
        prices.toml:9:9: price[1].as_of: `yesterday` is no date (YYYY-MM-DD)
        prices.toml:10:1: price[1].colour: unknown key
          help: a price has `region`, `instance_type`, `usd_per_hour` and optionally `as_of`
        prices.toml:6:1: price[1]: `instance_type` is missing
        prices.toml:17:1: price[3]: m5.large in us-east-1 is priced twice
        prices.toml:22:2: other: unknown key
          help: a price file holds only `[[price]]` and `[[ebs]]` tables
        prices.toml has 7 problems
        ");
    }

    #[test]
    fn syntax_errors_and_unreadable_files_are_refused() {
        let err = parse("[[price]\nregion = \"x\"\n").unwrap_err();
        assert!(err.starts_with("prices.toml:1:"), "{err}");
        let err = parse("price = 3\n").unwrap_err();
        assert!(err.contains("expected an array of tables"), "{err}");
        let err = parse("price = [3]\n").unwrap_err();
        assert!(
            err.contains("price[0]: expected a table, found an integer"),
            "{err}"
        );
        let err =
            parse("[[price]]\nregion = 1\ninstance_type = \"a\"\nusd_per_hour = 1\nas_of = 3\n")
                .unwrap_err();
        assert!(
            err.contains("price[0].region: expected a string, found an integer"),
            "{err}"
        );
        assert!(
            err.contains("price[0].as_of: expected a date, found an integer"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = PriceFile::load(&dir.path().join("none.toml")).unwrap_err();
        assert!(
            err.to_string().contains("cannot read the price file"),
            "{err}"
        );
        let big = dir.path().join("big.toml");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_BYTES + 1)
            .unwrap();
        let err = PriceFile::load(&big).unwrap_err();
        assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
    }
    #[test]
    fn regions_instance_types_and_dates_are_checked_like_a_plan() {
        let err = parse(
            r#"[[price]]
region = "us-est"
instance_type = "m5large"
usd_per_hour = 0.1
as_of = 2999-01-01

[[price]]
region = "eu-west-1"
instance_type = "M5.large"
usd_per_hour = 0.1

[[ebs]]
region = "useast1"
volume_type = "gp3"
usd_per_gb_month = 0.08
"#,
        )
        .unwrap_err();
        insta::assert_snapshot!(err, @r#"
        prices.toml:2:10: price[0].region: `us-est` is not an AWS region
          help: write a region name, e.g. "us-east-1" or "eu-west-1"
        prices.toml:3:17: price[0].instance_type: `m5large` is not an instance type
          help: write family.size, e.g. "m5.large" or "c6gd.2xlarge"
        prices.toml:5:9: price[0].as_of: 2999-01-01 is in the future: `as_of` is the day the price was read
        prices.toml:9:17: price[1].instance_type: `M5.large` is not an instance type
          help: write family.size, e.g. "m5.large" or "c6gd.2xlarge"
        prices.toml:13:10: ebs[0].region: `useast1` is not an AWS region
          help: write a region name, e.g. "us-east-1" or "eu-west-1"
        prices.toml has 5 problems
        "#);
        for good in ["us-east-1", "us-gov-west-1", "ap-southeast-4"] {
            assert!(is_region(good), "{good}");
        }
        for good in [
            "m5.large",
            "u-6tb1.metal",
            "c7i.metal-48xl",
            "mac2-m2pro.metal",
        ] {
            assert!(is_instance_type(good), "{good}");
        }
        let today = super::super::today();
        let file = parse(&format!(
            "[[price]]\nregion = \"us-east-1\"\ninstance_type = \"m5.large\"\nusd_per_hour = 0.1\nas_of = {today}\n"
        ))
        .unwrap();
        assert_eq!(
            file.get(&key("us-east-1", "m5.large")).unwrap().as_of,
            Some(today)
        );
    }

    #[test]
    fn an_empty_price_file_is_refused() {
        insta::assert_snapshot!(parse("").unwrap_err(), @r"
        prices.toml:1:1: the price file prices nothing
          help: write a `[[price]]` table per region and instance type (and `[[ebs]]` for root volumes)
        prices.toml has 1 problem
        ");
        for text in ["# prices to come\n", "price = []\n"] {
            assert_eq!(parse(text).unwrap_err(), parse("").unwrap_err(), "{text}");
        }
    }
}
