//! The command line: clap definitions, one function per command, exit codes. Thin: every
//! decision lives in the modules it calls.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::address::Address;
use crate::graph::Graph;
use crate::plan::{Plan, PlanErrors};
use crate::planner::{self, Options, SavedPlan};
use crate::results::{self, Baseline, DEFAULT_NOISE_PCT, Format, Query, Workspace};
use crate::state::{self, State};
use crate::templates::Renderer;
use crate::ui;

/// Exit code of every error that is not one of the others below.
pub const EXIT_ERROR: u8 = 1;
/// Exit code of `plan --detailed-exitcode` when there are changes.
pub const EXIT_CHANGES: u8 = 2;
/// Exit code of `results --fail-on-regression` when a metric got worse past the threshold.
pub const EXIT_REGRESSION: u8 = 3;
/// Exit code of a command line that cannot be parsed (sysexits' EX_USAGE), apart from 2, which
/// `plan --detailed-exitcode` gives to "changes present".
pub const EXIT_USAGE: u8 = 64;
/// Exit code after Ctrl-C, as shells report SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

const EXIT_CODES_HELP: &str = "Exit codes:
  0    success (plan --detailed-exitcode: no changes)
  1    error (the message says what and where), a failed test, a refused or cancelled apply
  2    plan --detailed-exitcode: changes present
  3    results --fail-on-regression: a metric got worse past the threshold, or went missing
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
    command: Command,
    #[command(flatten)]
    global: Global,
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

#[derive(Subcommand, Debug)]
enum Command {
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
        #[command(flatten)]
        select: Select,
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
        /// Changes within this many percent are "same within noise"
        #[arg(long, value_name = "PCT", default_value_t = DEFAULT_NOISE_PCT, value_parser = percent)]
        noise: f64,
    },
}

#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// The plan file; it names the workspace and so its state and results
    plan: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// List the runs of the workspace
    #[arg(long, conflicts_with_all = ["run", "compare", "baseline", "fail_on_regression"])]
    runs: bool,
    /// Show the results as of this run (each test's newest result at or before it)
    #[arg(long, value_name = "RUN")]
    run: Option<String>,
    /// Compare with this run (`baseline`: the recorded one; `latest`: the newest run)
    #[arg(long, value_name = "RUN")]
    compare: Option<Baseline>,
    /// Record this run (or `latest`) as the baseline in state, then compare with it
    #[arg(long, value_name = "RUN")]
    baseline: Option<String>,
    /// Changes within this many percent are "same within noise"
    #[arg(long, value_name = "PCT", default_value_t = DEFAULT_NOISE_PCT, value_parser = percent)]
    noise: f64,
    /// Exit 3 when any metric is worse than the baseline by more than PCT percent (or missing)
    #[arg(long, value_name = "PCT", value_parser = percent)]
    fail_on_regression: Option<f64>,
}

fn percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a percentage (a number, 0 or more)")),
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

