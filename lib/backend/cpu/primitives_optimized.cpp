// The optimised CPU primitives: the linears (FP8, FP4 routed experts, bf16 weights), the attention and the indexer
// scores run the AVX512-BF16 kernels when the CPU and OS allow them (capped by DSV4_MAX_CPU_ISA), the packed
// linears AMX tiles where those exist; the mHC mixes' single tokens, every lower ISA and every shape the kernels do
// not cover are the reference primitives'.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "backend/cpu/primitives.h"
#include "backend/cpu/common.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/packed.h"
#include "core/numeric.h"

namespace dsv4::backend::cpu {
namespace {
using namespace dsv4::core;

constexpr int64_t kRowTile = 16;  // rows per scheduling unit: several rows of a 128-row FP8 scale block
constexpr int64_t kPackedRowTile = 128;  // rows per scheduling unit of the packed kernels: a 128-row FP8 scale block

class OptimizedPrimitives final : public Primitives {
public:
    OptimizedPrimitives(int n_threads, cpu::Isa isa)
        : reference_(make_reference_primitives(n_threads)), isa_(isa), n_threads_(n_threads) {}
    int threads() const override { return cpu::resolve_threads(n_threads_); }
    std::string name() const override { return std::string("cpu-") + cpu::isa_name(isa_); }

    void linear_fp8(const float *x, int64_t n, const Fp8Matrix &w, float *y) override {
        if (!has_kernels()) return reference_->linear_fp8(x, n, w, y);
        if (w.packed) {
            const uint16_t *act = quantized(x, n, w.cols, cpu::ActLayout::natural);
            size_packed_scratch();
            return for_row_tiles(w.rows, [&](int64_t r0, int64_t r1) { packed_fp8(w, act, n, r0, r1, y); },
                                 kPackedRowTile);
        }
        const uint16_t *act = quantized(x, n, w.cols, cpu::fp8_layout(w.cols));
        if (n >= cpu::kFp8GemmMinColumns && w.cols % 128 == 0)
            return for_panels(0, 1, w.rows, w.cols, [&](int64_t, int64_t r0, int64_t r1, uint16_t *panel) {
                if (!cpu::fp8_gemm_avx512bf16(w, act, n, r0, r1, y, panel)) cpu::fp8_rows_avx512bf16(w, act, n, r0, r1, y);
            });
        for_row_tiles(w.rows, [&](int64_t r0, int64_t r1) { cpu::fp8_rows_avx512bf16(w, act, n, r0, r1, y); });
    }

    void linear_expert(const float *x, int64_t n, const ExpertMatrix &w, float *y) override {
        if (w.format == ExpertFormat::fp8) return linear_fp8(x, n, w.fp8, y);
        const Fp4Matrix &m = w.fp4;
        if (has_kernels() && m.packed) {
            const uint16_t *act = quantized(x, n, m.cols, cpu::ActLayout::natural);
            size_packed_scratch();
            return for_row_tiles(m.rows, [&](int64_t r0, int64_t r1) { packed_fp4(m, act, n, r0, r1, y); },
                                 kPackedRowTile);
        }
        if (!has_kernels() || m.cols % 128)  // the kernels' layout needs blocks of 4 groups
            return reference_->linear_expert(x, n, w, y);
        const uint16_t *act = quantized(x, n, m.cols, cpu::ActLayout::fp4_lanes);
        for_row_tiles(m.rows, [&](int64_t r0, int64_t r1) { cpu::fp4_rows_avx512bf16(m, act, n, r0, r1, y); });
    }

