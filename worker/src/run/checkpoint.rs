//! Checkpoints: atomic, checksummed snapshots of named tensors.
//!
//! ```text
//! CKPT_DIR/                        (RUN_DIR/checkpoints)
//!   ckpt-<step>/
//!     data-00000-of-00001          tensors of shard 0 (one shard per process)
//!     manifest.json                step, tensor index, checksums, meta
//!   latest                         "ckpt-<step>\n", the newest complete one
//!   .tmp-…                         leftovers of a crash, never read
//! ```
//!
//! A data file is `b"PSFLOWCK"`, `u32` format version (1), `u32` tensor
//! count, then per tensor a record header — `u32` name length, name
//! (UTF-8), `u32` dtype (TensorFlow's `DataType` number), `u32` rank,
//! `u64` dims, `u64` byte count — zero padding to a multiple of 64, and the
//! little-endian element bytes (bool as one byte 0/1). The file describes
//! itself; `manifest.json` indexes it (offset, bytes, CRC-32C per tensor,
//! size and CRC-32C per file) and carries the caller's `meta`: by
//! convention `epoch`, `optimizer` (name and hyper-parameters), `data` (the
//! pipeline position: epoch and index into its order), `seed`.
//!
//! Writing goes to a `.tmp-` directory (files fsynced, directory fsynced),
//! which is renamed to `ckpt-<step>`; then the parent is fsynced and
//! `latest` replaced atomically. A crash at any point leaves either the old
//! state or the new one: a `.tmp-` directory is never a checkpoint. Load
//! verifies sizes and checksums and names the file (and the tensor) that
//! fails.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use psflow_kernels::{DType, Data, Tensor};
use serde::{Deserialize, Serialize};

use super::crc32c::{crc32c, crc32c_append};
use super::error::{IoContext, Result, RunError};
use super::fsutil::{is_temp_name, sync_dir, temp_sibling, write_atomic};

/// `format` of every manifest.
pub const FORMAT: &str = "psflow-checkpoint";
/// Version of the data file and manifest layout.
pub const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"PSFLOWCK";
const ALIGN: u64 = 64;
const MANIFEST: &str = "manifest.json";
const LATEST: &str = "latest";
const PREFIX: &str = "ckpt-";
/// Checkpoints [`Checkpointer::new`] keeps unless told otherwise.
pub const DEFAULT_KEEP: usize = 5;

/// `manifest.json` of one checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for files this code writes.
    pub version: u32,
    /// Global step the tensors belong to.
    pub step: u64,
    /// When it was written, seconds since the Unix epoch.
    pub created_unix: f64,
    pub shards: Vec<ShardEntry>,
    /// In the order they were given to `write`.
    pub tensors: Vec<TensorEntry>,
    /// The caller's state: epoch, optimizer, data position, seed, …
    pub meta: serde_json::Value,
}

/// One data file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the checkpoint directory.
    pub file: String,
    /// Its exact size.
    pub bytes: u64,
    /// CRC-32C of the whole file.
    pub crc32c: u32,
}

/// Where one tensor lies and what it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    /// "float32", "int64", … ([`DType::name`]).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Index into [`Manifest::shards`].
    pub shard: usize,
    /// Offset of the element bytes in the shard file.
    pub offset: u64,
    /// Number of element bytes.
    pub bytes: u64,
    /// CRC-32C of the element bytes.
    pub crc32c: u32,
}

/// A complete checkpoint on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// `CKPT_DIR/ckpt-<step>`.
    pub path: PathBuf,
    pub step: u64,
}

impl Checkpoint {
    /// Writes `tensors` (one shard) as `dir/ckpt-<step>` and points
    /// `dir/latest` at it; returns its path. Replaces an existing
    /// checkpoint of the same step. Does not prune: see [`Checkpointer`].
    pub fn write(
        dir: &Path,
        step: u64,
        tensors: &[(String, Tensor)],
        meta: serde_json::Value,
    ) -> Result<PathBuf> {
        Checkpoint::write_shards(dir, step, &[tensors], meta)
    }

