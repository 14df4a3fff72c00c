// The packed linears on AMX tiles (CPUs with AMX-BF16 whose OS grants tile data; Isa::amx). A 64-byte unit of the
// packed layout decodes into vectors of 16 rows x one bf16 pair: exactly the rows of an AMX B tile (16 pair rows
// of 16 outputs, 32 elements), the scales folded into the bf16 exponents (exact). A tiles are the tokens'
// activation rows as they lie in memory, C tiles hold 16 outputs of up to 16 tokens over all of k. Up to 80 tokens
// take each B tile as it is decoded; more decode a 16-row block once into a panel and pass over it.
//
// TDPBF16PS sums in an order of its own (on a Xeon, 71% of outputs differ in their bits from a VDPBF16PS chain
// over the same pairs, bench/amx_probe.cpp), but gives a token's row the same bits whether its tile holds 1 or 16
// tokens. So where AMX is used, every packed linear uses it, one token or many: results still do not depend on
// the batch size.
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

#define DSV4_TARGET_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512bf16,amx-tile,amx-bf16")))

constexpr int kTokenTiles = 5;  // C tiles 0..4; A tiles 5 (16 tokens) and 6 (a last, partial token tile); B tile 7
constexpr int64_t kPassTokens = 16 * kTokenTiles;
constexpr int64_t kTileElements = 16 * 32;                          // bf16 of one B tile
constexpr int64_t kPanelK = kAmxPanelElements / kPackedBlockRows;          // elements of k one panel holds

struct TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

DSV4_TARGET_AMX void configure(int64_t tokens) {
    TileConfig cfg;
    const int tiles = int((tokens + 15) / 16), last = int((tokens - 1) % 16 + 1);
    for (int t = 0; t < tiles; ++t) {  // C: as many rows as its token tile has tokens
        cfg.rows[t] = uint8_t(t == tiles - 1 ? last : 16);
        cfg.colsb[t] = 64;
    }
    cfg.rows[5] = 16;
    cfg.rows[6] = uint8_t(last);
    cfg.rows[7] = 16;
    cfg.colsb[5] = cfg.colsb[6] = cfg.colsb[7] = 64;
    _tile_loadconfig(&cfg);
}

// C tile t += the A rows of token tile t (32 elements from element c) x B tile 7. The tile intrinsics take their
// tile numbers as literals, hence the cases.
#define DSV4_AMX_PRODUCT(C, A)                                   \
    do {                                                         \
        _tile_loadd(A, act + (C) * 16 * k + c, int(k * 2));      \
        _tile_dpbf16ps(C, A, 7);                                 \
    } while (0)
DSV4_TARGET_AMX inline void tile_product(int t, const uint16_t *act, int64_t k, int64_t c, bool partial) {
    if (partial) {
        switch (t) {
        case 0: DSV4_AMX_PRODUCT(0, 6); break;
        case 1: DSV4_AMX_PRODUCT(1, 6); break;
        case 2: DSV4_AMX_PRODUCT(2, 6); break;
        case 3: DSV4_AMX_PRODUCT(3, 6); break;
        default: DSV4_AMX_PRODUCT(4, 6); break;
        }
    } else {
        switch (t) {
        case 0: DSV4_AMX_PRODUCT(0, 5); break;
        case 1: DSV4_AMX_PRODUCT(1, 5); break;
        case 2: DSV4_AMX_PRODUCT(2, 5); break;
        case 3: DSV4_AMX_PRODUCT(3, 5); break;
        default: DSV4_AMX_PRODUCT(4, 5); break;
        }
    }
}
#undef DSV4_AMX_PRODUCT
DSV4_TARGET_AMX inline void products(int tiles, bool partial_last, const uint16_t *act, int64_t k, int64_t c) {
    for (int t = 0; t < tiles; ++t) tile_product(t, act, k, c, partial_last && t == tiles - 1);
}
DSV4_TARGET_AMX inline void zero_tiles(int tiles) {
    _tile_zero(0);
    if (tiles > 1) _tile_zero(1);
    if (tiles > 2) _tile_zero(2);
    if (tiles > 3) _tile_zero(3);
    if (tiles > 4) _tile_zero(4);
}
DSV4_TARGET_AMX inline void store_tile(int t, float *out) {
    switch (t) {  // tile numbers are immediates
    case 0: _tile_stored(0, out, 64); break;
    case 1: _tile_stored(1, out, 64); break;
    case 2: _tile_stored(2, out, 64); break;
    case 3: _tile_stored(3, out, 64); break;
    default: _tile_stored(4, out, 64); break;
    }
}

