// Kernels of the residual streams and of the per-row and per-head operations: embedding, mHC (hc_pre with
// Sinkhorn, hc_post, hc_head), RMSNorm, the query/indexer head operations (bf16 RMS scaling, RoPE, Hadamard, FP4
// simulation) and the KV path's finish. Each mirrors the CPU step of the same name (backend/cpu/steps_*.cpp).
#include "backend/cuda/kernels.h"
#include "backend/cuda/numeric.cuh"
#include "backend/cuda/rope.cuh"

namespace dsv4::backend::cuda {
namespace {

constexpr int kRowThreads = 256;
constexpr int kMaxHc = 8;

__global__ void embed_kernel(const uint16_t *table, int64_t dim, const int32_t *tokens, int hc, float *h) {
    const int64_t i = blockIdx.x;
    const uint16_t *src = table + int64_t(tokens[i]) * dim;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
        const float v = bf16_to_f32(src[j]);
        for (int k = 0; k < hc; ++k) h[(i * hc + k) * dim + j] = v;
    }
}

// x[c] = bf16(Σ_j pre_j · h_j[c]) written to x, then xn = RMSNorm(x) with `norm`.
__device__ void collapse_and_norm(const HcParams &p, const float *pre, const float *h, const float *norm, float *x,
                                  float *xn, double *red) {
    double sq = 0;
    for (int64_t c = threadIdx.x; c < p.dim; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < p.hc; ++j) acc += pre[j] * h[j * p.dim + c];
        const float v = round_bf16(acc);
        x[c] = v;
        sq += double(v) * double(v);
    }
    sq = block_sum(sq, red);
    const float mean = float(sq / double(p.dim));
    const float r = float(1.0 / sqrt(double(mean + p.norm_eps)));
    for (int64_t c = threadIdx.x; c < p.dim; c += blockDim.x) xn[c] = round_bf16(norm[c] * (x[c] * r));
}

__global__ void hc_pre_kernel(HcParams p, const float *base, const float *norm, const float *h, const float *mu,
                              float *mix, float *x, float *xn) {
    __shared__ double red[32];
    __shared__ float gates[(2 + kMaxHc) * kMaxHc];
    const int64_t i = blockIdx.x, width = p.hc * p.dim, n_mix = (2 + p.hc) * p.hc;
    const float *hi = h + i * width;
    const float rho = rms_factor_block(hi, int(width), p.norm_eps, red);
    if (threadIdx.x == 0) {
        const int hc = p.hc;
        float m[(2 + kMaxHc) * kMaxHc];
        for (int k = 0; k < n_mix; ++k) m[k] = mu[i * n_mix + k] * rho;
        float *pre = gates, *post = gates + hc, *C = gates + 2 * hc;
        for (int j = 0; j < hc; ++j) {
            pre[j] = sigmoid(p.scale[0] * m[j] + base[j]) + p.hc_eps;
            post[j] = 2.0f * sigmoid(p.scale[1] * m[hc + j] + base[hc + j]);
        }
        for (int k = 0; k < hc * hc; ++k) C[k] = p.scale[2] * m[2 * hc + k] + base[2 * hc + k];
        for (int j = 0; j < hc; ++j) {  // Sinkhorn (spec §3.1 step 4), as the CPU step
            float *row = C + j * hc, mx = -INFINITY, sum = 0.0f;
            for (int k = 0; k < hc; ++k) mx = fmaxf(mx, row[k]);
            for (int k = 0; k < hc; ++k) sum += (row[k] = exp_f32(row[k] - mx));
            for (int k = 0; k < hc; ++k) row[k] = row[k] / sum + p.hc_eps;
        }
        for (int it = 0; it < p.sinkhorn_iters; ++it) {
            if (it > 0)
                for (int j = 0; j < hc; ++j) {
                    float *row = C + j * hc, sum = 0.0f;
                    for (int k = 0; k < hc; ++k) sum += row[k];
                    for (int k = 0; k < hc; ++k) row[k] /= sum + p.hc_eps;
                }
            for (int k = 0; k < hc; ++k) {
                float sum = 0.0f;
                for (int j = 0; j < hc; ++j) sum += C[j * hc + k];
                for (int j = 0; j < hc; ++j) C[j * hc + k] /= sum + p.hc_eps;
            }
        }
        for (int k = 0; k < n_mix; ++k) mix[i * n_mix + k] = gates[k];
    }
    __syncthreads();
    collapse_and_norm(p, gates, hi, norm, x + i * p.dim, xn + i * p.dim, red);
}

