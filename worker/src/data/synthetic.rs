//! A generated dataset that needs no download: 32x32 RGB images in 10
//! classes, each a kind of shape or texture (stripes in four orientations,
//! disk, ring, checkerboard, cross, square outline, linear gradient) at a
//! random position, scale and small rotation, in random foreground and
//! background colours with Gaussian noise. The class is in the shape, not
//! in the colour or the position, so a model must learn spatial features.
//!
//! It is generated deterministically from a seed and written once in
//! CIFAR-10 binary format (`cifar-10-batches-bin/data_batch_{1..5}.bin`,
//! `test_batch.bin`), so the CIFAR reader serves it; a small meta file
//! records the generator version, seed and sizes, and a directory whose
//! meta file matches is reused.

use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, PI, TAU};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cifar::{self, CIFAR10_DIR, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES, IMAGE_BYTES, SIDE};
use super::rng::Rng;
use super::{DataError, Dataset, Result, Splits};

/// Size and seed of the synthetic dataset.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    pub seed: u64,
    /// Training examples (at least 5: one per `data_batch_*.bin`).
    pub train: usize,
    /// Test examples (at least 1).
    pub test: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            train: 10_000,
            test: 2_000,
        }
    }
}

impl SyntheticConfig {
    pub fn validate(&self) -> Result<()> {
        if self.train < CIFAR10_TRAIN_FILES.len() || self.test == 0 {
            return Err(DataError::config(format!(
                "synthetic dataset: {} train / {} test examples; need at least 5 train \
                 (one per data_batch file) and 1 test",
                self.train, self.test
            )));
        }
        Ok(())
    }
}

/// Class names, by label.
pub const CLASS_NAMES: [&str; 10] = [
    "horizontal-stripes",
    "vertical-stripes",
    "diagonal-stripes",
    "antidiagonal-stripes",
    "disk",
    "ring",
    "checkerboard",
    "cross",
    "square",
    "gradient",
];

/// Bumped whenever `render` changes, so stale caches are regenerated.
const GENERATOR_VERSION: u32 = 1;
/// The meta file beside the batches.
pub const META_FILE: &str = "psflow-synthetic.json";

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Meta {
    generator: String,
    version: u32,
    seed: u64,
    train: usize,
    test: usize,
}

impl Meta {
    fn of(config: &SyntheticConfig) -> Meta {
        Meta {
            generator: "psflow-synthetic-shapes".into(),
            version: GENERATOR_VERSION,
            seed: config.seed,
            train: config.train,
            test: config.test,
        }
    }
}

// Stream keys for `Rng::keyed`.
const KEY_LABELS: u64 = 1;
const KEY_IMAGE: u64 = 2;

fn clamp01(x: f32) -> f32 {
    x.clamp(0.0, 1.0)
}

