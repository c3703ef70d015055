//! A CUDA device: its context, its two streams (compute, and host→device
//! copies for [`super::prefetch`]), the modules loaded into it, and tensors
//! in its memory.
//!
//! Modules are loaded on first use of a source and kept in a table indexed
//! by [`Source`] (the PTX itself is shared by every device of the same
//! architecture, see [`nvrtc::compile_cached`]).
//!
//! Outputs and scratch buffers come from the device's memory pool
//! ([`super::pool`]) and go back to it when dropped; host↔device copies
//! can go through pinned staging buffers ([`super::staging`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};
use cudarc::nvrtc::Ptx;

use super::cublas::BlasHandles;
use super::library::{self, Library};
use super::nvrtc::{self, Arch, Source};
use super::pool::{DevicePool, PoolStats, PooledBuf};
use super::prefetch::Prefetcher;
use super::staging::Staging;
use crate::{Error, Result, Tensor};

/// Threads per block of the element-wise (grid-stride) kernels.
pub(crate) const ELEMENTWISE_BLOCK: u32 = 256;

/// A CUDA device ready to run psflow's kernels.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    arch: Arch,
    ctx: Arc<CudaContext>,
    /// Every kernel and every copy but the prefetches.
    stream: Arc<CudaStream>,
    /// Host→device copies of [`CudaDevice::prefetch`], beside the kernels.
    copy_stream: Arc<CudaStream>,
    pool: Arc<DevicePool>,
    prefetcher: Arc<Prefetcher>,
    staging: Arc<Staging>,
    modules: Mutex<[Option<Arc<CudaModule>>; Source::ALL.len()]>,
    /// cuBLAS handles, created by the first cuBLAS call ([`super::cublas`]).
    blas: BlasHandles,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish()
    }
}

/// An f32 tensor in device memory (row-major, as [`Tensor`]). Its buffer
/// comes from the device's pool, or from the prefetcher's ring for a
/// tensor of [`super::prefetch::Prefetched::take`] (it may be longer than
/// the tensor), and goes back there on drop.
#[derive(Debug)]
pub struct DeviceTensor {
    shape: Vec<usize>,
    pub(crate) buf: PooledBuf,
}

