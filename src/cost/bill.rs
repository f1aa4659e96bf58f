//! What a run cost, from the machine time state records ([`crate::state::Spent`]): a test's
//! share is its own entries, a run's total each machine it used once, from its earliest
//! entry's start to its latest entry's end, a minute at least (EC2 bills Linux instances per
//! second with a 60-second minimum). Only `aws` machines are billed by the hour; the price
//! each entry carries is all its machine was charged an hour (its public IPv4 address too).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use crate::plan::ProviderKind;
use crate::state::{Spent, State, TestRecord};

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bill {
    pub machine_hours: f64,
    /// None when a machine of it has no known price: a part cannot be summed into a total.
    pub usd: Option<f64>,
    pub machines: usize,
}

impl Bill {
    /// The dollars, or `unknown`; never 0 for want of a price.
    pub fn usd_text(&self) -> String {
        self.usd.map_or("unknown".into(), super::usd)
    }
}

impl std::fmt::Display for Bill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} for {:.2} machine-hour{} on {} machine{}",
            self.usd_text(),
            self.machine_hours,
            if self.machine_hours == 1.0 { "" } else { "s" },
            self.machines,
            if self.machines == 1 { "" } else { "s" },
        )
    }
}

/// The machine time `record` held in `run`; none when it held no billed machine there.
pub fn of_test(record: &TestRecord, run: &str) -> Option<Bill> {
    sum(record
        .spent
        .iter()
        .filter(|s| billed(s, run))
        .map(|s| (s.machine.as_str(), s.from, s.to, s.usd_per_hour)))
}

/// What `run` cost: every machine any record held in it, once, from its first entry's start to
/// its last entry's end (variants hold one machine each); none when it used no billed machine.
pub fn of_run(state: &State, run: &str) -> Option<Bill> {
    let mut machines: BTreeMap<&str, (Timestamp, Timestamp, Option<f64>)> = BTreeMap::new();
    for s in state.tests.values().flat_map(|r| &r.spent) {
        if !billed(s, run) {
            continue;
        }
        machines
            .entry(&s.machine)
            .and_modify(|(from, to, price)| {
                *from = (*from).min(s.from);
                *to = (*to).max(s.to);
                // Entries of one machine carry one price; one without makes it unknown.
                *price = price.zip(s.usd_per_hour).map(|(p, _)| p);
            })
            .or_insert((s.from, s.to, s.usd_per_hour));
    }
    sum(machines
        .into_iter()
        .map(|(id, (from, to, price))| (id, from, to, price)))
}

fn billed(s: &Spent, run: &str) -> bool {
    s.run_id == run && s.provider == ProviderKind::Aws
}

