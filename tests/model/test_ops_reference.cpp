// Every operator against an independent float64 reference written from the spec, at random shapes and seeds:
// FP8 / FP4 block-scaled GEMMs, sparse attention with sink, mHC (hc_pre with Sinkhorn, hc_post), the router,
// a SwiGLU expert with the clamp, and the compressors and indexer of the tiny model (observed in a real run).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "backend/cpu/backend.h"
#include "backend/cpu/common.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/packed.h"
#include "backend/cpu/simd.h"
#include "core/numeric.h"
#include "runtime/context.h"
#include "support/fixtures.h"

using namespace dsv4;

namespace {

std::mt19937 &rng() {
    static std::mt19937 r(1234);
    return r;
}
float randn(float scale = 1.0f) { return std::normal_distribution<float>(0.0f, scale)(rng()); }
int randint(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng()); }

std::vector<float> bf16_vector(size_t n, float scale) {
    std::vector<float> v(n);
    for (float &x : v) x = core::round_bf16(randn(scale));
    return v;
}

// bf16 results may differ from the float64 value rounded once by one bf16 ulp (fp32 summation order).
void require_bf16_close(float got, double ref, double abs_floor) {
    int e;
    std::frexp(ref, &e);
    const double ulp = std::ldexp(1.0, e - 8);
    INFO("got " << got << " reference " << ref);
    REQUIRE(std::fabs(double(got) - ref) <= 1.01 * ulp + abs_floor);
}

// float64 act-quant: per-row blocks of 128, scale 2^ceil(log2(amax/448)), values decoded from the nearest code.
double quantize_value_ref(double v, double s, bool fp4) {
    const double q = std::clamp(v / s, fp4 ? -6.0 : -448.0, fp4 ? 6.0 : 448.0);
    return (fp4 ? core::fp4_e2m1_to_f32(core::f32_to_fp4_e2m1(float(q))) : core::fp8_e4m3_to_f32(core::f32_to_fp8_e4m3(float(q)))) * s;
}
std::vector<double> act_quant_ref(const float *x, int64_t k) {
    std::vector<double> out(static_cast<size_t>(k));
    for (int64_t b = 0; b < k; b += 128) {
        double amax = 1e-4;
        for (int64_t i = b; i < std::min(k, b + 128); ++i) amax = std::max(amax, std::fabs(double(x[i])));
        const double s = std::ldexp(1.0, int(std::ceil(std::log2(double(float(amax) * (1.0f / 448.0f))))));
        for (int64_t i = b; i < std::min(k, b + 128); ++i) out[size_t(i)] = quantize_value_ref(x[i], s, false);
    }
    return out;
}

// The linears and attention run on the reference backend and on the optimised backend at every ISA this
// machine has (llama.cpp's test-backend-ops idea): each must match the float64 reference.
std::vector<std::pair<std::string, std::unique_ptr<backend::cpu::Primitives>>> quantized_backends() {
    std::vector<std::pair<std::string, std::unique_ptr<backend::cpu::Primitives>>> out;
    out.emplace_back("reference", backend::cpu::make_reference_primitives(2));
    for (auto isa : {backend::cpu::Isa::generic, backend::cpu::Isa::avx512, backend::cpu::Isa::avx512_bf16,
                     backend::cpu::Isa::amx})
        if (isa <= backend::cpu::detect_isa())
            out.emplace_back(backend::cpu::isa_name(isa), backend::cpu::make_primitives(2, isa));
    return out;
}

// A scale code: mostly near 2^0, sometimes far enough that folding it into bf16 exponents would under- or
// overflow (those rows take the kernels' exact fallback). Only the small side: codes far above 2^0 overflow fp32
// in any implementation.
uint8_t scale_code(int lo, int hi) { return uint8_t(randint(0, 9) == 0 ? randint(1, 4) : randint(lo, hi)); }

}  // namespace

TEST_CASE("the kernels' activation quantisation equals act_quant value for value, in both layouts", "[ops]") {
    for (int trial = 0; trial < 50; ++trial) {
        const int64_t n = randint(1, 3), k = 128 * randint(1, 4);
        std::vector<float> x(size_t(n * k));
        // bf16 values over a wide range of magnitudes (so blocks hit subnormal codes, ties and saturation)
        const float spread = float(std::ldexp(1.0, randint(-30, 10)));
        for (float &v : x) v = core::round_bf16(randn(1.0f) * float(std::ldexp(1.0, randint(-12, 0))) * spread);
        if (trial % 7 == 0) std::fill(x.begin(), x.end(), 0.0f);
        using backend::cpu::ActLayout;
        std::vector<uint16_t> natural(x.size()), lanes(x.size()), lanes8(x.size());
        backend::cpu::quantize_activations(x.data(), n, k, ActLayout::natural, natural.data());
        backend::cpu::quantize_activations(x.data(), n, k, ActLayout::fp4_lanes, lanes.data());
        backend::cpu::quantize_activations(x.data(), n, k, ActLayout::fp8_lanes, lanes8.data());
        if (backend::cpu::detect_isa() >= backend::cpu::Isa::avx512_bf16)
            for (auto [layout, want] : {std::pair{ActLayout::natural, &natural}, std::pair{ActLayout::fp4_lanes, &lanes},
                                        std::pair{ActLayout::fp8_lanes, &lanes8}}) {
                std::vector<uint16_t> vec(x.size());
                backend::cpu::quantize_activations_avx512(x.data(), n, k, layout, vec.data());
                REQUIRE(vec == *want);
            }
        std::vector<uint8_t> codes(static_cast<size_t>(k));
        std::vector<int8_t> exps(static_cast<size_t>(k / 128));
        for (int64_t i = 0; i < n; ++i) {
            core::quantize_blocks(core::BlockFormat::fp8_e4m3, &x[size_t(i * k)], size_t(k), 128, codes.data(), exps.data());
            for (int64_t c = 0; c < k; ++c) {
                const float want = core::fp8_e4m3_to_f32(codes[size_t(c)]) * core::exp2i(exps[size_t(c / 128)]);
                INFO("x = " << x[size_t(i * k + c)]);
                REQUIRE(core::bf16_to_f32(natural[size_t(i * k + c)]) == want);
                const int64_t at = backend::cpu::fp4_lane_index(c), at8 = backend::cpu::fp8_lane_index(c);
                REQUIRE(core::bf16_to_f32(lanes[size_t(i * k + at)]) == want);
                REQUIRE(core::bf16_to_f32(lanes8[size_t(i * k + at8)]) == want);
            }
        }
    }
}

TEST_CASE("FP8 block-scaled GEMM equals the float64 reference", "[ops]") {
  for (auto &[isa, be] : quantized_backends()) {
    INFO("backend " << isa);
    for (int trial = 0; trial < 6; ++trial) {
        const int64_t n = trial >= 4 ? randint(32, 70) : randint(1, 11), rows = 64 * randint(1, 5) + randint(0, 63), cols = 128 * randint(1, 3);
        std::vector<uint8_t> w(static_cast<size_t>(rows * cols)), s(static_cast<size_t>((rows + 127) / 128 * (cols / 128)));
        for (auto &c : w) c = uint8_t(randint(0, 255) & 0xf7 ? randint(0, 0x7e) | (randint(0, 1) << 7) : 0);
        for (auto &c : s) c = scale_code(120, 130);
        core::Fp8Matrix m{w.data(), s.data(), rows, cols};
        const auto x = bf16_vector(size_t(n * cols), 2.0f);
        std::vector<float> y(static_cast<size_t>(n * rows));
        be->linear_fp8(x.data(), n, m, y.data());
        for (int64_t i = 0; i < n; ++i) {
            const auto a = act_quant_ref(&x[size_t(i * cols)], cols);
            for (int64_t r = 0; r < rows; ++r) {
                double ref = 0;
                for (int64_t c = 0; c < cols; ++c)
                    ref += a[size_t(c)] * core::fp8_e4m3_to_f32(w[size_t(r * cols + c)]) * core::e8m0_to_f32(s[size_t((r / 128) * (cols / 128) + c / 128)]);
                require_bf16_close(y[size_t(i * rows + r)], ref, 1e-6);
            }
        }
    }
  }
}

