// What every API endpoint of `dsv4 serve` shares: the engine, the tokenizer, the turn memory, request validation
// with each API's error envelope, and the loop that drives a job while its client waits or streams.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine.h"
#include "http.h"
#include "reply.h"

namespace dsv4::serve {

// A request the API rejects: status, message, and the parameter at fault (OpenAI's `param`, `code`).
struct ApiError : std::runtime_error {
    ApiError(int http_status, const std::string &message, std::string at = {}, std::string error_code = {})
        : std::runtime_error(message), status(http_status), param(std::move(at)), code(std::move(error_code)) {}
    int status;
    std::string param, code;
};

enum class Api { openai, anthropic };

// The error a stream ends with when malformed markup broke a tool call it had already announced.
inline constexpr const char *kDanglingCall = "the model's tool-call markup broke off inside a call already streamed";

struct ServeOptions;

struct Thinking {
    bool on = false;
    std::optional<std::string> effort;  // "high" or "max"
};

// A request of any chat API in the library's terms.
struct ChatRequest {
    json messages = json::array();   // the library's chat messages (tools on the system message)
    std::set<std::string> callable;  // tools the reply may call
    size_t max_calls = SIZE_MAX;     // 1 when parallel tool calls are off
    Thinking thinking;
    std::string forced;              // forced_call_prefix of the tool choice
};

struct Service {
    std::unique_ptr<Engine> engine;          // null while the model loads
    std::atomic<bool> ready{false};
    const dsv4_tokenizer *tok = nullptr;
    std::string model_name;
    bool test_hooks = false;
    bool default_thinking = false;
    TurnMemory memory;

    Engine &ready_engine() const;  // throws ApiError 503 while loading
    std::vector<int32_t> tokenize(const std::string &text) const;
    std::string detokenize(const std::vector<int32_t> &tokens) const;
    std::string piece(int32_t token) const;
    // Renders library-format chat messages (tools on the system message) with the official encoding.
    std::string render(const json &messages, bool thinking, const std::optional<std::string> &effort) const;
    // The prompt text of a chat request: the turn memory restored into its messages, rendered, the forced opening.
    std::string prompt(ChatRequest &r);
    // Refuses prompts that leave no room to generate (context_length_exceeded).
    void check_length(size_t n_prompt, Api api) const;
    // The test hook's scripted completion, when enabled and present in the body.
    void apply_test_hook(const json &body, JobRequest &r) const;
    std::shared_ptr<Job> submit(JobRequest r, Api api) const;  // throws ApiError 429 / 529 when full
};

// Request body: a JSON object, or ApiError 400.
json parse_body(const std::string &body);

// Typed optional fields; wrong types or out-of-range values throw ApiError 400 naming the field.
std::optional<double> number_field(const json &body, const char *name, double lo, double hi);
std::optional<int64_t> integer_field(const json &body, const char *name, int64_t lo, int64_t hi);
std::optional<bool> bool_field(const json &body, const char *name);
std::optional<std::string> string_field(const json &body, const char *name);
std::vector<std::string> stop_field(const json &body, const char *name);  // a string or an array of strings
std::vector<std::string> string_array_field(const json &body, const char *name);
bool include_usage(const json &body);  // stream_options.include_usage (stream_options must be an object)
// obj[key] of a request object: def when absent or null; another type is ApiError 400 naming the field.
std::string text_of(const json &obj, const char *key, const std::string &def = {});
bool flag_of(const json &obj, const char *key, bool def);

// The error body in the API's envelope.
void error_response(Api api, int status, const std::string &message, HttpResponse &res, const std::string &param = {},
                    const std::string &code = {});
// Runs handler, turning ApiError (and any other exception) into the API's error response.
void guarded(Api api, HttpResponse &res, const std::function<void()> &handler);

int64_t unix_time();
std::string sse(const json &data, const std::string &event = {});

// What a stream did with the deltas it was given: wrote to the client, held them back (nothing written yet, e.g.
// a long tool-call parameter), or found the client gone.
enum class Progress { wrote, held, gone };
Progress progress(bool ok, bool wrote);

// Drives a job while its client waits: on_progress(deltas) for what arrived; after a second without a write
// on_idle() (a keep-alive, also how a vanished client is noticed; false = gone). A gone client's job is
// cancelled. Returns false if the client went away.
bool drive(Job &job, const std::function<Progress(std::vector<Delta> &)> &on_progress, const std::function<bool()> &on_idle);

// A non-streamed reply: waits up to a second for the job; if it is done, res gets build()'s body, else the body
// is streamed as whitespace keep-alives (so a client that disconnects is noticed and its job cancelled) followed
// by build()'s JSON. build() runs once, after the job has finished, with every delta in order.
void respond_when_done(const std::shared_ptr<Job> &job, HttpResponse &res,
                       std::function<json(const std::vector<Delta> &)> build, Api api);

// The prompt text a request body of each chat API renders to (validation, conversion to the library's messages,
// turn memory, official encoding); throws ApiError like the endpoint. The fuzz target drives these.
std::string chat_completions_prompt(Service &service, const json &body);
std::string responses_prompt(Service &service, const json &body);
std::string messages_prompt(Service &service, const json &body);

void register_openai(HttpServer &http, Service &service);
void register_anthropic(HttpServer &http, Service &service);

}  // namespace dsv4::serve