// The scaled FP8 table of the last block scale a thread decoded with (recomputed only when the code changes).
struct Fp8TableCache {
    int code = -1;
    Fp8Table table;
};

// B tiles of block b for elements [c0, c1) (multiples of 32) of an FP8 matrix, the block scale folded in.
DSV4_TARGET_AMX void fp8_panel(const Fp8Matrix &w, int64_t b, int64_t c0, int64_t c1, uint16_t *panel,
                               Fp8TableCache &cache) {
    const uint8_t *data = w.packed + b * kPackedBlockRows * w.cols;
    const uint8_t *scale_row = w.scale + (b * kPackedBlockRows / 128) * w.scale_cols();
    for (int64_t u = c0 / 4; u < c1 / 4; ++u) {  // unit u: pair rows 2u, 2u + 1 from c0
        if (scale_row[u / 32] != cache.code) {
            cache.code = scale_row[u / 32];
            cache.table = fp8_scaled_table(uint8_t(cache.code));
        }
        const uint8_t *unit = data + u * 64;
        _mm_prefetch(reinterpret_cast<const char *>(unit + kStreamPrefetch), _MM_HINT_T0);
        __m512i v[2];
        fp8_decode64(unit, cache.table, v);
        uint16_t *dst = panel + (u - c0 / 4) * 64;
        _mm512_storeu_si512(dst, v[0]);
        _mm512_storeu_si512(dst + 32, v[1]);
    }
}

// B tiles of block b for elements [c0, c1) (multiples of 32) of an FP4 matrix, each row's group scale added to the
// bf16 exponents of its nonzero values (exact for the codes the kernels take).
DSV4_TARGET_AMX void fp4_panel(const Fp4Matrix &w, int64_t b, int64_t c0, int64_t c1, uint16_t *panel) {
    const int64_t groups = w.cols / 32;
    const uint8_t *data = w.packed + b * kPackedBlockRows * w.cols / 2;
    const uint8_t *scales = w.packed + w.rows * w.cols / 2 + b * groups * kPackedBlockRows;
    const __m512i table = _mm512_loadu_si512(kFp4Bf16.data()), magnitude = _mm512_set1_epi16(0x7fff);
    for (int64_t g = c0 / 32; g < c1 / 32; ++g) {
        // row j's delta (code - 127) << 7 in both words of dword j
        const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(scales + g * kPackedBlockRows)));
        const __m512i d = _mm512_slli_epi32(_mm512_sub_epi32(codes, _mm512_set1_epi32(127)), 7);
        const __m512i delta = _mm512_or_si512(_mm512_and_si512(d, _mm512_set1_epi32(0xffff)), _mm512_slli_epi32(d, 16));
        for (int64_t u = 4 * g; u < 4 * g + 4; ++u) {  // unit u: pair rows 4u .. 4u + 3 from c0
            const uint8_t *unit = data + u * 64;
            _mm_prefetch(reinterpret_cast<const char *>(unit + kStreamPrefetch), _MM_HINT_T0);
            const __m512i bytes = _mm512_loadu_si512(unit);
            for (int q = 0; q < 4; ++q) {
                const __m512i v = _mm512_permutexvar_epi16(q ? _mm512_srli_epi16(bytes, 4 * q) : bytes, table);
                const __m512i scaled = _mm512_mask_add_epi16(v, _mm512_test_epi16_mask(v, magnitude), v, delta);
                _mm512_storeu_si512(panel + (4 * (u - c0 / 8) + q) * 32, scaled);
            }
        }
    }
}

