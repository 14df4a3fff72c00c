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

    core::FloatBuffer acc(size_t(N * D), 0.0f);
    core::FloatBuffer xe, g, u, a, out, rw;
    std::vector<int64_t> rows;
    for (int e = 0; e < E; ++e) {  // expert-id order fixes the fp32 summation order (spec §8.3)
        rows.clear();
        rw.clear();
        for (int64_t i = 0; i < N; ++i)
            for (int j = 0; j < k; ++j)
                if (ids[size_t(i * k + j)] == e) {
                    rows.push_back(i);
                    rw.push_back(weights[size_t(i * k + j)]);
                }
        if (rows.empty()) continue;
        const int64_t n = int64_t(rows.size());
        xe.resize(size_t(n * D));
        for (int64_t r = 0; r < n; ++r) std::copy_n(x + rows[size_t(r)] * D, D, &xe[size_t(r * D)]);
        g.resize(size_t(n * I));
        u.resize(g.size());
        a.resize(g.size());
        out.resize(size_t(n * D));
        const model::ExpertWeights &ew = ctx.weights.experts[size_t(e)];
        be.linear_expert(xe.data(), n, ew.w1, g.data());
        be.linear_expert(xe.data(), n, ew.w3, u.data());
        swiglu(g.data(), u.data(), n, cfg.swiglu_limit, rw.data(), I, a.data());
        be.linear_expert(a.data(), n, ew.w2, out.data());
        for (int64_t r = 0; r < n; ++r)
            for (int c = 0; c < D; ++c) acc[size_t(rows[size_t(r)] * D + c)] += out[size_t(r * D + c)];
    }
    // Shared expert (FP8), same clamp in the current revision (spec §15.1), no routing weight.
    g.resize(size_t(N * I));
    u.resize(g.size());
    a.resize(g.size());
    out.resize(size_t(N * D));
    be.linear_fp8(x, N, ctx.weights.shared.w1, g.data());
    be.linear_fp8(x, N, ctx.weights.shared.w3, u.data());
    swiglu(g.data(), u.data(), N, cfg.swiglu_limit, nullptr, I, a.data());
    be.linear_fp8(a.data(), N, ctx.weights.shared.w2, out.data());
    for (int64_t i = 0; i < N * D; ++i) y[i] = core::round_bf16(acc[size_t(i)] + out[size_t(i)]);
}

}  // namespace dsv4::moe
