//! Timing device work for benchmarks: CUDA events recorded on the device's
//! stream around the queued work, so the time is the device's, not the
//! host's launch loop (the end event is waited for before it is read). Also
//! the device-to-device copy `psflow bench cuda` measures the memory
//! bandwidth roof with.

use cudarc::driver::sys::CUevent_flags;

use super::context::{driver_err, CudaDevice, DeviceTensor};
use crate::{Error, Result};

impl CudaDevice {
    /// Milliseconds of device time per call of `f`, over `calls` calls
    /// queued back to back between two events. `f` must queue its work on
    /// this device (every launcher here does). Waits for the stream.
    pub fn time_ms(&self, calls: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let calls = calls.max(1);
        let stream = self.stream();
        let start = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_err("cuEventRecord"))?;
        for _ in 0..calls {
            f()?;
        }
        let end = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_err("cuEventRecord"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(driver_err("cuEventElapsedTime"))?;
        Ok(ms as f64 / calls as f64)
    }

    /// Queues a device-to-device copy of `src` into `dst` (same shape).
    pub fn copy_device_to_device(&self, src: &DeviceTensor, dst: &mut DeviceTensor) -> Result<()> {
        const OP: &str = "copy_device_to_device";
        if src.shape() != dst.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "source {:?} and destination {:?} differ",
                    src.shape(),
                    dst.shape()
                ),
            ));
        }
        if src.is_empty() {
            return Ok(());
        }
        let n = src.len();
        let mut to = dst.buf.slice_mut(0..n);
        self.stream()
            .memcpy_dtod(&src.buf.slice(0..n), &mut to)
            .map_err(driver_err("cuMemcpyDtoDAsync"))
    }
}
