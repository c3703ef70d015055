//! Prefetching on the copy stream (`CudaDevice::prefetch`) overlapped with
//! kernels on the compute stream: a training-loop-shaped run (batch N+1
//! copied while batch N's GEMM + ReLU + bias run) gives the same bits as
//! uploading each batch synchronously, its second round allocates nothing
//! (device pool, prefetch ring, pinned staging), and a prefetch dropped
//! without `take` leaves the ring usable.
//!
//! These need a CUDA GPU (compute capability ≥ 8.0) and are `#[ignore]`d
//! otherwise: run them with `PSFLOW_CUDA_TESTS=1 scripts/test`, or
//! `cargo test -p psflow-kernels --test cuda_prefetch -- --ignored`. Run
//! that way on a machine without a GPU they fail.
//!
//! Status: written with the prefetcher, NOT yet run on a GPU (none was
//! available when they were written); see docs/cuda.md.

use std::sync::Arc;

use psflow_kernels::cuda::{CudaDevice, DeviceTensor};
use psflow_kernels::{Error, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NEEDS_GPU: &str = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test";
const STEPS: usize = 5;

/// A device of its own per test: its pool, ring and statistics are not
/// shared with the tests running beside it.
/// (Each test is written once and runs on every GPU of the machine.)
fn own_gpus() -> Vec<Arc<CudaDevice>> {
    CudaDevice::open_all().unwrap_or_else(|e| panic!("these tests {NEEDS_GPU}: {e}"))
}

fn random(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
    )
    .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.f32s("test")
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// One batch: an input matrix and a per-batch bias (two size classes).
struct Batch {
    x: Tensor,
    bias: Tensor,
}

fn batches(seed: u64, rows: usize, k: usize, n: usize) -> Vec<Batch> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..STEPS)
        .map(|_| Batch {
            x: random(&mut rng, &[rows, k]),
            bias: random(&mut rng, &[n]),
        })
        .collect()
}

/// The step's kernels: `relu(x·w) + bias`, then `·w2` (a second GEMM, so
/// the compute stream has work long enough to overlap a copy with).
fn step(
    dev: &CudaDevice,
    x: &DeviceTensor,
    bias: &DeviceTensor,
    w: &DeviceTensor,
    w2: &DeviceTensor,
) -> DeviceTensor {
    let h = dev.matmul_tf32(x, w, false, false).unwrap();
    let h = dev.relu(&h).unwrap();
    let h = dev.bias_add(&h, bias).unwrap();
    dev.matmul_tf32(&h, w2, false, false).unwrap()
}

/// The reference: every batch uploaded synchronously, on the compute
/// stream only.
fn run_synchronously(dev: &CudaDevice, data: &[Batch], w: &Tensor, w2: &Tensor) -> Vec<Tensor> {
    let (w, w2) = (dev.upload(w).unwrap(), dev.upload(w2).unwrap());
    data.iter()
        .map(|b| {
            let x = dev.upload(&b.x).unwrap();
            let bias = dev.upload(&b.bias).unwrap();
            dev.download(&step(dev, &x, &bias, &w, &w2)).unwrap()
        })
        .collect()
}

