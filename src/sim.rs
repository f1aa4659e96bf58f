//! A simulated cloud for `tests/simulation.rs` (cargo feature `simulation`): machines that
//! answer the commands the lifecycle sends as a machine running `race.sh` would, in tokio's
//! time (paused in the simulation, so a race of an hour costs none), and one seed that
//! decides every fault and the point where the process dies.
//!
//! The fake provider ([`crate::provider::fake`]) hands out these machines
//! ([`Endpoint::Sim`]) when it is made with [`World::fake`]. What survives a crash is what a
//! real one leaves: the state file, the provider's machines and what is on their disks; the
//! apply's future is dropped. Crash points are every provider call, every remote command
//! (before it runs: dying after one is dying before the next), and every state write (before
//! it lands or after).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::provider::fake::Fake;
use crate::remote::{Output, RemoteError};
use crate::state::StateError;

/// Rally 2.13.0's own files of a clean race (tests/fixtures/rally).
const REPORT: &[u8] = include_bytes!("../tests/fixtures/rally/success/report.csv");
const RACE_JSON: &[u8] = include_bytes!("../tests/fixtures/rally/success/race.json");
const CONSOLE: &[u8] = include_bytes!("../tests/fixtures/rally/success/race-console.log");
const RALLY_LOG: &[u8] = include_bytes!("../tests/fixtures/rally/success/rally.log");
/// And of a race whose cluster was not there: exit code 64, no report.
const FAILED_CONSOLE: &[u8] =
    include_bytes!("../tests/fixtures/rally/cluster-down/race-console.log");

/// How long EC2 keeps a new instance unknown before the aws provider takes that for gone
/// (`aws::NOT_FOUND_GRACE`).
const NOT_FOUND_GRACE: Duration = Duration::from_secs(120);
/// A race that runs past this (the plan's `max_runtime` in the simulation) outlives its
/// machine's watchdog.
const OVERRUN: Duration = Duration::from_secs(2 * 3600);

/// How the provider answers a launch ([`World::launch`]).
pub enum Launch {
    Now,
    /// After waiting for capacity this long.
    After(Duration),
    /// Refused after this long, with EC2's code and message.
    Refused(Duration, &'static str),
}

/// One seed's world: the machines, the faults and the crash to come. Clones share it.
#[derive(Clone)]
pub struct World(Arc<Shared>);

struct Shared {
    inner: Mutex<Inner>,
    /// The deliberate bug this world's rallyctl has, besides any its cargo feature plants.
    bug: Option<Bug>,
    /// True once the process died: the driver drops the apply on it.
    died: tokio::sync::watch::Sender<bool>,
}

struct Inner {
    rng: Rng,
    /// Faults are injected only while this is on: the final apply runs in calm weather.
    chaos: bool,
    /// Crash points left until the process dies (none: it does not).
    crash_in: Option<u64>,
    /// Whether the state write the process dies at still lands.
    write_lands: bool,
    events: Vec<String>,
    counts: BTreeMap<String, u64>,
    /// Each machine's run directories, by machine id: its disk outlives the process.
    disks: HashMap<String, HashMap<String, Run>>,
    /// Commands no arm of [`Host::exec`] understood: the simulation fails on any.
    unknown: Vec<String>,
    /// Nodes asked to start on a machine where another run directory's node holds the port
    /// (a variant's left running under the next one's): the simulation fails on any.
    clashes: Vec<String>,
    /// When each machine was launched, and when EC2 shows it (eventual consistency: a new
    /// instance is unknown to DescribeInstances for a while).
    launched: HashMap<String, (Instant, Instant)>,
    /// When each machine's watchdog shuts it down (`max_runtime` after launch or renewal).
    watchdog: HashMap<String, Instant>,
    /// When EC2 forgets each terminated machine's id (given back, or ended by its watchdog):
    /// within an hour of its end.
    terminated: HashMap<String, Instant>,
    /// Every race start, in order: the machine, and the run directory.
    starts: Vec<(String, String)>,
    /// Every silence the lifecycle was told of (its stall check): the run directory, and how
    /// long the race's logs had been silent.
    silences: Vec<(String, Duration)>,
}

/// What is in one run directory of a machine.
#[derive(Default)]
struct Run {
    /// The bundle was unpacked (its file names).
    files: Vec<String>,
    race: Option<Race>,
    /// A cluster's node runs here (`node.sh start`), under this installation id.
    node: Option<String>,
}

struct Race {
    started: Instant,
    ending: Ending,
    /// When `stop_run` or a scrub stopped it: a race not done by then never writes its exit
    /// code.
    killed: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Exits with this code after this long; 0 leaves Rally's report.
    Exit(i32, Duration),
    /// Writes its logs for this long, then nothing, for ever.
    Stall(Duration),
}

/// A small deterministic generator (xorshift64*): the seed alone decides.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed: neighbouring seeds start far apart, and none is zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `per_mille` times in a thousand.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn secs(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_secs(from + self.below(to - from + 1))
    }
}

