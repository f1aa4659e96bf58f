//! The command line as clap reads it: commands, flags, exit codes, and Terraform's one-dash
//! spellings read as long options.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::address::Address;
use crate::history::changepoints::Settings;
use crate::results::metrics::Metric;
use crate::results::{Baseline, DEFAULT_MIN_EFFECT_PCT, Format, Output};

/// Exit code of every error that is not one of the others below.
pub const EXIT_ERROR: u8 = 1;

/// Exit code of `plan --detailed-exitcode` when there are changes.
pub const EXIT_CHANGES: u8 = 2;

/// Exit code of `results --fail-on-regression` when a metric regressed or went missing.
pub const EXIT_REGRESSION: u8 = 3;

/// Exit code of `results --fail-on-inconclusive` when nothing regressed but some comparison is
/// inconclusive: a CI job can race again rather than fail.
pub const EXIT_INCONCLUSIVE: u8 = 4;

/// Exit code of a command line that cannot be parsed (sysexits' EX_USAGE), apart from 2, which
/// `plan --detailed-exitcode` gives to "changes present".
pub const EXIT_USAGE: u8 = 64;

/// Exit code after Ctrl-C, as shells report SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

const EXIT_CODES_HELP: &str = "Exit codes:
  0    success (plan --detailed-exitcode: no changes)
  1    error (the message says what and where), a failed test, a refused or cancelled apply
  2    plan --detailed-exitcode: changes present
  3    results --fail-on-regression: a metric regressed past the min effect, or went missing
  4    results --fail-on-inconclusive: nothing regressed, but some comparison is inconclusive
  64   usage error: the command line cannot be parsed
  130  interrupted (Ctrl-C)";

/// Long options that Terraform users type with one dash (`-out=FILE`, `-auto-approve`): read
/// as their `--` forms, never as a short option followed by a value (`-o ut=FILE`).
const TERRAFORM_SPELLINGS: &[&str] = &[
    "auto-approve",
    "detailed-exitcode",
    "json",
    "no-color",
    "out",
    "parallelism",
    "refresh",
    "replace",
    "state",
    "target",
];

/// The arguments with Terraform's one-dash long options turned into rallyctl's two-dash ones.
pub fn normalize_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut options = true;
    for arg in args {
        if options && arg == "--" {
            options = false;
        }
        let long = arg.to_str().and_then(|a| {
            let rest = a.strip_prefix('-').filter(|r| !r.starts_with('-'))?;
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            (options && TERRAFORM_SPELLINGS.contains(&name)).then(|| format!("-{a}"))
        });
        out.push(long.map_or(arg, Into::into));
    }
    out
}

/// The global flags a command has no use for, hidden from its `--help`: `--json` where it is
/// refused ([`Command::without_json`]), where the state is (`--state`, `--workspace`,
/// `--backend`) where no state is read, `--workspace` where the plan names the workspace.
const UNUSED: &[(&str, &[&str])] = &[
    ("validate", &["state", "workspace", "backend"]),
    ("graph", &["state", "workspace", "backend", "json"]),
    ("plan", &["workspace"]),
    ("apply", &["workspace", "json"]),
    ("bake", &["workspace", "json"]),
    ("destroy", &["json"]),
    ("report", &["json"]),
    ("force-unlock", &["json"]),
    ("state rm", &["json"]),
    ("state push", &["json"]),
    ("state pull", &["json"]),
];