TEST_CASE("FP4 expert GEMM (per-32 scales, checkpoint nibble order) equals the float64 reference", "[ops]") {
  for (auto &[isa, be] : quantized_backends()) {
    INFO("backend " << isa);
    for (int trial = 0; trial < 6; ++trial) {
        const int64_t n = trial >= 4 ? randint(32, 70) : randint(1, 11), rows = randint(1, 200), cols = 128 * randint(1, 3);
        std::vector<uint8_t> w(static_cast<size_t>(rows * cols / 2)), s(static_cast<size_t>(rows * cols / 32));
        for (auto &c : w) c = uint8_t(randint(0, 255));
        for (auto &c : s) c = scale_code(118, 128);
        core::ExpertMatrix m;
        m.format = core::ExpertFormat::fp4;
        m.fp4 = {w.data(), s.data(), rows, cols};
        const auto x = bf16_vector(size_t(n * cols), 1.0f);
        std::vector<float> y(static_cast<size_t>(n * rows));
        be->linear_expert(x.data(), n, m, y.data());
        for (int64_t i = 0; i < n; ++i) {
            const auto a = act_quant_ref(&x[size_t(i * cols)], cols);
            for (int64_t r = 0; r < rows; ++r) {
                double ref = 0;
                for (int64_t c = 0; c < cols; ++c) {
                    const uint8_t byte = w[size_t((r * cols + c) / 2)];
                    const uint8_t code = (c % 2) ? byte >> 4 : byte & 15;
                    ref += a[size_t(c)] * core::fp4_e2m1_to_f32(code) * core::e8m0_to_f32(s[size_t(r * (cols / 32) + c / 32)]);
                }
                require_bf16_close(y[size_t(i * rows + r)], ref, 1e-6);
            }
        }
    }
  }
}

// Rows and activations whose second halves cancel their first halves exactly (x[c + k/2] = -x[c], the same
// weights and scales): each output is then the rounding residue of its fp32 sums, which any change of summation
// order changes; outputs of ordinary data round to the same bf16 value under most reorderings. k a multiple of 256.
namespace {
void mirror_halves(std::vector<float> &x, int64_t k, std::vector<uint8_t> &w, int64_t w_row, std::vector<uint8_t> &s,
                   int64_t s_row) {
    for (size_t i = 0; i < x.size(); i += size_t(k))
        for (int64_t c = 0; c < k / 2; ++c) x[i + size_t(k / 2 + c)] = -x[i + size_t(c)];
    for (size_t r = 0; r < w.size(); r += size_t(w_row)) std::copy_n(&w[r], w_row / 2, &w[r + size_t(w_row / 2)]);
    for (size_t r = 0; r < s.size(); r += size_t(s_row)) std::copy_n(&s[r], s_row / 2, &s[r + size_t(s_row / 2)]);
}
}  // namespace

TEST_CASE("every linear gives each column the same bits whatever the number of columns (GEMM path = GEMV)", "[ops]") {
  for (auto &[isa, be] : quantized_backends()) {
    INFO("backend " << isa);
    for (int trial = 0; trial < 3; ++trial) {
        // past every GEMM threshold, on cancelling data (see mirror_halves) so that any reorder shows
        const int64_t n = randint(32, 60), rows = randint(1, 150), cols = 256 * randint(1, 2);
        std::vector<uint8_t> w4(static_cast<size_t>(rows * cols / 2)), s4(static_cast<size_t>(rows * cols / 32));
        std::vector<uint8_t> w8(static_cast<size_t>(rows * cols)), s8(static_cast<size_t>((rows + 127) / 128 * (cols / 128)));
        std::vector<uint16_t> wb(static_cast<size_t>(rows * cols));
        for (auto &c : w4) c = uint8_t((randint(0, 1) ? 7 : 1) | (randint(0, 1) ? 0x70 : 0x10));  // see the packed test
        for (auto &c : s4) c = scale_code(118, 128);
        for (auto &c : w8) c = uint8_t(randint(0, 0x7e) | (randint(0, 1) << 7));
        for (auto &c : s8) c = scale_code(120, 130);
        for (auto &v : wb) v = core::f32_to_bf16(randn(0.05f));
        std::vector<float> x4(static_cast<size_t>(n * cols));
        for (float &v : x4) v = randint(0, 3) ? 1.75f : (randint(0, 1) ? 0x1p-17f : -0x1p-17f);
        auto x = bf16_vector(size_t(n * cols), 1.0f);
        mirror_halves(x4, cols, w4, cols / 2, s4, cols / 32);
        mirror_halves(x, cols, w8, cols, s8, cols / 128);
        for (int64_t r = 0; r < rows; ++r) std::copy_n(&wb[size_t(r * cols)], cols / 2, &wb[size_t(r * cols + cols / 2)]);
        core::ExpertMatrix m4;
        m4.format = core::ExpertFormat::fp4;
        m4.fp4 = {w4.data(), s4.data(), rows, cols};
        const core::Fp8Matrix m8{w8.data(), s8.data(), rows, cols};
        const core::Bf16Matrix mb{reinterpret_cast<const uint8_t *>(wb.data()), rows, cols};
        const auto all_then_each = [&](const std::vector<float> &xs, auto &&linear) {
            std::vector<float> all(static_cast<size_t>(n * rows)), one(static_cast<size_t>(rows));
            linear(xs.data(), n, all.data());
            for (int64_t i = 0; i < n; ++i) {
                linear(&xs[size_t(i * cols)], 1, one.data());
                INFO("column " << i << " of " << n);
                REQUIRE(std::equal(one.begin(), one.end(), all.begin() + i * rows));
            }
        };
        backend::cpu::Primitives &b = *be;  // a structured binding cannot be captured in C++17
        all_then_each(x4, [&](const float *xs, int64_t k, float *y) { b.linear_expert(xs, k, m4, y); });
        all_then_each(x, [&](const float *xs, int64_t k, float *y) { b.linear_fp8(xs, k, m8, y); });
        all_then_each(x, [&](const float *xs, int64_t k, float *y) { b.linear_bf16(xs, k, mb, y); });
    }
  }
}

