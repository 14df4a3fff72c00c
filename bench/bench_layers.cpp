// Decode and prefill of real V4 layers (a checkpoint from bench/make_layer_checkpoint.py: one CSA and one HCA
// layer with every dimension of the config and random weights in the official format) against this machine's
// read bandwidth measured in the same run: each decode step must read the weights a token touches (attention,
// compressor, indexer, router, shared expert, the routed experts it selects, mHC mixes, the LM head row block)
// plus its KV entries; the ratio of the measured step to that byte count over the bandwidth is the efficiency.
// Every backend operation is timed, so the table also says where the time goes.
// Decode is measured at several context lengths: the caches are filled with synthetic entries of the production
// layout (random FP8/FP4 codes, like a real cache's), so 64K positions need no 64K-token prefill. Prefill is a
// real one of 1024 tokens, quoted against the GEMM peak measured in the same run (bf16 dot products; AMX tiles
// where the kernels are AMX).
// Usage: bench_layers CHECKPOINT_DIR [CONTEXTS=1024,16384,65536] [DECODE_STEPS=16] [THREADS=0]
#include <algorithm>
#include <cstring>
#include <cstdio>
#include <fmt/format.h>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/backend.h"
#include "backend/cpu/isa.h"
#include "io/mapped_file.h"
#include "kvcache/cache.h"
#include "limits.h"
#include "model/model.h"
#include "runtime/context.h"

using namespace dsv4;
using bench::Clock;
using bench::seconds_since;

namespace {

size_t fp8_bytes(const core::Fp8Matrix &m) {
    return m.w ? size_t(m.rows * m.cols + (m.rows + 127) / 128 * m.scale_cols()) : 0;
}
size_t expert_bytes(const core::ExpertMatrix &m) {
    return m.format == core::ExpertFormat::fp8 ? fp8_bytes(m.fp8) : size_t(m.fp4.rows * m.fp4.cols / 2 + m.fp4.rows * m.fp4.cols / 32);
}
size_t bf16_bytes(const core::Bf16Matrix &m) { return size_t(m.rows * m.cols * 2); }

// Time, multiply-adds (of the linears), weight bytes read and calls per backend operation.
struct OpTimes {
    struct Op {
        double seconds = 0, macs = 0, bytes = 0;
        int64_t calls = 0;
    };
    std::map<std::string, Op> ops;
    std::map<std::string, double> step_host;  // per step: its time outside the primitives (the host arithmetic)
    void add(const OpTimes &other) {
        for (const auto &[name, t] : other.step_host) step_host[name] += t;
        for (const auto &[name, o] : other.ops) {
            Op &mine = ops[name];
            mine.seconds += o.seconds;
            mine.macs += o.macs;
            mine.bytes += o.bytes;
            mine.calls += o.calls;
        }
    }
};

// Times every call of the wrapped CPU primitives by operation, with the multiply-adds and weight bytes it reads.
class TimingPrimitives final : public backend::cpu::Primitives {
public:
    explicit TimingPrimitives(std::unique_ptr<backend::cpu::Primitives> inner) : inner_(std::move(inner)) {}
    std::string name() const override { return inner_->name(); }
    int threads() const override { return inner_->threads(); }
    void linear_fp8(const float *x, int64_t n, const core::Fp8Matrix &w, float *y) override {
        timed("linear_fp8", [&] { inner_->linear_fp8(x, n, w, y); }, n * w.rows * w.cols, fp8_bytes(w));
    }
    void linear_expert(const float *x, int64_t n, const core::ExpertMatrix &w, float *y) override {
        const int64_t expert_macs = n * (w.format == core::ExpertFormat::fp8 ? w.fp8.rows * w.fp8.cols : w.fp4.rows * w.fp4.cols);
        timed("linear_expert", [&] { inner_->linear_expert(x, n, w, y); }, expert_macs, expert_bytes(w));
    }
    // a layer's expert matrices in two calls (routed w1/w3 with the shared expert's, then the w2s)
    void linear_experts(const backend::cpu::ExpertLinear *jobs, size_t count) override {
        int64_t expert_macs = 0;
        size_t weight_bytes = 0;
        for (size_t j = 0; j < count; ++j) {
            const core::ExpertMatrix &w = *jobs[j].w;
            expert_macs += jobs[j].n * (w.format == core::ExpertFormat::fp8 ? w.fp8.rows * w.fp8.cols : w.fp4.rows * w.fp4.cols);
            weight_bytes += expert_bytes(w);
        }
        timed("linear_experts", [&] { inner_->linear_experts(jobs, count); }, expert_macs, weight_bytes);
    }
    void linear_dequant_fp8(const float *x, int64_t n, const core::Fp8Matrix &w, int groups, float *y) override {
        timed("linear_dequant_fp8", [&] { inner_->linear_dequant_fp8(x, n, w, groups, y); }, n * w.rows * w.cols, fp8_bytes(w));
    }
    void linear_bf16(const float *x, int64_t n, const core::Bf16Matrix &w, float *y) override {
        timed("linear_bf16", [&] { inner_->linear_bf16(x, n, w, y); }, n * w.rows * w.cols, bf16_bytes(w));
    }
    void linear_f32(const float *x, int64_t n, const core::Bf16Matrix &w, float *y) override {
        timed("linear_f32", [&] { inner_->linear_f32(x, n, w, y); }, n * w.rows * w.cols, bf16_bytes(w));
    }
    void linear_f32w(const float *x, int64_t n, const float *w, int64_t rows, int64_t cols, float *y) override {
        timed("linear_f32w", [&] { inner_->linear_f32w(x, n, w, rows, cols, y); }, n * rows * cols,
              size_t(rows * cols) * sizeof(float));
    }
    void attention(const backend::cpu::AttentionProblem &p) override { timed("attention", [&] { inner_->attention(p); }); }
    void decode_kv_entries(const backend::cpu::Fp8Entries &e, uint16_t *rows) override {
        timed("decode_kv_entries", [&] { inner_->decode_kv_entries(e, rows); });
    }
    void index_scores(const float *q, const float *w, int n_heads, int dim, const backend::cpu::Fp4Keys &keys, int64_t n,
                      float *scores) override {
        timed("index_scores", [&] { inner_->index_scores(q, w, n_heads, dim, keys, n, scores); });
    }