    /// As [`write`](Self::write) with the tensors split into shards, one
    /// data file each (`data-0000i-of-0000n`).
    pub fn write_shards(
        dir: &Path,
        step: u64,
        shards: &[&[(String, Tensor)]],
        meta: serde_json::Value,
    ) -> Result<PathBuf> {
        check_names(shards)?;
        fs::create_dir_all(dir).at(dir)?;
        let final_path = dir.join(format!("{PREFIX}{step}"));
        let tmp = temp_sibling(&final_path);
        let result = write_into(&tmp, step, shards, meta).and_then(|()| {
            replace_dir(&tmp, &final_path)?;
            sync_dir(dir)?;
            write_atomic(&dir.join(LATEST), format!("{PREFIX}{step}\n").as_bytes())
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result.map(|()| final_path)
    }

    /// The checkpoint `dir/latest` names; if that file is missing or names
    /// a directory that is gone, the complete checkpoint with the highest
    /// step; `None` when there is none (or `dir` does not exist).
    pub fn latest(dir: &Path) -> Result<Option<Checkpoint>> {
        let pointer = dir.join(LATEST);
        match fs::read_to_string(&pointer) {
            Ok(text) => {
                let name = text.trim();
                if let Some(step) = parse_name(name) {
                    let path = dir.join(name);
                    if path.join(MANIFEST).is_file() {
                        return Ok(Some(Checkpoint { path, step }));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RunError::io(&pointer, e)),
        }
        Ok(Checkpoint::list(dir)?.pop())
    }

    /// Every complete checkpoint (a `ckpt-<step>` directory holding a
    /// manifest) in `dir`, by increasing step.
    pub fn list(dir: &Path) -> Result<Vec<Checkpoint>> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RunError::io(dir, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.at(dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = parse_name(&name) {
                let path = entry.path();
                if path.join(MANIFEST).is_file() {
                    found.push(Checkpoint { path, step });
                }
            }
        }
        found.sort_by_key(|c| c.step);
        Ok(found)
    }

    /// Keeps the `keep` checkpoints with the highest steps (and always the
    /// one `latest` names), removes the others and any `.tmp-` leftovers of
    /// crashed writes. Returns what it removed. Assumes one writer per
    /// directory.
    pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
        let latest = Checkpoint::latest(dir)?;
        let all = Checkpoint::list(dir)?;
        let cut = all.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for ckpt in &all[..cut] {
            if Some(ckpt) != latest.as_ref() {
                fs::remove_dir_all(&ckpt.path).at(&ckpt.path)?;
                removed.push(ckpt.path.clone());
            }
        }
        for entry in fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            if is_temp_name(&entry.file_name().to_string_lossy()) {
                let path = entry.path();
                let r = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                r.at(&path)?;
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            sync_dir(dir)?;
        }
        Ok(removed)
    }

    /// Reads and verifies this checkpoint: see [`load`].
    pub fn load(&self) -> Result<(Vec<(String, Tensor)>, Manifest)> {
        load(&self.path)
    }
}

/// Writes checkpoints into one directory and keeps the last `keep`.
#[derive(Clone, Debug)]
pub struct Checkpointer {
    dir: PathBuf,
    keep: usize,
}

impl Checkpointer {
    /// `keep` is at least 1.
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Checkpointer {
        Checkpointer {
            dir: dir.into(),
            keep: keep.max(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// [`Checkpoint::write`] then [`Checkpoint::prune`].
    pub fn save(
        &self,
        step: u64,
        tensors: &[(String, Tensor)],
        meta: serde_json::Value,
    ) -> Result<PathBuf> {
        let path = Checkpoint::write(&self.dir, step, tensors, meta)?;
        Checkpoint::prune(&self.dir, self.keep)?;
        Ok(path)
    }

    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        Checkpoint::latest(&self.dir)
    }
}

/// Reads `path/manifest.json` without touching the data files.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let file = path.join(MANIFEST);
    let text = fs::read(&file).at(&file)?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| RunError::json(&file, e))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(RunError::corrupt(
            &file,
            format!(
                "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                manifest.format, manifest.version
            ),
        ));
    }
    Ok(manifest)
}

/// Reads the checkpoint directory `path` (`…/ckpt-<step>`): every tensor,
/// in the order written, and the manifest (step, meta). Each data file's
/// size and CRC-32C and each tensor's CRC-32C and header are checked; a
/// failure is a [`RunError::Corrupt`] naming the file and the tensor.
pub fn load(path: &Path) -> Result<(Vec<(String, Tensor)>, Manifest)> {
    let manifest = read_manifest(path)?;
    let mut files = Vec::with_capacity(manifest.shards.len());
    for shard in &manifest.shards {
        let file = path.join(&shard.file);
        let bytes = fs::read(&file).at(&file)?;
        if bytes.len() as u64 != shard.bytes {
            let what = if (bytes.len() as u64) < shard.bytes {
                "truncated"
            } else {
                "too long"
            };
            return Err(RunError::corrupt(
                &file,
                format!(
                    "{what}: {} bytes, the manifest says {}",
                    bytes.len(),
                    shard.bytes
                ),
            ));
        }
        files.push((file, bytes));
    }
    let mut tensors = Vec::with_capacity(manifest.tensors.len());
    for entry in &manifest.tensors {
        let (file, bytes) = files.get(entry.shard).ok_or_else(|| {
            RunError::corrupt(
                &path.join(MANIFEST),
                format!("tensor {:?} in missing shard {}", entry.name, entry.shard),
            )
        })?;
        tensors.push((entry.name.clone(), decode_tensor(file, bytes, entry)?));
    }
    // Per-tensor checks passed; the whole-file CRC also covers headers
    // and padding.
    for ((file, bytes), shard) in files.iter().zip(&manifest.shards) {
        if crc32c(bytes) != shard.crc32c {
            return Err(RunError::corrupt(
                file,
                "file CRC-32C mismatch outside tensor data (record headers)",
            ));
        }
    }
    Ok((tensors, manifest))
}

fn check_names(shards: &[&[(String, Tensor)]]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (name, _) in shards.iter().flat_map(|s| s.iter()) {
        if name.is_empty() {
            return Err(RunError::invalid("checkpoint: empty tensor name"));
        }
        if !seen.insert(name.as_str()) {
            return Err(RunError::invalid(format!(
                "checkpoint: tensor name {name:?} given twice"
            )));
        }
    }
    Ok(())
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn write_into(
    tmp: &Path,
    step: u64,
    shards: &[&[(String, Tensor)]],
    meta: serde_json::Value,
) -> Result<()> {
    fs::create_dir(tmp).at(tmp)?;
    let n = shards.len();
    let mut manifest = Manifest {
        format: FORMAT.to_string(),
        version: VERSION,
        step,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        shards: Vec::with_capacity(n),
        tensors: Vec::new(),
        meta,
    };
    for (i, tensors) in shards.iter().enumerate() {
        let name = format!("data-{i:05}-of-{n:05}");
        let file = tmp.join(&name);
        let (bytes, crc) = write_data_file(&file, i, tensors, &mut manifest.tensors)?;
        manifest.shards.push(ShardEntry {
            file: name,
            bytes,
            crc32c: crc,
        });
    }
    let file = tmp.join(MANIFEST);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| RunError::json(&file, e))?;
    let mut f = File::create(&file).at(&file)?;
    f.write_all(&json).at(&file)?;
    f.sync_all().at(&file)?;
    sync_dir(tmp)
}

/// A writer that counts bytes and keeps a running CRC-32C.
struct Checked<W: Write> {
    inner: W,
    pos: u64,
    crc: u32,
}

impl<W: Write> Checked<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        self.crc = crc32c_append(self.crc, bytes);
        Ok(())
    }
}

