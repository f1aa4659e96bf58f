//! A metric's history across runs: its series over the runs that raced it (`series`) and the
//! change points in it (`changepoints`), rendered for people and programs (`render`).

pub mod changepoints;
pub mod render;
pub mod series;
