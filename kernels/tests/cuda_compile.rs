//! Every `.cu` source compiles with the real NVRTC for sm_80 (A100) and
//! sm_90 (H100), with no warnings, and defines every kernel the host code
//! launches. Needs no GPU, only the NVRTC library: `scripts/test` installs
//! it from PyPI (`nvidia-cuda-nvrtc-cu12`) into `.cache/nvrtc` and sets
//! `PSFLOW_NVRTC_LIB`. Without NVRTC these tests fail, saying how to get it.

use std::path::PathBuf;
use std::sync::Once;
use std::time::Instant;

use psflow_kernels::cuda::library::{self, Library, NVRTC_INSTALL_HINT, NVRTC_LIB_ENV};
use psflow_kernels::cuda::nvrtc::{self, Arch, Source};

const ARCHS: [Arch; 2] = [Arch::SM_80, Arch::SM_90];

/// Finds NVRTC (PSFLOW_NVRTC_LIB, else the copy scripts/test installs, else
/// the system's), or fails the test with how to install it.
fn require_nvrtc() {
    static FIND: Once = Once::new();
    FIND.call_once(|| {
        let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../.cache/nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc.so.12");
        if std::env::var_os(NVRTC_LIB_ENV).is_none() && local.exists() {
            library::use_nvrtc_at(&local).unwrap();
        }
    });
    if let Err(why) = library::available(Library::Nvrtc) {
        panic!(
            "NVRTC is needed to check the CUDA kernels compile (no GPU needed): {why}.\n\
             Run scripts/test, or {NVRTC_INSTALL_HINT}"
        );
    }
}

#[test]
fn every_source_compiles_for_sm80_and_sm90_without_warnings() {
    require_nvrtc();
    let (major, minor) = nvrtc::version().unwrap();
    for source in Source::ALL {
        for arch in ARCHS {
            let start = Instant::now();
            let compiled = nvrtc::compile(source, arch).unwrap_or_else(|e| panic!("{e}"));
            eprintln!(
                "NVRTC {major}.{minor}: {} for {arch} in {:.2} s",
                source.file_name(),
                start.elapsed().as_secs_f64()
            );
            assert!(
                compiled.log.is_empty(),
                "NVRTC warned on {} for {arch}:\n{}",
                source.file_name(),
                compiled.log
            );
            assert!(
                compiled.ptx.contains(&format!(".target {arch}")),
                "{} for {arch}: PTX targets another architecture",
                source.file_name()
            );
            for entry in source.entry_points() {
                assert!(
                    compiled.ptx.contains(&format!(".entry {entry}(")),
                    "{} for {arch} defines no kernel `{entry}` that the launchers use",
                    source.file_name()
                );
            }
        }
    }
}

#[test]
fn the_pointwise_gemm_runs_on_tf32_tensor_cores() {
    require_nvrtc();
    let compiled = nvrtc::compile(Source::Pointwise, Arch::SM_80).unwrap();
    assert!(compiled
        .ptx
        .contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"));
    assert!(compiled.ptx.contains("cvt.rna.tf32.f32"));
}

#[test]
fn the_3x3_depthwise_kernels_stage_their_tile_in_shared_memory() {
    require_nvrtc();
    let ptx = nvrtc::compile(Source::Depthwise, Arch::SM_90).unwrap().ptx;
    // Forward: (8-1)·S+3 input rows and columns × 32 channels × 4 bytes.
    // Input gradient: (8+1)/S+1 dy rows and columns × 32 channels × 4.
    // Filter gradient: 9 taps × 8 rows × 32 channels × 4 (the reduction).
    for (kernel_name, bytes) in [
        ("dw_forward_3x3_s1", 10 * 10 * 32 * 4),
        ("dw_forward_3x3_s2", 17 * 17 * 32 * 4),
        ("dw_backprop_input_3x3_s1", 10 * 10 * 32 * 4),
        ("dw_backprop_input_3x3_s2", 5 * 5 * 32 * 4),
        ("dw_backprop_filter_3x3_partial", 9 * 8 * 32 * 4),
    ] {
        let kernel = ptx
            .split(".entry ")
            .find(|k| k.starts_with(&format!("{kernel_name}(")))
            .expect("kernel present");
        assert!(
            kernel.contains(".shared") && kernel.contains(&format!("[{bytes}]")),
            "{kernel_name} has no {bytes}-byte shared tile"
        );
    }
}

#[test]
fn compiled_ptx_is_cached_per_source_and_architecture() {
    require_nvrtc();
    let a = nvrtc::compile_cached(Source::Optim, Arch::SM_80).unwrap();
    let b = nvrtc::compile_cached(Source::Optim, Arch::SM_80).unwrap();
    let c = nvrtc::compile_cached(Source::Optim, Arch::SM_90).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b), "second request recompiled");
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    assert_eq!(c.arch, Arch::SM_90);
}

#[test]
fn reductions_and_gathers_use_no_atomics() {
    require_nvrtc();
    // Their sums must come out in a fixed order: no atomic adds anywhere.
    for source in [
        Source::Reduce,
        Source::Softmax,
        Source::AvgPool,
        Source::BatchNorm,
        Source::Depthwise,
        Source::Elementwise,
        Source::Conv,
    ] {
        for arch in ARCHS {
            let ptx = nvrtc::compile_cached(source, arch).unwrap().ptx.clone();
            let atomic = ptx.lines().find(|line| {
                // An instruction, possibly predicated: `@%p1 atom.add…`.
                let mut t = line.trim_start();
                if t.starts_with('@') {
                    t = t
                        .split_once(char::is_whitespace)
                        .map_or("", |(_, r)| r.trim_start());
                }
                t.starts_with("atom.") || t.starts_with("red.")
            });
            assert!(
                atomic.is_none(),
                "{} for {arch} uses atomics: {}",
                source.file_name(),
                atomic.unwrap_or_default()
            );
        }
    }
}
