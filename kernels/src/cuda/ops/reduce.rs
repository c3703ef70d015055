//! Reductions on CUDA (kernels/src/cuda/reduce.cu): `Sum`, `Mean`,
//! `L2Loss` and `BiasAddGrad`, deterministic (a fixed order of additions,
//! no atomics), summed in double as the CPU's `Sum`/`Mean`
//! ([`crate::ops::reduce`], [`crate::ops::softmax::l2_loss`],
//! [`crate::ops::matmul::bias_add_grad`]).

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::elementwise::bias_channels;
use crate::cuda::context::{driver_err, CudaDevice, DeviceTensor};
use crate::cuda::nvrtc::Source;
use crate::ops::reduce::normalize_axes;
use crate::{Error, Result};

/// Merged kept or reduced axes a plan can have (`RED_MAX_AXES`).
pub(crate) const MAX_AXES: usize = 4;
/// Threads of a partial-sum block.
const BLOCK: usize = 256;
/// Elements each thread sums, at least, before splitting further.
const PER_THREAD: usize = 16;
/// Most splits of the reduced range.
const MAX_SPLITS: usize = 1024;

/// `struct ReducePlan` of reduce.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReducePlan {
    pub kept_rank: i32,
    pub red_rank: i32,
    pub kept_dims: [i64; MAX_AXES],
    pub kept_strides: [i64; MAX_AXES],
    pub red_dims: [i64; MAX_AXES],
    pub red_strides: [i64; MAX_AXES],
}

// SAFETY: plain `repr(C)` integers laid out as the CUDA struct (two ints,
// then four arrays of long long, 8-aligned).
unsafe impl DeviceRepr for ReducePlan {}

/// A reduction's geometry: the plan, outputs and elements per output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub plan: ReducePlan,
    pub n_out: usize,
    pub count: usize,
}

/// Splits `shape` (row-major) into kept and reduced axes (`axes` sorted,
/// in range), dropping size-1 axes and merging neighbours of one kind.
pub(crate) fn geometry(op: &'static str, shape: &[usize], axes: &[usize]) -> Result<Geometry> {
    let mut strides = vec![0i64; shape.len()];
    let mut s = 1i64;
    for i in (0..shape.len()).rev() {
        strides[i] = s;
        s *= shape[i] as i64;
    }
    let mut kept: Vec<(i64, i64)> = Vec::new();
    let mut red: Vec<(i64, i64)> = Vec::new();
    let mut last_reduced: Option<bool> = None;
    for i in 0..shape.len() {
        if shape[i] == 1 {
            continue;
        }
        let reduced = axes.contains(&i);
        let list = if reduced { &mut red } else { &mut kept };
        let (d, st) = (shape[i] as i64, strides[i]);
        match list.last_mut() {
            // The previous non-1 axis was of the same kind: contiguous.
            Some(prev) if last_reduced == Some(reduced) => {
                prev.0 *= d;
                prev.1 = st;
            }
            _ => list.push((d, st)),
        }
        last_reduced = Some(reduced);
    }
    if kept.len() > MAX_AXES || red.len() > MAX_AXES {
        return Err(Error::unsupported(
            op,
            format!(
                "reducing axes {axes:?} of shape {shape:?} alternates kept and reduced axes more \
                 than the CUDA kernel's {MAX_AXES} groups of each"
            ),
        ));
    }
    let mut plan = ReducePlan {
        kept_rank: kept.len() as i32,
        red_rank: red.len() as i32,
        ..ReducePlan::default()
    };
    for (k, &(d, st)) in kept.iter().enumerate() {
        plan.kept_dims[k] = d;
        plan.kept_strides[k] = st;
    }
    for (k, &(d, st)) in red.iter().enumerate() {
        plan.red_dims[k] = d;
        plan.red_strides[k] = st;
    }
    let n_out = shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .product();
    let count = axes.iter().map(|&a| shape[a]).product();
    Ok(Geometry { plan, n_out, count })
}

