//! Tap plans: which filter taps feed each position along one spatial axis.
//!
//! Both the forward pass and the input gradient are *gathers*: every
//! destination position sums `source · filter` over a set of taps. Along one
//! axis the set depends only on the position, and neighbouring positions
//! share the same pattern shifted by a constant step, so a row is cut into a
//! few *runs* (the left border, the interior, the right border) that the
//! SIMD kernels walk without any per-pixel bookkeeping. Plans are built once
//! per call, outside the hot loops.

/// Filter index `k` reads source index `src` (along one axis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AxisTap {
    pub k: usize,
    pub src: usize,
}

/// Positions `o0, o0 + o_step, …` (`count` of them) that share one tap
/// pattern: position number `t` of the run reads `tap.src + t · src_step`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Run {
    pub o0: usize,
    pub o_step: usize,
    pub count: usize,
    pub src_step: usize,
    pub taps: Vec<AxisTap>,
}

/// The taps of one axis for every destination position, grouped in runs.
#[derive(Clone, Debug)]
pub(super) struct AxisPlan {
    /// Taps of each destination position (indexed by position).
    pub taps: Vec<Vec<AxisTap>>,
    /// The same positions grouped in runs; every position is in exactly one.
    pub runs: Vec<Run>,
}

/// Forward correlation along one axis: destination `o` (an output position)
/// reads source `o·stride − pad + k` for every `k` that lands inside
/// `[0, n_src)`. Used by the forward pass and the filter gradient.
pub(super) fn forward_axis(
    n_out: usize,
    n_src: usize,
    k_size: usize,
    stride: usize,
    pad: usize,
) -> AxisPlan {
    let taps: Vec<Vec<AxisTap>> = (0..n_out)
        .map(|o| {
            let origin = (o * stride) as isize - pad as isize;
            (0..k_size)
                .filter_map(|k| {
                    let s = origin + k as isize;
                    (s >= 0 && (s as usize) < n_src).then_some(AxisTap { k, src: s as usize })
                })
                .collect()
        })
        .collect();
    let runs = group_runs(&taps, 0, 1, stride, n_out);
    AxisPlan { taps, runs }
}

/// Adjoint of [`forward_axis`]: destination `o` (an input position) gathers
/// from every output position `(o + pad − k) / stride` that is whole and
/// inside `[0, n_src)`. Used by the input gradient. Positions of one phase
/// `(o + pad) mod stride` advance their source by one per `stride` steps,
/// so runs are built per phase.
pub(super) fn backward_axis(
    n_out: usize,
    n_src: usize,
    k_size: usize,
    stride: usize,
    pad: usize,
) -> AxisPlan {
    let taps: Vec<Vec<AxisTap>> = (0..n_out)
        .map(|o| {
            (0..k_size)
                .filter_map(|k| {
                    let t = (o + pad) as isize - k as isize;
                    if t < 0 || !(t as usize).is_multiple_of(stride) {
                        return None;
                    }
                    let s = t as usize / stride;
                    (s < n_src).then_some(AxisTap { k, src: s })
                })
                .collect()
        })
        .collect();
    let mut runs = Vec::new();
    for phase in 0..stride.min(n_out) {
        runs.extend(group_runs(&taps, phase, stride, 1, n_out));
    }
    AxisPlan { taps, runs }
}

/// Walks `start, start + o_step, …` and cuts it where the tap pattern stops
/// being the previous one shifted by `src_step`.
fn group_runs(
    taps: &[Vec<AxisTap>],
    start: usize,
    o_step: usize,
    src_step: usize,
    n_out: usize,
) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut o = start;
    while o < n_out {
        let extends = runs.last().is_some_and(|r| {
            let t = r.count;
            taps[o].len() == r.taps.len()
                && taps[o]
                    .iter()
                    .zip(&r.taps)
                    .all(|(a, b)| a.k == b.k && a.src == b.src + t * src_step)
        });
        if extends {
            runs.last_mut().unwrap().count += 1;
        } else {
            runs.push(Run {
                o0: o,
                o_step,
                count: 1,
                src_step,
                taps: taps[o].clone(),
            });
        }
        o += o_step;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(plan: &AxisPlan, n: usize) {
        let mut seen = vec![0; n];
        for r in &plan.runs {
            for t in 0..r.count {
                let o = r.o0 + t * r.o_step;
                seen[o] += 1;
                let expect: Vec<AxisTap> = r
                    .taps
                    .iter()
                    .map(|a| AxisTap {
                        k: a.k,
                        src: a.src + t * r.src_step,
                    })
                    .collect();
                assert_eq!(plan.taps[o], expect, "position {o}");
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "{seen:?}");
    }

    #[test]
    fn forward_same_3x3_has_border_and_interior_runs() {
        // 16 wide, k 3, stride 1, pad 1: left border, 14 interior, right border.
        let p = forward_axis(16, 16, 3, 1, 1);
        covered(&p, 16);
        let counts: Vec<usize> = p.runs.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![1, 14, 1]);
        assert_eq!(p.taps[0].len(), 2);
        assert_eq!(p.taps[5].len(), 3);
    }

    #[test]
    fn backward_runs_cover_every_position() {
        for &(n_in, k, s, pad) in &[(16, 3, 2, 0), (7, 3, 2, 1), (5, 5, 3, 2), (1, 3, 1, 1)] {
            let n_out = (n_in + 2 * pad - k) / s + 1;
            let p = backward_axis(n_in, n_out, k, s, pad);
            covered(&p, n_in);
            let f = forward_axis(n_out, n_in, k, s, pad);
            covered(&f, n_out);
            // The two plans list the same (output, input, k) triples.
            let mut a: Vec<(usize, usize, usize)> = Vec::new();
            for (o, taps) in f.taps.iter().enumerate() {
                a.extend(taps.iter().map(|t| (o, t.src, t.k)));
            }
            let mut b: Vec<(usize, usize, usize)> = Vec::new();
            for (i, taps) in p.taps.iter().enumerate() {
                b.extend(taps.iter().map(|t| (t.src, i, t.k)));
            }
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b);
        }
    }
}