/// Parses the command line as [`Cli`] does, with each command's `--help` showing only the
/// global flags it reads.
pub fn parse(args: &[std::ffi::OsString]) -> Result<Cli, clap::Error> {
    let mut cli = Cli::command();
    let global: Vec<clap::Arg> = cli.get_arguments().cloned().collect();
    hide_unused(&mut cli, "", &global);
    let mut matches = cli.try_get_matches_from(args)?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// Gives each command in [`UNUSED`] hidden copies of the global flags it does not read: clap
/// then propagates the global ones only where no flag of that name is.
fn hide_unused(command: &mut clap::Command, path: &str, global: &[clap::Arg]) {
    for sub in command.get_subcommands_mut() {
        let name = match path {
            "" => sub.get_name().to_owned(),
            path => format!("{path} {}", sub.get_name()),
        };
        hide_unused(sub, &name, global);
        let unused = UNUSED.iter().find(|(n, _)| *n == name);
        for id in unused.map_or(&[][..], |(_, ids)| ids) {
            let arg = (global.iter())
                .find(|a| a.get_id() == id)
                .expect("UNUSED names global flags");
            *sub = std::mem::take(sub).arg(arg.clone().hide(true));
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "rallyctl",
    version,
    about = "Plan and apply fleets of Elasticsearch Rally benchmarks on EC2, your own hosts or this machine",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
    #[command(flatten)]
    pub(super) global: Global,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// State file (default: state/<plan name>.state.json)
    #[arg(long, global = true, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// The workspace, for commands that need no plan (destroy, state, results, history, report,
    /// force-unlock): its state is state/<NAME>.state.json
    #[arg(long, global = true, value_name = "NAME")]
    pub workspace: Option<String>,
    /// Where state and results live: s3://BUCKET/PREFIX, or local (this directory); wins over
    /// the plan's [backend]
    #[arg(long, global = true, value_name = "URL", env = "RALLYCTL_BACKEND", value_parser = parse_backend)]
    pub backend: Option<BackendArg>,
    /// Never colour the output (NO_COLOR in the environment does the same)
    #[arg(long, global = true)]
    pub no_color: bool,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    pub json: bool,
    /// More detail in logs
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `--backend`: local files, or an S3 bucket and prefix.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendArg {
    Local,
    S3(crate::plan::S3Config),
}

fn parse_backend(text: &str) -> Result<BackendArg, String> {
    match text {
        "local" => Ok(BackendArg::Local),
        url => crate::plan::S3Config::from_url(url).map(BackendArg::S3),
    }
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Check a plan file and report every problem with file:line:column
    Validate {
        /// The plan file (TOML, or JSON)
        plan: PathBuf,
    },
    /// Show what apply would do: tests to run, re-run and terminate
    Plan {
        /// The plan file (TOML, or JSON)
        plan: PathBuf,
        /// Save the plan to FILE for a later `apply FILE`
        #[arg(long = "out", short = 'o', alias = "o", value_name = "FILE")]
        out: Option<PathBuf>,
        /// Exit 0 with no changes, 2 with changes, 1 on error
        #[arg(long)]
        detailed_exitcode: bool,
        /// The `--parallelism` apply will run with, to check against the account's vCPU quota
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
        parallelism: u16,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        refresh: Refresh,
        #[command(flatten)]
        prices: Prices,
    },
    /// Run what the plan says: get a machine, install, race, collect, give the machine back
    Apply {
        /// A plan file, or a plan saved with `plan -out`
        plan: PathBuf,
        /// Do not ask for approval
        #[arg(long)]
        auto_approve: bool,
        /// At most this many tests at once
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
        parallelism: u16,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        refresh: Refresh,
        #[command(flatten)]
        prices: Prices,
        #[command(flatten)]
        notify: Notify,
    },
    /// Give back everything the workspace holds: terminate its instances (also leaked ones
    /// found by tag), stop its races on hosts and end their leases
    Destroy {
        /// The plan file: only its name is needed (state says what runs where); where it is
        /// valid, leaked instances are also looked for in its regions
        plan: Option<PathBuf>,
        /// Do not ask for approval
        #[arg(long)]
        auto_approve: bool,
        /// Also deregister the workspace's baked images and delete their snapshots
        #[arg(long)]
        images: bool,
    },
    /// Make the images the plan's `ami = "baked"` tests launch from: an instance per image
    /// installs what they need, is imaged, then terminated
    Bake {
        /// The plan file whose `ami = "baked"` tests need the images
        plan: PathBuf,
        /// Do not ask for approval
        #[arg(long)]
        auto_approve: bool,
    },
    /// Print the plan's DAG in Graphviz DOT
    Graph {
        /// The plan file (TOML, or JSON)
        plan: PathBuf,
    },
    /// Inspect or edit the state file
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Remove a stale state lock left by a run that died
    ForceUnlock {
        /// The lock's ID, as the refusal to take the lock names it
        lock_id: String,
        /// The plan file; it names the workspace whose lock it is (else --workspace or --state)
        plan: Option<PathBuf>,
        /// Do not ask for confirmation, and remove a lock whose holder still runs on this host
        #[arg(long)]
        force: bool,
    },
    /// Show the latest results per test and task, list runs, compare with a baseline
    Results(ResultsArgs),
    /// Show each test's, task's and metric's series over the runs that raced it, and where
    /// its level changed
    History(HistoryArgs),
    /// Write a self-contained HTML report with charts of the latest results, and beside it a
    /// trends page (trends.html) when there are two runs or more
    Report {
        /// The plan file; it names the workspace and so its state and results
        plan: Option<PathBuf>,
        /// Where to write the report (default: results/<workspace>/report.html)
        #[arg(long = "out", short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        /// Report the results as of this run instead of the latest
        #[arg(long, value_name = "RUN")]
        run: Option<String>,
        /// Compare with this run (`baseline`: the recorded one, which is also the default)
        #[arg(long, value_name = "RUN")]
        compare: Option<Baseline>,
        /// The smallest relative change worth a verdict, in percent
        #[arg(long = "min-effect", alias = "noise", value_name = "PCT",
              default_value_t = DEFAULT_MIN_EFFECT_PCT, value_parser = min_effect)]
        min_effect: f64,
        /// Compare tests whose cluster differs between the two runs, as `results` does
        #[arg(long)]
        allow_topology_change: bool,
        /// The change points of the trends page, as `history` finds them
        #[command(flatten)]
        thresholds: Thresholds,
    },
}

#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// The plan file; it names the workspace and so its state and results
    pub(super) plan: Option<PathBuf>,
    /// Output format (`junit`: a comparison's verdicts as JUnit XML)
    #[arg(long, value_enum, default_value_t = Output::Text(Format::Table))]
    pub(super) format: Output,
    /// List the runs of the workspace
    #[arg(long, conflicts_with_all = ["run", "compare", "baseline", "fail_on_regression", "fail_on_inconclusive"])]
    pub(super) runs: bool,
    /// Show the results as of this run (each test's newest result at or before it)
    #[arg(long, value_name = "RUN")]
    pub(super) run: Option<String>,
    /// Compare with this run (`baseline`: the recorded one; `latest`: the newest run)
    #[arg(long, value_name = "RUN")]
    pub(super) compare: Option<Baseline>,
    /// Record this run (or `latest`) as the baseline in state, then compare with it
    #[arg(long, value_name = "RUN")]
    pub(super) baseline: Option<String>,
    /// The smallest relative change worth a verdict, in percent [default: 5]: a regression or
    /// improvement needs its whole confidence interval beyond it, "no change" within it
    #[arg(long = "min-effect", alias = "noise", value_name = "PCT", value_parser = min_effect)]
    pub(super) min_effect: Option<f64>,
    /// Compare each test's variants of one run (the latest, or --run): this one against each
    /// other
    #[arg(long, value_name = "VARIANT", conflicts_with_all = ["compare", "baseline", "runs"])]
    pub(super) variants: Option<String>,
    /// With --variants: compare variants whose races were not interleaved (one re-raced alone,
    /// in another run or on another machine); the output says which
    #[arg(long, requires = "variants")]
    pub(super) allow_unpaired: bool,
    /// Compare tests whose cluster differs between the two runs (its nodes, their instance
    /// type, the load drivers), or that raced on a cluster in one run only: the numbers then
    /// measure the change of machines
    #[arg(long, conflicts_with = "variants")]
    pub(super) allow_topology_change: bool,
    /// Exit 3 when a metric regressed or went missing against the baseline (the recorded one
    /// unless --compare names another); `=PCT`, if given, is the min effect
    #[arg(long, value_name = "PCT", num_args = 0..=1, require_equals = true, value_parser = min_effect)]
    pub(super) fail_on_regression: Option<Option<f64>>,
    /// Exit 4 when nothing regressed but some comparison is inconclusive (race again)
    #[arg(long)]
    pub(super) fail_on_inconclusive: bool,
    #[command(flatten)]
    pub(super) notify: Notify,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The plan file; it names the workspace and so its state and results
    pub(super) plan: Option<PathBuf>,
    /// Output format (`text` is `table`; `junit`: a test case per series, a regression a
    /// failure)
    #[arg(long, value_enum, default_value_t = Output::Text(Format::Table))]
    pub(super) format: Output,
    /// Only this test, SUITE.TEST (repeatable, or a comma-separated list)
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub(super) test: Vec<Address>,
    /// Only this task (repeatable, or a comma-separated list)
    #[arg(long, value_name = "TASK", value_delimiter = ',')]
    pub(super) task: Vec<String>,
    /// Only this metric: throughput, latency_p50, ..., error_rate (repeatable, or a
    /// comma-separated list)
    #[arg(long, value_name = "METRIC", value_delimiter = ',', value_parser = metric)]
    pub(super) metric: Vec<Metric>,
    #[command(flatten)]
    pub(super) thresholds: Thresholds,
    /// Also show the series without a change
    #[arg(long)]
    pub(super) all: bool,
    /// Only runs that started at or after this: a date (2026-11-01, from its start), an RFC
    /// 3339 date-time or a span back from now (30d, 12h)
    #[arg(long, value_name = "DATE", value_parser = since)]
    pub(super) since: Option<jiff::Timestamp>,
    /// Only runs that started at or before this: a date (through its end), an RFC 3339
    /// date-time or a span back from now
    #[arg(long, value_name = "DATE", value_parser = until)]
    pub(super) until: Option<jiff::Timestamp>,
    #[command(flatten)]
    pub(super) notify: Notify,
}

fn since(s: &str) -> Result<jiff::Timestamp, String> {
    instant(s, false)
}

fn until(s: &str) -> Result<jiff::Timestamp, String> {
    instant(s, true)
}

/// A point in time in UTC; a date is its first instant, or its last with `end_of_day`.
fn instant(s: &str, end_of_day: bool) -> Result<jiff::Timestamp, String> {
    use jiff::tz::TimeZone;
    let utc = |d: jiff::civil::Date| TimeZone::UTC.to_timestamp(d.into());
    let parsed = if let Ok(t) = s.parse::<jiff::Timestamp>() {
        Ok(t)
    } else if let Ok(d) = s.parse::<jiff::civil::Date>() {
        if end_of_day {
            d.tomorrow()
                .and_then(utc)
                .and_then(|t| t.checked_sub(jiff::SignedDuration::from_nanos(1)))
        } else {
            utc(d)
        }
    } else if let Ok(span) = s.parse::<jiff::Span>() {
        (jiff::Timestamp::now().to_zoned_datetime(TimeZone::UTC))
            .checked_sub(span)
            .map(|z| z.timestamp())
    } else {
        return Err(format!(
            "`{s}` is no date (2026-11-30), RFC 3339 date-time (2026-11-30T02:00:00Z) or span \
             back from now (30d, 12h)"
        ));
    };
    parsed.map_err(|e| format!("`{s}`: {e}"))
}

fn metric(s: &str) -> Result<Metric, String> {
    (Metric::ALL.into_iter())
        .find(|m| m.id() == s)
        .ok_or_else(|| {
            let ids: Vec<&str> = Metric::ALL.iter().map(|m| m.id()).collect();
            format!("`{s}` is no metric; the metrics are {}", ids.join(", "))
        })
}

fn max_pvalue(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!("`{s}` is not a p-value above 0 and at most 1")),
    }
}