/// What is summed and how the sum is finished.
#[derive(Debug, Clone, Copy)]
enum Finish {
    Sum,
    Mean,
    HalfSumOfSquares,
}

impl CudaDevice {
    fn reduce(
        &self,
        op: &'static str,
        x: &DeviceTensor,
        axes: &[usize],
        out_shape: Vec<usize>,
        finish: Finish,
    ) -> Result<DeviceTensor> {
        let g = geometry(op, x.shape(), axes)?;
        let mut out = self.uninit(out_shape)?;
        debug_assert_eq!(out.len(), g.n_out);
        if g.n_out == 0 {
            return Ok(out);
        }
        let tx = g.n_out.next_power_of_two().min(32);
        let ty = BLOCK / tx;
        let splits = g.count.div_ceil(ty * PER_THREAD).clamp(1, MAX_SPLITS);
        let x_blocks = u32::try_from(g.n_out.div_ceil(tx))
            .map_err(|_| Error::unsupported(op, "more than 2^31 blocks of outputs"))?;
        // Doubles, two floats each, from the f32 pool (256-byte aligned).
        let mut partial = self.alloc(2 * splits * g.n_out)?;
        let (n_out_i, count_i) = (g.n_out as i64, g.count as i64);
        let square = matches!(finish, Finish::HalfSumOfSquares) as i32;
        let f = self.function(Source::Reduce, "reduce_partial")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&x.buf)
            .arg(&g.plan)
            .arg(&n_out_i)
            .arg(&count_i)
            .arg(&square)
            .arg(&mut partial);
        let cfg = LaunchConfig {
            grid_dim: (x_blocks, splits as u32, 1),
            block_dim: (tx as u32, ty as u32, 1),
            shared_mem_bytes: (BLOCK * std::mem::size_of::<f64>()) as u32,
        };
        // SAFETY: the plan maps every (output < n_out, reduced index <
        // count) to an element of x (strides and dims from its shape);
        // partial holds splits·n_out doubles; shared memory holds tx·ty
        // doubles and ty is a power of two (256 / a power of two ≤ 32).
        unsafe { launch.launch(cfg) }.map_err(driver_err(op))?;

