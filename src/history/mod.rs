//! A metric's history across runs. For now its change points (`changepoints`), which
//! `history` will be built on.

pub mod changepoints;
