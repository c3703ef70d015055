//! Random ops: RandomUniform, RandomStandardNormal, TruncatedNormal,
//! RandomUniformInt, with TensorFlow's attrs (`seed`, `seed2`, `dtype` /
//! `Tout`, `T`) and distributions:
//!
//! - RandomUniform: floats in [0, 1);
//! - RandomStandardNormal: N(0, 1) by Box–Muller;
//! - TruncatedNormal: N(0, 1) with values of magnitude 2 or more re-drawn
//!   (TensorFlow truncates at two standard deviations the same way);
//! - RandomUniformInt: integers in [minval, maxval).
//!
//! The generator is our own Philox-4x32-10 (the counter-based generator
//! TensorFlow also uses), keyed by a hash of (seed, seed2, run number).
//! The values are deterministic given the seeds — the same on every
//! machine and thread count, because each block of outputs depends only
//! on its index — but they are **not** bit-equal to TensorFlow's: its
//! seed scheduling and sample layout are not reproduced.
//!
//! As in TensorFlow, each run of the same op draws new values: the op
//! keeps a run counter, stored as an int64 scalar in the session's
//! ResourceStore under `<node name>/rng_counter` (so a checkpoint of the
//! store resumes the same random stream). When both seeds are 0 the op is
//! seeded from the OS at session creation, as TensorFlow does.

use std::hash::{BuildHasher, Hasher};
use std::sync::PoisonError;

use psflow_kernels::{DType, Element, Tensor};
use rayon::prelude::*;

use super::state::stateful;
use super::{expect_inputs, FnKernel, InferCtx, OpContext, OpKernel, Registry, TensorInfo};
use crate::ir::Node;
use crate::shape::Shape;
use crate::Result;

type Built = Result<Box<dyn OpKernel>>;

pub(super) fn register(r: &mut Registry) {
    r.register("RandomUniform", random_float);
    r.register("RandomStandardNormal", random_float);
    r.register("TruncatedNormal", random_float);
    r.register("RandomUniformInt", random_uniform_int);
}

// ---------------------------------------------------------------- Philox --

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox-4x32 with 10 rounds: 4 random words from a 128-bit counter and a
/// 64-bit key.
fn philox(mut c: [u32; 4], key: u64) -> [u32; 4] {
    let (mut k0, mut k1) = (key as u32, (key >> 32) as u32);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k0,
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k1,
            p0 as u32,
        ];
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
    }
    c
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The Philox key of one run of an op seeded (seed, seed2).
fn run_key(seed: u64, seed2: u64, run: u64) -> u64 {
    let seeds = splitmix64(seed) ^ splitmix64(seed2 ^ 0x6A09_E667_F3BC_C908).rotate_left(17);
    splitmix64(splitmix64(seeds) ^ run)
}

/// The 4 words of block `block` of attempt `attempt`.
fn block(key: u64, index: u64, attempt: u32) -> [u32; 4] {
    philox(
        [index as u32, (index >> 32) as u32, attempt, 0x5053_464C],
        key,
    )
}

/// A float in [0, 1) from 23 random bits (TensorFlow's construction).
fn unit_f32(x: u32) -> f32 {
    f32::from_bits((x >> 9) | 0x3F80_0000) - 1.0
}

/// A double in [0, 1) from 52 random bits.
fn unit_f64(hi: u32, lo: u32) -> f64 {
    let bits = (((hi as u64) << 32) | lo as u64) >> 12;
    f64::from_bits(bits | 0x3FF0_0000_0000_0000) - 1.0
}

