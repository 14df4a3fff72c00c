// The linears: act_quant, and matrix-vector products in which each warp computes one output row for a tile of up
// to kTile activation rows, reading its weight row once per tile (decode-shaped: weights stream from HBM once per
// step). Block-scaled products accumulate as the reference's fp8_gemm does: each block's partial sum times the
// activation and weight scales, added in block order; only the order inside a partial differs from the CPU.
#include "backend/cuda/kernels.h"
#include "backend/cuda/numeric.cuh"

namespace dsv4::backend::cuda {
namespace {

constexpr int kWarps = 4;  // output rows per block
constexpr int kTile = 8;   // activation rows per pass over a weight row

__global__ void act_quant_kernel(const float *x, int64_t k, float *qx, float *qs) {
    __shared__ float red[32];
    const int64_t i = blockIdx.y, b = blockIdx.x, c = b * 128 + threadIdx.x;
    const float v = c < k ? x[i * k + c] : 0.0f;
    float amax = warp_max(fabsf(v));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
    const int e = pow2_scale_exponent(fmaxf(amax, Fp8Format::floor()), kFp8Max);
    if (c < k) qx[i * k + c] = fp8_e4m3_to_f32(quantize_value<Fp8Format>(v, exp2i(-e)));
    if (threadIdx.x == 0) qs[i * gridDim.x + b] = exp2i(e);
}

// FP8 128x128: lane l covers columns 4l..4l+3 of each 128-column block.
__device__ __forceinline__ void fp8_row(const float *qx, const float *qs, const int32_t *gather, int64_t t0, int nt,
                                        int64_t k, const uint8_t *wrow, const uint8_t *srow, float *acc) {
    const int lane = threadIdx.x & 31;
    const int64_t blocks = (k + 127) / 128;
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t c = b * 128 + 4 * lane;
        float w[4];
        for (int e = 0; e < 4; ++e) w[e] = c + e < k ? fp8_e4m3_to_f32(wrow[c + e]) : 0.0f;
        const float sw = e8m0_to_f32(srow[b]);
        for (int t = 0; t < nt; ++t) {
            const int64_t xr = gather ? gather[t0 + t] : t0 + t;
            const float *xv = qx + xr * k;
            float p = 0.0f;
            for (int e = 0; e < 4; ++e)
                if (c + e < k) p += xv[c + e] * w[e];
            p = warp_sum(p);
            acc[t] += p * qs[xr * blocks + b] * sw;
        }
    }
}

// FP4 per-32: lane l covers columns 4l..4l+3 of each 128-column block, so lanes 8g..8g+7 hold group g of the four.
__device__ __forceinline__ void fp4_row(const float *qx, const float *qs, const int32_t *gather, int64_t t0, int nt,
                                        int64_t k, const uint8_t *wrow, const uint8_t *srow, float *acc) {
    const int lane = threadIdx.x & 31;
    const int64_t blocks = k / 128;
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t c = b * 128 + 4 * lane;
        const uint8_t b0 = wrow[c / 2], b1 = wrow[c / 2 + 1];
        const float w[4] = {fp4_e2m1_to_f32(b0 & 15), fp4_e2m1_to_f32(b0 >> 4), fp4_e2m1_to_f32(b1 & 15),
                            fp4_e2m1_to_f32(b1 >> 4)};
        float sw[4];
        for (int g = 0; g < 4; ++g) sw[g] = e8m0_to_f32(srow[b * 4 + g]);
        for (int t = 0; t < nt; ++t) {
            const int64_t xr = gather ? gather[t0 + t] : t0 + t;
            const float *xv = qx + xr * k + c;
            float p = xv[0] * w[0] + xv[1] * w[1] + xv[2] * w[2] + xv[3] * w[3];
            for (int o = 1; o < 8; o <<= 1) p += __shfl_xor_sync(0xffffffffu, p, o);
            const float sa = qs[xr * (k / 128) + b];
            for (int g = 0; g < 4; ++g) acc[t] += __shfl_sync(0xffffffffu, p, 8 * g) * sa * sw[g];
        }
    }
}

template <bool Fp4>
__global__ void linear_block_scaled(const float *qx, const float *qs, const int32_t *gather, int64_t n, int64_t k,
                                    const uint8_t *w, const uint8_t *scale, int64_t rows, float *y) {
    const int64_t r = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
    if (r >= rows) return;
    const uint8_t *wrow = Fp4 ? w + r * (k / 2) : w + r * k;
    const uint8_t *srow = Fp4 ? scale + r * (k / 32) : scale + (r / 128) * ((k + 127) / 128);
    for (int64_t t0 = int64_t(blockIdx.y) * kTile; t0 < n; t0 += int64_t(gridDim.y) * kTile) {
        const int nt = int(n - t0 < kTile ? n - t0 : kTile);
        float acc[kTile] = {};
        if (Fp4) fp4_row(qx, qs, gather, t0, nt, k, wrow, srow, acc);
        else fp8_row(qx, qs, gather, t0, nt, k, wrow, srow, acc);
        if ((threadIdx.x & 31) == 0)
            for (int t = 0; t < nt; ++t) y[(t0 + t) * rows + r] = round_bf16(acc[t]);
    }
}

