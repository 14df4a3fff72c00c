// dsv4.hpp - header-only C++ layer over the C API (dsv4.h): RAII handles, exceptions, spans.
//
//     dsv4::Model model("path/to/checkpoint");
//     dsv4::Context ctx(model, [] { auto p = dsv4_context_default_params(); p.n_ctx = 8192; return p; }());
//     std::vector<int32_t> prompt = {0, 100, 200};
//     ctx.decode(prompt);                       // sequence 0
//     std::span<const float> logits = ctx.logits();
//
//     dsv4::Sampler sampler;                               // greedy by default
//     for (const dsv4::Piece &p : dsv4::Generation(ctx, sampler, model.tokenizer(), prompt))
//         std::cout << p.text << std::flush;               // streamed as tokens complete characters
//
// Every failing call throws dsv4::Error carrying the status and the library's message. Thread-safety is that
// of the underlying C functions (see dsv4.h).
#ifndef DSV4_HPP
#define DSV4_HPP

#include <dsv4/dsv4.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsv4 {

class Error : public std::runtime_error {
public:
    Error(dsv4_status status, const std::string &message) : std::runtime_error(message), status_(status) {}
    dsv4_status status() const noexcept { return status_; }
    dsv4_status primary() const noexcept { return DSV4_STATUS_PRIMARY(status_); }

private:
    dsv4_status status_;
};

// Throws dsv4::Error for any status other than DSV4_OK, with this thread's last-error message.
inline void check(dsv4_status status) {
    if (status != DSV4_OK)
        throw Error(status, std::string(dsv4_status_name(status)) + ": " + dsv4_last_error_message());
}

namespace detail {
// Move-only owner of a C handle with its destructor.
template <typename T, void (*Free)(T *)>
class Handle {
public:
    Handle() = default;
    explicit Handle(T *p) : p_(p) {}
    Handle(Handle &&o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    Handle &operator=(Handle &&o) noexcept {
        if (this != &o) {
            Free(p_);
            p_ = std::exchange(o.p_, nullptr);
        }
        return *this;
    }
    Handle(const Handle &) = delete;
    Handle &operator=(const Handle &) = delete;
    ~Handle() { Free(p_); }
    T *get() const noexcept { return p_; }
    explicit operator bool() const noexcept { return p_ != nullptr; }

private:
    T *p_ = nullptr;
};

// Text from a C call with dsv4_detokenize's buffer rule: one call with a guessed capacity, a second only if the
// guess was short (a size query would take the library's error path on every call).
template <typename F>
std::string text_out(size_t guess, F &&call) {
    std::string text(guess + 1, '\0');
    size_t n = 0;
    dsv4_status st = call(text.data(), text.size(), &n);
    if (st == DSV4_ERR_BUFFER_TOO_SMALL) {
        text.resize(n + 1);
        st = call(text.data(), text.size(), &n);
    }
    check(st);
    text.resize(n);
    return text;
}
}  // namespace detail

// A tokenizer: a borrowed view (Model::tokenizer) or an owner (Tokenizer::load). Encode/decode are thread-safe.
class Tokenizer {
public:
    Tokenizer() = default;
    explicit Tokenizer(const dsv4_tokenizer *view) : p_(view) {}
    static Tokenizer load(const std::string &path) {
        dsv4_tokenizer *t = nullptr;
        check(dsv4_tokenizer_load(path.c_str(), &t));
        Tokenizer out;
        out.own_ = Owned(t);
        out.p_ = t;
        return out;
    }
    const dsv4_tokenizer *get() const noexcept { return p_; }
    explicit operator bool() const noexcept { return p_ != nullptr; }
    int32_t vocab_size() const { return dsv4_tokenizer_vocab_size(p_); }

