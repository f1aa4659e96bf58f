//! What the tests a plan will run may cost: per test and in total, at worst (every race runs
//! its whole `max_runtime`: each race's bound is renewed) and as expected (each race as long
//! as the same test's last attempt took per race, as state recorded it).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::{
    Hourly, Key, MINIMUM_BILLED, PUBLIC_IPV4_USD_PER_HOUR, Price, Priced, Prices, Storage, usd,
};
use crate::address::Address;
use crate::plan::{Plan, Test};
use crate::planner::{Action, Changes};
use crate::state::{State, Step, TestRecord, Transition};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub tests: Vec<TestCost>,
    pub total: Total,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestCost {
    pub address: Address,
    /// The races this apply will run.
    pub races: u32,
    /// What is priced; none for the user's own machines.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Key>,
    /// A test with a cluster on aws: its nodes and load drivers, which `hourly` and the
    /// figures count together (`machine` is the load drivers').
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Topology>,
    /// The instance type's on-demand price; `"own machine"` for the user's own.
    pub price: Listed,
    /// All the machine is charged an hour (a spot test: at most, and as expected now), public
    /// IPv4 address and root volume included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hourly: Option<Hourly>,
    /// Why there is no price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_price: Option<String>,
    /// The machine's root volume and its price per GB-month.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_volume: Option<Storage>,
    /// Why the root volume is not counted (its size or its price is not known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_root_volume: Option<String>,
    /// Why a spot test's price now is not known: it is expected at its cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_spot_now: Option<String>,
    pub worst_usd: Option<f64>,
    pub expected_usd: Option<f64>,
    /// How long one race took last time, machine time included; none: no earlier run.
    pub last_race_secs: Option<u64>,
}

/// The machines of a test with a cluster on aws.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    pub nodes: u32,
    pub node_instance_type: String,
    pub load_drivers: u32,
}

/// An instance type's listed price, none known, or the user's own machine (in JSON the
/// string `"own machine"`, not a null price).
#[derive(Debug, Clone, PartialEq)]
pub enum Listed {
    Known(Price),
    Unknown,
    OwnMachine,
}

