#include "backend/cpu/quantized_kernels.h"

// GCC 12's AVX-512 headers trip its own uninitialised-value warnings (_mm512_undefined_*, GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <vector>

#include "core/numeric.h"

namespace dsv4::backend::cpu {
namespace {
using namespace dsv4::core;

constexpr int64_t kActBlock = 128;

// ---- portable paths ----------------------------------------------------------------------------------------
// Exact scale arithmetic: per group, the fp32 partial sum times the power-of-two weight scale.
float fp4_row_dot(const Fp4Matrix &w, int64_t r, const uint16_t *act) {
    const uint8_t *packed = w.w + r * (w.cols / 2);
    const uint8_t *scales = w.scale + r * (w.cols / 32);
    float acc = 0.0f;
    for (int64_t g = 0; g < w.cols / 32; ++g) {
        float partial = 0.0f;
        for (int j = 0; j < 16; ++j) {
            const uint8_t byte = packed[g * 16 + j];
            partial += bf16_to_f32(act[g * 32 + j]) * fp4_e2m1_to_f32(byte & 0x0f);
            partial += bf16_to_f32(act[g * 32 + 16 + j]) * fp4_e2m1_to_f32(byte >> 4);
        }
        acc += partial * e8m0_to_f32(scales[g]);
    }
    return acc;
}

float fp8_row_dot(const Fp8Matrix &w, int64_t r, const uint16_t *act) {
    const uint8_t *row = w.w + r * w.cols;
    const uint8_t *scales = w.scale + (r / 128) * w.scale_cols();
    float acc = 0.0f;
    for (int64_t b = 0; b * kActBlock < w.cols; ++b) {
        float partial = 0.0f;
        for (int64_t c = b * kActBlock; c < std::min(w.cols, (b + 1) * kActBlock); ++c)
            partial += bf16_to_f32(act[c]) * fp8_e4m3_to_f32(row[c]);
        acc += partial * e8m0_to_f32(scales[b]);
    }
    return acc;
}

// ---- AVX-512 BF16 -------------------------------------------------------------------------------------------
#define DSV4_TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

// bf16 bits of the 16 e2m1 codes, and of the 128 e4m3 magnitudes.
constexpr std::array<uint16_t, 32> kFp4Lut = {0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0,
                                              0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0};
// Computed at compile time: a table filled by a dynamic initialiser could be read before it runs.
constexpr uint16_t e4m3_magnitude_to_bf16(int m) {
    const int e = m >> 3, f = m & 7;
    if (e > 0) return uint16_t(((e + 120) << 7) | (f << 4));  // (1 + f/8) · 2^(e-7)
    if (f == 0) return 0;
    int top = 2;  // subnormal f · 2^-9: normalise on f's highest bit
    while (!(f >> top)) --top;
    return uint16_t(((top - 9 + 127) << 7) | ((f << (7 - top)) & 0x7f));
}
constexpr std::array<uint16_t, 128> make_fp8_magnitude_lut() {
    std::array<uint16_t, 128> lut{};
    for (int m = 0; m < 128; ++m) lut[size_t(m)] = e4m3_magnitude_to_bf16(m);
    return lut;
}
constexpr std::array<uint16_t, 128> kFp8Lut = make_fp8_magnitude_lut();

// A folded scale 2^(code-127) keeps every nonzero decoded value a normal bf16 when code lies in [lo, hi].
constexpr int kFp4CodeLo = 2, kFp4CodeHi = 252;    // e2m1 magnitudes 0.5 .. 6: bf16 exponents 126 .. 129
constexpr int kFp8CodeLo = 10, kFp8CodeHi = 246;   // e4m3 magnitudes 2^-9 .. 448: bf16 exponents 118 .. 135

DSV4_TARGET_AVX512BF16 inline bool codes_in_range(const uint8_t *codes, int64_t n, int lo, int hi) {
    int64_t i = 0;
    const __m512i vlo = _mm512_set1_epi8(char(lo)), vhi = _mm512_set1_epi8(char(hi));
    for (; i + 64 <= n; i += 64) {
        const __m512i v = _mm512_loadu_si512(codes + i);
        if (_mm512_cmplt_epu8_mask(v, vlo) | _mm512_cmpgt_epu8_mask(v, vhi)) return false;
    }
    for (; i < n; ++i)
        if (codes[i] < lo || codes[i] > hi) return false;
    return true;
}

DSV4_TARGET_AVX512BF16 inline float store_bf16(__m512 acc) { return round_bf16(_mm512_reduce_add_ps(acc)); }

template <int NC>
DSV4_TARGET_AVX512BF16 void fp4_row(const Fp4Matrix &w, int64_t r, const uint16_t *act, int64_t k, float *y) {
    const int64_t groups = w.cols / 32;
    const uint8_t *packed = w.w + r * (w.cols / 2);
    const uint8_t *scales = w.scale + r * groups;
    const __m512i lut = _mm512_loadu_si512(kFp4Lut.data());
    const __mmask32 nonzero = 0xfefe;  // entries 0 and 8 are ±0 and keep their value
    const __m256i low4 = _mm256_set1_epi16(0x0f);
    __m512 acc[NC];
    for (int i = 0; i < NC; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
        const __m256i bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(packed + g * 16)));
        // words 0..15: low nibbles of bytes 0..15 (even elements); words 16..31: high nibbles (odd elements)
        const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(bytes, low4)),
                                               _mm256_srli_epi16(bytes, 4), 1);
        const __m512i delta = _mm512_set1_epi16(short((int(scales[g]) - 127) << 7));
        const __m512i scaled = _mm512_mask_add_epi16(lut, nonzero, lut, delta);
        const __m512bh wv = (__m512bh)_mm512_permutexvar_epi16(idx, scaled);
        for (int i = 0; i < NC; ++i)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_loadu_si512(act + i * k + g * 32), wv);
    }
    for (int i = 0; i < NC; ++i) y[int64_t(i) * w.rows + r] = store_bf16(acc[i]);
}

