//! Device selection with and without CUDA. On a machine without the driver
//! (CI, most laptops) `auto` falls back to the CPU and says why, `cuda:N`
//! is an error naming the missing library, and nothing panics. On a GPU
//! machine the same tests check the other side.

use psflow_kernels::cuda::{self, pick_device, CudaDevice, Device};
use psflow_kernels::Error;

#[test]
fn cpu_is_always_available() {
    let choice = pick_device("cpu").unwrap();
    assert_eq!(choice.device, Device::Cpu);
}

#[test]
fn auto_picks_a_gpu_when_one_exists_and_says_why_not_otherwise() {
    let choice = pick_device("auto").unwrap();
    match cuda::cuda_device_count() {
        Ok(n) if n > 0 => assert_eq!(choice.device, Device::Cuda(0), "{}", choice.reason),
        Ok(_) => {
            assert_eq!(choice.device, Device::Cpu);
            assert!(choice.reason.contains("no device"), "{}", choice.reason);
        }
        Err(_) => {
            assert_eq!(choice.device, Device::Cpu);
            assert!(
                choice
                    .reason
                    .starts_with("no CUDA driver (libcuda.so.1 not found")
                    && choice.reason.ends_with("using the CPU"),
                "{}",
                choice.reason
            );
        }
    }
}

#[test]
fn a_missing_cuda_device_is_an_error_naming_what_is_missing() {
    let count = cuda::cuda_device_count();
    let beyond = *count.as_ref().unwrap_or(&0);
    let err = pick_device(&format!("cuda:{beyond}")).unwrap_err();
    let Error::DeviceUnavailable { device, reason } = &err else {
        panic!("expected DeviceUnavailable, got {err:?}");
    };
    assert_eq!(device, &format!("cuda:{beyond}"));
    match count {
        Err(_) => assert!(reason.contains("libcuda.so.1 not found"), "{err}"),
        Ok(0) => assert!(reason.contains("no device"), "{err}"),
        Ok(n) => assert!(reason.contains(&format!("reports {n} device")), "{err}"),
    }
    // Opening it directly fails the same way, without a panic.
    let err = CudaDevice::new(beyond).unwrap_err();
    assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err:?}");
}

#[test]
fn a_misspelt_device_lists_the_accepted_forms() {
    let err = pick_device("gpu:0").unwrap_err().to_string();
    assert!(err.contains("`auto`, `cpu` or `cuda:N`"), "{err}");
}

#[test]
fn cublas_is_probed_and_its_absence_is_a_clear_error() {
    // cuBLAS is asked for only by the comparison GEMM (matmul_cublas,
    // `psflow bench cuda`); without it the error names the library, where
    // it was looked for and the variable that names a file directly.
    match cuda::cublas::available() {
        Ok(()) => {}
        Err(err) => {
            let Error::LibraryUnavailable { library, reason } = &err else {
                panic!("expected LibraryUnavailable, got {err:?}");
            };
            assert_eq!(*library, "cuBLAS");
            let msg = err.to_string();
            assert!(
                msg.starts_with("cuBLAS is not available: libcublas.so.12 not found"),
                "{msg}"
            );
            assert!(reason.contains("PSFLOW_CUBLAS_LIB"), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }
    // Without CUDA there is no device to ask cuBLAS on at all: opening one
    // is the DeviceUnavailable error, not a panic.
    if cuda::cuda_device_count().is_err() {
        let err = CudaDevice::new(0).unwrap_err();
        assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err:?}");
    }
}

/// `CudaDevice::open_all`: every device the driver reports, or an error
/// saying why there is none.
#[test]
fn open_all_opens_every_device_or_says_why_there_is_none() {
    match cuda::cuda_device_count() {
        Ok(n) if n > 0 => {
            let all = cuda::CudaDevice::open_all().unwrap();
            assert_eq!(all.len(), n);
            for (i, d) in all.iter().enumerate() {
                assert_eq!(d.ordinal(), i);
            }
        }
        Ok(_) => {
            let err = cuda::CudaDevice::open_all().unwrap_err().to_string();
            assert!(err.contains("no device"), "{err}");
        }
        Err(why) => {
            let err = cuda::CudaDevice::open_all().unwrap_err();
            assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err:?}");
            assert!(err.to_string().contains(&why), "{err} vs {why}");
        }
    }
}
