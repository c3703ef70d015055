//! psflow-kernels: the tensor type and the CPU kernels of every op psflow
//! runs, in TensorFlow's layouts and semantics (NHWC activations, HWIO
//! filters, `[h, w, in, multiplier]` depthwise filters).
//!
//! Every op is a plain function over [`Tensor`]s that returns a `Result`;
//! none panics on bad input.

pub mod cuda;
mod dtype;
mod error;
pub mod ops;
mod padding;
mod tensor;
pub mod threads;

pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use ops::batchnorm::{BatchNormGrad, BatchNormOutput, BatchNormParams};
pub use ops::conv::Conv2dParams;
pub use ops::elementwise::{BinaryOp, UnaryOp};
pub use ops::pool::PoolParams;
pub use ops::shape_ops::StridedSliceMasks;
pub use padding::{window_2d, window_dim, Dim1, Padding, Window2d};
pub use tensor::{nhwc, num_elements, Data, Tensor};
