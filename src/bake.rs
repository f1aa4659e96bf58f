//! Baked images: `rallyctl bake` moves the install out of the billed path of every test. It
//! launches one instance per [`BakeKey`] among the plan's `ami = "baked"` tests, runs the same
//! install script on it as apply would (through the lifecycle's own pieces), makes an image of
//! it, waits until the image is available, terminates the instance and records the image in
//! state. `plan` and `apply` then [`resolve`] each such test to the image state records; its
//! install script finds the venv there and only verifies it.
//!
//! Like a test, a bake writes each step to state before it runs: a killed bake resumes at its
//! step (the instance is adopted by its tags, the image by its name), `destroy` finds a bake
//! instance in state or by its tags, and the instance is terminated whatever happens.

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::address::{Address, slug};
use crate::backend::StateHandle;
use crate::lifecycle::{self, Stop};
use crate::plan::{LaunchImage, MachineSettings, Plan, Settings, Test};
use crate::provider::aws::ImageWait;
use crate::provider::{Acquire, Fleet, Provider};
use crate::state::{BakeKey, BakeStep, Image, Machine, State};
use crate::templates::{ArtifactMap, Renderer};
use crate::ui::Progress;

/// What a test asks a baked image for; none for a test that launches from an AMI id.
pub fn key_of(settings: &Settings) -> Option<BakeKey> {
    let MachineSettings::Aws(a) = &settings.machine else {
        return None;
    };
    Some(BakeKey {
        base_ami: a.base_ami.as_deref()?.to_owned(),
        region: a.region.to_string(),
        rally_version: settings.rally_version.to_string(),
        needs_java: settings.needs_java(),
        remote_dir: settings.remote_dir.to_string(),
    })
}

/// A test asking for a baked image that state does not have.
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    pub address: Address,
    pub key: BakeKey,
}

/// Which image each `ami = "baked"` test launches from, and the tests state has no image
/// for (a problem only for those that are to launch).
#[derive(Debug, Default)]
pub struct Resolved {
    pub used: Vec<(Address, String)>,
    pub missing: Vec<Missing>,
}

/// Points every `ami = "baked"` test of the plan at the image state records for it. The image
/// id stays out of the config hash (see [`crate::plan::AwsSettings::image`]).
pub fn resolve(plan: &mut Plan, state: &State) -> Resolved {
    let mut resolved = Resolved::default();
    for test in plan.suites.iter_mut().flat_map(|s| s.tests.iter_mut()) {
        let Some(key) = key_of(&test.settings) else {
            continue;
        };
        let MachineSettings::Aws(a) = &mut test.settings.machine else {
            continue;
        };
        let image = state.image_for(&key);
        match image.and_then(|i| i.image_id.clone()) {
            Some(id) => {
                a.image = Some(LaunchImage {
                    id: id.as_str().into(),
                    installed: image
                        .and_then(|i| i.instance.as_ref()?.installed.as_deref())
                        .map(Into::into),
                });
                resolved.used.push((test.address.clone(), id));
            }
            None => resolved.missing.push(Missing {
                address: test.address.clone(),
                key,
            }),
        }
    }
    resolved
}

/// What `bake` does for one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Launch an instance and bake.
    Bake,
    /// Go on with the bake a killed run left at this step.
    Resume(BakeStep),
    /// State has the image already.
    Have(String),
}

/// One image the plan asks for: its key, the first test asking (the bake instance launches
/// like it), how many tests ask, and what bake does about it.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub key: BakeKey,
    pub like: Address,
    pub tests: usize,
    pub action: Action,
}

/// The images the plan's `ami = "baked"` tests ask for, in plan order, one per key.
pub fn wanted(plan: &Plan, state: &State) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = Vec::new();
    for test in plan.tests() {
        let Some(key) = key_of(&test.settings) else {
            continue;
        };
        if let Some(w) = out.iter_mut().find(|w| w.key == key) {
            w.tests += 1;
            continue;
        }
        let action = match (state.image_for(&key), in_progress(state, &key)) {
            (Some(i), _) => Action::Have(i.image_id.clone().unwrap_or_default()),
            (None, Some(i)) => Action::Resume(state.images[i].step),
            (None, None) => Action::Bake,
        };
        out.push(Wanted {
            key,
            like: test.address.clone(),
            tests: 1,
            action,
        });
    }
    out
}

/// The bake of `key` a killed run left unfinished.
fn in_progress(state: &State, key: &BakeKey) -> Option<usize> {
    state.images.iter().position(|i| {
        &i.baked_for == key
            && !matches!(
                i.step,
                BakeStep::Available | BakeStep::Failed | BakeStep::Deregistered
            )
    })
}