#[derive(Subcommand, Debug)]
enum StateCommand {
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
}

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    ui::init_colour(cli.global.no_color);
    if cli.global.json
        && let Some(name) = cli.command.without_json()
    {
        eprintln!(
            "{} `rallyctl {name}` has no JSON output; run it without --json",
            console::style("error:").red().bold()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let json = cli.global.json;
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            match err.downcast_ref::<PlanErrors>() {
                // Asked for JSON, a broken plan is reported as `validate --json` reports it.
                Some(plan_errors) if json => println!(
                    "{}",
                    serde_json::json!({"valid": false, "diagnostics": plan_errors.diagnostics})
                ),
                Some(plan_errors) => eprintln!("{plan_errors}"),
                None => eprintln!(
                    "{} {}",
                    console::style("error:").red().bold(),
                    describe(&err)
                ),
            }
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// An error and its causes on one line, each said once: many errors already quote their cause
/// (`cannot read X: Is a directory`), which the chain would otherwise repeat.
fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

impl Command {
    /// The name of a command that prints no JSON, refused with `--json` rather than ignoring it.
    fn without_json(&self) -> Option<&'static str> {
        match self {
            Command::Apply { .. } => Some("apply"),
            Command::Destroy { .. } => Some("destroy"),
            Command::Graph { .. } => Some("graph"),
            Command::Report { .. } => Some("report"),
            Command::ForceUnlock { .. } => Some("force-unlock"),
            Command::State {
                command: StateCommand::Rm { .. },
            } => Some("state rm"),
            Command::Validate { .. }
            | Command::Plan { .. }
            | Command::Results(_)
            | Command::State { .. } => None,
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    let g = cli.global;
    match cli.command {
        Command::Validate { plan } => validate(&plan, &g),
        Command::Plan {
            plan,
            out,
            detailed_exitcode,
            select,
        } => plan_command(&plan, out.as_deref(), detailed_exitcode, &select, &g),
        Command::Apply {
            plan,
            auto_approve,
            parallelism,
            select,
        } => apply(&plan, auto_approve, usize::from(parallelism), &select, &g),
        Command::Destroy { plan, auto_approve } => destroy(plan.as_deref(), auto_approve, &g),
        Command::Graph { plan } => {
            let plan = Plan::load(&plan)?;
            print!("{}", Graph::compile(&plan)?.to_dot());
            Ok(0)
        }
        Command::State { command } => state_command(command, &g),
        Command::Results(args) => results_command(args, &g),
        Command::Report {
            plan,
            out,
            run,
            compare,
            noise,
        } => {
            let ws = open_results(&g, plan.as_deref())?;
            if let Some(out) = &out {
                check_output(out, plan.as_deref(), &ws.state_path)?;
            }
            let path = ws.write_report(run.as_deref(), compare.as_ref(), noise, out.as_deref())?;
            println!("Wrote the report to {}.", path.display());
            Ok(0)
        }
        Command::ForceUnlock {
            lock_id,
            plan,
            force,
        } => force_unlock(&lock_id, plan.as_deref(), force, &g),
    }
}

/// Removes the lock with `lock_id`, after asking; a holder still running on this host is left
/// alone unless `force`.
fn force_unlock(lock_id: &str, plan: Option<&Path>, force: bool, g: &Global) -> Result<u8> {
    let path = target(g, plan)?.state_path;
    let read_err = || format!("cannot read the lock of {}", path.display());
    let holder = match state::lock_state(&path).with_context(read_err)? {
        state::LockState::Unlocked => {
            println!("{} is not locked.", path.display());
            return Ok(0);
        }
        state::LockState::Unreadable if force => "an unreadable lock".to_owned(),
        state::LockState::Unreadable => {
            bail!(
                "the lock of {} names no holder: pass --force to remove it",
                path.display()
            )
        }
        state::LockState::Held(h) => {
            if h.id != lock_id {
                bail!(
                    "the lock of {} has the ID {}, not {lock_id}: it is not the lock you meant",
                    path.display(),
                    h.id
                );
            }
            if state::holder_alive_here(&h) && !force {
                bail!(
                    "the lock of {} is held by `{}`, pid {}, which still runs on this host: stop it, or pass --force",
                    path.display(),
                    h.command,
                    h.pid
                );
            }
            format!("pid {} on {} ({})", h.pid, h.host, h.command)
        }
    };
    if !force {
        let question = format!(
            "Remove the lock of {} held by {holder}? A run that still writes this state would corrupt it.",
            path.display()
        );
        if let Some(code) = refused(&question, "--force", "Force-unlock")? {
            return Ok(code);
        }
    }
    state::remove_lock(&path)
        .with_context(|| format!("cannot remove the lock of {}", path.display()))?;
    println!("Removed the lock of {} held by {holder}.", path.display());
    Ok(0)
}

fn validate(path: &Path, g: &Global) -> Result<u8> {
    match Plan::load(path) {
        Ok(plan) => {
            Graph::compile(&plan)?;
            let tests = plan.tests().count();
            // Each aws test launches an instance of its own; hosts and this machine are reused.
            let instances = plan
                .tests()
                .filter(|t| t.settings.provider() == crate::plan::ProviderKind::Aws)
                .count();
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "name": plan.name, "suites": plan.suites.len(), "tests": tests, "instances": instances})
                );
            } else {
                println!(
                    "{} is valid: {} suite{}, {tests} test{}, {instances} EC2 instance{}.",
                    path.display(),
                    plan.suites.len(),
                    plural(plan.suites.len()),
                    plural(tests),
                    plural(instances)
                );
            }
            Ok(0)
        }
        Err(errors) if g.json => {
            println!(
                "{}",
                serde_json::json!({"valid": false, "diagnostics": errors.diagnostics})
            );
            Ok(1)
        }
        Err(errors) => Err(errors.into()),
    }
}

