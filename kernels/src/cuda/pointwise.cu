// Pointwise (1x1) convolution as a GEMM on tensor cores: an NHWC activation
// [n, h, w, cin] is the row-major matrix [n*h*w, cin] and a 1x1 HWIO filter
// the matrix [cin, cout], so the forward pass is C = A * B and the two
// gradients are dA = dC * B^T and dB = A^T * dC. One kernel does all three:
//
//     C[M, N] = alpha * op(A)[M, K] * op(B)[K, N] + beta * C
//
// with op(A) = A stored [M, K] (trans_a = 0) or A^T with A stored [K, M]
// (trans_a = 1), likewise op(B) from B stored [K, N] or [N, K]. All
// matrices row-major, any sizes (edges are zero-filled), no alignment
// required. C is not read when beta == 0.
//
// Inputs are rounded to TF32 (cvt.rna) and multiplied with
// mma.sync.m16n8k8 (TF32 in, f32 accumulate): about 1e-3 relative error
// against f32, the price of the tensor cores (sm_80 and newer).
//
// Tiling: a block of 128 threads (4 warps, 2 x 2) computes a 64 x 64 tile
// of C, stepping K by 16; each warp owns 32 x 32 of it as 2 x 4 mma tiles
// of 16 x 8. Shared-memory rows are padded so fragment reads are free of
// bank conflicts.

#define PW_BM 64
#define PW_BN 64
#define PW_BK 16
#define PW_THREADS 128
#define PW_A_STRIDE (PW_BK + 4)   // As[m][k]; 20: the 8 x 4 lanes of a fragment hit 32 banks
#define PW_B_STRIDE (PW_BN + 8)   // Bs[k][n]; 72: likewise

__device__ __forceinline__ float to_tf32(float v)
{
    unsigned int r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
    return __uint_as_float(r);
}

// d += a * b for one 16 x 8 x 8 tile. Fragment layout (PTX ISA, mma.m16n8k8
// .tf32), with g = lane / 4 and t = lane % 4:
//   a[0] = A[g][t], a[1] = A[g+8][t], a[2] = A[g][t+4], a[3] = A[g+8][t+4]
//   b[0] = B[t][g], b[1] = B[t+4][g]
//   d[0] = D[g][2t], d[1] = D[g][2t+1], d[2] = D[g+8][2t], d[3] = D[g+8][2t+1]
__device__ __forceinline__ void mma_tf32(float d[4], const float a[4], const float b[2])
{
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])),
          "r"(__float_as_uint(a[2])), "r"(__float_as_uint(a[3])),
          "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
}

extern "C" __global__ void __launch_bounds__(PW_THREADS)
pw_gemm_tf32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
             int M, int N, int K, int trans_a, int trans_b, float alpha, float beta)
{
    __shared__ float As[PW_BM][PW_A_STRIDE];
    __shared__ float Bs[PW_BK][PW_B_STRIDE];

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int wm = (warp / 2) * 32;     // warp's rows inside the block tile
    const int wn = (warp % 2) * 32;     // warp's columns
    const int m0 = blockIdx.y * PW_BM;
    const int n0 = blockIdx.x * PW_BN;

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += PW_BK) {
        // A tile (64 x 16): 8 values a thread; the index order follows the
        // stored layout so that a warp reads consecutive addresses.
#pragma unroll
        for (int e = 0; e < PW_BM * PW_BK / PW_THREADS; ++e) {
            const int idx = tid + e * PW_THREADS;
            int r, c;
            if (trans_a) { c = idx / PW_BM; r = idx % PW_BM; }
            else         { r = idx / PW_BK; c = idx % PW_BK; }
            const int gm = m0 + r;
            const int gk = k0 + c;
            float v = 0.0f;
            if (gm < M && gk < K) {
                v = trans_a ? A[(long long)gk * M + gm] : A[(long long)gm * K + gk];
            }
            As[r][c] = to_tf32(v);
        }
        // B tile (16 x 64).
#pragma unroll
        for (int e = 0; e < PW_BK * PW_BN / PW_THREADS; ++e) {
            const int idx = tid + e * PW_THREADS;
            int r, c;
            if (trans_b) { c = idx / PW_BK; r = idx % PW_BK; }
            else         { r = idx / PW_BN; c = idx % PW_BN; }
            const int gk = k0 + r;
            const int gn = n0 + c;
            float v = 0.0f;
            if (gk < K && gn < N) {
                v = trans_b ? B[(long long)gn * K + gk] : B[(long long)gk * N + gn];
            }
            Bs[r][c] = to_tf32(v);
        }
        __syncthreads();

#pragma unroll
        for (int kk = 0; kk < PW_BK; kk += 8) {
            float a[2][4];
            float b[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int row = wm + i * 16 + g;
                a[i][0] = As[row][kk + t];
                a[i][1] = As[row + 8][kk + t];
                a[i][2] = As[row][kk + t + 4];
                a[i][3] = As[row + 8][kk + t + 4];
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int col = wn + j * 8 + g;
                b[j][0] = Bs[kk + t][col];
                b[j][1] = Bs[kk + t + 4][col];
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_tf32(acc[i][j], a[i], b[j]);
        }
        __syncthreads();
    }

    // Epilogue: each lane holds rows g and g + 8, columns 2t and 2t + 1 of
    // each 16 x 8 tile.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int row = m0 + wm + i * 16 + g + (r / 2) * 8;
                const int col = n0 + wn + j * 8 + 2 * t + (r % 2);
                if (row < M && col < N) {
                    float* out = C + (long long)row * N + col;
                    const float v = alpha * acc[i][j][r];
                    *out = beta == 0.0f ? v : v + beta * *out;
                }
            }
        }
    }
}
