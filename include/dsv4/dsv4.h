/*
 * dsv4.h - the C API of dsv4, an embeddable inference library for DeepSeek-V4.
 *
 * This header is the specification of the API. Every function documents its parameters, the statuses it
 * can return, who owns what, and from which threads it may be called.
 *
 * Threading model
 *   - A dsv4_model is immutable after dsv4_model_load(); any number of threads may query it and create
 *     contexts on it concurrently.
 *   - A dsv4_context holds the KV cache of its sequences and is used by one thread at a time.
 *   - The last-error message is thread-local: it describes the last failed call made by this thread.
 *   - The log callback may be invoked from any thread that calls into the library.
 *
 * Usage (error handling shortened):
 *
 *     dsv4_model *model = NULL;
 *     dsv4_model_params mp = dsv4_model_default_params();
 *     if (dsv4_model_load("path/to/DeepSeek-V4-Flash", &mp, &model) != DSV4_OK) {
 *         fprintf(stderr, "%s\n", dsv4_last_error_message());
 *         return 1;
 *     }
 *     dsv4_context *ctx = NULL;
 *     dsv4_context_params cp = dsv4_context_default_params();
 *     cp.n_ctx = 4096;
 *     dsv4_context_create(model, &cp, &ctx);
 *     int32_t tokens[3] = {0, 100, 200};
 *     dsv4_batch batch = dsv4_batch_for_sequence(tokens, 3, 0);      // sequence 0 continues
 *     dsv4_decode(ctx, &batch);
 *     const float *logits; int32_t n_vocab;
 *     dsv4_get_logits(ctx, -1, &logits, &n_vocab);                   // last token's logits
 *     ...
 *     dsv4_context_free(ctx);
 *     dsv4_model_free(model);
 */
#ifndef DSV4_H
#define DSV4_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------------------
 * Export, attributes
 * ------------------------------------------------------------------------------------------------------ */
#if defined(DSV4_BUILD)
#  define DSV4_API __attribute__((visibility("default")))
#else
#  define DSV4_API
#endif
#if defined(__GNUC__) || defined(__clang__)
#  define DSV4_NODISCARD __attribute__((warn_unused_result))
#  define DSV4_DEPRECATED(hint) __attribute__((deprecated(hint)))
#else
#  define DSV4_NODISCARD
#  define DSV4_DEPRECATED(hint)
#endif

/* ---------------------------------------------------------------------------------------------------------
 * Version. The macros describe the header; the functions describe the library actually linked.
 * ------------------------------------------------------------------------------------------------------ */
#define DSV4_VERSION_MAJOR 0
#define DSV4_VERSION_MINOR 1
#define DSV4_VERSION_PATCH 0
#define DSV4_VERSION_STRING "0.1.0"
#define DSV4_VERSION_NUMBER (DSV4_VERSION_MAJOR * 1000000 + DSV4_VERSION_MINOR * 1000 + DSV4_VERSION_PATCH)
/* Bumped on every ABI-visible addition (function, enum value, struct field). */
#define DSV4_API_VERSION 9

/* Returns DSV4_VERSION_NUMBER of the linked library. Thread-safety: any thread. */
DSV4_API int32_t dsv4_version_number(void);
/* Returns DSV4_VERSION_STRING of the linked library (static storage). Thread-safety: any thread. */
DSV4_API const char *dsv4_version_string(void);
/* Returns DSV4_API_VERSION of the linked library. Thread-safety: any thread. */
DSV4_API int32_t dsv4_api_version(void);
/* Returns a one-line description of the build (compiler, options, backends; static storage).
 * Thread-safety: any thread. */
DSV4_API const char *dsv4_build_info(void);


/* ---------------------------------------------------------------------------------------------------------
 * Status codes. The primary code is the low byte; extended codes add detail in the higher bits, so
 * DSV4_STATUS_PRIMARY(s) maps any code to its primary. Values are fixed forever and never reused.
 * ------------------------------------------------------------------------------------------------------ */
typedef enum dsv4_status {
    DSV4_OK = 0,
    DSV4_ERR_INVALID_ARGUMENT = 1,
    DSV4_ERR_IO = 2,
    DSV4_ERR_FORMAT = 3,
    DSV4_ERR_CONFIG = 4,
    DSV4_ERR_WEIGHTS = 5,
    DSV4_ERR_OUT_OF_MEMORY = 6,
    DSV4_ERR_CONTEXT_FULL = 7,
    DSV4_ERR_INVALID_TOKEN = 8,
    DSV4_ERR_UNSUPPORTED = 9,
    DSV4_ERR_BACKEND = 10,
    DSV4_ERR_CANCELLED = 11,
    DSV4_ERR_BUFFER_TOO_SMALL = 12,
    DSV4_ERR_VERSION = 13,
    DSV4_ERR_INTERNAL = 14,

    DSV4_ERR_IO_NOT_FOUND = DSV4_ERR_IO | (1 << 8),
    DSV4_ERR_IO_READ = DSV4_ERR_IO | (2 << 8),
    DSV4_ERR_IO_WRITE = DSV4_ERR_IO | (3 << 8),

    DSV4_ERR_FORMAT_TRUNCATED = DSV4_ERR_FORMAT | (1 << 8),
    DSV4_ERR_FORMAT_HEADER_SIZE = DSV4_ERR_FORMAT | (2 << 8),
    DSV4_ERR_FORMAT_JSON = DSV4_ERR_FORMAT | (3 << 8),
    DSV4_ERR_FORMAT_NESTING = DSV4_ERR_FORMAT | (4 << 8),
    DSV4_ERR_FORMAT_OFFSET = DSV4_ERR_FORMAT | (5 << 8),
    DSV4_ERR_FORMAT_OVERLAP = DSV4_ERR_FORMAT | (6 << 8),
    DSV4_ERR_FORMAT_DTYPE = DSV4_ERR_FORMAT | (7 << 8),
    DSV4_ERR_FORMAT_SHAPE = DSV4_ERR_FORMAT | (8 << 8),
    DSV4_ERR_FORMAT_INDEX = DSV4_ERR_FORMAT | (9 << 8),
    DSV4_ERR_FORMAT_DUPLICATE = DSV4_ERR_FORMAT | (10 << 8),

    DSV4_ERR_CONFIG_MISSING_FIELD = DSV4_ERR_CONFIG | (1 << 8),
    DSV4_ERR_CONFIG_INVALID_FIELD = DSV4_ERR_CONFIG | (2 << 8),
    DSV4_ERR_CONFIG_INCONSISTENT = DSV4_ERR_CONFIG | (3 << 8),

    DSV4_ERR_WEIGHTS_MISSING = DSV4_ERR_WEIGHTS | (1 << 8),
    DSV4_ERR_WEIGHTS_DTYPE = DSV4_ERR_WEIGHTS | (2 << 8),
    DSV4_ERR_WEIGHTS_SHAPE = DSV4_ERR_WEIGHTS | (3 << 8),
    DSV4_ERR_WEIGHTS_MISMATCH = DSV4_ERR_WEIGHTS | (4 << 8), /* several kinds of mismatch at once */

    DSV4_ERR_INVALID_ARGUMENT_SEQUENCE = DSV4_ERR_INVALID_ARGUMENT | (1 << 8),
    DSV4_ERR_INVALID_ARGUMENT_POSITION = DSV4_ERR_INVALID_ARGUMENT | (2 << 8),
    DSV4_ERR_UNSUPPORTED_REWIND = DSV4_ERR_UNSUPPORTED | (1 << 8)
} dsv4_status;

