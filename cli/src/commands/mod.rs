//! Client commands, one module each.

pub mod eval;
pub mod export;
pub mod graph;
pub mod graph_partition;
pub mod run;
pub mod train;