// C tiles of `tokens` tokens (from token i0) to y's rows of block b, rounded to bf16.
DSV4_TARGET_AMX void store_outputs(int tiles, int64_t i0, int64_t tokens, int64_t b, int64_t rows, float *y) {
    alignas(64) float out[16 * 16];
    for (int t = 0; t < tiles; ++t) {
        store_tile(t, out);
        for (int64_t i = t * 16; i < std::min(tokens, int64_t(t) * 16 + 16); ++i)
            for (int l = 0; l < 16; ++l) y[(i0 + i) * rows + b * kPackedBlockRows + l] = round_bf16(out[(i - t * 16) * 16 + l]);
    }
}

// Rows [r0, r1) x n tokens, each output summed by the C tiles over all of k in 32-element steps. Up to 80 tokens
// (decode, batches) take each B tile as it is decoded (it stays in L1); more (prefill) decode a block's tiles once
// into the panel (all of k when it fits, else per pass and chunk) and pass over it 80 tokens at a time. Blocks
// whose scales the kernels cannot take go to the exact generic loops (natural layout), as in packed.cpp.
template <typename Takes, typename Panel, typename Fallback>
DSV4_TARGET_AMX void amx_rows(int64_t r0, int64_t r1, int64_t n, int64_t k, int64_t rows, const uint16_t *act, float *y,
                              uint16_t *panel, Takes &&takes, Panel &&decode, Fallback &&fallback) {
    if (n <= kPassTokens) {
        const int tiles = int((n + 15) / 16);
        configure(n);
        for (int64_t b = r0 / kPackedBlockRows; b < r1 / kPackedBlockRows; ++b) {
            if (!takes(b)) {
                fallback(b);
                continue;
            }
            zero_tiles(tiles);
            for (int64_t c = 0; c < k; c += 32) {
                decode(b, c, c + 32, panel);
                _tile_loadd(7, panel, 64);
                products(tiles, n % 16 != 0, act, k, c);
            }
            store_outputs(tiles, 0, n, b, rows, y);
        }
        _tile_release();
        return;
    }
    const bool whole = k <= kPanelK;
    for (int64_t b = r0 / kPackedBlockRows; b < r1 / kPackedBlockRows; ++b) {
        if (!takes(b)) {
            fallback(b);
            continue;
        }
        if (whole) decode(b, 0, k, panel);
        for (int64_t i0 = 0; i0 < n; i0 += kPassTokens) {
            const int64_t m = std::min(kPassTokens, n - i0);
            const int tiles = int((m + 15) / 16);
            configure(m);
            zero_tiles(tiles);
            for (int64_t c0 = 0; c0 < k; c0 += kPanelK) {
                const int64_t c1 = std::min(k, c0 + kPanelK);
                if (!whole) decode(b, c0, c1, panel);
                for (int64_t c = c0; c < c1; c += 32) {
                    _tile_loadd(7, panel + (c - c0) / 32 * kTileElements, 64);
                    products(tiles, m % 16 != 0, act + i0 * k, k, c);
                }
            }
            store_outputs(tiles, i0, m, b, rows, y);
            _tile_release();
        }
    }
}

}  // namespace

DSV4_TARGET_AMX void fp8_packed_rows_amx(const Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1,
                                         float *y, uint16_t *panel) {
    Fp8TableCache cache;
    amx_rows(
        r0, r1, n, w.cols, w.rows, act, y, panel,
        [&](int64_t b) { return packed_fp8_block_takes(w, b); },
        [&](int64_t b, int64_t c0, int64_t c1, uint16_t *p) { fp8_panel(w, b, c0, c1, p, cache); },
        [&](int64_t b) { fp8_rows_generic(w, act, n, b * kPackedBlockRows, (b + 1) * kPackedBlockRows, y, ActLayout::natural); });
}

DSV4_TARGET_AMX void fp4_packed_rows_amx(const Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1,
                                         float *y, uint16_t *panel) {
    amx_rows(
        r0, r1, n, w.cols, w.rows, act, y, panel, [&](int64_t b) { return packed_fp4_block_takes(w, b); },
        [&](int64_t b, int64_t c0, int64_t c1, uint16_t *p) { fp4_panel(w, b, c0, c1, p); },
        [&](int64_t b) { fp4_rows_generic(w, act, n, b * kPackedBlockRows, (b + 1) * kPackedBlockRows, y, ActLayout::natural); });
}

}  // namespace dsv4::backend::cpu
