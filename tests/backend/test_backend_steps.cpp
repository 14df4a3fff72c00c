// The cross-backend parity harness: every step of backend/backend.h, on every CPU kernel path this machine has,
// against the CPU reference backend (the same steps over the reference primitives), at random batch shapes,
// positions and seeds, on the tiny-flash weights (FP8 128x128 and FP4 per-32 in the official format). Paths whose
// primitives are the reference loops (generic, avx512) must give the same bits, the cache they write included;
// the kernel paths (avx512_bf16, amx) differ only in fp32 summation order, so their outputs must stay within a few
// bf16 ulps and their discrete choices (indexer top-k, router) may part from the reference only at near ties of
// the reference's own scores. The float64 references of the primitives and of several steps are in
// tests/model/test_ops_reference.cpp; the CUDA backend joins this harness in its own issue.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <set>

#include "backend/cpu/backend.h"
#include "backend/cpu/isa.h"
#include "core/numeric.h"
#include "support/fixtures.h"
#include "support/random.h"

using namespace dsv4;
using backend::Tensor;
using core::DType;

namespace {

std::mt19937 rng(20261207);


template <typename T>
Tensor host(std::vector<T> &v, int64_t rows, DType dtype = DType::F32) {
    return {v.data(), dtype, rows, rows ? int64_t(v.size()) / rows : 0};
}

struct Candidate {
    std::string name;
    bool exact;  // the reference loops: bit-identical results expected
    std::unique_ptr<backend::cpu::CpuBackend> be;
};

std::vector<Candidate> candidates() {
    using backend::cpu::Isa;
    std::vector<Candidate> out;
    for (Isa isa : {Isa::generic, Isa::avx512, Isa::avx512_bf16, Isa::amx})
        if (isa <= backend::cpu::detect_isa())
            out.push_back({backend::cpu::isa_name(isa), isa < Isa::avx512_bf16,
                           std::make_unique<backend::cpu::CpuBackend>(backend::cpu::make_primitives(2, isa))});
    return out;
}

backend::cpu::CpuBackend &reference() {
    static backend::cpu::CpuBackend be(backend::cpu::make_reference_primitives(2));
    return be;
}

// ours against the reference's values: identical on exact paths; else every element within `ulps` bf16 ulps of the
// row's largest magnitude (fp32 sums in another order move a bf16 result by an ulp of the result, and cancellation
// can make that large against the element itself), and the rms difference below 1% of the rms.
void require_close(const std::string &what, const Candidate &c, const std::vector<float> &mine,
                   const std::vector<float> &ref, int64_t cols, double ulps = 4) {
    INFO(what << " on " << c.name);
    REQUIRE(mine.size() == ref.size());
    if (c.exact) {
        REQUIRE((ref.empty() || std::memcmp(mine.data(), ref.data(), ref.size() * sizeof(float)) == 0));
        return;
    }
    double sq_diff = 0, sq_ref = 0;
    for (size_t r = 0; r * size_t(cols) < ref.size(); ++r) {
        double row_max = 0;
        for (int64_t j = 0; j < cols; ++j) row_max = std::max(row_max, std::fabs(double(ref[r * size_t(cols) + size_t(j)])));
        for (int64_t j = 0; j < cols; ++j) {
            const size_t i = r * size_t(cols) + size_t(j);
            if (std::isinf(ref[i])) {
                REQUIRE(mine[i] == ref[i]);
                continue;
            }
            INFO("row " << r << " col " << j << ": " << mine[i] << " vs " << ref[i]);
            REQUIRE(std::fabs(double(mine[i]) - ref[i]) <= ulps * row_max / 128.0 + 1e-30);
            sq_diff += (double(mine[i]) - ref[i]) * (double(mine[i]) - ref[i]);
            sq_ref += double(ref[i]) * ref[i];
        }
    }
    REQUIRE(sq_diff <= 1e-4 * sq_ref + 1e-30);
}

// Rows of ids (top-k or router choices) against the reference's: equal on exact paths; else a set may differ
// only by ids whose reference score lies within `margin` of the reference's k-th score of that row.
void require_choices(const std::string &what, const Candidate &c, const std::vector<int32_t> &mine,
                     const std::vector<int32_t> &ref, int64_t k, const std::function<float(size_t row, int32_t id)> &score,
                     double margin) {
    INFO(what << " on " << c.name);
    if (c.exact) {
        REQUIRE(mine == ref);
        return;
    }
    for (size_t r = 0; r * size_t(k) < ref.size(); ++r) {
        std::set<int32_t> a(mine.begin() + int64_t(r) * k, mine.begin() + int64_t(r + 1) * k),
            b(ref.begin() + int64_t(r) * k, ref.begin() + int64_t(r + 1) * k);
        if (a == b) continue;
        float kth = INFINITY;
        for (int32_t id : b)
            if (id >= 0) kth = std::min(kth, score(r, id));
        for (int32_t id : a)
            if (!b.count(id)) {
                INFO("row " << r << " id " << id);
                REQUIRE(id >= 0);
                REQUIRE(std::fabs(score(r, id) - kth) <= margin * (std::fabs(kth) + 1e-3));
            }
    }
}

// One RoPE table per layer, as the model builds them (the steps take the layer's).
const std::vector<core::Rope> &ropes(const model::Model &m) {
    static const std::vector<core::Rope> r = [&] {
        const io::ModelConfig &c = m.config();
        std::vector<core::Rope> out;
        for (const io::LayerSpec &l : c.layers)
            out.emplace_back(c.rope_head_dim, l.rope_theta, l.yarn, c.rope_factor, c.original_seq_len, c.beta_fast,
                             c.beta_slow);
        return out;
    }();
    return r;
}

// A random batch: 1-3 sequences, each a prefix already cached (filled through the reference backend's compress and
// sparse attention on random activations) and a span of new tokens (decode-sized or prefill-sized).
struct Batch {
    std::vector<backend::Span> spans;
    std::vector<kvcache::SequenceCache> caches;
    std::vector<int32_t> positions, tokens;
    int64_t n = 0;
};

Batch random_batch(const model::Model &m) {
    const io::ModelConfig &c = m.config();
    const std::vector<kvcache::LayerGeometry> geo = [&] {
        auto g = m.cache_geometry(8);
        g.resize(size_t(c.n_layers));
        return g;
    }();
    Batch b;
    const int n_seq = std::uniform_int_distribution<int>(1, 3)(rng);
    for (int s = 0; s < n_seq; ++s) {
        const int64_t prefix = std::uniform_int_distribution<int64_t>(0, 300)(rng);
        const int64_t n = std::uniform_int_distribution<int>(0, 2)(rng) ? std::uniform_int_distribution<int64_t>(1, 3)(rng)
                                                                         : std::uniform_int_distribution<int64_t>(4, 140)(rng);
        kvcache::SequenceCache &cache = b.caches.emplace_back(geo);
        if (prefix) {  // the prefix of every layer, as the reference would have left it
            std::vector<int32_t> pos(static_cast<size_t>(prefix));
            for (int64_t t = 0; t < prefix; ++t) pos[size_t(t)] = int32_t(t);
            const std::vector<backend::Span> one{{0, prefix, 0}};
            for (int il = 0; il < c.n_layers; ++il) {
                const std::vector<kvcache::LayerCache *> caches{&cache.layers[size_t(il)]};
                const backend::Layer l{c, c.layers[size_t(il)], m.weights().layers[size_t(il)], ropes(m)[size_t(il)], il};
                auto x = test::bf16_values(rng, size_t(prefix * c.dim), 1.0f), kv = test::bf16_values(rng, size_t(prefix * c.head_dim), 1.0f);
                auto q = test::bf16_values(rng, size_t(prefix * c.n_heads * c.head_dim), 0.1f), o = q;
                std::vector<int32_t> topk(size_t(prefix * c.index_topk), -1);
                Tensor pos_t = host(pos, prefix, DType::I32), o_t = host(o, prefix);
                const backend::LayerBatch lb{one, caches, pos_t};
                reference().compress(l, host(x, prefix), lb, nullptr, nullptr);
                reference().sparse_attention(l, host(q, prefix), host(kv, prefix), host(topk, prefix, DType::I32), lb, o_t);
            }
            cache.length = cache.high_water = prefix;
        }
        b.spans.push_back({b.n, n, prefix});
        for (int64_t t = 0; t < n; ++t) {
            b.positions.push_back(int32_t(prefix + t));
            b.tokens.push_back(std::uniform_int_distribution<int32_t>(0, int32_t(c.vocab_size) - 1)(rng));
        }
        b.n += n;
    }
    return b;
}

}  // namespace

