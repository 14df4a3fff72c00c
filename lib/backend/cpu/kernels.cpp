#include "backend/cpu/kernels.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/common.h"
#include "backend/cpu/simd.h"
#include "core/numeric.h"

namespace dsv4::backend::cpu {
namespace {
using namespace dsv4::core;
using core::Bf16Matrix;
using namespace simd;

constexpr int64_t kActBlock = 128;

// ---- portable paths ----------------------------------------------------------------------------------------
// Exact scale arithmetic: per group, the fp32 partial sum times the power-of-two weight scale.
float fp4_row_dot(const Fp4Matrix &w, int64_t r, const uint16_t *act, ActLayout layout) {
    const uint8_t *packed = w.w + r * (w.cols / 2);
    const uint8_t *scales = w.scale + r * (w.cols / 32);
    float acc = 0.0f;
    for (int64_t g = 0; g < w.cols / 32; ++g) {
        float partial = 0.0f;
        for (int64_t c = g * 32; c < g * 32 + 32; ++c)
            partial += bf16_to_f32(act[act_index(layout, c)]) * fp4_e2m1_to_f32(fp4_unpack(packed, size_t(c)));
        acc += partial * e8m0_to_f32(scales[g]);
    }
    return acc;
}

float fp8_row_dot(const Fp8Matrix &w, int64_t r, const uint16_t *act, ActLayout layout) {
    const uint8_t *row = w.w + r * w.cols;
    const uint8_t *scales = w.scale + (r / 128) * w.scale_cols();
    float acc = 0.0f;
    for (int64_t b = 0; b * kActBlock < w.cols; ++b) {
        float partial = 0.0f;
        for (int64_t c = b * kActBlock; c < std::min(w.cols, (b + 1) * kActBlock); ++c)
            partial += bf16_to_f32(act[act_index(layout, c)]) * fp8_e4m3_to_f32(row[c]);
        acc += partial * e8m0_to_f32(scales[b]);
    }
    return acc;
}

// ---- AVX-512 BF16 -------------------------------------------------------------------------------------------
// vpshufb control that puts byte L of a broadcast dword into every dword of 128-bit lane L.
constexpr std::array<uint8_t, 64> make_lane_spread() {
    std::array<uint8_t, 64> ctrl{};
    for (int i = 0; i < 64; ++i) ctrl[size_t(i)] = i % 4 == 0 ? uint8_t(i / 16) : 0x80;
    return ctrl;
}
constexpr std::array<uint8_t, 64> kLaneToDwords = make_lane_spread();

// Decodes 64 packed bytes of one row (4 groups, 128 codes) into four bf16 vectors (unscaled): read as 32 words,
// word j holds codes 4j..4j+3 in its nibbles, so vector q = table[word >> 4q] holds code 4j+q in word j (the
// fp4_lanes order), and group L lies in 128-bit lane L.
DSV4_TARGET_AVX512BF16 inline void fp4_decode64(const uint8_t *packed, __m512i table, __m512i out[4]) {
    const __m512i bytes = _mm512_loadu_si512(packed);
    out[0] = _mm512_permutexvar_epi16(bytes, table);
    out[1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), table);
    out[2] = _mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 8), table);
    out[3] = _mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 12), table);
}
// 2^(code-127) of four groups' scale codes, each over the four floats of its group's lane.
DSV4_TARGET_AVX512BF16 inline __m512 fp4_group_scales(const uint8_t *codes4) {
    uint32_t codes;
    std::memcpy(&codes, codes4, 4);
    const __m512i c = _mm512_shuffle_epi8(_mm512_set1_epi32(int(codes)), _mm512_loadu_si512(kLaneToDwords.data()));
    return _mm512_castsi512_ps(_mm512_slli_epi32(c, 23));
}

// R weight rows × NC activation columns per pass, 128 elements (4 groups) per step, as the reference sums them:
// vdpbf16ps adds each group's 32 exact products in its lane, and each lane's partial is scaled by its group's
// power of two and accumulated (an FMA per step and column), the weights decoded once for the NC columns. Every
// output sums in this order whatever the number of columns. (Folding the scales into the decoded values instead
// measured ~1.5x slower hot at one column; decoding rows once into panels for many columns, as FP8 does, measured
// slower than these tiles at every column count up to 256.) The R·NC accumulators are independent chains.
template <int R, int NC>
DSV4_TARGET_AVX512BF16 void fp4_tile(const Fp4Matrix &w, int64_t r, const uint16_t *act, float *y) {
    const int64_t groups = w.cols / 32, k = w.cols;
    const __m512i table = _mm512_loadu_si512(kFp4Bf16.data());
    __m512 acc[R][NC];
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < NC; ++i) acc[j][i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g += 4) {
        __m512i wv[R][4];
        __m512 scale[R];
        for (int j = 0; j < R; ++j) {
            const uint8_t *packed = w.w + (r + j) * (k / 2) + g * 16;
            _mm_prefetch(reinterpret_cast<const char *>(packed + (NC == 1 ? R * (k / 2) : kPrefetchAlongRow)), _MM_HINT_T0);
            fp4_decode64(packed, table, wv[j]);
            scale[j] = fp4_group_scales(w.scale + (r + j) * groups + g);
        }
        for (int i = 0; i < NC; ++i) {
            const uint16_t *a = act + i * k + g * 32;
            __m512 part[R];
            for (int q = 0; q < 4; ++q) {  // one activation load serves the R rows
                const __m512bh aq = (__m512bh)_mm512_loadu_si512(a + q * 32);
                for (int j = 0; j < R; ++j)
                    part[j] = _mm512_dpbf16_ps(q ? part[j] : _mm512_setzero_ps(), aq, (__m512bh)wv[j][q]);
            }
            for (int j = 0; j < R; ++j) acc[j][i] = _mm512_fmadd_ps(part[j], scale[j], acc[j][i]);
        }
    }
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < NC; ++i) y[int64_t(i) * w.rows + r + j] = store_bf16(acc[j][i]);
}

