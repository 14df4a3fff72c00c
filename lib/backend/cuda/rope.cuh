// core::Rope::apply on the device, and core::hadamard_bf16 over a block's shared row.
#pragma once
#include "backend/cuda/kernels.h"
#include "backend/cuda/numeric.cuh"

namespace dsv4::backend::cuda {

// Pair i of x (x[2i], x[2i+1]) rotated by pos·θ_i (conjugate if inverse), fp32 math, bf16 results.
__device__ __forceinline__ void rope_pair(float *x, int i, int pos, const RopeTable &r, bool inverse) {
    const float angle = float(pos) * r.theta[i];
    const float c = float(cos(double(angle))), sn = float(sin(double(angle)));
    const float s = inverse ? -sn : sn;
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = round_bf16(a * c - b * s);
    x[2 * i + 1] = round_bf16(a * s + b * c);
}
// Every pair of x (shared memory), spread over the block. Ends with a barrier.
__device__ __forceinline__ void rope_block(float *x, int pos, const RopeTable &r, bool inverse) {
    __syncthreads();
    for (int i = threadIdx.x; i < r.pairs; i += blockDim.x) rope_pair(x, i, pos, r, inverse);
    __syncthreads();
}

// y = bf16(H_n · x / sqrt(n)), Sylvester order, fp32 butterflies, over shared x[0, n). Ends with a barrier.
__device__ __forceinline__ void hadamard_block(float *x, int n) {
    __syncthreads();
    for (int h = 1; h < n; h *= 2) {
        for (int p = threadIdx.x; p < n / 2; p += blockDim.x) {
            const int i = (p / h) * 2 * h + p % h;
            const float a = x[i], b = x[i + h];
            x[i] = a + b;
            x[i + h] = a - b;
        }
        __syncthreads();
    }
    const float scale = 1.0f / sqrtf(float(n));
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = round_bf16(x[i] * scale);
    __syncthreads();
}

// The scale exponent of the block holding this thread's element of shared x[0, n), blocks of `block` (32 or 64), one
// thread per element (blockDim.x >= n): a warp's amax, combined across the block's warps through `amax`
// (n / block floats). Every thread takes part in the barriers; threads past n get 0.
template <typename F>
__device__ __forceinline__ int block_exponent(const float *x, int n, int block, float *amax) {
    __syncthreads();
    const int i = threadIdx.x;
    for (int b = i; b < n / block; b += blockDim.x) amax[b] = 0.0f;
    __syncthreads();
    const float v = warp_max(i < n ? fabsf(x[i]) : 0.0f);
    if (i < n && (i & 31) == 0) atomicMax(reinterpret_cast<int *>(&amax[i / block]), __float_as_int(v));
    __syncthreads();
    return i < n ? pow2_scale_exponent(fmaxf(amax[i / block], F::floor()), F::q_max) : 0;
}

// core::simulate_blocks over shared x[0, n): x = bf16(decode(encode(x / s)) · s). Ends with a barrier.
template <typename F>
__device__ __forceinline__ void simulate_block(float *x, int n, int block, float *amax) {
    const int e = block_exponent<F>(x, n, block, amax);
    const int i = threadIdx.x;
    if (i < n) x[i] = round_bf16(F::decode(quantize_value<F>(x[i], exp2i(-e))) * exp2i(e));
    __syncthreads();
}

// core::quantize_blocks of shared x[0, n) into codes (one per element) and the blocks' scale exponents.
template <typename F>
__device__ __forceinline__ void quantize_block(const float *x, int n, int block, float *amax, uint8_t *codes,
                                               int8_t *exps) {
    const int e = block_exponent<F>(x, n, block, amax);
    const int i = threadIdx.x;
    if (i < n) {
        codes[i] = quantize_value<F>(x[i], exp2i(-e));
        if (i % block == 0) exps[i / block] = int8_t(e);
    }
    __syncthreads();
}

}  // namespace dsv4::backend::cuda
