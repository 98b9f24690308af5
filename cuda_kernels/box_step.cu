// The attack's projected step on a box, fused with best-iterate tracking: one pass over the
// (items, restarts, n) point tensors where the torch fallback makes about a dozen.
//
// Per element (item b, restart r, coordinate j), in this order:
//   if better[b,r]:  best_x = x,  best_g = g                 (the last evaluation improved)
//   if back[b,r]:    x = best_x,  x_prev = best_x,  g = best_g (step-size halving: back to the best)
//   z = clamp(x + -((sign(g) * t[b,r]) * radius[b,j]), lower[b,j], upper[b,j])
//   without momentum: out = z, written into g's buffer
//   with momentum a:  out = clamp(((x_prev * (a - 1)) + (x * (2 (1 - a)))) + (z * a), lower, upper),
//                     written into x_prev's buffer
// Every product and sum is rounded on its own (__fmul_rn / __fadd_rn: never contracted into an
// FMA), the order of the torch fallback in gpuopt/kernels/step.py, so both give the same bits.
// sign(g) is (g > 0) - (g < 0); clamp passes NaN through, as torch.clamp does.
//
// Point tensors are contiguous (items, restarts, n); t, better, back are (items, restarts);
// radius, lower, upper are (items, n). better/back are bytes (0 or 1), or null for "none".

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

template <typename T>
__device__ __forceinline__ T clamp_nan(T v, T lo, T hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

template <typename T>
__device__ void box_step(T* __restrict__ x, T* __restrict__ x_prev, T* __restrict__ g,
                         T* __restrict__ best_x, T* __restrict__ best_g,
                         const unsigned char* __restrict__ better, const unsigned char* __restrict__ back,
                         const T* __restrict__ t, const T* __restrict__ radius,
                         const T* __restrict__ lower, const T* __restrict__ upper,
                         long long items, long long restarts, long long n,
                         int momentum, T a_minus_1, T two_one_minus_a, T a) {
    long long total = items * restarts * n;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long j = i % n;
        long long br = i / n;             // b * restarts + r
        long long bj = (br / restarts) * n + j;
        T xi = x[i], gi = g[i];
        T bx = best_x[i];
        T bg = best_g ? best_g[i] : gi;
        if (better && better[br]) {
            bx = xi;
            best_x[i] = xi;
            if (best_g) { bg = gi; best_g[i] = gi; }
        }
        T xp = momentum ? x_prev[i] : xi;
        if (back && back[br]) {
            xi = bx;
            xp = bx;
            gi = bg;
            x[i] = bx;
        }
        T s = (T)((gi > (T)0) - (gi < (T)0));
        T lo = lower[bj], hi = upper[bj];
        T z = clamp_nan(add_rn(xi, -mul_rn(mul_rn(s, t[br]), radius[bj])), lo, hi);
        if (momentum) {
            T w = add_rn(add_rn(mul_rn(xp, a_minus_1), mul_rn(xi, two_one_minus_a)), mul_rn(z, a));
            x_prev[i] = clamp_nan(w, lo, hi);
        } else {
            g[i] = z;
        }
    }
}

// one entry point per precision, with C names for CuPy's RawModule
#define BOX_STEP_ENTRY(NAME, T)                                                                   \
    extern "C" __global__ void NAME(T* x, T* x_prev, T* g, T* best_x, T* best_g,                  \
                                    const unsigned char* better, const unsigned char* back,        \
                                    const T* t, const T* radius, const T* lower, const T* upper,   \
                                    long long items, long long restarts, long long n, int momentum, \
                                    T a_minus_1, T two_one_minus_a, T a) {                         \
        box_step<T>(x, x_prev, g, best_x, best_g, better, back, t, radius, lower, upper, items,    \
                    restarts, n, momentum, a_minus_1, two_one_minus_a, a);                         \
    }

BOX_STEP_ENTRY(box_step_f32, float)
BOX_STEP_ENTRY(box_step_f64, double)