// R weight rows × NC activation columns per pass, 64 codes per step decoded once for the NC columns; the block
// scale is in the decoded values, so one accumulator per output takes every exact product in turn. The GEMM path's
// panels hold the same decoded vectors and keep this order.
template <int R, int NC>
DSV4_TARGET_AVX512BF16 void fp8_tile(const Fp8Matrix &w, int64_t r, const uint16_t *act, float *y) {
    const int64_t k = w.cols;
    __m512 acc[R][NC];
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < NC; ++i) acc[j][i] = _mm512_setzero_ps();
    for (int64_t b = 0; b * kActBlock < k; ++b) {
        // the R rows of a tile lie in one 128-row scale block (tiles start at multiples of 4)
        const Fp8Table table = fp8_scaled_table(w.scale[(r / 128) * w.scale_cols() + b]);
        for (int h = 0; h < 2; ++h) {
            const int64_t c = b * kActBlock + h * 64;
            __m512i wv[R][2];
            for (int j = 0; j < R; ++j) {
                const uint8_t *codes = w.w + (r + j) * k + c;
                _mm_prefetch(reinterpret_cast<const char *>(codes + (NC == 1 ? std::max(R * k, kMinPrefetchDistance) : kPrefetchAlongRow)),
                             _MM_HINT_T0);
                fp8_decode64(codes, table, wv[j]);
            }
            for (int i = 0; i < NC; ++i)
                for (int v = 0; v < 2; ++v) {
                    const __m512bh a = (__m512bh)_mm512_loadu_si512(act + i * k + c + 32 * v);
                    for (int j = 0; j < R; ++j) acc[j][i] = _mm512_dpbf16_ps(acc[j][i], a, (__m512bh)wv[j][v]);
                }
        }
    }
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < NC; ++i) y[int64_t(i) * w.rows + r + j] = store_bf16(acc[j][i]);
}

// Columns per block of the tiled kernels: a block's activations (64 x k bf16, 512 KiB at k = 4096) stay in L2
// while the rows pass over them (whole-n passes streamed every column from memory for each row block).
constexpr int64_t kTileColumnBlock = 64;

// Rows [r0, r1) × all n columns, in blocks of 4 rows and column tiles of 8, 4, 2, 1; each kernel splits a block
// into the row tiles that fit its registers. Leftover rows go one by one, and rows whose scales the kernel cannot
// take go to the exact scalar path.
template <typename M, typename K>
DSV4_TARGET_AVX512BF16 void run_tiles(const M &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y,
                                      bool (*takes)(const M &, int64_t),
                                      void (*fallback)(const M &, const uint16_t *, int64_t, int64_t, int64_t, float *)) {
    if (n > kTileColumnBlock) {
        for (int64_t i0 = 0; i0 < n; i0 += kTileColumnBlock)
            run_tiles<M, K>(w, act + i0 * w.cols, std::min(kTileColumnBlock, n - i0), r0, r1, y + i0 * w.rows, takes,
                            fallback);
        return;
    }
    for (int64_t r = r0; r < r1;) {
        const bool block = r + 4 <= r1 && takes(w, r) && takes(w, r + 1) && takes(w, r + 2) && takes(w, r + 3);
        if (!block && !takes(w, r)) {
            fallback(w, act, n, r, r + 1, y);
            ++r;
            continue;
        }
        for (int64_t i = 0; i < n;) {
            const int64_t nc = n - i >= 8 ? 8 : n - i >= 4 ? 4 : n - i >= 2 ? 2 : 1;
            const uint16_t *a = act + i * w.cols;
            float *yy = y + i * w.rows;
            if (block) {
                if (nc == 8) K::template block4<8>(w, r, a, yy);
                else if (nc == 4) K::template block4<4>(w, r, a, yy);
                else if (nc == 2) K::template block4<2>(w, r, a, yy);
                else K::template block4<1>(w, r, a, yy);
            } else {
                if (nc == 8) K::template tile<1, 8>(w, r, a, yy);
                else if (nc == 4) K::template tile<1, 4>(w, r, a, yy);
                else if (nc == 2) K::template tile<1, 2>(w, r, a, yy);
                else K::template tile<1, 1>(w, r, a, yy);
            }
            i += nc;
        }
        r += block ? 4 : 1;
    }
}

// Row tiles per 4-row block, from the register budget (32 zmm): FP4 holds 4 decoded vectors, a scale and a partial
// per row, FP8 four table vectors and two decoded vectors per row, plus R·NC accumulators.
template <int R, int NC, typename M, void (*Tile)(const M &, int64_t, const uint16_t *, float *)>
DSV4_TARGET_AVX512BF16 inline void split4(const M &w, int64_t r, const uint16_t *act, float *y) {
    for (int j = 0; j < 4; j += R) Tile(w, r + j, act, y);
}
struct Fp4Kernel {
    template <int R, int NC>
    DSV4_TARGET_AVX512BF16 static void tile(const Fp4Matrix &w, int64_t r, const uint16_t *act, float *y) {
        fp4_tile<R, NC>(w, r, act, y);
    }
    template <int NC>
    DSV4_TARGET_AVX512BF16 static void block4(const Fp4Matrix &w, int64_t r, const uint16_t *act, float *y) {
        constexpr int R = NC == 1 ? 4 : 2;
        split4<R, NC, Fp4Matrix, fp4_tile<R, NC>>(w, r, act, y);
    }
};
struct Fp8Kernel {
    template <int R, int NC>
    DSV4_TARGET_AVX512BF16 static void tile(const Fp8Matrix &w, int64_t r, const uint16_t *act, float *y) {
        fp8_tile<R, NC>(w, r, act, y);
    }
    template <int NC>
    DSV4_TARGET_AVX512BF16 static void block4(const Fp8Matrix &w, int64_t r, const uint16_t *act, float *y) {
        constexpr int R = NC == 1 ? 4 : 2;
        split4<R, NC, Fp8Matrix, fp8_tile<R, NC>>(w, r, act, y);
    }
};

DSV4_TARGET_AVX512BF16 bool fp4_row_foldable(const Fp4Matrix &w, int64_t r) {
    return w.cols % 128 == 0 && codes_in_range(w.scale + r * (w.cols / 32), w.cols / 32, kFp4CodeLo, kFp4CodeHi);
}
DSV4_TARGET_AVX512BF16 bool fp8_row_foldable(const Fp8Matrix &w, int64_t r) {
    return w.cols % kActBlock == 0 &&
           codes_in_range(w.scale + (r / 128) * w.scale_cols(), w.scale_cols(), kFp8CodeLo, kFp8CodeHi);
}

}  // namespace