TEST_CASE("the packed weight layout: FP4 and FP8 linears equal the float64 reference, each column the same bits "
          "whatever the number of columns", "[ops]") {
  for (auto &[isa, be] : quantized_backends()) {
    INFO("backend " << isa);
    for (int trial = 0; trial < 8; ++trial) {
        // rows in 16-row blocks, FP4 rows of any multiple of 32 (not only of 128); n from GEMV to past 64 columns
        const bool cancelling = trial >= 4;
        const int64_t n = trial % 2 ? randint(20, 70) : randint(2, 11), rows = 16 * randint(1, 20);
        const int64_t cols4 = cancelling ? 256 * randint(1, 2) : 32 * randint(1, 12), cols8 = 256 * randint(1, 2);
        std::vector<uint8_t> w4(static_cast<size_t>(rows * cols4 / 2)), s4(static_cast<size_t>(rows * cols4 / 32));
        std::vector<uint8_t> w8(static_cast<size_t>(rows * cols8)), s8(static_cast<size_t>((rows + 127) / 128 * (cols8 / 128)));
        for (auto &c : w4) c = uint8_t(randint(0, 255));
        for (auto &c : s4) c = scale_code(118, 128);
        for (auto &c : w8) c = uint8_t(randint(0, 0x7e) | (randint(0, 1) << 7));
        for (auto &c : s8) c = scale_code(120, 130);
        auto x4 = bf16_vector(size_t(n * cols4), 1.0f), x8 = bf16_vector(size_t(n * cols8), 2.0f);
        if (cancelling) {
            // FP4 products within a group span 2^22 (e4m3 448 / 2^-9, e2m1 6 / 0.5); the largest and the smallest
            // (x 1.75 and 2^-17 quantise to 448 and 2^-9 times 2^-8, weights 6 and 0.5) make 32-term partials
            // inexact in fp32, so that their order shows too
            for (float &v : x4) v = randint(0, 3) ? 1.75f : (randint(0, 1) ? 0x1p-17f : -0x1p-17f);
            for (auto &c : w4) c = uint8_t((randint(0, 1) ? 7 : 1) | (randint(0, 1) ? 0x70 : 0x10));
            mirror_halves(x4, cols4, w4, cols4 / 2, s4, cols4 / 32);
            mirror_halves(x8, cols8, w8, cols8, s8, cols8 / 128);
        }
        core::ExpertMatrix m4;
        m4.format = core::ExpertFormat::fp4;
        m4.fp4 = {w4.data(), s4.data(), rows, cols4};
        core::Fp8Matrix m8{w8.data(), s8.data(), rows, cols8};
        std::vector<uint8_t> p4(backend::cpu::packed_fp4_bytes(m4.fp4)), p8(backend::cpu::packed_fp8_bytes(m8));
        REQUIRE(p4.size() == w4.size() + s4.size() + size_t(rows / 16));  // + one "the kernels take it" byte per block
        REQUIRE(p8.size() == w8.size());
        // packed in two halves, as a loader splits the work over threads
        for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, rows / 32 * 16}, {rows / 32 * 16, rows}}) {
            backend::cpu::pack_fp4_rows(m4.fp4, r0, r1, p4.data());
            backend::cpu::pack_fp8_rows(m8, r0, r1, p8.data());
        }
        m4.fp4.packed = p4.data();
        m8.packed = p8.data();
        for (int64_t b = 0; b < rows / 16; ++b) {  // the layout's per-block flag: every scale code of the block in range
            const auto first = s4.begin() + b * 16 * (cols4 / 32), last = first + 16 * (cols4 / 32);
            const bool in_range = std::all_of(first, last, [](uint8_t c) {
                return c >= backend::cpu::simd::kFp4CodeLo && c <= backend::cpu::simd::kFp4CodeHi;
            });
            REQUIRE(backend::cpu::packed_fp4_block_takes(m4.fp4, b) == in_range);
        }

        std::vector<float> y4(static_cast<size_t>(n * rows)), y8(static_cast<size_t>(n * rows)), one(static_cast<size_t>(rows));
        be->linear_expert(x4.data(), n, m4, y4.data());
        be->linear_fp8(x8.data(), n, m8, y8.data());
        for (int64_t i = 0; i < n; ++i) {
            INFO("column " << i << " of " << n << " alone");
            be->linear_expert(&x4[size_t(i * cols4)], 1, m4, one.data());
            REQUIRE(std::equal(one.begin(), one.end(), y4.begin() + i * rows));
            be->linear_fp8(&x8[size_t(i * cols8)], 1, m8, one.data());
            REQUIRE(std::equal(one.begin(), one.end(), y8.begin() + i * rows));
            if (cancelling) continue;
            const auto a4 = act_quant_ref(&x4[size_t(i * cols4)], cols4), a8 = act_quant_ref(&x8[size_t(i * cols8)], cols8);
            for (int64_t r = 0; r < rows; ++r) {
                // beside one bf16 ulp, fp32 sums may lose a few ulps of the terms' magnitudes where they cancel
                double ref4 = 0, ref8 = 0, mag4 = 0, mag8 = 0;
                for (int64_t c = 0; c < cols4; ++c) {
                    const uint8_t byte = w4[size_t((r * cols4 + c) / 2)];
                    const double t = a4[size_t(c)] * core::fp4_e2m1_to_f32((c % 2) ? byte >> 4 : byte & 15) *
                                     core::e8m0_to_f32(s4[size_t(r * (cols4 / 32) + c / 32)]);
                    ref4 += t;
                    mag4 += std::fabs(t);
                }
                for (int64_t c = 0; c < cols8; ++c) {
                    const double t = a8[size_t(c)] * core::fp8_e4m3_to_f32(w8[size_t(r * cols8 + c)]) *
                                     core::e8m0_to_f32(s8[size_t((r / 128) * (cols8 / 128) + c / 128)]);
                    ref8 += t;
                    mag8 += std::fabs(t);
                }
                INFO("row " << r << " of " << rows);
                require_bf16_close(y4[size_t(i * rows + r)], ref4, 1e-6 + 0x1p-20 * mag4);
                require_bf16_close(y8[size_t(i * rows + r)], ref8, 1e-6 + 0x1p-20 * mag8);
            }
        }
    }
  }
}

TEST_CASE("a batch of expert linears gives each job exactly what linear_expert gives it", "[ops]") {
  for (auto &[isa, be] : quantized_backends()) {
    INFO("backend " << isa);
    for (const int64_t n : {1, 5}) {
        // FP4 and FP8 matrices, packed and not, two of them sharing an input (as w1 and w3 do)
        const int64_t rows = 48, cols = 256;
        std::vector<std::vector<uint8_t>> data;
        data.reserve(10);  // references to its elements stay valid
        std::vector<core::ExpertMatrix> mats(4);
        for (size_t m = 0; m < mats.size(); ++m) {
            const bool fp4 = m % 2 == 0;
            std::vector<uint8_t> &w = data.emplace_back(size_t(rows * cols / (fp4 ? 2 : 1)));
            std::vector<uint8_t> &sc = data.emplace_back(size_t(fp4 ? rows * cols / 32 : (rows + 127) / 128 * (cols / 128)));
            for (auto &c : w) c = uint8_t(fp4 ? randint(0, 255) : randint(0, 0x7e) | (randint(0, 1) << 7));
            for (auto &c : sc) c = scale_code(fp4 ? 118 : 120, fp4 ? 128 : 130);
            mats[m].format = fp4 ? core::ExpertFormat::fp4 : core::ExpertFormat::fp8;
            if (fp4) mats[m].fp4 = {w.data(), sc.data(), rows, cols};
            else mats[m].fp8 = {w.data(), sc.data(), rows, cols};
            if (m < 2) {  // the first two get a packed copy
                std::vector<uint8_t> &p = data.emplace_back(fp4 ? backend::cpu::packed_fp4_bytes(mats[m].fp4)
                                                                : backend::cpu::packed_fp8_bytes(mats[m].fp8));
                if (fp4) backend::cpu::pack_fp4_rows(mats[m].fp4, 0, rows, p.data()), mats[m].fp4.packed = p.data();
                else backend::cpu::pack_fp8_rows(mats[m].fp8, 0, rows, p.data()), mats[m].fp8.packed = p.data();
            }
        }
        const auto shared_x = bf16_vector(size_t(n * cols), 1.0f), other_x = bf16_vector(size_t(n * cols), 1.0f);
        std::vector<std::vector<float>> batched(5, std::vector<float>(size_t(n * rows))), alone = batched;
        const std::vector<std::pair<const std::vector<float> *, size_t>> spec = {
            {&shared_x, 0}, {&shared_x, 1}, {&other_x, 0}, {&other_x, 3}, {&shared_x, 2}};
        std::vector<backend::cpu::ExpertLinear> jobs;
        for (size_t j = 0; j < spec.size(); ++j) {
            jobs.push_back({spec[j].first->data(), n, &mats[spec[j].second], batched[j].data()});
            be->linear_expert(spec[j].first->data(), n, mats[spec[j].second], alone[j].data());
        }
        be->linear_experts(jobs.data(), jobs.size());
        for (size_t j = 0; j < spec.size(); ++j) {
            INFO("job " << j << ", n = " << n);
            REQUIRE(batched[j] == alone[j]);
        }
    }
  }
}

