//! TensorProto ↔ Tensor. Values come from `tensor_content` (raw
//! little-endian bytes) or from the typed `*_val` field of the dtype; a
//! typed field shorter than the element count is padded with its last value
//! (TensorFlow writes one value for a filled tensor) and an empty one means
//! zeros.

use bytes::Bytes;
use psflow_kernels::{DType, Data, Element, Tensor};
use psflow_proto::tensorflow::TensorProto;
use std::sync::Arc;

use crate::dtype::{dtype_from_proto, dtype_to_proto};
use crate::shape::Shape;
use crate::{Error, Result};

/// Decodes a TensorProto; `node` names the node (a Const) in errors.
pub fn tensor_from_proto(node: &str, p: &TensorProto) -> Result<Tensor> {
    let err = |detail: String| Error::TensorProto {
        node: node.to_string(),
        detail,
    };
    let dtype = dtype_from_proto(p.dtype).ok_or_else(|| Error::UnsupportedDType {
        node: node.to_string(),
        dtype: psflow_proto::ext::dtype_name(p.dtype),
    })?;
    let shape = match p.tensor_shape.as_ref().map(Shape::from_proto) {
        None => vec![],
        Some(s) => s
            .concrete()
            .ok_or_else(|| err(format!("shape {s} is not fully known")))?,
    };
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|n| n.checked_mul(8).is_some())
        .ok_or_else(|| err(format!("shape {shape:?} is too large")))?;
    let data = if !p.tensor_content.is_empty() {
        from_content(dtype, &p.tensor_content, n).map_err(err)?
    } else {
        match dtype {
            DType::F32 => Data::F32(Arc::new(fill(&p.float_val, n, "float_val").map_err(err)?)),
            DType::F64 => Data::F64(Arc::new(fill(&p.double_val, n, "double_val").map_err(err)?)),
            DType::I32 => Data::I32(Arc::new(fill(&p.int_val, n, "int_val").map_err(err)?)),
            DType::I64 => Data::I64(Arc::new(fill(&p.int64_val, n, "int64_val").map_err(err)?)),
            DType::Bool => Data::Bool(Arc::new(fill(&p.bool_val, n, "bool_val").map_err(err)?)),
            DType::U8 => {
                let v = fill(&p.int_val, n, "int_val").map_err(err)?;
                let v = v
                    .into_iter()
                    .map(|x| {
                        u8::try_from(x).map_err(|_| err(format!("uint8 value {x} out of range")))
                    })
                    .collect::<Result<Vec<u8>>>()?;
                Data::U8(Arc::new(v))
            }
        }
    };
    Tensor::from_data(shape, data).map_err(|e| err(e.to_string()))
}

/// `n` values from a typed field: all given, the last repeated, or zeros.
fn fill<T: Element>(vals: &[T], n: usize, field: &str) -> Result<Vec<T>, String> {
    match vals.len() {
        0 => Ok(vec![T::default(); n]),
        len if len == n => Ok(vals.to_vec()),
        len if len < n => {
            let mut v = Vec::with_capacity(n);
            v.extend_from_slice(vals);
            v.resize(n, vals[len - 1]);
            Ok(v)
        }
        len => Err(format!("{field} has {len} values but the shape holds {n}")),
    }
}

fn from_content(dtype: DType, bytes: &[u8], n: usize) -> Result<Data, String> {
    if bytes.len() != n * dtype.size() {
        return Err(format!(
            "tensor_content has {} bytes but {n} {dtype} elements need {}",
            bytes.len(),
            n * dtype.size()
        ));
    }
    fn le<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Arc<Vec<T>> {
        Arc::new(
            bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunk of N bytes")))
                .collect(),
        )
    }
    Ok(match dtype {
        DType::F32 => Data::F32(le(bytes, f32::from_le_bytes)),
        DType::F64 => Data::F64(le(bytes, f64::from_le_bytes)),
        DType::I32 => Data::I32(le(bytes, i32::from_le_bytes)),
        DType::I64 => Data::I64(le(bytes, i64::from_le_bytes)),
        DType::U8 => Data::U8(Arc::new(bytes.to_vec())),
        DType::Bool => Data::Bool(Arc::new(bytes.iter().map(|&b| b != 0).collect())),
    })
}

/// The raw little-endian bytes of a tensor's elements.
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    fn le<T: Copy, const N: usize>(v: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() * N);
        for &x in v {
            out.extend_from_slice(&f(x));
        }
        out
    }
    match t.data() {
        Data::F32(v) => le(v, f32::to_le_bytes),
        Data::F64(v) => le(v, f64::to_le_bytes),
        Data::I32(v) => le(v, i32::to_le_bytes),
        Data::I64(v) => le(v, i64::to_le_bytes),
        Data::U8(v) => v.as_ref().clone(),
        Data::Bool(v) => v.iter().map(|&b| b as u8).collect(),
    }
}

