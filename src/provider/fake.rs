//! An in-process provider for the walk's and the lifecycle's unit tests: its machines are
//! directories of this machine (reached like `local`), and a test can make it fail. Made by
//! [`World::fake`](crate::sim::World::fake) (feature `simulation`), its machines are a
//! simulation's instead, and its calls that simulation's crash points and faults.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::{Acquire, AcquireError, Acquired, Gone, Leaked, Provider, ProviderError, Reachable};
use crate::address::Address;
use crate::plan::{MachineSettings, Settings};
use crate::remote::{Endpoint, HostKeys, SshEndpoint};
use crate::state::{Machine, RecordedSettings};

/// Clones share one record, so a test keeps a handle while apply owns the provider.
#[derive(Clone, Default)]
pub struct Fake(std::sync::Arc<Record>);

#[derive(Default)]
pub struct Record {
    /// What was asked, in order: `acquire ADDRESS#ATTEMPT -> ID`, `release ID`.
    pub calls: Mutex<Vec<String>>,
    /// Tests whose acquire fails.
    pub refuse: Mutex<HashSet<Address>>,
    /// Machines that are gone (terminated behind rallyctl's back): connections to them fail,
    /// and `gone` says so.
    pub gone: Mutex<HashSet<String>>,
    /// Machines their provider took back (spot interruptions): connections fail, and `gone`
    /// says they were reclaimed.
    pub reclaimed: Mutex<HashSet<String>>,
    /// Machines whose attempt finds what it launched before dead: acquiring them answers
    /// that the attempt is spent.
    pub spent: Mutex<HashSet<String>>,
    /// Machines got as spot capacity.
    pub spot: Mutex<HashSet<String>>,
    /// Machines their provider is taking back while they still answer (a spot interruption's
    /// shutdown under way, killing what runs): connections work, `gone` says reclaimed.
    pub being_reclaimed: Mutex<HashSet<String>>,
    /// Machines that connections fail to reach, and of which the provider cannot tell whether
    /// they are still there (its API fails).
    pub unknowable: Mutex<HashSet<String>>,
    /// Machines that never finish booting: reaching them waits for ever.
    pub boot_forever: Mutex<HashSet<String>>,
    /// Machines whose bound cannot be renewed for another race.
    pub refuse_extend: Mutex<HashSet<String>>,
    /// The machine of every connection the lifecycle made (each remote command is one), in
    /// order: what the round trips a test costs are counted by.
    pub connects: Mutex<Vec<String>>,
    /// Machines acquired and not yet released.
    pub held: Mutex<HashSet<String>>,
    /// Where each machine is reached by the others of its test ([`Fake::peer_address`]).
    peers: Mutex<HashMap<String, String>>,
    /// What each machine was got with (its provider's settings and remote directory): it is
    /// given back with the same, whatever the plan says by then, or a real provider would
    /// release it in the wrong place. Tests that take or share it may differ in the rest.
    got_with: Mutex<HashMap<String, MachinePart>>,
    /// The simulation whose machines these are.
    #[cfg(feature = "simulation")]
    world: Option<crate::sim::World>,
}

impl std::ops::Deref for Fake {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.0
    }
}

impl Fake {
    #[cfg(feature = "simulation")]
    pub fn simulated(world: crate::sim::World) -> Fake {
        Fake(std::sync::Arc::new(Record {
            world: Some(world),
            ..Record::default()
        }))
    }

    #[cfg(feature = "simulation")]
    pub fn world(&self) -> Option<&crate::sim::World> {
        self.world.as_ref()
    }

    /// A crash point of the simulation, if there is one: it never returns when the simulated
    /// process dies at it.
    async fn point(&self, _what: impl FnOnce() -> String) {
        #[cfg(feature = "simulation")]
        if let Some(world) = &self.world {
            world.point(&_what()).await;
        }
    }

    fn is_simulated(&self) -> bool {
        #[cfg(feature = "simulation")]
        return self.world.is_some();
        #[cfg(not(feature = "simulation"))]
        false
    }

