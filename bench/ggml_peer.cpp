// The peer for bench_kernels' GEMV rows: ggml's CPU matrix-vector products (llama.cpp's kernels) at the same
// shapes, on cold weights (a pool of distinct matrices larger than the caches, visited in turn), against the read
// bandwidth measured in the same run, with 1 and all threads and n = 1, 2, 4, 8, 16 activation columns. MXFP4 is
// V4's FP4 experts' format in ggml (e2m1 with one e8m0 scale per 32), Q8_0 its nearest 8-bit type. ggml is not a
// dependency of dsv4: this program is built only when the bench is configured with -DDSV4_GGML_DIR=<a ggml
// install prefix> (bench/README: how to build one).
// Usage: ggml_peer [POOL_MIB=1024] [REPEATS=3]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>
#include <random>
#include <vector>

#include "ggml-cpu.h"
#include "ggml.h"
#include "limits.h"

using dsv4::bench::Clock;
using dsv4::bench::seconds_since;

namespace {

struct Shape {
    const char *name;
    int64_t rows, cols;
};

// y = W · x for each matrix of a pool, one graph per matrix, on a persistent thread pool.
class PoolProduct {
public:
    PoolProduct(ggml_type type, const Shape &s, int64_t n, size_t copies, const uint8_t *pool, size_t per, int threads)
        : threads_(threads) {
        // the weights' tensors without data of their own (it is the pool's), the rest allocated in ctx_
        weights_ctx_ = ggml_init({copies * ggml_tensor_overhead() + 1024, nullptr, true});
        const size_t outputs = copies * (size_t(n * s.rows) * sizeof(float) + 2 * ggml_tensor_overhead() + 64);
        ctx_ = ggml_init({outputs + copies * ggml_graph_overhead_custom(4, false) + size_t(n * s.cols) * sizeof(float) + 4096,
                          nullptr, false});
        x_ = ggml_new_tensor_2d(ctx_, GGML_TYPE_F32, s.cols, n);
        std::mt19937 rng(5);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        for (int64_t i = 0; i < s.cols * n; ++i) static_cast<float *>(x_->data)[i] = normal(rng);
        for (size_t c = 0; c < copies; ++c) {
            ggml_tensor *w = ggml_new_tensor_2d(weights_ctx_, type, s.cols, s.rows);
            w->data = const_cast<uint8_t *>(pool + c * per);
            ggml_cgraph *g = ggml_new_graph_custom(ctx_, 4, false);
            ggml_build_forward_expand(g, ggml_mul_mat(ctx_, w, x_));
            graphs_.push_back(g);
        }
        ggml_threadpool_params tp = ggml_threadpool_params_default(threads);
        pool_ = ggml_threadpool_new(&tp);
        ggml_cplan plan = ggml_graph_plan(graphs_[0], threads, pool_);
        work_.resize(plan.work_size + 64);
    }
    ~PoolProduct() {
        ggml_threadpool_free(pool_);
        ggml_free(ctx_);
        ggml_free(weights_ctx_);
    }
    void run(size_t copy) {
        ggml_cplan plan = ggml_graph_plan(graphs_[copy], threads_, pool_);
        plan.work_data = work_.data();
        ggml_graph_compute(graphs_[copy], &plan);
    }

private:
    int threads_;
    ggml_context *weights_ctx_, *ctx_;
    ggml_tensor *x_;
    std::vector<ggml_cgraph *> graphs_;
    ggml_threadpool *pool_;
    std::vector<uint8_t> work_;
};

}  // namespace

int main(int argc, char **argv) {
    const size_t pool_bytes = size_t(argc > 1 ? std::atoi(argv[1]) : 1024) << 20;
    const int repeats = argc > 2 ? std::atoi(argv[2]) : 3;
    const int all = dsv4::bench::max_threads();
    ggml_cpu_init();
    double bw1 = dsv4::bench::read_bandwidth(1, repeats), bwn = dsv4::bench::read_bandwidth(all, repeats);
    fmt::print("ggml {} CPU kernels; read bandwidth {:.1f} GB/s (1 thread), {:.1f} GB/s ({} threads)\n", ggml_version(),
               bw1, bwn, all);
    const Shape shapes[] = {{"Flash w1/w3 2048x4096", 2048, 4096}, {"Flash w2   4096x2048", 4096, 2048},
                            {"square     4096x4096", 4096, 4096}};
    fmt::print("{:<24} {:>6} {:>3} {:>4} {:>10} {:>9} {:>8} {:>10}\n", "shape", "type", "n", "thr", "us/call", "GB/s",
               "of bw", "vs n=1");
    std::mt19937 rng(7);
    for (const Shape &s : shapes) {
        bw1 = std::max(bw1, dsv4::bench::read_bandwidth(1, repeats));
        bwn = std::max(bwn, dsv4::bench::read_bandwidth(all, repeats));
        for (const ggml_type type : {GGML_TYPE_MXFP4, GGML_TYPE_Q8_0}) {
            // random weights quantised by ggml itself, copied to every matrix of the pool
            const size_t per = ggml_row_size(type, s.cols) * size_t(s.rows);
            const size_t copies = std::max<size_t>(2, pool_bytes / per);
            std::vector<float> values(size_t(s.rows * s.cols));
            std::normal_distribution<float> normal(0.0f, 0.02f);
            for (float &v : values) v = normal(rng);
            dsv4::bench::HugeBuffer pool(copies * per);
            ggml_quantize_chunk(type, values.data(), pool.data(), 0, s.rows, s.cols, nullptr);
            for (size_t c = 1; c < copies; ++c) std::copy_n(pool.data(), per, pool.data() + c * per);
            for (const int threads : {1, all}) {
                const double bw = threads == 1 ? bw1 : bwn;
                double t_n1 = 0;
                for (const int64_t n : {1, 2, 4, 8, 16}) {
                    PoolProduct product(type, s, n, copies, pool.data(), per, threads);
                    size_t next = 0;
                    product.run(next++ % copies);
                    double best = 1e30;
                    for (int r = 0; r < repeats; ++r) {
                        const auto t0 = Clock::now();
                        for (size_t i = 0; i < copies; ++i) product.run(next++ % copies);
                        best = std::min(best, seconds_since(t0) / double(copies));
                    }
                    if (n == 1) t_n1 = best;
                    const double gbs = double(per) / best / 1e9;
                    fmt::print("{:<24} {:>6} {:>3} {:>4} {:>10.1f} {:>9.1f} {:>7.0f}% {:>9.2f}x\n", s.name,
                               ggml_type_name(type), n, threads, best * 1e6, gbs, 100 * gbs / bw, best / t_n1);
                }
            }
        }
    }
    return 0;
}
