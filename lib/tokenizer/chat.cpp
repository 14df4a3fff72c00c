#include "tokenizer/chat.h"

#include <charconv>
#include <cmath>
#include <map>

#include "core/error.h"
#include "core/text.h"

namespace dsv4::tokenizer {
namespace {
using json = nlohmann::ordered_json;

const std::string kBos = "<｜begin▁of▁sentence｜>", kEos = "<｜end▁of▁sentence｜>";
const std::string kThinkStart = "<think>", kThinkEnd = "</think>", kDsml = "｜DSML｜";
const std::string kUser = "<｜User｜>", kAssistant = "<｜Assistant｜>", kLatestReminder = "<｜latest_reminder｜>";
const std::map<std::string, std::string> kTaskTokens = {{"action", "<｜action｜>"},   {"query", "<｜query｜>"},
                                                        {"authority", "<｜authority｜>"}, {"domain", "<｜domain｜>"},
                                                        {"title", "<｜title｜>"},     {"read_url", "<｜read_url｜>"}};

const std::string kReasoningEffortMax =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, "
    "rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

std::string tools_block(const std::string &schemas) {
    return "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can invoke tools by "
           "writing a \"<" + kDsml + "tool_calls>\" block like the following:\n\n"
           "<" + kDsml + "tool_calls>\n"
           "<" + kDsml + "invoke name=\"$TOOL_NAME\">\n"
           "<" + kDsml + "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" + kDsml + "parameter>\n"
           "...\n"
           "</" + kDsml + "invoke>\n"
           "<" + kDsml + "invoke name=\"$TOOL_NAME2\">\n"
           "...\n"
           "</" + kDsml + "invoke>\n"
           "</" + kDsml + "tool_calls>\n\n"
           "String parameters should be specified as is and set `string=\"true\"`. For all other types (numbers, "
           "booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n"
           "If thinking_mode is enabled (triggered by " + kThinkStart + "), you MUST output your complete reasoning "
           "inside " + kThinkStart + "..." + kThinkEnd + " BEFORE any tool calls or final response.\n\n"
           "Otherwise, output directly after " + kThinkEnd + " with tool calls or final response.\n\n"
           "### Available Tool Schemas\n\n" + schemas +
           "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";
}

[[noreturn]] void reject(size_t index, const std::string &what) {
    fail(DSV4_ERR_INVALID_ARGUMENT, "messages[{}]: {}", index, what);
}

// Python's str() of a JSON value inserted with str.format: strings as is, null as "None".
std::string py_str(const json &v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_null()) return "None";
    return python_json_dumps(v);
}

// Python truthiness of an optional field.
bool truthy(const json &m, const char *key) {
    auto it = m.find(key);
    if (it == m.end() || it->is_null()) return false;
    if (it->is_boolean()) return it->get<bool>();
    if (it->is_string() || it->is_array() || it->is_object()) return !it->empty();
    if (it->is_number()) return it->get<double>() != 0;
    return true;
}

std::string render_tools(const json &tools, size_t index) {
    std::string schemas;
    for (size_t i = 0; i < tools.size(); ++i) {
        if (!tools[i].is_object() || !tools[i].contains("function"))
            reject(index, fmt::format("tools[{}] has no 'function'", i));
        schemas += (i ? "\n" : "") + python_json_dumps(tools[i].at("function"));
    }
    return tools_block(schemas);
}

std::string encode_arguments(const json &call, size_t index) {
    const std::string raw = call.at("arguments").is_string() ? call.at("arguments").get<std::string>() : py_str(call.at("arguments"));
    json args;
    try {
        args = json::parse(raw);
    } catch (const json::exception &) {
        args = json::object({{"arguments", raw}});  // unparsable arguments travel as one string parameter
    }
    if (!args.is_object()) reject(index, "tool call arguments are JSON but not an object");
    std::string out;
    for (auto it = args.begin(); it != args.end(); ++it) {
        if (!out.empty()) out += "\n";
        const bool is_str = it->is_string();
        out += "<" + kDsml + "parameter name=\"" + it.key() + "\" string=\"" + (is_str ? "true" : "false") + "\">" +
               (is_str ? it->get<std::string>() : python_json_dumps(*it)) + "</" + kDsml + "parameter>";
    }
    return out;
}

// merge_tool_messages: tool results become tool_result blocks of user messages; user turns become text blocks,
// joined into the previous user message when it already carries blocks and no task.
json merge_tool_messages(const json &messages) {
    json merged = json::array();
    for (const json &m : messages) {
        const std::string role = m.value("role", "");
        if (role == "tool") {
            json block = {{"type", "tool_result"}, {"tool_use_id", m.value("tool_call_id", json(""))},
                          {"content", m.contains("content") ? m.at("content") : json("")}};
            if (!merged.empty() && merged.back().value("role", "") == "user" && merged.back().contains("content_blocks"))
                merged.back()["content_blocks"].push_back(block);
            else
                merged.push_back({{"role", "user"}, {"content_blocks", json::array({block})}});
        } else if (role == "user") {
            const json content = m.contains("content") ? m.at("content") : json("");
            json block = {{"type", "text"}, {"text", content}};
            json &last = merged.empty() ? merged : merged.back();
            if (!merged.empty() && last.value("role", "") == "user" && last.contains("content_blocks") &&
                (!last.contains("task") || last.at("task").is_null())) {
                last["content_blocks"].push_back(block);
            } else {
                json msg = {{"role", "user"}, {"content", content}, {"content_blocks", json::array({block})}};
                for (const char *key : {"task", "wo_eos", "mask"})
                    if (m.contains(key)) msg[key] = m.at(key);
                merged.push_back(std::move(msg));
            }
        } else {
            merged.push_back(m);
        }
    }
    return merged;
}

// Tool results follow the order of the preceding assistant message's tool_calls ids (stable sort).
void sort_tool_results(json &messages) {
    std::map<std::string, int> order;
    for (json &m : messages) {
        const std::string role = m.value("role", "");
        if (role == "assistant" && truthy(m, "tool_calls")) {
            order.clear();
            int idx = 0;
            for (const json &tc : m.at("tool_calls")) {
                std::string id;
                if (tc.contains("id") && tc.at("id").is_string()) id = tc.at("id").get<std::string>();
                if (id.empty() && tc.contains("function") && tc.at("function").contains("id") && tc.at("function").at("id").is_string())
                    id = tc.at("function").at("id").get<std::string>();
                if (!id.empty()) order[id] = idx;
                ++idx;
            }
        } else if (role == "user" && truthy(m, "content_blocks")) {
            json &blocks = m["content_blocks"];
            std::vector<json> tool_blocks;
            for (const json &b : blocks)
                if (b.value("type", "") == "tool_result") tool_blocks.push_back(b);
            if (tool_blocks.size() < 2 || order.empty()) continue;
            auto key = [&](const json &b) {
                const json &id = b.contains("tool_use_id") ? b.at("tool_use_id") : json("");
                auto it = id.is_string() ? order.find(id.get<std::string>()) : order.end();
                return it == order.end() ? 0 : it->second;
            };
            std::stable_sort(tool_blocks.begin(), tool_blocks.end(), [&](const json &a, const json &b) { return key(a) < key(b); });
            size_t k = 0;
            for (json &b : blocks)
                if (b.value("type", "") == "tool_result") b = tool_blocks[k++];
        }
    }
}

int last_user_index(const json &messages) {
    for (int i = int(messages.size()) - 1; i >= 0; --i) {
        const std::string role = messages[size_t(i)].value("role", "");
        if (role == "user" || role == "developer") return i;
    }
    return -1;
}

// Before the last user turn: assistant messages lose their reasoning, developer messages are dropped.
json drop_thinking_messages(const json &messages) {
    const int last = last_user_index(messages);
    json out = json::array();
    for (size_t i = 0; i < messages.size(); ++i) {
        const json &m = messages[i];
        const std::string role = m.value("role", "");
        if (role == "user" || role == "system" || role == "tool" || role == "latest_reminder" ||
            role == "direct_search_results" || int(i) >= last) {
            out.push_back(m);
        } else if (role == "assistant") {
            json copy = m;
            copy.erase("reasoning_content");
            out.push_back(std::move(copy));
        }
    }
    return out;
}

std::string render_message(size_t index, const json &messages, const ChatOptions &o, bool drop_thinking) {
    const json &m = messages[index];
    if (!m.is_object()) reject(index, "not an object");
    const bool thinking = o.mode == ThinkingMode::thinking;
    const int last_user = last_user_index(messages);
    const std::string role = m.contains("role") && m.at("role").is_string() ? m.at("role").get<std::string>() : "";
    std::string prompt;
    if (index == 0 && thinking && o.reasoning_effort == std::string("max")) prompt += kReasoningEffortMax;

    auto append_tools_and_format = [&](std::string &s) {
        if (truthy(m, "tools")) {
            if (!m.at("tools").is_array()) reject(index, "field 'tools' must be an array");
            s += "\n\n" + render_tools(m.at("tools"), index);
        }
        if (truthy(m, "response_format"))
            s += "\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n" +
                 python_json_dumps(m.at("response_format"));
    };

    if (role == "system") {
        prompt += truthy(m, "content") ? py_str(m.at("content")) : "";
        append_tools_and_format(prompt);
    } else if (role == "developer") {
        if (!truthy(m, "content")) reject(index, "a developer message needs content");
        std::string s = kUser + py_str(m.at("content"));
        append_tools_and_format(s);
        prompt += s;
    } else if (role == "user") {
        prompt += kUser;
        if (truthy(m, "content_blocks")) {
            std::string parts;
            size_t k = 0;
            for (const json &b : m.at("content_blocks")) {
                if (k++) parts += "\n\n";
                const std::string type = b.value("type", "");
                if (type == "text") {
                    const json &text = b.contains("text") ? b.at("text") : json("");
                    if (!text.is_string()) reject(index, "user content must be a string");
                    parts += text.get<std::string>();
                } else if (type == "tool_result") {
                    const json &c = b.contains("content") ? b.at("content") : json("");
                    std::string content;
                    if (c.is_array()) {
                        size_t n = 0;
                        for (const json &part : c) {
                            if (n++) content += "\n\n";
                            content += part.value("type", "") == "text" ? part.value("text", std::string())
                                                                         : "[Unsupported " + py_str(part.value("type", json())) + "]";
                        }
                    } else {
                        content = py_str(c);
                    }
                    parts += "<tool_result>" + content + "</tool_result>";
                } else {
                    parts += "[Unsupported " + type + "]";
                }
            }
            prompt += parts;
        } else {
            prompt += truthy(m, "content") ? py_str(m.at("content")) : "";
        }
    } else if (role == "latest_reminder") {
        prompt += kLatestReminder + py_str(m.contains("content") ? m.at("content") : json());
    } else if (role == "tool") {
        reject(index, "tool messages must follow an assistant message's tool calls");
    } else if (role == "assistant") {
        std::string calls;
        if (truthy(m, "tool_calls")) {
            if (!m.at("tool_calls").is_array()) reject(index, "field 'tool_calls' must be an array");
            std::string invokes;
            size_t k = 0;
            for (const json &tc : m.at("tool_calls")) {
                if (!tc.contains("function") || !tc.at("function").contains("name") || !tc.at("function").contains("arguments"))
                    reject(index, fmt::format("tool_calls[{}] needs function.name and function.arguments", k));
                if (k++) invokes += "\n";
                invokes += "<" + kDsml + "invoke name=\"" + py_str(tc.at("function").at("name")) + "\">\n" +
                           encode_arguments(tc.at("function"), index) + "\n</" + kDsml + "invoke>";
            }
            calls = "\n\n<" + kDsml + "tool_calls>\n" + invokes + "\n</" + kDsml + "tool_calls>";
        }
        const bool prev_has_task = index > 0 && messages[index - 1].contains("task") && !messages[index - 1].at("task").is_null();
        std::string reasoning;
        if (thinking && !prev_has_task && (!drop_thinking || int(index) > last_user))
            reasoning = (truthy(m, "reasoning_content") ? py_str(m.at("reasoning_content")) : "") + kThinkEnd;
        prompt += reasoning + (truthy(m, "content") ? py_str(m.at("content")) : "") + calls;
        if (!truthy(m, "wo_eos")) prompt += kEos;
    } else {
        reject(index, "unknown role '" + role + "'");
    }

    // Transition to the next turn, unless another user-side message follows.
    if (index + 1 < messages.size()) {
        const std::string next = messages[index + 1].value("role", "");
        if (next != "assistant" && next != "latest_reminder") return prompt;
    }
    if (m.contains("task") && !m.at("task").is_null()) {
        const std::string task = m.at("task").is_string() ? m.at("task").get<std::string>() : py_str(m.at("task"));
        auto it = kTaskTokens.find(task);
        if (it == kTaskTokens.end()) reject(index, "invalid task '" + task + "'");
        if (task != "action") prompt += it->second;
        else prompt += kAssistant + (thinking ? kThinkStart : kThinkEnd) + it->second;
    } else if (role == "user" || role == "developer") {
        prompt += kAssistant;
        const bool open_thinking = thinking && (!drop_thinking || int(index) >= last_user);
        prompt += open_thinking ? kThinkStart : kThinkEnd;
    }
    return prompt;
}

// Reads from `pos` up to the earliest of `stops`; returns the text before it and sets `which` (-1: none).
std::string read_until(const std::string &text, size_t &pos, const std::vector<std::string> &stops, int &which) {
    size_t best = std::string::npos;
    which = -1;
    for (size_t i = 0; i < stops.size(); ++i) {
        const size_t p = text.find(stops[i], pos);
        if (p != std::string::npos && p < best) {
            best = p;
            which = int(i);
        }
    }
    std::string out = text.substr(pos, (which < 0 ? text.size() : best) - pos);
    pos = which < 0 ? text.size() : best + stops[size_t(which)].size();
    return out;
}

[[noreturn]] void malformed(const std::string &what) { fail(DSV4_ERR_INVALID_ARGUMENT, "completion: {}", what); }

// Content and reasoning never contain the format's own special tokens.
void check_clean(const std::string &delta) {
    for (const std::string &sp : {kBos, kEos, kThinkStart, kThinkEnd, kDsml})
        if (delta.find(sp) != std::string::npos) malformed("special token '" + sp + "' inside the content");
}

// Parses the DSML tool-call block that starts after "\n\n<｜DSML｜tool_calls".
json parse_tool_calls(const std::string &text, size_t &pos) {
    const std::string invoke = "<" + kDsml + "invoke", end_calls = "</" + kDsml + "tool_calls>";
    const std::string param = "<" + kDsml + "parameter", end_invoke = "</" + kDsml + "invoke", end_param = "/" + kDsml + "parameter";
    json calls = json::array();
    int which = -1;
    while (pos < text.size()) {
        if (read_until(text, pos, {invoke, end_calls}, which) != ">\n") malformed("expected '>\\n' in the tool-call block");
        if (which == 1) break;
        if (which < 0) malformed("unterminated tool-call block");
        std::string head = read_until(text, pos, {param, end_invoke}, which);
        // head must be  name="NAME">\n  after optional whitespace. The reference matches with a regex whose $
        // also matches before one final newline, so an invoke without parameters ('>\n\n') is accepted.
        if (head.size() >= 4 && head.compare(head.size() - 4, 4, "\">\n\n") == 0) head.pop_back();
        size_t h = 0;
        while (h < head.size() && std::isspace(uint8_t(head[h]))) ++h;
        if (head.compare(h, 6, "name=\"") != 0 || head.size() < h + 9 || head.compare(head.size() - 3, 3, "\">\n") != 0)
            malformed("bad invoke header '" + head + "'");
        const std::string name = head.substr(h + 6, head.size() - 3 - (h + 6));
        std::string args = "{";
        std::map<std::string, bool> seen;
        while (which == 0) {
            std::string p = read_until(text, pos, {end_param}, which);
            if (p.size() >= 2 && p.compare(p.size() - 2, 2, "<\n") == 0) p.pop_back();  // the regex's $ again
            // p must be  ` name="K" string="true|false">VALUE<`
            const std::string lead = " name=\"";
            const size_t q = p.find("\" string=\"");
            if (p.compare(0, lead.size(), lead) != 0 || q == std::string::npos || p.empty() || p.back() != '<')
                malformed("bad parameter '" + p + "'");
            const std::string key = p.substr(lead.size(), q - lead.size());
            const size_t flag_at = q + 10;
            const bool is_str = p.compare(flag_at, 6, "true\">") == 0;
            if (!is_str && p.compare(flag_at, 7, "false\">") != 0) malformed("bad parameter '" + p + "'");
            const size_t value_at = flag_at + (is_str ? 6 : 7);
            const std::string value = p.substr(value_at, p.size() - 1 - value_at);
            if (seen.count(key)) malformed("duplicate parameter '" + key + "'");
            seen[key] = true;
            if (args.size() > 1) args += ", ";
            args += python_json_dumps(json(key)) + ": " + (is_str ? python_json_dumps(json(value)) : value);
            if (read_until(text, pos, {param, end_invoke}, which) != ">\n") malformed("expected '>\\n' after a parameter");
        }
        args += "}";
        calls.push_back({{"type", "function"}, {"function", {{"name", name}, {"arguments", args}}}});
    }
    return calls;
}

void append_float(std::string &out, double v) {
    if (std::isnan(v)) {
        out += "NaN";
        return;
    }
    if (std::isinf(v)) {
        out += v > 0 ? "Infinity" : "-Infinity";
        return;
    }
    char buf[64];
    auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);  // shortest round trip
    std::string sci(buf, res.ptr);
    const size_t e = sci.find('e');
    std::string mant = sci.substr(0, e);
    const int exp10 = std::stoi(sci.substr(e + 1));
    std::string sign;
    if (mant[0] == '-') {
        sign = "-";
        mant.erase(0, 1);
    }
    std::string digits;
    for (char c : mant)
        if (c != '.') digits += c;
    // Python's repr: fixed notation for 1e-4 <= |v| < 1e16, else d.ddde±XX.
    if (exp10 >= -4 && exp10 < 16) {
        std::string s;
        if (exp10 < 0) s = "0." + std::string(size_t(-exp10 - 1), '0') + digits;
        else if (size_t(exp10) + 1 >= digits.size()) s = digits + std::string(size_t(exp10) + 1 - digits.size(), '0') + ".0";
        else s = digits.substr(0, size_t(exp10) + 1) + "." + digits.substr(size_t(exp10) + 1);
        out += sign + s;
    } else {
        std::string s = digits.substr(0, 1);
        if (digits.size() > 1) s += "." + digits.substr(1);
        out += sign + s + fmt::format("e{}{:02d}", exp10 < 0 ? '-' : '+', std::abs(exp10));
    }
}

