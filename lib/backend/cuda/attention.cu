// Kernels of the attention sub-layer: sparse attention with sink over the window ring and the compressed entries
// (read in their cache layout), the lightning indexer's scores over the FP4 keys, a top-k, and the compressors'
// row staging and entry emission. Each mirrors the CPU step (backend/cpu/steps_attention.cpp, cpu/common.h).
#include <climits>

#include "backend/cuda/kernels.h"
#include "backend/cuda/numeric.cuh"
#include "backend/cuda/rope.cuh"

namespace dsv4::backend::cuda {
namespace {

constexpr int kChunk = 64;          // rows per online-softmax chunk (cpu::kAttentionChunk)
constexpr int kAttnThreads = 128;
constexpr int kMaxDimPerThread = 8;  // head_dim <= 1024

enum RowKind : uint8_t { kInvalid, kRing, kBatch, kEntry };

// Element t of a KV row: the ring's bf16, the batch's bf16-valued fp32, or a cache entry (e4m3 · e8m0 per 64,
// rounded to bf16 as Primitives::decode_kv_entries does, then the bf16 rope dims).
__device__ __forceinline__ float kv_value(uint8_t kind, const void *ptr, int t, int nope) {
    if (kind == kRing) return bf16_to_f32(static_cast<const uint16_t *>(ptr)[t]);
    if (kind == kBatch) return static_cast<const float *>(ptr)[t];
    const uint8_t *e = static_cast<const uint8_t *>(ptr);
    if (t < nope) return round_bf16(fp8_e4m3_to_f32(e[t]) * e8m0_to_f32(e[nope + t / 64]));
    const uint8_t *r = e + nope + nope / 64 + 2 * (t - nope);
    return bf16_to_f32(uint16_t(r[0] | (r[1] << 8)));
}

__device__ __forceinline__ const uint8_t *page_entry(const uint8_t *const *pages, int64_t per_page, int64_t bytes,
                                                     int64_t j) {
    return pages[j / per_page] + (j % per_page) * bytes;
}

__global__ void sparse_attention_kernel(AttentionParams p, const SpanDesc *spans, const int32_t *row_span,
                                        const int32_t *positions, const float *q, const float *kv,
                                        const int32_t *topk, int64_t topk_cols, const float *sink, RopeTable rope,
                                        float *o) {
    extern __shared__ float qh[];  // head_dim, then the output row
    __shared__ float scores[kChunk];
    __shared__ const void *row_ptr[kChunk];
    __shared__ uint8_t row_kind[kChunk];
    __shared__ float s_alpha, s_total;
    __shared__ int s_skip;
    const int64_t i = blockIdx.x;
    const int h = blockIdx.y, d = p.head_dim, nope = d - p.rope_dim, W = p.window;
    const SpanDesc span = spans[row_span[i]];
    const int pos = positions[i];
    const int w0 = max(0, pos - W + 1), window_valid = pos - w0 + 1;
    int64_t n_entries = 0;
    const int32_t *sel = topk + i * topk_cols;
    if (p.ratio == 4) {
        while (n_entries < topk_cols && sel[n_entries] >= 0) ++n_entries;
    } else if (p.ratio) {
        n_entries = (pos + 1) / p.ratio;
    }
    const int64_t n_rows = W + n_entries;
    for (int t = threadIdx.x; t < d; t += blockDim.x) qh[t] = q[(i * p.n_heads + h) * d + t];
    float acc[kMaxDimPerThread] = {};
    float m = -INFINITY, l = 0.0f;  // thread 0's
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t c0 = 0; c0 < n_rows; c0 += kChunk) {
        __syncthreads();
        if (threadIdx.x < kChunk) {
            const int64_t j = c0 + threadIdx.x;
            uint8_t kind = kInvalid;
            const void *ptr = nullptr;
            if (j < W) {
                if (j < window_valid) {
                    const int64_t pp = w0 + j;
                    if (pp >= span.start_pos) {
                        kind = kBatch;
                        ptr = kv + (span.row0 + pp - span.start_pos) * d;
                    } else {
                        kind = kRing;
                        ptr = span.window + (pp % span.window_capacity) * d;
                    }
                }
            } else if (j < n_rows) {
                const int64_t e = p.ratio == 4 ? sel[j - W] : j - W;
                kind = kEntry;
                ptr = page_entry(span.kv_pages, p.entries_per_page, p.kv_entry_bytes, e);
            }
            row_kind[threadIdx.x] = kind;
            row_ptr[threadIdx.x] = ptr;
        }
        __syncthreads();
        for (int jj = warp; jj < kChunk; jj += kAttnThreads / 32) {
            const uint8_t kind = row_kind[jj];
            float dot = 0.0f;
            if (kind != kInvalid)
                for (int t = lane; t < d; t += 32) dot += qh[t] * kv_value(kind, row_ptr[jj], t, nope);
            dot = warp_sum(dot);
            if (lane == 0) scores[jj] = kind != kInvalid ? dot * p.scale : -INFINITY;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float chunk_max = -INFINITY;
            for (int jj = 0; jj < kChunk; ++jj) chunk_max = fmaxf(chunk_max, scores[jj]);
            s_skip = fmaxf(m, chunk_max) == -INFINITY;
            if (!s_skip) {
                const float m_new = fmaxf(m, chunk_max);
                const float alpha = m == -INFINITY ? 0.0f : exp_f32(m - m_new);
                l *= alpha;
                for (int jj = 0; jj < kChunk; ++jj) {
                    if (row_kind[jj] == kInvalid) continue;
                    const float prob = exp_f32(scores[jj] - m_new);
                    l += prob;
                    scores[jj] = round_bf16(prob);  // P is bf16 in the P·V product
                }
                m = m_new;
                s_alpha = alpha;
            }
        }
        __syncthreads();
        if (s_skip) continue;
        const float alpha = s_alpha;
        for (int k = 0; k < kMaxDimPerThread; ++k) acc[k] *= alpha;
        for (int jj = 0; jj < kChunk; ++jj) {
            const uint8_t kind = row_kind[jj];
            if (kind == kInvalid) continue;
            const float pj = scores[jj];
            for (int k = 0; k < kMaxDimPerThread; ++k) {
                const int t = threadIdx.x + k * kAttnThreads;
                if (t < d) acc[k] += pj * kv_value(kind, row_ptr[jj], t, nope);
            }
        }
    }
    if (threadIdx.x == 0) s_total = l + exp_f32(sink[h] - m);
    __syncthreads();
    float *out = qh + d;
    for (int k = 0; k < kMaxDimPerThread; ++k) {
        const int t = threadIdx.x + k * kAttnThreads;
        if (t < d) out[t] = round_bf16(acc[k] / s_total);
    }
    // values carry their key's rotation: de-rotate at the query position (spec §4.6)
    rope_block(out + nope, pos, rope, true);
    for (int t = threadIdx.x; t < d; t += blockDim.x) o[(i * p.n_heads + h) * d + t] = out[t];
}

// One warp per key, lanes over 4 dims each; the query's heads in shared memory.
constexpr int kScoreWarps = 8, kScoreKeysPerWarp = 8;
__global__ void index_scores_kernel(AttentionParams p, const SpanDesc *spans, const int32_t *row_span,
                                    const int32_t *positions, const float *qI, const float *omega, int n_heads,
                                    int dim, float *scores, int64_t ld) {
    extern __shared__ float qs[];  // [n_heads, dim], then omega [n_heads]
    const int64_t i = blockIdx.y;
    const SpanDesc span = spans[row_span[i]];
    const int64_t n_avail = (positions[i] + 1) / p.ratio;
    const int64_t j0 = int64_t(blockIdx.x) * kScoreWarps * kScoreKeysPerWarp;
    if (j0 >= ld) return;
    for (int t = threadIdx.x; t < n_heads * dim; t += blockDim.x) qs[t] = qI[i * n_heads * dim + t];
    for (int t = threadIdx.x; t < n_heads; t += blockDim.x) qs[n_heads * dim + t] = omega[i * n_heads + t];
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int kk = 0; kk < kScoreKeysPerWarp; ++kk) {
        const int64_t j = j0 + warp * kScoreKeysPerWarp + kk;
        if (j >= ld) break;
        if (j >= n_avail) {
            if (lane == 0) scores[i * ld + j] = -INFINITY;
            continue;
        }
        const uint8_t *e = page_entry(span.index_pages, p.entries_per_page, p.index_entry_bytes, j);
        float key[4] = {0, 0, 0, 0};
        const int c = 4 * lane;
        if (c < dim) {
            const float sc = e8m0_to_f32(e[dim / 2 + c / 32]);
            const uint8_t b0 = e[c / 2], b1 = e[c / 2 + 1];
            key[0] = fp4_e2m1_to_f32(b0 & 15) * sc;
            key[1] = fp4_e2m1_to_f32(b0 >> 4) * sc;
            key[2] = fp4_e2m1_to_f32(b1 & 15) * sc;
            key[3] = fp4_e2m1_to_f32(b1 >> 4) * sc;
        }
        float total = 0.0f;
        for (int hh = 0; hh < n_heads; ++hh) {
            float dot = 0.0f;
            if (c < dim)
                for (int u = 0; u < 4; ++u) dot += qs[hh * dim + c + u] * key[u];
            dot = warp_sum(dot);
            total += round_bf16(fmaxf(round_bf16(dot), 0.0f) * qs[n_heads * dim + hh]);
        }
        if (lane == 0) scores[i * ld + j] = round_bf16(total);
    }
}

