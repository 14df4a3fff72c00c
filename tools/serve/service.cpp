#include "service.h"

#include <chrono>
#include <cmath>
#include <fmt/format.h>

#include "core/text.h"

namespace dsv4::serve {

Engine &Service::ready_engine() const {
    if (!ready || !engine) throw ApiError(503, "the model is still loading");
    return *engine;
}

std::vector<int32_t> Service::tokenize(const std::string &text) const {
    size_t n = 0;
    dsv4_status st = dsv4_tokenize(tok, text.data(), text.size(), nullptr, 0, &n);
    std::vector<int32_t> ids(n);
    if (st == DSV4_ERR_BUFFER_TOO_SMALL) st = dsv4_tokenize(tok, text.data(), text.size(), ids.data(), n, &n);
    if (st != DSV4_OK) throw ApiError(400, std::string("cannot tokenize: ") + dsv4_last_error_message());
    return ids;
}

std::string Service::detokenize(const std::vector<int32_t> &tokens) const {
    size_t n = 0;
    dsv4_status st = dsv4_detokenize(tok, tokens.data(), tokens.size(), 0, nullptr, 0, &n);
    std::string text(n + 1, '\0');
    if (st == DSV4_ERR_BUFFER_TOO_SMALL || st == DSV4_OK)
        st = dsv4_detokenize(tok, tokens.data(), tokens.size(), 0, text.data(), text.size(), &n);
    if (st != DSV4_OK) throw ApiError(400, dsv4_last_error_message(), "tokens");
    text.resize(n);
    return text;
}

std::string Service::piece(int32_t token) const {
    char buf[256];
    size_t len = 0;
    return dsv4_token_to_piece(tok, token, buf, sizeof buf, &len) == DSV4_OK ? std::string(buf, len) : std::string();
}

std::string Service::render(const json &messages, bool thinking, const std::optional<std::string> &effort) const {
    dsv4_chat_params cp = dsv4_chat_default_params();
    cp.thinking = thinking ? 1 : 0;
    if (effort && thinking) cp.reasoning_effort = effort->c_str();
    const std::string text = dump(messages);
    size_t n = 0;
    dsv4_status st = dsv4_chat_encode(text.c_str(), &cp, nullptr, 0, &n);
    std::string prompt(n + 1, '\0');
    if (st == DSV4_ERR_BUFFER_TOO_SMALL) st = dsv4_chat_encode(text.c_str(), &cp, prompt.data(), prompt.size(), &n);
    if (st != DSV4_OK) throw ApiError(400, dsv4_last_error_message(), "messages");
    prompt.resize(n);
    return prompt;
}

std::string Service::prompt(ChatRequest &r) {
    memory.restore(r.messages);
    return render(r.messages, r.thinking.on, r.thinking.effort) + r.forced;
}

void Service::check_length(size_t n_prompt, Api api) const {
    const int32_t n_ctx = ready_engine().n_ctx();
    if (n_prompt + 1 > size_t(n_ctx)) {
        const std::string message = fmt::format(
            "This model's maximum context length is {} tokens; the prompt has {} tokens, leaving no room to generate.",
            n_ctx, n_prompt);
        throw ApiError(400, message, api == Api::openai ? "messages" : "", "context_length_exceeded");
    }
}

void Service::apply_test_hook(const json &body, JobRequest &r) const {
    if (!test_hooks || !body.contains("dsv4_test")) return;
    const json &t = body["dsv4_test"];
    if (!t.is_object() || !t.contains("pieces") || !t["pieces"].is_array())
        throw ApiError(400, "dsv4_test.pieces: expected an array", "dsv4_test");
    std::vector<std::string> pieces;
    for (const json &p : t["pieces"]) {
        if (p.is_string()) {
            pieces.push_back(p.get<std::string>());
        } else if (p.is_array()) {
            std::string bytes;
            for (const json &b : p) {
                if (!b.is_number_integer() || b.get<int64_t>() < 0 || b.get<int64_t>() > 255)
                    throw ApiError(400, "dsv4_test.pieces: byte values are 0..255", "dsv4_test");
                bytes += char(uint8_t(b.get<int>()));
            }
            pieces.push_back(std::move(bytes));
        } else {
            throw ApiError(400, "dsv4_test.pieces: strings or byte arrays", "dsv4_test");
        }
    }
    if (pieces.empty()) throw ApiError(400, "dsv4_test.pieces: at least one piece", "dsv4_test");
    r.script = std::move(pieces);
    r.script_delay_ms = int32_t(integer_field(t, "delay_ms", 0, 60000).value_or(0));
}

std::shared_ptr<Job> Service::submit(JobRequest r, Api api) const {
    auto job = ready_engine().submit(std::move(r));
    if (!job)
        throw ApiError(api == Api::openai ? 429 : 529, "the server is at capacity: every slot is busy and the queue is full");
    return job;
}

// Deeper JSON than any real request would overflow the stack of the recursive writers (dump, the encoder's
// Python-style dumps) later, so it is refused up front.
constexpr int kMaxJsonDepth = 128;

json parse_body(const std::string &body) {
    if (core::json_nesting(body, kMaxJsonDepth) > kMaxJsonDepth) throw ApiError(400, fmt::format("the request body nests JSON deeper than {} levels", kMaxJsonDepth));
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
    if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
    return j;
}

std::optional<double> number_field(const json &body, const char *name, double lo, double hi) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) return std::nullopt;
    if (!it->is_number()) throw ApiError(400, fmt::format("'{}' must be a number", name), name);
    const double v = it->get<double>();
    if (!(v >= lo && v <= hi)) throw ApiError(400, fmt::format("'{}' must be in [{}, {}]", name, lo, hi), name);
    return v;
}

