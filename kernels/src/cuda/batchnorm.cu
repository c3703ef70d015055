// Fused batch norm (TensorFlow's FusedBatchNormV3 / FusedBatchNormGradV3)
// with an optional ReLU6, over x seen as [rows, c] (NHWC, channels last).
//
// Forward, training:  bn_stats_partial -> bn_finalize -> bn_apply
// Forward, inference: bn_finalize (with stats = 0 splits) -> bn_apply
// Backward:           bn_grad_partial -> bn_grad_finalize -> bn_grad_apply
//
// Per-channel sums are taken in two levels with no atomics: a block sums a
// contiguous range of rows for 32 channels (its 8 thread rows reduced in
// shared memory) and writes one partial per (split, channel); the finalize
// kernel adds the partials in double precision in a fixed order. The mean
// and variance use a per-channel shift (the first row), so the variance
// sum does not cancel catastrophically: var = E[(x-s)^2] - E[x-s]^2.
// The coefficients follow the CPU kernel (kernels/src/ops/batchnorm) term
// for term.

#define BN_CH 32
#define BN_ROWS 8

__device__ __forceinline__ float relu6(float v) { return fminf(fmaxf(v, 0.0f), 6.0f); }

// Block reduction over threadIdx.y of two values per channel; writes the
// block's totals to out_a / out_b at [blockIdx.y * c + ch] from row 0.
__device__ __forceinline__ void reduce_rows_store(float a, float b, int ch, int c,
                                                  float* __restrict__ out_a,
                                                  float* __restrict__ out_b)
{
    __shared__ float sa[BN_ROWS][BN_CH];
    __shared__ float sb[BN_ROWS][BN_CH];
    sa[threadIdx.y][threadIdx.x] = a;
    sb[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        float ta = 0.0f, tb = 0.0f;
#pragma unroll
        for (int r = 0; r < BN_ROWS; ++r) { ta += sa[r][threadIdx.x]; tb += sb[r][threadIdx.x]; }
        out_a[(long long)blockIdx.y * c + ch] = ta;
        out_b[(long long)blockIdx.y * c + ch] = tb;
    }
}

// Rows [begin, end) of split blockIdx.y out of gridDim.y.
__device__ __forceinline__ void split_rows(long long rows, long long* begin, long long* end)
{
    const long long per = (rows + gridDim.y - 1) / gridDim.y;
    *begin = blockIdx.y * per;
    *end = min(rows, *begin + per);
}

// Shifted sums sum(x - s) and sum((x - s)^2), s = x[0, ch].
// Grid: (ceil(c / 32), splits). Block: 32 x 8. part_*: [splits, c].
extern "C" __global__ void __launch_bounds__(BN_CH * BN_ROWS)
bn_stats_partial(const float* __restrict__ x, long long rows, int c,
                 float* __restrict__ part_sum, float* __restrict__ part_sq)
{
    const int ch = blockIdx.x * BN_CH + threadIdx.x;
    long long begin, end;
    split_rows(rows, &begin, &end);
    float s = 0.0f, q = 0.0f;
    if (ch < c) {
        const float shift = x[ch];
        for (long long r = begin + threadIdx.y; r < end; r += BN_ROWS) {
            const float d = x[r * c + ch] - shift;
            s += d;
            q += d * d;
        }
    }
    reduce_rows_store(s, q, ch, c, part_sum, part_sq);
}

// Per channel: the statistics and the normalization coefficients.
// Training (splits > 0): mean/var (biased) from the partials; outputs the
// saved mean/var (reserve spaces), and the running mean/var blended with
// `factor` (Bessel-corrected variance; factor == 1 ignores run_mean/run_var,
// which may then be null). Inference (splits == 0): mean/var are run_mean /
// run_var and the outputs copy them.
// Always: coef_a = scale / sqrt(var + eps), in double as the CPU kernel.
extern "C" __global__ void bn_finalize(const float* __restrict__ x,
                                       const float* __restrict__ part_sum,
                                       const float* __restrict__ part_sq,
                                       int splits, long long rows, int c,
                                       const float* __restrict__ scale,
                                       const float* __restrict__ run_mean,
                                       const float* __restrict__ run_var,
                                       float factor, float eps,
                                       float* __restrict__ save_mean,
                                       float* __restrict__ save_var,
                                       float* __restrict__ out_mean,
                                       float* __restrict__ out_var,
                                       float* __restrict__ coef_a)
{
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    float mean, var;
    if (splits > 0) {
        double s = 0.0, q = 0.0;
        for (int k = 0; k < splits; ++k) {
            s += part_sum[(long long)k * c + ch];
            q += part_sq[(long long)k * c + ch];
        }
        const double n = (double)rows;
        const double d = s / n;
        mean = (float)((double)x[ch] + d);
        var = (float)fmax(q / n - d * d, 0.0);
        const double adjust = n / (double)(rows > 1 ? rows - 1 : 1);
        const float unbiased = (float)((double)var * adjust);
        if (factor != 1.0f) {
            out_mean[ch] = (float)((double)(1.0f - factor) * run_mean[ch] + (double)factor * mean);
            out_var[ch] = (float)((double)(1.0f - factor) * run_var[ch] + (double)factor * unbiased);
        } else {
            out_mean[ch] = mean;
            out_var[ch] = unbiased;
        }
    } else {
        mean = run_mean[ch];
        var = run_var[ch];
        out_mean[ch] = mean;
        out_var[ch] = var;
    }
    save_mean[ch] = mean;
    save_var[ch] = var;
    coef_a[ch] = (float)((double)scale[ch] / sqrt((double)var + (double)eps));
}