    // The jobs with packed weights run in one parallel region over all their row tiles, each distinct input
    // quantised once (w1 and w3 share theirs); the others go one by one. Every y is what linear_expert gives.
    void linear_experts(const ExpertLinear *jobs, size_t count) override {
        if (!has_kernels()) return Primitives::linear_experts(jobs, count);
        struct Input {
            const float *x;
            int64_t n, cols;
            size_t at;  // its quantised rows in act_
        };
        std::vector<Input> inputs;
        std::vector<std::pair<const ExpertLinear *, size_t>> packed;  // job, its input's offset
        size_t act_size = 0;
        for (size_t j = 0; j < count; ++j) {
            const ExpertLinear &job = jobs[j];
            const bool fp4 = job.w->format == ExpertFormat::fp4;
            if (!(fp4 ? job.w->fp4.packed : job.w->fp8.packed)) {
                linear_expert(job.x, job.n, *job.w, job.y);
                continue;
            }
            const int64_t cols = fp4 ? job.w->fp4.cols : job.w->fp8.cols;
            auto in = std::find_if(inputs.begin(), inputs.end(),
                                   [&](const Input &i) { return i.x == job.x && i.n == job.n && i.cols == cols; });
            if (in == inputs.end()) {
                in = inputs.insert(inputs.end(), {job.x, job.n, cols, act_size});
                act_size += size_t(job.n * cols);
            }
            packed.emplace_back(&job, in->at);
        }
        act_.resize(act_size);
        for (const Input &in : inputs) quantize_into(in.x, in.n, in.cols, cpu::ActLayout::natural, act_.data() + in.at);
        struct Tile {
            size_t job;
            int64_t r0, r1;
        };
        std::vector<Tile> tiles;
        for (size_t i = 0; i < packed.size(); ++i) {
            const core::ExpertMatrix &w = *packed[i].first->w;
            const int64_t rows = w.format == ExpertFormat::fp4 ? w.fp4.rows : w.fp8.rows;
            for (int64_t r0 = 0; r0 < rows; r0 += kPackedRowTile) tiles.push_back({i, r0, std::min(rows, r0 + kPackedRowTile)});
        }
        const auto run = [&](const Tile &t) {
            const ExpertLinear &job = *packed[t.job].first;
            const uint16_t *act = act_.data() + packed[t.job].second;
            if (job.w->format == ExpertFormat::fp4) packed_fp4(job.w->fp4, act, job.n, t.r0, t.r1, job.y);
            else packed_fp8(job.w->fp8, act, job.n, t.r0, t.r1, job.y);
        };
        const int64_t n_tiles = int64_t(tiles.size());
        size_packed_scratch();
        // Tiles of unequal cost (FP4 and FP8 rows, a job's token count), handed out in turn.
#pragma omp parallel for num_threads(threads()) schedule(dynamic)
        for (int64_t t = 0; t < n_tiles; ++t) run(tiles[size_t(t)]);
    }

    // The FP8 kernels with bf16 activations as they are (no act_quant): the packed tiles, else the checkpoint-layout
    // tiles or panels, over each group's activations. Few tokens (decode): every group's row tiles in one parallel
    // region; many (prefill): a group at a time, so that its activations stay in cache while its rows pass.
    void linear_dequant_fp8(const float *x, int64_t n, const Fp8Matrix &w, int groups, float *y) override {
        const int64_t R = w.rows / groups, k = w.cols;
        if (!has_kernels() || k % 128 || R % 4)  // the tiles' 4-row blocks must not straddle scale blocks
            return reference_->linear_dequant_fp8(x, n, w, groups, y);
        const bool packed = w.packed && R % 16 == 0;
        const cpu::ActLayout layout = packed ? cpu::ActLayout::natural : cpu::fp8_layout(k);
        constexpr int64_t kOneRegionBytes = int64_t(1) << 20;
        const int64_t per_region = groups * n * k * 2 <= kOneRegionBytes ? groups : 1;
        for (int64_t g0 = 0; g0 < groups; g0 += per_region) {
            const int64_t g1 = std::min<int64_t>(groups, g0 + per_region);
            act_.resize(size_t((g1 - g0) * n * k));  // [group][token][k]: a group's activations as the kernels take them
            for (int64_t g = g0; g < g1; ++g)
                for (int64_t i = 0; i < n; ++i)  // x is bf16-valued: exact
                    for (int64_t c = 0; c < k; ++c)
                        act_[size_t(((g - g0) * n + i) * k + cpu::act_index(layout, c))] = f32_to_bf16(x[(i * groups + g) * k + c]);
            const auto act = [&](int64_t g) { return act_.data() + (g - g0) * n * k; };
            if (packed) {
                size_packed_scratch();
                for_group_tiles(g0, g1, R, kPackedRowTile, [&](int64_t g, int64_t a, int64_t b) { packed_fp8(w, act(g), n, a, b, y); });
            } else if (n >= cpu::kFp8GemmMinColumns) {
                for_panels(g0, g1, R, k, [&](int64_t g, int64_t a, int64_t b, uint16_t *panel) {
                    if (!cpu::fp8_gemm_avx512bf16(w, act(g), n, a, b, y, panel)) cpu::fp8_rows_avx512bf16(w, act(g), n, a, b, y);
                });
            } else {
                for_group_tiles(g0, g1, R, kRowTile, [&](int64_t g, int64_t a, int64_t b) { cpu::fp8_rows_avx512bf16(w, act(g), n, a, b, y); });
            }
        }
    }