__global__ void linear_experts_kernel(const float *qx, const float *qs, const int32_t *gather, const int32_t *offset,
                                      ExpertTable w, float *y) {
    const int e = blockIdx.y;
    const int64_t first = offset[e], count = offset[e + 1] - first;
    const int64_t r = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
    if (count == 0 || r >= w.rows) return;
    const int64_t k = w.cols;
    const uint8_t *wrow = w.fp4 ? w.w[e] + r * (k / 2) : w.w[e] + r * k;
    const uint8_t *srow = w.fp4 ? w.scale[e] + r * (k / 32) : w.scale[e] + (r / 128) * ((k + 127) / 128);
    for (int64_t t0 = 0; t0 < count; t0 += kTile) {
        const int nt = int(count - t0 < kTile ? count - t0 : kTile);
        float acc[kTile] = {};
        if (w.fp4) fp4_row(qx, qs, gather, first + t0, nt, k, wrow, srow, acc);
        else fp8_row(qx, qs, gather, first + t0, nt, k, wrow, srow, acc);
        if ((threadIdx.x & 31) == 0)
            for (int t = 0; t < nt; ++t) y[(first + t0 + t) * w.rows + r] = round_bf16(acc[t]);
    }
}

// Plain fp32 dot products over a weight row decoded by Load (bf16, fp32, or FP8 times its scale); output row r of
// group r / rows_per_group reads x's columns [g·k, (g+1)·k) of rows `ldx` long.
template <typename Load>
__global__ void rowdot_kernel(const float *x, int64_t ldx, int64_t n, int64_t k, int64_t rows, int64_t rows_per_group,
                              Load load, float *y, bool round_out) {
    const int64_t r = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int lane = threadIdx.x & 31;
    const int64_t xoff = (r / rows_per_group) * k;
    for (int64_t t0 = int64_t(blockIdx.y) * kTile; t0 < n; t0 += int64_t(gridDim.y) * kTile) {
        const int nt = int(n - t0 < kTile ? n - t0 : kTile);
        float acc[kTile] = {};
        for (int64_t c = lane; c < k; c += 32) {
            const float wv = load(r, c);
            for (int t = 0; t < nt; ++t) acc[t] += x[(t0 + t) * ldx + xoff + c] * wv;
        }
        for (int t = 0; t < nt; ++t) {
            const float v = warp_sum(acc[t]);
            if (lane == 0) y[(t0 + t) * rows + r] = round_out ? round_bf16(v) : v;
        }
    }
}

struct LoadBf16 {
    const uint16_t *w;
    int64_t k;
    __device__ float operator()(int64_t r, int64_t c) const { return bf16_to_f32(w[r * k + c]); }
};
struct LoadF32 {
    const float *w;
    int64_t k;
    __device__ float operator()(int64_t r, int64_t c) const { return w[r * k + c]; }
};
struct LoadDequantFp8 {
    const uint8_t *w, *scale;
    int64_t k;
    __device__ float operator()(int64_t r, int64_t c) const {
        return fp8_e4m3_to_f32(w[r * k + c]) * e8m0_to_f32(scale[(r / 128) * ((k + 127) / 128) + c / 128]);
    }
};

dim3 grid_for(int64_t rows, int64_t n) {
    const int64_t tiles = (n + kTile - 1) / kTile;
    return dim3(unsigned((rows + kWarps - 1) / kWarps), unsigned(tiles < 1024 ? (tiles ? tiles : 1) : 1024));
}

}  // namespace

void act_quant(cudaStream_t s, const float *x, int64_t n, int64_t k, float *qx, float *qs) {
    if (n == 0) return;
    act_quant_kernel<<<dim3(unsigned((k + 127) / 128), unsigned(n)), 128, 0, s>>>(x, k, qx, qs);
}

void linear_fp8(cudaStream_t s, const float *qx, const float *qs, const int32_t *gather, int64_t n, int64_t k,
                const uint8_t *w, const uint8_t *scale, int64_t rows, float *y) {
    if (n == 0) return;
    linear_block_scaled<false><<<grid_for(rows, n), 32 * kWarps, 0, s>>>(qx, qs, gather, n, k, w, scale, rows, y);
}
void linear_fp4(cudaStream_t s, const float *qx, const float *qs, const int32_t *gather, int64_t n, int64_t k,
                const uint8_t *w, const uint8_t *scale, int64_t rows, float *y) {
    if (n == 0) return;
    linear_block_scaled<true><<<grid_for(rows, n), 32 * kWarps, 0, s>>>(qx, qs, gather, n, k, w, scale, rows, y);
}
void linear_experts(cudaStream_t s, const float *qx, const float *qs, const int32_t *gather, const int32_t *offset,
                    int n_experts, const ExpertTable &w, float *y) {
    const dim3 grid(unsigned((w.rows + kWarps - 1) / kWarps), unsigned(n_experts));
    linear_experts_kernel<<<grid, 32 * kWarps, 0, s>>>(qx, qs, gather, offset, w, y);
}
void linear_bf16w(cudaStream_t s, const float *x, int64_t n, int64_t k, const uint16_t *w, int64_t rows, float *y,
                  bool round_out) {
    if (n == 0) return;
    rowdot_kernel<<<grid_for(rows, n), 32 * kWarps, 0, s>>>(x, k, n, k, rows, rows, LoadBf16{w, k}, y, round_out);
}
void linear_f32w(cudaStream_t s, const float *x, int64_t n, int64_t k, const float *w, int64_t rows, float *y) {
    if (n == 0) return;
    rowdot_kernel<<<grid_for(rows, n), 32 * kWarps, 0, s>>>(x, k, n, k, rows, rows, LoadF32{w, k}, y, false);
}
void linear_dequant_fp8(cudaStream_t s, const float *x, int64_t n, const uint8_t *w, const uint8_t *scale,
                        int64_t rows, int64_t cols, int groups, float *y) {
    if (n == 0) return;
    rowdot_kernel<<<grid_for(rows, n), 32 * kWarps, 0, s>>>(x, cols * groups, n, cols, rows, rows / groups,
                                                           LoadDequantFp8{w, scale, cols}, y, true);
}

}  // namespace dsv4::backend::cuda
