// The model definition: DeepSeek-V4's forward pass as a schedule of backend steps (backend/backend.h), with the
// observer's taps between them. No arithmetic happens here; the host only plans from positions.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/scratch.h"
#include "model/model.h"

namespace dsv4::model {
namespace {
using backend::Buffer;
using backend::Tensor;
using core::DType;

// The tensor names of one residual step (spec §2), a literal per tap so that an unobserved pass builds none.
struct StepNames {
    const char *pre, *post, *comb, *in, *norm, *out, *result;
};
constexpr StepNames kAttnNames{"hc_attn_pre", "hc_attn_post", "hc_attn_comb", "attn_in", "attn_norm", "attn_out", "h_mid"};
constexpr StepNames kFfnNames{"hc_ffn_pre", "hc_ffn_post", "hc_ffn_comb", "ffn_in", "ffn_norm", "ffn_out", "h_out"};

// One residual step of a block (spec §2): hc_pre collapses and normalises the streams, the branch, hc_post
// expands.
template <typename Branch>
void residual_step(backend::Backend &be, const io::ModelConfig &c, int layer, const StepNames &names,
                   const core::HcWeights &hc_weights, const std::vector<float> &norm, const Tensor &h, Tensor &out,
                   Tap &tap, Branch &&branch) {
    const int hc = c.hc_mult;
    const int64_t N = h.rows, D = c.dim;
    const auto mix = be.allocate(DType::F32, N, int64_t(2 + hc) * hc);
    const auto x = be.allocate(DType::F32, N, D), xn = be.allocate(DType::F32, N, D), y = be.allocate(DType::F32, N, D);
    be.hc_pre(c, hc_weights, norm, h, mix->tensor, x->tensor, xn->tensor);
    tap(names.pre, layer, DSV4_DTYPE_F32, mix->tensor, 0, -1, 0, hc);
    tap(names.post, layer, DSV4_DTYPE_F32, mix->tensor, 0, -1, hc, hc);
    tap(names.comb, layer, DSV4_DTYPE_F32, mix->tensor, 0, -1, 2 * hc, int64_t(hc) * hc);
    tap(names.in, layer, DSV4_DTYPE_BF16, x->tensor);
    tap(names.norm, layer, DSV4_DTYPE_BF16, xn->tensor);
    branch(xn->tensor, y->tensor);
    tap(names.out, layer, DSV4_DTYPE_BF16, y->tensor);
    be.hc_post(mix->tensor, y->tensor, h, out);
    tap(names.result, layer, DSV4_DTYPE_BF16, out);
}

}  // namespace

void Tap::operator()(const char *name, int layer, dsv4_dtype dtype, const core::Tensor &t, int64_t row0, int64_t rows,
                     int64_t col0, int64_t cols) {
    if (!wants(name, layer)) return;
    if (rows < 0) rows = t.rows - row0;
    if (cols < 0) cols = t.cols - col0;
    const auto *data = static_cast<const uint8_t *>(be_.read(t, staging_));
    const size_t elem = core::dtype_size(t.dtype);
    if (cols != t.cols) {  // a block of columns: gathered into contiguous rows
        block_.resize(size_t(rows * cols) * elem);
        for (int64_t r = 0; r < rows; ++r)
            std::memcpy(&block_[size_t(r * cols) * elem], data + (size_t((row0 + r) * t.cols + col0)) * elem, size_t(cols) * elem);
        data = block_.data();
    } else {
        data += size_t(row0 * t.cols) * elem;
    }
    obs_->get(name, layer, dtype, rows, cols, data);
}

backend::Layer Model::layer_view(int layer) const {
    return {config_, config_.layers[size_t(layer)], weights_.layers[size_t(layer)], ropes_[size_t(layer)], layer};
}

std::unique_ptr<Buffer> Model::upload_ids(backend::Backend &be, const int32_t *ids, int64_t n) const {
    auto t = be.allocate(DType::I32, n, 1);
    be.upload(ids, t->tensor);
    return t;
}

void Model::attention_sublayer(backend::Backend &be, int layer, const Tensor &h, const backend::LayerBatch &b,
                               Tensor &out, const Observer *obs) const {
    const backend::Layer l = layer_view(layer);
    const io::ModelConfig &c = config_;
    const int m = l.spec.compress_ratio;
    Tap tap(obs, be);
    residual_step(be, c, layer, kAttnNames, l.weights.hc_attn, l.weights.attn_norm, h, out, tap, [&](const Tensor &x, Tensor &y) {
        const int64_t N = x.rows;
        const auto q = be.allocate(DType::F32, N, int64_t(c.n_heads) * c.head_dim);
        const auto q_r = be.allocate(DType::F32, N, c.q_lora_rank);
        const auto kv = be.allocate(DType::F32, N, c.head_dim);
        be.query(l, x, b.positions, q->tensor, q_r->tensor);
        be.kv(l, x, b.positions, kv->tensor);
        tap("kv", layer, DSV4_DTYPE_BF16, kv->tensor);

        std::unique_ptr<Buffer> qI, omega, topk, scores, kv_entries, index_entries;
        // Entries each span emits and holds by its end, from positions alone (spec §5.3).
        int64_t emitted = 0, max_entries = 0;
        for (const backend::Span &s : b.spans)
            if (m) {
                emitted += (s.start_pos + s.n) / m - s.start_pos / m;
                max_entries = std::max(max_entries, (s.start_pos + s.n) / m);
            }
        if (m == 4) {
            qI = be.allocate(DType::F32, N, int64_t(c.index_n_heads) * c.index_head_dim);
            omega = be.allocate(DType::F32, N, c.index_n_heads);
            be.index_query(l, x, q_r->tensor, b.positions, qI->tensor, omega->tensor);
            tap("index_q", layer, DSV4_DTYPE_BF16, qI->tensor);
            tap("index_weights", layer, DSV4_DTYPE_BF16, omega->tensor);
        }
        if (m && tap.wants("kv_comp", layer)) kv_entries = be.allocate(DType::F32, emitted, c.head_dim);
        if (m == 4 && tap.wants("index_kv_comp", layer)) index_entries = be.allocate(DType::F32, emitted, c.index_head_dim);
        // Compressors first: an entry completed by token p is visible to p itself (spec §5.3).
        be.compress(l, x, b, kv_entries ? &kv_entries->tensor : nullptr, index_entries ? &index_entries->tensor : nullptr);
        if (kv_entries) tap("kv_comp", layer, DSV4_DTYPE_BF16, kv_entries->tensor);
        if (index_entries) tap("index_kv_comp", layer, DSV4_DTYPE_BF16, index_entries->tensor);

        topk = be.allocate(DType::I32, N, m == 4 ? c.index_topk : 0);
        if (m == 4) {
            if (tap.wants("index_scores", layer)) scores = be.allocate(DType::F32, N, max_entries);
            be.index_topk(l, qI->tensor, omega->tensor, b, topk->tensor, scores ? &scores->tensor : nullptr);
            // Per span: its rows over the entries it holds by its end; top-k as wide as it can be there.
            for (const backend::Span &s : b.spans) {
                const int64_t entries = (s.start_pos + s.n) / m;
                if (scores) tap("index_scores", layer, DSV4_DTYPE_BF16, scores->tensor, s.row0, s.n, 0, entries);
                tap("index_topk", layer, DSV4_DTYPE_I32, topk->tensor, s.row0, s.n, 0, std::min<int64_t>(c.index_topk, entries));
            }
        }
        const auto o = be.allocate(DType::F32, N, int64_t(c.n_heads) * c.head_dim);
        be.sparse_attention(l, q->tensor, kv->tensor, topk->tensor, b, o->tensor);
        tap("attn_heads", layer, DSV4_DTYPE_BF16, o->tensor);
        be.output_projection(l, o->tensor, y);
    });
}

void Model::ffn_sublayer(backend::Backend &be, int layer, const Tensor &h, const Tensor &tokens, Tensor &out,
                         const Observer *obs) const {
    const backend::Layer l = layer_view(layer);
    const io::ModelConfig &c = config_;
    Tap tap(obs, be);
    residual_step(be, c, layer, kFfnNames, l.weights.hc_ffn, l.weights.ffn_norm, h, out, tap, [&](const Tensor &x, Tensor &y) {
        const int64_t N = x.rows;
        const auto scores = be.allocate(DType::F32, N, c.n_routed_experts);
        const auto ids = be.allocate(DType::I32, N, c.n_activated_experts);
        const auto weights = be.allocate(DType::F32, N, c.n_activated_experts);
        be.route(l, x, tokens, scores->tensor, ids->tensor, weights->tensor);
        tap("gate_scores", layer, DSV4_DTYPE_F32, scores->tensor);
        tap("gate_ids", layer, DSV4_DTYPE_I32, ids->tensor);
        tap("gate_weights", layer, DSV4_DTYPE_F32, weights->tensor);
        be.experts(l, x, ids->tensor, weights->tensor, y);
    });
}

std::unique_ptr<Buffer> Model::forward(backend::Backend &be, const int32_t *tokens, int64_t N,
                                       const std::vector<backend::Span> &spans,
                                       const std::vector<kvcache::SequenceCache *> &caches, const Observer *obs,
                                       const std::function<bool()> &should_abort) const {
    const io::ModelConfig &c = config_;
    const int64_t row = int64_t(c.hc_mult) * c.dim;
    const core::ScratchScope reuse;  // the layers' temporaries reuse each other's memory (and the caller's pool)
    std::vector<int32_t> positions(static_cast<size_t>(N));
    for (const backend::Span &s : spans)
        for (int64_t t = 0; t < s.n; ++t) positions[size_t(s.row0 + t)] = int32_t(s.start_pos + t);
    const auto token_ids = upload_ids(be, tokens, N), pos = upload_ids(be, positions.data(), N);
    auto h = be.allocate(DType::F32, N, row);
    const auto mid = be.allocate(DType::F32, N, row);
    be.embed(weights_.embed, token_ids->tensor, c.hc_mult, h->tensor);
    std::vector<kvcache::LayerCache *> layer_caches(spans.size());
    const backend::LayerBatch batch{spans, layer_caches, pos->tensor};
    for (int il = 0; il < c.n_layers; ++il) {
        if (should_abort && should_abort()) return nullptr;
        for (size_t s = 0; s < spans.size(); ++s) layer_caches[s] = &caches[s]->layers[size_t(il)];
        attention_sublayer(be, il, h->tensor, batch, mid->tensor, obs);
        ffn_sublayer(be, il, mid->tensor, token_ids->tensor, h->tensor, obs);
    }
    if (should_abort && should_abort()) return nullptr;
    return h;
}

void Model::logits(backend::Backend &be, const Tensor &streams, const std::vector<int64_t> &rows, float *out) const {
    const int64_t n = int64_t(rows.size());
    std::vector<int32_t> rows32(rows.begin(), rows.end());
    const auto row_ids = upload_ids(be, rows32.data(), n);
    const auto logits = be.allocate(DType::F32, n, config_.vocab_size);
    be.head(config_, weights_.hc_head, weights_.norm, weights_.head, streams, row_ids->tensor, logits->tensor);
    std::vector<uint8_t> staging;
    std::memcpy(out, be.read(logits->tensor, staging), logits->tensor.bytes());
}

void Model::mtp_logits(backend::Backend &be, const float *streams, const int32_t *next_tokens, int64_t n,
                       int64_t start_pos, kvcache::LayerCache &cache, float *out) const {
    const io::ModelConfig &c = config_;
    if (c.n_mtp_layers == 0) fail(DSV4_ERR_UNSUPPORTED, "{}: the checkpoint has no MTP block", name_);
    const int layer = c.n_layers;  // the first MTP block
    const backend::Layer l = layer_view(layer);
    const int64_t row = int64_t(c.hc_mult) * c.dim;
    const core::ScratchScope reuse;
    const auto main = be.allocate(DType::F32, n, row), h = be.allocate(DType::F32, n, row),
               mid = be.allocate(DType::F32, n, row);
    be.upload(streams, main->tensor);
    const auto next = upload_ids(be, next_tokens, n);
    be.mtp_input(l, weights_.embed, main->tensor, next->tensor, h->tensor);
    std::vector<int32_t> positions(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) positions[size_t(t)] = int32_t(start_pos + t);
    const auto pos = upload_ids(be, positions.data(), n);
    const std::vector<backend::Span> spans{{0, n, start_pos}};
    const std::vector<kvcache::LayerCache *> caches{&cache};
    attention_sublayer(be, layer, h->tensor, {spans, caches, pos->tensor}, mid->tensor, nullptr);
    ffn_sublayer(be, layer, mid->tensor, next->tensor, h->tensor, nullptr);
    const std::vector<int32_t> all_rows = [n] {
        std::vector<int32_t> r(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) r[size_t(i)] = int32_t(i);
        return r;
    }();
    const auto row_ids = upload_ids(be, all_rows.data(), n);
    const auto logits = be.allocate(DType::F32, n, c.vocab_size);
    be.head(c, l.weights.hc_head, l.weights.norm, weights_.head, h->tensor, row_ids->tensor, logits->tensor);
    std::vector<uint8_t> staging;
    std::memcpy(out, be.read(logits->tensor, staging), logits->tensor.bytes());
}

}  // namespace dsv4::model
