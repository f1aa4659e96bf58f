//! `plan`: the diff of a plan against its state, the images its launches use, what they cost;
//! and the pieces `apply` shares with it (the account check, prices, saved plans).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Result, bail};
use tokio::runtime::Runtime;

use super::Loaded;
use crate::address::Address;
use crate::cost::{self, PriceFile};
use crate::plan::{Plan, ProviderKind, Settings};
use crate::planner::{self, Changes, Options, SavedPlan};
use crate::provider::Limit;
use crate::state::{self, LockHolder, LockState, State};
use crate::ui;

/// What `plan` found: the changes, the baked image each test that launches uses, the estimate.
pub struct PlanReport {
    pub changes: Changes,
    pub images: Vec<(Address, String)>,
    pub estimate: Option<cost::estimate::Estimate>,
    /// Who holds the workspace's lock, when a run that may still be going does: the tests it
    /// runs are in its hands, whatever the diff says of them.
    pub locked_by: Option<LockHolder>,
}

/// What the command line asks of `plan` and `apply` beyond the plan itself.
pub struct PlanOptions<'a> {
    /// `--target`: only these tests (a test's name selects all its variants).
    pub target: &'a [Address],
    /// `--replace`: these tests again even when their result exists.
    pub replace: &'a [Address],
    /// `--parallelism`, to check against the account's caps.
    pub parallelism: usize,
    /// `--refresh`: whether the plan is checked against the providers' accounts.
    pub refresh: bool,
    /// `--prices`: the price file read instead of the Price List API.
    pub prices: Option<&'a PriceFile>,
}

/// Plans `l` (its images resolved from state): nothing is launched or written.
pub fn plan(rt: &Runtime, l: &mut Loaded, o: &PlanOptions<'_>) -> Result<PlanReport> {
    let (limits, reached) = check_account(rt, &l.plan, o.refresh)?;
    let resolved = crate::bake::resolve(&mut l.plan, &l.state);
    let options = selection(o.target, o.replace, &l.plan, &l.state)?;
    let changes = planner::diff(&l.plan, &l.state, &l.artifacts, &options);
    refuse_local_nodes_as_root(&l.plan, &changes)?;
    warn_limits(&l.plan, &changes, &limits, o.parallelism);
    let images = baked_images(&l.plan, resolved, &changes)?;
    let prices = prices_for(rt, &l.plan, &changes, o.prices, reached)?;
    let estimate = cost::estimate::estimate(&l.plan, &l.state, &changes, &prices);
    let locked_by = match l.backend.lock_state()? {
        // A holder that died here left the lock for the next run to take over.
        LockState::Held(h) if h.host != state::hostname() || state::holder_alive_here(&h) => {
            Some(h)
        }
        LockState::Held(_) | LockState::Unlocked | LockState::Unreadable => None,
    };
    Ok(PlanReport {
        changes,
        images,
        estimate,
        locked_by,
    })
}

/// The diff's options for `--target` and `--replace`, each address expanded to the tests it
/// selects; an address that selects nothing is an error.
pub fn selection(
    target: &[Address],
    replace: &[Address],
    plan: &Plan,
    state: &State,
) -> Result<Options> {
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
        targets: expand(target)?,
        replace: expand(replace)?,
        now: jiff::Timestamp::now(),
    })
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

/// The prices of the machines the tests `changes` will run get: nothing is looked up for a
/// plan without aws tests to run. EC2 is asked what only it tells (root volumes, spot prices
/// now) unless `ec2` says why not.
pub(super) fn prices_for(
    rt: &Runtime,
    plan: &Plan,
    changes: &Changes,
    file: Option<&PriceFile>,
    ec2: Result<(), &str>,
) -> Result<cost::Prices> {
    let to_run: HashSet<&Address, crate::FastHash> =
        changes.changes.iter().map(|c| &c.address).collect();
    let settings: Vec<&Settings> = (plan.tests())
        .filter(|t| to_run.contains(&t.address))
        .map(|t| &t.settings)
        .filter(|s| s.provider() == ProviderKind::Aws)
        .collect();
    if settings.is_empty() {
        return Ok(cost::Prices::default());
    }
    Ok(rt.block_on(async {
        let facts = match ec2 {
            Ok(()) => Some(crate::provider::aws::CostFacts::from_env().await),
            Err(_) => None,
        };
        let ec2 = facts.as_ref().ok_or_else(|| ec2.err().unwrap_or_default());
        cost::look_up(settings, file, &mut cost::Cache::for_user(), ec2).await
    }))
}

/// The account's caps, each with what each test takes of it.
pub(super) type Limits = Vec<(Limit, HashMap<Address, u64>)>;

