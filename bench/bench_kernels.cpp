// Quantised GEMV/GEMM kernels against this machine's own limits, measured in the same run:
//   1. read bandwidth: a streaming read of a multi-GB buffer (1 thread, and all threads);
//   2. bf16 and int8 dot-product peaks (all threads);
//   3. FP4 (per-32 e8m0) and FP8 (128x128 e8m0) linears at the V4 expert shapes, cold weights (a pool of
//      distinct matrices larger than the caches, visited in turn), n = 1, 2, 4, 8, 16 activation columns,
//      through the backend interface (activation quantisation included): GB/s of weight bytes read and the ratio
//      to the read bandwidth of the same thread count; the time relative to n = 1, and the least it could be
//      (n columns' multiply-adds at the bf16 peak, over the n = 1 time);
//   4. the same linears as prefill GEMMs (64, 256 and 1024 columns, all threads): GFLOP/s and share of the bf16 peak;
//   5. (format MoE) a Flash decode step's two expert calls as the MoE layer makes them, packed, all threads: 6
//      routed FP4 experts picked at random from a pool plus the shared FP8 expert, w1 and w3 in one call, w2 in
//      another; pools of 64 experts and of 256 (a layer's). It links the GEMV rows to bench_layers' expert time.
// FP4p and FP8p rows: the same weights in the packed layout (dsv4_model_params::repack_weights).
// Usage: bench_kernels [POOL_MIB=1024] [REPEATS=3] [FORMATS=FP4,FP4p,FP8,FP8p,MoE] [SHAPES=0123].
// DSV4_MAX_CPU_ISA selects a lower kernel path.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <fmt/format.h>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/primitives.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/packed.h"
#include "core/matrix.h"
#include "limits.h"

using namespace dsv4;
using bench::Clock;
using bench::seconds_since;

namespace {

struct Shape {
    const char *name;
    int64_t rows, cols;
};

// `count` packed copies of one random rows x cols expert matrix (their contents do not change the kernels' time)
// and the bytes of its checkpoint form (what a decode step must read). The copies share the template's checkpoint
// tensors, which the packed kernels read only for FP8's block scales.
struct PackedPool {
    std::vector<uint8_t> raw;
    std::unique_ptr<bench::HugeBuffer> buffer;
    std::vector<core::ExpertMatrix> copies;
    size_t bytes = 0;