/// Draws one image of class `class` (0..10) into `out` (32x32x3 HWC).
pub fn render(class: usize, rng: &mut Rng, out: &mut [u8]) {
    assert_eq!(out.len(), IMAGE_BYTES, "synthetic::render: output size");
    let cx = rng.range(10.0, 22.0);
    let cy = rng.range(10.0, 22.0);
    let scale = rng.range(0.75, 1.25);
    let tilt = rng.range(-0.2, 0.2);
    let phase = rng.uniform();
    let luma = |c: &[f32; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
    let (fg, bg) = loop {
        let fg = [rng.uniform(), rng.uniform(), rng.uniform()];
        let bg = [rng.uniform(), rng.uniform(), rng.uniform()];
        if (luma(&fg) - luma(&bg)).abs() >= 0.25 {
            break (fg, bg);
        }
    };
    let sigma = rng.range(0.02, 0.08);

    // Per-class parameters, drawn before the pixel loop.
    let stripes = |angle: f32, rng: &mut Rng| {
        let period = rng.range(4.0, 8.0) * scale;
        (angle + tilt, period)
    };
    enum Shape {
        Stripes { angle: f32, period: f32 },
        Disk { r: f32 },
        Ring { r: f32, half: f32 },
        Checker { period: f32, phase2: f32 },
        Cross { len: f32, half: f32 },
        Square { side: f32, half: f32 },
        Gradient { angle: f32, len: f32 },
    }
    let shape = match class {
        0 => {
            let (angle, period) = stripes(FRAC_PI_2, rng);
            Shape::Stripes { angle, period }
        }
        1 => {
            let (angle, period) = stripes(0.0, rng);
            Shape::Stripes { angle, period }
        }
        2 => {
            let (angle, period) = stripes(FRAC_PI_4, rng);
            Shape::Stripes { angle, period }
        }
        3 => {
            let (angle, period) = stripes(-FRAC_PI_4, rng);
            Shape::Stripes { angle, period }
        }
        4 => Shape::Disk {
            r: rng.range(5.0, 9.0) * scale,
        },
        5 => Shape::Ring {
            r: rng.range(6.0, 10.0) * scale,
            half: rng.range(1.0, 1.8),
        },
        6 => Shape::Checker {
            period: rng.range(3.0, 6.0) * scale,
            phase2: rng.uniform(),
        },
        7 => Shape::Cross {
            len: rng.range(7.0, 11.0) * scale,
            half: rng.range(1.2, 2.4),
        },
        8 => Shape::Square {
            side: rng.range(5.5, 9.5) * scale,
            half: rng.range(1.0, 1.8),
        },
        _ => Shape::Gradient {
            angle: rng.range(0.0, TAU),
            len: rng.range(10.0, 24.0),
        },
    };
    let (sin_t, cos_t) = tilt.sin_cos();

    for y in 0..SIDE {
        for x in 0..SIDE {
            let u = x as f32 + 0.5 - cx;
            let v = y as f32 + 0.5 - cy;
            // Coordinates in the shape's tilted frame.
            let a = u * cos_t + v * sin_t;
            let b = -u * sin_t + v * cos_t;
            let t = match shape {
                Shape::Stripes { angle, period } => {
                    let (s, c) = angle.sin_cos();
                    let along = u * c + v * s;
                    clamp01(0.5 + 1.5 * (TAU * (along / period + phase)).sin())
                }
                Shape::Disk { r } => clamp01(r - (u * u + v * v).sqrt() + 0.5),
                Shape::Ring { r, half } => clamp01(half - ((u * u + v * v).sqrt() - r).abs() + 0.5),
                Shape::Checker { period, phase2 } => {
                    let s = (PI * (a / period + phase)).sin() * (PI * (b / period + phase2)).sin();
                    clamp01(0.5 + 2.0 * s)
                }
                Shape::Cross { len, half } => {
                    let bar1 = (len - a.abs()).min(half - b.abs());
                    let bar2 = (len - b.abs()).min(half - a.abs());
                    clamp01(bar1.max(bar2) + 0.5)
                }
                Shape::Square { side, half } => {
                    let m = a.abs().max(b.abs());
                    clamp01(half - (m - side).abs() + 0.5)
                }
                Shape::Gradient { angle, len } => {
                    let (s, c) = angle.sin_cos();
                    clamp01(0.5 + (u * c + v * s) / len)
                }
            };
            let o = (y * SIDE + x) * 3;
            for k in 0..3 {
                let val = bg[k] + (fg[k] - bg[k]) * t + sigma * rng.normal();
                out[o + k] = (clamp01(val) * 255.0).round() as u8;
            }
        }
    }
}

/// Generates one split (0 = train, 1 = test) of `n` examples, classes
/// balanced and in shuffled order.
fn generate_split(seed: u64, split: u64, n: usize) -> Dataset {
    let mut labels: Vec<i32> = (0..n).map(|i| (i % CLASS_NAMES.len()) as i32).collect();
    Rng::keyed(seed, &[KEY_LABELS, split]).shuffle(&mut labels);
    let mut images = vec![0u8; n * IMAGE_BYTES];
    for (i, (img, &l)) in images
        .chunks_exact_mut(IMAGE_BYTES)
        .zip(&labels)
        .enumerate()
    {
        render(
            l as usize,
            &mut Rng::keyed(seed, &[KEY_IMAGE, split, i as u64]),
            img,
        );
    }
    Dataset {
        name: "synthetic".into(),
        images,
        labels,
        height: SIDE,
        width: SIDE,
        channels: 3,
        classes: CLASS_NAMES.len(),
    }
}

/// Generates both splits in memory.
pub fn generate(config: &SyntheticConfig) -> Result<Splits> {
    config.validate()?;
    Ok(Splits {
        train: generate_split(config.seed, 0, config.train),
        test: generate_split(config.seed, 1, config.test),
    })
}

/// The cache folder used when no directory is given:
/// `$XDG_CACHE_HOME/psflow/synthetic-<seed>-<train>-<test>` (or under
/// `~/.cache`, or the temp dir when neither is set).
pub fn default_dir(config: &SyntheticConfig) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("psflow").join(format!(
        "synthetic-{}-{}-{}",
        config.seed, config.train, config.test
    ))
}

