//! The run directory of `psflow train`: everything a training run leaves
//! behind, written so that a crash never leaves a file half-written where a
//! reader (TensorBoard, `--resume`, a sweep report) would trust it.
//!
//! ```text
//! RUN_DIR/
//!   events.out.tfevents.<secs>.<host>   TensorBoard scalars   (tensorboard)
//!   loss.svg                            loss curves           (plot)
//!   summary.json                        final figures         (summary)
//!   checkpoints/
//!     ckpt-<step>/{data-00000-of-00001, manifest.json}        (checkpoint)
//!     latest                            name of the newest checkpoint
//! ```
//!
//! - [`EventWriter`]: TFRecord-framed `tensorflow.Event`s ([`tfrecord`],
//!   [`crc32c`]) that TensorBoard reads.
//! - [`LossPlot`]: an SVG line plot written by hand.
//! - [`Checkpoint`] / [`Checkpointer`]: atomic, checksummed tensor
//!   snapshots with a JSON manifest; keep the last K.
//! - [`TrainSummary`] is `summary.json`.
//! - [`TrainProgress`] and [`MetricsAccumulator`]: progress bar or plain log
//!   lines, running loss means and images/s.

pub mod checkpoint;
pub mod crc32c;
mod error;
mod fsutil;
pub mod plot;
pub mod progress;
pub mod summary;
pub mod tensorboard;
pub mod tfrecord;

use std::path::{Path, PathBuf};

pub use checkpoint::{Checkpoint, Checkpointer, Manifest, ShardEntry, TensorEntry};
pub use error::{Result, RunError};
pub use fsutil::write_atomic;
pub use plot::{LossPlot, Series};
pub use progress::{Losses, MetricsAccumulator, ProgressMode, StepReport, TrainProgress};
pub use summary::TrainSummary;
pub use tensorboard::EventWriter;

/// The paths of one run directory; [`RunDir::create`] makes the folders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Creates `root` and `root/checkpoints` if they do not exist.
    pub fn create(root: impl Into<PathBuf>) -> Result<RunDir> {
        let dir = RunDir { root: root.into() };
        let ckpt = dir.checkpoints();
        std::fs::create_dir_all(&ckpt).map_err(|e| RunError::io(&ckpt, e))?;
        Ok(dir)
    }

    /// A run directory that may not exist yet (nothing is created).
    pub fn at(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where event files go (the root: `tensorboard --logdir RUN_DIR`).
    pub fn events(&self) -> &Path {
        &self.root
    }

    /// `RUN_DIR/checkpoints`, the `dir` of [`Checkpoint::write`].
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// `RUN_DIR/summary.json`.
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    /// `RUN_DIR/loss.svg`.
    pub fn loss_plot(&self) -> PathBuf {
        self.root.join("loss.svg")
    }
}