    std::vector<int32_t> encode(std::string_view text) const {
        // One call: a byte-level BPE token covers at least one byte, so len(text) ids always suffice (a size
        // query first would cost an error path per call).
        std::vector<int32_t> ids(std::max<size_t>(text.size(), 1));
        size_t n = 0;
        check(dsv4_tokenize(p_, text.data(), text.size(), ids.data(), ids.size(), &n));
        ids.resize(n);
        return ids;
    }
    // encode() of every text, spread over n_threads threads (0 = all cores).
    std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string> &texts, int32_t n_threads = 0) const {
        std::vector<const char *> ptrs;
        std::vector<size_t> lens;
        for (const std::string &t : texts) {
            ptrs.push_back(t.data());
            lens.push_back(t.size());
        }
        dsv4_token_lists *lists = nullptr;
        check(dsv4_tokenize_batch(p_, ptrs.data(), lens.data(), texts.size(), n_threads, &lists));
        detail::Handle<dsv4_token_lists, dsv4_token_lists_free> owner(lists);
        std::vector<std::vector<int32_t>> out(texts.size());
        for (size_t i = 0; i < out.size(); ++i) {
            const int32_t *ids = nullptr;
            size_t n = 0;
            check(dsv4_token_lists_get(lists, i, &ids, &n));
            out[i].assign(ids, ids + n);
        }
        return out;
    }
    std::string decode(std::span<const int32_t> ids, bool skip_special = false) const {
        const uint32_t flags = skip_special ? DSV4_DETOKENIZE_SKIP_SPECIAL : 0u;
        return detail::text_out(ids.size() * 8 + 16, [&](char *buf, size_t cap, size_t *n) {
            return dsv4_detokenize(p_, ids.data(), ids.size(), flags, buf, cap, n);
        });
    }

private:
    using Owned = detail::Handle<dsv4_tokenizer, dsv4_tokenizer_free>;
    Owned own_;
    const dsv4_tokenizer *p_ = nullptr;
};

// The official chat format: OpenAI-style messages (a JSON array) → prompt text.
inline std::string chat_encode(const std::string &messages_json,
                               const dsv4_chat_params &params = dsv4_chat_default_params()) {
    return detail::text_out(messages_json.size() + 1024, [&](char *buf, size_t cap, size_t *n) {
        return dsv4_chat_encode(messages_json.c_str(), &params, buf, cap, n);
    });
}
// A completion → the assistant message as JSON (role, content, reasoning_content, tool_calls).
inline std::string chat_parse(std::string_view completion, bool thinking) {
    return detail::text_out(completion.size() + 256, [&](char *buf, size_t cap, size_t *n) {
        return dsv4_chat_parse(completion.data(), completion.size(), thinking, buf, cap, n);
    });
}

class Model {
public:
    explicit Model(const std::string &dir, const dsv4_model_params &params = dsv4_model_default_params()) {
        dsv4_model *m = nullptr;
        check(dsv4_model_load(dir.c_str(), &params, &m));
        h_ = Handle(m);
    }
    dsv4_model *get() const noexcept { return h_.get(); }

    dsv4_model_info info() const {
        dsv4_model_info i{};
        i.struct_size = sizeof i;
        check(dsv4_model_get_info(h_.get(), &i));
        return i;
    }
    dsv4_layer_info layer_info(int32_t il) const {
        dsv4_layer_info i{};
        i.struct_size = sizeof i;
        check(dsv4_model_get_layer_info(h_.get(), il, &i));
        return i;
    }
    // The tokenizer.json of the checkpoint directory (empty if it has none); valid while the model lives.
    Tokenizer tokenizer() const { return Tokenizer(dsv4_model_tokenizer(h_.get())); }
    uint64_t param_bytes(dsv4_dtype dtype) const {
        uint64_t n = 0;
        check(dsv4_model_param_bytes(h_.get(), dtype, &n));
        return n;
    }

private:
    using Handle = detail::Handle<dsv4_model, dsv4_model_free>;
    Handle h_;
};

class Context {
public:
    // The model must outlive the context.
    explicit Context(const Model &model, const dsv4_context_params &params = dsv4_context_default_params()) {
        dsv4_context *c = nullptr;
        check(dsv4_context_create(model.get(), &params, &c));
        h_ = Handle(c);
    }
    dsv4_context *get() const noexcept { return h_.get(); }

    // Appends tokens to sequence seq; logits for the last token, or for every token if all_outputs.
    void decode(std::span<const int32_t> tokens, int32_t seq = 0, bool all_outputs = false) {
        dsv4_batch b = dsv4_batch_for_sequence(tokens.data(), int32_t(tokens.size()), seq);
        std::vector<int8_t> want;
        if (all_outputs) {
            want.assign(tokens.size(), 1);
            b.want_output = want.data();
        }
        check(dsv4_decode(h_.get(), &b));
    }
    void decode(const dsv4_batch &batch) { check(dsv4_decode(h_.get(), &batch)); }

    // Logits of output i of the last decode (-1 = last); valid until the next decode.
    std::span<const float> logits(int32_t i = -1) const {
        const float *p = nullptr;
        int32_t n = 0;
        check(dsv4_get_logits(h_.get(), i, &p, &n));
        return {p, size_t(n)};
    }
    int32_t n_outputs() const { return dsv4_n_outputs(h_.get()); }