/// What `bake` will do, for the user to approve.
pub fn render(wanted: &[Wanted]) -> String {
    let mut out = String::new();
    for w in wanted {
        let tests = format!("{} test{}", w.tests, if w.tests == 1 { "" } else { "s" });
        let line = match &w.action {
            Action::Bake => format!(
                "  + bake {}  (for {tests}; launches like {})",
                w.key, w.like
            ),
            Action::Resume(step) => format!(
                "  > bake {}  (for {tests}; resumes at {})",
                w.key,
                step.name()
            ),
            Action::Have(id) => format!("    {id}  {}  (for {tests}; baked already)", w.key),
        };
        out.push_str(&line);
        out.push('\n');
    }
    let to_bake = (wanted.iter())
        .filter(|w| !matches!(w.action, Action::Have(_)))
        .count();
    out.push_str(&match to_bake {
        0 => "\nNothing to bake: state has every image the plan's tests ask for.".to_owned(),
        n => format!(
            "\nBake: {n} image{} to make, each on an instance of its own that is terminated once its image is available.",
            if n == 1 { "" } else { "s" }
        ),
    });
    out
}

/// Everything a bake needs from the command that runs it.
pub struct Ctx<'a> {
    pub fleet: &'a Fleet,
    pub state: &'a StateHandle,
    pub plan: &'a Plan,
    pub artifacts: &'a ArtifactMap,
    pub renderer: &'a Renderer,
    pub run_id: &'a str,
    pub progress: &'a Progress,
    pub cancel: &'a CancellationToken,
}