/// Two standard normals from one block, by Box–Muller in f64.
fn normals(w: [u32; 4]) -> [f64; 2] {
    // 1 - u is in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - unit_f64(w[0], w[1]);
    let u2 = unit_f64(w[2], w[3]);
    let r = (-2.0 * u1.ln()).sqrt();
    let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
    [r * s, r * c]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dist {
    Uniform,
    Normal,
    Truncated,
}

/// Elements per parallel task (a multiple of every block size).
const CHUNK: usize = 8192;

/// An output float type: how many uniforms one block gives, and
/// conversions from the f64 the samplers compute in.
trait Real: Element {
    const UNIFORMS_PER_BLOCK: usize;
    fn uniforms(w: [u32; 4]) -> [Self; 4];
    fn of(x: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    const UNIFORMS_PER_BLOCK: usize = 4;
    fn uniforms(w: [u32; 4]) -> [f32; 4] {
        w.map(unit_f32)
    }
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    const UNIFORMS_PER_BLOCK: usize = 2;
    fn uniforms(w: [u32; 4]) -> [f64; 4] {
        let (a, b) = (unit_f64(w[0], w[1]), unit_f64(w[2], w[3]));
        [a, b, 0.0, 0.0]
    }
    fn of(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// Fills `out` from the stream `key`. Element `i` depends only on `i` and
/// the key, so chunks can be filled in any order on any thread.
fn fill<T: Real>(out: &mut [T], key: u64, dist: Dist) {
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let start = (c * CHUNK) as u64;
            match dist {
                Dist::Uniform => {
                    let per = T::UNIFORMS_PER_BLOCK;
                    let first = start / per as u64;
                    for (j, group) in chunk.chunks_mut(per).enumerate() {
                        let u = T::uniforms(block(key, first + j as u64, 0));
                        group.copy_from_slice(&u[..group.len()]);
                    }
                }
                Dist::Normal => {
                    for (j, pair) in chunk.chunks_mut(2).enumerate() {
                        let z = normals(block(key, start / 2 + j as u64, 0));
                        for (o, x) in pair.iter_mut().zip(z) {
                            *o = T::of(x);
                        }
                    }
                }
                Dist::Truncated => {
                    for (j, o) in chunk.iter_mut().enumerate() {
                        let index = start + j as u64;
                        // Re-draw until |x| < 2, tested on the value as stored
                        // (a float32 that rounds to ±2 is re-drawn too).
                        *o = (1u32..)
                            .flat_map(|attempt| normals(block(key, index, attempt)))
                            .map(T::of)
                            .find(|x| x.to_f64().abs() < 2.0)
                            .expect("an unbounded search ends");
                    }
                }
            }
        });
}

// ------------------------------------------------------------------ ops --

/// What every random op shares: seeds, its node name (for the counter),
/// and the output shape from input 0.
#[derive(Clone)]
struct Seeds {
    seed: u64,
    seed2: u64,
    counter: String,
}

impl Seeds {
    fn of(node: &Node) -> Result<Seeds> {
        let (mut seed, mut seed2) = (
            node.attr_int_or("seed", 0)? as u64,
            node.attr_int_or("seed2", 0)? as u64,
        );
        if seed == 0 && seed2 == 0 {
            let os_random = || {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write(node.name.as_bytes());
                h.finish()
            };
            (seed, seed2) = (os_random(), os_random());
        }
        Ok(Seeds {
            seed,
            seed2,
            counter: format!("{}/rng_counter", node.name),
        })
    }

    /// The key of this run; advances the op's run counter.
    fn next_key(&self, ctx: &OpContext) -> u64 {
        let slot = ctx.resources.variable(&self.counter);
        let mut g = slot.write().unwrap_or_else(PoisonError::into_inner);
        let run = g
            .as_ref()
            .and_then(|t| t.scalar_value::<i64>("rng counter").ok())
            .unwrap_or(0);
        *g = Some(Tensor::scalar(run.wrapping_add(1)));
        run_key(self.seed, self.seed2, run as u64)
    }
}

/// The output shape from a known shape input, else its rank.
fn infer_shape(ctx: &InferCtx) -> Result<Shape> {
    ctx.expect_rank(0, 1, "shape")?;
    Ok(match ctx.ints(0) {
        Some(d) => {
            if let Some(x) = d.iter().find(|&&x| x < 0) {
                return Err(ctx.err(format!("shape {d:?} has a negative dimension {x}")));
            }
            Shape::Known(d)
        }
        None => match ctx.shape(0).dim(0) {
            -1 => Shape::Unknown,
            r => Shape::of_rank(r as usize),
        },
    })
}

fn run_shape(ctx: &OpContext) -> Result<Vec<usize>> {
    let t = ctx.input(0);
    if t.rank() != 1 {
        return Err(ctx.err(format!("shape must be a vector, got shape {:?}", t.shape())));
    }
    let d = ctx.ints(0)?;
    d.iter()
        .map(|&x| usize::try_from(x).ok())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| ctx.err(format!("shape {d:?} has a negative dimension")))
}

fn random_float(node: &Node) -> Built {
    expect_inputs(node, 1)?;
    let dtype = node.attr_dtype("dtype")?;
    if !dtype.is_float() {
        return Err(node.attr_error("dtype", format!("must be a float type, got {dtype}")));
    }
    let dist = match node.op.as_str() {
        "RandomUniform" => Dist::Uniform,
        "RandomStandardNormal" => Dist::Normal,
        _ => Dist::Truncated,
    };
    let seeds = Seeds::of(node)?;
    stateful(FnKernel::boxed(
        1,
        move |ctx| Ok(vec![TensorInfo::new(dtype, infer_shape(ctx)?)]),
        move |ctx| {
            let shape = run_shape(ctx)?;
            let n: usize = shape.iter().product();
            let key = seeds.next_key(ctx);
            let t = if dtype == DType::F32 {
                let mut v = vec![0f32; n];
                fill(&mut v, key, dist);
                Tensor::new(shape, v)
            } else {
                let mut v = vec![0f64; n];
                fill(&mut v, key, dist);
                Tensor::new(shape, v)
            };
            Ok(vec![ctx.k(t)?])
        },
    ))
}

fn random_uniform_int(node: &Node) -> Built {
    expect_inputs(node, 3)?;
    let dtype = node.attr_dtype("Tout")?;
    if !matches!(dtype, DType::I32 | DType::I64) {
        return Err(node.attr_error("Tout", format!("must be int32 or int64, got {dtype}")));
    }
    let seeds = Seeds::of(node)?;
    stateful(FnKernel::boxed(
        1,
        move |ctx| {
            ctx.expect_rank(1, 0, "minval")?;
            ctx.expect_rank(2, 0, "maxval")?;
            Ok(vec![TensorInfo::new(dtype, infer_shape(ctx)?)])
        },
        move |ctx| {
            let shape = run_shape(ctx)?;
            let n: usize = shape.iter().product();
            let bound = |i: usize, what: &str| -> Result<i64> {
                let t = ctx.input(i);
                if t.rank() != 0 || t.dtype() != dtype {
                    return Err(ctx.err(format!(
                        "{what} must be a {dtype} scalar, got a {} tensor of shape {:?}",
                        t.dtype(),
                        t.shape()
                    )));
                }
                Ok(ctx.ints(i)?[0])
            };
            let (lo, hi) = (bound(1, "minval")?, bound(2, "maxval")?);
            if n > 0 && lo >= hi {
                return Err(ctx.err(format!("need minval < maxval, got {lo} >= {hi}")));
            }
            let range = hi.wrapping_sub(lo) as u64;
            let key = seeds.next_key(ctx);
            let mut v = vec![0i64; n];
            v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
                let start = (c * CHUNK / 2) as u64;
                for (j, pair) in chunk.chunks_mut(2).enumerate() {
                    let w = block(key, start + j as u64, 0);
                    let r = [
                        ((w[0] as u64) << 32) | w[1] as u64,
                        ((w[2] as u64) << 32) | w[3] as u64,
                    ];
                    // The modulo bias is below 2^-32 for ranges under 2^32.
                    for (o, x) in pair.iter_mut().zip(r) {
                        *o = lo.wrapping_add((x % range) as i64);
                    }
                }
            });
            let t = match dtype {
                DType::I32 => {
                    Tensor::new(shape, v.into_iter().map(|x| x as i32).collect::<Vec<_>>())
                }
                _ => Tensor::new(shape, v),
            };
            Ok(vec![ctx.k(t)?])
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Philox-4x32-10 known-answer vectors (Salmon et al., Random123).
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox([0, 0, 0, 0], 0),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox([u32::MAX; 4], u64::MAX),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                0x299f_31d0_a409_3822 // key words (0xa4093822, 0x299f31d0)
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn unit_floats_stay_in_range() {
        assert_eq!(unit_f32(0), 0.0);
        assert!(unit_f32(u32::MAX) < 1.0);
        assert_eq!(unit_f64(0, 0), 0.0);
        assert!(unit_f64(u32::MAX, u32::MAX) < 1.0);
        let [a, b] = normals([0, 0, 0, 0]);
        assert!(a.is_finite() && b.is_finite());
        let [a, b] = normals([u32::MAX; 4]);
        assert!(a.is_finite() && b.is_finite());
    }
}
