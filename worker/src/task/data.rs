//! A task's data: the dataset a [`DataSpec`] names (loaded once per process
//! and shared by every task in it) and its training preprocessing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use psflow_proto::worker::DataSpec;

use crate::data::{AugmentConfig, DataError, Dataset, DatasetKind};

/// The train and test splits of a dataset.
#[derive(Clone)]
pub struct LoadedData {
    pub train: Arc<Dataset>,
    pub test: Arc<Dataset>,
}

type Cache = Mutex<HashMap<(String, Option<PathBuf>), LoadedData>>;

/// The dataset `spec` names, loaded from disk the first time this process
/// asks for it (an in-process cluster's workers share one copy).
pub fn load(spec: &DataSpec) -> Result<LoadedData, DataError> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let kind: DatasetKind = spec.dataset.parse()?;
    let dir = (!spec.data_dir.is_empty()).then(|| PathBuf::from(&spec.data_dir));
    let key = (kind.to_string(), dir.clone());
    let cache = CACHE.get_or_init(Default::default);
    // Held while loading: two tasks asking at once load (or generate) once.
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = cache.get(&key) {
        return Ok(d.clone());
    }
    let splits = kind.load(dir.as_deref())?;
    let d = LoadedData {
        train: Arc::new(splits.train),
        test: Arc::new(splits.test),
    };
    cache.insert(key, d.clone());
    Ok(d)
}

/// The training preprocessing `augment` names (`cifar`: the
/// MobileNet-on-CIFAR recipe, `crop-flip`: its geometric half, `none`:
/// standardization only, `flip`: random flips only, `raw`: nothing),
/// resized to `resolution`, grey images replicated
/// to RGB.
pub fn augment_for(
    augment: &str,
    resolution: usize,
    data: &Dataset,
) -> Result<AugmentConfig, DataError> {
    if data.channels != 1 && data.channels != 3 {
        return Err(DataError::config(format!(
            "{} has {} channels; the models take 1 (replicated) or 3",
            data.name, data.channels
        )));
    }
    let base = match augment {
        "cifar" => AugmentConfig::cifar_train(),
        "crop-flip" => AugmentConfig {
            brightness: None,
            contrast: None,
            ..AugmentConfig::cifar_train()
        },
        "flip" => AugmentConfig {
            flip: true,
            ..AugmentConfig::eval()
        },
        "none" => AugmentConfig::eval(),
        "raw" => AugmentConfig::none(),
        other => {
            return Err(DataError::config(format!(
                "unknown augmentation {other:?} (cifar, crop-flip, flip, none or raw)"
            )))
        }
    };
    let resize =
        (data.height != resolution || data.width != resolution).then_some((resolution, resolution));
    Ok(base
        .with_resize(resize)
        .with_grayscale_to_rgb(data.channels == 1))
}