/// Why a bake did not make its image.
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error("{step}: {message}")]
    Failed { step: &'static str, message: String },
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// Bakes the image `w` asks for; its id.
pub async fn bake(ctx: &Ctx<'_>, w: &Wanted) -> Result<String, BakeError> {
    let test = ctx
        .plan
        .test(&w.like)
        .expect("the bake launches like a test of the plan");
    let index = begin(ctx, w, &test.settings)?;
    let like = launch_like(test);
    let outcome = steps(ctx, index, &like).await;
    // The instance is given back whatever happened: a bake never leaves one running.
    let released = release(ctx, index, &like.settings).await;
    match (outcome, released) {
        (Ok(id), Ok(())) => {
            ctx.state
                .update(|s| s.images[index].set_step(BakeStep::Available))?;
            Ok(id)
        }
        (Err(e), _) | (Ok(_), Err(e)) => {
            let error = e.to_string();
            ctx.state.update(|s| {
                let image = &mut s.images[index];
                image.error = Some(error);
                image.set_step(BakeStep::Failed);
            })?;
            Err(e)
        }
    }
}

/// The bake instance's test: the first test asking, launched from the base AMI, alone (a
/// cluster's placement group is its test's, made when the test launches).
fn launch_like(test: &Test) -> Test {
    let mut like = test.clone();
    if let MachineSettings::Aws(a) = &mut like.settings.machine {
        a.image = a.base_ami.clone().map(|id| LaunchImage {
            id,
            installed: None,
        });
        a.placement_group = None;
    }
    like
}

/// The record of this bake: the one a killed run left, or a new attempt, written before
/// anything is launched.
fn begin(ctx: &Ctx<'_>, w: &Wanted, settings: &Settings) -> Result<usize, BakeError> {
    let workspace = &ctx.plan.name;
    Ok(ctx.state.update(|s| {
        if let Some(i) = in_progress(s, &w.key) {
            return i;
        }
        let attempt = 1 + s.images.iter().filter(|i| i.baked_for == w.key).count() as u32;
        let name = format!(
            "rallyctl-{}-{}-{attempt}",
            slug(workspace),
            &hex::encode(Sha256::digest(format!(
                "{}\n{}",
                s.lineage,
                serde_json::to_string(&w.key).expect("a key serializes")
            )))[..12]
        );
        let mut image = Image {
            baked_for: w.key.clone(),
            step: BakeStep::Launching,
            attempt,
            settings: settings.into(),
            instance: None,
            name,
            image_id: None,
            snapshot_ids: vec![],
            created_at: None,
            error: None,
            history: vec![],
        };
        image.set_step(BakeStep::Launching);
        s.images.push(image);
        s.images.len() - 1
    })?)
}

/// The address the bake instance is tagged with (`rallyctl:test`), so a killed bake adopts it.
fn address_of(image: &Image) -> Address {
    let digest = hex::encode(Sha256::digest(&image.name));
    Address::new("bake", &digest[..12]).expect("hex digits are a name")
}

fn failed(step: BakeStep) -> impl Fn(Stop) -> BakeError {
    move |stop| match stop {
        Stop::Failed(f) => BakeError::Failed {
            step: step.name(),
            message: f.error,
        },
        Stop::Interrupted => BakeError::Interrupted,
        Stop::State(e) => BakeError::State(e),
    }
}

fn provider_failed<E: std::fmt::Display>(step: BakeStep) -> impl Fn(E) -> BakeError {
    move |e| BakeError::Failed {
        step: step.name(),
        message: e.to_string(),
    }
}

/// Runs the bake from its recorded step up to an available image.
async fn steps(ctx: &Ctx<'_>, index: usize, like: &Test) -> Result<String, BakeError> {
    let image = ctx.state.read(|s| s.images[index].clone());
    let say = |what: &str| {
        ctx.progress
            .println(&format!("bake {}: {what}", image.baked_for))
    };
    let mut step = image.step;
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(BakeError::Interrupted);
        }
        say(step.name());
        step = match step {
            BakeStep::Launching => {
                let machine = acquire(ctx, &image, like).await?;
                ctx.state.update(|s| {
                    let i = &mut s.images[index];
                    i.instance = Some(machine);
                    i.set_step(BakeStep::Booting);
                })?;
                BakeStep::Booting
            }
            BakeStep::Booting | BakeStep::Installing => {
                let machine = ctx
                    .state
                    .read(|s| s.images[index].instance.clone())
                    .expect("a launched bake records its instance");
                let reachable =
                    lifecycle::reachable(ctx.fleet, ctx.cancel, &machine, &like.settings)
                        .await
                        .map_err(failed(BakeStep::Booting))?;
                let conn = lifecycle::Conn { machine, reachable };
                lifecycle::answers(ctx.fleet, ctx.cancel, &like.settings, &conn)
                    .await
                    .map_err(failed(BakeStep::Booting))?;
                ctx.state
                    .update(|s| s.images[index].set_step(BakeStep::Installing))?;
                install(ctx, like, &conn).await?;
                // The image holds what the script installed: a test launched from it whose
                // script is this one does not run it again.
                let digest = ctx.artifacts[&like.address].install_digest();
                ctx.state.update(|s| {
                    let i = &mut s.images[index];
                    if let Some(m) = &mut i.instance {
                        m.installed = Some(digest);
                    }
                    i.set_step(BakeStep::Imaging);
                })?;
                BakeStep::Imaging
            }
            BakeStep::Imaging => return imaging(ctx, index).await,
            // Past imaging: the image is made; the caller gives the instance back.
            BakeStep::Terminating | BakeStep::Available => {
                return ctx
                    .state
                    .read(|s| s.images[index].image_id.clone())
                    .ok_or_else(|| BakeError::Failed {
                        step: "terminating",
                        message: "state records no image for this bake".into(),
                    });
            }
            BakeStep::Failed | BakeStep::Deregistered => {
                unreachable!("only a bake in progress is resumed")
            }
        };
    }
}

/// Launching: the bake instance, tagged like a test's (so `destroy` finds it by tag too).
async fn acquire(ctx: &Ctx<'_>, image: &Image, like: &Test) -> Result<Machine, BakeError> {
    let artifacts = &ctx.artifacts[&like.address];
    let address = address_of(image);
    let on_wait = |why: String| {
        ctx.progress
            .println(&format!("bake {}: {why}", image.baked_for))
    };
    let acquired = ctx
        .fleet
        .acquire(&Acquire {
            member: None,
            workspace: &ctx.plan.name,
            lineage: ctx.state.read(|s| s.lineage),
            address: &address,
            attempt: image.attempt,
            run_id: ctx.run_id,
            settings: &like.settings,
            artifacts,
            reclaimed: 0,
            cancel: ctx.cancel,
            on_wait: &on_wait,
        })
        .await
        .map_err(provider_failed(BakeStep::Launching))?;
    let mut machine = acquired.machine;
    machine.run_dir = Some(format!(
        "{}/runs/{}/bake/{}",
        like.settings.remote_dir,
        slug(&ctx.plan.name),
        image.name
    ));
    Ok(machine)
}

