// Kernels of the MoE sub-layer: the sqrt-softplus router (biased top-k or hash table), the dispatch that groups
// the batch's rows by expert on the device, SwiGLU with the clamp, and the combine that sums each token's experts
// in expert-id order (backend/cpu/steps_moe.cpp).
#include "backend/cuda/kernels.h"
#include "backend/cuda/numeric.cuh"

namespace dsv4::backend::cuda {
namespace {

constexpr int kMaxTopk = 32;

// One warp per row: scores in place, then k rounds of arg-max over the biased scores (ties to the lower id).
__global__ void route_kernel(float *scores, int64_t n, int n_experts, int k, const float *bias, const int32_t *tid2eid,
                             const int32_t *tokens, float route_scale, int32_t *ids, float *weights) {
    const int64_t i = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (i >= n) return;
    const int lane = threadIdx.x & 31;
    float *s = scores + i * n_experts;
    for (int e = lane; e < n_experts; e += 32) s[e] = sqrtf(softplus(s[e]));
    __syncwarp();
    int32_t sel[kMaxTopk];
    if (tid2eid) {
        for (int j = 0; j < k; ++j) sel[j] = tid2eid[int64_t(tokens[i]) * k + j];
    } else {
        for (int j = 0; j < k; ++j) {
            float best = -INFINITY;
            int best_e = INT32_MAX;
            for (int e = lane; e < n_experts; e += 32) {
                bool taken = false;
                for (int q = 0; q < j; ++q) taken |= sel[q] == e;
                const float v = s[e] + bias[e];
                if (!taken && (v > best || (v == best && e < best_e))) {
                    best = v;
                    best_e = e;
                }
            }
            for (int o = 16; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, best, o);
                const int oe = __shfl_xor_sync(0xffffffffu, best_e, o);
                if (ov > best || (ov == best && oe < best_e)) {
                    best = ov;
                    best_e = oe;
                }
            }
            sel[j] = best_e;
        }
    }
    if (lane != 0) return;
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) sum += s[sel[j]];
    for (int j = 0; j < k; ++j) {
        ids[i * k + j] = sel[j];
        weights[i * k + j] = s[sel[j]] / sum * route_scale;
    }
}

// One block: thread e counts and then lists expert e's (token, slot) pairs, tokens ascending; a scan of the
// counts gives the offsets. Then thread i orders token i's rows by expert id.
__global__ void dispatch_kernel(const int32_t *ids, const float *weights, int64_t n, int k, int n_experts,
                                int32_t *offset, int32_t *gather, float *row_weight, int32_t *token_rows) {
    extern __shared__ int32_t counts[];  // n_experts + 1
    const int64_t pairs = n * k;
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) {
        int32_t c = 0;
        for (int64_t q = 0; q < pairs; ++q) c += ids[q] == e;
        counts[e] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t run = 0;
        for (int e = 0; e < n_experts; ++e) {
            const int32_t c = counts[e];
            counts[e] = run;
            offset[e] = run;
            run += c;
        }
        offset[n_experts] = run;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) {
        int32_t r = counts[e];
        for (int64_t q = 0; q < pairs; ++q)
            if (ids[q] == e) {
                gather[r] = int32_t(q / k);
                row_weight[r] = weights[q];
                ++r;
            }
    }
    __syncthreads();
    // token i's rows in expert-id order (slot order among equal ids): the sum order of spec §8.3
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        int32_t order[kMaxTopk], rank_row[kMaxTopk];
        for (int j = 0; j < k; ++j) order[j] = j;
        for (int a = 1; a < k; ++a)
            for (int b = a; b > 0 && ids[i * k + order[b]] < ids[i * k + order[b - 1]]; --b) {
                const int32_t t = order[b];
                order[b] = order[b - 1];
                order[b - 1] = t;
            }
        // the grouped row of (i, slot): its expert's first row plus the pairs of that expert before it
        for (int j = 0; j < k; ++j) {
            const int32_t e = ids[i * k + order[j]];
            int32_t r = offset[e];
            for (int64_t q = 0; q < i * k + order[j]; ++q) r += ids[q] == e;
            rank_row[j] = r;
        }
        for (int j = 0; j < k; ++j) token_rows[i * k + j] = rank_row[j];
    }
}

__global__ void swiglu_kernel(const float *g, const float *u, int64_t count, int64_t width, float limit,
                              const float *row_weight, float *a) {
    const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= count) return;
    float gv = g[e], uv = u[e];
    if (limit > 0) {
        uv = fminf(fmaxf(uv, -limit), limit);
        gv = fminf(gv, limit);
    }
    float v = silu(gv) * uv;
    if (row_weight) v = row_weight[e / width] * v;
    a[e] = round_bf16(v);
}

__global__ void combine_kernel(const float *out, const int32_t *token_rows, int64_t n, int k, int64_t dim,
                               const float *shared, float *y) {
    const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= n * dim) return;
    const int64_t i = e / dim, c = e % dim;
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) acc += out[int64_t(token_rows[i * k + j]) * dim + c];
    y[e] = round_bf16(acc + shared[e]);
}

}  // namespace

void route(cudaStream_t s, float *scores, int64_t n, int n_experts, int k, const float *bias, const int32_t *tid2eid,
           const int32_t *tokens, float route_scale, int32_t *ids, float *weights) {
    if (n) route_kernel<<<unsigned((n + 3) / 4), 128, 0, s>>>(scores, n, n_experts, k, bias, tid2eid, tokens,
                                                            route_scale, ids, weights);
}
void dispatch(cudaStream_t s, const int32_t *ids, const float *weights, int64_t n, int k, int n_experts,
              int32_t *offset, int32_t *gather, float *row_weight, int32_t *token_rows) {
    dispatch_kernel<<<1, 256, size_t(n_experts + 1) * sizeof(int32_t), s>>>(ids, weights, n, k, n_experts, offset,
                                                                          gather, row_weight, token_rows);
}
void swiglu(cudaStream_t s, const float *g, const float *u, int64_t n, int64_t width, float limit,
            const float *row_weight, float *a) {
    const int64_t count = n * width;
    if (count) swiglu_kernel<<<unsigned((count + 255) / 256), 256, 0, s>>>(g, u, count, width, limit, row_weight, a);
}
void combine_experts(cudaStream_t s, const float *out, const int32_t *token_rows, int64_t n, int k, int64_t dim,
                     const float *shared, float *y) {
    const int64_t count = n * dim;
    if (count) combine_kernel<<<unsigned((count + 255) / 256), 256, 0, s>>>(out, token_rows, n, k, dim, shared, y);
}

}  // namespace dsv4::backend::cuda