// x / s rounded to the nearest e4m3 value (ties to even), in fp32 arithmetic: normals keep 3 mantissa bits,
// subnormals (below 2^-6) become multiples of 2^-9. Equal to decoding f32_to_fp8_e4m3, without the codes.
inline float round_to_e4m3(float q) {
    const float a = std::fabs(q);
    float r;
    if (a < 0x1p-6f) {
        r = (a + 24576.0f) - 24576.0f;  // 1.5 · 2^14, where one ulp is 2^-9 (no -ffast-math: not folded)
    } else {
        uint32_t b;
        std::memcpy(&b, &a, 4);
        b = (b + 0x7ffffu + ((b >> 20) & 1u)) & 0xfff00000u;
        std::memcpy(&r, &b, 4);
    }
    return std::copysign(r, q);
}

void quantize_activations(const float *x, int64_t n, int64_t k, ActLayout layout, uint16_t *out) {
    for (int64_t i = 0; i < n; ++i) {
        const float *row = x + i * k;
        uint16_t *o = out + i * k;
        for (int64_t b0 = 0; b0 < k; b0 += kActBlock) {
            const int64_t b1 = std::min(k, b0 + kActBlock);
            float amax = 0.0f;
            for (int64_t c = b0; c < b1; ++c) amax = std::max(amax, std::fabs(row[c]));
            const int e = pow2_scale_exponent(std::max(amax, 1e-4f), kFp8Max);  // act_quant's floor and scale
            const float inv_s = exp2i(-e), s = exp2i(e);
            for (int64_t c = b0; c < b1; ++c) {
                // code · 2^e has at most 4 significant bits and a normal exponent: exact in bf16, so the top
                // half of the fp32 bits is the bf16 value.
                const float v = round_to_e4m3(std::clamp(row[c] * inv_s, -kFp8Max, kFp8Max)) * s;
                uint32_t bits;
                std::memcpy(&bits, &v, 4);
                o[act_index(layout, c)] = uint16_t(bits >> 16);
            }
        }
    }
}

DSV4_TARGET_AVX512BF16 void quantize_activations_avx512(const float *x, int64_t n, int64_t k, ActLayout layout,
                                                        uint16_t *out) {
    const __m512 fp8_max = _mm512_set1_ps(kFp8Max), neg_max = _mm512_set1_ps(-kFp8Max);
    const __m512 subnormal_below = _mm512_set1_ps(0x1p-6f), magic = _mm512_set1_ps(24576.0f);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), half_ulp = _mm512_set1_epi32(0x7ffff);
    const __m512i one = _mm512_set1_epi32(1), keep = _mm512_set1_epi32(int(0xfff00000u));
    for (int64_t i = 0; i < n; ++i) {
        const float *row = x + i * k;
        uint16_t *o = out + i * k;
        for (int64_t b0 = 0; b0 < k; b0 += kActBlock) {
            __m512 vmax = _mm512_setzero_ps();
            for (int64_t c = b0; c < b0 + kActBlock; c += 16)
                vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(row + c)));
            const int e = pow2_scale_exponent(std::max(_mm512_reduce_max_ps(vmax), 1e-4f), kFp8Max);
            const __m512 inv_s = _mm512_set1_ps(exp2i(-e)), scale = _mm512_set1_ps(exp2i(e));
            alignas(64) uint16_t block[kActBlock];
            for (int64_t c = 0; c < kActBlock; c += 16) {
                // round_to_e4m3, lane by lane: RNE to 3 mantissa bits on the bits, or to multiples of 2^-9 below 2^-6
                const __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(row + b0 + c), inv_s), neg_max), fp8_max);
                const __m512i qb = _mm512_castps_si512(q), ab = _mm512_and_si512(qb, abs_mask);
                const __m512 a = _mm512_castsi512_ps(ab);
                const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(ab, 20), one);
                const __m512i rn = _mm512_and_si512(_mm512_add_epi32(ab, _mm512_add_epi32(half_ulp, odd)), keep);
                const __m512 rs = _mm512_sub_ps(_mm512_add_ps(a, magic), magic);
                const __m512 r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, subnormal_below, _CMP_LT_OQ), _mm512_castsi512_ps(rn), rs);
                const __m512i signed_r = _mm512_or_si512(_mm512_castps_si512(r), _mm512_andnot_si512(abs_mask, qb));
                const __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(signed_r), scale);
                _mm256_store_si256(reinterpret_cast<__m256i *>(block + c),
                                   _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)));
            }
            if (layout == ActLayout::natural) std::memcpy(o + b0, block, sizeof(block));
            else if (layout == ActLayout::fp8_lanes)
                for (int64_t c = 0; c < kActBlock; ++c) o[b0 + fp8_lane_index(c)] = block[c];
            else
                for (int64_t c = 0; c < kActBlock; ++c) o[b0 + fp4_lane_index(c)] = block[c];
        }
    }
}

namespace {
// R rows x B·16 columns of the fp32-weight linear over all of k: per element c, one load of the columns' values
// (xt row c), R broadcast weights, and a multiply then an add per accumulator (the reference's rounding).
template <int R, int B>
DSV4_TARGET_AVX512BF16 void f32w_tile(const float *xt, const float *w, int64_t cols, float *y, int64_t ldy) {
    __m512 acc[R][B];
    for (int j = 0; j < R; ++j)
        for (int b = 0; b < B; ++b) acc[j][b] = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; ++c) {
        __m512 xv[B];
        for (int b = 0; b < B; ++b) xv[b] = _mm512_loadu_ps(xt + c * (16 * B) + 16 * b);
        for (int j = 0; j < R; ++j) {
            const __m512 wv = _mm512_set1_ps(w[j * cols + c]);
            for (int b = 0; b < B; ++b) acc[j][b] = _mm512_add_ps(acc[j][b], _mm512_mul_ps(xv[b], wv));
        }
    }
    for (int j = 0; j < R; ++j)
        for (int b = 0; b < B; ++b) {
            alignas(64) float out[16];
            _mm512_store_ps(out, acc[j][b]);
            for (int l = 0; l < 16; ++l) y[(16 * b + l) * ldy + j] = out[l];
        }
}

template <int B>
DSV4_TARGET_AVX512BF16 void f32w_rows_of_block(const float *xt, const float *w, int64_t rows, int64_t cols, float *y,
                                               int64_t ldy) {
    int64_t r = 0;
    for (; r + 8 <= rows; r += 8) f32w_tile<8, B>(xt, w + r * cols, cols, y + r, ldy);
    for (; r + 4 <= rows; r += 4) f32w_tile<4, B>(xt, w + r * cols, cols, y + r, ldy);
    for (; r < rows; ++r) f32w_tile<1, B>(xt, w + r * cols, cols, y + r, ldy);
}
}  // namespace