/// The module doc's loop: prefetch batch N+1 before queuing batch N's
/// kernels; the host never waits inside the loop (downloads are waited
/// for at the end).
fn run_prefetched(
    dev: &CudaDevice,
    data: &[Batch],
    w: &DeviceTensor,
    w2: &DeviceTensor,
) -> Vec<Tensor> {
    let mut next = dev.prefetch(&[&data[0].x, &data[0].bias]).unwrap();
    let mut pending = Vec::new();
    for i in 0..data.len() {
        let inputs = next.take().unwrap();
        assert_eq!(inputs.len(), 2);
        assert_eq!(inputs[0].shape(), data[i].x.shape());
        if i + 1 < data.len() {
            next = dev.prefetch(&[&data[i + 1].x, &data[i + 1].bias]).unwrap();
        }
        let y = step(dev, &inputs[0], &inputs[1], w, w2);
        pending.push(dev.download_async(&y).unwrap());
        drop(inputs);
    }
    pending.into_iter().map(|p| p.wait().unwrap()).collect()
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn prefetched_steps_equal_synchronous_uploads_and_repeat_without_allocating() {
    for dev in own_gpus() {
        let (rows, k, n) = (2048, 384, 256);
        let mut rng = StdRng::seed_from_u64(3);
        let w = random(&mut rng, &[k, n]);
        let w2 = random(&mut rng, &[n, n]);
        let data = batches(11, rows, k, n);
        let want = run_synchronously(&dev, &data, &w, &w2);

        let (gw, gw2) = (dev.upload(&w).unwrap(), dev.upload(&w2).unwrap());
        let first = run_prefetched(&dev, &data, &gw, &gw2);
        for (i, (got, want)) in first.iter().zip(&want).enumerate() {
            assert_eq!(got.shape(), want.shape(), "step {i}: shape");
            assert_eq!(
                bits(got),
                bits(want),
                "step {i}: prefetched inputs gave other bits than synchronous uploads"
            );
        }
        let (stats1, pool1, staging1) =
            (dev.prefetch_stats(), dev.pool_stats(), dev.staging_stats());
        let batch_bytes = 4 * (rows * k + n) as u64;
        assert_eq!(stats1.prefetches, STEPS as u64);
        assert_eq!(stats1.tensors, 2 * STEPS as u64);
        assert_eq!(stats1.bytes, STEPS as u64 * batch_bytes);
        // Two inputs, double buffered: four device buffers.
        assert_eq!(stats1.buffers.misses, 4, "{stats1:?}");
        assert_eq!(stats1.buffers.bytes_in_use, 0, "every slot went back");

        // Another round: other data, the same shapes.
        let data2 = batches(12, rows, k, n);
        let want2 = run_synchronously(&dev, &data2, &w, &w2);
        let second = run_prefetched(&dev, &data2, &gw, &gw2);
        for (i, (got, want)) in second.iter().zip(&want2).enumerate() {
            assert_eq!(bits(got), bits(want), "round 2, step {i}");
        }
        let (stats2, pool2, staging2) =
            (dev.prefetch_stats(), dev.pool_stats(), dev.staging_stats());
        assert_eq!(
            stats2.buffers.misses, stats1.buffers.misses,
            "the second round allocated prefetch buffers: {stats2:?}"
        );
        assert_eq!(stats2.buffers.bytes_held, stats1.buffers.bytes_held);
        assert_eq!(stats2.buffers.hits, stats1.buffers.hits + 2 * STEPS as u64);
        assert_eq!(
            pool2.misses, pool1.misses,
            "the second round allocated from the device pool"
        );
        assert_eq!(
            staging2.0.misses, staging1.0.misses,
            "the second round allocated pinned upload buffers"
        );
        // How often a copy had to wait for compute (the overlap a GPU run
        // shows; depends on how far the host ran ahead, so only printed).
        eprintln!(
            "prefetch: {} copies, {} bytes, {} waited for compute; ring {:?}",
            stats2.tensors, stats2.bytes, stats2.copy_waits, stats2.buffers
        );

        drop(gw);
        drop(gw2);
        dev.synchronize().unwrap();
        dev.trim_pool();
        assert_eq!(dev.prefetch_stats().buffers.bytes_held, 0);
        assert_eq!(dev.pool_stats().bytes_held, 0);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: PSFLOW_CUDA_TESTS=1 scripts/test"]
fn an_untaken_prefetch_gives_its_buffers_back_and_bad_input_is_refused() {
    for dev in own_gpus() {
        let mut rng = StdRng::seed_from_u64(9);
        let a = random(&mut rng, &[3, 1000]);
        let b = random(&mut rng, &[3, 1000]);
        let empty = Tensor::new(vec![0, 4], Vec::<f32>::new()).unwrap();

        // Dropped while its copy may still run: the slot goes back after it.
        drop(dev.prefetch(&[&a]).unwrap());
        assert_eq!(dev.prefetch_stats().buffers.bytes_in_use, 0);
        // Reused at once for other data, which must be what arrives.
        let mut pre = dev.prefetch(&[&b, &empty]).unwrap();
        let got = pre.take().unwrap();
        let again = pre.take().unwrap_err();
        assert!(again.to_string().contains("already taken"), "{again}");
        assert!(pre.is_empty());
        assert_eq!(
            dev.prefetch_stats().buffers.misses,
            2,
            "a's slot reused, one for the empty tensor"
        );
        assert_eq!(bits(&dev.download(&got[0]).unwrap()), bits(&b));
        assert_eq!(dev.download(&got[1]).unwrap().shape(), &[0, 4]);
        drop(got);
        assert_eq!(dev.prefetch_stats().buffers.bytes_in_use, 0);

        // A tensor of another dtype: refused before anything is queued.
        let labels = Tensor::new(vec![2], vec![1i32, 2]).unwrap();
        let before = dev.prefetch_stats();
        let err = dev.prefetch(&[&a, &labels]).unwrap_err();
        assert!(matches!(err, Error::DType { op: "prefetch", .. }), "{err}");
        assert_eq!(dev.prefetch_stats(), before);
    }
}
