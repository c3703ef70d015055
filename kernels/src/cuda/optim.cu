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

// Gradient descent (ApplyGradientDescent): var -= grad * lr.
extern "C" __global__ void apply_gradient_descent(float* __restrict__ var,
                                                  const float* __restrict__ grad,
                                                  long long n, float lr)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        var[i] = __fsub_rn(var[i], __fmul_rn(grad[i], lr));
    }
}

// Momentum (ApplyMomentum): accum = accum * momentum + grad, then
//   var -= accum * lr                                  (nesterov == 0)
//   var -= grad * lr + accum * momentum * lr           (nesterov != 0)
extern "C" __global__ void apply_momentum(float* __restrict__ var,
                                          float* __restrict__ accum,
                                          const float* __restrict__ grad,
                                          long long n, float lr, float momentum,
                                          int nesterov)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = grad[i];
        const float a = __fadd_rn(__fmul_rn(accum[i], momentum), g);
        accum[i] = a;
        const float step = nesterov
            ? __fadd_rn(__fmul_rn(g, lr), __fmul_rn(__fmul_rn(a, momentum), lr))
            : __fmul_rn(a, lr);
        var[i] = __fsub_rn(var[i], step);
    }
}

// Adam (ApplyAdam), alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t) computed
// on the host in f32 as the CPU does:
//   m += (grad - m) * (1 - beta1);  v += (grad^2 - v) * (1 - beta2)
//   var -= m * alpha / (sqrt(v) + epsilon)                       (nesterov == 0)
//   var -= (grad * (1 - beta1) + beta1 * m) * alpha / (sqrt(v) + epsilon)
extern "C" __global__ void apply_adam(float* __restrict__ var,
                                      float* __restrict__ m,
                                      float* __restrict__ v,
                                      const float* __restrict__ grad,
                                      long long n, float alpha, float beta1, float beta2,
                                      float epsilon, int nesterov)
{
    const float one_minus_b1 = __fsub_rn(1.0f, beta1);
    const float one_minus_b2 = __fsub_rn(1.0f, beta2);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = grad[i];
        const float mi = __fadd_rn(m[i], __fmul_rn(__fsub_rn(g, m[i]), one_minus_b1));
        const float vi = __fadd_rn(v[i], __fmul_rn(__fsub_rn(__fmul_rn(g, g), v[i]), one_minus_b2));
        m[i] = mi;
        v[i] = vi;
        const float num = nesterov
            ? __fadd_rn(__fmul_rn(g, one_minus_b1), __fmul_rn(beta1, mi))
            : mi;
        const float step = __fdiv_rn(__fmul_rn(num, alpha), __fadd_rn(__fsqrt_rn(vi), epsilon));
        var[i] = __fsub_rn(var[i], step);
    }
}