impl DeviceTensor {
    pub(crate) fn from_buf(shape: Vec<usize>, buf: PooledBuf) -> DeviceTensor {
        debug_assert!(buf.len() >= crate::num_elements(&shape));
        DeviceTensor { shape, buf }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements of the tensor (an empty tensor still holds the smallest
    /// pool buffer).
    pub fn len(&self) -> usize {
        crate::num_elements(&self.shape)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same buffer under another shape of as many elements
    /// (`Reshape`, `Squeeze`, `ExpandDims`: no copy).
    pub fn reshape(self, shape: Vec<usize>) -> Result<DeviceTensor> {
        if crate::num_elements(&shape) != self.len() {
            return Err(Error::shape(
                "Reshape",
                format!(
                    "a device tensor of shape {:?} ({} elements) cannot take shape {shape:?}",
                    self.shape,
                    self.len()
                ),
            ));
        }
        Ok(DeviceTensor {
            shape,
            buf: self.buf,
        })
    }
}

pub(crate) fn driver_err(op: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| Error::Cuda {
        op,
        detail: e.to_string(),
    }
}

impl CudaDevice {
    /// Every CUDA device the driver reports, opened in ordinal order: an
    /// error when there is none, or naming the one that cannot be opened.
    pub fn open_all() -> Result<Vec<Arc<CudaDevice>>> {
        let count =
            super::device::cuda_device_count().map_err(|reason| Error::DeviceUnavailable {
                device: "cuda".into(),
                reason,
            })?;
        if count == 0 {
            return Err(Error::DeviceUnavailable {
                device: "cuda".into(),
                reason: "the CUDA driver reports no device".into(),
            });
        }
        (0..count).map(CudaDevice::new).collect()
    }

    /// Opens CUDA device `ordinal` (its primary context) with two new
    /// streams: compute and copies.
    /// An error, never a panic, when the driver or the device is missing or
    /// the device is older than compute capability 8.0 (the kernels use
    /// TF32 tensor cores).
    pub fn new(ordinal: usize) -> Result<Arc<CudaDevice>> {
        let device = format!("cuda:{ordinal}");
        library::available(Library::Driver).map_err(|why| Error::DeviceUnavailable {
            device: device.clone(),
            reason: format!("no CUDA driver ({why})"),
        })?;
        let ctx = catch_unwind(AssertUnwindSafe(|| CudaContext::new(ordinal)))
            .map_err(|_| Error::DeviceUnavailable {
                device: device.clone(),
                reason: "the CUDA driver panicked inside cudarc while opening the device".into(),
            })?
            .map_err(|e| Error::DeviceUnavailable {
                device: device.clone(),
                reason: format!("opening the device failed: {e}"),
            })?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err("cuDeviceGetAttribute"))?;
        let arch = Arch {
            major: major as u32,
            minor: minor as u32,
        };
        if arch < Arch::SM_80 {
            return Err(Error::DeviceUnavailable {
                device,
                reason: format!(
                    "compute capability {major}.{minor}: psflow's CUDA kernels need 8.0 or newer \
                     (TF32 tensor cores); use --device cpu"
                ),
            });
        }
        let name = ctx.name().map_err(driver_err("cuDeviceGetName"))?;
        let stream = ctx.new_stream().map_err(driver_err("cuStreamCreate"))?;
        let copy_stream = ctx.new_stream().map_err(driver_err("cuStreamCreate"))?;
        Ok(Arc::new(CudaDevice {
            ordinal,
            name,
            arch,
            ctx,
            pool: DevicePool::new(stream.clone()),
            prefetcher: Prefetcher::new(stream.clone(), copy_stream.clone()),
            copy_stream,
            staging: Staging::new(),
            stream,
            modules: Mutex::new(Default::default()),
            blas: BlasHandles::default(),
        }))
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn copy_stream(&self) -> &Arc<CudaStream> {
        &self.copy_stream
    }

    pub(crate) fn prefetcher(&self) -> &Arc<Prefetcher> {
        &self.prefetcher
    }

    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub(crate) fn blas_handles(&self) -> &BlasHandles {
        &self.blas
    }

    pub(crate) fn staging(&self) -> &Arc<Staging> {
        &self.staging
    }

    /// What the device memory pool holds and has served.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// (uploads, downloads): the pinned staging buffers' statistics.
    pub fn staging_stats(&self) -> (PoolStats, PoolStats) {
        self.staging.stats()
    }

    /// Releases the pool's and the prefetcher's free device buffers to the
    /// driver (after a run; never needed inside a step loop).
    pub fn trim_pool(&self) {
        self.pool.trim();
        self.prefetcher.trim();
    }

    /// Waits for everything queued on the device's streams (compute, then
    /// copies).
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .and_then(|()| self.copy_stream.synchronize())
            .map_err(driver_err("cuStreamSynchronize"))
    }

    /// The kernel `name` of `source`, compiling and loading the source on
    /// first use.
    pub(crate) fn function(&self, source: Source, name: &'static str) -> Result<CudaFunction> {
        debug_assert!(
            source.entry_points().contains(&name),
            "{name} not listed for {source:?}"
        );
        let module = {
            let mut modules = self.modules.lock().expect("module table lock");
            match &modules[source.index()] {
                Some(m) => m.clone(),
                None => {
                    let compiled = nvrtc::compile_cached(source, self.arch)?;
                    let m = self
                        .ctx
                        .load_module(Ptx::from_src(compiled.ptx.clone()))
                        .map_err(driver_err("cuModuleLoadData"))?;
                    modules[source.index()] = Some(m.clone());
                    m
                }
            }
        };
        module
            .load_function(name)
            .map_err(driver_err("cuModuleGetFunction"))
    }

    /// Copies an f32 tensor to the device from pageable memory (the host
    /// waits for the copy; [`CudaDevice::upload_async`] does not).
    pub fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        let values = t.f32s("upload")?;
        let mut out = self.uninit(t.shape().to_vec())?;
        if !values.is_empty() {
            let mut dst = out.buf.slice_mut(0..values.len());
            self.stream
                .memcpy_htod(values, &mut dst)
                .map_err(driver_err("cuMemcpyHtoD"))?;
        }
        Ok(out)
    }

    /// Copies a device tensor back (waits for the stream).
    pub fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        let values = if t.is_empty() {
            Vec::new()
        } else {
            self.stream
                .clone_dtoh(&t.buf.slice(0..t.len()))
                .map_err(driver_err("cuMemcpyDtoH"))?
        };
        Tensor::new(t.shape.clone(), values)
    }

