//! A dense, row-major (C order) tensor on the CPU.
//!
//! Data sit behind an `Arc`, so cloning a tensor, reshaping it or handing it
//! to several consumers copies nothing. A kernel that owns the last reference
//! to its input may take the buffer back (`into_vec`) and write in place.

use std::sync::Arc;

use crate::{DType, Element, Error, Result};

/// The buffer of a tensor, one variant per dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Arc<Vec<f32>>),
    F64(Arc<Vec<f64>>),
    I32(Arc<Vec<i32>>),
    I64(Arc<Vec<i64>>),
    U8(Arc<Vec<u8>>),
    Bool(Arc<Vec<bool>>),
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::I32(_) => DType::I32,
            Data::I64(_) => DType::I64,
            Data::U8(_) => DType::U8,
            Data::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::U8(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
}

/// Number of elements of a shape (1 for a scalar).
pub fn num_elements(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A tensor from a shape and row-major values; the lengths must agree.
    pub fn new<T: Element>(shape: impl Into<Vec<usize>>, values: Vec<T>) -> Result<Tensor> {
        let shape = shape.into();
        if num_elements(&shape) != values.len() {
            return Err(Error::shape(
                "Tensor::new",
                format!(
                    "shape {:?} holds {} elements but {} values were given",
                    shape,
                    num_elements(&shape),
                    values.len()
                ),
            ));
        }
        Ok(Tensor {
            shape,
            data: T::wrap(Arc::new(values)),
        })
    }

    /// A tensor from a `Data` buffer; the lengths must agree.
    pub fn from_data(shape: impl Into<Vec<usize>>, data: Data) -> Result<Tensor> {
        let shape = shape.into();
        if num_elements(&shape) != data.len() {
            return Err(Error::shape(
                "Tensor::from_data",
                format!(
                    "shape {:?} holds {} elements but the buffer has {}",
                    shape,
                    num_elements(&shape),
                    data.len()
                ),
            ));
        }
        Ok(Tensor { shape, data })
    }

    pub fn scalar<T: Element>(value: T) -> Tensor {
        Tensor {
            shape: vec![],
            data: T::wrap(Arc::new(vec![value])),
        }
    }

    /// A tensor of `shape` filled with `value`.
    pub fn full<T: Element>(shape: impl Into<Vec<usize>>, value: T) -> Tensor {
        let shape = shape.into();
        let n = num_elements(&shape);
        Tensor {
            shape,
            data: T::wrap(Arc::new(vec![value; n])),
        }
    }

    /// A tensor of zeros (false for bool) of the given dtype.
    pub fn zeros(dtype: DType, shape: impl Into<Vec<usize>>) -> Tensor {
        let shape = shape.into();
        match dtype {
            DType::F32 => Tensor::full(shape, 0f32),
            DType::F64 => Tensor::full(shape, 0f64),
            DType::I32 => Tensor::full(shape, 0i32),
            DType::I64 => Tensor::full(shape, 0i64),
            DType::U8 => Tensor::full(shape, 0u8),
            DType::Bool => Tensor::full(shape, false),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Size in bytes of the elements.
    pub fn nbytes(&self) -> usize {
        self.len() * self.dtype().size()
    }

    /// The elements as a slice of `T`, or a dtype error naming `op`.
    pub fn values<T: Element>(&self, op: &'static str) -> Result<&[T]> {
        match T::view(&self.data) {
            Some(v) => Ok(v.as_slice()),
            None => Err(Error::DType {
                op,
                what: "input",
                expected: T::DTYPE,
                got: self.dtype(),
            }),
        }
    }

    /// Shorthand for `values::<f32>`.
    pub fn f32s(&self, op: &'static str) -> Result<&[f32]> {
        self.values::<f32>(op)
    }

    /// The elements as an owned vector: taken without a copy when this was
    /// the last reference, copied otherwise.
    pub fn into_vec<T: Element>(self, op: &'static str) -> Result<Vec<T>> {
        let dtype = self.dtype();
        match T::view(&self.data) {
            Some(_) => {}
            None => {
                return Err(Error::DType {
                    op,
                    what: "input",
                    expected: T::DTYPE,
                    got: dtype,
                })
            }
        }
        let arc = T::view(&self.data).unwrap().clone();
        drop(self);
        Ok(Arc::try_unwrap(arc).unwrap_or_else(|shared| (*shared).clone()))
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(&self, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        let shape = shape.into();
        if num_elements(&shape) != self.len() {
            return Err(Error::shape(
                "Reshape",
                format!(
                    "cannot reshape a tensor of shape {:?} ({} elements) to {:?} ({} elements)",
                    self.shape,
                    self.len(),
                    shape,
                    num_elements(&shape)
                ),
            ));
        }
        Ok(Tensor {
            shape,
            data: self.data.clone(),
        })
    }

    /// The single element of a one-element tensor.
    pub fn scalar_value<T: Element>(&self, op: &'static str) -> Result<T> {
        let v = self.values::<T>(op)?;
        if v.len() != 1 {
            return Err(Error::shape(
                op,
                format!("expected a scalar, got shape {:?}", self.shape),
            ));
        }
        Ok(v[0])
    }

    /// The elements as i64, for shape-like int32/int64 tensors.
    pub fn to_i64_vec(&self, op: &'static str) -> Result<Vec<i64>> {
        match &self.data {
            Data::I32(v) => Ok(v.iter().map(|&x| x as i64).collect()),
            Data::I64(v) => Ok(v.as_ref().clone()),
            _ => Err(Error::DType {
                op,
                what: "index tensor",
                expected: DType::I32,
                got: self.dtype(),
            }),
        }
    }

    /// The elements converted to f64 (for comparisons and references).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.as_ref().clone(),
            Data::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }
}

/// Checks that `t` has rank 4 (NHWC) and returns its dimensions.
pub fn nhwc(op: &'static str, what: &str, t: &Tensor) -> Result<[usize; 4]> {
    match *t.shape() {
        [n, h, w, c] => Ok([n, h, w, c]),
        _ => Err(Error::shape(
            op,
            format!("{what} must be 4-D NHWC, got shape {:?}", t.shape()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        assert!(Tensor::new(vec![2, 3], vec![0f32; 6]).is_ok());
        let err = Tensor::new(vec![2, 3], vec![0f32; 5]).unwrap_err();
        assert!(err.to_string().contains("[2, 3]"), "{err}");
    }

    #[test]
    fn into_vec_takes_unique_buffer_without_copy() {
        let t = Tensor::new(vec![3], vec![1f32, 2., 3.]).unwrap();
        let ptr = t.f32s("t").unwrap().as_ptr();
        let v = t.into_vec::<f32>("t").unwrap();
        assert_eq!(v.as_ptr(), ptr);
    }

    #[test]
    fn reshape_shares_and_checks() {
        let t = Tensor::new(vec![2, 3], vec![0i32; 6]).unwrap();
        assert_eq!(t.reshape(vec![3, 2]).unwrap().shape(), &[3, 2]);
        assert!(t.reshape(vec![4]).is_err());
    }

    #[test]
    fn wrong_dtype_is_named() {
        let t = Tensor::new(vec![1], vec![1i64]).unwrap();
        let err = t.f32s("Relu").unwrap_err().to_string();
        assert!(err.contains("Relu") && err.contains("int64"), "{err}");
    }
}