TEST_CASE("FP8 weights dequantised (grouped wo_a): each group of rows times its group of the unquantised inputs "
          "equals the float64 reference and the bf16 linear of the dequantised weights", "[ops]") {
  for (auto &[isa, be] : quantized_backends()) {
    INFO("backend " << isa);
    for (int trial = 0; trial < 8; ++trial) {
        // groups of R rows as wo_a's: R a multiple of 16 (the packed tiles') or of 4; the last two trials with
        // prefill's token count, whose groups go one at a time (over 1 MiB of activations)
        const bool many = trial >= 6;
        const int groups = many ? 4 : randint(1, 4);
        const int64_t R = (trial % 2 ? 16 : 4) * (many ? 2 : randint(1, 12)), rows = groups * R;
        const int64_t n = many ? 400 : trial % 3 == 2 ? randint(32, 40) : randint(1, 6), cols = many ? 384 : 128 * randint(1, 3);
        std::vector<uint8_t> w(static_cast<size_t>(rows * cols)), s(static_cast<size_t>((rows + 127) / 128 * (cols / 128)));
        for (auto &c : w) c = uint8_t(randint(0, 0x7e) | (randint(0, 1) << 7));
        for (auto &c : s) c = scale_code(120, 130);
        core::Fp8Matrix m{w.data(), s.data(), rows, cols};
        std::vector<uint8_t> packed(backend::cpu::packed_fp8_bytes(m));
        if (trial % 2) {  // the packed copy half the time
            backend::cpu::pack_fp8_rows(m, 0, rows, packed.data());
            m.packed = packed.data();
        }
        std::vector<uint16_t> dequant(static_cast<size_t>(rows * cols));
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c)
                dequant[size_t(r * cols + c)] = core::f32_to_bf16(core::fp8_e4m3_to_f32(w[size_t(r * cols + c)]) *
                                                                  core::e8m0_to_f32(s[size_t((r / 128) * (cols / 128) + c / 128)]));
        const auto x = bf16_vector(size_t(n * groups * cols), 1.0f);
        std::vector<float> y(static_cast<size_t>(n * rows), -1.0f);
        be->linear_dequant_fp8(x.data(), n, m, groups, y.data());
        for (int g = 0; g < groups; ++g) {
            // the reference's path: the bf16 linear of the dequantised rows over the group's inputs
            const core::Bf16Matrix mb{reinterpret_cast<const uint8_t *>(&dequant[size_t(g * R * cols)]), R, cols};
            std::vector<float> xg(static_cast<size_t>(n * cols)), yb(static_cast<size_t>(n * R));
            for (int64_t i = 0; i < n; ++i) std::copy_n(&x[size_t((i * groups + g) * cols)], cols, &xg[size_t(i * cols)]);
            be->linear_bf16(xg.data(), n, mb, yb.data());
            for (int64_t i = 0; i < n; ++i)
                for (int64_t r = 0; r < R; ++r) {
                    INFO("group " << g << " of " << groups << ", row " << r << " of " << R << ", column " << i);
                    double ref = 0, mag = 0;
                    for (int64_t c = 0; c < cols; ++c) {
                        const double t = double(xg[size_t(i * cols + c)]) * core::bf16_to_f32(dequant[size_t((g * R + r) * cols + c)]);
                        ref += t;
                        mag += std::fabs(t);
                    }
                    require_bf16_close(y[size_t(i * rows + g * R + r)], ref, 1e-6 + 0x1p-20 * mag);
                    require_bf16_close(yb[size_t(i * R + r)], ref, 1e-6 + 0x1p-20 * mag);
                }
        }
    }
  }
}

TEST_CASE("bf16-weight linears (bf16 output, fp32 output) and the fp32-weight linear equal the float64 reference", "[ops]") {
  for (auto &[isa, be] : quantized_backends()) {
    INFO("backend " << isa);
    for (int trial = 0; trial < 8; ++trial) {
        const int64_t n = trial == 7 ? randint(16, 60) : trial == 6 ? 9 : randint(1, 5), rows = randint(1, 70), cols = 32 * randint(1, 40);
        std::vector<uint16_t> w(static_cast<size_t>(rows * cols));
        for (auto &v : w) v = core::f32_to_bf16(randn(0.05f));
        const core::Bf16Matrix m{reinterpret_cast<const uint8_t *>(w.data()), rows, cols};
        const auto xb = bf16_vector(size_t(n * cols), 1.0f);  // linear_bf16 takes bf16 values
        std::vector<float> xf(size_t(n * cols));
        for (float &v : xf) v = randn(1.0f);  // linear_f32 takes any fp32; columns of bf16 values take other kernels
        for (int64_t i = 1; i < n; i += 2)
            for (int64_t c = 0; c < cols; ++c) xf[size_t(i * cols + c)] = core::round_bf16(xf[size_t(i * cols + c)]);
        std::vector<float> w32(w.size());  // fp32 weights (mHC mixes) with more than bf16's mantissa
        for (float &v : w32) v = randn(0.05f);
        std::vector<float> yb(static_cast<size_t>(n * rows)), yf(yb.size()), y32(yb.size());
        be->linear_bf16(xb.data(), n, m, yb.data());
        be->linear_f32(xf.data(), n, m, yf.data());
        be->linear_f32w(xf.data(), n, w32.data(), rows, cols, y32.data());
        for (int64_t i = 0; i < n; ++i) {  // each column's fp32 sums whatever the batch and its other columns
            std::vector<float> one(static_cast<size_t>(rows));
            be->linear_f32(&xf[size_t(i * cols)], 1, m, one.data());
            INFO("column " << i << " of " << n << " alone");
            REQUIRE(std::equal(one.begin(), one.end(), yf.begin() + i * rows));
        }
        {  // the mHC mixes keep the reference's summation order exactly (see CpuBackend::linear_f32w)
            std::vector<float> y32_ref(y32.size());
            backend::cpu::make_reference_primitives(1)->linear_f32w(xf.data(), n, w32.data(), rows, cols, y32_ref.data());
            REQUIRE(y32 == y32_ref);
        }
        for (int64_t i = 0; i < n; ++i)
            for (int64_t r = 0; r < rows; ++r) {
                double rb = 0, rf = 0, mag = 0, r32 = 0, mag32 = 0;
                for (int64_t c = 0; c < cols; ++c) {
                    const double wv = core::bf16_to_f32(w[size_t(r * cols + c)]), xv = xf[size_t(i * cols + c)];
                    rb += double(xb[size_t(i * cols + c)]) * wv;
                    rf += xv * wv;
                    mag += std::fabs(xv * wv);
                    r32 += xv * w32[size_t(r * cols + c)];
                    mag32 += std::fabs(xv * w32[size_t(r * cols + c)]);
                }
                require_bf16_close(yb[size_t(i * rows + r)], rb, 1e-6);
                INFO("row " << r << " col " << i);
                // any fp32 summation order: at most cols roundings of 2^-24 relative to the running magnitude (plus
                // the rounding of each fp32 product for fp32 weights)
                REQUIRE(std::fabs(double(yf[size_t(i * rows + r)]) - rf) <= double(cols) * 0x1p-24 * mag + 1e-9);
                REQUIRE(std::fabs(double(y32[size_t(i * rows + r)]) - r32) <= double(cols + 1) * 0x1p-24 * mag32 + 1e-9);
            }
    }
  }
}

TEST_CASE("the attention kernel's P.V update adds the rows' products in row order, as the reference (bf16 P and V)", "[ops]") {
    if (backend::cpu::detect_isa() < backend::cpu::Isa::avx512_bf16) return;
    for (int trial = 0; trial < 20; ++trial) {
        const int nh = randint(1, backend::cpu::kMaxHeadBlock), n = 16 * randint(1, 40);
        const int count = randint(1, int(backend::cpu::kAttentionChunk));
        std::vector<float> acc(size_t(nh * n)), probs(size_t(nh) * backend::cpu::kAttentionChunk);
        const std::vector<float> rows = bf16_vector(size_t(count * n), 1.0f);
        std::vector<uint16_t> rows_bf16(rows.size());
        for (size_t i = 0; i < rows.size(); ++i) rows_bf16[i] = core::f32_to_bf16(rows[i]);
        std::vector<uint8_t> valid(static_cast<size_t>(count));
        for (float &v : acc) v = randn(1.0f);
        for (float &v : probs) v = core::round_bf16(std::fabs(randn(0.5f)));
        for (auto &v : valid) v = uint8_t(randint(0, 4) != 0);
        std::vector<float> want = acc;
        for (int h = 0; h < nh; ++h)
            for (int j = 0; j < count; ++j)
                if (valid[size_t(j)])
                    for (int i = 0; i < n; ++i) {
                        volatile float product = probs[size_t(h) * backend::cpu::kAttentionChunk + size_t(j)] * rows[size_t(j * n + i)];
                        want[size_t(h * n + i)] = want[size_t(h * n + i)] + product;
                    }
        backend::cpu::pv_heads_avx512(acc.data(), nh, probs.data(), rows_bf16.data(), valid.data(), count, n);
        INFO("heads " << nh << " head_dim " << n << " rows " << count);
        REQUIRE(acc == want);
    }
}

