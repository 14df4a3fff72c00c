// What bounds the packed FP4 GEMV on this core, measured apart:
//   1. the instruction mix of one 64-byte packed FP4 unit at n = 1 (4 vdpbf16ps, 4 vpermw, 3 vpsrlw; packed.cpp),
//      on registers with 16 independent chains: the rate the arithmetic alone could sustain, as GB/s of weights;
//   2. pure loads in the kernels' access pattern: S streams through random 256 KiB tiles of a 2 GiB buffer
//      (a tile of 8 blocks of a 4096-element FP4 matrix is 8 streams of 32 KiB), prefetching 1 KiB ahead as the
//      kernels do, against one sequential stream; one thread.
// Usage: access_probe [REPEATS=3]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>
#include <random>
#include <type_traits>

#include "backend/cpu/isa.h"
#include "limits.h"

using namespace dsv4;

namespace {

constexpr long kUnits = 200'000'000;  // 64-byte units per timed run of the instruction mix

// 16 units per iteration, each unit's products into its own accumulator (zmm0-15): throughput, not latency.
#define DSV4_DP16 "vdpbf16ps %%zmm30, %%zmm31, %%zmm0; vdpbf16ps %%zmm30, %%zmm31, %%zmm1; vdpbf16ps %%zmm30, %%zmm31, %%zmm2; vdpbf16ps %%zmm30, %%zmm31, %%zmm3;" \
                  "vdpbf16ps %%zmm30, %%zmm31, %%zmm4; vdpbf16ps %%zmm30, %%zmm31, %%zmm5; vdpbf16ps %%zmm30, %%zmm31, %%zmm6; vdpbf16ps %%zmm30, %%zmm31, %%zmm7;" \
                  "vdpbf16ps %%zmm30, %%zmm31, %%zmm8; vdpbf16ps %%zmm30, %%zmm31, %%zmm9; vdpbf16ps %%zmm30, %%zmm31, %%zmm10; vdpbf16ps %%zmm30, %%zmm31, %%zmm11;" \
                  "vdpbf16ps %%zmm30, %%zmm31, %%zmm12; vdpbf16ps %%zmm30, %%zmm31, %%zmm13; vdpbf16ps %%zmm30, %%zmm31, %%zmm14; vdpbf16ps %%zmm30, %%zmm31, %%zmm15;"
#define DSV4_PERM16 "vpermw %%zmm29, %%zmm28, %%zmm16; vpermw %%zmm29, %%zmm28, %%zmm17; vpermw %%zmm29, %%zmm28, %%zmm18; vpermw %%zmm29, %%zmm28, %%zmm19;" \
                    "vpermw %%zmm29, %%zmm28, %%zmm20; vpermw %%zmm29, %%zmm28, %%zmm21; vpermw %%zmm29, %%zmm28, %%zmm22; vpermw %%zmm29, %%zmm28, %%zmm23;" \
                    "vpermw %%zmm29, %%zmm28, %%zmm16; vpermw %%zmm29, %%zmm28, %%zmm17; vpermw %%zmm29, %%zmm28, %%zmm18; vpermw %%zmm29, %%zmm28, %%zmm19;" \
                    "vpermw %%zmm29, %%zmm28, %%zmm20; vpermw %%zmm29, %%zmm28, %%zmm21; vpermw %%zmm29, %%zmm28, %%zmm22; vpermw %%zmm29, %%zmm28, %%zmm23;"
#define DSV4_SHIFT12 "vpsrlw $4, %%zmm29, %%zmm24; vpsrlw $8, %%zmm29, %%zmm25; vpsrlw $12, %%zmm29, %%zmm26; vpsrlw $4, %%zmm29, %%zmm27;" \
                     "vpsrlw $8, %%zmm29, %%zmm24; vpsrlw $12, %%zmm29, %%zmm25; vpsrlw $4, %%zmm29, %%zmm26; vpsrlw $8, %%zmm29, %%zmm27;" \
                     "vpsrlw $12, %%zmm29, %%zmm24; vpsrlw $4, %%zmm29, %%zmm25; vpsrlw $8, %%zmm29, %%zmm26; vpsrlw $12, %%zmm29, %%zmm27;"
#define DSV4_CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", \
                      "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", \
                      "xmm23", "xmm24", "xmm25", "xmm26", "xmm27"

// Seconds per 64-byte unit (4 units per iteration: 16 products, 16 permutes, 12 shifts for the full mix).
template <int Mix>
__attribute__((target("avx512f"))) double mix_seconds_per_unit() {
    const auto t0 = bench::Clock::now();
    for (long i = 0; i < kUnits / 4; ++i) {
        if constexpr (Mix == 0) asm volatile(DSV4_DP16 ::: DSV4_CLOBBERS);
        else if constexpr (Mix == 1) asm volatile(DSV4_DP16 DSV4_PERM16 ::: DSV4_CLOBBERS);
        else asm volatile(DSV4_DP16 DSV4_PERM16 DSV4_SHIFT12 ::: DSV4_CLOBBERS);
    }
    return bench::seconds_since(t0) / double(kUnits);
}

// Sum of the 64-byte lines of `tiles` random 256 KiB tiles, each read as S interleaved streams.
template <int S>
__attribute__((target("avx512f"))) uint64_t read_tiles(const uint8_t *buf, size_t bytes, int tiles, std::mt19937 &rng) {
    constexpr size_t kTile = 256 * 1024, kStream = kTile / S, kAhead = 1024;
    __m512i acc = _mm512_setzero_si512();
    for (int t = 0; t < tiles; ++t) {
        const uint8_t *tile = buf + (rng() % (bytes / kTile)) * kTile;
        for (size_t off = 0; off < kStream; off += 64)
            for (int s = 0; s < S; ++s) {
                _mm_prefetch(reinterpret_cast<const char *>(tile + s * kStream + off + kAhead), _MM_HINT_T0);
                acc = _mm512_add_epi64(acc, _mm512_load_si512(tile + s * kStream + off));
            }
    }
    return uint64_t(_mm512_reduce_add_epi64(acc));
}

// The operands the mixes read: zero (no denormal or NaN slow paths).
__attribute__((target("avx512f"))) void zero_operands() {
    asm volatile("vpxord %%zmm28, %%zmm28, %%zmm28; vpxord %%zmm29, %%zmm29, %%zmm29; vpxord %%zmm30, %%zmm30, %%zmm30;"
                 "vpxord %%zmm31, %%zmm31, %%zmm31" ::: "xmm28", "xmm29", "xmm30", "xmm31");
}

}  // namespace

