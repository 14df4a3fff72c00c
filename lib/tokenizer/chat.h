// DeepSeek-V4 chat format (spec §12.2, the rules of the official encoding_dsv4.py): OpenAI-style messages →
// prompt text, and a completion → reasoning, content and DSML tool calls.
#pragma once
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

// json.dumps(value, ensure_ascii=False) of Python, byte for byte (separators ", " and ": ").
std::string python_json_dumps(const nlohmann::ordered_json &value);

}  // namespace dsv4::tokenizer