    /// Where the machines of one test reach the machine `id`: an address of the loopback of
    /// its own (Linux routes all of 127.0.0.0/8 there), so that a cluster's nodes, all on this
    /// machine, each listen on their port, in whichever test of the process and whichever
    /// process: a test runner may run each test in a process of its own, all at once
    /// ([`process_octet`]). A simulated machine's address is only a name, the same in every
    /// process, so that a seed replays alike.
    fn peer_address(&self, id: &str) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let octet = if self.is_simulated() {
            0
        } else {
            process_octet()
        };
        let mut peers = self.peers.lock().unwrap();
        let address = peers.entry(id.to_owned()).or_insert_with(|| {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("127.{octet}.{}.{}", 1 + n / 250, 1 + n % 250)
        });
        address.clone()
    }

    /// How the machine `id` is reached: this machine, or the simulation's.
    fn endpoint(&self, _id: &str) -> Endpoint {
        #[cfg(feature = "simulation")]
        if self.world.is_some() {
            return Endpoint::Sim(crate::sim::Host::new(self, _id));
        }
        Endpoint::Local
    }

    /// The machine an attempt's launch names (EC2's ClientToken): the one launched with it
    /// before where these settings point, else a new one: a token is EC2's per region, so an
    /// attempt asked for again elsewhere gets another machine while the first runs on.
    fn instance_for(&self, token: String, at: &MachinePart) -> String {
        let got_with = self.got_with.lock().unwrap();
        let elsewhere = |id: &String| got_with.get(id).is_some_and(|got| got != at);
        let mut id = token.clone();
        for n in 2.. {
            if !elsewhere(&id) {
                break;
            }
            id = format!("{token}@{n}");
        }
        id
    }

    /// Whether connections to the machine fail: it is gone, reclaimed, or cannot be asked
    /// about.
    pub fn lost(&self, id: &str) -> bool {
        let lost = |set: &Mutex<HashSet<String>>| set.lock().unwrap().contains(id);
        // A simulated machine given back answers no more, and one whose watchdog shut it
        // down is gone (terminated outside rallyctl, as EC2 says).
        #[cfg(feature = "simulation")]
        if let Some(world) = &self.world {
            if world.watchdog_left(id).is_zero() && !world.terminated(id) {
                world.watchdog_fired(id);
                self.gone.lock().unwrap().insert(id.to_owned());
            }
            if world.terminated(id) {
                return true;
            }
        }
        lost(&self.gone) || lost(&self.unknowable) || lost(&self.reclaimed)
    }
}

impl Record {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

type MachinePart = (MachineSettings, crate::plan::Text);

/// Its machines end themselves `max_runtime` after they were got or renewed, as EC2's do.
fn watchdog(settings: &Settings) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::try_from(settings.max_runtime).unwrap()
}

/// The settings that say where a machine is, as state records them.
fn machine_part(settings: &Settings) -> MachinePart {
    let recorded = RecordedSettings::from(settings)
        .typed()
        .expect("recorded settings read back");
    (recorded.machine, recorded.remote_dir)
}

impl Provider for Fake {
    async fn acquire(&self, req: &Acquire<'_>) -> Result<Acquired, AcquireError> {
        let member = req
            .member
            .map(|m| format!("-{}", m.name))
            .unwrap_or_default();
        let what = || format!("acquire {}#{}{member}", req.address, req.attempt);
        self.point(what).await;
        let id = self.instance_for(
            format!("m-{}-{}{member}", req.address.test(), req.attempt),
            &machine_part(req.settings),
        );
        // EC2 answers a ClientToken it launched with before with that instance: no capacity
        // is asked for again.
        let mut refused = None;
        #[cfg(feature = "simulation")]
        if let Some(world) = &self.world
            && !self.got_with.lock().unwrap().contains_key(&id)
        {
            match world.launch(&what()) {
                crate::sim::Launch::Now => {}
                crate::sim::Launch::After(wait) => tokio::time::sleep(wait).await,
                crate::sim::Launch::Refused(after, answer) => {
                    tokio::time::sleep(after).await;
                    refused = Some(answer);
                }
            }
        }
        if self.refuse.lock().unwrap().contains(req.address) {
            refused = Some("no capacity");
        }
        if let Some(message) = refused {
            self.call(format!("acquire {}#{} refused", req.address, req.attempt));
            return Err(ProviderError {
                operation: "acquire",
                target: "fake".into(),
                message: message.into(),
            }
            .into());
        }
        // As EC2 answers a ClientToken of a terminated instance (gone, reclaimed, or given
        // back): the attempt is spent.
        let released = || {
            self.got_with.lock().unwrap().contains_key(&id)
                && !self.held.lock().unwrap().contains(&id)
        };
        let dead = self.is_simulated()
            && (self.gone.lock().unwrap().contains(&id)
                || self.reclaimed.lock().unwrap().contains(&id)
                || released());
        // EC2 answers the token with its instance, terminated, whether or not it has forgotten
        // the id by now (the tag lookup before the launch no longer finds it): the same answer.
        #[cfg(feature = "simulation")]
        let dead = self.world.as_ref().is_some_and(|w| w.purged(&id)) || dead;
        if dead || self.spent.lock().unwrap().contains(&id) {
            self.call(format!("acquire {}#{} spent", req.address, req.attempt));
            return Err(AcquireError::Spent(format!("{id} is dead")));
        }
        let after = match req.reclaimed {
            0 => String::new(),
            n => format!(" after {n} reclaimed"),
        };
        self.call(format!(
            "acquire {}#{}{after} -> {id}",
            req.address, req.attempt
        ));
        #[cfg(feature = "simulation")]
        if let Some(world) = &self.world
            && !self.got_with.lock().unwrap().contains_key(&id)
        {
            world.launched(&id, req.settings.max_runtime);
            if world.spot() {
                self.spot.lock().unwrap().insert(id.clone());
            }
        }
        self.held.lock().unwrap().insert(id.clone());
        self.got_with
            .lock()
            .unwrap()
            .insert(id.clone(), machine_part(req.settings));
        Ok(Acquired {
            // Of the test's own kind, as the fleet's provider would record it.
            machine: Machine {
                spot: self.spot.lock().unwrap().contains(&id),
                expires_at: Some(watchdog(req.settings)),
                ..Machine::acquired(req.settings.provider(), id)
            },
            adopted: false,
        })
    }