/// Installing: the test's own bundle and install script, as apply runs them.
async fn install(ctx: &Ctx<'_>, like: &Test, conn: &lifecycle::Conn) -> Result<(), BakeError> {
    let said = lifecycle::install_on(
        ctx.fleet,
        ctx.cancel,
        ctx.renderer,
        like,
        &ctx.artifacts[&like.address],
        conn,
        &crate::staging::Origin {
            workspace: &ctx.plan.name,
            run_id: ctx.run_id,
        },
    )
    .await
    .map_err(failed(BakeStep::Installing))?;
    for line in said {
        ctx.progress.println(&format!("bake: {line}"));
    }
    Ok(())
}

/// Imaging: CreateImage (found again by name after a crash), recorded, then waited for until
/// available; Ctrl-C ends the wait. Its snapshots are recorded as soon as the image names
/// them, so that `destroy --images` deletes them whatever ends the wait.
async fn imaging(ctx: &Ctx<'_>, index: usize) -> Result<String, BakeError> {
    let image = ctx.state.read(|s| s.images[index].clone());
    let machine = image
        .instance
        .clone()
        .expect("a bake at imaging records its instance");
    let aws = ctx
        .fleet
        .aws_extras()
        .await
        .map_err(provider_failed(BakeStep::Imaging))?;
    let id = aws
        .create_image(&machine, &image.name, &ctx.plan.name)
        .await
        .map_err(provider_failed(BakeStep::Imaging))?;
    ctx.state
        .update(|s| s.images[index].image_id = Some(id.clone()))?;
    let region = &image.baked_for.region;
    let since = std::time::Instant::now();
    let mut known = image.snapshot_ids;
    loop {
        let seen = tokio::select! {
            seen = aws.wait_image(region, &id, &known, since) => seen.map_err(provider_failed(BakeStep::Imaging))?,
            _ = ctx.cancel.cancelled() => return Err(BakeError::Interrupted),
        };
        match seen {
            ImageWait::Snapshots(ids) => {
                for snapshot in ids {
                    if !known.contains(&snapshot) {
                        known.push(snapshot);
                    }
                }
                ctx.state
                    .update(|s| s.images[index].snapshot_ids = known.clone())?;
            }
            ImageWait::Available(_) => break,
        }
    }
    ctx.state.update(|s| {
        let i = &mut s.images[index];
        i.created_at = Some(jiff::Timestamp::now());
        i.set_step(BakeStep::Terminating);
    })?;
    Ok(id)
}

/// Terminating: gives the bake instance back, if it may still run, and records that.
async fn release(ctx: &Ctx<'_>, index: usize, settings: &Settings) -> Result<(), BakeError> {
    let Some(machine) = ctx.state.read(|s| s.images[index].live_machine().cloned()) else {
        return Ok(());
    };
    ctx.fleet
        .release(&machine, settings)
        .await
        .map_err(provider_failed(BakeStep::Terminating))?;
    ctx.state.update(|s| {
        if let Some(m) = &mut s.images[index].instance {
            m.released_at = Some(jiff::Timestamp::now());
        }
    })?;
    Ok(())
}