int main(int argc, char **argv) {
    const int repeats = argc > 1 ? std::atoi(argv[1]) : 3;
    if (backend::cpu::detect_isa() < backend::cpu::Isa::avx512_bf16) {
        std::fprintf(stderr, "access_probe: needs AVX512-BF16\n");
        return 1;
    }
    fmt::print("1. one FP4 unit's instructions at n = 1, 16 independent chains (GB/s of weights one core could decode)\n");
    const auto rate = [&](auto seconds) {
        double best = 1e30;
        for (int r = 0; r < repeats; ++r) {
            zero_operands();  // each run reads zmm28-31, which nothing else writes between the asm blocks
            best = std::min(best, seconds());
        }
        return 64 / best / 1e9;
    };
    fmt::print("   4 vdpbf16ps                       {:7.1f} GB/s\n", rate(mix_seconds_per_unit<0>));
    fmt::print("   4 vdpbf16ps + 4 vpermw            {:7.1f} GB/s\n", rate(mix_seconds_per_unit<1>));
    fmt::print("   4 vdpbf16ps + 4 vpermw + 3 vpsrlw {:7.1f} GB/s  (the kernel's mix)\n", rate(mix_seconds_per_unit<2>));

    const size_t bytes = size_t(2) << 30;
    bench::HugeBuffer huge(bytes);
    std::memset(huge.data(), 1, bytes);
    std::mt19937 rng(1);
    constexpr int kTiles = 4000;
    const double tile_bytes = double(kTiles) * 256 * 1024;
    fmt::print("2. loads, 1 thread, random 256 KiB tiles of a 2 GiB buffer read as S streams, 1 KiB prefetch\n");
    fmt::print("   sequential                        {:7.1f} GB/s\n",
               bench::best_rate(repeats, double(bytes), [&] { return double(bench::sum_stream(huge.data(), bytes, 1)); }));
    const auto streams = [&](auto s, auto read) {
        fmt::print("   S = {:<2}                            {:7.1f} GB/s\n", decltype(s)::value,
                   bench::best_rate(repeats, tile_bytes, [&] { return double(read(huge.data(), bytes, kTiles, rng)); }));
    };
    streams(std::integral_constant<int, 1>{}, read_tiles<1>);
    streams(std::integral_constant<int, 2>{}, read_tiles<2>);
    streams(std::integral_constant<int, 4>{}, read_tiles<4>);
    streams(std::integral_constant<int, 8>{}, read_tiles<8>);
    streams(std::integral_constant<int, 16>{}, read_tiles<16>);
    return 0;
}