TEST_CASE("sparse attention with sink equals the float64 softmax", "[ops]") {
  for (auto &[isa, be] : quantized_backends()) {
    INFO("backend " << isa);
    for (int trial = 0; trial < 8; ++trial) {
        const int H = randint(1, 4), d = 64 * randint(1, 2);
        const int64_t rows = randint(1, 300);
        const auto q = bf16_vector(size_t(H * d), 1.0f), kv = bf16_vector(size_t(rows * d), 1.0f);
        std::vector<uint16_t> kv_bf16(kv.size());
        for (size_t i = 0; i < kv.size(); ++i) kv_bf16[i] = core::f32_to_bf16(kv[i]);
        std::vector<uint8_t> valid(static_cast<size_t>(rows));
        for (auto &v : valid) v = randint(0, 4) != 0;
        valid[0] = 1;
        std::vector<float> sink(static_cast<size_t>(H));
        for (float &s : sink) s = randn(2.0f);
        std::vector<float> out(static_cast<size_t>(H * d));
        backend::cpu::AttentionProblem p;
        p.q = q.data();
        p.kv = kv_bf16.data();
        p.valid = valid.data();
        p.n_rows = rows;
        p.n_heads = H;
        p.head_dim = d;
        p.sink = sink.data();
        p.scale = 1.0f / std::sqrt(float(d));
        p.out = out.data();
        be->attention(p);
        for (int h = 0; h < H; ++h) {
            std::vector<double> sc;
            double mx = -INFINITY;
            for (int64_t j = 0; j < rows; ++j) {
                double dot = 0;
                for (int t = 0; t < d; ++t) dot += double(q[size_t(h * d + t)]) * kv[size_t(j * d + t)];
                sc.push_back(valid[size_t(j)] ? dot / std::sqrt(double(d)) : -INFINITY);
                mx = std::max(mx, sc.back());
            }
            double denom = std::exp(double(sink[size_t(h)]) - mx);
            for (double s : sc) denom += std::exp(s - mx);
            for (int t = 0; t < d; ++t) {
                double o = 0, mag = 0;
                for (int64_t j = 0; j < rows; ++j) {
                    const double term = std::exp(sc[size_t(j)] - mx) / denom * kv[size_t(j * d + t)];
                    o += term;
                    mag += std::fabs(term);
                }
                // The reference rounds each P to bf16 before P·V (2^-9 relative per term) and the output to bf16
                // (2^-9 of it); 2^-8 leaves room for the fp32 softmax and sums.
                REQUIRE(std::fabs(double(out[size_t(h * d + t)]) - o) <= 0x1p-8 * (mag + std::fabs(o)) + 1e-6);
            }
        }
    }
  }
}

TEST_CASE("lightning-indexer scores equal the float64 reference with the reference's roundings", "[ops]") {
  for (auto &[isa, be] : quantized_backends()) {
    INFO("backend " << isa);
    for (int trial = 0; trial < 6; ++trial) {
        const int heads = trial % 2 ? 64 : randint(1, 20), dim = 128;
        const int64_t n = randint(1, 300), per_page = randint(1, 70), entry_bytes = dim / 2 + dim / 32 + 3;
        // q FP4-simulated as the model's queries are (block scales from 2^-8 to 2^8; the kernels' integer path),
        // except in one trial (arbitrary floats: the fp32 path)
        auto q = bf16_vector(size_t(heads * dim), 1.0f);
        if (trial == 5)
            for (float &v : q) v += randn(1e-3f);
        else
            for (int b = 0; b < heads * dim / 32; ++b) {
                const float scale = std::ldexp(1.0f, randint(-8, 8));
                for (int i = 0; i < 32; ++i) q[size_t(32 * b + i)] *= scale;
                core::simulate_blocks(core::BlockFormat::fp4_e2m1, &q[size_t(32 * b)], 32, 32);
            }
        // Keys as the cache stores them, in pages: random e2m1 codes, e8m0 scales around 1 (in one trial some keys
        // with a scale no bf16 exponent can fold in); the float copy is what they decode to.
        std::vector<std::vector<uint8_t>> pages(size_t((n + per_page - 1) / per_page),
                                                std::vector<uint8_t>(size_t(per_page * entry_bytes)));
        std::vector<float> keys(size_t(n * dim));
        for (int64_t j = 0; j < n; ++j) {
            uint8_t *entry = pages[size_t(j / per_page)].data() + (j % per_page) * entry_bytes;
            for (int b = 0; b < dim / 32; ++b) entry[dim / 2 + b] = uint8_t(trial == 4 && j % 7 == 0 ? 1 : randint(120, 130));
            for (int c = 0; c < dim; c += 2) {
                const int lo = randint(0, 15), hi = randint(0, 15);
                entry[c / 2] = uint8_t(lo | hi << 4);
                const double scale = std::ldexp(1.0, entry[dim / 2 + c / 32] - 127);
                keys[size_t(j * dim + c)] = float(core::fp4_e2m1_to_f32(uint8_t(lo)) * scale);
                keys[size_t(j * dim + c + 1)] = float(core::fp4_e2m1_to_f32(uint8_t(hi)) * scale);
            }
        }
        std::vector<const uint8_t *> page_ptrs;
        for (const auto &page : pages) page_ptrs.push_back(page.data());
        const backend::cpu::Fp4Keys fp4_keys{page_ptrs.data(), per_page, entry_bytes};
        std::vector<float> w(static_cast<size_t>(heads));
        for (float &v : w) v = core::round_bf16(randn(0.1f));
        std::vector<float> scores(static_cast<size_t>(n));
        be->index_scores(q.data(), w.data(), heads, dim, fp4_keys, n, scores.data());
        for (int64_t j = 0; j < n; ++j) {
            // float64 dots, then the reference's bf16 roundings; fp32 summation order may move a dot across a
            // bf16 rounding boundary, so allow one bf16 ulp per head term plus the final rounding.
            double total = 0, slack = 0;
            for (int h = 0; h < heads; ++h) {
                double dot = 0;
                for (int c = 0; c < dim; ++c) dot += double(q[size_t(h * dim + c)]) * keys[size_t(j * dim + c)];
                const double term = core::round_bf16(float(std::max<double>(core::round_bf16(float(dot)), 0.0) * w[size_t(h)]));
                total += term;
                slack += std::fabs(term) * 0x1p-7 + std::fabs(dot * w[size_t(h)]) * 0x1p-7;
            }
            INFO("key " << j);
            REQUIRE(std::fabs(double(scores[size_t(j)]) - total) <= std::fabs(total) * 0x1p-7 + slack + 1e-6);
        }
    }
  }
}

TEST_CASE("compressed KV entries decode to bf16: e4m3 values times the block scale, rope dims as stored", "[ops]") {
    // Every code (both NaN codes, subnormals, -0) in some entry, scale codes from 2^-127 (subnormal products) to
    // 2^127 (overflow to inf); the float64 decode is code value x 2^(scale - 127) rounded to fp32 (the product
    // the reference forms), then to bf16.
    const int nope = 448, rope = 64, d = nope + rope, n = 40;
    const int entry_bytes = nope + nope / backend::cpu::kKvEntryScaleBlock + 2 * rope;
    std::vector<std::vector<uint8_t>> storage(size_t(n), std::vector<uint8_t>(static_cast<size_t>(entry_bytes)));
    std::vector<const uint8_t *> entries;
    for (int j = 0; j < n; ++j) {
        std::vector<uint8_t> &e = storage[size_t(j)];
        for (int c = 0; c < nope; ++c) e[size_t(c)] = uint8_t(j < 4 ? (j * nope + c) % 256 : randint(0, 255));
        for (int b = 0; b < nope / backend::cpu::kKvEntryScaleBlock; ++b)
            e[size_t(nope + b)] = uint8_t(j == 4 ? 0 : j == 5 ? 254 : j == 6 ? 1 + b : randint(110, 140));
        for (int i = 0; i < rope; ++i) {
            const uint16_t bits = core::f32_to_bf16(randn());
            std::memcpy(&e[size_t(nope + nope / backend::cpu::kKvEntryScaleBlock + 2 * i)], &bits, 2);
        }
        entries.push_back(e.data());
    }
    std::reverse(entries.begin() + n / 2, entries.end());  // entries in any order, as a top-k selects them
    for (auto &[isa, be] : quantized_backends()) {
        INFO("backend " << isa);
        for (const int count : {1, n}) {
            std::vector<uint16_t> rows(size_t(count * d), 0xbf80);  // -1
            be->decode_kv_entries({entries.data(), count, nope, rope}, rows.data());
            for (int j = 0; j < count; ++j) {
                const uint8_t *e = entries[size_t(j)];
                for (int c = 0; c < d; ++c) {
                    INFO("entry " << j << " element " << c);
                    const float got = core::bf16_to_f32(rows[size_t(j * d + c)]);
                    if (c >= nope) {
                        REQUIRE(got == core::bf16_to_f32(uint16_t(e[nope + nope / 64 + 2 * (c - nope)] |
                                                                  e[nope + nope / 64 + 2 * (c - nope) + 1] << 8)));
                        continue;
                    }
                    const uint8_t code = e[c];
                    const int exp = (code >> 3) & 15, man = code & 7;
                    if (exp == 15 && man == 7) {
                        REQUIRE(std::isnan(got));
                        continue;
                    }
                    const double value = (exp ? std::ldexp(1.0 + man / 8.0, exp - 7) : std::ldexp(double(man), -9)) *
                                         (code & 0x80 ? -1.0 : 1.0) * std::ldexp(1.0, e[nope + c / 64] - 127);
                    REQUIRE(got == core::round_bf16(float(value)));
                    REQUIRE(std::signbit(got) == bool(code & 0x80));
                }
            }
        }
    }
}

