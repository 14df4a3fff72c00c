// Decode and prefill of real V4 layers (a checkpoint from bench/make_layer_checkpoint.py: one CSA and one HCA
// layer with every dimension of the config and random weights in the official format) against this machine's
// read bandwidth measured in the same run: each decode step must read the weights a token touches (attention,
// compressor, indexer, router, shared expert, the routed experts it selects, mHC mixes, the LM head row block)
// plus its KV entries; the ratio of the measured step to that byte count over the bandwidth is the efficiency.
// Every backend operation is timed, so the table also says where the time goes.
// Usage: bench_layers CHECKPOINT_DIR [CONTEXT=1024] [DECODE_STEPS=16] [THREADS=0]
#include <algorithm>
#include <cstdio>
#include <fmt/format.h>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/isa.h"
#include "io/mapped_file.h"
#include "limits.h"
#include "model/model.h"
#include "runtime/context.h"

using namespace dsv4;
using bench::Clock;
using bench::seconds_since;

namespace {

// Times every call of the wrapped backend by operation.
class TimingBackend final : public backend::Backend {
public:
    explicit TimingBackend(std::unique_ptr<backend::Backend> inner) : inner_(std::move(inner)) {}
    std::string name() const override { return inner_->name(); }
    void linear_fp8(const float *x, int64_t n, const core::Fp8Matrix &w, float *y) override {
        timed("linear_fp8", [&] { inner_->linear_fp8(x, n, w, y); });
    }
    void linear_expert(const float *x, int64_t n, const core::ExpertMatrix &w, float *y) override {
        timed("linear_expert", [&] { inner_->linear_expert(x, n, w, y); });
    }
    void linear_bf16(const float *x, int64_t n, const core::Bf16Matrix &w, float *y) override {
        timed("linear_bf16", [&] { inner_->linear_bf16(x, n, w, y); });
    }
    void linear_f32(const float *x, int64_t n, const core::Bf16Matrix &w, float *y) override {
        timed("linear_f32", [&] { inner_->linear_f32(x, n, w, y); });
    }
    void linear_f32w(const float *x, int64_t n, const float *w, int64_t rows, int64_t cols, float *y) override {
        timed("linear_f32w", [&] { inner_->linear_f32w(x, n, w, rows, cols, y); });
    }
    void attention(const backend::AttentionProblem &p) override { timed("attention", [&] { inner_->attention(p); }); }

    std::map<std::string, double> seconds;

private:
    template <typename F>
    void timed(const char *op, F &&f) {
        const auto t0 = Clock::now();
        f();
        seconds[op] += seconds_since(t0);
    }
    std::unique_ptr<backend::Backend> inner_;
};

size_t fp8_bytes(const core::Fp8Matrix &m) {
    return m.w ? size_t(m.rows * m.cols + (m.rows + 127) / 128 * m.scale_cols()) : 0;
}
size_t expert_bytes(const core::ExpertMatrix &m) {
    return m.format == core::ExpertFormat::fp8 ? fp8_bytes(m.fp8) : size_t(m.fp4.rows * m.fp4.cols / 2 + m.fp4.rows * m.fp4.cols / 32);
}
size_t bf16_bytes(const core::Bf16Matrix &m) { return size_t(m.rows * m.cols * 2); }

// Bytes of weights one decode token reads in a layer (the routed experts: n_active of them).
size_t layer_bytes_per_token(const model::LayerWeights &l, int n_active) {
    size_t b = fp8_bytes(l.wq_a) + fp8_bytes(l.wq_b) + fp8_bytes(l.wkv) + fp8_bytes(l.wo_b) + 2 * l.wo_a.size();
    b += bf16_bytes(l.compressor.wkv) + bf16_bytes(l.compressor.wgate);
    b += fp8_bytes(l.index_wq_b) + bf16_bytes(l.index_weights_proj);
    b += bf16_bytes(l.index_compressor.wkv) + bf16_bytes(l.index_compressor.wgate);
    b += bf16_bytes(l.gate) + 4 * (l.hc_attn.fn.size() + l.hc_ffn.fn.size());
    b += fp8_bytes(l.shared.w1) + fp8_bytes(l.shared.w2) + fp8_bytes(l.shared.w3);
    const model::ExpertWeights &e = l.experts.at(0);
    b += size_t(n_active) * (expert_bytes(e.w1) + expert_bytes(e.w2) + expert_bytes(e.w3));
    return b;
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

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s CHECKPOINT_DIR [CONTEXT=1024] [DECODE_STEPS=16] [THREADS=0]\n", argv[0]);
        return 2;
    }
    const int context = argc > 2 ? std::atoi(argv[2]) : 1024, steps = argc > 3 ? std::atoi(argv[3]) : 16;
    const int threads = argc > 4 && std::atoi(argv[4]) > 0 ? std::atoi(argv[4]) : bench::max_threads();
    const double bw = bench::read_bandwidth(threads, 3);

    model::LoadOptions lo;
    lo.check_values = false;
    lo.use_mmap = std::getenv("DSV4_BENCH_MMAP") != nullptr;  // default: read into (huge-page) memory
    auto model = model::Model::load(argv[1], lo);
    const io::ModelConfig &c = model->config();
    volatile size_t touched = touch_weights(*model);  // volatile: the reads must happen
    (void)touched;
    const model::ModelWeights &w = model->weights();

