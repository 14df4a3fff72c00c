#include "model/weights.h"

#include <cmath>
#include <fmt/ranges.h>

#include "core/error.h"
#include "core/log.h"

namespace dsv4::model {
namespace {
using core::DType;
using Shape = std::vector<int64_t>;

int64_t ceil128(int64_t x) { return (x + 127) / 128; }

enum class Problem { missing, dtype, shape, value };

class Binder {
public:
    Binder(const io::Checkpoint &ckpt, bool check_values) : ckpt_(ckpt), check_values_(check_values) {}

    const io::TensorView *get(const std::string &name, DType dtype, const Shape &shape) {
        const io::TensorView *t = ckpt_.find(name);
        if (!t) return note(Problem::missing, fmt::format("{}: missing", name));
        if (t->dtype != dtype)
            return note(Problem::dtype, fmt::format("{}: {}: dtype {}, expected {}", *t->file, name,
                                                    core::dtype_name(t->dtype), core::dtype_name(dtype)));
        if (t->shape != shape)
            return note(Problem::shape, fmt::format("{}: {}: shape {}, expected [{}]", *t->file, name, t->shape_string(),
                                                    fmt::join(shape, ", ")));
        return t;
    }
    std::vector<float> f32(const std::string &name, const Shape &shape) {
        return to_floats(get(name, DType::F32, shape), name);
    }
    std::vector<float> bf16_vector(const std::string &name, int64_t n) {
        return to_floats(get(name, DType::BF16, {n}), name);
    }
    Bf16Matrix bf16(const std::string &name, int64_t rows, int64_t cols) {
        const io::TensorView *t = get(name, DType::BF16, {rows, cols});
        return {t ? t->data : nullptr, rows, cols};
    }
    Fp8Matrix fp8(const std::string &prefix, int64_t rows, int64_t cols) {
        const io::TensorView *w = get(prefix + ".weight", DType::F8_E4M3, {rows, cols});
        const io::TensorView *s = get(prefix + ".scale", DType::F8_E8M0, {ceil128(rows), ceil128(cols)});
        return {w ? w->data : nullptr, s ? s->data : nullptr, rows, cols};
    }
    Fp4Matrix fp4(const std::string &prefix, int64_t rows, int64_t cols) {
        if (cols % 32) {
            note(Problem::shape, fmt::format("{}.weight: FP4 input dim {} is not a multiple of 32", prefix, cols));
            return {};
        }
        const io::TensorView *w = get(prefix + ".weight", DType::I8, {rows, cols / 2});
        const io::TensorView *s = get(prefix + ".scale", DType::F8_E8M0, {rows, cols / 32});
        return {w ? w->data : nullptr, s ? s->data : nullptr, rows, cols};
    }
    std::vector<int32_t> i64_as_i32(const std::string &name, const Shape &shape, int64_t limit) {
        const io::TensorView *t = get(name, DType::I64, shape);
        std::vector<int32_t> out;
        if (!t) return out;
        out.resize(size_t(t->numel()));
        for (size_t i = 0; i < out.size(); ++i) {
            int64_t v;
            std::memcpy(&v, t->data + 8 * i, 8);
            if (v < 0 || v >= limit) {
                note(Problem::value, fmt::format("{}: {}: entry {} = {} outside [0, {})", *t->file, name, i, v, limit));
                return {};
            }
            out[i] = int32_t(v);
        }
        return out;
    }

    void finish(const std::string &dir) const {
        if (problems_.empty()) return;
        bool same = true;
        for (const auto &p : problems_) same = same && p.first == problems_[0].first;
        dsv4_status status = !same ? DSV4_ERR_WEIGHTS_MISMATCH
                             : problems_[0].first == Problem::missing ? DSV4_ERR_WEIGHTS_MISSING
                             : problems_[0].first == Problem::dtype   ? DSV4_ERR_WEIGHTS_DTYPE
                             : problems_[0].first == Problem::shape   ? DSV4_ERR_WEIGHTS_SHAPE
                                                                      : DSV4_ERR_WEIGHTS;
        std::string message = fmt::format("{}: {} tensor problem(s):", dir, problems_.size());
        constexpr size_t kListed = 32;
        for (size_t i = 0; i < problems_.size() && i < kListed; ++i) message += "\n  " + problems_[i].second;
        if (problems_.size() > kListed) message += fmt::format("\n  ... and {} more", problems_.size() - kListed);
        throw Error(status, message);
    }

private:
    const io::TensorView *note(Problem p, std::string message) {
        problems_.emplace_back(p, std::move(message));
        return nullptr;
    }
    std::vector<float> to_floats(const io::TensorView *t, const std::string &name) {
        std::vector<float> out;
        if (!t) return out;
        out.resize(size_t(t->numel()));
        for (size_t i = 0; i < out.size(); ++i) {
            if (t->dtype == DType::BF16) out[i] = load_bf16(t->data, i);
            else std::memcpy(&out[i], t->data + 4 * i, 4);
            if (check_values_ && !std::isfinite(out[i])) {
                note(Problem::value, fmt::format("{}: {}: element {} is not finite", *t->file, name, i));
                return {};
            }
        }
        return out;
    }