fn min_magnitude(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if m >= 0.0 && m.is_finite() => Ok(m),
        _ => Err(format!(
            "`{s}` is not a fraction of 0 or more (0.05 for 5 %)"
        )),
    }
}

impl ResultsArgs {
    /// The min effect: `--fail-on-regression PCT` or `--min-effect PCT` (they must agree when
    /// both are given), else the default.
    pub(super) fn min_effect(&self) -> Result<f64, String> {
        match (self.min_effect, self.fail_on_regression.flatten()) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "--min-effect {a} and --fail-on-regression {b} name two min effects: give one"
            )),
            (a, b) => Ok(b.or(a).unwrap_or(DEFAULT_MIN_EFFECT_PCT)),
        }
    }
}

/// `--fail-on-regression 10`, where clap read `10` as an argument of its own (the flag takes
/// its value only as `--fail-on-regression=10`): the spelling that works.
pub(super) fn equals_hint(args: &[std::ffi::OsString]) -> Option<String> {
    let value = (args.windows(2))
        .find(|w| w[0] == "--fail-on-regression")
        .and_then(|w| w[1].to_str())
        .filter(|v| min_effect(v).is_ok())?;
    Some(format!(
        "the gate's min effect is given with `=`: write --fail-on-regression={value}"
    ))
}

