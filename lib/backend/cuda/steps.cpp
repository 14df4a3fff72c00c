// The CUDA steps: each one the CPU step's arithmetic (backend/cpu/steps_*.cpp) as a sequence of kernels on the
// backend's stream. The host plans only from positions: the spans' descriptors and page tables, the compressor
// windows that complete, the ring rows written. Weight vectors are read through their device copies.
#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "backend/cuda/backend.h"
#include "core/error.h"

namespace dsv4::backend::cuda {
namespace {
using core::DType;

class DeviceBuffer final : public Buffer {
public:
    DeviceBuffer(std::shared_ptr<Pool> pool, DType dtype, int64_t rows, int64_t cols) : pool_(std::move(pool)) {
        tensor = {nullptr, dtype, rows, cols};
        bytes_ = tensor.bytes();
        tensor.data = pool_->take(bytes_);
    }
    ~DeviceBuffer() override { pool_->give(tensor.data, bytes_); }

private:
    std::shared_ptr<Pool> pool_;
    size_t bytes_ = 0;
};

RopeTable rope_table(const core::Rope &rope) {
    RopeTable t;
    const std::vector<float> &theta = rope.frequencies();
    if (theta.size() > size_t(kMaxRopePairs)) fail(DSV4_ERR_UNSUPPORTED, "CUDA: rope_head_dim {} > {}", 2 * theta.size(), 2 * kMaxRopePairs);
    t.pairs = int(theta.size());
    std::copy(theta.begin(), theta.end(), t.theta);
    return t;
}

HcParams hc_params(const io::ModelConfig &c, const core::HcWeights &w) {
    HcParams p{};
    p.hc = c.hc_mult;
    p.sinkhorn_iters = c.hc_sinkhorn_iters;
    p.dim = c.dim;
    for (size_t i = 0; i < 3; ++i) p.scale[i] = i < w.scale.size() ? w.scale[i] : 0.0f;
    p.hc_eps = c.hc_eps;
    p.norm_eps = c.norm_eps;
    return p;
}

template <typename T>
T *ptr(const Tensor &t) {
    return static_cast<T *>(t.data);
}

}  // namespace

CudaBackend::CudaBackend(const CudaDevice &device)
    : device_(device), pool_(std::make_shared<Pool>(device.index())) {
    check(cudaSetDevice(device.index()), "cudaSetDevice");
    check(cudaStreamCreate(&stream_), "cudaStreamCreate");
}

CudaBackend::~CudaBackend() {
    cudaSetDevice(device_.index());
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
}

std::string CudaBackend::name() const { return device_.name(); }

cudaStream_t CudaBackend::stream() const {
    check(cudaSetDevice(device_.index()), "cudaSetDevice");
    return stream_;
}

void CudaBackend::launched(const char *step) const {
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) check(e, step);
}

std::unique_ptr<Buffer> CudaBackend::allocate(DType dtype, int64_t rows, int64_t cols) {
    check(cudaSetDevice(device_.index()), "cudaSetDevice");
    return std::make_unique<DeviceBuffer>(pool_, dtype, rows, cols);
}

void CudaBackend::upload(const void *host, const Tensor &dst) {
    if (dst.bytes()) check(cudaMemcpyAsync(dst.data, host, dst.bytes(), cudaMemcpyHostToDevice, stream()), "upload");
}

const void *CudaBackend::read(const Tensor &t, std::vector<uint8_t> &staging) {
    staging.resize(t.bytes());
    if (t.bytes()) check(cudaMemcpyAsync(staging.data(), t.data, t.bytes(), cudaMemcpyDeviceToHost, stream()), "read");
    check(cudaStreamSynchronize(stream_), "the steps before a read");
    return staging.data();
}

template <typename T>
std::unique_ptr<Buffer> CudaBackend::table(const std::vector<T> &host) {
    const size_t bytes = host.size() * sizeof(T);
    auto b = allocate(DType::U8, 1, int64_t(bytes));
    if (bytes) check(cudaMemcpyAsync(b->tensor.data, host.data(), bytes, cudaMemcpyHostToDevice, stream()), "table upload");
    return b;
}

