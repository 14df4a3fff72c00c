// The OpenAI Responses API (/v1/responses), the subset Codex CLI uses: input items (messages, function calls and
// their outputs, reasoning), instructions, function tools, reasoning effort, streaming with the item events.
// Stateless: previous_response_id is refused (clients send the whole conversation, as Codex does with store off).
#include <fmt/format.h>

#include "openai.h"

namespace dsv4::serve {
namespace {

struct ResponsesInput : ChatRequest {
    json tools = json::array();  // as the request gave them, echoed in the response
};

ResponsesInput responses_input(const Service &s, const json &body) {
    ResponsesInput in;
    if (body.contains("previous_response_id") && !body["previous_response_id"].is_null())
        throw ApiError(400, "previous_response_id is not supported: send the conversation as input items", "previous_response_id");
    std::optional<std::string> effort;
    if (body.contains("reasoning") && body["reasoning"].is_object() && body["reasoning"].contains("effort") &&
        body["reasoning"]["effort"].is_string())
        effort = body["reasoning"]["effort"].get<std::string>();
    in.thinking = thinking_of(body, s.default_thinking, effort);
    if (!bool_field(body, "parallel_tool_calls").value_or(true)) in.max_calls = 1;

    json system = {{"role", "system"}, {"content", string_field(body, "instructions").value_or("")}};
    json fn_tools = json::array();
    if (body.contains("tools") && !body["tools"].is_null()) {
        if (!body["tools"].is_array()) throw ApiError(400, "'tools' must be an array", "tools");
        in.tools = body["tools"];
        for (const json &t : body["tools"]) {
            if (!t.is_object() || text_of(t, "type") != "function") continue;  // hosted tools are not ours to run
            if (!t.contains("name") || !t["name"].is_string()) throw ApiError(400, "a function tool needs a name", "tools");
            in.callable.insert(t["name"].get<std::string>());
            json fn = {{"name", t["name"]}};
            if (t.contains("description")) fn["description"] = t["description"];
            fn["parameters"] = t.value("parameters", json::object());
            fn_tools.push_back({{"type", "function"}, {"function", fn}});
        }
    }
    if (body.contains("tool_choice") && !body["tool_choice"].is_null()) {
        const json &c = body["tool_choice"];
        if (c == "none") in.callable.clear(), fn_tools = json::array();
        else if (c == "required") in.forced = forced_call_prefix(in.thinking.on, !in.callable.empty(), "");
        else if (c.is_object() && text_of(c, "type") == "function" && c.contains("name") && c["name"].is_string()) {
            if (!in.callable.count(c["name"].get<std::string>())) throw ApiError(400, "tool_choice names a function not in 'tools'", "tool_choice");
            in.forced = forced_call_prefix(in.thinking.on, true, c["name"].get<std::string>());
        } else if (c != "auto") {
            throw ApiError(400, "tool_choice must be none, auto, required or a function", "tool_choice");
        }
    }
    if (!fn_tools.empty()) system["tools"] = fn_tools;
    if (!system["content"].get<std::string>().empty() || !fn_tools.empty()) in.messages.push_back(system);

    if (!body.contains("input")) throw ApiError(400, "'input' is required", "input");
    const json &input = body["input"];
    if (input.is_string()) {
        in.messages.push_back({{"role", "user"}, {"content", input}});
        return in;
    }
    if (!input.is_array() || input.empty()) throw ApiError(400, "'input' must be a string or a non-empty array of items", "input");
    std::string pending_reasoning;
    auto assistant = [&]() -> json & {  // the assistant turn that text, function calls and reasoning items join
        if (in.messages.empty() || in.messages.back()["role"] != "assistant")
            in.messages.push_back({{"role", "assistant"}, {"content", ""}});
        json &m = in.messages.back();
        if (!pending_reasoning.empty()) m["reasoning_content"] = pending_reasoning, pending_reasoning.clear();
        return m;
    };
    size_t i = 0;
    for (const json &item : input) {
        const std::string where = fmt::format("input[{}]", i++);
        if (!item.is_object()) throw ApiError(400, where + ": an item is an object", "input");
        const std::string type = text_of(item, "type", "message");
        if (type == "message") {
            const std::string role = text_of(item, "role");
            if (role != "user" && role != "assistant" && role != "system" && role != "developer")
                throw ApiError(400, where + ": role must be user, assistant, system or developer", "input");
            const std::string text = content_text(item.value("content", json("")), where);
            if (role == "assistant") {
                json &m = assistant();
                m["content"] = m["content"].get<std::string>() + text;
            } else in.messages.push_back({{"role", role}, {"content", text}});
        } else if (type == "reasoning") {
            for (const char *key : {"content", "summary"})
                if (item.contains(key) && item[key].is_array() && pending_reasoning.empty())
                    for (const json &part : item[key])
                        if (part.is_object() && part.contains("text") && part["text"].is_string())
                            pending_reasoning += part["text"].get<std::string>();
        } else if (type == "function_call") {
            if (!item.contains("name") || !item["name"].is_string()) throw ApiError(400, where + ": a function_call needs a name", "input");
            json &m = assistant();
            if (!m.contains("tool_calls")) m["tool_calls"] = json::array();
            m["tool_calls"].push_back({{"id", text_of(item, "call_id")}, {"type", "function"},
                                       {"function", {{"name", item["name"]}, {"arguments", text_of(item, "arguments", "{}")}}}});
        } else if (type == "function_call_output") {
            const json &out = item.value("output", json(""));
            in.messages.push_back({{"role", "tool"}, {"tool_call_id", text_of(item, "call_id")},
                                   {"content", out.is_string() ? out.get<std::string>() : content_text(out, where)}});
        } else {
            throw ApiError(400, where + ": unsupported item type '" + type + "'", "input");
        }
    }
    return in;
}

// The response object, filled as the reply arrives (the stream's events carry snapshots of it).
struct ResponseState {
    json response;
    json &output() { return response["output"]; }
};

json response_usage(const Job &job, int32_t reasoning_tokens) {
    return {{"input_tokens", job.n_prompt()},
            {"input_tokens_details", {{"cached_tokens", job.n_cached()}}},
            {"output_tokens", job.n_generated()},
            {"output_tokens_details", {{"reasoning_tokens", reasoning_tokens}}},
            {"total_tokens", job.n_prompt() + job.n_generated()}};
}

}  // namespace

std::string responses_prompt(Service &s, const json &body) {
    ResponsesInput in = responses_input(s, body);
    return s.prompt(in);
}

void responses(Service &s, const HttpRequest &req, HttpResponse &res) {
    s.ready_engine();  // 503 while loading, before anything reads the tokenizer
    const json body = parse_body(req.body);
    ResponsesInput in = responses_input(s, body);
    std::vector<int32_t> prompt = s.tokenize(s.prompt(in));
    s.check_length(prompt.size(), Api::openai);
    JobRequest r = openai_job(s, body, std::move(prompt), true);
    const bool stream = bool_field(body, "stream").value_or(false);
    const json base = {{"id", make_id("resp_")},
                       {"object", "response"},
                       {"created_at", unix_time()},
                       {"status", "in_progress"},
                       {"error", json()},
                       {"incomplete_details", json()},
                       {"instructions", body.value("instructions", json())},
                       {"max_output_tokens", body.value("max_output_tokens", json())},
                       {"model", s.model_name},
                       {"output", json::array()},
                       {"parallel_tool_calls", flag_of(body, "parallel_tool_calls", true)},
                       {"previous_response_id", json()},
                       {"reasoning", {{"effort", in.thinking.effort ? json(*in.thinking.effort) : json()}, {"summary", json()}}},
                       {"store", false},
                       {"temperature", r.sampling.temperature},
                       {"text", {{"format", {{"type", "text"}}}}},
                       {"tool_choice", body.value("tool_choice", json("auto"))},
                       {"tools", in.tools},
                       {"top_p", r.sampling.top_p},
                       {"truncation", "disabled"},
                       {"usage", json()},
                       {"metadata", body.value("metadata", json::object())}};
    auto job = s.submit(std::move(r), Api::openai);

    // Reply events → output items; emit(type, fields) sends a stream event (a no-op when not streaming).
    struct Builder {
        json response;
        std::function<bool(const std::string &, json)> emit;
        std::string open;  // "reasoning" or "message": the item receiving deltas
        std::string text;
        std::vector<ToolCall> calls;
        std::string reasoning;
        int index() const { return int(response["output"].size()) - 1; }
        bool close() {
            if (open.empty()) return true;
            json &item = response["output"].back();
            const std::string id = item["id"];
            bool ok;
            if (open == "reasoning") {
                item["summary"] = json::array({{{"type", "summary_text"}, {"text", text}}});
                ok = emit("response.reasoning_summary_text.done", {{"item_id", id}, {"output_index", index()}, {"summary_index", 0}, {"text", text}}) &&
                     emit("response.reasoning_summary_part.done", {{"item_id", id}, {"output_index", index()}, {"summary_index", 0},
                                                                   {"part", {{"type", "summary_text"}, {"text", text}}}});
            } else {
                const json part = {{"type", "output_text"}, {"text", text}, {"annotations", json::array()}};
                item["content"] = json::array({part});
                item["status"] = "completed";
                ok = emit("response.output_text.done", {{"item_id", id}, {"output_index", index()}, {"content_index", 0}, {"text", text}}) &&
                     emit("response.content_part.done", {{"item_id", id}, {"output_index", index()}, {"content_index", 0}, {"part", part}});
            }
            open.clear();
            text.clear();
            return ok && emit("response.output_item.done", {{"output_index", index()}, {"item", item}});
        }
        bool ensure(const std::string &kind) {
            if (open == kind) return true;
            if (!close()) return false;
            open = kind;
            json item = kind == "reasoning" ? json{{"type", "reasoning"}, {"id", make_id("rs_")}, {"summary", json::array()}}
                                            : json{{"type", "message"}, {"id", make_id("msg_")}, {"status", "in_progress"},
                                                   {"role", "assistant"}, {"content", json::array()}};
            response["output"].push_back(item);
            const std::string id = item["id"];
            if (!emit("response.output_item.added", {{"output_index", index()}, {"item", item}})) return false;
            if (kind == "reasoning")
                return emit("response.reasoning_summary_part.added", {{"item_id", id}, {"output_index", index()}, {"summary_index", 0},
                                                                      {"part", {{"type", "summary_text"}, {"text", ""}}}});
            return emit("response.content_part.added", {{"item_id", id}, {"output_index", index()}, {"content_index", 0},
                                                        {"part", {{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}}}});
        }
        bool add(const std::vector<ReplyEvent> &events) {
            for (const ReplyEvent &e : events) {
                if (e.kind == ReplyEvent::Kind::call_begin) {
                    if (!close()) return false;
                    const json item = {{"type", "function_call"}, {"id", make_id("fc_")}, {"call_id", e.call.id},
                                       {"name", e.call.name}, {"arguments", ""}, {"status", "in_progress"}};
                    response["output"].push_back(item);
                    if (!emit("response.output_item.added", {{"output_index", index()}, {"item", item}})) return false;
                    continue;
                }
                if (e.kind == ReplyEvent::Kind::call_arguments) {
                    const std::string id = response["output"].back()["id"];
                    if (!emit("response.function_call_arguments.delta", {{"item_id", id}, {"output_index", index()}, {"delta", e.text}}))
                        return false;
                    continue;
                }
                if (e.kind == ReplyEvent::Kind::tool_call) {
                    calls.push_back(e.call);
                    json &item = response["output"].back();
                    item["arguments"] = e.call.arguments;
                    item["status"] = "completed";
                    const std::string id = item["id"];
                    if (!emit("response.function_call_arguments.done", {{"item_id", id}, {"output_index", index()}, {"arguments", e.call.arguments}}) ||
                        !emit("response.output_item.done", {{"output_index", index()}, {"item", item}}))
                        return false;
                    continue;
                }
                const bool is_reasoning = e.kind == ReplyEvent::Kind::reasoning;
                if (!ensure(is_reasoning ? "reasoning" : "message")) return false;
                text += e.text;
                if (is_reasoning) reasoning += e.text;
                const std::string id = response["output"].back()["id"];
                const bool ok = is_reasoning ? emit("response.reasoning_summary_text.delta",
                                                    {{"item_id", id}, {"output_index", index()}, {"summary_index", 0}, {"delta", e.text}})
                                             : emit("response.output_text.delta",
                                                    {{"item_id", id}, {"output_index", index()}, {"content_index", 0}, {"delta", e.text}});
                if (!ok) return false;
            }
            return true;
        }
        void complete(const Job &job, int32_t reasoning_tokens) {
            const bool cut = job.finish() == Finish::length;
            response["status"] = cut ? "incomplete" : "completed";
            if (cut) response["incomplete_details"] = {{"reason", "max_output_tokens"}};
            response["usage"] = response_usage(job, reasoning_tokens);
        }
    };

    const bool thinking = in.thinking.on;
    const std::set<std::string> callable = in.callable;
    const size_t max_calls = in.max_calls;
    const std::string forced = in.forced;
    if (!stream) {
        return respond_when_done(
            job, res,
            [&s, job, base, thinking, callable, max_calls, forced](const std::vector<Delta> &deltas) {
                Builder b;
                b.response = base;
                b.emit = [](const std::string &, json) { return true; };
                ReplyParser parser(thinking, callable, "call_", max_calls);
                ReasoningCounter counter{thinking};
                std::vector<ReplyEvent> primed;
                parser.push(forced, primed);
                b.add(primed);
                for (const Delta &d : deltas) {
                    std::vector<ReplyEvent> ev;
                    parser.push(d.text, ev);
                    counter.see(ev, 1);
                    b.add(ev);
                }
                std::vector<ReplyEvent> tail;
                parser.finish(job->finish(), tail);
                b.add(tail);
                b.close();
                s.memory.remember(b.calls, b.reasoning);
                b.complete(*job, counter.tokens);
                return b.response;
            },
            Api::openai);
    }
    res.content_type = "text/event-stream";
    res.headers = {{"Cache-Control", "no-cache"}};
    res.stream = [&s, job, base, thinking, callable, max_calls, forced](const ChunkWriter &write) {
        int64_t sequence = 0;
        Builder b;
        b.response = base;
        b.emit = [&](const std::string &type, json fields) {
            json e = {{"type", type}, {"sequence_number", sequence++}};
            for (auto it = fields.begin(); it != fields.end(); ++it) e[it.key()] = *it;
            return write(sse(e, type));
        };
        if (!b.emit("response.created", {{"response", b.response}}) || !b.emit("response.in_progress", {{"response", b.response}}))
            return job->cancel(), false;
        ReplyParser parser(thinking, callable, "call_", max_calls);
        ReasoningCounter counter{thinking};
        std::vector<ReplyEvent> primed;
        parser.push(forced, primed);
        if (!b.add(primed)) return job->cancel(), false;
        const bool alive = drive(
            *job,
            [&](std::vector<Delta> &deltas) {
                std::vector<ReplyEvent> ev;
                for (const Delta &d : deltas) parser.push(d.text, ev);
                counter.see(ev, deltas.size());
                if (parser.malformed()) job->cancel();  // the reply is over: stop generating it
                return progress(b.add(ev), !ev.empty());
            },
            [&] { return write(": keep-alive\n\n"); });
        if (!alive) return false;
        if (job->finish() == Finish::error) {
            b.response["status"] = "failed";
            b.response["error"] = {{"code", "server_error"}, {"message", job->error()}};
            b.emit("response.failed", {{"response", b.response}});
            return true;
        }
        std::vector<ReplyEvent> tail;
        parser.finish(job->finish(), tail);
        if (!b.add(tail)) return false;
        if (parser.dangling()) {
            b.response["status"] = "failed";
            b.response["error"] = {{"code", "server_error"}, {"message", kDanglingCall}};
            return b.emit("response.failed", {{"response", b.response}});
        }
        if (!b.close()) return false;
        s.memory.remember(b.calls, b.reasoning);
        b.complete(*job, counter.tokens);
        return b.emit(job->finish() == Finish::length ? "response.incomplete" : "response.completed", {{"response", b.response}});
    };
}

}  // namespace dsv4::serve
