//! NumPy `.npy` files (format versions 1–3): C-order, little-endian
//! float32, float64, int32, int64, uint8 and bool arrays.

use std::path::Path;
use std::sync::Arc;

use psflow_kernels::{DType, Data, Tensor};

use crate::tensor_proto::tensor_bytes;
use crate::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

fn descr(d: DType) -> &'static str {
    match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
    }
}

fn dtype_of(descr: &str) -> std::result::Result<DType, String> {
    Ok(match descr {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<i4" => DType::I32,
        "<i8" => DType::I64,
        "|u1" | "<u1" | "u1" => DType::U8,
        "|b1" | "b1" | "?" => DType::Bool,
        d if d.starts_with('>') => {
            return Err(format!(
                "big-endian dtype {d:?} is not supported (save it little-endian)"
            ))
        }
        d => {
            return Err(format!(
                "dtype {d:?} is not supported (float32, float64, int32, int64, uint8, bool)"
            ))
        }
    })
}

/// Serializes a tensor as a version 1.0 `.npy` file.
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    let shape = match t.shape() {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        descr(t.dtype())
    );
    // Pad with spaces so the data starts at a multiple of 64, newline last.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + t.nbytes());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&tensor_bytes(t));
    out
}

/// Parses `.npy` bytes; `what` names the source in errors.
pub fn from_bytes(what: &str, bytes: &[u8]) -> Result<Tensor> {
    let err = |detail: String| Error::npy(what, detail);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err("truncated header".into()));
            }
            (
                u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
                12,
            )
        }
        _ => return Err(err(format!("unsupported format version {major}.{minor}"))),
    };
    let data_start = start + header_len;
    if bytes.len() < data_start {
        return Err(err(format!(
            "truncated header: needs {header_len} bytes, file has {}",
            bytes.len() - start
        )));
    }
    let header = std::str::from_utf8(&bytes[start..data_start])
        .map_err(|_| err("header is not text".into()))?;
    let h = parse_header(header).map_err(|e| err(format!("bad header {header:?}: {e}")))?;
    if h.fortran_order {
        return Err(err(
            "Fortran-order arrays are not supported (save with C order)".into(),
        ));
    }
    let dtype = dtype_of(&h.descr).map_err(err)?;
    let need = h
        .shape
        .iter()
        .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("shape {:?} is too large", h.shape)))?;
    let data = &bytes[data_start..];
    if data.len() != need {
        return Err(err(format!(
            "{} data: shape {:?} of {dtype} needs {need} bytes, found {}",
            if data.len() < need {
                "truncated"
            } else {
                "excess"
            },
            h.shape,
            data.len()
        )));
    }
    let buf = match dtype {
        DType::F32 => Data::F32(Arc::new(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )),
        DType::F64 => Data::F64(Arc::new(
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )),
        DType::I32 => Data::I32(Arc::new(
            data.chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )),
        DType::I64 => Data::I64(Arc::new(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )),
        DType::U8 => Data::U8(Arc::new(data.to_vec())),
        DType::Bool => Data::Bool(Arc::new(data.iter().map(|&b| b != 0).collect())),
    };
    Tensor::from_data(h.shape, buf).map_err(|e| err(e.to_string()))
}

pub fn read(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    from_bytes(&path.display().to_string(), &bytes)
}