void CudaBackend::linear_fp8(const float *x, int64_t n, const core::Fp8Matrix &w, float *y) {
    const auto qx = allocate(DType::F32, n, w.cols), qs = allocate(DType::F32, n, (w.cols + 127) / 128);
    cuda::act_quant(stream(), x, n, w.cols, ptr<float>(qx->tensor), ptr<float>(qs->tensor));
    cuda::linear_fp8(stream_, ptr<float>(qx->tensor), ptr<float>(qs->tensor), nullptr, n, w.cols, w.w, w.scale, w.rows, y);
}

// ---- streams ------------------------------------------------------------------------------------------------
void CudaBackend::embed(const core::Bf16Matrix &table, const Tensor &tokens, int hc, Tensor &h) {
    cuda::embed(stream(), reinterpret_cast<const uint16_t *>(table.w), table.cols, ptr<int32_t>(tokens), tokens.rows, hc,
                ptr<float>(h));
    launched("embed");
}

void CudaBackend::hc_pre(const io::ModelConfig &c, const core::HcWeights &w, const std::vector<float> &norm,
                         const Tensor &h, Tensor &mix, Tensor &x, Tensor &xn) {
    const int64_t N = h.rows, n_mix = int64_t(2 + c.hc_mult) * c.hc_mult;
    const auto mu = allocate(DType::F32, N, n_mix);
    cuda::linear_f32w(stream(), ptr<float>(h), N, h.cols, static_cast<const float *>(device_.device_copy(w.fn.data())),
                      n_mix, ptr<float>(mu->tensor));
    cuda::hc_pre(stream_, hc_params(c, w), static_cast<const float *>(device_.device_copy(w.base.data())),
                 static_cast<const float *>(device_.device_copy(norm.data())), ptr<float>(h), ptr<float>(mu->tensor), N,
                 ptr<float>(mix), ptr<float>(x), ptr<float>(xn));
    launched("hc_pre");
}

void CudaBackend::hc_post(const Tensor &mix, const Tensor &y, const Tensor &h, Tensor &out) {
    cuda::hc_post(stream(), hc_of_mix(mix.cols), y.cols, ptr<float>(mix), ptr<float>(y), ptr<float>(h), h.rows, ptr<float>(out));
    launched("hc_post");
}

void CudaBackend::head(const io::ModelConfig &c, const core::HcWeights &w, const std::vector<float> &norm,
                       const core::Bf16Matrix &lm_head, const Tensor &h, const Tensor &rows, Tensor &logits) {
    const int64_t n = rows.rows, width = h.cols, D = c.dim;
    const auto sel = allocate(DType::F32, n, width), mu = allocate(DType::F32, n, c.hc_mult),
               x = allocate(DType::F32, n, D), xn = allocate(DType::F32, n, D);
    cuda::gather_rows(stream(), ptr<float>(h), width, ptr<int32_t>(rows), n, ptr<float>(sel->tensor));
    cuda::linear_f32w(stream_, ptr<float>(sel->tensor), n, width, static_cast<const float *>(device_.device_copy(w.fn.data())),
                      c.hc_mult, ptr<float>(mu->tensor));
    cuda::hc_head(stream_, hc_params(c, w), static_cast<const float *>(device_.device_copy(w.base.data())),
                  static_cast<const float *>(device_.device_copy(norm.data())), ptr<float>(sel->tensor),
                  ptr<float>(mu->tensor), n, ptr<float>(xn->tensor), ptr<float>(x->tensor));
    cuda::linear_bf16w(stream_, ptr<float>(xn->tensor), n, D, reinterpret_cast<const uint16_t *>(lm_head.w), lm_head.rows,
                       ptr<float>(logits), false);
    launched("head");
}

