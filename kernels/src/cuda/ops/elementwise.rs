//! Element-wise ops on CUDA (kernels/src/cuda/elementwise.cu): broadcast
//! binary ops, unary maths, Relu/Relu6 and their gradients, BiasAdd and
//! AddN, with the CPU ops' shape rules and errors
//! ([`crate::ops::elementwise`], [`crate::ops::activation`],
//! [`crate::ops::matmul::bias_add`]).

use cudarc::driver::{DeviceRepr, PushKernelArg};

use super::elementwise as grid;
use crate::cuda::context::{driver_err, CudaDevice, DeviceTensor};
use crate::cuda::nvrtc::Source;
use crate::ops::elementwise::broadcast_shape;
use crate::{BinaryOp, Error, Result, UnaryOp};

/// Axes a broadcast can have after merging (`EW_MAX_RANK`).
pub(crate) const MAX_RANK: usize = 6;

/// `struct Bcast` of elementwise.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bcast {
    pub rank: i32,
    pub dims: [i32; MAX_RANK],
    pub sa: [i64; MAX_RANK],
    pub sb: [i64; MAX_RANK],
}

// SAFETY: plain `repr(C)` integers, laid out as the CUDA struct (int,
// int[6], then 8-aligned long long[6] twice).
unsafe impl DeviceRepr for Bcast {}

/// Strides of `shape` right-aligned in `out` (0 where it broadcasts), as
/// the CPU op walks them.
fn strides_in(shape: &[usize], out: &[usize]) -> Vec<i64> {
    let rank = out.len();
    let mut strides = vec![0i64; rank];
    let mut s = 1i64;
    for i in (0..shape.len()).rev() {
        let o = i + rank - shape.len();
        strides[o] = if shape[i] == 1 && out[o] != 1 { 0 } else { s };
        s *= shape[i] as i64;
    }
    strides
}

/// The geometry of `a op b` over the broadcast shape `out`: axes of size 1
/// dropped, neighbours merged where both operands step through them as one
/// (`stride[prev] == stride[next] · dim[next]`). Errors past [`MAX_RANK`]
/// merged axes or 32-bit dimensions.
pub(crate) fn collapse(op: &'static str, out: &[usize], a: &[usize], b: &[usize]) -> Result<Bcast> {
    let (sa, sb) = (strides_in(a, out), strides_in(b, out));
    let mut dims: Vec<usize> = Vec::new();
    let (mut ma, mut mb): (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    for i in 0..out.len() {
        let d = out[i];
        if d == 1 {
            continue;
        }
        if let Some(j) = dims.len().checked_sub(1) {
            if ma[j] == sa[i] * d as i64 && mb[j] == sb[i] * d as i64 {
                dims[j] *= d;
                ma[j] = sa[i];
                mb[j] = sb[i];
                continue;
            }
        }
        dims.push(d);
        ma.push(sa[i]);
        mb.push(sb[i]);
    }
    if dims.is_empty() {
        // A single element (or none): one axis of size 1.
        dims.push(1);
        ma.push(0);
        mb.push(0);
    }
    if dims.len() > MAX_RANK {
        return Err(Error::unsupported(
            op,
            format!(
                "broadcasting {a:?} with {b:?} needs {} axes after merging; the CUDA kernel takes {MAX_RANK}",
                dims.len()
            ),
        ));
    }
    let mut g = Bcast {
        rank: dims.len() as i32,
        ..Bcast::default()
    };
    for (k, &d) in dims.iter().enumerate() {
        g.dims[k] = super::to_i32(op, "a broadcast dimension", d)?;
        g.sa[k] = ma[k];
        g.sb[k] = mb[k];
    }
    Ok(g)
}

fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Maximum => 4,
        BinaryOp::Minimum => 5,
        BinaryOp::SquaredDifference => 6,
    }
}

