//! Host-side launchers of the CUDA kernels: each checks shapes once (with
//! the same rules and errors as the CPU op), sizes the grid, and launches on
//! the device's stream. The CPU ops in [`crate::ops`] are the oracle the GPU
//! tests (kernels/tests/cuda_ops.rs) compare against.

pub mod avgpool;
pub mod batchnorm;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod optim;
pub mod pointwise;
pub mod reduce;
pub mod softmax;

use cudarc::driver::LaunchConfig;

use super::context::ELEMENTWISE_BLOCK;
use crate::{Error, Result};

/// A size as the `int` the kernels take, or an error naming it.
pub(crate) fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::unsupported(
            op,
            format!("{what} = {v} exceeds the CUDA kernels' 32-bit sizes"),
        )
    })
}

/// A grid-stride launch over `total` elements.
pub(crate) fn elementwise(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(ELEMENTWISE_BLOCK as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}
