// The typed weights of DeepSeek-V4 (spec §10.4), as a device computes with them: each matrix a view of the mapped
// checkpoint, or of the copy the owning device prepared (backend::Device::prepare). model/weights.cpp binds them.
#pragma once
#include <cstdint>
#include <vector>

#include "core/matrix.h"
#include "io/config.h"

namespace dsv4::core {

struct CompressorWeights {
    Bf16Matrix wkv, wgate;    // [κc, D]
    std::vector<float> ape;   // [m, κc]
    std::vector<float> norm;  // [c]
};

struct HcWeights {
    std::vector<float> fn;     // [mix, hc·D]
    std::vector<float> base;   // [mix]
    std::vector<float> scale;  // [3] (block) or [1] (head)
};

struct ExpertWeights {
    ExpertMatrix w1, w2, w3;
};
struct SharedExpertWeights {
    Fp8Matrix w1, w2, w3;
};

struct LayerWeights {
    std::vector<float> attn_norm, ffn_norm;
    HcWeights hc_attn, hc_ffn;
    // attention
    std::vector<float> attn_sink;      // [H]
    Fp8Matrix wq_a, wq_b, wkv, wo_b;
    std::vector<float> q_norm, kv_norm;
    Fp8Matrix wo_a;                    // [G·R_o, H·d/G]: bf16 weights in the reference (convert.py dequantises
                                       // them), used in their exact FP8 form (the output_projection step)
    CompressorWeights compressor;      // ratio != 0
    Fp8Matrix index_wq_b;              // ratio 4
    Bf16Matrix index_weights_proj;     // ratio 4
    CompressorWeights index_compressor;
    // MoE
    Bf16Matrix gate;                   // [E, D]
    std::vector<float> gate_bias;      // [E] (score-routed layers)
    std::vector<int32_t> tid2eid;      // [vocab, k] (hash layers)
    std::vector<ExpertWeights> experts;
    SharedExpertWeights shared;
    // MTP block only
    Fp8Matrix e_proj, h_proj;
    std::vector<float> enorm, hnorm, norm;
    HcWeights hc_head;
};

struct ModelWeights {
    Bf16Matrix embed, head;  // [vocab, D]
    std::vector<float> norm;
    HcWeights hc_head;
    std::vector<LayerWeights> layers;  // main layers, then MTP blocks
    io::ExpertFormat expert_format = io::ExpertFormat::fp4;
};

}  // namespace dsv4::core
