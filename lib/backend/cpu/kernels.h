// Kernels of the optimised CPU backend (AVX512-BF16), each with the reference's rounding points so that only
// summation order differs from it:
// - quantised linears (spec §10.3): FP4 e2m1 weights with per-32 e8m0 scales (routed experts) and FP8 e4m3
//   weights with 128x128 e8m0 block scales, against activations quantised to FP8 in blocks of 128 as the
//   reference does. Activations arrive dequantised as bf16 (exact: an e4m3 code times a power of two); FP8
//   weights are decoded to bf16 with the block scale folded into the exponent (exact), FP4 weights to bf16 with
//   each group's fp32 partial then scaled; vdpbf16ps accumulates the exact products in fp32. One pass over a
//   weight row serves up to 8 activation columns; many columns (prefill) decode FP8 rows once into panels. Each
//   output sums in one order whatever the number of columns, so batch size never changes a result;
// - linears with bf16 weights (and fp32 weights in the reference's exact order); the attention's inner loops;
//   the lightning indexer's scores.
#pragma once
#include <cstdint>

#include "backend/cpu/primitives.h"
#include "core/matrix.h"

namespace dsv4::backend::cpu {

// Activations follow the order in which the kernels decode the weights, so that one vector load of activations
// meets one decoded vector of weights. FP8 (fp8_lanes when the row length is a multiple of 128, else natural):
// see fp8_lane_index. FP4 (fp4_lanes): see fp4_lane_index.
enum class ActLayout { natural, fp8_lanes, fp4_lanes };

// Position of element c (of a row whose length is a multiple of 128) in the fp4_lanes layout. Within each block
// of 128 (4 groups), four vectors of 32 words: vector q holds elements q, 4 + q, 8 + q, ..., 124 + q, so group L
// fills 128-bit lane L of every vector.
inline int64_t fp4_lane_index(int64_t c) { return (c & ~int64_t(127)) + (c & 3) * 32 + ((c & 127) >> 2); }
// Position of element c in the fp8_lanes layout: 64 codes decode into two vectors of 32 words by byte interleaves
// within 128-bit lanes, so within each 64, vector v's lane L holds elements 16L + 8v .. 16L + 8v + 7.
inline int64_t fp8_lane_index(int64_t c) { return (c & ~int64_t(63)) + ((c >> 3) & 1) * 32 + ((c & 63) >> 4) * 8 + (c & 7); }
// Position of element c in `layout`.
inline int64_t act_index(ActLayout layout, int64_t c) {
    return layout == ActLayout::natural ? c : layout == ActLayout::fp8_lanes ? fp8_lane_index(c) : fp4_lane_index(c);
}
// The layout the FP8 kernels take for rows of `cols` elements.
inline ActLayout fp8_layout(int64_t cols) { return cols % 128 == 0 ? ActLayout::fp8_lanes : ActLayout::natural; }

// Quantises n rows of k values to FP8 in 128-blocks (the reference's act_quant) and writes the dequantised
// values as bf16 bits in the given layout: out[n, k] (k a multiple of 128 for fp8_lanes and fp4_lanes).
void quantize_activations(const float *x, int64_t n, int64_t k, ActLayout layout, uint16_t *out);
// The same, vectorised (k a multiple of 128; finite x): equal value for value.
void quantize_activations_avx512(const float *x, int64_t n, int64_t k, ActLayout layout, uint16_t *out);

// y[i, r] = bf16(Σ_c act[i, c] · w[r, c]) for rows r0 <= r < r1 and every i < n. act in the layout named
// above. Rows whose scales would leave bf16's exponent range after folding take an exact scalar path.
void fp4_rows_avx512bf16(const core::Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y);
void fp8_rows_avx512bf16(const core::Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y);
// The same contracts in portable C++ (act in any layout): the AVX-512 kernels' exact path for rows whose scales
// they cannot take.
void fp4_rows_generic(const core::Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y,
                      ActLayout layout);
void fp8_rows_generic(const core::Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y,
                      ActLayout layout);

// FP8 products for many columns (prefill, large batches): rows [r0, r1) are decoded once into `panel`
// ((r1 - r0) x cols bf16, the scales folded into the exponents: exact) and the panel is multiplied with all n
// columns in blocks that stay in L2, each output summed in fp8_rows' order (so results do not depend on n). False,
// with nothing written, if a row's scales cannot be folded (the caller takes fp8_rows). cols a multiple of 128.
// (FP4 has no such path: its tiles measured faster at every column count.)
bool fp8_gemm_avx512bf16(const core::Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y,
                         uint16_t *panel);
// Rows per panel of the *_gemm paths for rows of `cols` elements: as many as keep the decoded panel within 512 KiB
// (in L2 beside a column block), 16 to 64. Each panel reads every column's activations once, so taller panels
// read them fewer times.
inline int64_t gemm_panel_rows(int64_t cols) {
    const int64_t rows = (int64_t(512) << 10) / (2 * cols) / 16 * 16;
    return rows < 16 ? 16 : rows > 64 ? 64 : rows;
}
// Columns from which the *_gemm paths beat the tiles (hot weights, one thread: FP8 from about 24-32 columns,
// bf16 weights, which need no decoding, from 16).
constexpr int64_t kFp8GemmMinColumns = 32, kBf16GemmMinColumns = 16;

// The fp32-weight linear in the reference's order (one running sum over c per output, each product rounded before
// its add), vectorised across columns: x [n, cols] with n = 16, 32 or 48 (kF32wBlock), all rows of w [rows, cols]
// into y [n, rows]; xt is scratch for x transposed (cols x n floats). Bit-identical to the reference loop.
constexpr int64_t kF32wBlock = 48;
void f32w_block_avx512(const float *x, int64_t n, const float *w, int64_t rows, int64_t cols, float *y, float *xt);
// The same order for one token x [cols] over rows [r0, r1) of w (at most 16), y[r] for those rows: the rows' sums in
// the lanes of one vector, each 16 columns of the rows transposed in registers.
void f32w_token_avx512(const float *x, const float *w, int64_t r0, int64_t r1, int64_t cols, float *y);

// Linears with bf16 weights [rows, cols] (cols a multiple of 32), rows [r0, r1) for every i < n:
// bf16_rows: x holds bf16 bits, y = x · wᵀ (exact products, fp32 sums: vdpbf16ps), rounded to bf16 if round_out;
// f32_rows: x is fp32, y = x · wᵀ in fp32 (FMA on the widened weights).
void bf16_rows_avx512bf16(const core::Bf16Matrix &w, const uint16_t *x, int64_t n, int64_t r0, int64_t r1, float *y,
                          bool round_out);
// bf16_rows for many columns (from kBf16GemmMinColumns): the weight rows are the panel; the same order.
void bf16_gemm_avx512bf16(const core::Bf16Matrix &w, const uint16_t *x, int64_t n, int64_t r0, int64_t r1, float *y,
                          bool round_out);
void f32_rows_avx512bf16(const core::Bf16Matrix &w, const float *x, int64_t n, int64_t r0, int64_t r1, float *y);

// Vector helpers of the attention kernel over bf16 rows (n = head_dim, a multiple of 32), for nh <= kMaxHeadBlock
// heads: qk: out[h·kAttentionChunk + j] = Σ q_h[i]·rows[j·n + i] in fp32 (exact products, any order; q in bf16,
// q_h = q + h·n) for the valid rows j < count; pv: for every head h and element i, acc_h[i] = acc_h[i] +
// probs[h·kAttentionChunk + j]·rows[j·n + i] over the valid rows j < count in order, each product rounded before
// its sum (acc_h = acc + h·n), as the reference (probs are bf16 values, so the products are exact: FMAs);
// scale: acc[i] = acc[i]·alpha.
void qk_heads_bf16_avx512(const uint16_t *q, int nh, const uint16_t *rows, const uint8_t *valid, int count, int n,
                          float *out);
void pv_heads_avx512(float *acc, int nh, const float *probs, const uint16_t *rows, const uint8_t *valid, int count, int n);
void scale_f32_avx512(float *acc, float alpha, int n);

// Backend::decode_kv_entries for entries [j0, j1) (nope_dim a multiple of 64, rope_dim of 16): equal value for value.
void decode_kv_entries_avx512(const Fp8Entries &e, int64_t j0, int64_t j1, uint16_t *rows);

// Lightning-indexer scores of keys [j0, j1) (the contract of Backend::index_scores), heads padded to a multiple of
// 16 with zero queries and weights. The model's queries are FP4-simulated: per head and block of 32 dims,
// q = q8 · 2^(e-1) with integers q8 (|q8| <= 12), and the cached keys are 2·e2m1 · 2^(scale-128): their dot is
// exact integer block sums (vpdpbusd) times powers of two, where the scales keep those products normal floats
// (codes in [key_code_lo, key_code_hi]). Other keys, and every key when int8 is null (a query not of that form),
// take fp32 products ([dim, n_heads] transposed query, within each 32 dims the even dims first, then the odd
// ones, the order the fp32 key decode uses). dim a multiple of 32, at most kIndexMaxDim. Only the fp32 summation
// order of the dots differs from the reference.
constexpr int kIndexMaxDim = 256;
struct IndexQuery {
    const uint32_t *int8;       // [dim/4, n_heads] dwords of 4 q8 bytes, dims in index_int8_position_dim order; or null
    const int32_t *int8_offset;  // [dim/32, n_heads]: 12 · Σ q8 over the block (the keys' bytes carry + 12)
    const float *int8_scale;    // [dim/32, n_heads]: 2^(e-1)
    int key_code_lo, key_code_hi;
    const float *transposed;
    const float *weights;  // [n_heads]
};
// The dim whose q8 byte goes to position p of the int8 query's dwords (byte 4g + t of dword row g): within each
// 128 dims, the keys decode as two vectors whose 128-bit lane L holds dims 32L .. 32L+15, then 32L+16 .. 32L+31.
inline int index_int8_position_dim(int p) {
    const int base = p & ~127, r = p & 127, half = r >> 6, lane = (r & 63) >> 4;
    return base + 32 * lane + 16 * half + (r & 15);
}
void index_scores_avx512(const IndexQuery &query, int n_heads, int dim, const Fp4Keys &keys, int64_t j0, int64_t j1,
                         float *scores);

}  // namespace dsv4::backend::cpu