void dumps(const json &v, std::string &out) {
    switch (v.type()) {
        case json::value_t::null: out += "null"; break;
        case json::value_t::boolean: out += v.get<bool>() ? "true" : "false"; break;
        case json::value_t::number_integer: out += std::to_string(v.get<int64_t>()); break;
        case json::value_t::number_unsigned: out += std::to_string(v.get<uint64_t>()); break;
        case json::value_t::number_float: append_float(out, v.get<double>()); break;
        case json::value_t::string: {
            out += '"';
            for (unsigned char c : v.get_ref<const std::string &>()) {
                switch (c) {
                    case '"': out += "\\\""; break;
                    case '\\': out += "\\\\"; break;
                    case '\n': out += "\\n"; break;
                    case '\r': out += "\\r"; break;
                    case '\t': out += "\\t"; break;
                    case '\b': out += "\\b"; break;
                    case '\f': out += "\\f"; break;
                    default:
                        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
                        else out += char(c);
                }
            }
            out += '"';
            break;
        }
        case json::value_t::array: {
            out += '[';
            bool first = true;
            for (const json &x : v) {
                if (!first) out += ", ";
                first = false;
                dumps(x, out);
            }
            out += ']';
            break;
        }
        case json::value_t::object: {
            out += '{';
            bool first = true;
            for (auto it = v.begin(); it != v.end(); ++it) {
                if (!first) out += ", ";
                first = false;
                dumps(json(it.key()), out);
                out += ": ";
                dumps(*it, out);
            }
            out += '}';
            break;
        }
        default: out += "null";
    }
}

}  // namespace

