// A loaded DeepSeek-V4 model: typed config, mapped checkpoint, bound weights, per-layer RoPE, and the
// forward pass over a batch of sequence spans. Immutable after load; thread-safe for concurrent forwards
// on different caches.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attention/attention.h"
#include "attention/rope.h"
#include "backend/backend.h"
#include "core/scratch.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "kvcache/cache.h"
#include "model/observer.h"
#include "model/weights.h"

namespace dsv4::model {

struct LoadOptions {
    bool use_mmap = true;
    bool check_values = true;
    bool repack_weights = true;  // where the CPU backend's best kernels use the packed layout
    io::Checkpoint::Progress progress = nullptr;
    void *progress_user = nullptr;
};

// Consecutive tokens of one sequence in a batch: rows [row0, row0+n) at positions start_pos…
struct SequenceSpan {
    int64_t row0 = 0, n = 0, start_pos = 0;
    kvcache::SequenceCache *cache = nullptr;
};

class Model {
public:
    static std::unique_ptr<Model> load(const std::string &dir, const LoadOptions &options);

    const io::ModelConfig &config() const { return config_; }
    const ModelWeights &weights() const { return weights_; }
    const io::Checkpoint &checkpoint() const { return *checkpoint_; }
    const std::string &name() const { return name_; }
    uint64_t fingerprint() const { return fingerprint_; }
    // Cache geometry of the main layers then the MTP blocks.
    std::vector<kvcache::LayerGeometry> cache_geometry(int rewind) const;

    // One block's sub-layers on streams h (bf16 values [N, hc, D]) → out (same shape). Spans carry each
    // sequence's cache of this layer. Used by forward() and by the layer-isolated replay of eval-golden.
    void attention_sublayer(backend::Backend &be, int layer, const float *h, int64_t N,
                            const std::vector<attention::Span> &spans, float *out, const Observer *obs) const;
    void ffn_sublayer(backend::Backend &be, int layer, const float *h, const int32_t *tokens, int64_t N, float *out,
                      const Observer *obs) const;

    // Embeds tokens, runs every main layer, and returns the final streams (bf16 values [N, hc, D]).
    // `should_abort` is polled between layers; when it returns true the forward stops and returns false.
    bool forward(backend::Backend &be, const int32_t *tokens, int64_t N, const std::vector<SequenceSpan> &spans,
                 core::FloatBuffer &streams, const Observer *obs, const std::function<bool()> &should_abort) const;
    // hc_head → final norm → fp32 logits [rows.size(), vocab] for the given rows of streams.
    void logits(backend::Backend &be, const float *streams, const std::vector<int64_t> &rows, float *out) const;
    // MTP block (spec §9.3) for n tokens of one sequence: main streams at positions p, tokens at p+1.
    void mtp_logits(backend::Backend &be, const float *streams, const int32_t *next_tokens, int64_t n,
                    int64_t start_pos, kvcache::LayerCache &cache, float *out) const;

private:
    Model() = default;
    template <typename Branch>
    void residual_step(backend::Backend &be, int layer, const char *tag, const HcWeights &hc_weights,
                       const std::vector<float> &norm, const float *h, int64_t N, float *out, const char *out_name,
                       const Observer *obs, Branch &&branch) const;
    io::ModelConfig config_;
    std::unique_ptr<io::Checkpoint> checkpoint_;
    ModelWeights weights_;
    core::HugeBuffer packed_weights_;  // the packed copies weights_ points at (LoadOptions::repack_weights)
    std::vector<attention::Rope> ropes_;  // one per layer (main then MTP)
    std::string name_;
    uint64_t fingerprint_ = 0;
};

}  // namespace dsv4::model