TEST_CASE("indexer top-k: descending scores, ties to the lower index, as a full sort orders them", "[ops]") {
    for (int trial = 0; trial < 20; ++trial) {
        const int64_t n = randint(1, 400), k = randint(1, 600);
        std::vector<float> scores(static_cast<size_t>(n));
        // few distinct values (bf16 scores tie often), some -inf (entries masked out)
        for (float &v : scores) v = randint(0, 9) == 0 ? -INFINITY : float(randint(-4, 4));
        std::vector<int32_t> order(static_cast<size_t>(n));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return scores[size_t(a)] > scores[size_t(b)]; });
        order.resize(size_t(std::min(n, k)));
        REQUIRE(backend::cpu::topk_desc(scores.data(), n, k) == order);
    }
}

// A host tensor over v (the CPU backend's tensors are host memory).
template <typename T>
core::Tensor host_tensor(std::vector<T> &v, int64_t rows, core::DType dtype = core::DType::F32) {
    return {v.data(), dtype, rows, int64_t(v.size()) / rows};
}

TEST_CASE("mHC: hc_pre with Sinkhorn and hc_post equal the float64 reference", "[ops]") {
    backend::cpu::CpuBackend be(backend::cpu::make_reference_primitives(2));
    const int hc = 4, D = 64 * randint(1, 3), mix = (2 + hc) * hc;
    const int64_t N = 5;
    model::HcWeights w;
    w.fn.resize(size_t(mix * hc * D));
    for (float &v : w.fn) v = randn(0.05f);
    for (int i = 0; i < mix; ++i) w.base.push_back(randn(0.5f));
    w.scale = {randn(1.0f), randn(1.0f), randn(1.0f)};
    const auto h = bf16_vector(size_t(N * hc * D), 1.0f);
    io::ModelConfig cfg;
    cfg.hc_mult = hc;
    cfg.dim = D;
    cfg.norm_eps = cfg.hc_eps = 1e-6f;
    cfg.hc_sinkhorn_iters = 20;
    const std::vector<float> norm(size_t(D), 1.0f);
    std::vector<float> x(static_cast<size_t>(N * D)), xn(x.size()), mixes(size_t(N * mix)), hv = h;
    core::Tensor x_t = host_tensor(x, N), xn_t = host_tensor(xn, N), mix_t = host_tensor(mixes, N);
    be.hc_pre(cfg, w, norm, host_tensor(hv, N), mix_t, x_t, xn_t);
    struct {
        std::vector<float> pre, post, comb;
    } m;
    for (int64_t i = 0; i < N; ++i) {
        const float *mi = &mixes[size_t(i * mix)];
        m.pre.insert(m.pre.end(), mi, mi + hc);
        m.post.insert(m.post.end(), mi + hc, mi + 2 * hc);
        m.comb.insert(m.comb.end(), mi + 2 * hc, mi + mix);
    }
    for (int64_t i = 0; i < N; ++i) {
        const float *hi = &h[size_t(i * hc * D)];
        double ss = 0;
        for (int c = 0; c < hc * D; ++c) ss += double(hi[c]) * hi[c];
        const double rho = 1.0 / std::sqrt(ss / (hc * D) + 1e-6);
        std::vector<double> mu(static_cast<size_t>(mix));
        for (int k = 0; k < mix; ++k) {
            double acc = 0;
            for (int c = 0; c < hc * D; ++c) acc += double(w.fn[size_t(k * hc * D + c)]) * hi[c];
            mu[size_t(k)] = acc * rho;
        }
        auto sig = [](double z) { return 1.0 / (1.0 + std::exp(-z)); };
        double C[4][4];
        for (int j = 0; j < hc; ++j) {
            REQUIRE(m.pre[size_t(i * hc + j)] == Approx(sig(w.scale[0] * mu[size_t(j)] + w.base[size_t(j)]) + 1e-6).epsilon(1e-5));
            REQUIRE(m.post[size_t(i * hc + j)] == Approx(2 * sig(w.scale[1] * mu[size_t(hc + j)] + w.base[size_t(hc + j)])).epsilon(1e-5));
            for (int k = 0; k < hc; ++k) C[j][k] = w.scale[2] * mu[size_t(2 * hc + j * hc + k)] + w.base[size_t(2 * hc + j * hc + k)];
        }
        for (int j = 0; j < hc; ++j) {
            double mx = -INFINITY, s = 0;
            for (int k = 0; k < hc; ++k) mx = std::max(mx, C[j][k]);
            for (int k = 0; k < hc; ++k) s += std::exp(C[j][k] - mx);
            for (int k = 0; k < hc; ++k) C[j][k] = std::exp(C[j][k] - mx) / s + 1e-6;
        }
        for (int it = 0; it < 20; ++it) {
            if (it > 0)
                for (int j = 0; j < hc; ++j) {
                    double s = 0;
                    for (int k = 0; k < hc; ++k) s += C[j][k];
                    for (int k = 0; k < hc; ++k) C[j][k] /= s + 1e-6;
                }
            for (int k = 0; k < hc; ++k) {
                double s = 0;
                for (int j = 0; j < hc; ++j) s += C[j][k];
                for (int j = 0; j < hc; ++j) C[j][k] /= s + 1e-6;
            }
        }
        for (int j = 0; j < hc; ++j)
            for (int k = 0; k < hc; ++k) REQUIRE(m.comb[size_t(i * hc * hc + j * hc + k)] == Approx(C[j][k]).epsilon(1e-5));
        for (int c = 0; c < D; ++c) {
            double ref = 0;
            for (int j = 0; j < hc; ++j) ref += double(m.pre[size_t(i * hc + j)]) * hi[j * D + c];
            require_bf16_close(x[size_t(i * D + c)], ref, 0);
        }
        double sq = 0;  // the norm step: RMSNorm of x with a unit weight
        for (int c = 0; c < D; ++c) sq += double(x[size_t(i * D + c)]) * x[size_t(i * D + c)];
        for (int c = 0; c < D; ++c)
            require_bf16_close(xn[size_t(i * D + c)], x[size_t(i * D + c)] / std::sqrt(sq / D + 1e-6), 0);
    }
    auto y = bf16_vector(size_t(N * D), 1.0f);
    std::vector<float> out(h.size());
    core::Tensor out_t = host_tensor(out, N);
    be.hc_post(mix_t, host_tensor(y, N), host_tensor(hv, N), out_t);
    for (int64_t i = 0; i < N; ++i)
        for (int k = 0; k < hc; ++k)
            for (int c = 0; c < D; ++c) {
                double ref = double(m.post[size_t(i * hc + k)]) * y[size_t(i * D + c)];
                for (int j = 0; j < hc; ++j) ref += double(m.comb[size_t(i * hc * hc + j * hc + k)]) * h[size_t((i * hc + j) * D + c)];
                require_bf16_close(out[size_t((i * hc + k) * D + c)], ref, 1e-30);
            }
}