/// Which image each `ami = "baked"` test launches from, for `plan` to show.
pub fn render_used(used: &[(Address, String)]) -> String {
    let mut out = String::from("Baked images the tests launch from:");
    for (address, id) in used {
        out.push_str(&format!("\n  {address}  {id}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::templates::Renderer;

    const HEAD: &str = "version = 1\nname = \"b\"\n[defaults]\nregion = \"us-east-1\"\ninstance_type = \"t\"\ntrack = \"x\"\n";

    fn plan(tests: &str) -> Plan {
        Plan::parse(
            Path::new("b.toml"),
            &format!("{HEAD}[[suite]]\nname = \"s\"\n{tests}"),
        )
        .unwrap()
    }

    fn errors(tests: &str) -> Vec<(String, String)> {
        let text = format!("{HEAD}[[suite]]\nname = \"s\"\n{tests}");
        let errors = Plan::parse(Path::new("b.toml"), &text).unwrap_err();
        (errors.diagnostics.iter())
            .map(|d| (d.field.clone(), d.message.clone()))
            .collect()
    }

    const BAKED: &str = "ami = \"baked\"\nbase_ami = \"ami-0b\"\n";

    fn available(state: &mut State, key: BakeKey, id: &str) {
        let settings = plan(&format!("[[suite.test]]\nname = \"t\"\n{BAKED}"));
        state.images.push(Image {
            baked_for: key,
            step: BakeStep::Available,
            attempt: 1,
            settings: (&settings.suites[0].tests[0].settings).into(),
            instance: None,
            name: format!("rallyctl-b-{id}"),
            image_id: Some(id.into()),
            snapshot_ids: vec!["snap-1".into()],
            created_at: Some(jiff::Timestamp::now()),
            error: None,
            history: vec![],
        });
    }

    #[test]
    fn baked_needs_a_base_ami_and_a_base_ami_needs_baked() {
        assert_eq!(
            errors("[[suite.test]]\nname = \"t\"\nami = \"baked\"\n"),
            [(
                "suite[0].test[0]".to_owned(),
                "`ami = \"baked\"` needs `base_ami`: the AMI `rallyctl bake` bakes the image from"
                    .to_owned()
            )]
        );
        assert_eq!(
            errors("[[suite.test]]\nname = \"t\"\nami = \"ami-0a\"\nbase_ami = \"ami-0b\"\n"),
            [(
                "suite[0].test[0].base_ami".to_owned(),
                "`base_ami` is read only with `ami = \"baked\"`; with an AMI id, leave it out"
                    .to_owned()
            )]
        );
        assert_eq!(
            errors("[[suite.test]]\nname = \"t\"\nami = \"bakd\"\nbase_ami = \"ami-0b\"\n"),
            [(
                "suite[0].test[0].ami".to_owned(),
                "`bakd` is neither an EC2 ami id nor \"baked\"".to_owned()
            )]
        );
        assert_eq!(
            errors("[[suite.test]]\nname = \"t\"\nprovider = \"local\"\nbase_ami = \"ami-0b\"\n")
                .len(),
            1
        );
    }

    /// The image a test launches from is state's, not the configuration's: a re-bake leaves
    /// every result current. What it is baked from and for is the configuration's.
    #[test]
    fn the_resolved_image_is_outside_the_config_hash_and_the_base_ami_inside() {
        let mut p = plan(&format!("[[suite.test]]\nname = \"t\"\n{BAKED}"));
        let hash = |p: &Plan| {
            Renderer::new()
                .render(&p.suites[0].tests[0])
                .unwrap()
                .config_hash
        };
        let before = hash(&p);
        let key = key_of(&p.suites[0].tests[0].settings).unwrap();
        let mut state = State::new("b");
        available(&mut state, key.clone(), "ami-0c0ffee");
        let resolved = resolve(&mut p, &state);
        assert!(resolved.missing.is_empty());
        assert_eq!(
            resolved.used,
            [("s.t".parse().unwrap(), "ami-0c0ffee".to_owned())]
        );
        let MachineSettings::Aws(a) = &p.suites[0].tests[0].settings.machine else {
            unreachable!()
        };
        assert_eq!(a.launch_ami(), Some("ami-0c0ffee"));
        assert_eq!(hash(&p), before);
        let other = plan("[[suite.test]]\nname = \"t\"\nami = \"baked\"\nbase_ami = \"ami-0d\"\n");
        assert_ne!(hash(&other), before);
    }

    #[test]
    fn a_test_without_its_image_in_state_is_missing_and_launches_from_nothing() {
        let mut p = plan(&format!(
            "[[suite.test]]\nname = \"t\"\n{BAKED}[[suite.test]]\nname = \"u\"\nami = \"ami-0a\"\n"
        ));
        let mut state = State::new("b");
        let mut other = key_of(&p.suites[0].tests[0].settings).unwrap();
        other.rally_version = "2.12.0".into();
        available(&mut state, other, "ami-0old");
        let missing = resolve(&mut p, &state).missing;
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].address.to_string(), "s.t");
        let MachineSettings::Aws(a) = &p.suites[0].tests[0].settings.machine else {
            unreachable!()
        };
        assert_eq!(a.launch_ami(), None);
    }

    #[test]
    fn one_bake_per_key_and_what_state_has_is_not_baked_again() {
        let p = plan(&format!(
            "[[suite.test]]\nname = \"a\"\n{BAKED}[[suite.test]]\nname = \"b\"\n{BAKED}\
             [[suite.test]]\nname = \"c\"\n{BAKED}rally_version = \"2.12.0\"\n\
             [[suite.test]]\nname = \"d\"\nami = \"ami-0a\"\n"
        ));
        let mut state = State::new("b");
        let w = wanted(&p, &state);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].like.to_string(), w[0].tests), ("s.a".to_owned(), 2));
        assert_eq!((w[1].like.to_string(), w[1].tests), ("s.c".to_owned(), 1));
        assert!(w.iter().all(|w| w.action == Action::Bake));
        available(&mut state, w[0].key.clone(), "ami-0c0ffee");
        let w = wanted(&p, &state);
        assert_eq!(w[0].action, Action::Have("ami-0c0ffee".into()));
        assert_eq!(w[1].action, Action::Bake);
    }
}