    async fn reach(
        &self,
        machine: &Machine,
        _settings: &Settings,
    ) -> Result<Reachable, ProviderError> {
        self.point(|| format!("reach {}", machine.id)).await;
        if self.boot_forever.lock().unwrap().contains(&machine.id) {
            std::future::pending::<()>().await;
        }
        #[cfg(feature = "simulation")]
        if let Some(world) = &self.world {
            // As the aws provider's poller: an instance EC2 does not show yet is waited for,
            // until its grace is over.
            if let Some((shown, grace)) = world.shown_at(&machine.id) {
                let now = tokio::time::Instant::now();
                if shown > grace && now < shown {
                    tokio::time::sleep_until(grace.max(now)).await;
                    return Err(ProviderError {
                        operation: "DescribeInstances",
                        target: "fake".into(),
                        message: format!(
                            "instance {} is no longer known to EC2 (terminated and since purged, or launched under other credentials)",
                            machine.id
                        ),
                    });
                }
                tokio::time::sleep_until(shown.max(now)).await;
            }
            tokio::time::sleep(world.boot_time()).await;
            // A lost machine's connections fail as it says (`sim::Host`).
            return Ok(Reachable {
                peer_address: Some(self.peer_address(&machine.id)),
                endpoint: self.endpoint(&machine.id),
                patience: crate::sim::World::PATIENCE,
                refused_key_is_transient: false,
            });
        }
        if self.lost(&machine.id) {
            // Nothing listens on port 1: every connection is refused, a transient failure.
            return Ok(Reachable {
                peer_address: Some(self.peer_address(&machine.id)),
                endpoint: Endpoint::Ssh(SshEndpoint {
                    host: "127.0.0.1".into(),
                    port: 1,
                    user: None,
                    identity: None,
                    host_keys: HostKeys::Strict {
                        file: Some("/dev/null".into()),
                    },
                }),
                patience: Duration::from_secs(60),
                refused_key_is_transient: false,
            });
        }
        Ok(Reachable {
            peer_address: Some(self.peer_address(&machine.id)),
            endpoint: self.endpoint(&machine.id),
            patience: Duration::ZERO,
            refused_key_is_transient: false,
        })
    }

    async fn before_connect(
        &self,
        machine: &Machine,
        _settings: &Settings,
        _after_failure: bool,
    ) -> Result<(), ProviderError> {
        self.connects.lock().unwrap().push(machine.id.clone());
        Ok(())
    }

    async fn gone(&self, machine: &Machine) -> Result<Option<Gone>, ProviderError> {
        self.point(|| format!("gone? {}", machine.id)).await;
        if self.unknowable.lock().unwrap().contains(&machine.id) {
            return Err(ProviderError {
                operation: "describe",
                target: "fake".into(),
                message: "the API is down".into(),
            });
        }
        #[cfg(feature = "simulation")]
        if let Some(world) = &self.world {
            // As the aws provider reads DescribeInstances: an id it does not show is alive
            // while young (too new to show), gone past its grace (purged an hour after it
            // terminated, or never shown).
            match world.unseen(&machine.id) {
                Some(false) => return Ok(None),
                Some(true) => {
                    return Ok(Some(Gone::vanished(format!(
                        "instance {} is no longer known to EC2",
                        machine.id
                    ))));
                }
                None => {}
            }
            if world.purged(&machine.id) {
                return Ok(Some(Gone::vanished(format!(
                    "instance {} is no longer known to EC2 (purged)",
                    machine.id
                ))));
            }
            if self.lost(&machine.id) && !self.reclaimed.lock().unwrap().contains(&machine.id) {
                return Ok(Some(Gone::vanished(format!(
                    "instance {} was terminated outside rallyctl",
                    machine.id
                ))));
            }
        }
        let reclaimed = |set: &Mutex<HashSet<String>>| set.lock().unwrap().contains(&machine.id);
        if reclaimed(&self.reclaimed) || reclaimed(&self.being_reclaimed) {
            return Ok(Some(Gone {
                reason: format!("{} was reclaimed", machine.id),
                reclaimed: true,
            }));
        }
        Ok(self
            .gone
            .lock()
            .unwrap()
            .contains(&machine.id)
            .then(|| Gone::vanished(format!("{} is gone", machine.id))))
    }