DSV4_TARGET_AVX512BF16 void f32w_block_avx512(const float *x, int64_t n, const float *w, int64_t rows, int64_t cols,
                                              float *y, float *xt) {
    for (int64_t c = 0; c < cols; ++c)  // transpose the block: xt[c][i]
        for (int64_t i = 0; i < n; ++i) xt[c * n + i] = x[i * cols + c];
    switch (n / 16) {
    case 3: return f32w_rows_of_block<3>(xt, w, rows, cols, y, rows);
    case 2: return f32w_rows_of_block<2>(xt, w, rows, cols, y, rows);
    default: return f32w_rows_of_block<1>(xt, w, rows, cols, y, rows);
    }
}

namespace {
// r[0..15] (16 rows of 16 floats) transposed in place: r[t] becomes element t of every row.
DSV4_TARGET_AVX512BF16 inline void transpose16x16(__m512 r[16]) {
    __m512 a[16], b[16];
    for (int i = 0; i < 16; i += 2) {  // rows 2k, 2k+1 interleaved within 128-bit lanes
        a[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        a[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // lane L of b[i + q]: element 4L + q of rows i .. i + 3
        b[i] = _mm512_shuffle_ps(a[i], a[i + 2], 0x44);
        b[i + 1] = _mm512_shuffle_ps(a[i], a[i + 2], 0xee);
        b[i + 2] = _mm512_shuffle_ps(a[i + 1], a[i + 3], 0x44);
        b[i + 3] = _mm512_shuffle_ps(a[i + 1], a[i + 3], 0xee);
    }
    for (int q = 0; q < 4; ++q) {  // gather each element's four row quartets
        const __m512 c0 = _mm512_shuffle_f32x4(b[q], b[4 + q], 0x88), c1 = _mm512_shuffle_f32x4(b[q], b[4 + q], 0xdd);
        const __m512 c2 = _mm512_shuffle_f32x4(b[8 + q], b[12 + q], 0x88), c3 = _mm512_shuffle_f32x4(b[8 + q], b[12 + q], 0xdd);
        r[q] = _mm512_shuffle_f32x4(c0, c2, 0x88);
        r[8 + q] = _mm512_shuffle_f32x4(c0, c2, 0xdd);
        r[4 + q] = _mm512_shuffle_f32x4(c1, c3, 0x88);
        r[12 + q] = _mm512_shuffle_f32x4(c1, c3, 0xdd);
    }
}
}  // namespace

DSV4_TARGET_AVX512BF16 void f32w_token_avx512(const float *x, const float *w, int64_t r0, int64_t r1, int64_t cols,
                                              float *y) {
    const int64_t nr = r1 - r0;
    __m512 acc = _mm512_setzero_ps();
    int64_t c0 = 0;
    for (; c0 + 16 <= cols; c0 += 16) {
        __m512 v[16];
        for (int64_t i = 0; i < 16; ++i) v[i] = i < nr ? _mm512_loadu_ps(w + (r0 + i) * cols + c0) : _mm512_setzero_ps();
        transpose16x16(v);
        for (int t = 0; t < 16; ++t) acc = _mm512_add_ps(acc, _mm512_mul_ps(v[t], _mm512_set1_ps(x[c0 + t])));
    }
    alignas(64) float sums[16];
    _mm512_store_ps(sums, acc);
    for (int64_t i = 0; i < nr; ++i) {  // the rest of each row's sum in the same order
        for (int64_t c = c0; c < cols; ++c) sums[i] += x[c] * w[(r0 + i) * cols + c];
        y[r0 + i] = sums[i];
    }
}

void fp4_rows_generic(const Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y,
                      ActLayout layout) {
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < n; ++i) y[i * w.rows + r] = round_bf16(fp4_row_dot(w, r, act + i * w.cols, layout));
}

void fp8_rows_generic(const Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y,
                      ActLayout layout) {
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < n; ++i) y[i * w.rows + r] = round_bf16(fp8_row_dot(w, r, act + i * w.cols, layout));
}

DSV4_TARGET_AVX512BF16 void fp4_rows_avx512bf16(const Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0,
                                                 int64_t r1, float *y) {
    run_tiles<Fp4Matrix, Fp4Kernel>(w, act, n, r0, r1, y, fp4_row_foldable,
                                    [](const Fp4Matrix &m, const uint16_t *a, int64_t n_, int64_t r0_, int64_t r1_, float *y_) {
                                        fp4_rows_generic(m, a, n_, r0_, r1_, y_, ActLayout::fp4_lanes);
                                    });
}

DSV4_TARGET_AVX512BF16 void fp8_rows_avx512bf16(const Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0,
                                                 int64_t r1, float *y) {
    run_tiles<Fp8Matrix, Fp8Kernel>(w, act, n, r0, r1, y, fp8_row_foldable,
                                    [](const Fp8Matrix &m, const uint16_t *a, int64_t n_, int64_t r0_, int64_t r1_, float *y_) {
                                        fp8_rows_generic(m, a, n_, r0_, r1_, y_, fp8_layout(m.cols));
                                    });
}

namespace {

// The sum of an output vector's lanes, rounded to bf16 or not.
template <bool Round>
DSV4_TARGET_AVX512BF16 inline float output(__m512 acc) {
    return Round ? store_bf16(acc) : _mm512_reduce_add_ps(acc);
}

template <int R, int NC, bool Round>
DSV4_TARGET_AVX512BF16 void bf16_tile(const Bf16Matrix &w, int64_t r, const uint16_t *x, float *y) {
    const int64_t k = w.cols;
    __m512 acc[R][NC];
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < NC; ++i) acc[j][i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < k; c += 32) {
        __m512bh wv[R];
        for (int j = 0; j < R; ++j) {
            const uint8_t *row = w.w + 2 * ((r + j) * k + c);
            _mm_prefetch(reinterpret_cast<const char *>(row + (NC == 1 ? 2 * R * k : kPrefetchAlongRow)), _MM_HINT_T0);
            wv[j] = (__m512bh)_mm512_loadu_si512(row);
        }
        for (int i = 0; i < NC; ++i) {
            const __m512bh a = (__m512bh)_mm512_loadu_si512(x + i * k + c);
            for (int j = 0; j < R; ++j) acc[j][i] = _mm512_dpbf16_ps(acc[j][i], a, wv[j]);
        }
    }
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < NC; ++i) y[int64_t(i) * w.rows + r + j] = output<Round>(acc[j][i]);
}