/// A path as the file system would resolve it, also for a file that does not exist yet.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (parent.canonicalize(), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    }
}

/// Refuses an output path that would overwrite what rallyctl reads or keeps: the plan file, a
/// state file, its backup or lock, anything in a `state/` directory.
fn check_output(out: &Path, plan: Option<&Path>, state_path: &Path) -> Result<()> {
    let target = resolved(out);
    let refuse = |what: String| {
        anyhow::anyhow!(
            "refusing to write {} over {what}; choose another output file",
            out.display()
        )
    };
    if let Some(plan) = plan
        && resolved(plan) == target
    {
        return Err(refuse(format!("the plan file {}", plan.display())));
    }
    for dir in [state_dir(state_path), PathBuf::from(state::DEFAULT_DIR)] {
        let dir = resolved(&dir);
        if dir.file_name() == Some(std::ffi::OsStr::new(state::DEFAULT_DIR))
            && target.starts_with(&dir)
        {
            return Err(refuse(format!(
                "the state directory {}, which holds state files, their backups and locks",
                dir.display()
            )));
        }
    }
    for kept in [
        state_path.to_owned(),
        state::backup_path(state_path),
        state::lock_path(state_path),
    ] {
        if resolved(&kept) == target {
            return Err(refuse(format!("{}", kept.display())));
        }
    }
    if matches!(
        state::load(&target),
        Ok(Some(_)) | Err(state::StateError::Newer { .. })
    ) {
        return Err(refuse("a state file".into()));
    }
    Ok(())
}

/// Asks before `what` acts; the exit code to end with when the answer is not yes (Ctrl-C
/// included, so that locks are released on the way out).
fn refused(question: &str, skip: &str, what: &str) -> Result<Option<u8>> {
    let code = match ui::confirm(question, skip).map_err(anyhow::Error::msg)? {
        ui::Answer::Yes => return Ok(None),
        ui::Answer::No => EXIT_ERROR,
        ui::Answer::Interrupted => EXIT_INTERRUPTED,
    };
    println!("{what} cancelled.");
    Ok(Some(code))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The state file of a workspace: `--state`, else `state/<workspace>.state.json`. Every
/// command finds its state through here.
fn workspace_state(g: &Global, workspace: &str) -> PathBuf {
    g.state
        .clone()
        .unwrap_or_else(|| state::default_path(workspace))
}

/// The workspace of a command that needs no valid plan (destroy, state, results, force-unlock)
/// and where its state is: `--state` and `--workspace` win; of a plan only the name is read.
struct Target {
    state_path: PathBuf,
    /// The workspace named (by `--workspace` or the plan), which the state must belong to.
    workspace: Option<String>,
}

fn target(g: &Global, plan: Option<&Path>) -> Result<Target> {
    let workspace = match (&g.workspace, plan) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(plan)) => Some(Plan::name_of(plan)?),
        (None, None) => None,
    };
    let state_path = match (&g.state, &workspace) {
        (Some(path), _) => path.clone(),
        (None, Some(name)) => state::default_path(name),
        (None, None) => bail!(
            "name the plan file or pass --state PATH (or --workspace NAME) to say which state to use"
        ),
    };
    Ok(Target {
        state_path,
        workspace,
    })
}

