//! Client commands, one module each.

pub mod eval;
pub mod export;
pub mod graph;
pub mod run;
pub mod train;