TEST_CASE("parity: the stream steps (embed, hc_pre, hc_post, head) on every CPU path", "[backend]") {
    const model::Model &m = test::tiny_flash();
    const io::ModelConfig &c = m.config();
    const int hc = c.hc_mult;
    const int64_t D = c.dim, row = int64_t(hc) * D, n_mix = int64_t(2 + hc) * hc;
    for (int trial = 0; trial < 4; ++trial) {
        const int64_t N = std::uniform_int_distribution<int64_t>(1, 70)(rng);
        std::vector<int32_t> tokens(static_cast<size_t>(N));
        for (int32_t &t : tokens) t = std::uniform_int_distribution<int32_t>(0, int32_t(c.vocab_size) - 1)(rng);
        auto h = test::bf16_values(rng, size_t(N * row), 1.0f), y = test::bf16_values(rng, size_t(N * D), 1.0f);
        const core::LayerWeights &lw = m.weights().layers[size_t(trial % c.n_layers)];
        struct Out {
            std::vector<float> embedded, mix, x, xn, post, logits;
        };
        const auto run = [&](backend::Backend &be) {
            Out o{std::vector<float>(size_t(N * row)), std::vector<float>(size_t(N * n_mix)), std::vector<float>(size_t(N * D)),
                  std::vector<float>(size_t(N * D)), std::vector<float>(size_t(N * row)), {}};
            Tensor e = host(o.embedded, N), mix = host(o.mix, N), x = host(o.x, N), xn = host(o.xn, N), post = host(o.post, N);
            be.embed(m.weights().embed, host(tokens, N, DType::I32), hc, e);
            be.hc_pre(c, lw.hc_attn, lw.attn_norm, host(h, N), mix, x, xn);
            be.hc_post(mix, host(y, N), host(h, N), post);
            std::vector<int32_t> rows;
            for (int64_t i = N - 1; i >= 0; i -= 3) rows.push_back(int32_t(i));
            o.logits.resize(rows.size() * size_t(c.vocab_size));
            Tensor logits = host(o.logits, int64_t(rows.size()));
            be.head(c, m.weights().hc_head, m.weights().norm, m.weights().head, host(h, N), host(rows, int64_t(rows.size()), DType::I32), logits);
            return o;
        };
        const Out ref = run(reference());
        for (Candidate &cand : candidates()) {
            const Out got = run(*cand.be);
            REQUIRE(got.embedded == ref.embedded);  // a copy on every path
            // the mixes' fp32 sums may change order; everything after them inherits that
            require_close("hc_pre mix", cand, got.mix, ref.mix, n_mix);
            require_close("hc_pre x", cand, got.x, ref.x, D);
            require_close("hc_pre norm", cand, got.xn, ref.xn, D);
            require_close("hc_post", cand, got.post, ref.post, D);
            require_close("head", cand, got.logits, ref.logits, c.vocab_size);
        }
    }
}

