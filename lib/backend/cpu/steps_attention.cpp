// The CPU steps of the attention sub-layer (spec §4-§7): query and KV paths, both compressors with their carried
// state, the lightning indexer, sparse attention with sink over window + compressed entries, and the grouped
// output projection.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "backend/cpu/backend.h"
#include "core/hadamard.h"
#include "core/numeric.h"
#include "core/ops.h"

namespace dsv4::backend::cpu {
namespace {
using core::BlockFormat;
using core::round_bf16;

constexpr int kKvSimBlock = kKvEntryScaleBlock;  // FP8 simulation block of KV nope dims (spec §4.3)
constexpr int kIndexSimBlock = 32;               // FP4 simulation block of indexer q/k (spec §6)

struct CompressorRefs {
    const core::CompressorWeights &w;
    kvcache::PositionRing<float> &rows;
    int out_dim;   // c
    bool overlap;  // ratio 4
    int ratio;
};

// Stores one token's (a, score + ape) row of a compressor, and emits entry j when its window completes
// (spec §5.3). Returns true and fills `entry` (bf16 values [c], after norm and RoPE) when emitted.
bool compressor_step(const CompressorRefs &c, const float *a, const float *z, int64_t pos, float norm_eps,
                     const core::Rope &rope, int rope_dim, float *entry) {
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

// The indexer keys of a cache as Primitives::index_scores reads them.
struct IndexKeys {
    std::vector<const uint8_t *> pages;
    Fp4Keys keys;
    explicit IndexKeys(const kvcache::PagedEntries &e) {
        for (const auto &page : e.pages()) pages.push_back(page->data());
        keys = {pages.data(), int64_t(kvcache::PagedEntries::kPageEntries), int64_t(e.entry_bytes())};
    }
};

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

void CpuBackend::query(const Layer &l, const Tensor &x, const Tensor &positions, Tensor &qt, Tensor &q_rt) {
    const io::ModelConfig &cfg = l.config;
    const int64_t N = x.rows;
    const int H = cfg.n_heads, d = cfg.head_dim, nope = cfg.nope_head_dim(), Rq = cfg.q_lora_rank;
    float *qa = sized(ws_.qa, size_t(N * Rq));
    p_->linear_fp8(x.as<const float>(), N, l.weights.wq_a, qa);
    float *q_r = q_rt.as<float>(), *q = qt.as<float>();
    for (int64_t i = 0; i < N; ++i)
        core::rms_norm(qa + i * Rq, size_t(Rq), l.weights.q_norm.data(), cfg.norm_eps, q_r + i * Rq);
    p_->linear_fp8(q_r, N, l.weights.wq_b, q);
    const int32_t *pos = positions.as<const int32_t>();
#pragma omp parallel for num_threads(p_->threads()) schedule(static) if (N * H >= 64)
    for (int64_t ih = 0; ih < N * H; ++ih) {
        float *qh = q + ih * d;
        core::head_rms_scale_bf16(qh, size_t(d), cfg.norm_eps);
        l.rope.apply(qh + nope, pos[ih / H]);
    }
}

void CpuBackend::kv(const Layer &l, const Tensor &x, const Tensor &positions, Tensor &kvt) {
    const io::ModelConfig &cfg = l.config;
    const int64_t N = x.rows;
    const int d = cfg.head_dim, nope = cfg.nope_head_dim();
    float *raw = sized(ws_.raw, size_t(N * d));
    p_->linear_fp8(x.as<const float>(), N, l.weights.wkv, raw);
    float *kv = kvt.as<float>();
    const int32_t *pos = positions.as<const int32_t>();
#pragma omp parallel for num_threads(p_->threads()) schedule(static) if (N >= 16)
    for (int64_t i = 0; i < N; ++i) {
        float *k = kv + i * d;
        core::rms_norm(raw + i * d, size_t(d), l.weights.kv_norm.data(), cfg.norm_eps, k);
        l.rope.apply(k + nope, pos[i]);
        core::simulate_blocks(BlockFormat::fp8_e4m3, k, size_t(nope), kKvSimBlock);
    }
}

void CpuBackend::compress(const Layer &l, const Tensor &xt, const LayerBatch &b, Tensor *kv_entries,
                          Tensor *index_entries) {
    const io::ModelConfig &cfg = l.config;
    const core::LayerWeights &w = l.weights;
    const int m = l.spec.compress_ratio;
    if (!m) return;
    const int64_t N = xt.rows;
    const int d = cfg.head_dim, r = cfg.rope_head_dim, nope = cfg.nope_head_dim(), dI = cfg.index_head_dim;
    const int kappa = m == 4 ? 2 : 1;
    const float eps = cfg.norm_eps, *x = xt.as<const float>();
    // Projections in fp32 (spec §5.2).
    float *comp_a = sized(ws_.comp_a, size_t(N) * kappa * d), *comp_z = sized(ws_.comp_z, size_t(N) * kappa * d);
    float *idx_a = nullptr, *idx_z = nullptr;
    p_->linear_f32(x, N, w.compressor.wkv, comp_a);
    p_->linear_f32(x, N, w.compressor.wgate, comp_z);
    if (m == 4) {
        idx_a = sized(ws_.idx_a, size_t(N) * 2 * dI);
        idx_z = sized(ws_.idx_z, size_t(N) * 2 * dI);
        p_->linear_f32(x, N, w.index_compressor.wkv, idx_a);
        p_->linear_f32(x, N, w.index_compressor.wgate, idx_z);
    }
    int64_t n_kv = 0, n_index = 0;  // entries emitted so far, in emission order
    std::vector<float> entry(static_cast<size_t>(d)), idx_entry(static_cast<size_t>(dI));
    for (size_t s = 0; s < b.spans.size(); ++s) {
        const Span &span = b.spans[s];
        kvcache::LayerCache &cache = *b.caches[s];
        const kvcache::LayerGeometry &g = cache.geo;
        for (int64_t t = 0; t < span.n; ++t) {
            const int64_t i = span.row0 + t, pos = span.start_pos + t;
            const CompressorRefs comp{w.compressor, cache.comp_rows, d, m == 4, m};
            if (compressor_step(comp, comp_a + i * kappa * d, comp_z + i * kappa * d, pos, eps, l.rope,
                                r, entry.data())) {
                core::simulate_blocks(BlockFormat::fp8_e4m3, entry.data(), size_t(nope), kKvSimBlock);
                encode_kv_entry(g, entry.data(), cache.kv.append());
                if (kv_entries) std::copy(entry.begin(), entry.end(), kv_entries->as<float>() + n_kv * d);
                ++n_kv;
            }
            if (m != 4) continue;
            const CompressorRefs icomp{w.index_compressor, cache.index_rows, dI, true, 4};
            if (compressor_step(icomp, idx_a + i * 2 * dI, idx_z + i * 2 * dI, pos, eps, l.rope, r,
                                idx_entry.data())) {
                core::hadamard_bf16(idx_entry.data(), size_t(dI));
                core::simulate_blocks(BlockFormat::fp4_e2m1, idx_entry.data(), size_t(dI), kIndexSimBlock);
                encode_index_entry(g, idx_entry.data(), cache.index_keys.append());
                if (index_entries) std::copy(idx_entry.begin(), idx_entry.end(), index_entries->as<float>() + n_index * dI);
                ++n_index;
            }
        }
    }
}

void CpuBackend::index_query(const Layer &l, const Tensor &x, const Tensor &q_r, const Tensor &positions, Tensor &qIt,
                             Tensor &omegat) {
    const io::ModelConfig &cfg = l.config;
    const int64_t N = x.rows;
    const int nI = cfg.index_n_heads, dI = cfg.index_head_dim, r = cfg.rope_head_dim;
    float *qI = qIt.as<float>(), *omega = omegat.as<float>();
    p_->linear_fp8(q_r.as<const float>(), N, l.weights.index_wq_b, qI);
    p_->linear_bf16(x.as<const float>(), N, l.weights.index_weights_proj, omega);
    const float omega_scale = index_weight_scale(cfg);
    for (int64_t i = 0; i < N * nI; ++i) omega[i] = round_bf16(omega[i] * omega_scale);
    const int32_t *pos = positions.as<const int32_t>();
#pragma omp parallel for num_threads(p_->threads()) schedule(static) if (N * nI >= 64)
    for (int64_t ih = 0; ih < N * nI; ++ih) {
        float *qh = qI + ih * dI;
        l.rope.apply(qh + (dI - r), pos[ih / nI]);
        core::hadamard_bf16(qh, size_t(dI));
        core::simulate_blocks(BlockFormat::fp4_e2m1, qh, size_t(dI), kIndexSimBlock);
    }
}

void CpuBackend::index_topk(const Layer &l, const Tensor &qIt, const Tensor &omegat, const LayerBatch &b,
                            Tensor &topkt, Tensor *scores) {
    const io::ModelConfig &cfg = l.config;
    const int nI = cfg.index_n_heads, dI = cfg.index_head_dim, m = l.spec.compress_ratio;
    const int64_t K = topkt.cols;
    const float *qI = qIt.as<const float>(), *omega = omegat.as<const float>();
    int32_t *topk = topkt.as<int32_t>();
    std::fill_n(topk, topkt.count(), -1);
    if (scores) std::fill_n(scores->as<float>(), scores->count(), -INFINITY);
    for (size_t s = 0; s < b.spans.size(); ++s) {
        const Span &span = b.spans[s];
        const IndexKeys keys(b.caches[s]->index_keys);
        for (int64_t t = 0; t < span.n; ++t) {
            const int64_t i = span.row0 + t, n_avail = (span.start_pos + t + 1) / m;
            float *score = scores ? scores->as<float>() + i * scores->cols : sized(ws_.row_scores, size_t(n_avail));
            p_->index_scores(qI + i * nI * dI, omega + i * nI, nI, dI, keys.keys, n_avail, score);
            const std::vector<int32_t> selected = topk_desc(score, n_avail, K);
            std::copy(selected.begin(), selected.end(), topk + i * K);
        }
    }
}

void CpuBackend::sparse_attention(const Layer &l, const Tensor &qt, const Tensor &kvt, const Tensor &topkt,
                                  const LayerBatch &b, Tensor &ot) {
    const io::ModelConfig &cfg = l.config;
    const int H = cfg.n_heads, d = cfg.head_dim, nope = cfg.nope_head_dim(), W = cfg.window_size;
    const int m = l.spec.compress_ratio;
    const float *q = qt.as<const float>();
    float *o = ot.as<float>();
    std::vector<uint16_t> &rows = ws_.rows;  // bf16, the reference's KV dtype
    std::vector<uint8_t> &valid = ws_.valid;
    std::vector<const uint8_t *> &entries = ws_.entries;  // the compressed entries a query attends to
    for (size_t s = 0; s < b.spans.size(); ++s) {
        const Span &span = b.spans[s];
        kvcache::LayerCache &cache = *b.caches[s];
        const kvcache::LayerGeometry &g = cache.geo;
        const float *kv = kvt.as<const float>() + span.row0 * d;
        uint16_t *own = sized(ws_.own, size_t(span.n * d));  // the span's KV in bf16, converted once
        for (size_t c = 0; c < size_t(span.n * d); ++c) own[c] = core::f32_to_bf16(kv[c]);
        for (int64_t t = 0; t < span.n; ++t) {
            const int64_t i = span.row0 + t, pos = span.start_pos + t;
            // Window part: always W slots, oldest → newest, -1 padding while pos < W-1 (spec §7). The attention
            // never reads an invalid slot, so rows are not cleared (and never shrink: no refill per query).
            if (rows.size() < size_t(W) * d) rows.resize(size_t(W) * d);
            valid.assign(size_t(W), 0);
            const int64_t w0 = std::max<int64_t>(0, pos - W + 1);
            for (int64_t p = w0; p <= pos; ++p) {
                const uint16_t *src = p >= span.start_pos ? &own[size_t((p - span.start_pos) * d)] : cache.window.row(p);
                std::copy_n(src, d, &rows[size_t((p - w0) * d)]);
                valid[size_t(p - w0)] = 1;
            }
            // Compressed part: the indexer's selection (CSA), or every entry whose window completed by pos (HCA).
            entries.clear();
            if (m == 4) {
                const int32_t *sel = topkt.as<const int32_t>() + i * topkt.cols;
                for (int64_t k = 0; k < topkt.cols && sel[k] >= 0; ++k) entries.push_back(cache.kv.entry(size_t(sel[k])));
            } else if (m) {
                for (int64_t k = 0; k < (pos + 1) / m; ++k) entries.push_back(cache.kv.entry(size_t(k)));
            }
            if (rows.size() < (size_t(W) + entries.size()) * d) rows.resize((size_t(W) + entries.size()) * d);
            p_->decode_kv_entries({entries.data(), int64_t(entries.size()), g.nope_dim(), g.rope_dim}, &rows[size_t(W) * d]);
            valid.resize(valid.size() + entries.size(), 1);
            AttentionProblem p;
            p.q = q + i * H * d;
            p.kv = rows.data();
            p.valid = valid.data();
            p.n_rows = int64_t(valid.size());
            p.n_heads = H;
            p.head_dim = d;
            p.sink = l.weights.attn_sink.data();
            p.scale = 1.0f / std::sqrt(float(d));
            p.out = o + i * H * d;
            p_->attention(p);
            // Values carry their key's rotation: de-rotate at the query position (spec §4.6).
            for (int h = 0; h < H; ++h) l.rope.apply(o + (i * H + h) * d + nope, int(pos), true);
        }
        // The span's KV joins the window ring after its own attention used it.
        for (int64_t t = std::max<int64_t>(0, span.n - cache.window.capacity()); t < span.n; ++t)
            std::copy_n(&own[size_t(t * d)], d, cache.window.write_row(span.start_pos + t));
    }
}

void CpuBackend::output_projection(const Layer &l, const Tensor &o, Tensor &y) {
    const core::LayerWeights &w = l.weights;
    float *z = sized(ws_.z, size_t(o.rows) * size_t(w.wo_a.rows));
    p_->linear_dequant_fp8(o.as<const float>(), o.rows, w.wo_a, l.config.o_groups, z);
    p_->linear_fp8(z, o.rows, w.wo_b, y.as<float>());
}

}  // namespace dsv4::backend::cpu