template <int R, int NC>
DSV4_TARGET_AVX512BF16 void f32_tile(const Bf16Matrix &w, int64_t r, const float *x, float *y) {
    const int64_t k = w.cols;
    __m512 acc[R][NC];
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < NC; ++i) acc[j][i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < k; c += 16) {
        __m512 wv[R];
        for (int j = 0; j < R; ++j) {
            const uint8_t *row = w.w + 2 * ((r + j) * k + c);
            if (c % 32 == 0)  // one prefetch per 64-byte line
                _mm_prefetch(reinterpret_cast<const char *>(row + (NC == 1 ? 2 * R * k : kPrefetchAlongRow)), _MM_HINT_T0);
            const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(row));
            wv[j] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
        for (int i = 0; i < NC; ++i) {
            const __m512 a = _mm512_loadu_ps(x + i * k + c);
            for (int j = 0; j < R; ++j) acc[j][i] = _mm512_fmadd_ps(a, wv[j], acc[j][i]);
        }
    }
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < NC; ++i) y[int64_t(i) * w.rows + r + j] = _mm512_reduce_add_ps(acc[j][i]);
}

// Rows in blocks of 4 (then one by one), columns in tiles of 4, 2, 1.
template <typename X, void (*T41)(const Bf16Matrix &, int64_t, const X *, float *),
          void (*T42)(const Bf16Matrix &, int64_t, const X *, float *),
          void (*T44)(const Bf16Matrix &, int64_t, const X *, float *),
          void (*T11)(const Bf16Matrix &, int64_t, const X *, float *),
          void (*T12)(const Bf16Matrix &, int64_t, const X *, float *),
          void (*T14)(const Bf16Matrix &, int64_t, const X *, float *)>
DSV4_TARGET_AVX512BF16 void bf16_weight_rows(const Bf16Matrix &w, const X *x, int64_t n, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < r1;) {
        const bool block = r + 4 <= r1;
        for (int64_t i = 0; i < n;) {
            const int64_t nc = n - i >= 4 ? 4 : n - i >= 2 ? 2 : 1;
            const X *a = x + i * w.cols;
            float *yy = y + i * w.rows;
            if (nc == 4) (block ? T44 : T14)(w, r, a, yy);
            else if (nc == 2) (block ? T42 : T12)(w, r, a, yy);
            else (block ? T41 : T11)(w, r, a, yy);
            i += nc;
        }
        r += block ? 4 : 1;
    }
}

}  // namespace

DSV4_TARGET_AVX512BF16 void bf16_rows_avx512bf16(const Bf16Matrix &w, const uint16_t *x, int64_t n, int64_t r0,
                                                  int64_t r1, float *y, bool round_out) {
    if (round_out)
        bf16_weight_rows<uint16_t, bf16_tile<4, 1, true>, bf16_tile<4, 2, true>, bf16_tile<4, 4, true>,
                         bf16_tile<1, 1, true>, bf16_tile<1, 2, true>, bf16_tile<1, 4, true>>(w, x, n, r0, r1, y);
    else
        bf16_weight_rows<uint16_t, bf16_tile<4, 1, false>, bf16_tile<4, 2, false>, bf16_tile<4, 4, false>,
                         bf16_tile<1, 1, false>, bf16_tile<1, 2, false>, bf16_tile<1, 4, false>>(w, x, n, r0, r1, y);
}

DSV4_TARGET_AVX512BF16 void f32_rows_avx512bf16(const Bf16Matrix &w, const float *x, int64_t n, int64_t r0, int64_t r1,
                                                 float *y) {
    bf16_weight_rows<float, f32_tile<4, 1>, f32_tile<4, 2>, f32_tile<4, 4>, f32_tile<1, 1>, f32_tile<1, 2>,
                     f32_tile<1, 4>>(w, x, n, r0, r1, y);
}

namespace {

// R panel rows (bf16, stride k) × NC activation columns (bf16, stride k): y[i·ldy + j] = bf16(Σ w_j·act_i), with
// the scales already in the panel. Per 32 elements: R + NC loads for R·NC vdpbf16ps. Each output sums in the
// *_rows kernels' order, so results do not depend on the number of columns. (Passes over slices of k with the
// accumulators parked in between, to keep a tile in L1, measured slower; a layout of element pairs of 16 rows
// multiplied by broadcast activation pairs reached 75-88% of the peak instead of 41-50%, but sums in another
// order than any GEMV can afford.)
template <int R, int NC, bool Round>
DSV4_TARGET_AVX512BF16 void panel_tile(const uint16_t *w, int64_t k, const uint16_t *act, float *y, int64_t ldy) {
    __m512 acc[R][NC];
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < NC; ++i) acc[j][i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < k; c += 32) {
        __m512bh wv[R];
        for (int j = 0; j < R; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + j * k + c);
        for (int i = 0; i < NC; ++i) {
            const __m512bh a = (__m512bh)_mm512_loadu_si512(act + i * k + c);
            for (int j = 0; j < R; ++j) acc[j][i] = _mm512_dpbf16_ps(acc[j][i], a, wv[j]);
        }
    }
    for (int j = 0; j < R; ++j)
        for (int i = 0; i < NC; ++i) y[int64_t(i) * ldy + j] = output<Round>(acc[j][i]);
}

// Columns per block of a panel GEMM: a block's activations (24 x k bf16, 192 KiB at k = 4096) and the panel (see
// gemm_panel_rows) stay in L2 while every row of the panel passes over them.
constexpr int64_t kPanelColumns = 24;

template <int R, bool Round>
DSV4_TARGET_AVX512BF16 void panel_rows(const uint16_t *w, int64_t k, const uint16_t *act, int64_t i0, int64_t i1,
                                       float *y, int64_t ldy) {
    int64_t i = i0;
    for (; i + 6 <= i1; i += 6) panel_tile<R, 6, Round>(w, k, act + i * k, y + i * ldy, ldy);
    for (; i + 2 <= i1; i += 2) panel_tile<R, 2, Round>(w, k, act + i * k, y + i * ldy, ldy);
    for (; i < i1; ++i) panel_tile<R, 1, Round>(w, k, act + i * k, y + i * ldy, ldy);
}

// rows x k bf16 panel times n columns: y[i·ldy + r] for r < rows, i < n, rounded to bf16 or not.
template <bool Round>
DSV4_TARGET_AVX512BF16 void panel_gemm(const uint16_t *w, int64_t rows, int64_t k, const uint16_t *act, int64_t n,
                                       float *y, int64_t ldy) {
    for (int64_t i0 = 0; i0 < n; i0 += kPanelColumns) {
        const int64_t i1 = std::min(n, i0 + kPanelColumns);
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4) panel_rows<4, Round>(w + r * k, k, act, i0, i1, y + r, ldy);
        for (; r < rows; ++r) panel_rows<1, Round>(w + r * k, k, act, i0, i1, y + r, ldy);
    }
}

}  // namespace

