// Does an AMX tile dot product (TDPBF16PS) give the bits of the AVX512-BF16 chain (VDPBF16PS) that the packed
// kernels use? dsv4 gives each output the same bits whatever the batch size, so an AMX prefill path must sum
// exactly as the GEMV does. For 16 output rows x 16 tokens x K elements, C = A·Bᵀ through one tile chain and
// through one vdpbf16ps chain per token, on random and on cancelling data, compared bit for bit; then the tile
// unit's bf16 rate on one core. Needs a CPU with AMX-BF16 and Linux 5.16+ (asks for tile data with arch_prctl).
// Standalone (only bench/limits.h; the bench build makes it too):
//   g++ -O2 -static -fopenmp -ffp-contract=off -o amx_probe bench/amx_probe.cpp
// GCC 12's AVX-512 headers trip its own uninitialised-value warnings (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "limits.h"

namespace {
constexpr int kArchReqXcompPerm = 0x1023, kXfeatureTileData = 18;

uint16_t bf16(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return uint16_t((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}

// C[m][n] (16 x 16) += Σ_k A[m][k]·B[n][k] over K elements: A as 16 rows of K bf16; B in the packed layout, K/2
// rows of 16 pairs (row p: element pairs (2p, 2p+1) of the 16 outputs).
__attribute__((target("amx-tile,amx-bf16"))) void amx_chain(const uint16_t *a, const uint16_t *b_pairs, int k, float *c,
                                                            int rows = 16) {
    dsv4::bench::AmxTileConfig cfg;
    for (int t : {0, 1, 2}) {
        cfg.rows[t] = uint8_t(t == 2 ? 16 : rows);
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
    _tile_loadd(0, c, 64);
    for (int k0 = 0; k0 < k; k0 += 32) {
        _tile_loadd(1, a + k0, k * 2);        // A: 16 rows x 32 bf16
        _tile_loadd(2, b_pairs + k0 * 16, 64);  // B: 16 pair rows x 16 outputs
        _tile_dpbf16ps(0, 1, 2);
    }
    _tile_stored(0, c, 64);
    _tile_release();
}

__attribute__((target("avx512f,avx512bf16"))) void avx_chain(const uint16_t *a, const uint16_t *b_pairs, int k, float *c) {
    for (int m = 0; m < 16; ++m) {
        __m512 acc = _mm512_loadu_ps(c + 16 * m);
        for (int p = 0; p < k / 2; ++p) {
            uint32_t pair;
            std::memcpy(&pair, a + m * k + 2 * p, 4);
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(b_pairs + p * 32), (__m512bh)_mm512_set1_epi32(int(pair)));
        }
        _mm512_storeu_ps(c + 16 * m, acc);
    }
}

// Models of one step acc += a0·b0 + a1·b1 (exact products): two roundings in either order, or one of the exact sum.
float step(float acc, float p_even, float p_odd, int model) {
    if (model == 0) return (acc + p_even) + p_odd;
    if (model == 1) return (acc + p_odd) + p_even;
    return float(double(acc) + double(p_even) + double(p_odd));  // exact in double for these magnitudes, then one rounding
}
float f32(uint16_t h) {
    const uint32_t b = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

}  // namespace

int main() {
    unsigned eax, ebx, ecx, edx;
    __asm__("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    const bool amx_bf16 = edx & (1u << 22), amx_tile = edx & (1u << 24);
    std::printf("CPUID: AMX-TILE %d, AMX-BF16 %d\n", amx_tile, amx_bf16);
    if (!amx_bf16 || !amx_tile) {
        std::printf("no AMX on this CPU: nothing to compare\n");
        return 0;
    }
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) != 0) {
        std::printf("arch_prctl(ARCH_REQ_XCOMP_PERM) refused: no tile data for this process\n");
        return 3;
    }
    std::mt19937 rng(5);
    int mismatches = 0, outputs = 0, row_mismatches = 0, model_match[2][3] = {};
    for (int trial = 0; trial < 200; ++trial) {
        const int k = 32 * (1 + trial % 8);
        std::vector<uint16_t> a(size_t(16 * k)), bp(size_t(k * 16));
        std::normal_distribution<float> nd(0, 1);
        for (auto &v : a) v = bf16(nd(rng) * (trial % 3 == 2 ? std::ldexp(1.0f, int(rng() % 40) - 20) : 1.0f));
        for (auto &v : bp) v = bf16(nd(rng) * (trial % 3 == 1 ? std::ldexp(1.0f, int(rng() % 40) - 20) : 1.0f));
        if (trial % 4 == 3)  // cancelling halves: the result is the rounding residue of the sums
            for (int m = 0; m < 16; ++m)
                for (int i = 0; i < k / 2; ++i) a[size_t(m * k + k / 2 + i)] = uint16_t(a[size_t(m * k + i)] ^ 0x8000);
        if (trial % 4 == 3)
            for (int p = 0; p < k / 4; ++p) std::memcpy(&bp[size_t((k / 4 + p) * 32)], &bp[size_t(p * 32)], 64);
        std::vector<float> c1(256), c2(256), init(256);
        for (int i = 0; i < 256; ++i) init[size_t(i)] = c1[size_t(i)] = c2[size_t(i)] = trial % 2 ? nd(rng) : 0.0f;
        std::vector<float> c3 = c1;
        amx_chain(a.data(), bp.data(), k, c1.data());
        avx_chain(a.data(), bp.data(), k, c2.data());
        for (int m = 0; m < 16; ++m) {  // one token at a time (a 1-row A tile): the same bits as within 16 rows?
            amx_chain(a.data() + m * k, bp.data(), k, c3.data() + 16 * m, 1);
            row_mismatches += std::memcmp(c3.data() + 16 * m, c1.data() + 16 * m, 64) != 0;
        }
        for (int model = 0; model < 3; ++model) {
            for (int m = 0; m < 16; ++m)
                for (int n = 0; n < 16; ++n) {
                    float acc = init[size_t(16 * m + n)];
                    for (int p = 0; p < k / 2; ++p)
                        acc = step(acc, f32(a[size_t(m * k + 2 * p)]) * f32(bp[size_t(p * 32 + 2 * n)]),
                                   f32(a[size_t(m * k + 2 * p + 1)]) * f32(bp[size_t(p * 32 + 2 * n + 1)]), model);
                    uint32_t x, y1, y2;
                    std::memcpy(&x, &acc, 4);
                    std::memcpy(&y1, &c1[size_t(16 * m + n)], 4);
                    std::memcpy(&y2, &c2[size_t(16 * m + n)], 4);
                    model_match[0][model] += x == y1;
                    model_match[1][model] += x == y2;
                }
        }
        for (int i = 0; i < 256; ++i) {
            uint32_t x, y;
            std::memcpy(&x, &c1[size_t(i)], 4);
            std::memcpy(&y, &c2[size_t(i)], 4);
            mismatches += x != y;
            ++outputs;
        }
    }
    std::printf("TDPBF16PS vs VDPBF16PS chains: %d of %d outputs differ in their bits\n", mismatches, outputs);
    std::printf("TDPBF16PS, one token per tile vs 16: %d of %d token rows differ\n", row_mismatches, outputs / 16);
    const char *models[3] = {"two roundings, even product first", "two roundings, odd product first",
                             "one rounding of the exact pair sum"};
    for (int model = 0; model < 3; ++model)
        std::printf("model '%s': matches %d of %d AMX outputs, %d of %d AVX512-BF16 outputs\n", models[model],
                    model_match[0][model], outputs, model_match[1][model], outputs);
    std::printf("AMX bf16 tile rate, one core: %.0f GFLOP/s; AVX512-BF16 vdpbf16ps rate, one core: %.0f GFLOP/s\n",
                dsv4::bench::amx_peak_gflops(1), dsv4::bench::bf16_peak_gflops(1));
    return 0;
}
