//! The command line: one function per command, wiring the modules that decide (`args` has
//! what clap reads, `workspace` where a command's state is). Thin: every decision lives in the
//! modules it calls.

/// `println!` through [`ui::out`]: a closed stdout ends the command (quietly, in `main`)
/// instead of panicking.
macro_rules! outln {
    () => {
        $crate::ui::out(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::ui::out(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!` through [`ui::out`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::ui::out(format_args!($($arg)*))?
    };
}

mod args;
mod workspace;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use tokio::runtime::Runtime;

pub use crate::ops::{Loaded, load_at};
pub use args::{
    BackendArg, Cli, EXIT_CHANGES, EXIT_ERROR, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED,
    EXIT_REGRESSION, EXIT_USAGE, Global, HistoryArgs, Prices, Refresh, ResultsArgs, Select,
    normalize_args,
};
pub use workspace::{load, load_file};

use crate::cost::{self, PriceFile};
use crate::graph::Graph;
use crate::history::{self, series::Filter};
use crate::notify::Message;
use crate::ops::{self, lock};
use crate::plan::{NotifyConfig, Plan, PlanErrors};
use crate::planner::{self, SavedPlan};
use crate::results::{self, Baseline, Format, GateFailure, Output, Query, Workspace};
use crate::state::{self, Handover};
use crate::ui;
use args::{Command, StateCommand};
use workspace::{Target, check_output, named_workspace, plan_backend, s3_backend, target};

/// The report's page of trends, beside it.
const TRENDS: &str = "trends.html";

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    let args = normalize_args(std::env::args_os());
    let cli = match args::parse(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if let Some(hint) = (e.use_stderr()).then(|| args::equals_hint(&args)).flatten() {
                eprintln!("\n{} {hint}", console::style("tip:").green().bold());
            }
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
    // The one async runtime of the process: every command that waits on the network or on
    // machines runs on it.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "{} cannot start the async runtime: {e}",
                console::style("error:").red().bold()
            );
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = run(cli, &rt);
    // Whatever the command left running (a task past its use) is not waited for.
    rt.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err)
            if matches!(
                err.downcast_ref::<ui::OutputError>(),
                Some(ui::OutputError::Closed)
            ) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            if let Some(usage) = err.downcast_ref::<UsageError>() {
                eprintln!("{} {usage}", console::style("error:").red().bold());
                return ExitCode::from(EXIT_USAGE);
            }
            match err.downcast_ref::<PlanErrors>() {
                // Asked for JSON, a broken plan is reported as `validate --json` reports it.
                Some(plan_errors) if json => {
                    let _ = ui::out(format_args!(
                        "{}\n",
                        serde_json::json!({"valid": false, "diagnostics": plan_errors.diagnostics})
                    ));
                }
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

fn run(cli: Cli, rt: &Runtime) -> Result<u8> {
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
            PlanArgs {
                out: out.as_deref(),
                detailed: detailed_exitcode,
                auto_approve: false,
                parallelism: usize::from(parallelism),
                select: &select,
                refresh,
                prices: &prices,
            },
            &g,
            rt,
        ),
        Command::Apply {
            plan,
            auto_approve,
            parallelism,
            select,
            refresh,
            prices,
            notify,
        } => apply(
            &plan,
            PlanArgs {
                out: None,
                detailed: false,
                auto_approve,
                parallelism: usize::from(parallelism),
                select: &select,
                refresh,
                prices: &prices,
            },
            notify.url.as_deref(),
            &g,
            rt,
        ),
        Command::Destroy {
            plan,
            auto_approve,
            images,
        } => destroy(plan.as_deref(), auto_approve, images, &g, rt),
        Command::Bake { plan, auto_approve } => bake(&plan, auto_approve, &g, rt),
        Command::Graph { plan } => {
            let plan = Plan::load(&plan)?;
            out!("{}", Graph::compile(&plan)?.to_dot());
            Ok(0)
        }
        Command::State { command } => state_command(command, &g),
        Command::Results(args) => results_command(args, &g, rt),
        Command::History(args) => history_command(args, &g, rt),
        Command::Report {
            plan,
            out,
            run,
            compare,
            min_effect,
            allow_topology_change,
            thresholds,
        } => {
            let (ws, _) = open_results(&g, plan.as_deref())?;
            if let Some(out) = &out {
                check_output(out, plan.as_deref(), &ws.backend)?;
                if out.file_name() == Some(TRENDS.as_ref()) {
                    return Err(UsageError(format!(
                        "the report's trends page is written beside it as {TRENDS}: name the \
                         report otherwise than {}",
                        out.display()
                    ))
                    .into());
                }
            }
            let allow = results::compare::Allow {
                topology_change: allow_topology_change,
            };
            let path = ws.write_report(
                run.as_deref(),
                compare.as_ref(),
                min_effect,
                allow,
                out.as_deref(),
            )?;
            outln!("Wrote the report to {}.", path.display());
            // One run has no trend to draw.
            if ws.run_dirs()?.len() > 1 {
                let trends = path.with_file_name(TRENDS);
                check_output(&trends, plan.as_deref(), &ws.backend)?;
                let until = run.as_deref().and_then(results::load::run_started);
                let runs = ops::history::write_trends(&ws, until, thresholds.into(), &trends)?;
                if runs > 1 {
                    outln!("Wrote its trends over {runs} runs to {}.", trends.display());
                }
            }
            Ok(0)
        }
        Command::ForceUnlock {
            lock_id,
            plan,
            force,
        } => force_unlock(&lock_id, plan.as_deref(), force, &g, rt),
    }
}

/// Removes the lock with `lock_id`, after asking; a holder still running on this host is left
/// alone unless `force`.
fn force_unlock(
    lock_id: &str,
    plan: Option<&Path>,
    force: bool,
    g: &Global,
    rt: &Runtime,
) -> Result<u8> {
    let backend = target(g, plan)?.backend;
    let location = backend.location();
    let holder = match backend.lock_state()? {
        state::LockState::Unlocked => {
            outln!("{} is not locked.", location);
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
                // Its ID is not said: it would let a mistyped ID remove a lock its holder
                // still needs, while the refusal that named the lock has it already.
                bail!(
                    "the lock of {location} has another ID than {lock_id}: it is not the lock you meant (the ID is the one the refusal to take the lock named)"
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
        if let Some(code) = refused(rt, &question, "--force", "Force-unlock")? {
            return Ok(code);
        }
    }
    backend
        .remove_lock()
        .with_context(|| format!("cannot remove the lock of {location}"))?;
    outln!("Removed the lock of {} held by {holder}.", location);
    Ok(0)
}

/// What the plan allows but likely does not mean, on stderr; nothing fails for it.
fn warn_plan(plan: &Plan) {
    for w in &plan.warnings {
        crate::ui::warn(&w.to_string());
    }
}

fn validate(path: &Path, g: &Global) -> Result<u8> {
    match Plan::load(path) {
        Ok(plan) => {
            warn_plan(&plan);
            Graph::compile(&plan)?;
            let tests = plan.tests().count();
            // Each aws test launches instances of its own (a cluster's nodes and load drivers);
            // hosts and this machine are reused.
            let instances: usize = plan
                .tests()
                .filter(|t| t.settings.provider() == crate::plan::ProviderKind::Aws)
                .map(|t| t.settings.machines() as usize)
                .sum();
            if g.json {
                outln!(
                    "{}",
                    serde_json::json!({"valid": true, "name": plan.name, "suites": plan.suites.len(), "tests": tests, "instances": instances})
                );
            } else {
                outln!(
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
            outln!(
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
fn refused(rt: &Runtime, question: &str, skip: &str, what: &str) -> Result<Option<u8>> {
    let code = match ui::confirm(rt, question, skip).map_err(anyhow::Error::msg)? {
        ui::Answer::Yes => return Ok(None),
        ui::Answer::No => EXIT_ERROR,
        ui::Answer::Interrupted => EXIT_INTERRUPTED,
    };
    outln!("{what} cancelled.");
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

fn plan_command(path: &Path, args: PlanArgs<'_>, g: &Global, rt: &Runtime) -> Result<u8> {
    let file = price_file(args.prices)?;
    let mut l = load_file(path, g)?;
    warn_plan(&l.plan);
    let report = ops::plan::plan(rt, &mut l, &args.options(file.as_ref()))?;
    if !g.json {
        say_backend(&l.backend)?;
    }
    if let (Some(h), false) = (&report.locked_by, g.json) {
        outln!(
            "`{}` (pid {} on {}, since {}) holds the lock of {} and may be running now: the tests it runs are in its hands, not waiting for a resume. Plan again when it is done.\n",
            h.command,
            h.pid,
            h.host,
            h.since.strftime("%Y-%m-%d %H:%M:%S UTC"),
            l.backend.location()
        );
    }
    if g.json {
        let mut shown = serde_json::to_value(&report.changes)?;
        if let Some(e) = &report.estimate {
            shown["cost"] = serde_json::to_value(e)?;
        }
        outln!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        outln!("{}", planner::render(&report.changes));
        if !report.images.is_empty() {
            outln!("\n{}", crate::bake::render_used(&report.images));
        }
        if let Some(e) = &report.estimate {
            out!("\n{}", cost::estimate::render(e));
        }
    }
    if let Some(out) = args.out {
        check_output(out, Some(path), &l.backend)?;
        SavedPlan::new(&l.plan, &l.state, l.state_exists, &report.changes)
            .write(out)
            .with_context(|| format!("cannot write the saved plan {}", out.display()))?;
        if !g.json {
            outln!(
                "\nSaved the plan to {}. Apply exactly it with: rallyctl apply {}",
                out.display(),
                out.display()
            );
        }
    }
    Ok(if args.detailed && !report.changes.is_empty() {
        EXIT_CHANGES
    } else {
        0
    })
}

/// The first line of `plan` and `apply` when the workspace is not in this directory.
fn say_backend(backend: &crate::backend::Backend) -> Result<()> {
    if backend.local_path().is_none() {
        outln!("Workspace state: {}\n", backend.location());
    }
    Ok(())
}

/// The arguments that reach the same workspace as this command did, for hints: the plan file
/// and the `--backend` or `--state` given with it.
fn reaching(plan: &Path, g: &Global) -> String {
    let mut args = plan.display().to_string();
    match (&g.backend, &g.state) {
        (Some(BackendArg::S3(config)), _) => args.push_str(&format!(" --backend {}", config.url())),
        (Some(BackendArg::Local), _) => args.push_str(" --backend local"),
        (None, Some(state)) => args.push_str(&format!(" --state {}", state.display())),
        (None, None) => {}
    }
    args
}

/// What `plan` and `apply` read beyond the plan file.
struct PlanArgs<'a> {
    out: Option<&'a Path>,
    detailed: bool,
    auto_approve: bool,
    parallelism: usize,
    select: &'a Select,
    refresh: Refresh,
    prices: &'a Prices,
}

impl PlanArgs<'_> {
    fn options<'a>(&'a self, prices: Option<&'a PriceFile>) -> ops::plan::PlanOptions<'a> {
        ops::plan::PlanOptions {
            target: &self.select.target,
            replace: &self.select.replace,
            parallelism: self.parallelism,
            refresh: self.refresh.refresh,
            prices,
        }
    }
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
                outln!("{}", serde_json::to_string_pretty(&list)?);
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
                    outln!("{address}  {}{instance}", record.status.label());
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
            outln!("{}", serde_json::to_string_pretty(&shown)?);
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
            outln!("Removed {address} from {}.", t.backend.location());
            for (machine, _) in record.live_machines() {
                outln!(
                    "Its machine {} ({}) may still be running; state no longer knows it.",
                    machine.id,
                    machine.provider
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
    let (workspace, head) = named_workspace(g, plan)?;
    let plan_backend = head.and_then(|h| h.backend);
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
    outln!(
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
fn open_results(g: &Global, plan: Option<&Path>) -> Result<(Workspace, Option<NotifyConfig>)> {
    let t = target(g, plan)?;
    let state = t.load()?;
    let ws = ops::results::open(t.backend, state, t.workspace.as_deref())?;
    Ok((ws, t.notify))
}

fn results_command(args: ResultsArgs, g: &Global, rt: &Runtime) -> Result<u8> {
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
    let output = if g.json {
        Output::Text(Format::Json)
    } else {
        args.format
    };
    let compares = args.compare.is_some()
        || args.baseline.is_some()
        || args.variants.is_some()
        || args.fail_on_regression.is_some()
        || args.fail_on_inconclusive;
    // Refused before anything is read: a usage mistake.
    let refused = || UsageError(results::ResultsError::JunitWithoutComparison.to_string());
    if output == Output::Junit && !compares {
        return Err(refused().into());
    }
    let (mut ws, plan_notify) = open_results(g, args.plan.as_deref())?;
    if args.runs {
        let Output::Text(format) = output else {
            return Err(refused().into());
        };
        out!("{}", results::render::runs(&ws.name, &ws.runs()?, format));
        return Ok(0);
    }
    let mut baseline = args.compare;
    if let Some(run) = &args.baseline {
        let run = ops::results::record_baseline(&mut ws, run)?;
        eprintln!("Recorded {run} as the baseline of workspace `{}`.", ws.name);
        baseline.get_or_insert(Baseline::Recorded);
    }
    let shown = ws.show(&Query {
        format: output,
        run: args.run,
        baseline,
        min_effect_pct,
        fail_on_regression: args.fail_on_regression.is_some(),
        fail_on_inconclusive: args.fail_on_inconclusive,
        variants: args.variants,
        allow_unpaired: args.allow_unpaired,
        allow_topology_change: args.allow_topology_change,
    })?;
    out!("{}", shown.text);
    if let Some(c) = &shown.comparison {
        ui::step_summary(&results::render::step_summary(c));
        let gate_failed = matches!(shown.failed, Some(GateFailure::Regression(_)));
        let url = notify_url(args.notify.url.as_deref(), plan_notify.as_ref());
        notify(rt, url.as_deref(), || {
            ops::results::notification(c, gate_failed)
        });
    }
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

fn history_command(args: HistoryArgs, g: &Global, rt: &Runtime) -> Result<u8> {
    let output = if g.json {
        Output::Text(Format::Json)
    } else {
        args.format
    };
    if let (Some(since), Some(until)) = (args.since, args.until)
        && since > until
    {
        return Err(UsageError(format!(
            "--since {since} is after --until {until}: no run can lie between them"
        ))
        .into());
    }
    let (ws, plan_notify) = open_results(g, args.plan.as_deref())?;
    let url = notify_url(args.notify.url.as_deref(), plan_notify.as_ref());
    let query = ops::history::Query {
        filter: Filter {
            tests: args.test,
            tasks: args.task,
            metrics: args.metric,
        },
        settings: args.thresholds.into(),
        // A CI system lists every test case, passed or not.
        all: args.all || output == Output::Junit,
        since: args.since,
        until: args.until,
    };
    // Searching again without the newest run costs a second search: only for the webhook.
    let (history, news) = match &url {
        Some(_) => {
            let (history, news) = ops::history::history_and_news(&ws, &query)?;
            (history, Some(news))
        }
        None => (ops::history::history(&ws, &query)?, None),
    };
    match output {
        Output::Text(format) => out!("{}", history::render::history(&history, format)),
        Output::Junit => out!("{}", history::render::junit(&history)),
    }
    ui::step_summary(&history::render::step_summary(&history));
    if let Some(news) = &news {
        notify(rt, url.as_deref(), || {
            ops::history::notification(&ws.name, news)
        });
    }
    Ok(0)
}

fn apply(
    path: &Path,
    args: PlanArgs<'_>,
    given_url: Option<&str>,
    g: &Global,
    rt: &Runtime,
) -> Result<u8> {
    let file = price_file(args.prices)?;
    let saved = ops::plan::read_saved(path)?;
    if saved.is_some() && !args.select.is_empty() {
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
    let options = args.options(file.as_ref());
    let (workspace, plan_backend) = (plan.name.clone(), plan.backend.clone());
    let url = notify_url(given_url, plan.notify.as_ref());
    let notify_url = url.as_deref();
    // The workspace's results are read again after the run for its change points, from the
    // backend the plan names: its source is all of the plan that takes beyond what is kept.
    let notified_source = notify_url.map(|_| plan.source.clone());
    let prepared = ops::apply::prepare(rt, path, plan, saved.as_ref(), backend, &options)?;
    workspace::remember_backend(g, plan_backend.as_ref(), &workspace);
    say_backend(prepared.backend())?;
    outln!("{}", planner::render(&prepared.changes));
    if prepared.changes.is_empty() {
        outln!("\nNothing to apply.");
        return Ok(0);
    }
    if let Some(e) = &prepared.estimate {
        out!("\n{}", cost::estimate::render(e));
    }
    if saved.is_none()
        && !args.auto_approve
        && let Some(code) = refused(
            rt,
            "\nDo you want to perform these actions?",
            "--auto-approve",
            "Apply",
        )?
    {
        return Ok(code);
    }
    outln!();
    let report = ops::apply::run(rt, prepared, args.parallelism)?;
    ui::step_summary(&apply_summary(&workspace, &report));
    notify(rt, notify_url, || report.notification(&workspace));
    if let Some(source) = &notified_source {
        notify(rt, notify_url, || {
            let found =
                workspace::backend_of(g, Some(&workspace), plan_backend.as_ref(), Some(source))
                    .and_then(|backend| report.change_notification(backend, &workspace));
            // The run's results are in: not knowing their history fails nothing.
            found.unwrap_or_else(|e| {
                ui::warn(&format!("cannot look for new change points: {e:#}"));
                None
            })
        });
    }
    outln!("\n{}", ui::summary_table(&report.state, &report.touched));
    if let Some(bill) = &report.bill {
        outln!("\nRun {} cost {bill}.", report.run_id);
    }
    for f in &report.failed {
        outln!(
            "\n{} {} failed at {}: {}",
            console::style("✗").red(),
            f.address,
            f.step,
            f.error
        );
        if let Some(tail) = &f.log_tail {
            for line in ui::log_tail(tail, console::colors_enabled()).lines() {
                outln!("    {line}");
            }
        }
    }
    let plan_arg = reaching(path, g);
    if report.interrupted {
        if !report.still_running.is_empty() {
            let paid = (report.still_running.iter())
                .any(|s| s.machine.provider == crate::plan::ProviderKind::Aws);
            outln!(
                "\nStill running{}:",
                if paid { " (and costing money)" } else { "" }
            );
            for s in &report.still_running {
                outln!("  {}  {}", s.address, s.machine.id);
            }
            outln!(
                "\nResume with `rallyctl apply {plan_arg}`, or terminate them with `rallyctl destroy {plan_arg}`."
            );
        }
        return Ok(EXIT_INTERRUPTED);
    }
    outln!(
        "\nApply complete: {} completed, {} failed.",
        report.completed.len(),
        report.failed.len()
    );
    if !report.failed.is_empty() {
        let names: Vec<String> = report
            .failed
            .iter()
            .map(|f| f.address.to_string())
            .collect();
        bail!(
            "{} test{} failed: {}",
            names.len(),
            plural(names.len()),
            names.join(", ")
        );
    }
    Ok(0)
}

/// The webhook to tell: `--notify`, else `RALLYCTL_NOTIFY_URL` (clap reads both, in that
/// order), else the variable the plan's `[notify] url_env` names. An empty one is none given:
/// CI expands a secret it may not read (a fork's job) to nothing. The plan's variable unset or
/// empty is a warning naming it, never a value: nothing is sent, and the command's outcome is
/// its own.
fn notify_url(given: Option<&str>, plan: Option<&NotifyConfig>) -> Option<String> {
    if let Some(url) = given.filter(|url| !url.is_empty()) {
        return Some(url.to_owned());
    }
    let var = &plan?.url_env;
    let problem = match std::env::var(var) {
        Ok(url) if !url.is_empty() => return Some(url),
        Ok(_) | Err(std::env::VarError::NotPresent) => "unset or empty",
        Err(std::env::VarError::NotUnicode(_)) => "no UTF-8 text",
    };
    ui::warn(&format!(
        "the plan's [notify] url_env names `{var}`, which is {problem}: no webhook is told"
    ));
    None
}

/// Tells the webhook, when one is given and there is something to tell. A failure to deliver is
/// a warning only: the command's own outcome is what CI acts on.
fn notify(rt: &Runtime, url: Option<&str>, message: impl FnOnce() -> Option<Message>) {
    let Some(url) = url else { return };
    let Some(message) = message() else { return };
    if let Err(e) = rt.block_on(crate::notify::send(url, &message)) {
        ui::warn(&format!("cannot notify the webhook: {e}"));
    }
}

/// An apply as a CI job's summary in Markdown: the counts, what it cost, and each failure with
/// the step it failed at and why.
fn apply_summary(workspace: &str, report: &ops::apply::ApplyReport) -> String {
    let mut out = format!(
        "### rallyctl apply: `{workspace}`, run {}\n\n{} completed, {} failed{}.\n",
        report.run_id,
        report.completed.len(),
        report.failed.len(),
        if report.interrupted {
            "; interrupted (apply again to resume)"
        } else {
            ""
        }
    );
    if let Some(bill) = &report.bill {
        out.push_str(&format!("\nRun {} cost {bill}.\n", report.run_id));
    }
    if !report.failed.is_empty() {
        let rows = (report.failed.iter())
            .map(|f| vec![f.address.to_string(), f.step.to_string(), f.error.clone()])
            .collect();
        let table = results::render::markdown_table(&["test", "failed at", "reason"], rows);
        out.push_str(&format!("\n#### Failed\n\n{table}"));
    }
    out
}

fn bake(path: &Path, auto_approve: bool, g: &Global, rt: &Runtime) -> Result<u8> {
    let plan = Plan::load(path)?;
    let backend = plan_backend(&plan, g)?;
    let prepared = ops::bake::prepare(path, plan, backend)?;
    if prepared.wanted.is_empty() {
        outln!(
            "Nothing to bake: no test of {} says ami = \"baked\".",
            path.display()
        );
        return Ok(0);
    }
    outln!("{}", crate::bake::render(&prepared.wanted));
    if !prepared.to_bake() {
        return Ok(0);
    }
    if !auto_approve
        && let Some(code) = refused(
            rt,
            "\nDo you want to bake these images?",
            "--auto-approve",
            "Bake",
        )?
    {
        return Ok(code);
    }
    outln!();
    let baked = ops::bake::run(rt, prepared)?;
    outln!();
    let mut failed = Vec::new();
    let mut interrupted = false;
    for b in &baked {
        match &b.outcome {
            Ok(id) => outln!("{} baked {id}: {}", console::style("✓").green(), b.key),
            Err(e) => {
                interrupted |= matches!(e, crate::bake::BakeError::Interrupted);
                outln!("{} {}: {e}", console::style("✗").red(), b.key);
                failed.push(b.key.to_string());
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
    outln!(
        "\nBake complete: {} image{} made.",
        baked.len(),
        plural(baked.len())
    );
    Ok(0)
}

fn destroy(
    plan_path: Option<&Path>,
    auto_approve: bool,
    images: bool,
    g: &Global,
    rt: &Runtime,
) -> Result<u8> {
    let Target {
        backend, workspace, ..
    } = target(g, plan_path)?;
    let location = backend.location();
    let shown = plan_path.map_or(location.clone(), |p| p.display().to_string());
    let found = ops::destroy::survey(
        rt,
        backend,
        workspace.as_deref(),
        |b| workspace::load_checked(b, workspace.as_deref()),
        plan_path,
        images,
        &format!("rallyctl destroy {shown}"),
    )?;
    let Some(found) = found else {
        outln!("Nothing to destroy: no state at {location}.");
        return Ok(0);
    };
    // Snapshots cost money too: say what stays unless asked to give it back.
    if found.kept > 0 {
        outln!(
            "The workspace keeps {} baked image{}: `rallyctl destroy --images` gives them back.\n",
            found.kept,
            plural(found.kept)
        );
    }
    if !found.gone.is_empty() {
        outln!("State names machines that are gone already; they will be recorded as such:\n");
        for g in &found.gone {
            outln!("  {}  {}  ({})", g.id, g.address, g.why);
        }
        outln!();
    }
    if found.is_empty() {
        let workspace = found.workspace.clone();
        ops::destroy::give_back(rt, found)?;
        outln!("Nothing to destroy: workspace `{workspace}` holds no machine.");
        return Ok(0);
    }
    if !found.targets.is_empty() {
        outln!("rallyctl will give back these machines:\n");
    }
    let minus = console::style("-").red();
    for t in &found.targets {
        let (id, how) = (&t.machine.id, t.machine.provider.released());
        match (&t.address, &t.bake) {
            (Some(a), _) => outln!("  {minus} {id}  {a}  (to be {how})"),
            (None, Some(bake)) => outln!("  {minus} {id}  bake {bake}  (to be {how})"),
            (None, None) => outln!(
                "  {minus} {id}  (leaked: tagged with this workspace, unknown to state; to be {how})"
            ),
        }
    }
    if !found.images.is_empty() {
        outln!(
            "{}rallyctl will deregister these baked images and delete their snapshots:\n",
            if found.targets.is_empty() { "" } else { "\n" }
        );
    }
    for i in &found.images {
        let snapshots = match i.snapshot_ids.as_slice() {
            [] => "no snapshot recorded".to_owned(),
            ids => ids.join(", "),
        };
        match (&i.id, &i.name) {
            (Some(id), Some(name)) => outln!("  {minus} {id}  {name}  ({snapshots})"),
            (Some(id), None) => outln!(
                "  {minus} {id}  (tagged with this workspace, unknown to state; {snapshots})"
            ),
            (None, _) => outln!(
                "  {minus} {snapshots}  (snapshots tagged with this workspace, of no image left)"
            ),
        }
    }
    if !found.groups.is_empty() {
        outln!(
            "{}rallyctl will delete these placement groups once their instances are gone:\n",
            if found.targets.is_empty() && found.images.is_empty() {
                ""
            } else {
                "\n"
            }
        );
    }
    for g in &found.groups {
        outln!("  {minus} {}  ({})", g.name, g.region);
    }
    outln!(
        "\nDestroy: {} to give back.",
        found.targets.len() + found.images.len() + found.groups.len()
    );
    if !auto_approve
        && let Some(code) = refused(
            rt,
            "\nDo you really want to give them back?",
            "--auto-approve",
            "Destroy",
        )?
    {
        return Ok(code);
    }
    let report = ops::destroy::give_back(rt, found)?;
    if report.not_given_back.is_empty() {
        let images = match report.images {
            0 => String::new(),
            n => format!(", {n} image{} deregistered", plural(n)),
        };
        let groups = match report.groups {
            0 => String::new(),
            n => format!(", {n} placement group{} deleted", plural(n)),
        };
        outln!(
            "\nDestroy complete: {} machine{} given back{images}{groups}.",
            report.machines,
            plural(report.machines)
        );
        Ok(0)
    } else {
        let lines: Vec<String> = (report.not_given_back.iter())
            .map(|f| format!("{}: {}", f.id, f.error))
            .collect();
        bail!("not given back:\n  {}", lines.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    /// One async runtime per process, built in `main` and handed to every command: no command
    /// or module builds one of its own, except the S3 client's (its blocking calls come from
    /// inside the walk's tasks, where the process's runtime cannot be blocked on).
    #[test]
    fn the_process_has_one_async_runtime() {
        let mut built = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for _ in code.matches("runtime::Builder::new_") {
                    built.push(
                        path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                            .unwrap()
                            .to_owned(),
                    );
                }
            }
        }
        built.sort();
        assert_eq!(
            built,
            [
                std::path::Path::new("src/backend/s3.rs"),
                std::path::Path::new("src/cli/mod.rs")
            ]
        );
    }

    fn global(backend: Option<super::BackendArg>, state: Option<&str>) -> super::Global {
        super::Global {
            state: state.map(Into::into),
            workspace: None,
            backend,
            no_color: true,
            json: false,
            verbose: 0,
        }
    }

    /// Hints name the workspace as the command line reached it: `--backend` or `--state`
    /// included, so that the command they give reaches the same state.
    #[test]
    fn hints_reach_the_same_workspace() {
        let plan = std::path::Path::new("plans/example.toml");
        let s3 = crate::plan::S3Config::from_url("s3://perf-state/rallyctl").unwrap();
        let reached = [
            global(None, None),
            global(Some(super::BackendArg::S3(s3)), None),
            global(Some(super::BackendArg::Local), None),
            global(None, Some("elsewhere/n.json")),
        ]
        .map(|g| super::reaching(plan, &g));
        assert_eq!(
            reached,
            [
                "plans/example.toml",
                "plans/example.toml --backend s3://perf-state/rallyctl",
                "plans/example.toml --backend local",
                "plans/example.toml --state elsewhere/n.json",
            ]
        );
    }
}
