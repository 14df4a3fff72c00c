// `dsv4 eval-chat CASES_JSONL`: the chat encoder and completion parser against official-encoder cases.
#include "eval_chat.h"

#include <fmt/format.h>
#include <fstream>

#include "core/error.h"
#include "tokenizer/chat.h"

namespace dsv4::tools {
namespace {
using json = nlohmann::ordered_json;

// Messages compare field by field; tool-call arguments compare as parsed JSON.
bool same_message(const json &got, const json &want, std::string &why) {
    for (const char *k : {"role", "content", "reasoning_content"})
        if (got.value(k, json()) != want.value(k, json())) {
            why = fmt::format("{}: got {}, expected {}", k, got.value(k, json()).dump(), want.value(k, json()).dump());
            return false;
        }
    const json &gc = got.at("tool_calls"), &wc = want.contains("tool_calls") ? want.at("tool_calls") : json::array();
    if (gc.size() != wc.size()) {
        why = fmt::format("{} tool calls, expected {}", gc.size(), wc.size());
        return false;
    }
    for (size_t i = 0; i < gc.size(); ++i) {
        const json &g = gc[i].at("function"), &w = wc[i].at("function");
        if (g.at("name") != w.at("name") ||
            nlohmann::json::parse(g.at("arguments").get<std::string>()) != nlohmann::json::parse(w.at("arguments").get<std::string>())) {
            why = fmt::format("tool call {}: got {}, expected {}", i, g.dump(), w.dump());
            return false;
        }
    }
    return true;
}
}  // namespace

bool eval_chat(const std::string &cases_path, bool verbose) {
    std::ifstream in(cases_path);
    if (!in) fail(DSV4_ERR_IO_NOT_FOUND, "{}: cannot open", cases_path);
    int n = 0, bad = 0, line_no = 0;
    for (std::string line; std::getline(in, line);) {
        ++line_no;
        if (line.empty()) continue;
        const json c = json::parse(line);
        const std::string id = c.value("id", fmt::format("line {}", line_no));
        const bool expect_error = c.value("error", false);
        const auto mode = c.value("thinking_mode", "chat") == "thinking" ? tokenizer::ThinkingMode::thinking
                                                                         : tokenizer::ThinkingMode::chat;
        std::string why;
        try {
            if (c.value("kind", "") == "encode") {
                tokenizer::ChatOptions o;
                o.mode = mode;
                o.drop_thinking = c.value("drop_thinking", true);
                if (c.contains("reasoning_effort") && c.at("reasoning_effort").is_string())
                    o.reasoning_effort = c.at("reasoning_effort").get<std::string>();
                const std::string prompt = tokenizer::encode_chat(c.at("messages"), o);
                if (expect_error) why = "accepted a conversation the official encoder rejects";
                else if (prompt != c.at("prompt").get<std::string>())
                    why = fmt::format("prompt differs:\n  got      {}\n  expected {}", json(prompt).dump(), c.at("prompt").dump());
            } else if (c.value("kind", "") == "parse") {
                const json msg = tokenizer::parse_completion(c.at("completion").get<std::string>(), mode);
                if (expect_error) why = "accepted a completion the official parser rejects";
                else same_message(msg, c.at("message"), why);
            } else {
                why = "unknown kind";
            }
        } catch (const Error &e) {
            if (!expect_error) why = std::string("rejected: ") + e.what();
        }
        ++n;
        if (!why.empty()) {
            ++bad;
            if (verbose || bad <= 20) fmt::print("{} ({}): {}\n", id, c.value("kind", ""), why);
        }
    }
    fmt::print("eval-chat: {} cases, {} mismatched: {}\n", n, bad, bad ? "FAIL" : "PASS");
    return bad == 0 && n > 0;
}

}  // namespace dsv4::tools