DSV4_TARGET_AVX512BF16 bool fp8_gemm_avx512bf16(const Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0,
                                                int64_t r1, float *y, uint16_t *panel) {
    const int64_t k = w.cols;
    for (int64_t r = r0; r < r1; ++r)
        if (!fp8_row_foldable(w, r)) return false;
    for (int64_t b = 0; b * kActBlock < k; ++b)
        for (int64_t r = r0; r < r1;) {  // rows of one 128-row scale block share the table
            const Fp8Table table = fp8_scaled_table(w.scale[(r / 128) * w.scale_cols() + b]);
            const int64_t block_end = std::min(r1, (r / 128 + 1) * 128);
            for (; r < block_end; ++r)
                for (int h = 0; h < 2; ++h) {
                    const int64_t c = b * kActBlock + h * 64;
                    __m512i v[2];
                    fp8_decode64(w.w + r * k + c, table, v);
                    _mm512_storeu_si512(panel + (r - r0) * k + c, v[0]);
                    _mm512_storeu_si512(panel + (r - r0) * k + c + 32, v[1]);
                }
        }
    panel_gemm<true>(panel, r1 - r0, k, act, n, y + r0, w.rows);
    return true;
}

DSV4_TARGET_AVX512BF16 void bf16_gemm_avx512bf16(const Bf16Matrix &w, const uint16_t *x, int64_t n, int64_t r0,
                                                 int64_t r1, float *y, bool round_out) {
    const uint16_t *panel = reinterpret_cast<const uint16_t *>(w.w) + r0 * w.cols;
    if (round_out) panel_gemm<true>(panel, r1 - r0, w.cols, x, n, y + r0, w.rows);
    else panel_gemm<false>(panel, r1 - r0, w.cols, x, n, y + r0, w.rows);
}

namespace {
// NH heads x RB bf16 rows of q·k: NH + RB loads per NH·RB vdpbf16ps (exact products) over each 32 elements of
// head_dim.
template <int NH, int RB>
DSV4_TARGET_AVX512BF16 void qk_block(const uint16_t *q, const uint16_t *rows, int n, float *out) {
    __m512 s[NH][RB];
    for (int h = 0; h < NH; ++h)
        for (int r = 0; r < RB; ++r) s[h][r] = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 32) {
        __m512bh v[RB];
        for (int r = 0; r < RB; ++r) v[r] = (__m512bh)_mm512_loadu_si512(rows + int64_t(r) * n + i);
        for (int h = 0; h < NH; ++h) {
            const __m512bh qh = (__m512bh)_mm512_loadu_si512(q + h * n + i);
            for (int r = 0; r < RB; ++r) s[h][r] = _mm512_dpbf16_ps(s[h][r], qh, v[r]);
        }
    }
    for (int h = 0; h < NH; ++h)
        for (int r = 0; r < RB; ++r) out[h * kAttentionChunk + r] = _mm512_reduce_add_ps(s[h][r]);
}
template <int NH>
DSV4_TARGET_AVX512BF16 void qk_heads(const uint16_t *q, const uint16_t *rows, const uint8_t *valid, int count, int n,
                                     float *out) {
    int j = 0;
    for (; j < count;) {
        if (j + 4 <= count && valid[j] && valid[j + 1] && valid[j + 2] && valid[j + 3]) {
            qk_block<NH, 4>(q, rows + int64_t(j) * n, n, out + j);
            j += 4;
        } else {  // invalid rows (unfilled window slots) are never read
            if (valid[j]) qk_block<NH, 1>(q, rows + int64_t(j) * n, n, out + j);
            ++j;
        }
    }
}
}  // namespace

DSV4_TARGET_AVX512BF16 void qk_heads_bf16_avx512(const uint16_t *q, int nh, const uint16_t *rows, const uint8_t *valid,
                                                 int count, int n, float *out) {
    static_assert(kMaxHeadBlock == 4, "one instantiation per block size");
    switch (nh) {
    case 4: return qk_heads<4>(q, rows, valid, count, n, out);
    case 3: return qk_heads<3>(q, rows, valid, count, n, out);
    case 2: return qk_heads<2>(q, rows, valid, count, n, out);
    default: return qk_heads<1>(q, rows, valid, count, n, out);
    }
}

DSV4_TARGET_AVX512BF16 void scale_f32_avx512(float *acc, float alpha, int n) {
    const __m512 va = _mm512_set1_ps(alpha);
    for (int i = 0; i < n; i += 16) _mm512_storeu_ps(acc + i, _mm512_mul_ps(_mm512_loadu_ps(acc + i), va));
}

namespace {
// 16 bf16 values widened to fp32 (exact).
DSV4_TARGET_AVX512BF16 inline __m512 load_bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p))), 16));
}

// NH heads x 64 elements of head_dim held in registers while the chunk's rows pass: one row load serves the
// NH heads, and no accumulator goes back to memory between rows.
template <int NH>
DSV4_TARGET_AVX512BF16 void pv_block(float *acc, const float *probs, const uint16_t *rows, const uint8_t *valid, int count,
                                     int n, int i0) {
    __m512 a[NH][4];
    for (int h = 0; h < NH; ++h)
        for (int q = 0; q < 4; ++q) a[h][q] = _mm512_loadu_ps(acc + h * n + i0 + 16 * q);
    for (int j = 0; j < count; ++j) {
        if (!valid[j]) continue;
        __m512 v[4];
        for (int q = 0; q < 4; ++q) v[q] = load_bf16x16(rows + int64_t(j) * n + i0 + 16 * q);
        for (int h = 0; h < NH; ++h) {
            const __m512 p = _mm512_set1_ps(probs[h * kAttentionChunk + j]);
            // the reference rounds the product, then the sum: with p and v bf16 the product is exact, so one FMA
            // rounds the same
            for (int q = 0; q < 4; ++q) a[h][q] = _mm512_fmadd_ps(p, v[q], a[h][q]);
        }
    }
    for (int h = 0; h < NH; ++h)
        for (int q = 0; q < 4; ++q) _mm512_storeu_ps(acc + h * n + i0 + 16 * q, a[h][q]);
}
template <int NH>
DSV4_TARGET_AVX512BF16 void pv_heads(float *acc, const float *probs, const uint16_t *rows, const uint8_t *valid, int count,
                                     int n) {
    int i0 = 0;
    for (; i0 + 64 <= n; i0 += 64) pv_block<NH>(acc, probs, rows, valid, count, n, i0);
    for (; i0 < n; i0 += 16)  // a head_dim that is not a multiple of 64: the rest 16 at a time
        for (int j = 0; j < count; ++j) {
            if (!valid[j]) continue;
            const __m512 v = load_bf16x16(rows + int64_t(j) * n + i0);
            for (int h = 0; h < NH; ++h) {
                float *a = acc + h * n + i0;
                _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(probs[h * kAttentionChunk + j]), v, _mm512_loadu_ps(a)));
            }
        }
}
}  // namespace