__global__ void hc_head_kernel(HcParams p, const float *base, const float *norm, const float *h, const float *mu,
                               float *xn, float *x) {
    __shared__ double red[32];
    __shared__ float pre[kMaxHc];
    const int64_t i = blockIdx.x, width = p.hc * p.dim;
    const float *hi = h + i * width;
    const float rho = rms_factor_block(hi, int(width), p.norm_eps, red);
    if (threadIdx.x < p.hc) {
        const int j = threadIdx.x;
        pre[j] = sigmoid(p.scale[0] * (mu[i * p.hc + j] * rho) + base[j]) + p.hc_eps;
    }
    __syncthreads();
    collapse_and_norm(p, pre, hi, norm, x + i * p.dim, xn + i * p.dim, red);
}

__global__ void hc_post_kernel(int hc, int64_t dim, const float *mix, const float *y, const float *h, int64_t n,
                               float *out) {
    const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= n * hc * dim) return;
    const int64_t c = e % dim, k = (e / dim) % hc, i = e / (dim * hc);
    const int n_mix = (2 + hc) * hc;
    const float *post = mix + i * n_mix + hc, *C = post + hc;
    const float *hi = h + i * hc * dim;
    float acc = 0.0f;
    for (int j = 0; j < hc; ++j) acc += C[j * hc + k] * hi[j * dim + c];
    out[e] = round_bf16(post[k] * y[i * dim + c] + acc);
}

__global__ void gather_rows_kernel(const float *src, int64_t cols, const int32_t *rows, float *dst) {
    const float *s = src + int64_t(rows[blockIdx.x]) * cols;
    float *d = dst + int64_t(blockIdx.x) * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
}

__global__ void rms_norm_kernel(const float *x, int64_t cols, const float *w, float eps, float *y) {
    __shared__ double red[32];
    const float *xi = x + int64_t(blockIdx.x) * cols;
    float *yi = y + int64_t(blockIdx.x) * cols;
    const float r = rms_factor_block(xi, int(cols), eps, red);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) yi[c] = round_bf16(w[c] * (xi[c] * r));
}

// core::round_bf16_exact: the correctly rounded bf16 of a double.
__device__ float round_bf16_exact(double v) {
    if (v == 0.0 || isinf(v) || isnan(v)) return float(v);
    int e;
    frexp(v, &e);
    const double quantum = ldexp(1.0, e - 8);
    return float(rint(v / quantum) * quantum);
}

// One head per block, one thread per element (blockDim.x = dim, a multiple of 32).
__global__ void head_ops_kernel(float *x, int n_heads, int dim, const int32_t *positions, RopeTable rope,
                                HeadOps ops) {
    extern __shared__ float head[];
    __shared__ double red[32];
    __shared__ float amax[32];
    const int64_t ih = blockIdx.x;
    float *xh = x + ih * dim;
    const int t = threadIdx.x;
    head[t] = xh[t];
    if (ops.rms_scale) {  // core::head_rms_scale_bf16
        const float sq = round_bf16(head[t] * head[t]);
        const double sum = block_sum(double(sq), red);
        const float mean = round_bf16(float(sum / double(dim)));
        const float shifted = round_bf16(mean + ops.eps);
        const float r = round_bf16_exact(1.0 / sqrt(double(shifted)));
        head[t] = round_bf16(head[t] * r);
    }
    const int pos = positions[ih / n_heads];
    rope_block(head + dim - 2 * rope.pairs, pos, rope, false);
    if (ops.hadamard) hadamard_block(head, dim);
    if (ops.fp4_sim) simulate_block<Fp4Format>(head, dim, 32, amax);
    xh[t] = head[t];
}

