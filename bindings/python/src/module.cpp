// _dsv4: the native half of the Python package, a thin pybind11 layer over the public C API (dsv4.h / dsv4.hpp).
// The pure-Python package (dsv4/__init__.py) adds the friendly surface: JSON messages, keyword sampling options,
// iterators. Every call that does model work releases the GIL; one mutex per context serialises the threads that
// share it, so separate contexts run in parallel. Errors become dsv4.Error subclasses (dsv4/_errors.py).
#include <dsv4/dsv4.hpp>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <exception>
#include <type_traits>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

using Tokens = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

std::vector<int32_t> to_vector(const Tokens &tokens) {
    if (tokens.ndim() != 1) throw py::value_error("tokens must be one-dimensional");
    return std::vector<int32_t>(tokens.data(), tokens.data() + tokens.size());
}

// ---- models and tokenizers --------------------------------------------------------------------------------------
struct ModelObj {
    std::optional<dsv4::Model> model;
    py::object progress;  // Python callable (done, total) -> bool | None, or None

    static int on_progress(uint64_t done, uint64_t total, void *self) {
        py::gil_scoped_acquire gil;
        auto *m = static_cast<ModelObj *>(self);
        try {
            py::object r = m->progress(done, total);
            return r.is_none() || r.cast<bool>() ? 1 : 0;
        } catch (py::error_already_set &e) {
            e.discard_as_unraisable("dsv4 progress callback");
            return 0;
        }
    }
    ModelObj(const std::string &path, bool use_mmap, bool check_tensors, bool repack_weights, py::object progress_fn,
             const std::string &device)
        : progress(std::move(progress_fn)) {
        dsv4_model_params p = dsv4_model_default_params();
        p.use_mmap = use_mmap;
        p.check_tensors = check_tensors;
        p.repack_weights = repack_weights;
        p.device = device.c_str();
        if (!progress.is_none()) {
            p.progress_callback = on_progress;
            p.progress_user_data = this;
        }
        py::gil_scoped_release nogil;
        model.emplace(path, p);
    }
    const dsv4::Model &get() const { return *model; }
};

py::dict model_info(const ModelObj &m) {
    const dsv4_model_info i = m.get().info();
    py::dict d;
    d["name"] = i.name;
    d["device"] = i.device;
    d["vocab_size"] = i.vocab_size;
    d["dim"] = i.dim;
    d["n_layers"] = i.n_layers;
    d["n_mtp_layers"] = i.n_mtp_layers;
    d["n_heads"] = i.n_heads;
    d["head_dim"] = i.head_dim;
    d["rope_head_dim"] = i.rope_head_dim;
    d["q_lora_rank"] = i.q_lora_rank;
    d["o_groups"] = i.o_groups;
    d["o_lora_rank"] = i.o_lora_rank;
    d["n_routed_experts"] = i.n_routed_experts;
    d["n_shared_experts"] = i.n_shared_experts;
    d["n_activated_experts"] = i.n_activated_experts;
    d["moe_inter_dim"] = i.moe_inter_dim;
    d["n_hash_layers"] = i.n_hash_layers;
    d["window_size"] = i.window_size;
    d["index_n_heads"] = i.index_n_heads;
    d["index_head_dim"] = i.index_head_dim;
    d["index_topk"] = i.index_topk;
    d["hc_mult"] = i.hc_mult;
    d["max_position_embeddings"] = i.max_position_embeddings;
    d["n_window_layers"] = i.n_window_layers;
    d["n_csa_layers"] = i.n_csa_layers;
    d["n_hca_layers"] = i.n_hca_layers;
    d["expert_dtype"] = dsv4_dtype_name(i.expert_dtype);
    d["n_params"] = i.n_params;
    d["n_bytes"] = i.n_bytes;
    return d;
}

py::dict layer_info(const ModelObj &m, int32_t il) {
    const dsv4_layer_info i = m.get().layer_info(il);
    static const char *kinds[] = {"window", "csa", "hca"};
    py::dict d;
    d["kind"] = int(i.kind) >= 0 && int(i.kind) < 3 ? kinds[int(i.kind)] : "unknown";
    d["compress_ratio"] = i.compress_ratio;
    d["is_hash_routed"] = bool(i.is_hash_routed);
    d["is_mtp"] = bool(i.is_mtp);
    d["rope_theta"] = i.rope_theta;
    d["uses_yarn"] = bool(i.uses_yarn);
    return d;
}

