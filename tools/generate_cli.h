#pragma once
#include <dsv4/dsv4.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dsv4::tools {

struct RunOptions {
    std::string model_dir, tokenizer_path;  // model: default embedded_model_dir(); tokenizer: MODEL_DIR/tokenizer.json
    std::string messages_path;              // `run`: a JSON array of chat messages as the prompt
    bool json = false;                      // `run`: print the reply parsed as an assistant message (JSON line)
    std::string prompt;                     // text (needs a tokenizer)
    std::vector<int32_t> prompt_ids;        // or token ids
    bool chat = false, think = false;       // wrap the prompt as a user turn of the chat format
    int n_predict = 64, threads = 0, top_k = 0;
    int n_ctx = dsv4_context_default_params().n_ctx;
    float temperature = 0.0f, top_p = 1.0f;
    uint64_t seed = 0;
    bool print_ids = false;                 // `run`: the prompt and generated ids to stderr
    bool quiet = false;                     // no load progress on stderr
    bool no_repack = false;                 // compute from the checkpoint's bytes (dsv4_model_params::repack_weights)
    std::string device = "cpu";             // dsv4_model_params::device
};

struct BenchOptions {
    std::string model_dir;
    int n_prompt = 128, n_gen = 32, repetitions = 3, threads = 0;
    std::string device = "cpu";
};

// The embedded default model's directory: share/dsv4/models/NAME beside an installed executable, else the source
// tree's models/NAME; empty when neither exists.
std::string embedded_model_dir();

// Progress of a model load on stderr (a dsv4_progress_callback).
int show_load_progress(uint64_t done, uint64_t total, void *user_data);

// `dsv4 run`: one prompt, streamed to stdout, statistics to stderr.
int run(const RunOptions &options);
// `dsv4 chat`: one user turn per stdin line; the cached prefix of the conversation is reused between turns.
int chat(const RunOptions &options);
// `dsv4 bench`: prefill and decode tokens/s (median of the repetitions) on random token ids.
int bench(const BenchOptions &options);

}  // namespace dsv4::tools