std::string python_json_dumps(const json &value) {
    std::string out;
    dumps(value, out);
    return out;
}

std::string encode_chat(const json &messages_in, const ChatOptions &o) {
    if (!messages_in.is_array()) fail(DSV4_ERR_INVALID_ARGUMENT, "messages: expected a JSON array");
    if (o.reasoning_effort && *o.reasoning_effort != "high" && *o.reasoning_effort != "max")
        fail(DSV4_ERR_INVALID_ARGUMENT, "reasoning_effort '{}' (expected \"high\", \"max\" or none)", *o.reasoning_effort);
    for (size_t i = 0; i < messages_in.size(); ++i)
        if (!messages_in[i].is_object()) reject(i, "not an object");
    json messages = merge_tool_messages(messages_in);
    sort_tool_results(messages);
    bool drop = o.drop_thinking;
    for (const json &m : messages)
        if (truthy(m, "tools")) drop = false;  // tool use keeps every turn's reasoning
    if (o.mode == ThinkingMode::thinking && drop) messages = drop_thinking_messages(messages);
    std::string prompt = o.add_bos ? kBos : "";
    for (size_t i = 0; i < messages.size(); ++i) prompt += render_message(i, messages, o, drop);
    return prompt;
}

json parse_completion(const std::string &text, ThinkingMode mode) {
    const std::string calls_start = "\n\n<" + kDsml + "tool_calls";
    size_t pos = 0;
    int which = -1;
    std::string reasoning, content;
    if (mode == ThinkingMode::thinking) {
        reasoning = read_until(text, pos, {kThinkEnd, calls_start}, which);
        if (which != 0) malformed("missing </think>");
    }
    content = read_until(text, pos, {kEos, calls_start}, which);
    json calls = json::array();
    if (which == 1) {
        calls = parse_tool_calls(text, pos);
        if (!read_until(text, pos, {kEos}, which).empty()) malformed("unexpected text after the tool calls");
    } else if (which != 0) {
        malformed("missing the end-of-sentence token");
    }
    if (pos != text.size()) malformed("unexpected text after the end-of-sentence token");
    check_clean(reasoning);
    check_clean(content);
    return {{"role", "assistant"}, {"content", content}, {"reasoning_content", reasoning}, {"tool_calls", calls}};
}

