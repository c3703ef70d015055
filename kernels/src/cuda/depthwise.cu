// Depthwise convolution (TensorFlow's DepthwiseConv2dNative and its two
// gradients) over NHWC f32 activations and [kh, kw, c, m] filters; output
// channel co = ci * m + mi, as TensorFlow.
//
// Compiled at run time by NVRTC (no headers: NVRTC ships none we need).
// Index arithmetic that can pass 2^31 (whole tensors) is done in 64 bits.

// The geometry of one depthwise convolution, filled on the host from
// TensorFlow's window rules (padding before the first row/column included).
// Must match `DwGeom` in kernels/src/cuda/ops/depthwise.rs field for field.
struct DwGeom {
    int n, h, w, c, m;   // input [n, h, w, c], channel multiplier m
    int kh, kw;          // filter taps
    int sh, sw;          // strides
    int oh, ow;          // output rows / columns
    int pad_top, pad_left;
};

// ---------------------------------------------------------------------------
// Forward, general: any filter size, stride and multiplier. One thread per
// output element, consecutive threads on consecutive output channels, so
// reads of x (for m = 1) and writes of y are coalesced.
extern "C" __global__ void dw_forward(const float* __restrict__ x,
                                      const float* __restrict__ f,
                                      float* __restrict__ y,
                                      DwGeom g)
{
    const int cm = g.c * g.m;
    const long long total = (long long)g.n * g.oh * g.ow * cm;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int co = (int)(i % cm);
        long long p = i / cm;
        const int ox = (int)(p % g.ow);
        p /= g.ow;
        const int oy = (int)(p % g.oh);
        const long long b = p / g.oh;
        const int ci = co / g.m;
        const int iy0 = oy * g.sh - g.pad_top;
        const int ix0 = ox * g.sw - g.pad_left;
        float acc = 0.0f;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int iy = iy0 + ky;
            if (iy < 0 || iy >= g.h) continue;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int ix = ix0 + kx;
                if (ix < 0 || ix >= g.w) continue;
                acc += x[((b * g.h + iy) * g.w + ix) * g.c + ci] * f[(ky * g.kw + kx) * cm + co];
            }
        }
        y[i] = acc;
    }
}

// ---------------------------------------------------------------------------
// Forward, 3x3 filters at stride S (1 or 2): a block computes a TILE x TILE
// patch of output pixels of one image for 32 input channels (all m
// multipliers of each). The input patch it reads, borders zero-filled, is
// staged once in shared memory; every tap then reads shared memory instead
// of global memory (9 reads of each input value for S = 1 become one).
//
// Block: 32 x TILE threads; threadIdx.x is the channel inside the group
// (consecutive banks, coalesced global reads), threadIdx.y the output row
// inside the tile. Grid: (ceil(c / 32), tiles_y * tiles_x, n).
#define DW_TILE 8
#define DW_CH 32

template <int S>
__device__ void dw_forward_3x3(const float* __restrict__ x,
                               const float* __restrict__ f,
                               float* __restrict__ y,
                               const DwGeom& g)
{
    constexpr int IN = (DW_TILE - 1) * S + 3;     // input rows/cols a tile reads
    __shared__ float tile[IN][IN][DW_CH];

    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int ci = blockIdx.x * DW_CH + tx;
    const int tiles_x = (g.ow + DW_TILE - 1) / DW_TILE;
    const int oy0 = (blockIdx.y / tiles_x) * DW_TILE;
    const int ox0 = (blockIdx.y % tiles_x) * DW_TILE;
    const long long b = blockIdx.z;
    const int iy0 = oy0 * S - g.pad_top;
    const int ix0 = ox0 * S - g.pad_left;

    // Stage the input patch: each thread copies channel tx of pixels
    // ty, ty + TILE, ... so a warp reads 32 consecutive floats.
    for (int pix = ty; pix < IN * IN; pix += DW_TILE) {
        const int r = pix / IN;
        const int col = pix % IN;
        const int iy = iy0 + r;
        const int ix = ix0 + col;
        float v = 0.0f;
        if (ci < g.c && iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) {
            v = x[((b * g.h + iy) * g.w + ix) * g.c + ci];
        }
        tile[r][col][tx] = v;
    }
    __syncthreads();

    const int oy = oy0 + ty;
    if (ci >= g.c || oy >= g.oh) return;
    const int cm = g.c * g.m;
    for (int mi = 0; mi < g.m; ++mi) {
        const int co = ci * g.m + mi;
        float w[9];
#pragma unroll
        for (int t = 0; t < 9; ++t) w[t] = f[t * cm + co];
#pragma unroll
        for (int j = 0; j < DW_TILE; ++j) {
            const int ox = ox0 + j;
            if (ox >= g.ow) break;
            float acc = 0.0f;
#pragma unroll
            for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
                for (int kx = 0; kx < 3; ++kx) {
                    acc += tile[ty * S + ky][j * S + kx][tx] * w[ky * 3 + kx];
                }
            }
            y[((b * g.oh + oy) * g.ow + ox) * cm + co] = acc;
        }
    }
}

