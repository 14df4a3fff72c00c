// Every extern "C" definition of dsv4.h. Each fallible function is wrapped in DSV4_API_BEGIN/END, so no C++
// exception crosses the boundary.
#include <dsv4/dsv4.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <string>

#include "api/errors.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"
#include "io/mapped_file.h"
#include "model/model.h"
#include "runtime/context.h"
#include "backend/cpu/isa.h"
#include "runtime/generate.h"
#include "sampling/sampler.h"
#include "tokenizer/chat.h"
#include "io/json.h"
#include "tokenizer/tokenizer.h"
#include <sys/stat.h>

struct dsv4_tokenizer {
    std::unique_ptr<dsv4::tokenizer::Tokenizer> impl;
};
struct dsv4_model {
    std::unique_ptr<dsv4::model::Model> impl;
    std::unique_ptr<dsv4_tokenizer> tokenizer;  // from the checkpoint directory's tokenizer.json, if any
};
struct dsv4_context {
    std::unique_ptr<dsv4::runtime::Context> impl;
};
struct dsv4_token_lists {
    std::vector<std::vector<int32_t>> lists;
};
struct dsv4_generation {
    std::vector<dsv4::runtime::GenerateRequest> request;  // one; the Generation refers to it
    std::unique_ptr<dsv4::runtime::Generation> impl;
    std::deque<std::pair<int32_t, std::string>> pending;   // events of the last step not yet handed out
    std::string current;                                  // text of the event handed out last
    bool done = false, failed = false;
};
struct dsv4_chat_stream {
    dsv4::tokenizer::ChatStreamParser impl;
    bool failed = false;
};
struct dsv4_sampler {
    std::unique_ptr<dsv4::sampling::Sampler> impl;
};

namespace {
using dsv4::fail;

template <typename T>
void require(const T *p, const char *what) {
    if (!p) fail(DSV4_ERR_INVALID_ARGUMENT, "{} is NULL", what);
}

// Caller-sized structs: the caller's struct_size must cover at least the first field.
template <typename T>
void require_struct(const T *p, const char *what) {
    require(p, what);
    if (p->struct_size < sizeof(size_t)) fail(DSV4_ERR_INVALID_ARGUMENT, "{}->struct_size = {} is too small", what, p->struct_size);
}

// Copies the first `size` bytes of a fully filled struct into the caller's (possibly older, smaller) one.
template <typename T>
void copy_out(T *dst, T src) {
    const size_t n = dst->struct_size < sizeof(T) ? dst->struct_size : sizeof(T);
    src.struct_size = dst->struct_size;
    std::memcpy(static_cast<void *>(dst), &src, n);
}

// *_params_init: writes the defaults of the fields the caller's struct has. A caller built against an older header
// passes its smaller size and gets the fields it knows (read_params then defaults the rest); a newer one's unknown
// tail is zeroed.
template <typename T>
void init_params(T *params, size_t size, const char *name, T defaults) {
    require(params, "params");
    if (size < sizeof(size_t) || size > (1u << 16))
        fail(DSV4_ERR_INVALID_ARGUMENT, "{}: size {} is not a valid struct size", name, size);
    defaults.struct_size = size;
    std::memcpy(static_cast<void *>(params), &defaults, std::min(size, sizeof(T)));
    if (size > sizeof(T)) std::memset(reinterpret_cast<char *>(params) + sizeof(T), 0, size - sizeof(T));
}

// Reads a caller's params struct of any size: fields it lacks keep their defaults.
template <typename T>
T read_params(const T *p, T defaults) {
    if (!p) return defaults;
    if ((p->struct_size) < sizeof(size_t) || (p->struct_size) > (1u << 16))
        fail(DSV4_ERR_INVALID_ARGUMENT, "params->struct_size = {} is not a valid size", p->struct_size);
    const size_t n = p->struct_size < sizeof(T) ? p->struct_size : sizeof(T);
    std::memcpy(static_cast<void *>(&defaults), p, n);
    defaults.struct_size = sizeof(T);
    return defaults;
}

// The integer behind an enum argument a C caller may have set to any value; read without an enum-typed load,
// which would be undefined for values outside the enumerators.
template <typename Enum>
int enum_value(const Enum &e) {
    static_assert(sizeof(Enum) == sizeof(int));
    int v;
    std::memcpy(&v, &e, sizeof v);
    return v;
}

dsv4::tokenizer::ChatStreamParser::Sink event_sink(dsv4_chat_event_callback cb, void *user) {
    return [cb, user](dsv4::tokenizer::ChatStreamParser::Event e, const std::string &text) {
        if (cb) cb(dsv4_chat_event(int(e)), text.data(), text.size(), user);
    };
}
template <typename F>
void stream_call(dsv4_chat_stream *s, F &&f) {
    require(s, "stream");
    if (s->failed) fail(DSV4_ERR_INVALID_ARGUMENT, "chat stream: an earlier call failed");
    try {
        f();
    } catch (...) {
        s->failed = true;
        throw;
    }
}

dsv4::runtime::GenerateOptions generate_options(const dsv4_generate_params *params) {
    const dsv4_generate_params p = read_params(params, dsv4_generate_default_params());
    dsv4::runtime::GenerateOptions o;
    o.max_tokens = p.max_tokens;
    o.ignore_eos = p.ignore_eos != 0;
    if (p.n_stop_tokens < 0 || (p.n_stop_tokens && !p.stop_tokens)) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: stop_tokens");
    if (p.n_stop_strings < 0 || (p.n_stop_strings && !p.stop_strings)) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: stop_strings");
    o.stop_tokens.assign(p.stop_tokens, p.stop_tokens + p.n_stop_tokens);
    for (int32_t i = 0; i < p.n_stop_strings; ++i) {
        if (!p.stop_strings[i]) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: stop_strings[{}] is NULL", i);
        o.stop_strings.emplace_back(p.stop_strings[i]);
    }
    return o;
}

void stats_out(const dsv4::runtime::GenerateStats &st, dsv4_generate_stats *stats) {
    if (!stats) return;
    dsv4_generate_stats out{};
    out.n_prompt = st.n_prompt;
    out.n_generated = st.n_generated;
    out.prefill_seconds = st.prefill_s;
    out.decode_seconds = st.decode_s;
    out.time_to_first_token_seconds = st.time_to_first_token_s;
    out.prefill_tokens_per_second = st.prefill_s > 0 ? double(st.n_prompt) / st.prefill_s : 0;
    out.decode_tokens_per_second = st.decode_s > 0 ? double(std::max<int64_t>(st.n_generated - 1, 0)) / st.decode_s : 0;
    out.stop_reason = dsv4_stop_reason(int(st.stop));
    copy_out(stats, out);
}

dsv4::runtime::GenerateRequest make_request(dsv4_sampler *smpl, int32_t seq, const int32_t *prompt, int32_t n_prompt,
                                            const dsv4_generate_params *params, dsv4_token_callback on_token,
                                            void *user_data, dsv4_generate_stats *stats) {
    require(smpl, "sampler");
    if (!prompt || n_prompt < 1) fail(DSV4_ERR_INVALID_ARGUMENT, "generate: n_prompt = {} (need >= 1 and a token array)", n_prompt);
    if (stats) require_struct(stats, "stats");
    dsv4::runtime::GenerateRequest r;
    r.seq = seq;
    r.prompt.assign(prompt, prompt + n_prompt);
    r.sampler = smpl->impl.get();
    r.options = generate_options(params);
    r.on_token = [on_token, user_data](int32_t token, const std::string &text) {
        return !on_token || on_token(token, text.data(), text.size(), user_data) != 0;
    };
    return r;
}

void copy_text_out(const std::string &text, char *buf, size_t cap, size_t *out_len, const char *what) {
    *out_len = text.size();
    if (!buf || cap <= text.size())
        fail(DSV4_ERR_BUFFER_TOO_SMALL, "{}: {} bytes plus NUL, buffer holds {}", what, text.size(), cap);
    std::memcpy(buf, text.c_str(), text.size() + 1);
}

struct ProgressBridge {
    dsv4_progress_callback callback;
    void *user;
    static bool call(uint64_t done, uint64_t total, void *self) {
        auto *b = static_cast<ProgressBridge *>(self);
        return b->callback(done, total, b->user) != 0;
    }
};

}  // namespace