    void linear_bf16(const float *x, int64_t n, const Bf16Matrix &w, float *y) override {
        if (!has_kernels() || w.cols % 32) return reference_->linear_bf16(x, n, w, y);
        bf16_times(x, n, w, y, true);  // x is bf16-valued
    }
    // fp32 sums of bf16 weights times x. A column whose values are all bf16 (every call the model makes: they are
    // norm outputs) takes the bf16 kernels: its products are exact either way, and vdpbf16ps needs no widening of
    // the weights (the FMA tiles reached 60-75% of the bandwidth on the LM head and compressors). Other columns
    // take the FMA tiles. A column's path depends on its own values only, so batch size never changes a result.
    void linear_f32(const float *x, int64_t n, const Bf16Matrix &w, float *y) override {
        if (!has_kernels() || w.cols % 16) return reference_->linear_f32(x, n, w, y);
        std::vector<int64_t> exact, other;
        for (int64_t i = 0; i < n; ++i) {
            const float *xi = x + i * w.cols;
            const bool bf16 = w.cols % 32 == 0 && std::all_of(xi, xi + w.cols, [](float v) { return round_bf16(v) == v; });
            (bf16 ? exact : other).push_back(i);
        }
        const auto fma_tiles = [&](const float *xs, int64_t m, float *ys) {
            for_row_tiles(w.rows, [&](int64_t r0, int64_t r1) { cpu::f32_rows_avx512bf16(w, xs, m, r0, r1, ys); });
        };
        if (other.empty()) return bf16_times(x, n, w, y, false);
        if (exact.empty()) return fma_tiles(x, n, y);
        for (const std::vector<int64_t> *cols : {&exact, &other}) {  // each set gathered, computed, scattered
            const int64_t m = int64_t(cols->size());
            std::vector<float> xs(size_t(m * w.cols)), ys(size_t(m * w.rows));
            for (int64_t j = 0; j < m; ++j) std::copy_n(x + (*cols)[size_t(j)] * w.cols, w.cols, &xs[size_t(j * w.cols)]);
            if (cols == &exact) bf16_times(xs.data(), m, w, ys.data(), false);
            else fma_tiles(xs.data(), m, ys.data());
            for (int64_t j = 0; j < m; ++j) std::copy_n(&ys[size_t(j * w.rows)], w.rows, y + (*cols)[size_t(j)] * w.rows);
        }
    }
    // The reference's order (one running sum per output): the mHC mixes feed Sinkhorn and the router, and a
    // dot-product order moved layer 1's gate scores of the tiny-flash fixture to 15x their golden tolerance.
    // From 16 columns the same sums run 16 columns to a vector (x transposed first); leftover columns (single
    // tokens: decode) 16 rows to a vector, the weights transposed in registers.
    void linear_f32w(const float *x, int64_t n, const float *w, int64_t rows, int64_t cols, float *y) override {
        const int64_t vec = has_kernels() ? n / 16 * 16 : 0;
        if (vec > 0) {
            const int64_t blocks = (vec + cpu::kF32wBlock - 1) / cpu::kF32wBlock;
            xt_.size(threads(), cpu::kF32wBlock * cols);
#pragma omp parallel for num_threads(threads()) schedule(static)
            for (int64_t b = 0; b < blocks; ++b) {
                float *xt = xt_.row();
                const int64_t i0 = b * cpu::kF32wBlock, nb = std::min(cpu::kF32wBlock, vec - i0);
                cpu::f32w_block_avx512(x + i0 * cols, nb, w, rows, cols, y + i0 * rows, xt);
            }
        }
        if (vec == n) return;
        if (!has_kernels()) return reference_->linear_f32w(x + vec * cols, n - vec, w, rows, cols, y + vec * rows);
        // rows in even blocks of at most 16, at least one per thread: the weights are read once per token, so
        // their bytes, not the blocks, must be shared evenly (24 rows: 12 and 12, not 16 and 8)
        const int64_t row_blocks = std::min(rows, std::max<int64_t>((rows + 15) / 16, threads()));
        const int64_t block = (rows + row_blocks - 1) / row_blocks, tasks = (n - vec) * row_blocks;
#pragma omp parallel for num_threads(threads()) schedule(static)
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t i = vec + t / row_blocks, r0 = t % row_blocks * block;
            if (r0 < rows) cpu::f32w_token_avx512(x + i * cols, w, r0, std::min(rows, r0 + block), cols, y + i * rows);
        }
    }