        let divisor = match finish {
            Finish::Sum => 1.0f64,
            Finish::Mean => g.count as f64,
            Finish::HalfSumOfSquares => 2.0,
        };
        let splits_i = splits as i32;
        let f = self.function(Source::Reduce, "reduce_finalize")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&partial)
            .arg(&splits_i)
            .arg(&n_out_i)
            .arg(&divisor)
            .arg(&mut out.buf);
        // SAFETY: partial holds splits·n_out doubles, out n_out floats.
        unsafe { launch.launch(super::elementwise(g.n_out)) }.map_err(driver_err(op))?;
        Ok(out)
    }

    fn sum_or_mean(
        &self,
        op: &'static str,
        x: &DeviceTensor,
        axes: &[i64],
        keep_dims: bool,
        finish: Finish,
    ) -> Result<DeviceTensor> {
        let axes = normalize_axes(op, x.shape().len(), axes)?;
        let shape: Vec<usize> = x
            .shape()
            .iter()
            .enumerate()
            .filter_map(|(i, &d)| match (axes.contains(&i), keep_dims) {
                (false, _) => Some(d),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        self.reduce(op, x, &axes, shape, finish)
    }

    /// `Sum` over `axes` (negative axes count from the end).
    pub fn sum(&self, x: &DeviceTensor, axes: &[i64], keep_dims: bool) -> Result<DeviceTensor> {
        self.sum_or_mean("Sum", x, axes, keep_dims, Finish::Sum)
    }

    /// `Mean` over `axes` (an empty reduced axis gives NaN, as the CPU).
    pub fn mean(&self, x: &DeviceTensor, axes: &[i64], keep_dims: bool) -> Result<DeviceTensor> {
        self.sum_or_mean("Mean", x, axes, keep_dims, Finish::Mean)
    }

    /// `L2Loss`: `sum(x²) / 2` as a scalar.
    pub fn l2_loss(&self, x: &DeviceTensor) -> Result<DeviceTensor> {
        let axes: Vec<usize> = (0..x.shape().len()).collect();
        self.reduce("L2Loss", x, &axes, vec![], Finish::HalfSumOfSquares)
    }

    /// `BiasAddGrad`: the gradient summed over every axis but the last,
    /// per channel (one partial per block and channel, added in a fixed
    /// order: no contended atomics).
    pub fn bias_add_grad(&self, dy: &DeviceTensor) -> Result<DeviceTensor> {
        const OP: &str = "BiasAddGrad";
        let c = bias_channels(OP, dy)?;
        let axes: Vec<usize> = (0..dy.shape().len() - 1).collect();
        self.reduce(OP, dy, &axes, vec![c], Finish::Sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::reduce::sum;
    use crate::Tensor;

    /// The kernel's indexing on the host, in f64 (one split), against the
    /// CPU's `Sum`.
    fn host_sum(x: &Tensor, axes: &[i64]) -> Vec<f32> {
        let norm = normalize_axes("t", x.rank(), axes).unwrap();
        let g = geometry("t", x.shape(), &norm).unwrap();
        let v = x.f32s("t").unwrap();
        let p = g.plan;
        let offset = |mut idx: i64, rank: i32, dims: &[i64], strides: &[i64]| {
            let mut off = 0;
            for d in (0..rank as usize).rev() {
                off += (idx % dims[d]) * strides[d];
                idx /= dims[d];
            }
            off
        };
        (0..g.n_out as i64)
            .map(|o| {
                let base = offset(o, p.kept_rank, &p.kept_dims, &p.kept_strides);
                let s: f64 = (0..g.count as i64)
                    .map(|r| {
                        v[(base + offset(r, p.red_rank, &p.red_dims, &p.red_strides)) as usize]
                            as f64
                    })
                    .sum();
                s as f32
            })
            .collect()
    }

    #[test]
    fn plans_visit_what_the_cpu_sums() {
        let cases: &[(&[usize], &[i64])] = &[
            (&[2, 3, 4, 5], &[1, 2]),
            (&[2, 3, 4, 5], &[0]),
            (&[2, 3, 4, 5], &[-1]),
            (&[2, 3, 4, 5], &[0, 2]),
            (&[2, 3, 4, 5], &[0, 1, 2, 3]),
            (&[2, 3, 4, 5], &[1, 3]),
            (&[7, 1, 1, 9], &[1, 2]),
            (&[4, 1, 6], &[0, 1]),
            (&[5], &[]),
            (&[3, 0, 2], &[1]),
        ];
        for &(shape, axes) in cases {
            let n: usize = shape.iter().product();
            let x = Tensor::new(
                shape.to_vec(),
                (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect(),
            )
            .unwrap();
            let want = sum(&x, axes, false).unwrap();
            assert_eq!(
                host_sum(&x, axes),
                want.f32s("t").unwrap(),
                "{shape:?} over {axes:?}"
            );
        }
    }

    #[test]
    fn neighbouring_axes_merge() {
        // NHWC mean over H and W: kept [N, C], reduced [H·W].
        let g = geometry("t", &[8, 16, 16, 32], &[1, 2]).unwrap();
        assert_eq!((g.n_out, g.count), (8 * 32, 256));
        assert_eq!((g.plan.kept_rank, g.plan.red_rank), (2, 1));
        assert_eq!(&g.plan.kept_dims[..2], &[8, 32]);
        assert_eq!(&g.plan.kept_strides[..2], &[16 * 16 * 32, 1]);
        assert_eq!((g.plan.red_dims[0], g.plan.red_strides[0]), (256, 32));
        // BiasAddGrad: every axis but the last is one reduced axis.
        let g = geometry("t", &[8, 16, 16, 32], &[0, 1, 2]).unwrap();
        assert_eq!(
            (g.plan.kept_rank, g.plan.red_rank, g.plan.red_dims[0]),
            (1, 1, 2048)
        );
        let many = [2usize; 9];
        assert!(geometry("t", &many, &[0, 2, 4, 6, 8]).is_err());
    }
}