extern "C" __global__ void __launch_bounds__(DW_CH * DW_TILE)
dw_forward_3x3_s1(const float* __restrict__ x, const float* __restrict__ f,
                  float* __restrict__ y, DwGeom g)
{
    dw_forward_3x3<1>(x, f, y, g);
}

extern "C" __global__ void __launch_bounds__(DW_CH * DW_TILE)
dw_forward_3x3_s2(const float* __restrict__ x, const float* __restrict__ f,
                  float* __restrict__ y, DwGeom g)
{
    dw_forward_3x3<2>(x, f, y, g);
}

// ---------------------------------------------------------------------------
// Input gradient: a gather, one thread per input element (b, iy, ix, ci).
// It sums dy over the output pixels whose window covers (iy, ix) and over
// the m output channels of ci; no two threads write the same element, so no
// atomics are needed.
extern "C" __global__ void dw_backprop_input(const float* __restrict__ dy,
                                             const float* __restrict__ f,
                                             float* __restrict__ dx,
                                             DwGeom g)
{
    const int cm = g.c * g.m;
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
        for (int ky = 0; ky < g.kh; ++ky) {
            const int ny = iy + g.pad_top - ky;      // oy * sh when (iy, ky) meet
            if (ny < 0 || ny % g.sh != 0) continue;
            const int oy = ny / g.sh;
            if (oy >= g.oh) continue;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int nx = ix + g.pad_left - kx;
                if (nx < 0 || nx % g.sw != 0) continue;
                const int ox = nx / g.sw;
                if (ox >= g.ow) continue;
                const float* dyp = dy + ((b * g.oh + oy) * g.ow + ox) * cm + ci * g.m;
                const float* fp = f + (ky * g.kw + kx) * cm + ci * g.m;
                for (int mi = 0; mi < g.m; ++mi) acc += dyp[mi] * fp[mi];
            }
        }
        dx[i] = acc;
    }
}

// ---------------------------------------------------------------------------
// Filter gradient, pass 1: df[ky, kx, co] = sum over output pixels p of
// dy[p, co] * x[input pixel of p under tap (ky, kx), ci]. The output pixels
// are cut into `splits` contiguous ranges (gridDim.z); a block sums one
// range for one tap (blockIdx.y) and 32 output channels (blockIdx.x), its
// 8 thread rows reduced in shared memory, and writes one partial per
// (split, tap, channel). No atomics: pass 2 adds the partials in a fixed
// order, so the result is deterministic.
//
// Block: 32 x 8 threads. partial: [splits, kh * kw, c * m].
#define DW_FG_ROWS 8