thread_local! {
    /// The world whose process runs on this thread (the simulation runs each seed on a
    /// current-thread runtime), for [`state_write`] and [`Bug::is_on`].
    static CURRENT: RefCell<Option<World>> = const { RefCell::new(None) };
}

/// The deliberate bugs the simulation must find (`tests/simulation.rs`), each planted at a real
/// site of rallyctl's code that asks [`bug!`] whether it is on: in every world when its cargo
/// feature `sim-bug-*` is, else only in a world made [`World::with_bug`], so one build checks
/// them all. A build without the simulation has none: its `bug!` is `false` (`lib.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// `sim-bug-ignore-stalls`: a race whose logs went silent is waited on for ever.
    IgnoreStalls,
    /// `sim-bug-record-release-first`: state says a group's machine is given back before the
    /// provider is asked to.
    RecordReleaseFirst,
    /// `sim-bug-enter-time-twice`: a machine's time so far is entered as each repetition on
    /// it ends, and again when it goes.
    EnterTimeTwice,
    /// `sim-bug-release-where-planned`: a machine is given back with the settings the plan
    /// has now, not those it was got with.
    ReleaseWherePlanned,
    /// `sim-bug-resume-changed-config`: the planner resumes a test stopped under a
    /// configuration the plan has changed since, instead of starting it over.
    ResumeChangedConfig,
}

impl Bug {
    /// Every one, for the simulation to look for each.
    pub const ALL: [Bug; 5] = [
        Bug::IgnoreStalls,
        Bug::RecordReleaseFirst,
        Bug::EnterTimeTwice,
        Bug::ReleaseWherePlanned,
        Bug::ResumeChangedConfig,
    ];

    /// Whether its cargo feature plants it in every world.
    pub const fn planted(self) -> bool {
        match self {
            Bug::IgnoreStalls => cfg!(feature = "sim-bug-ignore-stalls"),
            Bug::RecordReleaseFirst => cfg!(feature = "sim-bug-record-release-first"),
            Bug::EnterTimeTwice => cfg!(feature = "sim-bug-enter-time-twice"),
            Bug::ReleaseWherePlanned => cfg!(feature = "sim-bug-release-where-planned"),
            Bug::ResumeChangedConfig => cfg!(feature = "sim-bug-resume-changed-config"),
        }
    }

    /// Whether it is on here: planted, or on in the world whose process runs on this thread.
    pub fn is_on(self) -> bool {
        self.planted()
            || CURRENT.with(|c| c.borrow().as_ref().is_some_and(|w| w.0.bug == Some(self)))
    }
}

/// `crate::sim::bug!(Name)`: whether the deliberate [`Bug::Name`](Bug) is on; the one way
/// rallyctl's code reaches the simulation's bugs (`tests/tidy.rs`).
macro_rules! bug {
    ($bug:ident) => {
        $crate::sim::Bug::$bug.is_on()
    };
}
pub(crate) use bug;

