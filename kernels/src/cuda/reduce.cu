// Deterministic reductions (Sum, Mean, L2Loss, BiasAddGrad) over any set of
// axes, with no atomics: the input is seen, after the host merges adjacent
// axes, as kept axes (the output) × reduced axes. Two passes:
//
//  1. reduce_partial: grid (ceil(out / TX), splits), block TX × TY. Split
//     blockIdx.y owns a contiguous range of the reduced index; thread
//     (tx, ty) sums, in double, every TY-th element of that range for
//     output blockIdx.x·TX + tx; the TY sums are combined by a fixed tree in
//     shared memory and one partial per (split, output) is written.
//  2. reduce_finalize: one thread per output adds the partials in split
//     order (double) and scales (1, 1/count for Mean, 1/2 for L2Loss).
//
// The order of every addition is fixed by the shapes alone, so a result
// has the same bits on every run. Sums are in double, as the CPU's Sum and
// Mean, so they agree with it to the last f32 bit but for rare ties.

#define RED_MAX_AXES 4

struct ReducePlan {
    int kept_rank;
    int red_rank;
    long long kept_dims[RED_MAX_AXES];
    long long kept_strides[RED_MAX_AXES];
    long long red_dims[RED_MAX_AXES];
    long long red_strides[RED_MAX_AXES];
};

__device__ __forceinline__ long long offset_of(long long idx, int rank,
                                               const long long* dims,
                                               const long long* strides)
{
    long long off = 0;
    for (int d = rank - 1; d >= 0; --d) {
        const long long k = idx % dims[d];
        idx /= dims[d];
        off += k * strides[d];
    }
    return off;
}

// square != 0: sums x^2 (L2Loss). partial: [splits, n_out] doubles.
extern "C" __global__ void reduce_partial(const float* __restrict__ x, ReducePlan p,
                                          long long n_out, long long count, int square,
                                          double* __restrict__ partial)
{
    extern __shared__ double acc[];  // [TY][TX]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const long long o = (long long)blockIdx.x * blockDim.x + tx;
    const long long per = (count + gridDim.y - 1) / gridDim.y;
    const long long begin = (long long)blockIdx.y * per;
    const long long end = min(count, begin + per);
    double s = 0.0;
    if (o < n_out) {
        const long long base = offset_of(o, p.kept_rank, p.kept_dims, p.kept_strides);
        for (long long r = begin + ty; r < end; r += blockDim.y) {
            const double v = (double)x[base + offset_of(r, p.red_rank, p.red_dims, p.red_strides)];
            s += square ? v * v : v;
        }
    }
    acc[ty * blockDim.x + tx] = s;
    __syncthreads();
    // blockDim.y is a power of two.
    for (int half = blockDim.y / 2; half > 0; half /= 2) {
        if (ty < half) acc[ty * blockDim.x + tx] += acc[(ty + half) * blockDim.x + tx];
        __syncthreads();
    }
    if (ty == 0 && o < n_out) partial[(long long)blockIdx.y * n_out + o] = acc[tx];
}

extern "C" __global__ void reduce_finalize(const double* __restrict__ partial, int splits,
                                           long long n_out, double divisor,
                                           float* __restrict__ out)
{
    for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < n_out;
         o += (long long)gridDim.x * blockDim.x) {
        double s = 0.0;
        for (int k = 0; k < splits; ++k) s += partial[(long long)k * n_out + o];
        out[o] = (float)(s / divisor);
    }
}