/// A min effect: a percentage strictly between 0 and 100 (no change is ever exactly zero, and
/// a drop of 100 % or more leaves nothing to measure).
fn min_effect(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(v) if v > 0.0 && v < 100.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a percentage between 0 and 100 (both excluded)"
        )),
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct Select {
    /// Only this test (repeatable)
    #[arg(long, value_name = "ADDR")]
    pub target: Vec<Address>,
    /// Run this test again even if its result exists (repeatable)
    #[arg(long, value_name = "ADDR")]
    pub replace: Vec<Address>,
}

/// Whether to check the plan against the providers' accounts before planning.
#[derive(Args, Debug, Clone, Copy)]
pub struct Refresh {
    /// Check that the AMIs, subnets, security groups and instance types the plan names exist
    /// in the account before planning (`--refresh=false` skips it)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub refresh: bool,
}

/// The webhook told of regressions and failed applies. Its URL holds a secret token, so it is
/// best given through the environment (a CI secret), and clap never shows its value.
#[derive(Args, Debug, Clone, Default)]
pub struct Notify {
    /// POST a JSON message (Slack-compatible `text` plus the verdicts, failures or changes) to
    /// this webhook on a regression, a failed test or a new change point; it never changes the
    /// exit code
    #[arg(
        long = "notify",
        env = "RALLYCTL_NOTIFY_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub url: Option<String>,
}

