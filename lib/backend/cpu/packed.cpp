#include "backend/cpu/packed.h"

#include <algorithm>
#include <cstring>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"

namespace dsv4::backend::cpu {
namespace {
using namespace simd;
using core::Fp4Matrix;
using core::Fp8Matrix;

// Tile shapes: NC columns × blocks(NC) blocks, the sums (FP4: a group's partials) of all of them in registers.
// Many columns go 12 at a time over one block (the decode shared by 12 columns, 16 or 8 measured 4x / 1.2x
// slower: spills / latency), 4 columns over 4 blocks, 1 or 2 over 8 (bench_kernels; Zen 5).
struct TilePlan {
    static constexpr int kWide = 12;
    static constexpr int blocks(int nc) { return nc <= 2 ? 8 : nc == 4 ? 4 : 1; }
};

// Low nibbles (even elements) or high nibbles (odd elements) of 4 bytes, as the 4 nibbles of a word.
inline uint16_t gather_nibbles(uint32_t bytes) {
    uint32_t x = bytes & 0x0f0f0f0fu;
    x = (x | x >> 4) & 0x00ff00ffu;
    return uint16_t((x | x >> 8) & 0xffffu);
}

DSV4_TARGET_AVX512BF16 inline void store_sums(__m512 sums, float *y) {
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, sums);
    for (int l = 0; l < 16; ++l) y[l] = round_bf16(lanes[l]);
}

DSV4_TARGET_AVX512BF16 inline __m512bh broadcast_pair(const uint16_t *pair) {
    uint32_t bits;
    std::memcpy(&bits, pair, 4);
    return (__m512bh)_mm512_set1_epi32(int(bits));
}

// RB blocks (16 rows each) from block b × NC columns. Per group of 32 elements: 16 vdpbf16ps into a partial
// from zero (pairs in element order), then sum += partial · 2^(code-127), an FMA.
template <int RB, int NC>
DSV4_TARGET_AVX512BF16 void fp4_packed_tile(const Fp4Matrix &w, int64_t b, const uint16_t *act, float *y) {
    const int64_t k = w.cols, groups = k / 32, block_bytes = kPackedBlockRows * k / 2;
    const uint8_t *data = w.packed + b * block_bytes;
    const uint8_t *scales = w.packed + w.rows * k / 2 + b * groups * kPackedBlockRows;
    const __m512i table = _mm512_loadu_si512(kFp4Bf16.data());
    // the running sums live in L1: each is touched once per group, and the registers hold the partials
    alignas(64) float sum[RB][NC][16] = {};
    for (int64_t g = 0; g < groups; ++g) {
        __m512 part[RB][NC];
        for (int j = 0; j < RB; ++j)
            for (int i = 0; i < NC; ++i) part[j][i] = _mm512_setzero_ps();
        for (int64_t u = 4 * g; u < 4 * g + 4; ++u)
            for (int j = 0; j < RB; ++j) {
                const uint8_t *unit = data + j * block_bytes + u * 64;
                _mm_prefetch(reinterpret_cast<const char *>(unit + kStreamPrefetch), _MM_HINT_T0);
                const __m512i bytes = _mm512_loadu_si512(unit);
                for (int q = 0; q < 4; ++q) {
                    const __m512bh wv = (__m512bh)_mm512_permutexvar_epi16(q ? _mm512_srli_epi16(bytes, 4 * q) : bytes, table);
                    for (int i = 0; i < NC; ++i)
                        part[j][i] = _mm512_dpbf16_ps(part[j][i], wv, broadcast_pair(act + i * k + 8 * u + 2 * q));
                }
            }
        for (int j = 0; j < RB; ++j) {
            const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i *>(scales + (j * groups + g) * kPackedBlockRows));
            const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu8_epi32(codes), 23));
            for (int i = 0; i < NC; ++i)
                _mm512_store_ps(sum[j][i], _mm512_fmadd_ps(part[j][i], scale, _mm512_load_ps(sum[j][i])));
        }
    }
    for (int j = 0; j < RB; ++j)
        for (int i = 0; i < NC; ++i) store_sums(_mm512_load_ps(sum[j][i]), y + i * w.rows + (b + j) * kPackedBlockRows);
}