TEST_CASE("parity: the attention steps over random batches of cached sequences on every CPU path", "[backend]") {
    const model::Model &m = test::tiny_flash();
    const io::ModelConfig &c = m.config();
    const int64_t D = c.dim, H = c.n_heads, d = c.head_dim, nI = c.index_n_heads, dI = c.index_head_dim, K = c.index_topk;
    for (int trial = 0; trial < 6; ++trial) {
        const int il = trial % c.n_layers;
        const io::LayerSpec &spec = c.layers[size_t(il)];
        const int ratio = spec.compress_ratio;
        const backend::Layer l{c, spec, m.weights().layers[size_t(il)], ropes(m)[size_t(il)], il};
        Batch b = random_batch(m);
        const int64_t N = b.n;
        INFO("layer " << il << " (ratio " << ratio << "), " << b.spans.size() << " sequences, " << N << " rows");
        auto x = test::bf16_values(rng, size_t(N * D), 1.0f);
        // The inputs of the later steps are the reference's outputs of the earlier ones, so that each step is judged
        // on the same inputs everywhere.
        struct Out {
            std::vector<float> q, q_r, kv, qI, omega, kv_entries, index_entries, scores, o, y;
            std::vector<int32_t> topk;
            std::vector<kvcache::SequenceCache> caches;
        };
        int64_t emitted = 0, max_entries = 0;
        for (const backend::Span &s : b.spans)
            if (ratio) {
                emitted += (s.start_pos + s.n) / ratio - s.start_pos / ratio;
                max_entries = std::max(max_entries, (s.start_pos + s.n) / ratio);
            }
        const auto run = [&](backend::Backend &be, const Out *inputs) {
            Out o;
            o.caches = b.caches;
            std::vector<kvcache::LayerCache *> caches;
            for (kvcache::SequenceCache &sc : o.caches) caches.push_back(&sc.layers[size_t(il)]);
            Tensor pos = host(b.positions, N, DType::I32);
            const backend::LayerBatch lb{b.spans, caches, pos};
            o.q.resize(size_t(N * H * d));
            o.q_r.resize(size_t(N * c.q_lora_rank));
            o.kv.resize(size_t(N * d));
            Tensor q = host(o.q, N), q_r = host(o.q_r, N), kv = host(o.kv, N);
            be.query(l, host(x, N), pos, q, q_r);
            be.kv(l, host(x, N), pos, kv);
            const Out &in = inputs ? *inputs : o;
            std::vector<float> in_q_r = in.q_r, in_q = in.q, in_kv = in.kv;
            if (ratio) {
                o.kv_entries.resize(size_t(emitted * d));
                o.index_entries.resize(size_t(emitted * dI));
                Tensor ke = host(o.kv_entries, emitted), ie = host(o.index_entries, emitted);
                be.compress(l, host(x, N), lb, &ke, ratio == 4 ? &ie : nullptr);
            }
            o.topk.assign(size_t(N * K), -1);
            Tensor topk = host(o.topk, N, DType::I32);
            if (ratio == 4) {
                o.qI.resize(size_t(N * nI * dI));
                o.omega.resize(size_t(N * nI));
                Tensor qI = host(o.qI, N), omega = host(o.omega, N);
                be.index_query(l, host(x, N), host(in_q_r, N), pos, qI, omega);
                std::vector<float> in_qI = inputs ? inputs->qI : o.qI, in_omega = inputs ? inputs->omega : o.omega;
                o.scores.resize(size_t(N * max_entries));
                Tensor scores = host(o.scores, N);
                if (!max_entries) scores.cols = 0;
                // On the reference's caches too: a kernel path's entries may differ by an ulp.
                std::vector<kvcache::SequenceCache> ref_caches = inputs ? inputs->caches : o.caches;
                std::vector<kvcache::LayerCache *> rc;
                for (kvcache::SequenceCache &sc : ref_caches) rc.push_back(&sc.layers[size_t(il)]);
                be.index_topk(l, host(in_qI, N), host(in_omega, N), {b.spans, rc, pos}, topk, &scores);
            }
            std::vector<int32_t> in_topk = inputs ? inputs->topk : o.topk;
            o.o.resize(size_t(N * H * d));
            Tensor out = host(o.o, N);
            be.sparse_attention(l, host(in_q, N), host(in_kv, N), host(in_topk, N, DType::I32), lb, out);
            std::vector<float> in_o = inputs ? inputs->o : o.o;
            o.y.resize(size_t(N * D));
            Tensor y = host(o.y, N);
            be.output_projection(l, host(in_o, N), y);
            return o;
        };
        const Out ref = run(reference(), nullptr);
        for (Candidate &cand : candidates()) {
            const Out got = run(*cand.be, &ref);
            require_close("query q", cand, got.q, ref.q, d);
            require_close("query q_r", cand, got.q_r, ref.q_r, c.q_lora_rank);
            require_close("kv", cand, got.kv, ref.kv, d, 16);  // FP8-simulated: a moved input can move a code
            if (ratio) {
                require_close("compressed entries", cand, got.kv_entries, ref.kv_entries, d, 16);
                if (cand.exact)
                    for (size_t s = 0; s < b.caches.size(); ++s) {
                        std::vector<uint8_t> a, r;
                        got.caches[s].serialize(a);
                        ref.caches[s].serialize(r);
                        REQUIRE(a == r);
                    }
            }
            if (ratio == 4) {
                require_close("index entries", cand, got.index_entries, ref.index_entries, dI, 64);  // FP4: a flipped code moves up to a third of its block's largest
                require_close("index_query qI", cand, got.qI, ref.qI, dI, 64);
                require_close("index_query omega", cand, got.omega, ref.omega, nI);
                require_close("index scores", cand, got.scores, ref.scores, std::max<int64_t>(max_entries, 1));
                require_choices("index top-k", cand, got.topk, ref.topk, K,
                                [&](size_t r, int32_t id) { return ref.scores[r * size_t(max_entries) + size_t(id)]; }, 0.05);
            }
            require_close("sparse attention", cand, got.o, ref.o, d);
            require_close("output projection", cand, got.y, ref.y, D);
        }
    }
}