    // The reference's attention (cpu::attention_heads) with the inner loops over head_dim vectorised and heads
    // in blocks that share each row they load (each head re-reading every row cost more than the arithmetic at
    // long contexts); only the q·k summation order differs from the reference (q is bf16: exact products).
    void attention(const AttentionProblem &p) override {
        if (!has_kernels() || p.head_dim % 32) return reference_->attention(p);
        const int d = p.head_dim, nt = threads();
        const uint16_t *q = as_bf16(p.q, size_t(p.n_heads) * size_t(d));
        const int block = std::clamp(p.n_heads / nt, 1, cpu::kMaxHeadBlock), n_blocks = (p.n_heads + block - 1) / block;
        scratch_.size(nt, int64_t(block) * (d + cpu::kAttentionChunk));
#pragma omp parallel for num_threads(nt) schedule(dynamic)
        for (int b = 0; b < n_blocks; ++b) {
            float *acc = scratch_.row();
            const int h0 = b * block, nh = std::min(block, p.n_heads - h0);
            cpu::attention_heads(
                p, h0, nh, acc, acc + size_t(block) * size_t(d),
                [q, d](int first, int n, const uint16_t *rows, const uint8_t *valid, int count, float *out) {
                    cpu::qk_heads_bf16_avx512(q + int64_t(first) * d, n, rows, valid, count, d, out);
                },
                [d](float *a, float alpha) { cpu::scale_f32_avx512(a, alpha, d); },
                [d](float *a, int n, const float *probs, const uint16_t *rows, const uint8_t *valid, int count) {
                    cpu::pv_heads_avx512(a, n, probs, rows, valid, count, d);
                });
        }
    }

    void decode_kv_entries(const Fp8Entries &e, uint16_t *rows) override {
        if (!has_kernels() || e.nope_dim % kKvEntryScaleBlock || e.rope_dim % 16) return reference_->decode_kv_entries(e, rows);
        constexpr int64_t kEntriesPerTile = 64;  // 64 KiB of rows: a tile is worth a thread's wake-up
        const int64_t tiles = (e.count + kEntriesPerTile - 1) / kEntriesPerTile;
#pragma omp parallel for num_threads(threads()) schedule(dynamic) if (tiles > 1)
        for (int64_t t = 0; t < tiles; ++t)
            cpu::decode_kv_entries_avx512(e, t * kEntriesPerTile, std::min(e.count, (t + 1) * kEntriesPerTile), rows);
    }

