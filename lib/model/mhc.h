// Manifold-constrained hyper-connections (spec §3): collapse the hc residual streams into one branch input
// (hc_pre, with the Sinkhorn-normalised stream mixing) and expand the branch output back (hc_post).
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "model/weights.h"

namespace dsv4::model {

struct HcMix {
    std::vector<float> pre;   // fp32 [N, hc]
    std::vector<float> post;  // fp32 [N, hc]
    std::vector<float> comb;  // fp32 [N, hc, hc]; comb[j][k] moves stream j into stream k
};

// h: bf16 values [N, hc, D]; x: branch input, bf16 values [N, D].
HcMix hc_pre(backend::Backend &be, const HcWeights &w, const float *h, int64_t N, int hc, int D, float norm_eps,
             float hc_eps, int sinkhorn_iters, float *x);
// out[k] = bf16(post_k·y + Σ_j comb[j][k]·h[j]); y bf16 [N, D], h and out bf16 [N, hc, D].
void hc_post(const HcMix &mix, const float *y, const float *h, int64_t N, int hc, int D, float *out);
// Head collapse (spec §3.4): x = bf16(Σ_j (sigmoid(scale·μ_j + base_j) + eps)·h_j).
void hc_head(backend::Backend &be, const HcWeights &w, const float *h, int64_t N, int hc, int D, float norm_eps,
             float hc_eps, float *x);

}  // namespace dsv4::model