#define DSV4_STATUS_PRIMARY(s) ((dsv4_status)((int)(s) & 0xff))

/* Returns the enumerator's name, e.g. "DSV4_ERR_WEIGHTS_SHAPE", or "DSV4_UNKNOWN_STATUS" (static storage).
 * Thread-safety: any thread. */
DSV4_API const char *dsv4_status_name(dsv4_status status);
/* Status of the last failed call on this thread (DSV4_OK if none since the last clear).
 * Thread-safety: any thread (the value is thread-local). */
DSV4_API dsv4_status dsv4_last_error_status(void);
/* Message of the last failed call on this thread, naming the file, tensor or field at fault; "" if none.
 * Borrowed: valid until the next failing call or dsv4_clear_last_error() on this thread.
 * Thread-safety: any thread (the value is thread-local). */
DSV4_API const char *dsv4_last_error_message(void);
/* Resets this thread's last error to DSV4_OK / "". Thread-safety: any thread. */
DSV4_API void dsv4_clear_last_error(void);

/* ---------------------------------------------------------------------------------------------------------
 * Logging
 * ------------------------------------------------------------------------------------------------------ */
typedef enum dsv4_log_level {
    DSV4_LOG_LEVEL_ERROR = 0,
    DSV4_LOG_LEVEL_WARN = 1,
    DSV4_LOG_LEVEL_INFO = 2,
    DSV4_LOG_LEVEL_DEBUG = 3
} dsv4_log_level;

/* message: NUL-terminated, without a trailing newline, borrowed for the duration of the call. */
typedef void (*dsv4_log_callback)(dsv4_log_level level, const char *message, void *user_data);

/* Installs a log sink; NULL restores the default (stderr, WARN and above). user_data is passed through.
 * Thread-safety: not thread-safe: call before other threads use the library. */
DSV4_API void dsv4_log_set(dsv4_log_callback callback, void *user_data);
/* Messages above this level are dropped (default DSV4_LOG_LEVEL_WARN). Thread-safety: any thread. */
DSV4_API void dsv4_log_set_level(dsv4_log_level level);

/* ---------------------------------------------------------------------------------------------------------
 * Shared enums
 * ------------------------------------------------------------------------------------------------------ */
typedef enum dsv4_dtype {
    DSV4_DTYPE_F32 = 0,
    DSV4_DTYPE_BF16 = 1,
    DSV4_DTYPE_F16 = 2,
    DSV4_DTYPE_F8_E4M3 = 3,
    DSV4_DTYPE_F8_E8M0 = 4,
    DSV4_DTYPE_FP4_E2M1 = 5, /* packed two per byte, stored as I8 in the checkpoint */
    DSV4_DTYPE_I8 = 6,
    DSV4_DTYPE_I32 = 7,
    DSV4_DTYPE_I64 = 8,
    DSV4_DTYPE_COUNT = 9
} dsv4_dtype;

/* Returns the safetensors-style name, e.g. "F8_E4M3" (static storage). Thread-safety: any thread. */
DSV4_API const char *dsv4_dtype_name(dsv4_dtype dtype);

typedef enum dsv4_layer_kind {
    DSV4_LAYER_KIND_WINDOW = 0, /* compress ratio 0: sliding-window attention only */
    DSV4_LAYER_KIND_CSA = 1,    /* compress ratio 4: window + indexer-selected compressed entries */
    DSV4_LAYER_KIND_HCA = 2     /* compress ratio 128: window + all compressed entries */
} dsv4_layer_kind;

/* ---------------------------------------------------------------------------------------------------------
 * Model: weights and configuration, immutable after load.
 * ------------------------------------------------------------------------------------------------------ */
typedef struct dsv4_model dsv4_model;

/* One device a model can be loaded on (dsv4_model_params.device). */
typedef struct dsv4_device_info {
    size_t struct_size;      /* sizeof(dsv4_device_info); set by the caller */
    char spec[32];           /* what dsv4_model_params.device takes: "cpu", "cuda:0", ... */
    char description[128];   /* "cpu-avx512_bf16", "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" */
    uint64_t memory_bytes;   /* the device's own memory; 0 for the CPU (host memory) */
} dsv4_device_info;

/* The devices this build finds on this machine: the CPU (index 0), then each CUDA GPU in a build with CUDA. The
 * count is taken at the first call of either function. Thread-safety: any thread. */
DSV4_API int32_t dsv4_device_count(void);
/* Fills *info for device `index` (0 <= index < dsv4_device_count(); info->struct_size set by the caller).
 * Returns DSV4_OK or DSV4_ERR_INVALID_ARGUMENT. Thread-safety: any thread. */
DSV4_API dsv4_status dsv4_device_get_info(int32_t index, dsv4_device_info *info);

/* Called during loading with done <= total (bytes); return 0 to cancel the load (DSV4_ERR_CANCELLED). */
typedef int (*dsv4_progress_callback)(uint64_t done, uint64_t total, void *user_data);

typedef struct dsv4_model_params {
    size_t struct_size;                         /* sizeof(dsv4_model_params); set by _init */
    dsv4_progress_callback progress_callback;   /* NULL = none */
    void *progress_user_data;                   /* passed to progress_callback */
    uint8_t use_mmap;                           /* 1 (default): map shards read-only, zero-copy */
    uint8_t check_tensors;                      /* 1 (default): reject NaN/Inf in fp32/bf16 norm weights */
    uint8_t repack_weights;                     /* 1 (default): where the CPU has AVX512-BF16, copy the FP4/FP8
                                                   matrices at load into the kernels' packed layout (faster
                                                   decode and prefill; anonymous memory of about the checkpoint's
                                                   size, while mapped shard pages become reclaimable page
                                                   cache); 0: compute from the checkpoint's bytes in place */
    const char *device;                         /* where the weights, KV caches and computation live: NULL or "cpu"
                                                   (default), "cuda" (= "cuda:0") or "cuda:N" (a build with CUDA:
                                                   dsv4_device_count / dsv4_device_get_info list the choices); read
                                                   during the call only. On a GPU the weights are copied into its
                                                   memory once: progress_callback then reports that copy too */
} dsv4_model_params;

