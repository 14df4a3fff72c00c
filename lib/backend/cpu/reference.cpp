// The CPU reference primitives: straightforward loops with the reference's precision at every step. Each
// output element is computed by one thread in a fixed order, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/primitives.h"
#include "backend/cpu/common.h"
#include "core/numeric.h"

namespace dsv4::backend::cpu {
namespace {
using namespace dsv4::core;

constexpr int64_t kActBlock = 128;

// Per-row FP8 activation quantisation in blocks of 128: codes decoded to fp32 plus one scale per block.
struct QuantizedRows {
    std::vector<float> values;  // decoded FP8 codes (unscaled) [n, k]
    std::vector<float> scales;  // [n, ceil(k/128)]
    int64_t k = 0, blocks = 0;
    QuantizedRows(const float *x, int64_t n, int64_t k_) : k(k_), blocks((k_ + kActBlock - 1) / kActBlock) {
        values.resize(size_t(n * k));
        scales.resize(size_t(n * blocks));
        std::vector<uint8_t> codes(static_cast<size_t>(k));
        std::vector<int8_t> exps(static_cast<size_t>(blocks));
        for (int64_t i = 0; i < n; ++i) {
            quantize_blocks(BlockFormat::fp8_e4m3, x + i * k, size_t(k), kActBlock, codes.data(), exps.data());
            for (int64_t j = 0; j < k; ++j) values[size_t(i * k + j)] = fp8_e4m3_to_f32(codes[size_t(j)]);
            for (int64_t b = 0; b < blocks; ++b) scales[size_t(i * blocks + b)] = exp2i(exps[size_t(b)]);
        }
    }
};

using Scratch = cpu::ThreadRows<float>;

// Row r of bf16 weights widened to fp32 (a load_row of ReferencePrimitives::weight_rows).
auto bf16_rows(const Bf16Matrix &w) {
    return [&w](int64_t r, float *wrow) {
        for (int64_t c = 0; c < w.cols; ++c) wrow[c] = load_bf16(w.w, size_t(r * w.cols + c));
    };
}

class ReferencePrimitives final : public Primitives {
public:
    explicit ReferencePrimitives(int n_threads) : n_threads_(n_threads) {}
    int threads() const override { return cpu::resolve_threads(n_threads_); }
    std::string name() const override { return "cpu-reference"; }

    void linear_fp8(const float *x, int64_t n, const Fp8Matrix &w, float *y) override {
        QuantizedRows a(x, n, w.cols);
        const int64_t sc = w.scale_cols();
        const int nt = threads();
        Scratch scratch(nt, w.cols);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < w.rows; ++r) {
            float *wrow = scratch.row();
            for (int64_t c = 0; c < w.cols; ++c) wrow[c] = fp8_e4m3_to_f32(w.w[r * w.cols + c]);
            for (int64_t i = 0; i < n; ++i) {
                const float *av = &a.values[size_t(i * w.cols)];
                float acc = 0.0f;
                for (int64_t b = 0; b < a.blocks; ++b) {
                    float partial = 0.0f;
                    for (int64_t c = b * kActBlock; c < std::min(w.cols, (b + 1) * kActBlock); ++c)
                        partial += av[c] * wrow[c];
                    acc += partial * a.scales[size_t(i * a.blocks + b)] * e8m0_to_f32(w.scale[(r / 128) * sc + b]);
                }
                y[i * w.rows + r] = round_bf16(acc);
            }
        }
    }