// Scores as ordered keys: a larger float gives a larger key; zeros of both signs compare equal, as floats do.
__device__ __forceinline__ uint32_t order_key(float f) {
    if (f == 0.0f) f = 0.0f;
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ bool before(uint32_t ka, int32_t ia, uint32_t kb, int32_t ib) {
    return ka > kb || (ka == kb && ia < ib);
}

constexpr int kTopkThreads = 512;
// Radix select of the k-th largest key (8 bits a pass), then the keys above it and the lowest-index ties, then a
// bitonic sort of the k in shared memory.
__global__ void topk_kernel(const float *scores, int64_t ld, const int32_t *positions, int ratio, int64_t n_fixed,
                            int k, int sort_size, int32_t *out, int64_t out_ld) {
    extern __shared__ uint32_t sm[];
    uint32_t *keys = sm;
    int32_t *idx = reinterpret_cast<int32_t *>(sm + sort_size);
    __shared__ uint32_t hist[256];
    __shared__ uint32_t s_prefix, s_remaining;
    __shared__ int s_count, s_warp[kTopkThreads / 32];
    const int64_t row = blockIdx.x;
    int64_t n = positions ? (positions[row] + 1) / ratio : n_fixed;
    n = min(n, ld);
    const float *sr = scores + row * ld;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int count;
    if (n <= k) {
        for (int64_t j = tid; j < n; j += blockDim.x) {
            keys[j] = order_key(sr[j]);
            idx[j] = int32_t(j);
        }
        count = int(n);
    } else {
        uint32_t prefix = 0, mask = 0, remaining = uint32_t(k);
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int b = tid; b < 256; b += blockDim.x) hist[b] = 0;
            __syncthreads();
            for (int64_t j = tid; j < n; j += blockDim.x) {
                const uint32_t key = order_key(sr[j]);
                if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
            }
            __syncthreads();
            if (tid == 0) {
                for (int b = 255; b >= 0; --b) {
                    if (hist[b] >= remaining) {
                        prefix |= uint32_t(b) << shift;
                        break;
                    }
                    remaining -= hist[b];
                }
                s_prefix = prefix;
                s_remaining = remaining;
            }
            __syncthreads();
            prefix = s_prefix;
            remaining = s_remaining;
            mask |= 255u << shift;
        }
        const uint32_t threshold = prefix;
        const int above = k - int(remaining);
        if (tid == 0) s_count = 0;
        __syncthreads();
        for (int64_t j = tid; j < n; j += blockDim.x) {
            const uint32_t key = order_key(sr[j]);
            if (key > threshold) {
                const int slot = atomicAdd(&s_count, 1);
                keys[slot] = key;
                idx[slot] = int32_t(j);
            }
        }
        // ties at the threshold: the lowest indices, in index order
        int base = 0;
        for (int64_t j0 = 0; j0 < n && base < int(remaining); j0 += blockDim.x) {
            const int64_t j = j0 + tid;
            const bool eq = j < n && order_key(sr[j]) == threshold;
            const unsigned ballot = __ballot_sync(0xffffffffu, eq);
            if (lane == 0) s_warp[warp] = __popc(ballot);
            __syncthreads();
            int rank = base + __popc(ballot & ((1u << lane) - 1u));
            int chunk_total = 0;
            for (int w = 0; w < int(blockDim.x >> 5); ++w) {
                if (w < warp) rank += s_warp[w];
                chunk_total += s_warp[w];
            }
            if (eq && rank < int(remaining)) {
                keys[above + rank] = threshold;
                idx[above + rank] = int32_t(j);
            }
            base += chunk_total;
            __syncthreads();
        }
        count = k;
    }
    __syncthreads();
    for (int j = count + tid; j < sort_size; j += blockDim.x) {
        keys[j] = 0;
        idx[j] = INT_MAX;
    }
    __syncthreads();
    for (int size = 2; size <= sort_size; size <<= 1)
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            for (int t = tid; t < sort_size / 2; t += blockDim.x) {
                const int a = 2 * stride * (t / stride) + t % stride, b = a + stride;
                const bool forward = (a & size) == 0;
                const bool ordered = before(keys[a], idx[a], keys[b], idx[b]);
                if (ordered != forward) {
                    const uint32_t kt = keys[a];
                    keys[a] = keys[b];
                    keys[b] = kt;
                    const int32_t it = idx[a];
                    idx[a] = idx[b];
                    idx[b] = it;
                }
            }
            __syncthreads();
        }
    for (int j = tid; j < k; j += blockDim.x) out[row * out_ld + j] = j < count ? idx[j] : -1;
}