/* Fills *params with defaults. size = sizeof(*params) as the caller knows it (ABI growth: a caller built against an
 * older header gets the fields it knows, and every call taking the struct defaults the others; every _params_init
 * below works the same way).
 * Returns DSV4_ERR_INVALID_ARGUMENT if params is NULL or size is too small. Thread-safety: any thread. */
DSV4_API dsv4_status dsv4_model_params_init(dsv4_model_params *params, size_t size);
static inline dsv4_model_params dsv4_model_default_params(void) {
    dsv4_model_params p;
    (void)dsv4_model_params_init(&p, sizeof p);
    return p;
}

/* Loads a Hugging Face DeepSeek-V4 checkpoint directory (config.json, model.safetensors or
 * model.safetensors.index.json + shards) as published: no conversion step.
 * params may be NULL (defaults). On success *out_model owns the model: free it with dsv4_model_free().
 * Every tensor the config implies is checked for presence, dtype and shape; all mismatches are reported
 * at once in the message.
 * Returns DSV4_OK, DSV4_ERR_INVALID_ARGUMENT, DSV4_ERR_IO_*, DSV4_ERR_FORMAT_*, DSV4_ERR_CONFIG_*,
 * DSV4_ERR_WEIGHTS_*, DSV4_ERR_OUT_OF_MEMORY, DSV4_ERR_CANCELLED. On failure *out_model is set to NULL.
 * Thread-safety: any thread. */
DSV4_API DSV4_NODISCARD dsv4_status dsv4_model_load(const char *dir, const dsv4_model_params *params,
                                                    dsv4_model **out_model);
/* Frees a model; NULL is a harmless no-op. All contexts of the model must have been freed before.
 * Thread-safety: not concurrently with any other use of this model. */
DSV4_API void dsv4_model_free(dsv4_model *model);

typedef struct dsv4_model_info {
    size_t struct_size;           /* sizeof(dsv4_model_info); set by the caller */
    const char *name;             /* checkpoint directory's base name; lives as long as the model */
    int32_t vocab_size;           /* embedding / head rows */
    int32_t dim;                  /* hidden size D */
    int32_t n_layers;             /* main layers (without MTP) */
    int32_t n_mtp_layers;         /* MTP blocks */
    int32_t n_heads;              /* query heads H */
    int32_t head_dim;             /* 512 */
    int32_t rope_head_dim;        /* 64 */
    int32_t q_lora_rank;          /* R_q */
    int32_t o_groups;             /* G */
    int32_t o_lora_rank;          /* R_o */
    int32_t n_routed_experts;     /* E */
    int32_t n_shared_experts;     /* 1 */
    int32_t n_activated_experts;  /* experts per token */
    int32_t moe_inter_dim;        /* expert intermediate size */
    int32_t n_hash_layers;        /* first layers routed by token id */
    int32_t window_size;          /* sliding window W */
    int32_t index_n_heads;        /* lightning-indexer heads */
    int32_t index_head_dim;       /* lightning-indexer head dim */
    int32_t index_topk;           /* compressed entries selected per query in CSA layers */
    int32_t hc_mult;              /* residual streams */
    int32_t max_position_embeddings; /* longest context the checkpoint supports */
    int32_t n_window_layers;      /* main layers of each kind */
    int32_t n_csa_layers;
    int32_t n_hca_layers;
    dsv4_dtype expert_dtype;      /* DSV4_DTYPE_FP4_E2M1 or DSV4_DTYPE_F8_E4M3 */
    uint64_t n_params;            /* parameters in the checkpoint (FP4 counts 2 per byte), incl. MTP */
    uint64_t n_bytes;             /* bytes of tensor data in the checkpoint */
    int32_t bos_token_id;         /* config.json's bos_token_id: the token dsv4_chat_encode's add_bos text is */
    int32_t eos_token_id;         /* config.json's eos_token_id: sampling it ends a generation */
    const char *device;           /* the device computing it, e.g. "cpu-avx512_bf16", "cuda:0 (NVIDIA H100 80GB HBM3)";
                                     lives as long as the model */
} dsv4_model_info;

/* Fills *info (info->struct_size must be set by the caller; fields past it are not written).
 * Returns DSV4_OK or DSV4_ERR_INVALID_ARGUMENT. Thread-safety: any thread, concurrent calls on the same
 * model allowed. */
DSV4_API dsv4_status dsv4_model_get_info(const dsv4_model *model, dsv4_model_info *info);

typedef struct dsv4_layer_info {
    size_t struct_size;         /* sizeof(dsv4_layer_info); set by the caller */
    dsv4_layer_kind kind;       /* attention kind */
    int32_t compress_ratio;     /* 0, 4 or 128 */
    int32_t is_hash_routed;     /* 1: MoE routed through tid2eid by token id */
    int32_t is_mtp;             /* 1: the layer is an MTP block (index >= n_layers) */
    float rope_theta;           /* RoPE base of the layer */
    int32_t uses_yarn;          /* 1: YaRN frequency scaling applies */
} dsv4_layer_info;

/* Describes layer il, 0 <= il < n_layers + n_mtp_layers (MTP blocks follow the main layers).
 * Returns DSV4_OK or DSV4_ERR_INVALID_ARGUMENT. Thread-safety: any thread, concurrent calls allowed. */
DSV4_API dsv4_status dsv4_model_get_layer_info(const dsv4_model *model, int32_t il, dsv4_layer_info *info);

/* Bytes of checkpoint tensor data of one dtype (DSV4_DTYPE_FP4_E2M1 for packed expert weights).
 * Returns DSV4_OK or DSV4_ERR_INVALID_ARGUMENT. Thread-safety: any thread, concurrent calls allowed. */
DSV4_API dsv4_status dsv4_model_param_bytes(const dsv4_model *model, dsv4_dtype dtype, uint64_t *out_bytes);

/* ---------------------------------------------------------------------------------------------------------
 * Tokenizer: the byte-level BPE of a Hugging Face tokenizer.json (DeepSeek-V4's). Immutable; any thread.
 * ------------------------------------------------------------------------------------------------------ */
typedef struct dsv4_tokenizer dsv4_tokenizer;

/* Loads a tokenizer.json. On success *out_tok owns it: free it with dsv4_tokenizer_free().
 * Returns DSV4_OK, DSV4_ERR_INVALID_ARGUMENT, DSV4_ERR_IO_*, DSV4_ERR_FORMAT_JSON, DSV4_ERR_UNSUPPORTED (a
 * pre-tokenizer, normalizer or model option this library does not implement, named in the message).
 * Thread-safety: any thread. */
