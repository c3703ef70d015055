//! The cluster from the command line: `psflow train --workers W --ps P`
//! and `psflow quickstart` run a whole cluster inside this process
//! ([`local::LocalCluster`]) and follow the job as `psflow train` follows
//! its steps.

pub mod local;
pub mod spec;
pub mod train;

pub use psflow_coordinator::job::is_final;