// A tokenizer owned by Python, or a view into a model's (the model is kept alive by pybind11).
struct TokenizerObj {
    dsv4::Tokenizer tok;
};

py::list encode_batch(const TokenizerObj &t, const std::vector<std::string> &texts, int32_t n_threads) {
    std::vector<std::vector<int32_t>> lists;
    {
        py::gil_scoped_release nogil;
        lists = t.tok.encode_batch(texts, n_threads);
    }
    py::list out;
    for (const auto &ids : lists) out.append(py::cast(ids));
    return out;
}

// ---- chat format ------------------------------------------------------------------------------------------------
const char *event_name(dsv4_chat_event e) {
    switch (e) {
    case DSV4_CHAT_EVENT_REASONING: return "reasoning";
    case DSV4_CHAT_EVENT_CONTENT: return "content";
    case DSV4_CHAT_EVENT_TOOL_CALL: return "tool_call";
    case DSV4_CHAT_EVENT_TOOL_CALL_BEGIN: return "tool_call_begin";          // not requested by the bindings
    case DSV4_CHAT_EVENT_TOOL_CALL_ARGUMENTS: return "tool_call_arguments";
    }
    return "unknown";
}

class ChatStreamObj {
public:
    explicit ChatStreamObj(bool thinking) {
        dsv4_chat_stream *s = nullptr;
        dsv4::check(dsv4_chat_stream_create(thinking, &s));
        stream_ = Handle(s);
    }
    // Events as (kind, text) pairs.
    std::vector<std::pair<std::string, std::string>> push(const std::string &text) {
        std::vector<std::pair<std::string, std::string>> out;
        dsv4::check(dsv4_chat_stream_push(stream_.get(), text.data(), text.size(), collect, &out));
        return out;
    }
    std::vector<std::pair<std::string, std::string>> finish() {
        std::vector<std::pair<std::string, std::string>> out;
        dsv4::check(dsv4_chat_stream_finish(stream_.get(), collect, &out));
        return out;
    }

private:
    static void collect(dsv4_chat_event e, const char *text, size_t len, void *user) {
        static_cast<std::vector<std::pair<std::string, std::string>> *>(user)->emplace_back(event_name(e),
                                                                                             std::string(text, len));
    }
    using Handle = dsv4::detail::Handle<dsv4_chat_stream, dsv4_chat_stream_free>;
    Handle stream_;
};

// ---- contexts ---------------------------------------------------------------------------------------------------
class ContextObj {
public:
    ContextObj(const ModelObj &model, int32_t n_ctx, int32_t n_seq_max, int32_t n_threads, int32_t n_rewind) {
        dsv4_context_params p = dsv4_context_default_params();
        p.n_ctx = n_ctx;
        p.n_seq_max = n_seq_max;
        p.n_threads = n_threads;
        p.n_rewind = n_rewind;
        p.abort_callback = poll_signals;
        p.abort_user_data = this;
        py::gil_scoped_release nogil;
        ctx_.emplace(model.get(), p);
        vocab_ = model.get().info().vocab_size;
    }

    // Runs f on the context with the GIL released and the context's lock held (in that order, so a thread
    // waiting for the lock never holds the GIL). A Ctrl-C noticed meanwhile (the abort callback polls Python's
    // signal handlers) cancels the evaluation and becomes KeyboardInterrupt here.
    template <typename F>
    auto locked(F &&f) {
        using R = decltype(f(*ctx_));
        interrupted_ = false;
        std::exception_ptr error;
        std::conditional_t<std::is_void_v<R>, bool, std::optional<R>> result{};
        {
            py::gil_scoped_release nogil;
            std::lock_guard lock(mutex_);
            try {
                if constexpr (std::is_void_v<R>) f(*ctx_);
                else result.emplace(f(*ctx_));
            } catch (...) {
                error = std::current_exception();
            }
        }
        if (interrupted_.exchange(false)) {
            PyErr_SetNone(PyExc_KeyboardInterrupt);
            throw py::error_already_set();
        }
        if (error) std::rethrow_exception(error);
        if constexpr (!std::is_void_v<R>) return std::move(*result);
    }

