// The CUDA kernels (lib/backend/cuda) against the CPU reference primitives and core's numerics, on random data
// with the checkpoint's formats: exact where only one order of operations exists (norms, head operations, top-k),
// within bf16 ulps where fp32 partial sums run in another order (the linears). Skips, saying so, without a GPU.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/backend.h"
#include "backend/cuda/kernels.h"
#include "core/hadamard.h"
#include "core/ops.h"
#include "core/rope.h"
#include "support/random.h"

using namespace dsv4;
namespace cu = dsv4::backend::cuda;

namespace {

bool have_gpu() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        WARN("no CUDA device: the CUDA kernel tests did not run");
        return false;
    }
    return true;
}

template <typename T>
struct DeviceArray {
    T *p = nullptr;
    size_t n = 0;
    explicit DeviceArray(size_t count) : n(count) { REQUIRE(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)) == cudaSuccess); }
    explicit DeviceArray(const std::vector<T> &v) : DeviceArray(v.size()) {
        REQUIRE(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
    }
    ~DeviceArray() { cudaFree(p); }
    std::vector<T> get() const {
        std::vector<T> v(n);
        REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
        REQUIRE(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
        return v;
    }
};

std::mt19937 rng(7);
std::vector<uint8_t> bytes(size_t n, int lo, int hi, bool fp8_codes) {
    std::uniform_int_distribution<int> d(lo, hi);
    std::vector<uint8_t> v(n);
    for (uint8_t &b : v) {
        do b = uint8_t(d(rng));
        while (fp8_codes && (b & 0x7f) == 0x7f);  // no NaN codes
    }
    return v;
}

// Within `ulps` bf16 ulps of the row's largest magnitude (fp32 sums in another order).
void require_close(const std::vector<float> &got, const std::vector<float> &want, int64_t cols, double ulps) {
    REQUIRE(got.size() == want.size());
    for (size_t r = 0; r * size_t(cols) < want.size(); ++r) {
        double row_max = 0;
        for (int64_t j = 0; j < cols; ++j) row_max = std::max(row_max, std::fabs(double(want[r * size_t(cols) + size_t(j)])));
        for (int64_t j = 0; j < cols; ++j) {
            const size_t i = r * size_t(cols) + size_t(j);
            INFO("row " << r << " col " << j << ": " << got[i] << " vs " << want[i]);
            REQUIRE(std::fabs(double(got[i]) - double(want[i])) <= ulps * row_max / 128.0);
        }
    }
}

}  // namespace

TEST_CASE("CUDA FP8 and FP4 linears match the reference primitives", "[cuda]") {
    if (!have_gpu()) return;
    auto ref = backend::cpu::make_reference_primitives(2);
    const int64_t n = 11, rows = 256, cols = 512;
    const std::vector<float> x = test::bf16_values(rng, size_t(n * cols), 1.0f);
    DeviceArray<float> dx(x), qx(size_t(n * cols)), qs(size_t(n * cols / 128)), y(size_t(n * rows));
    cu::act_quant(nullptr, dx.p, n, cols, qx.p, qs.p);

    const std::vector<uint8_t> w8 = bytes(size_t(rows * cols), 0, 255, true), s8 = bytes(size_t(2 * 4), 118, 134, false);
    core::Fp8Matrix m8{w8.data(), s8.data(), rows, cols};
    std::vector<float> want(size_t(n * rows));
    ref->linear_fp8(x.data(), n, m8, want.data());
    DeviceArray<uint8_t> dw8(w8), ds8(s8);
    cu::linear_fp8(nullptr, qx.p, qs.p, nullptr, n, cols, dw8.p, ds8.p, rows, y.p);
    require_close(y.get(), want, rows, 2);

    const std::vector<uint8_t> w4 = bytes(size_t(rows * cols / 2), 0, 255, false), s4 = bytes(size_t(rows * cols / 32), 118, 134, false);
    core::ExpertMatrix m4{core::ExpertFormat::fp4, {w4.data(), s4.data(), rows, cols}, {}};
    ref->linear_expert(x.data(), n, m4, want.data());
    DeviceArray<uint8_t> dw4(w4), ds4(s4);
    cu::linear_fp4(nullptr, qx.p, qs.p, nullptr, n, cols, dw4.p, ds4.p, rows, y.p);
    require_close(y.get(), want, rows, 2);

    // bf16 weights in fp32 (compressor, gate, head), unrounded
    std::vector<uint16_t> wb(size_t(rows * cols));
    for (uint16_t &b : wb) b = core::f32_to_bf16(std::normal_distribution<float>(0, 0.05f)(rng));
    core::Bf16Matrix mb{reinterpret_cast<const uint8_t *>(wb.data()), rows, cols};
    ref->linear_f32(x.data(), n, mb, want.data());
    DeviceArray<uint16_t> dwb(wb);
    cu::linear_bf16w(nullptr, dx.p, n, cols, dwb.p, rows, y.p, false);
    const std::vector<float> got = y.get();
    for (size_t i = 0; i < want.size(); ++i) REQUIRE(std::fabs(got[i] - want[i]) <= 1e-5f * (1.0f + std::fabs(want[i])));
}