extern "C" __global__ void __launch_bounds__(DW_CH * DW_FG_ROWS)
dw_backprop_filter_partial(const float* __restrict__ x,
                           const float* __restrict__ dy,
                           float* __restrict__ partial,
                           DwGeom g)
{
    __shared__ float sums[DW_FG_ROWS][DW_CH];
    const int cm = g.c * g.m;
    const int taps = g.kh * g.kw;
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int co = blockIdx.x * DW_CH + tx;
    const int tap = blockIdx.y;
    const int ky = tap / g.kw;
    const int kx = tap % g.kw;
    const long long pixels = (long long)g.n * g.oh * g.ow;
    const long long per_split = (pixels + gridDim.z - 1) / gridDim.z;
    const long long begin = blockIdx.z * per_split;
    const long long end = min(pixels, begin + per_split);

    float acc = 0.0f;
    if (co < cm) {
        const int ci = co / g.m;
        for (long long p = begin + ty; p < end; p += DW_FG_ROWS) {
            const int ox = (int)(p % g.ow);
            const long long q = p / g.ow;
            const int oy = (int)(q % g.oh);
            const long long b = q / g.oh;
            const int iy = oy * g.sh - g.pad_top + ky;
            const int ix = ox * g.sw - g.pad_left + kx;
            if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
            acc += dy[p * cm + co] * x[((b * g.h + iy) * g.w + ix) * g.c + ci];
        }
    }
    sums[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && co < cm) {
        float total = 0.0f;
#pragma unroll
        for (int r = 0; r < DW_FG_ROWS; ++r) total += sums[r][tx];
        partial[((long long)blockIdx.z * taps + tap) * cm + co] = total;
    }
}

// Filter gradient, pass 2: df[t] = sum over splits of partial[s, t], for
// t over kh * kw * c * m (the filter's own layout).
extern "C" __global__ void dw_backprop_filter_reduce(const float* __restrict__ partial,
                                                     float* __restrict__ df,
                                                     int filter_len,
                                                     int splits)
{
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < filter_len;
         t += gridDim.x * blockDim.x) {
        float total = 0.0f;
        for (int s = 0; s < splits; ++s) total += partial[(long long)s * filter_len + t];
        df[t] = total;
    }
}

// ---------------------------------------------------------------------------
// Input gradient, 3x3 filters at stride S (1 or 2), multiplier 1: a block
// computes a TILE x TILE patch of dx of one image for 32 channels. The dy
// patch those input pixels receive from — DYN x DYN output pixels, borders
// zero-filled — is staged once in shared memory, so every tap reads shared
// memory (for S = 1 each dy value is read 9 times). A gather: each thread
// writes its own dx elements, no atomics.
//
// Input row iy receives from output row oy under tap ky when
// oy * S - pad_top + ky = iy, i.e. oy = (iy + pad_top - ky) / S when that
// divides. Over a tile's rows iy0 .. iy0 + TILE - 1 and ky = 0..2 the
// candidates run from ceil((iy0 + pad_top - 2) / S) over at most
// (TILE + 1) / S + 1 rows (likewise for columns).
//
// Block: 32 x TILE threads (threadIdx.x the channel, threadIdx.y the dx row
// in the tile). Grid: (ceil(c / 32), tiles_y * tiles_x over h x w, n).
__device__ __forceinline__ int dw_floor_div(int a, int s)
{
    return a >= 0 ? a / s : -((-a + s - 1) / s);
}