    async fn extend(
        &self,
        machine: &Machine,
        settings: &Settings,
        _artifacts: &crate::templates::Artifacts,
        _endpoint: &Endpoint,
    ) -> Result<Option<jiff::Timestamp>, ProviderError> {
        self.point(|| format!("extend {}", machine.id)).await;
        self.call(format!("extend {}", machine.id));
        // Re-arming the watchdog is a command on the machine: a lost one cannot take it.
        let lost = self.is_simulated() && self.lost(&machine.id);
        if lost || self.refuse_extend.lock().unwrap().contains(&machine.id) {
            return Err(ProviderError {
                operation: "extend",
                target: machine.id.clone(),
                message: "the watchdog cannot be re-armed".into(),
            });
        }
        #[cfg(feature = "simulation")]
        if let Some(world) = &self.world {
            world.rearm(&machine.id, settings.max_runtime);
        }
        Ok(Some(watchdog(settings)))
    }

    async fn release(&self, machine: &Machine, settings: &Settings) -> Result<(), ProviderError> {
        self.point(|| format!("release {}", machine.id)).await;
        let got_with = self.got_with.lock().unwrap().get(&machine.id).cloned();
        if got_with.is_some_and(|got| got != machine_part(settings)) {
            self.call(format!("release {} with other settings", machine.id));
            return Err(ProviderError {
                operation: "release",
                target: machine.id.clone(),
                message: "asked with other settings than it was got with".into(),
            });
        }
        #[cfg(feature = "simulation")]
        if self
            .world
            .as_ref()
            .is_some_and(|w| w.refuses_release(&machine.id))
        {
            self.call(format!("release {} refused", machine.id));
            return Err(ProviderError {
                operation: "release",
                target: machine.id.clone(),
                message: "the API is throttling".into(),
            });
        }
        self.call(format!("release {}", machine.id));
        // A machine that is gone has no run to stop; a simulated one goes with its disk.
        if !(self.is_simulated() && self.lost(&machine.id)) {
            super::stop_run(&self.endpoint(&machine.id), machine).await?;
        }
        #[cfg(feature = "simulation")]
        if let Some(world) = &self.world {
            world.terminate(&machine.id);
        }
        self.held.lock().unwrap().remove(&machine.id);
        Ok(())
    }

    /// Every machine it holds where `settings` point (their provider's own settings: an EC2
    /// region), as EC2 finds a workspace's instances by their tags: one a dead apply got and
    /// never recorded too.
    async fn leaked(
        &self,
        _workspace: &str,
        settings: &[&Settings],
    ) -> Result<Vec<Leaked>, ProviderError> {
        self.point(|| "leaked".into()).await;
        let got_with = self.got_with.lock().unwrap();
        let held = self.held.lock().unwrap();
        let parts: Vec<MachinePart> = settings.iter().map(|s| machine_part(s)).collect();
        let mut found: Vec<Leaked> = held
            .iter()
            .filter_map(|id| {
                let got = got_with.get(id)?;
                let found_by = parts.iter().position(|p| p == got)?;
                Some(Leaked {
                    machine: Machine::acquired(got.0.kind(), id.clone()),
                    found_by,
                })
            })
            .collect();
        found.sort_by(|a, b| a.machine.id.cmp(&b.machine.id));
        Ok(found)
    }
}

/// The second octet of this process's fake machines' addresses (127.X.0.0/16), which no other
/// live process holds: claimed by an exclusive lock on a file per octet, held while the
/// process lives (the kernel lets go of it when the process dies). From 100 up, clear of the
/// e2e harness's subnets (127.0.0.0/16).
fn process_octet() -> u8 {
    static CLAIMED: std::sync::OnceLock<(u8, std::fs::File)> = std::sync::OnceLock::new();
    let (octet, _) = CLAIMED.get_or_init(|| {
        let dir = std::env::temp_dir().join("rallyctl-fake-peers");
        std::fs::create_dir_all(&dir).expect("create the fake machines' lock directory");
        (100..=254)
            .find_map(|octet| {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(dir.join(format!("{octet}.lock")))
                    .expect("open a fake machines' octet lock");
                file.try_lock().is_ok().then_some((octet, file))
            })
            .unwrap_or_else(|| panic!("every octet lock in {} is held", dir.display()))
    });
    *octet
}