DSV4_API DSV4_NODISCARD dsv4_status dsv4_tokenizer_load(const char *path, dsv4_tokenizer **out_tok);
/* Frees a tokenizer loaded with dsv4_tokenizer_load; NULL is a harmless no-op. Never pass the borrowed
 * tokenizer of a model. Thread-safety: not concurrently with other uses of this tokenizer. */
DSV4_API void dsv4_tokenizer_free(dsv4_tokenizer *tok);
/* The tokenizer of a model whose directory has a tokenizer.json, else NULL. Borrowed: lives as long as the
 * model. Thread-safety: any thread. */
DSV4_API const dsv4_tokenizer *dsv4_model_tokenizer(const dsv4_model *model);
/* Number of token ids (model vocabulary plus added tokens). Thread-safety: any thread. */
DSV4_API int32_t dsv4_tokenizer_vocab_size(const dsv4_tokenizer *tok);
/* 1 if token is an added token marked special (skipped by DSV4_DETOKENIZE_SKIP_SPECIAL), else 0.
 * Thread-safety: any thread. */
DSV4_API int32_t dsv4_token_is_special(const dsv4_tokenizer *tok, int32_t token);

/* Encodes len bytes of UTF-8 text (no BOS/EOS added; special-token text is recognised as Hugging Face does)
 * into tokens (cap entries); *out_n receives the number of tokens. If cap is too small: DSV4_ERR_BUFFER_TOO_SMALL,
 * *out_n set, nothing written. Invalid UTF-8: DSV4_ERR_INVALID_ARGUMENT naming the byte offset.
 * Thread-safety: any thread, concurrent calls allowed. */
DSV4_API dsv4_status dsv4_tokenize(const dsv4_tokenizer *tok, const char *text, size_t len, int32_t *tokens,
                                   size_t cap, size_t *out_n);

/* Token lists of a batch encode, owned by the library. */
typedef struct dsv4_token_lists dsv4_token_lists;
/* Encodes n_texts texts (texts[i] of lens[i] bytes, as dsv4_tokenize) over n_threads threads (0 = all cores);
 * *out_lists receives the results, freed with dsv4_token_lists_free. The first failing text (in order) is the
 * error and its message names the index; nothing is returned then. Thread-safety: any thread. */
DSV4_API DSV4_NODISCARD dsv4_status dsv4_tokenize_batch(const dsv4_tokenizer *tok, const char *const *texts,
                                                        const size_t *lens, size_t n_texts, int32_t n_threads,
                                                        dsv4_token_lists **out_lists);
/* Number of lists (the batch's n_texts); 0 for NULL. */
DSV4_API size_t dsv4_token_lists_count(const dsv4_token_lists *lists);
/* The tokens of text i: *out_tokens (owned by lists, valid until it is freed) and *out_n. */
DSV4_API dsv4_status dsv4_token_lists_get(const dsv4_token_lists *lists, size_t i, const int32_t **out_tokens,
                                          size_t *out_n);
DSV4_API void dsv4_token_lists_free(dsv4_token_lists *lists);

#define DSV4_DETOKENIZE_SKIP_SPECIAL 1u
/* Decodes n tokens to UTF-8 in buf (cap bytes); *out_len receives the length without the terminating NUL,
 * which is written too (so cap must exceed the length). Invalid UTF-8 from byte tokens becomes U+FFFD per
 * maximal invalid subpart. Too small: DSV4_ERR_BUFFER_TOO_SMALL, *out_len set, nothing written.
 * Ids outside the vocabulary: DSV4_ERR_INVALID_TOKEN. Thread-safety: any thread, concurrent calls allowed. */
DSV4_API dsv4_status dsv4_detokenize(const dsv4_tokenizer *tok, const int32_t *tokens, size_t n, uint32_t flags,
                                     char *buf, size_t cap, size_t *out_len);
/* The raw bytes token contributes to a decode, possibly part of a UTF-8 sequence (for streaming: hold back an
 * incomplete tail until the next piece completes it). Buffer rule as dsv4_detokenize, no NUL written.
 * Thread-safety: any thread, concurrent calls allowed. */
DSV4_API dsv4_status dsv4_token_to_piece(const dsv4_tokenizer *tok, int32_t token, char *buf, size_t cap,
                                         size_t *out_len);

/* ---------------------------------------------------------------------------------------------------------
 * Chat format (the official DeepSeek-V4 encoding): OpenAI-style messages → prompt text; completion → message.
 * ------------------------------------------------------------------------------------------------------ */
typedef struct dsv4_chat_params {
    size_t struct_size;            /* sizeof(dsv4_chat_params); set by _init */
    const char *reasoning_effort;  /* NULL (default), "high" or "max" (thinking mode: adds the max-effort preamble) */
    int32_t thinking;              /* 0 (default): chat mode, prompt ends in </think>; 1: thinking mode, ends in <think> */
    int32_t drop_thinking;         /* 1 (default): drop the reasoning of turns before the last user turn */
    int32_t add_bos;               /* 1 (default): start with the BOS token text */
} dsv4_chat_params;

/* Fills *params with defaults. Returns DSV4_OK or DSV4_ERR_INVALID_ARGUMENT. Thread-safety: any thread. */
DSV4_API dsv4_status dsv4_chat_params_init(dsv4_chat_params *params, size_t size);
static inline dsv4_chat_params dsv4_chat_default_params(void) {
    dsv4_chat_params p;
    (void)dsv4_chat_params_init(&p, sizeof p);
    return p;
}

/* Renders messages_json (a NUL-terminated JSON array of message objects with roles system, developer, user,
 * assistant, tool, latest_reminder and the fields tools, response_format, tool_calls, reasoning_content, task,
 * wo_eos, tool_call_id) as the prompt text; tokenize it with dsv4_tokenize. params may be NULL.
 * Buffer rule as dsv4_detokenize (NUL written). Returns DSV4_OK, DSV4_ERR_FORMAT_JSON,
 * DSV4_ERR_INVALID_ARGUMENT (a conversation the official encoder rejects; the message names the index and
 * field), DSV4_ERR_BUFFER_TOO_SMALL. Thread-safety: any thread. */
DSV4_API dsv4_status dsv4_chat_encode(const char *messages_json, const dsv4_chat_params *params, char *buf, size_t cap,
                                      size_t *out_len);
/* Parses a completion (the generated text up to and including the EOS token text) into an assistant message,
 * written as JSON {"role","content","reasoning_content","tool_calls":[{"type","function":{"name","arguments"}}]}
 * to buf (buffer rule as dsv4_detokenize). thinking: 1 if the prompt opened <think>. Returns DSV4_OK,
 * DSV4_ERR_INVALID_ARGUMENT (malformed completion, with the reason), DSV4_ERR_BUFFER_TOO_SMALL.
 * Thread-safety: any thread. */
