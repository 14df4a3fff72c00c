// DeepSeek-V4 chat format (spec §12.2, the rules of the official encoding_dsv4.py): OpenAI-style messages →
// prompt text, and a completion → reasoning, content and DSML tool calls.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace dsv4::tokenizer {

enum class ThinkingMode { chat, thinking };

struct ChatOptions {
    ThinkingMode mode = ThinkingMode::chat;
    bool drop_thinking = true;          // drop reasoning of turns before the last user turn (thinking mode)
    bool add_bos = true;                // start with <｜begin▁of▁sentence｜>
    std::optional<std::string> reasoning_effort;  // "high", "max" or none
};

// Renders the prompt. messages: a JSON array of message objects (roles system, developer, user, assistant, tool,
// latest_reminder; fields tools, response_format, tool_calls, reasoning_content, task, wo_eos, tool_call_id).
// Throws dsv4::Error(DSV4_ERR_INVALID_ARGUMENT) naming the message and field for input the official encoder
// rejects.
std::string encode_chat(const nlohmann::ordered_json &messages, const ChatOptions &options);

// Parses one completion (text generated after the prompt, ending in <｜end▁of▁sentence｜>) into an assistant
// message {"role", "content", "reasoning_content", "tool_calls": [{"type", "function": {"name", "arguments"}}]}.
// Throws dsv4::Error(DSV4_ERR_INVALID_ARGUMENT) for malformed completions.
nlohmann::ordered_json parse_completion(const std::string &text, ThinkingMode mode);

// Incremental parsing of a completion while it streams: reasoning and content arrive as deltas (text that might
// begin a marker is held back, so DSML never leaks into content), each tool call once its invoke is complete.
// The events concatenate to what parse_completion returns for the whole text; malformed text throws as there.
class ChatStreamParser {
public:
    // With partial_calls, each call is also announced as it is written: tool_call_begin (its name) once the invoke
    // header is complete, then tool_call_arguments fragments as each parameter completes; the fragments
    // concatenate to the arguments of the tool_call event that ends the call.
    enum class Event { reasoning, content, tool_call, tool_call_begin, tool_call_arguments };
    using Sink = std::function<void(Event, const std::string &)>;  // tool_call: {"type", "function": {...}} JSON

    explicit ChatStreamParser(ThinkingMode mode, bool partial_calls = false);
    void push(const std::string &text, const Sink &sink);
    // Flushes held-back text; throws if the completion did not end properly (no EOS, unclosed blocks).
    void finish(const Sink &sink);

private:
    enum class State { reasoning, content, tools, after_tools, done };
    void step(const Sink &sink, bool final);
    void announce_partial(const Sink &sink);
    void complete_call(const nlohmann::ordered_json &call, const Sink &sink);
    State state_;
    std::string pending_;   // text not yet emitted (reasoning/content) or the tool-call block so far
    size_t calls_sent_ = 0;
    bool partial_calls_;
    bool call_begun_ = false;     // the open call's name was announced
    size_t arguments_sent_ = 0;   // bytes of the open call's arguments announced
    size_t partial_cut_ = 0;      // the block's length up to the open call's last complete parameter, last parsed
};

// json.dumps(value, ensure_ascii=False) of Python, byte for byte (separators ", " and ": ").
std::string python_json_dumps(const nlohmann::ordered_json &value);

}  // namespace dsv4::tokenizer
