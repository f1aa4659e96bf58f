//! The command line: one function per command, wiring the modules that decide (`args` has
//! what clap reads, `workspace` where a command's state is). Thin: every decision lives in the
//! modules it calls.

mod args;
mod workspace;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;

pub use args::{
    BackendArg, Cli, EXIT_CHANGES, EXIT_ERROR, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED,
    EXIT_REGRESSION, EXIT_USAGE, Global, Prices, Refresh, ResultsArgs, Select, normalize_args,
};
pub use workspace::{Loaded, load, load_at, load_file};

use crate::address::Address;
use crate::cost::{self, PriceFile};
use crate::graph::Graph;
use crate::plan::{Plan, PlanErrors};
use crate::planner::{self, SavedPlan};
use crate::provider::Limit;
use crate::results::{self, Baseline, Format, GateFailure, Query, Workspace};
use crate::state::{self, Handover, State};
use crate::ui;
use args::{Command, StateCommand};
use workspace::{check_output, lock, named_workspace, plan_backend, s3_backend, target};

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
    ui::set_verbose(cli.global.verbose > 0);
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
            if let Some(usage) = err.downcast_ref::<UsageError>() {
                eprintln!("{} {usage}", console::style("error:").red().bold());
                return ExitCode::from(EXIT_USAGE);
            }
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

/// Arguments that parse but cannot go together: exit code [`EXIT_USAGE`], like a parse error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

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

