//! Errors of the input pipeline: each names the file (and, for bad contents,
//! the byte offset) or the setting that is wrong, and what to do next.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset file that is not there.
    #[error("{}: not found; {hint}", path.display())]
    Missing { path: PathBuf, hint: String },

    /// The operating system refused to read or write a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// File contents that do not follow the format: `offset` is the byte
    /// offset in the file (for `.gz` files, in the decompressed stream).
    #[error("{}: malformed at byte offset {offset}: {what}", path.display())]
    Malformed {
        path: PathBuf,
        offset: u64,
        what: String,
    },

    /// A dataset name, augmentation or pipeline setting that cannot work.
    #[error("invalid data config: {0}")]
    Config(String),

    /// A tensor could not be built (a bug: shapes are checked before).
    #[error(transparent)]
    Tensor(#[from] psflow_kernels::Error),

    /// The pipeline's worker threads are gone (one of them panicked).
    #[error("input pipeline stopped: {0}")]
    Stopped(String),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn malformed(path: &Path, offset: u64, what: impl Into<String>) -> Self {
        DataError::Malformed {
            path: path.to_path_buf(),
            offset,
            what: what.into(),
        }
    }

    pub(crate) fn config(what: impl Into<String>) -> Self {
        DataError::Config(what.into())
    }
}
