//! Errors of the kernel library: each names the op and what was wrong.

use crate::DType;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// Input shapes that do not fit the op (ranks, channel counts, broadcast).
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },

    /// An input of a dtype the op does not take.
    #[error("{op}: expected dtype {expected} for {what}, got {got}")]
    DType {
        op: &'static str,
        what: &'static str,
        expected: DType,
        got: DType,
    },

    /// A parameter (stride, axis, padding, …) outside what the op accepts.
    #[error("{op}: invalid argument: {detail}")]
    InvalidArgument { op: &'static str, detail: String },

    /// Something TensorFlow supports that psflow does not (yet).
    #[error("{op}: unsupported: {detail}")]
    Unsupported { op: &'static str, detail: String },

    /// A device that was asked for is not there (no CUDA driver, no device,
    /// or not that device).
    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable { device: String, reason: String },

    /// An optional CUDA library (cuBLAS) that was asked for cannot be
    /// loaded: which, what was searched and what to set.
    #[error("{library} is not available: {reason}")]
    LibraryUnavailable {
        library: &'static str,
        reason: String,
    },

    /// A CUDA call failed (driver, NVRTC): what was being done and why.
    #[error("{op}: CUDA error: {detail}")]
    Cuda { op: &'static str, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }

    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            detail: detail.into(),
        }
    }

    pub fn unsupported(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Unsupported {
            op,
            detail: detail.into(),
        }
    }
}
