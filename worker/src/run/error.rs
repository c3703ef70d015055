//! Errors of the run directory: each names the file and what is wrong with
//! it, so that a corrupt checkpoint or event file can be found and removed.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The operating system refused to read, write, rename or sync a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file whose contents fail a check: wrong checksum, truncated,
    /// malformed header or record. `what` says which check and where.
    #[error("{}: corrupt: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },

    /// A JSON file (manifest, summary) that does not parse or serialize.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// An argument that cannot work (empty tensor name, duplicate names,
    /// an unsupported dtype, a plot without data, …).
    #[error("{0}")]
    Invalid(String),

    /// A tensor could not be rebuilt (a bug: shapes are checked before).
    #[error(transparent)]
    Tensor(#[from] psflow_kernels::Error),
}

pub type Result<T, E = RunError> = std::result::Result<T, E>;

impl RunError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        RunError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, what: impl Into<String>) -> Self {
        RunError::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn json(path: &Path, source: serde_json::Error) -> Self {
        RunError::Json {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        RunError::Invalid(what.into())
    }
}

/// `.map_err` shorthand: attach the path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| RunError::io(path, e))
    }
}
