//! Plain f64 reference of TensorFlow's depthwise convolution and its two
//! gradients, written from the definition (loops over every output pixel
//! and tap, no plans, no SIMD) with its own copy of TensorFlow's window
//! rules, so the kernels are checked against something independent.
#![allow(dead_code)]

/// Padding as the reference understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefPad {
    Same,
    Valid,
    /// `[top, bottom, left, right]`.
    Explicit([usize; 4]),
}

/// Sizes of one depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub m: usize,
    pub strides: [usize; 2],
    pub pad: RefPad,
}

/// `(out, pad_before)` along one axis, or None when the window does not fit.
pub fn ref_dim(
    input: usize,
    k: usize,
    s: usize,
    pad: RefPad,
    axis: usize,
) -> Option<(usize, usize)> {
    match pad {
        RefPad::Same => {
            let out = input.div_ceil(s);
            let needed = ((out as isize - 1) * s as isize + k as isize - input as isize).max(0);
            Some((out, needed as usize / 2))
        }
        RefPad::Valid => (input >= k).then(|| ((input - k) / s + 1, 0)),
        RefPad::Explicit(p) => {
            let (b, a) = if axis == 0 {
                (p[0], p[1])
            } else {
                (p[2], p[3])
            };
            let padded = input + b + a;
            (padded >= k).then(|| ((padded - k) / s + 1, b))
        }
    }
}

impl Case {
    pub fn input_shape(&self) -> [usize; 4] {
        [self.n, self.h, self.w, self.c]
    }
    pub fn filter_shape(&self) -> [usize; 4] {
        [self.kh, self.kw, self.c, self.m]
    }
    /// `(oh, ow, pad_top, pad_left)`, or None when the window does not fit.
    pub fn geometry(&self) -> Option<(usize, usize, usize, usize)> {
        let (oh, pt) = ref_dim(self.h, self.kh, self.strides[0], self.pad, 0)?;
        let (ow, pl) = ref_dim(self.w, self.kw, self.strides[1], self.pad, 1)?;
        Some((oh, ow, pt, pl))
    }
    pub fn output_shape(&self) -> [usize; 4] {
        let (oh, ow, _, _) = self.geometry().expect("window fits");
        [self.n, oh, ow, self.c * self.m]
    }

    /// Calls `visit(x_index, filter_index, out_index)` for every product of
    /// the convolution.
    fn for_each_term(&self, mut visit: impl FnMut(usize, usize, usize)) {
        let (oh, ow, pt, pl) = self.geometry().expect("window fits");
        let (c, m) = (self.c, self.m);
        for b in 0..self.n {
            for oi in 0..oh {
                for oj in 0..ow {
                    for ki in 0..self.kh {
                        for kj in 0..self.kw {
                            let ii = (oi * self.strides[0] + ki) as isize - pt as isize;
                            let jj = (oj * self.strides[1] + kj) as isize - pl as isize;
                            if ii < 0 || jj < 0 || ii as usize >= self.h || jj as usize >= self.w {
                                continue;
                            }
                            let (ii, jj) = (ii as usize, jj as usize);
                            for ci in 0..c {
                                for mi in 0..m {
                                    let xi = ((b * self.h + ii) * self.w + jj) * c + ci;
                                    let fi = ((ki * self.kw + kj) * c + ci) * m + mi;
                                    let oi_ = ((b * oh + oi) * ow + oj) * c * m + ci * m + mi;
                                    visit(xi, fi, oi_);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn forward(&self, x: &[f64], f: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.output_shape().iter().product()];
        self.for_each_term(|xi, fi, oi| out[oi] += x[xi] * f[fi]);
        out
    }

    /// Adjoint of `forward` in `x`.
    pub fn backprop_input(&self, f: &[f64], dy: &[f64]) -> Vec<f64> {
        let mut dx = vec![0.0; self.input_shape().iter().product()];
        self.for_each_term(|xi, fi, oi| dx[xi] += dy[oi] * f[fi]);
        dx
    }

    /// Adjoint of `forward` in the filter.
    pub fn backprop_filter(&self, x: &[f64], dy: &[f64]) -> Vec<f64> {
        let mut df = vec![0.0; self.filter_shape().iter().product()];
        self.for_each_term(|xi, fi, oi| df[fi] += x[xi] * dy[oi]);
        df
    }
}
