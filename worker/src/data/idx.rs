//! IDX files (the MNIST format) and Fashion-MNIST.
//!
//! An IDX file starts with two zero bytes, an element-type byte (0x08 for
//! unsigned bytes, the only one we read), the number of dimensions, then
//! each dimension as a big-endian u32, then the elements row-major. Images
//! are `[n, rows, cols]` (magic 0x00000803), labels `[n]` (0x00000801).
//! Files may be gzip-compressed (`.gz`); offsets in errors then count bytes
//! of the decompressed stream.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{DataError, Dataset, Result, Splits};

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

const FASHION_HINT: &str = "install Debian's dataset-fashion-mnist (apt-get install \
     dataset-fashion-mnist, files in /usr/share/datasets/fashion-mnist) or pass --data-dir DIR \
     holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], \
     t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]";

/// The contents of an IDX file of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// `base` or `base.gz`, whichever exists (the uncompressed one first).
pub fn find(dir: &Path, base: &str) -> Result<PathBuf> {
    let raw = dir.join(base);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{base}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::Missing {
        path: gz,
        hint: format!("neither it nor {} exists; {FASHION_HINT}", raw.display()),
    })
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() * 4);
    let mut dec = GzDecoder::new(bytes.as_slice());
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match dec.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(DataError::malformed(
                    path,
                    out.len() as u64,
                    format!(
                        "gzip stream broken after {} decompressed bytes: {e}",
                        out.len()
                    ),
                ))
            }
        }
    }
}

/// Reads an IDX file of unsigned bytes (raw or gzip).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 4 {
        return Err(DataError::malformed(
            path,
            bytes.len() as u64,
            format!(
                "file ends after {} bytes, inside the 4-byte IDX magic",
                bytes.len()
            ),
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::malformed(
            path,
            0,
            format!("bad IDX magic 0x{magic:08x}: the first two bytes must be zero (expected 0x00000801 or 0x00000803)"),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::malformed(
            path,
            2,
            format!(
                "IDX element type 0x{:02x} is not unsigned byte (0x08)",
                bytes[2]
            ),
        ));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err(DataError::malformed(
            path,
            3,
            "IDX file with zero dimensions",
        ));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(DataError::malformed(
            path,
            bytes.len() as u64,
            format!("file ends inside the header: {ndims} dimensions need {header} bytes"),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let have = bytes.len() - header;
    match want {
        Some(w) if w == have => {}
        Some(w) if w > have => {
            return Err(DataError::malformed(
                path,
                bytes.len() as u64,
                format!("data cut short: dimensions {dims:?} need {w} bytes after the {header}-byte header, the file has {have}"),
            ))
        }
        Some(w) => {
            return Err(DataError::malformed(
                path,
                (header + w) as u64,
                format!("{} trailing bytes after the {w} bytes that dimensions {dims:?} describe", have - w),
            ))
        }
        None => {
            return Err(DataError::malformed(
                path,
                4,
                format!("dimensions {dims:?} overflow"),
            ))
        }
    }
    let mut data = bytes;
    data.drain(..header);
    Ok(IdxArray { dims, data })
}

/// Writes an IDX file of unsigned bytes, gzip-compressed if `gzip`.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8], gzip: bool) -> Result<()> {
    if dims.iter().product::<usize>() != data.len() || dims.is_empty() || dims.len() > 255 {
        return Err(DataError::config(format!(
            "IDX: dimensions {dims:?} do not describe {} bytes",
            data.len()
        )));
    }
    let mut raw = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        let d = u32::try_from(d)
            .map_err(|_| DataError::config(format!("IDX: dimension {d} exceeds u32")))?;
        raw.extend_from_slice(&d.to_be_bytes());
    }
    raw.extend_from_slice(data);
    let bytes = if gzip {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&raw).map_err(|e| DataError::io(path, e))?;
        enc.finish().map_err(|e| DataError::io(path, e))?
    } else {
        raw
    };
    super::cifar::write_atomic(path, &bytes)
}

/// Reads one split (`train` or `t10k`) of an MNIST-style dataset.
fn read_split(dir: &Path, prefix: &str, name: &str, classes: usize) -> Result<Dataset> {
    let ipath = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lpath = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&ipath)?;
    let labels = read_idx(&lpath)?;
    if images.dims.len() != 3 {
        return Err(DataError::malformed(
            &ipath,
            3,
            format!(
                "images must have 3 dimensions [n, rows, cols], got {:?}",
                images.dims
            ),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(DataError::malformed(
            &lpath,
            3,
            format!("labels must have 1 dimension [n], got {:?}", labels.dims),
        ));
    }
    if labels.dims[0] != images.dims[0] {
        return Err(DataError::malformed(
            &lpath,
            4,
            format!(
                "{} labels, but {} holds {} images",
                labels.dims[0],
                ipath.display(),
                images.dims[0]
            ),
        ));
    }
    if let Some(i) = labels.data.iter().position(|&l| l as usize >= classes) {
        return Err(DataError::malformed(
            &lpath,
            (8 + i) as u64,
            format!(
                "label {} of example {i} is outside 0..{classes}",
                labels.data[i]
            ),
        ));
    }
    Ok(Dataset {
        name: name.to_string(),
        images: images.data,
        labels: labels.data.iter().map(|&l| l as i32).collect(),
        height: images.dims[1],
        width: images.dims[2],
        channels: 1,
        classes,
    })
}

/// Reads Fashion-MNIST (60000 train, 10000 test, 28x28x1, 10 classes) from
/// `dir`, or from `dir/fashion-mnist` when that exists.
pub fn load_fashion_mnist(dir: &Path) -> Result<Splits> {
    let nested = dir.join("fashion-mnist");
    let dir = if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    };
    Ok(Splits {
        train: read_split(&dir, "train", "fashion-mnist", 10)?,
        test: read_split(&dir, "t10k", "fashion-mnist", 10)?,
    })
}
