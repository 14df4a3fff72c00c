// An inference context: the caches of up to n_seq_max sequences, a backend instance, and the outputs of the
// last evaluation. One thread at a time.
#pragma once
#include <dsv4/dsv4.h>

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "core/scratch.h"
#include "kvcache/cache.h"
#include "model/model.h"

namespace dsv4::runtime {

// The defaults here are the library's (dsv4_context_params_init copies them; the Python binding and the CLI ask it).
struct ContextOptions {
    int n_ctx = 4096, n_seq_max = 1, n_threads = 0, n_rewind = 32;
    dsv4_abort_callback abort_callback = nullptr;
    void *abort_user_data = nullptr;
    model::Observer observer;  // empty = none
    // Builds the compute backend (n_threads as above); empty = the model device's (Device::make_backend). For
    // benchmarks and tests that wrap or replace the backend.
    std::function<std::unique_ptr<backend::Backend>(int n_threads)> make_backend;
};

class Context {
public:
    Context(const model::Model &model, const ContextOptions &options);

    // Evaluates tokens (seq_ids / positions may be null: see dsv4_batch); transactional.
    void decode(const int32_t *tokens, const int32_t *positions, const int32_t *seq_ids, int32_t default_seq,
                const int8_t *want_output, int32_t n_tokens);
    int32_t n_outputs() const { return int32_t(output_rows_.size()); }
    // Successful evaluations so far: tells a caller whether the outputs it left are still the current ones.
    uint64_t n_evaluations() const { return n_evaluations_; }
    const float *logits(int32_t i_output) const;  // throws on a bad index
    void mtp_logits(const int32_t *next_tokens, int32_t n, float *out, size_t cap);

    int64_t seq_length(int32_t seq) const;
    void seq_truncate(int32_t seq, int64_t n);
    void seq_fork(int32_t src, int32_t dst);
    dsv4_memory_stats memory_stats() const;
    std::vector<uint8_t> save_state(int32_t seq) const;
    size_t state_size(int32_t seq) const;  // save_state(seq).size(), without serialising
    void load_state(int32_t seq, const uint8_t *data, size_t size);
    // Any thread: cancels the evaluation in progress, or the next one if none runs.
    void request_abort() { abort_requested_.store(true); }
    // Consumes a pending abort request.
    bool take_abort() { return abort_requested_.exchange(false); }

    const model::Model &model() const { return model_; }
    int n_ctx() const { return options_.n_ctx; }

private:
    void check_seq(int32_t seq) const;
    kvcache::SequenceCache &cache(int32_t seq);

    const model::Model &model_;
    ContextOptions options_;
    std::unique_ptr<backend::Backend> backend_;
    std::shared_ptr<kvcache::Storage> kv_storage_;  // the model device's: where the caches live
    core::ScratchPool scratch_;  // forward passes' large temporaries, kept for the next pass
    std::vector<kvcache::LayerGeometry> geometry_;       // main layers
    std::vector<std::unique_ptr<kvcache::SequenceCache>> seqs_;
    std::vector<std::unique_ptr<kvcache::LayerCache>> mtp_caches_;
    std::vector<int64_t> mtp_length_;
    // outputs of the last decode, in batch order
    std::vector<float> logits_;
    std::vector<int64_t> output_rows_;   // rows into last_streams_
    std::vector<int32_t> output_seq_;
    std::vector<int64_t> output_pos_;
    std::vector<float> last_streams_;    // final streams of the output rows [n_out, hc, D]
    uint64_t n_evaluations_ = 0;
    std::atomic<bool> abort_requested_{false};
};

}  // namespace dsv4::runtime
