//! Which device runs the kernels: `--device auto|cpu|cuda:N`.
//!
//! `auto` takes CUDA device 0 when the driver library loads and reports a
//! device, and the CPU otherwise; either way it says which and why.
//! `cuda:N` where that device does not exist is an error naming what was
//! missing (the driver library, any device, or device N). Nothing here
//! panics when CUDA is absent: the driver library is probed before cudarc
//! touches it (see [`super::library`]).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;

use super::library::{self, Library};
use crate::{Error, Result};

/// A device a worker computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// CUDA device by ordinal (as `cuda:N`).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Exactly(Device),
}

impl FromStr for DeviceRequest {
    type Err = Error;

    fn from_str(s: &str) -> Result<DeviceRequest> {
        let bad = || {
            Error::invalid(
                "device",
                format!("unknown device {s:?}: expected `auto`, `cpu` or `cuda:N` (N = 0, 1, …)"),
            )
        };
        match s.trim() {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Exactly(Device::Cpu)),
            other => {
                let n = other.strip_prefix("cuda:").ok_or_else(bad)?;
                let n = n.parse::<usize>().map_err(|_| bad())?;
                Ok(DeviceRequest::Exactly(Device::Cuda(n)))
            }
        }
    }
}

/// The device chosen and, in words, why (for the log line a worker prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChoice {
    pub device: Device,
    pub reason: String,
}

/// The CUDA devices the driver reports, or why there are none to ask about.
/// Probes the driver library first; never panics.
pub fn cuda_device_count() -> std::result::Result<usize, String> {
    library::available(Library::Driver)?;
    let count = catch_unwind(AssertUnwindSafe(cudarc::driver::CudaContext::device_count));
    match count {
        Ok(Ok(n)) => Ok(n.max(0) as usize),
        Ok(Err(e)) => Err(format!(
            "the CUDA driver loaded but cuInit/cuDeviceGetCount failed: {e}"
        )),
        Err(_) => Err("the CUDA driver panicked inside cudarc while counting devices".into()),
    }
}

/// Resolves `spec` (`auto`, `cpu`, `cuda:N`) to a device.
pub fn pick_device(spec: &str) -> Result<DeviceChoice> {
    match spec.parse::<DeviceRequest>()? {
        DeviceRequest::Exactly(Device::Cpu) => Ok(DeviceChoice {
            device: Device::Cpu,
            reason: "the CPU, as asked".into(),
        }),
        DeviceRequest::Exactly(Device::Cuda(n)) => match cuda_device_count() {
            Ok(count) if n < count => Ok(DeviceChoice {
                device: Device::Cuda(n),
                reason: format!("CUDA device {n} of {count}, as asked"),
            }),
            Ok(0) => Err(Error::DeviceUnavailable {
                device: format!("cuda:{n}"),
                reason: "the CUDA driver loaded but reports no device".into(),
            }),
            Ok(count) => Err(Error::DeviceUnavailable {
                device: format!("cuda:{n}"),
                reason: format!(
                    "the CUDA driver reports {count} device(s), cuda:0 to cuda:{}",
                    count - 1
                ),
            }),
            Err(why) => Err(Error::DeviceUnavailable {
                device: format!("cuda:{n}"),
                reason: format!("no CUDA driver ({why}); use --device cpu or auto"),
            }),
        },
        DeviceRequest::Auto => Ok(match cuda_device_count() {
            Ok(count) if count > 0 => DeviceChoice {
                device: Device::Cuda(0),
                reason: format!("CUDA device 0 of {count}: the driver loaded and reports a device"),
            },
            Ok(_) => DeviceChoice {
                device: Device::Cpu,
                reason: "the CUDA driver loaded but reports no device: using the CPU".into(),
            },
            Err(why) => DeviceChoice {
                device: Device::Cpu,
                reason: format!("no CUDA driver ({why}): using the CPU"),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            "auto".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Auto
        );
        assert_eq!(
            "cpu".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Exactly(Device::Cpu)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Exactly(Device::Cuda(3))
        );
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
    }

    #[test]
    fn rejects_other_spellings_with_the_accepted_forms() {
        for bad in ["gpu", "cuda", "cuda:", "cuda:-1", "cuda:x", "CPU", ""] {
            let err = bad.parse::<DeviceRequest>().unwrap_err().to_string();
            assert!(err.contains("`auto`, `cpu` or `cuda:N`"), "{bad:?}: {err}");
        }
    }
}