    // Evaluates tokens on seq; returns the last token's logits (vocab,), or every token's (n, vocab).
    py::array_t<float> eval(const Tokens &tokens, int32_t seq, bool all_logits) {
        const std::vector<int32_t> ids = to_vector(tokens);
        if (ids.empty()) throw py::value_error("eval: no tokens");
        const int32_t rows = all_logits ? int32_t(ids.size()) : 1;
        py::array_t<float> out = new_logits(rows, all_logits);
        float *dst = out.mutable_data();
        locked([&](dsv4::Context &c) {
            c.decode(ids, seq, all_logits);
            copy_logits(c, rows, all_logits ? 0 : -1, dst);
        });
        return out;
    }
    // Logits of output i of the last evaluation (-1 = last), shape (vocab,).
    py::array_t<float> logits(int32_t i) {
        py::array_t<float> out = new_logits(1, false);
        float *dst = out.mutable_data();
        locked([&](dsv4::Context &c) { copy_logits(c, 1, i, dst); });
        return out;
    }
    py::dict memory_stats() {
        const dsv4_memory_stats s = locked([](dsv4::Context &c) { return c.memory_stats(); });
        py::dict d;
        d["cache_bytes"] = s.cache_bytes;
        d["bytes_per_1024_tokens"] = s.bytes_per_1024_tokens;
        d["bytes_per_4_tokens_csa"] = s.bytes_per_4_tokens_csa;
        d["bytes_per_128_tokens_hca"] = s.bytes_per_128_tokens_hca;
        d["constant_bytes_per_sequence"] = s.constant_bytes_per_sequence;
        d["n_sequences"] = s.n_sequences;
        d["scratch_bytes"] = s.scratch_bytes;
        return d;
    }
    py::bytes save_state(int32_t seq) {
        const std::vector<uint8_t> blob = locked([&](dsv4::Context &c) { return c.save_state(seq); });
        return py::bytes(reinterpret_cast<const char *>(blob.data()), blob.size());
    }
    void load_state(const py::bytes &blob, int32_t seq) {
        const std::string data = blob;
        locked([&](dsv4::Context &c) {
            c.load_state(std::span(reinterpret_cast<const uint8_t *>(data.data()), data.size()), seq);
        });
    }
    void abort() { dsv4_context_abort(ctx_->get()); }  // any thread, no lock: that is the point
    int32_t vocab_size() const { return vocab_; }

private:
    py::array_t<float> new_logits(int32_t rows, bool keep_rows) const {
        return keep_rows ? py::array_t<float>({py::ssize_t(rows), py::ssize_t(vocab_)}) : py::array_t<float>(py::ssize_t(vocab_));
    }
    void copy_logits(const dsv4::Context &c, int32_t rows, int32_t first, float *dst) const {
        for (int32_t i = 0; i < rows; ++i) {
            const std::span<const float> row = c.logits(first < 0 ? first : first + i);
            std::copy(row.begin(), row.end(), dst + size_t(i) * size_t(vocab_));
        }
    }
    static int poll_signals(void *self) {
        auto *c = static_cast<ContextObj *>(self);
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) {  // a handler raised (KeyboardInterrupt): cancel, re-raise later
            PyErr_Clear();
            c->interrupted_ = true;
            return 1;
        }
        return 0;
    }

    std::optional<dsv4::Context> ctx_;
    std::mutex mutex_;
    std::atomic<bool> interrupted_{false};
    int32_t vocab_ = 0;
};

struct SamplerOptions {
    float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f, repetition_penalty = 1.0f, presence_penalty = 0.0f,
          frequency_penalty = 0.0f;
    int32_t top_k = 0, penalty_last_n = 64;
    uint64_t seed = 0;
    std::vector<std::pair<int32_t, float>> logit_bias;
};