    PackedPool(bool fp4, int64_t rows, int64_t cols, size_t count, std::mt19937 &rng) {
        const size_t w_bytes = size_t(rows * cols) / (fp4 ? 2 : 1);
        const size_t s_bytes = fp4 ? size_t(rows * cols / 32) : size_t((rows / 128) * (cols / 128));
        bytes = w_bytes + s_bytes;
        raw.resize(bytes);
        for (size_t i = 0; i < w_bytes; ++i) raw[i] = uint8_t(rng());
        std::memset(&raw[w_bytes], fp4 ? 121 : 118, s_bytes);  // scales near 2^0 (the kernels' common case)
        core::ExpertMatrix m;
        m.format = fp4 ? core::ExpertFormat::fp4 : core::ExpertFormat::fp8;
        m.fp4 = {raw.data(), raw.data() + w_bytes, rows, cols};
        m.fp8 = {raw.data(), raw.data() + w_bytes, rows, cols};
        const size_t per = fp4 ? backend::cpu::packed_fp4_bytes(m.fp4) : backend::cpu::packed_fp8_bytes(m.fp8);
        buffer = std::make_unique<bench::HugeBuffer>(count * per);
        copies.assign(count, m);
        for (size_t c = 0; c < count; ++c) {
            uint8_t *dst = buffer->data() + c * per;
            if (fp4) backend::cpu::pack_fp4_rows(m.fp4, 0, rows, dst), copies[c].fp4.packed = dst;
            else backend::cpu::pack_fp8_rows(m.fp8, 0, rows, dst), copies[c].fp8.packed = dst;
        }
    }
};

// Section 5: a Flash MoE decode step's expert calls (moe.cpp's batching: routed w1 + w3 and the shared expert's
// in one linear_experts call, then every w2 in another), n = 1, over pools of `pool` routed experts.
void moe_decode_calls(backend::cpu::Primitives &be, int threads, double &bw, int repeats, std::mt19937 &rng) {
    constexpr int64_t D = 4096, I = 2048;  // Flash dim, moe_inter_dim
    constexpr int kActive = 6, kSteps = 64;
    const PackedPool shared_w1(false, I, D, 1, rng), shared_w3(false, I, D, 1, rng), shared_w2(false, D, I, 1, rng);
    std::vector<float> x(D), g((kActive + 1) * I), u(g.size()), a(g.size()), out((kActive + 1) * D);
    for (float &v : x) v = std::normal_distribution<float>(0, 1)(rng);
    for (float &v : a) v = std::normal_distribution<float>(0, 1)(rng);
    fmt::print("\n{:<44} {:>4} {:>10} {:>9} {:>8}\n", "decode expert calls (6 routed FP4 + shared FP8)", "thr", "us/call",
               "GB/s", "of bw");
    for (const int pool : {64, 256}) {
        const PackedPool w1(true, I, D, size_t(pool), rng), w3(true, I, D, size_t(pool), rng), w2(true, D, I, size_t(pool), rng);
        std::vector<int> ids(static_cast<size_t>(pool));
        double best[2] = {1e30, 1e30};
        size_t bytes[2] = {};
        // the first pass reads every matrix once (the pool's first touch since packing), then the timed passes
        for (int r = 0; r <= repeats; ++r) {
            double t[2] = {};
            size_t b[2] = {};
            for (int step = 0; step < kSteps; ++step) {
                for (int i = 0; i < pool; ++i) ids[size_t(i)] = i;
                std::shuffle(ids.begin(), ids.end(), rng);
                std::sort(ids.begin(), ids.begin() + kActive);
                std::vector<backend::cpu::ExpertLinear> gate_up, down;
                for (int j = 0; j < kActive; ++j) {
                    const size_t e = size_t(ids[size_t(j)]);
                    gate_up.push_back({x.data(), 1, &w1.copies[e], &g[size_t(j * I)]});
                    gate_up.push_back({x.data(), 1, &w3.copies[e], &u[size_t(j * I)]});
                    down.push_back({&a[size_t(j * I)], 1, &w2.copies[e], &out[size_t(j * D)]});
                    b[0] += w1.bytes + w3.bytes;
                    b[1] += w2.bytes;
                }
                gate_up.push_back({x.data(), 1, &shared_w1.copies[0], &g[size_t(kActive * I)]});
                gate_up.push_back({x.data(), 1, &shared_w3.copies[0], &u[size_t(kActive * I)]});
                down.push_back({&a[size_t(kActive * I)], 1, &shared_w2.copies[0], &out[size_t(kActive * D)]});
                b[0] += shared_w1.bytes + shared_w3.bytes;
                b[1] += shared_w2.bytes;
                auto t0 = Clock::now();
                be.linear_experts(gate_up.data(), gate_up.size());
                t[0] += seconds_since(t0);
                t0 = Clock::now();
                be.linear_experts(down.data(), down.size());
                t[1] += seconds_since(t0);
            }
            if (r == 0) continue;
            for (int c = 0; c < 2; ++c)
                if (t[c] < best[c]) best[c] = t[c], bytes[c] = b[c];
        }
        bw = std::max(bw, bench::read_bandwidth(threads, repeats));
        for (int c = 0; c < 2; ++c) {
            const double gbs = double(bytes[c]) / best[c] / 1e9;
            fmt::print("{:<44} {:>4} {:>10.1f} {:>9.1f} {:>7.0f}%\n",
                       fmt::format("pool of {:>3} experts, {}", pool, c == 0 ? "w1 + w3 call" : "w2 call"), threads,
                       best[c] / kSteps * 1e6, gbs, 100 * gbs / bw);
        }
    }
}

}  // namespace

