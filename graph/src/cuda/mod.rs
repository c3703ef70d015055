//! Running a graph on a CUDA device: [`CudaSession`] executes a training
//! (or inference) graph with its float32 variables resident in device
//! memory, every op with a CUDA kernel on the device
//! (`psflow_kernels::cuda`), and the small host-side shape arithmetic of
//! the gradient graph on the host with the CPU kernels. [`place`] decides
//! which is which; [`place::plan`] computes it for a run without a device,
//! so that the placement of the MobileNet training step (no download
//! inside the step) is tested on every machine.
//!
//! Not yet run on a GPU: see docs/cuda.md.

mod ops;
pub mod place;
mod session;

pub use place::{Placement, Transfer, Where};
pub use session::{CudaSession, TransferCounts};