DSV4_API dsv4_status dsv4_chat_parse(const char *completion, size_t len, int32_t thinking, char *buf, size_t cap,
                                     size_t *out_len);

/* Incremental parsing of a completion while it streams. Reasoning and content arrive as deltas (text that might
 * begin a marker is held back, so no DSML reaches content); a tool call arrives once its invoke is complete, as
 * JSON {"type":"function","function":{"name","arguments"}}. The events concatenate to dsv4_chat_parse's result. */
typedef struct dsv4_chat_stream dsv4_chat_stream;
typedef enum dsv4_chat_event {
    DSV4_CHAT_EVENT_REASONING = 0,
    DSV4_CHAT_EVENT_CONTENT = 1,
    DSV4_CHAT_EVENT_TOOL_CALL = 2,
    /* Only from a stream created with DSV4_CHAT_STREAM_PARTIAL_CALLS: a call being written, announced before its
     * TOOL_CALL event: its function name once the invoke header is complete, then fragments of its arguments as each
     * parameter completes (they concatenate to the TOOL_CALL's function.arguments). */
    DSV4_CHAT_EVENT_TOOL_CALL_BEGIN = 3,
    DSV4_CHAT_EVENT_TOOL_CALL_ARGUMENTS = 4
} dsv4_chat_event;
#define DSV4_CHAT_STREAM_PARTIAL_CALLS 1u /* dsv4_chat_stream_create_v2 flag */
/* text: borrowed for the call. */
typedef void (*dsv4_chat_event_callback)(dsv4_chat_event event, const char *text, size_t len, void *user_data);

/* Creates a stream parser (thinking: 1 if the prompt opened <think>); free it with dsv4_chat_stream_free().
 * Thread-safety: any thread. */
DSV4_API DSV4_NODISCARD dsv4_status dsv4_chat_stream_create(int32_t thinking, dsv4_chat_stream **out_stream);
/* As dsv4_chat_stream_create, with flags: 0 or DSV4_CHAT_STREAM_PARTIAL_CALLS (calls also announced while they are
 * written, for servers that stream tool-call arguments). Other bits: DSV4_ERR_INVALID_ARGUMENT.
 * Thread-safety: any thread. */
DSV4_API DSV4_NODISCARD dsv4_status dsv4_chat_stream_create_v2(int32_t thinking, uint32_t flags,
                                                               dsv4_chat_stream **out_stream);
/* NULL is a harmless no-op. Thread-safety: one thread at a time per stream. */
DSV4_API void dsv4_chat_stream_free(dsv4_chat_stream *stream);
/* Feeds the next piece of completion text. Malformed text: DSV4_ERR_INVALID_ARGUMENT with the reason, and every
 * later call on this stream fails. Thread-safety: one thread at a time per stream. */
DSV4_API dsv4_status dsv4_chat_stream_push(dsv4_chat_stream *stream, const char *text, size_t len,
                                           dsv4_chat_event_callback on_event, void *user_data);
/* Ends the stream: flushes held-back text and checks that the completion ended properly (EOS, closed blocks).
 * Thread-safety: one thread at a time per stream. */
DSV4_API dsv4_status dsv4_chat_stream_finish(dsv4_chat_stream *stream, dsv4_chat_event_callback on_event,
                                             void *user_data);

/* ---------------------------------------------------------------------------------------------------------
 * Context: the KV cache of up to n_seq_max sequences and the scratch space of evaluation.
 * ------------------------------------------------------------------------------------------------------ */
typedef struct dsv4_context dsv4_context;

/* Return nonzero to abort the running dsv4_decode (it then returns DSV4_ERR_CANCELLED, cache unchanged). */
typedef int (*dsv4_abort_callback)(void *user_data);

/* Observes named intermediate tensors during evaluation, e.g. name "L3.attn_out" with layer 3.
 * data holds rows x cols values of dtype DSV4_DTYPE_F32 (bf16 quantities arrive as fp32 values) or
 * DSV4_DTYPE_I32, row-major, borrowed for the call only. Rows follow the batch grouped by sequence (one row per
 * token, except compressed entries: one row per entry emitted). Called on the thread running dsv4_decode.
 * Return 0 to stop receiving tensors for the rest of the context's life.
 *
 * The names, "L<layer>." followed by (N = the batch's tokens, D = dim, hc = hc_mult, H·d = heads x head_dim):
 *   hc_attn_pre, hc_attn_post [N, hc], hc_attn_comb [N, hc·hc]   mHC mixes of the attention step (F32)
 *   attn_in, attn_norm [N, D]          the collapsed streams and their RMSNorm
 *   kv [N, head_dim]                   the KV path's output (rotated, FP8-simulated)
 *   index_q [N, nI·dI], index_weights [N, nI]                    indexer queries and head weights (CSA)
 *   kv_comp [E, head_dim], index_kv_comp [E, dI]                 entries the batch emitted (compressed layers)
 *   index_scores [n, entries], index_topk [n, min(topk, entries)] (I32)   per sequence: its n tokens over the
 *                                      entries it holds by the batch's end (CSA; -inf / -1 past a token's view)
 *   attn_heads [N, H·d], attn_out [N, D], h_mid [N, hc·D]        attention heads, output, streams after it
 *   hc_ffn_pre, hc_ffn_post, hc_ffn_comb, ffn_in, ffn_norm       the same for the MoE step
 *   gate_scores [N, n_experts] (F32), gate_ids [N, k] (I32), gate_weights [N, k] (F32)   the router
 *   ffn_out [N, D], h_out [N, hc·D]    the MoE output and the streams after the block
 * A tensor nobody asked for (see dsv4_eval_ask_callback) is neither copied nor, for kv_comp, index_kv_comp and
 * index_scores, computed. */
typedef int (*dsv4_eval_callback)(const char *name, int32_t layer, dsv4_dtype dtype, int64_t rows,
                                  int64_t cols, const void *data, void *user_data);
/* Asked before a tensor is observed: return nonzero to receive `name` (as above) of `layer` through the
 * dsv4_eval_callback. Called on the thread running dsv4_decode, with eval_user_data. */
typedef int (*dsv4_eval_ask_callback)(const char *name, int32_t layer, void *user_data);