    /// A copy of `t` in a new pooled buffer (device to device, queued on
    /// the stream).
    pub fn copy(&self, t: &DeviceTensor) -> Result<DeviceTensor> {
        let mut out = self.uninit(t.shape.clone())?;
        let n = t.len();
        if n > 0 {
            let mut dst = out.buf.slice_mut(0..n);
            self.stream
                .memcpy_dtod(&t.buf.slice(0..n), &mut dst)
                .map_err(driver_err("cuMemcpyDtoD"))?;
        }
        Ok(out)
    }

    /// `parts` laid end to end in one tensor of `shape` (each part's
    /// elements copied in order, device to device): `ConcatV2` along an
    /// axis with nothing but size-1 axes before it.
    pub fn concat_flat(&self, parts: &[&DeviceTensor], shape: Vec<usize>) -> Result<DeviceTensor> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total != crate::num_elements(&shape) {
            return Err(Error::shape(
                "ConcatV2",
                format!("parts of {total} elements cannot fill shape {shape:?}"),
            ));
        }
        let mut out = self.uninit(shape)?;
        let mut at = 0;
        for p in parts {
            let n = p.len();
            if n > 0 {
                let mut dst = out.buf.slice_mut(at..at + n);
                self.stream
                    .memcpy_dtod(&p.buf.slice(0..n), &mut dst)
                    .map_err(driver_err("cuMemcpyDtoD"))?;
            }
            at += n;
        }
        Ok(out)
    }

    /// Elements `offset .. offset + len` of `t` as a tensor of `shape`
    /// (a contiguous `Slice`, copied device to device).
    pub fn slice_flat(
        &self,
        t: &DeviceTensor,
        offset: usize,
        shape: Vec<usize>,
    ) -> Result<DeviceTensor> {
        let len = crate::num_elements(&shape);
        if offset + len > t.len() {
            return Err(Error::shape(
                "Slice",
                format!(
                    "elements {offset}..{} are outside a tensor of {}",
                    offset + len,
                    t.len()
                ),
            ));
        }
        let mut out = self.uninit(shape)?;
        if len > 0 {
            let mut dst = out.buf.slice_mut(0..len);
            self.stream
                .memcpy_dtod(&t.buf.slice(offset..offset + len), &mut dst)
                .map_err(driver_err("cuMemcpyDtoD"))?;
        }
        Ok(out)
    }

    /// A zero-filled pooled buffer of at least `len` floats (scratch).
    pub(crate) fn alloc(&self, len: usize) -> Result<PooledBuf> {
        let mut buf = self.pool.take(len)?;
        self.stream
            .memset_zeros(&mut *buf)
            .map_err(driver_err("cuMemsetD8Async"))?;
        Ok(buf)
    }

    /// A zero-filled device tensor of `shape`.
    pub fn zeros(&self, shape: Vec<usize>) -> Result<DeviceTensor> {
        let buf = self.alloc(crate::num_elements(&shape))?;
        Ok(DeviceTensor { shape, buf })
    }

    /// A device tensor of `shape` with undefined contents, for outputs a
    /// kernel writes in full.
    pub(crate) fn uninit(&self, shape: Vec<usize>) -> Result<DeviceTensor> {
        let buf = self.pool.take(crate::num_elements(&shape))?;
        Ok(DeviceTensor { shape, buf })
    }
}