std::optional<int64_t> integer_field(const json &body, const char *name, int64_t lo, int64_t hi) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) return std::nullopt;
    if (!it->is_number_integer()) throw ApiError(400, fmt::format("'{}' must be an integer", name), name);
    const int64_t v = it->get<int64_t>();
    if (v < lo || v > hi) throw ApiError(400, fmt::format("'{}' must be in [{}, {}]", name, lo, hi), name);
    return v;
}

std::optional<bool> bool_field(const json &body, const char *name) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) return std::nullopt;
    if (!it->is_boolean()) throw ApiError(400, fmt::format("'{}' must be a boolean", name), name);
    return it->get<bool>();
}

std::optional<std::string> string_field(const json &body, const char *name) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) return std::nullopt;
    if (!it->is_string()) throw ApiError(400, fmt::format("'{}' must be a string", name), name);
    return it->get<std::string>();
}

std::vector<std::string> stop_field(const json &body, const char *name) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) return {};
    if (it->is_string()) return {it->get<std::string>()};
    std::vector<std::string> out;
    if (it->is_array())
        for (const json &s : *it) {
            if (!s.is_string()) break;
            out.push_back(s.get<std::string>());
        }
    if (!it->is_array() || out.size() != it->size())
        throw ApiError(400, fmt::format("'{}' must be a string or an array of strings", name), name);
    return out;
}

std::vector<std::string> string_array_field(const json &body, const char *name) {
    auto it = body.find(name);
    if (it == body.end() || it->is_null()) return {};
    if (!it->is_array()) throw ApiError(400, fmt::format("'{}' must be an array of strings", name), name);
    return stop_field(body, name);
}

std::string text_of(const json &obj, const char *key, const std::string &def) {
    return string_field(obj, key).value_or(def);
}

bool flag_of(const json &obj, const char *key, bool def) { return bool_field(obj, key).value_or(def); }

bool include_usage(const json &body) {
    auto it = body.find("stream_options");
    if (it == body.end() || it->is_null()) return false;
    if (!it->is_object()) throw ApiError(400, "'stream_options' must be an object", "stream_options");
    return bool_field(*it, "include_usage").value_or(false);
}