dsv4::Sampler make_sampler(const SamplerOptions &o) {
    dsv4_sampler_params p = dsv4_sampler_default_params();
    p.temperature = o.temperature;
    p.top_p = o.top_p;
    p.min_p = o.min_p;
    p.repetition_penalty = o.repetition_penalty;
    p.presence_penalty = o.presence_penalty;
    p.frequency_penalty = o.frequency_penalty;
    p.top_k = o.top_k;
    p.penalty_last_n = o.penalty_last_n;
    p.seed = o.seed;
    std::vector<int32_t> ids;
    std::vector<float> values;
    for (const auto &[id, v] : o.logit_bias) {
        ids.push_back(id);
        values.push_back(v);
    }
    p.logit_bias_tokens = ids.data();
    p.logit_bias_values = values.data();
    p.n_logit_bias = int32_t(ids.size());
    return dsv4::Sampler(p);
}

// One generation on one sequence, pulled token by token.
class GenerationObj {
public:
    GenerationObj(ContextObj &ctx, const TokenizerObj *tok, const Tokens &prompt, int32_t seq,
                 const SamplerOptions &sampling, int32_t max_tokens, std::vector<std::string> stop_strings,
                 std::vector<int32_t> stop_tokens, bool ignore_eos)
        : ctx_(ctx), sampler_(make_sampler(sampling)), stop_strings_(std::move(stop_strings)),
          stop_tokens_(std::move(stop_tokens)) {
        if (tok) tok_ = dsv4::Tokenizer(tok->tok.get());
        const std::vector<int32_t> ids = to_vector(prompt);
        std::vector<const char *> stops;
        for (const std::string &s : stop_strings_) stops.push_back(s.c_str());
        dsv4_generate_params p = dsv4_generate_default_params();
        p.max_tokens = max_tokens;
        p.stop_strings = stops.data();
        p.n_stop_strings = int32_t(stops.size());
        p.stop_tokens = stop_tokens_.data();
        p.n_stop_tokens = int32_t(stop_tokens_.size());
        p.ignore_eos = ignore_eos;
        ctx.locked([&](dsv4::Context &c) {
            dsv4_generation *g = nullptr;
            dsv4::check(dsv4_generation_start(c.get(), sampler_.get(), tok_.get(), seq, ids.data(),
                                              int32_t(ids.size()), &p, &g));
            gen_ = Handle(g);
        });
    }
    // (token, text); raises StopIteration at the end.
    std::pair<int32_t, py::str> next() {
        if (!gen_) throw py::stop_iteration();
        int32_t token = -1, done = 0;
        std::string text;
        ctx_.locked([&](dsv4::Context &) {
            const char *p = nullptr;
            size_t len = 0;
            dsv4::check(dsv4_generation_next(gen_.get(), &token, &p, &len, &done));
            text.assign(p, len);
        });
        if (done) throw py::stop_iteration();
        // Pieces are whole UTF-8 characters, except bytes the model produced invalid: replaced, never raised.
        return {token, py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(text.data(), py::ssize_t(text.size()), "replace"))};
    }
    py::dict stats() const {
        dsv4_generate_stats s{};
        s.struct_size = sizeof s;
        dsv4::check(dsv4_generation_get_stats(gen_.get(), &s));
        static const char *reasons[] = {"eos", "stop_token", "stop_string", "max_tokens", "callback", "cancelled"};
        py::dict d;
        d["n_prompt"] = s.n_prompt;
        d["n_generated"] = s.n_generated;
        d["prefill_seconds"] = s.prefill_seconds;
        d["decode_seconds"] = s.decode_seconds;
        d["time_to_first_token_seconds"] = s.time_to_first_token_seconds;
        d["prefill_tokens_per_second"] = s.prefill_tokens_per_second;
        d["decode_tokens_per_second"] = s.decode_tokens_per_second;
        d["stop_reason"] = reasons[int(s.stop_reason)];
        return d;
    }

private:
    using Handle = dsv4::detail::Handle<dsv4_generation, dsv4_generation_free>;
    ContextObj &ctx_;
    dsv4::Sampler sampler_;
    dsv4::Tokenizer tok_;
    std::vector<std::string> stop_strings_;
    std::vector<int32_t> stop_tokens_;
    Handle gen_;
};

}  // namespace

