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
    /// RunGraph or DeregisterGraph of a handle this worker does not know.
    #[error("no graph is registered under handle {handle:?} on this worker (RegisterGraph first; a restarted worker forgets its graphs)")]
    UnknownGraph { handle: String },
    /// A step of a registered graph failed in its executor.
    #[error("step {step}: {source}")]
    Step {
        step: u64,
        #[source]
        source: psflow_graph::Error,
    },
    /// Receiving a tensor from another worker's RecvTensor failed.
    #[error("receiving {key} in step {step} from task {task} at {addr}: {detail}")]
    Peer {
        task: String,
        addr: String,
        key: String,
        step: u64,
        code: Code,
        detail: String,
    },
    /// RecvTensor: nothing was sent under the key in time.
    #[error("step {step}: nothing was sent under {key} on this worker within {waited_ms} ms (is the sending partition's RunGraph for this step running here?)")]
    RecvDeadline {
        key: String,
        step: u64,
        waited_ms: u64,
    },
    /// RecvTensor: the step failed on this worker, so its value never comes.
    #[error("step {step}: {key} will not be sent: {detail}")]
    StepAborted {
        key: String,
        step: u64,
        detail: String,
    },
    /// A message over a protocol limit.
    #[error("{what} is {bytes} bytes, over the limit of {limit} bytes; {hint}")]
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
        hint: &'static str,
    },
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
            TaskError::UnknownGraph { .. } => Code::NotFound,
            TaskError::Step { source, .. } => match source {
                psflow_graph::Error::RecvTimeout { .. } => Code::DeadlineExceeded,
                psflow_graph::Error::Rendezvous { .. } => Code::Aborted,
                _ => Code::InvalidArgument,
            },
            TaskError::Peer { code, .. } => *code,
            TaskError::RecvDeadline { .. } => Code::DeadlineExceeded,
            TaskError::StepAborted { .. } => Code::Aborted,
            TaskError::TooLarge { .. } => Code::ResourceExhausted,
        }
    }
}

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