fn run(cli: Cli) -> Result<u8> {
    let g = cli.global;
    match cli.command {
        Command::Validate { plan } => validate(&plan, &g),
        Command::Plan {
            plan,
            out,
            detailed_exitcode,
            parallelism,
            select,
            refresh,
            prices,
        } => plan_command(
            &plan,
            out.as_deref(),
            detailed_exitcode,
            usize::from(parallelism),
            &select,
            refresh,
            &prices,
            &g,
        ),
        Command::Apply {
            plan,
            auto_approve,
            parallelism,
            select,
            refresh,
            prices,
        } => apply(
            &plan,
            auto_approve,
            usize::from(parallelism),
            &select,
            refresh,
            &prices,
            &g,
        ),
        Command::Destroy {
            plan,
            auto_approve,
            images,
        } => destroy(plan.as_deref(), auto_approve, images, &g),
        Command::Bake { plan, auto_approve } => bake(&plan, auto_approve, &g),
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
            min_effect,
        } => {
            let ws = open_results(&g, plan.as_deref())?;
            if let Some(out) = &out {
                check_output(out, plan.as_deref(), &ws.backend)?;
            }
            let path =
                ws.write_report(run.as_deref(), compare.as_ref(), min_effect, out.as_deref())?;
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
    let backend = target(g, plan)?.backend;
    let location = backend.location();
    let holder = match backend.lock_state()? {
        state::LockState::Unlocked => {
            println!("{} is not locked.", location);
            return Ok(0);
        }
        state::LockState::Unreadable if force => "an unreadable lock".to_owned(),
        state::LockState::Unreadable => {
            bail!(
                "the lock of {} names no holder: pass --force to remove it",
                location
            )
        }
        state::LockState::Held(h) => {
            if h.id != lock_id {
                bail!(
                    "the lock of {} has the ID {}, not {lock_id}: it is not the lock you meant",
                    location,
                    h.id
                );
            }
            if state::holder_alive_here(&h) && !force {
                bail!(
                    "the lock of {} is held by `{}`, pid {}, which still runs on this host: stop it, or pass --force",
                    location,
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
            location
        );
        if let Some(code) = refused(&question, "--force", "Force-unlock")? {
            return Ok(code);
        }
    }
    backend
        .remove_lock()
        .with_context(|| format!("cannot remove the lock of {location}"))?;
    println!("Removed the lock of {} held by {holder}.", location);
    Ok(0)
}

/// What the plan allows but likely does not mean, on stderr; nothing fails for it.
fn warn_plan(plan: &Plan) {
    for w in &plan.warnings {
        eprintln!("{} {w}", console::style("warning:").yellow().bold());
    }
}

fn validate(path: &Path, g: &Global) -> Result<u8> {
    match Plan::load(path) {
        Ok(plan) => {
            warn_plan(&plan);
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

/// The price file `--prices` names, read before anything else so a broken one is refused
/// at once, as a usage error.
fn price_file(prices: &Prices) -> Result<Option<PriceFile>> {
    let Some(path) = &prices.file else {
        return Ok(None);
    };
    match PriceFile::load(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) => Err(UsageError(e.to_string()).into()),
    }
}

/// The prices of the machines the tests `changes` will run get: nothing is looked up for a
/// plan without aws tests to run. EC2 is asked what only it tells (root volumes, spot prices
/// now) unless `ec2` says why not.
fn prices_for(
    plan: &Plan,
    changes: &planner::Changes,
    file: Option<&PriceFile>,
    ec2: Result<(), &str>,
) -> Result<cost::Prices> {
    let to_run: std::collections::HashSet<&Address, crate::FastHash> =
        changes.changes.iter().map(|c| &c.address).collect();
    let settings: Vec<&crate::plan::Settings> = (plan.tests())
        .filter(|t| to_run.contains(&t.address))
        .map(|t| &t.settings)
        .filter(|s| s.provider() == crate::plan::ProviderKind::Aws)
        .collect();
    if settings.is_empty() {
        return Ok(cost::Prices::default());
    }
    Ok(runtime()?.block_on(async {
        let facts = match ec2 {
            Ok(()) => Some(crate::provider::aws::CostFacts::from_env().await),
            Err(_) => None,
        };
        let ec2 = facts.as_ref().ok_or_else(|| ec2.err().unwrap_or_default());
        cost::look_up(settings, file, &mut cost::Cache::for_user(), ec2).await
    }))
}

#[allow(clippy::too_many_arguments)]
fn plan_command(
    path: &Path,
    out: Option<&Path>,
    detailed: bool,
    parallelism: usize,
    select: &Select,
    refresh: Refresh,
    prices: &Prices,
    g: &Global,
) -> Result<u8> {
    let file = price_file(prices)?;
    let mut l = load_file(path, g)?;
    warn_plan(&l.plan);
    let (limits, reached) = check_account(&l.plan, refresh)?;
    let resolved = crate::bake::resolve(&mut l.plan, &l.state);
    let options = select.options(&l.plan, &l.state)?;
    let changes = planner::diff(&l.plan, &l.state, &l.artifacts, &options);
    warn_limits(&l.plan, &changes, &limits, parallelism);
    let images = baked_images(&l.plan, resolved, &changes)?;
    let prices = prices_for(&l.plan, &changes, file.as_ref(), reached)?;
    let estimate = cost::estimate::estimate(&l.plan, &l.state, &changes, &prices);
    if g.json {
        let mut shown = serde_json::to_value(&changes)?;
        if let Some(e) = &estimate {
            shown["cost"] = serde_json::to_value(e)?;
        }
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        println!("{}", planner::render(&changes));
        if !images.is_empty() {
            println!("\n{}", crate::bake::render_used(&images));
        }
        if let Some(e) = &estimate {
            print!("\n{}", cost::estimate::render(e));
        }
    }
    if let Some(out) = out {
        check_output(out, Some(path), &l.backend)?;
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
                    .map(|(a, r)| serde_json::json!({"address": a, "status": r.status.label(), "instance": r.machine.as_ref().map(|i| &i.id)}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for (address, record) in &state.tests {
                    let instance = record.machine.as_ref().map_or(String::new(), |m| {
                        match (&m.handover, m.released_at) {
                            (Some(Handover::TakenBy(to)), _) => {
                                format!("  {} (handed on to {to})", m.id)
                            }
                            (Some(Handover::KeptFor(to)), None) => {
                                format!("  {} (kept for {to})", m.id)
                            }
                            (_, Some(_)) => format!("  {} ({})", m.id, m.provider.released()),
                            (_, None) => format!("  {}", m.id),
                        }
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
                .with_context(|| format!("{address} is not in {}", t.backend.location()))?;
            // The recorded settings are raw JSON indented for their place in the state file:
            // as a tree, they indent with the rest.
            let mut shown = serde_json::to_value(record)?;
            shown["settings"] = record.settings.value();
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(0)
        }
        StateCommand::Rm { address, plan } => {
            let t = target(g, plan.as_deref())?;
            let _lock = lock(&t.backend, "rallyctl state rm")?;
            let mut state = t.load_existing()?;
            let record = state
                .tests
                .remove(&address)
                .with_context(|| format!("{address} is not in {}", t.backend.location()))?;
            t.backend.save(&mut state)?;
            println!("Removed {address} from {}.", t.backend.location());
            if let Some(machine) = record.live_machine() {
                println!(
                    "Its machine {} ({}) may still be running; state no longer knows it.",
                    machine.id, machine.provider
                );
            }
            Ok(0)
        }
        StateCommand::Push { plan, force } => copy_state(plan.as_deref(), force, true, g),
        StateCommand::Pull { plan, force } => copy_state(plan.as_deref(), force, false, g),
    }
}

/// `state push` (`up`) and `state pull`: between the local state of a workspace (`--state`,
/// or the default path) and its S3 backend (`--backend`, or the plan's), both locked.
fn copy_state(plan: Option<&Path>, force: bool, up: bool, g: &Global) -> Result<u8> {
    let (workspace, plan_backend) = named_workspace(g, plan)?;
    let Some(workspace) = workspace else {
        bail!("name the plan file or pass --workspace NAME to say which workspace to copy");
    };
    let (config, plan) = match (&g.backend, plan_backend) {
        (Some(BackendArg::S3(config)), _) => (config.clone(), None),
        (Some(BackendArg::Local), _) => {
            return Err(UsageError(
                "state push and pull copy between this directory and S3: --backend local names no S3 backend".into(),
            )
            .into());
        }
        (None, Some(config)) => (config, plan),
        (None, None) => bail!(
            "workspace `{workspace}` has no S3 backend: pass --backend s3://BUCKET/PREFIX, or set [backend] in the plan"
        ),
    };
    let local = crate::backend::Backend::Local(
        g.state
            .clone()
            .unwrap_or_else(|| state::default_path(&workspace)),
    );
    let remote = s3_backend(&config, &workspace, plan)?;
    let (from, to, verb) = if up {
        (&local, &remote, "push")
    } else {
        (&remote, &local, "pull")
    };
    let _from = lock(from, &format!("rallyctl state {verb}"))?;
    let _to = lock(to, &format!("rallyctl state {verb}"))?;
    let copied = crate::backend::copy(from, to, &workspace, force)?;
    println!(
        "Copied workspace `{workspace}` (serial {}, {} result file{}) from {} to {}.",
        copied.serial,
        copied.files,
        plural(copied.files),
        from.location(),
        to.location()
    );
    Ok(0)
}

/// The workspace whose results to read: by the state file, or by the plan's name when there is
/// no state yet (its runs can still be listed from `results/`).
fn open_results(g: &Global, plan: Option<&Path>) -> Result<Workspace> {
    let t = target(g, plan)?;
    let state = t.load()?;
    Ok(Workspace::open(t.backend, state, t.workspace.as_deref())?)
}

fn results_command(args: ResultsArgs, g: &Global) -> Result<u8> {
    let min_effect_pct = args.min_effect().map_err(UsageError)?;
    // `--fail-on-regression 10`, as older rallyctl read it, leaves `10` as the plan file.
    if let Some(plan) = args.plan.as_deref().and_then(|p| p.to_str())
        && args.fail_on_regression.is_some()
        && plan.trim_end_matches('%').parse::<f64>().is_ok()
        && !Path::new(plan).exists()
    {
        return Err(UsageError(format!(
            "`{plan}` is no plan file: to give the gate a min effect, write --fail-on-regression={plan}"
        ))
        .into());
    }
    let mut ws = open_results(g, args.plan.as_deref())?;
    let format = if g.json { Format::Json } else { args.format };
    if args.runs {
        print!("{}", results::render::runs(&ws.name, &ws.runs()?, format));
        return Ok(0);
    }
    let mut baseline = args.compare;
    if let Some(run) = &args.baseline {
        let lock = lock(&ws.backend, "rallyctl results --baseline")?;
        let run = ws.set_baseline(run, &lock)?;
        eprintln!("Recorded {run} as the baseline of workspace `{}`.", ws.name);
        baseline.get_or_insert(Baseline::Recorded);
    }
    let shown = ws.show(&Query {
        format,
        run: args.run,
        baseline,
        min_effect_pct,
        fail_on_regression: args.fail_on_regression.is_some(),
        fail_on_inconclusive: args.fail_on_inconclusive,
        variants: args.variants,
        allow_unpaired: args.allow_unpaired,
    })?;
    print!("{}", shown.text);
    match shown.failed {
        Some(GateFailure::Regression(why)) => {
            eprint!("{why}");
            Ok(EXIT_REGRESSION)
        }
        Some(GateFailure::Inconclusive(why)) => {
            eprint!("{why}");
            Ok(EXIT_INCONCLUSIVE)
        }
        None => Ok(0),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Checks the plan against its providers' accounts (Terraform's refresh), unless
/// `--refresh=false`: what they lack is an error at the plan file's line and column, before
/// anything is launched or paid for. When the check itself cannot be made (no credentials, no
/// network) planning goes on, saying so. The caps on what may run at once (EC2's vCPU quota)
/// come back for [`warn_limits`], each with what every test takes of it.
/// The account's caps, each with what each test takes of it.
type Limits = Vec<(Limit, HashMap<Address, u64>)>;

/// The account's caps, and whether EC2 answered (else why it is not asked again).
fn check_account(plan: &Plan, refresh: Refresh) -> Result<(Limits, Result<(), &'static str>)> {
    if !refresh.refresh {
        return Ok((vec![], Err("EC2 was not asked (--refresh=false)")));
    }
    let settings: Vec<&crate::plan::Settings> = plan.tests().map(|t| &t.settings).collect();
    let warning = console::style("warning:").yellow().bold();
    match runtime()?.block_on(crate::provider::preflight(&settings)) {
        Ok(found) if found.problems.is_empty() => {
            for why in &found.unchecked {
                eprintln!("{warning} {why}");
            }
            let limits = (found.limits.into_iter())
                .map(|limit| {
                    let takes = plan
                        .tests()
                        .zip(&limit.takes)
                        .map(|(t, &n)| (t.address.clone(), n))
                        .collect();
                    (limit, takes)
                })
                .collect();
            Ok((limits, Ok(())))
        }
        Ok(found) => {
            let findings: Vec<crate::plan::Finding<'_>> = found
                .problems
                .iter()
                .map(|p| crate::plan::Finding {
                    keys: p.keys,
                    value: &p.value,
                    message: &p.message,
                })
                .collect();
            Err(plan.locate(&findings)?.into())
        }
        Err(e) => {
            eprintln!(
                "{warning} could not check the plan against the account ({e}); `--refresh=false` skips this check"
            );
            Ok((vec![], Err("EC2 could not be reached")))
        }
    }
}

/// Warns when the tests that `changes` runs may hold more at once than a cap of the account
/// leaves (EC2's running On-Demand vCPU quota), naming the `--parallelism` that fits: beyond
/// the cap, launches fail.
fn warn_limits(
    plan: &Plan,
    changes: &planner::Changes,
    limits: &[(Limit, HashMap<Address, u64>)],
    parallelism: usize,
) {
    let to_run: HashSet<&Address> = changes.changes.iter().map(|c| &c.address).collect();
    for (limit, takes) in limits {
        let takes = |t: &crate::plan::Test| match to_run.contains(&t.address) {
            true => takes.get(&t.address).copied().unwrap_or(0),
            false => 0,
        };
        let room = limit.quota.saturating_sub(limit.in_use);
        let Some((peak, suite)) = crate::walk::peak(plan, parallelism, takes) else {
            continue;
        };
        if peak <= room {
            continue;
        }
        let fits = match crate::walk::fitting_parallelism(plan, parallelism, room, takes) {
            Some(p) => format!("`--parallelism {p}` fits"),
            None => "not even one test at a time fits: ask for a higher quota".to_owned(),
        };
        eprintln!(
            "{} suite `{suite}` may run {peak} {unit} at once under --parallelism {parallelism}, but {} is {} with {} in use, {room} free: {fits}; launches beyond it fail",
            console::style("warning:").yellow().bold(),
            limit.name,
            limit.quota,
            limit.in_use,
            unit = limit.unit,
        );
    }
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

#[allow(clippy::too_many_arguments)]
fn apply(
    path: &Path,
    auto_approve: bool,
    parallelism: usize,
    select: &Select,
    refresh: Refresh,
    prices: &Prices,
    g: &Global,
) -> Result<u8> {
    let file = price_file(prices)?;
    let saved = read_saved(path)?;
    if saved.is_some() && !select.is_empty() {
        return Err(UsageError(format!(
            "{} is a saved plan, applied exactly as it was planned: --target and --replace belong on `rallyctl plan`",
            path.display()
        ))
        .into());
    }
    let plan = match &saved {
        Some(s) => s.plan.clone(),
        None => Plan::load(path)?,
    };
    let backend = plan_backend(&plan, g)?;
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
    // A saved plan was checked when it was made.
    let limits = match &saved {
        None => check_account(&plan, refresh)?.0,
        Some(_) => vec![],
    };
    let _lock = lock(&backend, &format!("rallyctl apply {}", path.display()))?;
    let mut l = load_at(plan, backend, None)?;
    let resolved = crate::bake::resolve(&mut l.plan, &l.state);
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
    baked_images(&l.plan, resolved, &changes)?;
    warn_limits(&l.plan, &changes, &limits, parallelism);
    println!("{}", planner::render(&changes));
    if changes.is_empty() {
        println!("\nNothing to apply.");
        return Ok(0);
    }
    // Apply reaches EC2 whatever `--refresh` says: the price it records needs the root volume.
    let prices = prices_for(&l.plan, &changes, file.as_ref(), Ok(()))?;
    if let Some(e) = cost::estimate::estimate(&l.plan, &l.state, &changes, &prices) {
        print!("\n{}", cost::estimate::render(&e));
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
    let state_dir = l.backend.local_dir();
    let handle = crate::state::StateHandle::new(l.state, l.backend);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let watcher = on_ctrl_c(
            &cancel,
            "no new tests will start; running ones stop at their next recorded step",
        );
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
                results_base: PathBuf::new(),
                prices,
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
    if let Some(bill) = cost::bill::of_run(&state, &report.run_id) {
        println!("\nRun {} cost {bill}.", report.run_id);
    }
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

/// The first Ctrl-C cancels (saying what that does), the second exits at once.
fn on_ctrl_c(
    cancel: &tokio_util::sync::CancellationToken,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nInterrupted: {what}. Ctrl-C again to quit at once.");
            cancel.cancel();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    })
}

/// The baked image each test that is to launch uses; such a test whose image state lacks is
/// an error at the plan's `base_ami`, naming the command that makes it. A test with nothing to
/// run needs no image (its image may have been given back since).
fn baked_images(
    plan: &Plan,
    resolved: crate::bake::Resolved,
    changes: &planner::Changes,
) -> Result<Vec<(Address, String)>> {
    let launches = |address: &Address| {
        (changes.changes.iter())
            .any(|c| &c.address == address && c.action != planner::Action::Terminate)
    };
    let missing: Vec<crate::bake::Missing> = (resolved.missing.into_iter())
        .filter(|m| launches(&m.address))
        .collect();
    if missing.is_empty() {
        return Ok((resolved.used.into_iter())
            .filter(|(a, _)| launches(a))
            .collect());
    }
    let messages: Vec<String> = (missing.iter())
        .map(|m| {
            format!(
                "{} asks for an image baked from {}, which state does not have: run `rallyctl bake {}` first",
                m.address,
                m.key,
                plan.source.display()
            )
        })
        .collect();
    let findings: Vec<crate::plan::Finding<'_>> = (missing.iter().zip(&messages))
        .map(|(m, message)| crate::plan::Finding {
            keys: &["base_ami"],
            value: &m.key.base_ami,
            message,
        })
        .collect();
    Err(plan.locate(&findings)?.into())
}

fn bake(path: &Path, auto_approve: bool, g: &Global) -> Result<u8> {
    let plan = Plan::load(path)?;
    let backend = plan_backend(&plan, g)?;
    let _lock = lock(&backend, &format!("rallyctl bake {}", path.display()))?;
    let l = load_at(plan, backend, None)?;
    let wanted = crate::bake::wanted(&l.plan, &l.state);
    if wanted.is_empty() {
        println!(
            "Nothing to bake: no test of {} says ami = \"baked\".",
            path.display()
        );
        return Ok(0);
    }
    println!("{}", crate::bake::render(&wanted));
    let to_bake: Vec<&crate::bake::Wanted> = (wanted.iter())
        .filter(|w| !matches!(w.action, crate::bake::Action::Have(_)))
        .collect();
    if to_bake.is_empty() {
        return Ok(0);
    }
    if !auto_approve
        && let Some(code) = refused(
            "\nDo you want to bake these images?",
            "--auto-approve",
            "Bake",
        )?
    {
        return Ok(code);
    }
    let rt = runtime()?;
    rt.block_on(crate::provider::aws::check_credentials())
        .context("bake needs AWS credentials; nothing was launched or written")?;
    println!();
    let fleet = crate::provider::Fleet::new(l.backend.local_dir(), &l.plan.name);
    let handle = crate::state::StateHandle::new(l.state, l.backend);
    let progress = ui::Progress::new(ui::stdout_is_tty());
    let run_id = state::new_run_id();
    let outcomes = rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let watcher = on_ctrl_c(&cancel, "the bake stops and terminates its instance");
        let ctx = crate::bake::Ctx {
            fleet: &fleet,
            state: &handle,
            plan: &l.plan,
            artifacts: &l.artifacts,
            renderer: &l.renderer,
            run_id: &run_id,
            progress: &progress,
            cancel: &cancel,
        };
        let mut outcomes = Vec::new();
        for w in to_bake {
            outcomes.push((w, crate::bake::bake(&ctx, w).await));
        }
        watcher.abort();
        outcomes
    });
    println!();
    let mut failed = Vec::new();
    let mut interrupted = false;
    for (w, outcome) in &outcomes {
        match outcome {
            Ok(id) => println!("{} baked {id}: {}", console::style("✓").green(), w.key),
            Err(e) => {
                interrupted |= matches!(e, crate::bake::BakeError::Interrupted);
                println!("{} {}: {e}", console::style("✗").red(), w.key);
                failed.push(w.key.to_string());
            }
        }
    }
    if interrupted {
        return Ok(EXIT_INTERRUPTED);
    }
    if !failed.is_empty() {
        bail!(
            "{} bake{} failed (instances terminated): {}",
            failed.len(),
            plural(failed.len()),
            failed.join("; ")
        );
    }
    println!(
        "\nBake complete: {} image{} made.",
        outcomes.len(),
        plural(outcomes.len())
    );
    Ok(0)
}

fn destroy(plan_path: Option<&Path>, auto_approve: bool, images: bool, g: &Global) -> Result<u8> {
    let t = target(g, plan_path)?;
    let shown = plan_path.map_or(t.backend.location(), |p| p.display().to_string());
    let _lock = lock(&t.backend, &format!("rallyctl destroy {shown}"))?;
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
            println!("Nothing to destroy: no state at {}.", t.backend.location());
            return Ok(0);
        }
    };
    let rt = runtime()?;
    let provider = crate::provider::Fleet::new(t.backend.local_dir(), &state.workspace);
    let (targets, gone) = rt.block_on(crate::destroy::targets(&provider, &state, &settings))?;
    let (images, kept) = if images {
        let found = rt.block_on(crate::destroy::images(&provider, &state, &settings))?;
        (found, 0)
    } else {
        (vec![], crate::destroy::kept(&state))
    };
    // Snapshots cost money too: say what stays unless asked to give it back.
    if kept > 0 {
        println!(
            "The workspace keeps {kept} baked image{}: `rallyctl destroy --images` gives them back.\n",
            plural(kept)
        );
    }
    let handle = crate::state::StateHandle::new(state, t.backend);
    if !gone.is_empty() {
        println!("State names machines that are gone already; they will be recorded as such:\n");
        for g in &gone {
            println!("  {}  {}  ({})", g.id, g.address, g.why);
        }
        println!();
    }
    if targets.is_empty() && images.is_empty() {
        crate::destroy::forget(&handle, &gone)?;
        let workspace = handle.read(|s| s.workspace.clone());
        println!("Nothing to destroy: workspace `{workspace}` holds no machine.");
        return Ok(0);
    }
    if !targets.is_empty() {
        println!("rallyctl will give back these machines:\n");
    }
    for t in &targets {
        let (id, how) = (&t.machine.id, t.machine.provider.released());
        match (&t.address, &t.bake) {
            (Some(a), _) => println!("  {} {id}  {a}  (to be {how})", console::style("-").red()),
            (None, Some(bake)) => println!(
                "  {} {id}  bake {bake}  (to be {how})",
                console::style("-").red()
            ),
            (None, None) => println!(
                "  {} {id}  (leaked: tagged with this workspace, unknown to state; to be {how})",
                console::style("-").red(),
            ),
        }
    }
    if !images.is_empty() {
        println!(
            "{}rallyctl will deregister these baked images and delete their snapshots:\n",
            if targets.is_empty() { "" } else { "\n" }
        );
    }
    for i in &images {
        let snapshots = match i.snapshot_ids.as_slice() {
            [] => "no snapshot recorded".to_owned(),
            ids => ids.join(", "),
        };
        let minus = console::style("-").red();
        match (&i.id, &i.name) {
            (Some(id), Some(name)) => println!("  {minus} {id}  {name}  ({snapshots})"),
            (Some(id), None) => println!(
                "  {minus} {id}  (tagged with this workspace, unknown to state; {snapshots})"
            ),
            (None, _) => println!(
                "  {minus} {snapshots}  (snapshots tagged with this workspace, of no image left)"
            ),
        }
    }
    println!("\nDestroy: {} to give back.", targets.len() + images.len());
    if !auto_approve
        && let Some(code) = refused(
            "\nDo you really want to give them back?",
            "--auto-approve",
            "Destroy",
        )?
    {
        return Ok(code);
    }
    crate::destroy::forget(&handle, &gone)?;
    let mut failed = rt.block_on(crate::destroy::destroy(&provider, &handle, &targets))?;
    failed.extend(rt.block_on(crate::destroy::deregister(&provider, &handle, &images))?);
    if failed.is_empty() {
        let images = match images.iter().filter(|i| i.id.is_some()).count() {
            0 => String::new(),
            n => format!(", {n} image{} deregistered", plural(n)),
        };
        println!(
            "\nDestroy complete: {} machine{} given back{images}.",
            targets.len(),
            plural(targets.len())
        );
        Ok(0)
    } else {
        let lines: Vec<String> = failed.iter().map(|(id, e)| format!("{id}: {e}")).collect();
        bail!("not given back:\n  {}", lines.join("\n  "))
    }
}
