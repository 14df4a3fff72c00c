// The CPU steps on the residual streams (spec §2, §3, §9): embedding, mHC (hc_pre with Sinkhorn, hc_post), the
// head and the MTP input.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/backend.h"
#include "core/ops.h"

namespace dsv4::backend::cpu {
namespace {

// μ = (fn · x̄) · ρ with ρ = rsqrt(mean(x̄²) + eps) over all hc·D values (spec §3.1 steps 1-2).
std::vector<float> mixes(Primitives &p, const core::HcWeights &w, const float *h, int64_t N, int64_t width,
                         int64_t n_mix, float norm_eps) {
    std::vector<float> mu(static_cast<size_t>(N * n_mix));
    p.linear_f32w(h, N, w.fn.data(), n_mix, width, mu.data());
#pragma omp parallel for num_threads(p.threads()) schedule(static) if (N >= 16)
    for (int64_t i = 0; i < N; ++i) {
        const float rho = core::rms_factor(h + i * width, size_t(width), norm_eps);
        for (int64_t k = 0; k < n_mix; ++k) mu[size_t(i * n_mix + k)] *= rho;
    }
    return mu;
}

// x = bf16(Σ_j pre_j · h_j) over the un-normalised fp32 streams.
void collapse(const float *pre, const float *h, int hc, int64_t D, float *x) {
    for (int64_t c = 0; c < D; ++c) {
        float acc = 0.0f;
        for (int j = 0; j < hc; ++j) acc += pre[j] * h[j * D + c];
        x[c] = core::round_bf16(acc);
    }
}


}  // namespace

void CpuBackend::embed(const core::Bf16Matrix &table, const Tensor &tokens, int hc, Tensor &h) {
    const int64_t D = table.cols;
    float *out = h.as<float>();
    const int32_t *ids = tokens.as<const int32_t>();
    for (int64_t i = 0; i < tokens.rows; ++i)
        for (int k = 0; k < hc; ++k)
            for (int64_t j = 0; j < D; ++j) out[(i * hc + k) * D + j] = core::load_bf16(table.w, size_t(ids[i]) * size_t(D) + size_t(j));
}

void CpuBackend::hc_pre(const io::ModelConfig &c, const core::HcWeights &w, const std::vector<float> &norm,
                        const Tensor &ht, Tensor &mix, Tensor &xt, Tensor &xnt) {
    const int hc = c.hc_mult;
    const int64_t N = ht.rows, D = c.dim, n_mix = int64_t(2 + hc) * hc, width = int64_t(hc) * D;
    const float hc_eps = c.hc_eps;
    const float *h = ht.as<const float>();
    float *x = xt.as<float>(), *xn = xnt.as<float>();
    std::vector<float> mu = mixes(*p_, w, h, N, width, n_mix, c.norm_eps);
    const float *scale = w.scale.data(), *base = w.base.data();
#pragma omp parallel for num_threads(p_->threads()) schedule(static) if (N >= 16)
    for (int64_t i = 0; i < N; ++i) {
        const float *m = &mu[size_t(i * n_mix)];
        float *pre = mix.as<float>() + i * n_mix, *post = pre + hc, *C = post + hc;
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
        for (int it = 1; it < c.hc_sinkhorn_iters; ++it) {
            for (int j = 0; j < hc; ++j) {
                float *row = C + j * hc, sum = 0.0f;
                for (int k = 0; k < hc; ++k) sum += row[k];
                for (int k = 0; k < hc; ++k) row[k] /= sum + hc_eps;
            }
            normalise_columns();
        }
        collapse(pre, h + i * width, hc, D, x + i * D);
        core::rms_norm(x + i * D, size_t(D), norm.data(), c.norm_eps, xn + i * D);
    }
}

void CpuBackend::hc_post(const Tensor &mix, const Tensor &yt, const Tensor &ht, Tensor &outt) {
    const int hc = hc_of_mix(mix.cols);
    const int64_t N = ht.rows, D = yt.cols;
    const float *h = ht.as<const float>(), *y = yt.as<const float>();
    float *out = outt.as<float>();
#pragma omp parallel for num_threads(p_->threads()) schedule(static) if (N >= 16)
    for (int64_t i = 0; i < N; ++i) {
        const float *post = mix.as<const float>() + i * mix.cols + hc, *C = post + hc;
        const float *hi = h + i * hc * D, *yi = y + i * D;
        float *oi = out + i * hc * D;
        for (int k = 0; k < hc; ++k) {  // c innermost (vectorised), each element's sum over j in the same order
            float *ok = oi + k * D;
            std::fill_n(ok, D, 0.0f);
            for (int j = 0; j < hc; ++j)
                for (int64_t c = 0; c < D; ++c) ok[c] += C[j * hc + k] * hi[j * D + c];
            for (int64_t c = 0; c < D; ++c) ok[c] = core::round_bf16(post[k] * yi[c] + ok[c]);
        }
    }
}

void CpuBackend::head(const io::ModelConfig &c, const core::HcWeights &w, const std::vector<float> &norm,
                      const core::Bf16Matrix &lm_head, const Tensor &ht, const Tensor &rows, Tensor &logits) {
    const int hc = c.hc_mult;
    const int64_t D = c.dim, width = int64_t(hc) * D, n = rows.rows;
    const int32_t *row_of = rows.as<const int32_t>();
    std::vector<float> sel(size_t(n * width)), x(size_t(n * D)), xn(size_t(n * D));
    for (int64_t r = 0; r < n; ++r) std::copy_n(ht.as<const float>() + row_of[r] * width, width, &sel[size_t(r * width)]);
    std::vector<float> mu = mixes(*p_, w, sel.data(), n, width, hc, c.norm_eps);
    std::vector<float> pre(static_cast<size_t>(hc));
    for (int64_t i = 0; i < n; ++i) {
        for (int j = 0; j < hc; ++j) pre[size_t(j)] = core::sigmoid(w.scale[0] * mu[size_t(i * hc + j)] + w.base[size_t(j)]) + c.hc_eps;
        collapse(pre.data(), &sel[size_t(i * width)], hc, D, &x[size_t(i * D)]);
        core::rms_norm(&x[size_t(i * D)], size_t(D), norm.data(), c.norm_eps, &xn[size_t(i * D)]);
    }
    p_->linear_f32(xn.data(), n, lm_head, logits.as<float>());
}

void CpuBackend::mtp_input(const Layer &l, const core::Bf16Matrix &table, const Tensor &ht, const Tensor &next,
                           Tensor &out) {
    const io::ModelConfig &c = l.config;
    const core::LayerWeights &w = l.weights;
    const int hc = c.hc_mult;
    const int64_t n = next.rows, D = c.dim;
    const int32_t *tokens = next.as<const int32_t>();
    std::vector<float> e(size_t(n * D)), en(size_t(n * D)), ep(size_t(n * D));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < D; ++j) e[size_t(i * D + j)] = core::load_bf16(table.w, size_t(tokens[i]) * size_t(D) + size_t(j));
    for (int64_t i = 0; i < n; ++i) core::rms_norm(&e[size_t(i * D)], size_t(D), w.enorm.data(), c.norm_eps, &en[size_t(i * D)]);
    p_->linear_fp8(en.data(), n, w.e_proj, ep.data());
    std::vector<float> hn(size_t(n * hc * D)), hp(hn.size());
    const float *h = ht.as<const float>();
    for (int64_t i = 0; i < n * hc; ++i) core::rms_norm(h + i * D, size_t(D), w.hnorm.data(), c.norm_eps, &hn[size_t(i * D)]);
    p_->linear_fp8(hn.data(), n * hc, w.h_proj, hp.data());
    float *o = out.as<float>();
    for (int64_t i = 0; i < n; ++i)
        for (int k = 0; k < hc; ++k)
            for (int64_t j = 0; j < D; ++j)
                o[(i * hc + k) * D + j] = core::round_bf16(ep[size_t(i * D + j)] + hp[size_t((i * hc + k) * D + j)]);
}

}  // namespace dsv4::backend::cpu