typedef struct dsv4_context_params {
    size_t struct_size;              /* sizeof(dsv4_context_params); set by _init */
    int32_t n_ctx;                   /* max positions per sequence; default 4096; 0 = the model's maximum */
    int32_t n_seq_max;               /* max live sequences, ids 0..n_seq_max-1; default 1 */
    int32_t n_threads;               /* compute threads; 0 (default) = OMP_NUM_THREADS if set, else all cores */
    int32_t n_rewind;                /* positions dsv4_seq_truncate can go back; default 32, >= 0; each costs one window row and
                                      * one compressor row per layer and sequence (constant_bytes_per_sequence) */
    dsv4_abort_callback abort_callback; /* polled between layers; NULL = none */
    void *abort_user_data;
    dsv4_eval_callback eval_callback;   /* NULL = none */
    void *eval_user_data;
    dsv4_eval_ask_callback eval_ask;    /* which tensors eval_callback receives; NULL = every one */
} dsv4_context_params;

/* Fills *params with defaults (see the fields). Returns DSV4_OK or DSV4_ERR_INVALID_ARGUMENT.
 * Thread-safety: any thread. */
DSV4_API dsv4_status dsv4_context_params_init(dsv4_context_params *params, size_t size);
static inline dsv4_context_params dsv4_context_default_params(void) {
    dsv4_context_params p;
    (void)dsv4_context_params_init(&p, sizeof p);
    return p;
}

/* Creates a context on model (which must outlive it). params may be NULL. On success *out_ctx owns the
 * context: free it with dsv4_context_free(). Memory for the cache grows with the tokens held.
 * Returns DSV4_OK, DSV4_ERR_INVALID_ARGUMENT, DSV4_ERR_OUT_OF_MEMORY.
 * Thread-safety: any thread, concurrent calls on the same model allowed. */
DSV4_API DSV4_NODISCARD dsv4_status dsv4_context_create(const dsv4_model *model, const dsv4_context_params *params,
                                                        dsv4_context **out_ctx);
/* Frees a context; NULL is a harmless no-op. Thread-safety: one thread at a time per context. */
DSV4_API void dsv4_context_free(dsv4_context *ctx);

/* ---------------------------------------------------------------------------------------------------------
 * Batches. A batch may mix sequences: the tokens of each sequence must be consecutive positions that
 * continue it (the first at dsv4_seq_length()). The arrays are caller-owned and borrowed for the call.
 * ------------------------------------------------------------------------------------------------------ */
typedef struct dsv4_batch {
    size_t struct_size;        /* sizeof(dsv4_batch) */
    int32_t n_tokens;          /* entries in the arrays below, >= 1 */
    const int32_t *tokens;     /* token ids, 0 <= id < vocab */
    const int32_t *pos;        /* absolute positions; NULL = each sequence continues from its length */
    const int32_t *seq_id;     /* sequence of each token, 0 <= id < n_seq_max; NULL = all in sequence `seq` */
    const int8_t *want_output; /* nonzero: keep this token's logits; NULL = last token of the batch only */
    int32_t seq;               /* the sequence of every token when seq_id is NULL */
} dsv4_batch;

/* A batch of n tokens (borrowed) that continue sequence seq, with logits for the last token only.
 * Thread-safety: any thread. */
static inline dsv4_batch dsv4_batch_for_sequence(const int32_t *tokens, int32_t n, int32_t seq) {
    dsv4_batch b;
    b.struct_size = sizeof b;
    b.n_tokens = n;
    b.tokens = tokens;
    b.pos = NULL;
    b.seq_id = NULL;
    b.want_output = NULL;
    b.seq = seq;
    return b;
}

/* Evaluates a batch: appends its tokens to their sequences and computes the logits asked for.
 * Transactional: on any error the cache is exactly as before the call and the context stays usable.
 * Returns DSV4_OK, DSV4_ERR_INVALID_ARGUMENT(_SEQUENCE/_POSITION), DSV4_ERR_INVALID_TOKEN,
 * DSV4_ERR_CONTEXT_FULL, DSV4_ERR_OUT_OF_MEMORY, DSV4_ERR_CANCELLED.
 * Thread-safety: one thread at a time per context. */
DSV4_API DSV4_NODISCARD dsv4_status dsv4_decode(dsv4_context *ctx, const dsv4_batch *batch);

/* Logits of the i-th output token of the last dsv4_decode (outputs in batch order; -1 = the last output).
 * *out_logits: n_vocab floats, borrowed: valid until the next dsv4_decode or dsv4_context_free.
 * Returns DSV4_OK or DSV4_ERR_INVALID_ARGUMENT. Thread-safety: one thread at a time per context. */
DSV4_API dsv4_status dsv4_get_logits(const dsv4_context *ctx, int32_t i_output, const float **out_logits,
                                     int32_t *out_n_vocab);
/* Number of outputs of the last dsv4_decode. Thread-safety: one thread at a time per context. */
DSV4_API int32_t dsv4_n_outputs(const dsv4_context *ctx);

/* Runs the MTP block (spec 9.3) for the outputs of the last dsv4_decode: for output i (a token at position p
 * of sequence s) it combines the main model's final hidden streams at p with the embedding of next_tokens[i]
 * (the token at p+1) and writes the MTP logits, n_vocab floats per output, to out (cap floats).
 * The MTP block keeps its own window cache per sequence; call it for consecutive positions.
 * Returns DSV4_OK, DSV4_ERR_INVALID_ARGUMENT, DSV4_ERR_BUFFER_TOO_SMALL, DSV4_ERR_UNSUPPORTED (no MTP).
 * Thread-safety: one thread at a time per context. */
DSV4_API dsv4_status dsv4_mtp_logits(dsv4_context *ctx, const int32_t *next_tokens, int32_t n, float *out,
                                     size_t cap);

/* ---------------------------------------------------------------------------------------------------------
 * Sequences
 * ------------------------------------------------------------------------------------------------------ */
/* Number of positions held by seq (its next position). Returns DSV4_OK or DSV4_ERR_INVALID_ARGUMENT_SEQUENCE.
 * Thread-safety: one thread at a time per context. */
DSV4_API dsv4_status dsv4_seq_length(const dsv4_context *ctx, int32_t seq, int32_t *out_length);
/* Truncates seq to its first n positions (0 clears it: its compressed entries are freed, its constant-size rings,
 * constant_bytes_per_sequence in dsv4_memory_stats, stay allocated for the next tokens). Going back further than
 * n_rewind positions from the current length is refused with DSV4_ERR_UNSUPPORTED_REWIND unless n == 0; on any
 * error nothing changes.
 * Returns DSV4_OK, DSV4_ERR_INVALID_ARGUMENT(_SEQUENCE/_POSITION), DSV4_ERR_UNSUPPORTED_REWIND.
 * Thread-safety: one thread at a time per context. */
DSV4_API dsv4_status dsv4_seq_truncate(dsv4_context *ctx, int32_t seq, int32_t n);
/* Makes dst a copy of src (dst's previous content is dropped). Compressed-cache pages are shared
 * copy-on-write, so the shared prefix is not copied. Returns DSV4_OK, DSV4_ERR_INVALID_ARGUMENT_SEQUENCE,
 * DSV4_ERR_OUT_OF_MEMORY. Thread-safety: one thread at a time per context. */