TEST_CASE("CUDA RMSNorm and head operations are bit-identical to core's", "[cuda]") {
    if (!have_gpu()) return;
    const int64_t n = 5;
    const int dim = 128, heads = 3;
    std::vector<float> x = test::bf16_values(rng, size_t(n * heads * dim), 2.0f), w = test::bf16_values(rng, size_t(heads * dim), 1.0f);
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = int32_t(1000 * i + 7);
    {
        std::vector<float> want(x.size());
        for (int64_t i = 0; i < n; ++i)
            core::rms_norm(&x[size_t(i * heads * dim)], size_t(heads * dim), w.data(), 1e-6f, &want[size_t(i * heads * dim)]);
        DeviceArray<float> dx(x), dw(w), dy(x.size());
        cu::rms_norm_rows(nullptr, dx.p, n, heads * dim, dw.p, 1e-6f, dy.p);
        REQUIRE(dy.get() == want);
    }
    const core::Rope rope(64, 160000.0f, true, 16.0f, 65536, 32.0f, 1.0f);
    cu::RopeTable table;
    table.pairs = int(rope.frequencies().size());
    std::copy(rope.frequencies().begin(), rope.frequencies().end(), table.theta);
    std::vector<float> want = x;
    for (int64_t ih = 0; ih < n * heads; ++ih) {
        float *h = &want[size_t(ih * dim)];
        core::head_rms_scale_bf16(h, size_t(dim), 1e-6f);
        rope.apply(h + dim - 64, pos[size_t(ih / heads)]);
        core::hadamard_bf16(h, size_t(dim));
        core::simulate_blocks(core::BlockFormat::fp4_e2m1, h, size_t(dim), 32);
    }
    DeviceArray<float> dx(x);
    DeviceArray<int32_t> dpos(pos);
    cu::HeadOps ops;
    ops.rms_scale = ops.hadamard = ops.fp4_sim = true;
    ops.eps = 1e-6f;
    cu::head_ops(nullptr, dx.p, n, heads, dim, dpos.p, table, ops);
    const std::vector<float> got = dx.get();
    size_t differ = 0;
    for (size_t i = 0; i < got.size(); ++i) differ += std::memcmp(&got[i], &want[i], 4) != 0;
    // cos/sin: the device rounds the double results; glibc's fp32 functions may differ in rare last bits
    CHECK(differ == 0);
}

TEST_CASE("CUDA top-k selects and orders as cpu::topk_desc, ties to the lower index", "[cuda]") {
    if (!have_gpu()) return;
    for (const int64_t n : {5, 16, 300, 5000, 70000})
        for (const int k : {1, 16, 512}) {
            // few distinct values: many ties
            std::vector<float> s(static_cast<size_t>(n));
            std::uniform_int_distribution<int> d(-20, 20);
            for (float &v : s) v = float(d(rng)) * 0.25f;
            DeviceArray<float> ds(s);
            DeviceArray<int32_t> out(static_cast<size_t>(k));
            cu::topk_rows(nullptr, ds.p, n, 1, nullptr, 0, n, k, out.p, k);
            std::vector<int32_t> want = backend::cpu::topk_desc(s.data(), n, k);
            want.resize(size_t(k), -1);
            INFO("n " << n << " k " << k);
            REQUIRE(out.get() == want);
        }
}
