//! Our `.cu` sources (kernels/src/cuda/, embedded in the binary) and their
//! compilation by NVRTC to PTX, once per (source, architecture) per process.
//!
//! Every source compiles with no headers and no warnings for sm_80 and
//! sm_90 (the always-on test `kernels/tests/cuda_compile.rs` checks it with
//! the real NVRTC). A warning is treated like an error by that test, not
//! here: at run time a warning is logged in [`Compiled::log`] and the PTX used.

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::result as nvrtc;

use super::library::{self, Library, NVRTC_INSTALL_HINT};
use crate::{Error, Result};

/// One `.cu` file of kernels/src/cuda/.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Depthwise,
    Pointwise,
    BatchNorm,
    Optim,
    Elementwise,
    Reduce,
    AvgPool,
    Softmax,
    Conv,
}

impl Source {
    pub const ALL: [Source; 9] = [
        Source::Depthwise,
        Source::Pointwise,
        Source::BatchNorm,
        Source::Optim,
        Source::Elementwise,
        Source::Reduce,
        Source::AvgPool,
        Source::Softmax,
        Source::Conv,
    ];

    /// Index into per-device module tables.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The file name under kernels/src/cuda/.
    pub fn file_name(self) -> &'static str {
        match self {
            Source::Depthwise => "depthwise.cu",
            Source::Pointwise => "pointwise.cu",
            Source::BatchNorm => "batchnorm.cu",
            Source::Optim => "optim.cu",
            Source::Elementwise => "elementwise.cu",
            Source::Reduce => "reduce.cu",
            Source::AvgPool => "avgpool.cu",
            Source::Softmax => "softmax.cu",
            Source::Conv => "conv.cu",
        }
    }

    /// The CUDA C++ text.
    pub fn code(self) -> &'static str {
        match self {
            Source::Depthwise => include_str!("depthwise.cu"),
            Source::Pointwise => include_str!("pointwise.cu"),
            Source::BatchNorm => include_str!("batchnorm.cu"),
            Source::Optim => include_str!("optim.cu"),
            Source::Elementwise => include_str!("elementwise.cu"),
            Source::Reduce => include_str!("reduce.cu"),
            Source::AvgPool => include_str!("avgpool.cu"),
            Source::Softmax => include_str!("softmax.cu"),
            Source::Conv => include_str!("conv.cu"),
        }
    }

    /// The `extern "C"` kernels the host code launches from this source.
    pub fn entry_points(self) -> &'static [&'static str] {
        match self {
            Source::Depthwise => &[
                "dw_forward",
                "dw_forward_3x3_s1",
                "dw_forward_3x3_s2",
                "dw_backprop_input",
                "dw_backprop_filter_partial",
                "dw_backprop_filter_reduce",
                "dw_backprop_input_3x3_s1",
                "dw_backprop_input_3x3_s2",
                "dw_backprop_filter_3x3_partial",
            ],
            Source::Pointwise => &["pw_gemm_tf32"],
            Source::BatchNorm => &[
                "bn_stats_partial",
                "bn_finalize",
                "bn_apply",
                "bn_grad_partial",
                "bn_grad_finalize",
                "bn_grad_apply",
            ],
            Source::Optim => &[
                "apply_rmsprop",
                "apply_gradient_descent",
                "apply_momentum",
                "apply_adam",
            ],
            Source::Elementwise => &[
                "ew_binary",
                "ew_accumulate",
                "ew_unary",
                "ew_relu_grad",
                "bias_add",
            ],
            Source::Reduce => &["reduce_partial", "reduce_finalize"],
            Source::AvgPool => &["avg_pool_forward", "avg_pool_backward"],
            Source::Softmax => &["softmax_rows", "xent_sparse", "xent_dense"],
            Source::Conv => &["conv_im2col", "conv_col2im"],
        }
    }
}

/// A GPU architecture, as compute capability `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
}

impl Arch {
    /// A100 (Ampere): the oldest architecture the kernels target (TF32 mma).
    pub const SM_80: Arch = Arch { major: 8, minor: 0 };
    /// H100 (Hopper).
    pub const SM_90: Arch = Arch { major: 9, minor: 0 };
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sm_{}{}", self.major, self.minor)
    }
}

