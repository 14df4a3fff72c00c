// Streaming generation: each request prefills its prompt on its own sequence, then samples, evaluates and
// streams text until EOS, a stop token, a stop string, max_tokens, its callback, or a cancellation from another
// thread. Several requests run together: their prompts form one batch, then every decode step evaluates one
// token of each request still running in one batch.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/context.h"
#include "sampling/sampler.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::runtime {

enum class StopReason { eos, stop_token, stop_string, max_tokens, callback, cancelled };

struct GenerateOptions {
    int32_t max_tokens = 256;
    std::vector<int32_t> stop_tokens;   // besides the model's EOS
    std::vector<std::string> stop_strings;
    bool ignore_eos = false;
};

struct GenerateStats {
    int64_t n_prompt = 0, n_generated = 0;
    double prefill_s = 0, decode_s = 0, time_to_first_token_s = 0;
    StopReason stop = StopReason::max_tokens;
};

// on_token(token, text): text is the newly completed UTF-8 (possibly empty while a character or a possible stop
// string is pending; empty always without a tokenizer); text held back at the end comes with token -1.
// Return false to stop.
using TokenSink = std::function<bool(int32_t token, const std::string &text)>;

struct GenerateRequest {
    int32_t seq = 0;
    std::vector<int32_t> prompt;
    sampling::Sampler *sampler = nullptr;
    GenerateOptions options;
    TokenSink on_token;
    GenerateStats stats;  // out
};

class Stream;

// Stepwise generation of requests (distinct sequences and samplers) that run together. The requests must stay
// in place while the Generation lives; each request's stats are filled as it runs.
class Generation {
public:
    Generation(Context &ctx, const tokenizer::Tokenizer *tok, std::vector<GenerateRequest> &requests);
    ~Generation();
    Generation(const Generation &) = delete;
    Generation &operator=(const Generation &) = delete;
    // First call: evaluates every prompt in one batch. Later calls: samples one token of every running request
    // (streaming its text), then evaluates those tokens in one batch. Returns false once every request ended.
    bool step();

private:
    void prefill();
    void end_running(StopReason why);

    Context &ctx_;
    std::vector<GenerateRequest> &requests_;
    std::vector<Stream> streams_;
    std::vector<size_t> running_;  // requests still generating, in the order of the last batch's outputs
    bool prefilled_ = false;
    uint64_t evaluation_ = 0;  // the context's evaluation whose outputs the next step samples from
    std::chrono::steady_clock::time_point t_prefill_, t_decode_;
};

// Runs the requests together to the end.
void generate(Context &ctx, const tokenizer::Tokenizer *tok, std::vector<GenerateRequest> &requests);

}  // namespace dsv4::runtime
