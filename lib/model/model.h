// A loaded DeepSeek-V4 model: typed config, mapped checkpoint, the device that prepared its weights, per-layer
// RoPE, and the forward pass: a schedule of the backend's steps (model/forward.cpp). Immutable after load;
// thread-safe for concurrent forwards on different caches, each with its own backend (Device::make_backend).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/rope.h"
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
    std::string device = "cpu";  // backend::make_device's spec: "cpu", "cuda", "cuda:N"
    io::Checkpoint::Progress progress = nullptr;
    void *progress_user = nullptr;
};

class Model {
public:
    static std::unique_ptr<Model> load(const std::string &dir, const LoadOptions &options);

    const io::ModelConfig &config() const { return config_; }
    const ModelWeights &weights() const { return weights_; }
    const io::Checkpoint &checkpoint() const { return *checkpoint_; }
    const backend::Device &device() const { return *device_; }
    const std::string &device_name() const { return device_name_; }
    const std::string &name() const { return name_; }
    uint64_t fingerprint() const { return fingerprint_; }
    // Cache geometry of the main layers then the MTP blocks.
    std::vector<kvcache::LayerGeometry> cache_geometry(int rewind) const;

    // One block's sub-layers on the streams h [N, hc·D] → out (same shape), over b's spans and caches of this
    // layer. Used by forward() and by the layer-isolated replay of eval-golden.
    void attention_sublayer(backend::Backend &be, int layer, const backend::Tensor &h, const backend::LayerBatch &b,
                            backend::Tensor &out, const Observer *obs) const;
    void ffn_sublayer(backend::Backend &be, int layer, const backend::Tensor &h, const backend::Tensor &tokens,
                      backend::Tensor &out, const Observer *obs) const;

    // Embeds tokens [N], runs every main layer over the spans (caches[s] the cache of span s's sequence), and
    // returns the final streams [N, hc·D]. `should_abort` is polled between layers; when it returns true the
    // forward stops and returns nullptr.
    std::unique_ptr<backend::Buffer> forward(backend::Backend &be, const int32_t *tokens, int64_t N,
                                             const std::vector<backend::Span> &spans,
                                             const std::vector<kvcache::SequenceCache *> &caches, const Observer *obs,
                                             const std::function<bool()> &should_abort) const;
    // hc_head → final norm → fp32 logits [rows.size(), vocab] (host memory) for the given rows of streams.
    void logits(backend::Backend &be, const backend::Tensor &streams, const std::vector<int64_t> &rows,
                float *out) const;
    // MTP block (spec §9.3) for n tokens of one sequence: main streams (host, [n, hc·D]) at positions p, tokens
    // at p+1.
    void mtp_logits(backend::Backend &be, const float *streams, const int32_t *next_tokens, int64_t n,
                    int64_t start_pos, kvcache::LayerCache &cache, float *out) const;

private:
    Model() = default;
    backend::Layer layer_view(int layer) const;
    std::unique_ptr<backend::Buffer> upload_ids(backend::Backend &be, const int32_t *ids, int64_t n) const;
    io::ModelConfig config_;
    std::unique_ptr<io::Checkpoint> checkpoint_;
    ModelWeights weights_;
    std::unique_ptr<backend::Device> device_;  // owns what its preparation of weights_ allocated
    std::string device_name_;
    std::vector<core::Rope> ropes_;  // one per layer (main then MTP)
    std::string name_;
    uint64_t fingerprint_ = 0;
};

}  // namespace dsv4::model