/// The result of compiling one source for one architecture.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub source: Source,
    pub arch: Arch,
    /// PTX text, loaded into a device with `cuModuleLoadData`.
    pub ptx: String,
    /// NVRTC's log (warnings); empty when the compile was clean.
    pub log: String,
}

/// The options every source is compiled with.
pub fn options(arch: Arch) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        // Line info lets profilers map time back to the .cu lines.
        "--generate-line-info".into(),
    ]
}

/// The NVRTC version (`major`, `minor`), or why NVRTC cannot be used.
pub fn version() -> Result<(i32, i32)> {
    nvrtc_loaded()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); the call writes two ints.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Cuda {
            op: "nvrtcVersion",
            detail: e.to_string(),
        })?;
    Ok((major, minor))
}

fn nvrtc_loaded() -> Result<()> {
    library::available(Library::Nvrtc).map_err(|why| Error::Cuda {
        op: "NVRTC",
        detail: format!("{why}; {NVRTC_INSTALL_HINT}"),
    })
}

/// Compiles `source` for `arch` (no cache: see [`compile_cached`]).
pub fn compile(source: Source, arch: Arch) -> Result<Compiled> {
    nvrtc_loaded()?;
    let code = CString::new(source.code()).expect(".cu sources contain no NUL byte");
    let name = CString::new(source.file_name()).expect("file names contain no NUL byte");
    let fail = |what: &str, e: nvrtc::NvrtcError| Error::Cuda {
        op: "NVRTC",
        detail: format!("{what} {} for {arch}: {e}", source.file_name()),
    };
    let prog = nvrtc::create_program(&code, Some(&name)).map_err(|e| fail("creating", e))?;
    // SAFETY: `prog` was just created from `code` and `name`, which outlive
    // it; it is destroyed exactly once, below, after its last use.
    let outcome = unsafe {
        let compiled = nvrtc::compile_program(prog, &options(arch));
        let log = nvrtc::get_program_log(prog).map(|raw| c_text(&raw));
        let ptx = match compiled {
            Ok(()) => Some(nvrtc::get_ptx(prog).map(|raw| c_text(&raw))),
            Err(_) => None,
        };
        let _ = nvrtc::destroy_program(prog);
        (compiled, log, ptx)
    };
    match outcome {
        (Ok(()), Ok(log), Some(Ok(ptx))) => Ok(Compiled {
            source,
            arch,
            ptx,
            log: log.trim().to_string(),
        }),
        (Err(e), log, _) => Err(Error::Cuda {
            op: "NVRTC",
            detail: format!(
                "compiling {} for {arch} failed ({e}):\n{}",
                source.file_name(),
                log.unwrap_or_default()
            ),
        }),
        (_, Err(e), _) => Err(fail("reading the log of", e)),
        (_, _, Some(Err(e))) => Err(fail("reading the PTX of", e)),
        (Ok(()), Ok(_), None) => unreachable!("PTX is read after every successful compile"),
    }
}

/// PTX by (source, architecture), shared by every device of the process.
type PtxCache = Mutex<HashMap<(Source, Arch), Arc<Compiled>>>;

/// [`compile`], once per (source, architecture) per process.
pub fn compile_cached(source: Source, arch: Arch) -> Result<Arc<Compiled>> {
    static CACHE: OnceLock<PtxCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().expect("cache lock").get(&(source, arch)) {
        return Ok(hit.clone());
    }
    // Compiled outside the lock: two threads may both compile the first time;
    // the results are identical and one is kept.
    let compiled = Arc::new(compile(source, arch)?);
    Ok(cache
        .lock()
        .expect("cache lock")
        .entry((source, arch))
        .or_insert(compiled)
        .clone())
}

/// NUL-terminated bytes from NVRTC as text.
fn c_text(raw: &[c_char]) -> String {
    if raw.is_empty() {
        return String::new();
    }
    // SAFETY: NVRTC's log and PTX buffers end with a NUL byte; `raw` holds
    // the whole buffer, so the scan stops inside it.
    unsafe { CStr::from_ptr(raw.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
