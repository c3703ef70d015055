//! Pinned (page-locked) host staging buffers and asynchronous copies.
//!
//! A copy between pageable host memory and the device makes the host wait;
//! from pinned memory it is queued on the stream and the host goes on.
//! [`CudaDevice::upload_async`] copies the tensor into a pinned buffer
//! (a host memcpy), queues the copy to a pooled device buffer and returns;
//! [`CudaDevice::download_async`] queues the copy into a pinned buffer and
//! returns a [`PendingDownload`] to wait on later.
//!
//! Pinned buffers are kept in size-class free lists ([`FreeLists`], as the
//! device pool) and reused: each carries an event recorded after its last
//! copy, and a buffer is only taken again once that event has completed,
//! so a buffer still being copied is never overwritten and a steady step
//! loop allocates no pinned memory. Uploads use write-combined memory (the
//! host only writes it); downloads plain pinned memory (the host reads it).
//!
//! Overlap: the host prepares the next batch while the device copies and
//! computes. `upload_async` and `download_async` queue their copies on the
//! compute stream, so on the device those copies run between kernels;
//! [`CudaDevice::prefetch`] ([`super::prefetch`]) queues host→device
//! copies on the device's copy stream, beside the kernels, through these
//! same pinned buffers.

use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaEvent, PinnedHostSlice};

use super::context::{driver_err, CudaDevice, DeviceTensor};
use super::pool::{size_class, FreeLists, PoolStats};
use crate::{Result, Tensor};

/// One pinned buffer and the event recorded after its last copy.
#[derive(Debug)]
pub(crate) struct Pinned {
    pub(crate) host: PinnedHostSlice<f32>,
    /// Recorded on whichever stream ran the buffer's last copy (the compute
    /// stream for `upload_async`/`download_async`, the copy stream for
    /// [`CudaDevice::prefetch`]).
    pub(crate) done: CudaEvent,
}

/// The staging buffers of one device, for each direction.
#[derive(Debug)]
pub(crate) struct Staging {
    up: Mutex<FreeLists<Pinned>>,
    down: Mutex<FreeLists<Pinned>>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    Up,
    Down,
}

impl Staging {
    pub(crate) fn new() -> Arc<Staging> {
        Arc::new(Staging {
            up: Mutex::new(FreeLists::new(std::mem::size_of::<f32>())),
            down: Mutex::new(FreeLists::new(std::mem::size_of::<f32>())),
        })
    }

