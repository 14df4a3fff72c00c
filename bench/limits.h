// This machine's own limits, measured in the benchmark run that quotes figures against them.
#pragma once
// GCC 12's AVX-512 headers trip its own uninitialised-value warnings (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace dsv4::bench {

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

inline int max_threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// Anonymous memory on 2 MiB boundaries asked for as transparent huge pages, as the loader holds weights (see
// io/MappedFile): the bandwidth and the kernels are measured on the page size decode runs on.
class HugeBuffer {
public:
    explicit HugeBuffer(size_t bytes) : bytes_(bytes + kHuge) {
        map_ = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (map_ == MAP_FAILED) std::abort();
        data_ = reinterpret_cast<uint8_t *>((reinterpret_cast<uintptr_t>(map_) + kHuge - 1) & ~(kHuge - 1));
        (void)::madvise(data_, bytes, MADV_HUGEPAGE);
    }
    ~HugeBuffer() { ::munmap(map_, bytes_); }
    HugeBuffer(const HugeBuffer &) = delete;
    HugeBuffer &operator=(const HugeBuffer &) = delete;
    uint8_t *data() { return data_; }

private:
    static constexpr size_t kHuge = size_t(2) << 20;
    size_t bytes_;
    void *map_;
    uint8_t *data_;
};

__attribute__((target("avx512f"))) inline uint64_t sum_stream(const uint8_t *p, size_t bytes, int threads) {
    uint64_t total = 0;
    const int64_t lines = int64_t(bytes / 64);
#pragma omp parallel for num_threads(threads) reduction(+ : total) schedule(static)
    for (int64_t chunk = 0; chunk < lines; chunk += 4096) {
        __m512i acc = _mm512_setzero_si512();
        for (int64_t l = chunk; l < std::min(lines, chunk + 4096); ++l)
            acc = _mm512_add_epi64(acc, _mm512_load_si512(p + l * 64));
        total += uint64_t(_mm512_reduce_add_epi64(acc));
    }
    return total;
}

// The best of `repeats` timed runs of run() (which returns a value the compiler must keep), as `ops` per second
// in billions.
template <typename F>
double best_rate(int repeats, double ops, F &&run) {
    double best = 0;
    volatile double sink = 0;
    for (int r = 0; r < repeats; ++r) {
        const auto t0 = Clock::now();
        sink = sink + run();
        best = std::max(best, ops / seconds_since(t0) / 1e9);
    }
    return best;
}

// Read bandwidth in GB/s: a streaming read of a 2 GiB buffer (far beyond the caches), best of `repeats`.
inline double read_bandwidth(int threads, int repeats) {
    const size_t bytes = size_t(2) << 30;
    HugeBuffer huge(bytes);
    uint8_t *buf = huge.data();
    std::memset(buf, 1, bytes);
    return best_rate(repeats, double(bytes), [&] { return double(sum_stream(buf, bytes, threads)); });
}

// Dot-product instruction peaks over `threads` threads: kAcc independent accumulators, operands in registers.
constexpr int64_t kPeakIters = 20'000'000;
constexpr int kPeakAcc = 16;  // measured best on this machine (12: ~8% lower; 24: lower)

__attribute__((target("avx512f,avx512bf16"))) inline double bf16_dot_run(int threads) {
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
        __m512 acc[kPeakAcc];
        for (int i = 0; i < kPeakAcc; ++i) acc[i] = _mm512_set1_ps(float(i));
        const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3f00);
        for (int64_t it = 0; it < kPeakIters; ++it)
            for (int i = 0; i < kPeakAcc; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        for (int i = 0; i < kPeakAcc; ++i) sink += _mm512_reduce_add_ps(acc[i]);
    }
    return sink;
}
__attribute__((target("avx512f,avx512vnni"))) inline double int8_dot_run(int threads) {
    int64_t sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
        __m512i acc[kPeakAcc];
        for (int i = 0; i < kPeakAcc; ++i) acc[i] = _mm512_set1_epi32(i);
        const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2);
        for (int64_t it = 0; it < kPeakIters; ++it)
            for (int i = 0; i < kPeakAcc; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
        for (int i = 0; i < kPeakAcc; ++i) sink += _mm512_reduce_add_epi32(acc[i]);
    }
    return double(sink);
}

// vdpbf16ps: 32 multiply-adds (64 flops) per 512-bit instruction, in GFLOP/s.
inline double bf16_peak_gflops(int threads) {
    return best_rate(3, 64.0 * kPeakAcc * double(kPeakIters) * threads, [&] { return bf16_dot_run(threads); });
}
// AMX bf16 tile peak over `threads` threads (each asks for tile data itself: the permission is per process,
// granted by the ISA detection): four independent 16x16 accumulator tiles, A and B tiles in registers;
// TDPBF16PS is 16·16·32 multiply-adds. Only where the CPU has AMX (Isa::amx).
struct AmxTileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};
__attribute__((target("amx-tile,amx-bf16"))) inline double amx_dot_run(int threads) {
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
        AmxTileConfig cfg;
        for (int t = 0; t < 8; ++t) {
            cfg.rows[t] = 16;
            cfg.colsb[t] = 64;
        }
        _tile_loadconfig(&cfg);
        alignas(64) uint16_t ones[16 * 32];
        std::fill_n(ones, 16 * 32, uint16_t(0x3f80));
        _tile_loadd(4, ones, 64);
        _tile_loadd(5, ones, 64);
        _tile_loadd(6, ones, 64);
        _tile_loadd(7, ones, 64);
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t it = 0; it < kPeakIters / 8; ++it) {
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        alignas(64) float out[256];
        _tile_stored(0, out, 64);
        _tile_release();
        sink += out[0];
    }
    return sink;
}
inline double amx_peak_gflops(int threads) {
    return best_rate(3, 4.0 * 16 * 16 * 32 * 2 * double(kPeakIters / 8) * threads, [&] { return amx_dot_run(threads); });
}
// vpdpbusd: 64 multiply-adds (128 ops) per 512-bit instruction, in GOP/s. Quoted for comparison: no dsv4 kernel
// can use it exactly, since FP8 activations times e2m1 or e4m3 weights do not fit int8 x uint8 products.
inline double int8_peak_gops(int threads) {
    return best_rate(3, 128.0 * kPeakAcc * double(kPeakIters) * threads, [&] { return int8_dot_run(threads); });
}

}  // namespace dsv4::bench