    TimingBackend *timing = nullptr;
    runtime::ContextOptions o;
    o.n_ctx = context + steps + 1;
    o.n_threads = threads;
    o.make_backend = [&](int n) {
        auto t = std::make_unique<TimingBackend>(backend::make_cpu_backend(n));
        timing = t.get();
        return t;
    };
    runtime::Context ctx(*model, o);

    std::mt19937 rng(3);
    std::uniform_int_distribution<int32_t> token(0, c.vocab_size - 1);
    std::vector<int32_t> prompt(static_cast<size_t>(context));
    for (int32_t &t : prompt) t = token(rng);
    const auto t_prefill = Clock::now();
    for (int p0 = 0; p0 < context; p0 += 256) {
        const int n = std::min(256, context - p0);
        ctx.decode(prompt.data() + p0, nullptr, nullptr, 0, nullptr, n);
    }
    const double prefill_s = seconds_since(t_prefill);

    timing->seconds.clear();
    const auto t_decode = Clock::now();
    for (int i = 0; i < steps; ++i) {
        const int32_t t = token(rng);
        ctx.decode(&t, nullptr, nullptr, 0, nullptr, 1);
    }
    const double step_s = seconds_since(t_decode) / steps;

    size_t layer_bytes = 0;
    std::map<int, size_t> bytes_by_ratio;  // compress ratio -> bytes of one such layer
    for (int il = 0; il < c.n_layers; ++il) {
        const size_t b = layer_bytes_per_token(w.layers[size_t(il)], c.n_activated_experts);
        layer_bytes += b;
        bytes_by_ratio[c.layers[size_t(il)].compress_ratio] = b;
    }
    const size_t head_bytes = bf16_bytes(w.head) + size_t(c.dim) * 2;  // LM head + one embedding row
    const size_t step_bytes = layer_bytes + head_bytes;

    fmt::print("{}: {} layers ({}), dim {}, {} experts ({} active, {}), vocab {}; CPU kernels {}, {} threads\n",
               argv[1], c.n_layers, c.n_layers == 2 ? "CSA + HCA" : "", c.dim, c.n_routed_experts, c.n_activated_experts,
               c.expert_format == io::ExpertFormat::fp4 ? "FP4" : "FP8", c.vocab_size,
               backend::cpu::isa_name(backend::cpu::selected_isa()), threads);
    fmt::print("read bandwidth            {:8.1f} GB/s\n", bw);
    fmt::print("prefill {:6} tokens     {:8.1f} tokens/s\n", context, context / prefill_s);
    fmt::print("decode step at {:6} ctx {:8.2f} ms   ({:.1f} tokens/s)\n", context, step_s * 1e3, 1.0 / step_s);
    fmt::print("bytes one step must read  {:8.1f} MB   (layers {:.1f} MB, LM head {:.1f} MB)\n", step_bytes / 1e6,
               layer_bytes / 1e6, head_bytes / 1e6);
    fmt::print("bandwidth time of those   {:8.2f} ms   -> measured / limit = {:.2f}x\n", step_bytes / bw / 1e6,
               step_s / (step_bytes / bw / 1e9));
    // Whole-model projection: the full model's layers at this run's bytes per layer kind and this run's
    // measured/limit ratio (window layers: an HCA layer without its compressor, a slight overestimate).
    const nlohmann::json cfg = nlohmann::json::parse(io::read_text_file(std::string(argv[1]) + "/config.json"));
    if (cfg.contains("dsv4_bench_full_model") && bytes_by_ratio.count(4) && bytes_by_ratio.count(128)) {
        const auto &full = cfg["dsv4_bench_full_model"];
        size_t bytes = size_t(full["vocab_size"].get<int64_t>()) * size_t(c.dim) * 2;
        for (int ratio : full["compress_ratios"].get<std::vector<int>>()) bytes += bytes_by_ratio[ratio ? ratio : 128];
        const double ratio = step_s / (step_bytes / bw / 1e9);
        fmt::print("whole model ({} layers, vocab {}): {:.2f} GB per token -> at this run's {:.2f}x: {:.2f} tokens/s "
                   "here ({:.0f} GB/s), {:.2f} tokens/s at 186 GB/s (limits {:.2f} / {:.2f})\n",
                   full["compress_ratios"].size(), full["vocab_size"].get<int64_t>(), bytes / 1e9, ratio,
                   bw * 1e9 / bytes / ratio, bw, 186e9 / bytes / ratio, bw * 1e9 / bytes, 186e9 / bytes);
    }
    fmt::print("where a decode step's time goes (backend operations, ms per step):\n");
    double in_backend = 0;
    for (const auto &[op, s] : timing->seconds) {
        fmt::print("  {:<14} {:8.2f} ms  {:5.1f}%\n", op, s / steps * 1e3, 100 * s / steps / step_s);
        in_backend += s / steps;
    }
    fmt::print("  {:<14} {:8.2f} ms  {:5.1f}%  (model code outside the backend: routing, norms, mHC, caches)\n", "other",
               (step_s - in_backend) * 1e3, 100 * (step_s - in_backend) / step_s);
    return 0;
}