TEST_CASE("parity: the MoE steps (router, experts) on every CPU path", "[backend]") {
    const model::Model &m = test::tiny_flash();
    const io::ModelConfig &c = m.config();
    const int64_t D = c.dim, E = c.n_routed_experts, k = c.n_activated_experts;
    for (int trial = 0; trial < 4; ++trial) {
        const int il = trial % c.n_layers;
        const backend::Layer l{c, c.layers[size_t(il)], m.weights().layers[size_t(il)], ropes(m)[size_t(il)], il};
        const int64_t N = trial % 2 ? std::uniform_int_distribution<int64_t>(1, 4)(rng) : std::uniform_int_distribution<int64_t>(100, 700)(rng);
        auto x = test::bf16_values(rng, size_t(N * D), 1.0f);
        std::vector<int32_t> tokens(static_cast<size_t>(N));
        for (int32_t &t : tokens) t = std::uniform_int_distribution<int32_t>(0, int32_t(c.vocab_size) - 1)(rng);
        struct Out {
            std::vector<float> scores, weights, y;
            std::vector<int32_t> ids;
        };
        const auto run = [&](backend::Backend &be, const Out *inputs) {
            Out o{std::vector<float>(size_t(N * E)), std::vector<float>(size_t(N * k)), std::vector<float>(size_t(N * D)),
                  std::vector<int32_t>(size_t(N * k))};
            Tensor scores = host(o.scores, N), weights = host(o.weights, N), ids = host(o.ids, N, DType::I32), y = host(o.y, N);
            be.route(l, host(x, N), host(tokens, N, DType::I32), scores, ids, weights);
            std::vector<int32_t> in_ids = inputs ? inputs->ids : o.ids;
            std::vector<float> in_w = inputs ? inputs->weights : o.weights;
            be.experts(l, host(x, N), host(in_ids, N, DType::I32), host(in_w, N), y);
            return o;
        };
        const Out ref = run(reference(), nullptr);
        const std::vector<float> &bias = m.weights().layers[size_t(il)].gate_bias;
        for (Candidate &cand : candidates()) {
            const Out got = run(*cand.be, &ref);
            require_close("router scores", cand, got.scores, ref.scores, E);
            require_choices("router ids", cand, got.ids, ref.ids, k, [&](size_t r, int32_t e) {
                return ref.scores[r * size_t(E) + size_t(e)] + (bias.empty() ? 0.0f : bias[size_t(e)]);
            }, 1e-3);
            if (got.ids == ref.ids) require_close("router weights", cand, got.weights, ref.weights, k);
            require_close("experts", cand, got.y, ref.y, D);
        }
    }
}