ChatStreamParser::ChatStreamParser(ThinkingMode mode, bool partial_calls)
    : state_(mode == ThinkingMode::thinking ? State::reasoning : State::content), partial_calls_(partial_calls) {}

// The open invoke (the one after the calls already reported), closed after its last complete parameter (or its
// header) and parsed as the whole block would be: its arguments so far are those of the complete call minus the
// closing brace, so the fragments announced concatenate to the final arguments.
void ChatStreamParser::announce_partial(const Sink &sink) {
    const std::string invoke = "<" + kDsml + "invoke", end_param = "</" + kDsml + "parameter>\n";
    size_t at = std::string::npos;
    for (size_t k = 0, from = 0; k <= calls_sent_; ++k, from = at + 1)
        if ((at = pending_.find(invoke, from)) == std::string::npos) return;
    const size_t header_end = pending_.find("\">\n", at);
    if (header_end == std::string::npos) return;
    size_t cut = header_end + 3;
    for (size_t p = pending_.find(end_param, cut); p != std::string::npos; p = pending_.find(end_param, cut))
        cut = p + end_param.size();
    if (cut == partial_cut_) return;  // nothing completed since the last look
    partial_cut_ = cut;
    const std::string closed = pending_.substr(0, cut) + "</" + kDsml + "invoke>\n</" + kDsml + "tool_calls>";
    json calls;
    try {
        size_t pos = 0;
        calls = parse_tool_calls(closed, pos);
    } catch (const Error &) {
        return;  // malformed so far: the complete call's parse reports it
    }
    if (calls.size() != calls_sent_ + 1) return;
    const json &fn = calls.back()["function"];
    if (!call_begun_) {
        sink(Event::tool_call_begin, fn["name"].get<std::string>());
        call_begun_ = true;
    }
    const std::string args = fn["arguments"].get<std::string>();
    if (!json::accept(args)) return;  // a non-string value that is no JSON: never announced
    const std::string so_far = args.substr(0, args.size() - 1);
    if (so_far.size() > arguments_sent_) sink(Event::tool_call_arguments, so_far.substr(arguments_sent_));
    arguments_sent_ = std::max(arguments_sent_, so_far.size());
}