    void index_scores(const float *q, const float *w, int n_heads, int dim, const Fp4Keys &keys, int64_t n,
                      float *scores) override {
        if (!has_kernels() || n_heads > 64 || dim % 32 || dim > cpu::kIndexMaxDim)
            return reference_->index_scores(q, w, n_heads, dim, keys, n, scores);
        // Heads padded to a multiple of 16 with zero queries and weights: a padded head adds bf16(relu(0)·0) = 0.
        // The fp32 path decodes each block of 32 key elements as its 16 even then its 16 odd elements; q's rows
        // follow that order, so only the fp32 summation order of the dots changes.
        const int padded = (n_heads + 15) / 16 * 16;
        qt_.assign(size_t(padded) * size_t(dim) + size_t(padded), 0.0f);
        for (int h = 0; h < n_heads; ++h)
            for (int p = 0; p < dim; ++p) {
                const int t = p % 32, c = p - t + (t < 16 ? 2 * t : 2 * (t - 16) + 1);
                qt_[size_t(p) * size_t(padded) + size_t(h)] = q[h * dim + c];
            }
        float *wp = qt_.data() + size_t(padded) * size_t(dim);
        std::copy_n(w, n_heads, wp);
        cpu::IndexQuery query{nullptr, nullptr, nullptr, 0, -1, qt_.data(), wp};
        if (int8_index_query(q, n_heads, dim, padded, query.key_code_lo, query.key_code_hi)) {
            query.int8 = q8_.data();
            query.int8_offset = q8_offset_.data();
            query.int8_scale = q8_scale_.data();
        }
        constexpr int64_t kKeysPerTile = 64;  // a 1K-token context's 256 keys still split over the threads
        const int64_t tiles = (n + kKeysPerTile - 1) / kKeysPerTile;
#pragma omp parallel for num_threads(threads()) schedule(dynamic)
        for (int64_t t = 0; t < tiles; ++t)
            cpu::index_scores_avx512(query, padded, dim, keys, t * kKeysPerTile, std::min(n, (t + 1) * kKeysPerTile), scores);
    }

private:
    // The indexer query as the integer path takes it (cpu::IndexQuery) in q8_, q8_offset_, q8_scale_, with the
    // key scale codes that keep its terms exact; false if some block of q is not an FP4 value set (integers
    // |q8| <= 12 times one power of two), as only a query that skipped the FP4 simulation would be.
    bool int8_index_query(const float *q, int n_heads, int dim, int padded, int &key_code_lo, int &key_code_hi) {
        const int blocks = dim / 32;
        q8_.assign(size_t(dim / 4) * size_t(padded), 0u);
        q8_offset_.assign(size_t(blocks) * size_t(padded), 0);
        q8_scale_.assign(size_t(blocks) * size_t(padded), 1.0f);
        std::vector<int8_t> q8(static_cast<size_t>(dim));
        int exp_lo = 0, exp_hi = 0;  // of the scales 2^(e-1)
        for (int h = 0; h < n_heads; ++h) {
            for (int b = 0; b < blocks; ++b) {
                const float *qb = q + h * dim + 32 * b;
                float amax = 0.0f;
                for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(qb[i]));
                int e = 0;  // the least with amax <= 6 · 2^e (amax >= 2^(exponent), so from exponent - 3 up)
                if (amax > 0.0f)
                    for (e = std::ilogb(amax) - 3; amax > 6.0f * exp2i(e);) ++e;
                if (e < -100 || e > 100) return false;
                const float up = exp2i(1 - e);
                int32_t sum = 0;
                for (int i = 0; i < 32; ++i) {
                    const float v = qb[i] * up;  // exact: a power of two within range
                    if (!(std::fabs(v) <= 12.0f) || v != float(int(v))) return false;  // NaN and inf fail too
                    q8[size_t(32 * b + i)] = int8_t(v);
                    sum += int(v);
                }
                q8_offset_[size_t(b) * size_t(padded) + size_t(h)] = 12 * sum;
                q8_scale_[size_t(b) * size_t(padded) + size_t(h)] = exp2i(e - 1);
                exp_lo = std::min(exp_lo, e - 1);
                exp_hi = std::max(exp_hi, e - 1);
            }
            auto *bytes = reinterpret_cast<uint8_t *>(q8_.data());
            for (int p = 0; p < dim; ++p)
                bytes[(size_t(p / 4) * size_t(padded) + size_t(h)) * 4 + size_t(p % 4)] =
                    uint8_t(q8[size_t(cpu::index_int8_position_dim(p))]);
        }
        // key scale 2^(code-128) normal (codes 2 .. 254), and every term's factor 2^(e-1+code-128) within
        // [2^-126, 2^111], so that the integer block sums (below 2^16) times it stay normal floats: exact
        key_code_lo = std::max(2, 2 - exp_lo);
        key_code_hi = std::min(254, 239 - exp_hi);
        return key_code_lo <= key_code_hi;
    }

