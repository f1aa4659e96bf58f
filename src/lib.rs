//! rallyctl: Terraform-style plan/apply for fleets of Elasticsearch Rally benchmarks.
//!
//! Data flows one way (see ARCHITECTURE.md): [`plan`] → [`graph`] → [`planner`] (against
//! [`state`]) → [`walk`] → [`lifecycle`] (through [`provider`], [`remote`], [`staging`],
//! [`collect`] and [`templates`]) → [`state`] and [`results`], with [`ui`] and [`cli`] at the
//! edges; [`destroy`] gives back what a workspace holds, [`bake`] makes images for its tests.

pub mod address;
pub mod backend;
pub mod bake;
pub mod cli;
pub mod collect;
pub mod cost;
pub mod destroy;
pub mod dirs;
pub mod graph;
pub mod history;
pub mod lifecycle;
pub mod notify;
pub mod ops;
pub mod parallel;
pub mod plan;
pub mod planner;
pub mod provider;
pub mod remote;
pub mod results;
#[cfg(feature = "simulation")]
pub mod sim;
/// A real build has no simulation, and no deliberate bug: each site is a plain `false`.
#[cfg(not(feature = "simulation"))]
mod sim {
    macro_rules! bug {
        ($bug:ident) => {
            false
        };
    }
    pub(crate) use bug;
}
pub mod staging;
pub mod state;
pub mod templates;
pub mod ui;
pub mod walk;

/// The hasher of the maps every test of a plan passes through (artifacts, rendered parts, the
/// graph): their keys come from the user's own plan, so the flooding that std's SipHash guards
/// against is no risk, and SipHash was a noticeable share of `plan`'s time.
pub type FastHash = foldhash::fast::RandomState;