/// Checks the plan against its providers' accounts (Terraform's refresh), unless `refresh` is
/// false: what they lack is an error at the plan file's line and column, before anything is
/// launched or paid for. When the check itself cannot be made (no credentials, no network)
/// planning goes on, saying so. Returns the caps on what may run at once (EC2's vCPU quota),
/// for [`warn_limits`], and whether EC2 answered (else why it is not asked again).
pub(super) fn check_account(
    rt: &Runtime,
    plan: &Plan,
    refresh: bool,
) -> Result<(Limits, Result<(), &'static str>)> {
    if !refresh {
        return Ok((vec![], Err("EC2 was not asked (--refresh=false)")));
    }
    let settings: Vec<&Settings> = plan.tests().map(|t| &t.settings).collect();
    match rt.block_on(crate::provider::preflight(&settings)) {
        Ok(found) if found.problems.is_empty() => {
            for why in &found.unchecked {
                ui::warn(why);
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
            ui::warn(&format!(
                "could not check the plan against the account ({e}); `--refresh=false` skips this check"
            ));
            Ok((vec![], Err("EC2 could not be reached")))
        }
    }
}

/// The cluster tests whose nodes would run on this machine while rallyctl runs as root:
/// `esrally start` refuses to launch Elasticsearch as root, so `apply` could only fail them
/// once it had installed everything; `plan` refuses them as `apply` does, since a dry run that
/// passes where `apply` fails is no dry run.
pub(super) fn refuse_local_nodes_as_root(plan: &Plan, changes: &Changes) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    refuse_local_nodes(plan, changes, unsafe { libc::geteuid() } == 0)
}

fn refuse_local_nodes(plan: &Plan, changes: &Changes, as_root: bool) -> Result<()> {
    if !as_root {
        return Ok(());
    }
    let refused: Vec<String> = (changes.changes.iter())
        .filter(|c| c.action != planner::Action::Terminate)
        .filter_map(|c| {
            let s = &plan.test(&c.address)?.settings;
            (s.cluster.is_some() && s.provider() == crate::plan::ProviderKind::Local)
                .then(|| c.address.to_string())
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let one = refused.len() == 1;
    anyhow::bail!(
        "{}: the nodes of {} cluster would run on this machine as root, and Rally refuses to launch Elasticsearch as root; nothing was acquired. Run rallyctl as another user, race {} on aws or ssh, or leave {} out with --target",
        refused.join(", "),
        if one { "its" } else { "their" },
        if one { "the test" } else { "the tests" },
        if one { "it" } else { "them" },
    )
}

/// Warns when the tests that `changes` runs may hold more at once than a cap of the account
/// leaves (EC2's running On-Demand vCPU quota), naming the `--parallelism` that fits: beyond
/// the cap, launches fail.
pub(super) fn warn_limits(plan: &Plan, changes: &Changes, limits: &Limits, parallelism: usize) {
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
        ui::warn(&format!(
            "suite `{suite}` may run {peak} {unit} at once under --parallelism {parallelism}, but {} is {} with {} in use, {room} free: {fits}; launches beyond it fail",
            limit.name,
            limit.quota,
            limit.in_use,
            unit = limit.unit,
        ));
    }
}

/// The baked image each test that is to launch uses; such a test whose image state lacks is
/// an error at the plan's `base_ami`, naming the command that makes it. A test with nothing to
/// run needs no image (its image may have been given back since).
pub(super) fn baked_images(
    plan: &Plan,
    resolved: crate::bake::Resolved,
    changes: &Changes,
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

/// The saved plan at `path`, or `None` for a plan file: a saved plan is JSON with a
/// `format_version`.
pub fn read_saved(path: &Path) -> Result<Option<SavedPlan>> {
    let is_saved = serde_json::from_slice::<serde_json::Value>(&Plan::read_bytes(path)?)
        .is_ok_and(|v| v.get("format_version").is_some());
    Ok(if is_saved {
        Some(SavedPlan::read(path)?)
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster this version races (nodes and load drivers on aws or ssh, variants too) is
    /// let through; nodes on `local` are refused, each test named.
    #[test]
    fn local_nodes_are_refused_to_root_by_name_with_why() {
        let text = "version = 1\nname = \"c\"\n[defaults]\nprovider = \"aws\"\nregion = \"us-east-1\"\n\
            ami = \"ami-12345678\"\ninstance_type = \"m5.large\"\ntrack = \"t\"\ncluster = { nodes = 2 }\n\
            distribution_version = \"8.15.0\"\n\
            [[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"raced\"\n\
            [[suite.test]]\nname = \"drivers\"\nload_drivers = 2\n\
            [[suite.test]]\nname = \"here\"\nprovider = \"local\"\ncluster = { nodes = 1 }\n\
            [[suite.test]]\nname = \"there\"\nprovider = \"local\"\ncluster = { nodes = 1 }\n\
            [[suite.test]]\nname = \"ab\"\n[[suite.test.variant]]\nname = \"a\"\nchallenge = \"x\"\n\
            [[suite.test.variant]]\nname = \"b\"\nchallenge = \"y\"\n";
        let plan = Plan::parse(std::path::Path::new("c.toml"), text).unwrap();
        let artifacts = planner::render_all(&plan, &crate::templates::Renderer::new()).unwrap();
        let state = State::new("c");
        let changes = planner::diff(&plan, &state, &artifacts, &planner::Options::default());
        refuse_local_nodes(&plan, &changes, false).unwrap();
        let error = refuse_local_nodes(&plan, &changes, true)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "s.here, s.there: the nodes of their cluster would run on this machine as root"
            ),
            "{error}"
        );
        assert!(
            error.ends_with("race the tests on aws or ssh, or leave them out with --target"),
            "{error}"
        );
        let raced = planner::Changes {
            changes: (changes.changes.into_iter())
                .filter(|c| ["raced", "drivers", "ab-a", "ab-b"].contains(&c.address.test()))
                .collect(),
            ..planner::Changes::default()
        };
        assert_eq!(raced.changes.len(), 4);
        refuse_local_nodes(&plan, &raced, true).unwrap();
    }
}