void CudaBackend::mtp_input(const Layer &l, const core::Bf16Matrix &table, const Tensor &h, const Tensor &next,
                            Tensor &out) {
    const io::ModelConfig &c = l.config;
    const core::LayerWeights &w = l.weights;
    const int64_t n = next.rows, D = c.dim, hc = c.hc_mult;
    const auto e = allocate(DType::F32, n, D), en = allocate(DType::F32, n, D), ep = allocate(DType::F32, n, D),
               hn = allocate(DType::F32, n * hc, D), hp = allocate(DType::F32, n * hc, D);
    cuda::embed(stream(), reinterpret_cast<const uint16_t *>(table.w), table.cols, ptr<int32_t>(next), n, 1,
                ptr<float>(e->tensor));
    cuda::rms_norm_rows(stream_, ptr<float>(e->tensor), n, D, static_cast<const float *>(device_.device_copy(w.enorm.data())),
                        c.norm_eps, ptr<float>(en->tensor));
    linear_fp8(ptr<float>(en->tensor), n, w.e_proj, ptr<float>(ep->tensor));
    cuda::rms_norm_rows(stream_, ptr<float>(h), n * hc, D, static_cast<const float *>(device_.device_copy(w.hnorm.data())),
                        c.norm_eps, ptr<float>(hn->tensor));
    linear_fp8(ptr<float>(hn->tensor), n * hc, w.h_proj, ptr<float>(hp->tensor));
    cuda::add_streams(stream_, ptr<float>(ep->tensor), ptr<float>(hp->tensor), n, int(hc), D, ptr<float>(out));
    launched("mtp_input");
}

// ---- attention ----------------------------------------------------------------------------------------------
void CudaBackend::query(const Layer &l, const Tensor &x, const Tensor &positions, Tensor &q, Tensor &q_r) {
    const io::ModelConfig &c = l.config;
    const int64_t N = x.rows;
    const auto qa = allocate(DType::F32, N, c.q_lora_rank);
    linear_fp8(ptr<float>(x), N, l.weights.wq_a, ptr<float>(qa->tensor));
    cuda::rms_norm_rows(stream_, ptr<float>(qa->tensor), N, c.q_lora_rank,
                        static_cast<const float *>(device_.device_copy(l.weights.q_norm.data())), c.norm_eps, ptr<float>(q_r));
    linear_fp8(ptr<float>(q_r), N, l.weights.wq_b, ptr<float>(q));
    HeadOps ops;
    ops.rms_scale = true;
    ops.eps = c.norm_eps;
    cuda::head_ops(stream_, ptr<float>(q), N, c.n_heads, c.head_dim, ptr<int32_t>(positions), rope_table(l.rope), ops);
    launched("query");
}

void CudaBackend::kv(const Layer &l, const Tensor &x, const Tensor &positions, Tensor &kv) {
    const io::ModelConfig &c = l.config;
    const int64_t N = x.rows;
    const auto raw = allocate(DType::F32, N, c.head_dim);
    linear_fp8(ptr<float>(x), N, l.weights.wkv, ptr<float>(raw->tensor));
    cuda::kv_finish(stream_, ptr<float>(raw->tensor), N, c.head_dim, c.rope_head_dim,
                    static_cast<const float *>(device_.device_copy(l.weights.kv_norm.data())), c.norm_eps,
                    ptr<int32_t>(positions), rope_table(l.rope), ptr<float>(kv));
    launched("kv");
}