template <int NC>
DSV4_TARGET_AVX512BF16 void fp8_row(const Fp8Matrix &w, int64_t r, const uint16_t *act, int64_t k, float *y) {
    const uint8_t *row = w.w + r * w.cols;
    const uint8_t *scales = w.scale + (r / 128) * w.scale_cols();
    const __m512i t0 = _mm512_loadu_si512(kFp8Lut.data()), t1 = _mm512_loadu_si512(kFp8Lut.data() + 32);
    const __m512i t2 = _mm512_loadu_si512(kFp8Lut.data() + 64), t3 = _mm512_loadu_si512(kFp8Lut.data() + 96);
    const __m512i bit6 = _mm512_set1_epi16(0x40), sign = _mm512_set1_epi16(0x80);
    __m512 acc[NC];
    for (int i = 0; i < NC; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b * kActBlock < w.cols; ++b) {
        const __m512i delta = _mm512_set1_epi16(short((int(scales[b]) - 127) << 7));
        const __m512i s0 = _mm512_mask_add_epi16(t0, 0xfffffffe, t0, delta);  // entry 0 is zero
        const __m512i s1 = _mm512_add_epi16(t1, delta), s2 = _mm512_add_epi16(t2, delta);
        const __m512i s3 = _mm512_add_epi16(t3, delta);
        for (int q = 0; q < 4; ++q) {
            const int64_t c = b * kActBlock + q * 32;
            const __m512i x = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(row + c)));
            const __m512i lo = _mm512_permutex2var_epi16(s0, x, s1);
            const __m512i hi = _mm512_permutex2var_epi16(s2, x, s3);
            __m512i v = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(x, bit6), lo, hi);
            v = _mm512_or_si512(v, _mm512_slli_epi16(_mm512_and_si512(x, sign), 8));
            for (int i = 0; i < NC; ++i)
                acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_loadu_si512(act + i * k + c), (__m512bh)v);
        }
    }
    for (int i = 0; i < NC; ++i) y[int64_t(i) * w.rows + r] = store_bf16(acc[i]);
}