void error_response(Api api, int status, const std::string &message, HttpResponse &res, const std::string &param,
                    const std::string &code) {
    res.status = status;
    res.content_type = "application/json";
    res.stream = nullptr;
    json body;
    if (api == Api::openai) {
        const char *type = status == 404   ? "not_found_error"
                           : status == 429 ? "rate_limit_error"
                           : status >= 500 ? "server_error"
                                           : "invalid_request_error";
        body = {{"error",
                 {{"message", message}, {"type", type}, {"param", param.empty() ? json() : json(param)},
                  {"code", !code.empty() ? json(code) : status == 401 ? json("invalid_api_key") : json()}}}};
    } else {
        const char *type = status == 401   ? "authentication_error"
                           : status == 403 ? "permission_error"
                           : status == 404 ? "not_found_error"
                           : status == 413 ? "request_too_large"
                           : status == 429 ? "rate_limit_error"
                           : status == 529 ? "overloaded_error"
                           : status >= 500 ? "api_error"
                                           : "invalid_request_error";
        body = {{"type", "error"}, {"error", {{"type", type}, {"message", message}}}};
    }
    res.body = dump(body);
}

void guarded(Api api, HttpResponse &res, const std::function<void()> &handler) {
    try {
        handler();
    } catch (const ApiError &e) {
        error_response(api, e.status, e.what(), res, e.param, e.code);
    } catch (const json::exception &e) {
        error_response(api, 400, std::string("malformed request: ") + e.what(), res);
    } catch (const std::exception &e) {
        error_response(api, 500, e.what(), res);
    }
}

int64_t unix_time() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string sse(const json &data, const std::string &event) {
    return (event.empty() ? std::string() : "event: " + event + "\n") + "data: " + dump(data) + "\n\n";
}

Progress progress(bool ok, bool wrote) { return !ok ? Progress::gone : wrote ? Progress::wrote : Progress::held; }

bool drive(Job &job, const std::function<Progress(std::vector<Delta> &)> &on_progress, const std::function<bool()> &on_idle) {
    auto last_write = std::chrono::steady_clock::now();
    for (;;) {
        std::vector<Delta> deltas;
        const bool finished = job.wait(deltas, std::chrono::milliseconds(250));
        const auto now = std::chrono::steady_clock::now();
        if (!deltas.empty()) {
            const Progress p = on_progress(deltas);
            if (p == Progress::gone) return job.cancel(), false;
            if (p == Progress::wrote) last_write = now;
        }
        if (!finished && now - last_write >= std::chrono::seconds(1)) {
            last_write = now;
            if (!on_idle()) return job.cancel(), false;
        }
        if (finished) return true;
    }
}

void respond_when_done(const std::shared_ptr<Job> &job, HttpResponse &res,
                       std::function<json(const std::vector<Delta> &)> build, Api api) {
    auto deltas = std::make_shared<std::vector<Delta>>();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    bool finished = false;
    while (!finished && std::chrono::steady_clock::now() < deadline)
        finished = job->wait(*deltas, std::chrono::milliseconds(100));
    auto body = [job, api, build](const std::vector<Delta> &all, HttpResponse &out) {
        if (job->finish() == Finish::error) return error_response(api, 500, job->error(), out);
        out.status = 200;
        out.body = dump(build(all));
    };
    if (finished) return body(*deltas, res);
    res.content_type = "application/json";
    res.stream = [job, deltas, body](const ChunkWriter &write) {
        const bool alive = drive(
            *job,
            [&](std::vector<Delta> &d) {
                for (Delta &x : d) deltas->push_back(std::move(x));
                return Progress::held;
            },
            [&] { return write(" "); });
        if (!alive) return false;
        HttpResponse out;
        body(*deltas, out);
        return write(out.body);
    };
}

}  // namespace dsv4::serve