fn binary_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "Add",
        BinaryOp::Sub => "Sub",
        BinaryOp::Mul => "Mul",
        BinaryOp::Div => "RealDiv",
        BinaryOp::Maximum => "Maximum",
        BinaryOp::Minimum => "Minimum",
        BinaryOp::SquaredDifference => "SquaredDifference",
    }
}

/// `ew_unary`'s op codes for the activations (after [`UnaryOp`]'s).
const U_RELU: i32 = 8;
const U_RELU6: i32 = 9;

fn unary_code(op: UnaryOp) -> i32 {
    match op {
        UnaryOp::Neg => 0,
        UnaryOp::Square => 1,
        UnaryOp::Sqrt => 2,
        UnaryOp::Rsqrt => 3,
        UnaryOp::Exp => 4,
        UnaryOp::Log => 5,
        UnaryOp::Abs => 6,
        UnaryOp::Reciprocal => 7,
    }
}

impl CudaDevice {
    /// `a op b` with NumPy/TensorFlow broadcasting (f32).
    pub fn binary(&self, op: BinaryOp, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        let name = binary_name(op);
        let shape = broadcast_shape(name, a.shape(), b.shape())?;
        let g = collapse(name, &shape, a.shape(), b.shape())?;
        let mut out = self.uninit(shape)?;
        let n = out.len();
        if n == 0 {
            return Ok(out);
        }
        let (code, n_i) = (binary_code(op), n as i64);
        let f = self.function(Source::Elementwise, "ew_binary")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&code)
            .arg(&a.buf)
            .arg(&b.buf)
            .arg(&mut out.buf)
            .arg(&n_i)
            .arg(&g);
        // SAFETY: out holds n floats; `g` maps every output index below n
        // to indices inside a and b (their strides and the broadcast dims
        // come from their shapes, checked broadcastable above).
        unsafe { launch.launch(grid(n)) }.map_err(driver_err(name))?;
        Ok(out)
    }

    /// `AddN`: the sum of tensors of one shape, added in input order (the
    /// CPU's left fold, so the same bits): `x0 + x1`, then `+ x2`, …
    pub fn add_n(&self, inputs: &[&DeviceTensor]) -> Result<DeviceTensor> {
        const OP: &str = "AddN";
        let first = inputs
            .first()
            .ok_or_else(|| Error::invalid(OP, "needs at least one input"))?;
        for (i, t) in inputs.iter().enumerate().skip(1) {
            if t.shape() != first.shape() {
                return Err(Error::shape(
                    OP,
                    format!(
                        "input {i} has shape {:?} but input 0 has {:?}",
                        t.shape(),
                        first.shape()
                    ),
                ));
            }
        }
        let Some(second) = inputs.get(1) else {
            // One input: a copy, as the CPU returns a clone.
            let mut out = self.uninit(first.shape().to_vec())?;
            let n = out.len();
            if n > 0 {
                self.stream()
                    .memcpy_dtod(&first.buf.slice(0..n), &mut out.buf.slice_mut(0..n))
                    .map_err(driver_err(OP))?;
            }
            return Ok(out);
        };
        let mut out = self.binary(BinaryOp::Add, first, second)?;
        let n = out.len();
        if n == 0 {
            return Ok(out);
        }
        let n_i = n as i64;
        let f = self.function(Source::Elementwise, "ew_accumulate")?;
        for t in &inputs[2..] {
            let mut launch = self.stream().launch_builder(&f);
            launch.arg(&mut out.buf).arg(&t.buf).arg(&n_i);
            // SAFETY: out and t both hold n floats (shapes checked equal).
            unsafe { launch.launch(grid(n)) }.map_err(driver_err(OP))?;
        }
        Ok(out)
    }

    fn unary_code_launch(
        &self,
        name: &'static str,
        code: i32,
        x: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        let mut y = self.uninit(x.shape().to_vec())?;
        let n = x.len();
        if n == 0 {
            return Ok(y);
        }
        let n_i = n as i64;
        let f = self.function(Source::Elementwise, "ew_unary")?;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(&code).arg(&x.buf).arg(&mut y.buf).arg(&n_i);
        // SAFETY: x and y hold n floats.
        unsafe { launch.launch(grid(n)) }.map_err(driver_err(name))?;
        Ok(y)
    }

    /// `Neg`, `Square`, `Sqrt`, `Rsqrt`, `Exp`, `Log`, `Abs`,
    /// `Reciprocal` (f32). `Exp` and `Log` use CUDA's `expf`/`logf` (within
    /// 2 ulp), the others are exactly rounded like the CPU.
    pub fn unary(&self, op: UnaryOp, x: &DeviceTensor) -> Result<DeviceTensor> {
        self.unary_code_launch("Unary", unary_code(op), x)
    }

    pub fn relu(&self, x: &DeviceTensor) -> Result<DeviceTensor> {
        self.unary_code_launch("Relu", U_RELU, x)
    }

    pub fn relu6(&self, x: &DeviceTensor) -> Result<DeviceTensor> {
        self.unary_code_launch("Relu6", U_RELU6, x)
    }

    fn relu_grad_launch(
        &self,
        name: &'static str,
        six: bool,
        gradients: &DeviceTensor,
        features: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        if gradients.shape() != features.shape() {
            return Err(Error::shape(
                name,
                format!(
                    "gradients have shape {:?} but features have shape {:?}",
                    gradients.shape(),
                    features.shape()
                ),
            ));
        }
        let mut out = self.uninit(gradients.shape().to_vec())?;
        let n = out.len();
        if n == 0 {
            return Ok(out);
        }
        let (six_i, n_i) = (six as i32, n as i64);
        let f = self.function(Source::Elementwise, "ew_relu_grad")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&six_i)
            .arg(&gradients.buf)
            .arg(&features.buf)
            .arg(&mut out.buf)
            .arg(&n_i);
        // SAFETY: all three hold n floats (shapes checked equal).
        unsafe { launch.launch(grid(n)) }.map_err(driver_err(name))?;
        Ok(out)
    }

    /// `ReluGrad(gradients, features)`.
    pub fn relu_grad(
        &self,
        gradients: &DeviceTensor,
        features: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        self.relu_grad_launch("ReluGrad", false, gradients, features)
    }

    /// `Relu6Grad(gradients, features)`.
    pub fn relu6_grad(
        &self,
        gradients: &DeviceTensor,
        features: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        self.relu_grad_launch("Relu6Grad", true, gradients, features)
    }

    /// `BiasAdd`: adds a `[c]` bias along the last axis (rank ≥ 2).
    pub fn bias_add(&self, x: &DeviceTensor, bias: &DeviceTensor) -> Result<DeviceTensor> {
        const OP: &str = "BiasAdd";
        let c = bias_channels(OP, x)?;
        if bias.shape() != [c] {
            return Err(Error::shape(
                OP,
                format!(
                    "bias must be a vector of the {c} channels of input {:?}, got shape {:?}",
                    x.shape(),
                    bias.shape()
                ),
            ));
        }
        let mut y = self.uninit(x.shape().to_vec())?;
        let n = x.len();
        if n == 0 {
            return Ok(y);
        }
        let rows = (n / c) as i64;
        let c_i = super::to_i32(OP, "channels", c)?;
        let f = self.function(Source::Elementwise, "bias_add")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&x.buf)
            .arg(&bias.buf)
            .arg(&mut y.buf)
            .arg(&rows)
            .arg(&c_i);
        // SAFETY: x and y hold rows·c floats, bias c.
        unsafe { launch.launch(grid(n)) }.map_err(driver_err(OP))?;
        Ok(y)
    }
}