int main(int argc, char **argv) {
    const size_t pool_bytes = size_t(argc > 1 ? std::atoi(argv[1]) : 1024) << 20;
    const int repeats = argc > 2 ? std::atoi(argv[2]) : 3;
    const std::string formats = "," + std::string(argc > 3 ? argv[3] : "FP4,FP4p,FP8,FP8p,MoE") + ",";
    const std::string shape_ids = argc > 4 ? argv[4] : "0123";
    const int all = bench::max_threads();
    const backend::cpu::Isa isa = backend::cpu::selected_isa();
    fmt::print("CPU kernels: {} (detected {}), threads: 1 and {}\n", backend::cpu::isa_name(isa),
               backend::cpu::isa_name(backend::cpu::detect_isa()), all);

    // 1. read bandwidth
    // The probe is repeated before each shape and the best reading so far is the one quoted (this machine's
    // bandwidth drifts by up to 2x between minutes; a low probe would flatter the ratios).
    double bw1 = bench::read_bandwidth(1, repeats), bwn = bench::read_bandwidth(all, repeats);
    fmt::print("read bandwidth: {:.1f} GB/s (1 thread), {:.1f} GB/s ({} threads)\n", bw1, bwn, all);
    // 2. compute peaks
    const double peak1 = bench::bf16_peak_gflops(1), peakn = bench::bf16_peak_gflops(all);
    // the packed GEMMs run on AMX tiles where the kernels are AMX: their peak is the tiles'
    const double gemm_peak = isa >= backend::cpu::Isa::amx ? bench::amx_peak_gflops(all) : peakn;
    if (isa >= backend::cpu::Isa::amx) fmt::print("AMX bf16 tile peak: {:.1f} GFLOP/s ({} threads)\n", gemm_peak, all);
    fmt::print("bf16 dot peak: {:.1f} GFLOP/s (1 thread), {:.1f} GFLOP/s ({} threads); int8 dot peak {:.1f} GOP/s ({} "
               "threads)\n\n", peak1, peakn, all, bench::int8_peak_gops(all), all);

    // 2. FP4 / FP8 linears at the expert shapes, cold weights
    const Shape shapes[] = {{"Flash w1/w3 2048x4096", 2048, 4096}, {"Flash w2   4096x2048", 4096, 2048},
                            {"Pro   w1/w3 3072x7168", 3072, 7168}, {"Pro   w2   7168x3072", 7168, 3072}};
    std::mt19937 rng(7);
    std::vector<std::string> gemm_rows;
    fmt::print("{:<24} {:>4} {:>3} {:>4} {:>10} {:>9} {:>8} {:>10} {:>8}\n", "shape", "fmt", "n", "thr", "us/call",
               "GB/s", "of bw", "vs n=1", "floor");
    for (const Shape &s : shapes) {
        if (shape_ids.find(char('0' + (&s - shapes))) == std::string::npos) continue;
        bw1 = std::max(bw1, bench::read_bandwidth(1, repeats));
        bwn = std::max(bwn, bench::read_bandwidth(all, repeats));
        fmt::print("{:<24} read bandwidth, best probe so far: {:.1f} GB/s (1 thread), {:.1f} GB/s ({} threads)\n", s.name,
                   bw1, bwn, all);
        for (const int variant : {0, 1, 2, 3}) {
            const bool fp4 = variant < 2, packed = variant % 2 == 1;
            const char *fmt_name = fp4 ? (packed ? "FP4p" : "FP4") : (packed ? "FP8p" : "FP8");
            if (formats.find("," + std::string(fmt_name) + ",") == std::string::npos) continue;
            const size_t w_bytes = size_t(s.rows * s.cols) / (fp4 ? 2 : 1);
            const size_t s_bytes = fp4 ? size_t(s.rows * s.cols / 32) : size_t((s.rows + 127) / 128 * ((s.cols + 127) / 128));
            const size_t per = w_bytes + s_bytes;
            const size_t copies = std::max<size_t>(2, pool_bytes / per);
            bench::HugeBuffer huge(copies * per);
            uint8_t *pool = huge.data();
            for (size_t i = 0; i < copies * per; i += 4096) pool[i] = uint8_t(rng());  // touch every page
            for (size_t c = 0; c < copies; ++c)  // scales near 2^0 (the kernels' common case)
                std::memset(&pool[c * per + w_bytes], 120 + int(c % 8), s_bytes);
            std::vector<core::ExpertMatrix> mats(copies);
            for (size_t c = 0; c < copies; ++c) {
                const uint8_t *w = &pool[c * per], *sc = w + w_bytes;
                mats[c].format = fp4 ? core::ExpertFormat::fp4 : core::ExpertFormat::fp8;
                mats[c].fp4 = {w, sc, s.rows, s.cols};
                mats[c].fp8 = {w, sc, s.rows, s.cols};
            }
            // the packed layout: a copy of every matrix of the pool, as dsv4_model_params::repack_weights makes
            const size_t packed_per = fp4 ? backend::cpu::packed_fp4_bytes(mats[0].fp4) : backend::cpu::packed_fp8_bytes(mats[0].fp8);
            bench::HugeBuffer packed_pool(packed ? copies * packed_per : 0);
            if (packed)
                for (size_t c = 0; c < copies; ++c) {
                    uint8_t *dst = packed_pool.data() + c * packed_per;
                    if (fp4) backend::cpu::pack_fp4_rows(mats[c].fp4, 0, s.rows, dst), mats[c].fp4.packed = dst;
                    else backend::cpu::pack_fp8_rows(mats[c].fp8, 0, s.rows, dst), mats[c].fp8.packed = dst;
                }
            for (const int threads : {1, all}) {
                auto be = backend::cpu::make_primitives(threads, isa);
                const double bw = threads == 1 ? bw1 : bwn;
                double t_n1 = 0;
                for (const int n : {1, 2, 4, 8, 16}) {
                    std::vector<float> x(size_t(n * s.cols)), y(size_t(n * s.rows));
                    for (float &v : x) v = std::normal_distribution<float>(0, 1)(rng);
                    size_t next = 0;
                    auto call = [&] { be->linear_expert(x.data(), n, mats[next++ % copies], y.data()); };
                    call();
                    double best = 1e30;
                    for (int r = 0; r < repeats; ++r) {
                        const int calls = int(copies);
                        const auto t0 = Clock::now();
                        for (int i = 0; i < calls; ++i) call();
                        best = std::min(best, seconds_since(t0) / calls);
                    }
                    if (n == 1) t_n1 = best;
                    const double gbs = double(per) / best / 1e9;
                    const double t_compute = 2.0 * double(n * s.rows * s.cols) / ((threads == 1 ? peak1 : peakn) * 1e9);
                    fmt::print("{:<24} {:>4} {:>3} {:>4} {:>10.1f} {:>9.1f} {:>7.0f}% {:>9.2f}x {:>7.2f}x\n", s.name,
                               fmt_name, n, threads, best * 1e6, gbs, 100 * gbs / bw, best / t_n1,
                               std::max(1.0, t_compute / t_n1));
                }
            }
            // prefill GEMMs: one matrix, every thread
            auto be = backend::cpu::make_primitives(all, isa);
            for (const int n : {64, 256, 1024}) {
                std::vector<float> x(size_t(n * s.cols)), y(size_t(n * s.rows));
                for (float &v : x) v = std::normal_distribution<float>(0, 1)(rng);
                be->linear_expert(x.data(), n, mats[0], y.data());
                double best = 1e30;
                for (int r = 0; r < repeats; ++r) {
                    const auto t0 = Clock::now();
                    be->linear_expert(x.data(), n, mats[0], y.data());
                    best = std::min(best, seconds_since(t0));
                }
                const double gflops = 2.0 * double(n * s.rows * s.cols) / best / 1e9;
                gemm_rows.push_back(fmt::format("{:<24} {:>4} {:>5} {:>4} {:>10.1f} {:>9.1f} {:>8.1f}%", s.name,
                                                fmt_name, n, all, best * 1e6, gflops,
                                                100 * gflops / (packed ? gemm_peak : peakn)));
            }
        }
    }
    if (formats.find(",MoE,") != std::string::npos) {
        auto be = backend::cpu::make_primitives(all, isa);
        moe_decode_calls(*be, all, bwn, repeats, rng);
    }
    fmt::print("\n{:<24} {:>4} {:>5} {:>4} {:>10} {:>9} {:>9}\n", "prefill GEMM", "fmt", "n", "thr", "us/call", "GFLOP/s",
               "of peak");
    for (const std::string &row : gemm_rows) fmt::print("{}\n", row);
    return 0;
}
