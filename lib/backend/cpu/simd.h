// AVX512-BF16 building blocks the CPU kernels share: the target attribute, the scale-code ranges the kernels take
// directly, the e2m1 and e4m3 decode tables and the FP8 decode, the prefetch distances, bf16 rounding of vectors.
#pragma once
// GCC 12's AVX-512 headers trip its own uninitialised-value warnings (_mm512_undefined_*, GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <array>
#include <cstdint>

#include "core/numeric.h"

namespace dsv4::backend::cpu::simd {
using core::round_bf16;

#define DSV4_TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,avx512bf16")))

// bf16 bits of the 128 e4m3 magnitudes.
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

// Scale codes the kernels take directly; other rows take the exact scalar path. FP8 weights (and the indexer's FP4
// keys) get 2^(code-127) folded into their bf16 exponents, which keeps every nonzero decoded value normal for codes
// in [lo, hi]; the FP4 expert tiles multiply each group's partial by it (a normal float within the same range).
constexpr int kFp4CodeLo = 2, kFp4CodeHi = 252;    // e2m1 magnitudes 0.5 .. 6: exponents -1 .. 2
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
DSV4_TARGET_AVX512BF16 inline __m512 round_bf16_ps(__m512 x) {
    const __m512i b = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(int(0xffff0000u))));
}

// Software prefetch: the hardware prefetcher alone leaves the kernels latency-bound on cold weights. A GEMV
// (one column) prefetches the next row tile (rows r+R.., same columns), where a thread's next loads go: a
// distance along the row itself falls into the current tile when rows are short. With several columns the
// step is slower and a fixed distance along the row measured better (bench_kernels).
constexpr int64_t kPrefetchAlongRow = 1024;
// FP8 rows of 1 KiB (the attention's wq_b, 32768 x 1024) prefetch two row tiles ahead: one tile (4 KiB) left the
// GEMV at 65% of the bandwidth, two reached 74-75% (same runs); the expert shapes' tiles are 8 KiB already.
constexpr int64_t kMinPrefetchDistance = 8192;
// The packed layout's 16-row blocks are sequential streams; its kernels prefetch this far ahead along each.
constexpr int64_t kStreamPrefetch = 1024;

// bf16 bits of the 16 e2m1 codes, twice: vpermw reads the low 5 bits of each index word, so bit 4 (the next
// code's lowest bit) must not matter.
constexpr std::array<uint16_t, 32> kFp4Bf16 = {
    0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0, 0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0,
    0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0, 0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0};

// The e4m3 magnitudes' bf16 values with a block's scale 2^(code-127) folded into the exponents (entry 0 stays
// zero), split into the low and the high bytes of the 128 words: vpermt2b tables (two vectors each).
struct Fp8Table {
    __m512i lo[2], hi[2];
};
DSV4_TARGET_AVX512BF16 inline Fp8Table fp8_scaled_table(uint8_t scale_code) {
    const __m512i delta = _mm512_set1_epi16(short((int(scale_code) - 127) << 7));
    __m512i words[4];
    for (int q = 0; q < 4; ++q) words[q] = _mm512_add_epi16(_mm512_loadu_si512(kFp8Lut.data() + 32 * q), delta);
    words[0] = _mm512_mask_blend_epi16(1, words[0], _mm512_setzero_si512());
    alignas(64) static constexpr std::array<uint8_t, 64> kEven = [] {
        std::array<uint8_t, 64> a{};
        for (int i = 0; i < 64; ++i) a[size_t(i)] = uint8_t(2 * i);  // bytes 0..127 of two vectors: index bit 6 picks
        return a;
    }();
    const __m512i even = _mm512_load_si512(kEven.data()), odd = _mm512_add_epi8(even, _mm512_set1_epi8(1));
    Fp8Table s;
    for (int h = 0; h < 2; ++h) {
        s.lo[h] = _mm512_permutex2var_epi8(words[2 * h], even, words[2 * h + 1]);
        s.hi[h] = _mm512_permutex2var_epi8(words[2 * h], odd, words[2 * h + 1]);
    }
    return s;
}
// 64 e4m3 codes to two bf16 vectors with the table's scale folded in (exact for scale codes in [kFp8CodeLo,
// kFp8CodeHi]), in the fp8_lanes order: one byte lookup per half of each word, the sign into the high byte, then
// byte interleaves.
DSV4_TARGET_AVX512BF16 inline void fp8_decode64(const uint8_t *codes, const Fp8Table &s, __m512i out[2]) {
    const __m512i x = _mm512_loadu_si512(codes);
    const __m512i lo = _mm512_permutex2var_epi8(s.lo[0], x, s.lo[1]);
    const __m512i hi = _mm512_or_si512(_mm512_permutex2var_epi8(s.hi[0], x, s.hi[1]), _mm512_and_si512(x, _mm512_set1_epi8(char(0x80))));
    out[0] = _mm512_unpacklo_epi8(lo, hi);
    out[1] = _mm512_unpackhi_epi8(lo, hi);
}

}  // namespace dsv4::backend::cpu::simd
