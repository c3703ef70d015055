// Optimizer updates, in place, element by element, with TensorFlow's
// formulas term for term (training_ops.cc), as the CPU kernels in
// kernels/src/ops/optim.rs. Every operation is an explicitly rounded
// intrinsic (no fused multiply-add contraction, IEEE division and square
// root), so a GPU step gives the same bits as the CPU's scalar loop.

// RMSProp (ApplyRMSProp):
//   ms  += (grad^2 - ms) * (1 - rho)
//   mom  = mom * momentum + grad * lr / sqrt(ms + epsilon)
//   var -= mom
extern "C" __global__ void apply_rmsprop(float* __restrict__ var,
                                         float* __restrict__ ms,
                                         float* __restrict__ mom,
                                         const float* __restrict__ grad,
                                         long long n,
                                         float lr, float rho, float momentum, float epsilon)
{
    const float one_minus_rho = __fsub_rn(1.0f, rho);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = grad[i];
        const float s = __fadd_rn(ms[i], __fmul_rn(__fsub_rn(__fmul_rn(g, g), ms[i]), one_minus_rho));
        const float step = __fdiv_rn(__fmul_rn(g, lr), __fsqrt_rn(__fadd_rn(s, epsilon)));
        const float m = __fadd_rn(__fmul_rn(mom[i], momentum), step);
        ms[i] = s;
        mom[i] = m;
        var[i] = __fsub_rn(var[i], m);
    }
}
