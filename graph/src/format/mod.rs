//! File formats for tensors.

pub mod npy;
