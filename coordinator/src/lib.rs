//! psflow coordinator: membership (etcd / in-memory), placement of variables
//! on parameter-server shards, partitioning of training graphs per task, and
//! jobs.

pub mod job;
pub mod membership;
pub mod partition;
pub mod placement;
