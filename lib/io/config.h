// config.json (Hugging Face keys) → one typed, validated model configuration (spec §1). Every architecture
// value comes from the file: the reference code's debug defaults are never used.
#pragma once
#include <dsv4/dsv4.h>

#include <optional>

#include "core/matrix.h"
#include <string>
#include <vector>

namespace dsv4::io {

using core::ExpertFormat;

struct LayerSpec {
    int compress_ratio = 0;    // 0 window-only, 4 CSA, 128 HCA
    dsv4_layer_kind kind = DSV4_LAYER_KIND_WINDOW;
    bool hash_routed = false;  // MoE routed by tid2eid[token]
    bool mtp = false;          // an MTP block, after the main layers
    float rope_theta = 0;      // base of this layer's RoPE table
    bool yarn = false;         // YaRN applies (compressed layers only, spec §4.4)
};

struct ModelConfig {
    int vocab_size = 0, dim = 0, moe_inter_dim = 0;
    int n_layers = 0, n_mtp_layers = 0, n_hash_layers = 0;
    int n_heads = 0, head_dim = 0, rope_head_dim = 0, q_lora_rank = 0;
    int o_groups = 0, o_lora_rank = 0, window_size = 0;
    int n_routed_experts = 0, n_shared_experts = 0, n_activated_experts = 0;
    float route_scale = 0, swiglu_limit = 0, norm_eps = 0;
    float rope_theta = 0, compress_rope_theta = 0, rope_factor = 0, beta_fast = 0, beta_slow = 0;
    int original_seq_len = 0, max_position_embeddings = 0;
    int index_n_heads = 0, index_head_dim = 0, index_topk = 0;
    int hc_mult = 0, hc_sinkhorn_iters = 0;
    float hc_eps = 0;
    int bos_token_id = 0, eos_token_id = 1;
    std::optional<ExpertFormat> expert_format;  // absent from config.json: taken from the checkpoint dtype
    std::vector<LayerSpec> layers;              // n_layers main layers, then n_mtp_layers MTP blocks

    int nope_head_dim() const { return head_dim - rope_head_dim; }
    int hc_mix_dim() const { return (2 + hc_mult) * hc_mult; }
};

// Parses and validates; throws dsv4::Error (DSV4_ERR_FORMAT_JSON, DSV4_ERR_CONFIG_MISSING_FIELD,
// DSV4_ERR_CONFIG_INVALID_FIELD, DSV4_ERR_CONFIG_INCONSISTENT) naming `source` and the field.
ModelConfig parse_config(const std::string &json_text, const std::string &source = "config.json");

}  // namespace dsv4::io