/// The channel count of a BiasAdd / BiasAddGrad input (rank ≥ 2, as the CPU).
pub(crate) fn bias_channels(op: &'static str, x: &DeviceTensor) -> Result<usize> {
    if x.shape().len() < 2 {
        return Err(Error::shape(
            op,
            format!(
                "input must have at least 2 dimensions, got shape {:?}",
                x.shape()
            ),
        ));
    }
    Ok(*x.shape().last().expect("rank ≥ 2"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::binary;
    use crate::Tensor;

    /// Runs the kernel's index arithmetic on the host: every output element
    /// from the collapsed geometry, against the CPU op.
    fn host_binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Vec<f32> {
        let shape = broadcast_shape("t", a.shape(), b.shape()).unwrap();
        let g = collapse("t", &shape, a.shape(), b.shape()).unwrap();
        let (av, bv) = (a.f32s("t").unwrap(), b.f32s("t").unwrap());
        let n: usize = shape.iter().product();
        (0..n)
            .map(|i| {
                let (mut rest, mut ia, mut ib) = (i as i64, 0i64, 0i64);
                for d in (0..g.rank as usize).rev() {
                    let k = rest % g.dims[d] as i64;
                    rest /= g.dims[d] as i64;
                    ia += k * g.sa[d];
                    ib += k * g.sb[d];
                }
                let (x, y) = (av[ia as usize], bv[ib as usize]);
                match op {
                    BinaryOp::Sub => x - y,
                    _ => x * 1000.0 + y,
                }
            })
            .collect()
    }

    fn ramp(shape: &[usize], offset: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), (0..n).map(|i| i as f32 + offset).collect()).unwrap()
    }

    #[test]
    fn collapsed_broadcasts_index_like_the_cpu_op() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4, 5], &[2, 3, 4, 5]),
            (&[2, 3, 4, 5], &[5]),
            (&[2, 3, 4, 5], &[]),
            (&[], &[7]),
            (&[2, 1, 4, 1], &[1, 3, 1, 5]),
            (&[4, 1, 6], &[5, 1]),
            (&[3, 1], &[1, 1, 4]),
            (&[2, 3, 1, 5], &[3, 4, 1]),
            (&[1, 1, 1], &[1]),
            (&[0, 3], &[3]),
        ];
        for &(sa, sb) in cases {
            let (a, b) = (ramp(sa, 0.0), ramp(sb, 0.5));
            let want: Vec<f32> = binary(BinaryOp::Sub, &a, &b)
                .unwrap()
                .f32s("t")
                .unwrap()
                .to_vec();
            assert_eq!(host_binary(BinaryOp::Sub, &a, &b), want, "{sa:?} - {sb:?}");
            // A second check that tells a and b apart in every element.
            let pa = binary(BinaryOp::Mul, &a, &Tensor::scalar(1000f32)).unwrap();
            let want = binary(BinaryOp::Add, &pa, &b).unwrap();
            assert_eq!(
                host_binary(BinaryOp::Add, &a, &b),
                want.f32s("t").unwrap(),
                "{sa:?} · 1000 + {sb:?}"
            );
        }
    }

    #[test]
    fn merging_leaves_few_axes() {
        let g = collapse("t", &[8, 16, 16, 32], &[8, 16, 16, 32], &[32]).unwrap();
        assert_eq!((g.rank, &g.dims[..2]), (2, &[2048, 32][..]));
        assert_eq!((&g.sa[..2], &g.sb[..2]), (&[32, 1][..], &[0, 1][..]));
        let g = collapse("t", &[8, 16, 16, 32], &[8, 16, 16, 32], &[8, 16, 16, 32]).unwrap();
        assert_eq!((g.rank, g.dims[0]), (1, 8 * 16 * 16 * 32));
        let g = collapse(
            "t",
            &[2, 3, 2, 3, 2, 3, 2],
            &[2, 1, 2, 1, 2, 1, 2],
            &[1, 3, 1, 3, 1, 3, 1],
        );
        assert!(g.is_err(), "seven alternating axes exceed the kernel's six");
    }
}
