//! Feed conversion: a fed tensor of another dtype than its placeholder is
//! converted when every value survives the conversion exactly (f64 values
//! representable in f32, i64 values that fit i32, whole floats to ints…),
//! otherwise the feed is refused with the first value that does not.

use psflow_kernels::{DType, Data, Tensor};

/// Converts `t` to `to`, or explains which value does not convert exactly.
pub fn cast_lossless(t: &Tensor, to: DType) -> Result<Tensor, String> {
    if t.dtype() == to {
        return Ok(t.clone());
    }
    if t.dtype() == DType::Bool || to == DType::Bool {
        return Err("bool converts to no other dtype".into());
    }
    // Every supported non-bool value is exactly an f64 except large i64s,
    // which are handled on their own.
    let shape = t.shape().to_vec();
    let data = match t.data() {
        Data::I64(v) => {
            let conv = |x: i64| -> Result<f64, String> {
                let f = x as f64;
                if f >= 9_223_372_036_854_775_808.0 || f as i64 != x {
                    Err(format!("value {x} is not exactly representable"))
                } else {
                    Ok(f)
                }
            };
            let vals: Vec<f64> = v.iter().map(|&x| conv(x)).collect::<Result<_, _>>()?;
            from_f64(&vals, to, |i| v[i].to_string())?
        }
        _ => {
            let vals = t.to_f64_vec();
            from_f64(&vals, to, |i| vals[i].to_string())?
        }
    };
    Tensor::from_data(shape, data).map_err(|e| e.to_string())
}

fn from_f64(vals: &[f64], to: DType, show: impl Fn(usize) -> String) -> Result<Data, String> {
    use std::sync::Arc;
    fn each<T>(
        vals: &[f64],
        show: &dyn Fn(usize) -> String,
        to: DType,
        f: impl Fn(f64) -> Option<T>,
    ) -> Result<Arc<Vec<T>>, String> {
        vals.iter()
            .enumerate()
            .map(|(i, &x)| {
                f(x).ok_or_else(|| {
                    format!("value {} (element {i}) does not fit {to} exactly", show(i))
                })
            })
            .collect::<Result<Vec<T>, String>>()
            .map(Arc::new)
    }
    let int = |x: f64, lo: f64, hi: f64| x.fract() == 0.0 && x >= lo && x <= hi;
    Ok(match to {
        DType::F32 => Data::F32(each(vals, &show, to, |x| {
            let y = x as f32;
            (y as f64 == x || x.is_nan()).then_some(y)
        })?),
        DType::F64 => Data::F64(each(vals, &show, to, Some)?),
        DType::I32 => Data::I32(each(vals, &show, to, |x| {
            int(x, i32::MIN as f64, i32::MAX as f64).then_some(x as i32)
        })?),
        DType::I64 => Data::I64(each(vals, &show, to, |x| {
            int(x, -9.2e18, 9.2e18).then_some(x as i64)
        })?),
        DType::U8 => Data::U8(each(vals, &show, to, |x| {
            int(x, 0.0, 255.0).then_some(x as u8)
        })?),
        DType::Bool => unreachable!("handled by the caller"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values_convert() {
        let t = Tensor::new(vec![3], vec![0.5f64, -2.0, 1e10]).unwrap();
        let c = cast_lossless(&t, DType::F32).unwrap();
        assert_eq!(c, Tensor::new(vec![3], vec![0.5f32, -2.0, 1e10]).unwrap());
        let t = Tensor::new(vec![2], vec![7i64, -(1 << 31)]).unwrap();
        assert_eq!(
            cast_lossless(&t, DType::I32).unwrap(),
            Tensor::new(vec![2], vec![7i32, i32::MIN]).unwrap()
        );
        let t = Tensor::new(vec![2], vec![3.0f32, 255.0]).unwrap();
        assert_eq!(
            cast_lossless(&t, DType::U8).unwrap(),
            Tensor::new(vec![2], vec![3u8, 255]).unwrap()
        );
        let t = Tensor::new(vec![1], vec![200u8]).unwrap();
        assert_eq!(
            cast_lossless(&t, DType::F32).unwrap(),
            Tensor::new(vec![1], vec![200f32]).unwrap()
        );
        let t = Tensor::new(vec![1], vec![i64::MAX]).unwrap();
        assert_eq!(cast_lossless(&t, DType::I64).unwrap(), t);
    }

    #[test]
    fn inexact_values_are_refused() {
        let t = Tensor::new(vec![2], vec![0.5f64, 0.1]).unwrap();
        let e = cast_lossless(&t, DType::F32).unwrap_err();
        assert!(e.contains("0.1") && e.contains("element 1"), "{e}");
        let t = Tensor::new(vec![1], vec![1i64 << 40]).unwrap();
        assert!(cast_lossless(&t, DType::I32)
            .unwrap_err()
            .contains("1099511627776"));
        let t = Tensor::new(vec![1], vec![1.5f32]).unwrap();
        assert!(cast_lossless(&t, DType::I32).is_err());
        let t = Tensor::new(vec![1], vec![-1i32]).unwrap();
        assert!(cast_lossless(&t, DType::U8).is_err());
        let t = Tensor::new(vec![1], vec![(1i64 << 53) + 1]).unwrap();
        assert!(cast_lossless(&t, DType::F64).is_err());
        let t = Tensor::new(vec![1], vec![true]).unwrap();
        assert!(cast_lossless(&t, DType::F32).is_err());
    }
}