void CudaBackend::compress(const Layer &l, const Tensor &x, const LayerBatch &b, Tensor *kv_entries,
                           Tensor *index_entries) {
    const io::ModelConfig &c = l.config;
    const int m = l.spec.compress_ratio;
    if (!m) return;
    const int64_t N = x.rows;
    // One compressor: project (fp32, spec §5.2), stage each token's (a, score + ape) row, emit the windows that
    // complete (reading staged rows and the ring's earlier ones), then store the staged rows in the ring.
    const auto run = [&](const core::CompressorWeights &w, bool index, int out_dim, bool overlap, Tensor *values) {
        const int kappa = overlap ? 2 : 1, width = kappa * out_dim;
        const auto a = allocate(DType::F32, N, width), z = allocate(DType::F32, N, width),
                   staged = allocate(DType::F32, N, 2 * width);
        cuda::linear_bf16w(stream(), ptr<float>(x), N, x.cols, reinterpret_cast<const uint16_t *>(w.wkv.w), width,
                           ptr<float>(a->tensor), false);
        cuda::linear_bf16w(stream_, ptr<float>(x), N, x.cols, reinterpret_cast<const uint16_t *>(w.wgate.w), width,
                           ptr<float>(z->tensor), false);
        cuda::compressor_rows(stream_, ptr<float>(a->tensor), ptr<float>(z->tensor),
                              static_cast<const float *>(device_.device_copy(w.ape.data())), ptr<int32_t>(b.positions), N,
                              width, m, ptr<float>(staged->tensor));
        std::vector<Emission> emissions;
        std::vector<Slot> slots;
        const float *staged_rows = ptr<float>(staged->tensor);
        for (size_t s = 0; s < b.spans.size(); ++s) {
            const Span &span = b.spans[s];
            kvcache::LayerCache &cache = *b.caches[s];
            kvcache::PositionRing<float> &ring = index ? cache.index_rows : cache.comp_rows;
            kvcache::PagedEntries &entries = index ? cache.index_keys : cache.kv;
            const auto row_of = [&](int64_t t) {
                return t >= span.start_pos ? staged_rows + (span.row0 + t - span.start_pos) * 2 * width : ring.row(t);
            };
            for (int64_t pos = span.start_pos; pos < span.start_pos + span.n; ++pos) {
                if ((pos + 1) % m) continue;
                const int64_t j = pos / m, first = pos + 1 - m;
                Emission e{};
                e.slot0 = int32_t(slots.size());
                // the reference's slot order: the previous window's first half (overlap only), then this window
                if (overlap && j > 0)
                    for (int64_t t = first - m; t < first; ++t) slots.push_back({row_of(t), 0});
                for (int64_t t = first; t <= pos; ++t) slots.push_back({row_of(t), overlap ? out_dim : 0});
                e.n_slots = int32_t(slots.size()) - e.slot0;
                e.pos = int32_t(j * m);
                e.entry = entries.append();
                e.out_row = int32_t(emissions.size());
                emissions.push_back(e);
            }
        }
        const auto emission_table = table(emissions), slot_table = table(slots);
        CompressParams p{};
        p.out_dim = out_dim;
        p.width = width;
        p.rope_dim = c.rope_head_dim;
        p.eps = c.norm_eps;
        p.index = index;
        cuda::compressor_emit(stream_, p, ptr<Emission>(emission_table->tensor), int(emissions.size()),
                              ptr<Slot>(slot_table->tensor), static_cast<const float *>(device_.device_copy(w.norm.data())),
                              rope_table(l.rope), values ? ptr<float>(*values) : nullptr);
        // The staged rows join the ring after the emissions read the ring's earlier rows.
        std::vector<int32_t> rows;
        std::vector<void *> dst;
        for (size_t s = 0; s < b.spans.size(); ++s) {
            const Span &span = b.spans[s];
            kvcache::PositionRing<float> &ring = index ? b.caches[s]->index_rows : b.caches[s]->comp_rows;
            for (int64_t t = std::max<int64_t>(0, span.n - ring.capacity()); t < span.n; ++t) {
                rows.push_back(int32_t(span.row0 + t));
                dst.push_back(ring.write_row(span.start_pos + t));
            }
        }
        const auto row_table = table(rows), dst_table = table(dst);
        cuda::scatter_rows(stream_, staged_rows, 2 * width, ptr<int32_t>(row_table->tensor), ptr<void *>(dst_table->tensor),
                           int64_t(rows.size()), false);
    };
    run(l.weights.compressor, false, c.head_dim, m == 4, kv_entries);
    if (m == 4) run(l.weights.index_compressor, true, c.index_head_dim, true, index_entries);
    launched("compress");
}

