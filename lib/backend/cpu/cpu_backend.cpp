// The optimised CPU backend: the quantised linears (FP8 everywhere, FP4 routed experts) run the AVX512-BF16
// kernels when the CPU and OS allow them (capped by DSV4_MAX_CPU_ISA); everything else, every lower ISA and every
// shape the kernels do not cover is the reference backend's.
#include <algorithm>
#include <vector>

#include "core/numeric.h"

#include "backend/backend.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/quantized_kernels.h"
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace dsv4::backend {
namespace {
using namespace dsv4::core;

constexpr int64_t kRowTile = 16;  // rows per scheduling unit: several rows of a 128-row FP8 scale block

class CpuBackend final : public Backend {
public:
    CpuBackend(int n_threads, cpu::Isa isa)
        : reference_(make_cpu_reference_backend(n_threads)), isa_(isa), n_threads_(n_threads) {}
    std::string name() const override { return std::string("cpu-") + cpu::isa_name(isa_); }

    void linear_fp8(const float *x, int64_t n, const Fp8Matrix &w, float *y) override {
        if (!has_kernels()) return reference_->linear_fp8(x, n, w, y);
        act_.resize(size_t(n * w.cols));
        cpu::quantize_activations(x, n, w.cols, cpu::ActLayout::natural, act_.data());
        const uint16_t *act = act_.data();
        for_row_tiles(w.rows, [&](int64_t r0, int64_t r1) { cpu::fp8_rows_avx512bf16(w, act, n, r0, r1, y); });
    }

    void linear_expert(const float *x, int64_t n, const ExpertMatrix &w, float *y) override {
        if (w.format == ExpertFormat::fp8) return linear_fp8(x, n, w.fp8, y);
        const Fp4Matrix &m = w.fp4;
        if (!has_kernels() || m.cols % 128)  // the kernels' layout needs blocks of 4 groups
            return reference_->linear_expert(x, n, w, y);
        act_.resize(size_t(n * m.cols));
        cpu::quantize_activations(x, n, m.cols, cpu::ActLayout::fp4_lanes, act_.data());
        const uint16_t *act = act_.data();
        for_row_tiles(m.rows, [&](int64_t r0, int64_t r1) { cpu::fp4_rows_avx512bf16(m, act, n, r0, r1, y); });
    }

    void linear_bf16(const float *x, int64_t n, const Bf16Matrix &w, float *y) override {
        if (!has_kernels() || w.cols % 32) return reference_->linear_bf16(x, n, w, y);
        act_.resize(size_t(n * w.cols));
        for (size_t i = 0; i < act_.size(); ++i) act_[i] = f32_to_bf16(x[i]);  // x is bf16-valued: exact
        const uint16_t *act = act_.data();
        for_row_tiles(w.rows, [&](int64_t r0, int64_t r1) { cpu::bf16_rows_avx512bf16(w, act, n, r0, r1, y); });
    }
    void linear_f32(const float *x, int64_t n, const Bf16Matrix &w, float *y) override {
        if (!has_kernels() || w.cols % 16) return reference_->linear_f32(x, n, w, y);
        for_row_tiles(w.rows, [&](int64_t r0, int64_t r1) { cpu::f32_rows_avx512bf16(w, x, n, r0, r1, y); });
    }
    void linear_f32w(const float *x, int64_t n, const float *w, int64_t rows, int64_t cols, float *y) override {
        reference_->linear_f32w(x, n, w, rows, cols, y);
    }
    void attention(const AttentionProblem &p) override { reference_->attention(p); }

private:
    // Below AVX512-BF16 (generic, plain AVX-512) the reference's loops are the kernels.
    bool has_kernels() const { return isa_ >= cpu::Isa::avx512_bf16; }

    int threads() const {
#if defined(_OPENMP)
        return n_threads_ > 0 ? n_threads_ : omp_get_max_threads();
#else
        return 1;
#endif
    }
    // Splits rows into tiles over the threads; f must not throw (it runs inside an OpenMP region).
    template <typename F>
    void for_row_tiles(int64_t rows, F &&f) {
        const int64_t tiles = (rows + kRowTile - 1) / kRowTile;
#pragma omp parallel for num_threads(threads()) schedule(static)
        for (int64_t t = 0; t < tiles; ++t) f(t * kRowTile, std::min(rows, (t + 1) * kRowTile));
    }

    std::unique_ptr<Backend> reference_;
    cpu::Isa isa_;
    [[maybe_unused]] int n_threads_;
    std::vector<uint16_t> act_;  // dequantised activations of the current call (bf16 bits)
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int n_threads, cpu::Isa isa) {
    return std::make_unique<CpuBackend>(n_threads, isa);
}

std::unique_ptr<Backend> make_cpu_backend(int n_threads) { return make_cpu_backend(n_threads, cpu::selected_isa()); }

}  // namespace dsv4::backend
