//! Client commands, one module each.

pub mod eval;
pub mod export;
pub mod graph;
pub mod graph_partition;
pub mod jobs;
pub mod quickstart;
pub mod run;
pub mod train;
pub mod train_cluster;
