// General 2-D convolution (TensorFlow's Conv2D with any filter size and
// stride, NHWC f32, filter [kh, kw, c, o]) as im2col + the TF32 GEMM of
// pointwise.cu, and its input gradient as a GEMM + col2im. The column
// matrix has one row per output pixel (b, oy, ox) and one column per tap
// (ki, kj, ci), so `col · W` with W viewed as [kh·kw·c, o] is the output.
//
// Compiled at run time by NVRTC (no headers). Whole-tensor indices in 64 bits.

// Must match `ConvGeom` in kernels/src/cuda/ops/conv.rs field for field.
struct ConvGeom {
    int n, h, w, c;      // input [n, h, w, c]
    int kh, kw;          // filter taps
    int sh, sw;          // strides
    int oh, ow;          // output rows / columns
    int pad_top, pad_left;
};

// col[(b·oh + oy)·ow + ox][(ki·kw + kj)·c + ci] = x[b, oy·sh − pt + ki,
// ox·sw − pl + kj, ci], or 0 in the padding. One thread per column-matrix
// element; consecutive threads on consecutive ci (coalesced reads of x).
extern "C" __global__ void conv_im2col(const float* __restrict__ x,
                                       float* __restrict__ col,
                                       ConvGeom g)
{
    const long long k = (long long)g.kh * g.kw * g.c;
    const long long total = (long long)g.n * g.oh * g.ow * k;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / k;
        const int tap = (int)(i % k);
        const int ci = tap % g.c;
        const int kk = tap / g.c;
        const int kj = kk % g.kw;
        const int ki = kk / g.kw;
        const int ox = (int)(row % g.ow);
        const long long p = row / g.ow;
        const int oy = (int)(p % g.oh);
        const long long b = p / g.oh;
        const int iy = oy * g.sh - g.pad_top + ki;
        const int ix = ox * g.sw - g.pad_left + kj;
        float v = 0.0f;
        if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) {
            v = x[((b * g.h + iy) * g.w + ix) * g.c + ci];
        }
        col[i] = v;
    }
}

// The adjoint of conv_im2col: dx[b, iy, ix, ci] = Σ over the taps (ki, kj)
// whose window covers (iy, ix) of dcol[row(b, oy, ox)][tap(ki, kj, ci)].
// A gather, one thread per input element, taps in a fixed order: no atomics,
// deterministic.
extern "C" __global__ void conv_col2im(const float* __restrict__ dcol,
                                       float* __restrict__ dx,
                                       ConvGeom g)
{
    const long long k = (long long)g.kh * g.kw * g.c;
    const long long total = (long long)g.n * g.h * g.w * g.c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int ci = (int)(i % g.c);
        long long p = i / g.c;
        const int ix = (int)(p % g.w);
        p /= g.w;
        const int iy = (int)(p % g.h);
        const long long b = p / g.h;
        float acc = 0.0f;
        for (int ki = 0; ki < g.kh; ++ki) {
            const int ty = iy + g.pad_top - ki;
            if (ty < 0 || ty % g.sh != 0) continue;
            const int oy = ty / g.sh;
            if (oy >= g.oh) continue;
            for (int kj = 0; kj < g.kw; ++kj) {
                const int tx = ix + g.pad_left - kj;
                if (tx < 0 || tx % g.sw != 0) continue;
                const int ox = tx / g.sw;
                if (ox >= g.ow) continue;
                const long long row = (b * g.oh + oy) * g.ow + ox;
                acc += dcol[row * k + (long long)(ki * g.kw + kj) * g.c + ci];
            }
        }
        dx[i] = acc;
    }
}
