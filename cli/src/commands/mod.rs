//! Client commands, one module each.

pub mod graph;
pub mod run;