fn write_data_file(
    path: &Path,
    shard: usize,
    tensors: &[(String, Tensor)],
    index: &mut Vec<TensorEntry>,
) -> Result<(u64, u32)> {
    let file = File::create(path).at(path)?;
    let mut w = Checked {
        inner: BufWriter::with_capacity(1 << 20, file),
        pos: 0,
        crc: 0,
    };
    let count = u32::try_from(tensors.len())
        .map_err(|_| RunError::invalid("checkpoint: more than 2^32 tensors in one shard"))?;
    let mut head = MAGIC.to_vec();
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&count.to_le_bytes());
    w.put(&head).at(path)?;
    let mut chunk = Vec::with_capacity(1 << 16);
    for (name, t) in tensors {
        let elem = t.dtype().size() as u64;
        let nbytes = t.len() as u64 * elem;
        let mut h = Vec::new();
        h.extend_from_slice(&(name.len() as u32).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&dtype_code(t.dtype()).to_le_bytes());
        h.extend_from_slice(&(t.rank() as u32).to_le_bytes());
        for &d in t.shape() {
            h.extend_from_slice(&(d as u64).to_le_bytes());
        }
        h.extend_from_slice(&nbytes.to_le_bytes());
        let end = w.pos + h.len() as u64;
        let pad = (ALIGN - end % ALIGN) % ALIGN;
        h.resize(h.len() + pad as usize, 0);
        w.put(&h).at(path)?;
        let offset = w.pos;
        let mut crc = 0u32;
        for_le_chunks(t.data(), &mut chunk, |bytes| {
            crc = crc32c_append(crc, bytes);
            w.put(bytes)
        })
        .at(path)?;
        index.push(TensorEntry {
            name: name.clone(),
            dtype: t.dtype().name().to_string(),
            shape: t.shape().to_vec(),
            shard,
            offset,
            bytes: nbytes,
            crc32c: crc,
        });
    }
    let Checked { inner, pos, crc } = w;
    let file = inner
        .into_inner()
        .map_err(|e| RunError::io(path, e.into_error()))?;
    file.sync_all().at(path)?;
    Ok((pos, crc))
}