    // Below AVX512-BF16 (generic, plain AVX-512) the reference's loops are the kernels.
    bool has_kernels() const { return isa_ >= cpu::Isa::avx512_bf16; }
    // The packed linears: on AMX tiles where the CPU has them (for every number of tokens: the tiles' summation
    // order differs from the AVX-512 kernels'), else AVX512-BF16. Called inside parallel regions, after
    // size_packed_scratch().
    void size_packed_scratch() {
        if (isa_ >= cpu::Isa::amx) panels_.size(threads(), cpu::kAmxPanelElements + 32);  // + room to align
    }
    uint16_t *amx_panel() {  // the thread's panel on a 64-byte boundary (whole cache lines per B tile row)
        const uintptr_t p = reinterpret_cast<uintptr_t>(panels_.row());
        return reinterpret_cast<uint16_t *>((p + 63) & ~uintptr_t(63));
    }
    void packed_fp4(const Fp4Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y) {
        if (isa_ >= cpu::Isa::amx) cpu::fp4_packed_rows_amx(w, act, n, r0, r1, y, amx_panel());
        else cpu::fp4_packed_rows(w, act, n, r0, r1, y);
    }
    void packed_fp8(const Fp8Matrix &w, const uint16_t *act, int64_t n, int64_t r0, int64_t r1, float *y) {
        if (isa_ >= cpu::Isa::amx) cpu::fp8_packed_rows_amx(w, act, n, r0, r1, y, amx_panel());
        else cpu::fp8_packed_rows(w, act, n, r0, r1, y);
    }