TEST_CASE("router and a clamped SwiGLU expert equal the float64 reference", "[ops]") {
    const model::Model &m = test::tiny_flash();
    const io::ModelConfig &cfg = m.config();
    auto be = backend::cpu::make_reference_primitives(2);
    backend::cpu::CpuBackend steps(backend::cpu::make_reference_primitives(2));
    const int64_t N = 7;
    auto x = bf16_vector(size_t(N * cfg.dim), 1.0f);
    std::vector<int32_t> tokens = {0, 5, 77, 1000, 2047, 3, 9};
    for (int layer : {1, 2}) {  // a hash layer and a score layer
        const core::Rope rope(cfg.rope_head_dim, 10000.0f, false, 1.0f, 0, 0.0f, 0.0f);  // unused by the router
        const backend::Layer l{cfg, cfg.layers[size_t(layer)], m.weights().layers[size_t(layer)], rope, layer};
        const int E = cfg.n_routed_experts, k = cfg.n_activated_experts;
        std::vector<float> scores(static_cast<size_t>(N * E)), wts(static_cast<size_t>(N * k));
        std::vector<int32_t> ids(static_cast<size_t>(N * k));
        core::Tensor scores_t = host_tensor(scores, N), ids_t = host_tensor(ids, N, core::DType::I32),
                     wts_t = host_tensor(wts, N);
        steps.route(l, host_tensor(x, N), host_tensor(tokens, N, core::DType::I32), scores_t, ids_t, wts_t);
        const auto &lw = m.weights().layers[size_t(layer)];
        for (int64_t i = 0; i < N; ++i) {
            std::vector<double> s(static_cast<size_t>(E));
            for (int e = 0; e < E; ++e) {
                double u = 0;
                for (int c = 0; c < cfg.dim; ++c) u += double(x[size_t(i * cfg.dim + c)]) * core::load_bf16(lw.gate.w, size_t(e * cfg.dim + c));
                s[size_t(e)] = std::sqrt(std::log1p(std::exp(u)));
                REQUIRE(scores[size_t(i * E + e)] == Approx(s[size_t(e)]).epsilon(1e-5));
            }
            std::vector<int> sel(static_cast<size_t>(k));
            if (cfg.layers[size_t(layer)].hash_routed) {
                for (int j = 0; j < k; ++j) sel[size_t(j)] = lw.tid2eid[size_t(tokens[size_t(i)] * k + j)];
            } else {
                std::vector<int> order(static_cast<size_t>(E));
                std::iota(order.begin(), order.end(), 0);
                std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
                    return s[size_t(a)] + lw.gate_bias[size_t(a)] > s[size_t(b)] + lw.gate_bias[size_t(b)];
                });
                sel.assign(order.begin(), order.begin() + k);
            }
            double sum = 0;
            for (int e : sel) sum += s[size_t(e)];
            for (int j = 0; j < k; ++j) {
                REQUIRE(ids[size_t(i * k + j)] == sel[size_t(j)]);
                REQUIRE(wts[size_t(i * k + j)] == Approx(s[size_t(sel[size_t(j)])] / sum * cfg.route_scale).epsilon(1e-5));
            }
        }
    }
    // One routed expert, end to end, against float64 (weights and activations decoded independently).
    const auto &ew = m.weights().layers[2].experts[3];
    const int I = cfg.moe_inter_dim, D = cfg.dim;
    auto w_at = [](const core::Fp4Matrix &mm, int64_t r, int64_t c) {
        const uint8_t byte = mm.w[(r * mm.cols + c) / 2];
        return double(core::fp4_e2m1_to_f32((c % 2) ? byte >> 4 : byte & 15)) * core::e8m0_to_f32(mm.scale[r * (mm.cols / 32) + c / 32]);
    };
    std::vector<float> g(static_cast<size_t>(I)), u(static_cast<size_t>(I)), a(static_cast<size_t>(I)), out(static_cast<size_t>(D));
    be->linear_expert(x.data(), 1, ew.w1, g.data());
    be->linear_expert(x.data(), 1, ew.w3, u.data());
    const auto xa = act_quant_ref(x.data(), D);
    const double L = cfg.swiglu_limit, route_w = 0.7;
    for (int r = 0; r < I; ++r) {
        double gr = 0, ur = 0;
        for (int c = 0; c < D; ++c) {
            gr += xa[size_t(c)] * w_at(ew.w1.fp4, r, c);
            ur += xa[size_t(c)] * w_at(ew.w3.fp4, r, c);
        }
        require_bf16_close(g[size_t(r)], gr, 1e-6);
        require_bf16_close(u[size_t(r)], ur, 1e-6);
        const double gc = std::min(double(g[size_t(r)]), L), uc = std::clamp(double(u[size_t(r)]), -L, L);
        a[size_t(r)] = core::round_bf16(float(route_w * gc / (1 + std::exp(-gc)) * uc));
    }
    be->linear_expert(a.data(), 1, ew.w2, out.data());
    const auto aa = act_quant_ref(a.data(), I);
    for (int r = 0; r < D; ++r) {
        double o = 0;
        for (int c = 0; c < I; ++c) o += aa[size_t(c)] * w_at(ew.w2.fp4, r, c);
        require_bf16_close(out[size_t(r)], o, 1e-6);
    }
}

TEST_CASE("compressors (ratio 4 overlapping, ratio 128) and the indexer equal the float64 reference", "[ops]") {
    const model::Model &m = test::tiny_flash();
    const io::ModelConfig &cfg = m.config();
    std::map<std::string, std::vector<float>> seen;
    std::map<std::string, int64_t> cols;
    runtime::ContextOptions o;
    o.observer.get = [&](const std::string &name, int layer, dsv4_dtype, int64_t rows, int64_t c, const void *data) {
        const std::string key = "L" + std::to_string(layer) + "." + name;
        if (name == "index_topk") {
            const int32_t *p = static_cast<const int32_t *>(data);
            for (int64_t i = 0; i < rows * c; ++i) seen[key].push_back(float(p[i]));
        } else {
            const float *p = static_cast<const float *>(data);
            seen[key].insert(seen[key].end(), p, p + rows * c);
        }
        cols[key] = c;
    };
    runtime::Context ctx(m, o);
    std::vector<int32_t> tokens(260);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 37 + 11) % 2048);
    ctx.decode(tokens.data(), nullptr, nullptr, 0, nullptr, int32_t(tokens.size()));
    const int T = int(tokens.size()), D = cfg.dim;

    // YaRN frequencies of compressed layers, from the spec's formula, in float64.
    std::vector<double> theta(32);
    for (int i = 0; i < 32; ++i) {
        const double base = cfg.compress_rope_theta, t = std::pow(base, -2.0 * i / 64);
        const double low = std::max(0.0, std::floor(64 * std::log(65536.0 / (32 * 2 * M_PI)) / (2 * std::log(base))));
        const double high = std::min(63.0, std::ceil(64 * std::log(65536.0 / (1 * 2 * M_PI)) / (2 * std::log(base))));
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        theta[size_t(i)] = t / 16 * ramp + t * (1 - ramp);
    }
    for (int layer : {2, 3}) {
        const int ratio = cfg.layers[size_t(layer)].compress_ratio;
        const auto &lw = m.weights().layers[size_t(layer)];
        const std::vector<float> &x = seen["L" + std::to_string(layer) + ".attn_norm"];
        REQUIRE(x.size() == size_t(T * D));
        for (bool indexer : {false, true}) {
            if (indexer && ratio != 4) continue;
            const model::CompressorWeights &cw = indexer ? lw.index_compressor : lw.compressor;
            const int c = indexer ? cfg.index_head_dim : cfg.head_dim, kappa = ratio == 4 ? 2 : 1, width = kappa * c;
            const std::vector<float> &got = seen["L" + std::to_string(layer) + (indexer ? ".index_kv_comp" : ".kv_comp")];
            REQUIRE(got.size() == size_t(T / ratio * c));
            std::vector<double> a(static_cast<size_t>(T * width)), z(static_cast<size_t>(T * width));
            for (int t = 0; t < T; ++t)
                for (int r = 0; r < width; ++r) {
                    double av = 0, zv = 0;
                    for (int k = 0; k < D; ++k) {
                        av += double(x[size_t(t * D + k)]) * core::load_bf16(cw.wkv.w, size_t(r * D + k));
                        zv += double(x[size_t(t * D + k)]) * core::load_bf16(cw.wgate.w, size_t(r * D + k));
                    }
                    a[size_t(t * width + r)] = av;
                    z[size_t(t * width + r)] = zv + cw.ape[size_t((t % ratio) * width + r)];
                }
            for (int j = 0; j < T / ratio; ++j) {
                std::vector<double> pooled(static_cast<size_t>(c));
                for (int ch = 0; ch < c; ++ch) {
                    std::vector<std::pair<double, double>> slots;  // (score, value)
                    if (ratio == 4 && j > 0)
                        for (int t = (j - 1) * 4; t < j * 4; ++t) slots.push_back({z[size_t(t * width + ch)], a[size_t(t * width + ch)]});
                    const int off = ratio == 4 ? c : 0;
                    for (int t = j * ratio; t < (j + 1) * ratio; ++t)
                        slots.push_back({z[size_t(t * width + off + ch)], a[size_t(t * width + off + ch)]});
                    double mx = -INFINITY, s = 0, v = 0;
                    for (auto &p : slots) mx = std::max(mx, p.first);
                    for (auto &p : slots) s += std::exp(p.first - mx);
                    for (auto &p : slots) v += std::exp(p.first - mx) / s * p.second;
                    pooled[size_t(ch)] = core::round_bf16(float(v));
                }
                double ss = 0;
                for (double v : pooled) ss += v * v;
                const double r = 1 / std::sqrt(ss / c + 1e-6);
                std::vector<double> e(static_cast<size_t>(c));
                for (int ch = 0; ch < c; ++ch) e[size_t(ch)] = core::round_bf16(float(pooled[size_t(ch)] * r * cw.norm[size_t(ch)]));
                for (int i = 0; i < 32; ++i) {
                    const double ang = double(j * ratio) * theta[size_t(i)];
                    const double x0 = e[size_t(c - 64 + 2 * i)], x1 = e[size_t(c - 64 + 2 * i + 1)];
                    e[size_t(c - 64 + 2 * i)] = core::round_bf16(float(x0 * std::cos(ang) - x1 * std::sin(ang)));
                    e[size_t(c - 64 + 2 * i + 1)] = core::round_bf16(float(x0 * std::sin(ang) + x1 * std::cos(ang)));
                }
                // The final FP8/FP4 simulation turns one-ulp differences into one quantisation step: compare
                // against the pre-quantisation value with a step-sized tolerance (amax/q_max per block).
                if (indexer) {
                    std::vector<double> hd(static_cast<size_t>(c));
                    for (int i = 0; i < c; ++i) {
                        double acc = 0;
                        for (int k = 0; k < c; ++k) acc += ((__builtin_popcount(unsigned(i & k)) & 1) ? -1.0 : 1.0) * e[size_t(k)];
                        hd[size_t(i)] = acc / std::sqrt(double(c));
                    }
                    e = hd;
                }
                const int block = indexer ? 32 : 64, limit = indexer ? c : c - 64;
                const double qmax = indexer ? 6.0 : 448.0;
                for (int b0 = 0; b0 < c; b0 += block) {
                    double amax = 0;
                    for (int i = b0; i < b0 + block; ++i) amax = std::max(amax, std::fabs(e[size_t(i)]));
                    const double step = b0 < limit ? std::ldexp(1.0, int(std::ceil(std::log2(amax / qmax)))) * (indexer ? 1.0 : 32.0) : 0;
                    for (int i = b0; i < b0 + block; ++i) {
                        INFO("layer " << layer << (indexer ? " indexer" : " kv") << " entry " << j << " dim " << i);
                        REQUIRE(std::fabs(double(got[size_t(j * c + i)]) - e[size_t(i)]) <= step + 0.02 * std::fabs(e[size_t(i)]) + 1e-6);
                    }
                }
            }
        }
    }
    // Indexer selection: with the observed (already simulated) queries, weights and keys, the float64 score of
    // every selected entry is at least that of every unselected available entry (up to bf16 rounding).
    const auto &scores = seen["L2.index_scores"];
    const auto &topk = seen["L2.index_topk"];
    const int64_t n_entries = cols["L2.index_scores"], K = cols["L2.index_topk"];
    REQUIRE(K == std::min<int64_t>(cfg.index_topk, T / 4));
    for (int t = 0; t < T; ++t) {
        const int avail = (t + 1) / 4;
        std::vector<bool> chosen(size_t(n_entries), false);
        int n_chosen = 0;
        double min_chosen = INFINITY;
        for (int64_t k = 0; k < K; ++k) {
            const int id = int(topk[size_t(t * K + k)]);
            if (id < 0) continue;
            REQUIRE(id < avail);
            chosen[size_t(id)] = true;
            ++n_chosen;
            min_chosen = std::min(min_chosen, double(scores[size_t(t * n_entries + id)]));
        }
        REQUIRE(n_chosen == std::min(avail, cfg.index_topk));
        for (int j = 0; j < n_entries; ++j) {
            const double sc = scores[size_t(t * n_entries + j)];
            if (j >= avail) REQUIRE(std::isinf(sc));
            else if (!chosen[size_t(j)]) REQUIRE(sc <= min_chosen);
        }
    }
}

