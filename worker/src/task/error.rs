//! Errors of worker tasks, and the gRPC status each becomes.

use tonic::{Code, Status};

use crate::data::DataError;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A malformed task or eval spec (missing graph, unknown shard, …).
    #[error("invalid task: {0}")]
    Invalid(String),
    #[error("data: {0}")]
    Data(#[from] DataError),
    #[error("graph: {0}")]
    Graph(#[from] psflow_graph::Error),
    #[error("kernel: {0}")]
    Kernel(#[from] psflow_kernels::Error),
    /// A call to a parameter-server shard failed.
    #[error("parameter server shard {shard} at {addr}: {source}")]
    Shard {
        shard: u32,
        addr: String,
        #[source]
        source: psflow_ps::Error,
    },
    /// The loss stopped being finite.
    #[error("the loss diverged at step {step} (total {loss}); try a smaller learning rate")]
    Diverged { step: u64, loss: f64 },
    #[error("the task was cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = TaskError> = std::result::Result<T, E>;

impl TaskError {
    pub fn code(&self) -> Code {
        match self {
            TaskError::Invalid(_) | TaskError::Graph(_) | TaskError::Kernel(_) => {
                Code::InvalidArgument
            }
            TaskError::Data(_) => Code::FailedPrecondition,
            TaskError::Shard { source, .. } => source.code(),
            TaskError::Diverged { .. } => Code::Aborted,
            TaskError::Cancelled => Code::Cancelled,
            TaskError::Internal(_) => Code::Internal,
        }
    }
}

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