/// Whether `batches` (a `cifar-10-batches-bin` folder) holds this config.
fn is_current(batches: &Path, config: &SyntheticConfig) -> bool {
    let Ok(text) = fs::read_to_string(batches.join(META_FILE)) else {
        return false;
    };
    let Ok(meta) = serde_json::from_str::<Meta>(&text) else {
        return false;
    };
    meta == Meta::of(config)
        && CIFAR10_TRAIN_FILES
            .iter()
            .chain([&CIFAR10_TEST_FILE])
            .all(|f| batches.join(f).is_file())
}

/// Makes sure `dir/cifar-10-batches-bin` holds the dataset of `config`,
/// generating it if it is missing or was made with other settings, and
/// returns that folder. Files appear atomically and the meta file last, so
/// concurrent callers at worst generate the same bytes twice.
pub fn ensure_on_disk(dir: &Path, config: &SyntheticConfig) -> Result<PathBuf> {
    config.validate()?;
    let batches = dir.join(CIFAR10_DIR);
    if is_current(&batches, config) {
        return Ok(batches);
    }
    fs::create_dir_all(&batches).map_err(|e| DataError::io(&batches, e))?;
    // A stale meta file must not vouch for half-rewritten batches.
    match fs::remove_file(batches.join(META_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(DataError::io(&batches.join(META_FILE), e))
        }
        _ => {}
    }
    let splits = generate(config)?;
    let files = CIFAR10_TRAIN_FILES.len();
    let n = splits.train.len();
    let mut start = 0;
    for (k, f) in CIFAR10_TRAIN_FILES.iter().enumerate() {
        let end = start + n / files + usize::from(k < n % files);
        cifar::write_file(
            &batches.join(f),
            &splits.train.images[start * IMAGE_BYTES..end * IMAGE_BYTES],
            &[&splits.train.labels[start..end]],
        )?;
        start = end;
    }
    cifar::write_file(
        &batches.join(CIFAR10_TEST_FILE),
        &splits.test.images,
        &[&splits.test.labels],
    )?;
    let names = CLASS_NAMES.join("\n") + "\n";
    cifar::write_atomic(&batches.join("batches.meta.txt"), names.as_bytes())?;
    let meta = serde_json::to_string_pretty(&Meta::of(config)).expect("meta serializes");
    cifar::write_atomic(&batches.join(META_FILE), meta.as_bytes())?;
    Ok(batches)
}

/// Generates (if needed) and reads the synthetic dataset under `dir`.
pub fn load(dir: &Path, config: &SyntheticConfig) -> Result<Splits> {
    let batches = ensure_on_disk(dir, config)?;
    let mut splits = cifar::load_cifar10(&batches)?;
    splits.train.name = "synthetic".into();
    splits.test.name = "synthetic".into();
    Ok(splits)
}
