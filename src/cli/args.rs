//! The command line as clap reads it: commands, flags, exit codes, and Terraform's one-dash
//! spellings read as long options.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::address::Address;
use crate::plan::Plan;
use crate::planner::Options;
use crate::results::{Baseline, DEFAULT_MIN_EFFECT_PCT, Format};
use crate::state::State;

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
    /// The workspace, for commands that need no plan (destroy, state, results, report,
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
    Validate { plan: PathBuf },
    /// Show what apply would do: tests to run, re-run and terminate
    Plan {
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
        plan: PathBuf,
        /// Do not ask for approval
        #[arg(long)]
        auto_approve: bool,
    },
    /// Print the plan's DAG in Graphviz DOT
    Graph { plan: PathBuf },
    /// Inspect or edit the state file
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Remove a stale state lock left by a run that died
    ForceUnlock {
        /// The lock's ID, as the refusal to take the lock names it
        lock_id: String,
        plan: Option<PathBuf>,
        /// Do not ask for confirmation, and remove a lock whose holder still runs on this host
        #[arg(long)]
        force: bool,
    },
    /// Show the latest results per test and task, list runs, compare with a baseline
    Results(ResultsArgs),
    /// Write a self-contained HTML report with charts of the latest results
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
    },
}

#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// The plan file; it names the workspace and so its state and results
    pub(super) plan: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(super) format: Format,
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
    /// Exit 3 when a metric regressed or went missing against the baseline (the recorded one
    /// unless --compare names another); `=PCT`, if given, is the min effect
    #[arg(long, value_name = "PCT", num_args = 0..=1, require_equals = true, value_parser = min_effect)]
    pub(super) fail_on_regression: Option<Option<f64>>,
    /// Exit 4 when nothing regressed but some comparison is inconclusive (race again)
    #[arg(long)]
    pub(super) fail_on_inconclusive: bool,
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
    target: Vec<Address>,
    /// Run this test again even if its result exists (repeatable)
    #[arg(long, value_name = "ADDR")]
    replace: Vec<Address>,
}

/// Whether to check the plan against the providers' accounts before planning.
#[derive(Args, Debug, Clone, Copy)]
pub struct Refresh {
    /// Check that the AMIs, subnets, security groups and instance types the plan names exist
    /// in the account before planning (`--refresh=false` skips it)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub refresh: bool,
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
    List { plan: Option<PathBuf> },
    /// Show one test's record
    Show {
        address: Address,
        plan: Option<PathBuf>,
    },
    /// Forget a test (its instance, if still running, is not terminated)
    Rm {
        address: Address,
        plan: Option<PathBuf>,
    },
    /// Copy the local state (and results) of a workspace to its S3 backend
    Push {
        plan: Option<PathBuf>,
        /// Replace a remote state of a higher serial (never one of another lineage)
        #[arg(long)]
        force: bool,
    },
    /// Copy a workspace's state (and results) from its S3 backend to this directory
    Pull {
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
            | Command::State { .. } => None,
        }
    }
}

impl Select {
    pub fn is_empty(&self) -> bool {
        self.target.is_empty() && self.replace.is_empty()
    }

    pub fn options(&self, plan: &Plan, state: &State) -> Result<Options> {
        let expand = |addresses: &[Address]| -> Result<Vec<Address>> {
            let mut out = Vec::new();
            for address in addresses {
                let selected = select(address, plan, state);
                if selected.is_empty() {
                    bail!("{address} is neither in the plan nor in state");
                }
                out.extend(selected);
            }
            Ok(out)
        };
        Ok(Options {
            targets: expand(&self.target)?,
            replace: expand(&self.replace)?,
        })
    }
}

/// The tests an address selects: the test of that address, or, given the name of a test with
/// variants (`suite.heap` for `suite.heap-4g` and `suite.heap-8g`), all its variants, in the
/// plan or in state. Variants race interleaved on one machine, so they are selected together.
/// The name of a test with a matrix selects its combinations in the plan.
fn select(address: &Address, plan: &Plan, state: &State) -> Vec<Address> {
    if plan.test(address).is_some() || state.tests.contains_key(address) {
        return vec![address.clone()];
    }
    let mut variants: Vec<Address> = plan
        .tests()
        .filter(|t| {
            let variant = t.variant.as_ref().map(|v| v.test.as_str());
            let matrix = t.matrix.as_ref().map(|m| m.test.as_str());
            address.selects(&t.address, variant.into_iter().chain(matrix))
        })
        .map(|t| t.address.clone())
        .chain(
            (state.tests.iter())
                .filter(|(a, r)| address.selects(a, r.variant.as_ref().map(|v| v.test.as_str())))
                .map(|(a, _)| a.clone()),
        )
        .collect();
    variants.sort();
    variants.dedup();
    variants
}
