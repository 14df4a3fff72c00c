// dsv4.hpp - header-only C++ layer over the C API (dsv4.h): RAII handles, exceptions, spans.
//
//     dsv4::Model model("path/to/checkpoint");
//     dsv4::Context ctx(model, [] { auto p = dsv4_context_default_params(); p.n_ctx = 8192; return p; }());
//     std::vector<int32_t> prompt = {0, 100, 200};
//     ctx.decode(prompt);                       // sequence 0
//     std::span<const float> logits = ctx.logits();
//
// Every failing call throws dsv4::Error carrying the status and the library's message. Thread-safety is that
// of the underlying C functions (see dsv4.h).
#ifndef DSV4_HPP
#define DSV4_HPP

#include <dsv4/dsv4.h>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
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
}  // namespace detail

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

private:
    using Handle = detail::Handle<dsv4_context, dsv4_context_free>;
    Handle h_;
};

}  // namespace dsv4

#endif  // DSV4_HPP
