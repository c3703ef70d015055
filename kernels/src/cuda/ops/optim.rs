//! Optimizer updates on CUDA (kernels/src/cuda/optim.cu), in place on device
//! tensors, bit for bit the CPU's formulas ([`crate::ops::optim`]).

use cudarc::driver::PushKernelArg;

use super::elementwise;
use crate::cuda::context::{driver_err, CudaDevice, DeviceTensor};
use crate::cuda::nvrtc::Source;
use crate::ops::optim::RmsPropHyper;
use crate::{Error, Result};

impl CudaDevice {
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
        for (what, len) in [("ms", ms.len()), ("mom", mom.len()), ("grad", grad.len())] {
            if len != n {
                return Err(Error::shape(
                    OP,
                    format!("{what} has {len} elements but var has {n}"),
                ));
            }
        }
        for (what, v) in [
            ("lr", h.lr),
            ("rho", h.rho),
            ("momentum", h.momentum),
            ("epsilon", h.epsilon),
        ] {
            if !v.is_finite() {
                return Err(Error::invalid(
                    OP,
                    format!("{what} must be finite, got {v}"),
                ));
            }
        }
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