impl Target {
    /// The state, checked to belong to the workspace named; `None` when there is none.
    fn load(&self) -> Result<Option<State>> {
        let loaded = state::load(&self.state_path)?;
        match (loaded, &self.workspace) {
            (Some(state), Some(name)) => Ok(Some(
                state::of_workspace(Some(state), &self.state_path, name)?.0,
            )),
            (loaded, _) => Ok(loaded),
        }
    }

    fn load_existing(&self) -> Result<State> {
        self.load()?
            .with_context(|| format!("no state at {}", self.state_path.display()))
    }
}

/// Loads a plan, its state (locked or not) and everything the diff needs.
pub struct Loaded {
    pub plan: Plan,
    pub state_path: PathBuf,
    pub state: State,
    pub state_exists: bool,
    pub artifacts: crate::templates::ArtifactMap,
    pub renderer: Renderer,
}

pub fn load(plan: Plan, g: &Global) -> Result<Loaded> {
    let state_path = workspace_state(g, &plan.name);
    load_at(plan, state_path, None)
}

/// [`load`] of the plan at `path`. State is read while the plan is validated when its path is
/// known first: from `--state`, or from the name at the top of a TOML plan.
pub fn load_file(path: &Path, g: &Global) -> Result<Loaded> {
    let text = Plan::read(path)?;
    let early = (g.state.clone())
        .or_else(|| Plan::peek_name(path, &text).map(|name| state::default_path(&name)));
    std::thread::scope(|scope| {
        let reading = (early.as_ref()).map(|p| (p, scope.spawn(move || state::load(p))));
        let plan = Plan::parse(path, &text)?;
        let state_path = workspace_state(g, &plan.name);
        let read = match reading {
            Some((p, read)) if *p == state_path => {
                Some(read.join().expect("reading state does not panic"))
            }
            _ => None,
        };
        load_at(plan, state_path, read)
    })
}

/// [`load`] with the state at `state_path`; `read` is what [`state::load`] gave for it, if it
/// was read already.
pub fn load_at(
    plan: Plan,
    state_path: PathBuf,
    read: Option<Result<Option<State>, state::StateError>>,
) -> Result<Loaded> {
    let renderer = Renderer::new();
    // Reading state and rendering every test do not depend on each other, and for a plan of
    // thousands of tests each takes a while: they overlap.
    let (state, artifacts) = std::thread::scope(|scope| {
        let state = scope.spawn(|| {
            let loaded = read.unwrap_or_else(|| state::load(&state_path))?;
            state::of_workspace(loaded, &state_path, &plan.name)
        });
        Graph::compile(&plan)?;
        let artifacts = planner::render_all(&plan, &renderer);
        let state = state.join().expect("loading state does not panic");
        anyhow::Ok((state?, artifacts?))
    })?;
    let (state, state_exists) = state;
    Ok(Loaded {
        plan,
        state_path,
        state,
        state_exists,
        artifacts,
        renderer,
    })
}

impl Select {
    pub fn options(&self, plan: &Plan, state: &State) -> Result<Options> {
        for address in self.target.iter().chain(&self.replace) {
            if plan.test(address).is_none() && !state.tests.contains_key(address) {
                bail!("{address} is neither in the plan nor in state");
            }
        }
        Ok(Options {
            targets: self.target.clone(),
            replace: self.replace.clone(),
        })
    }
}

