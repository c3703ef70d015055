//! The parallel drivers of batch norm: rows (the flattened leading axes) are
//! cut into tasks for the rayon pool; a reduction keeps per-task partial
//! channel sums, in f32 for a short run of rows and in f64 across runs, then
//! adds the tasks' partials.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

/// Rows accumulated in f32 before the partial sums move to f64: short enough
/// that the f32 rounding error stays near one ulp times this.
const F32_RUN_ROWS: usize = 64;

/// Elements below which a task is not worth a thread hop.
const MIN_TASK_ELEMS: usize = 16 * 1024;

/// Rows per task for `rows` rows of `c` channels.
fn task_rows(rows: usize, c: usize) -> usize {
    let elems = rows * c;
    let threads = rayon::current_num_threads().max(1);
    let tasks = (elems / MIN_TASK_ELEMS).clamp(1, threads * 4);
    rows.div_ceil(tasks).max(1)
}

/// Two per-channel sums over all rows: `kernel(rows, a, b)` adds the
/// contribution of a range of rows to the f32 accumulators `a`, `b`.
pub fn channel_sums<K>(rows: usize, c: usize, kernel: K) -> (Vec<f64>, Vec<f64>)
where
    K: Fn(Range<usize>, &mut [f32], &mut [f32]) + Sync,
{
    let per_task = task_rows(rows, c);
    let tasks = rows.div_ceil(per_task);
    let one_task = |t: usize| {
        let (mut a64, mut b64) = (vec![0f64; c], vec![0f64; c]);
        let (mut a32, mut b32) = (vec![0f32; c], vec![0f32; c]);
        let end = ((t + 1) * per_task).min(rows);
        let mut r = t * per_task;
        while r < end {
            let stop = (r + F32_RUN_ROWS).min(end);
            a32.fill(0.0);
            b32.fill(0.0);
            kernel(r..stop, &mut a32, &mut b32);
            for j in 0..c {
                a64[j] += a32[j] as f64;
                b64[j] += b32[j] as f64;
            }
            r = stop;
        }
        (a64, b64)
    };
    if tasks <= 1 {
        return one_task(0);
    }
    // Added in task order, so the sums do not depend on scheduling.
    let partials: Vec<(Vec<f64>, Vec<f64>)> = (0..tasks).into_par_iter().map(one_task).collect();
    let (mut a, mut b) = (vec![0f64; c], vec![0f64; c]);
    for (a2, b2) in &partials {
        for j in 0..c {
            a[j] += a2[j];
            b[j] += b2[j];
        }
    }
    (a, b)
}

/// Fills a new buffer of `rows · c` elements: `kernel(rows, out)` writes
/// every element of its range of rows.
pub fn map_rows<K>(rows: usize, c: usize, kernel: K) -> Vec<f32>
where
    K: Fn(Range<usize>, &mut [MaybeUninit<f32>]) + Sync,
{
    let n = rows * c;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let per_task = task_rows(rows, c);
    {
        let buf = &mut out.spare_capacity_mut()[..n];
        if n > 0 {
            buf.par_chunks_mut(per_task * c)
                .enumerate()
                .for_each(|(t, chunk)| {
                    let r0 = t * per_task;
                    kernel(r0..r0 + chunk.len() / c, chunk)
                });
        }
    }
    // SAFETY: the chunks cover `[0, n)` and each kernel wrote all of its
    // chunk (the inner loops write every element of every row they get).
    unsafe { out.set_len(n) };
    out
}
