#include "core/scratch.h"
#include "model/model.h"

#include <algorithm>

#include "backend/cpu/isa.h"
#include "core/error.h"
#include "core/log.h"
#include "core/ops.h"
#include "io/mapped_file.h"
#include "model/mhc.h"
#include "moe/moe.h"

namespace dsv4::model {

std::unique_ptr<Model> Model::load(const std::string &dir, const LoadOptions &options) {
    std::unique_ptr<Model> m(new Model());
    m->config_ = io::parse_config(io::read_text_file(dir + "/config.json"), "config.json");
    m->checkpoint_ = std::make_unique<io::Checkpoint>(dir, options.use_mmap, options.progress, options.progress_user);
    m->weights_ = bind_weights(m->config_, *m->checkpoint_, options.check_values);
    if (options.repack_weights && backend::cpu::selected_isa() >= backend::cpu::Isa::avx512_bf16) {
        m->packed_weights_ = repack_weights(m->weights_);
        core::log(DSV4_LOG_LEVEL_INFO, "{}: {} bytes of FP4/FP8 weights repacked for the CPU kernels", dir,
                  m->packed_weights_.size());
    }
    const io::ModelConfig &c = m->config_;
    for (const io::LayerSpec &l : c.layers)
        m->ropes_.emplace_back(c.rope_head_dim, l.rope_theta, l.yarn, c.rope_factor, c.original_seq_len, c.beta_fast,
                               c.beta_slow);
    std::string trimmed = dir;
    while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
    m->name_ = io::base_name(trimmed);
    // Fingerprint for state blobs: FNV-1a over tensor names, dtypes, shapes and sizes.
    uint64_t hash = 1469598103934665603ull;
    auto mix = [&](const void *p, size_t n) {
        for (size_t i = 0; i < n; ++i) hash = (hash ^ static_cast<const uint8_t *>(p)[i]) * 1099511628211ull;
    };
    std::vector<const io::TensorView *> all;
    for (const auto &shard : m->checkpoint_->shards())
        for (const io::TensorView &t : shard->tensors()) all.push_back(&t);
    std::sort(all.begin(), all.end(), [](auto *a, auto *b) { return a->name < b->name; });
    for (const io::TensorView *t : all) {
        mix(t->name.data(), t->name.size());
        mix(&t->dtype, sizeof t->dtype);
        mix(t->shape.data(), t->shape.size() * sizeof(int64_t));
    }
    m->fingerprint_ = hash;
    return m;
}

std::vector<kvcache::LayerGeometry> Model::cache_geometry(int rewind) const {
    return kvcache::cache_geometry(config_, rewind);
}

// One residual step of a block (spec §2): hc_pre collapses the streams, the norm, the branch, hc_post expands.
template <typename Branch>
void Model::residual_step(backend::Backend &be, int layer, const char *tag, const HcWeights &hc_weights,
                          const std::vector<float> &norm, const float *h, int64_t N, float *out, const char *out_name,
                          const Observer *obs, Branch &&branch) const {
    const io::ModelConfig &c = config_;
    const int hc = c.hc_mult, D = c.dim;
    const std::string t(tag);
    core::FloatBuffer x(static_cast<size_t>(N * D)), xn(static_cast<size_t>(N * D)), y(static_cast<size_t>(N * D));
    HcMix mix = hc_pre(be, hc_weights, h, N, hc, D, c.norm_eps, c.hc_eps, c.hc_sinkhorn_iters, x.data());
    observe(obs, "hc_" + t + "_pre", layer, DSV4_DTYPE_F32, N, hc, mix.pre.data());
    observe(obs, "hc_" + t + "_post", layer, DSV4_DTYPE_F32, N, hc, mix.post.data());
    observe(obs, "hc_" + t + "_comb", layer, DSV4_DTYPE_F32, N, hc * hc, mix.comb.data());
    observe(obs, t + "_in", layer, DSV4_DTYPE_BF16, N, D, x.data());
    for (int64_t i = 0; i < N; ++i) core::rms_norm(&x[size_t(i * D)], size_t(D), norm.data(), c.norm_eps, &xn[size_t(i * D)]);
    observe(obs, t + "_norm", layer, DSV4_DTYPE_BF16, N, D, xn.data());
    branch(xn.data(), y.data());
    observe(obs, t + "_out", layer, DSV4_DTYPE_BF16, N, D, y.data());
    hc_post(mix, y.data(), h, N, hc, D, out);
    observe(obs, out_name, layer, DSV4_DTYPE_BF16, N, int64_t(hc) * D, out);
}

void Model::attention_sublayer(backend::Backend &be, int layer, const float *h, int64_t N,
                               const std::vector<attention::Span> &spans, float *out, const Observer *obs) const {
    const LayerWeights &w = weights_.layers[size_t(layer)];
    attention::LayerContext ctx{config_, config_.layers[size_t(layer)], w, ropes_[size_t(layer)], be, obs, layer};
    residual_step(be, layer, "attn", w.hc_attn, w.attn_norm, h, N, out, "h_mid", obs,
                  [&](const float *x, float *y) { attention::attention_forward(ctx, x, N, spans, y); });
}

void Model::ffn_sublayer(backend::Backend &be, int layer, const float *h, const int32_t *tokens, int64_t N, float *out,
                         const Observer *obs) const {
    const LayerWeights &w = weights_.layers[size_t(layer)];
    moe::MoeContext ctx{config_, config_.layers[size_t(layer)], w, be, obs, layer};
    residual_step(be, layer, "ffn", w.hc_ffn, w.ffn_norm, h, N, out, "h_out", obs,
                  [&](const float *x, float *y) { moe::moe_forward(ctx, x, tokens, N, y); });
}

bool Model::forward(backend::Backend &be, const int32_t *tokens, int64_t N, const std::vector<SequenceSpan> &spans,
                    core::FloatBuffer &h, const Observer *obs, const std::function<bool()> &should_abort) const {
    const io::ModelConfig &c = config_;
    const int hc = c.hc_mult, D = c.dim;
    const core::ScratchScope reuse;  // the layers' temporaries reuse each other's memory (and the caller's pool)
    h.assign(size_t(N) * hc * D, 0.0f);
    for (int64_t i = 0; i < N; ++i)
        for (int k = 0; k < hc; ++k)
            for (int j = 0; j < D; ++j) h[size_t((i * hc + k) * D + j)] = core::load_bf16(weights_.embed.w, size_t(tokens[i]) * D + j);
    core::FloatBuffer mid(h.size());
    std::vector<attention::Span> layer_spans(spans.size());
    for (int il = 0; il < c.n_layers; ++il) {
        if (should_abort && should_abort()) return false;
        for (size_t s = 0; s < spans.size(); ++s)
            layer_spans[s] = {spans[s].row0, spans[s].n, spans[s].start_pos, &spans[s].cache->layers[size_t(il)]};
        attention_sublayer(be, il, h.data(), N, layer_spans, mid.data(), obs);
        ffn_sublayer(be, il, mid.data(), tokens, N, h.data(), obs);
    }
    return !(should_abort && should_abort());
}

void Model::logits(backend::Backend &be, const float *streams, const std::vector<int64_t> &rows, float *out) const {
    const io::ModelConfig &c = config_;
    const int hc = c.hc_mult, D = c.dim;
    const int64_t n = int64_t(rows.size());
    std::vector<float> sel(size_t(n) * hc * D), x(static_cast<size_t>(n * D)), xn(static_cast<size_t>(n * D));
    for (int64_t r = 0; r < n; ++r) std::copy_n(streams + rows[size_t(r)] * hc * D, hc * D, &sel[size_t(r * hc * D)]);
    hc_head(be, weights_.hc_head, sel.data(), n, hc, D, c.norm_eps, c.hc_eps, x.data());
    for (int64_t r = 0; r < n; ++r) core::rms_norm(&x[size_t(r * D)], size_t(D), weights_.norm.data(), c.norm_eps, &xn[size_t(r * D)]);
    be.linear_f32(xn.data(), n, weights_.head, out);
}

void Model::mtp_logits(backend::Backend &be, const float *streams, const int32_t *next_tokens, int64_t n,
                       int64_t start_pos, kvcache::LayerCache &cache, float *out) const {
    const io::ModelConfig &c = config_;
    if (c.n_mtp_layers == 0) fail(DSV4_ERR_UNSUPPORTED, "{}: the checkpoint has no MTP block", name_);
    const int layer = c.n_layers;  // the first MTP block
    const LayerWeights &w = weights_.layers[size_t(layer)];
    const int hc = c.hc_mult, D = c.dim;
    // x = e_proj(enorm(embed(next))) broadcast to the streams + h_proj(hnorm(h)) per stream (spec §9.3).
    std::vector<float> e(static_cast<size_t>(n * D)), en(static_cast<size_t>(n * D)), ep(static_cast<size_t>(n * D));
    for (int64_t i = 0; i < n; ++i)
        for (int j = 0; j < D; ++j) e[size_t(i * D + j)] = core::load_bf16(weights_.embed.w, size_t(next_tokens[i]) * D + j);
    for (int64_t i = 0; i < n; ++i) core::rms_norm(&e[size_t(i * D)], size_t(D), w.enorm.data(), c.norm_eps, &en[size_t(i * D)]);
    be.linear_fp8(en.data(), n, w.e_proj, ep.data());
    std::vector<float> hn(size_t(n) * hc * D), hp(hn.size()), h(hn.size()), mid(hn.size());
    for (int64_t i = 0; i < n * hc; ++i) core::rms_norm(streams + i * D, size_t(D), w.hnorm.data(), c.norm_eps, &hn[size_t(i * D)]);
    be.linear_fp8(hn.data(), n * hc, w.h_proj, hp.data());
    for (int64_t i = 0; i < n; ++i)
        for (int k = 0; k < hc; ++k)
            for (int j = 0; j < D; ++j)
                h[size_t((i * hc + k) * D + j)] = core::round_bf16(ep[size_t(i * D + j)] + hp[size_t((i * hc + k) * D + j)]);
    std::vector<attention::Span> spans{{0, n, start_pos, &cache}};
    attention_sublayer(be, layer, h.data(), n, spans, mid.data(), nullptr);
    ffn_sublayer(be, layer, mid.data(), next_tokens, n, h.data(), nullptr);
    std::vector<float> x(static_cast<size_t>(n * D)), xn(static_cast<size_t>(n * D));
    hc_head(be, w.hc_head, h.data(), n, hc, D, c.norm_eps, c.hc_eps, x.data());
    for (int64_t i = 0; i < n; ++i) core::rms_norm(&x[size_t(i * D)], size_t(D), w.norm.data(), c.norm_eps, &xn[size_t(i * D)]);
    be.linear_f32(xn.data(), n, weights_.head, out);
}

}  // namespace dsv4::model