PYBIND11_MODULE(_dsv4, m) {
    m.doc() = "Native layer of dsv4 (use the dsv4 package, not this module).";
    m.attr("__version__") = dsv4_version_string();
    m.attr("API_VERSION") = dsv4_api_version();
    m.def("context_defaults", [] {  // dsv4_context_params_init's, the one source of the defaults
        const dsv4_context_params p = dsv4_context_default_params();
        py::dict d;
        d["n_ctx"] = p.n_ctx;
        d["n_seq_max"] = p.n_seq_max;
        d["n_threads"] = p.n_threads;
        d["n_rewind"] = p.n_rewind;
        return d;
    });
    m.def("build_info", &dsv4_build_info, "Library version, compiler and backends.");

    // dsv4::Error → the dsv4.Error subclass of its status (dsv4/_errors.py builds the instance).
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const dsv4::Error &e) {
            py::object make = py::module_::import("dsv4._errors").attr("from_status");
            py::object exc = make(int(e.status()), dsv4_status_name(e.status()), e.what());
            PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(exc.ptr())), exc.ptr());
        }
    });

    py::class_<ModelObj>(m, "Model")
        .def(py::init<const std::string &, bool, bool, bool, py::object, const std::string &>(), py::arg("path"),
             py::arg("use_mmap") = true, py::arg("check_tensors") = true, py::arg("repack_weights") = true,
             py::arg("progress") = py::none(), py::arg("device") = "cpu")
        .def("info", &model_info)
        .def("layer_info", &layer_info, py::arg("layer"))
        .def("param_bytes", [](const ModelObj &model, int dtype) { return model.get().param_bytes(dsv4_dtype(dtype)); })
        .def("tokenizer", [](const ModelObj &model) -> std::optional<TokenizerObj> {
            dsv4::Tokenizer t = model.get().tokenizer();
            if (!t) return std::nullopt;
            return TokenizerObj{std::move(t)};
        }, py::keep_alive<0, 1>());

    py::class_<TokenizerObj>(m, "Tokenizer")
        .def(py::init([](const std::string &path) {
                 py::gil_scoped_release nogil;
                 return TokenizerObj{dsv4::Tokenizer::load(path)};
             }), py::arg("path"))
        .def_property_readonly("vocab_size", [](const TokenizerObj &t) { return t.tok.vocab_size(); })
        .def("encode", [](const TokenizerObj &t, std::string_view text) {
            py::gil_scoped_release nogil;
            return t.tok.encode(text);
        }, py::arg("text"))
        .def("encode_batch", &encode_batch, py::arg("texts"), py::arg("n_threads") = 0)
        .def("decode", [](const TokenizerObj &t, const Tokens &ids, bool skip_special) {
            const std::vector<int32_t> v = to_vector(ids);
            return t.tok.decode(v, skip_special);
        }, py::arg("ids"), py::arg("skip_special") = false)
        .def("token_bytes", [](const TokenizerObj &t, int32_t id) {
            return py::bytes(dsv4::detail::text_out(64, [&](char *buf, size_t cap, size_t *n) {
                return dsv4_token_to_piece(t.tok.get(), id, buf, cap, n);
            }));
        }, py::arg("id"))
        .def("is_special", [](const TokenizerObj &t, int32_t id) { return dsv4_token_is_special(t.tok.get(), id) != 0; },
             py::arg("id"));

    m.def("chat_encode", [](const std::string &messages_json, bool thinking, bool drop_thinking,
                            std::optional<std::string> reasoning_effort, bool add_bos) {
        dsv4_chat_params p = dsv4_chat_default_params();
        p.thinking = thinking;
        p.drop_thinking = drop_thinking;
        p.add_bos = add_bos;
        p.reasoning_effort = reasoning_effort ? reasoning_effort->c_str() : nullptr;
        return dsv4::chat_encode(messages_json, p);
    }, py::arg("messages_json"), py::arg("thinking"), py::arg("drop_thinking"), py::arg("reasoning_effort"),
       py::arg("add_bos"));
    m.def("chat_parse", &dsv4::chat_parse, py::arg("completion"), py::arg("thinking"));
    py::class_<ChatStreamObj>(m, "ChatStream")
        .def(py::init<bool>(), py::arg("thinking"))
        .def("push", &ChatStreamObj::push, py::arg("text"))
        .def("finish", &ChatStreamObj::finish);

    py::class_<ContextObj>(m, "Context")
        .def(py::init<const ModelObj &, int32_t, int32_t, int32_t, int32_t>(), py::arg("model"), py::arg("n_ctx"),
             py::arg("n_seq_max"), py::arg("n_threads"), py::arg("n_rewind"), py::keep_alive<1, 2>())
        .def_property_readonly("vocab_size", &ContextObj::vocab_size)
        .def("eval", &ContextObj::eval, py::arg("tokens"), py::arg("seq"), py::arg("all_logits"))
        .def("logits", &ContextObj::logits, py::arg("i"))
        .def("n_outputs", [](ContextObj &c) { return c.locked([](dsv4::Context &x) { return x.n_outputs(); }); })
        .def("seq_length", [](ContextObj &c, int32_t seq) {
            return c.locked([&](dsv4::Context &x) { return x.seq_length(seq); });
        }, py::arg("seq"))
        .def("truncate", [](ContextObj &c, int32_t seq, int32_t n) {
            c.locked([&](dsv4::Context &x) { x.seq_truncate(seq, n); });
        }, py::arg("seq"), py::arg("n"))
        .def("fork", [](ContextObj &c, int32_t src, int32_t dst) {
            c.locked([&](dsv4::Context &x) { x.seq_fork(src, dst); });
        }, py::arg("src"), py::arg("dst"))
        .def("memory_stats", &ContextObj::memory_stats)
        .def("save_state", &ContextObj::save_state, py::arg("seq"))
        .def("load_state", &ContextObj::load_state, py::arg("blob"), py::arg("seq"))
        .def("save_state_file", [](ContextObj &c, int32_t seq, const std::string &path) {
            c.locked([&](dsv4::Context &x) { dsv4::check(dsv4_state_save_file(x.get(), seq, path.c_str())); });
        }, py::arg("seq"), py::arg("path"))
        .def("load_state_file", [](ContextObj &c, int32_t seq, const std::string &path) {
            c.locked([&](dsv4::Context &x) { dsv4::check(dsv4_state_load_file(x.get(), seq, path.c_str())); });
        }, py::arg("seq"), py::arg("path"))
        .def("abort", &ContextObj::abort);

    py::class_<SamplerOptions>(m, "SamplerOptions")
        .def(py::init<>())
        .def_readwrite("temperature", &SamplerOptions::temperature)
        .def_readwrite("top_k", &SamplerOptions::top_k)
        .def_readwrite("top_p", &SamplerOptions::top_p)
        .def_readwrite("min_p", &SamplerOptions::min_p)
        .def_readwrite("repetition_penalty", &SamplerOptions::repetition_penalty)
        .def_readwrite("presence_penalty", &SamplerOptions::presence_penalty)
        .def_readwrite("frequency_penalty", &SamplerOptions::frequency_penalty)
        .def_readwrite("penalty_last_n", &SamplerOptions::penalty_last_n)
        .def_readwrite("seed", &SamplerOptions::seed)
        .def_readwrite("logit_bias", &SamplerOptions::logit_bias);

    py::class_<GenerationObj>(m, "Generation")
        .def(py::init<ContextObj &, const TokenizerObj *, const Tokens &, int32_t, const SamplerOptions &,
                      int32_t, std::vector<std::string>, std::vector<int32_t>, bool>(),
             py::arg("ctx"), py::arg("tokenizer"), py::arg("prompt"), py::arg("seq"), py::arg("sampling"),
             py::arg("max_tokens"), py::arg("stop"), py::arg("stop_tokens"), py::arg("ignore_eos"),
             py::keep_alive<1, 2>(), py::keep_alive<1, 3>())
        .def("next", &GenerationObj::next)
        .def("stats", &GenerationObj::stats);
}