__global__ void compressor_rows_kernel(const float *a, const float *z, const float *ape, const int32_t *positions,
                                       int64_t n, int width, int ratio, float *staged) {
    const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= n * 2 * width) return;
    const int64_t i = e / (2 * width);
    const int c = int(e % (2 * width));
    staged[e] = c < width ? a[i * width + c]
                          : z[i * width + c - width] + ape[int64_t(positions[i] % ratio) * width + c - width];
}

// One emission per block, one thread per channel (blockDim.x = out_dim).
__global__ void compressor_emit_kernel(CompressParams p, const Emission *emissions, const Slot *slots,
                                       const float *norm, RopeTable rope, float *values_out) {
    extern __shared__ float x[];  // out_dim
    __shared__ double red[32];
    __shared__ float amax[32];
    __shared__ uint8_t codes[1024];
    __shared__ int8_t exps[64];
    const Emission em = emissions[blockIdx.x];
    const int ch = threadIdx.x, c = p.out_dim;
    const Slot *sl = slots + em.slot0;
    // softmax over the slots per channel, then the weighted sum (spec §5.3), in slot order
    float mx = -INFINITY;
    for (int k = 0; k < em.n_slots; ++k) mx = fmaxf(mx, sl[k].row[p.width + sl[k].channel_offset + ch]);
    float sum = 0.0f;
    for (int k = 0; k < em.n_slots; ++k) sum += exp_f32(sl[k].row[p.width + sl[k].channel_offset + ch] - mx);
    float acc = 0.0f;
    for (int k = 0; k < em.n_slots; ++k)
        acc += (exp_f32(sl[k].row[p.width + sl[k].channel_offset + ch] - mx) / sum) * sl[k].row[sl[k].channel_offset + ch];
    x[ch] = round_bf16(acc);
    __syncthreads();
    const float r = rms_factor_block(x, c, p.eps, red);
    const float normed = round_bf16(norm[ch] * (x[ch] * r));
    __syncthreads();
    x[ch] = normed;
    rope_block(x + c - p.rope_dim, em.pos, rope, false);
    uint8_t *entry = em.entry;
    if (p.index) {
        hadamard_block(x, c);
        simulate_block<Fp4Format>(x, c, 32, amax);
        quantize_block<Fp4Format>(x, c, 32, amax, codes, exps);
        if (ch < c / 2) entry[ch] = uint8_t(codes[2 * ch] | (codes[2 * ch + 1] << 4));
        if (ch < c / 32) entry[c / 2 + ch] = e8m0_from_exponent(exps[ch]);
    } else {
        const int nope = c - p.rope_dim;
        simulate_block<Fp8Format>(x, nope, 64, amax);
        quantize_block<Fp8Format>(x, nope, 64, amax, codes, exps);
        if (ch < nope) entry[ch] = codes[ch];
        if (ch < nope / 64) entry[nope + ch] = e8m0_from_exponent(exps[ch]);
        if (ch >= nope) {
            const uint16_t bits = f32_to_bf16(x[ch]);
            uint8_t *dst = entry + nope + nope / 64 + 2 * (ch - nope);
            dst[0] = uint8_t(bits & 0xff);
            dst[1] = uint8_t(bits >> 8);
        }
    }
    if (values_out) values_out[int64_t(em.out_row) * c + ch] = x[ch];
}