    OpTimes times;

private:
    template <typename F>
    void timed(const char *op, F &&f, int64_t n_macs = 0, size_t n_bytes = 0) {
        const auto t0 = Clock::now();
        f();
        OpTimes::Op &o = times.ops[op];
        o.seconds += seconds_since(t0);
        o.macs += double(n_macs);
        o.bytes += double(n_bytes);
        o.calls += 1;
    }
    std::unique_ptr<backend::cpu::Primitives> inner_;
};

// Times every step of the wrapped backend and charges it, less the primitives it called, to its host arithmetic.
class TimingSteps final : public backend::Backend {
public:
    TimingSteps(std::unique_ptr<backend::Backend> inner, TimingPrimitives &primitives)
        : inner_(std::move(inner)), primitives_(primitives) {}
    std::string name() const override { return inner_->name(); }
    std::unique_ptr<backend::Buffer> allocate(core::DType dtype, int64_t rows, int64_t cols) override {
        return inner_->allocate(dtype, rows, cols);
    }
    void upload(const void *host, const backend::Tensor &dst) override { inner_->upload(host, dst); }
    const void *read(const backend::Tensor &t, std::vector<uint8_t> &staging) override { return inner_->read(t, staging); }
#define DSV4_TIMED_STEP(step, params, args) \
    void step params override { timed(#step, [&] { inner_->step args; }); }
    DSV4_TIMED_STEP(embed, (const core::Bf16Matrix &t, const backend::Tensor &tok, int hc, backend::Tensor &h), (t, tok, hc, h))
    DSV4_TIMED_STEP(hc_pre, (const io::ModelConfig &c, const core::HcWeights &w, const std::vector<float> &n,
                             const backend::Tensor &h, backend::Tensor &m, backend::Tensor &x, backend::Tensor &xn),
                    (c, w, n, h, m, x, xn))
    DSV4_TIMED_STEP(hc_post, (const backend::Tensor &m, const backend::Tensor &y, const backend::Tensor &h, backend::Tensor &o),
                    (m, y, h, o))
    DSV4_TIMED_STEP(query, (const backend::Layer &l, const backend::Tensor &x, const backend::Tensor &p, backend::Tensor &q,
                            backend::Tensor &qr), (l, x, p, q, qr))
    DSV4_TIMED_STEP(kv, (const backend::Layer &l, const backend::Tensor &x, const backend::Tensor &p, backend::Tensor &kv),
                    (l, x, p, kv))
    DSV4_TIMED_STEP(compress, (const backend::Layer &l, const backend::Tensor &x, const backend::LayerBatch &b,
                               backend::Tensor *ke, backend::Tensor *ie), (l, x, b, ke, ie))
    DSV4_TIMED_STEP(index_query, (const backend::Layer &l, const backend::Tensor &x, const backend::Tensor &qr,
                                  const backend::Tensor &p, backend::Tensor &qI, backend::Tensor &w), (l, x, qr, p, qI, w))
    DSV4_TIMED_STEP(index_topk, (const backend::Layer &l, const backend::Tensor &qI, const backend::Tensor &w,
                                 const backend::LayerBatch &b, backend::Tensor &k, backend::Tensor *s), (l, qI, w, b, k, s))
    DSV4_TIMED_STEP(sparse_attention, (const backend::Layer &l, const backend::Tensor &q, const backend::Tensor &kv,
                                       const backend::Tensor &k, const backend::LayerBatch &b, backend::Tensor &o),
                    (l, q, kv, k, b, o))
    DSV4_TIMED_STEP(output_projection, (const backend::Layer &l, const backend::Tensor &o, backend::Tensor &y), (l, o, y))
    DSV4_TIMED_STEP(route, (const backend::Layer &l, const backend::Tensor &x, const backend::Tensor &t, backend::Tensor &s,
                            backend::Tensor &i, backend::Tensor &w), (l, x, t, s, i, w))
    DSV4_TIMED_STEP(experts, (const backend::Layer &l, const backend::Tensor &x, const backend::Tensor &i,
                              const backend::Tensor &w, backend::Tensor &y), (l, x, i, w, y))
    DSV4_TIMED_STEP(head, (const io::ModelConfig &c, const core::HcWeights &w, const std::vector<float> &n,
                           const core::Bf16Matrix &lm, const backend::Tensor &h, const backend::Tensor &r, backend::Tensor &o),
                    (c, w, n, lm, h, r, o))
    DSV4_TIMED_STEP(mtp_input, (const backend::Layer &l, const core::Bf16Matrix &t, const backend::Tensor &h,
                                const backend::Tensor &n, backend::Tensor &o), (l, t, h, n, o))
#undef DSV4_TIMED_STEP

private:
    template <typename F>
    void timed(const char *step, F &&f) {
        double before = 0;
        for (const auto &[name, o] : primitives_.times.ops) before += o.seconds;
        const auto t0 = Clock::now();
        f();
        double after = 0;
        for (const auto &[name, o] : primitives_.times.ops) after += o.seconds;
        primitives_.times.step_host[step] += seconds_since(t0) - (after - before);
    }
    std::unique_ptr<backend::Backend> inner_;
    TimingPrimitives &primitives_;
};

// Bytes of weights one decode token reads in a layer (the routed experts: n_active of them).
size_t layer_bytes_per_token(const model::LayerWeights &l, int n_active) {
    size_t b = fp8_bytes(l.wq_a) + fp8_bytes(l.wq_b) + fp8_bytes(l.wkv) + fp8_bytes(l.wo_b) + fp8_bytes(l.wo_a);
    b += bf16_bytes(l.compressor.wkv) + bf16_bytes(l.compressor.wgate);
    b += fp8_bytes(l.index_wq_b) + bf16_bytes(l.index_weights_proj);
    b += bf16_bytes(l.index_compressor.wkv) + bf16_bytes(l.index_compressor.wgate);
    b += bf16_bytes(l.gate) + 4 * (l.hc_attn.fn.size() + l.hc_ffn.fn.size());
    b += fp8_bytes(l.shared.w1) + fp8_bytes(l.shared.w2) + fp8_bytes(l.shared.w3);
    const model::ExpertWeights &e = l.experts.at(0);
    b += size_t(n_active) * (expert_bytes(e.w1) + expert_bytes(e.w2) + expert_bytes(e.w3));
    return b;
}

// Weight elements one token multiplies in a layer (2 flops each): the prefill work per token.
double layer_macs_per_token(const model::LayerWeights &l, int n_active) {
    auto fp8 = [](const core::Fp8Matrix &m) { return double(m.rows * m.cols); };
    auto bf = [](const core::Bf16Matrix &m) { return double(m.rows * m.cols); };
    const model::ExpertWeights &e = l.experts.at(0);
    auto ex = [](const core::ExpertMatrix &m) {
        return m.format == core::ExpertFormat::fp8 ? double(m.fp8.rows * m.fp8.cols) : double(m.fp4.rows * m.fp4.cols);
    };
    return fp8(l.wq_a) + fp8(l.wq_b) + fp8(l.wkv) + fp8(l.wo_b) + fp8(l.wo_a) + bf(l.compressor.wkv) +
           bf(l.compressor.wgate) + fp8(l.index_wq_b) + bf(l.index_weights_proj) + bf(l.index_compressor.wkv) +
           bf(l.index_compressor.wgate) + bf(l.gate) + double(l.hc_attn.fn.size() + l.hc_ffn.fn.size()) +
           fp8(l.shared.w1) + fp8(l.shared.w2) + fp8(l.shared.w3) + n_active * (ex(e.w1) + ex(e.w2) + ex(e.w3));
}

// A sequence cache holding `length` positions of synthetic content in the production layout: window and
// compressor rows of small random values, compressed entries of random finite FP8 codes with e8m0 scales near
// 2^-2 and bf16 rope dims, indexer keys of random FP4 codes.
kvcache::SequenceCache synthetic_cache(const std::vector<kvcache::LayerGeometry> &geo, int64_t length, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> small(0.0f, 0.5f);
    kvcache::SequenceCache sc(geo);
    for (kvcache::LayerCache &l : sc.layers) {
        l.begin();
        for (int64_t p = std::max<int64_t>(0, length - l.window.capacity()); p < length; ++p) {
            uint16_t *row = l.window.write_row(p);
            for (int c = 0; c < l.window.row_len(); ++c) row[c] = core::f32_to_bf16(small(rng));
        }
        for (kvcache::PositionRing<float> *ring : {&l.comp_rows, &l.index_rows}) {
            if (!ring->capacity()) continue;
            for (int64_t p = std::max<int64_t>(0, length - ring->capacity()); p < length; ++p) {
                float *row = ring->write_row(p);
                for (int c = 0; c < ring->row_len(); ++c) row[c] = small(rng);
            }
        }
        if (!l.geo.ratio) continue;
        const int nope = l.geo.nope_dim();
        for (int64_t e = 0; e < length / l.geo.ratio; ++e) {
            uint8_t *entry = l.kv.append();
            for (int i = 0; i < nope; ++i) entry[i] = uint8_t(rng() % 0x78) | uint8_t((rng() & 1) << 7);
            for (int b = 0; b < nope / 64; ++b) entry[nope + b] = 125;
            for (int i = 0; i < l.geo.rope_dim; ++i) {
                const uint16_t v = core::f32_to_bf16(small(rng));
                std::memcpy(entry + nope + nope / 64 + 2 * i, &v, 2);
            }
            if (l.geo.ratio != 4) continue;
            uint8_t *key = l.index_keys.append();
            const int dI = l.geo.index_head_dim;
            for (int i = 0; i < dI / 2; ++i) key[i] = uint8_t(rng());
            for (int b = 0; b < dI / 32; ++b) key[dI / 2 + b] = 125;
        }
    }
    sc.length = sc.high_water = length;
    return sc;
}

// Faults in every page of the mapped checkpoint, as a server with the model resident in RAM has it.
size_t touch_weights(const model::Model &m) {
    size_t sum = 0;
    for (const auto &shard : m.checkpoint().shards())
        for (const io::TensorView &t : shard->tensors())
            for (uint64_t i = 0; i < t.nbytes; i += 4096) sum += t.data[i];
    return sum;
}

}  // namespace

// Time per backend operation (per call of `runs`), its share of `total_s`, and, given the peak, the GFLOP/s of
// the linears as a share of it, or, given the bandwidth, the rate they read their weights at as a share of that.
void print_ops(const OpTimes &times, double total_s, int runs, double peak, double bw) {
    double in_backend = 0;
    for (const auto &[op, o] : times.ops) {
        fmt::print("  {:<18} {:8.2f} ms  {:5.1f}%  {:5} calls", op, o.seconds / runs * 1e3, 100 * o.seconds / runs / total_s,
                   o.calls / runs);
        const double gflops = 2 * o.macs / o.seconds / 1e9;
        if (peak > 0 && o.macs > 0) fmt::print("  {:7.1f} GFLOP/s = {:4.1f}% of the peak", gflops, 100 * gflops / peak);
        const double gbs = o.bytes / o.seconds / 1e9;
        if (bw > 0 && gbs > 0) fmt::print("  {:6.1f} MB at {:5.1f} GB/s = {:3.0f}% of the bandwidth", o.bytes / runs / 1e6, gbs, 100 * gbs / bw);
        fmt::print("\n");
        in_backend += o.seconds / runs;
    }
    fmt::print("  {:<18} {:8.2f} ms  {:5.1f}%  (outside the primitives: the steps' host arithmetic and the schedule)\n",
               "other", (total_s - in_backend) * 1e3, 100 * (total_s - in_backend) / total_s);
    double in_steps = 0;
    std::string line;
    for (const auto &[step, t] : times.step_host) {
        in_steps += t / runs;
        if (t / runs >= 0.005 * total_s) line += fmt::format(" {} {:.2f},", step, t / runs * 1e3);
    }
    fmt::print("    host arithmetic of the steps (ms, those >= 0.5%):{}\n    schedule and the rest (ms): {:.2f}\n", line,
               (total_s - in_backend - in_steps) * 1e3);
}

int run(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s CHECKPOINT_DIR [CONTEXTS=1024,16384,65536] [DECODE_STEPS=16] [THREADS=0]\n", argv[0]);
        return 2;
    }
    std::vector<int64_t> contexts;
    {
        std::string list = argc > 2 ? argv[2] : "1024,16384,65536";
        for (size_t at = 0; at < list.size();) {
            const size_t comma = std::min(list.find(',', at), list.size());
            contexts.push_back(std::stoll(list.substr(at, comma - at)));
            at = comma + 1;
        }
    }
    const int steps = argc > 3 ? std::atoi(argv[3]) : 16;
    const int threads = argc > 4 && std::atoi(argv[4]) > 0 ? std::atoi(argv[4]) : bench::max_threads();
    // The bandwidth probe is repeated after each decode measurement and the best reading so far is the one quoted:
    // this machine's bandwidth drifts by up to 2x between minutes, and a low probe would flatter the ratios.
    double bw = bench::read_bandwidth(threads, 3);
    // the packed linears run on AMX tiles where the kernels are AMX: the GEMM peak is then the tiles'
    const bool amx = backend::cpu::selected_isa() >= backend::cpu::Isa::amx;
    const double peak = amx ? bench::amx_peak_gflops(threads) : bench::bf16_peak_gflops(threads);