/// When a change in a metric's history counts as a change point (`history`, the report's
/// trends page).
#[derive(Args, Debug, Clone, Copy)]
pub struct Thresholds {
    /// A change counts when its t-test's p-value is below this
    #[arg(long, value_name = "P", default_value_t = Settings::default().max_pvalue,
          value_parser = max_pvalue)]
    pub(super) max_pvalue: f64,
    /// ... and its relative magnitude above this fraction (0.05 for 5 %)
    #[arg(long, value_name = "FRACTION", default_value_t = Settings::default().min_magnitude,
          value_parser = min_magnitude)]
    pub(super) min_magnitude: f64,
}

impl From<Thresholds> for Settings {
    fn from(t: Thresholds) -> Settings {
        Settings {
            max_pvalue: t.max_pvalue,
            min_magnitude: t.min_magnitude,
            ..Settings::default()
        }
    }
}

/// Where on-demand prices come from.
#[derive(Args, Debug, Clone, Default)]
pub struct Prices {
    /// Read on-demand prices from FILE (TOML `[[price]]` tables: region, instance_type,
    /// usd_per_hour, optional as_of) instead of the AWS Price List API
    #[arg(long = "prices", env = "RALLYCTL_PRICES", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(super) enum StateCommand {
    /// List the tests recorded in state with their status
    List {
        /// The plan file; it names the workspace (else --workspace or --state)
        plan: Option<PathBuf>,
    },
    /// Show one test's record
    Show {
        /// The test's address: SUITE.TEST
        address: Address,
        /// The plan file; it names the workspace (else --workspace or --state)
        plan: Option<PathBuf>,
    },
    /// Forget a test (its instance, if still running, is not terminated)
    Rm {
        /// The test's address: SUITE.TEST
        address: Address,
        /// The plan file; it names the workspace (else --workspace or --state)
        plan: Option<PathBuf>,
    },
    /// Copy the local state (and results) of a workspace to its S3 backend
    Push {
        /// The plan file; it names the workspace and its [backend] (else --workspace, --backend)
        plan: Option<PathBuf>,
        /// Replace a remote state of a higher serial (never one of another lineage)
        #[arg(long)]
        force: bool,
    },
    /// Copy a workspace's state (and results) from its S3 backend to this directory
    Pull {
        /// The plan file; it names the workspace and its [backend] (else --workspace, --backend)
        plan: Option<PathBuf>,
        /// Replace a local state of a higher serial (never one of another lineage)
        #[arg(long)]
        force: bool,
    },
}

impl Command {
    /// The name of a command that prints no JSON, refused with `--json` rather than ignoring it.
    pub(super) fn without_json(&self) -> Option<&'static str> {
        match self {
            Command::Apply { .. } => Some("apply"),
            Command::Destroy { .. } => Some("destroy"),
            Command::Bake { .. } => Some("bake"),
            Command::Graph { .. } => Some("graph"),
            Command::Report { .. } => Some("report"),
            Command::ForceUnlock { .. } => Some("force-unlock"),
            Command::State {
                command: StateCommand::Rm { .. },
            } => Some("state rm"),
            Command::State {
                command: StateCommand::Push { .. },
            } => Some("state push"),
            Command::State {
                command: StateCommand::Pull { .. },
            } => Some("state pull"),
            Command::Validate { .. }
            | Command::Plan { .. }
            | Command::Results(_)
            | Command::History(_)
            | Command::State { .. } => None,
        }
    }
}

impl Select {
    pub fn is_empty(&self) -> bool {
        self.target.is_empty() && self.replace.is_empty()
    }
}