// RB blocks from block b (within one 128-row scale block) × NC columns: the block scale folded into the decoded
// weights, every pair added in turn to one sum per output.
template <int RB, int NC>
DSV4_TARGET_AVX512BF16 void fp8_packed_tile(const Fp8Matrix &w, int64_t b, const uint16_t *act, float *y) {
    const int64_t k = w.cols, block_bytes = kPackedBlockRows * k;
    const uint8_t *data = w.packed + b * block_bytes;
    const uint8_t *scale_row = w.scale + (b * kPackedBlockRows / 128) * w.scale_cols();
    __m512 sum[RB][NC];
    for (int j = 0; j < RB; ++j)
        for (int i = 0; i < NC; ++i) sum[j][i] = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < k / 128; ++kb) {
        const Fp8Table table = fp8_scaled_table(scale_row[kb]);
        for (int64_t u = 32 * kb; u < 32 * kb + 32; ++u)
            for (int j = 0; j < RB; ++j) {
                const uint8_t *unit = data + j * block_bytes + u * 64;
                _mm_prefetch(reinterpret_cast<const char *>(unit + kStreamPrefetch), _MM_HINT_T0);
                __m512i wv[2];
                fp8_decode64(unit, table, wv);
                for (int v = 0; v < 2; ++v)
                    for (int i = 0; i < NC; ++i)
                        sum[j][i] = _mm512_dpbf16_ps(sum[j][i], (__m512bh)wv[v], broadcast_pair(act + i * k + 4 * u + 2 * v));
            }
    }
    for (int j = 0; j < RB; ++j)
        for (int i = 0; i < NC; ++i) store_sums(sum[j][i], y + i * w.rows + (b + j) * kPackedBlockRows);
}

// `count` consecutive blocks from b × NC columns, in tiles of TilePlan::blocks(NC) blocks, then single blocks.
template <int NC, typename Tile>
DSV4_TARGET_AVX512BF16 void blocks_times_columns(int64_t b, int64_t count, Tile &&tile) {
    constexpr int R = TilePlan::blocks(NC);
    for (; count >= R; count -= R, b += R) tile(std::integral_constant<int, R>{}, b);
    if constexpr (R > 1)
        for (; count > 0; --count, ++b) tile(std::integral_constant<int, 1>{}, b);
}

// Blocks [b0, b1) × n columns (columns in blocks whose activations stay in L2): runs of blocks that the kernel
// takes (up to run_end(first block), the blocks that may share a tile) go to it, the others to `fallback`.
template <typename Takes, typename RunEnd, typename Kernel, typename Fallback>
DSV4_TARGET_AVX512BF16 void packed_rows(int64_t b0, int64_t b1, int64_t n, int64_t k, int64_t rows, const uint16_t *act,
                                        float *y, Takes &&takes, RunEnd &&run_end, Kernel &&kernel,
                                        Fallback &&fallback) {
    constexpr int64_t kColumnBlock = 64;
    for (int64_t i0 = 0; i0 < n; i0 += kColumnBlock) {
        const int64_t nb = std::min(kColumnBlock, n - i0);
        const uint16_t *a = act + i0 * k;
        float *yy = y + i0 * rows;
        for (int64_t b = b0; b < b1;) {
            if (!takes(b)) {
                fallback(b, a, nb, yy);
                ++b;
                continue;
            }
            int64_t end = b + 1;
            while (end < std::min(b1, run_end(b)) && takes(end)) ++end;
            for (int64_t i = 0; i < nb;) {
                constexpr int64_t wide = TilePlan::kWide;
                const int64_t nc = nb - i >= wide ? wide : nb - i >= 4 ? 4 : nb - i >= 2 ? 2 : 1;
                const uint16_t *ai = a + i * k;
                float *yi = yy + i * rows;
                auto run = [&](auto cols) {
                    blocks_times_columns<decltype(cols)::value>(b, end - b, [&](auto r, int64_t first) {
                        kernel(r, cols, first, ai, yi);
                    });
                };
                if (nc == wide) run(std::integral_constant<int, TilePlan::kWide>{});
                else if (nc == 4) run(std::integral_constant<int, 4>{});
                else if (nc == 2) run(std::integral_constant<int, 2>{});
                else run(std::integral_constant<int, 1>{});
                i += nc;
            }
            b = end;
        }
    }
}

}  // namespace

bool packed_fp4_block_takes(const Fp4Matrix &w, int64_t b) {
    return w.packed[w.rows * w.cols / 2 + w.rows * (w.cols / 32) + b] != 0;
}

DSV4_TARGET_AVX512BF16 bool packed_fp8_block_takes(const Fp8Matrix &w, int64_t b) {
    return codes_in_range(w.scale + (b * kPackedBlockRows / 128) * w.scale_cols(), w.scale_cols(), kFp8CodeLo, kFp8CodeHi);
}