template <typename M, void (*Row1)(const M &, int64_t, const uint16_t *, int64_t, float *),
          void (*Row2)(const M &, int64_t, const uint16_t *, int64_t, float *),
          void (*Row4)(const M &, int64_t, const uint16_t *, int64_t, float *),
          void (*Row8)(const M &, int64_t, const uint16_t *, int64_t, float *)>
void rows_in_column_tiles(const M &w, const uint16_t *act, int64_t n, int64_t r, float *y) {
    // Up to 8 columns share one decode of the weight row; a row of weights stays in L1 for the next tile.
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) Row8(w, r, act + i * w.cols, w.cols, y + i * w.rows);
    if (n - i >= 4) {
        Row4(w, r, act + i * w.cols, w.cols, y + i * w.rows);
        i += 4;
    }
    if (n - i >= 2) {
        Row2(w, r, act + i * w.cols, w.cols, y + i * w.rows);
        i += 2;
    }
    if (n - i == 1) Row1(w, r, act + i * w.cols, w.cols, y + i * w.rows);
}

}  // namespace

void quantize_activations(const float *x, int64_t n, int64_t k, ActLayout layout, uint16_t *out) {
    const int64_t blocks = (k + kActBlock - 1) / kActBlock;
    std::vector<uint8_t> codes(static_cast<size_t>(k));
    std::vector<int8_t> exps(static_cast<size_t>(blocks));
    for (int64_t i = 0; i < n; ++i) {
        quantize_blocks(BlockFormat::fp8_e4m3, x + i * k, size_t(k), kActBlock, codes.data(), exps.data());
        uint16_t *o = out + i * k;
        for (int64_t c = 0; c < k; ++c) {
            const uint16_t v = f32_to_bf16(fp8_e4m3_to_f32(codes[size_t(c)]) * exp2i(exps[size_t(c / kActBlock)]));
            const int64_t at = layout == ActLayout::natural ? c : (c & ~int64_t(31)) + ((c & 1) ? 16 : 0) + ((c & 31) >> 1);
            o[at] = v;
        }
    }
}

void fp4_rows_generic(const Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < n; ++i) y[i * w.rows + r] = round_bf16(fp4_row_dot(w, r, act + i * w.cols));
}

void fp8_rows_generic(const Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < n; ++i) y[i * w.rows + r] = round_bf16(fp8_row_dot(w, r, act + i * w.cols));
}

DSV4_TARGET_AVX512BF16 void fp4_rows_avx512bf16(const Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0,
                                                 int64_t r1, float *y) {
    const int64_t groups = w.cols / 32;
    for (int64_t r = r0; r < r1; ++r) {
        if (!codes_in_range(w.scale + r * groups, groups, kFp4CodeLo, kFp4CodeHi)) {
            fp4_rows_generic(w, act, n, r, r + 1, y);
            continue;
        }
        rows_in_column_tiles<Fp4Matrix, fp4_row<1>, fp4_row<2>, fp4_row<4>, fp4_row<8>>(w, act, n, r, y);
    }
}

DSV4_TARGET_AVX512BF16 void fp8_rows_avx512bf16(const Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0,
                                                 int64_t r1, float *y) {
    for (int64_t r = r0; r < r1; ++r) {
        if (w.cols % kActBlock || !codes_in_range(w.scale + (r / 128) * w.scale_cols(), w.scale_cols(), kFp8CodeLo, kFp8CodeHi)) {
            fp8_rows_generic(w, act, n, r, r + 1, y);
            continue;
        }
        rows_in_column_tiles<Fp8Matrix, fp8_row<1>, fp8_row<2>, fp8_row<4>, fp8_row<8>>(w, act, n, r, y);
    }
}

}  // namespace dsv4::backend::cpu
