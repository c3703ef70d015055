//! `Cast` between every pair of dtypes, as TensorFlow's `static_cast`:
//! float → int truncates toward zero (saturating where C++ is undefined),
//! int → narrower int wraps, anything → bool is `!= 0`, bool → 1/0.

use crate::{DType, Data, Element, Result, Tensor};

/// A value in the widest form of its kind.
#[derive(Clone, Copy)]
enum Num {
    F(f64),
    I(i64),
}

trait CastElem: Element {
    fn to_num(self) -> Num;
    fn from_num(n: Num) -> Self;
}

macro_rules! cast_float {
    ($t:ty) => {
        impl CastElem for $t {
            fn to_num(self) -> Num {
                Num::F(self as f64)
            }
            fn from_num(n: Num) -> $t {
                match n {
                    Num::F(v) => v as $t,
                    Num::I(v) => v as $t,
                }
            }
        }
    };
}

macro_rules! cast_int {
    ($t:ty) => {
        impl CastElem for $t {
            fn to_num(self) -> Num {
                Num::I(self as i64)
            }
            fn from_num(n: Num) -> $t {
                match n {
                    Num::F(v) => v.trunc() as $t,
                    Num::I(v) => v as $t,
                }
            }
        }
    };
}

cast_float!(f32);
cast_float!(f64);
cast_int!(i32);
cast_int!(i64);
cast_int!(u8);

impl CastElem for bool {
    fn to_num(self) -> Num {
        Num::I(self as i64)
    }
    fn from_num(n: Num) -> bool {
        match n {
            Num::F(v) => v != 0.0,
            Num::I(v) => v != 0,
        }
    }
}

fn convert<S: CastElem, D: CastElem>(v: &[S]) -> Vec<D> {
    v.iter().map(|&x| D::from_num(x.to_num())).collect()
}

fn to<D: CastElem>(data: &Data) -> Vec<D> {
    match data {
        Data::F32(v) => convert(v),
        Data::F64(v) => convert(v),
        Data::I32(v) => convert(v),
        Data::I64(v) => convert(v),
        Data::U8(v) => convert(v),
        Data::Bool(v) => convert(v),
    }
}

/// `Cast` to `dtype` (float → int truncates toward zero, as TensorFlow).
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let d = x.data();
    let data = match dtype {
        DType::F32 => Data::F32(to::<f32>(d).into()),
        DType::F64 => Data::F64(to::<f64>(d).into()),
        DType::I32 => Data::I32(to::<i32>(d).into()),
        DType::I64 => Data::I64(to::<i64>(d).into()),
        DType::U8 => Data::U8(to::<u8>(d).into()),
        DType::Bool => Data::Bool(to::<bool>(d).into()),
    };
    Tensor::from_data(x.shape().to_vec(), data)
}
