//! The data side of training: datasets read into memory, augmentation as
//! the MobileNet-on-CIFAR recipe does it, and a pipeline that prepares
//! batches ahead of compute on its own threads.
//!
//! - [`Dataset`]: images as NHWC `u8` plus `i32` labels, one per split.
//! - Readers: CIFAR-10/100 binary ([`cifar`]), Fashion-MNIST IDX ([`idx`]),
//!   and a generated dataset written in CIFAR-10 binary ([`synthetic`]);
//!   [`DatasetKind::load`] picks one by name.
//! - [`AugmentConfig`] and the image ops in [`augment`] (TensorFlow's
//!   `tf.image` semantics).
//! - [`Pipeline`]: shuffling per epoch, sharding per worker, bounded
//!   prefetch on worker threads; deterministic under a seed.

pub mod augment;
pub mod cifar;
mod error;
pub mod idx;
mod pipeline;
pub mod rng;
pub mod synthetic;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use augment::{AugmentConfig, Augmenter};
pub use error::{DataError, Result};
pub use pipeline::{
    build_batch, shard_order, Batch, Pipeline, PipelineConfig, PipelineStats, Shard,
};
pub use synthetic::SyntheticConfig;

/// One split of a dataset, held in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// What it is: "cifar10", "cifar100-fine", "fashion-mnist", "synthetic", …
    pub name: String,
    /// `len() * height * width * channels` bytes, NHWC.
    pub images: Vec<u8>,
    /// One label per image, in `0..classes`.
    pub labels: Vec<i32>,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub classes: usize,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image (`height * width * channels`).
    pub fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// The HWC bytes of example `i` (panics if `i >= len()`, like indexing).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// How many examples each class has.
    pub fn label_histogram(&self) -> Vec<usize> {
        let mut h = vec![0; self.classes];
        for &l in &self.labels {
            if let Some(c) = h.get_mut(l as usize) {
                *c += 1;
            }
        }
        h
    }

    /// The first `n` examples (all of them if there are fewer), e.g. for a
    /// quick run on part of a dataset.
    pub fn head(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            name: self.name.clone(),
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..*self
        }
    }

    /// Checks that sizes agree and every label is in `0..classes`.
    pub fn validate(&self) -> Result<()> {
        if self.height == 0 || self.width == 0 || self.channels == 0 || self.classes == 0 {
            return Err(DataError::config(format!(
                "dataset {}: zero-sized image {}x{}x{} or {} classes",
                self.name, self.height, self.width, self.channels, self.classes
            )));
        }
        if self.images.len() != self.len() * self.image_len() {
            return Err(DataError::config(format!(
                "dataset {}: {} labels need {} image bytes, got {}",
                self.name,
                self.len(),
                self.len() * self.image_len(),
                self.images.len()
            )));
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l < 0 || l as usize >= self.classes)
        {
            return Err(DataError::config(format!(
                "dataset {}: label {l} of example {i} is outside 0..{}",
                self.name, self.classes
            )));
        }
        Ok(())
    }
}

/// The train and test splits of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
}

/// Which CIFAR-100 label to train on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cifar100Labels {
    /// The 20 superclasses.
    Coarse,
    /// The 100 classes.
    #[default]
    Fine,
}

/// A dataset psflow can read, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DatasetKind {
    /// CIFAR-10 binary version (`cifar-10-batches-bin/`).
    Cifar10,
    /// CIFAR-100 binary version (`cifar-100-binary/`).
    Cifar100 { labels: Cifar100Labels },
    /// Fashion-MNIST IDX files, `.gz` or raw.
    FashionMnist,
    /// Generated 32x32 RGB shapes in 10 classes, cached in CIFAR-10 binary.
    Synthetic(SyntheticConfig),
}

impl DatasetKind {
    /// `(height, width, channels, classes)` of the images, known without
    /// reading anything (the model can be built before the data load).
    pub fn image_shape(&self) -> (usize, usize, usize, usize) {
        match self {
            DatasetKind::Cifar10 | DatasetKind::Synthetic(_) => (32, 32, 3, 10),
            DatasetKind::Cifar100 {
                labels: Cifar100Labels::Coarse,
            } => (32, 32, 3, 20),
            DatasetKind::Cifar100 {
                labels: Cifar100Labels::Fine,
            } => (32, 32, 3, 100),
            DatasetKind::FashionMnist => (28, 28, 1, 10),
        }
    }

    /// Where the dataset is read from when no directory is given: Debian's
    /// Fashion-MNIST location, the user cache for the synthetic set; CIFAR
    /// has none (it must be downloaded by hand).
    pub fn default_dir(&self) -> Option<PathBuf> {
        match self {
            DatasetKind::FashionMnist => Some(PathBuf::from(idx::FASHION_MNIST_DIR)),
            DatasetKind::Synthetic(c) => Some(synthetic::default_dir(c)),
            DatasetKind::Cifar10 | DatasetKind::Cifar100 { .. } => None,
        }
    }

    /// Reads both splits from `dir` (or [`default_dir`](Self::default_dir)).
    /// The synthetic dataset is generated there first if it is not yet.
    pub fn load(&self, dir: Option<&Path>) -> Result<Splits> {
        let dir = match dir.map(Path::to_path_buf).or_else(|| self.default_dir()) {
            Some(d) => d,
            None => {
                return Err(DataError::config(format!(
                    "{self} has no default location: {}",
                    cifar::DOWNLOAD_HINT
                )))
            }
        };
        match self {
            DatasetKind::Cifar10 => cifar::load_cifar10(&dir),
            DatasetKind::Cifar100 { labels } => cifar::load_cifar100(&dir, *labels),
            DatasetKind::FashionMnist => idx::load_fashion_mnist(&dir),
            DatasetKind::Synthetic(c) => synthetic::load(&dir, c),
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetKind::Cifar10 => f.write_str("cifar10"),
            DatasetKind::Cifar100 {
                labels: Cifar100Labels::Fine,
            } => f.write_str("cifar100"),
            DatasetKind::Cifar100 {
                labels: Cifar100Labels::Coarse,
            } => f.write_str("cifar100-coarse"),
            DatasetKind::FashionMnist => f.write_str("fashion-mnist"),
            DatasetKind::Synthetic(_) => f.write_str("synthetic"),
        }
    }
}

/// Parses the names a `--dataset` flag takes: `cifar10`, `cifar100`
/// (`cifar100-fine`), `cifar100-coarse`, `fashion-mnist`, `synthetic`
/// (default size and seed). Dashes and underscores are interchangeable.
impl FromStr for DatasetKind {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match norm.as_str() {
            "cifar10" | "cifar-10" => DatasetKind::Cifar10,
            "cifar100" | "cifar-100" | "cifar100-fine" | "cifar-100-fine" => {
                DatasetKind::Cifar100 {
                    labels: Cifar100Labels::Fine,
                }
            }
            "cifar100-coarse" | "cifar-100-coarse" => DatasetKind::Cifar100 {
                labels: Cifar100Labels::Coarse,
            },
            "fashion-mnist" | "fashionmnist" | "fmnist" => DatasetKind::FashionMnist,
            "synthetic" => DatasetKind::Synthetic(SyntheticConfig::default()),
            _ => {
                return Err(DataError::config(format!(
                    "unknown dataset {s:?}: expected one of cifar10, cifar100, \
                     cifar100-coarse, fashion-mnist, synthetic"
                )))
            }
        })
    }
}