    // Splits the row ranges [g·R, (g+1)·R) of groups g0 <= g < g1 into tiles from their starts, and all the tiles
    // over the threads: f(g, a, b) for rows [a, b) of group g; f must not throw (it runs inside an OpenMP region).
    // Tiles are handed out in turn, here as in the attention, the KV decode and the indexer: with equal shares the
    // main thread spent 10.5% of a decode step waiting at the regions' ends for the later-woken worker, in turn
    // 4.5% (perf, per thread; a tile writes its own rows, so the results do not depend on who computes it).
    template <typename F>
    void for_group_tiles(int64_t g0, int64_t g1, int64_t R, int64_t tile, F &&f) {
        const int64_t per_group = (R + tile - 1) / tile;
#pragma omp parallel for num_threads(threads()) schedule(dynamic)
        for (int64_t t = 0; t < (g1 - g0) * per_group; ++t) {
            const int64_t g = g0 + t / per_group, a = g * R + t % per_group * tile;
            f(g, a, std::min((g + 1) * R, a + tile));
        }
    }
    template <typename F>
    void for_row_tiles(int64_t rows, F &&f, int64_t tile = kRowTile) {
        for_group_tiles(0, 1, rows, tile, [&](int64_t, int64_t a, int64_t b) { f(a, b); });
    }
    // for_group_tiles over the GEMM path's panels, each thread with its own buffer for a panel's decoded rows.
    template <typename F>
    void for_panels(int64_t g0, int64_t g1, int64_t R, int64_t cols, F &&f) {
        const int64_t panel_rows = cpu::gemm_panel_rows(cols);
        panels_.size(threads(), panel_rows * cols);
        for_group_tiles(g0, g1, R, panel_rows, [&](int64_t g, int64_t a, int64_t b) { f(g, a, b, panels_.row()); });
    }
    // count bf16-valued floats as bf16 bits in act_ (exact).
    const uint16_t *as_bf16(const float *x, size_t count) {
        act_.resize(count);
        for (size_t i = 0; i < count; ++i) act_[i] = f32_to_bf16(x[i]);
        return act_.data();
    }
    // y = x · wᵀ for bf16-valued x with the bf16 kernels (tiles, or panels for many columns), rounded or not.
    void bf16_times(const float *x, int64_t n, const Bf16Matrix &w, float *y, bool round_out) {
        const uint16_t *act = as_bf16(x, size_t(n * w.cols));
        if (n >= cpu::kBf16GemmMinColumns)
            return for_row_tiles(
                w.rows, [&](int64_t r0, int64_t r1) { cpu::bf16_gemm_avx512bf16(w, act, n, r0, r1, y, round_out); },
                cpu::gemm_panel_rows(w.cols));
        for_row_tiles(w.rows, [&](int64_t r0, int64_t r1) { cpu::bf16_rows_avx512bf16(w, act, n, r0, r1, y, round_out); });
    }
    // x [n, k] quantised to FP8 as the reference's act_quant, as bf16 bits in act_ (rows split over the threads).
    const uint16_t *quantized(const float *x, int64_t n, int64_t k, cpu::ActLayout layout) {
        act_.resize(size_t(n * k));
        quantize_into(x, n, k, layout, act_.data());
        return act_.data();
    }
    void quantize_into(const float *x, int64_t n, int64_t k, cpu::ActLayout layout, uint16_t *act) {
#pragma omp parallel for num_threads(threads()) schedule(static) if (n > 1)
        for (int64_t i = 0; i < n; ++i) {
            if (k % 128) cpu::quantize_activations(x + i * k, 1, k, layout, act + i * k);  // a partial last block
            else cpu::quantize_activations_avx512(x + i * k, 1, k, layout, act + i * k);
        }
    }

    std::unique_ptr<Primitives> reference_;
    cpu::Isa isa_;
    int n_threads_;
    std::vector<uint16_t> act_;  // the current call's bf16 operand: dequantised activations, the attention's q
    cpu::ThreadRows<uint16_t> panels_;  // per-thread decoded weight rows of the GEMM path
    cpu::ThreadRows<float> scratch_;     // per-thread attention rows: accumulators [block, head_dim] + scores
    std::vector<float> qt_;      // the indexer query transposed, [dim, heads padded to 16], then the weights
    std::vector<uint32_t> q8_;        // the indexer query's integer form (cpu::IndexQuery)
    std::vector<int32_t> q8_offset_;
    std::vector<float> q8_scale_;
    cpu::ThreadRows<float> xt_;  // per-thread linear_f32w input blocks transposed, [cols, kF32wBlock]
};

}  // namespace

std::unique_ptr<Primitives> make_primitives(int n_threads, Isa isa) {
    return std::make_unique<OptimizedPrimitives>(n_threads, isa);
}

std::unique_ptr<Primitives> make_primitives(int n_threads) { return make_primitives(n_threads, selected_isa()); }

}  // namespace dsv4::backend::cpu
