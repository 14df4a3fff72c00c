#include "core/scratch.h"
#include "attention/attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "attention/hadamard.h"
#include "core/numeric.h"
#include "core/ops.h"

namespace dsv4::attention {
namespace {
using core::BlockFormat;
using core::round_bf16;

constexpr int kKvSimBlock = backend::kKvEntryScaleBlock;  // FP8 simulation block of KV nope dims (spec §4.3)
constexpr int kIndexSimBlock = 32;  // FP4 simulation block of indexer q/k (spec §6)

struct CompressorRefs {
    const model::CompressorWeights &w;
    kvcache::PositionRing<float> &rows;
    int out_dim;   // c
    bool overlap;  // ratio 4
    int ratio;
};

// Stores one token's (a, score + ape) row of a compressor, and emits entry j when its window completes
// (spec §5.3). Returns true and fills `entry` (bf16 values [c], after norm and RoPE) when emitted.
bool compressor_step(const CompressorRefs &c, const float *a, const float *z, int64_t pos, float norm_eps,
                     const Rope &rope, int rope_dim, float *entry) {
    const int m = c.ratio, width = (c.overlap ? 2 : 1) * c.out_dim;
    float *row = c.rows.write_row(pos);
    const float *ape = c.w.ape.data() + size_t(pos % m) * size_t(width);
    for (int i = 0; i < width; ++i) {
        row[i] = a[i];
        row[width + i] = z[i] + ape[i];
    }
    if ((pos + 1) % m) return false;

    const int64_t j = pos / m, first = pos + 1 - m;
    std::vector<float> pooled(static_cast<size_t>(c.out_dim));
    // Slots in the reference's order: the previous window's first half (overlap only), then this window.
    std::vector<std::pair<const float *, const float *>> slots;  // (values, scores) for one channel block
    if (c.overlap && j > 0)
        for (int64_t t = first - m; t < first; ++t) slots.emplace_back(c.rows.row(t), c.rows.row(t) + width);
    const int own = c.overlap ? c.out_dim : 0;
    for (int64_t t = first; t <= pos; ++t) slots.emplace_back(c.rows.row(t) + own, c.rows.row(t) + width + own);
    std::vector<float> e(slots.size());
    for (int ch = 0; ch < c.out_dim; ++ch) {
        float mx = -INFINITY;
        for (const auto &s : slots) mx = std::max(mx, s.second[ch]);
        float sum = 0.0f;
        for (size_t k = 0; k < slots.size(); ++k) sum += (e[k] = std::exp(slots[k].second[ch] - mx));
        float acc = 0.0f;
        for (size_t k = 0; k < slots.size(); ++k) acc += (e[k] / sum) * slots[k].first[ch];
        pooled[size_t(ch)] = round_bf16(acc);
    }
    core::rms_norm(pooled.data(), size_t(c.out_dim), c.w.norm.data(), norm_eps, entry);
    rope.apply(entry + (c.out_dim - rope_dim), int(j * m));
    return true;
}

}  // namespace

void encode_kv_entry(const kvcache::LayerGeometry &g, const float *v, uint8_t *entry) {
    const int nope = g.nope_dim();
    std::vector<int8_t> exps(static_cast<size_t>(nope / kKvSimBlock));
    core::quantize_blocks(BlockFormat::fp8_e4m3, v, size_t(nope), kKvSimBlock, entry, exps.data());
    for (size_t b = 0; b < exps.size(); ++b) entry[size_t(nope) + b] = core::e8m0_from_exponent(exps[b]);
    uint8_t *rope = entry + nope + exps.size();
    for (int i = 0; i < g.rope_dim; ++i) {
        uint16_t bits = core::f32_to_bf16(v[nope + i]);
        std::memcpy(rope + 2 * i, &bits, 2);
    }
}

// The layout Backend::index_scores decodes (backend::Fp4Keys).
void encode_index_entry(const kvcache::LayerGeometry &g, const float *v, uint8_t *entry) {
    static_assert(kIndexSimBlock == 32, "Fp4Keys holds one scale per 32 elements");
    const int d = g.index_head_dim;
    std::vector<uint8_t> codes(static_cast<size_t>(d));
    std::vector<int8_t> exps(static_cast<size_t>(d / kIndexSimBlock));
    core::quantize_blocks(BlockFormat::fp4_e2m1, v, size_t(d), kIndexSimBlock, codes.data(), exps.data());
    for (int i = 0; i < d / 2; ++i) entry[i] = uint8_t(codes[size_t(2 * i)] | (codes[size_t(2 * i + 1)] << 4));
    for (size_t b = 0; b < exps.size(); ++b) entry[size_t(d / 2) + b] = core::e8m0_from_exponent(exps[b]);
}

std::vector<int32_t> topk_desc(const float *scores, int64_t n, int64_t k) {
    std::vector<int32_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    k = std::min(k, n);
    // A strict total order (score, then index), so selecting the k first and then sorting them is exact; linear in n
    // where a partial sort is n·log k, and n is every compressed entry of the context.
    auto before = [&](int32_t a, int32_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); };
    std::nth_element(idx.begin(), idx.begin() + k, idx.end(), before);
    idx.resize(size_t(k));
    std::sort(idx.begin(), idx.end(), before);
    return idx;
}

