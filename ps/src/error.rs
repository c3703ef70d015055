//! The parameter server's errors, and the gRPC status each becomes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Pull, Push, Stats or SetWorkers before a successful Init.
    #[error("the parameter server holds no shard yet: initialize it (Init) first")]
    NotInitialized,

    /// A request for another job than the one the shard serves.
    #[error("this shard serves job `{serving}`, not `{requested}`")]
    WrongJob { serving: String, requested: String },

    /// Init for the job the shard already serves, without `force`.
    #[error("shard {shard} is already initialized for job `{job}`; set force to replace it")]
    AlreadyInitialized { job: String, shard: u32 },

    /// A name that is not one of the shard's variables.
    #[error("variable `{name}` is not on this shard")]
    UnknownVariable { name: String },

    /// A value or gradient whose shape differs from the variable's.
    #[error("variable `{name}` has shape {expected:?}, the {what} has shape {got:?}")]
    ShapeMismatch {
        name: String,
        what: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    /// A dtype the operation does not take.
    #[error("variable `{name}`: {detail}")]
    DType { name: String, detail: String },

    /// Over one of the explicit size limits.
    #[error("{what} `{name}`: {bytes} bytes is over the limit of {limit} bytes ({setting})")]
    TooLarge {
        what: &'static str,
        name: String,
        bytes: u64,
        limit: u64,
        setting: &'static str,
    },

    /// A malformed request (bad chunk order, missing header, bad config).
    #[error("{0}")]
    Invalid(String),

    /// A request that is well formed but not possible in this state
    /// (a sync push ahead of the shard, a worker pushing a step twice).
    #[error("{0}")]
    Precondition(String),

    /// Pull's `min_version` was not reached before its deadline.
    #[error("version {want} not reached within {waited_ms} ms (the shard is at version {have})")]
    Deadline {
        want: u64,
        have: u64,
        waited_ms: u64,
    },

    /// The shard was re-initialized while a request waited.
    #[error("the shard was re-initialized (job `{job}`) while this request waited")]
    Replaced { job: String },

    /// An optimizer kernel refused its inputs.
    #[error("applying the optimizer to `{name}`: {source}")]
    Kernel {
        name: String,
        source: psflow_kernels::Error,
    },

    /// The client could not reach the server.
    #[error("cannot connect to the parameter server at {addr}: {detail}")]
    Connect { addr: String, detail: String },

    /// A call the server answered with an error.
    #[error("parameter server {op} failed: {}: {}", .status.code(), .status.message())]
    Rpc { op: &'static str, status: Status },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code a client can act on.
    pub fn code(&self) -> Code {
        match self {
            Error::NotInitialized | Error::WrongJob { .. } | Error::Precondition(_) => {
                Code::FailedPrecondition
            }
            Error::AlreadyInitialized { .. } => Code::AlreadyExists,
            Error::UnknownVariable { .. } => Code::NotFound,
            Error::ShapeMismatch { .. } | Error::DType { .. } | Error::Invalid(_) => {
                Code::InvalidArgument
            }
            Error::Kernel { .. } => Code::InvalidArgument,
            Error::TooLarge { .. } => Code::ResourceExhausted,
            Error::Deadline { .. } => Code::DeadlineExceeded,
            Error::Replaced { .. } => Code::Aborted,
            Error::Connect { .. } => Code::Unavailable,
            Error::Rpc { status, .. } => status.code(),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Rpc { status, .. } => status,
            e => Status::new(e.code(), e.to_string()),
        }
    }
}