TEST_CASE("indexer scores and the grouped output projection equal the float64 reference", "[ops]") {
    const model::Model &m = test::tiny_flash();
    const io::ModelConfig &cfg = m.config();
    std::map<std::string, std::vector<float>> seen;
    std::map<std::string, int64_t> cols;
    runtime::ContextOptions o;
    o.observer.get = [&](const std::string &name, int layer, dsv4_dtype dtype, int64_t rows, int64_t c, const void *data) {
        if (dtype == DSV4_DTYPE_I32) return;
        const std::string key = "L" + std::to_string(layer) + "." + name;
        const float *p = static_cast<const float *>(data);
        seen[key].insert(seen[key].end(), p, p + rows * c);
        cols[key] = c;
    };
    runtime::Context ctx(m, o);
    std::vector<int32_t> tokens(140);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 101 + 7) % 2048);
    ctx.decode(tokens.data(), nullptr, nullptr, 0, nullptr, int32_t(tokens.size()));
    const int T = int(tokens.size()), nI = cfg.index_n_heads, dI = cfg.index_head_dim;

    // Indexer: I(t, j) = Σ_h ω_h · ReLU(q_h · k_j), from the observed (simulated) queries, weights and keys.
    const auto &q = seen["L2.index_q"], &w = seen["L2.index_weights"], &k = seen["L2.index_kv_comp"];
    const auto &scores = seen["L2.index_scores"];
    const int64_t n_entries = cols["L2.index_scores"];
    REQUIRE(n_entries == T / 4);
    for (int t = 0; t < T; ++t)
        for (int j = 0; j < (t + 1) / 4; ++j) {
            double ref = 0, mag = 0;
            for (int h = 0; h < nI; ++h) {
                double dot = 0;
                for (int c = 0; c < dI; ++c) dot += double(q[size_t((t * nI + h) * dI + c)]) * k[size_t(j * dI + c)];
                ref += w[size_t(t * nI + h)] * std::max(dot, 0.0);
                mag += std::fabs(w[size_t(t * nI + h)] * std::max(dot, 0.0));
            }
            // bf16 rounding of each product, each term and the sum: a few bf16 ulps of the magnitude
            REQUIRE(std::fabs(scores[size_t(t * n_entries + j)] - ref) <= 0.02 * mag + 1e-6);
        }

    // Grouped output projection: attn_out = wo_b(act_quant([wo_a[g] · o_g]_g)), float64 with bf16 roundings.
    for (int layer = 0; layer < cfg.n_layers; ++layer) {
        const auto &lw = m.weights().layers[size_t(layer)];
        const auto &heads = seen["L" + std::to_string(layer) + ".attn_heads"];
        const auto &out = seen["L" + std::to_string(layer) + ".attn_out"];
        const int H = cfg.n_heads, d = cfg.head_dim, G = cfg.o_groups, Ro = cfg.o_lora_rank, D = cfg.dim;
        const int64_t gin = int64_t(H / G) * d;
        for (int t : {0, 63, 139}) {
            std::vector<float> z(size_t(G * Ro));
            for (int g = 0; g < G; ++g)
                for (int r = 0; r < Ro; ++r) {
                    double acc = 0;
                    for (int64_t c = 0; c < gin; ++c)
                        acc += double(heads[size_t(t * H * d + g * gin + c)]) *
                               core::fp8_e4m3_to_f32(lw.wo_a.w[(g * Ro + r) * gin + c]) *
                               core::e8m0_to_f32(lw.wo_a.scale[((g * Ro + r) / 128) * lw.wo_a.scale_cols() + c / 128]);
                    z[size_t(g * Ro + r)] = core::round_bf16(float(acc));
                }
            const auto za = act_quant_ref(z.data(), G * Ro);
            for (int r = 0; r < D; ++r) {
                double acc = 0;
                for (int c = 0; c < G * Ro; ++c)
                    acc += za[size_t(c)] * core::fp8_e4m3_to_f32(lw.wo_b.w[r * G * Ro + c]) *
                           core::e8m0_to_f32(lw.wo_b.scale[(r / 128) * lw.wo_b.scale_cols() + c / 128]);
                // z may differ by one bf16 ulp (summation order), which can move one FP8 code of the activation
                REQUIRE(std::fabs(out[size_t(t * D + r)] - acc) <= 0.02 * std::fabs(acc) + 0.02);
            }
        }
    }
}
