// The OpenAI APIs: /v1/chat/completions, /v1/completions, /v1/responses (the subset Codex CLI uses), /v1/models.
#include "openai.h"

#include <fmt/format.h>

namespace dsv4::serve {

std::string content_text(const json &content, const std::string &where) {
    if (content.is_null()) return {};
    if (content.is_string()) return content.get<std::string>();
    if (!content.is_array()) throw ApiError(400, where + ": content must be a string or an array of parts", "messages");
    std::string text;
    for (const json &part : content) {
        const std::string type = part.is_object() ? text_of(part, "type") : "";
        if (type != "text" && type != "input_text" && type != "output_text")
            throw ApiError(400, where + ": only text content parts are supported", "messages");
        if (!part.contains("text") || !part["text"].is_string())
            throw ApiError(400, where + ": a text part needs a string 'text'", "messages");
        text += part["text"].get<std::string>();
    }
    return text;
}

Thinking thinking_of(const json &body, bool default_on, const std::optional<std::string> &effort_in) {
    Thinking t;
    t.on = default_on;
    if (effort_in) {
        const std::string &e = *effort_in;
        if (e == "none" || e == "minimal") t.on = false;
        else if (e == "low" || e == "medium" || e == "high") t.on = true, t.effort = "high";
        else if (e == "max" || e == "xhigh") t.on = true, t.effort = "max";
        else throw ApiError(400, "reasoning_effort must be none, minimal, low, medium, high or max", "reasoning_effort");
    }
    if (body.contains("thinking") && !body["thinking"].is_null()) {
        const json &th = body["thinking"];
        const std::string type = th.is_object() ? text_of(th, "type") : "";
        if (type == "enabled") t.on = true;
        else if (type == "disabled") t.on = false;
        else throw ApiError(400, "thinking.type must be \"enabled\" or \"disabled\"", "thinking");
    }
    return t;
}

JobRequest openai_job(const Service &s, const json &body, std::vector<int32_t> prompt, bool responses_api) {
    JobRequest r;
    const int32_t room = s.ready_engine().n_ctx() - int32_t(prompt.size());
    r.prompt = std::move(prompt);
    r.sampling.temperature = float(number_field(body, "temperature", 0.0, 2.0).value_or(1.0));
    r.sampling.top_p = float(number_field(body, "top_p", 0.0, 1.0).value_or(1.0));
    if (r.sampling.top_p <= 0.0f) r.sampling.top_p = 1e-6f;
    r.sampling.presence_penalty = float(number_field(body, "presence_penalty", -2.0, 2.0).value_or(0.0));
    r.sampling.frequency_penalty = float(number_field(body, "frequency_penalty", -2.0, 2.0).value_or(0.0));
    if (auto seed = integer_field(body, "seed", INT64_MIN, INT64_MAX)) r.sampling.seed = uint64_t(*seed);
    if (integer_field(body, "n", 1, 1).value_or(1) != 1) throw ApiError(400, "only n = 1 is supported", "n");
    auto max_tokens = integer_field(body, responses_api ? "max_output_tokens" : "max_completion_tokens", 1, INT32_MAX);
    if (!max_tokens && !responses_api) max_tokens = integer_field(body, "max_tokens", 1, INT32_MAX);
    r.max_tokens = int32_t(std::min<int64_t>(max_tokens.value_or(room), room));
    r.stop = stop_field(body, "stop");
    if (r.stop.size() > 16) throw ApiError(400, "at most 16 stop strings", "stop");
    if (body.contains("logit_bias") && !body["logit_bias"].is_null()) {
        if (!body["logit_bias"].is_object()) throw ApiError(400, "'logit_bias' must be an object", "logit_bias");
        for (auto it = body["logit_bias"].begin(); it != body["logit_bias"].end(); ++it) {
            char *end = nullptr;
            const long id = std::strtol(it.key().c_str(), &end, 10);
            if (*end || id < 0 || id >= dsv4_tokenizer_vocab_size(s.tok) || !it->is_number())
                throw ApiError(400, "logit_bias: keys are token ids, values numbers", "logit_bias");
            r.bias_tokens.push_back(int32_t(id));
            r.bias_values.push_back(float(std::clamp(it->get<double>(), -100.0, 100.0)));
        }
    }
    if (body.contains("logprobs") && body["logprobs"].is_number_integer())  // legacy completions: how many alternatives
        r.top_logprobs = int32_t(integer_field(body, "logprobs", 0, 5).value_or(0));
    else if (bool_field(body, "logprobs").value_or(false))
        r.top_logprobs = int32_t(integer_field(body, "top_logprobs", 0, 20).value_or(0));
    s.apply_test_hook(body, r);
    return r;
}

namespace {

// OpenAI messages, tools, tool_choice and response_format → the library's chat messages.
ChatRequest chat_input(const Service &s, const json &body) {
    ChatRequest in;
    if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
        throw ApiError(400, "'messages' must be a non-empty array", "messages");
    in.thinking = thinking_of(body, s.default_thinking, string_field(body, "reasoning_effort"));
    if (!bool_field(body, "parallel_tool_calls").value_or(true)) in.max_calls = 1;
    json tools = json::array();
    if (body.contains("tools") && !body["tools"].is_null()) {
        if (!body["tools"].is_array()) throw ApiError(400, "'tools' must be an array", "tools");
        for (const json &t : body["tools"]) {
            if (!t.is_object() || text_of(t, "type", "function") != "function" || !t.contains("function") ||
                !t["function"].is_object() || !t["function"].contains("name") || !t["function"]["name"].is_string())
                throw ApiError(400, "each tool must be {\"type\": \"function\", \"function\": {\"name\", ...}}", "tools");
            in.callable.insert(t["function"]["name"].get<std::string>());
            tools.push_back({{"type", "function"}, {"function", t["function"]}});
        }
    }
    if (body.contains("tool_choice") && !body["tool_choice"].is_null()) {
        const json &c = body["tool_choice"];
        if (c.is_string()) {
            const std::string v = c.get<std::string>();
            if (v == "none") in.callable.clear(), tools = json::array();
            else if (v == "required") in.forced = forced_call_prefix(in.thinking.on, !in.callable.empty(), "");
            else if (v != "auto") throw ApiError(400, "tool_choice must be none, auto, required or a function", "tool_choice");
        } else if (c.is_object() && c.contains("function") && c["function"].is_object()) {
            const std::string name = text_of(c["function"], "name");
            if (!in.callable.count(name)) throw ApiError(400, "tool_choice names a function not in 'tools'", "tool_choice");
            in.forced = forced_call_prefix(in.thinking.on, true, name);
        } else {
            throw ApiError(400, "tool_choice must be none, auto, required or a function", "tool_choice");
        }
    }
    json response_format;
    if (body.contains("response_format") && body["response_format"].is_object()) {
        const std::string type = text_of(body["response_format"], "type", "text");
        if (type == "json_object" || type == "json_schema") response_format = body["response_format"];
        else if (type != "text") throw ApiError(400, "response_format.type must be text, json_object or json_schema", "response_format");
    }
    size_t i = 0;
    for (const json &m : body["messages"]) {
        const std::string where = fmt::format("messages[{}]", i++);
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
            throw ApiError(400, where + ": a message is an object with a string 'role'", "messages");
        const std::string role = m["role"].get<std::string>();
        json out = {{"role", role}};
        if (role == "system" || role == "developer" || role == "user") {
            out["content"] = content_text(m.value("content", json()), where);
        } else if (role == "assistant") {
            out["content"] = content_text(m.value("content", json()), where);
            for (const char *key : {"reasoning_content", "reasoning"})
                if (m.contains(key) && m[key].is_string() && !out.contains("reasoning_content")) out["reasoning_content"] = m[key];
            if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
                if (!m["tool_calls"].is_array()) throw ApiError(400, where + ": tool_calls must be an array", "messages");
                json calls = json::array();
                for (const json &c : m["tool_calls"]) {
                    if (!c.is_object() || !c.contains("function") || !c["function"].is_object() ||
                        !c["function"].contains("name") || !c["function"]["name"].is_string())
                        throw ApiError(400, where + ": a tool call needs function.name", "messages");
                    json fn = {{"name", c["function"]["name"]}, {"arguments", c["function"].value("arguments", json("{}"))}};
                    calls.push_back({{"id", c.value("id", json(""))}, {"type", "function"}, {"function", fn}});
                }
                out["tool_calls"] = calls;
            }
        } else if (role == "tool") {
            out["content"] = content_text(m.value("content", json()), where);
            out["tool_call_id"] = m.value("tool_call_id", json(""));
        } else {
            throw ApiError(400, where + ": unknown role '" + role + "'", "messages");
        }
        in.messages.push_back(std::move(out));
    }
    if (!tools.empty() || !response_format.is_null()) {
        if (in.messages[0]["role"] != "system") in.messages.insert(in.messages.begin(), json{{"role", "system"}, {"content", ""}});
        if (!tools.empty()) in.messages[0]["tools"] = tools;
        if (!response_format.is_null()) in.messages[0]["response_format"] = response_format;
    }
    return in;
}

json chat_usage(const Job &job, int32_t reasoning_tokens) {
    return {{"prompt_tokens", job.n_prompt()},
            {"completion_tokens", job.n_generated()},
            {"total_tokens", job.n_prompt() + job.n_generated()},
            {"prompt_tokens_details", {{"cached_tokens", job.n_cached()}}},
            {"completion_tokens_details", {{"reasoning_tokens", reasoning_tokens}}}};
}

json logprob_entry(const Service &s, const Delta &d) {
    auto one = [&](int32_t token, float lp) {
        const std::string text = s.piece(token);
        json bytes = json::array();
        for (unsigned char c : text) bytes.push_back(int(c));
        return json{{"token", text}, {"logprob", lp}, {"bytes", bytes}};
    };
    json e = one(d.token, d.logprob);
    json top = json::array();
    for (const TokenLogprob &t : d.top) top.push_back(one(t.token, t.logprob));
    e["top_logprobs"] = top;
    return e;
}

const char *finish_reason(Finish f, bool called) {
    if (f == Finish::length) return "length";
    return called ? "tool_calls" : "stop";
}

void chat_completions(Service &s, const HttpRequest &req, HttpResponse &res) {
    s.ready_engine();  // 503 while loading, before anything reads the tokenizer
    const json body = parse_body(req.body);
    ChatRequest in = chat_input(s, body);
    std::vector<int32_t> prompt = s.tokenize(s.prompt(in));
    s.check_length(prompt.size(), Api::openai);
    JobRequest r = openai_job(s, body, std::move(prompt), false);
    const bool stream = bool_field(body, "stream").value_or(false);
    const bool with_usage = include_usage(body);
    const bool logprobs = r.top_logprobs >= 0;
    auto job = s.submit(std::move(r), Api::openai);
    const std::string id = make_id("chatcmpl-");
    const int64_t created = unix_time();
    const std::string model = s.model_name;

    if (!stream) {
        auto build = [&s, job, in, logprobs, id, created](const std::vector<Delta> &deltas) {
            ReplyParser parser(in.thinking.on, in.callable, "call_", in.max_calls);
            std::vector<ReplyEvent> events;
            parser.push(in.forced, events);
            ReasoningCounter counter{in.thinking.on};
            json lp = json::array();
            for (const Delta &d : deltas) {
                std::vector<ReplyEvent> ev;
                parser.push(d.text, ev);
                counter.see(ev, 1);
                events.insert(events.end(), ev.begin(), ev.end());
                if (logprobs && d.token >= 0) lp.push_back(logprob_entry(s, d));
            }
            parser.finish(job->finish(), events);
            std::string content, reasoning;
            std::vector<ToolCall> calls;
            for (const ReplyEvent &e : events) {
                if (e.kind == ReplyEvent::Kind::reasoning) reasoning += e.text;
                else if (e.kind == ReplyEvent::Kind::content) content += e.text;
                else if (e.kind == ReplyEvent::Kind::tool_call) calls.push_back(e.call);
            }
            s.memory.remember(calls, reasoning);
            json message = {{"role", "assistant"}, {"content", content.empty() && !calls.empty() ? json() : json(content)}};
            if (in.thinking.on) message["reasoning_content"] = reasoning;
            if (!calls.empty()) {
                json tc = json::array();
                for (const ToolCall &c : calls)
                    tc.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
                message["tool_calls"] = tc;
            }
            return json{{"id", id},
                        {"object", "chat.completion"},
                        {"created", created},
                        {"model", s.model_name},
                        {"choices", json::array({{{"index", 0},
                                                   {"message", message},
                                                   {"logprobs", logprobs ? json{{"content", lp}} : json()},
                                                   {"finish_reason", finish_reason(job->finish(), !calls.empty())}}})},
                        {"usage", chat_usage(*job, counter.tokens)}};
        };
        return respond_when_done(job, res, build, Api::openai);
    }

    res.content_type = "text/event-stream";
    res.headers = {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}};
    res.stream = [&s, job, in, id, created, model, with_usage, logprobs](const ChunkWriter &write) {
        auto chunk = [&](const json &delta, const json &finish = json(), const json &lp = json()) {
            return write(sse({{"id", id},
                              {"object", "chat.completion.chunk"},
                              {"created", created},
                              {"model", model},
                              {"choices", json::array({{{"index", 0}, {"delta", delta}, {"logprobs", lp}, {"finish_reason", finish}}})}}));
        };
        if (!chunk({{"role", "assistant"}, {"content", ""}})) return job->cancel(), false;
        ReplyParser parser(in.thinking.on, in.callable, "call_", in.max_calls);
        ReasoningCounter counter{in.thinking.on};
        std::vector<ToolCall> calls;
        std::string reasoning;
        auto send = [&](const std::vector<ReplyEvent> &events, json lp) {
            for (const ReplyEvent &e : events) {
                bool ok = true;
                if (e.kind == ReplyEvent::Kind::reasoning) {
                    reasoning += e.text;
                    ok = chunk({{"reasoning_content", e.text}}, json(), lp);
                } else if (e.kind == ReplyEvent::Kind::content) {
                    ok = chunk({{"content", e.text}}, json(), lp);
                } else if (e.kind == ReplyEvent::Kind::call_begin) {  // the header: index, id, name
                    ok = chunk({{"tool_calls", json::array({{{"index", int(calls.size())}, {"id", e.call.id}, {"type", "function"},
                                                             {"function", {{"name", e.call.name}, {"arguments", ""}}}}})}});
                } else if (e.kind == ReplyEvent::Kind::call_arguments) {
                    ok = chunk({{"tool_calls", json::array({{{"index", int(calls.size())}, {"function", {{"arguments", e.text}}}}})}},
                               json(), lp);
                } else {
                    calls.push_back(e.call);
                    continue;
                }
                if (!ok) return false;
                lp = json();
            }
            return lp.is_null() || chunk(json::object(), json(), lp);  // log-probabilities of held-back text
        };
        std::vector<ReplyEvent> forced;
        parser.push(in.forced, forced);
        if (!send(forced, json())) return job->cancel(), false;
        const bool alive = drive(
            *job,
            [&](std::vector<Delta> &deltas) {
                std::vector<ReplyEvent> events;
                json lp;
                if (logprobs) lp = {{"content", json::array()}};
                for (const Delta &d : deltas) {
                    parser.push(d.text, events);
                    if (logprobs && d.token >= 0) lp["content"].push_back(logprob_entry(s, d));
                }
                counter.see(events, deltas.size());
                if (parser.malformed()) job->cancel();  // the reply is over: stop generating it
                return progress(send(events, lp), !events.empty() || logprobs);
            },
            [&] { return write(": keep-alive\n\n"); });
        if (!alive) return false;
        if (job->finish() == Finish::error) {
            write(sse({{"error", {{"message", job->error()}, {"type", "server_error"}, {"param", json()}, {"code", json()}}}}));
            write("data: [DONE]\n\n");
            return true;
        }
        std::vector<ReplyEvent> tail;
        parser.finish(job->finish(), tail);
        if (!send(tail, json())) return false;
        if (parser.dangling()) {  // a call was announced and its markup then broke: say so rather than end it as done
            write(sse({{"error", {{"message", kDanglingCall}, {"type", "server_error"}, {"param", json()}, {"code", "malformed_tool_call"}}}}));
            return write("data: [DONE]\n\n");
        }
        s.memory.remember(calls, reasoning);
        if (!chunk(json::object(), finish_reason(job->finish(), !calls.empty()))) return false;
        if (with_usage &&
            !write(sse({{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
                        {"choices", json::array()}, {"usage", chat_usage(*job, counter.tokens)}})))
            return false;
        return write("data: [DONE]\n\n");
    };
}

// /v1/completions: raw text continuation (no chat format).
void completions(Service &s, const HttpRequest &req, HttpResponse &res) {
    s.ready_engine();  // 503 while loading, before anything reads the tokenizer
    const json body = parse_body(req.body);
    if (!body.contains("prompt")) throw ApiError(400, "'prompt' is required", "prompt");
    json p = body["prompt"];
    if (p.is_array() && p.size() == 1 && p[0].is_string()) p = p[0];
    std::vector<int32_t> prompt;
    if (p.is_string()) {
        prompt = s.tokenize(p.get<std::string>());
    } else if (p.is_array() && !p.empty()) {
        for (const json &t : p) {
            if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= dsv4_tokenizer_vocab_size(s.tok))
                throw ApiError(400, "'prompt' must be a string or an array of token ids", "prompt");
            prompt.push_back(t.get<int32_t>());
        }
    } else {
        throw ApiError(400, "'prompt' must be a string or an array of token ids", "prompt");
    }
    if (prompt.empty()) throw ApiError(400, "'prompt' is empty", "prompt");
    s.check_length(prompt.size(), Api::openai);
    JobRequest r = openai_job(s, body, std::move(prompt), false);
    if (!integer_field(body, "max_tokens", 1, INT32_MAX)) r.max_tokens = std::min(r.max_tokens, 16);  // the API's default
    const bool r_logprobs = r.top_logprobs >= 0;
    const bool stream = bool_field(body, "stream").value_or(false);
    const bool with_usage = include_usage(body);
    auto job = s.submit(std::move(r), Api::openai);
    const std::string id = make_id("cmpl-");
    const int64_t created = unix_time();
    auto usage = [job] {
        return json{{"prompt_tokens", job->n_prompt()},
                    {"completion_tokens", job->n_generated()},
                    {"total_tokens", job->n_prompt() + job->n_generated()},
                    {"prompt_tokens_details", {{"cached_tokens", job->n_cached()}}}};
    };
    const bool logprobs = r_logprobs;
    // The legacy logprobs object of some deltas; offset: characters of text before them.
    auto legacy = [&s, logprobs](const std::vector<Delta> &deltas, size_t offset) {
        if (!logprobs) return json();
        json out = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                    {"text_offset", json::array()}};
        for (const Delta &d : deltas) {
            if (d.token < 0) continue;
            json top = json::object();
            for (const TokenLogprob &t : d.top) top[s.piece(t.token)] = t.logprob;
            out["tokens"].push_back(s.piece(d.token));
            out["token_logprobs"].push_back(d.logprob);
            out["top_logprobs"].push_back(top);
            out["text_offset"].push_back(offset);
            offset += d.text.size();
        }
        return out;
    };
    auto choice = [](const std::string &text, const json &finish, const json &lp) {
        return json::array({{{"text", text}, {"index", 0}, {"logprobs", lp}, {"finish_reason", finish}}});
    };
    const std::string model = s.model_name;
    if (!stream) {
        return respond_when_done(
            job, res,
            [=](const std::vector<Delta> &deltas) {
                std::string text;
                for (const Delta &d : deltas) text += d.text;
                return json{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                            {"choices", choice(text, job->finish() == Finish::length ? "length" : "stop", legacy(deltas, 0))},
                            {"usage", usage()}};
            },
            Api::openai);
    }
    res.content_type = "text/event-stream";
    res.headers = {{"Cache-Control", "no-cache"}};
    res.stream = [=](const ChunkWriter &write) {
        auto chunk = [&](const std::string &text, const json &finish, const json &lp = json()) {
            return write(sse({{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                              {"choices", choice(text, finish, lp)}}));
        };
        size_t offset = 0;
        const bool alive = drive(
            *job,
            [&](std::vector<Delta> &deltas) {
                std::string text;
                for (const Delta &d : deltas) text += d.text;
                const bool send = !text.empty() || logprobs;
                const bool ok = !send || chunk(text, json(), legacy(deltas, offset));
                offset += text.size();
                return progress(ok, send);
            },
            [&] { return write(": keep-alive\n\n"); });
        if (!alive) return false;
        if (job->finish() == Finish::error) {
            write(sse({{"error", {{"message", job->error()}, {"type", "server_error"}}}}));
        } else if (!chunk("", job->finish() == Finish::length ? "length" : "stop") ||
                   (with_usage && !write(sse({{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                                                 {"choices", json::array()}, {"usage", usage()}})))) {
            return false;
        }
        return write("data: [DONE]\n\n");
    };
}

}  // namespace

std::string chat_completions_prompt(Service &s, const json &body) {
    ChatRequest in = chat_input(s, body);
    return s.prompt(in);
}

void register_openai(HttpServer &http, Service &s) {
    http.route("POST", "/v1/responses", [&s](const HttpRequest &req, HttpResponse &res) {
        guarded(Api::openai, res, [&] { responses(s, req, res); });
    });
    http.route("POST", "/v1/chat/completions", [&s](const HttpRequest &req, HttpResponse &res) {
        guarded(Api::openai, res, [&] { chat_completions(s, req, res); });
    });
    http.route("POST", "/v1/completions", [&s](const HttpRequest &req, HttpResponse &res) {
        guarded(Api::openai, res, [&] { completions(s, req, res); });
    });
    http.route("GET", "/v1/models", [&s](const HttpRequest &, HttpResponse &res) {
        if (!s.ready) return error_response(Api::openai, 503, "the model is still loading", res);
        res.body = dump({{"object", "list"},
                         {"data", json::array({{{"id", s.model_name}, {"object", "model"}, {"created", unix_time()},
                                                {"owned_by", "dsv4"}}})}});
    });
}

}  // namespace dsv4::serve
