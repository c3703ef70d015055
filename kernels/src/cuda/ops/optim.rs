//! Optimizer updates on CUDA (kernels/src/cuda/optim.cu), in place on device
//! tensors, bit for bit the CPU's formulas ([`crate::ops::optim`]):
//! gradient descent, momentum (and Nesterov), RMSProp, Adam (and Nesterov).

use cudarc::driver::PushKernelArg;

use super::elementwise;
use crate::cuda::context::{driver_err, CudaDevice, DeviceTensor};
use crate::cuda::nvrtc::Source;
use crate::ops::optim::{
    adam_alpha, check_adam, check_finite, check_lengths, check_rmsprop, AdamHyper, MomentumHyper,
    RmsPropHyper,
};
use crate::Result;

impl CudaDevice {
    /// `var -= grad * lr` (ApplyGradientDescent).
    pub fn apply_gradient_descent(
        &self,
        var: &mut DeviceTensor,
        grad: &DeviceTensor,
        lr: f32,
    ) -> Result<()> {
        const OP: &str = "ApplyGradientDescent";
        let n = var.len();
        check_lengths(OP, n, &[("grad", grad.len())])?;
        check_finite(OP, &[("lr", lr)])?;
        if n == 0 {
            return Ok(());
        }
        let n_i = n as i64;
        let f = self.function(Source::Optim, "apply_gradient_descent")?;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(&mut var.buf).arg(&grad.buf).arg(&n_i).arg(&lr);
        // SAFETY: both buffers hold n floats (checked above).
        unsafe { launch.launch(elementwise(n)) }.map_err(driver_err(OP))?;
        Ok(())
    }

    /// Momentum (ApplyMomentum): `accum = accum·momentum + grad`, `var -=
    /// accum·lr` (Nesterov: `var -= grad·lr + accum·momentum·lr`).
    pub fn apply_momentum(
        &self,
        var: &mut DeviceTensor,
        accum: &mut DeviceTensor,
        grad: &DeviceTensor,
        h: MomentumHyper,
    ) -> Result<()> {
        const OP: &str = "ApplyMomentum";
        let n = var.len();
        check_lengths(OP, n, &[("accum", accum.len()), ("grad", grad.len())])?;
        check_finite(OP, &[("lr", h.lr), ("momentum", h.momentum)])?;
        if n == 0 {
            return Ok(());
        }
        let (n_i, nesterov) = (n as i64, h.use_nesterov as i32);
        let f = self.function(Source::Optim, "apply_momentum")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&mut var.buf)
            .arg(&mut accum.buf)
            .arg(&grad.buf)
            .arg(&n_i)
            .arg(&h.lr)
            .arg(&h.momentum)
            .arg(&nesterov);
        // SAFETY: all three buffers hold n floats (checked above).
        unsafe { launch.launch(elementwise(n)) }.map_err(driver_err(OP))?;
        Ok(())
    }

    /// Adam (ApplyAdam) with the CPU's step size
    /// `alpha = lr·sqrt(1 − beta2^t) / (1 − beta1^t)` computed here in f32.
    pub fn apply_adam(
        &self,
        var: &mut DeviceTensor,
        m: &mut DeviceTensor,
        v: &mut DeviceTensor,
        grad: &DeviceTensor,
        h: AdamHyper,
    ) -> Result<()> {
        const OP: &str = "ApplyAdam";
        let n = var.len();
        check_lengths(
            OP,
            n,
            &[("m", m.len()), ("v", v.len()), ("grad", grad.len())],
        )?;
        check_adam(OP, h)?;
        if n == 0 {
            return Ok(());
        }
        let (n_i, nesterov, alpha) = (n as i64, h.use_nesterov as i32, adam_alpha(&h));
        let f = self.function(Source::Optim, "apply_adam")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&mut var.buf)
            .arg(&mut m.buf)
            .arg(&mut v.buf)
            .arg(&grad.buf)
            .arg(&n_i)
            .arg(&alpha)
            .arg(&h.beta1)
            .arg(&h.beta2)
            .arg(&h.epsilon)
            .arg(&nesterov);
        // SAFETY: all four buffers hold n floats (checked above).
        unsafe { launch.launch(elementwise(n)) }.map_err(driver_err(OP))?;
        Ok(())
    }

    /// RMSProp (TF's ApplyRMSProp): `ms += (grad² - ms)·(1 - rho)`,
    /// `mom = mom·momentum + grad·lr / sqrt(ms + epsilon)`, `var -= mom`.
    pub fn apply_rmsprop(
        &self,
        var: &mut DeviceTensor,
        ms: &mut DeviceTensor,
        mom: &mut DeviceTensor,
        grad: &DeviceTensor,
        h: RmsPropHyper,
    ) -> Result<()> {
        const OP: &str = "ApplyRMSProp";
        let n = var.len();
        check_lengths(
            OP,
            n,
            &[("ms", ms.len()), ("mom", mom.len()), ("grad", grad.len())],
        )?;
        check_rmsprop(OP, h)?;
        if n == 0 {
            return Ok(());
        }
        let n_i = n as i64;
        let f = self.function(Source::Optim, "apply_rmsprop")?;
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&mut var.buf)
            .arg(&mut ms.buf)
            .arg(&mut mom.buf)
            .arg(&grad.buf)
            .arg(&n_i)
            .arg(&h.lr)
            .arg(&h.rho)
            .arg(&h.momentum)
            .arg(&h.epsilon);
        // SAFETY: all four buffers hold n floats (checked above); the
        // kernel touches indices < n only.
        unsafe { launch.launch(elementwise(n)) }.map_err(driver_err(OP))?;
        Ok(())
    }
}