void ChatStreamParser::complete_call(const json &call, const Sink &sink) {
    if (partial_calls_) {
        const json &fn = call["function"];
        if (!call_begun_) sink(Event::tool_call_begin, fn["name"].get<std::string>());
        const std::string args = fn["arguments"].get<std::string>();
        if (args.size() > arguments_sent_) sink(Event::tool_call_arguments, args.substr(arguments_sent_));
        call_begun_ = false;
        arguments_sent_ = 0;
        partial_cut_ = 0;
    }
    sink(Event::tool_call, python_json_dumps(call));
}

void ChatStreamParser::push(const std::string &text, const Sink &sink) {
    pending_ += text;
    step(sink, false);
}

void ChatStreamParser::finish(const Sink &sink) {
    step(sink, true);
    if (state_ == State::reasoning) malformed("missing </think>");
    if (state_ == State::content) malformed("missing the end-of-sentence token");
    if (state_ == State::tools) malformed("unterminated tool-call block");
    if (state_ == State::after_tools) malformed("missing the end-of-sentence token after the tool calls");
    if (!pending_.empty()) malformed("unexpected text after the end-of-sentence token");
}

void ChatStreamParser::step(const Sink &sink, bool final) {
    const std::string calls_start = "\n\n<" + kDsml + "tool_calls", calls_end = "</" + kDsml + "tool_calls>";
    const std::string invoke_end = "</" + kDsml + "invoke>";
    for (bool progress = true; progress;) {
        progress = false;
        if (state_ == State::reasoning || state_ == State::content) {
            const bool reasoning = state_ == State::reasoning;
            const std::string &end = reasoning ? kThinkEnd : kEos;
            const Event kind = reasoning ? Event::reasoning : Event::content;
            const size_t at_end = pending_.find(end), at_calls = pending_.find(calls_start);
            const size_t at = std::min(at_end, at_calls);
            if (at != std::string::npos) {
                if (reasoning && at == at_calls) malformed("missing </think>");
                const std::string delta = pending_.substr(0, at);
                check_clean(delta);
                if (!delta.empty()) sink(kind, delta);
                pending_.erase(0, at + (at == at_end ? end.size() : calls_start.size()));
                state_ = reasoning ? State::content : (at == at_end ? State::done : State::tools);
                progress = true;
                continue;
            }
            // Held back: whatever may still become the end marker, the tool-call block or any special token that
            // makes the text malformed (check_clean), so no part of a marker is emitted before it is recognised.
            const size_t hold = final ? 0 : core::marker_prefix_suffix(pending_, {end, calls_start, kBos, kEos, kThinkStart, kThinkEnd, kDsml});
            const std::string delta = pending_.substr(0, pending_.size() - hold);
            check_clean(delta);
            if (!delta.empty()) sink(kind, delta);
            pending_.erase(0, pending_.size() - hold);
        } else if (state_ == State::tools) {
            // Re-parse the block each time an invoke completes; report the calls not yet reported.
            const size_t at_close = pending_.find(calls_end);
            if (at_close == std::string::npos && pending_.find(invoke_end) == std::string::npos) {
                if (partial_calls_) announce_partial(sink);
                return;
            }
            std::string block = at_close == std::string::npos ? pending_.substr(0, pending_.rfind(invoke_end) + invoke_end.size()) + "\n" + calls_end
                                                              : pending_.substr(0, at_close + calls_end.size());
            size_t pos = 0;
            const json calls = parse_tool_calls(block, pos);
            for (; calls_sent_ < calls.size(); ++calls_sent_) complete_call(calls[calls_sent_], sink);
            if (at_close == std::string::npos) {
                if (partial_calls_) announce_partial(sink);
                return;
            }
            pending_.erase(0, at_close + calls_end.size());
            state_ = State::after_tools;
            progress = true;
        } else if (state_ == State::after_tools) {  // only the end-of-sentence token may follow
            if (pending_.compare(0, kEos.size(), kEos) == 0) {
                pending_.erase(0, kEos.size());
                state_ = State::done;
                progress = true;
            } else if (final || pending_.size() >= kEos.size() || kEos.compare(0, pending_.size(), pending_) != 0) {
                malformed("unexpected text after the tool calls");
            }
        } else {
            return;  // done: anything left is reported by finish
        }
    }
}

}  // namespace dsv4::tokenizer
