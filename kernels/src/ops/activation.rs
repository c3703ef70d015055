//! Relu, Relu6 and their gradients (TensorFlow: the gradient passes where
//! `0 < features` for Relu and `0 < features < 6` for Relu6).

use crate::{Result, Tensor};

pub fn relu(x: &Tensor) -> Result<Tensor> {
    todo!("{:?}", x.shape())
}

pub fn relu6(x: &Tensor) -> Result<Tensor> {
    todo!("{:?}", x.shape())
}

/// `ReluGrad(gradients, features)`.
pub fn relu_grad(gradients: &Tensor, features: &Tensor) -> Result<Tensor> {
    todo!("{:?} {:?}", gradients.shape(), features.shape())
}

/// `Relu6Grad(gradients, features)`.
pub fn relu6_grad(gradients: &Tensor, features: &Tensor) -> Result<Tensor> {
    todo!("{:?} {:?}", gradients.shape(), features.shape())
}