DSV4_API dsv4_status dsv4_seq_fork(dsv4_context *ctx, int32_t src, int32_t dst);

typedef struct dsv4_memory_stats {
    size_t struct_size;            /* sizeof(dsv4_memory_stats); set by the caller */
    uint64_t cache_bytes;          /* bytes held by all sequences' caches now (shared pages counted once) */
    uint64_t bytes_per_1024_tokens; /* exact growth of one sequence per 1024 positions, all layers */
    uint64_t bytes_per_4_tokens_csa; /* exact growth of one CSA layer per 4 positions (one entry + index key) */
    uint64_t bytes_per_128_tokens_hca; /* exact growth of one HCA layer per 128 positions (one entry) */
    uint64_t constant_bytes_per_sequence; /* window rings and compressor histories of one sequence */
    int32_t n_sequences;           /* sequences holding at least one position */
    uint64_t scratch_bytes;        /* forward-pass temporaries the context keeps for its next pass (about the
                                      activations of its largest batch so far): later passes reuse them instead
                                      of faulting in fresh pages; freed with the context */
} dsv4_memory_stats;

/* Fills *stats. Returns DSV4_OK or DSV4_ERR_INVALID_ARGUMENT. Thread-safety: one thread at a time per context. */
DSV4_API dsv4_status dsv4_get_memory_stats(const dsv4_context *ctx, dsv4_memory_stats *stats);

/* ---------------------------------------------------------------------------------------------------------
 * Sampling: logit bias → repetition/presence/frequency penalties → greedy (temperature 0) or top-k →
 * softmax(logits / temperature) → top-p → min-p → the reference's exponential race, seeded.
 * ------------------------------------------------------------------------------------------------------ */
typedef struct dsv4_sampler dsv4_sampler;

typedef struct dsv4_sampler_params {
    size_t struct_size;              /* sizeof(dsv4_sampler_params); set by _init */
    float temperature;               /* default 1.0; 0 = greedy (argmax) */
    float top_p;                     /* default 1.0 (off); in (0, 1] */
    float min_p;                     /* default 0 (off); in [0, 1], relative to the top token's probability */
    float repetition_penalty;        /* default 1.0 (off); > 0; seen tokens: logit / p if positive, * p if not */
    float presence_penalty;          /* default 0; subtracted once from every seen token's logit */
    float frequency_penalty;         /* default 0; subtracted per occurrence */
    int32_t top_k;                   /* default 0 (off) */
    int32_t penalty_last_n;          /* default 64; accepted tokens the penalties consider; -1 = all */
    uint64_t seed;                   /* default 0; the same seed and inputs give the same tokens */
    const int32_t *logit_bias_tokens; /* n_logit_bias token ids (copied at creation), NULL if none */
    const float *logit_bias_values;   /* added to those tokens' logits */
    int32_t n_logit_bias;
} dsv4_sampler_params;

/* Fills *params with defaults. Returns DSV4_OK or DSV4_ERR_INVALID_ARGUMENT. Thread-safety: any thread. */
DSV4_API dsv4_status dsv4_sampler_params_init(dsv4_sampler_params *params, size_t size);
static inline dsv4_sampler_params dsv4_sampler_default_params(void) {
    dsv4_sampler_params p;
    (void)dsv4_sampler_params_init(&p, sizeof p);
    return p;
}
/* Creates a sampler (params may be NULL); free it with dsv4_sampler_free(). Out-of-range values:
 * DSV4_ERR_INVALID_ARGUMENT naming the field. Thread-safety: any thread. */
DSV4_API DSV4_NODISCARD dsv4_status dsv4_sampler_create(const dsv4_sampler_params *params, dsv4_sampler **out_smpl);
/* NULL is a harmless no-op. Thread-safety: one thread at a time per sampler. */
DSV4_API void dsv4_sampler_free(dsv4_sampler *smpl);
/* Samples from n_vocab logits. Thread-safety: one thread at a time per sampler. */
DSV4_API dsv4_status dsv4_sampler_sample_logits(dsv4_sampler *smpl, const float *logits, int32_t n_vocab,
                                                int32_t *out_token);
/* Samples from output i_output of the last dsv4_decode of ctx (-1 = last). Thread-safety: one thread at a time
 * per sampler and per context. */
DSV4_API dsv4_status dsv4_sampler_sample(dsv4_sampler *smpl, const dsv4_context *ctx, int32_t i_output,
                                         int32_t *out_token);
/* Records a token (prompt or generated) for the penalties. Thread-safety: one thread at a time per sampler. */
DSV4_API void dsv4_sampler_accept(dsv4_sampler *smpl, int32_t token);
/* Forgets the history and restarts the random generator from the seed. Thread-safety: as accept. */
DSV4_API void dsv4_sampler_reset(dsv4_sampler *smpl);

/* ---------------------------------------------------------------------------------------------------------
 * Generation: prefill a prompt on one sequence, then sample and stream until a stop condition.
 * ------------------------------------------------------------------------------------------------------ */
/* Called once per generated token (not for the final EOS or stop token). text: the UTF-8 that became complete
 * with this token (len may be 0 while a character or a possible stop string is pending; always 0 without a
 * tokenizer), borrowed for the call. Text still held back when generation ends arrives in one last call with
 * token -1. Return 0 to stop. */
typedef int (*dsv4_token_callback)(int32_t token, const char *text, size_t len, void *user_data);

typedef enum dsv4_stop_reason {
    DSV4_STOP_EOS = 0,
    DSV4_STOP_TOKEN = 1,
    DSV4_STOP_STRING = 2,
    DSV4_STOP_MAX_TOKENS = 3,
    DSV4_STOP_CALLBACK = 4,
    DSV4_STOP_CANCELLED = 5
} dsv4_stop_reason;

typedef struct dsv4_generate_params {
    size_t struct_size;               /* sizeof(dsv4_generate_params); set by _init */
    int32_t max_tokens;               /* default 256; generated tokens at most, >= 0 */
    const int32_t *stop_tokens;       /* n_stop_tokens ids that end generation (besides EOS); borrowed for the call */
    int32_t n_stop_tokens;
    const char *const *stop_strings;  /* n_stop_strings texts that end generation (not streamed); need a tokenizer */
    int32_t n_stop_strings;
    uint8_t ignore_eos;               /* 0 (default): the model's EOS ends generation */
} dsv4_generate_params;

