// Softmax and softmax cross-entropy over rows (the last axis), as the CPU
// ops in kernels/src/ops/softmax.rs: each row is shifted by its maximum and
// exp-summed in double, so large logits neither overflow nor lose the small
// classes. One warp per row, 8 rows per block; lanes take every 32nd class
// and their sums are combined by a fixed butterfly (deterministic).

#define SM_WARPS 8

__device__ __forceinline__ double warp_sum(double v)
{
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The row's maximum (0 if it is not finite, as the CPU) and ln sum exp(x - max).
__device__ __forceinline__ void row_lse(const float* __restrict__ row, int cols, int lane,
                                        double* m_out, double* lse_out)
{
    float m = -__int_as_float(0x7f800000);  // -inf (NVRTC ships no math.h)
    for (int k = lane; k < cols; k += 32) m = fmaxf(m, row[k]);
    m = warp_max(m);
    const double md = isfinite(m) ? (double)m : 0.0;
    double s = 0.0;
    for (int k = lane; k < cols; k += 32) s += exp((double)row[k] - md);
    s = warp_sum(s);
    *m_out = md;
    *lse_out = log(s);
}

extern "C" __global__ void __launch_bounds__(32 * SM_WARPS)
softmax_rows(const float* __restrict__ x, float* __restrict__ y, long long rows, int cols)
{
    const long long r = (long long)blockIdx.x * SM_WARPS + threadIdx.y;
    if (r >= rows) return;
    const int lane = threadIdx.x;
    const float* row = x + r * cols;
    double m, lse;
    row_lse(row, cols, lane, &m, &lse);
    for (int k = lane; k < cols; k += 32) y[r * cols + k] = (float)exp((double)row[k] - m - lse);
}

// SparseSoftmaxCrossEntropyWithLogits: labels are class ids stored as
// floats (exact below 2^24; checked in range on the host when uploaded).
// loss[r] = lse + max - x[r, label]; back = softmax - onehot(label).
extern "C" __global__ void __launch_bounds__(32 * SM_WARPS)
xent_sparse(const float* __restrict__ logits, const float* __restrict__ labels,
            float* __restrict__ loss, float* __restrict__ back, long long rows, int cols)
{
    const long long r = (long long)blockIdx.x * SM_WARPS + threadIdx.y;
    if (r >= rows) return;
    const int lane = threadIdx.x;
    const float* row = logits + r * cols;
    double m, lse;
    row_lse(row, cols, lane, &m, &lse);
    const int label = (int)labels[r];
    for (int k = lane; k < cols; k += 32)
        back[r * cols + k] = (float)(exp((double)row[k] - m - lse) - (k == label ? 1.0 : 0.0));
    if (lane == 0) loss[r] = (float)(lse + m - (double)row[label]);
}

// SoftmaxCrossEntropyWithLogits with dense label probabilities:
// loss[r] = -sum_k y_k (x_k - max - lse); back = softmax - y.
extern "C" __global__ void __launch_bounds__(32 * SM_WARPS)
xent_dense(const float* __restrict__ logits, const float* __restrict__ labels,
           float* __restrict__ loss, float* __restrict__ back, long long rows, int cols)
{
    const long long r = (long long)blockIdx.x * SM_WARPS + threadIdx.y;
    if (r >= rows) return;
    const int lane = threadIdx.x;
    const float* row = logits + r * cols;
    const float* lab = labels + r * cols;
    double m, lse;
    row_lse(row, cols, lane, &m, &lse);
    double l = 0.0;
    for (int k = lane; k < cols; k += 32) {
        const double logp = (double)row[k] - m - lse;
        l -= (double)lab[k] * logp;
        back[r * cols + k] = (float)(exp(logp) - (double)lab[k]);
    }
    l = warp_sum(l);
    if (lane == 0) loss[r] = (float)l;
}
