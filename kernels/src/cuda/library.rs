//! Finding the CUDA shared libraries at run time, without ever panicking.
//!
//! cudarc loads `libcuda`, `libnvrtc` and `libcublas` with `dlopen` on first
//! use and panics when a library is missing; psflow asks first. Each library
//! is probed once per process: by an explicit path from the environment if
//! one is given (`PSFLOW_CUDA_DRIVER_LIB`, `PSFLOW_NVRTC_LIB`,
//! `PSFLOW_CUBLAS_LIB`), then by the names cudarc itself tries
//! (`libnvrtc.so`, …, `libnvrtc.so.12`, found through `LD_LIBRARY_PATH` and
//! the system's library paths).
//!
//! An explicit path is opened and kept open for the life of the process;
//! cudarc's later `dlopen` of `libnvrtc.so.12` then finds the library already
//! loaded (the dynamic loader matches it by its soname), so no
//! `LD_LIBRARY_PATH` is needed. `scripts/test` installs NVRTC from PyPI
//! (`nvidia-cuda-nvrtc-cu12`) into `.cache/nvrtc` and sets `PSFLOW_NVRTC_LIB`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::OnceLock;

/// Environment variable naming the NVRTC library file (`…/libnvrtc.so.12`).
pub const NVRTC_LIB_ENV: &str = "PSFLOW_NVRTC_LIB";
/// Environment variable naming the CUDA driver library file (`…/libcuda.so.1`).
pub const DRIVER_LIB_ENV: &str = "PSFLOW_CUDA_DRIVER_LIB";

/// Environment variable naming the cuBLAS library file (`…/libcublas.so.12`;
/// its `libcublasLt.so.12` must be loadable too, e.g. from the same folder).
pub const CUBLAS_LIB_ENV: &str = "PSFLOW_CUBLAS_LIB";

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
    /// cuBLAS, `libcublas.so.12` (CUDA toolkit, PyPI's nvidia-cublas-cu12,
    /// or the copy PyTorch ships): only the comparison GEMM path uses it.
    Cublas,
}

impl Library {
    fn env(self) -> &'static str {
        match self {
            Library::Driver => DRIVER_LIB_ENV,
            Library::Nvrtc => NVRTC_LIB_ENV,
            Library::Cublas => CUBLAS_LIB_ENV,
        }
    }

    /// The file name people know it by.
    pub fn file_name(self) -> &'static str {
        match self {
            Library::Driver => "libcuda.so.1",
            Library::Nvrtc => "libnvrtc.so.12",
            Library::Cublas => "libcublas.so.12",
        }
    }

    /// Loads the library from `explicit` (the environment variable's value)
    /// if given, then asks whether cudarc's names load.
    fn probe(self, explicit: Option<&Path>) -> Result<(), String> {
        if let Some(path) = explicit {
            preload(path).map_err(|e| {
                format!(
                    "{} is set to {} but that library cannot be loaded: {e}",
                    self.env(),
                    path.display()
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
                Library::Cublas => cudarc::cublas::sys::is_culib_present(),
            }
        }));
        match present {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "{} not found (searched {:?} on LD_LIBRARY_PATH and the system paths; \
                 {} {}){}",
                self.file_name(),
                candidates(self),
                self.env(),
                match explicit {
                    Some(p) => format!(
                        "names {}, which loads but does not carry that soname",
                        p.display()
                    ),
                    None => "not set".to_string(),
                },
                match self {
                    Library::Cublas => {
                        "; libcublas.so.12 also needs libcublasLt.so.12 beside it or on \
                         LD_LIBRARY_PATH"
                    }
                    _ => "",
                }
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
        Library::Cublas => "cublas",
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
    static CUBLAS: OnceLock<Result<(), String>> = OnceLock::new();
    let cell = match lib {
        Library::Driver => &DRIVER,
        Library::Nvrtc => &NVRTC,
        Library::Cublas => &CUBLAS,
    };
    cell.get_or_init(|| {
        let explicit = std::env::var_os(lib.env()).filter(|p| !p.is_empty());
        lib.probe(explicit.as_deref().map(Path::new))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_path_that_does_not_load_names_the_variable_and_the_path() {
        let err = Library::Cublas
            .probe(Some(Path::new("/nonexistent/psflow/libcublas.so.12")))
            .unwrap_err();
        assert!(
            err.starts_with("PSFLOW_CUBLAS_LIB is set to /nonexistent/psflow/libcublas.so.12 but that library cannot be loaded"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_cublas_is_an_error_naming_it_and_its_companion() {
        // Either branch is checked: on a machine with cuBLAS the probe
        // succeeds, without it the error says what was searched.
        match Library::Cublas.probe(None) {
            Ok(()) => {}
            Err(err) => {
                assert!(
                    err.starts_with("libcublas.so.12 not found (searched"),
                    "{err}"
                );
                assert!(err.contains("libcublas.so.12\""), "{err}");
                assert!(err.contains("PSFLOW_CUBLAS_LIB not set"), "{err}");
                assert!(err.contains("libcublasLt.so.12"), "{err}");
            }
        }
    }
}