/// Encodes a tensor with `tensor_content` (as TensorFlow does for
/// non-scalar constants); scalars use the typed field.
pub fn tensor_to_proto(t: &Tensor) -> TensorProto {
    let mut p = TensorProto {
        dtype: dtype_to_proto(t.dtype()) as i32,
        tensor_shape: Some(Shape::known(t.shape()).to_proto()),
        ..Default::default()
    };
    if t.rank() == 0 {
        match t.data() {
            Data::F32(v) => p.float_val = v.to_vec(),
            Data::F64(v) => p.double_val = v.to_vec(),
            Data::I32(v) => p.int_val = v.to_vec(),
            Data::I64(v) => p.int64_val = v.to_vec(),
            Data::U8(v) => p.int_val = v.iter().map(|&x| x as i32).collect(),
            Data::Bool(v) => p.bool_val = v.to_vec(),
        }
    } else {
        p.tensor_content = Bytes::from(tensor_bytes(t));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use psflow_proto::tensorflow::{DataType, TensorShapeProto};

    fn proto(dtype: DataType, dims: &[i64]) -> TensorProto {
        TensorProto {
            dtype: dtype as i32,
            tensor_shape: Some(TensorShapeProto::from_dims(dims)),
            ..Default::default()
        }
    }

    #[test]
    fn content_round_trips_every_dtype() {
        let ts = [
            Tensor::new(vec![2, 3], vec![1.5f32, -2., 3., 4., 5., 6.25]).unwrap(),
            Tensor::new(vec![3], vec![1e300f64, -0.5, 7.]).unwrap(),
            Tensor::new(vec![2, 2], vec![i32::MIN, -1, 0, i32::MAX]).unwrap(),
            Tensor::new(vec![2], vec![i64::MIN, 1 << 40]).unwrap(),
            Tensor::new(vec![1, 4], vec![0u8, 1, 200, 255]).unwrap(),
            Tensor::new(vec![3], vec![true, false, true]).unwrap(),
            Tensor::scalar(3.5f32),
            Tensor::scalar(-7i64),
            Tensor::scalar(9u8),
            Tensor::scalar(true),
            Tensor::new(vec![0, 3], Vec::<f32>::new()).unwrap(),
        ];
        for t in ts {
            let back = tensor_from_proto("c", &tensor_to_proto(&t)).unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn typed_fields_and_fill() {
        let mut p = proto(DataType::DtFloat, &[2, 2]);
        p.float_val = vec![1., 2., 3., 4.];
        assert_eq!(
            tensor_from_proto("c", &p).unwrap().to_f64_vec(),
            [1., 2., 3., 4.]
        );
        // One value fills the shape (TF's form for tf.fill / zeros / ones).
        p.float_val = vec![0.5];
        assert_eq!(tensor_from_proto("c", &p).unwrap().to_f64_vec(), [0.5; 4]);
        // Fewer values: the last one repeats.
        p.float_val = vec![1., 2.];
        assert_eq!(
            tensor_from_proto("c", &p).unwrap().to_f64_vec(),
            [1., 2., 2., 2.]
        );
        // No values at all: zeros.
        p.float_val = vec![];
        assert_eq!(tensor_from_proto("c", &p).unwrap().to_f64_vec(), [0.; 4]);
        // Too many values: an error naming the node.
        p.float_val = vec![1.; 5];
        let err = tensor_from_proto("w", &p).unwrap_err().to_string();
        assert!(err.contains("\"w\"") && err.contains("float_val"), "{err}");

        let mut p = proto(DataType::DtInt64, &[3]);
        p.int64_val = vec![-4];
        assert_eq!(
            tensor_from_proto("c", &p).unwrap().to_i64_vec("t").unwrap(),
            [-4; 3]
        );
        let mut p = proto(DataType::DtInt32, &[]);
        p.int_val = vec![42];
        let t = tensor_from_proto("c", &p).unwrap();
        assert_eq!(
            (t.shape(), t.scalar_value::<i32>("t").unwrap()),
            (&[][..], 42)
        );
        let mut p = proto(DataType::DtDouble, &[2]);
        p.double_val = vec![0.25, 0.5];
        assert_eq!(tensor_from_proto("c", &p).unwrap().dtype(), DType::F64);
        let mut p = proto(DataType::DtBool, &[2]);
        p.bool_val = vec![true];
        assert_eq!(
            tensor_from_proto("c", &p).unwrap(),
            Tensor::new(vec![2], vec![true, true]).unwrap()
        );
        let mut p = proto(DataType::DtUint8, &[2]);
        p.int_val = vec![3, 300];
        assert!(tensor_from_proto("c", &p)
            .unwrap_err()
            .to_string()
            .contains("300"));
        // A missing shape is a scalar.
        let p = TensorProto {
            dtype: DataType::DtFloat as i32,
            float_val: vec![2.0],
            ..Default::default()
        };
        assert_eq!(tensor_from_proto("c", &p).unwrap(), Tensor::scalar(2.0f32));
    }

    #[test]
    fn bad_content_and_dtypes_are_named() {
        let mut p = proto(DataType::DtFloat, &[2]);
        p.tensor_content = Bytes::from_static(&[0; 7]);
        let err = tensor_from_proto("k", &p).unwrap_err().to_string();
        assert!(err.contains("\"k\"") && err.contains("7 bytes"), "{err}");
        let p = proto(DataType::DtString, &[1]);
        let err = tensor_from_proto("names", &p).unwrap_err().to_string();
        assert!(err.contains("\"names\"") && err.contains("string"), "{err}");
        let p = proto(DataType::DtFloat, &[-1, 2]);
        assert!(tensor_from_proto("k", &p)
            .unwrap_err()
            .to_string()
            .contains("not fully known"));
    }
}
