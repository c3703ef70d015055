// Element-wise ops over f32 tensors, with TensorFlow's semantics as the CPU
// kernels in kernels/src/ops/{elementwise,activation}.rs and
// kernels/src/ops/matmul/bias.rs. Every kernel is a grid-stride loop; each
// output element is computed by exactly one thread from its inputs alone,
// so results do not depend on the launch shape. Arithmetic uses explicitly
// rounded intrinsics (no fused multiply-add), so +, -, *, / and the
// comparisons give the CPU's bits.

#define EW_MAX_RANK 6

// A broadcast binary op's geometry, collapsed on the host (adjacent axes
// merged where both operands step alike): output dims and each operand's
// strides (0 on broadcast axes), row-major.
struct Bcast {
    int rank;
    int dims[EW_MAX_RANK];
    long long sa[EW_MAX_RANK];
    long long sb[EW_MAX_RANK];
};

// Binary op codes (the host's BinaryOp in this order).
#define OP_ADD 0
#define OP_SUB 1
#define OP_MUL 2
#define OP_DIV 3
#define OP_MAX 4
#define OP_MIN 5
#define OP_SQDIFF 6

__device__ __forceinline__ float binary_op(int op, float a, float b)
{
    switch (op) {
    case OP_ADD: return __fadd_rn(a, b);
    case OP_SUB: return __fsub_rn(a, b);
    case OP_MUL: return __fmul_rn(a, b);
    case OP_DIV: return __fdiv_rn(a, b);
    // NaN propagates from either side, as TensorFlow (and the CPU op).
    case OP_MAX: return (isnan(a) || a > b) ? a : b;
    case OP_MIN: return (isnan(a) || a < b) ? a : b;
    default: {
        const float d = __fsub_rn(a, b);
        return __fmul_rn(d, d);
    }
    }
}

extern "C" __global__ void ew_binary(int op, const float* __restrict__ a,
                                     const float* __restrict__ b,
                                     float* __restrict__ out, long long n, Bcast g)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        long long rest = i, ia = 0, ib = 0;
        for (int d = g.rank - 1; d >= 0; --d) {
            const long long k = rest % g.dims[d];
            rest /= g.dims[d];
            ia += k * g.sa[d];
            ib += k * g.sb[d];
        }
        out[i] = binary_op(op, a[ia], b[ib]);
    }
}

// out += x (AddN's later terms, in input order).
extern "C" __global__ void ew_accumulate(float* __restrict__ out,
                                         const float* __restrict__ x, long long n)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] = __fadd_rn(out[i], x[i]);
    }
}

// Unary op codes (the host's UnaryOp in this order, then the activations).
#define U_NEG 0
#define U_SQUARE 1
#define U_SQRT 2
#define U_RSQRT 3
#define U_EXP 4
#define U_LOG 5
#define U_ABS 6
#define U_RECIPROCAL 7
#define U_RELU 8
#define U_RELU6 9

__device__ __forceinline__ float unary_op(int op, float x)
{
    switch (op) {
    case U_NEG: return -x;
    case U_SQUARE: return __fmul_rn(x, x);
    case U_SQRT: return __fsqrt_rn(x);
    // 1 / sqrt(x), both rounded, as the CPU (not the approximate rsqrtf).
    case U_RSQRT: return __fdiv_rn(1.0f, __fsqrt_rn(x));
    case U_EXP: return expf(x);
    case U_LOG: return logf(x);
    case U_ABS: return fabsf(x);
    case U_RECIPROCAL: return __fdiv_rn(1.0f, x);
    // The CPU's comparisons: NaN fails `x > 0`, so Relu(NaN) = 0.
    case U_RELU: return x > 0.0f ? x : 0.0f;
    default: {
        const float r = x > 0.0f ? x : 0.0f;
        return r < 6.0f ? r : 6.0f;
    }
    }
}

extern "C" __global__ void ew_unary(int op, const float* __restrict__ x,
                                    float* __restrict__ y, long long n)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        y[i] = unary_op(op, x[i]);
    }
}

// ReluGrad (six == 0): g where 0 < x; Relu6Grad (six != 0): g where 0 < x < 6.
extern "C" __global__ void ew_relu_grad(int six, const float* __restrict__ g,
                                        const float* __restrict__ x,
                                        float* __restrict__ out, long long n)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = x[i];
        const bool pass = six ? (v > 0.0f && v < 6.0f) : (v > 0.0f);
        out[i] = pass ? g[i] : 0.0f;
    }
}

// BiasAdd: y[r, ch] = x[r, ch] + bias[ch] over x seen as [rows, c].
extern "C" __global__ void bias_add(const float* __restrict__ x,
                                    const float* __restrict__ bias,
                                    float* __restrict__ y, long long rows, int c)
{
    const long long total = rows * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        y[i] = __fadd_rn(x[i], bias[i % c]);
    }
}