    const io::Checkpoint &ckpt_;
    bool check_values_;
    std::vector<std::pair<Problem, std::string>> problems_;
};

HcWeights bind_hc(Binder &b, const std::string &prefix, int64_t mix, int64_t width, int64_t n_scale) {
    return {b.f32(prefix + "_fn", {mix, width}), b.f32(prefix + "_base", {mix}), b.f32(prefix + "_scale", {n_scale})};
}

CompressorWeights bind_compressor(Binder &b, const std::string &prefix, int ratio, int64_t out_dim, int64_t dim) {
    int64_t width = (ratio == 4 ? 2 : 1) * out_dim;
    return {b.bf16(prefix + ".wkv.weight", width, dim), b.bf16(prefix + ".wgate.weight", width, dim),
            b.f32(prefix + ".ape", {ratio, width}), b.bf16_vector(prefix + ".norm.weight", out_dim)};
}

io::ExpertFormat detect_expert_format(const io::ModelConfig &c, const io::Checkpoint &ckpt) {
    if (c.expert_format) return *c.expert_format;
    // Older root configs omit expert_dtype (spec §15.3): the stored dtype decides.
    const io::TensorView *t = ckpt.find("layers.0.ffn.experts.0.w1.weight");
    const io::ExpertFormat f = t && t->dtype == DType::F8_E4M3 ? io::ExpertFormat::fp8 : io::ExpertFormat::fp4;
    core::log(DSV4_LOG_LEVEL_INFO, "config.json has no expert_dtype: routed experts read as {} from the stored dtype",
              f == io::ExpertFormat::fp8 ? "FP8" : "FP4");
    return f;
}

}  // namespace

ModelWeights bind_weights(io::ModelConfig &c, const io::Checkpoint &ckpt, bool check_values) {
    Binder b(ckpt, check_values);
    ModelWeights w;
    c.expert_format = w.expert_format = detect_expert_format(c, ckpt);
    const int64_t D = c.dim, hcD = int64_t(c.hc_mult) * D, mix = c.hc_mix_dim();
    const int64_t V = c.vocab_size, H = c.n_heads, d = c.head_dim, I = c.moe_inter_dim;
    w.embed = b.bf16("embed.weight", V, D);
    w.head = b.bf16("head.weight", V, D);
    w.norm = b.bf16_vector("norm.weight", D);
    w.hc_head = bind_hc(b, "hc_head", c.hc_mult, hcD, 1);

    for (size_t il = 0; il < c.layers.size(); ++il) {
        const io::LayerSpec &spec = c.layers[il];
        const std::string p = spec.mtp ? fmt::format("mtp.{}.", il - size_t(c.n_layers)) : fmt::format("layers.{}.", il);
        LayerWeights &l = w.layers.emplace_back();
        l.attn_norm = b.bf16_vector(p + "attn_norm.weight", D);
        l.ffn_norm = b.bf16_vector(p + "ffn_norm.weight", D);
        l.hc_attn = bind_hc(b, p + "hc_attn", mix, hcD, 3);
        l.hc_ffn = bind_hc(b, p + "hc_ffn", mix, hcD, 3);

        l.attn_sink = b.f32(p + "attn.attn_sink", {H});
        l.wq_a = b.fp8(p + "attn.wq_a", c.q_lora_rank, D);
        l.q_norm = b.bf16_vector(p + "attn.q_norm.weight", c.q_lora_rank);
        l.wq_b = b.fp8(p + "attn.wq_b", H * d, c.q_lora_rank);
        l.wkv = b.fp8(p + "attn.wkv", d, D);
        l.kv_norm = b.bf16_vector(p + "attn.kv_norm.weight", d);
        l.wo_a = b.fp8(p + "attn.wo_a", int64_t(c.o_groups) * c.o_lora_rank, H * d / c.o_groups);
        l.wo_b = b.fp8(p + "attn.wo_b", D, int64_t(c.o_groups) * c.o_lora_rank);
        if (spec.compress_ratio) l.compressor = bind_compressor(b, p + "attn.compressor", spec.compress_ratio, d, D);
        if (spec.compress_ratio == 4) {
            l.index_wq_b = b.fp8(p + "attn.indexer.wq_b", int64_t(c.index_n_heads) * c.index_head_dim, c.q_lora_rank);
            l.index_weights_proj = b.bf16(p + "attn.indexer.weights_proj.weight", c.index_n_heads, D);
            l.index_compressor = bind_compressor(b, p + "attn.indexer.compressor", 4, c.index_head_dim, D);
        }

        l.gate = b.bf16(p + "ffn.gate.weight", c.n_routed_experts, D);
        if (spec.hash_routed)
            l.tid2eid = b.i64_as_i32(p + "ffn.gate.tid2eid", {V, c.n_activated_experts}, c.n_routed_experts);
        else
            l.gate_bias = b.f32(p + "ffn.gate.bias", {c.n_routed_experts});
        for (int e = 0; e < c.n_routed_experts; ++e) {
            const std::string ep = fmt::format("{}ffn.experts.{}.", p, e);
            ExpertWeights &x = l.experts.emplace_back();
            auto bind = [&](ExpertMatrix &m, const char *n, int64_t rows, int64_t cols) {
                m.format = w.expert_format;
                if (m.format == io::ExpertFormat::fp4) m.fp4 = b.fp4(ep + n, rows, cols);
                else m.fp8 = b.fp8(ep + n, rows, cols);
            };
            bind(x.w1, "w1", I, D);
            bind(x.w3, "w3", I, D);
            bind(x.w2, "w2", D, I);
        }
        l.shared = {b.fp8(p + "ffn.shared_experts.w1", I, D), b.fp8(p + "ffn.shared_experts.w2", D, I),
                    b.fp8(p + "ffn.shared_experts.w3", I, D)};
        if (spec.mtp) {
            l.e_proj = b.fp8(p + "e_proj", D, D);
            l.h_proj = b.fp8(p + "h_proj", D, D);
            l.enorm = b.bf16_vector(p + "enorm.weight", D);
            l.hnorm = b.bf16_vector(p + "hnorm.weight", D);
            l.norm = b.bf16_vector(p + "norm.weight", D);
            l.hc_head = bind_hc(b, p + "hc_head", c.hc_mult, hcD, 1);
        }
    }
    b.finish(ckpt.dir());
    return w;
}

}  // namespace dsv4::model
