//! Errors of jobs, and the gRPC status each becomes.

use tonic::{Code, Status};

use crate::membership::MembershipError;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A job spec that cannot run (missing fields, bad numbers).
    #[error("invalid job: {0}")]
    InvalidSpec(String),
    /// The training graph is not valid (unknown op, cycle, dangling input…).
    #[error("invalid training graph: {0}")]
    InvalidGraph(String),
    /// Placing or splitting the graph failed.
    #[error("cannot partition the training graph: {0}")]
    Partition(String),
    /// Fewer live tasks of a role than the job asks for.
    #[error("the job asks for {wanted} {role} task(s) but only {alive} are alive; start more `psflow {role}` processes or ask for fewer")]
    NotEnoughTasks {
        role: &'static str,
        wanted: u32,
        alive: u32,
    },
    #[error("no job {0:?}")]
    NotFound(String),
    /// A task (PS shard or worker) failed.
    #[error("{task}: {detail}")]
    Task { task: String, detail: String },
    #[error("the job was cancelled")]
    Cancelled,
    #[error("membership: {0}")]
    Membership(#[from] MembershipError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = JobError> = std::result::Result<T, E>;

impl JobError {
    pub fn code(&self) -> Code {
        match self {
            JobError::InvalidSpec(_) | JobError::InvalidGraph(_) | JobError::Partition(_) => {
                Code::InvalidArgument
            }
            JobError::NotEnoughTasks { .. } => Code::FailedPrecondition,
            JobError::NotFound(_) => Code::NotFound,
            JobError::Task { .. } => Code::Aborted,
            JobError::Cancelled => Code::Cancelled,
            JobError::Membership(_) => Code::Unavailable,
            JobError::Internal(_) => Code::Internal,
        }
    }
}

impl From<JobError> for Status {
    fn from(e: JobError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