    model::LoadOptions lo;
    lo.check_values = false;
    // The packed copy (default) is what the kernels stream, in huge pages, so the checkpoint stays mapped (read
    // into memory too it would be held twice: on a 24 GiB machine that pressure slowed runs 1.5-2x). Without the
    // copy the checkpoint is read into huge-page memory unless DSV4_BENCH_MMAP is set.
    lo.repack_weights = std::getenv("DSV4_BENCH_NO_REPACK") == nullptr;
    lo.use_mmap = lo.repack_weights || std::getenv("DSV4_BENCH_MMAP") != nullptr;
    auto model = model::Model::load(argv[1], lo);
    const io::ModelConfig &c = model->config();
    volatile size_t touched = touch_weights(*model);  // volatile: the reads must happen
    (void)touched;
    const model::ModelWeights &w = model->weights();

    TimingPrimitives *timing = nullptr;
    runtime::ContextOptions o;
    o.n_ctx = int(*std::max_element(contexts.begin(), contexts.end()) + steps + 3);  // + 2 warm-up steps
    o.n_ctx = std::max(o.n_ctx, 1024 + 1);
    o.n_seq_max = int(contexts.size());
    o.n_threads = threads;
    o.make_backend = [&](int n) {
        auto t = std::make_unique<TimingPrimitives>(backend::cpu::make_primitives(n));
        timing = t.get();
        return std::make_unique<TimingSteps>(std::make_unique<backend::cpu::CpuBackend>(std::move(t)), *timing);
    };
    runtime::Context ctx(*model, o);

