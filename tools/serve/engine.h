// The serving engine of `dsv4 serve`: continuous batching of many requests over one multi-sequence context, with
// prefix reuse across requests. All model work goes through the public C API. One engine thread owns the context;
// request threads submit jobs and read their events.
#pragma once
#include <dsv4/dsv4.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace dsv4::serve {

enum class Finish { stop, length, stop_string, cancelled, error };

struct TokenLogprob {
    int32_t token = -1;
    float logprob = 0.0f;
};

// One step's contribution to a job's output: text that became complete (UTF-8 whole, past any stop string that
// may still match), and, if asked, the sampled token's log-probability with the most likely alternatives.
struct Delta {
    std::string text;
    int32_t token = -1;
    float logprob = 0.0f;
    std::vector<TokenLogprob> top;
};

struct JobRequest {
    std::vector<int32_t> prompt;
    dsv4_sampler_params sampling = dsv4_sampler_default_params();
    std::vector<int32_t> bias_tokens;  // logit bias (sampling's pointers are set to these at submission)
    std::vector<float> bias_values;
    int32_t max_tokens = 256;
    std::vector<std::string> stop;     // stop strings: generation ends before them, they are not output
    int32_t top_logprobs = -1;         // -1: no log-probabilities; 0..20: the sampled token's and that many more
    // Test hook: instead of sampling, each step emits the next piece as the generated text (one piece = one token).
    std::optional<std::vector<std::string>> script;
    int32_t script_delay_ms = 0;
};

// Shared between the request thread (reads events, may cancel) and the engine thread (writes them).
class Job {
public:
    explicit Job(JobRequest request) : request_(std::move(request)) {}
    const JobRequest &request() const { return request_; }

    // Waits up to `timeout` for new deltas or the end; moves what arrived into `out`. Returns true once finished
    // and every delta has been taken.
    bool wait(std::vector<Delta> &out, std::chrono::milliseconds timeout);
    void cancel() { cancelled_ = true; }
    bool cancelled() const { return cancelled_; }

    // Known once finished (wait returned true).
    Finish finish() const { return finish_; }
    const std::string &error() const { return error_; }
    const std::string &stop_string() const { return stop_string_; }  // the stop string that ended it (stop_string)
    int32_t n_prompt() const { return int32_t(request_.prompt.size()); }
    int32_t n_cached() const { return n_cached_; }   // prompt tokens reused from the cache (0 until admitted)
    int32_t n_generated() const { return n_generated_; }

private:
    friend class Engine;
    void push(Delta d);
    void end(Finish f, std::string error = {});

    JobRequest request_;
    std::atomic<bool> cancelled_{false};
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Delta> pending_;
    bool finished_ = false;
    Finish finish_ = Finish::stop;
    std::string error_, stop_string_;
    std::atomic<int32_t> n_cached_{0};  // set at admission, read by the request thread any time
    int32_t n_generated_ = 0;
};

struct EngineOptions {
    int32_t slots = 2;        // requests decoding together
    int32_t queue = 4;        // requests waiting for a slot; more are refused (429)
    int32_t cache_sequences = 0;  // sequences kept for prefix reuse in total (>= slots; 0 = 2 x slots)
    int32_t n_ctx = 4096;
    int32_t n_threads = 0;
    int32_t n_batch = 256;    // tokens per step (decode tokens first, then prompt chunks)
    int32_t n_rewind = 64;    // how far a cached sequence can be cut back to reuse its prefix
};

struct EngineStats {
    uint64_t requests = 0, prompt_tokens = 0, cached_tokens = 0, generated_tokens = 0, steps = 0, refused = 0;
    uint64_t cache_hits = 0;  // requests that reused a cached prefix
    int32_t active = 0, waiting = 0;
    double busy_seconds = 0.0;
};

class Engine {
public:
    // model and tok are borrowed and must outlive the engine.
    Engine(const dsv4_model *model, const dsv4_tokenizer *tok, const EngineOptions &options);
    ~Engine();
    Engine(const Engine &) = delete;
    Engine &operator=(const Engine &) = delete;

    // Queues a job; nullptr when every slot is busy and the queue is full (the caller answers 429).
    std::shared_ptr<Job> submit(JobRequest request);
    // Ends every job with Finish::error ("server shutting down") and stops the engine thread.
    void shutdown();
    EngineStats stats() const;
    int32_t n_ctx() const { return options_.n_ctx; }

private:
    struct Sequence {
        std::vector<int32_t> tokens;  // what the cache holds
        uint64_t last_used = 0;
        bool busy = false;
    };
    struct Active;
    void run();
    bool admit(std::deque<std::shared_ptr<Job>> &waiting, std::vector<std::unique_ptr<Active>> &active);
    void step(std::vector<std::unique_ptr<Active>> &active);
    void emit(Active &a, int32_t token, const float *logits, int32_t n_vocab);
    void retire(Active &a, Finish f, std::string error = {});
    void snapshot(const Active &a);

    const dsv4_tokenizer *tok_;
    EngineOptions options_;
    dsv4_context *ctx_ = nullptr;
    int32_t eos_ = -1;
    std::vector<Sequence> seqs_;
    uint64_t clock_ = 0;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Job>> incoming_;
    bool stopping_ = false;
    EngineStats stats_;
    std::thread thread_;
};

}  // namespace dsv4::serve
