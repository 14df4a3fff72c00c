// The MoE sub-layer (spec §8): sqrt-softplus router with bias-for-selection or hash routing, SwiGLU experts
// with the clamp, routed outputs accumulated in fp32 in expert-id order, plus the shared expert.
#pragma once
#include <cstdint>

#include "backend/backend.h"
#include "io/config.h"
#include "model/observer.h"
#include "model/weights.h"

namespace dsv4::moe {

struct MoeContext {
    const io::ModelConfig &config;
    const io::LayerSpec &spec;
    const model::LayerWeights &weights;
    backend::Backend &backend;
    const model::Observer *observer;
    int layer;
};

// x: ffn_norm output, bf16 values [N, D]; tokens: the input token ids (hash routing); y: bf16 values [N, D].
void moe_forward(const MoeContext &ctx, const float *x, const int32_t *tokens, int64_t N, float *y);

// Router only (exposed for tests): scores [N, E] (sqrt(softplus)), ids/weights [N, k].
void route(const MoeContext &ctx, const float *x, const int32_t *tokens, int64_t N, float *scores, int32_t *ids,
           float *weights);

}  // namespace dsv4::moe
