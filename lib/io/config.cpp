#include "io/config.h"

#include <cmath>

#include "core/error.h"
#include "io/json.h"

namespace dsv4::io {
namespace {
using nlohmann::json;

class Reader {
public:
    Reader(const json &root, const std::string &source) : root_(root), source_(source) {}

    const json &require(const json &obj, const std::string &key, const std::string &path) const {
        auto it = obj.find(key);
        if (it == obj.end() || it->is_null())
            fail(DSV4_ERR_CONFIG_MISSING_FIELD, "{}: field '{}' is missing", source_, path);
        return *it;
    }
    int integer(const std::string &key, int min_value, const json *obj = nullptr, std::string path = "") const {
        if (path.empty()) path = key;
        const json &v = require(obj ? *obj : root_, key, path);
        if (!v.is_number_integer())
            fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field '{}' must be an integer, got {}", source_, path, v.dump());
        int64_t x = v.get<int64_t>();
        if (x < min_value || x > (int64_t(1) << 30))
            fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field '{}' = {} is out of range (>= {})", source_, path, x, min_value);
        return int(x);
    }
    float number(const std::string &key, const json *obj = nullptr, std::string path = "") const {
        if (path.empty()) path = key;
        const json &v = require(obj ? *obj : root_, key, path);
        if (!v.is_number() || !std::isfinite(v.get<double>()))
            fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field '{}' must be a finite number, got {}", source_, path, v.dump());
        return v.get<float>();
    }
    std::string string(const std::string &key, const json *obj = nullptr, std::string path = "") const {
        if (path.empty()) path = key;
        const json &v = require(obj ? *obj : root_, key, path);
        if (!v.is_string())
            fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field '{}' must be a string, got {}", source_, path, v.dump());
        return v.get<std::string>();
    }
    void expect_string(const std::string &key, const std::string &want, const json *obj = nullptr,
                       std::string path = "") const {
        if (path.empty()) path = key;
        std::string got = string(key, obj, path);
        if (got != want)
            fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field '{}' = \"{}\" is not supported (expected \"{}\")", source_,
                 path, got, want);
    }
    [[noreturn]] void inconsistent(const std::string &what) const {
        fail(DSV4_ERR_CONFIG_INCONSISTENT, "{}: {}", source_, what);
    }
    const std::string &source() const { return source_; }

private:
    const json &root_;
    const std::string &source_;
};

}  // namespace

