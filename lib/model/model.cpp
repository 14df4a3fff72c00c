#include "model/model.h"

#include <algorithm>

#include "core/log.h"
#include "io/mapped_file.h"

namespace dsv4::model {

std::unique_ptr<Model> Model::load(const std::string &dir, const LoadOptions &options) {
    std::unique_ptr<Model> m(new Model());
    m->device_ = backend::make_device(options.device);  // first: a device that is absent fails before any reading
    m->device_name_ = m->device_->name();
    m->config_ = io::parse_config(io::read_text_file(dir + "/config.json"), "config.json");
    m->checkpoint_ = std::make_unique<io::Checkpoint>(dir, options.use_mmap, options.progress, options.progress_user);
    m->weights_ = bind_weights(m->config_, *m->checkpoint_, options.check_values);
    backend::PrepareOptions prepare;
    prepare.repack_weights = options.repack_weights;
    prepare.progress = options.progress;
    prepare.progress_user = options.progress_user;
    if (const size_t bytes = m->device_->prepare(m->weights_, prepare))
        core::log(DSV4_LOG_LEVEL_INFO, "{}: {} prepared {} bytes of weights", dir, m->device_->name(), bytes);
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

}  // namespace dsv4::model