    size_t layer_bytes = 0;
    double layer_macs = 0;
    std::map<int, size_t> bytes_by_ratio;  // compress ratio -> bytes of one such layer
    for (int il = 0; il < c.n_layers; ++il) {
        const size_t b = layer_bytes_per_token(w.layers[size_t(il)], c.n_activated_experts);
        layer_bytes += b;
        layer_macs += layer_macs_per_token(w.layers[size_t(il)], c.n_activated_experts);
        bytes_by_ratio[c.layers[size_t(il)].compress_ratio] = b;
    }
    const size_t head_bytes = bf16_bytes(w.head) + size_t(c.dim) * 2;  // LM head + one embedding row
    const size_t step_bytes = layer_bytes + head_bytes;

    fmt::print("{}: {} layers ({}), dim {}, {} experts ({} active, {}), vocab {}; CPU kernels {}, {} threads\n",
               argv[1], c.n_layers, c.n_layers == 2 ? "CSA + HCA" : "", c.dim, c.n_routed_experts, c.n_activated_experts,
               c.expert_format == io::ExpertFormat::fp4 ? "FP4" : "FP8", c.vocab_size,
               backend::cpu::isa_name(backend::cpu::selected_isa()), threads);
    fmt::print("read bandwidth            {:8.1f} GB/s;  {} peak {:8.1f} GFLOP/s\n", bw, amx ? "AMX bf16 tile" : "bf16 dot", peak);

