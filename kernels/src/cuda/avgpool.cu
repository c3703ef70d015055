// AvgPool and AvgPoolGrad (NHWC), as the CPU op (kernels/src/ops/pool.rs)
// and TensorFlow: each window is divided by the number of its elements
// inside the input (padding is not counted), with SAME (TensorFlow's
// padding, the odd pixel after) or VALID geometry computed on the host.
// Both are gathers, one thread per output element, with no atomics; the
// additions run in the CPU's order (window rows, then columns; for the
// gradient, output rows then columns), so the bits agree with it.

struct PoolGeo {
    int n, h, w, c;
    int oh, ow;
    int kh, kw;
    int sh, sw;
    int pad_top, pad_left;
};

// In-bounds input range [lo, hi) of output index o along one axis.
__device__ __forceinline__ void window(int o, int stride, int pad, int k, int size,
                                       int* lo, int* hi)
{
    const int start = o * stride - pad;
    *lo = max(start, 0);
    *hi = max(min(start + k, size), *lo);
}

extern "C" __global__ void avg_pool_forward(const float* __restrict__ x,
                                            float* __restrict__ y, PoolGeo g)
{
    const long long total = (long long)g.n * g.oh * g.ow * g.c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i % g.c);
        long long rest = i / g.c;
        const int ox = (int)(rest % g.ow);
        rest /= g.ow;
        const int oy = (int)(rest % g.oh);
        const long long b = rest / g.oh;
        int r0, r1, c0, c1;
        window(oy, g.sh, g.pad_top, g.kh, g.h, &r0, &r1);
        window(ox, g.sw, g.pad_left, g.kw, g.w, &c0, &c1);
        const float* img = x + b * g.h * g.w * g.c + ch;
        float acc = 0.0f;
        bool first = true;
        for (int iy = r0; iy < r1; ++iy) {
            for (int ix = c0; ix < c1; ++ix) {
                const float v = img[((long long)iy * g.w + ix) * g.c];
                acc = first ? v : __fadd_rn(acc, v);
                first = false;
            }
        }
        const int count = (r1 - r0) * (c1 - c0);
        y[i] = __fmul_rn(acc, __fdiv_rn(1.0f, (float)max(count, 1)));
    }
}

// dx[b, iy, ix, ch] = sum over the windows containing (iy, ix) of
// grad[b, oy, ox, ch] / count(oy, ox).
extern "C" __global__ void avg_pool_backward(const float* __restrict__ grad,
                                             float* __restrict__ dx, PoolGeo g)
{
    const long long total = (long long)g.n * g.h * g.w * g.c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ch = (int)(i % g.c);
        long long rest = i / g.c;
        const int ix = (int)(rest % g.w);
        rest /= g.w;
        const int iy = (int)(rest % g.h);
        const long long b = rest / g.h;
        // Outputs whose window [o*s - pad, o*s - pad + k) holds the pixel.
        const int ty = iy + g.pad_top, tx = ix + g.pad_left;
        const int oy0 = max(0, (ty - g.kh + g.sh) / g.sh);
        const int oy1 = min(g.oh - 1, ty / g.sh);
        const int ox0 = max(0, (tx - g.kw + g.sw) / g.sw);
        const int ox1 = min(g.ow - 1, tx / g.sw);
        const float* gb = grad + b * g.oh * g.ow * g.c + ch;
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy) {
            int r0, r1;
            window(oy, g.sh, g.pad_top, g.kh, g.h, &r0, &r1);
            for (int ox = ox0; ox <= ox1; ++ox) {
                int c0, c1;
                window(ox, g.sw, g.pad_left, g.kw, g.w, &c0, &c1);
                const int count = (r1 - r0) * (c1 - c0);
                const float inv = __fdiv_rn(1.0f, (float)count);
                acc = __fadd_rn(acc, __fmul_rn(gb[((long long)oy * g.ow + ox) * g.c], inv));
            }
        }
        dx[i] = acc;
    }
}