/// Hands the little-endian bytes of `data` to `f` in chunks of at most
/// 64 KiB, converted through `buf`.
fn for_le_chunks(
    data: &Data,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    macro_rules! chunks {
        ($v:expr, $size:expr, $to:expr) => {{
            for part in $v.chunks((1 << 16) / $size) {
                buf.clear();
                for &x in part {
                    buf.extend_from_slice(&$to(x));
                }
                f(buf)?;
            }
        }};
    }
    match data {
        Data::F32(v) => chunks!(v, 4, f32::to_le_bytes),
        Data::F64(v) => chunks!(v, 8, f64::to_le_bytes),
        Data::I32(v) => chunks!(v, 4, i32::to_le_bytes),
        Data::I64(v) => chunks!(v, 8, i64::to_le_bytes),
        Data::U8(v) => {
            for part in v.chunks(1 << 16) {
                f(part)?;
            }
        }
        Data::Bool(v) => chunks!(v, 1, |b: bool| [b as u8]),
    }
    Ok(())
}

/// TensorFlow's `DataType` numbers.
fn dtype_code(d: DType) -> u32 {
    match d {
        DType::F32 => 1,
        DType::F64 => 2,
        DType::I32 => 3,
        DType::U8 => 4,
        DType::I64 => 9,
        DType::Bool => 10,
    }
}

fn dtype_from_name(name: &str) -> Option<DType> {
    [
        DType::F32,
        DType::F64,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::Bool,
    ]
    .into_iter()
    .find(|d| d.name() == name)
}