    void linear_expert(const float *x, int64_t n, const ExpertMatrix &w, float *y) override {
        if (w.format == ExpertFormat::fp8) return linear_fp8(x, n, w.fp8, y);
        const Fp4Matrix &m = w.fp4;
        QuantizedRows a(x, n, m.cols);
        const int64_t groups = m.cols / 32;
        const int nt = threads();
        Scratch scratch(nt, m.cols);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < m.rows; ++r) {
            float *wrow = scratch.row();
            const uint8_t *packed = m.w + r * (m.cols / 2);
            for (int64_t c = 0; c < m.cols; ++c) wrow[c] = fp4_e2m1_to_f32(fp4_unpack(packed, size_t(c)));
            for (int64_t i = 0; i < n; ++i) {
                const float *av = &a.values[size_t(i * m.cols)];
                float acc = 0.0f;
                for (int64_t g = 0; g < groups; ++g) {
                    float partial = 0.0f;
                    for (int64_t c = g * 32; c < (g + 1) * 32; ++c) partial += av[c] * wrow[c];
                    acc += partial * a.scales[size_t(i * a.blocks + g / 4)] * e8m0_to_f32(m.scale[r * groups + g]);
                }
                y[i * m.rows + r] = round_bf16(acc);
            }
        }
    }

    void linear_bf16(const float *x, int64_t n, const Bf16Matrix &w, float *y) override {
        weight_rows(x, n, w.cols, w.rows, 0, w.rows, y, true, bf16_rows(w));
    }
    void linear_f32(const float *x, int64_t n, const Bf16Matrix &w, float *y) override {
        weight_rows(x, n, w.cols, w.rows, 0, w.rows, y, false, bf16_rows(w));
    }
    // The dequantised row is the bf16 weight convert.py writes; then the bf16 linear's loop.
    void linear_dequant_fp8(const float *x, int64_t n, const Fp8Matrix &w, int groups, float *y) override {
        const int64_t R = w.rows / groups;
        std::vector<float> xg(static_cast<size_t>(n * w.cols));
        for (int g = 0; g < groups; ++g) {
            for (int64_t i = 0; i < n; ++i) std::copy_n(x + (i * groups + g) * w.cols, w.cols, &xg[size_t(i * w.cols)]);
            weight_rows(xg.data(), n, w.cols, w.rows, g * R, (g + 1) * R, y, true, [&](int64_t r, float *wrow) {
                for (int64_t c = 0; c < w.cols; ++c)
                    wrow[c] = fp8_e4m3_to_f32(w.w[r * w.cols + c]) * e8m0_to_f32(w.scale[(r / 128) * w.scale_cols() + c / 128]);
            });
        }
    }

    // One running sum per output, in order; four rows share each pass over x, so four independent chains of adds
    // run side by side instead of one (a single chain is bound by the add's latency).
    void linear_f32w(const float *x, int64_t n, const float *w, int64_t rows, int64_t cols, float *y) override {
        constexpr int64_t kRows = 4;
        const int64_t blocks = (rows + kRows - 1) / kRows;
#pragma omp parallel for num_threads(threads()) schedule(static)
        for (int64_t b = 0; b < blocks; ++b)
            for (int64_t i = 0; i < n; ++i) {
                const int64_t r0 = b * kRows;
                const float *xi = x + i * cols;
                if (r0 + kRows <= rows) {
                    float acc[kRows] = {};
                    for (int64_t c = 0; c < cols; ++c)
                        for (int64_t k = 0; k < kRows; ++k) acc[k] += xi[c] * w[(r0 + k) * cols + c];
                    for (int64_t k = 0; k < kRows; ++k) y[i * rows + r0 + k] = acc[k];
                } else {
                    for (int64_t r = r0; r < rows; ++r) {
                        float acc = 0.0f;
                        for (int64_t c = 0; c < cols; ++c) acc += xi[c] * w[r * cols + c];
                        y[i * rows + r] = acc;
                    }
                }
            }
    }

