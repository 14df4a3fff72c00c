#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv4::tools {

struct RunOptions {
    std::string model_dir, tokenizer_path;  // tokenizer: default MODEL_DIR/tokenizer.json when present
    std::string prompt;                     // text (needs a tokenizer)
    std::vector<int32_t> prompt_ids;        // or token ids
    bool chat = false, think = false;       // wrap the prompt as a user turn of the chat format
    int n_predict = 64, threads = 0, top_k = 0;
    float temperature = 0.0f, top_p = 1.0f;
    uint64_t seed = 0;
};

// `dsv4 run`: one prompt, streamed to stdout, statistics to stderr.
int run(const RunOptions &options);
// `dsv4 chat`: one user turn per stdin line; the cached prefix of the conversation is reused between turns.
int chat(const RunOptions &options);

}  // namespace dsv4::tools
