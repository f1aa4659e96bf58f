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
use crate::state::{self, State};
use crate::templates::Renderer;
use crate::ui;

/// Exit code of `plan --detailed-exitcode` when there are changes.
pub const EXIT_CHANGES: u8 = 2;
/// Exit code after Ctrl-C, as shells report SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser, Debug)]
#[command(name = "rallyctl", version, about = "Plan and apply fleets of Elasticsearch Rally benchmarks on fresh EC2 instances")]
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
    /// Print the plan's DAG in Graphviz DOT
    Graph { plan: PathBuf },
    /// Inspect or edit the state file
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Remove a stale state lock left by a run that died
    ForceUnlock { plan: Option<PathBuf> },
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
    Show { address: Address, plan: Option<PathBuf> },
    /// Forget a test (its instance, if still running, is not terminated)
    Rm { address: Address, plan: Option<PathBuf> },
}

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    ui::init_colour(cli.global.no_color);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            match err.downcast_ref::<PlanErrors>() {
                Some(plan_errors) => eprintln!("{plan_errors}"),
                None => eprintln!("{} {err:#}", console::style("error:").red().bold()),
            }
            ExitCode::FAILURE
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
        Command::Graph { plan } => {
            let plan = Plan::load(&plan)?;
            print!("{}", Graph::compile(&plan)?.to_dot());
            Ok(0)
        }
        Command::State { command } => state_command(command, &g),
        Command::ForceUnlock { plan } => {
            let path = state_path(&g, plan.as_deref())?;
            match state::force_unlock(&path).with_context(|| format!("cannot remove the lock of {}", path.display()))? {
                Some(holder) => println!("Removed the lock of {} held by {holder}.", path.display()),
                None => println!("{} was not locked.", path.display()),
            }
            Ok(0)
        }
    }
}

fn validate(path: &Path, g: &Global) -> Result<u8> {
    match Plan::load(path) {
        Ok(plan) => {
            Graph::compile(&plan)?;
            let tests = plan.tests().count();
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "name": plan.name, "suites": plan.suites.len(), "tests": tests, "instances": tests})
                );
            } else {
                println!(
                    "{} is valid: {} suite{}, {tests} test{}, {tests} instance{}.",
                    path.display(),
                    plan.suites.len(),
                    plural(plan.suites.len()),
                    plural(tests),
                    plural(tests)
                );
            }
            Ok(0)
        }
        Err(errors) if g.json => {
            println!("{}", serde_json::json!({"valid": false, "diagnostics": errors.diagnostics}));
            Ok(1)
        }
        Err(errors) => Err(errors.into()),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The state path: `--state`, else the default for the plan's workspace.
fn state_path(g: &Global, plan: Option<&Path>) -> Result<PathBuf> {
    match (&g.state, plan) {
        (Some(path), _) => Ok(path.clone()),
        (None, Some(plan)) => Ok(state::default_path(&Plan::load(plan)?.name)),
        (None, None) => bail!("name the plan file or pass --state PATH to say which state to use"),
    }
}

/// Loads a plan, its state (locked or not) and everything the diff needs.
pub struct Loaded {
    pub plan: Plan,
    pub state_path: PathBuf,
    pub state: State,
    pub state_exists: bool,
    pub artifacts: std::collections::BTreeMap<Address, crate::templates::Artifacts>,
    pub renderer: Renderer,
}

pub fn load(plan: Plan, g: &Global) -> Result<Loaded> {
    Graph::compile(&plan)?;
    let state_path = g.state.clone().unwrap_or_else(|| state::default_path(&plan.name));
    let existing = state::load(&state_path)?;
    let state_exists = existing.is_some();
    let state = match existing {
        Some(s) if s.workspace != plan.name => bail!(state::StateError::Workspace {
            path: state_path,
            found: s.workspace,
            expected: plan.name.clone()
        }),
        Some(s) => s,
        None => State::new(&plan.name),
    };
    let renderer = Renderer::new();
    let artifacts = planner::render_all(&plan, &renderer)?;
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

fn plan_command(path: &Path, out: Option<&Path>, detailed: bool, select: &Select, g: &Global) -> Result<u8> {
    let l = load(Plan::load(path)?, g)?;
    let options = select.options(&l.plan, &l.state)?;
    let changes = planner::diff(&l.plan, &l.state, &l.artifacts, &options);
    if g.json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
    } else {
        println!("{}", planner::render(&changes));
    }
    if let Some(out) = out {
        SavedPlan::new(&l.plan, &l.state, l.state_exists, &changes)
            .write(out)
            .with_context(|| format!("cannot write the saved plan {}", out.display()))?;
        if !g.json {
            println!("\nSaved the plan to {}. Apply exactly it with: rallyctl apply {}", out.display(), out.display());
        }
    }
    Ok(if detailed && !changes.is_empty() { EXIT_CHANGES } else { 0 })
}

fn state_command(command: StateCommand, g: &Global) -> Result<u8> {
    match command {
        StateCommand::List { plan } => {
            let path = state_path(g, plan.as_deref())?;
            let Some(state) = state::load(&path)? else {
                bail!("no state at {}", path.display());
            };
            if g.json {
                let list: Vec<_> = state
                    .tests
                    .iter()
                    .map(|(a, r)| serde_json::json!({"address": a, "status": r.status.label(), "instance": r.instance.as_ref().map(|i| &i.id)}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for (address, record) in &state.tests {
                    let instance = record.instance.as_ref().map_or(String::new(), |i| {
                        format!("  {}{}", i.id, if i.terminated_at.is_some() { " (terminated)" } else { "" })
                    });
                    println!("{address}  {}{instance}", record.status.label());
                }
            }
            Ok(0)
        }
        StateCommand::Show { address, plan } => {
            let path = state_path(g, plan.as_deref())?;
            let state = state::load(&path)?.with_context(|| format!("no state at {}", path.display()))?;
            let record = state
                .tests
                .get(&address)
                .with_context(|| format!("{address} is not in {}", path.display()))?;
            println!("{}", serde_json::to_string_pretty(record)?);
            Ok(0)
        }
        StateCommand::Rm { address, plan } => {
            let path = state_path(g, plan.as_deref())?;
            let _lock = state::Lock::acquire(&path, "rallyctl state rm")?;
            let mut state = state::load(&path)?.with_context(|| format!("no state at {}", path.display()))?;
            let record = state
                .tests
                .remove(&address)
                .with_context(|| format!("{address} is not in {}", path.display()))?;
            state::save(&path, &mut state)?;
            println!("Removed {address} from {}.", path.display());
            if let Some(instance) = record.live_instance() {
                println!(
                    "Its instance {} may still be running: `rallyctl destroy` finds it by its tags.",
                    instance.id
                );
            }
            Ok(0)
        }
    }
}