DSV4_TARGET_AVX512BF16 void pv_heads_avx512(float *acc, int nh, const float *probs, const uint16_t *rows,
                                            const uint8_t *valid, int count, int n) {
    static_assert(kMaxHeadBlock == 4, "one instantiation per block size");
    switch (nh) {
    case 4: return pv_heads<4>(acc, probs, rows, valid, count, n);
    case 3: return pv_heads<3>(acc, probs, rows, valid, count, n);
    case 2: return pv_heads<2>(acc, probs, rows, valid, count, n);
    default: return pv_heads<1>(acc, probs, rows, valid, count, n);
    }
}

namespace {


// The scores from each key's per-head dots (head blocks of 16): bf16(Σ_h bf16(relu(bf16(dot_h))·w_h)), the sum
// over heads in vector order.
template <int KB, int HB>
DSV4_TARGET_AVX512BF16 inline void index_head_sums(const __m512 (&acc)[KB][HB], const float *w, float *scores) {
    for (int k = 0; k < KB; ++k) {
        __m512 total = _mm512_setzero_ps();
        for (int b = 0; b < HB; ++b) {
            const __m512 relu = _mm512_max_ps(round_bf16_ps(acc[k][b]), _mm512_setzero_ps());
            total = _mm512_add_ps(total, round_bf16_ps(_mm512_mul_ps(relu, _mm512_loadu_ps(w + b * 16))));
        }
        scores[k] = round_bf16(_mm512_reduce_add_ps(total));
    }
}

// One key whose scales the integer path cannot take (or any key when the query is not FP4-representable): the
// key decoded to fp32 (each block of 32 as its 16 even then its 16 odd elements, values times their power-of-two
// scale: exact), then fp32 products with the transposed query.
template <int HB>
DSV4_TARGET_AVX512BF16 void index_fp32_key(const IndexQuery &q, int dim, const Fp4Keys &keys, int64_t j, float *scores) {
    constexpr int n_heads = 16 * HB;
    const __m512 table = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f, -2.0f,
                                        -3.0f, -4.0f, -6.0f);
    const __m512i low4 = _mm512_set1_epi32(0x0f);
    alignas(64) float key[kIndexMaxDim];
    const uint8_t *entry = keys.entry(j);
    for (int g = 0; g < dim / 32; ++g) {
        const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(entry + g * 16)));
        const __m512 scale = _mm512_set1_ps(e8m0_to_f32(entry[dim / 2 + g]));
        _mm512_store_ps(key + g * 32, _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(codes, low4), table), scale));
        _mm512_store_ps(key + g * 32 + 16, _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), table), scale));
    }
    __m512 acc[1][HB];
    for (int b = 0; b < HB; ++b) acc[0][b] = _mm512_setzero_ps();
    for (int c = 0; c < dim; ++c) {
        const __m512 kc = _mm512_set1_ps(key[c]);
        for (int b = 0; b < HB; ++b)
            acc[0][b] = _mm512_fmadd_ps(_mm512_loadu_ps(q.transposed + int64_t(c) * n_heads + b * 16), kc, acc[0][b]);
    }
    index_head_sums<1, HB>(acc, q.weights, scores + j);
}

// 2·e2m1 + 12 of the 16 codes (0 .. 24: unsigned, as vpdpbusd's first operand takes them), one table per 128-bit
// lane for vpshufb.
constexpr std::array<uint8_t, 16> kFp4TwiceOffset = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};

// Whether a key's scale codes keep every term of the integer path exact (IndexQuery's key code range).
DSV4_TARGET_AVX512BF16 inline bool key_takes_int8(const IndexQuery &q, const uint8_t *entry, int dim) {
    return q.int8 && codes_in_range(entry + dim / 2, dim / 32, q.key_code_lo, q.key_code_hi);
}