size_t packed_fp4_bytes(const Fp4Matrix &w) {
    if (w.rows <= 0 || w.rows % kPackedBlockRows || w.cols <= 0 || w.cols % 32) return 0;
    return size_t(w.rows) * size_t(w.cols) / 2 + size_t(w.rows) * size_t(w.cols / 32) + size_t(w.rows / kPackedBlockRows);
}

size_t packed_fp8_bytes(const Fp8Matrix &w) {
    if (w.rows <= 0 || w.rows % kPackedBlockRows || w.cols <= 0 || w.cols % 128) return 0;
    return size_t(w.rows) * size_t(w.cols);
}

void pack_fp4_rows(const Fp4Matrix &w, int64_t r0, int64_t r1, uint8_t *dst) {
    const int64_t k = w.cols, groups = k / 32;
    uint8_t *scales = dst + w.rows * k / 2, *takes = scales + w.rows * groups;
    for (int64_t b = r0 / kPackedBlockRows; b < r1 / kPackedBlockRows; ++b) {
        uint8_t *unit = dst + b * kPackedBlockRows * k / 2;
        for (int64_t u = 0; u < k / 8; ++u, unit += 64)
            for (int j = 0; j < 32; ++j) {
                uint32_t bytes;  // elements 8u .. 8u + 7 of the row, two to a byte (even ones in the low nibbles)
                std::memcpy(&bytes, w.w + (b * kPackedBlockRows + j / 2) * (k / 2) + 4 * u, 4);
                const uint16_t word = gather_nibbles((j & 1) ? bytes >> 4 : bytes);
                unit[2 * j] = uint8_t(word);
                unit[2 * j + 1] = uint8_t(word >> 8);
            }
        takes[b] = 1;
        for (int64_t g = 0; g < groups; ++g)
            for (int64_t t = 0; t < kPackedBlockRows; ++t) {
                const uint8_t code = w.scale[(b * kPackedBlockRows + t) * groups + g];
                scales[(b * groups + g) * kPackedBlockRows + t] = code;
                if (code < kFp4CodeLo || code > kFp4CodeHi) takes[b] = 0;
            }
    }
}

void pack_fp8_rows(const Fp8Matrix &w, int64_t r0, int64_t r1, uint8_t *dst) {
    const int64_t k = w.cols;
    for (int64_t b = r0 / kPackedBlockRows; b < r1 / kPackedBlockRows; ++b) {
        uint8_t *unit = dst + b * kPackedBlockRows * k;
        for (int64_t u = 0; u < k / 4; ++u, unit += 64)
            for (int lane = 0; lane < 4; ++lane)
                for (int v = 0; v < 2; ++v)
                    for (int t = 0; t < 8; ++t)
                        unit[16 * lane + 8 * v + t] = w.w[(b * kPackedBlockRows + 4 * lane + t / 2) * k + 4 * u + 2 * v + (t & 1)];
    }
}

DSV4_TARGET_AVX512BF16 void fp4_packed_rows(const Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1,
                                            float *y) {
    packed_rows(
        r0 / kPackedBlockRows, r1 / kPackedBlockRows, n, w.cols, w.rows, act, y,
        [&](int64_t b) { return packed_fp4_block_takes(w, b); }, [](int64_t b) { return b + TilePlan::blocks(1); },
        [&](auto rb, auto nc, int64_t b, const uint16_t *a, float *yy) {
            fp4_packed_tile<decltype(rb)::value, decltype(nc)::value>(w, b, a, yy);
        },
        [&](int64_t b, const uint16_t *a, int64_t nb, float *yy) {
            fp4_rows_generic(w, a, nb, b * kPackedBlockRows, (b + 1) * kPackedBlockRows, yy, ActLayout::natural);
        });
}

DSV4_TARGET_AVX512BF16 void fp8_packed_rows(const Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1,
                                            float *y) {
    constexpr int64_t kBlocksPerScale = 128 / kPackedBlockRows;
    packed_rows(
        r0 / kPackedBlockRows, r1 / kPackedBlockRows, n, w.cols, w.rows, act, y,
        [&](int64_t b) { return packed_fp8_block_takes(w, b); },
        [](int64_t b) { return (b / kBlocksPerScale + 1) * kBlocksPerScale; },  // a tile shares one scale block
        [&](auto rb, auto nc, int64_t b, const uint16_t *a, float *yy) {
            fp8_packed_tile<decltype(rb)::value, decltype(nc)::value>(w, b, a, yy);
        },
        [&](int64_t b, const uint16_t *a, int64_t nb, float *yy) {
            fp8_rows_generic(w, a, nb, b * kPackedBlockRows, (b + 1) * kPackedBlockRows, yy, ActLayout::natural);
        });
}

}  // namespace dsv4::backend::cpu
