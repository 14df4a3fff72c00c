// The Anthropic Messages API: /v1/messages (streamed and not) and /v1/messages/count_tokens.
#include <fmt/format.h>

#include "service.h"

namespace dsv4::serve {
namespace {

std::string blocks_text(const json &content, const std::string &where) {
    if (content.is_string()) return content.get<std::string>();
    if (!content.is_array()) throw ApiError(400, where + ": content must be a string or an array of blocks");
    std::string text;
    for (const json &b : content) {
        if (!b.is_object() || text_of(b, "type") != "text" || !b.contains("text") || !b["text"].is_string())
            throw ApiError(400, where + ": expected text blocks");
        text += b["text"].get<std::string>();
    }
    return text;
}

ChatRequest messages_input(const Service &s, const json &body) {
    ChatRequest in;
    in.thinking.on = s.default_thinking;
    if (body.contains("thinking") && !body["thinking"].is_null()) {
        const json &t = body["thinking"];
        const std::string type = t.is_object() ? text_of(t, "type") : "";
        if (type == "enabled" || type == "adaptive") in.thinking.on = true;
        else if (type == "disabled") in.thinking.on = false;
        else throw ApiError(400, "thinking.type: expected enabled, disabled or adaptive");
    }
    if (body.contains("output_config") && body["output_config"].is_object()) {
        const std::string effort = text_of(body["output_config"], "effort");
        if (effort == "max") in.thinking.effort = "max";
        else if (!effort.empty()) in.thinking.effort = "high";
    }
    json tools = json::array();
    if (body.contains("tools") && !body["tools"].is_null()) {
        if (!body["tools"].is_array()) throw ApiError(400, "tools: expected an array");
        for (const json &t : body["tools"]) {
            if (!t.is_object() || !t.contains("name") || !t["name"].is_string())
                throw ApiError(400, "tools: each tool needs a string name");
            if (t.contains("type") && t["type"].is_string() && t["type"] != "custom")
                continue;  // server tools (web search, ...) are not ours to run
            in.callable.insert(t["name"].get<std::string>());
            json fn = {{"name", t["name"]}};
            if (t.contains("description")) fn["description"] = t["description"];
            fn["parameters"] = t.value("input_schema", json::object());
            tools.push_back({{"type", "function"}, {"function", fn}});
        }
    }
    if (body.contains("tool_choice") && body["tool_choice"].is_object()) {
        const std::string type = text_of(body["tool_choice"], "type", "auto");
        if (flag_of(body["tool_choice"], "disable_parallel_tool_use", false)) in.max_calls = 1;
        if (type == "none") in.callable.clear(), tools = json::array();
        else if (type == "tool" && !in.callable.count(text_of(body["tool_choice"], "name")))
            throw ApiError(400, "tool_choice names a tool not in 'tools'");
        else if (type != "auto" && type != "any" && type != "tool")
            throw ApiError(400, "tool_choice.type: expected auto, any, tool or none");
        if (type == "any") in.forced = forced_call_prefix(in.thinking.on, !in.callable.empty(), "");
        if (type == "tool") in.forced = forced_call_prefix(in.thinking.on, true, text_of(body["tool_choice"], "name"));
    }
    json system = {{"role", "system"}, {"content", ""}};
    if (body.contains("system") && !body["system"].is_null()) system["content"] = blocks_text(body["system"], "system");
    if (!tools.empty()) system["tools"] = tools;
    if (!system["content"].get<std::string>().empty() || !tools.empty()) in.messages.push_back(system);

    if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
        throw ApiError(400, "messages: expected a non-empty array");
    size_t i = 0;
    for (const json &m : body["messages"]) {
        const std::string where = fmt::format("messages.{}", i++);
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content"))
            throw ApiError(400, where + ": a message needs a role and content");
        const std::string role = m["role"].get<std::string>();
        const json &content = m["content"];
        if (role == "user") {
            if (content.is_string()) {
                in.messages.push_back({{"role", "user"}, {"content", content}});
                continue;
            }
            if (!content.is_array()) throw ApiError(400, where + ": content must be a string or an array of blocks");
            std::string text;
            for (const json &b : content) {
                const std::string type = b.is_object() ? text_of(b, "type") : "";
                if (type == "text" && b.contains("text") && b["text"].is_string()) {
                    text += b["text"].get<std::string>();
                } else if (type == "tool_result") {
                    std::string result = b.contains("content") ? blocks_text(b["content"], where + ".tool_result") : "";
                    if (flag_of(b, "is_error", false)) result = "Error: " + result;
                    in.messages.push_back({{"role", "tool"}, {"tool_call_id", text_of(b, "tool_use_id")}, {"content", result}});
                } else {
                    throw ApiError(400, where + ": unsupported content block '" + type + "'");
                }
            }
            if (!text.empty()) in.messages.push_back({{"role", "user"}, {"content", text}});
        } else if (role == "assistant") {
            json out = {{"role", "assistant"}, {"content", ""}};
            if (content.is_string()) {
                out["content"] = content;
            } else if (content.is_array()) {
                json calls = json::array();
                std::string text, reasoning;
                for (const json &b : content) {
                    const std::string type = b.is_object() ? text_of(b, "type") : "";
                    if (type == "text") text += text_of(b, "text");
                    else if (type == "thinking") reasoning += text_of(b, "thinking");
                    else if (type == "redacted_thinking") continue;
                    else if (type == "tool_use")
                        calls.push_back({{"id", text_of(b, "id")}, {"type", "function"},
                                         {"function", {{"name", text_of(b, "name")}, {"arguments", dump(b.value("input", json::object()))}}}});
                    else throw ApiError(400, where + ": unsupported content block '" + type + "'");
                }
                out["content"] = text;
                if (!reasoning.empty()) out["reasoning_content"] = reasoning;
                if (!calls.empty()) out["tool_calls"] = calls;
            } else {
                throw ApiError(400, where + ": content must be a string or an array of blocks");
            }
            in.messages.push_back(std::move(out));
        } else {
            throw ApiError(400, where + ": role must be user or assistant");
        }
    }
    return in;
}

JobRequest job_from(const Service &s, const json &body, std::vector<int32_t> prompt) {
    JobRequest r;
    const int32_t room = s.ready_engine().n_ctx() - int32_t(prompt.size());
    r.prompt = std::move(prompt);
    const auto max_tokens = integer_field(body, "max_tokens", 1, INT32_MAX);
    if (!max_tokens) throw ApiError(400, "max_tokens: field required");
    r.max_tokens = int32_t(std::min<int64_t>(*max_tokens, room));
    r.sampling.temperature = float(number_field(body, "temperature", 0.0, 1.0).value_or(1.0));
    r.sampling.top_p = float(number_field(body, "top_p", 0.0, 1.0).value_or(1.0));
    if (r.sampling.top_p <= 0.0f) r.sampling.top_p = 1e-6f;
    r.sampling.top_k = int32_t(integer_field(body, "top_k", 0, INT32_MAX).value_or(0));
    r.stop = string_array_field(body, "stop_sequences");
    s.apply_test_hook(body, r);
    return r;
}

std::string signature_of(const std::string &message_id) { return "dsv4." + message_id; }

json stop_sequence(const Job &job) { return job.finish() == Finish::stop_string ? json(job.stop_string()) : json(); }

const char *stop_reason(Finish f, bool called) {
    if (f == Finish::length) return "max_tokens";
    if (f == Finish::stop_string) return "stop_sequence";
    return called ? "tool_use" : "end_turn";
}

json usage_of(const Job &job) {
    return {{"input_tokens", job.n_prompt() - job.n_cached()},
            {"cache_creation_input_tokens", 0},
            {"cache_read_input_tokens", job.n_cached()},
            {"output_tokens", job.n_generated()}};
}

json tool_input(const std::string &arguments) {
    json input = json::parse(arguments, nullptr, false);
    return input.is_object() ? input : json::object();
}

void messages(Service &s, const HttpRequest &req, HttpResponse &res) {
    s.ready_engine();  // 503 while loading, before anything reads the tokenizer
    const json body = parse_body(req.body);
    ChatRequest in = messages_input(s, body);
    std::vector<int32_t> prompt = s.tokenize(s.prompt(in));
    s.check_length(prompt.size(), Api::anthropic);
    JobRequest r = job_from(s, body, std::move(prompt));
    const bool stream = bool_field(body, "stream").value_or(false);
    auto job = s.submit(std::move(r), Api::anthropic);
    const std::string id = make_id("msg_");
    const std::string model = s.model_name;

    if (!stream) {
        auto build = [&s, job, in, id, model](const std::vector<Delta> &deltas) {
            ReplyParser parser(in.thinking.on, in.callable, "toolu_", in.max_calls);
            std::vector<ReplyEvent> events;
            parser.push(in.forced, events);
            for (const Delta &d : deltas) parser.push(d.text, events);
            parser.finish(job->finish(), events);
            std::string text, reasoning;
            std::vector<ToolCall> calls;
            for (const ReplyEvent &e : events) {
                if (e.kind == ReplyEvent::Kind::reasoning) reasoning += e.text;
                else if (e.kind == ReplyEvent::Kind::content) text += e.text;
                else if (e.kind == ReplyEvent::Kind::tool_call) calls.push_back(e.call);
            }
            s.memory.remember(calls, reasoning);
            json content = json::array();
            if (in.thinking.on) content.push_back({{"type", "thinking"}, {"thinking", reasoning}, {"signature", signature_of(id)}});
            if (!text.empty() || calls.empty()) content.push_back({{"type", "text"}, {"text", text}});
            for (const ToolCall &c : calls)
                content.push_back({{"type", "tool_use"}, {"id", c.id}, {"name", c.name}, {"input", tool_input(c.arguments)}});
            return json{{"id", id},          {"type", "message"},
                        {"role", "assistant"}, {"model", model},
                        {"content", content}, {"stop_reason", stop_reason(job->finish(), !calls.empty())},
                        {"stop_sequence", stop_sequence(*job)}, {"usage", usage_of(*job)}};
        };
        return respond_when_done(job, res, build, Api::anthropic);
    }

    res.content_type = "text/event-stream";
    res.headers = {{"Cache-Control", "no-cache"}};
    res.stream = [&s, job, in, id, model](const ChunkWriter &write) {
        auto event = [&](const std::string &name, json data) {
            data["type"] = name;
            json ordered = {{"type", name}};
            for (auto it = data.begin(); it != data.end(); ++it)
                if (it.key() != "type") ordered[it.key()] = *it;
            return write(sse(ordered, name));
        };
        json start_usage = usage_of(*job);
        start_usage["output_tokens"] = 0;
        if (!event("message_start", {{"message", {{"id", id}, {"type", "message"}, {"role", "assistant"}, {"model", model},
                                                  {"content", json::array()}, {"stop_reason", json()},
                                                  {"stop_sequence", json()}, {"usage", start_usage}}}}))
            return job->cancel(), false;
        int index = -1;
        std::string open;  // type of the open block: thinking, text, tool_use or ""
        std::vector<ToolCall> calls;
        std::string reasoning;
        auto close = [&] {
            if (open.empty()) return true;
            if (open == "thinking" &&
                !event("content_block_delta", {{"index", index}, {"delta", {{"type", "signature_delta"}, {"signature", signature_of(id)}}}}))
                return false;
            open.clear();
            return event("content_block_stop", {{"index", index}});
        };
        auto ensure = [&](const std::string &type) {
            if (open == type) return true;
            if (!close()) return false;
            open = type;
            ++index;
            json block = type == "thinking" ? json{{"type", "thinking"}, {"thinking", ""}, {"signature", ""}}
                                            : json{{"type", "text"}, {"text", ""}};
            return event("content_block_start", {{"index", index}, {"content_block", block}});
        };
        auto send = [&](const std::vector<ReplyEvent> &events) {
            for (const ReplyEvent &e : events) {
                bool ok = true;
                if (e.kind == ReplyEvent::Kind::reasoning) {
                    reasoning += e.text;
                    ok = ensure("thinking") &&
                         event("content_block_delta", {{"index", index}, {"delta", {{"type", "thinking_delta"}, {"thinking", e.text}}}});
                } else if (e.kind == ReplyEvent::Kind::content) {
                    ok = ensure("text") &&
                         event("content_block_delta", {{"index", index}, {"delta", {{"type", "text_delta"}, {"text", e.text}}}});
                } else if (e.kind == ReplyEvent::Kind::call_begin) {
                    ok = close() && event("content_block_start", {{"index", ++index},
                                                                  {"content_block", {{"type", "tool_use"}, {"id", e.call.id},
                                                                                     {"name", e.call.name}, {"input", json::object()}}}});
                    open = "tool_use";
                } else if (e.kind == ReplyEvent::Kind::call_arguments) {
                    ok = event("content_block_delta", {{"index", index}, {"delta", {{"type", "input_json_delta"}, {"partial_json", e.text}}}});
                } else {
                    calls.push_back(e.call);
                    ok = close();
                }
                if (!ok) return false;
            }
            return true;
        };
        if (in.thinking.on && !ensure("thinking")) return job->cancel(), false;
        ReplyParser parser(in.thinking.on, in.callable, "toolu_", in.max_calls);
        std::vector<ReplyEvent> forced;
        parser.push(in.forced, forced);
        if (!send(forced)) return job->cancel(), false;
        const bool alive = drive(
            *job,
            [&](std::vector<Delta> &deltas) {
                std::vector<ReplyEvent> events;
                for (const Delta &d : deltas) parser.push(d.text, events);
                if (parser.malformed()) job->cancel();  // the reply is over: stop generating it
                return progress(send(events), !events.empty());
            },
            [&] { return event("ping", json::object()); });
        if (!alive) return false;
        if (job->finish() == Finish::error) {
            event("error", {{"error", {{"type", "api_error"}, {"message", job->error()}}}});
            return true;
        }
        std::vector<ReplyEvent> tail;
        parser.finish(job->finish(), tail);
        if (!send(tail)) return false;
        if (parser.dangling()) return event("error", {{"error", {{"type", "api_error"}, {"message", kDanglingCall}}}});
        if (index < 0 && !ensure("text")) return false;  // a message has at least one block
        if (!close()) return false;
        s.memory.remember(calls, reasoning);
        return event("message_delta", {{"delta", {{"stop_reason", stop_reason(job->finish(), !calls.empty())}, {"stop_sequence", stop_sequence(*job)}}},
                                       {"usage", usage_of(*job)}}) &&
               event("message_stop", json::object());
    };
}

}  // namespace

std::string messages_prompt(Service &s, const json &body) {
    ChatRequest in = messages_input(s, body);
    return s.prompt(in);
}

void register_anthropic(HttpServer &http, Service &s) {
    http.route("POST", "/v1/messages", [&s](const HttpRequest &req, HttpResponse &res) {
        guarded(Api::anthropic, res, [&] { messages(s, req, res); });
    });
    http.route("POST", "/v1/messages/count_tokens", [&s](const HttpRequest &req, HttpResponse &res) {
        guarded(Api::anthropic, res, [&] {
            s.ready_engine();
            res.body = dump({{"input_tokens", s.tokenize(messages_prompt(s, parse_body(req.body))).size()}});
        });
    });
}

}  // namespace dsv4::serve