pub fn write(path: impl AsRef<Path>, t: &Tensor) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, to_bytes(t)).map_err(|source| Error::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of a header:
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(h: &str) -> std::result::Result<Header, String> {
    let body = h
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("not a dict")?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or("expected a quoted key")?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or("expected ':'")?
            .trim_start();
        let after = match key {
            "descr" => {
                let (v, a) = quoted(after).ok_or("descr must be a string")?;
                descr = Some(v.to_string());
                a
            }
            "fortran_order" => {
                if let Some(a) = after.strip_prefix("True") {
                    fortran = Some(true);
                    a
                } else if let Some(a) = after.strip_prefix("False") {
                    fortran = Some(false);
                    a
                } else {
                    return Err("fortran_order must be True or False".into());
                }
            }
            "shape" => {
                let inner = after.strip_prefix('(').ok_or("shape must be a tuple")?;
                let close = inner.find(')').ok_or("unclosed shape tuple")?;
                let dims = inner[..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.trim_end_matches('L')
                            .parse::<usize>()
                            .map_err(|_| format!("bad dimension {s:?}"))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                shape = Some(dims);
                &inner[close + 1..]
            }
            other => return Err(format!("unexpected key {other:?}")),
        };
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(Header {
        descr: descr.ok_or("missing descr")?,
        fortran_order: fortran.ok_or("missing fortran_order")?,
        shape: shape.ok_or("missing shape")?,
    })
}

/// A `'…'` or `"…"` string at the start of `s`, and what follows it.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|&c| c == '\'' || c == '"')?;
    let end = s[1..].find(q)? + 1;
    Some((&s[1..end], &s[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_dtypes() -> Vec<Tensor> {
        vec![
            Tensor::new(vec![2, 3], vec![1.5f32, -2., 3., 4., f32::MAX, 6.]).unwrap(),
            Tensor::new(vec![3], vec![1e-300f64, 2., -3.]).unwrap(),
            Tensor::new(vec![1, 2, 2], vec![i32::MIN, 0, 1, i32::MAX]).unwrap(),
            Tensor::new(vec![2], vec![i64::MIN, i64::MAX]).unwrap(),
            Tensor::new(vec![4], vec![0u8, 1, 128, 255]).unwrap(),
            Tensor::new(vec![2, 1], vec![true, false]).unwrap(),
            Tensor::scalar(7.25f32),
            Tensor::new(vec![0, 5], Vec::<f64>::new()).unwrap(),
        ]
    }

    #[test]
    fn round_trips_every_dtype() {
        for t in all_dtypes() {
            let bytes = to_bytes(&t);
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % 64, 0, "data aligned to 64");
            assert_eq!(from_bytes("t", &bytes).unwrap(), t);
        }
    }

    #[test]
    fn files_round_trip() {
        let dir = std::env::temp_dir().join(format!("psflow-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.npy");
        let t = Tensor::new(vec![2, 2], vec![1f32, 2., 3., 4.]).unwrap();
        write(&path, &t).unwrap();
        assert_eq!(read(&path).unwrap(), t);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Bytes exactly as `numpy.save` writes `np.arange(6, dtype='<i4').reshape(2, 3)`
    /// (format 1.0, header padded to 64 bytes, then 24 data bytes).
    #[test]
    fn reads_numpy_layout() {
        let mut header = "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }".to_string();
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for i in 0..6i32 {
            bytes.extend_from_slice(&i.to_le_bytes());
        }
        let t = from_bytes("a", &bytes).unwrap();
        assert_eq!(
            t,
            Tensor::new(vec![2, 3], vec![0i32, 1, 2, 3, 4, 5]).unwrap()
        );
        // Version 2.0 has a 4-byte header length.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&(header.len() as u32).to_le_bytes());
        v2.extend_from_slice(&bytes[10..]);
        assert_eq!(from_bytes("a", &v2).unwrap(), t);
    }

    fn with_header(h: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn errors_are_clear() {
        let e = |b: &[u8]| from_bytes("in.npy", b).unwrap_err().to_string();
        let msg = e(b"PK\x03\x04 a zip file, not npy");
        assert!(
            msg.contains("in.npy") && msg.contains("not a .npy"),
            "{msg}"
        );
        let msg = e(&with_header(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n",
            &[0; 16],
        ));
        assert!(msg.contains("Fortran"), "{msg}");
        let msg = e(&with_header(
            "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }\n",
            &[0; 4],
        ));
        assert!(
            msg.contains("<f2") && msg.contains("not supported"),
            "{msg}"
        );
        let msg = e(&with_header(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }\n",
            &[0; 8],
        ));
        assert!(msg.contains("big-endian"), "{msg}");
        let msg = e(&with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n",
            &[0; 20],
        ));
        assert!(msg.contains("truncated") && msg.contains("24"), "{msg}");
        let full = to_bytes(&Tensor::new(vec![4], vec![1f64; 4]).unwrap());
        let msg = e(&full[..full.len() - 1]);
        assert!(msg.contains("truncated"), "{msg}");
        let msg = e(&full[..40]);
        assert!(msg.contains("truncated header"), "{msg}");
        let msg = e(&with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000000000), }\n",
            &[],
        ));
        assert!(msg.contains("too large"), "{msg}");
        let msg = e(&with_header("{'descr': '<f4', 'shape': (2,), }\n", &[0; 8]));
        assert!(msg.contains("fortran_order"), "{msg}");
    }
}
