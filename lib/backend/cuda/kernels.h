// The CUDA backend's kernels, as launchers on a stream, for the steps of backend/backend.h (the CUDA device and its
// steps that call them are the next piece of work). Plain C++ types only, so that the steps compile with the host
// compiler. Activations are fp32 arrays whose values
// are already rounded to the reference's dtype, as on the CPU (backend/backend.h); every launcher rounds its output
// where the CPU backend's step does.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

namespace dsv4::backend::cuda {

// Interleaved RoPE frequencies of one layer (core::Rope), passed by value.
constexpr int kMaxRopePairs = 64;
struct RopeTable {
    float theta[kMaxRopePairs];
    int pairs = 0;
};

// ---- linears (linear.cu) ------------------------------------------------------------------------------------
// act_quant in blocks of 128 (spec §10.3): qx [n, k] the decoded e4m3 codes, qs [n, ceil(k/128)] the block scales.
void act_quant(cudaStream_t s, const float *x, int64_t n, int64_t k, float *qx, float *qs);
// y[n, rows] = bf16(fp8_gemm(qx, w)) with 128x128 e8m0 weight scales (Primitives::linear_fp8 after act_quant).
// Rows of x may be gathered: x row t of the product is qx row (gather ? gather[t] : t).
void linear_fp8(cudaStream_t s, const float *qx, const float *qs, const int32_t *gather, int64_t n, int64_t k,
                const uint8_t *w, const uint8_t *scale, int64_t rows, float *y);
// The same with FP4 e2m1 weights (two per byte) and per-32 e8m0 scales [rows, k/32].
void linear_fp4(cudaStream_t s, const float *qx, const float *qs, const int32_t *gather, int64_t n, int64_t k,
                const uint8_t *w, const uint8_t *scale, int64_t rows, float *y);
// One matrix of a layer's routed experts, by expert: w and scale per expert id.
struct ExpertTable {
    const uint8_t *const *w;      // device array [E]
    const uint8_t *const *scale;  // device array [E]
    bool fp4;
    int64_t rows, cols;
};
// Grouped routed-expert linears: for each expert e, rows [offset[e], offset[e+1]) of the gathered batch:
// y[r] = bf16(expert e's matrix · quantised x row gather[r]), or row r itself without gather.
void linear_experts(cudaStream_t s, const float *qx, const float *qs, const int32_t *gather, const int32_t *offset,
                    int n_experts, const ExpertTable &w, float *y);
// y[n, rows] = x[n, k] · wᵀ with bf16 weights in fp32, rounded to bf16 if round_out (linear_bf16 / linear_f32).
void linear_bf16w(cudaStream_t s, const float *x, int64_t n, int64_t k, const uint16_t *w, int64_t rows, float *y,
                  bool round_out);
// y[n, rows] = x[n, k] · wᵀ with fp32 weights (mHC mixes).
void linear_f32w(cudaStream_t s, const float *x, int64_t n, int64_t k, const float *w, int64_t rows, float *y);
// The grouped projection (Primitives::linear_dequant_fp8): group g of x through rows [g·R, (g+1)·R).
void linear_dequant_fp8(cudaStream_t s, const float *x, int64_t n, const uint8_t *w, const uint8_t *scale,
                        int64_t rows, int64_t cols, int groups, float *y);

// ---- streams, norms and heads (streams.cu) ------------------------------------------------------------------
void embed(cudaStream_t s, const uint16_t *table, int64_t dim, const int32_t *tokens, int64_t n, int hc, float *h);
// hc_pre after the mixes mu [n, (2+hc)·hc] = fn · h: RMS factor, gates, Sinkhorn, collapse, RMSNorm.
struct HcParams {
    int hc, sinkhorn_iters;
    int64_t dim;
    float scale[3], hc_eps, norm_eps;
};
void hc_pre(cudaStream_t s, const HcParams &p, const float *base, const float *norm, const float *h, const float *mu,
            int64_t n, float *mix, float *x, float *xn);
void hc_post(cudaStream_t s, int hc, int64_t dim, const float *mix, const float *y, const float *h, int64_t n,
             float *out);
// hc_head of the streams h [n, hc·D] (the rows the head reads, gathered): collapse by the pre gates of
// mu [n, hc] = fn · h, into x [n, D], then its RMSNorm xn.
void hc_head(cudaStream_t s, const HcParams &p, const float *base, const float *norm, const float *h,
             const float *mu, int64_t n, float *xn, float *x);
void gather_rows(cudaStream_t s, const float *src, int64_t cols, const int32_t *rows, int64_t n, float *dst);
// y[i] = bf16(w ⊙ x[i] · rsqrt(mean(x[i]²) + eps)) per row of `cols`.
void rms_norm_rows(cudaStream_t s, const float *x, int64_t n, int64_t cols, const float *w, float eps, float *y);
// Per head of `dim` (n_heads per row): bf16 RMS scaling (optional), RoPE on the last rope pairs at the row's position,
// Hadamard (optional), FP4 simulation in blocks of 32 (optional).
struct HeadOps {
    bool rms_scale = false, hadamard = false, fp4_sim = false;
    float eps = 0;
};
void head_ops(cudaStream_t s, float *x, int64_t n, int n_heads, int dim, const int32_t *positions,
              const RopeTable &rope, const HeadOps &ops);
// kv path after wkv: RMSNorm, RoPE of the tail at the row's position, FP8 simulation of the nope dims per 64.
void kv_finish(cudaStream_t s, const float *raw, int64_t n, int dim, int rope_dim, const float *norm, float eps,
               const int32_t *positions, const RopeTable &rope, float *kv);
// y = bf16(y · scale) (indexer weights).
void scale_bf16(cudaStream_t s, float *y, int64_t count, float scale);
// out[i, k] = bf16(a[i] + b[i·hc + k]) (MTP input).
void add_streams(cudaStream_t s, const float *a, const float *b, int64_t n, int hc, int64_t dim, float *out);

// ---- attention (attention.cu) -------------------------------------------------------------------------------
// One span of a batch as the attention kernels see it.
struct SpanDesc {
    int64_t row0, n, start_pos;
    const uint16_t *window;        // the window ring, bf16 [capacity, head_dim]; positions < start_pos
    int window_capacity;
    const uint8_t *const *kv_pages;     // compressed entries, PagedEntries pages (device array)
    const uint8_t *const *index_pages;  // indexer keys (CSA)
};
struct AttentionParams {
    int n_heads, head_dim, rope_dim, window, ratio;
    int64_t kv_entry_bytes, index_entry_bytes, entries_per_page;
    float scale;
};
// o [N, H·d]: sparse attention with sink over window + compressed entries, values de-rotated (spec §4.5-§4.6).
void sparse_attention(cudaStream_t s, const AttentionParams &p, const SpanDesc *spans, const int32_t *row_span,
                      const int32_t *positions, int64_t N, const float *q, const float *kv, const int32_t *topk,
                      int64_t topk_cols, const float *sink, const RopeTable &rope, float *o);
// Indexer scores [N, ld] of each row over its visible keys ((pos + 1) / ratio), -inf beyond.
void index_scores(cudaStream_t s, const AttentionParams &p, const SpanDesc *spans, const int32_t *row_span,
                  const int32_t *positions, int64_t N, const float *qI, const float *omega, int n_heads, int dim,
                  float *scores, int64_t ld);
// Top-k of each row's first count(row) scores (count = (pos + 1) / ratio with positions, else n), sorted by
// descending score, ties to the lower index; -1 past the count. k <= 2048.
void topk_rows(cudaStream_t s, const float *scores, int64_t ld, int64_t rows, const int32_t *positions, int ratio,
               int64_t n, int k, int32_t *out, int64_t out_ld);

// ---- compressor (attention.cu) ------------------------------------------------------------------------------
// staged[i] = (a[i], z[i] + ape[pos % ratio]) of width `width` each.
void compressor_rows(cudaStream_t s, const float *a, const float *z, const float *ape, const int32_t *positions,
                     int64_t n, int width, int ratio, float *staged);
// One completed window: its slots (rows of (a, score+ape), `width` each) and where the entry goes.
struct Emission {
    int32_t slot0, n_slots;  // into the slot table
    int32_t pos;             // j·m, the entry's RoPE position
    uint8_t *entry;          // cache entry to encode
    int32_t out_row;         // row of the optional values output, in emission order
};
struct Slot {
    const float *row;  // a at row[channel_offset + ch], score at row[width + channel_offset + ch]
    int32_t channel_offset;
};
struct CompressParams {
    int out_dim, width, rope_dim;
    float eps;
    bool index;  // indexer keys: Hadamard + FP4 entry; else FP8 nope + bf16 rope entry
};
void compressor_emit(cudaStream_t s, const CompressParams &p, const Emission *emissions, int n_emissions,
                     const Slot *slots, const float *norm, const RopeTable &rope, float *values_out);
// dst[r] = src row rows[r] for each r, `cols` floats, as bf16 if to_bf16 (window ring) else fp32.
void scatter_rows(cudaStream_t s, const float *src, int64_t cols, const int32_t *rows, void *const *dst, int64_t n,
                  bool to_bf16);

// ---- router and experts (moe.cu) ----------------------------------------------------------------------------
// scores = sqrt(softplus(logits)) in place; ids by biased top-k or the hash table; normalised weights.
void route(cudaStream_t s, float *scores, int64_t n, int n_experts, int k, const float *bias, const int32_t *tid2eid,
           const int32_t *tokens, float route_scale, int32_t *ids, float *weights);
// Groups the batch's (token, slot) pairs by expert id (ascending; tokens ascending within): offset [E + 1], gather
// (token of each grouped row), row_weight, and per token its rows in expert-id order (token_rows [n, k]).
void dispatch(cudaStream_t s, const int32_t *ids, const float *weights, int64_t n, int k, int n_experts,
              int32_t *offset, int32_t *gather, float *row_weight, int32_t *token_rows);
// a = bf16(weight · silu(min(g, L)) · clamp(u, ±L)); weight per row (nullable: the shared expert's).
void swiglu(cudaStream_t s, const float *g, const float *u, int64_t n, int64_t width, float limit,
            const float *row_weight, float *a);
// y[i] = bf16(Σ_j out[token_rows[i, j]] (in order) + shared[i]).
void combine_experts(cudaStream_t s, const float *out, const int32_t *token_rows, int64_t n, int k, int64_t dim,
                     const float *shared, float *y);

}  // namespace dsv4::backend::cuda
