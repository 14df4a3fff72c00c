// Device twins of core/numeric.h and core/ops.h: the same bit-level definitions (bf16 RNE, e4m3fn and e2m1 codes,
// e8m0 scales, power-of-two block scales, SLEEF's expf_u10), so that a step rounds on the GPU exactly where and as
// the CPU backend does. The parity harness (tests/backend) holds the two against each other. The CUDA code is
// compiled with -fmad=false: a product rounds before its sum, as in the reference.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace dsv4::backend::cuda {

constexpr float kFp8Max = 448.0f, kFp4Max = 6.0f;

__device__ __forceinline__ float bf16_to_f32(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }
__device__ __forceinline__ uint16_t f32_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}
__device__ __forceinline__ float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

__device__ __forceinline__ float exp2i(int e) {
    if (e < -126 || e > 127) return ldexpf(1.0f, e);
    return __uint_as_float(uint32_t(e + 127) << 23);
}
__device__ __forceinline__ float e8m0_to_f32(uint8_t code) { return code == 0xff ? __int_as_float(0x7fc00000) : exp2i(int(code) - 127); }
__device__ __forceinline__ uint8_t e8m0_from_exponent(int e) { return uint8_t(min(max(e, -127), 127) + 127); }

__device__ __forceinline__ float fp8_e4m3_to_f32(uint8_t c) {
    const int exp = (c >> 3) & 0xf, man = c & 7;
    float v;
    if (exp == 0xf && man == 7) v = __int_as_float(0x7fc00000);
    else if (exp == 0) v = float(man) * (1.0f / 512.0f);
    else v = (1.0f + float(man) * 0.125f) * exp2i(exp - 7);
    return (c & 0x80) ? -v : v;
}
__device__ __forceinline__ float fp4_e2m1_to_f32(uint8_t nibble) {
    const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    const float v = mag[nibble & 7];
    return (nibble & 8) ? -v : v;
}

// core::round_to_format: RNE onto `mantissa_bits` with minimum normal exponent `min_exp`, for a finite a >= 0.
__device__ __forceinline__ float round_to_format(float a, int mantissa_bits, int min_exp) {
    const int exp = max(int(__float_as_uint(a) >> 23) - 127, min_exp);
    const float c = exp2i(exp - mantissa_bits + 23) * 1.5f;
    return __fsub_rn(__fadd_rn(a, c), c);
}
__device__ __forceinline__ uint8_t f32_to_fp8_e4m3(float f) {
    const uint8_t sign = signbit(f) ? 0x80 : 0x00;
    if (isnan(f)) return uint8_t(sign | 0x7f);
    float a = fminf(fabsf(f), kFp8Max);
    a = fminf(round_to_format(a, 3, -6), kFp8Max);
    if (a < 0.015625f) return uint8_t(sign | uint8_t(a * 512.0f));
    const uint32_t bits = __float_as_uint(a);
    return uint8_t(sign | uint32_t(int(bits >> 23) - 127 + 7) << 3 | (bits >> 20 & 7));
}
__device__ __forceinline__ uint8_t f32_to_fp4_e2m1(float f) {
    const uint8_t sign = signbit(f) ? 0x8 : 0x0;
    float a = isnan(f) ? kFp4Max : fminf(fabsf(f), kFp4Max);
    a = fminf(round_to_format(a, 1, 0), kFp4Max);
    if (a < 1.0f) return uint8_t(sign | uint8_t(a * 2.0f));
    const uint32_t bits = __float_as_uint(a);
    return uint8_t(sign | uint32_t(int(bits >> 23) - 127 + 1) << 1 | (bits >> 22 & 1));
}
__device__ __forceinline__ int pow2_scale_exponent(float amax, float q_max) {
    const uint32_t bits = __float_as_uint(amax * (1.0f / q_max));
    int e = int((bits >> 23) & 0xff) - 127;
    if (bits & 0x7fffffu) ++e;
    return e;
}
// Block format traits (core::BlockFormat): FP8 q_max 448 and amax floor 1e-4; FP4 q_max 6 and floor 6·2^-126.
struct Fp8Format {
    static constexpr float q_max = kFp8Max;
    __device__ static float floor() { return 1e-4f; }
    __device__ static uint8_t encode(float v) { return f32_to_fp8_e4m3(v); }
    __device__ static float decode(uint8_t c) { return fp8_e4m3_to_f32(c); }
};
struct Fp4Format {
    static constexpr float q_max = kFp4Max;
    __device__ static float floor() { return 6.0f * 1.1754943508222875e-38f; }
    __device__ static uint8_t encode(float v) { return f32_to_fp4_e2m1(v); }
    __device__ static float decode(uint8_t c) { return fp4_e2m1_to_f32(c); }
};
template <typename F>
__device__ __forceinline__ uint8_t quantize_value(float x, float inv_s) {
    return F::encode(fminf(fmaxf(x * inv_s, -F::q_max), F::q_max));
}

// core::exp_sleef_u10 (PyTorch's vectorised CPU expf), for the mHC gates' sigmoid.
__device__ __forceinline__ float exp_sleef_u10(float d) {
    if (d < -104.0f) return 0.0f;
    if (d > 100.0f) return __int_as_float(0x7f800000);
    if (isnan(d)) return d;
    const int q = int(rintf(d * 1.442695040888963407359924681001892137426645954152985934135449406931f));
    const float qf = float(q);
    float s = fmaf(qf, -0.693145751953125f, d);
    s = fmaf(qf, -1.428606765330187045e-06f, s);
    float u = 0.000198527617612853646278381f;
    u = fmaf(u, s, 0.00139304355252534151077271f);
    u = fmaf(u, s, 0.00833336077630519866943359f);
    u = fmaf(u, s, 0.0416664853692054748535156f);
    u = fmaf(u, s, 0.166666671633720397949219f);
    u = fmaf(u, s, 0.5f);
    u = 1.0f + fmaf(s * s, u, s);
    return ldexpf(u, q);
}
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + exp_sleef_u10(-x)); }
// expf, cosf, sinf as the CPU's libm gives them: the double result rounded to float is the correctly rounded one
// (glibc's fp32 functions are correctly rounded in all but rare cases), where CUDA's own are off by up to 2 ulps.
__device__ __forceinline__ float exp_f32(float x) { return float(exp(double(x))); }
__device__ __forceinline__ float silu(float x) { return x / (1.0f + exp_f32(-x)); }
__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : float(log1p(double(exp_f32(x)))); }

// ---- reductions ---------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. `shared` holds 32.
template <typename T>
__device__ T block_sum(T v, T *shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    T total = 0;
    for (int w = 0; w < warps; ++w) total += shared[w];  // the same order in every thread
    return total;
}

// core::rms_factor: the fp32 mean of squares summed in double (correctly rounded in any order), correctly rounded
// rsqrt. Block-wide over x[0, n).
__device__ __forceinline__ float rms_factor_block(const float *x, int n, float eps, double *shared) {
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += double(x[i]) * double(x[i]);
    s = block_sum(s, shared);
    const float mean = float(s / double(n));
    return float(1.0 / sqrt(double(mean + eps)));
}

}  // namespace dsv4::backend::cuda