    // Prefill: 1024 real tokens in one batch (about 24 per routed expert).
    std::mt19937 rng(3);
    std::uniform_int_distribution<int32_t> token(0, c.vocab_size - 1);
    std::vector<int32_t> prompt(static_cast<size_t>(1024));
    for (int32_t &t : prompt) t = token(rng);
    // A context's first pass faults in its temporaries' pages (a large share here: two layers, and page faults
    // are dear under this machine's hypervisor); later passes reuse them. Both are quoted, the later one broken
    // down.
    double first_s = 0, prefill_s = 0;
    for (double *pass : {&first_s, &prefill_s}) {
        ctx.seq_truncate(0, 0);
        timing->times = {};
        const auto t_prefill = Clock::now();
        ctx.decode(prompt.data(), nullptr, nullptr, 0, nullptr, 1024);
        *pass = seconds_since(t_prefill);
    }
    const double prefill_tps = 1024 / prefill_s;
    fmt::print("prefill 1024 tokens       {:8.1f} tokens/s = {:.1f} GFLOP/s of layer weights = {:.1f}% of the peak "
               "(a context's first pass: {:.1f} tokens/s)\n",
               prefill_tps, prefill_tps * 2 * layer_macs / 1e9, 100 * prefill_tps * 2 * layer_macs / 1e9 / peak,
               1024 / first_s);
    print_ops(timing->times, prefill_s, 1, peak, 0);
    fmt::print("bytes one decode step reads {:6.1f} MB (layers {:.1f} MB, LM head {:.1f} MB): {:.2f} ms at the bandwidth\n",
               step_bytes / 1e6, layer_bytes / 1e6, head_bytes / 1e6, step_bytes / bw / 1e6);