    int32_t seq_length(int32_t seq = 0) const {
        int32_t n = 0;
        check(dsv4_seq_length(h_.get(), seq, &n));
        return n;
    }
    void seq_truncate(int32_t seq, int32_t n) { check(dsv4_seq_truncate(h_.get(), seq, n)); }
    void seq_fork(int32_t src, int32_t dst) { check(dsv4_seq_fork(h_.get(), src, dst)); }

    dsv4_memory_stats memory_stats() const {
        dsv4_memory_stats s{};
        s.struct_size = sizeof s;
        check(dsv4_get_memory_stats(h_.get(), &s));
        return s;
    }

    std::vector<uint8_t> save_state(int32_t seq = 0) const {
        size_t size = 0;
        check(dsv4_state_size(h_.get(), seq, &size));
        std::vector<uint8_t> blob(size);
        check(dsv4_state_save(h_.get(), seq, blob.data(), blob.size(), &size));
        return blob;
    }
    void load_state(std::span<const uint8_t> blob, int32_t seq = 0) {
        check(dsv4_state_load(h_.get(), seq, blob.data(), blob.size()));
    }
    // Any thread: cancels the evaluation or generation in progress.
    void abort() noexcept { dsv4_context_abort(h_.get()); }

private:
    using Handle = detail::Handle<dsv4_context, dsv4_context_free>;
    Handle h_;
};

class Sampler {
public:
    explicit Sampler(const dsv4_sampler_params &params = dsv4_sampler_default_params()) {
        dsv4_sampler *p = nullptr;
        check(dsv4_sampler_create(&params, &p));
        h_ = Handle(p);
    }
    dsv4_sampler *get() const noexcept { return h_.get(); }
    int32_t sample(const Context &ctx, int32_t i_output = -1) {
        int32_t token = -1;
        check(dsv4_sampler_sample(h_.get(), ctx.get(), i_output, &token));
        return token;
    }
    void accept(int32_t token) noexcept { dsv4_sampler_accept(h_.get(), token); }
    void reset() noexcept { dsv4_sampler_reset(h_.get()); }

private:
    using Handle = detail::Handle<dsv4_sampler, dsv4_sampler_free>;
    Handle h_;
};

// One streamed event of a generation: the token and the text it completed (empty while a character or a
// possible stop string is pending; token -1 for text held back until the end).
struct Piece {
    int32_t token = -1;
    std::string text;
};

// A generation pulled token by token (dsv4_generation_*): an input range of Piece. Context, sampler and
// tokenizer must outlive it; while it runs, the context evaluates nothing else.
class Generation {
public:
    Generation(Context &ctx, Sampler &sampler, const Tokenizer &tok, std::span<const int32_t> prompt,
               const dsv4_generate_params &params = dsv4_generate_default_params(), int32_t seq = 0) {
        dsv4_generation *g = nullptr;
        check(dsv4_generation_start(ctx.get(), sampler.get(), tok.get(), seq, prompt.data(), int32_t(prompt.size()),
                                    &params, &g));
        h_ = Handle(g);
    }
    // Next piece, or false once the generation ended.
    bool next(Piece &piece) {
        const char *text = nullptr;
        size_t len = 0;
        int32_t done = 0;
        check(dsv4_generation_next(h_.get(), &piece.token, &text, &len, &done));
        piece.text.assign(text, len);
        return !done;
    }
    dsv4_generate_stats stats() const {
        dsv4_generate_stats s{};
        s.struct_size = sizeof s;
        check(dsv4_generation_get_stats(h_.get(), &s));
        return s;
    }

    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;
        using value_type = Piece;
        using difference_type = std::ptrdiff_t;
        using pointer = const Piece *;
        using reference = const Piece &;
        iterator() = default;
        explicit iterator(Generation *g) : g_(g) { ++*this; }
        reference operator*() const { return piece_; }
        pointer operator->() const { return &piece_; }
        iterator &operator++() {
            if (!g_->next(piece_)) g_ = nullptr;
            return *this;
        }
        void operator++(int) { ++*this; }
        bool operator==(const iterator &o) const { return g_ == o.g_; }

    private:
        Generation *g_ = nullptr;
        Piece piece_;
    };
    iterator begin() { return iterator(this); }
    iterator end() { return iterator(); }

private:
    using Handle = detail::Handle<dsv4_generation, dsv4_generation_free>;
    Handle h_;
};

}  // namespace dsv4

#endif  // DSV4_HPP