/// Checks one tensor's record header and CRC against the manifest and
/// builds it.
fn decode_tensor(file: &Path, bytes: &[u8], e: &TensorEntry) -> Result<Tensor> {
    let bad = |what: String| RunError::corrupt(file, format!("tensor {:?}: {what}", e.name));
    let dtype =
        dtype_from_name(&e.dtype).ok_or_else(|| bad(format!("unknown dtype {:?}", e.dtype)))?;
    let count: usize = e.shape.iter().product();
    if e.bytes != (count * dtype.size()) as u64 {
        return Err(bad(format!(
            "{} bytes do not hold shape {:?} of {dtype}",
            e.bytes, e.shape
        )));
    }
    let start = usize::try_from(e.offset).map_err(|_| bad("offset out of range".into()))?;
    let end = start
        .checked_add(e.bytes as usize)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "bytes {}..+{} past the end of the file",
                e.offset, e.bytes
            ))
        })?;
    check_record_header(bytes, start, e, dtype).map_err(bad)?;
    let raw = &bytes[start..end];
    let crc = crc32c(raw);
    if crc != e.crc32c {
        return Err(bad(format!(
            "CRC-32C mismatch in bytes {start}..{end} (stored {:#010x}, computed {crc:#010x})",
            e.crc32c
        )));
    }
    let data = match dtype {
        DType::F32 => Data::F32(le(raw, f32::from_le_bytes).into()),
        DType::F64 => Data::F64(le(raw, f64::from_le_bytes).into()),
        DType::I32 => Data::I32(le(raw, i32::from_le_bytes).into()),
        DType::I64 => Data::I64(le(raw, i64::from_le_bytes).into()),
        DType::U8 => Data::U8(raw.to_vec().into()),
        DType::Bool => {
            if let Some(i) = raw.iter().position(|&b| b > 1) {
                return Err(bad(format!("bool element {i} is {}", raw[i])));
            }
            Data::Bool(raw.iter().map(|&b| b == 1).collect::<Vec<_>>().into())
        }
    };
    Ok(Tensor::from_data(e.shape.clone(), data)?)
}

fn le<const N: usize, T>(raw: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| from(c.try_into().expect("chunks of N")))
        .collect()
}

/// The record header ends (with its padding) right where the data start:
/// find it by walking back over the padding is ambiguous, so rebuild the
/// expected header and compare.
fn check_record_header(
    bytes: &[u8],
    start: usize,
    e: &TensorEntry,
    dtype: DType,
) -> std::result::Result<(), String> {
    let mut h = Vec::new();
    h.extend_from_slice(&(e.name.len() as u32).to_le_bytes());
    h.extend_from_slice(e.name.as_bytes());
    h.extend_from_slice(&dtype_code(dtype).to_le_bytes());
    h.extend_from_slice(&(e.shape.len() as u32).to_le_bytes());
    for &d in &e.shape {
        h.extend_from_slice(&(d as u64).to_le_bytes());
    }
    h.extend_from_slice(&e.bytes.to_le_bytes());
    // Padding is under ALIGN bytes of zeros; the header starts at the
    // first position p with p + len(h) + pad == start.
    for pad in 0..ALIGN as usize {
        let Some(begin) = start.checked_sub(pad + h.len()) else {
            break;
        };
        if bytes[begin + h.len()..start].iter().all(|&b| b == 0)
            && bytes[begin..begin + h.len()] == h[..]
        {
            return Ok(());
        }
    }
    Err("record header in the data file does not match the manifest".into())
}

/// Moves the fully written `tmp` directory to `target`, replacing an
/// older checkpoint of the same step.
fn replace_dir(tmp: &Path, target: &Path) -> Result<()> {
    if target.exists() {
        let old = temp_sibling(target);
        fs::rename(target, &old).at(target)?;
        fs::rename(tmp, target).at(target)?;
        fs::remove_dir_all(&old).at(&old)?;
    } else {
        fs::rename(tmp, target).at(target)?;
    }
    Ok(())
}