// One row per block, one thread per element (blockDim.x = dim).
__global__ void kv_finish_kernel(const float *raw, int dim, int rope_dim, const float *norm, float eps,
                                 const int32_t *positions, RopeTable rope, float *kv) {
    extern __shared__ float row[];
    __shared__ double red[32];
    __shared__ float amax[32];
    const int64_t i = blockIdx.x;
    const float *ri = raw + i * dim;
    const int t = threadIdx.x;
    const float r = rms_factor_block(ri, dim, eps, red);
    row[t] = round_bf16(norm[t] * (ri[t] * r));
    rope_block(row + dim - rope_dim, positions[i], rope, false);
    // FP8 simulation of the nope dims in blocks of 64 (threads past them take no part but the barriers)
    simulate_block<Fp8Format>(row, dim - rope_dim, 64, amax);
    kv[i * dim + t] = row[t];
}

__global__ void scale_bf16_kernel(float *y, int64_t count, float scale) {
    const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e < count) y[e] = round_bf16(y[e] * scale);
}

__global__ void add_streams_kernel(const float *a, const float *b, int64_t n, int hc, int64_t dim, float *out) {
    const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= n * hc * dim) return;
    const int64_t c = e % dim, i = e / (dim * hc);
    out[e] = round_bf16(a[i * dim + c] + b[e]);
}

unsigned blocks_for(int64_t count, int threads) { return unsigned((count + threads - 1) / threads); }

}  // namespace

void embed(cudaStream_t s, const uint16_t *table, int64_t dim, const int32_t *tokens, int64_t n, int hc, float *h) {
    if (n) embed_kernel<<<unsigned(n), kRowThreads, 0, s>>>(table, dim, tokens, hc, h);
}
void hc_pre(cudaStream_t s, const HcParams &p, const float *base, const float *norm, const float *h, const float *mu,
            int64_t n, float *mix, float *x, float *xn) {
    if (n) hc_pre_kernel<<<unsigned(n), kRowThreads, 0, s>>>(p, base, norm, h, mu, mix, x, xn);
}
void hc_post(cudaStream_t s, int hc, int64_t dim, const float *mix, const float *y, const float *h, int64_t n,
             float *out) {
    const int64_t count = n * hc * dim;
    if (count) hc_post_kernel<<<blocks_for(count, 256), 256, 0, s>>>(hc, dim, mix, y, h, n, out);
}
void hc_head(cudaStream_t s, const HcParams &p, const float *base, const float *norm, const float *h,
             const float *mu, int64_t n, float *xn, float *x) {
    if (n) hc_head_kernel<<<unsigned(n), kRowThreads, 0, s>>>(p, base, norm, h, mu, xn, x);
}
void gather_rows(cudaStream_t s, const float *src, int64_t cols, const int32_t *rows, int64_t n, float *dst) {
    if (n) gather_rows_kernel<<<unsigned(n), kRowThreads, 0, s>>>(src, cols, rows, dst);
}
void rms_norm_rows(cudaStream_t s, const float *x, int64_t n, int64_t cols, const float *w, float eps, float *y) {
    if (n) rms_norm_kernel<<<unsigned(n), kRowThreads, 0, s>>>(x, cols, w, eps, y);
}
void head_ops(cudaStream_t s, float *x, int64_t n, int n_heads, int dim, const int32_t *positions,
              const RopeTable &rope, const HeadOps &ops) {
    if (n) head_ops_kernel<<<unsigned(n * n_heads), dim, size_t(dim) * sizeof(float), s>>>(x, n_heads, dim, positions,
                                                                                           rope, ops);
}
void kv_finish(cudaStream_t s, const float *raw, int64_t n, int dim, int rope_dim, const float *norm, float eps,
               const int32_t *positions, const RopeTable &rope, float *kv) {
    if (n) kv_finish_kernel<<<unsigned(n), dim, size_t(dim) * sizeof(float), s>>>(raw, dim, rope_dim, norm, eps,
                                                                                 positions, rope, kv);
}
void scale_bf16(cudaStream_t s, float *y, int64_t count, float scale) {
    if (count) scale_bf16_kernel<<<blocks_for(count, 256), 256, 0, s>>>(y, count, scale);
}
void add_streams(cudaStream_t s, const float *a, const float *b, int64_t n, int hc, int64_t dim, float *out) {
    const int64_t count = n * hc * dim;
    if (count) add_streams_kernel<<<blocks_for(count, 256), 256, 0, s>>>(a, b, n, hc, dim, out);
}

}  // namespace dsv4::backend::cuda