typedef struct dsv4_generate_stats {
    size_t struct_size;               /* sizeof(dsv4_generate_stats); set by the caller */
    int64_t n_prompt;                 /* prompt tokens evaluated */
    int64_t n_generated;              /* tokens sampled, including a final EOS / stop token */
    double prefill_seconds;           /* prompt evaluation */
    double decode_seconds;            /* everything after the prompt */
    double time_to_first_token_seconds;
    double prefill_tokens_per_second;
    double decode_tokens_per_second;
    dsv4_stop_reason stop_reason;
} dsv4_generate_stats;

/* Fills *params with defaults. Thread-safety: any thread. */
DSV4_API dsv4_status dsv4_generate_params_init(dsv4_generate_params *params, size_t size);
static inline dsv4_generate_params dsv4_generate_default_params(void) {
    dsv4_generate_params p;
    (void)dsv4_generate_params_init(&p, sizeof p);
    return p;
}
/* Evaluates prompt (n_prompt tokens) on sequence seq, then samples with smpl (prompt tokens are accepted into
 * its history) and streams each token to on_token (may be NULL) until EOS, a stop token or string, max_tokens,
 * the callback, or dsv4_context_abort. The sequence then holds the prompt and every generated token except the
 * last one sampled. tok (may be NULL) turns tokens into text for the callback and stop strings.
 * stats (may be NULL) receives timings. A cancellation is not an error: stats->stop_reason says so.
 * Returns the statuses of dsv4_decode and DSV4_ERR_INVALID_ARGUMENT. Thread-safety: one thread at a time per
 * context and sampler; dsv4_context_abort may be called from any thread meanwhile. */
DSV4_API dsv4_status dsv4_generate(dsv4_context *ctx, dsv4_sampler *smpl, const dsv4_tokenizer *tok, int32_t seq,
                                   const int32_t *prompt, int32_t n_prompt, const dsv4_generate_params *params,
                                   dsv4_token_callback on_token, void *user_data, dsv4_generate_stats *stats);
typedef struct dsv4_generate_request {
    size_t struct_size;                  /* sizeof(dsv4_generate_request) */
    int32_t seq;                         /* the request's sequence; distinct across a batch */
    const int32_t *prompt;               /* n_prompt tokens, borrowed for the call */
    int32_t n_prompt;
    dsv4_sampler *sampler;               /* distinct across a batch */
    const dsv4_generate_params *params;  /* NULL = defaults */
    dsv4_token_callback on_token;        /* may be NULL */
    void *user_data;
    dsv4_generate_stats *stats;          /* out, may be NULL */
} dsv4_generate_request;

/* Runs several generations together on one context, each on its own sequence: the prompts are evaluated in one
 * batch, then every decode step evaluates one token of each request still running in one batch. Each request
 * behaves as dsv4_generate would alone (same tokens for the same seeds); callbacks run on the calling thread,
 * interleaved across requests. Returns as dsv4_generate. Thread-safety: as dsv4_generate. */
DSV4_API dsv4_status dsv4_generate_batch(dsv4_context *ctx, const dsv4_tokenizer *tok, dsv4_generate_request *requests,
                                         int32_t n_requests);
/* Pull-style generation, for iterators and event loops: the same generation as dsv4_generate, one token per
 * dsv4_generation_next call instead of a callback. ctx, smpl and tok (may be NULL) are borrowed and must outlive
 * the generation; prompt and params are copied. Nothing is evaluated before the first next. */
typedef struct dsv4_generation dsv4_generation;
DSV4_API DSV4_NODISCARD dsv4_status dsv4_generation_start(dsv4_context *ctx, dsv4_sampler *smpl,
                                                          const dsv4_tokenizer *tok, int32_t seq,
                                                          const int32_t *prompt, int32_t n_prompt,
                                                          const dsv4_generate_params *params,
                                                          dsv4_generation **out_gen);
/* Runs until the next event a dsv4_token_callback would receive: *out_token and the text (*out_text, *out_len;
 * owned by gen, valid until the next call on it), with *out_done = 0. When the generation has ended,
 * *out_done = 1, *out_token = -1 and the text is empty; later calls say the same. out_text and out_len may be
 * NULL. Evaluating another batch on ctx between two calls is an error (DSV4_ERR_INVALID_ARGUMENT); so is any
 * call after an error. Returns the statuses of dsv4_decode. Thread-safety: one thread at a time per context;
 * dsv4_context_abort may be called from any thread meanwhile. */
DSV4_API dsv4_status dsv4_generation_next(dsv4_generation *gen, int32_t *out_token, const char **out_text,
                                          size_t *out_len, int32_t *out_done);
/* Timings so far (complete once done). Thread-safety: as dsv4_generation_next. */
DSV4_API dsv4_status dsv4_generation_get_stats(const dsv4_generation *gen, dsv4_generate_stats *stats);
/* Frees gen; the sequence keeps what was evaluated. NULL is a no-op. */
DSV4_API void dsv4_generation_free(dsv4_generation *gen);

/* Cancels the evaluation or generation running on ctx, or the next one if none runs. Thread-safety: any thread,
 * async-signal-safe (sets an atomic flag). */
DSV4_API void dsv4_context_abort(dsv4_context *ctx);

/* ---------------------------------------------------------------------------------------------------------
 * State of one sequence: save and restore. Blobs carry a magic, a version and a model fingerprint.
 * ------------------------------------------------------------------------------------------------------ */
#define DSV4_STATE_MAGIC 0x34565344u /* "DSV4" little-endian */
#define DSV4_STATE_VERSION 1

/* Bytes dsv4_state_save would write for seq. Thread-safety: one thread at a time per context. */
DSV4_API dsv4_status dsv4_state_size(const dsv4_context *ctx, int32_t seq, size_t *out_size);
/* Serialises seq into buf (cap bytes); *out_written = bytes needed. Too small: DSV4_ERR_BUFFER_TOO_SMALL and
 * nothing written. Thread-safety: one thread at a time per context. */
DSV4_API dsv4_status dsv4_state_save(const dsv4_context *ctx, int32_t seq, void *buf, size_t cap,
                                     size_t *out_written);
/* Replaces seq with a saved state. Wrong magic/version/model: DSV4_ERR_VERSION; damaged: DSV4_ERR_FORMAT;
 * on error seq is unchanged. Thread-safety: one thread at a time per context. */
DSV4_API dsv4_status dsv4_state_load(dsv4_context *ctx, int32_t seq, const void *buf, size_t size);
/* File variants of the two calls above. Thread-safety: one thread at a time per context. */
DSV4_API dsv4_status dsv4_state_save_file(const dsv4_context *ctx, int32_t seq, const char *path);
DSV4_API dsv4_status dsv4_state_load_file(dsv4_context *ctx, int32_t seq, const char *path);

#ifdef __cplusplus
}
#endif
#endif /* DSV4_H */
