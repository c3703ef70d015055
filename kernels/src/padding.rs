//! Window geometry shared by convolutions and pooling, with TensorFlow's
//! rules: SAME pads so that `out = ceil(in / stride)`, putting the odd pixel
//! after (bottom/right); VALID uses no padding.

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Same,
    Valid,
    /// TensorFlow's EXPLICIT padding: `[top, bottom, left, right]`.
    Explicit([usize; 4]),
}

impl Padding {
    /// Parses TensorFlow's `padding` attribute (`SAME`, `VALID`).
    pub fn parse(op: &'static str, s: &str) -> Result<Padding> {
        match s {
            "SAME" => Ok(Padding::Same),
            "VALID" => Ok(Padding::Valid),
            other => Err(Error::unsupported(
                op,
                format!("padding {other:?} (expected SAME, VALID or EXPLICIT)"),
            )),
        }
    }
}

/// One spatial dimension of a window op: output size and padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dim1 {
    pub out: usize,
    pub pad_before: usize,
    pub pad_after: usize,
}

/// Output size and padding of one spatial dimension of size `input` under a
/// window of size `k` moved by `stride`.
pub fn window_dim(
    op: &'static str,
    input: usize,
    k: usize,
    stride: usize,
    padding: Padding,
    axis: usize,
) -> Result<Dim1> {
    if k == 0 || stride == 0 {
        return Err(Error::invalid(
            op,
            format!("window {k} and stride {stride} must be positive"),
        ));
    }
    match padding {
        Padding::Same => {
            let out = input.div_ceil(stride);
            let needed = (out.saturating_sub(1) * stride + k).saturating_sub(input);
            Ok(Dim1 {
                out,
                pad_before: needed / 2,
                pad_after: needed - needed / 2,
            })
        }
        Padding::Valid => {
            if input < k {
                return Err(Error::shape(
                    op,
                    format!("VALID window of size {k} does not fit input size {input}"),
                ));
            }
            Ok(Dim1 {
                out: (input - k) / stride + 1,
                pad_before: 0,
                pad_after: 0,
            })
        }
        Padding::Explicit(p) => {
            let (before, after) = if axis == 0 {
                (p[0], p[1])
            } else {
                (p[2], p[3])
            };
            let padded = input + before + after;
            if padded < k {
                return Err(Error::shape(
                    op,
                    format!("window of size {k} does not fit padded input size {padded}"),
                ));
            }
            Ok(Dim1 {
                out: (padded - k) / stride + 1,
                pad_before: before,
                pad_after: after,
            })
        }
    }
}

/// The 2-D geometry of a window op over an NHWC input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window2d {
    pub rows: Dim1,
    pub cols: Dim1,
}

pub fn window_2d(
    op: &'static str,
    in_hw: [usize; 2],
    k_hw: [usize; 2],
    strides: [usize; 2],
    padding: Padding,
) -> Result<Window2d> {
    Ok(Window2d {
        rows: window_dim(op, in_hw[0], k_hw[0], strides[0], padding, 0)?,
        cols: window_dim(op, in_hw[1], k_hw[1], strides[1], padding, 1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_matches_tensorflow() {
        // in 5, k 3, s 2 → out 3, total pad 2 → 1/1
        let d = window_dim("t", 5, 3, 2, Padding::Same, 0).unwrap();
        assert_eq!((d.out, d.pad_before, d.pad_after), (3, 1, 1));
        // in 4, k 3, s 2 → out 2, total pad 1 → 0 before, 1 after (asymmetric)
        let d = window_dim("t", 4, 3, 2, Padding::Same, 0).unwrap();
        assert_eq!((d.out, d.pad_before, d.pad_after), (2, 0, 1));
        // in 1, k 3, s 1 → out 1, pad 1/1
        let d = window_dim("t", 1, 3, 1, Padding::Same, 0).unwrap();
        assert_eq!((d.out, d.pad_before, d.pad_after), (1, 1, 1));
    }

    #[test]
    fn valid_checks_fit() {
        let d = window_dim("t", 7, 3, 2, Padding::Valid, 0).unwrap();
        assert_eq!(d.out, 3);
        assert!(window_dim("t", 2, 3, 1, Padding::Valid, 0).is_err());
    }
}
