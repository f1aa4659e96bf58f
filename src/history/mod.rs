//! A metric's history across runs: its series over the runs that raced it (`series`) and the
//! change points in it (`changepoints`), rendered for people and programs (`render`); the
//! changes its newest run brought (`news`), which `--notify` tells of.

pub mod changepoints;
pub mod news;
pub mod render;
pub mod series;
