//! Errors of placement and partitioning. Each names the node, variable or
//! setting it is about.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The graph does not validate (unknown ops, cycles, bad inputs…).
    #[error(transparent)]
    Graph(#[from] psflow_graph::Error),

    /// A graph the partitioner cannot split as asked.
    #[error("node {node:?}: {detail}")]
    InvalidGraph { node: String, detail: String },

    /// A bad placement request (no shards, duplicate variables).
    #[error("placement: {0}")]
    Placement(String),

    /// A bad task assignment.
    #[error("partitioning: {0}")]
    Tasks(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
