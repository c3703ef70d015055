//! Client commands, one module each.

pub mod graph;
pub mod run;
pub mod train;