// y = (x - mean) * coef_a + offset, then ReLU6 when relu6 != 0.
extern "C" __global__ void bn_apply(const float* __restrict__ x,
                                    const float* __restrict__ mean,
                                    const float* __restrict__ coef_a,
                                    const float* __restrict__ offset,
                                    float* __restrict__ y,
                                    long long rows, int c, int relu6_on)
{
    const long long total = rows * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i % c);
        const float v = (x[i] - mean[ch]) * coef_a[ch] + offset[ch];
        y[i] = relu6_on ? relu6(v) : v;
    }
}

// The gradient reaching the batch norm: dy, masked by ReLU6's gradient
// (0 < y < 6) when y is given.
__device__ __forceinline__ float masked(const float* __restrict__ dy,
                                        const float* __restrict__ y, long long i)
{
    if (y == nullptr) return dy[i];
    const float v = y[i];
    return (v > 0.0f && v < 6.0f) ? dy[i] : 0.0f;
}

// sum(g) and sum(g * (x - mean)) per channel, g the masked gradient.
// y may be null (no ReLU6). Grid: (ceil(c / 32), splits). Block: 32 x 8.
extern "C" __global__ void __launch_bounds__(BN_CH * BN_ROWS)
bn_grad_partial(const float* __restrict__ dy, const float* __restrict__ y,
                const float* __restrict__ x, const float* __restrict__ mean,
                long long rows, int c,
                float* __restrict__ part_g, float* __restrict__ part_gx)
{
    const int ch = blockIdx.x * BN_CH + threadIdx.x;
    long long begin, end;
    split_rows(rows, &begin, &end);
    float s = 0.0f, p = 0.0f;
    if (ch < c) {
        const float m = mean[ch];
        for (long long r = begin + threadIdx.y; r < end; r += BN_ROWS) {
            const long long i = r * c + ch;
            const float g = masked(dy, y, i);
            s += g;
            p += g * (x[i] - m);
        }
    }
    reduce_rows_store(s, p, ch, c, part_g, part_gx);
}

// Per channel: doffset = sum(g), dscale = sum(g (x - m)) / sqrt(var + eps),
// and the coefficients of dx = k1 g + k2 (x - m) + k3 (k2 = k3 = 0 in
// inference), as the CPU kernel.
extern "C" __global__ void bn_grad_finalize(const float* __restrict__ part_g,
                                            const float* __restrict__ part_gx,
                                            int splits, long long rows, int c,
                                            const float* __restrict__ scale,
                                            const float* __restrict__ var,
                                            float eps, int is_training,
                                            float* __restrict__ dscale,
                                            float* __restrict__ doffset,
                                            float* __restrict__ k1,
                                            float* __restrict__ k2,
                                            float* __restrict__ k3)
{
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s = 0.0, p = 0.0;
    for (int k = 0; k < splits; ++k) {
        s += part_g[(long long)k * c + ch];
        p += part_gx[(long long)k * c + ch];
    }
    const double n = (double)(rows > 1 ? rows : 1);
    const double inv = 1.0 / sqrt((double)var[ch] + (double)eps);
    const double g1 = (double)scale[ch] * inv;
    k1[ch] = (float)g1;
    k2[ch] = is_training ? (float)(-g1 * inv * inv * p / n) : 0.0f;
    k3[ch] = is_training ? (float)(-g1 * s / n) : 0.0f;
    dscale[ch] = (float)(p * inv);
    doffset[ch] = (float)s;
}

extern "C" __global__ void bn_grad_apply(const float* __restrict__ dy,
                                         const float* __restrict__ y,
                                         const float* __restrict__ x,
                                         const float* __restrict__ mean,
                                         const float* __restrict__ k1,
                                         const float* __restrict__ k2,
                                         const float* __restrict__ k3,
                                         float* __restrict__ dx,
                                         long long rows, int c)
{
    const long long total = rows * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i % c);
        dx[i] = k1[ch] * masked(dy, y, i) + k2[ch] * (x[i] - mean[ch]) + k3[ch];
    }
}
