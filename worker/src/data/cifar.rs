//! CIFAR-10 and CIFAR-100, binary version.
//!
//! A record is the label byte(s) followed by 3072 bytes: the red, green and
//! blue planes of a 32x32 image, each row-major. CIFAR-10 has one label
//! byte (10 classes) in `cifar-10-batches-bin/data_batch_{1..5}.bin` and
//! `test_batch.bin`; CIFAR-100 has a coarse (20) then a fine (100) label
//! byte in `cifar-100-binary/{train,test}.bin`. We convert the planes to
//! HWC on reading.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Cifar100Labels, DataError, Dataset, Result, Splits};

pub const CIFAR10_DIR: &str = "cifar-10-batches-bin";
pub const CIFAR100_DIR: &str = "cifar-100-binary";
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";
pub const CIFAR100_TRAIN_FILE: &str = "train.bin";
pub const CIFAR100_TEST_FILE: &str = "test.bin";

/// Side of a CIFAR image.
pub const SIDE: usize = 32;
/// Bytes of one image (three 32x32 planes).
pub const IMAGE_BYTES: usize = SIDE * SIDE * 3;

pub(crate) const DOWNLOAD_HINT: &str =
    "download the binary version from https://www.cs.toronto.edu/~kriz/cifar.html, \
     unpack it and pass --data-dir DIR (the unpacked folder or its parent), \
     or use --dataset synthetic";

/// `dir` itself when it holds the files, else `dir/<sub>` when that exists.
fn resolve(dir: &Path, sub: &str) -> PathBuf {
    let nested = dir.join(sub);
    if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

fn require(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(DataError::Missing {
            path,
            hint: DOWNLOAD_HINT.to_string(),
        })
    }
}

fn empty(name: &str, classes: usize) -> Dataset {
    Dataset {
        name: name.to_string(),
        images: Vec::new(),
        labels: Vec::new(),
        height: SIDE,
        width: SIDE,
        channels: 3,
        classes,
    }
}

/// Reads CIFAR-10 from `dir` (`cifar-10-batches-bin` or its parent).
pub fn load_cifar10(dir: &Path) -> Result<Splits> {
    let dir = resolve(dir, CIFAR10_DIR);
    let mut train = empty("cifar10", 10);
    for f in CIFAR10_TRAIN_FILES {
        read_file(&require(dir.join(f))?, 1, 0, &mut train)?;
    }
    let mut test = empty("cifar10", 10);
    read_file(&require(dir.join(CIFAR10_TEST_FILE))?, 1, 0, &mut test)?;
    Ok(Splits { train, test })
}

/// Reads CIFAR-100 from `dir` (`cifar-100-binary` or its parent) with the
/// coarse (20) or fine (100) labels.
pub fn load_cifar100(dir: &Path, labels: Cifar100Labels) -> Result<Splits> {
    let dir = resolve(dir, CIFAR100_DIR);
    let (name, which, classes) = match labels {
        Cifar100Labels::Coarse => ("cifar100-coarse", 0, 20),
        Cifar100Labels::Fine => ("cifar100-fine", 1, 100),
    };
    let mut train = empty(name, classes);
    read_file(
        &require(dir.join(CIFAR100_TRAIN_FILE))?,
        2,
        which,
        &mut train,
    )?;
    let mut test = empty(name, classes);
    read_file(&require(dir.join(CIFAR100_TEST_FILE))?, 2, which, &mut test)?;
    Ok(Splits { train, test })
}

/// Appends the records of one CIFAR binary file to `out`: `label_bytes`
/// label bytes per record, of which byte `which` is kept and checked
/// against `out.classes`.
pub fn read_file(path: &Path, label_bytes: usize, which: usize, out: &mut Dataset) -> Result<()> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    let rec = label_bytes + IMAGE_BYTES;
    if bytes.is_empty() {
        return Err(DataError::malformed(path, 0, "empty file: no records"));
    }
    let whole = bytes.len() / rec;
    if bytes.len() % rec != 0 {
        return Err(DataError::malformed(
            path,
            (whole * rec) as u64,
            format!(
                "record {whole} is cut short: {} of {rec} bytes (truncated file, or not \
                 CIFAR-{} binary)",
                bytes.len() - whole * rec,
                if label_bytes == 1 { "10" } else { "100" }
            ),
        ));
    }
    // CIFAR-100's two label bytes have their own ranges.
    let ranges: &[usize] = if label_bytes == 2 {
        &[20, 100]
    } else {
        &[out.classes]
    };
    out.images.reserve(whole * IMAGE_BYTES);
    out.labels.reserve(whole);
    let plane = SIDE * SIDE;
    for (r, record) in bytes.chunks_exact(rec).enumerate() {
        for (b, &limit) in ranges.iter().enumerate() {
            if record[b] as usize >= limit {
                return Err(DataError::malformed(
                    path,
                    (r * rec + b) as u64,
                    format!("label {} of record {r} is outside 0..{limit}", record[b]),
                ));
            }
        }
        out.labels.push(record[which] as i32);
        let img = &record[label_bytes..];
        let start = out.images.len();
        out.images.resize(start + IMAGE_BYTES, 0);
        let dst = &mut out.images[start..];
        for p in 0..plane {
            dst[p * 3] = img[p];
            dst[p * 3 + 1] = img[plane + p];
            dst[p * 3 + 2] = img[2 * plane + p];
        }
    }
    Ok(())
}

/// Encodes 32x32x3 HWC images as CIFAR binary records: `labels` has one
/// slice per label byte (`[labels]` for CIFAR-10, `[coarse, fine]` for
/// CIFAR-100), each as long as there are images.
pub fn encode_records(images: &[u8], labels: &[&[i32]]) -> Result<Vec<u8>> {
    let n = images.len() / IMAGE_BYTES;
    if images.len() != n * IMAGE_BYTES || labels.iter().any(|l| l.len() != n) {
        return Err(DataError::config(format!(
            "CIFAR records: {} image bytes is not a whole number of 32x32x3 images matching \
             label counts {:?}",
            images.len(),
            labels.iter().map(|l| l.len()).collect::<Vec<_>>()
        )));
    }
    if let Some(l) = labels
        .iter()
        .flat_map(|l| l.iter())
        .find(|&&l| !(0..256).contains(&l))
    {
        return Err(DataError::config(format!(
            "CIFAR records: label {l} does not fit a byte"
        )));
    }
    let rec = labels.len() + IMAGE_BYTES;
    let plane = SIDE * SIDE;
    let mut out = vec![0u8; n * rec];
    for (i, record) in out.chunks_exact_mut(rec).enumerate() {
        for (b, l) in labels.iter().enumerate() {
            record[b] = l[i] as u8;
        }
        let img = &images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES];
        let planes = &mut record[labels.len()..];
        for p in 0..plane {
            for c in 0..3 {
                planes[c * plane + p] = img[p * 3 + c];
            }
        }
    }
    Ok(out)
}

/// Writes CIFAR binary records to `path` (see [`encode_records`]), through a
/// temporary file renamed into place so a reader never sees half a file.
pub fn write_file(path: &Path, images: &[u8], labels: &[&[i32]]) -> Result<()> {
    let bytes = encode_records(images, labels)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a unique temporary name beside `path`, syncs, renames.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("data");
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}