fn sum<'a>(
    entries: impl Iterator<Item = (&'a str, Timestamp, Timestamp, Option<f64>)>,
) -> Option<Bill> {
    let mut bill: Option<Bill> = None;
    let mut ids: Vec<&str> = Vec::new();
    for (id, from, to, price) in entries {
        let secs = to.duration_since(from).as_secs_f64();
        let hours = secs.max(super::MINIMUM_BILLED.as_secs_f64()) / 3600.0;
        let b = bill.get_or_insert(Bill {
            machine_hours: 0.0,
            usd: Some(0.0),
            machines: 0,
        });
        b.machine_hours += hours;
        b.usd = b.usd.zip(price).map(|(total, p)| total + p * hours);
        if !ids.contains(&id) {
            ids.push(id);
            b.machines += 1;
        }
    }
    bill
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Status;

    fn spent(run: &str, machine: &str, from: &str, to: &str, price: Option<f64>) -> Spent {
        Spent {
            run_id: run.into(),
            provider: ProviderKind::Aws,
            machine: machine.into(),
            from: format!("2026-12-01T{from}:00Z").parse().unwrap(),
            to: format!("2026-12-01T{to}:00Z").parse().unwrap(),
            usd_per_hour: price,
        }
    }

    fn record(spent: Vec<Spent>) -> TestRecord {
        TestRecord {
            spent,
            ..TestRecord::new(
                "h".into(),
                serde_json::json!({}).into(),
                "esrally race".into(),
                Status::Completed,
            )
        }
    }

    #[test]
    fn a_test_pays_its_own_entries_and_a_run_each_machine_once() {
        let mut state = State::new("w");
        // Two variants held one machine, 1:00 to 2:00 and 1:00 to 2:30; a test of its own
        // held another twice (a failed attempt and the next), and one of an earlier run.
        state.tests.insert(
            "s.a-x".parse().unwrap(),
            record(vec![spent("r2", "i-1", "01:00", "02:00", Some(0.1))]),
        );
        state.tests.insert(
            "s.a-y".parse().unwrap(),
            record(vec![spent("r2", "i-1", "01:00", "02:30", Some(0.1))]),
        );
        state.tests.insert(
            "s.b".parse().unwrap(),
            record(vec![
                spent("r1", "i-0", "00:00", "01:00", Some(0.2)),
                spent("r2", "i-2", "01:00", "01:30", Some(0.2)),
                spent("r2", "i-3", "01:30", "02:00", Some(0.2)),
            ]),
        );
        let b = of_test(&state.tests[&"s.b".parse().unwrap()], "r2").unwrap();
        assert_eq!((b.machine_hours, b.machines), (1.0, 2));
        assert!((b.usd.unwrap() - 0.2).abs() < 1e-9);
        let run = of_run(&state, "r2").unwrap();
        // i-1 once for 1.5 h at 0.1, i-2 and i-3 for half an hour each at 0.2.
        assert_eq!((run.machine_hours, run.machines), (2.5, 3));
        assert!((run.usd.unwrap() - 0.35).abs() < 1e-9);
        assert_eq!(of_run(&state, "r3"), None);
    }

    #[test]
    fn a_machine_is_billed_a_minute_at_least() {
        let mut state = State::new("w");
        let mut brief = spent("r1", "i-1", "00:00", "00:00", Some(0.36));
        brief.to = brief.from + jiff::SignedDuration::from_secs(10);
        state
            .tests
            .insert("s.a".parse().unwrap(), record(vec![brief]));
        let run = of_run(&state, "r1").unwrap();
        assert!((run.machine_hours - 60.0 / 3600.0).abs() < 1e-12);
        assert!((run.usd.unwrap() - 0.006).abs() < 1e-12, "{run:?}");
        let test = of_test(&state.tests[&"s.a".parse().unwrap()], "r1").unwrap();
        assert_eq!(test, run);
    }

    /// The price recorded with a machine is all it is charged an hour: an instance that
    /// connects by a public address pays for that address too, and every instance for its root
    /// volume (here 8 GiB of gp3 at $0.08 a GB-month, $0.000877 an hour).
    #[tokio::test]
    async fn a_public_ipv4_address_and_the_root_volume_are_billed_with_their_machine() {
        let plan = crate::plan::Plan::parse(
            std::path::Path::new("p.toml"),
            "version = 1\nname = \"p\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-12345678\"\n\
             instance_type = \"m5.large\"\ntrack = \"geonames\"\n[[suite]]\nname = \"s\"\n\
             [[suite.test]]\nname = \"public\"\n\
             [[suite.test]]\nname = \"private\"\nconnect = \"private_ip\"\n",
        )
        .unwrap();
        let file = super::super::PriceFile::parse(
            std::path::Path::new("prices.toml"),
            "[[price]]\nregion = \"us-east-1\"\ninstance_type = \"m5.large\"\nusd_per_hour = 0.096\n\
             [[ebs]]\nregion = \"us-east-1\"\nvolume_type = \"gp3\"\nusd_per_gb_month = 0.08\n",
        )
        .unwrap();
        let ec2 = super::super::tests::Answers {
            volumes: [("ami-12345678", super::super::tests::gib(8, "gp3"))].into(),
            spot: Default::default(),
            asked: Default::default(),
        };
        let prices = super::super::tests::priced(&plan, &file, &ec2).await;
        let mut tests = plan.tests();
        let (public, private) = (tests.next().unwrap(), tests.next().unwrap());
        let mut state = State::new("w");
        for (test, machine) in [(public, "i-1"), (private, "i-2")] {
            let price = prices.usd_per_hour(&test.settings, false);
            state.tests.insert(
                test.address.clone(),
                record(vec![spent("r1", machine, "00:00", "01:00", price)]),
            );
        }
        let bill = |name: &str| {
            let r = &state.tests[&format!("s.{name}").parse().unwrap()];
            of_test(r, "r1").unwrap().usd.unwrap()
        };
        let root = 8.0 * 0.08 / 730.0;
        assert!((bill("public") - (0.101 + root)).abs() < 1e-12);
        assert!((bill("private") - (0.096 + root)).abs() < 1e-12);
    }

    #[test]
    fn an_unknown_price_is_unknown_and_own_machines_are_no_bill() {
        let mut state = State::new("w");
        let mut own = spent("r1", "local", "00:00", "01:00", None);
        own.provider = ProviderKind::Local;
        state.tests.insert(
            "s.a".parse().unwrap(),
            record(vec![
                spent("r1", "i-1", "00:00", "01:00", Some(0.1)),
                spent("r1", "i-2", "00:00", "02:00", None),
            ]),
        );
        state
            .tests
            .insert("s.own".parse().unwrap(), record(vec![own]));
        let run = of_run(&state, "r1").unwrap();
        assert_eq!((run.machine_hours, run.usd, run.machines), (3.0, None, 2));
        assert_eq!(
            run.to_string(),
            "unknown for 3.00 machine-hours on 2 machines"
        );
        assert_eq!(of_test(&state.tests[&"s.own".parse().unwrap()], "r1"), None);
    }
}