extern "C" {

DSV4_API int32_t dsv4_version_number(void) { return DSV4_VERSION_NUMBER; }
DSV4_API const char *dsv4_version_string(void) { return DSV4_VERSION_STRING; }
DSV4_API int32_t dsv4_api_version(void) { return DSV4_API_VERSION; }
DSV4_API const char *dsv4_build_info(void) {
    // The CPU kernel path is known only at run time (CPUID, DSV4_MAX_CPU_ISA); an invalid cap reads "invalid".
    static const std::string info = [] {
        std::string isa;
        try {
            isa = dsv4::backend::cpu::isa_name(dsv4::backend::cpu::selected_isa());
        } catch (const std::exception &) {
            isa = "invalid DSV4_MAX_CPU_ISA";
        }
        std::string backends;
        for (const std::string &b : dsv4::backend::compiled_backends()) backends += (backends.empty() ? "" : ", ") + b;
        return "dsv4 " DSV4_VERSION_STRING " (" __VERSION__ "; backends: " + backends + "; cpu kernels " + isa +
#if defined(_OPENMP)
               "; openmp" +
#endif
               ")";
    }();
    return info.c_str();
}

namespace {
const std::vector<dsv4::backend::DeviceDescription> &devices() {
    static const std::vector<dsv4::backend::DeviceDescription> list = dsv4::backend::available_devices();
    return list;
}
}  // namespace

DSV4_API int32_t dsv4_device_count(void) {
    try {
        return int32_t(devices().size());
    } catch (...) {
        return 1;
    }
}

DSV4_API dsv4_status dsv4_device_get_info(int32_t index, dsv4_device_info *info) {
    DSV4_API_BEGIN
    require_struct(info, "info");
    const auto &list = devices();
    if (index < 0 || size_t(index) >= list.size())
        fail(DSV4_ERR_INVALID_ARGUMENT, "device index {} is out of range (0..{})", index, list.size() - 1);
    dsv4_device_info out{};
    std::snprintf(out.spec, sizeof out.spec, "%s", list[size_t(index)].spec.c_str());
    std::snprintf(out.description, sizeof out.description, "%s", list[size_t(index)].description.c_str());
    out.memory_bytes = list[size_t(index)].memory_bytes;
    copy_out(info, out);
    DSV4_API_END
}

DSV4_API const char *dsv4_status_name(dsv4_status s) {
    switch (enum_value(s)) {
#define DSV4_NAME(x) \
    case x: return #x;
        DSV4_NAME(DSV4_OK)
        DSV4_NAME(DSV4_ERR_INVALID_ARGUMENT)
        DSV4_NAME(DSV4_ERR_IO)
        DSV4_NAME(DSV4_ERR_FORMAT)
        DSV4_NAME(DSV4_ERR_CONFIG)
        DSV4_NAME(DSV4_ERR_WEIGHTS)
        DSV4_NAME(DSV4_ERR_OUT_OF_MEMORY)
        DSV4_NAME(DSV4_ERR_CONTEXT_FULL)
        DSV4_NAME(DSV4_ERR_INVALID_TOKEN)
        DSV4_NAME(DSV4_ERR_UNSUPPORTED)
        DSV4_NAME(DSV4_ERR_BACKEND)
        DSV4_NAME(DSV4_ERR_CANCELLED)
        DSV4_NAME(DSV4_ERR_BUFFER_TOO_SMALL)
        DSV4_NAME(DSV4_ERR_VERSION)
        DSV4_NAME(DSV4_ERR_INTERNAL)
        DSV4_NAME(DSV4_ERR_IO_NOT_FOUND)
        DSV4_NAME(DSV4_ERR_IO_READ)
        DSV4_NAME(DSV4_ERR_IO_WRITE)
        DSV4_NAME(DSV4_ERR_FORMAT_TRUNCATED)
        DSV4_NAME(DSV4_ERR_FORMAT_HEADER_SIZE)
        DSV4_NAME(DSV4_ERR_FORMAT_JSON)
        DSV4_NAME(DSV4_ERR_FORMAT_NESTING)
        DSV4_NAME(DSV4_ERR_FORMAT_OFFSET)
        DSV4_NAME(DSV4_ERR_FORMAT_OVERLAP)
        DSV4_NAME(DSV4_ERR_FORMAT_DTYPE)
        DSV4_NAME(DSV4_ERR_FORMAT_SHAPE)
        DSV4_NAME(DSV4_ERR_FORMAT_INDEX)
        DSV4_NAME(DSV4_ERR_FORMAT_DUPLICATE)
        DSV4_NAME(DSV4_ERR_CONFIG_MISSING_FIELD)
        DSV4_NAME(DSV4_ERR_CONFIG_INVALID_FIELD)
        DSV4_NAME(DSV4_ERR_CONFIG_INCONSISTENT)
        DSV4_NAME(DSV4_ERR_WEIGHTS_MISSING)
        DSV4_NAME(DSV4_ERR_WEIGHTS_DTYPE)
        DSV4_NAME(DSV4_ERR_WEIGHTS_SHAPE)
        DSV4_NAME(DSV4_ERR_WEIGHTS_MISMATCH)
        DSV4_NAME(DSV4_ERR_INVALID_ARGUMENT_SEQUENCE)
        DSV4_NAME(DSV4_ERR_INVALID_ARGUMENT_POSITION)
        DSV4_NAME(DSV4_ERR_UNSUPPORTED_REWIND)
#undef DSV4_NAME
    }
    return "DSV4_UNKNOWN_STATUS";
}

DSV4_API void dsv4_log_set(dsv4_log_callback callback, void *user_data) {
    dsv4::core::set_log_callback(callback, user_data);
}
DSV4_API void dsv4_log_set_level(dsv4_log_level level) {
    const int v = enum_value(level);
    dsv4::core::set_log_level(dsv4_log_level(v < DSV4_LOG_LEVEL_ERROR ? DSV4_LOG_LEVEL_ERROR : v > DSV4_LOG_LEVEL_DEBUG ? DSV4_LOG_LEVEL_DEBUG : v));
}

DSV4_API const char *dsv4_dtype_name(dsv4_dtype dtype) {
    switch (enum_value(dtype)) {
        case DSV4_DTYPE_F32: return "F32";
        case DSV4_DTYPE_BF16: return "BF16";
        case DSV4_DTYPE_F16: return "F16";
        case DSV4_DTYPE_F8_E4M3: return "F8_E4M3";
        case DSV4_DTYPE_F8_E8M0: return "F8_E8M0";
        case DSV4_DTYPE_FP4_E2M1: return "FP4_E2M1";
        case DSV4_DTYPE_I8: return "I8";
        case DSV4_DTYPE_I32: return "I32";
        case DSV4_DTYPE_I64: return "I64";
        default: return "UNKNOWN";
    }
}

// ---- model ----------------------------------------------------------------------------------------------
DSV4_API dsv4_status dsv4_model_params_init(dsv4_model_params *params, size_t size) {
    DSV4_API_BEGIN
    dsv4_model_params p{};
    p.use_mmap = 1;
    p.check_tensors = 1;
    p.repack_weights = 1;
    init_params(params, size, "dsv4_model_params_init", p);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_model_load(const char *dir, const dsv4_model_params *params, dsv4_model **out_model) {
    if (out_model) *out_model = nullptr;
    DSV4_API_BEGIN
    require(dir, "dir");
    require(out_model, "out_model");
    dsv4_model_params p = read_params(params, dsv4_model_default_params());
    dsv4::model::LoadOptions options;
    options.use_mmap = p.use_mmap != 0;
    options.check_values = p.check_tensors != 0;
    options.repack_weights = p.repack_weights != 0;
    if (p.device) options.device = p.device;
    ProgressBridge bridge{p.progress_callback, p.progress_user_data};
    if (p.progress_callback) {
        options.progress = &ProgressBridge::call;
        options.progress_user = &bridge;
    }
    auto model = std::make_unique<dsv4_model>();
    model->impl = dsv4::model::Model::load(dir, options);
    const std::string tokenizer_path = std::string(dir) + "/tokenizer.json";
    struct stat st {};
    if (::stat(tokenizer_path.c_str(), &st) == 0) {
        model->tokenizer = std::make_unique<dsv4_tokenizer>();
        model->tokenizer->impl = dsv4::tokenizer::Tokenizer::load(tokenizer_path);
    }
    dsv4::core::log(DSV4_LOG_LEVEL_INFO, "loaded {} ({} layers)", dir, model->impl->config().n_layers);
    *out_model = model.release();
    DSV4_API_END
}

DSV4_API void dsv4_model_free(dsv4_model *model) { delete model; }

DSV4_API dsv4_status dsv4_model_get_info(const dsv4_model *model, dsv4_model_info *info) {
    DSV4_API_BEGIN
    require(model, "model");
    require_struct(info, "info");
    const dsv4::io::ModelConfig &c = model->impl->config();
    dsv4_model_info out{};
    out.name = model->impl->name().c_str();
    out.device = model->impl->device_name().c_str();
    out.vocab_size = c.vocab_size;
    out.dim = c.dim;
    out.n_layers = c.n_layers;
    out.n_mtp_layers = c.n_mtp_layers;
    out.n_heads = c.n_heads;
    out.head_dim = c.head_dim;
    out.rope_head_dim = c.rope_head_dim;
    out.q_lora_rank = c.q_lora_rank;
    out.o_groups = c.o_groups;
    out.o_lora_rank = c.o_lora_rank;
    out.n_routed_experts = c.n_routed_experts;
    out.n_shared_experts = c.n_shared_experts;
    out.n_activated_experts = c.n_activated_experts;
    out.moe_inter_dim = c.moe_inter_dim;
    out.n_hash_layers = c.n_hash_layers;
    out.window_size = c.window_size;
    out.index_n_heads = c.index_n_heads;
    out.index_head_dim = c.index_head_dim;
    out.index_topk = c.index_topk;
    out.hc_mult = c.hc_mult;
    out.max_position_embeddings = c.max_position_embeddings;
    out.bos_token_id = c.bos_token_id;
    out.eos_token_id = c.eos_token_id;
    for (int il = 0; il < c.n_layers; ++il) {
        const dsv4_layer_kind k = c.layers[size_t(il)].kind;
        out.n_window_layers += k == DSV4_LAYER_KIND_WINDOW;
        out.n_csa_layers += k == DSV4_LAYER_KIND_CSA;
        out.n_hca_layers += k == DSV4_LAYER_KIND_HCA;
    }
    out.expert_dtype = c.expert_format == dsv4::io::ExpertFormat::fp8 ? DSV4_DTYPE_F8_E4M3 : DSV4_DTYPE_FP4_E2M1;
    for (const auto &shard : model->impl->checkpoint().shards())
        for (const auto &t : shard->tensors()) {
            out.n_bytes += t.nbytes;
            const bool packed_fp4 = t.dtype == dsv4::core::DType::I8 && t.name.find(".experts.") != std::string::npos;
            out.n_params += uint64_t(t.numel()) * (packed_fp4 ? 2 : 1);
        }
    copy_out(info, out);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_model_get_layer_info(const dsv4_model *model, int32_t il, dsv4_layer_info *info) {
    DSV4_API_BEGIN
    require(model, "model");
    require_struct(info, "info");
    const dsv4::io::ModelConfig &c = model->impl->config();
    if (il < 0 || size_t(il) >= c.layers.size())
        fail(DSV4_ERR_INVALID_ARGUMENT, "layer {} outside [0, {})", il, c.layers.size());
    const dsv4::io::LayerSpec &l = c.layers[size_t(il)];
    dsv4_layer_info out{};
    out.kind = l.kind;
    out.compress_ratio = l.compress_ratio;
    out.is_hash_routed = l.hash_routed;
    out.is_mtp = l.mtp;
    out.rope_theta = l.rope_theta;
    out.uses_yarn = l.yarn;
    copy_out(info, out);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_model_param_bytes(const dsv4_model *model, dsv4_dtype dtype, uint64_t *out_bytes) {
    DSV4_API_BEGIN
    require(model, "model");
    require(out_bytes, "out_bytes");
    if (enum_value(dtype) < 0 || enum_value(dtype) >= DSV4_DTYPE_COUNT)
        fail(DSV4_ERR_INVALID_ARGUMENT, "dtype {} is not a dsv4_dtype", enum_value(dtype));
    uint64_t n = 0;
    for (const auto &shard : model->impl->checkpoint().shards())
        for (const auto &t : shard->tensors()) {
            const bool packed_fp4 = t.dtype == dsv4::core::DType::I8 && t.name.find(".experts.") != std::string::npos;
            const dsv4_dtype as = packed_fp4 ? DSV4_DTYPE_FP4_E2M1 : dsv4::core::to_public(t.dtype);
            if (as == dtype) n += t.nbytes;
        }
    *out_bytes = n;
    DSV4_API_END
}

// ---- tokenizer ----------------------------------------------------------------------------------------------
DSV4_API dsv4_status dsv4_tokenizer_load(const char *path, dsv4_tokenizer **out_tok) {
    if (out_tok) *out_tok = nullptr;
    DSV4_API_BEGIN
    require(path, "path");
    require(out_tok, "out_tok");
    auto tok = std::make_unique<dsv4_tokenizer>();
    tok->impl = dsv4::tokenizer::Tokenizer::load(path);
    *out_tok = tok.release();
    DSV4_API_END
}

DSV4_API void dsv4_tokenizer_free(dsv4_tokenizer *tok) { delete tok; }

DSV4_API const dsv4_tokenizer *dsv4_model_tokenizer(const dsv4_model *model) {
    return model ? model->tokenizer.get() : nullptr;
}

DSV4_API int32_t dsv4_tokenizer_vocab_size(const dsv4_tokenizer *tok) { return tok ? tok->impl->vocab_size() : 0; }

DSV4_API int32_t dsv4_token_is_special(const dsv4_tokenizer *tok, int32_t token) {
    return tok && tok->impl->is_special(token) ? 1 : 0;
}

DSV4_API dsv4_status dsv4_tokenize(const dsv4_tokenizer *tok, const char *text, size_t len, int32_t *tokens, size_t cap,
                                   size_t *out_n) {
    DSV4_API_BEGIN
    require(tok, "tok");
    require(out_n, "out_n");
    if (!text && len) fail(DSV4_ERR_INVALID_ARGUMENT, "text is NULL");
    const std::vector<int32_t> ids = tok->impl->encode(std::string_view(text ? text : "", len));
    *out_n = ids.size();
    if (ids.size() > cap || (!tokens && !ids.empty()))
        fail(DSV4_ERR_BUFFER_TOO_SMALL, "tokenize: {} tokens, buffer holds {}", ids.size(), cap);
    std::copy(ids.begin(), ids.end(), tokens);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_tokenize_batch(const dsv4_tokenizer *tok, const char *const *texts, const size_t *lens,
                                         size_t n_texts, int32_t n_threads, dsv4_token_lists **out_lists) {
    DSV4_API_BEGIN
    require(tok, "tok");
    require(out_lists, "out_lists");
    *out_lists = nullptr;
    if (n_texts && (!texts || !lens)) fail(DSV4_ERR_INVALID_ARGUMENT, "tokenize_batch: texts or lens is NULL");
    std::vector<std::string_view> views(n_texts);
    for (size_t i = 0; i < n_texts; ++i) {
        if (!texts[i] && lens[i]) fail(DSV4_ERR_INVALID_ARGUMENT, "tokenize_batch: texts[{}] is NULL", i);
        views[i] = std::string_view(texts[i] ? texts[i] : "", lens[i]);
    }
    auto lists = std::make_unique<dsv4_token_lists>();
    lists->lists = tok->impl->encode_batch(views, n_threads);
    *out_lists = lists.release();
    DSV4_API_END
}

DSV4_API size_t dsv4_token_lists_count(const dsv4_token_lists *lists) { return lists ? lists->lists.size() : 0; }

DSV4_API dsv4_status dsv4_token_lists_get(const dsv4_token_lists *lists, size_t i, const int32_t **out_tokens,
                                          size_t *out_n) {
    DSV4_API_BEGIN
    require(lists, "lists");
    require(out_tokens, "out_tokens");
    require(out_n, "out_n");
    if (i >= lists->lists.size())
        fail(DSV4_ERR_INVALID_ARGUMENT, "token_lists_get: index {} outside the {} lists", i, lists->lists.size());
    *out_tokens = lists->lists[i].data();
    *out_n = lists->lists[i].size();
    DSV4_API_END
}

DSV4_API void dsv4_token_lists_free(dsv4_token_lists *lists) { delete lists; }

DSV4_API dsv4_status dsv4_detokenize(const dsv4_tokenizer *tok, const int32_t *tokens, size_t n, uint32_t flags,
                                     char *buf, size_t cap, size_t *out_len) {
    DSV4_API_BEGIN
    require(tok, "tok");
    require(out_len, "out_len");
    if (!tokens && n) fail(DSV4_ERR_INVALID_ARGUMENT, "tokens is NULL");
    copy_text_out(tok->impl->decode(tokens, n, (flags & DSV4_DETOKENIZE_SKIP_SPECIAL) != 0), buf, cap, out_len,
                  "detokenize");
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_token_to_piece(const dsv4_tokenizer *tok, int32_t token, char *buf, size_t cap,
                                         size_t *out_len) {
    DSV4_API_BEGIN
    require(tok, "tok");
    require(out_len, "out_len");
    const std::string bytes = tok->impl->token_bytes(token);
    *out_len = bytes.size();
    if (!buf || cap < bytes.size())
        fail(DSV4_ERR_BUFFER_TOO_SMALL, "token_to_piece: {} bytes, buffer holds {}", bytes.size(), cap);
    std::memcpy(buf, bytes.data(), bytes.size());
    DSV4_API_END
}

// ---- chat format ---------------------------------------------------------------------------------------------

DSV4_API dsv4_status dsv4_chat_params_init(dsv4_chat_params *params, size_t size) {
    DSV4_API_BEGIN
    dsv4_chat_params p{};
    p.drop_thinking = 1;
    p.add_bos = 1;
    init_params(params, size, "dsv4_chat_params_init", p);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_chat_encode(const char *messages_json, const dsv4_chat_params *params, char *buf, size_t cap,
                                      size_t *out_len) {
    DSV4_API_BEGIN
    require(messages_json, "messages_json");
    require(out_len, "out_len");
    const dsv4_chat_params p = read_params(params, dsv4_chat_default_params());
    dsv4::tokenizer::ChatOptions o;
    o.mode = p.thinking ? dsv4::tokenizer::ThinkingMode::thinking : dsv4::tokenizer::ThinkingMode::chat;
    o.drop_thinking = p.drop_thinking != 0;
    o.add_bos = p.add_bos != 0;
    if (p.reasoning_effort) o.reasoning_effort = std::string(p.reasoning_effort);
    const std::string prompt = dsv4::tokenizer::encode_chat(dsv4::io::parse_ordered_json(messages_json, "messages_json"), o);
    copy_text_out(prompt, buf, cap, out_len, "chat_encode");
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_chat_parse(const char *completion, size_t len, int32_t thinking, char *buf, size_t cap,
                                     size_t *out_len) {
    DSV4_API_BEGIN
    require(out_len, "out_len");
    if (!completion && len) fail(DSV4_ERR_INVALID_ARGUMENT, "completion is NULL");
    const auto message = dsv4::tokenizer::parse_completion(std::string(completion ? completion : "", len),
                                                           thinking ? dsv4::tokenizer::ThinkingMode::thinking
                                                                    : dsv4::tokenizer::ThinkingMode::chat);
    copy_text_out(dsv4::tokenizer::python_json_dumps(message), buf, cap, out_len, "chat_parse");
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_chat_stream_create(int32_t thinking, dsv4_chat_stream **out_stream) {
    if (out_stream) *out_stream = nullptr;
    DSV4_API_BEGIN
    require(out_stream, "out_stream");
    *out_stream = new dsv4_chat_stream{dsv4::tokenizer::ChatStreamParser(
        thinking ? dsv4::tokenizer::ThinkingMode::thinking : dsv4::tokenizer::ThinkingMode::chat)};
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_chat_stream_create_v2(int32_t thinking, uint32_t flags, dsv4_chat_stream **out_stream) {
    if (out_stream) *out_stream = nullptr;
    DSV4_API_BEGIN
    require(out_stream, "out_stream");
    if (flags & ~DSV4_CHAT_STREAM_PARTIAL_CALLS) fail(DSV4_ERR_INVALID_ARGUMENT, "flags: unknown bits {:#x}", flags);
    *out_stream = new dsv4_chat_stream{dsv4::tokenizer::ChatStreamParser(
        thinking ? dsv4::tokenizer::ThinkingMode::thinking : dsv4::tokenizer::ThinkingMode::chat,
        (flags & DSV4_CHAT_STREAM_PARTIAL_CALLS) != 0)};
    DSV4_API_END
}

DSV4_API void dsv4_chat_stream_free(dsv4_chat_stream *stream) { delete stream; }

DSV4_API dsv4_status dsv4_chat_stream_push(dsv4_chat_stream *stream, const char *text, size_t len,
                                           dsv4_chat_event_callback on_event, void *user_data) {
    DSV4_API_BEGIN
    if (!text && len) fail(DSV4_ERR_INVALID_ARGUMENT, "text is NULL");
    stream_call(stream, [&] { stream->impl.push(std::string(text ? text : "", len), event_sink(on_event, user_data)); });
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_chat_stream_finish(dsv4_chat_stream *stream, dsv4_chat_event_callback on_event, void *user_data) {
    DSV4_API_BEGIN
    stream_call(stream, [&] { stream->impl.finish(event_sink(on_event, user_data)); });
    DSV4_API_END
}

// ---- context ----------------------------------------------------------------------------------------------
DSV4_API dsv4_status dsv4_context_params_init(dsv4_context_params *params, size_t size) {
    DSV4_API_BEGIN
    dsv4_context_params p{};
    const dsv4::runtime::ContextOptions defaults;  // the one source of the defaults
    p.n_ctx = defaults.n_ctx;
    p.n_seq_max = defaults.n_seq_max;
    p.n_threads = defaults.n_threads;
    p.n_rewind = defaults.n_rewind;
    init_params(params, size, "dsv4_context_params_init", p);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_context_create(const dsv4_model *model, const dsv4_context_params *params,
                                         dsv4_context **out_ctx) {
    if (out_ctx) *out_ctx = nullptr;
    DSV4_API_BEGIN
    require(model, "model");
    require(out_ctx, "out_ctx");
    dsv4_context_params p = read_params(params, dsv4_context_default_params());
    dsv4::runtime::ContextOptions o;
    o.n_ctx = p.n_ctx;
    o.n_seq_max = p.n_seq_max;
    o.n_threads = p.n_threads;
    o.n_rewind = p.n_rewind;
    o.abort_callback = p.abort_callback;
    o.abort_user_data = p.abort_user_data;
    if (p.eval_callback) {
        dsv4_eval_callback cb = p.eval_callback;
        void *user = p.eval_user_data;
        auto active = std::make_shared<bool>(true);
        const dsv4_eval_ask_callback ask = p.eval_ask;
        o.observer.wants = [active, ask, user](const char *name, int layer) {
            if (!*active) return false;
            if (!ask) return true;
            const std::string full = "L" + std::to_string(layer) + "." + name;
            return ask(full.c_str(), layer, user) != 0;
        };
        o.observer.get = [cb, user, active](const char *name, int layer, dsv4_dtype dtype, int64_t rows, int64_t cols,
                                            const void *data) {
            const std::string full = "L" + std::to_string(layer) + "." + name;
            if (dtype == DSV4_DTYPE_BF16) dtype = DSV4_DTYPE_F32;  // values are delivered as fp32 holding bf16 values
            if (!cb(full.c_str(), layer, dtype, rows, cols, data, user)) *active = false;
        };
    }
    auto ctx = std::make_unique<dsv4_context>();
    ctx->impl = std::make_unique<dsv4::runtime::Context>(*model->impl, o);
    *out_ctx = ctx.release();
    DSV4_API_END
}

DSV4_API void dsv4_context_free(dsv4_context *ctx) { delete ctx; }

DSV4_API dsv4_status dsv4_decode(dsv4_context *ctx, const dsv4_batch *batch) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require_struct(batch, "batch");
    if (batch->struct_size < offsetof(dsv4_batch, want_output) + sizeof(batch->want_output))
        fail(DSV4_ERR_INVALID_ARGUMENT, "batch->struct_size = {} is too small", batch->struct_size);
    const int32_t seq = batch->struct_size >= offsetof(dsv4_batch, seq) + sizeof(int32_t) ? batch->seq : 0;
    ctx->impl->decode(batch->tokens, batch->pos, batch->seq_id, seq, batch->want_output, batch->n_tokens);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_get_logits(const dsv4_context *ctx, int32_t i_output, const float **out_logits,
                                     int32_t *out_n_vocab) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require(out_logits, "out_logits");
    *out_logits = ctx->impl->logits(i_output);
    if (out_n_vocab) *out_n_vocab = ctx->impl->model().config().vocab_size;
    DSV4_API_END
}

DSV4_API int32_t dsv4_n_outputs(const dsv4_context *ctx) { return ctx ? ctx->impl->n_outputs() : 0; }

DSV4_API dsv4_status dsv4_mtp_logits(dsv4_context *ctx, const int32_t *next_tokens, int32_t n, float *out, size_t cap) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require(next_tokens, "next_tokens");
    require(out, "out");
    ctx->impl->mtp_logits(next_tokens, n, out, cap);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_seq_length(const dsv4_context *ctx, int32_t seq, int32_t *out_length) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require(out_length, "out_length");
    *out_length = int32_t(ctx->impl->seq_length(seq));
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_seq_truncate(dsv4_context *ctx, int32_t seq, int32_t n) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    ctx->impl->seq_truncate(seq, n);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_seq_fork(dsv4_context *ctx, int32_t src, int32_t dst) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    ctx->impl->seq_fork(src, dst);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_get_memory_stats(const dsv4_context *ctx, dsv4_memory_stats *stats) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require_struct(stats, "stats");
    copy_out(stats, ctx->impl->memory_stats());
    DSV4_API_END
}

// ---- sampling -----------------------------------------------------------------------------------------------
DSV4_API dsv4_status dsv4_sampler_params_init(dsv4_sampler_params *params, size_t size) {
    DSV4_API_BEGIN
    const dsv4::sampling::SamplerConfig d;
    dsv4_sampler_params p{};
    p.temperature = d.temperature;
    p.top_p = d.top_p;
    p.min_p = d.min_p;
    p.repetition_penalty = d.repetition_penalty;
    p.presence_penalty = d.presence_penalty;
    p.frequency_penalty = d.frequency_penalty;
    p.top_k = d.top_k;
    p.penalty_last_n = d.penalty_last_n;
    p.seed = d.seed;
    init_params(params, size, "dsv4_sampler_params_init", p);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_sampler_create(const dsv4_sampler_params *params, dsv4_sampler **out_smpl) {
    if (out_smpl) *out_smpl = nullptr;
    DSV4_API_BEGIN
    require(out_smpl, "out_smpl");
    const dsv4_sampler_params p = read_params(params, dsv4_sampler_default_params());
    dsv4::sampling::SamplerConfig c;
    c.temperature = p.temperature;
    c.top_k = p.top_k;
    c.top_p = p.top_p;
    c.min_p = p.min_p;
    c.repetition_penalty = p.repetition_penalty;
    c.presence_penalty = p.presence_penalty;
    c.frequency_penalty = p.frequency_penalty;
    c.penalty_last_n = p.penalty_last_n;
    c.seed = p.seed;
    if (p.n_logit_bias < 0 || (p.n_logit_bias > 0 && (!p.logit_bias_tokens || !p.logit_bias_values)))
        fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: n_logit_bias = {} without both arrays", p.n_logit_bias);
    for (int32_t i = 0; i < p.n_logit_bias; ++i) c.logit_bias.emplace_back(p.logit_bias_tokens[i], p.logit_bias_values[i]);
    auto s = std::make_unique<dsv4_sampler>();
    s->impl = std::make_unique<dsv4::sampling::Sampler>(c);
    *out_smpl = s.release();
    DSV4_API_END
}

DSV4_API void dsv4_sampler_free(dsv4_sampler *smpl) { delete smpl; }

DSV4_API dsv4_status dsv4_sampler_sample_logits(dsv4_sampler *smpl, const float *logits, int32_t n_vocab,
                                                int32_t *out_token) {
    DSV4_API_BEGIN
    require(smpl, "smpl");
    require(logits, "logits");
    require(out_token, "out_token");
    *out_token = smpl->impl->sample(logits, n_vocab);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_sampler_sample(dsv4_sampler *smpl, const dsv4_context *ctx, int32_t i_output,
                                         int32_t *out_token) {
    DSV4_API_BEGIN
    require(smpl, "smpl");
    require(ctx, "ctx");
    require(out_token, "out_token");
    *out_token = smpl->impl->sample(ctx->impl->logits(i_output), ctx->impl->model().config().vocab_size);
    DSV4_API_END
}

DSV4_API void dsv4_sampler_accept(dsv4_sampler *smpl, int32_t token) {
    if (smpl) smpl->impl->accept(token);
}

DSV4_API void dsv4_sampler_reset(dsv4_sampler *smpl) {
    if (smpl) smpl->impl->reset();
}

// ---- generation ---------------------------------------------------------------------------------------------
DSV4_API dsv4_status dsv4_generate_params_init(dsv4_generate_params *params, size_t size) {
    DSV4_API_BEGIN
    dsv4_generate_params p{};
    p.max_tokens = 256;
    init_params(params, size, "dsv4_generate_params_init", p);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_generate(dsv4_context *ctx, dsv4_sampler *smpl, const dsv4_tokenizer *tok, int32_t seq,
                                   const int32_t *prompt, int32_t n_prompt, const dsv4_generate_params *params,
                                   dsv4_token_callback on_token, void *user_data, dsv4_generate_stats *stats) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    std::vector<dsv4::runtime::GenerateRequest> requests;
    requests.push_back(make_request(smpl, seq, prompt, n_prompt, params, on_token, user_data, stats));
    dsv4::runtime::generate(*ctx->impl, tok ? tok->impl.get() : nullptr, requests);
    stats_out(requests[0].stats, stats);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_generate_batch(dsv4_context *ctx, const dsv4_tokenizer *tok, dsv4_generate_request *requests,
                                         int32_t n_requests) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    if (n_requests < 1 || !requests) fail(DSV4_ERR_INVALID_ARGUMENT, "generate_batch: {} requests", n_requests);
    std::vector<dsv4::runtime::GenerateRequest> rs;
    for (int32_t i = 0; i < n_requests; ++i) {
        const dsv4_generate_request &q = requests[i];
        if (q.struct_size < sizeof(dsv4_generate_request))
            fail(DSV4_ERR_INVALID_ARGUMENT, "generate_batch: requests[{}].struct_size = {} is too small", i, q.struct_size);
        rs.push_back(make_request(q.sampler, q.seq, q.prompt, q.n_prompt, q.params, q.on_token, q.user_data, q.stats));
    }
    dsv4::runtime::generate(*ctx->impl, tok ? tok->impl.get() : nullptr, rs);
    for (int32_t i = 0; i < n_requests; ++i) stats_out(rs[size_t(i)].stats, requests[i].stats);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_generation_start(dsv4_context *ctx, dsv4_sampler *smpl, const dsv4_tokenizer *tok,
                                           int32_t seq, const int32_t *prompt, int32_t n_prompt,
                                           const dsv4_generate_params *params, dsv4_generation **out_gen) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require(out_gen, "out_gen");
    *out_gen = nullptr;
    auto gen = std::make_unique<dsv4_generation>();
    gen->request.push_back(make_request(smpl, seq, prompt, n_prompt, params, nullptr, nullptr, nullptr));
    dsv4_generation *g = gen.get();
    gen->request[0].on_token = [g](int32_t token, const std::string &text) {
        g->pending.emplace_back(token, text);
        return true;
    };
    gen->impl = std::make_unique<dsv4::runtime::Generation>(*ctx->impl, tok ? tok->impl.get() : nullptr, gen->request);
    *out_gen = gen.release();
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_generation_next(dsv4_generation *gen, int32_t *out_token, const char **out_text,
                                          size_t *out_len, int32_t *out_done) {
    DSV4_API_BEGIN
    require(gen, "gen");
    require(out_token, "out_token");
    require(out_done, "out_done");
    if (gen->failed) fail(DSV4_ERR_INVALID_ARGUMENT, "generation_next: an earlier call failed");
    try {
        while (gen->pending.empty() && !gen->done) gen->done = !gen->impl->step();
    } catch (...) {
        gen->failed = true;
        throw;
    }
    gen->current.clear();
    *out_token = -1;
    *out_done = gen->pending.empty();
    if (!gen->pending.empty()) {
        *out_token = gen->pending.front().first;
        gen->current = std::move(gen->pending.front().second);
        gen->pending.pop_front();
    }
    if (out_text) *out_text = gen->current.c_str();
    if (out_len) *out_len = gen->current.size();
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_generation_get_stats(const dsv4_generation *gen, dsv4_generate_stats *stats) {
    DSV4_API_BEGIN
    require(gen, "gen");
    require_struct(stats, "stats");
    stats_out(gen->request[0].stats, stats);
    DSV4_API_END
}

DSV4_API void dsv4_generation_free(dsv4_generation *gen) { delete gen; }

DSV4_API void dsv4_context_abort(dsv4_context *ctx) {
    if (ctx) ctx->impl->request_abort();
}

// ---- state --------------------------------------------------------------------------------------------------
DSV4_API dsv4_status dsv4_state_size(const dsv4_context *ctx, int32_t seq, size_t *out_size) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require(out_size, "out_size");
    *out_size = ctx->impl->state_size(seq);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_state_save(const dsv4_context *ctx, int32_t seq, void *buf, size_t cap, size_t *out_written) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require(out_written, "out_written");
    std::vector<uint8_t> blob = ctx->impl->save_state(seq);
    *out_written = blob.size();
    if (!buf || cap < blob.size())
        fail(DSV4_ERR_BUFFER_TOO_SMALL, "state of sequence {} needs {} bytes, buffer has {}", seq, blob.size(), cap);
    std::memcpy(buf, blob.data(), blob.size());
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_state_load(dsv4_context *ctx, int32_t seq, const void *buf, size_t size) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require(buf, "buf");
    ctx->impl->load_state(seq, static_cast<const uint8_t *>(buf), size);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_state_save_file(const dsv4_context *ctx, int32_t seq, const char *path) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require(path, "path");
    std::vector<uint8_t> blob = ctx->impl->save_state(seq);
    std::unique_ptr<FILE, int (*)(FILE *)> f(std::fopen(path, "wb"), &std::fclose);
    if (!f) fail(DSV4_ERR_IO_WRITE, "{}: cannot open for writing", path);
    if (std::fwrite(blob.data(), 1, blob.size(), f.get()) != blob.size() || std::fflush(f.get()) != 0)
        fail(DSV4_ERR_IO_WRITE, "{}: write failed", path);
    DSV4_API_END
}

DSV4_API dsv4_status dsv4_state_load_file(dsv4_context *ctx, int32_t seq, const char *path) {
    DSV4_API_BEGIN
    require(ctx, "ctx");
    require(path, "path");
    dsv4::io::MappedFile f(path, false);
    ctx->impl->load_state(seq, f.data(), f.size());
    DSV4_API_END
}

}  // extern "C"