__global__ void scatter_rows_kernel(const float *src, int64_t cols, const int32_t *rows, void *const *dst,
                                    bool to_bf16) {
    const float *s = src + int64_t(rows[blockIdx.x]) * cols;
    void *d = dst[blockIdx.x];
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        if (to_bf16) static_cast<uint16_t *>(d)[c] = f32_to_bf16(s[c]);
        else static_cast<float *>(d)[c] = s[c];
    }
}

}  // namespace

void sparse_attention(cudaStream_t s, const AttentionParams &p, const SpanDesc *spans, const int32_t *row_span,
                      const int32_t *positions, int64_t N, const float *q, const float *kv, const int32_t *topk,
                      int64_t topk_cols, const float *sink, const RopeTable &rope, float *o) {
    if (N == 0) return;
    const dim3 grid(unsigned(N), unsigned(p.n_heads));
    sparse_attention_kernel<<<grid, kAttnThreads, 2 * size_t(p.head_dim) * sizeof(float), s>>>(
        p, spans, row_span, positions, q, kv, topk, topk_cols, sink, rope, o);
}

void index_scores(cudaStream_t s, const AttentionParams &p, const SpanDesc *spans, const int32_t *row_span,
                  const int32_t *positions, int64_t N, const float *qI, const float *omega, int n_heads, int dim,
                  float *scores, int64_t ld) {
    if (N == 0 || ld == 0) return;
    const int64_t per_block = kScoreWarps * kScoreKeysPerWarp;
    const dim3 grid(unsigned((ld + per_block - 1) / per_block), unsigned(N));
    const size_t smem = (size_t(n_heads) * dim + n_heads) * sizeof(float);
    index_scores_kernel<<<grid, 32 * kScoreWarps, smem, s>>>(p, spans, row_span, positions, qI, omega, n_heads, dim,
                                                             scores, ld);
}