// KB keys against every head block with exact integer dots: each key decodes to bytes 2·e2m1 + 12 in the decode
// order (index_int8_position_dim), and per block of 32 dims, vpdpbusd adds 4 products per head to an int32 sum from
// zero; minus the query's offset that is the exact integer Σ q8·(2·e2m1), times 2^(query block exponent - 1) ·
// 2^(key scale - 128) (both powers of two, the product normal: exact), added to the head's fp32 dot block by block.
template <int KB, int HB>
DSV4_TARGET_AVX512BF16 void index_int8_block(const IndexQuery &q, int dim, const Fp4Keys &keys, int64_t j, float *scores) {
    constexpr int n_heads = 16 * HB;  // compile-time: the sums stay in registers
    const int chunks = (dim + 127) / 128;
    alignas(64) uint8_t key_bytes[KB][kIndexMaxDim];
    float key_scale[KB][kIndexMaxDim / 32];
    const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i *>(kFp4TwiceOffset.data())));
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (int k = 0; k < KB; ++k) {
        const uint8_t *entry = keys.entry(j + k);
        for (int z = 0; z < chunks; ++z) {
            const int bytes = std::min(64, dim / 2 - 64 * z);
            const __m512i codes = _mm512_maskz_loadu_epi8(bytes == 64 ? ~__mmask64(0) : (__mmask64(1) << bytes) - 1, entry + 64 * z);
            const __m512i lo = _mm512_shuffle_epi8(table, _mm512_and_si512(codes, low4));
            const __m512i hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(codes, 4), low4));
            _mm512_store_si512(key_bytes[k] + 128 * z, _mm512_unpacklo_epi8(lo, hi));
            _mm512_store_si512(key_bytes[k] + 128 * z + 64, _mm512_unpackhi_epi8(lo, hi));
        }
        for (int b = 0; b < dim / 32; ++b) {  // 2^(code-128): codes 2 .. 254 (key_takes_int8), a normal float
            const uint32_t bits = uint32_t(entry[dim / 2 + b] - 1) << 23;
            std::memcpy(&key_scale[k][b], &bits, 4);
        }
    }
    __m512 acc[KB][HB];
    for (int k = 0; k < KB; ++k)
        for (int h = 0; h < HB; ++h) acc[k][h] = _mm512_setzero_ps();
    for (int b = 0; b < dim / 32; ++b) {
        __m512i dot[KB][HB];
        for (int k = 0; k < KB; ++k)
            for (int h = 0; h < HB; ++h) dot[k][h] = _mm512_setzero_si512();
        // block b's dwords: 4 in each half of its chunk (see index_int8_position_dim)
        const int g0 = 32 * (b / 4) + 4 * (b % 4);
        for (const int g : {g0, g0 + 1, g0 + 2, g0 + 3, g0 + 16, g0 + 17, g0 + 18, g0 + 19}) {
            __m512i kb[KB];
            for (int k = 0; k < KB; ++k) {
                int32_t four;
                std::memcpy(&four, key_bytes[k] + 4 * g, 4);
                kb[k] = _mm512_set1_epi32(four);
            }
            for (int h = 0; h < HB; ++h) {
                const __m512i qv = _mm512_loadu_si512(q.int8 + int64_t(g) * n_heads + 16 * h);
                for (int k = 0; k < KB; ++k) dot[k][h] = _mm512_dpbusd_epi32(dot[k][h], kb[k], qv);
            }
        }
        for (int h = 0; h < HB; ++h) {
            const __m512i offset = _mm512_loadu_si512(q.int8_offset + int64_t(b) * n_heads + 16 * h);
            const __m512 qscale = _mm512_loadu_ps(q.int8_scale + int64_t(b) * n_heads + 16 * h);
            for (int k = 0; k < KB; ++k) {
                const __m512 scale = _mm512_mul_ps(qscale, _mm512_set1_ps(key_scale[k][b]));
                const __m512 term = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(dot[k][h], offset)), scale);
                acc[k][h] = _mm512_add_ps(acc[k][h], term);
            }
        }
    }
    index_head_sums<KB, HB>(acc, q.weights, scores + j);
}

template <int KB, int HB>
DSV4_TARGET_AVX512BF16 void index_fp4_keys_block(const IndexQuery &q, int dim, const Fp4Keys &keys, int64_t j, float *scores) {
    bool all = true;
    for (int k = 0; k < KB && all; ++k) all = key_takes_int8(q, keys.entry(j + k), dim);
    if (all) return index_int8_block<KB, HB>(q, dim, keys, j, scores);
    for (int k = 0; k < KB; ++k)
        if (key_takes_int8(q, keys.entry(j + k), dim)) index_int8_block<1, HB>(q, dim, keys, j + k, scores);
        else index_fp32_key<HB>(q, dim, keys, j + k, scores);
}

// Keys [j0, j1) for HB head blocks: KB keys at a time (KB · HB sums in registers), then one by one.
template <int KB, int HB>
DSV4_TARGET_AVX512BF16 void index_keys_range(const IndexQuery &q, int dim, const Fp4Keys &keys, int64_t j0, int64_t j1,
                                             float *scores) {
    int64_t j = j0;
    for (; j + KB <= j1; j += KB) index_fp4_keys_block<KB, HB>(q, dim, keys, j, scores);
    for (; j < j1; ++j) index_fp4_keys_block<1, HB>(q, dim, keys, j, scores);
}
}  // namespace

DSV4_TARGET_AVX512BF16 void index_scores_avx512(const IndexQuery &query, int n_heads, int dim, const Fp4Keys &keys,
                                                int64_t j0, int64_t j1, float *scores) {
    switch (n_heads / 16) {  // up to 64 heads (the backend's limit), 16 to a vector
    case 1: return index_keys_range<4, 1>(query, dim, keys, j0, j1, scores);
    case 2: return index_keys_range<4, 2>(query, dim, keys, j0, j1, scores);
    case 3: return index_keys_range<2, 3>(query, dim, keys, j0, j1, scores);
    default: return index_keys_range<2, 4>(query, dim, keys, j0, j1, scores);
    }
}

// e4m3 codes to fp32 by bit arithmetic, 16 at a time: a normal code's exponent and mantissa fields move into the
// float's (rebiased by 120), a subnormal's mantissa m is m · 2^-9 (an exact conversion and product); the NaN
// codes stay NaN, the sign moves to bit 31. Then the product with the block's scale and the rounding to bf16, as
// the scalar decode (f32_to_bf16: round half to even on the bits; NaN stays a quiet NaN).
DSV4_TARGET_AVX512BF16 void decode_kv_entries_avx512(const Fp8Entries &e, int64_t j0, int64_t j1, uint16_t *rows) {
    const int d = e.nope_dim + e.rope_dim;
    const __m512i magnitude_mask = _mm512_set1_epi32(0x7f), bias = _mm512_set1_epi32(120 << 23);
    const __m512 subnormal_unit = _mm512_set1_ps(1.0f / 512.0f);
    for (int64_t j = j0; j < j1; ++j) {
        const uint8_t *entry = e.entries[j];
        uint16_t *row = rows + j * d;
        for (int c = 0; c < e.nope_dim; c += 16) {
            const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(entry + c)));
            const __m512i mag = _mm512_and_si512(x, magnitude_mask);
            __m512 v = _mm512_mask_blend_ps(_mm512_cmpge_epu32_mask(mag, _mm512_set1_epi32(8)),
                                            _mm512_mul_ps(_mm512_cvtepi32_ps(mag), subnormal_unit),
                                            _mm512_castsi512_ps(_mm512_add_epi32(_mm512_slli_epi32(mag, 20), bias)));
            v = _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(mag, magnitude_mask), v, _mm512_set1_ps(NAN));
            const __m512i sign = _mm512_slli_epi32(_mm512_andnot_si512(magnitude_mask, x), 24);
            v = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v), sign));
            const float scale = core::e8m0_to_f32(entry[e.nope_dim + c / kKvEntryScaleBlock]);
            const __m512i bits = _mm512_castps_si512(round_bf16_ps(_mm512_mul_ps(v, _mm512_set1_ps(scale))));
            _mm256_storeu_si256(reinterpret_cast<__m256i *>(row + c), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
        }
        std::memcpy(row + e.nope_dim, entry + e.nope_dim + e.nope_dim / kKvEntryScaleBlock, size_t(e.rope_dim) * 2);
    }
}

}  // namespace dsv4::backend::cpu