CudaBackend::SpanTables CudaBackend::span_tables(const LayerBatch &b, int64_t rows, bool kv_pages, bool index_pages) {
    std::vector<const uint8_t *> pages;
    std::vector<size_t> kv_at, index_at;
    for (size_t s = 0; s < b.spans.size(); ++s) {
        kv_at.push_back(pages.size());
        if (kv_pages)
            for (const auto &page : b.caches[s]->kv.pages()) pages.push_back(page->data());
        index_at.push_back(pages.size());
        if (index_pages)
            for (const auto &page : b.caches[s]->index_keys.pages()) pages.push_back(page->data());
    }
    SpanTables t;
    t.pages = table(pages);
    const auto *page_base = ptr<const uint8_t *const>(t.pages->tensor);
    std::vector<SpanDesc> desc;
    std::vector<int32_t> row_span(size_t(rows), 0);
    for (size_t s = 0; s < b.spans.size(); ++s) {
        const Span &span = b.spans[s];
        const kvcache::LayerCache &cache = *b.caches[s];
        SpanDesc d{};
        d.row0 = span.row0;
        d.n = span.n;
        d.start_pos = span.start_pos;
        d.window = cache.window.capacity() ? cache.window.row(0) : nullptr;  // the ring's base: row(0) is slot 0
        d.window_capacity = cache.window.capacity();
        d.kv_pages = page_base ? page_base + kv_at[s] : nullptr;
        d.index_pages = page_base ? page_base + index_at[s] : nullptr;
        desc.push_back(d);
        for (int64_t r = 0; r < span.n; ++r) row_span[size_t(span.row0 + r)] = int32_t(s);
    }
    t.spans = table(desc);
    t.row_span = table(row_span);
    return t;
}

void CudaBackend::index_query(const Layer &l, const Tensor &x, const Tensor &q_r, const Tensor &positions, Tensor &qI,
                              Tensor &omega) {
    const io::ModelConfig &c = l.config;
    const int64_t N = x.rows;
    const int nI = c.index_n_heads, dI = c.index_head_dim;
    linear_fp8(ptr<float>(q_r), N, l.weights.index_wq_b, ptr<float>(qI));
    cuda::linear_bf16w(stream_, ptr<float>(x), N, x.cols, reinterpret_cast<const uint16_t *>(l.weights.index_weights_proj.w),
                       nI, ptr<float>(omega), true);
    cuda::scale_bf16(stream_, ptr<float>(omega), N * nI, index_weight_scale(c));
    HeadOps ops;
    ops.hadamard = true;
    ops.fp4_sim = true;
    cuda::head_ops(stream_, ptr<float>(qI), N, nI, dI, ptr<int32_t>(positions), rope_table(l.rope), ops);
    launched("index_query");
}

namespace {
AttentionParams attention_params(const Layer &l, const kvcache::LayerGeometry &g) {
    AttentionParams p{};
    p.n_heads = l.config.n_heads;
    p.head_dim = l.config.head_dim;
    p.rope_dim = l.config.rope_head_dim;
    p.window = l.config.window_size;
    p.ratio = l.spec.compress_ratio;
    p.kv_entry_bytes = int64_t(g.kv_entry_bytes());
    p.index_entry_bytes = int64_t(g.index_entry_bytes());
    p.entries_per_page = int64_t(kvcache::PagedEntries::kPageEntries);
    p.scale = 1.0f / std::sqrt(float(l.config.head_dim));
    return p;
}
}  // namespace

void CudaBackend::index_topk(const Layer &l, const Tensor &qI, const Tensor &omega, const LayerBatch &b, Tensor &topk,
                             Tensor *scores) {
    const io::ModelConfig &c = l.config;
    const int m = l.spec.compress_ratio;
    const int64_t N = qI.rows;
    int64_t ld = 0;  // entries at the batch's end, the widest row
    for (const Span &s : b.spans) ld = std::max(ld, (s.start_pos + s.n) / m);
    std::unique_ptr<Buffer> own;
    float *score_rows = scores ? ptr<float>(*scores) : nullptr;
    if (scores) ld = scores->cols;
    else {
        own = allocate(DType::F32, N, ld);
        score_rows = ptr<float>(own->tensor);
    }
    const SpanTables t = span_tables(b, N, false, true);
    const AttentionParams p = attention_params(l, b.caches.front()->geo);
    cuda::index_scores(stream(), p, ptr<SpanDesc>(t.spans->tensor), ptr<int32_t>(t.row_span->tensor),
                       ptr<int32_t>(b.positions), N, ptr<float>(qI), ptr<float>(omega), c.index_n_heads, c.index_head_dim,
                       score_rows, ld);
    cuda::topk_rows(stream_, score_rows, ld, N, ptr<int32_t>(b.positions), m, 0, int(topk.cols), ptr<int32_t>(topk), topk.cols);
    launched("index_topk");
}