fn plan_command(
    path: &Path,
    out: Option<&Path>,
    detailed: bool,
    select: &Select,
    g: &Global,
) -> Result<u8> {
    let l = load_file(path, g)?;
    let options = select.options(&l.plan, &l.state)?;
    let changes = planner::diff(&l.plan, &l.state, &l.artifacts, &options);
    if g.json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
    } else {
        println!("{}", planner::render(&changes));
    }
    if let Some(out) = out {
        check_output(out, Some(path), &l.state_path)?;
        SavedPlan::new(&l.plan, &l.state, l.state_exists, &changes)
            .write(out)
            .with_context(|| format!("cannot write the saved plan {}", out.display()))?;
        if !g.json {
            println!(
                "\nSaved the plan to {}. Apply exactly it with: rallyctl apply {}",
                out.display(),
                out.display()
            );
        }
    }
    Ok(if detailed && !changes.is_empty() {
        EXIT_CHANGES
    } else {
        0
    })
}

fn state_command(command: StateCommand, g: &Global) -> Result<u8> {
    match command {
        StateCommand::List { plan } => {
            let state = target(g, plan.as_deref())?.load_existing()?;
            if g.json {
                let list: Vec<_> = state
                    .tests
                    .iter()
                    .map(|(a, r)| serde_json::json!({"address": a, "status": r.status.label(), "instance": r.instance.as_ref().map(|i| &i.id)}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for (address, record) in &state.tests {
                    let instance =
                        record
                            .instance
                            .as_ref()
                            .map_or(String::new(), |m| match m.terminated_at {
                                Some(_) => format!("  {} ({})", m.id, m.provider.released()),
                                None => format!("  {}", m.id),
                            });
                    println!("{address}  {}{instance}", record.status.label());
                }
            }
            Ok(0)
        }
        StateCommand::Show { address, plan } => {
            let t = target(g, plan.as_deref())?;
            let state = t.load_existing()?;
            let record = state
                .tests
                .get(&address)
                .with_context(|| format!("{address} is not in {}", t.state_path.display()))?;
            // The recorded settings are raw JSON indented for their place in the state file:
            // as a tree, they indent with the rest.
            let mut shown = serde_json::to_value(record)?;
            shown["settings"] = record.settings.value();
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(0)
        }
        StateCommand::Rm { address, plan } => {
            let t = target(g, plan.as_deref())?;
            let path = &t.state_path;
            let _lock = lock(path, "rallyctl state rm")?;
            let mut state = t.load_existing()?;
            let record = state
                .tests
                .remove(&address)
                .with_context(|| format!("{address} is not in {}", path.display()))?;
            state::save(path, &mut state)?;
            println!("Removed {address} from {}.", path.display());
            if let Some(machine) = record.live_machine() {
                println!(
                    "Its machine {} ({}) may still be running; state no longer knows it.",
                    machine.id, machine.provider
                );
            }
            Ok(0)
        }
    }
}

/// The workspace whose results to read: by the state file, or by the plan's name when there is
/// no state yet (its runs can still be listed from `results/`).
fn open_results(g: &Global, plan: Option<&Path>) -> Result<Workspace> {
    let t = target(g, plan)?;
    if t.state_path.exists() {
        t.load()?;
    }
    Ok(Workspace::open(&t.state_path, t.workspace.as_deref())?)
}

fn results_command(args: ResultsArgs, g: &Global) -> Result<u8> {
    let mut ws = open_results(g, args.plan.as_deref())?;
    let format = if g.json { Format::Json } else { args.format };
    if args.runs {
        print!("{}", results::render::runs(&ws.name, &ws.runs()?, format));
        return Ok(0);
    }
    let mut baseline = args.compare;
    if let Some(run) = &args.baseline {
        let lock = lock(&ws.state_path, "rallyctl results --baseline")?;
        let run = ws.set_baseline(run, &lock)?;
        eprintln!("Recorded {run} as the baseline of workspace `{}`.", ws.name);
        baseline.get_or_insert(Baseline::Recorded);
    }
    let shown = ws.show(&Query {
        format,
        run: args.run,
        baseline,
        noise_pct: args.noise,
        fail_on_regression: args.fail_on_regression,
    })?;
    print!("{}", shown.text);
    match shown.regressions {
        Some(regressions) => {
            eprint!("{regressions}");
            Ok(EXIT_REGRESSION)
        }
        None => Ok(0),
    }
}

/// Locks the state for a command that writes it, saying so when a dead run's lock is replaced.
fn lock(state_path: &Path, command: &str) -> Result<state::Lock> {
    let lock = state::Lock::acquire(state_path, command)?;
    if let Some(dead) = &lock.replaced {
        eprintln!(
            "note: took over the lock of `{}` (pid {}, since {}), which is no longer running",
            dead.command,
            dead.pid,
            dead.since.strftime("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    Ok(lock)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A saved plan is JSON with a `format_version`; anything else is a plan file.
fn read_saved(path: &Path) -> Result<Option<SavedPlan>> {
    let is_saved = serde_json::from_slice::<serde_json::Value>(&Plan::read_bytes(path)?)
        .is_ok_and(|v| v.get("format_version").is_some());
    Ok(if is_saved {
        Some(SavedPlan::read(path)?)
    } else {
        None
    })
}

fn apply(
    path: &Path,
    auto_approve: bool,
    parallelism: usize,
    select: &Select,
    g: &Global,
) -> Result<u8> {
    let saved = read_saved(path)?;
    let plan = match &saved {
        Some(s) => s.plan.clone(),
        None => Plan::load(path)?,
    };
    let state_path = workspace_state(g, &plan.name);
    if plan
        .tests()
        .any(|t| t.settings.provider() == crate::plan::ProviderKind::Aws)
    {
        runtime()?
            .block_on(crate::provider::aws::check_credentials())
            .context(
                "apply needs AWS credentials for its aws tests; nothing was launched or written",
            )?;
    }
    let _lock = lock(&state_path, &format!("rallyctl apply {}", path.display()))?;
    let l = load(plan, g)?;
    let changes = match &saved {
        Some(s) => {
            s.check_fresh(path, &l.state, l.state_exists, &l.artifacts)?;
            s.changes.clone()
        }
        None => planner::diff(
            &l.plan,
            &l.state,
            &l.artifacts,
            &select.options(&l.plan, &l.state)?,
        ),
    };
    println!("{}", planner::render(&changes));
    if changes.is_empty() {
        println!("\nNothing to apply.");
        return Ok(0);
    }
    if saved.is_none()
        && !auto_approve
        && let Some(code) = refused(
            "\nDo you want to perform these actions?",
            "--auto-approve",
            "Apply",
        )?
    {
        return Ok(code);
    }
    println!();
    let handle = crate::lifecycle::StateHandle::new(l.state, l.state_path.clone());
    let state_dir = state_dir(&l.state_path);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let watcher = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!(
                        "\nInterrupted: no new tests will start; running ones stop at their next recorded step. Ctrl-C again to quit at once."
                    );
                    cancel.cancel();
                }
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(i32::from(EXIT_INTERRUPTED));
                }
            })
        };
        let provider = crate::provider::Fleet::new(state_dir, &l.plan.name);
        let report = crate::walk::apply(
            provider,
            l.plan,
            l.artifacts,
            l.renderer,
            &changes,
            handle.clone(),
            &crate::walk::ApplyOptions {
                parallelism,
                results_dir: PathBuf::from("results"),
            },
            ui::Progress::new(ui::stdout_is_tty()),
            cancel,
        )
        .await;
        watcher.abort();
        report
    })?;
    let state = handle.snapshot();
    let touched: Vec<Address> = changes.changes.iter().map(|c| c.address.clone()).collect();
    println!("\n{}", ui::summary_table(&state, &touched));
    for (address, step, error, log_tail) in &report.failed {
        println!(
            "\n{} {address} failed at {step}: {error}",
            console::style("✗").red()
        );
        if let Some(tail) = log_tail {
            for line in tail.lines() {
                println!("    {line}");
            }
        }
    }
    let plan_arg = path.display();
    if report.interrupted {
        if !report.still_running.is_empty() {
            let paid = (report.still_running.iter())
                .any(|(_, m)| m.provider == crate::plan::ProviderKind::Aws);
            println!(
                "\nStill running{}:",
                if paid { " (and costing money)" } else { "" }
            );
            for (address, machine) in &report.still_running {
                println!("  {address}  {}", machine.id);
            }
            println!(
                "\nResume with `rallyctl apply {plan_arg}`, or terminate them with `rallyctl destroy {plan_arg}`."
            );
        }
        return Ok(EXIT_INTERRUPTED);
    }
    println!(
        "\nApply complete: {} completed, {} failed.",
        report.completed.len(),
        report.failed.len()
    );
    if !report.failed.is_empty() {
        let names: Vec<String> = report.failed.iter().map(|f| f.0.to_string()).collect();
        bail!(
            "{} test{} failed: {}",
            names.len(),
            plural(names.len()),
            names.join(", ")
        );
    }
    Ok(0)
}