template <int S>
__device__ void dw_backprop_input_3x3(const float* __restrict__ dy,
                                      const float* __restrict__ f,
                                      float* __restrict__ dx,
                                      const DwGeom& g)
{
    constexpr int DYN = (DW_TILE + 1) / S + 1;
    __shared__ float tile[DYN][DYN][DW_CH];

    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int ci = blockIdx.x * DW_CH + tx;
    const int tiles_x = (g.w + DW_TILE - 1) / DW_TILE;
    const int iy0 = (blockIdx.y / tiles_x) * DW_TILE;
    const int ix0 = (blockIdx.y % tiles_x) * DW_TILE;
    const long long b = blockIdx.z;
    const int oy_lo = -dw_floor_div(-(iy0 + g.pad_top - 2), S);
    const int ox_lo = -dw_floor_div(-(ix0 + g.pad_left - 2), S);

    for (int pix = ty; pix < DYN * DYN; pix += DW_TILE) {
        const int r = pix / DYN;
        const int col = pix % DYN;
        const int oy = oy_lo + r;
        const int ox = ox_lo + col;
        float v = 0.0f;
        if (ci < g.c && oy >= 0 && oy < g.oh && ox >= 0 && ox < g.ow) {
            v = dy[((b * g.oh + oy) * g.ow + ox) * g.c + ci];
        }
        tile[r][col][tx] = v;
    }
    __syncthreads();

    const int iy = iy0 + ty;
    if (ci >= g.c || iy >= g.h) return;
    float w[9];
#pragma unroll
    for (int t = 0; t < 9; ++t) w[t] = f[t * g.c + ci];
#pragma unroll
    for (int j = 0; j < DW_TILE; ++j) {
        const int ix = ix0 + j;
        if (ix >= g.w) break;
        float acc = 0.0f;
#pragma unroll
        for (int ky = 0; ky < 3; ++ky) {
            const int ny = iy + g.pad_top - ky;
            if (ny < 0 || ny % S != 0) continue;
#pragma unroll
            for (int kx = 0; kx < 3; ++kx) {
                const int nx = ix + g.pad_left - kx;
                if (nx < 0 || nx % S != 0) continue;
                acc += tile[ny / S - oy_lo][nx / S - ox_lo][tx] * w[ky * 3 + kx];
            }
        }
        dx[((b * g.h + iy) * g.w + ix) * g.c + ci] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(DW_CH * DW_TILE)
dw_backprop_input_3x3_s1(const float* __restrict__ dy, const float* __restrict__ f,
                         float* __restrict__ dx, DwGeom g)
{
    dw_backprop_input_3x3<1>(dy, f, dx, g);
}

extern "C" __global__ void __launch_bounds__(DW_CH * DW_TILE)
dw_backprop_input_3x3_s2(const float* __restrict__ dy, const float* __restrict__ f,
                         float* __restrict__ dx, DwGeom g)
{
    dw_backprop_input_3x3<2>(dy, f, dx, g);
}

// ---------------------------------------------------------------------------
// Filter gradient, pass 1, 3x3 filters (any stride and multiplier): as
// dw_backprop_filter_partial, but a block computes all 9 taps of its 32
// output channels over its range of output pixels, so each dy value is
// read once instead of 9 times; the 8 thread rows' 9 sums are reduced in
// shared memory. Grid: (ceil(c·m / 32), 1, splits); partial as pass 1.
extern "C" __global__ void __launch_bounds__(DW_CH * DW_FG_ROWS)
dw_backprop_filter_3x3_partial(const float* __restrict__ x,
                               const float* __restrict__ dy,
                               float* __restrict__ partial,
                               DwGeom g)
{
    __shared__ float sums[9][DW_FG_ROWS][DW_CH];
    const int cm = g.c * g.m;
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int co = blockIdx.x * DW_CH + tx;
    const long long pixels = (long long)g.n * g.oh * g.ow;
    const long long per_split = (pixels + gridDim.z - 1) / gridDim.z;
    const long long begin = blockIdx.z * per_split;
    const long long end = min(pixels, begin + per_split);

    float acc[9];
#pragma unroll
    for (int t = 0; t < 9; ++t) acc[t] = 0.0f;
    if (co < cm) {
        const int ci = co / g.m;
        for (long long p = begin + ty; p < end; p += DW_FG_ROWS) {
            const int ox = (int)(p % g.ow);
            const long long q = p / g.ow;
            const int oy = (int)(q % g.oh);
            const long long b = q / g.oh;
            const float d = dy[p * cm + co];
            const int iy0 = oy * g.sh - g.pad_top;
            const int ix0 = ox * g.sw - g.pad_left;
#pragma unroll
            for (int ky = 0; ky < 3; ++ky) {
                const int iy = iy0 + ky;
                if (iy < 0 || iy >= g.h) continue;
#pragma unroll
                for (int kx = 0; kx < 3; ++kx) {
                    const int ix = ix0 + kx;
                    if (ix < 0 || ix >= g.w) continue;
                    acc[ky * 3 + kx] += d * x[((b * g.h + iy) * g.w + ix) * g.c + ci];
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < 9; ++t) sums[t][ty][tx] = acc[t];
    __syncthreads();
    // Thread row r finishes taps r, r + 8: a fixed order, no atomics.
    if (co < cm) {
        for (int t = ty; t < 9; t += DW_FG_ROWS) {
            float total = 0.0f;
#pragma unroll
            for (int r = 0; r < DW_FG_ROWS; ++r) total += sums[t][r][tx];
            partial[((long long)blockIdx.z * 9 + t) * cm + co] = total;
        }
    }
}