    void attention(const AttentionProblem &p) override {
        const int d = p.head_dim, nt = threads();
        Scratch acc_scratch(nt, d), score_scratch(nt, cpu::kAttentionChunk);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int h = 0; h < p.n_heads; ++h)
            cpu::attention_heads(
                p, h, 1, acc_scratch.row(), score_scratch.row(),
                [&p, d](int h0, int, const uint16_t *rows, const uint8_t *valid, int n, float *out) {
                    const float *q = p.q + int64_t(h0) * d;
                    for (int j = 0; j < n; ++j) {
                        if (!valid[j]) continue;
                        float dot = 0.0f;
                        for (int t = 0; t < d; ++t) dot += q[t] * bf16_to_f32(rows[int64_t(j) * d + t]);
                        out[j] = dot;
                    }
                },
                [d](float *acc, float alpha) {
                    for (int t = 0; t < d; ++t) acc[t] *= alpha;
                },
                [d](float *acc, int, const float *probs, const uint16_t *rows, const uint8_t *valid, int n) {
                    for (int j = 0; j < n; ++j)
                        if (valid[j])
                            for (int t = 0; t < d; ++t) acc[t] += probs[j] * bf16_to_f32(rows[int64_t(j) * d + t]);
                });
    }

    void decode_kv_entries(const Fp8Entries &e, uint16_t *rows) override {
        const int d = e.nope_dim + e.rope_dim;
#pragma omp parallel for num_threads(threads()) schedule(static)
        for (int64_t j = 0; j < e.count; ++j) {
            const uint8_t *entry = e.entries[j];
            uint16_t *row = rows + j * d;
            float block[kKvEntryScaleBlock];
            for (int b = 0; b < e.nope_dim / kKvEntryScaleBlock; ++b) {
                decode_fp8_scaled(entry + b * kKvEntryScaleBlock, size_t(kKvEntryScaleBlock),
                                  e8m0_to_f32(entry[e.nope_dim + b]), block);
                for (int i = 0; i < kKvEntryScaleBlock; ++i) row[b * kKvEntryScaleBlock + i] = f32_to_bf16(block[i]);
            }
            std::memcpy(row + e.nope_dim, entry + e.nope_dim + e.nope_dim / kKvEntryScaleBlock, size_t(e.rope_dim) * 2);
        }
    }

    void index_scores(const float *q, const float *w, int n_heads, int dim, const Fp4Keys &keys, int64_t n,
                      float *scores) override {
        const int nt = threads();
        Scratch key_scratch(nt, dim);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t j = 0; j < n; ++j) {
            float *kj = key_scratch.row();
            const uint8_t *entry = keys.entry(j);
            decode_fp4_blocks32(entry, entry + dim / 2, size_t(dim), kj);
            float total = 0.0f;
            for (int h = 0; h < n_heads; ++h) {
                float dot = 0.0f;
                for (int c = 0; c < dim; ++c) dot += q[h * dim + c] * kj[c];
                total += round_bf16(std::max(round_bf16(dot), 0.0f) * w[h]);
            }
            scores[j] = round_bf16(total);
        }
    }

private:

    // Rows [r0, r1) of a weight matrix [rows, cols] decoded to fp32 by load_row(r, wrow), times x [n, cols]: one
    // running sum per output, in order; y[i · rows + r].
    template <typename LoadRow>
    void weight_rows(const float *x, int64_t n, int64_t cols, int64_t rows, int64_t r0, int64_t r1, float *y,
                     bool round_out, LoadRow &&load_row) {
        const int nt = threads();
        Scratch scratch(nt, cols);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = r0; r < r1; ++r) {
            float *wrow = scratch.row();
            load_row(r, wrow);
            for (int64_t i = 0; i < n; ++i) {
                float acc = 0.0f;
                for (int64_t c = 0; c < cols; ++c) acc += x[i * cols + c] * wrow[c];
                y[i * rows + r] = round_out ? round_bf16(acc) : acc;
            }
        }
    }

    int n_threads_;
};

}  // namespace

std::unique_ptr<Primitives> make_reference_primitives(int n_threads) {
    return std::make_unique<ReferencePrimitives>(n_threads);
}

}  // namespace dsv4::backend::cpu
