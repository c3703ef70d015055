//! `StridedSlice` with TensorFlow's rules (`ValidateStridedSliceOp`): the
//! spec (begin/end/strides plus masks) is first expanded to one entry per
//! input axis — an ellipsis (explicit, or implied at the end) covers the
//! axes the spec does not name, new axes consume none — then each axis is
//! canonicalised (negative indices, clamping by stride sign, masks).

use super::{gather_view, map_data, strides_of};
use crate::{Data, Error, Result, Tensor};

/// The attributes of `StridedSlice`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StridedSliceMasks {
    pub begin_mask: i64,
    pub end_mask: i64,
    pub ellipsis_mask: i64,
    pub new_axis_mask: i64,
    pub shrink_axis_mask: i64,
}

const OP: &str = "StridedSlice";

/// One input axis of the expanded spec.
#[derive(Debug, Clone, Copy)]
struct DenseAxis {
    begin: i64,
    end: i64,
    stride: i64,
    begin_masked: bool,
    end_masked: bool,
    shrink: bool,
}

/// What each axis of the result comes from.
#[derive(Debug, Clone, Copy)]
enum Out {
    NewAxis,
    Shrunk,
    Axis(usize),
}

fn bit(mask: i64, i: usize) -> bool {
    i < 64 && (mask >> i) & 1 == 1
}

/// `StridedSlice` with TensorFlow's full semantics (negative indices and
/// strides, all five masks).
pub fn strided_slice(
    x: &Tensor,
    begin: &[i64],
    end: &[i64],
    strides: &[i64],
    masks: &StridedSliceMasks,
) -> Result<Tensor> {
    if begin.len() != end.len() || begin.len() != strides.len() {
        return Err(Error::shape(
            OP,
            format!(
                "begin {begin:?}, end {end:?} and strides {strides:?} must have the same length"
            ),
        ));
    }
    let e = masks.ellipsis_mask;
    if e & e.wrapping_sub(1) != 0 {
        return Err(Error::invalid(
            OP,
            "multiple ellipses in slice spec are not allowed",
        ));
    }
    let rank = x.rank();
    let shape = x.shape();
    let mut spec_dims = begin.len();
    let mut ellipsis = e;
    if ellipsis == 0 {
        // An implied ellipsis at the end covers the axes the spec leaves out.
        ellipsis = 1 << spec_dims;
        spec_dims += 1;
    }
    let ellipsis_at = ellipsis.trailing_zeros() as usize;
    let new_after = (ellipsis_at + 1..spec_dims)
        .filter(|&i| bit(masks.new_axis_mask, i))
        .count();

    let mut dense: Vec<DenseAxis> = Vec::with_capacity(rank);
    let mut outs: Vec<Out> = Vec::new();
    for i in 0..spec_dims {
        if bit(ellipsis, i) {
            let next =
                (rank as i64 - (spec_dims - i) as i64 + 1 + new_after as i64).min(rank as i64);
            while (dense.len() as i64) < next {
                outs.push(Out::Axis(dense.len()));
                dense.push(DenseAxis {
                    begin: 0,
                    end: 0,
                    stride: 1,
                    begin_masked: true,
                    end_masked: true,
                    shrink: false,
                });
            }
        } else if bit(masks.new_axis_mask, i) {
            outs.push(Out::NewAxis);
        } else {
            if dense.len() == rank {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "index {i} of the slice spec is out of range for input shape {shape:?}"
                    ),
                ));
            }
            let shrink = bit(masks.shrink_axis_mask, i);
            outs.push(if shrink {
                Out::Shrunk
            } else {
                Out::Axis(dense.len())
            });
            dense.push(DenseAxis {
                begin: begin[i],
                end: end[i],
                stride: strides[i],
                begin_masked: bit(masks.begin_mask, i),
                end_masked: bit(masks.end_mask, i),
                shrink,
            });
        }
    }
    // Axes after an explicit ellipsis the spec did not reach stay whole.
    while dense.len() < rank {
        outs.push(Out::Axis(dense.len()));
        dense.push(DenseAxis {
            begin: 0,
            end: 0,
            stride: 1,
            begin_masked: true,
            end_masked: true,
            shrink: false,
        });
    }

    let in_strides = strides_of(shape);
    let mut offset = 0i64;
    let mut view_strides = Vec::with_capacity(rank);
    let mut sizes = Vec::with_capacity(rank);
    for (d, a) in dense.iter().enumerate() {
        let dim = shape[d] as i64;
        if a.stride == 0 {
            return Err(Error::invalid(OP, format!("stride of axis {d} is zero")));
        }
        let (b, s, n) = if a.shrink {
            if a.stride <= 0 {
                return Err(Error::invalid(
                    OP,
                    format!("axis {d}: only stride 1 is allowed on a shrunk (indexed) axis"),
                ));
            }
            let b = if a.begin < 0 { dim + a.begin } else { a.begin };
            if b < 0 || b >= dim {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "slice index {} of axis {d} is out of bounds for size {dim}",
                        a.begin
                    ),
                ));
            }
            (b, 1, 1)
        } else {
            let canon = |x: i64, masked: bool, is_end: bool| -> i64 {
                if masked {
                    match (a.stride > 0, is_end) {
                        (true, false) => 0,
                        (true, true) => dim,
                        (false, false) => dim - 1,
                        (false, true) => -1,
                    }
                } else {
                    let x = if x < 0 { dim + x } else { x };
                    if a.stride > 0 {
                        x.clamp(0, dim)
                    } else {
                        x.clamp(-1, dim - 1)
                    }
                }
            };
            let b = canon(a.begin, a.begin_masked, false);
            let e = canon(a.end, a.end_masked, true);
            let span = e - b;
            let n = if (a.stride > 0 && span > 0) || (a.stride < 0 && span < 0) {
                (span.abs() + a.stride.abs() - 1) / a.stride.abs()
            } else {
                0
            };
            (b, a.stride, n)
        };
        if n > 0 {
            offset += b * in_strides[d];
        }
        view_strides.push(s * in_strides[d]);
        sizes.push(n as usize);
    }
    let out_shape: Vec<usize> = outs
        .iter()
        .filter_map(|o| match *o {
            Out::NewAxis => Some(1),
            Out::Shrunk => None,
            Out::Axis(d) => Some(sizes[d]),
        })
        .collect();
    let data: Data = if sizes.contains(&0) {
        Tensor::zeros(x.dtype(), vec![0]).data().clone()
    } else {
        map_data!(x.data(), v => gather_view(v, offset, &view_strides, &sizes))
    };
    Tensor::from_data(out_shape, data)
}
