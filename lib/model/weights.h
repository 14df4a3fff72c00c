// Typed, zero-copy views of every tensor the config implies (spec §10.4), bound and checked at load time.
// The binding code is the single source of truth for tensor names, dtypes and shapes.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/huge_buffer.h"
#include "core/matrix.h"
#include "io/checkpoint.h"
#include "io/config.h"

namespace dsv4::model {
using core::Bf16Matrix;
using core::ExpertMatrix;
using core::Fp4Matrix;
using core::Fp8Matrix;
using core::load_bf16;

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
                                       // them), used in their exact FP8 form (Backend::linear_dequant_fp8)
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

// Binds every tensor of `config` in `checkpoint`. All missing tensors and dtype/shape mismatches are
// collected and reported at once (DSV4_ERR_WEIGHTS_*); resolves config.expert_format when it is absent.
ModelWeights bind_weights(io::ModelConfig &config, const io::Checkpoint &checkpoint, bool check_values);

// Copies every FP4 and FP8 matrix of `weights` that the CPU kernels' packed layout covers (backend/cpu/packed.h)
// into one buffer and points the matrices at it (their checkpoint views stay); the buffer must outlive them.
// The copy has the size of the tensors it covers: nearly the whole checkpoint.
core::HugeBuffer repack_weights(ModelWeights &weights);

}  // namespace dsv4::model