    fn lists(&self, dir: Direction) -> &Mutex<FreeLists<Pinned>> {
        match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    /// A pinned buffer of at least `len` floats whose last copy finished.
    pub(crate) fn take(
        &self,
        ctx: &Arc<CudaContext>,
        dir: Direction,
        len: usize,
    ) -> Result<(usize, Pinned)> {
        let class = size_class(len.max(1));
        let lists = self.lists(dir);
        let reused = lists
            .lock()
            .expect("staging lock")
            .take_where(class, |p| p.done.is_complete());
        if let Some(p) = reused {
            return Ok((class, p));
        }
        let flags = match dir {
            Direction::Up => sys::CU_MEMHOSTALLOC_WRITECOMBINED,
            Direction::Down => 0,
        };
        // SAFETY: the contents are undefined; an upload writes the first
        // `len` floats before the copy reads them, a download's copy writes
        // them before the host reads them.
        let host = unsafe { ctx.alloc_pinned_with_flags::<f32>(class, flags) }
            .map_err(driver_err("cuMemHostAlloc"))?;
        let done = ctx.new_event(None).map_err(driver_err("cuEventCreate"))?;
        lists.lock().expect("staging lock").allocated(class);
        Ok((class, Pinned { host, done }))
    }

    pub(crate) fn give(&self, dir: Direction, class: usize, p: Pinned) {
        if let Ok(mut lists) = self.lists(dir).lock() {
            lists.give(class, p);
        }
    }

    /// (uploads, downloads) statistics.
    pub(crate) fn stats(&self) -> (PoolStats, PoolStats) {
        (
            self.up.lock().expect("staging lock").stats(),
            self.down.lock().expect("staging lock").stats(),
        )
    }
}

/// A device→host copy in flight; [`PendingDownload::wait`] gives the tensor.
#[derive(Debug)]
pub struct PendingDownload {
    shape: Vec<usize>,
    len: usize,
    class: usize,
    pinned: Option<Pinned>,
    staging: Arc<Staging>,
}

impl PendingDownload {
    /// Waits for the copy and returns the tensor.
    pub fn wait(mut self) -> Result<Tensor> {
        let p = self.pinned.take().expect("present until waited or dropped");
        let values = p
            .done
            .synchronize()
            .map_err(driver_err("cuEventSynchronize"))
            .and_then(|()| {
                let host = p
                    .host
                    .as_slice()
                    .map_err(driver_err("cuEventSynchronize"))?;
                Ok(host[..self.len].to_vec())
            });
        self.staging.give(Direction::Down, self.class, p);
        Tensor::new(std::mem::take(&mut self.shape), values?)
    }
}

impl Drop for PendingDownload {
    fn drop(&mut self) {
        // Not waited on: the buffer goes back; its event keeps it from
        // being reused before the copy into it is done.
        if let Some(p) = self.pinned.take() {
            self.staging.give(Direction::Down, self.class, p);
        }
    }
}

impl CudaDevice {
    /// Copies an f32 tensor to the device through a pinned staging buffer;
    /// returns once the copy is queued (the stream runs it before any
    /// kernel queued later).
    pub fn upload_async(&self, t: &Tensor) -> Result<DeviceTensor> {
        let values = t.f32s("upload")?;
        let n = values.len();
        let mut out = self.uninit(t.shape().to_vec())?;
        if n == 0 {
            return Ok(out);
        }
        let (class, mut p) = self.staging().take(self.context(), Direction::Up, n)?;
        let copied = (|| {
            let host = p
                .host
                .as_mut_slice()
                .map_err(driver_err("cuEventSynchronize"))?;
            host[..n].copy_from_slice(values);
            let src: &[f32] = &host[..n];
            let mut dst = out.buf.slice_mut(0..n);
            // The source is pinned memory given as a plain slice: cudarc
            // queues the copy without waiting, and `done` (recorded next)
            // keeps the buffer from being rewritten until it has run.
            self.stream()
                .memcpy_htod(src, &mut dst)
                .map_err(driver_err("cuMemcpyHtoDAsync"))?;
            p.done
                .record(self.stream())
                .map_err(driver_err("cuEventRecord"))
        })();
        self.staging().give(Direction::Up, class, p);
        copied?;
        Ok(out)
    }

    /// Queues a copy of `t` to a pinned staging buffer; the returned handle
    /// waits for it. `t` may be dropped or reused at once: later work on
    /// the stream runs after the copy.
    pub fn download_async(&self, t: &DeviceTensor) -> Result<PendingDownload> {
        let n = t.len();
        let (class, mut p) = self.staging().take(self.context(), Direction::Down, n)?;
        let queued = (|| {
            if n == 0 {
                return Ok(());
            }
            let host = p
                .host
                .as_mut_slice()
                .map_err(driver_err("cuEventSynchronize"))?;
            let dst: &mut [f32] = &mut host[..n];
            self.stream()
                .memcpy_dtoh(&t.buf.slice(0..n), dst)
                .map_err(driver_err("cuMemcpyDtoHAsync"))?;
            p.done
                .record(self.stream())
                .map_err(driver_err("cuEventRecord"))
        })();
        if let Err(e) = queued {
            self.staging().give(Direction::Down, class, p);
            return Err(e);
        }
        Ok(PendingDownload {
            shape: t.shape().to_vec(),
            len: n,
            class,
            pinned: Some(p),
            staging: self.staging().clone(),
        })
    }
}