void CudaBackend::sparse_attention(const Layer &l, const Tensor &q, const Tensor &kv, const Tensor &topk,
                                   const LayerBatch &b, Tensor &o) {
    const io::ModelConfig &c = l.config;
    const int64_t N = q.rows;
    const SpanTables t = span_tables(b, N, l.spec.compress_ratio != 0, false);
    const AttentionParams p = attention_params(l, b.caches.front()->geo);
    cuda::sparse_attention(stream(), p, ptr<SpanDesc>(t.spans->tensor), ptr<int32_t>(t.row_span->tensor),
                           ptr<int32_t>(b.positions), N, ptr<float>(q), ptr<float>(kv), ptr<int32_t>(topk), topk.cols,
                           static_cast<const float *>(device_.device_copy(l.weights.attn_sink.data())), rope_table(l.rope),
                           ptr<float>(o));
    // The batch's KV joins the window ring (bf16) after its own attention read it.
    std::vector<int32_t> rows;
    std::vector<void *> dst;
    for (size_t s = 0; s < b.spans.size(); ++s) {
        const Span &span = b.spans[s];
        kvcache::PositionRing<uint16_t> &ring = b.caches[s]->window;
        for (int64_t i = std::max<int64_t>(0, span.n - ring.capacity()); i < span.n; ++i) {
            rows.push_back(int32_t(span.row0 + i));
            dst.push_back(ring.write_row(span.start_pos + i));
        }
    }
    const auto row_table = table(rows), dst_table = table(dst);
    cuda::scatter_rows(stream_, ptr<float>(kv), c.head_dim, ptr<int32_t>(row_table->tensor), ptr<void *>(dst_table->tensor),
                       int64_t(rows.size()), true);
    launched("sparse_attention");
}

void CudaBackend::output_projection(const Layer &l, const Tensor &o, Tensor &y) {
    const core::LayerWeights &w = l.weights;
    const auto z = allocate(DType::F32, o.rows, w.wo_a.rows);
    cuda::linear_dequant_fp8(stream(), ptr<float>(o), o.rows, w.wo_a.w, w.wo_a.scale, w.wo_a.rows, w.wo_a.cols,
                             l.config.o_groups, ptr<float>(z->tensor));
    linear_fp8(ptr<float>(z->tensor), o.rows, w.wo_b, ptr<float>(y));
    launched("output_projection");
}

// ---- MoE ----------------------------------------------------------------------------------------------------
void CudaBackend::route(const Layer &l, const Tensor &x, const Tensor &tokens, Tensor &scores, Tensor &ids,
                        Tensor &weights) {
    const io::ModelConfig &c = l.config;
    const core::LayerWeights &w = l.weights;
    cuda::linear_bf16w(stream(), ptr<float>(x), x.rows, x.cols, reinterpret_cast<const uint16_t *>(w.gate.w),
                       c.n_routed_experts, ptr<float>(scores), false);
    const bool hash = l.spec.hash_routed;
    cuda::route(stream_, ptr<float>(scores), x.rows, c.n_routed_experts, c.n_activated_experts,
                hash ? nullptr : static_cast<const float *>(device_.device_copy(w.gate_bias.data())),
                hash ? static_cast<const int32_t *>(device_.device_copy(w.tid2eid.data())) : nullptr, ptr<int32_t>(tokens),
                c.route_scale, ptr<int32_t>(ids), ptr<float>(weights));
    launched("route");
}