/// Called by `state::save` before each write: a crash point. `Err` when the process is dead
/// (nothing it writes lands) or dies before this write.
pub fn state_write(path: &Path) -> Result<(), StateError> {
    let Some(world) = CURRENT.with(|c| c.borrow().clone()) else {
        return Ok(());
    };
    let dead = || StateError::Write {
        path: path.to_owned(),
        source: std::io::Error::other("the simulated process is dead"),
    };
    if world.dead() {
        return Err(dead());
    }
    let mut inner = world.lock();
    inner.count("state write");
    if !inner.reached() {
        if inner.fault("disk full", 3, &path.display().to_string()) {
            return Err(StateError::Write {
                path: path.to_owned(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        return Ok(());
    }
    let lands = inner.write_lands;
    inner.count("crash");
    inner.event(format!(
        "crash {} a state write",
        if lands { "after" } else { "before" }
    ));
    drop(inner);
    world.die();
    if lands { Ok(()) } else { Err(dead()) }
}

/// While it lives, state writes on this thread are [`World`]'s crash points.
pub struct Entered(());

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

impl Inner {
    fn event(&mut self, event: String) {
        self.events.push(event);
    }

    fn count(&mut self, what: &str) {
        *self.counts.entry(what.to_owned()).or_default() += 1;
    }

    /// The machine terminated: EC2 forgets its id within the hour (once, at its first end).
    fn forget(&mut self, id: &str) {
        if !self.terminated.contains_key(id) {
            let after = self.rng.secs(60, 3600);
            self.terminated
                .insert(id.to_owned(), Instant::now() + after);
        }
    }

    /// Passes one crash point; true when the process dies at it.
    fn reached(&mut self) -> bool {
        match &mut self.crash_in {
            Some(0) | None => false,
            Some(n) => {
                *n -= 1;
                *n == 0
            }
        }
    }

    /// A fault of this kind, `per_mille` times in a thousand while the weather is stormy.
    fn fault(&mut self, kind: &str, per_mille: u64, what: &str) -> bool {
        if !self.chaos || !self.rng.chance(per_mille) {
            return false;
        }
        self.count(kind);
        self.event(format!("fault: {kind} at {what}"));
        true
    }
}

impl World {
    pub fn new(seed: u64) -> World {
        World::made(seed, None)
    }

    /// A world whose rallyctl has the deliberate `bug`, for the simulation to find.
    pub fn with_bug(seed: u64, bug: Bug) -> World {
        World::made(seed, Some(bug))
    }

    fn made(seed: u64, bug: Option<Bug>) -> World {
        World(Arc::new(Shared {
            bug,
            inner: Mutex::new(Inner {
                rng: Rng::new(seed),
                chaos: true,
                crash_in: None,
                write_lands: false,
                events: vec![],
                counts: BTreeMap::new(),
                disks: HashMap::new(),
                unknown: vec![],
                clashes: vec![],
                launched: HashMap::new(),
                watchdog: HashMap::new(),
                terminated: HashMap::new(),
                starts: vec![],
                silences: vec![],
            }),
            died: tokio::sync::watch::Sender::new(false),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.inner.lock().expect("the world's lock")
    }

    /// A fake provider whose machines are this world's.
    pub fn fake(&self) -> Fake {
        Fake::simulated(self.clone())
    }

    /// State writes on this thread are crash points until the guard drops.
    pub fn enter(&self) -> Entered {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        Entered(())
    }

    /// A number in `0..n` from the seed.
    pub fn below(&self, n: u64) -> u64 {
        self.lock().rng.below(n)
    }

    /// Whether faults are on.
    pub fn chaotic(&self) -> bool {
        self.lock().chaos
    }

    /// Faults on or off.
    pub fn set_chaos(&self, on: bool) {
        self.lock().chaos = on;
    }

    /// The process dies at the `n`-th crash point from now (a state write: before it lands, or
    /// after when `write_lands`); `None`: it lives.
    pub fn crash_at(&self, n: Option<u64>, write_lands: bool) {
        let mut inner = self.lock();
        inner.crash_in = n;
        inner.write_lands = write_lands;
    }

    pub fn dead(&self) -> bool {
        *self.0.died.borrow()
    }

    /// Resolves when the process dies.
    pub async fn died(&self) {
        let mut rx = self.0.died.subscribe();
        // The sender lives in `self`, so the channel never closes while this waits.
        let _ = rx.wait_for(|dead| *dead).await;
    }

    fn die(&self) {
        self.0.died.send_replace(true);
    }

    /// A new process starts (the machines and their disks are as the dead one left them).
    pub fn revive(&self) {
        self.lock().crash_in = None;
        self.0.died.send_replace(false);
    }

    /// Counts one event of `kind` the driver brought about (a Ctrl-C).
    pub fn count(&self, kind: &str) {
        self.lock().count(kind);
    }

    pub fn note(&self, event: impl Into<String>) {
        self.lock().event(event.into());
    }

    /// What happened, in order.
    pub fn events(&self) -> Vec<String> {
        self.lock().events.clone()
    }

    /// How often each kind of crash point and fault came up.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.lock().counts.clone()
    }

    /// Commands no simulated machine understood.
    pub fn unknown_commands(&self) -> Vec<String> {
        self.lock().unknown.clone()
    }

    /// Nodes started where another run directory's node held the port.
    pub fn clashes(&self) -> Vec<String> {
        self.lock().clashes.clone()
    }

    /// A crash point: never returns once the process is dead or dies here, so nothing a dead
    /// process would do happens.
    pub async fn point(&self, what: &str) {
        let dies = {
            let mut inner = self.lock();
            if *self.0.died.borrow() {
                true
            } else {
                let kind = what.split_whitespace().next().unwrap_or(what).to_owned();
                inner.count(&kind);
                let dies = inner.reached();
                if dies {
                    inner.count("crash");
                    inner.event(format!("crash before {what}"));
                }
                dies
            }
        };
        if dies {
            self.die();
            std::future::pending::<()>().await;
        }
    }

    /// How EC2 answers this launch, as the aws provider passes it on: at once, after waiting
    /// out a capacity shortage, or refused after its retries (capacity: four rounds of
    /// `InsufficientInstanceCapacity`; throttling: the SDK's six attempts; quota:
    /// `VcpuLimitExceeded`, never retried).
    pub fn launch(&self, what: &str) -> Launch {
        let mut inner = self.lock();
        if inner.fault("launch refused (capacity)", 40, what) {
            let after = inner.rng.secs(4, 8);
            return Launch::Refused(
                after,
                "InsufficientInstanceCapacity: We currently do not have sufficient m5.large capacity in the Availability Zone you requested (gave up after 4 attempts)",
            );
        }
        if inner.fault("launch refused (throttling)", 30, what) {
            let after = inner.rng.secs(5, 60);
            return Launch::Refused(after, "RequestLimitExceeded: Request limit exceeded.");
        }
        if inner.fault("launch refused (quota)", 20, what) {
            return Launch::Refused(
                Duration::ZERO,
                "VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU limit of 32 allows",
            );
        }
        if inner.fault("launch waits for capacity", 30, what) {
            return Launch::After(inner.rng.secs(1, 7));
        }
        Launch::Now
    }

    /// A machine was launched: its watchdog is armed, and EC2 may not show it for a while.
    pub fn launched(&self, id: &str, max_runtime: Duration) {
        let mut inner = self.lock();
        let now = Instant::now();
        let unseen = match inner.fault("instance unknown", 60, &format!("launch {id}")) {
            // Mostly seconds; past NOT_FOUND_GRACE rarely, when the aws provider takes the
            // instance for gone although it boots.
            true if inner.rng.chance(100) => inner.rng.secs(121, 400),
            true => inner.rng.secs(2, 60),
            false => Duration::ZERO,
        };
        inner.launched.insert(id.to_owned(), (now, now + unseen));
        inner.watchdog.insert(id.to_owned(), now + max_runtime);
    }

    /// The machine's watchdog starts again (`Provider::extend`).
    pub fn rearm(&self, id: &str, max_runtime: Duration) {
        self.lock()
            .watchdog
            .insert(id.to_owned(), Instant::now() + max_runtime);
    }

    /// How long until the machine's watchdog shuts it down (zero: it did).
    pub fn watchdog_left(&self, id: &str) -> Duration {
        let at = self.lock().watchdog.get(id).copied();
        at.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }

    /// Whether EC2 does not show the machine (yet): `Some(true)` when it has not for longer
    /// than the aws provider's grace, which then takes it for gone.
    pub fn unseen(&self, id: &str) -> Option<bool> {
        let inner = self.lock();
        let (at, shown) = *inner.launched.get(id)?;
        let now = Instant::now();
        (now < shown).then(|| now >= at + NOT_FOUND_GRACE)
    }

    /// When EC2 shows the machine, and when the aws provider stops waiting for it to.
    pub fn shown_at(&self, id: &str) -> Option<(Instant, Instant)> {
        let inner = self.lock();
        let (at, shown) = *inner.launched.get(id)?;
        Some((shown, at + NOT_FOUND_GRACE))
    }

    /// Whether EC2 forgot the terminated machine's id.
    pub fn purged(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let purged = (inner.terminated.get(id)).is_some_and(|at| *at <= Instant::now());
        if purged {
            inner.count("purged id");
        }
        purged
    }

    /// Whether the machine terminated (given back, or ended by its watchdog).
    pub fn terminated(&self, id: &str) -> bool {
        self.lock().terminated.contains_key(id)
    }

    /// The machine's watchdog shut it down (once counted).
    pub fn watchdog_fired(&self, id: &str) {
        let mut inner = self.lock();
        if !inner.terminated.contains_key(id) {
            inner.count("watchdog ends a machine");
            inner.event(format!("{id}'s watchdog shuts it down"));
            inner.forget(id);
        }
    }

    /// The silences told since the last call: the run directory, and how long.
    pub fn take_silences(&self) -> Vec<(String, Duration)> {
        std::mem::take(&mut self.lock().silences)
    }

    /// The races started since the last call: the machine and the run directory of each.
    pub fn take_starts(&self) -> Vec<(String, String)> {
        std::mem::take(&mut self.lock().starts)
    }

    /// Whether the provider refuses to give this machine back, this time.
    pub fn refuses_release(&self, id: &str) -> bool {
        self.lock()
            .fault("release fails", 30, &format!("release {id}"))
    }

    /// Whether this launch gets spot capacity.
    pub fn spot(&self) -> bool {
        self.lock().rng.chance(400)
    }

    /// How long a machine takes to boot.
    pub fn boot_time(&self) -> Duration {
        self.lock().rng.secs(20, 90)
    }

    /// The provider gave the machine back: its disk goes with it.
    pub fn terminate(&self, id: &str) {
        let mut inner = self.lock();
        inner.disks.remove(id);
        inner.forget(id);
    }

    /// How long a machine stays unreachable before rallyctl gives up on it (as aws says).
    pub const PATIENCE: Duration = Duration::from_secs(300);
}

/// One simulated machine, as [`Endpoint::Sim`](crate::remote::Endpoint::Sim) names it.
#[derive(Clone)]
pub struct Host {
    pub(crate) fake: Fake,
    pub(crate) id: String,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Host({})", self.id)
    }
}

impl PartialEq for Host {
    fn eq(&self, other: &Host) -> bool {
        self.id == other.id
    }
}

impl Eq for Host {}

/// The shell word at the start of `text` (plain or single-quoted as `shell_quote` writes it).
fn word(text: &str) -> Option<String> {
    let end = text
        .char_indices()
        .scan(false, |quoted, (i, c)| {
            if c == '\'' {
                *quoted = !*quoted;
            }
            Some((i, c, *quoted))
        })
        .find(|(_, c, quoted)| !quoted && (c.is_whitespace() || *c == ';'))
        .map_or(text.len(), |(i, _, _)| i);
    shlex::split(&text[..end])?.into_iter().next()
}

/// The run directory a `bash DIR/node.sh ACTION ARGS...` names, with its words after it.
fn node_sh(command: &str) -> Option<(String, Vec<String>)> {
    let rest = command.strip_prefix("bash ")?;
    let at = rest.find("/node.sh ")?;
    let dir = word(&rest[..at])?;
    Some((dir, shlex::split(&rest[at + "/node.sh ".len()..])?))
}

/// The run directory a `bash DIR/race.sh ACTION` names, with the rest of the command.
fn race_sh(command: &str) -> Option<(String, &str, &str)> {
    let rest = command.strip_prefix("bash ")?;
    let at = rest.find("/race.sh ")?;
    let dir = word(&rest[..at])?;
    let args = &rest[at + "/race.sh ".len()..];
    let (action, arg) = args.split_once(' ').unwrap_or((args, ""));
    Some((dir, action, arg))
}

impl Host {
    /// The simulated machine `id` of `fake`'s world.
    pub fn new(fake: &Fake, id: &str) -> Host {
        Host {
            fake: fake.clone(),
            id: id.to_owned(),
        }
    }

    fn world(&self) -> &World {
        self.fake.world().expect("a simulated machine has a world")
    }

    pub fn name(&self) -> String {
        format!("{} (simulated)", self.id)
    }

    fn failed(&self, command: &str, code: i32, stderr: &str) -> RemoteError {
        RemoteError::Failed {
            host: self.name(),
            command: command.to_owned(),
            code: Some(code),
            stderr: stderr.to_owned(),
        }
    }

    /// Runs `command` as the machine would, within `timeout` of simulated time.
    pub async fn exec(
        &self,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<Output, RemoteError> {
        let world = self.world().clone();
        let first_line = command.lines().next().unwrap_or_default();
        world
            .point(&format!("command {} {first_line}", self.id))
            .await;
        let refused = |detail: &str| RemoteError::Connection {
            host: self.name(),
            detail: detail.to_owned(),
        };
        if self.fake.lost(&self.id) {
            return Err(refused("Connection refused"));
        }
        let what = format!("{} `{first_line}`", self.id);
        {
            let mut inner = world.lock();
            if inner.fault("ssh refused", 20, &what) {
                return Err(refused("Connection refused"));
            }
            if inner.fault("machine gone", 10, &what) {
                drop(inner);
                self.fake.gone.lock().unwrap().insert(self.id.clone());
                return Err(refused("Connection timed out"));
            }
            if self.fake.spot.lock().unwrap().contains(&self.id)
                && inner.fault("spot reclaimed", 30, &what)
            {
                drop(inner);
                self.fake.reclaimed.lock().unwrap().insert(self.id.clone());
                return Err(refused("Connection refused"));
            }
            if inner.fault("provider unknowable", 5, &what) {
                drop(inner);
                self.fake.unknowable.lock().unwrap().insert(self.id.clone());
                return Err(refused("Connection timed out"));
            }
        }
        // The machine's watchdog may shut it down under the command.
        let watchdog = world.watchdog_left(&self.id);
        let bound = timeout.min(watchdog);
        let answer = match tokio::time::timeout(bound, self.answer(command, input)).await {
            Ok(answer) => answer?,
            Err(_) if watchdog <= timeout => {
                self.fake.lost(&self.id);
                return Err(refused("Connection reset by peer"));
            }
            Err(_) => {
                return Err(RemoteError::Timeout {
                    host: self.name(),
                    command: command.to_owned(),
                    seconds: timeout.as_secs(),
                });
            }
        };
        // The command ran, but its answer was lost with the connection.
        let mut inner = world.lock();
        if inner.fault("ssh dropped", 20, &what) {
            return Err(refused("Connection reset by peer"));
        }
        if let Some(rest) = command.strip_prefix("cd ")
            && command.contains("newest=")
            && let Ok(secs) = String::from_utf8_lossy(&answer).trim().parse()
        {
            let dir = word(rest).unwrap_or_default();
            inner.silences.push((dir, Duration::from_secs(secs)));
        }
        drop(inner);
        Ok(Output {
            stdout: answer,
            stderr: String::new(),
        })
    }

    async fn answer(&self, command: &str, input: &[u8]) -> Result<Vec<u8>, RemoteError> {
        if command == "true" {
            return Ok(vec![]);
        }
        if let Some((dir, "start", rest)) = race_sh(command) {
            let wait = rest
                .split_once(" && ")
                .map(|(_, wait)| wait)
                .ok_or_else(|| self.failed(command, 2, "sim: a start without its wait"))?;
            let slice = match race_sh(wait) {
                Some((_, "wait", secs)) => self.slice(wait, secs)?,
                _ => return Err(self.failed(command, 2, "sim: a start without its wait")),
            };
            let started = self.start(&dir)?;
            let waited = self.wait(&dir, slice).await;
            return Ok([started, waited.into_bytes()].concat());
        }
        if let Some((dir, action, arg)) = race_sh(command) {
            return match action {
                "wait" => {
                    let slice = self.slice(command, arg)?;
                    Ok(self.wait(&dir, slice).await.into_bytes())
                }
                "tail" => Ok(self.tail(&dir)),
                "collect" => self.collect(&dir, command),
                _ => Err(self.failed(command, 2, "usage: race.sh start | wait | tail | collect")),
            };
        }
        if let Some((dir, args)) = node_sh(command) {
            return self.node(command, &dir, &args).await;
        }
        if let Some(at) = command.find("tar -C ") {
            return self
                .install(command, &command[at + "tar -C ".len()..], input)
                .await;
        }
        if let Some(rest) = command.strip_prefix("cd ")
            && command.contains("newest=")
        {
            let dir = word(rest).unwrap_or_default();
            return Ok(self.silent_for(&dir).into_bytes());
        }
        if let Some(rest) = command
            .strip_prefix("cd ")
            .or_else(|| command.strip_prefix("(\ncd "))
            && command.contains("run_dir=$(pwd)")
        {
            let dir = word(rest).unwrap_or_default();
            self.stop(&dir);
            if command.contains("drop_caches") {
                return Ok(format!("{}\n", crate::remote::CACHE_DROPPED).into_bytes());
            }
            return Ok(vec![]);
        }
        if command.contains("drop_caches") {
            return Ok(format!("{}\n", crate::remote::CACHE_DROPPED).into_bytes());
        }
        self.world().lock().unknown.push(command.to_owned());
        Err(self.failed(command, 127, "sim: this machine does not know that command"))
    }

    /// How long `race.sh wait SECONDS` may block.
    fn slice(&self, command: &str, secs: &str) -> Result<Duration, RemoteError> {
        secs.trim()
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| self.failed(command, 2, "sim: wait how long?"))
    }

    fn with_run<R>(&self, dir: &str, f: impl FnOnce(&mut Run, &mut Rng) -> R) -> R {
        let mut inner = self.world().lock();
        let Inner { disks, rng, .. } = &mut *inner;
        let run = disks
            .entry(self.id.clone())
            .or_default()
            .entry(dir.to_owned())
            .or_default();
        f(run, rng)
    }

    /// Unpacks the bundle (a tar stream, as the real machine's `tar -xf -` reads it) and runs
    /// `install.sh` when the command says so.
    async fn install(
        &self,
        command: &str,
        rest: &str,
        input: &[u8],
    ) -> Result<Vec<u8>, RemoteError> {
        let dir = word(rest).ok_or_else(|| self.failed(command, 2, "sim: tar where?"))?;
        let mut files = Vec::new();
        let mut archive = tar::Archive::new(input);
        let entries = archive
            .entries()
            .map_err(|e| self.failed(command, 1, &format!("tar: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.failed(command, 1, &format!("tar: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| self.failed(command, 1, &format!("tar: {e}")))?;
            files.push(path.display().to_string());
        }
        if !files.iter().any(|f| f.ends_with("race.sh")) {
            return Err(self.failed(command, 1, "sim: the bundle has no race.sh"));
        }
        self.with_run(&dir, |run, _| run.files = files);
        if !command.contains("install.sh") {
            return Ok(vec![]);
        }
        let took = {
            let mut inner = self.world().lock();
            if inner.fault("install fails", 20, &format!("{} install.sh", self.id)) {
                return Err(self.failed(command, 1, "pip: connection reset"));
            }
            inner.rng.secs(30, 240)
        };
        tokio::time::sleep(took).await;
        Ok(b"rallyctl: installing esrally 2.13.0\nesrally 2.13.0\n".to_vec())
    }

    /// `race.sh start`: a race unless one was started in the directory.
    fn start(&self, dir: &str) -> Result<Vec<u8>, RemoteError> {
        let what = format!("{} race {dir}", self.id);
        let world = self.world().clone();
        let mut inner = world.lock();
        let Inner {
            disks, rng, chaos, ..
        } = &mut *inner;
        let run = disks
            .get_mut(&self.id)
            .and_then(|d| d.get_mut(dir))
            .filter(|r| !r.files.is_empty());
        let Some(run) = run else {
            return Err(self.failed(
                "race.sh start",
                127,
                &format!("bash: {dir}/race.sh: No such file or directory"),
            ));
        };
        if run.race.is_some() {
            return Ok(b"rallyctl: race already started\n".to_vec());
        }
        let roll = if *chaos { rng.below(100) } else { 99 };
        let ending = match roll {
            0..8 => Ending::Exit(64, rng.secs(4, 600)),
            8..14 => Ending::Stall(rng.secs(10, 900)),
            14..17 => Ending::Exit(0, OVERRUN + rng.secs(60, 7200)),
            _ => Ending::Exit(0, rng.secs(300, 3600)),
        };
        run.race = Some(Race {
            started: Instant::now(),
            ending,
            killed: None,
        });
        let kind = match ending {
            Ending::Exit(0, after) if after > OVERRUN => "race overruns max_runtime",
            Ending::Exit(0, _) => "race ok",
            Ending::Exit(..) => "race fails",
            Ending::Stall(_) => "race stalls",
        };
        inner.count(kind);
        inner.event(format!("{kind}: {what} ({ending:?})"));
        inner.starts.push((self.id.clone(), dir.to_owned()));
        Ok(b"rallyctl: race started\n".to_vec())
    }

    /// What `race.sh wait` answers now, if it answers.
    fn state_of(&self, dir: &str) -> Result<String, Duration> {
        self.with_run(dir, |run, _| {
            let Some(race) = &run.race else {
                return Ok("lost".into());
            };
            let now = Instant::now();
            let until = race.killed.unwrap_or(now);
            match race.ending {
                Ending::Exit(code, after) if race.started + after <= until => {
                    Ok(format!("exited {code}"))
                }
                _ if race.killed.is_some() => Ok("lost".into()),
                Ending::Exit(_, after) => Err(race.started + after - now),
                Ending::Stall(_) => Err(Duration::MAX),
            }
        })
    }

    async fn wait(&self, dir: &str, slice: Duration) -> String {
        let deadline = Instant::now() + slice;
        loop {
            match self.state_of(dir) {
                Ok(answer) => return format!("{answer}\n"),
                Err(left) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return "running\n".into();
                    }
                    tokio::time::sleep(left.min(deadline - now)).await;
                }
            }
        }
    }

    /// Seconds since the race's logs last changed, as the lifecycle's `stat` asks.
    fn silent_for(&self, dir: &str) -> String {
        self.with_run(dir, |run, _| {
            let Some(race) = &run.race else {
                return String::new();
            };
            let ran = race.started.elapsed();
            let silent = match race.ending {
                Ending::Stall(talked) => ran.saturating_sub(talked),
                Ending::Exit(_, after) => ran.saturating_sub(after),
            };
            format!("{}\n", silent.as_secs())
        })
    }

    fn tail(&self, dir: &str) -> Vec<u8> {
        self.with_run(dir, |run, _| match run.race.as_ref().map(|r| r.ending) {
            Some(Ending::Exit(0, _)) => CONSOLE.to_vec(),
            Some(_) => FAILED_CONSOLE.to_vec(),
            None => vec![],
        })
    }

    /// `race.sh collect`: a tar stream of what the race left.
    fn collect(&self, dir: &str, command: &str) -> Result<Vec<u8>, RemoteError> {
        let ending = self.with_run(dir, |run, _| run.race.as_ref().map(|r| r.ending));
        let mut files: Vec<(&str, &[u8])> = vec![];
        match ending {
            Some(Ending::Exit(0, _)) => files.extend([
                ("report.csv", REPORT),
                ("race.log", CONSOLE),
                ("race.json", RACE_JSON),
                ("rally.log", RALLY_LOG),
            ]),
            Some(_) => files.push(("race.log", FAILED_CONSOLE)),
            None => {}
        }
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, name, bytes)
                .map_err(|e| self.failed(command, 1, &e.to_string()))?;
        }
        tar.into_inner()
            .map_err(|e| self.failed(command, 1, &e.to_string()))
    }

    /// `stop_run_command`: the race in `dir` is killed (never writing its exit code), and the
    /// node whose Rally home it is.
    fn stop(&self, dir: &str) {
        self.with_run(dir, |run, _| {
            if let Some(race) = &mut run.race {
                race.killed.get_or_insert_with(Instant::now);
            }
            run.node = None;
        });
    }

    /// `node.sh start NAME IP MASTERS SEEDS INSTALLATION_ID RACE_ID`, `stop INSTALLATION_ID`,
    /// `collect INSTALLATION_ID NAME`, as a cluster's node machine runs them.
    async fn node(
        &self,
        command: &str,
        dir: &str,
        args: &[String],
    ) -> Result<Vec<u8>, RemoteError> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        match words[..] {
            ["start", name, _, _, _, id, _] => {
                let what = format!("{} {name} {dir}", self.id);
                let took = {
                    let world = self.world().clone();
                    let mut inner = world.lock();
                    let Inner {
                        disks,
                        rng,
                        clashes,
                        ..
                    } = &mut *inner;
                    let holder = (disks.get(&self.id).into_iter().flatten())
                        .find(|(other, run)| other.as_str() != dir && run.node.is_some());
                    if let Some((other, _)) = holder {
                        clashes.push(format!("{what}: the node of {other} runs"));
                        return Err(self.failed(
                            command,
                            64,
                            &format!("[ERROR] node {name} cannot listen: Address already in use"),
                        ));
                    }
                    let run = (disks.get_mut(&self.id).and_then(|d| d.get_mut(dir)))
                        .filter(|r| !r.files.is_empty());
                    let Some(run) = run else {
                        return Err(self.failed(
                            command,
                            127,
                            &format!("bash: {dir}/node.sh: No such file or directory"),
                        ));
                    };
                    if run.node.as_deref() == Some(id) {
                        return Ok(b"rallyctl: the node runs already\n".to_vec());
                    }
                    let took = rng.secs(5, 60);
                    if inner.fault("node fails to start", 20, &what) {
                        return Err(self.failed(
                            command,
                            64,
                            &format!("[ERROR] node {name} cannot listen: Address already in use"),
                        ));
                    }
                    inner.count("node started");
                    inner.event(format!("node started: {what}"));
                    took
                };
                tokio::time::sleep(took).await;
                self.with_run(dir, |run, _| run.node = Some(id.to_owned()));
                Ok(b"rallyctl: node started\n".to_vec())
            }
            ["stop", _] => {
                self.with_run(dir, |run, _| run.node = None);
                Ok(vec![])
            }
            ["collect", _, _] => {
                let mut tar = tar::Builder::new(Vec::new());
                for name in ["logs/server/bench.log", "logs/server/gc.log"] {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(4);
                    header.set_mode(0o644);
                    tar.append_data(&mut header, name, &b"log\n"[..])
                        .map_err(|e| self.failed(command, 1, &e.to_string()))?;
                }
                tar.into_inner()
                    .map_err(|e| self.failed(command, 1, &e.to_string()))
            }
            _ => {
                self.world().lock().unknown.push(command.to_owned());
                Err(self.failed(command, 2, "sim: node.sh does not take that"))
            }
        }
    }
}
