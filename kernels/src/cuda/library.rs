//! Finding the CUDA shared libraries at run time, without ever panicking.
//!
//! cudarc loads `libcuda` and `libnvrtc` with `dlopen` on first use and
//! panics when a library is missing; psflow asks first. Each library is
//! probed once per process: by an explicit path from the environment if one
//! is given (`PSFLOW_CUDA_DRIVER_LIB`, `PSFLOW_NVRTC_LIB`), then by the names
//! cudarc itself tries (`libnvrtc.so`, …, `libnvrtc.so.12`, found through
//! `LD_LIBRARY_PATH` and the system's library paths).
//!
//! An explicit path is opened and kept open for the life of the process;
//! cudarc's later `dlopen` of `libnvrtc.so.12` then finds the library already
//! loaded (the dynamic loader matches it by its soname), so no
//! `LD_LIBRARY_PATH` is needed. `scripts/test` installs NVRTC from PyPI
//! (`nvidia-cuda-nvrtc-cu12`) into `.cache/nvrtc` and sets `PSFLOW_NVRTC_LIB`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming the NVRTC library file (`…/libnvrtc.so.12`).
pub const NVRTC_LIB_ENV: &str = "PSFLOW_NVRTC_LIB";
/// Environment variable naming the CUDA driver library file (`…/libcuda.so.1`).
pub const DRIVER_LIB_ENV: &str = "PSFLOW_CUDA_DRIVER_LIB";

/// How to get NVRTC when it is missing (shown in errors).
pub const NVRTC_INSTALL_HINT: &str = "install it with `python3 -m pip install --target .cache/nvrtc \
     nvidia-cuda-nvrtc-cu12` and set PSFLOW_NVRTC_LIB=$PWD/.cache/nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 \
     (scripts/test does both), or put a CUDA toolkit's lib64 on LD_LIBRARY_PATH";

/// Which CUDA library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    /// The driver API, `libcuda.so.1` (installed with the NVIDIA driver).
    Driver,
    /// The run-time compiler, `libnvrtc.so.12` (CUDA toolkit, or PyPI).
    Nvrtc,
}

impl Library {
    fn env(self) -> &'static str {
        match self {
            Library::Driver => DRIVER_LIB_ENV,
            Library::Nvrtc => NVRTC_LIB_ENV,
        }
    }

    /// The file name people know it by.
    pub fn file_name(self) -> &'static str {
        match self {
            Library::Driver => "libcuda.so.1",
            Library::Nvrtc => "libnvrtc.so.12",
        }
    }

    fn probe(self) -> Result<(), String> {
        if let Some(path) = std::env::var_os(self.env()).filter(|p| !p.is_empty()) {
            preload(Path::new(&path)).map_err(|e| {
                format!(
                    "{} is set to {} but that library cannot be loaded: {e}",
                    self.env(),
                    PathBuf::from(&path).display()
                )
            })?;
        }
        // SAFETY: `is_culib_present` only `dlopen`s candidate names and
        // drops the handles; loading the CUDA libraries runs no code of
        // ours. A panic inside cudarc is caught and reported, not raised.
        let present = catch_unwind(AssertUnwindSafe(|| unsafe {
            match self {
                Library::Driver => cudarc::driver::sys::is_culib_present(),
                Library::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
            }
        }));
        match present {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "{} not found (searched {:?} on LD_LIBRARY_PATH and the system paths; \
                 {} not set)",
                self.file_name(),
                candidates(self),
                self.env()
            )),
            Err(_) => Err(format!(
                "loading {} panicked inside cudarc",
                self.file_name()
            )),
        }
    }
}

/// The names cudarc `dlopen`s for `lib`, in order.
fn candidates(lib: Library) -> Vec<String> {
    let name = match lib {
        Library::Driver => "cuda",
        Library::Nvrtc => "nvrtc",
    };
    let all = cudarc::get_lib_name_candidates(name);
    // Only the plain names matter on Linux; keep the message short.
    all.into_iter().filter(|n| !n.contains("64")).collect()
}

/// Opens the library at `path` and keeps it loaded for the process's life.
fn preload(path: &Path) -> Result<(), String> {
    // SAFETY: opening a CUDA library runs its initialisers, which are
    // NVIDIA's and have no preconditions on our side.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    // Never unloaded: cudarc's handle (opened later by soname) refers to it.
    std::mem::forget(lib);
    Ok(())
}

/// Loads NVRTC from `path` (a `libnvrtc.so.12` file) for this process, as
/// `PSFLOW_NVRTC_LIB` does; call before the first compile.
pub fn use_nvrtc_at(path: &Path) -> Result<(), String> {
    preload(path).map_err(|e| format!("cannot load NVRTC from {}: {e}", path.display()))
}

/// Whether `lib` can be loaded, probed once per process; the error says
/// what was searched and what to set.
pub fn available(lib: Library) -> Result<(), String> {
    static DRIVER: OnceLock<Result<(), String>> = OnceLock::new();
    static NVRTC: OnceLock<Result<(), String>> = OnceLock::new();
    let cell = match lib {
        Library::Driver => &DRIVER,
        Library::Nvrtc => &NVRTC,
    };
    cell.get_or_init(|| lib.probe()).clone()
}