    // Decode at each context length, on a synthetic cache of that length in a sequence of its own. The contexts
    // take turns step by step, so that the machine's bandwidth drift (up to 2x between minutes) weighs on all of
    // them alike and their ratio is a fair one.
    const std::vector<uint8_t> header = [&] {
        std::vector<uint8_t> blob = ctx.save_state(0);
        return std::vector<uint8_t>(blob.begin(), blob.begin() + 20);  // magic, version, fingerprint, rewind
    }();
    std::vector<kvcache::LayerGeometry> geo = model->cache_geometry(o.n_rewind);
    geo.resize(size_t(c.n_layers));
    const int32_t n_seq = int32_t(contexts.size());
    for (int32_t seq = 0; seq < n_seq; ++seq) {
        std::vector<uint8_t> blob = header;
        synthetic_cache(geo, contexts[size_t(seq)], uint64_t(contexts[size_t(seq)])).serialize(blob);
        ctx.load_state(seq, blob.data(), blob.size());
    }
    std::vector<double> step_s(static_cast<size_t>(n_seq), 0.0);
    std::vector<OpTimes> step_ops(static_cast<size_t>(n_seq));
    for (int i = -2; i < steps; ++i)  // two warm-up rounds: first touches of the new caches and buffers
        for (int32_t seq = 0; seq < n_seq; ++seq) {
            const int32_t t = token(rng);
            timing->times = {};
            const auto t0 = Clock::now();
            ctx.decode(&t, nullptr, nullptr, seq, nullptr, 1);
            if (i < 0) continue;
            step_s[size_t(seq)] += seconds_since(t0) / steps;
            step_ops[size_t(seq)].add(timing->times);
        }
    bw = std::max(bw, bench::read_bandwidth(threads, 3));
    for (int32_t seq = 0; seq < n_seq; ++seq) {
        const double s = step_s[size_t(seq)];
        fmt::print("\ndecode at {:6} context: {:8.2f} ms/step ({:.1f} tokens/s) = {:.2f}x the bandwidth time ({:.1f} GB/s, "
                   "best probe), {:.2f}x the first context\n", contexts[size_t(seq)], s * 1e3, 1 / s,
                   s / (step_bytes / bw / 1e9), bw, s / step_s[0]);
        print_ops(step_ops[size_t(seq)], s, steps, 0, bw);
        if (seq != 0) continue;
        // Whole-model projection from the first context: the full model's layers at this run's bytes per layer
        // kind and measured/limit ratio (window layers: an HCA layer without its compressor, a slight overestimate).
        const nlohmann::json cfg = nlohmann::json::parse(io::read_text_file(std::string(argv[1]) + "/config.json"));
        if (cfg.contains("dsv4_bench_full_model") && bytes_by_ratio.count(4) && bytes_by_ratio.count(128)) {
            const auto &full = cfg["dsv4_bench_full_model"];
            size_t bytes = size_t(full["vocab_size"].get<int64_t>()) * size_t(c.dim) * 2;
            for (int ratio : full["compress_ratios"].get<std::vector<int>>()) bytes += bytes_by_ratio[ratio ? ratio : 128];
            const double ratio = s / (step_bytes / bw / 1e9);
            fmt::print("  whole model ({} layers, vocab {}): {:.2f} GB per token -> {:.2f} tokens/s here, {:.2f} at "
                       "186 GB/s (bandwidth limits {:.2f} / {:.2f})\n",
                       full["compress_ratios"].size(), full["vocab_size"].get<int64_t>(), bytes / 1e9,
                       bw * 1e9 / bytes / ratio, 186e9 / bytes / ratio, bw * 1e9 / bytes, 186e9 / bytes);
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "bench_layers: %s\n", e.what());
        return 1;
    }
}