ModelConfig parse_config(const std::string &json_text, const std::string &source) {
    json root = parse_json(json_text, source);
    if (!root.is_object()) fail(DSV4_ERR_FORMAT_JSON, "{}: not a JSON object", source);
    Reader r(root, source);
    ModelConfig c;

    if (root.contains("model_type")) r.expect_string("model_type", "deepseek_v4");
    c.vocab_size = r.integer("vocab_size", 1);
    c.dim = r.integer("hidden_size", 1);
    c.moe_inter_dim = r.integer("moe_intermediate_size", 1);
    c.n_layers = r.integer("num_hidden_layers", 1);
    c.n_mtp_layers = r.integer("num_nextn_predict_layers", 0);
    c.n_hash_layers = r.integer("num_hash_layers", 0);
    c.n_heads = r.integer("num_attention_heads", 1);
    if (root.contains("num_key_value_heads") && r.integer("num_key_value_heads", 1) != 1)
        fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field 'num_key_value_heads' must be 1 (one shared KV head)", source);
    c.head_dim = r.integer("head_dim", 1);
    c.rope_head_dim = r.integer("qk_rope_head_dim", 2);
    c.q_lora_rank = r.integer("q_lora_rank", 1);
    c.o_groups = r.integer("o_groups", 1);
    c.o_lora_rank = r.integer("o_lora_rank", 1);
    c.window_size = r.integer("sliding_window", 1);
    c.n_routed_experts = r.integer("n_routed_experts", 1);
    c.n_shared_experts = r.integer("n_shared_experts", 1);
    c.n_activated_experts = r.integer("num_experts_per_tok", 1);
    c.route_scale = r.number("routed_scaling_factor");
    c.swiglu_limit = r.number("swiglu_limit");
    c.norm_eps = r.number("rms_norm_eps");
    c.rope_theta = r.number("rope_theta");
    c.compress_rope_theta = r.number("compress_rope_theta");
    c.max_position_embeddings = r.integer("max_position_embeddings", 1);
    c.index_n_heads = r.integer("index_n_heads", 1);
    c.index_head_dim = r.integer("index_head_dim", 1);
    c.index_topk = r.integer("index_topk", 1);
    c.hc_mult = r.integer("hc_mult", 1);
    c.hc_sinkhorn_iters = r.integer("hc_sinkhorn_iters", 1);
    c.hc_eps = r.number("hc_eps");
    if (root.contains("bos_token_id")) c.bos_token_id = r.integer("bos_token_id", 0);
    if (root.contains("eos_token_id")) c.eos_token_id = r.integer("eos_token_id", 0);
    r.expect_string("scoring_func", "sqrtsoftplus");
    if (root.contains("hidden_act")) r.expect_string("hidden_act", "silu");

    const json &rope = r.require(root, "rope_scaling", "rope_scaling");
    if (!rope.is_object()) fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field 'rope_scaling' must be an object", source);
    std::string rope_type = rope.contains("type") ? r.string("type", &rope, "rope_scaling.type")
                                                  : r.string("rope_type", &rope, "rope_scaling.rope_type");
    if (rope_type != "yarn")
        fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field 'rope_scaling.type' = \"{}\" is not supported (expected \"yarn\")",
             source, rope_type);
    c.rope_factor = r.number("factor", &rope, "rope_scaling.factor");
    c.original_seq_len = r.integer("original_max_position_embeddings", 1, &rope,
                                   "rope_scaling.original_max_position_embeddings");
    c.beta_fast = r.number("beta_fast", &rope, "rope_scaling.beta_fast");
    c.beta_slow = r.number("beta_slow", &rope, "rope_scaling.beta_slow");

    const json &quant = r.require(root, "quantization_config", "quantization_config");
    if (!quant.is_object())
        fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field 'quantization_config' must be an object", source);
    r.expect_string("quant_method", "fp8", &quant, "quantization_config.quant_method");
    r.expect_string("fmt", "e4m3", &quant, "quantization_config.fmt");
    r.expect_string("scale_fmt", "ue8m0", &quant, "quantization_config.scale_fmt");
    const json &block = r.require(quant, "weight_block_size", "quantization_config.weight_block_size");
    if (block != json::array({128, 128}))
        fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field 'quantization_config.weight_block_size' = {} is not supported "
             "(expected [128, 128])", source, block.dump());

    if (root.contains("expert_dtype")) {
        std::string e = r.string("expert_dtype");
        if (e == "fp4") c.expert_format = ExpertFormat::fp4;
        else if (e == "fp8") c.expert_format = ExpertFormat::fp8;
        else fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field 'expert_dtype' = \"{}\" (expected \"fp4\" or \"fp8\")", source, e);
    }

    // Cross-field consistency.
    if (c.rope_head_dim % 2 || c.rope_head_dim >= c.head_dim)
        r.inconsistent(fmt::format("'qk_rope_head_dim' = {} must be even and below 'head_dim' = {}", c.rope_head_dim, c.head_dim));
    if (c.nope_head_dim() % 64)
        r.inconsistent(fmt::format("'head_dim' - 'qk_rope_head_dim' = {} must be a multiple of 64 (FP8 KV blocks)", c.nope_head_dim()));
    if (c.n_heads % c.o_groups)
        r.inconsistent(fmt::format("'num_attention_heads' = {} is not divisible by 'o_groups' = {}", c.n_heads, c.o_groups));
    if (c.n_activated_experts > c.n_routed_experts)
        r.inconsistent(fmt::format("'num_experts_per_tok' = {} exceeds 'n_routed_experts' = {}", c.n_activated_experts, c.n_routed_experts));
    if (c.n_shared_experts != 1)
        r.inconsistent(fmt::format("'n_shared_experts' = {}: DeepSeek-V4 has exactly one shared expert", c.n_shared_experts));
    if (c.n_hash_layers > c.n_layers)
        r.inconsistent(fmt::format("'num_hash_layers' = {} exceeds 'num_hidden_layers' = {}", c.n_hash_layers, c.n_layers));
    if ((c.index_head_dim & (c.index_head_dim - 1)) || c.index_head_dim < c.rope_head_dim || c.index_head_dim % 32)
        r.inconsistent(fmt::format("'index_head_dim' = {} must be a power of two, a multiple of 32 and >= 'qk_rope_head_dim'", c.index_head_dim));
    if (c.bos_token_id >= c.vocab_size || c.eos_token_id >= c.vocab_size)
        r.inconsistent("'bos_token_id' / 'eos_token_id' must be below 'vocab_size'");

    const json &ratios = r.require(root, "compress_ratios", "compress_ratios");
    if (!ratios.is_array())
        fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field 'compress_ratios' must be an array", source);
    size_t expected = size_t(c.n_layers + c.n_mtp_layers);
    if (ratios.size() != expected)
        r.inconsistent(fmt::format("'compress_ratios' has {} entries, expected 'num_hidden_layers' + "
                                   "'num_nextn_predict_layers' = {}", ratios.size(), expected));
    for (size_t i = 0; i < ratios.size(); ++i) {
        const json &v = ratios[i];
        int m = v.is_number_integer() ? v.get<int>() : -1;
        if (m != 0 && m != 4 && m != 128)
            fail(DSV4_ERR_CONFIG_INVALID_FIELD, "{}: field 'compress_ratios[{}]' = {} (expected 0, 4 or 128)", source, i, v.dump());
        LayerSpec l;
        l.compress_ratio = m;
        l.kind = m == 0 ? DSV4_LAYER_KIND_WINDOW : m == 4 ? DSV4_LAYER_KIND_CSA : DSV4_LAYER_KIND_HCA;
        l.mtp = int(i) >= c.n_layers;
        l.hash_routed = !l.mtp && int(i) < c.n_hash_layers;
        l.rope_theta = m ? c.compress_rope_theta : c.rope_theta;
        l.yarn = m != 0;
        if (l.mtp && m != 0)
            r.inconsistent(fmt::format("'compress_ratios[{}]' = {}: MTP blocks are window-only", i, m));
        c.layers.push_back(l);
    }
    return c;
}

}  // namespace dsv4::io
