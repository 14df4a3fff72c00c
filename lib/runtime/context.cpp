#include "runtime/context.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "core/error.h"

namespace dsv4::runtime {

Context::Context(const model::Model &model, const ContextOptions &options) : model_(model), options_(options) {
    const io::ModelConfig &c = model.config();
    if (options_.n_ctx == 0) options_.n_ctx = c.max_position_embeddings;
    if (options_.n_ctx < 0 || options_.n_ctx > c.max_position_embeddings)
        fail(DSV4_ERR_INVALID_ARGUMENT, "n_ctx = {} outside [0, max_position_embeddings = {}]", options_.n_ctx,
             c.max_position_embeddings);
    if (options_.n_seq_max < 1 || options_.n_seq_max > 4096)
        fail(DSV4_ERR_INVALID_ARGUMENT, "n_seq_max = {} outside [1, 4096]", options_.n_seq_max);
    if (options_.n_rewind < 0 || options_.n_rewind > 65536)
        fail(DSV4_ERR_INVALID_ARGUMENT, "n_rewind = {} outside [0, 65536]", options_.n_rewind);
    if (options_.n_threads < 0) fail(DSV4_ERR_INVALID_ARGUMENT, "n_threads = {} is negative", options_.n_threads);
    backend_ = options_.make_backend ? options_.make_backend(options_.n_threads) : model.device().make_backend(options_.n_threads);
    kv_storage_ = model.device().kv_storage();
    std::vector<kvcache::LayerGeometry> all = model.cache_geometry(options_.n_rewind);
    geometry_.assign(all.begin(), all.begin() + c.n_layers);
    seqs_.resize(size_t(options_.n_seq_max));
    mtp_caches_.resize(size_t(options_.n_seq_max));
    mtp_length_.assign(size_t(options_.n_seq_max), 0);
}

void Context::check_seq(int32_t seq) const {
    if (seq < 0 || seq >= options_.n_seq_max)
        fail(DSV4_ERR_INVALID_ARGUMENT_SEQUENCE, "sequence id {} outside [0, n_seq_max = {})", seq, options_.n_seq_max);
}

kvcache::SequenceCache &Context::cache(int32_t seq) {
    auto &slot = seqs_[size_t(seq)];
    if (!slot) slot = std::make_unique<kvcache::SequenceCache>(geometry_, kv_storage_);
    return *slot;
}

int64_t Context::seq_length(int32_t seq) const {
    check_seq(seq);
    return seqs_[size_t(seq)] ? seqs_[size_t(seq)]->length : 0;
}

void Context::decode(const int32_t *tokens, const int32_t *positions, const int32_t *seq_ids, int32_t default_seq,
                     const int8_t *want_output, int32_t n) {
    const io::ModelConfig &c = model_.config();
    if (n < 1 || !tokens) fail(DSV4_ERR_INVALID_ARGUMENT, "batch: n_tokens = {} (need >= 1 and a token array)", n);
    // Validate everything before touching any cache.
    std::vector<int32_t> seq_of(static_cast<size_t>(n));
    std::vector<int64_t> pos_of(static_cast<size_t>(n));
    std::vector<int32_t> order;       // sequences in order of first appearance
    std::vector<int64_t> count(size_t(options_.n_seq_max), 0);
    for (int32_t i = 0; i < n; ++i) {
        const int32_t s = seq_ids ? seq_ids[i] : default_seq;
        check_seq(s);
        if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
            fail(DSV4_ERR_INVALID_TOKEN, "batch: token {} at index {} outside [0, vocab_size = {})", tokens[i], i, c.vocab_size);
        const int64_t expected = seq_length(s) + count[size_t(s)];
        if (positions && positions[i] != expected)
            fail(DSV4_ERR_INVALID_ARGUMENT_POSITION, "batch: token {} of sequence {} has position {}, expected {} (tokens "
                 "must continue their sequence)", i, s, positions[i], expected);
        if (expected >= options_.n_ctx)
            fail(DSV4_ERR_CONTEXT_FULL, "batch: sequence {} would reach position {} but n_ctx = {}", s, expected, options_.n_ctx);
        if (count[size_t(s)]++ == 0) order.push_back(s);
        seq_of[size_t(i)] = s;
        pos_of[size_t(i)] = expected;
    }
    // Group rows by sequence (stable), so each sequence's tokens form one span.
    std::vector<int32_t> perm;  // grouped row -> batch index
    std::vector<backend::Span> spans;
    std::vector<kvcache::SequenceCache *> caches;
    for (int32_t s : order) {
        backend::Span span;
        span.row0 = int64_t(perm.size());
        span.start_pos = seq_length(s);
        caches.push_back(&cache(s));
        for (int32_t i = 0; i < n; ++i)
            if (seq_of[size_t(i)] == s) perm.push_back(i);
        span.n = int64_t(perm.size()) - span.row0;
        spans.push_back(span);
    }
    std::vector<int32_t> grouped(static_cast<size_t>(n));
    std::vector<int64_t> grouped_row_of(static_cast<size_t>(n));
    for (size_t r = 0; r < perm.size(); ++r) {
        grouped[r] = tokens[perm[r]];
        grouped_row_of[size_t(perm[r])] = int64_t(r);
    }
    std::vector<int64_t> out_rows;
    std::vector<int32_t> out_seq;
    std::vector<int64_t> out_pos;
    for (int32_t i = 0; i < n; ++i)
        if (want_output ? want_output[i] != 0 : i == n - 1) {
            out_rows.push_back(grouped_row_of[size_t(i)]);
            out_seq.push_back(seq_of[size_t(i)]);
            out_pos.push_back(pos_of[size_t(i)]);
        }

    for (kvcache::SequenceCache *sc : caches) sc->begin();
    try {
        const core::ScratchScope reuse(&scratch_);  // the pass's temporaries in the memory of earlier passes
        auto should_abort = [this] {
            return take_abort() || (options_.abort_callback && options_.abort_callback(options_.abort_user_data));
        };
        const model::Observer *obs = options_.observer.get ? &options_.observer : nullptr;
        const auto streams = model_.forward(*backend_, grouped.data(), n, spans, caches, obs, should_abort);
        if (!streams) fail(DSV4_ERR_CANCELLED, "decode cancelled by the abort callback");
        std::vector<float> logits(out_rows.size() * size_t(c.vocab_size));
        if (!out_rows.empty()) model_.logits(*backend_, streams->tensor, out_rows, logits.data());  // a prefill chunk may ask none
        // The output rows' final streams, kept on the host for the MTP block.
        const size_t row = size_t(c.hc_mult) * size_t(c.dim);
        std::vector<float> kept(out_rows.size() * row);
        std::vector<uint8_t> staging;
        const auto *all = static_cast<const float *>(backend_->read(streams->tensor, staging));
        for (size_t k = 0; k < out_rows.size(); ++k) std::copy_n(all + size_t(out_rows[k]) * row, row, &kept[k * row]);
        // Commit: nothing below can fail.
        for (size_t s = 0; s < spans.size(); ++s) {
            caches[s]->length += spans[s].n;
            caches[s]->high_water = std::max(caches[s]->high_water, caches[s]->length);
        }
        logits_ = std::move(logits);
        last_streams_ = std::move(kept);
        output_rows_ = std::move(out_rows);
        output_seq_ = std::move(out_seq);
        output_pos_ = std::move(out_pos);
        ++n_evaluations_;
    } catch (...) {
        for (kvcache::SequenceCache *sc : caches) sc->rollback();
        throw;
    }
}

const float *Context::logits(int32_t i) const {
    const int32_t n = n_outputs();
    if (i < 0) i += n;
    if (i < 0 || i >= n) fail(DSV4_ERR_INVALID_ARGUMENT, "output index outside the {} outputs of the last decode", n);
    return logits_.data() + size_t(i) * size_t(model_.config().vocab_size);
}

void Context::mtp_logits(const int32_t *next_tokens, int32_t n, float *out, size_t cap) {
    const io::ModelConfig &c = model_.config();
    if (c.n_mtp_layers == 0) fail(DSV4_ERR_UNSUPPORTED, "{}: the checkpoint has no MTP block", model_.name());
    if (n != n_outputs()) fail(DSV4_ERR_INVALID_ARGUMENT, "mtp: {} next tokens for {} outputs", n, n_outputs());
    if (cap < size_t(n) * size_t(c.vocab_size))
        fail(DSV4_ERR_BUFFER_TOO_SMALL, "mtp: output buffer holds {} floats, need {}", cap, size_t(n) * size_t(c.vocab_size));
    const size_t row = size_t(c.hc_mult) * size_t(c.dim);
    const kvcache::LayerGeometry g = model_.cache_geometry(options_.n_rewind)[size_t(c.n_layers)];
    // Validate first: each output must continue its sequence's MTP positions.
    std::vector<int64_t> next_pos = mtp_length_;
    for (int32_t k = 0; k < n; ++k) {
        if (next_tokens[k] < 0 || next_tokens[k] >= c.vocab_size)
            fail(DSV4_ERR_INVALID_TOKEN, "mtp: token {} outside the vocabulary", next_tokens[k]);
        const int32_t s = output_seq_[size_t(k)];
        if (output_pos_[size_t(k)] != next_pos[size_t(s)]++)
            fail(DSV4_ERR_INVALID_ARGUMENT_POSITION, "mtp: sequence {} is at MTP position {}, output {} is at {}", s,
                 next_pos[size_t(s)] - 1, k, output_pos_[size_t(k)]);
    }
    std::vector<int32_t> touched;
    for (int32_t k = 0; k < n; ++k) {
        const int32_t s = output_seq_[size_t(k)];
        auto &cache = mtp_caches_[size_t(s)];
        if (!cache) cache = std::make_unique<kvcache::LayerCache>(g, kv_storage_);
        if (std::find(touched.begin(), touched.end(), s) == touched.end()) {
            cache->begin();
            touched.push_back(s);
        }
    }
    try {
        for (int32_t k = 0; k < n; ++k) {
            const int32_t s = output_seq_[size_t(k)];
            model_.mtp_logits(*backend_, &last_streams_[size_t(k) * row], &next_tokens[k], 1,
                              output_pos_[size_t(k)], *mtp_caches_[size_t(s)], out + size_t(k) * size_t(c.vocab_size));
        }
    } catch (...) {
        for (int32_t s : touched) mtp_caches_[size_t(s)]->rollback();
        throw;
    }
    mtp_length_ = next_pos;
}

void Context::seq_truncate(int32_t seq, int64_t n) {
    const int64_t len = seq_length(seq);
    if (n < 0 || n > len)
        fail(DSV4_ERR_INVALID_ARGUMENT_POSITION, "truncate: sequence {} has {} positions, cannot truncate to {}", seq, len, n);
    if (n == len) return;
    if (n == 0) {
        if (seqs_[size_t(seq)]) seqs_[size_t(seq)]->clear();
    } else {
        const kvcache::SequenceCache &c = *seqs_[size_t(seq)];
        if (!c.can_truncate_to(n, options_.n_rewind))
            fail(DSV4_ERR_UNSUPPORTED_REWIND, "truncate: sequence {} has held {} positions; going back to {} exceeds "
                 "n_rewind = {}", seq, c.high_water, n, options_.n_rewind);
        seqs_[size_t(seq)]->truncate(n);
    }
    if (mtp_caches_[size_t(seq)] && mtp_length_[size_t(seq)] > n) {
        mtp_caches_[size_t(seq)].reset();  // the MTP window restarts; its positions are re-fed by the caller
        mtp_length_[size_t(seq)] = 0;
    }
}

void Context::seq_fork(int32_t src, int32_t dst) {
    check_seq(src);
    check_seq(dst);
    if (src == dst) return;
    seqs_[size_t(dst)] = std::make_unique<kvcache::SequenceCache>(cache(src));
    mtp_caches_[size_t(dst)].reset();
    mtp_length_[size_t(dst)] = 0;
}

dsv4_memory_stats Context::memory_stats() const {
    dsv4_memory_stats st{};
    st.struct_size = sizeof st;
    std::set<const void *> pages;
    uint64_t bytes = 0;
    for (const auto &s : seqs_) {
        if (!s) continue;
        if (s->length > 0) ++st.n_sequences;
        for (const kvcache::LayerCache &l : s->layers) {
            bytes += l.window.bytes() + l.comp_rows.bytes() + l.index_rows.bytes();
            for (const auto *entries : {&l.kv, &l.index_keys})
                for (const auto &p : entries->pages())
                    if (pages.insert(p.get()).second) bytes += p->size();
        }
    }
    st.cache_bytes = bytes;
    const kvcache::MemoryPlan plan = kvcache::plan_memory(geometry_);
    st.constant_bytes_per_sequence = plan.constant_bytes;
    st.bytes_per_4_tokens_csa = plan.bytes_per_4_tokens_csa;
    st.bytes_per_128_tokens_hca = plan.bytes_per_128_tokens_hca;
    st.bytes_per_1024_tokens = plan.bytes_per_1024_tokens;
    st.scratch_bytes = scratch_.bytes() + backend_->workspace_bytes();
    return st;
}

// The state blob: a header of kStateHeaderBytes (magic, version, model fingerprint, n_rewind), then the cache.
constexpr size_t kStateHeaderBytes = 20;

size_t Context::state_size(int32_t seq) const {
    check_seq(seq);
    return kStateHeaderBytes + (seqs_[size_t(seq)] ? seqs_[size_t(seq)]->serialized_size()
                                                   : kvcache::SequenceCache(geometry_, kv_storage_).serialized_size());
}

std::vector<uint8_t> Context::save_state(int32_t seq) const {
    check_seq(seq);
    std::vector<uint8_t> out;
    out.reserve(state_size(seq));
    auto put = [&](const void *p, size_t n) {
        out.insert(out.end(), static_cast<const uint8_t *>(p), static_cast<const uint8_t *>(p) + n);
    };
    const uint32_t magic = DSV4_STATE_MAGIC, version = DSV4_STATE_VERSION, rewind = uint32_t(options_.n_rewind);
    const uint64_t fp = model_.fingerprint();
    put(&magic, 4);
    put(&version, 4);
    put(&fp, 8);
    put(&rewind, 4);
    if (seqs_[size_t(seq)]) seqs_[size_t(seq)]->serialize(out);
    else kvcache::SequenceCache(geometry_, kv_storage_).serialize(out);
    return out;
}

void Context::load_state(int32_t seq, const uint8_t *data, size_t size) {
    check_seq(seq);
    if (!data || size < kStateHeaderBytes) fail(DSV4_ERR_FORMAT_TRUNCATED, "state blob: {} bytes, too short for the header", size);
    uint32_t magic, version, rewind;
    uint64_t fp;
    std::memcpy(&magic, data, 4);
    std::memcpy(&version, data + 4, 4);
    std::memcpy(&fp, data + 8, 8);
    std::memcpy(&rewind, data + 16, 4);
    if (magic != DSV4_STATE_MAGIC) fail(DSV4_ERR_VERSION, "state blob: bad magic 0x{:08x}", magic);
    if (version != DSV4_STATE_VERSION) fail(DSV4_ERR_VERSION, "state blob: version {}, this library reads {}", version, DSV4_STATE_VERSION);
    if (fp != model_.fingerprint()) fail(DSV4_ERR_VERSION, "state blob: saved with a different model");
    if (int(rewind) != options_.n_rewind)
        fail(DSV4_ERR_INVALID_ARGUMENT, "state blob: saved with n_rewind = {}, this context has {}", rewind, options_.n_rewind);
    kvcache::SequenceCache loaded(geometry_, kv_storage_);
    loaded.deserialize(data + kStateHeaderBytes, size - kStateHeaderBytes);
    if (loaded.length > options_.n_ctx)
        fail(DSV4_ERR_CONTEXT_FULL, "state blob: {} positions exceed n_ctx = {}", loaded.length, options_.n_ctx);
    seqs_[size_t(seq)] = std::make_unique<kvcache::SequenceCache>(std::move(loaded));
    mtp_caches_[size_t(seq)].reset();
    mtp_length_[size_t(seq)] = 0;
}

}  // namespace dsv4::runtime
