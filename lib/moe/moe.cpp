#include "core/scratch.h"
#include "moe/moe.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention/attention.h"
#include "core/numeric.h"
#include "core/ops.h"

namespace dsv4::moe {
namespace {

// SwiGLU with the clamp (spec §8.2): a = bf16(weight · silu(min(g, L)) · clamp(u, ±L)).
void swiglu(const float *g, const float *u, int64_t n, float limit, const float *row_weight, int64_t width,
            float *a) {
    for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < width; ++c) {
            float gv = g[i * width + c], uv = u[i * width + c];
            if (limit > 0) {
                uv = std::clamp(uv, -limit, limit);
                gv = std::min(gv, limit);
            }
            float v = core::silu(gv) * uv;
            if (row_weight) v = row_weight[i] * v;
            a[i * width + c] = core::round_bf16(v);
        }
}

}  // namespace

void route(const MoeContext &ctx, const float *x, const int32_t *tokens, int64_t N, float *scores, int32_t *ids,
           float *weights) {
    const io::ModelConfig &cfg = ctx.config;
    const int E = cfg.n_routed_experts, k = cfg.n_activated_experts;
    ctx.backend.linear_f32(x, N, ctx.weights.gate, scores);
    for (int64_t i = 0; i < N * E; ++i) scores[i] = std::sqrt(core::softplus(scores[i]));
    std::vector<float> biased(static_cast<size_t>(E));
    for (int64_t i = 0; i < N; ++i) {
        const float *s = scores + i * E;
        int32_t *sel = ids + i * k;
        if (ctx.spec.hash_routed) {
            std::copy_n(&ctx.weights.tid2eid[size_t(tokens[i]) * size_t(k)], k, sel);
        } else {
            // The bias only steers selection; weights use the unbiased scores.
            for (int e = 0; e < E; ++e) biased[size_t(e)] = s[e] + ctx.weights.gate_bias[size_t(e)];
            std::vector<int32_t> top = attention::topk_desc(biased.data(), E, k);
            std::copy(top.begin(), top.end(), sel);
        }
        float sum = 0.0f;
        for (int j = 0; j < k; ++j) sum += s[sel[j]];
        for (int j = 0; j < k; ++j) weights[i * k + j] = s[sel[j]] / sum * cfg.route_scale;
    }
}

void moe_forward(const MoeContext &ctx, const float *x, const int32_t *tokens, int64_t N, float *y) {
    const io::ModelConfig &cfg = ctx.config;
    const int E = cfg.n_routed_experts, k = cfg.n_activated_experts, D = cfg.dim, I = cfg.moe_inter_dim;
    backend::Backend &be = ctx.backend;
    core::FloatBuffer scores(static_cast<size_t>(N * E)), weights(static_cast<size_t>(N * k));
    std::vector<int32_t> ids(static_cast<size_t>(N * k));
    route(ctx, x, tokens, N, scores.data(), ids.data(), weights.data());
    model::observe(ctx.observer, "gate_scores", ctx.layer, DSV4_DTYPE_F32, N, E, scores.data());
    model::observe(ctx.observer, "gate_ids", ctx.layer, DSV4_DTYPE_I32, N, k, ids.data());
    model::observe(ctx.observer, "gate_weights", ctx.layer, DSV4_DTYPE_F32, N, k, weights.data());

    // Routed experts (ascending id) in batches of up to kBatchRows gathered rows: the backend gets a batch's w1 and
    // w3 (with the shared expert's, in the first batch) in one call, then their w2 in another, so a decode step's
    // expert matrices share one parallel region each instead of one per matrix. Each token still sums its experts'
    // outputs in expert-id order (spec §8.3); a batch's buffers stay small however long the prefill.
    constexpr int64_t kBatchRows = 512;
    const core::ExpertMatrix shared_w1{core::ExpertFormat::fp8, {}, ctx.weights.shared.w1},
        shared_w2{core::ExpertFormat::fp8, {}, ctx.weights.shared.w2},
        shared_w3{core::ExpertFormat::fp8, {}, ctx.weights.shared.w3};
    core::FloatBuffer acc(size_t(N * D), 0.0f), shared_g(size_t(N * I)), shared_u(shared_g.size()),
        shared_a(shared_g.size()), shared_out(size_t(N * D));
    struct Routed {
        int e;
        int64_t first, n;  // its rows [first, first + n) of the batch's gathered rows
    };
    std::vector<Routed> batch;
    std::vector<int64_t> rows;  // token of each gathered row
    core::FloatBuffer rw, xe, g, u, a, out;
    std::vector<backend::ExpertLinear> jobs;
    bool shared_done = false;
    const auto run_batch = [&] {
        const int64_t total = int64_t(rows.size());
        xe.resize(size_t(total * D));
        for (int64_t r = 0; r < total; ++r) std::copy_n(x + rows[size_t(r)] * D, D, &xe[size_t(r * D)]);
        g.resize(size_t(total * I));
        u.resize(g.size());
        a.resize(g.size());
        out.resize(size_t(total * D));
        jobs.clear();
        for (const Routed &b : batch) {
            const model::ExpertWeights &ew = ctx.weights.experts[size_t(b.e)];
            jobs.push_back({&xe[size_t(b.first * D)], b.n, &ew.w1, &g[size_t(b.first * I)]});
            jobs.push_back({&xe[size_t(b.first * D)], b.n, &ew.w3, &u[size_t(b.first * I)]});
        }
        const bool with_shared = !shared_done;
        if (with_shared) {
            jobs.push_back({x, N, &shared_w1, shared_g.data()});
            jobs.push_back({x, N, &shared_w3, shared_u.data()});
        }
        be.linear_experts(jobs.data(), jobs.size());
        swiglu(g.data(), u.data(), total, cfg.swiglu_limit, rw.data(), I, a.data());
        jobs.clear();
        for (const Routed &b : batch) {
            const model::ExpertWeights &ew = ctx.weights.experts[size_t(b.e)];
            jobs.push_back({&a[size_t(b.first * I)], b.n, &ew.w2, &out[size_t(b.first * D)]});
        }
        if (with_shared) {
            // the shared expert: same clamp in the current revision (spec §15.1), no routing weight
            swiglu(shared_g.data(), shared_u.data(), N, cfg.swiglu_limit, nullptr, I, shared_a.data());
            jobs.push_back({shared_a.data(), N, &shared_w2, shared_out.data()});
        }
        be.linear_experts(jobs.data(), jobs.size());
        for (const Routed &b : batch)
            for (int64_t r = b.first; r < b.first + b.n; ++r)
                for (int c = 0; c < D; ++c) acc[size_t(rows[size_t(r)] * D + c)] += out[size_t(r * D + c)];
        shared_done = true;
        batch.clear();
        rows.clear();
        rw.clear();
    };
    for (int e = 0; e < E; ++e) {
        const int64_t first = int64_t(rows.size());
        for (int64_t i = 0; i < N; ++i)
            for (int j = 0; j < k; ++j)
                if (ids[size_t(i * k + j)] == e) {
                    rows.push_back(i);
                    rw.push_back(weights[size_t(i * k + j)]);
                }
        if (int64_t(rows.size()) > first) batch.push_back({e, first, int64_t(rows.size()) - first});
        if (int64_t(rows.size()) >= kBatchRows) run_batch();
    }
    if (!batch.empty() || !shared_done) run_batch();
    for (int64_t i = 0; i < N * D; ++i) y[i] = core::round_bf16(acc[size_t(i)] + shared_out[size_t(i)]);
}

}  // namespace dsv4::moe