impl Serialize for Listed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Listed::Known(p) => p.serialize(s),
            Listed::Unknown => s.serialize_none(),
            Listed::OwnMachine => s.serialize_str("own machine"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Total {
    /// Over the tests with a price; none when no test has one.
    pub worst_usd: Option<f64>,
    /// Over the tests with a price and an earlier run.
    pub expected_usd: Option<f64>,
    /// aws tests without a price, left out of the totals.
    pub unpriced: usize,
    /// Priced tests without an earlier run, left out of the expected total.
    pub without_history: usize,
    /// Priced tests whose root volume is not counted in their figures.
    pub without_root_volume: usize,
}

/// The estimate of the tests `changes` will run; none when none of them runs on a machine
/// billed by the hour.
pub fn estimate(
    plan: &Plan,
    state: &State,
    changes: &Changes,
    prices: &Prices,
) -> Option<Estimate> {
    let mut sharing: HashMap<(&str, &str), u32> = HashMap::new();
    let mut by_address: HashMap<&Address, &Test, crate::FastHash> = HashMap::default();
    for t in plan.tests() {
        if let Some(v) = &t.variant {
            *sharing.entry((t.address.suite(), &v.test)).or_default() += 1;
        }
        by_address.insert(&t.address, t);
    }
    let mut tests = Vec::new();
    for change in &changes.changes {
        let Some(&test) = by_address.get(&change.address) else {
            continue;
        };
        let record = state.tests.get(&change.address);
        let Some(races) = races_to_run(change.action, test, record, change.config_hash.as_deref())
        else {
            continue;
        };
        let shared =
            (test.variant.as_ref()).map_or(1, |v| sharing[&(test.address.suite(), &*v.test)]);
        let last_race = record.and_then(|r| per_race(&r.history, shared));
        let machine = Key::of(&test.settings);
        let (price, mut no_price) = match prices.at(machine.as_ref()) {
            Priced::Known(p) => (Listed::Known(p.clone()), None),
            Priced::Unknown(why) => (Listed::Unknown, Some(why.to_owned())),
            Priced::OwnMachine => (Listed::OwnMachine, None),
        };
        let cluster = (test.settings.cluster.as_ref())
            .zip(test.settings.node_aws())
            .map(|(c, nodes)| {
                let key = Key {
                    region: nodes.region.clone(),
                    instance_type: nodes.instance_type.clone(),
                };
                if let (None, Priced::Unknown(why)) = (&no_price, prices.at(Some(&key))) {
                    no_price = Some(format!("{} (the nodes): {why}", key.instance_type));
                }
                Topology {
                    nodes: c.nodes.get(),
                    node_instance_type: key.instance_type.to_string(),
                    load_drivers: test.settings.load_drivers.get(),
                }
            });
        let hourly = prices.hourly_all(&test.settings);
        let (root_volume, no_root_volume) = match prices.storage(&test.settings) {
            Some(Ok(s)) => (Some(s.clone()), None),
            Some(Err(why)) => (None, Some(why.to_owned())),
            None => (None, None),
        };
        tests.push(TestCost {
            address: test.address.clone(),
            races,
            machine,
            cluster,
            worst_usd: hourly.map(|h| cost(h.total(), test.settings.max_runtime, races)),
            expected_usd: hourly
                .zip(last_race)
                .map(|(h, d)| cost(h.expected(), d, races)),
            last_race_secs: last_race.map(|d| d.as_secs()),
            price,
            // A spot test priced by its max_price has no on-demand price to stand for.
            no_price: no_price.filter(|_| hourly.is_none()),
            root_volume,
            no_root_volume: no_root_volume.filter(|_| hourly.is_some()),
            no_spot_now: prices.no_spot_now(&test.settings).map(str::to_owned),
            hourly,
        });
    }
    if tests.iter().all(|t| t.machine.is_none()) {
        return None;
    }
    let sum = |f: fn(&TestCost) -> Option<f64>| {
        let known: Vec<f64> = tests.iter().filter_map(f).collect();
        (!known.is_empty()).then(|| micro(known.iter().sum()))
    };
    let total = Total {
        worst_usd: sum(|t| t.worst_usd),
        expected_usd: sum(|t| t.expected_usd),
        unpriced: tests.iter().filter(|t| t.no_price.is_some()).count(),
        without_history: (tests.iter())
            .filter(|t| t.hourly.is_some() && t.last_race_secs.is_none())
            .count(),
        without_root_volume: tests.iter().filter(|t| t.no_root_volume.is_some()).count(),
    };
    Some(Estimate { tests, total })
}

/// What `races` races of `each` cost at `usd_per_hour`, billed per second and a minute at
/// least, to a millionth of a dollar (JSON readers get `0.576`, not `0.5760000000000001`).
pub fn cost(usd_per_hour: f64, each: Duration, races: u32) -> f64 {
    let secs = (each.as_secs_f64() * f64::from(races)).max(MINIMUM_BILLED.as_secs_f64());
    micro(usd_per_hour * secs / 3600.0)
}

fn micro(usd: f64) -> f64 {
    (usd * 1e6).round() / 1e6
}

/// The races an apply runs for a test: those missing from the ones recorded for its
/// configuration. None for a test that leaves the plan.
fn races_to_run(
    action: Action,
    test: &Test,
    record: Option<&TestRecord>,
    config_hash: Option<&str>,
) -> Option<u32> {
    let wanted = test.repeat.count.get();
    match (action, record) {
        (Action::Terminate, _) => None,
        // The races of this configuration that finished are kept (a failed one is none).
        (Action::Run | Action::Resume { .. }, Some(r)) if Some(&*r.config_hash) == config_hash => {
            Some(
                wanted
                    .max(r.repetition())
                    .saturating_sub(r.finished_repetitions())
                    .max(1),
            )
        }
        _ => Some(wanted),
    }
}

/// How long one race of the last attempt took, from its launch to its release, its machine's
/// boot and install included: the history's last `launching` to the `terminating` or
/// `completed` after it, over the races between. A variant's machine raced the other variants
/// too (`shared` in all), so its share is theirs divided among them. None without such an
/// attempt.
pub fn per_race(history: &[Transition], shared: u32) -> Option<Duration> {
    let start = history
        .iter()
        .rposition(|t| t.status == Step::Launching.name())?;
    let rest = &history[start + 1..];
    let end = rest
        .iter()
        .position(|t| t.status == Step::Terminating.name() || t.status == "completed")?;
    let races = rest[..end]
        .iter()
        .filter(|t| t.status == Step::Racing.name())
        .count();
    let races = u32::try_from(races).ok().filter(|&n| n > 0)?;
    let took = rest[end].at.duration_since(history[start].at);
    let took = Duration::try_from(took).ok()?;
    Some(took / (races * shared.max(1)))
}

/// One aligned line per test and a total line; where a price came from, or why there is none,
/// once below as a numbered note, since many tests share one.
pub fn render(e: &Estimate) -> String {
    let mut notes: Vec<String> = Vec::new();
    let mut mark = |note: String| {
        let n = match notes.iter().position(|seen| *seen == note) {
            Some(i) => i + 1,
            None => {
                notes.push(note);
                notes.len()
            }
        };
        format!("[{n}]")
    };
    let mut cells = Cells::default();
    // Neighbouring tests mostly share a machine and its price, so the cells and notes that
    // say so are written once per run of them rather than once per test.
    let mut last: Option<(MachineOf<'_>, [String; 3])> = None;
    for t in &e.tests {
        let of = machine_of(t);
        let [what, price, note] = match &mut last {
            Some((seen, cells)) if *seen == of => cells,
            slot => &mut slot.insert((of, machine_cells(t, &mut mark))).1,
        };
        cells.write(format_args!("{}", t.address));
        cells.push(what);
        cells.push(price);
        let plural = if t.races == 1 { "" } else { "s" };
        cells.write(format_args!("{} race{plural}", t.races));
        match &t.hourly {
            Some(_) => {
                match t.worst_usd {
                    Some(w) => cells.write(format_args!("worst {}", usd(w))),
                    None => cells.push(""),
                }
                match t.expected_usd {
                    Some(x) => cells.write(format_args!("expected {}", usd(x))),
                    None => cells.push("expected ? (no earlier run)"),
                }
            }
            None => {
                cells.push("");
                cells.push("");
            }
        }
        cells.push(note);
    }
    let total = &e.total;
    let mut left_out = Vec::new();
    if total.unpriced > 0 {
        left_out.push(format!("{} without a price", total.unpriced));
    }
    if total.without_history > 0 {
        left_out.push(format!("{} without an earlier run", total.without_history));
    }
    if total.without_root_volume > 0 {
        let n = total.without_root_volume;
        left_out.push(format!("{n} root volume{}", if n == 1 { "" } else { "s" }));
    }
    for cell in ["total", "", "", ""] {
        cells.push(cell);
    }
    match total.worst_usd {
        Some(w) => cells.write(format_args!("worst {}", usd(w))),
        None => cells.push("worst ?"),
    }
    match total.expected_usd {
        Some(x) => cells.write(format_args!("expected {}", usd(x))),
        None => cells.push("expected ?"),
    }
    if left_out.is_empty() {
        cells.push("");
    } else {
        cells.write(format_args!("(not counted: {})", left_out.join(", ")));
    }
    let mut widths = [0usize; ROW];
    for row in cells.rows() {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let heading = "Cost estimate, USD billed per second, a minute at least (worst: every race runs its max_runtime; expected: as long as last time):\n";
    let line: usize = widths.iter().filter(|w| **w > 0).map(|w| w + 2).sum();
    let mut out = String::with_capacity(heading.len() + cells.ends.len() / ROW * (line + 1));
    out.push_str(heading);
    for row in cells.rows() {
        let start = out.len();
        for (cell, w) in row.into_iter().zip(widths) {
            if w > 0 {
                // As `{cell:<w$}` pads, without the formatting machinery: thousands of rows.
                out.push_str("  ");
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
        }
        out.truncate(out[start..].trim_end().len() + start);
        out.push('\n');
    }
    for (i, note) in notes.iter().enumerate() {
        let _ = writeln!(out, "  [{}] {note}", i + 1);
    }
    out
}

/// Cells in a row of the estimate's table.
const ROW: usize = 7;

/// The estimate table's cells, [`ROW`] a row, one after another in one text: a row for each of
/// thousands of tests costs no allocation of its own.
#[derive(Default)]
struct Cells {
    text: String,
    /// Where each cell ends in `text`.
    ends: Vec<usize>,
}

impl Cells {
    fn push(&mut self, cell: &str) {
        self.text.push_str(cell);
        self.ends.push(self.text.len());
    }

    fn write(&mut self, cell: std::fmt::Arguments<'_>) {
        let _ = self.text.write_fmt(cell);
        self.ends.push(self.text.len());
    }

    /// The rows, each of its [`ROW`] cells (every row pushes that many).
    fn rows(&self) -> impl Iterator<Item = [&str; ROW]> {
        let cell = |i: usize| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.text[start..self.ends[i]]
        };
        (0..self.ends.len() / ROW).map(move |r| std::array::from_fn(|c| cell(r * ROW + c)))
    }
}

/// What a test's machine and price cells and its note are made of.
type MachineOf<'e> = (
    Option<&'e Key>,
    Option<&'e Topology>,
    &'e Listed,
    Option<&'e Hourly>,
    Option<&'e str>,
    Option<&'e str>,
    Option<&'e Storage>,
    Option<&'e str>,
);

fn machine_of(t: &TestCost) -> MachineOf<'_> {
    (
        t.machine.as_ref(),
        t.cluster.as_ref(),
        &t.price,
        t.hourly.as_ref(),
        t.no_price.as_deref(),
        t.no_spot_now.as_deref(),
        t.root_volume.as_ref(),
        t.no_root_volume.as_deref(),
    )
}

/// A test's machine, its price an hour, and the marks of the notes that say where the price
/// came from (`mark` numbers a note, once for all the tests it is about).
fn machine_cells(t: &TestCost, mark: &mut impl FnMut(String) -> String) -> [String; 3] {
    let what = match (&t.machine, &t.cluster) {
        (None, _) => "own machine".into(),
        (Some(key), None) => key.to_string(),
        (Some(key), Some(c)) => format!(
            "{} × {} + {} × {key}",
            c.nodes, c.node_instance_type, c.load_drivers
        ),
    };
    let (price, note) = match (&t.hourly, &t.price, &t.no_price) {
        (Some(h), listed, _) => {
            let mut note = match listed {
                Listed::Known(p) => mark(match p.as_of {
                    Some(d) => format!("{}, as of {d}", p.source),
                    None => p.source.to_string(),
                }),
                Listed::Unknown | Listed::OwnMachine => String::new(),
            };
            if h.spot {
                note.push_str(&mark(match &t.no_spot_now {
                    None => "spot: expected at its price now (DescribeSpotPriceHistory, the region's cheapest zone), worst at its max_price, else the on-demand price (EC2's cap)".into(),
                    Some(why) => format!("spot: at most its max_price, else the on-demand price (EC2's cap), and expected so: its price now is not known: {why}"),
                }));
            }
            if h.public_ipv4_usd > 0.0 {
                note.push_str(&mark(format!(
                    "with a public IPv4 address, {}/h",
                    usd(PUBLIC_IPV4_USD_PER_HOUR)
                )));
            }
            match (&t.root_volume, &t.no_root_volume) {
                (Some(v), _) => note.push_str(&mark(format!(
                    "with its root volume, {} GiB {} at ${}/GB-month ({}{})",
                    v.volume.gib,
                    v.volume.volume_type,
                    v.usd_per_gb_month,
                    v.source,
                    v.as_of.map_or(String::new(), |d| format!(", as of {d}"))
                ))),
                (None, Some(why)) => {
                    note.push_str(&mark(format!("root volume not counted: {why}")))
                }
                (None, None) => {}
            }
            let price = match h.spot_now_usd {
                Some(_) => format!("spot {}/h, at most {}/h", usd(h.expected()), usd(h.total())),
                None if h.spot => format!("spot {}/h", usd(h.total())),
                None => format!("{}/h", usd(h.total())),
            };
            (price, note)
        }
        (None, _, Some(why)) => ("no price".into(), mark(format!("no price: {why}"))),
        (None, Listed::OwnMachine, None) => ("not billed".into(), String::new()),
        (None, _, None) => ("no price".into(), String::new()),
    };
    [what, price, note]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(steps: &[(&str, &str)]) -> Vec<Transition> {
        steps
            .iter()
            .map(|(status, at)| Transition {
                status: (*status).into(),
                at: at.parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn prices_from_the_api_name_the_day_they_were_fetched() {
        let test = |name: &str, price: Option<Price>, no_price: Option<&str>| TestCost {
            address: format!("s.{name}").parse().unwrap(),
            races: 2,
            machine: Some(Key {
                region: "eu-west-1".into(),
                instance_type: "c5.large".into(),
            }),
            cluster: None,
            worst_usd: price.as_ref().map(|p| p.usd_per_hour * 6.0),
            expected_usd: price.as_ref().map(|p| p.usd_per_hour),
            last_race_secs: price.as_ref().map(|_| 1800),
            hourly: price.as_ref().map(|p| Hourly {
                instance_usd: p.usd_per_hour,
                spot: name == "b",
                spot_now_usd: None,
                public_ipv4_usd: if name == "a" { 0.0 } else { 0.005 },
                root_volume_usd: None,
            }),
            price: price.map_or(Listed::Unknown, Listed::Known),
            no_price: no_price.map(str::to_owned),
            root_volume: None,
            no_root_volume: None,
            no_spot_now: (name == "b").then(|| "EC2 was not asked (--refresh=false)".into()),
        };
        let fetched = |cached| Price {
            usd_per_hour: 0.096,
            source: super::super::Source::PriceListApi { cached },
            as_of: Some(jiff::civil::date(2026, 11, 28)),
        };
        let mut own = test("d", None, None);
        (own.machine, own.price) = (None, Listed::OwnMachine);
        let e = Estimate {
            tests: vec![
                test("a", Some(fetched(true)), None),
                test("b", Some(fetched(false)), None),
                test("c", None, Some("the Price List API failed: HTTP 404")),
                own,
            ],
            total: Total {
                worst_usd: Some(1.152),
                expected_usd: Some(0.192),
                unpriced: 1,
                without_history: 0,
                without_root_volume: 0,
            },
        };
        insta::assert_snapshot!(render(&e), @r"
        Cost estimate, USD billed per second, a minute at least (worst: every race runs its max_runtime; expected: as long as last time):
          s.a    c5.large in eu-west-1  $0.096/h       2 races  worst $0.576  expected $0.096  [1]
          s.b    c5.large in eu-west-1  spot $0.101/h  2 races  worst $0.576  expected $0.096  [2][3][4]
          s.c    c5.large in eu-west-1  no price       2 races                                 [5]
          s.d    own machine            not billed     2 races
          total                                                 worst $1.15   expected $0.192  (not counted: 1 without a price)
          [1] Price List API, cached, as of 2026-11-28
          [2] Price List API, as of 2026-11-28
          [3] spot: at most its max_price, else the on-demand price (EC2's cap), and expected so: its price now is not known: EC2 was not asked (--refresh=false)
          [4] with a public IPv4 address, $0.005/h
          [5] no price: the Price List API failed: HTTP 404
        ");
    }

    /// What `plan` shows of tests/fixtures/plans/costs.toml when EC2 names each machine's root
    /// volume and the spot price now, priced by the tests' price file: text and JSON.
    #[tokio::test]
    async fn root_volumes_and_spot_prices_now_are_in_the_estimate() {
        use super::super::tests::{Answers, gib, priced};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let plan = Plan::load(&root.join("tests/fixtures/plans/costs.toml")).unwrap();
        let file = super::super::PriceFile::parse(
            std::path::Path::new("prices.toml"),
            &std::fs::read_to_string(root.join("tests/fixtures/prices/prices.toml")).unwrap(),
        )
        .unwrap();
        let ec2 = Answers {
            volumes: [("ami-0123456789abcdef0", gib(30, "gp3"))].into(),
            spot: [("m5.large", 0.0391)].into(),
            asked: Default::default(),
        };
        let prices = priced(&plan, &file, &ec2).await;
        let changes = Changes {
            changes: (plan.tests())
                .map(|t| crate::planner::Change {
                    address: t.address.clone(),
                    action: Action::Run,
                    reason: "new".into(),
                    config_hash: None,
                    diff: None,
                    instance: None,
                    matrix: None,
                    cluster: None,
                    expired: None,
                })
                .collect(),
            ..Changes::default()
        };
        let e = estimate(&plan, &State::new("costs"), &changes, &prices).unwrap();
        insta::assert_snapshot!(render(&e));
        insta::assert_json_snapshot!(e);
    }

    #[test]
    fn the_worst_case_is_every_race_at_its_max_runtime() {
        let three_hours = Duration::from_secs(3 * 3600);
        assert!((cost(0.096, three_hours, 1) - 0.288).abs() < 1e-9);
        assert!((cost(0.096, three_hours, 5) - 1.44).abs() < 1e-9);
        // Per second, and a minute at least.
        assert_eq!(cost(0.36, Duration::ZERO, 3), 0.006);
        assert_eq!(cost(0.36, Duration::from_secs(20), 3), 0.006);
        assert_eq!(cost(0.36, Duration::from_secs(30), 3), 0.009);
        assert_eq!(cost(0.192, Duration::from_secs(3 * 3600), 1), 0.576);
    }

    /// A test of five repetitions, and a record of it at `status` with `finished` races.
    fn five_races(status: crate::state::Status, finished: usize) -> (Plan, TestRecord) {
        let plan = Plan::parse(
            std::path::Path::new("p.toml"),
            "version = 1\nname = \"p\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-12345678\"\n\
             instance_type = \"m5.large\"\ntrack = \"geonames\"\nrepetitions = 5\n\
             [[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\n",
        )
        .unwrap();
        let mut record = TestRecord::new(
            "same".into(),
            serde_json::json!({}).into(),
            "esrally race".into(),
            status,
        );
        record.earlier = (0..finished)
            .map(|_| crate::state::Repetition {
                run_id: "r".into(),
                race_id: uuid::Uuid::nil(),
                machine: "i-1".into(),
                zone: None,
                spot: false,
                results: vec![],
            })
            .collect();
        (plan, record)
    }

    #[test]
    fn only_the_missing_races_are_counted() {
        use crate::state::Status;
        let races = |action, status, finished, hash: &str| {
            let (plan, record) = five_races(status, finished);
            let test = plan.tests().next().unwrap();
            races_to_run(action, test, Some(&record), Some(hash))
        };
        // Two finished and the third completed: two to go.
        assert_eq!(races(Action::Run, Status::Completed, 2, "same"), Some(2));
        // A failed third: it races again, with the last two.
        let failed = Status::Failed {
            step: Step::Racing,
            error: "boom".into(),
            log_tail: None,
            logs: None,
        };
        assert_eq!(races(Action::Run, failed.clone(), 2, "same"), Some(3));
        // Another configuration, or a replacement: all five.
        assert_eq!(races(Action::Run, failed, 2, "other"), Some(5));
        assert_eq!(races(Action::Rerun, Status::Completed, 4, "same"), Some(5));
        // Resumed in the fourth: it and the fifth.
        let racing = Status::InProgress { step: Step::Racing };
        assert_eq!(
            races(Action::Resume { step: Step::Racing }, racing, 3, "same"),
            Some(2)
        );
        assert_eq!(races(Action::Terminate, Status::Completed, 0, "same"), None);
        let (plan, _) = five_races(Status::Completed, 0);
        let test = plan.tests().next().unwrap();
        assert_eq!(races_to_run(Action::Run, test, None, None), Some(5));
    }

    #[test]
    fn a_race_takes_the_last_attempts_time_over_its_races() {
        let once = history(&[
            ("launching", "2026-12-01T00:00:00Z"),
            ("failed (racing)", "2026-12-01T00:01:00Z"),
            ("launching", "2026-12-01T01:00:00Z"),
            ("booting", "2026-12-01T01:01:00Z"),
            ("installing", "2026-12-01T01:02:00Z"),
            ("racing", "2026-12-01T01:05:00Z"),
            ("collecting", "2026-12-01T01:25:00Z"),
            ("installing", "2026-12-01T01:26:00Z"),
            ("racing", "2026-12-01T01:27:00Z"),
            ("collecting", "2026-12-01T01:38:00Z"),
            ("terminating", "2026-12-01T01:40:00Z"),
            ("completed", "2026-12-01T01:41:00Z"),
        ]);
        assert_eq!(per_race(&once, 1), Some(Duration::from_secs(20 * 60)));
        // Two variants raced on that machine: half of it is this one's.
        assert_eq!(per_race(&once, 2), Some(Duration::from_secs(10 * 60)));
    }

    #[test]
    fn no_finished_attempt_is_no_earlier_run() {
        assert_eq!(per_race(&[], 1), None);
        let failed = history(&[
            ("launching", "2026-12-01T00:00:00Z"),
            ("racing", "2026-12-01T00:01:00Z"),
            ("failed (racing)", "2026-12-01T00:02:00Z"),
        ]);
        assert_eq!(per_race(&failed, 1), None);
        let never_raced = history(&[
            ("launching", "2026-12-01T00:00:00Z"),
            ("terminating", "2026-12-01T00:02:00Z"),
        ]);
        assert_eq!(per_race(&never_raced, 1), None);
    }
}
