//! The CUDA backend, through cudarc with dynamic loading: building needs no
//! CUDA, and a binary without a driver runs on the CPU (see [`pick_device`]).
//!
//! * [`library`]: finding `libcuda`, `libnvrtc` and `libcublas` at run time,
//!   never panicking;
//! * [`device`]: `--device auto|cpu|cuda:N`;
//! * [`nvrtc`]: our `.cu` sources (kernels/src/cuda/, embedded) compiled to PTX by
//!   NVRTC on first use, cached per (source, architecture);
//! * [`context`]: a CUDA device with its streams and loaded modules, and
//!   device tensors;
//! * [`pool`]: the device memory pool (size-class free lists, reused
//!   across steps) every output and scratch buffer comes from;
//! * [`staging`]: pinned host buffers and asynchronous copies;
//! * [`prefetch`]: host→device copies on a second (copy) stream into a
//!   ring of device buffers, overlapped with the kernels, with the events
//!   between the two streams;
//! * [`ops`]: the launchers: depthwise convolution and its gradients, the
//!   pointwise (1×1) GEMM on TF32 tensor cores, fused batch norm + ReLU6
//!   forward and backward, average pooling, bias, softmax cross-entropy,
//!   reductions, the element-wise ops, and the optimizers (gradient
//!   descent, Momentum, RMSProp, Adam);
//! * [`cublas`]: cuBLAS SGEMM (f32 and TF32 math), kept to compare our GEMM
//!   with;
//! * [`timing`]: timing queued device work with CUDA events, and the
//!   device-to-device copy that measures the memory bandwidth roof
//!   (`psflow bench cuda`).
//!
//! Not yet on a GPU: this code and the kernels have only been compiled (the
//! `.cu` files by the real NVRTC, for sm_80 and sm_90); the GPU tests in
//! kernels/tests/cuda_ops.rs have not run on hardware. Nothing outside
//! this module uses it yet (no executor or worker wiring). See docs/cuda.md.

pub mod context;
pub mod cublas;
pub mod device;
pub mod library;
pub mod nvrtc;
pub mod ops;
pub mod pool;
pub mod prefetch;
pub mod staging;
pub mod timing;

pub use context::{CudaDevice, DeviceTensor};
pub use device::{cuda_device_count, pick_device, Device, DeviceChoice, DeviceRequest};
pub use nvrtc::{Arch, Compiled, Source};
pub use pool::PoolStats;
pub use prefetch::{PrefetchStats, Prefetched};
pub use staging::PendingDownload;