void topk_rows(cudaStream_t s, const float *scores, int64_t ld, int64_t rows, const int32_t *positions, int ratio,
               int64_t n, int k, int32_t *out, int64_t out_ld) {
    if (rows == 0 || k == 0) return;
    int sort_size = 1;
    while (sort_size < k) sort_size <<= 1;
    const size_t smem = size_t(sort_size) * 8;
    topk_kernel<<<unsigned(rows), kTopkThreads, smem, s>>>(scores, ld, positions, ratio, n, k, sort_size, out, out_ld);
}

void compressor_rows(cudaStream_t s, const float *a, const float *z, const float *ape, const int32_t *positions,
                     int64_t n, int width, int ratio, float *staged) {
    const int64_t count = n * 2 * width;
    if (count) compressor_rows_kernel<<<unsigned((count + 255) / 256), 256, 0, s>>>(a, z, ape, positions, n, width,
                                                                                    ratio, staged);
}

void compressor_emit(cudaStream_t s, const CompressParams &p, const Emission *emissions, int n_emissions,
                     const Slot *slots, const float *norm, const RopeTable &rope, float *values_out) {
    if (n_emissions)
        compressor_emit_kernel<<<unsigned(n_emissions), p.out_dim, size_t(p.out_dim) * sizeof(float), s>>>(
            p, emissions, slots, norm, rope, values_out);
}

void scatter_rows(cudaStream_t s, const float *src, int64_t cols, const int32_t *rows, void *const *dst, int64_t n,
                  bool to_bf16) {
    if (n) scatter_rows_kernel<<<unsigned(n), 256, 0, s>>>(src, cols, rows, dst, to_bf16);
}

}  // namespace dsv4::backend::cuda
