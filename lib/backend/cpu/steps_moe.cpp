// The CPU steps of the MoE sub-layer (spec §8): the sqrt-softplus router with bias-for-selection or hash routing,
// and the SwiGLU experts with the clamp, routed outputs accumulated in fp32 in expert-id order, plus the shared
// expert.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/backend.h"
#include "core/numeric.h"
#include "core/ops.h"

namespace dsv4::backend::cpu {
namespace {

// SwiGLU with the clamp (spec §8.2): a = bf16(weight · silu(min(g, L)) · clamp(u, ±L)). Elements are independent:
// threads take blocks of them, so a decode step's few rows split too.
void swiglu(const float *g, const float *u, int64_t n, float limit, const float *row_weight, int64_t width,
            float *a, int threads) {
    const int64_t count = n * width;
#pragma omp parallel for num_threads(threads) schedule(static) if (count >= 8192)
    for (int64_t e = 0; e < count; ++e) {
        float gv = g[e], uv = u[e];
        if (limit > 0) {
            uv = std::clamp(uv, -limit, limit);
            gv = std::min(gv, limit);
        }
        float v = core::silu(gv) * uv;
        if (row_weight) v = row_weight[e / width] * v;
        a[e] = core::round_bf16(v);
    }
}

}  // namespace

void CpuBackend::route(const Layer &l, const Tensor &xt, const Tensor &tokens, Tensor &scorest, Tensor &idst,
                       Tensor &weightst) {
    const io::ModelConfig &cfg = l.config;
    const int E = cfg.n_routed_experts, k = cfg.n_activated_experts;
    const int64_t N = xt.rows;
    float *scores = scorest.as<float>(), *weights = weightst.as<float>();
    int32_t *ids = idst.as<int32_t>();
    p_->linear_f32(xt.as<const float>(), N, l.weights.gate, scores);
    for (int64_t i = 0; i < N * E; ++i) scores[i] = std::sqrt(core::softplus(scores[i]));
    std::vector<float> biased(static_cast<size_t>(E));
    for (int64_t i = 0; i < N; ++i) {
        const float *s = scores + i * E;
        int32_t *sel = ids + i * k;
        if (l.spec.hash_routed) {
            std::copy_n(&l.weights.tid2eid[size_t(tokens.as<const int32_t>()[i]) * size_t(k)], k, sel);
        } else {
            // The bias only steers selection; weights use the unbiased scores.
            for (int e = 0; e < E; ++e) biased[size_t(e)] = s[e] + l.weights.gate_bias[size_t(e)];
            const std::vector<int32_t> top = topk_desc(biased.data(), E, k);
            std::copy(top.begin(), top.end(), sel);
        }
        float sum = 0.0f;
        for (int j = 0; j < k; ++j) sum += s[sel[j]];
        for (int j = 0; j < k; ++j) weights[i * k + j] = s[sel[j]] / sum * cfg.route_scale;
    }
}

void CpuBackend::experts(const Layer &l, const Tensor &xt, const Tensor &idst, const Tensor &weightst, Tensor &yt) {
    const io::ModelConfig &cfg = l.config;
    const int E = cfg.n_routed_experts, k = cfg.n_activated_experts, D = cfg.dim, I = cfg.moe_inter_dim;
    const int64_t N = xt.rows;
    const float *x = xt.as<const float>(), *weights = weightst.as<const float>();
    const int32_t *ids = idst.as<const int32_t>();
    const int nt = p_->threads();
    // Routed experts (ascending id) in batches of up to kBatchRows gathered rows: the primitives get a batch's w1
    // and w3 (with the shared expert's, in the first batch) in one call, then their w2 in another, so a decode
    // step's expert matrices share one parallel region each instead of one per matrix. Each token still sums its
    // experts' outputs in expert-id order (spec §8.3); a batch's buffers stay small however long the prefill.
    constexpr int64_t kBatchRows = 512;
    const core::ExpertMatrix shared_w1{core::ExpertFormat::fp8, {}, l.weights.shared.w1},
        shared_w2{core::ExpertFormat::fp8, {}, l.weights.shared.w2},
        shared_w3{core::ExpertFormat::fp8, {}, l.weights.shared.w3};
    float *acc = sized(ws_.acc, size_t(N * D)), *shared_g = sized(ws_.shared_g, size_t(N * I)),
          *shared_u = sized(ws_.shared_u, size_t(N * I)), *shared_a = sized(ws_.shared_a, size_t(N * I)),
          *shared_out = sized(ws_.shared_out, size_t(N * D));
    std::fill_n(acc, N * D, 0.0f);
    struct Routed {
        int e;
        int64_t first, n;  // its rows [first, first + n) of the batch's gathered rows
    };
    std::vector<Routed> batch;
    std::vector<int64_t> &rows = ws_.gathered;  // token of each gathered row
    std::vector<float> &rw = ws_.rw;  // its routing weight
    rows.clear();
    rw.clear();
    std::vector<ExpertLinear> jobs;
    bool shared_done = false;
    const auto run_batch = [&] {
        const int64_t total = int64_t(rows.size());
        float *xe = sized(ws_.xe, size_t(total * D)), *g = sized(ws_.g, size_t(total * I)),
              *u = sized(ws_.u, size_t(total * I)), *a = sized(ws_.a, size_t(total * I)), *out = sized(ws_.out, size_t(total * D));
#pragma omp parallel for num_threads(nt) schedule(static) if (total >= 64)
        for (int64_t r = 0; r < total; ++r) std::copy_n(x + rows[size_t(r)] * D, D, xe + r * D);
        jobs.clear();
        for (const Routed &b : batch) {
            const core::ExpertWeights &ew = l.weights.experts[size_t(b.e)];
            jobs.push_back({xe + b.first * D, b.n, &ew.w1, g + b.first * I});
            jobs.push_back({xe + b.first * D, b.n, &ew.w3, u + b.first * I});
        }
        const bool with_shared = !shared_done;
        if (with_shared) {
            jobs.push_back({x, N, &shared_w1, shared_g});
            jobs.push_back({x, N, &shared_w3, shared_u});
        }
        p_->linear_experts(jobs.data(), jobs.size());
        swiglu(g, u, total, cfg.swiglu_limit, rw.data(), I, a, nt);
        jobs.clear();
        for (const Routed &b : batch) {
            const core::ExpertWeights &ew = l.weights.experts[size_t(b.e)];
            jobs.push_back({a + b.first * I, b.n, &ew.w2, out + b.first * D});
        }
        if (with_shared) {
            // the shared expert: same clamp in the current revision (spec §15.1), no routing weight
            swiglu(shared_g, shared_u, N, cfg.swiglu_limit, nullptr, I, shared_a, nt);
            jobs.push_back({shared_a, N, &shared_w2, shared_out});
        }
        p_->linear_experts(jobs.data(), jobs.size());
        // Each element sums its experts in id order (the rows' order); threads take column blocks.
        constexpr int kColumns = 64;
#pragma omp parallel for num_threads(nt) schedule(static) if (total >= 64)
        for (int c0 = 0; c0 < D; c0 += kColumns)
            for (int64_t r = 0; r < total; ++r)
                for (int c = c0; c < std::min(D, c0 + kColumns); ++c)
                    acc[rows[size_t(r)] * D + c] += out[r * D + c];
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
    float *y = yt.as<float>();
#pragma omp parallel for num_threads(nt) schedule(static) if (N >= 16)
    for (int64_t i = 0; i < N * D; ++i) y[i] = core::round_bf16(acc[i] + shared_out[i]);
}

}  // namespace dsv4::backend::cpu