void CudaBackend::experts(const Layer &l, const Tensor &x, const Tensor &ids, const Tensor &weights, Tensor &y) {
    const io::ModelConfig &c = l.config;
    const core::SharedExpertWeights &shared = l.weights.shared;
    const int E = c.n_routed_experts, k = c.n_activated_experts;
    const int64_t N = x.rows, D = c.dim, I = c.moe_inter_dim, R = N * k;
    const LayerExperts &ex = device_.experts(l.index);
    const auto offset = allocate(DType::I32, E + 1, 1), gather = allocate(DType::I32, R, 1),
               row_weight = allocate(DType::F32, R, 1), token_rows = allocate(DType::I32, R, 1);
    cuda::dispatch(stream(), ptr<int32_t>(ids), ptr<float>(weights), N, k, E, ptr<int32_t>(offset->tensor),
                   ptr<int32_t>(gather->tensor), ptr<float>(row_weight->tensor), ptr<int32_t>(token_rows->tensor));
    // x quantised once for every expert that reads it; each expert's rows gathered from it
    const auto qx = allocate(DType::F32, N, D), qs = allocate(DType::F32, N, (D + 127) / 128);
    cuda::act_quant(stream_, ptr<float>(x), N, D, ptr<float>(qx->tensor), ptr<float>(qs->tensor));
    const auto g = allocate(DType::F32, R, I), u = allocate(DType::F32, R, I), a = allocate(DType::F32, R, I),
               out = allocate(DType::F32, R, D);
    cuda::linear_experts(stream_, ptr<float>(qx->tensor), ptr<float>(qs->tensor), ptr<int32_t>(gather->tensor),
                         ptr<int32_t>(offset->tensor), E, ex.w1, ptr<float>(g->tensor));
    cuda::linear_experts(stream_, ptr<float>(qx->tensor), ptr<float>(qs->tensor), ptr<int32_t>(gather->tensor),
                         ptr<int32_t>(offset->tensor), E, ex.w3, ptr<float>(u->tensor));
    cuda::swiglu(stream_, ptr<float>(g->tensor), ptr<float>(u->tensor), R, I, c.swiglu_limit, ptr<float>(row_weight->tensor),
                 ptr<float>(a->tensor));
    const auto qa = allocate(DType::F32, R, I), qas = allocate(DType::F32, R, (I + 127) / 128);
    cuda::act_quant(stream_, ptr<float>(a->tensor), R, I, ptr<float>(qa->tensor), ptr<float>(qas->tensor));
    cuda::linear_experts(stream_, ptr<float>(qa->tensor), ptr<float>(qas->tensor), nullptr, ptr<int32_t>(offset->tensor), E,
                         ex.w2, ptr<float>(out->tensor));
    // the shared expert: the same clamp (spec §15.1), no routing weight
    const auto sg = allocate(DType::F32, N, I), su = allocate(DType::F32, N, I), sa = allocate(DType::F32, N, I),
               sout = allocate(DType::F32, N, D);
    cuda::linear_fp8(stream_, ptr<float>(qx->tensor), ptr<float>(qs->tensor), nullptr, N, D, shared.w1.w, shared.w1.scale,
                     shared.w1.rows, ptr<float>(sg->tensor));
    cuda::linear_fp8(stream_, ptr<float>(qx->tensor), ptr<float>(qs->tensor), nullptr, N, D, shared.w3.w, shared.w3.scale,
                     shared.w3.rows, ptr<float>(su->tensor));
    cuda::swiglu(stream_, ptr<float>(sg->tensor), ptr<float>(su->tensor), N, I, c.swiglu_limit, nullptr, ptr<float>(sa->tensor));
    linear_fp8(ptr<float>(sa->tensor), N, shared.w2, ptr<float>(sout->tensor));
    cuda::combine_experts(stream_, ptr<float>(out->tensor), ptr<int32_t>(token_rows->tensor), N, k, D,
                          ptr<float>(sout->tensor), ptr<float>(y));
    launched("experts");
}

}  // namespace dsv4::backend::cuda
