#include "model/mhc.h"

#include <algorithm>
#include <cmath>

#include "core/numeric.h"
#include "core/ops.h"

namespace dsv4::model {
namespace {

// μ = (fn · x̄) · ρ with ρ = rsqrt(mean(x̄²) + eps) over all hc·D values (spec §3.1 steps 1-2).
std::vector<float> mixes(backend::Backend &be, const HcWeights &w, const float *h, int64_t N, int64_t width,
                         int64_t n_mix, float norm_eps) {
    std::vector<float> mu(static_cast<size_t>(N * n_mix));
    be.linear_f32w(h, N, w.fn.data(), n_mix, width, mu.data());
    for (int64_t i = 0; i < N; ++i) {
        const float rho = core::rms_factor(h + i * width, size_t(width), norm_eps);
        for (int64_t k = 0; k < n_mix; ++k) mu[size_t(i * n_mix + k)] *= rho;
    }
    return mu;
}

// x = bf16(Σ_j pre_j · h_j) over the un-normalised fp32 streams.
void collapse(const float *pre, const float *h, int hc, int D, float *x) {
    for (int c = 0; c < D; ++c) {
        float acc = 0.0f;
        for (int j = 0; j < hc; ++j) acc += pre[j] * h[j * D + c];
        x[c] = core::round_bf16(acc);
    }
}

}  // namespace

HcMix hc_pre(backend::Backend &be, const HcWeights &w, const float *h, int64_t N, int hc, int D, float norm_eps,
             float hc_eps, int sinkhorn_iters, float *x) {
    const int64_t n_mix = int64_t(2 + hc) * hc, width = int64_t(hc) * D;
    std::vector<float> mu = mixes(be, w, h, N, width, n_mix, norm_eps);
    HcMix out;
    out.pre.resize(size_t(N * hc));
    out.post.resize(size_t(N * hc));
    out.comb.resize(size_t(N * hc * hc));
    const float *scale = w.scale.data(), *base = w.base.data();
    for (int64_t i = 0; i < N; ++i) {
        const float *m = &mu[size_t(i * n_mix)];
        float *pre = &out.pre[size_t(i * hc)], *post = &out.post[size_t(i * hc)], *C = &out.comb[size_t(i * hc * hc)];
        for (int j = 0; j < hc; ++j) {
            pre[j] = core::sigmoid(scale[0] * m[j] + base[j]) + hc_eps;
            post[j] = 2.0f * core::sigmoid(scale[1] * m[hc + j] + base[hc + j]);
        }
        for (int k = 0; k < hc * hc; ++k) C[k] = scale[2] * m[2 * hc + k] + base[2 * hc + k];
        // Sinkhorn (spec §3.1 step 4): row softmax + eps, column normalisation, then T-1 row/column rounds.
        auto normalise_columns = [&] {
            for (int k = 0; k < hc; ++k) {
                float sum = 0.0f;
                for (int j = 0; j < hc; ++j) sum += C[j * hc + k];
                for (int j = 0; j < hc; ++j) C[j * hc + k] /= sum + hc_eps;
            }
        };
        for (int j = 0; j < hc; ++j) {
            float *row = C + j * hc, mx = -INFINITY, sum = 0.0f;
            for (int k = 0; k < hc; ++k) mx = std::max(mx, row[k]);
            for (int k = 0; k < hc; ++k) sum += (row[k] = std::exp(row[k] - mx));
            for (int k = 0; k < hc; ++k) row[k] = row[k] / sum + hc_eps;
        }
        normalise_columns();
        for (int it = 1; it < sinkhorn_iters; ++it) {
            for (int j = 0; j < hc; ++j) {
                float *row = C + j * hc, sum = 0.0f;
                for (int k = 0; k < hc; ++k) sum += row[k];
                for (int k = 0; k < hc; ++k) row[k] /= sum + hc_eps;
            }
            normalise_columns();
        }
        collapse(pre, h + i * width, hc, D, x + i * D);
    }
    return out;
}

void hc_post(const HcMix &mix, const float *y, const float *h, int64_t N, int hc, int D, float *out) {
    for (int64_t i = 0; i < N; ++i) {
        const float *post = &mix.post[size_t(i * hc)], *C = &mix.comb[size_t(i * hc * hc)];
        const float *hi = h + i * hc * D, *yi = y + i * D;
        float *oi = out + i * hc * D;
        for (int k = 0; k < hc; ++k) {  // c innermost (vectorised), each element's sum over j in the same order
            float *ok = oi + k * D;
            std::fill_n(ok, D, 0.0f);
            for (int j = 0; j < hc; ++j)
                for (int c = 0; c < D; ++c) ok[c] += C[j * hc + k] * hi[j * D + c];
            for (int c = 0; c < D; ++c) ok[c] = core::round_bf16(post[k] * yi[c] + ok[c]);
        }
    }
}

void hc_head(backend::Backend &be, const HcWeights &w, const float *h, int64_t N, int hc, int D, float norm_eps,
             float hc_eps, float *x) {
    const int64_t width = int64_t(hc) * D;
    std::vector<float> mu = mixes(be, w, h, N, width, hc, norm_eps);
    std::vector<float> pre(static_cast<size_t>(hc));
    for (int64_t i = 0; i < N; ++i) {
        for (int j = 0; j < hc; ++j) pre[size_t(j)] = core::sigmoid(w.scale[0] * mu[size_t(i * hc + j)] + w.base[size_t(j)]) + hc_eps;
        collapse(pre.data(), h + i * width, hc, D, x + i * D);
    }
}

}  // namespace dsv4::model
