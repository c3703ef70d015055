//! The CPU kernels, one module per op family. Each op checks shapes and
//! dtypes once, then dispatches to a scalar or SIMD inner loop chosen at run
//! time; large ops split their work over the rayon pool.

pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod matmul;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod shape_ops;
pub mod softmax;