void attention_forward(const LayerContext &ctx, const float *x, int64_t N, const std::vector<Span> &spans, float *y) {
    const io::ModelConfig &cfg = ctx.config;
    const model::LayerWeights &w = ctx.weights;
    backend::Backend &be = ctx.backend;
    const int H = cfg.n_heads, d = cfg.head_dim, r = cfg.rope_head_dim, nope = cfg.nope_head_dim();
    const int Rq = cfg.q_lora_rank, W = cfg.window_size, m = ctx.spec.compress_ratio;
    const int nI = cfg.index_n_heads, dI = cfg.index_head_dim;
    const float eps = cfg.norm_eps;
    const int layer = ctx.layer;

    // Query path (spec §4.2).
    core::FloatBuffer qa(static_cast<size_t>(N * Rq)), q_r(static_cast<size_t>(N * Rq)), q(size_t(N) * H * d);
    be.linear_fp8(x, N, w.wq_a, qa.data());
    for (int64_t i = 0; i < N; ++i) core::rms_norm(&qa[size_t(i * Rq)], size_t(Rq), w.q_norm.data(), eps, &q_r[size_t(i * Rq)]);
    be.linear_fp8(q_r.data(), N, w.wq_b, q.data());

    // KV path (spec §4.3).
    core::FloatBuffer kv_raw(static_cast<size_t>(N * d)), kv(static_cast<size_t>(N * d));
    be.linear_fp8(x, N, w.wkv, kv_raw.data());
    for (int64_t i = 0; i < N; ++i) core::rms_norm(&kv_raw[size_t(i * d)], size_t(d), w.kv_norm.data(), eps, &kv[size_t(i * d)]);

    // Compressor projections in fp32 (spec §5.2), indexer queries and head weights (spec §6).
    const int kappa = m == 4 ? 2 : 1;
    core::FloatBuffer comp_a, comp_z, idx_a, idx_z, qI, omega;
    if (m) {
        comp_a.resize(size_t(N) * kappa * d);
        comp_z.resize(comp_a.size());
        be.linear_f32(x, N, w.compressor.wkv, comp_a.data());
        be.linear_f32(x, N, w.compressor.wgate, comp_z.data());
    }
    if (m == 4) {
        idx_a.resize(size_t(N) * 2 * dI);
        idx_z.resize(idx_a.size());
        be.linear_f32(x, N, w.index_compressor.wkv, idx_a.data());
        be.linear_f32(x, N, w.index_compressor.wgate, idx_z.data());
        qI.resize(size_t(N) * nI * dI);
        be.linear_fp8(q_r.data(), N, w.index_wq_b, qI.data());
        omega.resize(size_t(N * nI));
        be.linear_bf16(x, N, w.index_weights_proj, omega.data());
        const float omega_scale = float(1.0 / std::sqrt(double(dI)) / std::sqrt(double(nI)));
        for (float &v : omega) v = round_bf16(v * omega_scale);
    }

    for (const Span &s : spans) {
        for (int64_t t = 0; t < s.n; ++t) {
            const int64_t i = s.row0 + t;
            const int pos = int(s.start_pos + t);
            for (int h = 0; h < H; ++h) {
                float *qh = &q[size_t((i * H + h) * d)];
                core::head_rms_scale_bf16(qh, size_t(d), eps);
                ctx.rope.apply(qh + nope, pos);
            }
            float *k = &kv[size_t(i * d)];
            ctx.rope.apply(k + nope, pos);
            core::simulate_blocks(BlockFormat::fp8_e4m3, k, size_t(nope), kKvSimBlock);
            if (m == 4)
                for (int h = 0; h < nI; ++h) {
                    float *qh = &qI[size_t((i * nI + h) * dI)];
                    ctx.rope.apply(qh + (dI - r), pos);
                    hadamard_bf16(qh, size_t(dI));
                    core::simulate_blocks(BlockFormat::fp4_e2m1, qh, size_t(dI), kIndexSimBlock);
                }
        }
    }
    model::observe(ctx.observer, "kv", layer, DSV4_DTYPE_BF16, N, d, kv.data());
    if (m == 4) {
        model::observe(ctx.observer, "index_q", layer, DSV4_DTYPE_BF16, N, int64_t(nI) * dI, qI.data());
        model::observe(ctx.observer, "index_weights", layer, DSV4_DTYPE_BF16, N, nI, omega.data());
    }

    core::FloatBuffer o(size_t(N) * H * d);
    for (const Span &s : spans) {
        kvcache::LayerCache &cache = *s.cache;
        const kvcache::LayerGeometry &g = cache.geo;
        // Compressors first: an entry completed by token p is visible to p itself (spec §5.3).
        std::vector<float> emitted, emitted_idx;
        std::vector<float> entry(static_cast<size_t>(d)), idx_entry(static_cast<size_t>(dI));
        for (int64_t t = 0; t < s.n && m; ++t) {
            const int64_t i = s.row0 + t, pos = s.start_pos + t;
            CompressorRefs comp{w.compressor, cache.comp_rows, d, m == 4, m};
            if (compressor_step(comp, &comp_a[size_t(i * kappa * d)], &comp_z[size_t(i * kappa * d)], pos, eps,
                                ctx.rope, r, entry.data())) {
                core::simulate_blocks(BlockFormat::fp8_e4m3, entry.data(), size_t(nope), kKvSimBlock);
                encode_kv_entry(g, entry.data(), cache.kv.append());
                emitted.insert(emitted.end(), entry.begin(), entry.end());
            }
            if (m != 4) continue;
            CompressorRefs icomp{w.index_compressor, cache.index_rows, dI, true, 4};
            if (compressor_step(icomp, &idx_a[size_t(i * 2 * dI)], &idx_z[size_t(i * 2 * dI)], pos, eps, ctx.rope, r,
                                idx_entry.data())) {
                hadamard_bf16(idx_entry.data(), size_t(dI));
                core::simulate_blocks(BlockFormat::fp4_e2m1, idx_entry.data(), size_t(dI), kIndexSimBlock);
                encode_index_entry(g, idx_entry.data(), cache.index_keys.append());
                emitted_idx.insert(emitted_idx.end(), idx_entry.begin(), idx_entry.end());
            }
        }
        if (m) model::observe(ctx.observer, "kv_comp", layer, DSV4_DTYPE_BF16, int64_t(emitted.size()) / d, d, emitted.data());
        if (m == 4)
            model::observe(ctx.observer, "index_kv_comp", layer, DSV4_DTYPE_BF16, int64_t(emitted_idx.size()) / dI, dI,
                           emitted_idx.data());

        // Compressed entries available by the end of the span; each query decodes only those it attends to (all of
        // them in HCA, the indexer's top-k in CSA), so a decode step does not grow with the whole cache.
        const int64_t n_entries = m ? int64_t(cache.kv.size()) : 0;
        std::vector<const uint8_t *> key_pages;
        for (const auto &page : cache.index_keys.pages()) key_pages.push_back(page->data());
        const backend::Fp4Keys index_keys{key_pages.data(), int64_t(kvcache::PagedEntries::kPageEntries),
                                          int64_t(cache.index_keys.entry_bytes())};
        const int64_t topk_width = m == 4 ? std::min<int64_t>(cfg.index_topk, n_entries) : 0;
        core::FloatBuffer span_scores(size_t(s.n * n_entries), -INFINITY);
        std::vector<int32_t> span_topk(size_t(s.n * topk_width), -1);

        std::vector<uint16_t> rows;  // bf16, the reference's KV dtype
        std::vector<uint8_t> valid;
        std::vector<const uint8_t *> entries;  // the compressed entries a query attends to
        for (int64_t t = 0; t < s.n; ++t) {
            const int64_t i = s.row0 + t, pos = s.start_pos + t;
            // Window part: always W slots, oldest → newest, -1 padding while pos < W-1 (spec §7). The attention
            // never reads an invalid slot, so rows are not cleared (and never shrink: no refill per query).
            if (rows.size() < size_t(W) * d) rows.resize(size_t(W) * d);
            valid.assign(size_t(W), 0);
            const int64_t w0 = std::max<int64_t>(0, pos - W + 1);
            for (int64_t p = w0; p <= pos; ++p) {
                uint16_t *dst = &rows[size_t((p - w0) * d)];
                if (p >= s.start_pos) {
                    const float *src = &kv[size_t((s.row0 + p - s.start_pos) * d)];
                    for (int c = 0; c < d; ++c) dst[c] = core::f32_to_bf16(src[c]);
                } else {
                    std::copy_n(cache.window.row(p), d, dst);
                }
                valid[size_t(p - w0)] = 1;
            }
            // Compressed part: entries whose window completed by pos.
            const int64_t n_avail = m ? (pos + 1) / m : 0;
            std::vector<int32_t> selected;
            if (m == 4) {
                float *score = span_scores.data() + t * n_entries;
                be.index_scores(&qI[size_t(i * nI * dI)], &omega[size_t(i * nI)], nI, dI, index_keys, n_avail, score);
                selected = topk_desc(score, n_avail, cfg.index_topk);
                std::copy(selected.begin(), selected.end(), span_topk.data() + t * topk_width);
            } else if (m) {
                selected.resize(size_t(n_avail));
                std::iota(selected.begin(), selected.end(), 0);
            }
            if (rows.size() < size_t(W + int64_t(selected.size())) * d) rows.resize(size_t(W + int64_t(selected.size())) * d);
            entries.resize(selected.size());
            for (size_t k = 0; k < selected.size(); ++k) entries[k] = cache.kv.entry(size_t(selected[k]));
            be.decode_kv_entries({entries.data(), int64_t(entries.size()), g.nope_dim(), g.rope_dim}, &rows[size_t(W) * d]);
            valid.resize(valid.size() + selected.size(), 1);
            backend::AttentionProblem p;
            p.q = &q[size_t(i * H * d)];
            p.kv = rows.data();
            p.valid = valid.data();
            p.n_rows = int64_t(valid.size());
            p.n_heads = H;
            p.head_dim = d;
            p.sink = w.attn_sink.data();
            p.scale = 1.0f / std::sqrt(float(d));
            p.out = &o[size_t(i * H * d)];
            be.attention(p);
            // Values carry their key's rotation: de-rotate at the query position (spec §4.6).
            for (int h = 0; h < H; ++h) ctx.rope.apply(&o[size_t((i * H + h) * d + nope)], int(pos), true);
        }
        if (m == 4) {
            model::observe(ctx.observer, "index_scores", layer, DSV4_DTYPE_BF16, s.n, n_entries, span_scores.data());
            model::observe(ctx.observer, "index_topk", layer, DSV4_DTYPE_I32, s.n, topk_width, span_topk.data());
        }
        // The span's KV joins the window ring after its own attention used it.
        for (int64_t t = std::max<int64_t>(0, s.n - cache.window.capacity()); t < s.n; ++t) {
            uint16_t *dst = cache.window.write_row(s.start_pos + t);
            for (int c = 0; c < d; ++c) dst[c] = core::f32_to_bf16(kv[size_t((s.row0 + t) * d + c)]);
        }
    }

    model::observe(ctx.observer, "attn_heads", layer, DSV4_DTYPE_BF16, N, int64_t(H) * d, o.data());
    // Grouped low-rank output projection (spec §4.6): group g of H/G heads (o's g-th slice) through rows g·R_o.. of
    // wo_a, z[i, g·R_o + r].
    core::FloatBuffer z(size_t(N) * size_t(w.wo_a.rows));
    be.linear_dequant_fp8(o.data(), N, w.wo_a, cfg.o_groups, z.data());
    be.linear_fp8(z.data(), N, w.wo_b, y);
}

}  // namespace dsv4::attention