/// The directory of the state file, where per-workspace files (EC2's ephemeral key and known
/// hosts) live beside it.
fn state_dir(state_path: &Path) -> PathBuf {
    state_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

fn destroy(plan_path: Option<&Path>, auto_approve: bool, g: &Global) -> Result<u8> {
    let t = target(g, plan_path)?;
    let shown = plan_path.map_or(t.state_path.display().to_string(), |p| {
        p.display().to_string()
    });
    let _lock = lock(&t.state_path, &format!("rallyctl destroy {shown}"))?;
    // A valid plan also says where to look for machines state never heard of; a broken one
    // must not keep the rest from being given back.
    let plan = match plan_path.map(Plan::load) {
        Some(Err(e)) => {
            eprintln!(
                "warning: the plan is not valid, so destroy looks only where state points:\n{e}"
            );
            None
        }
        Some(Ok(plan)) => Some(plan),
        None => None,
    };
    let settings: Vec<&crate::plan::Settings> = plan
        .iter()
        .flat_map(|p| p.tests().map(|t| &t.settings))
        .collect();
    let state = match (t.load()?, &t.workspace) {
        (Some(state), _) => state,
        // No state, but a plan to look for leaked machines with.
        (None, Some(name)) if plan.is_some() => State::new(name),
        (None, _) => {
            println!(
                "Nothing to destroy: no state at {}.",
                t.state_path.display()
            );
            return Ok(0);
        }
    };
    let rt = runtime()?;
    let provider = crate::provider::Fleet::new(state_dir(&t.state_path), &state.workspace);
    let targets = rt.block_on(crate::destroy::targets(&provider, &state, &settings))?;
    if targets.is_empty() {
        println!(
            "Nothing to destroy: workspace `{}` holds no machine.",
            state.workspace
        );
        return Ok(0);
    }
    println!("rallyctl will give back these machines:\n");
    for t in &targets {
        let (id, how) = (&t.machine.id, t.machine.provider.released());
        match &t.address {
            Some(a) => println!("  {} {id}  {a}  (to be {how})", console::style("-").red()),
            None => println!(
                "  {} {id}  (leaked: tagged with this workspace, unknown to state; to be {how})",
                console::style("-").red(),
            ),
        }
    }
    println!("\nDestroy: {} to give back.", targets.len());
    if !auto_approve
        && let Some(code) = refused(
            "\nDo you really want to give them back?",
            "--auto-approve",
            "Destroy",
        )?
    {
        return Ok(code);
    }
    let handle = crate::lifecycle::StateHandle::new(state, t.state_path.clone());
    let failed = rt.block_on(crate::destroy::destroy(&provider, &handle, &targets))?;
    if failed.is_empty() {
        println!(
            "\nDestroy complete: {} machine{} given back.",
            targets.len(),
            plural(targets.len())
        );
        Ok(0)
    } else {
        let lines: Vec<String> = failed.iter().map(|(id, e)| format!("{id}: {e}")).collect();
        bail!("not given back:\n  {}", lines.join("\n  "))
    }
}
