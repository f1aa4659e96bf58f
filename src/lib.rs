//! rallyctl: Terraform-style plan/apply for fleets of Elasticsearch Rally benchmarks.
//!
//! Data flows one way (see DESIGN.md): [`plan`] → [`graph`] → [`planner`] (against [`state`]) →
//! [`executor`] (through [`provider`], [`remote`] and [`templates`]) → [`results`], with [`ui`]
//! and [`cli`] at the edges.

pub mod address;
pub mod cli;
pub mod executor;
pub mod graph;
pub mod plan;
pub mod planner;
pub mod provider;
pub mod remote;
pub mod results;
pub mod state;
pub mod templates;
pub mod ui;
